"""The forge's wire shapes: repositories, git transport over a socket, and merge requests.

A repository is named `<owner>/<name>`: the owner is an agent (its namespace) or `org-shared`
(the hive's own, where `org-shared/docs` lives). The patterns below are the whole naming
rule, so a name that decodes is safe as a path component and as a git ref: no `..`, no
leading `-` or `.`, no control characters, no `.git`/`.lock` suffix games, ASCII only.
`repo_name_problem` and `branch_problem` say in words why a name is refused, for the CLI and
the git helper, which check before they send anything. Nothing here does I/O.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from msgspec import Meta, Struct

from .base import AgentName, Body, Event, Reply, Request, RowId

ORG = "org-shared"
"""The hive's own namespace: readable by every agent, writable by the manager and operator."""
DOCS_REPO = f"{ORG}/docs"
"""Seeded with a README when the daemon first starts."""
URL_SCHEME = "hive://"

_NAME = r"(?!.*\.\.)(?!.*\.git\Z)(?!.*\.lock\Z)(?!.*\.\Z)[a-z0-9][a-z0-9._-]{0,62}"
REPO_NAME_PATTERN = rf"^{_NAME}\Z"
OWNER_PATTERN = r"^[a-z][a-z0-9-]{0,30}\Z"
REPO_PATTERN = rf"^[a-z][a-z0-9-]{{0,30}}/{_NAME}\Z"
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
BRANCH_PATTERN = rf"^(?!.*\.\.)(?!.*\.lock(/|\Z))(?!.*\.\Z)(?!HEAD\Z){_SEGMENT}(/{_SEGMENT})*\Z"

RepoPath = Annotated[str, Meta(pattern=REPO_PATTERN, max_length=95)]
"""`<owner>/<name>`: an agent or `org-shared`, then a lowercase name of up to 63 of
`[a-z0-9._-]`, starting with a letter or digit; never `..`, never ending in `.`, `.git` or
`.lock`."""
BranchName = Annotated[str, Meta(pattern=BRANCH_PATTERN, max_length=200)]
"""A branch or tag name without `refs/heads/`: `/`-separated parts of `[A-Za-z0-9_.-]`, each
starting with a letter, digit or `_`; never `..`, never a part ending in `.lock`, never
ending in `.`, never `HEAD`."""
GitService = Literal["git-upload-pack", "git-receive-pack"]
MergeRequestState = Literal["open", "merged", "closed"]
MergeMethod = Literal["auto", "fast_forward", "merge"]
"""`fast_forward`: only when the target has nothing the source lacks; `merge`: always a merge
commit; `auto`: fast-forward when possible, else a merge commit."""
MergeStatus = Literal[
    "fast_forward", "clean", "conflict", "up_to_date", "no_source", "needs_merge", "resolved"
]
"""`needs_merge`: not a fast-forward, and the host's git is too old to tell (or to merge)."""
RevName = Annotated[
    str, Meta(pattern=rf"^([0-9a-f]{{4,64}}|{BRANCH_PATTERN[1:-2]})\Z", max_length=200)
]
"""A commit sha, or a branch or tag name of the repository."""
TreePath = Annotated[
    str,
    Meta(
        pattern=r"^((?!\.\.?(/|\Z))[^/\x00-\x1f\x7f]+(/(?!\.\.?(/|\Z))[^/\x00-\x1f\x7f]+)*)?\Z",
        max_length=4096,
    ),
]
"""A path inside a commit's tree (`""`: its root): `/`-separated, no `.` or `..` parts, no
control characters."""
Title = Annotated[str, Meta(min_length=1, max_length=200)]
NoteText = Annotated[str, Meta(max_length=65_536)]
WRITE_WINDOW = 16
"""How far ahead of the next `ForgeWrite` to apply another may be sent (`invalid` beyond)."""
MAX_BLOB_BYTES = 512 * 1024
MAX_DIFF_BYTES = 512 * 1024


def repo_name_problem(name: str) -> str | None:
    """Why `name` (the part after `<owner>/`) is not a repository name, or `None`."""
    if not name:
        return "a repository name may not be empty"
    if len(name) > 63:
        return "a repository name has at most 63 characters"
    if name.endswith(".git"):
        return "drop the `.git` suffix: repositories are named without it"
    if ".." in name:
        return "a repository name may not contain `..`"
    if name.endswith((".", ".lock")):
        return "a repository name may not end in `.` or `.lock`"
    if not re.match(r"^[a-z0-9]", name):
        return "a repository name starts with a lowercase letter or a digit"
    if not re.match(REPO_NAME_PATTERN, name):
        return "a repository name is made of lowercase letters, digits, `.`, `_` and `-`"
    return None


def repo_problem(repo: str) -> str | None:
    """Why `repo` is not `<owner>/<name>`, or `None`."""
    owner, slash, name = repo.partition("/")
    if not slash:
        return f"{repo!r} is not <owner>/<name>"
    if not re.match(OWNER_PATTERN, owner):
        return f"{owner!r} is not an agent name or {ORG!r}"
    problem = repo_name_problem(name)
    if problem is not None:
        return problem
    assert re.match(REPO_PATTERN, repo), repo
    return None


def branch_problem(name: str) -> str | None:
    """Why `name` is not a branch or tag name this forge accepts, or `None`."""
    if not name:
        return "a branch name may not be empty"
    if len(name) > 200:
        return "a branch name has at most 200 characters"
    if ".." in name:
        return "a branch name may not contain `..`"
    if name == "HEAD":
        return "`HEAD` is not a branch name"
    if name.endswith("."):
        return "a branch name may not end in `.`"
    for part in name.split("/"):
        if not part:
            return "a branch name has no empty parts (`//`, or a leading or trailing `/`)"
        if part.endswith(".lock"):
            return "no part of a branch name may end in `.lock`"
        if part[0] in ".-":
            return "no part of a branch name may start with `.` or `-`"
    if not re.match(BRANCH_PATTERN, name):
        return "a branch name is made of ASCII letters, digits, `_`, `.`, `-` and `/`"
    return None


def parse_url(url: str) -> str:
    """`hive://alice/notes` (or `alice/notes`, as `hive::alice/notes` passes it) → `alice/notes`.

    Raises `ValueError` saying what is wrong.
    """
    repo = url[len(URL_SCHEME) :] if url.startswith(URL_SCHEME) else url
    problem = repo_problem(repo)
    if problem is not None:
        raise ValueError(f"{url!r}: {problem} (a forge URL is hive://<owner>/<repo>)")
    return repo


# --------------------------------------------------------------------------- rows


class RepoRow(Struct, kw_only=True):
    """One repository of the forge."""

    repo: str
    """`<owner>/<name>`."""
    owner: str
    name: str
    url: str
    """What to `git clone`: `hive://<owner>/<name>`."""
    private: bool
    """Readable only by its owner, the manager and the operator."""
    description: str
    created_by: str
    created_at: float
    pushed_at: float | None
    default_branch: str
    open_merge_requests: int = 0
    writable: bool = False
    """The caller may push here."""


class RefUpdate(Struct, kw_only=True):
    ref: str
    old: str
    """The sha before (all zeros: created)."""
    new: str
    """The sha after (all zeros: deleted)."""


class BranchRow(Struct, kw_only=True):
    name: str
    sha: str
    subject: str
    author: str
    committed_at: float


class CommitRow(Struct, kw_only=True):
    sha: str
    parents: list[str]
    author: str
    author_email: str
    committed_at: float
    subject: str


class TreeEntry(Struct, kw_only=True):
    name: str
    kind: Literal["file", "dir", "symlink", "submodule"]
    mode: str
    sha: str
    size: int | None
    """Bytes, for files and symlinks."""


class MergeRequestRow(Struct, kw_only=True):
    """A request to merge `source_repo`'s `source_branch` into `repo`'s `target_branch`."""

    id: int
    repo: str
    """The target repository (where the merge lands)."""
    source_repo: str
    """The same as `repo`, or another repository (a fork)."""
    source_branch: str
    target_branch: str
    title: str
    description: str
    author: str
    reviewers: list[str]
    state: MergeRequestState
    head_sha: str
    """The source branch's commit when the request last saw it (kept as `refs/mr/<id>/head`
    in the target repository)."""
    approvals: list[str]
    """Who approved `head_sha` (approvals of an earlier head are dropped when it moves)."""
    comments: int
    created_at: float
    updated_at: float
    merged_sha: str | None = None
    """The target branch's commit after the merge."""
    resolved_by: str | None = None
    """Who merged or closed it."""
    resolved_at: float | None = None


class MergeRequestNote(Struct, kw_only=True):
    """One entry of a merge request's discussion: a comment, an approval, or what happened."""

    id: int
    author: str
    kind: Literal["comment", "approval", "updated", "merged", "closed"]
    body: str
    sha: str | None
    """For an approval, the head it approved; for `updated`, the new head."""
    created_at: float


class MergeRequestThread(Struct, tag="mr", tag_field="kind", kw_only=True):
    """An open merge request, for its author and for each of its reviewers."""

    id: int
    agent: str
    """Whose thread this is."""
    role: Literal["author", "reviewer"]
    repo: str
    counterparty: str
    """For the author: the reviewers (comma-separated, may be empty); for a reviewer: the author."""
    summary: str
    age_seconds: float


# --------------------------------------------------------------------------- requests


class ForgeConnect(Request, tag="forge_connect"):
    """Streaming: run `service` on a repository and relay git's pack protocol both ways.

    What `git-remote-hive` sends for `git clone/fetch/push hive://<repo>`. Answered by
    `ForgeOpened` once the daemon has checked the caller may read (`git-upload-pack`) or
    write (`git-receive-pack`) the repository and started the service, then `ForgeData`
    frames (the service's output) and a last `ForgeClosed`. The caller's bytes go in with
    `ForgeWrite{call}`. Pushing to a repository of your own namespace that does not exist
    yet creates it. Each session lasts at most `[forge] session_timeout_seconds`.
    """

    repo: RepoPath
    service: GitService


class ForgeWrite(Request, tag="forge_write"):
    """Feed bytes to the service of your `ForgeConnect` stream `call` (on this connection).

    Writes apply in `seq` order (0, 1, 2, …), so up to 16 may be in flight; `eof` closes the
    service's input after `data`. A write for a stream that has ended is `not_found`.
    """

    call: Annotated[int, Meta(ge=0, le=2**53)]
    seq: Annotated[int, Meta(ge=0, le=2**53)]
    data: Annotated[bytes, Meta(max_length=16 * 1024 * 1024)] = b""
    eof: bool = False


class CreateRepo(Request, tag="forge_create_repo"):
    """Create an empty repository; answered by `RepoInfo`.

    An agent creates in its own namespace (the manager also in `org-shared`), the operator
    anywhere. `private`: only its owner, the manager and the operator may read it.
    """

    repo: RepoPath
    private: bool = False
    description: Annotated[str, Meta(max_length=500)] = ""


class ListRepos(Request, tag="forge_list_repos"):
    """The repositories you may read (optionally one owner's), by name; answered by `Repos`."""

    owner: Annotated[str, Meta(pattern=OWNER_PATTERN, max_length=31)] | None = None


class UpdateRepo(Request, tag="forge_update_repo"):
    """Change a repository you may write: make it private or public, or its description."""

    repo: RepoPath
    private: bool | None = None
    description: Annotated[str, Meta(max_length=500)] | None = None


class DeleteRepo(Request, tag="forge_delete_repo"):
    """Operator: delete a repository for good; its open merge requests are closed."""

    repo: RepoPath


class GetRepo(Request, tag="forge_repo"):
    """A repository's branches and its recent commits on `ref` (default: its default
    branch); answered by `RepoView`."""

    repo: RepoPath
    ref: RevName | None = None
    commits: Annotated[int, Meta(ge=0, le=500)] = 30


class ListTree(Request, tag="forge_tree"):
    """One directory of a commit's tree; answered by `RepoTree`."""

    repo: RepoPath
    rev: RevName
    path: TreePath = ""


class ReadBlob(Request, tag="forge_blob"):
    """One file of a commit (at most 512 KiB of it); answered by `RepoBlob`."""

    repo: RepoPath
    rev: RevName
    path: Annotated[TreePath, Meta(min_length=1)]


class OpenMergeRequest(Request, tag="mr_open"):
    """Ask to merge `source_branch` (of `source_repo`, default `repo`) into `repo`'s
    `target_branch`; answered by `MergeRequestInfo`.

    You must be able to read both repositories. `reviewers` are agents asked to review (the
    target's owner is added when it is an agent other than you), or `"operator"` to ask the
    operator (the request is then in the operator's inbox until it approves the head); the
    request is an open thread for you and for each agent among them until it is merged or
    closed.
    """

    repo: RepoPath
    source_branch: BranchName
    title: Title
    target_branch: BranchName = "main"
    source_repo: RepoPath | None = None
    description: NoteText = ""
    reviewers: Annotated[list[AgentName], Meta(max_length=20)] = []


class ListMergeRequests(Request, tag="mr_list"):
    """Merge requests you may read, newest first; answered by `MergeRequests`.

    `state` `None`: every state; `involving`: only those an agent authored or reviews.
    """

    repo: RepoPath | None = None
    state: MergeRequestState | None = "open"
    involving: AgentName | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class GetMergeRequest(Request, tag="mr_get"):
    """One merge request with its discussion, commits, diff and whether it merges cleanly;
    answered by `MergeRequestInfo`."""

    id: RowId


class CommentMergeRequest(Request, tag="mr_comment"):
    """Add a comment to a merge request you may read."""

    id: RowId
    body: Annotated[Body, Meta(min_length=1)]


class ApproveMergeRequest(Request, tag="mr_approve"):
    """Approve a merge request's current head (not your own). `note` is added as a comment."""

    id: RowId
    note: NoteText = ""


class MergeMergeRequest(Request, tag="mr_merge"):
    """Merge an open merge request into its target branch (you must be able to write the
    target repository); answered by `MergeRequestInfo`.

    Refused with `conflict` when the branches conflict (the message names the files) or
    when `method="fast_forward"` cannot fast-forward. `message` is the merge commit's
    message (default: the title).
    """

    id: RowId
    method: MergeMethod = "auto"
    message: Annotated[str, Meta(max_length=10_000)] = ""


class CloseMergeRequest(Request, tag="mr_close"):
    """Close a merge request without merging it (its author, or a writer of the target)."""

    id: RowId
    note: NoteText = ""


# --------------------------------------------------------------------------- replies


class ForgeOpened(Reply, tag="forge_opened"):
    """The service runs: relay git's bytes from here on."""

    repo: str
    service: str
    created: bool
    """This push created the repository."""
    max_write: int
    """The most bytes one `ForgeWrite` may carry (the daemon's frame limit, less overhead)."""


class ForgeData(Reply, tag="forge_data"):
    data: bytes
    stderr: bool = False
    """The service's diagnostics, not its protocol output."""


class ForgeClosed(Reply, tag="forge_closed"):
    """The last frame of a `ForgeConnect` stream."""

    exit_code: int
    message: str = ""
    """Why the session ended early (a timeout), or `""`."""


class RepoInfo(Reply, tag="repo"):
    repo: RepoRow


class Repos(Reply, tag="repos"):
    repos: list[RepoRow]


class RepoView(Reply, tag="repo_view"):
    repo: RepoRow
    ref: str
    """The branch or commit `commits` start from (`""`: the repository is empty)."""
    branches: list[BranchRow]
    tags: list[BranchRow]
    commits: list[CommitRow]
    """Newest first."""


class RepoTree(Reply, tag="repo_tree"):
    repo: str
    rev: str
    commit: str
    """The commit `rev` resolved to."""
    path: str
    entries: list[TreeEntry]
    """Directories first, then by name."""


class RepoBlob(Reply, tag="repo_blob"):
    repo: str
    rev: str
    commit: str
    path: str
    size: int
    data: bytes
    truncated: bool
    """`data` is the first 512 KiB of a larger file."""


class MergeRequestInfo(Reply, tag="merge_request"):
    mr: MergeRequestRow
    notes: list[MergeRequestNote] = []
    commits: list[CommitRow] = []
    """The source's commits the target lacks, newest first."""
    diff: str = ""
    """What merging changes, as a unified diff against the merge base."""
    diff_truncated: bool = False
    merge_status: MergeStatus = "resolved"
    conflicts: list[str] = []
    """With `merge_status="conflict"`: the files that conflict."""


class MergeRequests(Reply, tag="merge_requests"):
    merge_requests: list[MergeRequestRow]


# --------------------------------------------------------------------------- events


class RepoCreated(Event, tag="repo_created"):
    repo: RepoRow


class RepoUpdated(Event, tag="repo_updated"):
    """Its privacy or description changed."""

    repo: RepoRow


class RepoDeleted(Event, tag="repo_deleted"):
    repo: str


class Pushed(Event, tag="pushed"):
    repo: str
    by: str
    updates: list[RefUpdate]


class MergeRequestOpened(Event, tag="merge_request_opened"):
    mr: MergeRequestRow


class MergeRequestUpdated(Event, tag="merge_request_updated"):
    """A comment, an approval, or a new head pushed to its source branch."""

    mr: MergeRequestRow
    change: Literal["comment", "approval", "updated"]
    by: str


class MergeRequestMerged(Event, tag="merge_request_merged"):
    mr: MergeRequestRow


class MergeRequestClosed(Event, tag="merge_request_closed"):
    mr: MergeRequestRow


FORGE_AGENT_REQUESTS: tuple[type[Request], ...] = (
    ForgeConnect,
    ForgeWrite,
    CreateRepo,
    ListRepos,
    UpdateRepo,
    GetRepo,
    ListTree,
    ReadBlob,
    OpenMergeRequest,
    ListMergeRequests,
    GetMergeRequest,
    CommentMergeRequest,
    ApproveMergeRequest,
    MergeMergeRequest,
    CloseMergeRequest,
)
"""What an agent's (and the manager's) socket may ask of the forge."""
FORGE_OPERATOR_REQUESTS: tuple[type[Request], ...] = (
    CreateRepo,
    ListRepos,
    UpdateRepo,
    GetRepo,
    ListTree,
    ReadBlob,
    OpenMergeRequest,
    ListMergeRequests,
    GetMergeRequest,
    CommentMergeRequest,
    ApproveMergeRequest,
    MergeMergeRequest,
    CloseMergeRequest,
)
"""The operator's forge verbs on both of its sockets (the dashboard reads and reviews)."""
FORGE_ADMIN_REQUESTS: tuple[type[Request], ...] = (ForgeConnect, ForgeWrite, DeleteRepo)
"""`admin.sock` only: git transport for the operator's own clones, and deleting."""
