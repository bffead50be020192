"""One agent-to-agent round through the MCP tools, against the MCP SDK's own floor in the same run.

A round is what two agents do to talk: alice calls `send` (to bob), then bob calls
`recv_batch` until the message is there (with `wait_seconds`, so one call normally does).
Both run `python -m ag3nt mcp` on their own agent socket of a daemon subprocess, spoken to
by the official `mcp` client over stdio, as Claude Code does; and again the way the runtimes
reach the tools now: `ag3nt.mcp_relay` to the server loaded in a harness (`ag3nt.mcp_listener`
in a subprocess per agent). The baseline: two calls of a
do-nothing tool on the SDK's own stdio server (`MCPServer`, one tool returning a constant),
also a subprocess, with the same client: the least two tool calls can cost. Rounds of all
alternate and each figure is the median round. CPU per round of the MCP servers and of the
daemon comes from /proc.

With `--peer`, the same rounds against mcp_agent_mail (installed with pip into a venv of its
own under /tmp on first use; never part of this repository): its `send_message` and
`fetch_inbox` tools over its stdio server.

Run: `.venv/bin/python bench/mcp_peer.py [--quick] [--json] [--peer]`. It measures; it never judges.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from daemon_process import running_daemon
from measure import children, cpu_seconds, percentile
from report import Report, parse_args

from ag3nt.mcp_relay import command as relay_command
from protocol import messages as m
from protocol.client import HiveClient

SECTION = "one round: send, then recv_batch until it is there (official mcp client, stdio)"
FLOOR = "floor: 2 calls of a do-nothing tool (SDK's own stdio server)"
HIVE = "hyperhive: send + recv_batch (python -m ag3nt mcp)"
RELAYED = "hyperhive: send + recv_batch (ag3nt.mcp_relay to the server loaded in a harness)"
DAEMON = "the daemon's part: Send, Take over HiveClient (no MCP)"
PEER_VENV = Path("/tmp/hyperhive-bench-mcp-agent-mail")
CONFIG = '[hive]\nautostart = false\nbackend = "process"\n\n[agents.alice]\n\n[agents.bob]\n'


@dataclass(frozen=True)
class Plan:
    rounds: int
    calls: int

    @classmethod
    def for_args(cls, quick: bool) -> Plan:
        return cls(rounds=1, calls=40) if quick else cls(rounds=3, calls=400)


def harness_server(agent_socket: str) -> None:
    """The MCP server loaded as a harness keeps it (run as a subprocess); prints its socket."""
    from ag3nt.mcp_listener import listening

    async def run() -> None:
        async with listening(agent_socket, "agent") as path:
            print(path, flush=True)
            await anyio.sleep_forever()

    anyio.run(run, backend="asyncio")


@asynccontextmanager
async def harness(agent_socket: Path) -> AsyncIterator[tuple[str, int]]:
    """A `harness_server` subprocess: its socket and pid."""
    proc = await anyio.open_process(
        [sys.executable, __file__, "--harness-server", str(agent_socket)],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            line += await proc.stdout.receive(1)
        yield line.decode().strip(), proc.pid
    finally:
        proc.terminate()
        await proc.wait()


def floor_server() -> None:
    """The SDK's stdio server with one tool that does nothing (run as a subprocess)."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("floor")

    def noop(text: str = "") -> str:
        """Return a constant."""
        return "ok"

    server.add_tool(noop, name="noop", structured_output=False)
    anyio.run(server.run_stdio_async, backend="asyncio")


class Session:
    """One stdio MCP server process and the official client session on it."""

    def __init__(self, session: Any, pid: int) -> None:
        self.session = session
        self.pid = pid

    async def text(self, tool: str, **args: Any) -> str:
        result = await self.session.call_tool(tool, args)
        text = "\n".join(getattr(b, "text", "") for b in result.content)
        if result.is_error:
            raise RuntimeError(f"{tool}{args}: {text}")
        return text


@asynccontextmanager
async def mcp_session(argv: list[str], env: dict[str, str] | None = None) -> AsyncIterator[Session]:
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=argv[0], args=argv[1:], env=env)
    before = set(children(os.getpid()))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        (pid,) = [p for p in children(os.getpid()) if p not in before][:1] or [0]
        yield Session(session, pid)


@dataclass
class Rounds:
    samples: list[float]
    cpu: dict[str, float]


async def timed(
    step: Callable[[int], Awaitable[None]], calls: int, cpu: dict[str, Callable[[], float]]
) -> Rounds:
    await step(-1)  # first-touch costs are not the figure
    before = {k: f() for k, f in cpu.items()}
    samples = []
    for n in range(calls):
        t0 = time.perf_counter()
        await step(n)
        samples.append(time.perf_counter() - t0)
    after = {k: f() for k, f in cpu.items()}
    return Rounds(samples, {k: (after[k] - before[k]) / calls for k in cpu})


def _cpu(pid: int) -> Callable[[], float]:
    return lambda: cpu_seconds(pid) if pid else 0.0


async def bench(report: Report, plan: Plan, scratch: Path, peer: bool) -> None:
    with running_daemon(scratch, CONFIG, ["alice", "bob"]) as daemon:
        hive_argv = [sys.executable, "-m", "ag3nt", "mcp", "--socket"]
        results: dict[str, list[Rounds]] = {FLOOR: [], HIVE: [], RELAYED: [], DAEMON: []}
        no_fallback = ["false"]  # a relay that cannot connect fails here, never starts a server
        async with (
            mcp_session([sys.executable, __file__, "--floor-server"]) as floor,
            mcp_session([*hive_argv, str(daemon.paths.agent_sock("alice"))]) as alice,
            mcp_session([*hive_argv, str(daemon.paths.agent_sock("bob"))]) as bob,
            harness(daemon.paths.agent_sock("alice")) as (alice_listener, alice_harness),
            harness(daemon.paths.agent_sock("bob")) as (bob_listener, bob_harness),
            mcp_session(relay_command(alice_listener, no_fallback)) as alice_relayed,
            mcp_session(relay_command(bob_listener, no_fallback)) as bob_relayed,
            HiveClient.connect(str(daemon.paths.agent_sock("alice"))) as alice_direct,
            HiveClient.connect(str(daemon.paths.agent_sock("bob"))) as bob_direct,
        ):

            async def daemon_round(n: int) -> None:
                await alice_direct.expect(m.Send(to="bob", body=f"direct {n}"), m.Sent)
                await bob_direct.expect(m.Take(max=10, wait_seconds=2.0), m.Taken)

            async def floor_round(n: int) -> None:
                await floor.text("noop", text=f"round {n}")
                await floor.text("noop", text=f"round {n}")

            def hive_round(a: Session, b: Session, tag: str) -> Callable[[int], Awaitable[None]]:
                async def round_(n: int) -> None:
                    body = f"{tag} round {n}"
                    await a.text("send", to="bob", body=body)
                    while body not in await b.text("recv_batch", max=10, wait_seconds=2.0):
                        pass

                return round_

            relayed_pids = (alice_relayed.pid, bob_relayed.pid, alice_harness, bob_harness)
            for _ in range(plan.rounds):
                results[FLOOR].append(
                    await timed(floor_round, plan.calls, {"server_cpu": _cpu(floor.pid)})
                )
                results[HIVE].append(
                    await timed(
                        hive_round(alice, bob, "stdio"),
                        plan.calls,
                        {
                            "server_cpu": lambda: _cpu(alice.pid)() + _cpu(bob.pid)(),
                            "daemon_cpu": _cpu(daemon.pid),
                        },
                    )
                )
                results[RELAYED].append(
                    await timed(
                        hive_round(alice_relayed, bob_relayed, "relayed"),
                        plan.calls,
                        {
                            "server_cpu": lambda: sum(_cpu(p)() for p in relayed_pids),
                            "daemon_cpu": _cpu(daemon.pid),
                        },
                    )
                )
                results[DAEMON].append(
                    await timed(daemon_round, plan.calls, {"daemon_cpu": _cpu(daemon.pid)})
                )
        for label, rounds in results.items():
            add_row(report, label, rounds)
    report.ratio("hyperhive round / floor (2 calls)", HIVE, FLOOR)
    report.ratio("hyperhive round through the relay / floor (2 calls)", RELAYED, FLOOR)
    report.ratio("daemon's part / hyperhive round", DAEMON, HIVE)
    if peer:
        await bench_peer(report, plan, scratch)
        report.ratio("mcp_agent_mail round / hyperhive round", PEER_LABEL, HIVE)
    report.note("target (issue 17): one hyperhive round at most 1.5x two floor calls")


def add_row(report: Report, label: str, rounds: list[Rounds]) -> None:
    p50s = [percentile(r.samples, 50) * 1000 for r in rounds]
    p99s = [percentile(r.samples, 99) * 1000 for r in rounds]
    median = sorted(range(len(rounds)), key=lambda i: p50s[i])[len(rounds) // 2]
    chosen = rounds[median]
    extra: dict[str, Any] = {
        "p50_ms": p50s[median],
        "p99_ms": p99s[median],
        "every_round_p50_ms": p50s,
        "calls": len(chosen.samples),
    }
    cpu_text = []
    for name, per in chosen.cpu.items():
        extra[f"{name}_ms_per_round"] = per * 1000
        cpu_text.append(f"{name.replace('_', ' ')} {per * 1000:.2f} ms/round")
    report.add(
        SECTION,
        label,
        p50s[median],
        "ms p50",
        f"p99 {p99s[median]:.2f} ms; " + ", ".join(cpu_text),
        **extra,
    )


# ------------------------------------------------------------------ mcp_agent_mail (--peer)

PEER_LABEL = "mcp_agent_mail: send_message + fetch_inbox (its stdio server)"


def peer_python() -> Path:
    """The venv holding mcp_agent_mail, made with pip on first use (outside the repository)."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "mcp_agent_mail"], check=True
        )
    return python


async def bench_peer(report: Report, plan: Plan, scratch: Path) -> None:
    python = peer_python()
    home = scratch / "agent-mail"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "STORAGE_ROOT": str(home / "archive"),
        "DATABASE_URL": f"sqlite+aiosqlite:///{home}/mail.sqlite3",
        # quiet and offline, as it would be in service: no per-call log panels, no LLM calls
        "TOOLS_LOG_ENABLED": "false",
        "LOG_RICH_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "LLM_ENABLED": "false",
    }
    # its CLI serves only HTTP; the server it builds runs on stdio like any FastMCP server
    serve = "from mcp_agent_mail.app import build_mcp_server; build_mcp_server().run('stdio')"
    argv = [str(python), "-c", serve]
    project = str(scratch)
    async with mcp_session(argv, env) as mail:
        await mail.text("ensure_project", human_key=project)
        names = []
        for _ in range(2):
            got = await mail.session.call_tool(
                "register_agent", {"project_key": project, "program": "bench", "model": "none"}
            )
            names.append(_agent_name(got))
        sender, receiver = names

        async def mail_round(n: int) -> None:
            body = f"round {n}"
            await mail.text(
                "send_message",
                project_key=project,
                sender_name=sender,
                to=[receiver],
                subject=body,
                body_md=body,
            )
            while body not in await mail.text(
                "fetch_inbox", project_key=project, agent_name=receiver, limit=10
            ):
                pass

        rounds = [
            await timed(mail_round, plan.calls, {"server_cpu": _cpu(mail.pid)})
            for _ in range(plan.rounds)
        ]
    add_row(report, PEER_LABEL, rounds)


def _agent_name(result: Any) -> str:
    import json

    text = "\n".join(getattr(b, "text", "") for b in result.content)
    structured = getattr(result, "structured_content", None) or {}
    if "name" in structured:
        return str(structured["name"])
    return str(json.loads(text)["name"])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--floor-server"]:
        floor_server()
        return
    if argv[:1] == ["--harness-server"]:
        harness_server(argv[1])
        return

    def extend(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--floor-server", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument("--harness-server", help=argparse.SUPPRESS)
        parser.add_argument(
            "--peer",
            action="store_true",
            help="also time mcp_agent_mail (pip-installed into a venv under /tmp)",
        )

    args = parse_args(__doc__.splitlines()[0], argv, extend)
    report = Report("bench/mcp_peer.py", args.quick)
    scratch = Path(tempfile.mkdtemp(prefix="hmp", dir="/tmp"))
    try:
        anyio.run(bench, report, Plan.for_args(args.quick), scratch, args.peer, backend="asyncio")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.emit(args.json)


if __name__ == "__main__":
    main()
