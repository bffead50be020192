"""The meta repo: a bare git repository under the state dir (`<state>/meta`) that the daemon owns.

This module is the only code that runs git, and it runs it one way: an explicit argv (never a
shell), `GIT_CONFIG_NOSYSTEM=1` and no global config, so nothing of the host's git setup
changes what a command does. Commits are made with git's plumbing — a private index file,
`commit-tree`, then a compare-and-swap `update-ref` — so no working tree is ever checked out
and no file outside the repository is read. What the files mean (agent configs, deploys,
approvals) is decided elsewhere (`agent_configs`); this module must never decide it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import trio

GIT_TIMEOUT = 60.0
ZERO_SHA = "0" * 40
AUTHOR = ("hyperhive", "hyperhive@localhost")


class GitError(Exception):
    """A git command failed; the message has its stderr."""


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment without anything that changes what git does; commits are by
    hyperhive unless `extra` says otherwise. Every repository the daemon runs git on uses it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k != "EMAIL"}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_NO_REPLACE_OBJECTS="1",
        GIT_AUTHOR_NAME=AUTHOR[0],
        GIT_AUTHOR_EMAIL=AUTHOR[1],
        GIT_COMMITTER_NAME=AUTHOR[0],
        GIT_COMMITTER_EMAIL=AUTHOR[1],
        LC_ALL="C",
    )
    env.update(extra or {})
    return env


async def run_git(
    git: str,
    git_dir: Path,
    args: tuple[str, ...],
    *,
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `git --git-dir=GIT_DIR ARGS…` within `GIT_TIMEOUT`; a failure raises `GitError`
    (with git's stderr) unless `check=False`."""
    with trio.fail_after(GIT_TIMEOUT):
        done = await trio.run_process(
            [git, f"--git-dir={git_dir}", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            env=git_env(env),
            cwd=None if cwd is None else str(cwd),
            check=False,
        )
    if check and done.returncode != 0:
        raise GitError(f"git {args[0]}: {done.stderr.decode(errors='replace').strip()}")
    return done


class MetaRepo:
    def __init__(self, path: Path, git: str = "git") -> None:
        self.path = path
        self._git = git
        self.lock = trio.Lock()
        """Held by whoever reads `main` and then moves it (the update itself is also a CAS)."""
        self.empty_tree = ""

    @property
    def available(self) -> bool:
        return shutil.which(self._git) is not None

    async def git(
        self,
        *args: str,
        stdin: bytes = b"",
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `git --git-dir=<repo> ARGS…`; a failure raises `GitError` unless `check=False`."""
        return await run_git(self._git, self.path, args, stdin=stdin, env=env, check=check)

    async def out(
        self, *args: str, stdin: bytes = b"", env: Mapping[str, str] | None = None
    ) -> str:
        return (await self.git(*args, stdin=stdin, env=env)).stdout.decode().strip()

    # ---------------------------------------------------------------- setup

    async def open(self) -> None:
        """Create the repository if it does not exist yet (idempotent)."""
        if not (self.path / "HEAD").is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with trio.fail_after(GIT_TIMEOUT):
                await trio.run_process(
                    [
                        self._git,
                        "init",
                        "--quiet",
                        "--bare",
                        "--initial-branch=main",
                        str(self.path),
                    ],
                    capture_stdout=True,
                    capture_stderr=True,
                    env=git_env(),
                )
            os.chmod(self.path, 0o700)
        # opening an existing repo writes nothing: it must open on a full disk too
        for key, value in (("user.name", AUTHOR[0]), ("user.email", AUTHOR[1]), ("gc.auto", "0")):
            done = await self.git("config", "--get", key, check=False)
            if done.stdout.decode().strip() != value:
                await self.git("config", key, value)
        # git knows the empty tree without storing it
        self.empty_tree = await self.out("hash-object", "-t", "tree", "--stdin")

    # ---------------------------------------------------------------- reads

    async def resolve(self, rev: str) -> str | None:
        """The full sha of the commit `rev` names, or `None`."""
        done = await self.git(
            "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}", check=False
        )
        return done.stdout.decode().strip() if done.returncode == 0 else None

    async def head(self, branch: str = "main") -> str | None:
        return await self.resolve(f"refs/heads/{branch}")

    async def read(self, rev: str, path: str) -> bytes | None:
        """The content of `path` at commit `rev`, or `None` when it has no such file."""
        done = await self.git("cat-file", "blob", f"{rev}:{path}", check=False)
        return done.stdout if done.returncode == 0 else None

    async def blob_id(self, rev: str, path: str) -> str | None:
        done = await self.git("rev-parse", "--verify", "--quiet", f"{rev}:{path}", check=False)
        return done.stdout.decode().strip() if done.returncode == 0 else None

    async def files(self, rev: str, prefix: str) -> dict[str, str]:
        """Every file under `prefix` (a dir, with `/`) at `rev`: path → blob id."""
        listed = await self.out("ls-tree", "-r", "-z", "--full-tree", rev, "--", prefix)
        files: dict[str, str] = {}
        for entry in listed.split("\0"):
            if not entry:
                continue
            meta, path = entry.split("\t", 1)
            _mode, kind, blob = meta.split()
            if kind == "blob":
                files[path] = blob
        return files

    async def diff(self, old: str | None, new: str, paths: list[str]) -> str:
        """A unified diff of `paths` from `old` (nothing, when `None`) to `new`."""
        return (
            await self.git(
                "diff",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                old or self.empty_tree,
                new,
                "--",
                *paths,
            )
        ).stdout.decode(errors="replace")

    async def is_ancestor(self, old: str, new: str) -> bool:
        done = await self.git("merge-base", "--is-ancestor", old, new, check=False)
        return done.returncode == 0

    # ---------------------------------------------------------------- writes

    async def commit(
        self, parent: str | None, changes: Mapping[str, bytes | None], message: str
    ) -> str | None:
        """A new commit on top of `parent` with `changes` (path → content, `None` deletes).

        Returns its sha, or `None` when the changes change nothing. No ref is moved.
        """
        with tempfile.TemporaryDirectory(prefix="index-", dir=self.path) as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            if parent is None:
                await self.git("read-tree", "--empty", env=env)
            else:
                await self.git("read-tree", parent, env=env)
            lines = []
            for path, data in sorted(changes.items()):
                if data is None:
                    lines.append(f"0 {ZERO_SHA}\t{path}\n")
                else:
                    blob = await self.out("hash-object", "-w", "--stdin", stdin=data)
                    lines.append(f"100644 {blob}\t{path}\n")
            await self.git("update-index", "--index-info", stdin="".join(lines).encode(), env=env)
            tree = await self.out("write-tree", env=env)
        if parent is not None and tree == await self.out("rev-parse", f"{parent}^{{tree}}"):
            return None
        args = ["commit-tree", tree, "-m", message]
        if parent is not None:
            args += ["-p", parent]
        return await self.out(*args)

    async def tree_of(self, rev: str) -> str:
        return await self.out("rev-parse", f"{rev}^{{tree}}")

    async def move_branch(self, branch: str, new: str, old: str | None) -> None:
        """Point `branch` at `new` if it still points at `old` (`None`: must not exist yet)."""
        await self.git("update-ref", f"refs/heads/{branch}", new, old or ZERO_SHA)

    async def force_branch(self, branch: str, new: str) -> None:
        await self.git("update-ref", f"refs/heads/{branch}", new)

    async def tag(self, name: str, sha: str) -> None:
        """Pin `sha` under `refs/tags/<name>` (which must not exist yet)."""
        await self.git("update-ref", f"refs/tags/{name}", sha, ZERO_SHA)
