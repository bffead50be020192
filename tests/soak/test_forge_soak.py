"""The forge under long, mixed and hostile use (HIVE_SLOW=1; `HIVE_FORGE_SOAK_MINUTES`, default 3).

Against one daemon subprocess, for the whole run and all at once: alice commits and pushes
to her repository; bob keeps a fork, pushes branches and opens merge requests, some of which
conflict; alice merges what merges and closes what conflicts; the manager clones and fetches
everything; and a vandal starts clones and pushes and kills them (git and its helper, by
process group) at random moments, opens git sessions and hangs up, and sends writes for
sessions that do not exist. At the end: the daemon answers at once, no git service is left
running, no scratch repository is left, every repository passes `git fsck`, the file
descriptors are where they started, and the log has no traceback.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from protocol import messages as m
from protocol.client import HiveError, SyncClient
from protocol.messages import forge as f
from protocol.wire import encode_call
from tests.conftest import DaemonProcess

pytestmark = pytest.mark.slow
MINUTES = float(os.environ.get("HIVE_FORGE_SOAK_MINUTES", "3"))


class Agent:
    def __init__(self, daemon: DaemonProcess, name: str, home: Path) -> None:
        self.daemon = daemon
        self.name = name
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "HIVE_"))}
        env.update(
            PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
            HOME=str(home),
            HIVE_AGENT_SOCKET=str(daemon.paths.agent_sock(name)),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_AUTHOR_NAME=name,
            GIT_AUTHOR_EMAIL=f"{name}@hyperhive",
            GIT_COMMITTER_NAME=name,
            GIT_COMMITTER_EMAIL=f"{name}@hyperhive",
        )
        self.env = env

    def git(
        self, *args: str, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd or self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{self.name}: git {' '.join(args)}: {done.stdout}{done.stderr}")
        return done

    def client(self) -> SyncClient:
        return SyncClient.connect(str(self.daemon.paths.agent_sock(self.name)), timeout=60)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def services_of(pid: int) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "pack" in cmd:
                    found.append(cmd)
    return found


@pytest.mark.timeout(int(MINUTES * 60 + 900))
def test_the_forge_under_long_mixed_and_hostile_use(
    daemon_process: DaemonProcess, tmp_path: Path
) -> None:
    daemon = daemon_process
    assert daemon.proc is not None
    pid = daemon.proc.pid
    alice = Agent(daemon, "alice", tmp_path / "alice")
    bob = Agent(daemon, "bob", tmp_path / "bob")
    boss = Agent(daemon, "boss", tmp_path / "boss")
    vandal = Agent(daemon, "bob", tmp_path / "vandal")  # bob's socket, behaving badly
    work = alice.home / "w"
    alice.git("init", "--quiet", "--initial-branch=main", "w")
    (work / "shared.txt").write_text("line\n" * 20)
    alice.git("add", "--all", cwd=work)
    alice.git("commit", "--quiet", "-m", "start", cwd=work)
    alice.git("remote", "add", "origin", "hive://alice/w", cwd=work)
    alice.git("push", "--quiet", "--set-upstream", "origin", "main", cwd=work)
    bob.git("clone", "--quiet", "hive://alice/w", "w")
    fork = bob.home / "w"
    bob.git("push", "--quiet", "hive://bob/w", "main", cwd=fork)
    time.sleep(1)
    start_fds = fds(pid)
    counts: Counter[str] = Counter()
    errors: list[str] = []
    stop = time.monotonic() + MINUTES * 60
    rng = random.Random(1234)

    def guard(name: str, body) -> None:  # type: ignore[no-untyped-def]
        try:
            while time.monotonic() < stop:
                body()
        except Exception as exc:  # collected and failed below, with who and what
            errors.append(f"{name}: {exc!r}")

    def alice_step() -> None:
        alice.git("pull", "--quiet", "--no-rebase", cwd=work, check=False)
        n = counts["alice_push"]
        (work / f"a{n % 50}.txt").write_text(f"{n}\n")
        if n % 4 == 0:  # the line bob's every third branch changes too: some will conflict
            (work / "shared.txt").write_text(f"alice {n}\n" + "line\n" * 19)
        alice.git("add", "--all", cwd=work)
        alice.git("commit", "--quiet", "-m", f"alice {n}", cwd=work)
        if alice.git("push", "--quiet", cwd=work, check=False).returncode == 0:
            counts["alice_push"] += 1
        with alice.client() as c:
            for mr in c.expect(f.ListMergeRequests(repo="alice/w"), f.MergeRequests).merge_requests:
                try:
                    c.expect(f.MergeMergeRequest(id=mr.id), f.MergeRequestInfo)
                    counts["merged"] += 1
                except HiveError as exc:
                    if exc.code == "conflict" and "conflicts with" in exc.message:
                        c.expect(
                            f.CloseMergeRequest(id=mr.id, note="conflicts"), f.MergeRequestInfo
                        )
                        counts["conflict_refused"] += 1
                    elif exc.code != "conflict":  # conflict: busy, or moved while merging
                        raise

    def bob_step() -> None:
        n = counts["bob_branch"]
        branch = f"b{n}"
        bob.git("fetch", "--quiet", "origin", cwd=fork)
        bob.git("checkout", "--quiet", "-B", branch, "origin/main", cwd=fork)
        if n % 3 == 0:  # a line alice's own edits will not touch, or one that conflicts
            (fork / "shared.txt").write_text(f"bob {n}\n" + "line\n" * 19)
        (fork / f"b{n}.txt").write_text(f"{n}\n")
        bob.git("add", "--all", cwd=fork)
        bob.git("commit", "--quiet", "-m", f"bob {n}", cwd=fork)
        bob.git("push", "--quiet", "hive://bob/w", branch, cwd=fork)
        counts["bob_branch"] += 1
        with bob.client() as c:
            c.expect(
                f.OpenMergeRequest(
                    repo="alice/w", source_repo="bob/w", source_branch=branch, title=branch
                ),
                f.MergeRequestInfo,
            )
            counts["opened"] += 1
        time.sleep(0.5)

    def boss_step() -> None:
        n = counts["boss_clone"]
        target = boss.home / f"c{n % 3}"
        if target.exists():
            boss.git("fetch", "--quiet", "--all", cwd=target)
        else:
            boss.git("clone", "--quiet", "hive://alice/w", str(target))
        boss.git("ls-remote", "hive://org-shared/docs")
        counts["boss_clone"] += 1

    def vandal_step() -> None:
        kind = rng.choice(["kill_push", "kill_clone", "hang_up", "bad_write"])
        if kind in ("kill_push", "kill_clone"):
            if kind == "kill_push":
                big = vandal.home / "v"
                if not big.exists():
                    vandal.git("clone", "--quiet", "hive://bob/w", str(big))
                (big / "junk.bin").write_bytes(os.urandom(rng.randint(1, 8) << 20))
                vandal.git("add", "--all", cwd=big)
                vandal.git("commit", "--quiet", "-m", "junk", cwd=big)
                argv = ["git", "push", "--quiet", "--force", "hive://bob/w", "HEAD:refs/heads/junk"]
                cwd = big
            else:
                argv = [
                    "git",
                    "clone",
                    "--quiet",
                    "hive://alice/w",
                    str(vandal.home / f"k{time.time_ns()}"),
                ]
                cwd = vandal.home
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=vandal.env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.05, 2.0))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            counts[kind] += 1
        elif kind == "hang_up":
            with vandal.client() as c:  # a session opened, then the connection dropped
                c._sock.sendall(
                    encode_call(7, f.ForgeConnect(repo="alice/w", service="git-upload-pack"))
                )
                time.sleep(rng.uniform(0, 0.5))
            counts[kind] += 1
        else:
            with vandal.client() as c:
                for call in (0, 5, 10**9):
                    try:
                        c.expect(
                            f.ForgeWrite(call=call, seq=rng.randint(0, 99), data=b"0000"), m.Ok
                        )
                    except HiveError as exc:
                        assert exc.code == "not_found", exc
                counts[kind] += 1

    threads = [
        threading.Thread(target=guard, args=(name, step), daemon=True)
        for name, step in (
            ("alice", alice_step),
            ("bob", bob_step),
            ("boss", boss_step),
            ("vandal", vandal_step),
        )
    ]
    samples = []
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        samples.append((time.monotonic(), fds(pid)))
        with SyncClient.connect(str(daemon.paths.admin_sock), timeout=10) as admin:
            started = time.monotonic()
            admin.expect(m.Ping(), m.Pong)
            counts["ping_ms_max"] = max(
                counts["ping_ms_max"], int((time.monotonic() - started) * 1000)
            )
        time.sleep(5)
    for t in threads:
        t.join()
    assert errors == [], errors
    time.sleep(3)  # sessions cut short end within STOP_GRACE
    assert services_of(pid) == []
    assert list((daemon.paths.state_dir / "forge" / "tmp").iterdir()) == []
    assert fds(pid) <= start_fds + 5, (start_fds, fds(pid), samples[-5:])
    for bare in sorted((daemon.paths.state_dir / "forge" / "repos").glob("*/*.git")):
        fsck = subprocess.run(
            ["git", f"--git-dir={bare}", "fsck", "--no-progress"],
            capture_output=True,
            text=True,
            env={**alice.env, "HOME": str(tmp_path)},
        )
        assert fsck.returncode == 0, (bare, fsck.stderr)
    lines = daemon.log().splitlines()
    bad = [i for i, line in enumerate(lines) if "Traceback" in line or "internal error" in line]
    assert not bad, "\n".join(lines[max(0, bad[0] - 5) : bad[0] + 60])
    assert (
        counts["merged"] > 0
        and counts["alice_push"] > 0
        and counts["kill_push"] + counts["kill_clone"] > 0
    )
    print(
        dict(counts),
        f"fds {start_fds} → {fds(pid)}",
        f"rss {Path(f'/proc/{pid}/status').read_text().split('VmRSS:')[1].split()[0]} kB",
    )
