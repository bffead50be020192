"""The forge: git repositories the daemon owns, who may read and write each, and git's own
protocol carried over the caller's socket.

Repositories are bare, under `<state>/forge/repos/<owner>/<name>.git`, private to the daemon
like the rest of its state; sqlite (`forge_repos`) says who owns each and whether it is
private. Identity is the socket: an agent reads every repository that is not private (its
own, private or not; the manager and the operator read all), writes its own namespace, and
`org-shared` is written by the manager and the operator only. A `ForgeConnect` stream runs
`git upload-pack` or `git receive-pack` as the daemon on the repository, once the caller is
allowed, and relays bytes both ways (`ForgeWrite` feeds the service's input in `seq`
order); every push runs a pre-receive hook the daemon wrote (`<state>/forge/hooks`) that
refuses any ref but `refs/heads/<branch>` and `refs/tags/<tag>` with a well-formed name,
`receive.fsckObjects` refuses malformed objects (a tree naming `..` or `.git`), and
`receive.maxInputSize` bounds a pack. Pushes to one repository are serialised by a lock,
and what moved is published as `Pushed` and handed to the merge requests.

This module never trusts a name it did not check: every path is built from a `RepoPath`
the protocol validated, and every directory on the way is checked with `lstat` to be the
daemon's own directory, never a symlink. It never runs git itself (`forge_git` does), and it
never decides what a merge request means (`merge_requests` does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio

from protocol import messages as m
from protocol.messages import forge as f

from .config import ForgeSettings, Paths
from .errors import Fail
from .events import EventBus
from .forge_git import HIVE_IDENTITY, BareRepo, Identity, close_pipes
from .meta_repo import GIT_TIMEOUT, ZERO_SHA, GitError, git_env
from .registry import Registry
from .store import Store

log = logging.getLogger(__name__)

OPERATOR = "operator"
PRIVATE_DIR = 0o700
DEFAULT_BRANCH = "main"
MAX_PUSHED_REFS = 1000
"""Refs one push may create, move or delete (the pre-receive hook refuses more)."""
FRAME_OVERHEAD = 256
HELPER = "git-remote-hive"
STOP_GRACE = 2.0
MERGE_TREE_GIT = (2, 38)
"""The first git whose `merge-tree --write-tree` merges without a working tree."""
DOCS_README = """\
# org-shared/docs

The hive's shared documents: references, prompts, runbooks and skills every agent inherits.

- Every agent can read it: `git clone hive://org-shared/docs`
- Only the manager and the operator can push to it. Anyone else proposes a change with a
  merge request from a repository of their own (see docs/forge.md).
"""

Role = Literal["agent", "manager", "operator"]
OnPush = Callable[[str, str, list[f.RefUpdate]], Awaitable[None]]


@dataclass(frozen=True)
class Who:
    """The caller, as its socket says: an agent, the manager, or the operator."""

    name: str
    role: Role

    @classmethod
    def of(cls, role: m.Role, agent: str | None) -> Who:
        if agent is None:  # web.sock and admin.sock: the operator
            return cls(OPERATOR, "operator")
        return cls(agent, "manager" if role == "manager" else "agent")

    @property
    def identity(self) -> Identity:
        return Identity(self.name, f"{self.name}@hyperhive")


async def git_version(git: str) -> tuple[int, ...]:
    """The host git's version (`(2, 39, 5)`), `(0,)` when it cannot be read."""
    done = await trio.run_process([git, "--version"], capture_stdout=True, check=False)
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", done.stdout.decode(errors="replace"))
    return tuple(int(x) for x in found.groups() if x is not None) if found else (0,)


def forge_helper_dir() -> str | None:
    """The directory holding `git-remote-hive` (this installation's scripts), or `None`."""
    scripts = sysconfig.get_path("scripts")
    if scripts and os.access(os.path.join(scripts, HELPER), os.X_OK):
        return scripts
    found = shutil.which(HELPER)
    return os.path.dirname(found) if found else None


def split(repo: str) -> tuple[str, str]:
    owner, _, name = repo.partition("/")
    return owner, name


def may_read(who: Who, owner: str, private: bool) -> bool:
    return who.role in ("operator", "manager") or owner == who.name or not private


def may_write(who: Who, owner: str) -> bool:
    if who.role == "operator":
        return True
    if owner == f.ORG:
        return who.role == "manager"
    return owner == who.name


def create_refusal(who: Who, owner: str) -> str | None:
    """Why `who` may not create a repository in `owner`'s namespace, or `None`."""
    if may_write(who, owner):
        return None
    if owner == f.ORG:
        return f"only the manager and the operator create repositories in {f.ORG}"
    return f"you create repositories in your own namespace ({who.name}/…), not in {owner}/…"


def pre_receive_hook() -> str:
    """The hook every push runs: only well-named branches and tags, never the default
    branch deleted, never more than `MAX_PUSHED_REFS` refs at once."""
    return f"""#!{sys.executable} -I
# Written by the hyperhive daemon; rewritten at every start. Do not edit.
import os, re, sys

BRANCH = re.compile({f.BRANCH_PATTERN!r})
ZERO = "0" * 40
head = os.environ.get("HIVE_FORGE_HEAD", "refs/heads/main")
lines = sys.stdin.read().splitlines()
refused = []
if len(lines) > {MAX_PUSHED_REFS}:
    refused.append(f"a push may update at most {MAX_PUSHED_REFS} refs ({{len(lines)}} given)")
for line in lines[:{MAX_PUSHED_REFS}]:
    old, new, ref = line.split(" ", 2)
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix) and BRANCH.match(ref[len(prefix):]):
            break
    else:
        refused.append(
            f"{{ref!r}}: only refs/heads/<branch> and refs/tags/<tag> may be pushed, named"
            " with ASCII letters, digits, '_', '.', '-' and '/' (no '..', no part starting"
            " with '.' or '-', none ending in '.lock')"
        )
        continue
    if new == ZERO and ref == head:
        refused.append(f"{{ref}}: the default branch cannot be deleted")
for reason in refused:
    print(f"hive forge: refused {{reason}}", file=sys.stderr)
sys.exit(1 if refused else 0)
"""


async def stop_service(proc: trio.Process) -> None:
    """End a git service cut short: SIGTERM first, so a push's quarantined objects are
    removed by git itself, then SIGKILL after `STOP_GRACE`; always reaped."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with trio.move_on_after(STOP_GRACE):
            await proc.wait()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    await proc.wait()


class _Changed:
    """A broadcast wake-up: every waiter wakes on `fire`."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class GitSession:
    """A running git service and the order its input arrives in (`ForgeWrite.seq`)."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.next_seq = 0
        self.closed = False
        self._writing = False
        self._changed = _Changed()

    async def write(self, seq: int, data: bytes, eof: bool) -> None:
        while True:
            if self.closed:
                raise Fail("not_found", "the git session has ended")
            if seq < self.next_seq:
                raise Fail("conflict", f"write {seq} was already applied")
            if seq >= self.next_seq + f.WRITE_WINDOW:
                raise Fail(
                    "invalid",
                    f"write {seq} is more than {f.WRITE_WINDOW} ahead of the next one ({self.next_seq})",
                )
            if seq == self.next_seq and not self._writing:
                break
            await self._changed.wait()
        self._writing = True
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            if data:
                await stdin.send_all(data)
            if eof:
                await stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Fail("not_found", "the git service has stopped reading") from None
        finally:
            self._writing = False
            self.next_seq = seq + 1
            self._changed.fire()

    def close(self) -> None:
        self.closed = True
        self._changed.fire()


class Forge:
    """The hive's repositories. Build, `await open()`, then serve verbs."""

    def __init__(
        self,
        settings: ForgeSettings,
        store: Store,
        bus: EventBus,
        registry: Registry,
        paths: Paths,
        max_frame: int,
        now: Callable[[], float] = time.time,
        git: str = "git",
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.registry = registry
        self.now = now
        self.git = git
        self.root = paths.state_dir / "forge"
        self.repos_dir = self.root / "repos"
        self.hooks_dir = self.root / "hooks"
        self.tmp_dir = self.root / "tmp"
        self.chunk = max(1024, min(65536, max_frame - FRAME_OVERHEAD))
        """Bytes per `ForgeData` frame (and the most a `ForgeWrite` may carry)."""
        self.max_write = max_frame - FRAME_OVERHEAD
        self.available = False
        self.unavailable_reason = "the forge has not started"
        self.git_version: tuple[int, ...] = (0,)
        self.on_push: list[OnPush] = []
        """Called after every push or merge that moved refs (the merge requests follow)."""
        self._locks: dict[str, trio.Lock] = {}
        self._sessions: weakref.WeakKeyDictionary[object, dict[int, GitSession]] = (
            weakref.WeakKeyDictionary()
        )
        self._active: Counter[str] = Counter()

    # ---------------------------------------------------------------- start

    async def open(self) -> None:
        """Make the forge's dirs, write its hook, reconcile sqlite with the disk, and seed
        `org-shared/docs` when it does not exist. A host without git, or a forge dir the
        daemon cannot trust, gets a forge that answers `unavailable` (the log says why) and
        a daemon that runs everything else."""
        try:
            await self._open()
        except (Fail, GitError, OSError) as exc:
            self.available = False
            self.unavailable_reason = f"the forge could not start: {getattr(exc, 'message', exc)}"
            log.error("forge: %s", self.unavailable_reason)

    async def _open(self) -> None:
        if not self.settings.enabled:
            self.unavailable_reason = "the forge is turned off ([forge] enabled = false)"
            return
        if shutil.which(self.git) is None:
            self.unavailable_reason = "git is not installed on the host (apt-get install git)"
            log.error("forge: %s", self.unavailable_reason)
            return
        self.git_version = await git_version(self.git)
        if self.git_version < MERGE_TREE_GIT:
            log.warning(
                "forge: git %s cannot merge without a working tree (2.38 or newer can):"
                " merge requests merge by fast-forward only",
                ".".join(map(str, self.git_version)),
            )
        for path in (self.root, self.repos_dir, self.hooks_dir, self.tmp_dir):
            self._ensure_dir(path)
        for leftover in self.tmp_dir.iterdir():  # a create or a merge cut short by a crash
            shutil.rmtree(leftover, ignore_errors=True)
        hook = self.hooks_dir / "pre-receive"
        staged = self.hooks_dir / ".pre-receive.new"
        staged.write_text(pre_receive_hook())
        os.chmod(staged, 0o700)
        os.replace(staged, hook)
        await self._reconcile()
        self.available = True
        if await self._lookup(f.DOCS_REPO) is None:
            await self.create(
                Who(OPERATOR, "operator"),
                f.DOCS_REPO,
                private=False,
                description="Shared docs, prompts and runbooks: every agent reads, the manager"
                " and the operator write",
            )
        docs = BareRepo(self.path(f.DOCS_REPO), self.git)
        if not await docs.refs("refs/heads/"):
            commit = await docs.commit_files(
                None,
                {"README.md": DOCS_README.encode()},
                "Seed org-shared/docs",
                Identity(*HIVE_IDENTITY),
            )
            await docs.update_ref(f"refs/heads/{DEFAULT_BRANCH}", commit, None)
            await self._pushed(f.DOCS_REPO, OPERATOR, {}, {f"refs/heads/{DEFAULT_BRANCH}": commit})

    def _ensure_dir(self, path: Path) -> None:
        """`path` as the daemon's private directory; never through a symlink."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, PRIVATE_DIR)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise Fail(
                "unavailable", f"{path} is not the daemon's own directory (a symlink?); refusing it"
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, PRIVATE_DIR)

    async def _reconcile(self) -> None:
        """A repository on disk with no row (a crash between the two) is adopted as private;
        a row whose directory is gone gets an empty repository again, loudly."""

        def rows(conn: sqlite3.Connection) -> list[str]:
            return [f"{r[0]}/{r[1]}" for r in conn.execute("SELECT owner, name FROM forge_repos")]

        known = set(await self.store.read(rows))
        on_disk: set[str] = set()
        for owner_dir in sorted(self.repos_dir.iterdir()):
            if not owner_dir.is_dir() or owner_dir.is_symlink():
                continue
            for repo_dir in sorted(owner_dir.iterdir()):
                repo = f"{owner_dir.name}/{repo_dir.name.removesuffix('.git')}"
                if repo_dir.name.endswith(".git") and f.repo_problem(repo) is None:
                    on_disk.add(repo)
        now = self.now()
        adopted = sorted(on_disk - known)
        for repo in adopted:
            log.warning("forge: adopting %s (on disk, not in the database) as private", repo)

        def adopt(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO forge_repos (owner, name, private, description,"
                " created_by, created_at) VALUES (?, ?, 1, 'adopted', ?, ?)",
                [(*split(repo), OPERATOR, now) for repo in adopted],
            )

        if adopted:
            await self.store.write(adopt)
        for repo in sorted(known - on_disk):
            log.error("forge: %s is in the database but not on disk; it is empty again", repo)
            owner, _ = split(repo)
            self._ensure_dir(self.repos_dir / owner)
            await self._init_into_place(repo)

    def require(self) -> None:
        if not self.available:
            raise Fail("unavailable", self.unavailable_reason)

    # ---------------------------------------------------------------- paths and rows

    def path(self, repo: str) -> Path:
        owner, name = split(repo)
        return self.repos_dir / owner / f"{name}.git"

    def checked_path(self, repo: str) -> Path:
        """The repository's directory, refused when any step to it is a symlink or not the
        daemon's own directory (the state dir is private, but the daemon trusts no link)."""
        path = self.path(repo)
        for step in (self.root, self.repos_dir, path.parent, path):
            try:
                st = os.lstat(step)
            except FileNotFoundError:
                raise Fail("not_found", f"no repository {repo}") from None
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                log.error("forge: %s is a symlink or not the daemon's; refusing %s", step, repo)
                raise Fail(
                    "unavailable",
                    f"{repo}: its directory is not the daemon's own (a symlink?); refusing it",
                )
        return path

    def repo_git(self, repo: str) -> BareRepo:
        return BareRepo(self.checked_path(repo), self.git)

    def lock(self, repo: str) -> trio.Lock:
        lock = self._locks.get(repo)
        if lock is None:
            lock = self._locks[repo] = trio.Lock()
        return lock

    @contextlib.asynccontextmanager
    async def locked(self, repo: str) -> AsyncIterator[None]:
        """Hold `repo`'s write lock, waiting at most `lock_wait_seconds` for it."""
        lock = self.lock(repo)
        with trio.move_on_after(self.settings.lock_wait_seconds) as waited:
            await lock.acquire()
        if waited.cancelled_caught:
            raise Fail(
                "conflict",
                f"{repo} is busy (a push or a merge is running); try again shortly",
                retry_after_seconds=5.0,
            )
        try:
            yield
        finally:
            lock.release()

    async def _lookup(self, repo: str) -> sqlite3.Row | None:
        owner, name = split(repo)

        def read(conn: sqlite3.Connection) -> sqlite3.Row | None:
            row: sqlite3.Row | None = conn.execute(
                "SELECT * FROM forge_repos WHERE owner = ? AND name = ?", (owner, name)
            ).fetchone()
            return row

        return await self.store.read(read)

    async def _open_counts(self) -> dict[str, int]:
        def read(conn: sqlite3.Connection) -> dict[str, int]:
            return {
                r[0]: r[1]
                for r in conn.execute(
                    "SELECT repo, count(*) FROM merge_requests WHERE state = 'open' GROUP BY repo"
                )
            }

        return await self.store.read(read)

    def row(self, r: sqlite3.Row, who: Who, open_mrs: int = 0) -> f.RepoRow:
        repo = f"{r['owner']}/{r['name']}"
        return f.RepoRow(
            repo=repo,
            owner=r["owner"],
            name=r["name"],
            url=f"{f.URL_SCHEME}{repo}",
            private=bool(r["private"]),
            description=r["description"],
            created_by=r["created_by"],
            created_at=r["created_at"],
            pushed_at=r["pushed_at"],
            default_branch=r["default_branch"],
            open_merge_requests=open_mrs,
            writable=may_write(who, r["owner"]),
        )

    async def readable(self, who: Who, repo: str) -> f.RepoRow:
        """The repository's row if `who` may read it; `not_found` otherwise (a private
        repository of someone else does not exist, as far as the caller can tell)."""
        self.require()
        r = await self._lookup(repo)
        if r is None or not may_read(who, r["owner"], bool(r["private"])):
            raise Fail("not_found", f"no repository {repo}")
        counts = await self._open_counts()
        return self.row(r, who, counts.get(repo, 0))

    async def writable(self, who: Who, repo: str) -> f.RepoRow:
        row = await self.readable(who, repo)
        if not row.writable:
            if row.owner == f.ORG:
                raise Fail(
                    "forbidden",
                    f"{repo} is read-only for agents: only the manager and the operator push"
                    " to it; propose a change with a merge request from a repository of yours",
                )
            raise Fail(
                "forbidden",
                f"{repo} belongs to {row.owner}: you may read it, not write it; push to a"
                " repository of your own and open a merge request",
            )
        return row

    # ---------------------------------------------------------------- repositories

    async def create(
        self, who: Who, repo: str, private: bool = False, description: str = ""
    ) -> f.RepoRow:
        self.require()
        owner, name = split(repo)
        refusal = create_refusal(who, owner)
        if refusal is not None:
            raise Fail("forbidden", refusal)
        if owner != f.ORG and owner not in self.registry.agents:
            raise Fail("not_found", f"no agent {owner!r} to own {repo}")
        async with self.locked(repo):
            if await self._lookup(repo) is not None:
                raise Fail("conflict", f"{repo} already exists")

            def count(conn: sqlite3.Connection) -> int:
                return int(
                    conn.execute(
                        "SELECT count(*) FROM forge_repos WHERE owner = ?", (owner,)
                    ).fetchone()[0]
                )

            held = await self.store.read(count)
            if held >= self.settings.max_repos_per_owner:
                raise Fail(
                    "forbidden",
                    f"{owner} has {held} repositories, the most one owner may have"
                    " ([forge] max_repos_per_owner)",
                )
            self._ensure_dir(self.repos_dir / owner)
            await self._init_into_place(repo)
            now = self.now()
            try:
                await self.store.write(
                    lambda c: c.execute(
                        "INSERT INTO forge_repos (owner, name, private, description, created_by,"
                        " created_at, default_branch) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (owner, name, int(private), description, who.name, now, DEFAULT_BRANCH),
                    )
                )
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(shutil.rmtree, self.path(repo), True)
                raise
        row = await self.readable(who, repo)
        self.bus.publish(f.RepoCreated(repo=row))
        log.info("forge: %s created %s%s", who.name, repo, " (private)" if private else "")
        return row

    async def _init_into_place(self, repo: str) -> None:
        """A new bare repository, made under `tmp/` and renamed into place: a crash never
        leaves a half-made repository where a real one belongs."""
        staging = self.tmp_dir / f"new-{secrets.token_hex(8)}.git"
        try:
            await BareRepo(staging, self.git).init(DEFAULT_BRANCH)
            try:
                os.rename(staging, self.path(repo))
            except OSError as exc:
                raise Fail("conflict", f"{repo} already exists on disk") from exc
        finally:
            if staging.exists():
                await trio.to_thread.run_sync(shutil.rmtree, staging, True)

    async def list_repos(self, who: Who, owner: str | None) -> list[f.RepoRow]:
        self.require()

        def read(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            if owner is None:
                return list(conn.execute("SELECT * FROM forge_repos ORDER BY owner, name"))
            return list(
                conn.execute("SELECT * FROM forge_repos WHERE owner = ? ORDER BY name", (owner,))
            )

        counts = await self._open_counts()
        return [
            self.row(r, who, counts.get(f"{r['owner']}/{r['name']}", 0))
            for r in await self.store.read(read)
            if may_read(who, r["owner"], bool(r["private"]))
        ]

    async def update(
        self, who: Who, repo: str, private: bool | None, description: str | None
    ) -> f.RepoRow:
        await self.writable(who, repo)
        owner, name = split(repo)
        sets: list[str] = []
        args: list[object] = []
        if private is not None:
            sets.append("private = ?")
            args.append(int(private))
        if description is not None:
            sets.append("description = ?")
            args.append(description)
        if sets:
            await self.store.write(
                lambda c: c.execute(
                    f"UPDATE forge_repos SET {', '.join(sets)} WHERE owner = ? AND name = ?",
                    (*args, owner, name),
                )
            )
        row = await self.readable(who, repo)
        if sets:
            self.bus.publish(f.RepoUpdated(repo=row))
        return row

    async def delete(self, who: Who, repo: str) -> list[int]:
        """Delete `repo` for good; returns the merge requests that targeted it (now closed
        by the caller, `merge_requests`)."""
        await self.writable(who, repo)
        owner, name = split(repo)
        async with self.locked(repo):
            path = self.checked_path(repo)
            doomed = self.tmp_dir / f"deleted-{secrets.token_hex(8)}"
            os.rename(path, doomed)  # gone at once; removed below (or at the next start)

            def forget(conn: sqlite3.Connection) -> list[int]:
                conn.execute("DELETE FROM forge_repos WHERE owner = ? AND name = ?", (owner, name))
                return [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM merge_requests WHERE repo = ? AND state = 'open'", (repo,)
                    )
                ]

            targeted = await self.store.write(forget)
            await trio.to_thread.run_sync(shutil.rmtree, doomed, True)
        self.bus.publish(f.RepoDeleted(repo=repo))
        log.warning("forge: %s deleted %s", who.name, repo)
        return targeted

    # ---------------------------------------------------------------- reading content

    async def view(self, who: Who, repo: str, ref: str | None, commits: int) -> f.RepoView:
        row = await self.readable(who, repo)
        git = self.repo_git(repo)
        branches = await git.branches()
        tags = await git.branches("refs/tags/")
        name = ref or row.default_branch
        commit = await git.resolve(name) if (branches or tags) else None
        if commit is None and ref is not None:
            raise Fail("not_found", f"{repo} has no branch, tag or commit {ref!r}")
        if commit is None and branches and ref is None:  # the default branch is gone
            name, commit = branches[0].name, branches[0].sha
        log_rows = await git.log(commit, commits) if commit is not None else []
        return f.RepoView(
            repo=row,
            ref=name if commit is not None else "",
            branches=branches,
            tags=tags,
            commits=log_rows,
        )

    async def _commit_of(self, git: BareRepo, repo: str, rev: str) -> str:
        commit = await git.resolve(rev)
        if commit is None:
            raise Fail("not_found", f"{repo} has no branch, tag or commit {rev!r}")
        return commit

    async def tree(self, who: Who, repo: str, rev: str, path: str) -> f.RepoTree:
        await self.readable(who, repo)
        git = self.repo_git(repo)
        commit = await self._commit_of(git, repo, rev)
        entries = await git.tree(commit, path)
        if entries is None:
            raise Fail("not_found", f"{repo} has no directory {path!r} at {rev}")
        return f.RepoTree(repo=repo, rev=rev, commit=commit, path=path, entries=entries)

    async def blob(self, who: Who, repo: str, rev: str, path: str) -> f.RepoBlob:
        await self.readable(who, repo)
        git = self.repo_git(repo)
        commit = await self._commit_of(git, repo, rev)
        got = await git.blob(commit, path, f.MAX_BLOB_BYTES)
        if got is None:
            raise Fail("not_found", f"{repo} has no file {path!r} at {rev}")
        data, size, truncated = got
        return f.RepoBlob(
            repo=repo,
            rev=rev,
            commit=commit,
            path=path,
            size=size,
            data=data,
            truncated=truncated,
        )

    # ---------------------------------------------------------------- git transport

    def session(self, conn: object, call: int) -> GitSession:
        found = self._sessions.get(conn, {}).get(call)
        if found is None:
            raise Fail("not_found", f"no git session with call id {call} on this connection")
        return found

    async def serve(
        self,
        who: Who,
        conn: object,
        call: int,
        repo: str,
        service: f.GitService,
        emit: Callable[[m.Reply], Awaitable[None]],
    ) -> None:
        """Run `service` on `repo` for `who` and relay its bytes: the `ForgeConnect` stream.

        Takes responsibility for the git process: it is killed when the stream is
        cancelled (the client hung up or sent `Cancel`) or outlives the session timeout,
        and always waited for. A push holds the repository's lock for the whole session,
        so the refs it moved are exactly the difference before and after.
        """
        self.require()
        pushing = service == "git-receive-pack"
        created = False
        if pushing:
            owner, _ = split(repo)
            if await self._lookup(repo) is None and create_refusal(who, owner) is None:
                try:  # a push to your own namespace creates the repository
                    await self.create(who, repo)
                    created = True
                except Fail as exc:
                    if exc.code != "conflict":  # `conflict`: another push created it first
                        raise
            row = await self.writable(who, repo)
        else:
            row = await self.readable(who, repo)
        if self._active[who.name] >= self.settings.max_sessions_per_agent:
            raise Fail(
                "rate_limited",
                f"{who.name} has {self._active[who.name]} git sessions running, the most"
                " at once ([forge] max_sessions_per_agent)",
                retry_after_seconds=2.0,
            )
        self._active[who.name] += 1
        try:
            if pushing:
                async with self.locked(repo):
                    await self._run_service(who, conn, call, row, service, created, emit)
            else:
                await self._run_service(who, conn, call, row, service, created, emit)
        finally:
            self._active[who.name] -= 1
            if self._active[who.name] <= 0:
                del self._active[who.name]

    async def _run_service(
        self,
        who: Who,
        conn: object,
        call: int,
        row: f.RepoRow,
        service: f.GitService,
        created: bool,
        emit: Callable[[m.Reply], Awaitable[None]],
    ) -> None:
        repo = row.repo
        path = self.checked_path(repo)
        git = BareRepo(path, self.git)
        pushing = service == "git-receive-pack"
        before = await git.refs() if pushing else {}
        timeout = self.settings.session_timeout_seconds
        if pushing:
            argv = [
                self.git,
                "-c",
                f"core.hooksPath={self.hooks_dir}",
                "-c",
                "receive.fsckObjects=true",
                "-c",
                f"receive.maxInputSize={self.settings.max_push_bytes}",
                "-c",
                "receive.hideRefs=refs/mr",
                "-c",
                "receive.advertisePushOptions=false",
                "-c",
                "receive.denyNonFastForwards=false",
                "receive-pack",
                str(path),
            ]
        else:
            argv = [
                self.git,
                "upload-pack",
                "--strict",
                f"--timeout={max(1, int(timeout))}",
                str(path),
            ]
        env = git_env({"HIVE_FORGE_HEAD": f"refs/heads/{row.default_branch}"})
        proc = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(path),
        )
        session = GitSession(proc)
        self._sessions.setdefault(conn, {})[call] = session
        message = ""
        try:
            await emit(
                f.ForgeOpened(repo=repo, service=service, created=created, max_write=self.max_write)
            )
            gone: list[BaseException] = []
            with trio.move_on_after(timeout) as timer:
                async with trio.open_nursery() as pumps:
                    assert proc.stdout is not None and proc.stderr is not None
                    pumps.start_soon(self._pump, proc.stdout, False, emit, pumps, gone)
                    pumps.start_soon(self._pump, proc.stderr, True, emit, pumps, gone)
                if gone:  # the caller hung up: end git now, not when it gives up writing
                    raise gone[0]
                await proc.wait()
            if timer.cancelled_caught:
                message = f"the git session took longer than {timeout:g}s and was ended"
                log.warning("forge: %s %s %s: %s", who.name, service, repo, message)
        finally:
            session.close()
            sessions = self._sessions.get(conn)
            if sessions is not None:
                sessions.pop(call, None)
            with trio.CancelScope(shield=True):
                await stop_service(proc)
                await close_pipes(proc)
                if pushing:
                    with trio.move_on_after(GIT_TIMEOUT * 2):
                        await self._after_push(who, git, repo, before, created)
        await emit(f.ForgeClosed(exit_code=proc.returncode or 0, message=message))

    async def _pump(
        self,
        stream: trio.abc.ReceiveStream,
        stderr: bool,
        emit: Callable[[m.Reply], Awaitable[None]],
        pumps: trio.Nursery,
        gone: list[BaseException],
    ) -> None:
        """Relay one of git's outputs to the caller. A caller that hung up stops both pumps
        and is said once, as the transport's own peer-gone error: inside the pumps' nursery
        it would leave as an exception group the transport takes for a daemon error."""
        try:
            while True:
                data = await stream.receive_some(self.chunk)
                if not data:
                    return
                await emit(f.ForgeData(data=bytes(data), stderr=stderr))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            gone.append(exc)
            pumps.cancel_scope.cancel()

    async def _after_push(
        self, who: Who, git: BareRepo, repo: str, before: dict[str, str], created: bool
    ) -> None:
        """Publish what a push moved; a repository this push created and left empty goes."""
        try:
            after = await git.refs()
        except GitError as exc:
            log.error("forge: cannot read the refs of %s after a push: %s", repo, exc)
            return
        if created and not after:
            owner, name = split(repo)
            await trio.to_thread.run_sync(shutil.rmtree, git.path, True)
            await self.store.write(
                lambda c: c.execute(
                    "DELETE FROM forge_repos WHERE owner = ? AND name = ?", (owner, name)
                )
            )
            self.bus.publish(f.RepoDeleted(repo=repo))
            return
        await self._pushed(repo, who.name, before, after)

    async def _pushed(
        self, repo: str, by: str, before: dict[str, str], after: dict[str, str]
    ) -> None:
        updates = [
            f.RefUpdate(ref=ref, old=before.get(ref, ZERO_SHA), new=after.get(ref, ZERO_SHA))
            for ref in sorted(set(before) | set(after))
            if before.get(ref) != after.get(ref) and not ref.startswith("refs/mr/")
        ]
        if not updates:
            return
        owner, name = split(repo)
        now = self.now()
        await self.store.write(
            lambda c: c.execute(
                "UPDATE forge_repos SET pushed_at = ? WHERE owner = ? AND name = ?",
                (now, owner, name),
            )
        )
        self.bus.publish(f.Pushed(repo=repo, by=by, updates=updates))
        for listener in self.on_push:
            try:
                await listener(repo, by, updates)
            except Fail as exc:
                log.warning("forge: after a push to %s: %s", repo, exc.message)

    async def record_update(self, repo: str, by: str, ref: str, old: str | None, new: str) -> None:
        """A ref the daemon moved itself (a merge): published as a push by `by`."""
        before = {ref: old} if old is not None else {}
        await self._pushed(repo, by, before, {ref: new})
