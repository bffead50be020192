"""`python -m ag3nt.mcp_relay LISTENER FALLBACK…`: the MCP server command of a claude turn
(and of the scripted runtime's one session).

The harness keeps the hyperhive MCP server loaded (`ag3nt.mcp_listener`):
started per turn as `python -m ag3nt mcp`, the server cost ~1.8 s of CPU to import the `mcp`
SDK, and the CLI waits for it before its first model call. This relay is what the CLI starts
instead. It imports the standard library only (~60 ms), connects to the harness's socket
`LISTENER`, and copies bytes both ways: stdin to the socket, the socket to stdout (the stdio
transport's framing, one JSON-RPC message per line, passes through untouched).

When it cannot connect (the harness's listener is gone), it runs `FALLBACK` in its place:
`python -m ag3nt mcp --socket …`, the same tools served by a process of their own, slower to
start. It exits when the server closes the connection; the end of its stdin is passed on as a
half-close, which ends the session.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading

CHUNK = 1 << 16


def command(listener: str, server: list[str]) -> list[str]:
    """The relay's command line: reach `listener`, or run `server` when it is not there."""
    return [sys.executable, "-m", "ag3nt.mcp_relay", listener, *server]


def _copy_in(sock: socket.socket) -> None:
    """stdin → socket, then a half-close, so the server sees the session end."""
    try:
        while data := os.read(0, CHUNK):
            sock.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)


def _write_out(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def relay(listener: str, fallback: list[str]) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(listener)
    except OSError as exc:
        sock.close()
        print(
            f"hive-mcp relay: cannot reach the harness at {listener} ({exc.strerror}); "
            "starting the MCP server itself",
            file=sys.stderr,
            flush=True,
        )
        os.execvp(fallback[0], fallback)
    threading.Thread(target=_copy_in, args=(sock,), name="stdin", daemon=True).start()
    try:
        while data := sock.recv(CHUNK):
            _write_out(data)
    except OSError:  # the server reset the connection, or the CLI closed our stdout
        return 1
    return 0


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        print("usage: python -m ag3nt.mcp_relay LISTENER FALLBACK-COMMAND…", file=sys.stderr)
        raise SystemExit(2)
    # os._exit: the stdin thread may still be blocked in read(); nothing is buffered
    os._exit(relay(argv[0], argv[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
