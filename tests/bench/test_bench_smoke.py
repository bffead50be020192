"""The benchmarks still run: each script's `--quick` smoke run exits 0 and prints every row.

The figures themselves are not checked (a smoke run is too short to mean anything, and the
benchmarks report ratios, not pass/fail); only that each measurement still happens and is
reported under its label, as a table and as JSON.
"""

from __future__ import annotations

import json
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
    "reminders.py": [
        "Remind, 16 agents concurrently",
        "burst delivered in chunks (reminder_batch)",
        "burst delivered, one transaction",
        "Send, no burst",
        "Send, during the chunked burst",
        "Send, during the one-transaction burst",
    ],
}


def run_quick(script: str, *extra: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=100,
        check=False,
    )
    assert out.returncode == 0, f"{script} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.parametrize("script", sorted(ROWS))
def test_the_quick_run_prints_every_row_and_a_ratio(script: str) -> None:
    table = run_quick(script)
    for label in ROWS[script]:
        assert label in table
    assert "\nratios\n" in table


@pytest.mark.parametrize("script", sorted(ROWS))
def test_json_output_has_a_figure_for_every_row(script: str) -> None:
    result = json.loads(run_quick(script, "--json"))
    figures = {row["label"]: row["value"] for row in result["rows"]}
    assert set(ROWS[script]) <= set(figures)
    assert all(figures[label] is not None and figures[label] > 0 for label in ROWS[script])
    assert result["ratios"] and all(r["value"] is not None for r in result["ratios"])
