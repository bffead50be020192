"""`hive up` run the way an operator runs it, watched from the outside: shared by
`bench/soak.py` and the suite's short soak tests (`tests/soak/`).

The hive is a real `hive up` subprocess (daemon, dashboard, real bwrap sandboxes) in a
directory of its own; an event follower records every event from seq 0 in a thread.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from measure import children

from protocol import messages as m
from protocol.client import HiveError, SyncClient

LINK = re.compile(r"(http://\S+)/login\?token=\S+")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HiveUp:
    root: Path
    config_text: str | None = None
    """None: let `hive up` write its default configuration, as on a first run."""
    proc: subprocess.Popen[bytes] | None = None
    events: list[m.AnyEvent] = field(default_factory=list)
    follower_error: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def admin_sock(self) -> Path:
        return self.run_dir / "admin.sock"

    @property
    def log_file(self) -> Path:
        return self.root / "up.log"

    def start(self, timeout: float = 60.0) -> None:
        if self.config_text is not None:
            (self.root / "hive.toml").write_text(self.config_text)
        env = {
            **os.environ,
            "HIVE_STATE_DIR": str(self.root / "state"),
            "HIVE_RUN_DIR": str(self.run_dir),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "c0re_priv",
                "up",
                "--config",
                str(self.root / "hive.toml"),
                "--web-port",
                str(free_port()),
            ],
            cwd=self.root,
            env=env,
            stdout=self.log_file.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, as a terminal gives it
        )
        self.wait(lambda: LINK.search(self.log()) is not None and self._answers(), timeout)
        threading.Thread(target=self._follow, daemon=True).start()

    def web_pid(self) -> int | None:
        """The dashboard process: `hive up`'s child running `c0re_web`."""
        assert self.proc is not None
        found = [pid for pid, argv in children(self.proc.pid).items() if b"c0re_web" in argv]
        return found[0] if found else None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def dashboard(self) -> str:
        found = LINK.search(self.log())
        assert found is not None
        return found.group(1)

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"hive up exited: {self.log()}")
        try:
            with SyncClient.connect(str(self.admin_sock), timeout=2) as c:
                c.expect(m.Ping(), m.Pong)
            return True
        except (HiveError, OSError):
            return False

    def _follow(self) -> None:
        try:
            with SyncClient.connect(str(self.admin_sock), timeout=None) as c:
                for frame in c.frames(m.Subscribe(since_seq=0)):
                    if isinstance(frame, m.EventFrame):
                        self.events.append(frame.event)
                    if self._stop.is_set():
                        return
        except (HiveError, OSError) as exc:
            if not self._stop.is_set():
                self.follower_error.append(exc)

    def call(self, req: m.Request, reply: type[m.Reply]) -> m.Reply:
        with SyncClient.connect(str(self.admin_sock), timeout=30) as c:
            return c.expect(req, reply)

    def agents(self) -> list[m.AgentRow]:
        got = self.call(m.ListAgents(), m.Agents)
        assert isinstance(got, m.Agents)
        return got.agents

    def messages(self, limit: int = 1000) -> list[m.MessageRow]:
        out: list[m.MessageRow] = []
        before = None
        while True:
            got = self.call(m.ListMessages(limit=limit, before=before), m.Messages)
            assert isinstance(got, m.Messages)
            out += got.messages
            if len(got.messages) < limit:
                return out
            before = got.messages[-1].id

    def all_serving(self) -> bool:
        rows = self.agents()
        return bool(rows) and all(
            r.container == "running" and r.running and r.harness_state == "idle" for r in rows
        )

    def crashes(self) -> list[m.AgentStateChanged]:
        return [
            e
            for e in self.events
            if isinstance(e, m.AgentStateChanged) and e.state in ("crashed", "failed")
        ]

    def web_answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.dashboard() + "/api/ping", timeout=5) as r:
                return r.status in (200, 401, 403)
        except urllib.error.HTTPError as exc:
            return exc.code in (401, 403)
        except OSError:
            return False

    @staticmethod
    def wait(check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError("timed out")
            time.sleep(0.2)

    def stop(self, timeout: float = 60.0) -> int | None:
        self._stop.set()
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise


def soak_dir(prefix: str = "soak") -> Path:
    """A short, traversable temp dir (the dashboard's user must reach the run dir)."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)
    return root


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
