"""Every peer is bounded: an agent cannot take the daemon's fds, memory or the operator's door.

The issue's attacks, for real: processes running as an agent's uid open thousands of
connections to its socket (each saying `Hello`), or hold hundreds of almost-complete 1 MiB
frames, against a `hive c0re` process whose fd limit is low enough for the flood to reach
it. Throughout, `admin.sock` answers `ping` (the real `hive ctl ping` too), the daemon stays
under its limit and its memory stays flat, and the log says what happened in a few lines.
The timeouts (frame, idle, write) and the accept loop's handling of EMFILE are driven
in-process with short settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from c0re_priv import server
from c0re_priv.hive import Hive
from protocol import messages as m
from protocol.client import HiveClient, HiveError, SyncClient
from protocol.framing import DEFAULT_MAX_FRAME, HEADER
from protocol.wire import encode, encode_call
from tests.conftest import DaemonProcess, make_config
from tests.security.conftest import daemon_in, needs_root

SYSTEM_PYTHON = Path("/usr/bin/python3")
needs_system_python = pytest.mark.skipif(
    not SYSTEM_PYTHON.exists(), reason="an attacker process needs /usr/bin/python3"
)
HELLO = encode(m.Hello(protocol=m.PROTOCOL_VERSION, client="flood"))
FD_LIMIT = 1024

FLOOD = r"""
import json, socket, sys, time
path, count, hello, hold = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]), float(sys.argv[4])
socks, failed = [], {}
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)  # blocking: waits while the daemon's backlog is full
        s.settimeout(10)
        s.sendall(hello)
    except OSError as exc:
        failed[str(exc.errno)] = failed.get(str(exc.errno), 0) + 1
        s.close()
        continue
    socks.append(s)
welcomed = refused = other = 0
reasons = set()
for s in socks:
    try:
        first = s.recv(4096)
    except OSError:
        first = b""
    if b"welcome" in first:
        welcomed += 1
    elif b"rate_limited" in first:
        refused += 1
        reasons.add(first[first.find(b"message") + 8:].split(b"\xb3")[0].decode(errors="replace"))
    else:
        other += 1
print(json.dumps({"welcomed": welcomed, "refused": refused, "other": other,
                  "failed": failed, "reasons": sorted(reasons)}), flush=True)
time.sleep(hold)
"""

PARTIAL = r"""
import json, socket, struct, sys, time
path, count, hello, size = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]), int(sys.argv[4])
socks = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(hello)
    s.setblocking(False)
    socks.append([s, struct.pack(">I", size) + b"\x00" * (size - 1)])  # one byte short
sent = 0
deadline = time.monotonic() + 3
while time.monotonic() < deadline:  # push what the daemon (and the kernel) will take
    for entry in socks:
        try:
            n = entry[0].send(entry[1][:65536])
        except (BlockingIOError, OSError):
            continue
        sent += n
        entry[1] = entry[1][n:]
    time.sleep(0.01)
print(json.dumps({"sent": sent}), flush=True)
sys.stdin.readline()  # the test reads the daemon's memory meanwhile
told = []
for s, _ in socks:
    s.setblocking(True)
    s.settimeout(20)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    told.append("was not completed within" in data.decode(errors="replace"))
print(json.dumps({"told": sum(told), "count": len(told)}), flush=True)
"""


def limited_daemon(root: Path, hive_settings: str) -> DaemonProcess:
    daemon = daemon_in(
        root, f"[hive]\nautostart = false\n{hive_settings}\n[agents.alice]\n[agents.bob]\n"
    )
    daemon.wrapper = ("prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--")
    return daemon


def owner_of(sock: Path) -> int:
    """The uid the daemon gives an agent's socket (just after admin.sock first answers)."""
    deadline = time.monotonic() + 10
    while (uid := os.stat(sock).st_uid) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uid != 0, "the agent's socket belongs to its uid"
    return uid


def attacker(uid: int, script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--",
            str(SYSTEM_PYTHON),
            "-c",
            script,
            *args,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ping_ms(daemon: DaemonProcess) -> float:
    start = time.monotonic()
    with SyncClient.connect(str(daemon.paths.admin_sock), timeout=10) as c:
        c.expect(m.Ping(), m.Pong)
    return (time.monotonic() - start) * 1000


def cli_ping(daemon: DaemonProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "c0re_priv", "ctl", "ping", "--run-dir", str(daemon.paths.run_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def first_lines(procs: list[subprocess.Popen[str]]) -> list[str | None]:
    """Each process's first line of output, filled in by a reader thread as it comes."""
    lines: list[str | None] = [None] * len(procs)

    def read(i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        lines[i] = proc.stdout.readline()

    for i, proc in enumerate(procs):
        threading.Thread(target=read, args=(i, proc), daemon=True).start()
    return lines


def flood(daemon: DaemonProcess, processes: int, each: int) -> tuple[list[dict], list[float]]:
    """`processes` attackers as alice's uid open `each` connections and hold them; meanwhile
    the operator pings (and runs the real `hive ctl ping` every 20 pings). Returns what the
    attackers saw and every ping's milliseconds."""
    sock = daemon.paths.agent_sock("alice")
    uid = owner_of(sock)
    assert daemon.proc is not None
    floods = [
        attacker(uid, FLOOD, str(sock), str(each), HELLO.hex(), "4") for _ in range(processes)
    ]
    lines = first_lines(floods)
    pings: list[float] = []
    cli_runs = []
    peak_fds = 0
    deadline = time.monotonic() + 120
    while any(line is None for line in lines):
        assert time.monotonic() < deadline, "the attackers did not finish"
        pings.append(ping_ms(daemon))
        peak_fds = max(peak_fds, fds_of(daemon.proc.pid))
        if len(pings) % 20 == 0:
            cli_runs.append(cli_ping(daemon))
        time.sleep(0.05)
    cli_runs.append(cli_ping(daemon))  # while the attackers still hold their connections
    peak_fds = max(peak_fds, fds_of(daemon.proc.pid))
    for proc in floods:
        proc.wait(60)
    assert all(line for line in lines), [p.stderr.read() if p.stderr else "" for p in floods]
    assert all(run.returncode == 0 and "pong in" in run.stdout for run in cli_runs), cli_runs
    assert peak_fds < FD_LIMIT - server.ADMIN_FD_RESERVE, peak_fds
    print(
        f"{len(pings)} admin pings during the flood, slowest {max(pings):.0f} ms; "
        f"daemon peaked at {peak_fds} fds of {FD_LIMIT}"
    )
    return [json.loads(line) for line in lines if line], pings


@needs_root
@needs_system_python
def test_a_connection_flood_from_an_agent_is_capped_and_admin_keeps_answering(open_tmp, daemons):
    daemon = limited_daemon(open_tmp, "")
    daemons.append(daemon)
    daemon.start()
    results, pings = flood(daemon, processes=2, each=3000)
    welcomed = sum(r["welcomed"] for r in results)
    refused = sum(r["refused"] for r in results)
    assert welcomed == 32  # agent_max_connections, over both processes
    assert refused + sum(sum(r["failed"].values()) for r in results) >= 6000 - 32 - 64
    assert any(
        "too many connections to this socket" in why for r in results for why in r["reasons"]
    )
    assert max(pings) < 2000, f"admin ping took up to {max(pings):.0f} ms"
    log = daemon.log()
    assert "Traceback" not in log
    assert log.count("refused a connection") <= 2  # once, then once a minute with a count
    # the flood is over: alice's socket serves again, and bob's never stopped
    for name in ("alice", "bob"):
        with SyncClient.connect(str(daemon.paths.agent_sock(name))) as c:
            c.expect(m.Ping(), m.Pong)


@needs_root
@needs_system_python
def test_the_fd_reserve_keeps_admin_reachable_when_agents_may_open_thousands(open_tmp, daemons):
    """With the per-agent cap out of the way, the fd reserve is what stops the flood."""
    daemon = limited_daemon(open_tmp, "agent_max_connections = 10000\n")
    daemons.append(daemon)
    daemon.start()
    results, pings = flood(daemon, processes=2, each=3000)
    welcomed = sum(r["welcomed"] for r in results)
    assert FD_LIMIT - 256 - 64 < welcomed < FD_LIMIT - 256  # fd_reserve = 256 held back
    assert any("file descriptor reserve" in why for r in results for why in r["reasons"])
    assert max(pings) < 2000, f"admin ping took up to {max(pings):.0f} ms"
    log = daemon.log()
    assert "Traceback" not in log and "accept failed" not in log


@needs_root
@needs_system_python
def test_hundreds_of_almost_complete_frames_do_not_grow_the_daemon(open_tmp, daemons):
    """The issue: 300 connections each holding a 1 MiB − 1 byte frame grew the daemon by
    312 MiB. Now one agent's unfinished frames are held to `peer_buffer_bytes` (4 MiB), the
    rest wait in the kernel, and each is dropped when `frame_timeout_seconds` passes."""
    daemon = limited_daemon(open_tmp, "agent_max_connections = 400\nframe_timeout_seconds = 8\n")
    daemons.append(daemon)
    daemon.start()
    assert daemon.proc is not None
    sock = daemon.paths.agent_sock("alice")
    before = rss_kib(daemon.proc.pid)
    proc = attacker(owner_of(sock), PARTIAL, str(sock), "300", HELLO.hex(), str(DEFAULT_MAX_FRAME))
    assert proc.stdout is not None and proc.stdin is not None
    sent = json.loads(proc.stdout.readline())["sent"]
    grown = rss_kib(daemon.proc.pid) - before
    assert ping_ms(daemon) < 2000
    proc.stdin.write("\n")
    proc.stdin.flush()
    told = json.loads(proc.stdout.readline())
    proc.wait(60)
    print(f"sent {sent / 2**20:.0f} MiB on 300 connections; daemon grew {grown / 1024:.1f} MiB")
    assert sent > 64 * 2**20, "the attack must really push that much"
    assert grown < 16 * 1024, f"the daemon grew {grown / 1024:.1f} MiB"
    assert told == {"told": 300, "count": 300}  # each dropped with a typed bad_frame


# ------------------------------------------------------------------ timeouts, in-process


@pytest.fixture
def config():
    return make_config(
        agents={"alice": {}},
        frame_timeout_seconds=0.5,
        idle_timeout_seconds=0.5,
        write_timeout_seconds=0.5,
    )


async def raw(path: Path) -> trio.SocketStream:
    stream = await trio.open_unix_socket(str(path))
    await stream.send_all(HELLO)
    assert b"welcome" in await stream.receive_some(65536)
    return stream


async def read_all(stream: trio.SocketStream, limit: float = 5.0) -> bytes:
    """Everything the daemon says until it hangs up (a reset after its last words, when our
    own bytes were still unread, is a hang-up too)."""
    data = b""
    with trio.fail_after(limit), contextlib.suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_an_unfinished_frame_is_dropped_after_the_frame_timeout(hive: Hive):
    for drip in (False, True):  # all at once, or a byte at a time (slowloris)
        stream = await raw(hive.paths.agent_sock("alice"))
        await stream.send_all(HEADER.pack(1000) + b"\x81")
        start = trio.current_time()
        if drip:
            for _ in range(20):
                await trio.sleep(0.1)
                try:
                    await stream.send_all(b"\x00")
                except trio.BrokenResourceError:
                    break
        said = await read_all(stream)
        assert b"bad_frame" in said and b"was not completed within 0.5s" in said
        assert trio.current_time() - start < 3.0
        await stream.aclose()


async def test_an_idle_connection_is_closed_but_a_stream_is_never_idle(hive: Hive):
    idle = await raw(hive.paths.agent_sock("alice"))
    said = await read_all(idle)
    assert b"unavailable" in said and b"idle for 0.5s" in said
    async with (
        HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice,
        HiveClient.connect(str(hive.paths.admin_sock)) as admin,
        alice.stream(m.WaitForWork()),
        admin.stream(m.Subscribe()) as events,
    ):
        await trio.sleep(2.0)  # four idle timeouts
        assert await alice.expect(m.Ping(), m.Pong)
        async with HiveClient.connect(str(hive.paths.admin_sock)) as other:
            await other.expect(m.OperatorSend(to="alice", body="still there?"), m.Sent)
        frame = await events.__anext__()
        assert isinstance(frame, m.Subscribed | m.EventFrame)


async def test_a_peer_that_never_reads_its_replies_is_dropped(hive: Hive, caplog):
    stream = await raw(hive.paths.admin_sock)
    calls = b"".join(encode_call(i, m.ListAgents()) for i in range(1, 20_001))
    with trio.move_on_after(10), contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(calls)  # and never a read
    with trio.fail_after(10):
        while "no reply read for 0.5s" not in caplog.text:
            await trio.sleep(0.05)
    await stream.aclose()
    async with HiveClient.connect(str(hive.paths.admin_sock)) as admin:
        await admin.expect(m.Ping(), m.Pong)


async def test_emfile_on_accept_is_waited_out_and_logged_once(hive: Hive, caplog):
    """A real EMFILE: this process's fd limit lowered to what is open, so the daemon's
    accept fails; the listener retries, logs once (not a traceback every 0.1 s), and the
    waiting client is served as soon as fds are free again."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    try:
        client.setblocking(False)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new fd at all
        client.connect(str(hive.paths.admin_sock))  # queued in the backlog
        client.send(HELLO)
        await trio.sleep(2.0)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
    with trio.fail_after(5):
        assert b"welcome" in await stream.receive_some(65536)
    await stream.aclose()
    failures = [r for r in caplog.records if "accept failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert "Too many open files" in failures[0].getMessage()
    assert failures[0].exc_info is None
    assert not [r for r in caplog.records if r.name == "trio.serve_listeners"]


async def test_refused_connections_hear_why(hive: Hive):
    hive.settings.agent_max_connections = 2  # read by each new peer's bounds
    assert hive.sockets is not None
    hive.sockets.peers.pop("agent:alice", None)  # type: ignore[attr-defined]
    async with (
        HiveClient.connect(str(hive.paths.agent_sock("alice"))),
        HiveClient.connect(str(hive.paths.agent_sock("alice"))),
    ):
        with pytest.raises(HiveError) as refused:
            async with HiveClient.connect(str(hive.paths.agent_sock("alice"))):
                pass
        assert refused.value.code == "rate_limited"
        assert "too many connections to this socket (2 open, the limit is 2)" in (
            refused.value.message
        )
    while hive.sockets.peers["agent:alice"].connections:  # the daemon sees both hang up
        await trio.sleep(0.01)
    async with HiveClient.connect(str(hive.paths.agent_sock("alice"))) as again:
        await again.expect(m.Ping(), m.Pong)
