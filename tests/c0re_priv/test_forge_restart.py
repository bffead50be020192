"""The forge across daemon restarts: repositories and merge requests stay, the disk and the
database are reconciled, and a daemon killed with SIGKILL in the middle of a push leaves a
sound repository that takes the same push again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from protocol import messages as m
from protocol.client import SyncClient
from protocol.messages import forge as f
from tests.c0re_priv.test_cli_forge import git
from tests.conftest import DaemonProcess


def forge_dir(daemon: DaemonProcess) -> Path:
    return daemon.paths.state_dir / "forge"


def push_notes(daemon: DaemonProcess, tmp_path: Path) -> Path:
    work = tmp_path / "notes"
    git(daemon, tmp_path, "init", "--quiet", "--initial-branch=main", "notes", who="alice")
    (work / "a.md").write_text("a\n")
    git(daemon, work, "add", "a.md", who="alice")
    git(daemon, work, "commit", "--quiet", "-m", "a", who="alice")
    git(daemon, work, "push", "--quiet", "hive://alice/notes", "main", who="alice")
    git(daemon, work, "checkout", "--quiet", "-b", "topic", who="alice")
    (work / "b.md").write_text("b\n")
    git(daemon, work, "add", "b.md", who="alice")
    git(daemon, work, "commit", "--quiet", "-m", "b", who="alice")
    git(daemon, work, "push", "--quiet", "hive://alice/notes", "topic", who="alice")
    return work


def test_repos_and_merge_requests_survive_a_restart_and_the_disk_is_reconciled(
    daemon_process: DaemonProcess, tmp_path: Path
):
    push_notes(daemon_process, tmp_path)
    with SyncClient.connect(str(daemon_process.paths.agent_sock("alice"))) as alice:
        mr = alice.expect(
            f.OpenMergeRequest(
                repo="alice/notes", source_branch="topic", title="b", reviewers=["bob"]
            ),
            f.MergeRequestInfo,
        ).mr
        alice.expect(f.CreateRepo(repo="alice/empty"), f.RepoInfo)
    assert daemon_process.stop() == 0
    repos = forge_dir(daemon_process) / "repos" / "alice"
    shutil.copytree(repos / "notes.git", repos / "stray.git")  # on disk, not in the database
    shutil.rmtree(repos / "empty.git")  # in the database, not on disk
    daemon_process.start()
    log = daemon_process.log()
    assert "adopting alice/stray (on disk, not in the database) as private" in log
    assert "alice/empty is in the database but not on disk; it is empty again" in log
    with SyncClient.connect(str(daemon_process.paths.agent_sock("bob"))) as bob:
        names = [r.repo for r in bob.expect(f.ListRepos(), f.Repos).repos]
        assert "alice/notes" in names and "alice/empty" in names
        assert "alice/stray" not in names  # adopted as private: not bob's to see
        threads = bob.expect(m.GetOpenThreads(), m.OpenThreads).threads
        assert [(t.id, t.role) for t in threads] == [(mr.id, "reviewer")]  # type: ignore[union-attr]
        again = bob.expect(f.GetMergeRequest(id=mr.id), f.MergeRequestInfo)
        assert again.mr.head_sha == mr.head_sha and again.merge_status == "fast_forward"
    with SyncClient.connect(str(daemon_process.paths.agent_sock("alice"))) as alice:
        stray = alice.expect(f.GetRepo(repo="alice/stray"), f.RepoView)
        assert stray.repo.private and sorted(b.name for b in stray.branches) == ["main", "topic"]
        assert alice.expect(f.GetRepo(repo="alice/empty"), f.RepoView).branches == []


def daemon_children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append((int(entry), cmdline))
    return out


def still_running(pid: int, what: str) -> bool:
    try:
        return what in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return False


def test_a_daemon_killed_mid_push_leaves_a_sound_repository(
    daemon_process: DaemonProcess, tmp_path: Path
):
    work = push_notes(daemon_process, tmp_path)
    git(daemon_process, work, "checkout", "--quiet", "main", who="alice")
    (work / "big.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    git(daemon_process, work, "add", "big.bin", who="alice")
    git(daemon_process, work, "commit", "--quiet", "-m", "big", who="alice")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "HIVE_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        HIVE_AGENT_SOCKET=str(daemon_process.paths.agent_sock("alice")),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    pusher = subprocess.Popen(
        ["git", "push", "hive://alice/notes", "main"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert daemon_process.proc is not None
    deadline = time.monotonic() + 60
    while not any("receive-pack" in cmd for _, cmd in daemon_children(daemon_process.proc.pid)):
        assert time.monotonic() < deadline, "the push never reached the daemon"
        assert pusher.poll() is None, pusher.stdout.read() if pusher.stdout else ""
        time.sleep(0.01)
    orphans = [
        pid for pid, cmd in daemon_children(daemon_process.proc.pid) if "receive-pack" in cmd
    ]
    daemon_process.kill()
    pusher.wait(60)
    assert pusher.returncode != 0  # the push did not claim success
    deadline = time.monotonic() + 30  # git, its input gone, ends on its own
    while any(still_running(pid, "receive-pack") for pid in orphans):
        assert time.monotonic() < deadline, "git receive-pack outlived the daemon"
        time.sleep(0.1)
    daemon_process.start()
    assert list((forge_dir(daemon_process) / "tmp").iterdir()) == []
    bare = forge_dir(daemon_process) / "repos" / "alice" / "notes.git"
    fsck = subprocess.run(
        ["git", f"--git-dir={bare}", "fsck", "--no-progress"],
        capture_output=True,
        text=True,
        env={**env, "HOME": str(tmp_path)},
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    git(daemon_process, work, "push", "--quiet", "hive://alice/notes", "main", who="alice")
    with SyncClient.connect(str(daemon_process.paths.admin_sock)) as admin:
        view = admin.expect(f.GetRepo(repo="alice/notes"), f.RepoView)
        assert view.commits[0].subject == "big"
        big = admin.expect(f.ReadBlob(repo="alice/notes", rev="main", path="big.bin"), f.RepoBlob)
        assert big.size == 24 * 1024 * 1024 and big.truncated
