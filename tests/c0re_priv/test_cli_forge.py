"""`hive ctl forge` as an operator types it, and the operator's own git: `git clone
hive://org-shared/docs` on the host through `git-remote-hive` and `admin.sock`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from protocol.client import SyncClient
from protocol.messages import forge as f
from tests.c0re_priv.test_cli_approvals import ctl
from tests.conftest import DaemonProcess


def git(daemon: DaemonProcess, cwd: Path, *args: str, who: str = "operator") -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "HIVE_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME=who,
        GIT_AUTHOR_EMAIL=f"{who}@hyperhive",
        GIT_COMMITTER_NAME=who,
        GIT_COMMITTER_EMAIL=f"{who}@hyperhive",
    )
    if who == "operator":
        env["HIVE_RUN_DIR"] = str(daemon.paths.run_dir)
    else:
        env["HIVE_AGENT_SOCKET"] = str(daemon.paths.agent_sock(who))
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, (args, done.stdout + done.stderr)
    return done.stdout + done.stderr


def test_the_operator_edits_the_docs_with_plain_git(daemon_process: DaemonProcess, tmp_path: Path):
    git(daemon_process, tmp_path, "clone", "--quiet", "hive://org-shared/docs", "docs")
    docs = tmp_path / "docs"
    (docs / "style.md").write_text("write short sentences\n")
    git(daemon_process, docs, "add", "style.md")
    git(daemon_process, docs, "commit", "--quiet", "-m", "style guide")
    git(daemon_process, docs, "push", "--quiet")
    shown = ctl(daemon_process, "forge", "show", "org-shared/docs")
    assert shown.returncode == 0, shown.stderr
    assert "style guide" in shown.stdout and "Seed org-shared/docs" in shown.stdout
    cat = ctl(daemon_process, "forge", "cat", "org-shared/docs", "main", "style.md")
    assert cat.stdout == "write short sentences\n"
    listed = ctl(daemon_process, "forge", "ls", "org-shared/docs")
    assert [line.split()[-1] for line in listed.stdout.splitlines()[1:]] == [
        "README.md",
        "style.md",
    ]


def test_repos_and_merge_requests_from_the_command_line(
    daemon_process: DaemonProcess, tmp_path: Path
):
    made = ctl(daemon_process, "forge", "create", "alice/notes", "--description", "alice's")
    assert made.returncode == 0 and "git clone hive://alice/notes" in made.stdout, made.stderr
    bad = ctl(daemon_process, "forge", "create", "alice/notes.git")
    assert bad.returncode == 1
    assert "drop the `.git` suffix" in bad.stderr
    missing = ctl(daemon_process, "forge", "create", "nobody/notes")
    assert missing.returncode == 1 and "no agent 'nobody'" in missing.stderr
    # alice pushes main and a branch; the operator opens a merge request for bob to review
    work = tmp_path / "notes"
    git(daemon_process, tmp_path, "clone", "--quiet", "hive://alice/notes", "notes", who="alice")
    (work / "a.md").write_text("a\n")
    git(daemon_process, work, "add", "a.md", who="alice")
    git(daemon_process, work, "commit", "--quiet", "-m", "a", who="alice")
    git(daemon_process, work, "push", "--quiet", "origin", "HEAD:main", who="alice")
    git(daemon_process, work, "checkout", "--quiet", "-b", "more", who="alice")
    (work / "b.md").write_text("b\n")
    git(daemon_process, work, "add", "b.md", who="alice")
    git(daemon_process, work, "commit", "--quiet", "-m", "b", who="alice")
    git(daemon_process, work, "push", "--quiet", "origin", "more", who="alice")
    opened = ctl(
        daemon_process,
        "forge",
        "open",
        "alice/notes",
        "more",
        "--title",
        "More",
        "--reviewer",
        "bob",
    )
    assert opened.returncode == 0, opened.stderr
    assert "!1 More [open]" in opened.stdout and "reviewers: alice, bob" in opened.stdout
    threads = ctl(daemon_process, "threads", "bob")
    assert "!1" in threads.stdout and "review for operator" in threads.stdout
    listed = ctl(daemon_process, "forge", "mrs", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [1]
    shown = ctl(daemon_process, "forge", "mr", "1")
    assert "merge: fast forward" in shown.stdout and "+b" in shown.stdout
    commented = ctl(daemon_process, "forge", "comment", "1", "looks fine")
    assert commented.returncode == 0, commented.stderr
    with SyncClient.connect(str(daemon_process.paths.agent_sock("bob"))) as bob:
        bob.expect(f.ApproveMergeRequest(id=1, note="ok"), f.MergeRequestInfo)
    merged = ctl(daemon_process, "forge", "merge", "1", "--method", "fast_forward")
    assert merged.returncode == 0 and "merged !1 into alice/notes main" in merged.stdout
    again = ctl(daemon_process, "forge", "merge", "1")
    assert again.returncode == 1 and "already merged" in again.stderr
    repos = ctl(daemon_process, "forge", "repos")
    assert "alice/notes" in repos.stdout and "org-shared/docs" in repos.stdout
    private = ctl(daemon_process, "forge", "update", "alice/notes", "--private")
    assert "alice/notes: private" in private.stdout
    refused = ctl(daemon_process, "forge", "delete", "alice/notes")
    assert refused.returncode == 1 and "--yes" in refused.stderr
    deleted = ctl(daemon_process, "forge", "delete", "alice/notes", "--yes")
    assert deleted.returncode == 0 and "deleted alice/notes" in deleted.stdout


def test_agent_written_text_is_shown_not_obeyed(daemon_process: DaemonProcess, tmp_path: Path):
    with SyncClient.connect(str(daemon_process.paths.agent_sock("alice"))) as alice:
        alice.expect(
            f.CreateRepo(repo="alice/evil", description="\x1b]52;c;cGF5bG9hZA==\x07\x1b[2J"),
            f.RepoInfo,
        )
    listed = ctl(daemon_process, "forge", "repos")
    assert "\x1b" not in listed.stdout and "\\x1b]52" in listed.stdout
