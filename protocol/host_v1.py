"""hyperhive's v1 host socket (`host.sock`): the JSON-line wire of its own host tools.

The original hyperhive's `hivectl` and desktop plugins (trollshell's agents panel) speak one
JSON object per line each way: a request tagged by `"cmd"` in snake_case, a response
`{"version": 1, "ok", "error", …payload}`. This module is that wire — the request Structs,
the response Structs, the line splitter and the line decoder — and does no I/O of its own.
Its security rule: a line longer than `LINE_MAX` is refused while it arrives, and nothing
past the cap is ever buffered. Unknown keys are ignored on purpose (the original's clients
add fields freely); an unknown `cmd` or a line that is not a request raises `LineError` with
a code from the daemon's one error vocabulary (`protocol.messages.ErrorCode`).
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Final, Literal, TypeAlias, get_args, overload

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from .messages import AgentName, ApprovalStatus, ErrorCode, RowId

HOST_SOCK_VERSION: Final = 1
"""The original's `HOST_SOCK_VERSION`: bumped only when a field is removed, renamed or retyped."""
LINE_MAX = 65_536
"""Longest request line accepted, in bytes, without its newline."""
MAX_SCOPE_NAMES = 256

HostApprovalKind = Literal[
    "spawn", "init_config", "update_meta_inputs", "schedule_prompt", "merge_config_pr"
]
"""The original's approval kinds; this hive's `apply_commit` is its `merge_config_pr`."""


# --------------------------------------------------------------------------- requests


class Scope(Struct, kw_only=True):
    """Which agents a lifecycle cmd acts on. Only `agent_names` may select anything here:
    the original read an all-false scope as "everything"; this hive refuses it."""

    agent_names: Annotated[list[AgentName], Meta(max_length=MAX_SCOPE_NAMES)] = []
    agents: bool = False
    ci: bool = False
    forge: bool = False
    gateway: bool = False
    matrix: bool = False


class HostRequest(Struct, tag_field="cmd", kw_only=True):
    """Base of every cmd; unknown keys are ignored (the original's `serde` default)."""


class List(HostRequest, tag="list"):
    """The names of every agent; answered with `agents`."""


class AgentStatus(HostRequest, tag="agent_status"):
    """One `AgentStatusRow` per agent; answered with `agent_statuses`."""


class SubscribeAgentStatus(HostRequest, tag="subscribe_agent_status"):
    """A bare success, then one response per changed agent (`agent_statuses` with one row)
    for as long as the client stays connected; no further request is read."""


class SetPaused(HostRequest, tag="set_paused"):
    """Pause (stop, and keep stopped) or unpause one agent."""

    name: AgentName
    paused: bool


class Start(HostRequest, tag="start"):
    """Start the named agents' containers."""

    scope: Scope


class Stop(HostRequest, tag="stop"):
    """Stop the named agents' containers; `graceful` lets a running turn finish (bounded)."""

    scope: Scope
    graceful: bool = True


class Restart(HostRequest, tag="restart"):
    """Stop then start one agent's container."""

    name: AgentName


class Urls(HostRequest, tag="urls"):
    """This hive's domain and dashboard root; answered with `urls`."""


class Pending(HostRequest, tag="pending"):
    """The approvals waiting for the operator; answered with `approvals`."""


class Approve(HostRequest, tag="approve"):
    """Approve one pending approval; answered once it has been carried out."""

    id: RowId


class Deny(HostRequest, tag="deny"):
    """Deny one pending approval."""

    id: RowId


AnyHostRequest: TypeAlias = (
    List
    | AgentStatus
    | SubscribeAgentStatus
    | SetPaused
    | Start
    | Stop
    | Restart
    | Urls
    | Pending
    | Approve
    | Deny
)
HOST_REQUESTS: tuple[type[HostRequest], ...] = get_args(AnyHostRequest)


def cmd_of(request_type: type[HostRequest]) -> str:
    tag = request_type.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


CMDS: frozenset[str] = frozenset(cmd_of(t) for t in HOST_REQUESTS)


# --------------------------------------------------------------------------- responses


class AgentStatusRow(Struct, kw_only=True):
    """One agent, as the original's `AgentStatusRow`. The flags are independent."""

    name: str
    running: bool
    """Its container is running."""
    failed: bool
    """Its container kept crashing and is no longer restarted."""
    needs_update: bool
    """The meta repo's `main` holds a config it does not run yet."""
    needs_login: bool
    """Its runtime has no working login; it waits for the operator."""
    paused: bool
    parent: str | None
    """The manager that spawned it; null for an agent of `hive.toml`."""
    deployed_sha: str | None
    """The first 12 characters of the meta repo commit it runs."""
    active_model: str | None
    """The model its harness last reported using."""
    status_text: str | None
    """Its free-text status (`set_status`); null when unset or when it is not running."""
    status_set_at: str | None
    """When `status_text` was set, RFC 3339 UTC; null exactly when `status_text` is."""
    url: str | None
    """Its dashboard page; null when the dashboard's address is unknown."""
    pending_reminders: int


class HiveUrls(Struct, kw_only=True):
    domain: str | None
    """The host name of the dashboard's address."""
    home: str | None
    """The dashboard's root, ending in `/`."""


class Approval(Struct, kw_only=True):
    """One approval, as the original's `Approval`."""

    id: int
    agent: str
    kind: HostApprovalKind
    commit_ref: str
    """`merge_config_pr`: the ref the manager named; empty for the other kinds."""
    fetched_sha: str | None
    """`merge_config_pr`: the commit pinned when it was requested (what approving deploys)."""
    requested_at: str
    status: ApprovalStatus
    description: str | None
    resolved_at: str | None
    note: str | None


class HostResponse(Struct, kw_only=True):
    """Every answer and every push. Payload keys appear only on the answer they belong to."""

    version: Literal[1] = HOST_SOCK_VERSION
    ok: bool
    error: str | None = None
    code: ErrorCode | UnsetType = UNSET
    """On failures only: the error's code (this hive's addition to the original wire)."""
    agents: list[str] | UnsetType = UNSET
    agent_statuses: list[AgentStatusRow] | UnsetType = UNSET
    urls: HiveUrls | UnsetType = UNSET
    approvals: list[Approval] | UnsetType = UNSET


def failure(code: ErrorCode, message: str) -> HostResponse:
    return HostResponse(ok=False, error=message, code=code)


# --------------------------------------------------------------------------- lines


class LineError(Exception):
    """A line that is not a request; answered with `ok: false` and the connection goes on."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


class TooLong:
    """What `LineSplitter` yields in place of a line longer than its cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __repr__(self) -> str:
        return f"TooLong({self.limit})"


class LineSplitter:
    """Splits a byte stream into lines, whatever the chunks; never buffers past the cap.

    `feed` returns each complete line (without `\\n`) in order, and a `TooLong` in place of a
    line over `limit` bytes: that line's bytes are dropped as they arrive, up to and
    including its newline, so a peer cannot make the daemon hold more than `limit` bytes.
    """

    def __init__(self, limit: int = LINE_MAX) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held right now (never more than `limit`)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | TooLong]:
        out: list[bytes | TooLong] = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if not self._discarding:
                if len(self._buffer) + len(piece) > self.limit:
                    self._buffer.clear()
                    self._discarding = True
                    out.append(TooLong(self.limit))
                else:
                    self._buffer += piece
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            else:
                out.append(bytes(self._buffer))
                self._buffer.clear()
            start = end + 1
        return out


_request_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(AnyHostRequest)
_encoder = msgspec.json.Encoder()


def decode_line(line: bytes) -> HostRequest:
    """One request line → its typed request; anything else raises `LineError`."""
    try:
        req: HostRequest = _request_decoder.decode(line)
        return req
    except msgspec.ValidationError as exc:
        raise _classify(line, exc) from None
    except msgspec.DecodeError as exc:
        raise LineError("bad_frame", f"the line is not JSON: {exc}") from None
    except RecursionError:
        raise LineError("bad_frame", "the line is nested too deeply") from None


def _classify(line: bytes, exc: msgspec.ValidationError) -> LineError:
    """Name what is wrong with valid-looking JSON that is not a request."""
    try:
        raw = msgspec.json.decode(line)
    except msgspec.DecodeError as bad:
        return LineError("bad_frame", f"the line is not JSON: {bad}")
    except RecursionError:
        return LineError("bad_frame", "the line is nested too deeply")
    if not isinstance(raw, dict):
        return LineError("invalid", 'a request is a JSON object with a "cmd"')
    cmd = raw.get("cmd")
    if not isinstance(cmd, str):
        return LineError("invalid", 'a request needs a "cmd" string')
    if cmd not in CMDS:
        shown = cmd if len(cmd) <= 64 else cmd[:64] + "…"
        return LineError("unknown_op", f"unknown cmd {shown!r}")
    return LineError("invalid", f"{cmd}: {exc}")


def encode_response(response: HostResponse) -> bytes:
    """One response as one line, newline included (JSON escapes every newline inside)."""
    return _encoder.encode(response) + b"\n"


@overload
def rfc3339(at: float) -> str: ...


@overload
def rfc3339(at: None) -> None: ...


@overload
def rfc3339(at: float | None) -> str | None: ...


def rfc3339(at: float | None) -> str | None:
    """A Unix time as RFC 3339 UTC (`2025-01-02T03:04:05.250Z`); fractions only when there
    are any, in 3 or 6 digits, as the original's `chrono` serialises them."""
    if at is None:
        return None
    stamp = datetime.datetime.fromtimestamp(at, datetime.UTC).replace(tzinfo=None)
    micros = stamp.microsecond
    if micros == 0:
        text = stamp.isoformat(timespec="seconds")
    elif micros % 1000 == 0:
        text = stamp.isoformat(timespec="milliseconds")
    else:
        text = stamp.isoformat(timespec="microseconds")
    return text + "Z"
