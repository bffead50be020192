"""`git-remote-hive`: git's remote helper for `hive://<owner>/<repo>` (gitremote-helpers(7)).

git runs it as `git-remote-hive <remote> <url>` for `git clone/fetch/push hive://alice/notes`
(or `hive::alice/notes`). It offers one capability, `connect`: on `connect git-upload-pack`
or `connect git-receive-pack` it opens a `ForgeConnect` stream on the caller's own socket —
the agent's (`$HIVE_AGENT_SOCKET`, inside its container) or, on the host, the operator's
`admin.sock` — and from then on relays git's pack protocol both ways: the daemon's
`ForgeData` frames to stdout (and its diagnostics to stderr), stdin to `ForgeWrite`s in
`seq` order, at most `WRITE_WINDOW` unanswered. There is nothing to log in with: the socket
is the identity, and the daemon decides what the caller may read and write.

git starts one helper per fetch or push, so it is built to start fast: one `select()` loop
over three non-blocking file descriptors, the wire shapes and framing, and nothing else (no
event loop library; `import protocol` loads the clients only on demand). Every buffer is
bounded: stdin is read only while the daemon keeps up with the writes, the socket only while
git keeps up with the output. Like everything that runs in a container it never imports the
daemon. git's commands are read a byte at a time, so nothing git sends after `connect` is
left in a buffer the relay does not see.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import select
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from protocol.framing import FrameDecoder, FrameError
from protocol.messages import PROTOCOL_VERSION, Error, Hello, Ok, Welcome
from protocol.messages import forge as f
from protocol.wire import encode, encode_call, reply_decoder, welcome_decoder

SERVICES: tuple[f.GitService, ...] = ("git-upload-pack", "git-receive-pack")
MAX_FRAME = 64 * 1024 * 1024
"""The largest frame this helper accepts: the most any daemon may be configured to send."""
MAX_CHUNK = 1 << 20
BUFFERED = 4 << 20
"""Bytes held for git (or for the daemon) before the other side is no longer read."""
FAILED = 128
"""The exit status of a helper that could not do what git asked (git's own `die` status)."""
CONNECT_CALL = 1


class Refused(Exception):
    """The daemon (or the connection to it) refused; the message is for git's user."""


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
            for known in SERVICES:
                if service == known:
                    try:
                        return Relay(socket_path(), repo, known).run()
                    except Refused as exc:
                        say(f"fatal: hive forge: {exc}")
                        return FAILED
            say(f"fatal: hive forge: unsupported service {service!r}")
            return FAILED
        else:
            say(f"fatal: git-remote-hive: unsupported command {command!r}")
            return FAILED


class Relay:
    """One `ForgeConnect` session: git's stdin/stdout on one side, the daemon on the other."""

    def __init__(self, path: str, repo: str, service: f.GitService) -> None:
        self.repo = repo
        self.service = service
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise Refused(f"cannot reach the hive at {path}: {exc.strerror or exc}") from None
        self.decoder = FrameDecoder(MAX_FRAME)
        self.ready: list[bytes] = []
        self.to_daemon = bytearray()
        self.to_git = bytearray()
        self.ids = itertools.count(CONNECT_CALL + 1)
        self.writes: set[int] = set()
        """Ids of `ForgeWrite` calls not answered yet (at most `WRITE_WINDOW`)."""
        self.seq = 0
        self.stdin_done = False
        self.exit_code: int | None = None

    # ---------------------------------------------------------------- blocking start

    def _next_frame(self) -> bytes:
        while not self.ready:
            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                raise Refused(f"the hive hung up: {exc.strerror or exc}") from None
            if not data:
                raise Refused("the hive closed the connection")
            try:
                self.ready.extend(self.decoder.feed(data))
            except FrameError as exc:
                raise Refused(f"a damaged frame from the hive: {exc}") from None
        return self.ready.pop(0)

    def _open(self) -> f.ForgeOpened:
        self.sock.sendall(encode(Hello(protocol=PROTOCOL_VERSION, client="git-remote-hive")))
        welcome = welcome_decoder.decode(self._next_frame())
        if isinstance(welcome, Error):
            raise Refused(f"{welcome.code}: {welcome.message}")
        assert isinstance(welcome, Welcome)
        request = f.ForgeConnect(repo=self.repo, service=self.service)
        self.sock.sendall(encode_call(CONNECT_CALL, request, MAX_FRAME))
        first = reply_decoder.decode(self._next_frame())
        if isinstance(first, Error):
            raise Refused(f"{first.code}: {first.message}")
        if not isinstance(first, f.ForgeOpened):
            raise Refused(f"the hive answered {type(first).__name__}, not ForgeOpened")
        return first

    # ---------------------------------------------------------------- the relay

    def run(self) -> int:
        with self.sock:
            opened = self._open()
            if opened.created:
                say(f"hive forge: created {self.repo}")
            max_write = max(1, min(opened.max_write, MAX_CHUNK))
            write_all(1, b"\n")  # connected: git speaks to the service from here on
            for fd in (0, 1, self.sock.fileno()):
                os.set_blocking(fd, False)
            try:
                for body in self.ready:  # what arrived with the ForgeOpened frame
                    self._handle(body)
                self.ready.clear()
                while self.exit_code is None or self.to_git:
                    self._step(max_write)
                return self.exit_code
            finally:
                for fd in (0, 1):
                    with contextlib.suppress(OSError):
                        os.set_blocking(fd, True)

    def _step(self, max_write: int) -> None:
        sock = self.sock.fileno()
        readers, writers = [], []
        if self.exit_code is None and len(self.to_git) < BUFFERED:
            readers.append(sock)
        if (
            not self.stdin_done
            and self.exit_code is None
            and len(self.writes) < f.WRITE_WINDOW
            and len(self.to_daemon) < BUFFERED
        ):
            readers.append(0)
        if self.to_daemon:
            writers.append(sock)
        if self.to_git:
            writers.append(1)
        readable, writable, _ = select.select(readers, writers, [])
        if 1 in writable:
            try:
                del self.to_git[: os.write(1, self.to_git)]
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno != errno.EPIPE:
                    raise
                self.to_git.clear()  # git stopped reading: it has what it wanted
                self.exit_code = self.exit_code if self.exit_code is not None else 0
        if sock in writable:
            try:
                del self.to_daemon[: self.sock.send(self.to_daemon)]
            except BlockingIOError:
                pass
            except OSError as exc:
                raise Refused(f"the hive hung up: {exc.strerror or exc}") from None
        if 0 in readable:
            try:
                data = os.read(0, max_write)
            except BlockingIOError:
                data = None
            if data is not None:
                self._send_write(data)
        if sock in readable:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                raise Refused(f"the hive hung up: {exc.strerror or exc}") from None
            if not data:
                raise Refused("the hive closed the connection before the session ended")
            try:
                bodies = self.decoder.feed(data)
            except FrameError as exc:
                raise Refused(f"a damaged frame from the hive: {exc}") from None
            for body in bodies:
                self._handle(body)

    def _send_write(self, data: bytes) -> None:
        """git's next bytes (or its end of input) as the next `ForgeWrite`."""
        call = next(self.ids)
        write = f.ForgeWrite(call=CONNECT_CALL, seq=self.seq, data=data, eof=not data)
        self.to_daemon += encode_call(call, write, MAX_FRAME)
        self.writes.add(call)
        self.seq += 1
        if not data:
            self.stdin_done = True

    def _handle(self, body: bytes) -> None:
        reply = reply_decoder.decode(body)
        if reply.id == CONNECT_CALL:
            if isinstance(reply, f.ForgeData):
                if reply.stderr:
                    sys.stderr.buffer.write(reply.data)
                    sys.stderr.flush()
                else:
                    self.to_git += reply.data
            elif isinstance(reply, f.ForgeClosed):
                if reply.message:
                    say(f"hive forge: {reply.message}")
                self.exit_code = 0 if reply.exit_code == 0 else FAILED
            elif isinstance(reply, Error):
                raise Refused(f"{reply.code}: {reply.message}")
        elif reply.id in self.writes:
            self.writes.discard(reply.id)
            if isinstance(reply, Error) and reply.code != "not_found":
                # not_found: the service ended before this write, which is how sessions end
                raise Refused(f"{reply.code}: {reply.message}")
            assert isinstance(reply, Ok | Error)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
