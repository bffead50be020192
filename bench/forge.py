"""The forge's git transport against git's own local transport, measured in the same run.

(a) `git clone` of a repository holding incompressible data, through the forge
(`hive://alice/data`: `git-remote-hive` → alice's socket → the daemon → `git upload-pack`),
against the same clone from the same bare repository by git's own pack protocol over pipes
(`git clone --no-local file://…`: `git upload-pack` run directly). (b) The same for `git
push` of that data into a new repository (`git receive-pack`, with the forge's hook and
fsck, against plain `receive-pack` with `receive.fsckObjects`). (c) `git ls-remote`, the
fixed cost of one session (the helper's start, the daemon's checks), against the same
on a local bare repository. (d) A merge request from open to merged through the forge's
verbs. Rounds alternate the forge and the baseline; each figure is the median round.

Run: `.venv/bin/python bench/forge.py [--quick] [--json] [--json-file PATH]`. It measures; it never judges.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from daemon_process import Daemon, running_daemon
from report import Report, parse_args

from protocol.client import SyncClient
from protocol.messages import forge as f

CLONE = "clone, forge (hive://)"
CLONE_BASE = "clone, git's own pack protocol (file://)"
PUSH = "push, forge (hive://)"
PUSH_BASE = "push, git's own pack protocol (file://)"
LS = "ls-remote, forge (hive://)"
LS_BASE = "ls-remote, git's own (file://)"
MR = "merge request opened, approved, merged"
SECTION = "git through the forge vs git's own transport (the daemon is a subprocess)"
MR_SECTION = "merge requests through the forge's verbs"
CONFIG = "[hive]\nautostart = false\n\n[agents.alice]\n\n[agents.bob]\n"


def git_env(daemon: Daemon, who: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "HIVE_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        HOME=str(home),
        HIVE_AGENT_SOCKET=str(daemon.paths.agent_sock(who)),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME=who,
        GIT_AUTHOR_EMAIL=f"{who}@hyperhive",
        GIT_COMMITTER_NAME=who,
        GIT_COMMITTER_EMAIL=f"{who}@hyperhive",
    )
    return env


def run(env: dict[str, str], cwd: Path, *args: str) -> None:
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stdout}{done.stderr}")


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rounds, size_mib, ls_runs = (2, 4, 3) if args.quick else (3, 64, 10)
    report = Report("bench/forge.py", args.quick)
    root = Path(tempfile.mkdtemp(prefix="hvf", dir="/tmp"))
    try:
        with running_daemon(root / "hive", CONFIG, agents=("alice", "bob")) as daemon:
            measure(report, daemon, root, rounds, size_mib, ls_runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report.ratio("clone: forge / git's own", CLONE, CLONE_BASE)
    report.ratio("push: forge / git's own", PUSH, PUSH_BASE)
    report.ratio("ls-remote: forge / git's own", LS, LS_BASE)
    report.note(
        f"{size_mib} MiB of random data in 8 files; {rounds} alternating rounds, median shown;"
        " the forge's figures include starting git-remote-hive (a Python process)"
    )
    report.emit(args.json)


def measure(
    report: Report, daemon: Daemon, root: Path, rounds: int, size_mib: int, ls_runs: int
) -> None:
    home = root / "alice"
    home.mkdir()
    env = git_env(daemon, "alice", home)
    work = home / "data"
    run(env, home, "init", "--quiet", "--initial-branch=main", "data")
    for i in range(8):
        (work / f"blob{i}.bin").write_bytes(os.urandom(size_mib * 1024 * 1024 // 8))
    run(env, work, "add", "--all")
    run(env, work, "commit", "--quiet", "-m", "data")
    run(env, work, "push", "--quiet", "hive://alice/data", "main")
    local = root / "local.git"
    run(env, root, "init", "--quiet", "--bare", "--initial-branch=main", str(local))
    run(env, local, "config", "receive.fsckObjects", "true")
    run(env, work, "push", "--quiet", f"file://{local}", "main")

    clone, clone_base, push, push_base = [], [], [], []
    for n in range(rounds):
        clone.append(
            timed(lambda n=n: run(env, home, "clone", "--quiet", "hive://alice/data", f"c{n}"))
        )
        clone_base.append(
            timed(
                lambda n=n: run(
                    env, home, "clone", "--quiet", "--no-local", f"file://{local}", f"l{n}"
                )
            )
        )
        push.append(
            timed(lambda n=n: run(env, work, "push", "--quiet", f"hive://alice/p{n}", "main"))
        )
        target = root / f"p{n}.git"
        run(env, root, "init", "--quiet", "--bare", str(target))
        run(env, target, "config", "receive.fsckObjects", "true")
        push_base.append(
            timed(lambda t=target: run(env, work, "push", "--quiet", f"file://{t}", "main"))
        )
        for d in (f"c{n}", f"l{n}"):
            shutil.rmtree(home / d)
    mib = size_mib
    for label, times in (
        (CLONE, clone),
        (CLONE_BASE, clone_base),
        (PUSH, push),
        (PUSH_BASE, push_base),
    ):
        median = statistics.median(times)
        report.add(SECTION, label, median, "s", f"{mib / median:.0f} MiB/s", rounds=times, mib=mib)
    ls, ls_base = [], []
    for _ in range(ls_runs):
        ls.append(timed(lambda: run(env, home, "ls-remote", "--quiet", "hive://alice/data")))
        ls_base.append(timed(lambda: run(env, home, "ls-remote", "--quiet", f"file://{local}")))
    report.add(SECTION, LS, statistics.median(ls), "s", "per session", runs=ls)
    report.add(SECTION, LS_BASE, statistics.median(ls_base), "s", "per session", runs=ls_base)

    # a merge request, open → approve → merge, through the verbs (the clients' round-trips)
    run(env, work, "checkout", "--quiet", "-b", "topic")
    latencies = []
    for n in range(ls_runs):
        (work / f"topic{n}.md").write_text(f"{n}\n")
        run(env, work, "add", "--all")
        run(env, work, "commit", "--quiet", "-m", f"topic {n}")
        run(env, work, "push", "--quiet", "--force", "hive://alice/data", f"topic:t{n}")
        started = time.perf_counter()
        with SyncClient.connect(str(daemon.paths.agent_sock("alice"))) as alice:
            mr = alice.expect(
                f.OpenMergeRequest(
                    repo="alice/data", source_branch=f"t{n}", title=f"t{n}", reviewers=["bob"]
                ),
                f.MergeRequestInfo,
            ).mr
        with SyncClient.connect(str(daemon.paths.agent_sock("bob"))) as bob:
            bob.expect(f.ApproveMergeRequest(id=mr.id), f.MergeRequestInfo)
        with SyncClient.connect(str(daemon.paths.agent_sock("alice"))) as alice:
            alice.expect(f.MergeMergeRequest(id=mr.id, method="merge"), f.MergeRequestInfo)
        latencies.append(time.perf_counter() - started)
    report.add(
        MR_SECTION, MR, statistics.median(latencies), "s", "merge commits, median", runs=latencies
    )


if __name__ == "__main__":
    main()
