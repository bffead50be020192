"""A daemon (`python -m c0re_priv c0re`) run as a subprocess in a scratch directory.

The benchmarks drive the daemon from another process so that the client being timed and the
daemon serving it do not share a thread (or a GIL), as in production. `running_daemon` owns
the child: it is stopped with SIGTERM (SIGKILL if it does not exit) when the block ends, and
a child that dies early or never answers `Ping` raises with its log attached.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from c0re_priv.config import HiveSettings, Paths, resolve_paths
from protocol import messages as m
from protocol.client import HiveError, SyncClient

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


class DaemonFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Daemon:
    paths: Paths
    pid: int


def daemon_paths(root: Path) -> Paths:
    return resolve_paths(HiveSettings(), root / "state", root / "run")


@contextmanager
def running_daemon(root: Path, config_toml: str, agents: Iterable[str] = ()) -> Iterator[Daemon]:
    """Start a daemon on `root/state` and `root/run` with `config_toml`; yield it once serving.

    Serving means `admin.sock` and the sockets of `agents` answer `Ping`: the daemon answers
    on `admin.sock` before it has opened the agents' sockets.
    """
    root.mkdir(parents=True, exist_ok=True)
    config_file = root / "hive.toml"
    config_file.write_text(config_toml)
    log_path = root / "daemon.log"
    paths = daemon_paths(root)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "c0re_priv",
                "c0re",
                "--state-dir",
                str(paths.state_dir),
                "--run-dir",
                str(paths.run_dir),
                "--config",
                str(config_file),
            ],
            stdout=log,
            stderr=log,
        )
    try:
        for sock in [paths.admin_sock, *(paths.agent_sock(name) for name in agents)]:
            _wait_until_serving(proc, sock, log_path)
        yield Daemon(paths, proc.pid)
    finally:
        _stop(proc, log_path)


def _wait_until_serving(proc: subprocess.Popen[bytes], sock: Path, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonFailed(f"daemon exited with {proc.returncode}:\n{log_path.read_text()}")
        if sock.exists():
            try:
                with SyncClient.connect(str(sock), timeout=2) as client:
                    client.expect(m.Ping(), m.Pong)
                return
            except (HiveError, OSError):
                pass
        time.sleep(0.05)
    raise DaemonFailed(
        f"{sock} did not answer within {START_TIMEOUT:.0f}s:\n{log_path.read_text()}"
    )


def _stop(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print(
                f"warning: daemon ignored SIGTERM for {STOP_TIMEOUT:.0f}s and was killed",
                file=sys.stderr,
            )
            return
    if proc.returncode != 0:
        print(
            f"warning: daemon exited with {proc.returncode}; log:\n{log_path.read_text()}",
            file=sys.stderr,
        )
