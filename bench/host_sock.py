"""`host.sock` against `admin.sock`, measured in the same run on one daemon subprocess.

(a) The roster: `agent_status` over host.sock — on one connection, and on a connection per
request as `hivectl` does — next to the baseline, `ListAgents` over admin.sock with the
blocking `SyncClient`; and `list`. The hive has 32 registered agents (none running).
(b) Pushes: after a `SetPaused` over admin.sock, how long until every one of N subscribers
of `subscribe_agent_status` holds the changed row, next to the baseline, an admin.sock
`Subscribe` receiving the `agent_state_changed` event of the same call.

Run: `.venv/bin/python bench/host_sock.py [--quick] [--json]`. It measures; it never judges.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio
from daemon_process import running_daemon
from measure import latencies_blocking, summary_ms
from report import Report, parse_args

from protocol import messages as m
from protocol.client import HiveClient, SyncClient

AGENTS = 32
SUBSCRIBERS = (1, 16, 60)

ADMIN_LIST = "ListAgents, admin.sock, SyncClient"
HOST_STATUS = "agent_status, host.sock, one connection"
HOST_STATUS_DIAL = "agent_status, host.sock, a connection per request"
HOST_LIST = "list, host.sock, one connection"
ADMIN_EVENT = "agent_state_changed event, admin.sock Subscribe"


def host_push(n: int) -> str:
    return f"row pushed to {n} subscriber{'s' if n > 1 else ''}"


class LineSocket:
    """A blocking host.sock connection: write a line, read a line."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.buffer = b""

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError("host.sock closed")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def ask(self, request: bytes) -> bytes:
        self.sock.sendall(request)
        return self.line()

    def close(self) -> None:
        self.sock.close()


def roster(report: Report, run: Path, calls: int, budget: float) -> None:
    section = f"the roster of {AGENTS} agents (daemon subprocess, client in this process)"
    host_path = str(run / "host.sock")
    with SyncClient.connect(str(run / "admin.sock")) as admin:
        base = latencies_blocking(lambda: admin.expect(m.ListAgents(), m.Agents), calls, budget)
    one = LineSocket(host_path)
    status = latencies_blocking(lambda: one.ask(b'{"cmd":"agent_status"}\n'), calls, budget)
    size = len(one.ask(b'{"cmd":"agent_status"}\n'))
    names = latencies_blocking(lambda: one.ask(b'{"cmd":"list"}\n'), calls, budget)
    one.close()

    def dial() -> bytes:
        c = LineSocket(host_path)
        try:
            return c.ask(b'{"cmd":"agent_status"}\n')
        finally:
            c.close()

    dialled = latencies_blocking(dial, calls, budget)
    for label, samples, detail in (
        (ADMIN_LIST, base, "baseline: the admin verb every host cmd runs"),
        (HOST_STATUS, status, f"{size} bytes per answer"),
        (HOST_STATUS_DIAL, dialled, "connect, one line each way, close"),
        (HOST_LIST, names, "names only"),
    ):
        s = summary_ms(samples)
        report.add(section, label, s["p50_ms"], "ms p50", detail, **s)


async def pushes(report: Report, run: Path, toggles: int) -> None:
    section = "a change, until every subscriber holds it (SetPaused over admin.sock)"
    host_path = str(run / "host.sock")
    async with HiveClient.connect(str(run / "admin.sock")) as admin:
        # baseline: the admin event of the same call
        samples: list[float] = []
        async with admin.stream(m.Subscribe(kinds=["agent_state_changed"])) as events:
            await anext(events)
            for i in range(toggles):
                start = time.perf_counter()
                await admin.expect(m.SetPaused(name="a00", paused=i % 2 == 0), m.AgentInfo)
                while True:
                    frame = await anext(events)
                    if isinstance(frame, m.EventFrame) and frame.event.name == "a00":  # type: ignore[union-attr]
                        break
                samples.append(time.perf_counter() - start)
        s = summary_ms(samples)
        report.add(section, ADMIN_EVENT, s["p50_ms"], "ms p50", "baseline: 1 subscriber", **s)

        for n in SUBSCRIBERS:
            subs = [await trio.open_unix_socket(host_path) for _ in range(n)]
            buffers = [b""] * n
            for sub in subs:
                await sub.send_all(b'{"cmd":"subscribe_agent_status"}\n')
            for i in range(n):
                buffers[i] = await _line(subs[i], buffers[i], lambda _: True)
            samples = []
            for t in range(toggles):
                paused = t % 2 == 0
                want = b'"paused":true' if paused else b'"paused":false'
                start = time.perf_counter()
                await admin.expect(m.SetPaused(name="a01", paused=paused), m.AgentInfo)
                for i in range(n):
                    buffers[i] = await _line(subs[i], buffers[i], lambda line, w=want: w in line)
                samples.append(time.perf_counter() - start)
            for sub in subs:
                await sub.aclose()
            s = summary_ms(samples)
            report.add(section, host_push(n), s["p50_ms"], "ms p50", f"{n} connections", **s)


async def _line(stream: trio.SocketStream, buffer: bytes, wanted: Callable[[bytes], bool]) -> bytes:
    """Read lines from `stream` until one is `wanted`; return what is left over."""
    with trio.fail_after(30):
        while True:
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                json.loads(line)  # every push is a JSON line
                if wanted(line):
                    return buffer
            data = await stream.receive_some(1 << 16)
            if not data:
                raise EOFError("host.sock closed")
            buffer += data


def wait_until_started(log: Path, timeout: float = 180.0) -> None:
    """Wait for the daemon's "serving on" line. It answers admin.sock before its start is
    over (uids claimed, configs rendered: on a loaded machine with a crowded uid claims dir
    that held every call for 0.4–2.8 s over ~20 s); measure the steady state, not that."""
    deadline = time.monotonic() + timeout
    while " serving on " not in log.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon did not finish starting in {timeout:g}s")
        time.sleep(0.1)


def main() -> None:
    args = parse_args(__doc__ or "")
    calls, budget, toggles = (100, 1.0, 10) if args.quick else (2000, 8.0, 100)
    report = Report("host_sock", args.quick)
    root = Path(tempfile.mkdtemp(prefix="hsb", dir="/tmp"))
    agents = "".join(f"[agents.a{i:02d}]\n" for i in range(AGENTS))
    try:
        with running_daemon(root, f"[hive]\nautostart = false\n\n{agents}") as daemon:
            run = daemon.paths.run_dir
            wait_until_started(root / "daemon.log")
            roster(report, run, calls, budget)
            trio.run(pushes, report, run, toggles)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report.ratio("agent_status on host.sock / ListAgents on admin.sock", HOST_STATUS, ADMIN_LIST)
    report.ratio("a connection per request / one connection", HOST_STATUS_DIAL, HOST_STATUS)
    for n in SUBSCRIBERS:
        report.ratio(f"{host_push(n)} / admin event", host_push(n), ADMIN_EVENT)
    report.emit(args.json)


if __name__ == "__main__":
    sys.exit(main())
