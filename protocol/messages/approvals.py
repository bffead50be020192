"""The manager's requests and the operator's decisions; the tombstones and pinned inputs they touch."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from .base import AgentName, Event, ModelName, Reply, Request, RowId, Runtime

ApprovalKind = Literal["spawn", "init_config", "apply_commit", "update_meta_inputs"]


ApprovalStatus = Literal["pending", "approved", "denied", "failed", "cancelled"]


ApprovalId = RowId


GitRev = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}\Z")]
"""A commit sha (full or abbreviated) or a branch/tag name of the meta repo; never an option."""


InputName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")]
"""The name of a pinned input of the meta repo's flake (`nixpkgs`, `hyperhive`, …)."""


OperatorNote = Annotated[str, Meta(max_length=2000)]


class ApprovalRow(Struct, kw_only=True):
    """One request of the manager that waits for (or got) the operator's decision."""

    id: int
    agent: str
    """The agent it is about (for `spawn` and `init_config`: the name to create)."""
    kind: ApprovalKind
    description: str
    """What approving does, in one paragraph (for `apply_commit`: the keys it changes)."""
    requested_by: str
    requested_at: float
    status: ApprovalStatus
    resolved_at: float | None
    note: str | None
    """The operator's note given with `Approve` or `Deny`."""
    outcome: str = ""
    """What carrying it out did: the deployed commit, or why it failed (with the log tail)."""
    ref: str | None = None
    """`apply_commit`: the ref or sha the manager named."""
    sha: str | None = None
    """`apply_commit`: the commit pinned when it was requested (tag `approval-<id>`); what
    approving deploys, whatever the named ref points at later."""


class TombstoneRow(Struct, kw_only=True):
    """A destroyed agent's directory, kept until it is purged."""

    name: str
    path: str
    destroyed_at: float


class MetaInputRow(Struct, kw_only=True):
    """One pinned input of the meta repo's flake (`flake.lock`)."""

    name: str
    url: str
    rev: str
    last_modified: float | None


class RequestSpawn(Request, tag="request_spawn"):
    """Manager: ask the operator to create a new agent; answered by `ApprovalInfo`.

    On approval the daemon writes `agents/<name>/agent.toml` (and `instructions.md`) in the
    meta repo, registers the agent, gives it `CLAUDE.md` from the instructions and starts its
    container. An empty `runtime` means the manager's own; an empty `model` the runtime's
    default.
    """

    name: AgentName
    role_description: Annotated[str, Meta(max_length=2000)] = ""
    instructions: Annotated[str, Meta(max_length=65_536)] = ""
    model: ModelName = ""
    runtime: Runtime | Literal[""] = ""


class RequestInitConfig(Request, tag="request_init_config"):
    """Manager: ask for a config template `agents/<name>/agent.toml` to edit before spawning."""

    name: AgentName


class ProposeConfig(Request, tag="propose_config"):
    """Manager: commit `agent_toml` as `agents/<agent>/agent.toml` on the branch
    `proposals/<agent>` (on top of the meta repo's `main`); answered by `Proposed`.

    Proposing again for the same agent replaces the branch (an amend). Nothing is deployed:
    follow with `RequestApplyCommit{agent, sha}`.
    """

    agent: AgentName
    agent_toml: Annotated[str, Meta(min_length=1, max_length=65_536)]
    message: Annotated[str, Meta(max_length=2000)] = ""


class RequestApplyCommit(Request, tag="request_apply_commit"):
    """Manager: ask to deploy the meta repo's `agents/<agent>/` as of commit `sha` (a sha or a
    branch such as `proposals/<agent>`); answered by `ApprovalInfo`.

    The commit is resolved and pinned at once (tag `approval-<id>`), so moving the branch
    later does not change what the operator approves. On approval the agent runs with that
    config (rebuilt if it was running) and its `deployed_sha` is that commit.
    """

    agent: AgentName
    sha: GitRev


class RequestUpdateMetaInputs(Request, tag="request_update_meta_inputs"):
    """Manager: ask to update the meta repo's pinned inputs (all, or only `names`)."""

    names: list[InputName] | None = None


class CancelApproval(Request, tag="cancel_approval"):
    """Manager: withdraw one of its own pending approvals."""

    id: ApprovalId


class ListApprovals(Request, tag="list_approvals"):
    """Approvals, newest first, optionally only those with one `status`; answered by `Approvals`."""

    status: ApprovalStatus | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class GetApproval(Request, tag="get_approval"):
    """One approval and the diff it would deploy; answered by `ApprovalInfo`."""

    id: ApprovalId


class Approve(Request, tag="approve"):
    """Carry out a pending approval; answered by `ApprovalInfo` once it is done (or failed).

    An approval is resolved once: approving or denying it again is `conflict`.
    """

    id: ApprovalId
    note: OperatorNote | None = None


class Deny(Request, tag="deny"):
    """Refuse a pending approval; the manager is told, with `note`."""

    id: ApprovalId
    note: OperatorNote | None = None


class ListTombstones(Request, tag="list_tombstones"):
    """The directories of destroyed agents still kept; answered by `Tombstones`."""


class PurgeTombstone(Request, tag="purge_tombstone"):
    """Delete a destroyed agent's kept directory for good."""

    name: AgentName


class ListMetaInputs(Request, tag="list_meta_inputs"):
    """The meta repo's pinned inputs; answered by `MetaInputs` (empty, with a note, off NixOS)."""


class UpdateMetaInputs(Request, tag="update_meta_inputs"):
    """Update the meta repo's pinned inputs (all, or only `names`) and commit the lock file."""

    names: list[InputName] | None = None


class Approvals(Reply, tag="approvals"):
    approvals: list[ApprovalRow]


class ApprovalInfo(Reply, tag="approval"):
    approval: ApprovalRow
    diff: str = ""
    """What approving changes in the meta repo, as a unified diff (`GetApproval` only)."""


class Proposed(Reply, tag="proposed"):
    agent: str
    sha: str
    """The new commit; pass it (or `branch`) to `RequestApplyCommit`."""
    branch: str
    summary: str
    """The keys it changes against what is deployed."""


class Tombstones(Reply, tag="tombstones"):
    tombstones: list[TombstoneRow]


class MetaInputs(Reply, tag="meta_inputs"):
    inputs: list[MetaInputRow]
    note: str
    """Why the list is empty (not the nixos backend, no lock file yet), or what was updated."""


class ApprovalAdded(Event, tag="approval_added"):
    approval: ApprovalRow


class ApprovalResolved(Event, tag="approval_resolved"):
    """An approval changed status (approved, denied, cancelled; failed after approval)."""

    approval: ApprovalRow


class TombstoneAdded(Event, tag="tombstone_added"):
    tombstone: TombstoneRow


class TombstoneRemoved(Event, tag="tombstone_removed"):
    name: str


class MetaInputsChanged(Event, tag="meta_inputs_changed"):
    inputs: list[MetaInputRow]
