"""The benchmarks still run: each script's `--quick` smoke run exits 0 and prints every row.

The figures themselves are not checked (a smoke run is too short to mean anything, and the
benchmarks report ratios, not pass/fail); only that each measurement still happens and is
reported under its label, as a table and as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

ROWS = {
    "rpc.py": [
        "raw framed echo, trio client, sequential",
        "Ping, HiveClient, sequential",
        "Ping, HiveClient, 32 concurrent on 1 conn",
        "Ping, SyncClient (blocking), sequential",
        "sqlite, 1 INSERT per commit",
        "Store.write, 1 writer",
        "Store.write, 32 writers",
    ],
    "broker.py": [
        "sqlite, 3 commits per message, 1 connection",
        "daemon, 1 agent",
        "daemon, 8 agents",
        "daemon, 32 agents",
        "daemon, 32 agents, Send + Take (as the MCP tools)",
        "Ping, alice socket",
        "open_threads.for_agent() in process",
        "GetOpenThreads, alice socket",
        "GetAgentOpenThreads(alice), admin socket",
        "Ping, admin socket, while alice loops GetOpenThreads",
    ],
    "host_sock.py": [
        "ListAgents, admin.sock, SyncClient",
        "agent_status, host.sock, one connection",
        "agent_status, host.sock, a connection per request",
        "list, host.sock, one connection",
        "agent_state_changed event, admin.sock Subscribe",
        "row pushed to 1 subscriber",
        "row pushed to 16 subscribers",
        "row pushed to 60 subscribers",
    ],
    "federation.py": [
        "local, alpha → alpha",
        "cross-hive, alpha → beta over JetStream",
        "local latency, s0 → r0",
        "cross-hive latency, s0 → r0@beta",
    ],
    "forge.py": [
        "clone, forge (hive://)",
        "clone, git's own pack protocol (file://)",
        "push, forge (hive://)",
        "push, git's own pack protocol (file://)",
        "ls-remote, forge (hive://)",
        "ls-remote, git's own (file://)",
        "merge request opened, approved, merged",
    ],
    "estop.py": [
        "CancelTurn, 1 agent",
        "EmergencyStop, until the reply",
        "EmergencyStop, until the last turn ended",
        "EmergencyStop, last harness:idle event",
        "Thaw, until every turn runs again",
    ],
    "dashboard.py": [
        "page, idle",
        "page, 200 msg/s",
        "page, 1,000 msg/s",
        "raw Subscribe, idle",
        "raw Subscribe, 200 msg/s",
        "raw Subscribe, 1,000 msg/s",
        "SSE stream, idle",
        "SSE stream, 200 msg/s",
        "SSE stream, 1,000 msg/s",
        "bytes per update, idle",
        "bytes per update, 200 msg/s",
        "bytes per update, 1,000 msg/s",
    ],
    "claude_turn.py": [
        "MCP server started per run (python -m ag3nt mcp)",
        "MCP server kept loaded in the harness (ag3nt.mcp_relay)",
    ],
    "mcp_peer.py": [
        "floor: 2 calls of a do-nothing tool (SDK's own stdio server)",
        "hyperhive: send + recv_batch (python -m ag3nt mcp)",
        "hyperhive: send + recv_batch (ag3nt.mcp_relay to the server loaded in a harness)",
        "the daemon's part: Send, Take over HiveClient (no MCP)",
    ],
    "reminders.py": [
        "Remind, 16 agents concurrently",
        "burst delivered in chunks (reminder_batch, reminder_chunk_ms)",
        "burst delivered, one transaction",
        "Send, no burst",
        "Send, during the chunked burst",
        "Send, during the one-transaction burst",
    ],
}


NEEDS_BWRAP = {"estop.py"}
"""Benchmarks that run agents in real sandboxes."""


def run_quick(script: str, json_file: Path) -> str:
    if script in NEEDS_BWRAP and (shutil.which("bwrap") is None or os.geteuid() != 0):
        pytest.skip("runs agents in bwrap sandboxes: needs bubblewrap and root")
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", "--json-file", str(json_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, f"{script} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script", sorted(ROWS))
def test_the_quick_run_prints_every_row_and_a_ratio_and_writes_them_as_json(
    script: str, tmp_path: Path
) -> None:
    """One run: the table on stdout, the same figures as JSON in `--json-file`."""
    table = run_quick(script, tmp_path / "result.json")
    for label in ROWS[script]:
        assert label in table
    assert "\nratios\n" in table
    result = json.loads((tmp_path / "result.json").read_text())
    figures = {row["label"]: row["value"] for row in result["rows"]}
    assert set(ROWS[script]) <= set(figures)
    assert all(figures[label] is not None and figures[label] > 0 for label in ROWS[script])
    assert result["ratios"] and all(r["value"] is not None for r in result["ratios"])
