"""Renders `docs/protocol.md` from the Structs themselves, so the reference cannot drift.

`python -m protocol.docgen > docs/protocol.md` rewrites it; a test fails when the file and
the Structs disagree. Prose that is not about one Struct lives in `INTRO` below.
"""

from __future__ import annotations

import inspect
from typing import Any, get_args

import msgspec
import msgspec.inspect as mi

from . import messages as m

INTRO = """\
# hyperhive protocol reference

Generated from the Structs in `protocol/messages/` by `python -m protocol.docgen`; do not edit by hand.

## Transport

- Unix stream sockets. The socket decides the caller's role: `RUN/admin.sock` (admin),
  `RUN/web.sock` (web), `RUN/agents/<name>.sock` (agent, or manager for a manager agent;
  the caller *is* `<name>`).
- Frames: a 4-byte big-endian body length, then a MessagePack body. A frame longer than the
  daemon's `max_frame_bytes` (default 1 MiB) is refused from its length prefix alone with
  `Error{code="too_large"}` and the connection is closed.
- The first frame is `Hello{protocol, client}`; the daemon answers `Welcome{protocol, role,
  agent, server_rev}`, or `Error{code="version"}` when the major versions differ.
- Every later frame is a `Call{id, req}`: `req` is one verb (tagged by `op`), `id` is chosen by
  the client and echoed by every reply to that call (tagged by `type`). Calls on one
  connection run concurrently; replies may come back in any order. The few verbs answered
  from memory (`ping`, `cancel`, `server_info`, `whoami`) are answered as they are read.
- Streaming verbs (`subscribe`, `wait_for_work`, `wait_for_control`, `forge_connect`) answer
  with many frames carrying the same `id` until the client sends `cancel{call: id}` or hangs
  up. `forge_connect` also takes bytes the other way: `forge_write{call: id, seq}` calls
  feed the stream `id` of the same connection, in `seq` order (docs/forge.md).
- Errors: `Error{id, code, message, retry_after_seconds}`. A call that could not be decoded
  is answered with its `id` when that much was readable, else `id = 0`. Framing damage
  (garbage, an oversize prefix) is answered with `id = 0` and the connection is closed;
  everything else leaves the connection usable.

## Error codes

| code | meaning |
|---|---|
| `bad_frame` | the bytes are not a frame of MessagePack (connection closed when framing broke) |
| `unknown_op` | no verb has this `op` |
| `invalid` | the verb exists but a field is missing, unknown, of the wrong type or out of range |
| `not_found` | the named agent, message, question or lease does not exist *for you* |
| `forbidden` | the verb exists but not on this socket, or the config forbids it |
| `too_large` | a frame exceeded `max_frame_bytes` |
| `version` | the client speaks another major protocol version |
| `rate_limited` | slow down; `retry_after_seconds` says for how long |
| `conflict` | the object is not in a state that allows this (already answered, exists) |
| `unavailable` | the daemon or a stream is going away; reconnect or resubscribe |
| `storage_full` | the disk holding the daemon's state is full: nothing was stored (the daemon keeps serving); free space and retry |
| `internal` | a bug or a host failure; the daemon log has the details |
"""


def render_type(t: mi.Type) -> str:
    match t:
        case mi.StrType():
            bits = []
            if t.pattern:
                bits.append(f"pattern `{t.pattern}`")
            if t.max_length is not None:
                bits.append(f"≤ {t.max_length} chars")
            if t.min_length:
                bits.append(f"≥ {t.min_length} chars")
            return "str" + (f" ({', '.join(bits)})" if bits else "")
        case mi.IntType():
            bits = [
                f"{op} {v}"
                for op, v in (("≥", t.ge), ("≤", t.le), (">", t.gt), ("<", t.lt))
                if v is not None
            ]
            return "int" + (f" ({', '.join(bits)})" if bits else "")
        case mi.FloatType():
            bits = [
                f"{op} {v}"
                for op, v in (("≥", t.ge), ("≤", t.le), (">", t.gt), ("<", t.lt))
                if v is not None
            ]
            return "float" + (f" ({', '.join(bits)})" if bits else "")
        case mi.BoolType():
            return "bool"
        case mi.NoneType():
            return "null"
        case mi.ListType():
            return f"list[{render_type(t.item_type)}]"
        case mi.DictType():
            return f"map[{render_type(t.key_type)}, {render_type(t.value_type)}]"
        case mi.LiteralType():
            return " \\| ".join(f'`"{v}"`' if isinstance(v, str) else f"`{v}`" for v in t.values)
        case mi.UnionType():
            return " \\| ".join(render_type(x) for x in t.types)
        case mi.StructType():
            tag = t.cls.__struct_config__.tag
            return f"`{t.cls.__name__}`" if not isinstance(tag, str) else f"`{tag}`"
        case mi.AnyType():
            return "any"
    return type(t).__name__


def render_fields(cls: type[msgspec.Struct], skip: tuple[str, ...] = ()) -> list[str]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    lines = []
    for f in info.fields:
        if f.encode_name in skip:
            continue
        default = ""
        if not f.required:
            value: Any = f.default if f.default is not msgspec.NODEFAULT else "…"
            default = f" = `{msgspec.json.encode(value).decode()}`"
        lines.append(f"  - `{f.encode_name}`: {render_type(f.type)}{default}")
    return lines


def doc_of(cls: type) -> str:
    own = cls.__dict__.get("__doc__")
    return inspect.cleandoc(own) if own else ""


def render() -> str:
    out = [INTRO]
    out.append("## Verbs by role\n")
    out.append(
        "A verb absent from a role's list cannot be decoded on that role's socket (`forbidden`).\n"
    )
    for role, types in m.ROLE_REQUESTS.items():
        ops = ", ".join(f"`{m.op_of(t)}`" for t in types)
        out.append(f"- **{role}**: {ops}")
    out.append("\n## Verbs\n")
    seen: set[type] = set()
    all_types = [t for types in m.ROLE_REQUESTS.values() for t in types]
    for t in all_types:
        if t in seen:
            continue
        seen.add(t)
        roles = [r for r, ts in m.ROLE_REQUESTS.items() if t in ts]
        out.append(f"### `{m.op_of(t)}` — {t.__name__} ({', '.join(roles)})\n")
        if doc := doc_of(t):
            out.append(doc + "\n")
        fields = render_fields(t)
        out.append("\n".join(fields) if fields else "  (no fields)")
        out.append("")
    out.append("## Replies\n\nEvery reply also carries `id`, the call it answers.\n")
    for t in get_args(m.AnyReply):
        out.append(f"### `{t.__struct_config__.tag}` — {t.__name__}\n")
        fields = render_fields(t, skip=("id", "type"))
        out.append("\n".join(fields) if fields else "  (no fields)")
        out.append("")
    out.append(
        "## Events\n\nEvery event carries `seq` (monotonic across boots) and `at` (unix time).\n"
    )
    for t in get_args(m.AnyEvent):
        out.append(f"### `{t.__struct_config__.tag}` — {t.__name__}\n")
        out.append("\n".join(render_fields(t, skip=("seq", "at", "kind"))))
        out.append("")
    out.append("## Rows\n")
    rows: tuple[type[msgspec.Struct], ...] = (
        m.AgentRow,
        m.MessageRow,
        m.Delivery,
        m.QuestionRow,
        m.AskRow,
        m.ApprovalThread,
        m.QuestionThread,
        m.MergeRequestThread,
        m.RepoRow,
        m.RefUpdate,
        m.BranchRow,
        m.CommitRow,
        m.TreeEntry,
        m.MergeRequestRow,
        m.MergeRequestNote,
        m.EstopRow,
        m.BudgetLimits,
        m.BudgetLimitRow,
        m.UsageRow,
        m.BudgetAlertRow,
        m.InboxItem,
    )
    for row in rows:
        out.append(f"### {row.__name__}\n")
        if doc := doc_of(row):
            out.append(doc + "\n")
        out.append("\n".join(render_fields(row)))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
