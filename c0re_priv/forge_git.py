"""Git on the forge's bare repositories, the way `meta_repo` runs it: an explicit argv (never a
shell), no system or global config, and no working tree ever checked out.

Everything here reads or writes objects and refs with git's plumbing (`for-each-ref`,
`ls-tree`, `cat-file`, `merge-tree --write-tree`, `commit-tree`, a compare-and-swap
`update-ref`), so no file of a repository's content is ever written to disk as a file, and
an agent's symlinks and `..` entries stay data. Output that an agent controls the size of
(a blob, a diff) is read up to a cap and the process is ended. What a repository is, who may
use it and when are the forge's (`forge.py`) decisions; this module never makes them.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from protocol.messages import forge as f

from .meta_repo import AUTHOR, GIT_TIMEOUT, ZERO_SHA, GitError, git_env, run_git

HIVE_IDENTITY = AUTHOR
_LOG_FORMAT = "%H%x00%P%x00%an%x00%ae%x00%ct%x00%s%x1e"


async def close_pipes(proc: trio.Process) -> None:
    """Close whichever of a finished process's pipes were opened."""
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            await pipe.aclose()


@dataclass(frozen=True)
class Identity:
    """Who a commit the daemon writes is by (a merge commit: whoever merged)."""

    name: str
    email: str

    def env(self) -> dict[str, str]:
        return {
            "GIT_AUTHOR_NAME": self.name,
            "GIT_AUTHOR_EMAIL": self.email,
            "GIT_COMMITTER_NAME": self.name,
            "GIT_COMMITTER_EMAIL": self.email,
        }


@dataclass(frozen=True)
class Merged:
    """What `merge_tree` found: the merged tree, or the files that conflict."""

    tree: str | None
    conflicts: list[str]


class BareRepo:
    """One bare repository the daemon owns."""

    def __init__(self, path: Path, git: str = "git") -> None:
        self.path = path
        self._git = git

    async def git(
        self,
        *args: str,
        stdin: bytes = b"",
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `git --git-dir=<repo> ARGS…`; a failure raises `GitError` unless `check=False`."""
        return await run_git(
            self._git, self.path, args, stdin=stdin, env=env, check=check, cwd=self.path
        )

    async def out(
        self, *args: str, stdin: bytes = b"", env: Mapping[str, str] | None = None
    ) -> str:
        return (await self.git(*args, stdin=stdin, env=env)).stdout.decode(errors="replace").strip()

    async def capped(self, *args: str, limit: int) -> tuple[bytes, bool]:
        """Run git and keep at most `limit` bytes of its output: (output, was it cut short).

        The process is ended once the cap is reached, so a huge blob or diff costs the
        daemon `limit` bytes, not its size.
        """
        argv = [self._git, f"--git-dir={self.path}", *args]
        chunks: list[bytes] = []
        total = 0
        truncated = False
        with trio.fail_after(GIT_TIMEOUT):
            proc = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=git_env(),
                cwd=str(self.path),
            )
            try:
                assert proc.stdout is not None
                while True:
                    data = await proc.stdout.receive_some(65536)
                    if not data:
                        break
                    chunks.append(bytes(data))
                    total += len(data)
                    if total > limit:
                        truncated = True
                        break
            finally:
                with trio.CancelScope(shield=True):
                    if proc.returncode is None and truncated:
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                    await proc.wait()
                    await close_pipes(proc)
        if not truncated and proc.returncode != 0:
            raise GitError(f"git {args[0]} exited with {proc.returncode}")
        return b"".join(chunks)[:limit], truncated

    # ---------------------------------------------------------------- setup

    async def init(self, default_branch: str = "main") -> None:
        """Create the bare repository at `path` (which must not exist yet)."""
        with trio.fail_after(GIT_TIMEOUT):
            done = await trio.run_process(
                [
                    self._git,
                    "init",
                    "--quiet",
                    "--bare",
                    f"--initial-branch={default_branch}",
                    str(self.path),
                ],
                capture_stdout=True,
                capture_stderr=True,
                env=git_env(),
                check=False,
            )
        if done.returncode != 0:
            raise GitError(f"git init: {done.stderr.decode(errors='replace').strip()}")
        for key, value in (
            ("gc.auto", "0"),
            ("receive.fsckObjects", "true"),
            ("transfer.fsckObjects", "true"),
            ("core.logAllRefUpdates", "true"),
        ):
            await self.git("config", key, value)

    # ---------------------------------------------------------------- reads

    async def refs(self, prefix: str = "refs/") -> dict[str, str]:
        """Every ref under `prefix` → the object it points at."""
        listed = await self.out("for-each-ref", "--format=%(refname)%00%(objectname)", prefix)
        refs: dict[str, str] = {}
        for line in listed.splitlines():
            name, _, sha = line.partition("\0")
            refs[name] = sha
        return refs

    async def head_branch(self) -> str:
        """The branch `HEAD` names (the default branch), without `refs/heads/`."""
        done = await self.git("symbolic-ref", "--quiet", "HEAD", check=False)
        ref = done.stdout.decode().strip()
        return ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else "main"

    async def resolve(self, rev: str) -> str | None:
        """The commit `rev` (a branch, a tag or a sha) names, or `None`.

        A branch wins over a tag of the same name, and either over a sha prefix.
        """
        candidates = [f"refs/heads/{rev}", f"refs/tags/{rev}"]
        if all(c in "0123456789abcdef" for c in rev):
            candidates.append(rev)
        for candidate in candidates:
            done = await self.git(
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                f"{candidate}^{{commit}}",
                check=False,
            )
            if done.returncode == 0:
                return done.stdout.decode().strip()
        return None

    async def branches(self, prefix: str = "refs/heads/") -> list[f.BranchRow]:
        listed = await self.out(
            "for-each-ref",
            "--sort=-committerdate",
            "--format=%(refname)%00%(objectname)%00%(subject)%00%(authorname)%00%(committerdate:unix)",
            prefix,
        )
        rows = []
        for line in listed.splitlines():
            ref, sha, subject, author, when = (line.split("\0") + [""] * 5)[:5]
            rows.append(
                f.BranchRow(
                    name=ref.removeprefix(prefix),
                    sha=sha,
                    subject=subject,
                    author=author,
                    committed_at=float(when or 0),
                )
            )
        return rows

    async def log(self, include: str, limit: int, exclude: str | None = None) -> list[f.CommitRow]:
        """Up to `limit` commits reachable from `include` (and not from `exclude`), newest first."""
        if limit <= 0:
            return []
        args = [
            "log",
            f"--format={_LOG_FORMAT}",
            f"--max-count={limit}",
            "--end-of-options",
            include,
        ]
        if exclude is not None:
            args.append(f"^{exclude}")
        out = (await self.git(*args)).stdout.decode(errors="replace")
        commits = []
        for record in out.split("\x1e"):
            record = record.strip("\n")
            if not record:
                continue
            sha, parents, author, email, when, subject = (record.split("\0") + [""] * 6)[:6]
            commits.append(
                f.CommitRow(
                    sha=sha,
                    parents=parents.split(),
                    author=author,
                    author_email=email,
                    committed_at=float(when or 0),
                    subject=subject,
                )
            )
        return commits

    async def object_type(self, spec: str) -> str | None:
        done = await self.git("cat-file", "-t", spec, check=False)
        return done.stdout.decode().strip() if done.returncode == 0 else None

    async def tree(self, commit: str, path: str) -> list[f.TreeEntry] | None:
        """The entries of directory `path` at `commit`, or `None` when it is not a directory."""
        spec = f"{commit}:{path}"
        if await self.object_type(spec) != "tree":
            return None
        out = (await self.git("ls-tree", "-z", "-l", spec)).stdout.decode(errors="replace")
        entries = []
        for item in out.split("\0"):
            if not item:
                continue
            meta, _, name = item.partition("\t")
            mode, kind, sha, size = meta.split()
            entries.append(
                f.TreeEntry(
                    name=name,
                    kind=(
                        "dir"
                        if kind == "tree"
                        else "submodule"
                        if kind == "commit"
                        else "symlink"
                        if mode == "120000"
                        else "file"
                    ),
                    mode=mode,
                    sha=sha,
                    size=int(size) if size.isdigit() else None,
                )
            )
        entries.sort(key=lambda e: (e.kind != "dir", e.name))
        return entries

    async def blob(self, commit: str, path: str, limit: int) -> tuple[bytes, int, bool] | None:
        """(first `limit` bytes, size, truncated) of file `path` at `commit`, or `None` when
        it is not a file (a symlink's blob is its target, never followed)."""
        spec = f"{commit}:{path}"
        if await self.object_type(spec) != "blob":
            return None
        size = int(await self.out("cat-file", "-s", spec))
        data, truncated = await self.capped("cat-file", "blob", spec, limit=limit)
        return data, size, truncated

    async def merge_base(self, a: str, b: str) -> str | None:
        done = await self.git("merge-base", "--end-of-options", a, b, check=False)
        return done.stdout.decode().strip() if done.returncode == 0 else None

    async def is_ancestor(self, old: str, new: str) -> bool:
        done = await self.git(
            "merge-base", "--is-ancestor", "--end-of-options", old, new, check=False
        )
        return done.returncode == 0

    async def diff(self, base: str, head: str, limit: int) -> tuple[str, bool]:
        """A unified diff from `base` to `head` (commits or trees), at most `limit` bytes."""
        data, truncated = await self.capped(
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--find-renames",
            "--end-of-options",
            base,
            head,
            limit=limit,
        )
        return data.decode(errors="replace"), truncated

    async def empty_tree(self) -> str:
        return await self.out("hash-object", "-t", "tree", "--stdin")

    async def merge_tree(self, ours: str, theirs: str) -> Merged:
        """Merge `theirs` into `ours` without a working tree (`git merge-tree --write-tree`)."""
        done = await self.git(
            "merge-tree", "--write-tree", "--name-only", "--no-messages", ours, theirs, check=False
        )
        lines = done.stdout.decode(errors="replace").splitlines()
        if done.returncode == 0 and lines:
            return Merged(tree=lines[0].strip(), conflicts=[])
        if done.returncode == 1 and lines:
            return Merged(tree=None, conflicts=sorted({line for line in lines[1:] if line}))
        raise GitError(f"git merge-tree: {done.stderr.decode(errors='replace').strip()}")

    # ---------------------------------------------------------------- writes

    async def commit_tree(self, tree: str, parents: list[str], message: str, who: Identity) -> str:
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        return await self.out(*args, "-F", "-", stdin=message.encode(), env=who.env())

    async def commit_files(
        self, parent: str | None, files: Mapping[str, bytes], message: str, who: Identity
    ) -> str:
        """A commit of `files` (top-level names only) on `parent`; no ref is moved."""
        entries = []
        for name, data in sorted(files.items()):
            blob = await self.out("hash-object", "-w", "--stdin", stdin=data)
            entries.append(f"100644 blob {blob}\t{name}\n")
        tree = await self.out("mktree", stdin="".join(entries).encode())
        return await self.commit_tree(tree, [parent] if parent else [], message, who)

    async def update_ref(self, ref: str, new: str, old: str | None) -> None:
        """Point `ref` at `new` if it still points at `old` (`None`: must not exist yet)."""
        await self.git("update-ref", "--end-of-options", ref, new, old or ZERO_SHA)

    async def delete_ref(self, ref: str) -> None:
        await self.git("update-ref", "-d", "--end-of-options", ref, check=False)

    async def fetch_ref(self, source: Path, source_ref: str, ref: str) -> str | None:
        """Copy `source_ref` of the repository at `source` (with its objects) to `ref` here;
        the sha it now points at, or `None` when the source has no such ref."""
        done = await self.git(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--end-of-options",
            str(source),
            f"+{source_ref}:{ref}",
            check=False,
        )
        if done.returncode != 0:
            return None
        return await self.resolve_ref(ref)

    async def resolve_ref(self, ref: str) -> str | None:
        done = await self.git(
            "rev-parse", "--verify", "--quiet", "--end-of-options", ref, check=False
        )
        return done.stdout.decode().strip() if done.returncode == 0 else None
