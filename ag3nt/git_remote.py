"""`git-remote-hive`: git's remote helper for `hive://<owner>/<repo>` (gitremote-helpers(7)).

git runs it as `git-remote-hive <remote> <url>` for `git clone/fetch/push hive://alice/notes`
(or `hive::alice/notes`). It offers one capability, `connect`: on `connect git-upload-pack`
or `connect git-receive-pack` it opens a `ForgeConnect` stream on the caller's own socket —
the agent's (`$HIVE_AGENT_SOCKET`, inside its container) or, on the host, the operator's
`admin.sock` — and from then on relays git's pack protocol both ways: the daemon's
`ForgeData` frames to stdout (and its diagnostics to stderr), stdin to `ForgeWrite`s in
order, at most `WRITE_WINDOW` in flight. There is nothing to log in with: the socket is the
identity, and the daemon decides what the caller may read and write.

Like everything that runs in a container it imports `protocol` and never the daemon. It
reads git's commands a byte at a time, so nothing git sends after `connect` is left in a
buffer the relay does not see.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from protocol import forge as f
from protocol.client import HiveClient, HiveError, ReplyStream

SERVICES = ("git-upload-pack", "git-receive-pack")
MAX_CHUNK = 1 << 20
FAILED = 128
"""The exit status of a helper that could not do what git asked (git's own `die` status)."""


def socket_path() -> str:
    """This caller's socket: the agent's own inside a container, else the operator's."""
    agent = os.environ.get("HIVE_AGENT_SOCKET")
    if agent:
        return agent
    run_dir = os.environ.get("HIVE_RUN_DIR")
    if not run_dir:
        if os.geteuid() == 0:
            run_dir = "/run/hyperhive"
        elif os.environ.get("XDG_RUNTIME_DIR"):
            run_dir = str(Path(os.environ["XDG_RUNTIME_DIR"]) / "hyperhive")
        else:
            run_dir = f"/tmp/hyperhive-{os.getuid()}"
    return str(Path(run_dir) / "admin.sock")


def say(text: str) -> None:
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


def read_line(fd: int) -> str | None:
    """One command line from git (without its newline); `None` at end of input."""
    line = bytearray()
    while True:
        byte = os.read(fd, 1)
        if not byte:
            return None if not line else line.decode(errors="replace")
        if byte == b"\n":
            return line.decode(errors="replace")
        line += byte


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        say("usage: git-remote-hive <remote> <hive://owner/repo> (git runs this for you)")
        return 2
    try:
        repo = f.parse_url(args[-1])
    except ValueError as exc:
        say(f"fatal: {exc}")
        return FAILED
    while True:
        command = read_line(0)
        if not command:  # git is done with us (or sent the blank line that ends a batch)
            return 0
        if command == "capabilities":
            write_all(1, b"connect\n\n")
        elif command.startswith("connect "):
            service = command.removeprefix("connect ")
            if service not in SERVICES:
                say(f"fatal: hive forge: unsupported service {service!r}")
                return FAILED
            return trio.run(relay, socket_path(), repo, service)
        else:
            say(f"fatal: git-remote-hive: unsupported command {command!r}")
            return FAILED


async def relay(sock: str, repo: str, service: str) -> int:
    """Open the service on the daemon, tell git it is connected, and relay until it ends."""
    try:
        async with (
            HiveClient.connect(sock, client="git-remote-hive") as client,
            client.stream(f.ForgeConnect(repo=repo, service=service)) as frames,  # type: ignore[arg-type]
        ):
            opened = await frames.__anext__()
            if not isinstance(opened, f.ForgeOpened):
                raise HiveError("internal", f"unexpected {type(opened).__name__} first")
            if opened.created:
                say(f"hive forge: created {repo}")
            stdout = trio.lowlevel.FdStream(os.dup(1))
            stdin = trio.lowlevel.FdStream(os.dup(0))
            async with stdout, stdin:
                await stdout.send_all(b"\n")  # connected: git speaks to the service now
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        upstream, client, frames.call_id, stdin, min(opened.max_write, MAX_CHUNK)
                    )
                    code = await downstream(frames, stdout)
                    nursery.cancel_scope.cancel()
                return code
    except HiveError as exc:
        say(f"fatal: hive forge: {exc.code}: {exc.message}")
        return FAILED


async def downstream(frames: ReplyStream, stdout: trio.lowlevel.FdStream) -> int:
    """The service's output to git, until the daemon says the session ended."""
    async for frame in frames:
        if isinstance(frame, f.ForgeData):
            if frame.stderr:
                sys.stderr.buffer.write(frame.data)
                sys.stderr.flush()
            else:
                await stdout.send_all(frame.data)
        elif isinstance(frame, f.ForgeClosed):
            if frame.message:
                say(f"hive forge: {frame.message}")
            return 0 if frame.exit_code == 0 else FAILED
    return FAILED


async def upstream(
    client: HiveClient, call: int, stdin: trio.lowlevel.FdStream, max_write: int
) -> None:
    """git's bytes to the service, in order, with up to `WRITE_WINDOW` writes in flight."""
    window = trio.Semaphore(f.WRITE_WINDOW)
    seq = 0
    async with trio.open_nursery() as writes:
        while True:
            data = await stdin.receive_some(max_write)
            await window.acquire()
            writes.start_soon(
                send, client, f.ForgeWrite(call=call, seq=seq, data=data, eof=not data), window
            )
            seq += 1
            if not data:
                return


async def send(client: HiveClient, write: f.ForgeWrite, window: trio.Semaphore) -> None:
    try:
        await client.call(write)
    except HiveError as exc:
        if exc.code != "not_found":  # not_found: the service already ended, which is fine
            raise
    finally:
        window.release()


if __name__ == "__main__":
    sys.exit(main())
