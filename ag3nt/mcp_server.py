"""`python -m ag3nt mcp`: the hyperhive MCP tools, served on stdio to the agent's runtime.

Every tool is one protocol verb on this agent's socket, with the verb's field names as its
arguments: the socket decides who the caller is, so no tool takes a "from" or an "owner".
Arguments are checked against the verb's Struct before anything is sent, so a bad argument
is a tool error naming the field, never a dropped message. A daemon error comes back as a
tool error `"<code>: <message>"` (`rate_limited` adds when to try again).

The server holds one connection to the socket for the whole MCP session (`DaemonLink`),
opened on the first call and opened again on the first call after the daemon went away (a
restart, a container rebuild): a call that finds the connection gone before it sent
anything is sent again on the new one, so nothing is lost and nothing is sent twice; a call
cut off while in flight is a tool error `unavailable`. `recv` and `recv_batch` are one
`Take` each: the daemon marks the messages delivered in the transaction that picks them
(one durable write), and their text is in the tool result.

The tools registered depend on the socket's role, learned from the daemon's `Welcome` at
start: a manager's socket adds the manager-only tools; on an agent's socket they do not
exist. Logs go to stderr only; stdout is the MCP transport.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import CallToolResult, InputRequiredResult, TextContent
from pydantic import ValidationError

from protocol import messages as m
from protocol.client import ConnectionLost, HiveClient, HiveError
from protocol.validate import InvalidRequest, build

from .forge_tools import FORGE_INSTRUCTIONS, FORGE_TOOLS, ForgeTools

log = logging.getLogger("ag3nt.mcp")

R = TypeVar("R", bound=m.Reply)
INSTRUCTIONS = """\
You are an agent in a hyperhive swarm. Every word to other agents and to the human
operator goes through these tools: `send` to talk, `recv`/`recv_batch` to read what is
waiting, `ask`/`answer` for questions, `remind` to come back to something later, and
`get_open_threads` to see what is still open against you. The operator is "operator";
"*" broadcasts to every other agent; "name@hive" reaches an agent of another hive, when
this hive is federated with it."""
MANAGER_INSTRUCTIONS = """

As the manager you change the swarm only through the operator: read an agent's config with
`read_agent_config`, commit a change with `propose_config`, then `request_apply_commit`; new
agents come from `request_spawn`. Each request waits for the operator's approval, and the
outcome (approved, denied with a note, or failed with the log) comes back as a message."""


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_message(msg: m.MessageRow) -> str:
    """One received message as the model reads it: who, what kind, which thread, the body."""
    head = f"#{msg.id} {msg.kind} from {msg.from_}"
    if msg.in_reply_to is not None:
        head += f", in reply to #{msg.in_reply_to}"
    if msg.question_id is not None and msg.kind == "question":
        head += f" (question_id={msg.question_id}; reply with answer)"
    if msg.reminder_id is not None:
        head += f" (reminder #{msg.reminder_id})"
    lines = [head + ":", msg.body]
    if msg.hint:
        lines.append(f"({msg.hint})")
    return "\n".join(lines)


def format_messages(messages: list[m.MessageRow], more: int) -> str:
    if not messages:
        return "(empty)"
    text = "\n\n".join(format_message(msg) for msg in messages)
    if more > 0:
        text += f"\n\n(+{more} more queued; consider draining before acting)"
    return text


def format_thread(t: m.OpenThread) -> str:
    age = f"{int(t.age_seconds)}s"
    if isinstance(t, m.MergeRequestThread):
        if t.role == "author":
            waiting = f"reviewers: {t.counterparty}" if t.counterparty else "no reviewers"
            return f"merge request !{t.id} on {t.repo}, yours ({age} old; {waiting}): {t.summary}"
        return f"merge request !{t.id} on {t.repo}, {t.counterparty} asks your review ({age} old): {t.summary}"
    if isinstance(t, m.QuestionThread):
        if t.role == "asker":
            return f"question #{t.id}: you asked {t.counterparty} ({age} ago): {t.summary}"
        return f"question #{t.id}: {t.counterparty} asks you ({age} ago): {t.summary}"
    return f"approval #{t.id} for {t.agent} ({age} ago): {t.summary}"


def format_approval(a: m.ApprovalRow) -> str:
    text = f"approval #{a.id} ({a.kind} {a.agent}) is {a.status}: {a.description}"
    if a.status == "pending":
        text += "\nThe operator decides; the outcome arrives as a message."
    return text


def format_reminder(r: m.ReminderRow) -> str:
    text = f"reminder #{r.id} ({r.state}) due {_when(r.due_at)}: {r.body}"
    if r.last_error:
        text += f" [last error after {r.attempt_count} attempts: {r.last_error}]"
    return text


class DaemonLink:
    """The session's one connection to its agent socket, owned by `run` in the server's task
    group: opened when a call first needs it, and again after the daemon went away. A call
    made while the daemon is down fails at once with `ConnectionLost` (after one attempt to
    connect); the next call tries again."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._client: HiveClient | None = None
        self._error: HiveError | None = None
        self._wanted = anyio.Event()
        self._settled = anyio.Event()
        self._released = anyio.Event()
        """Set once `run` has let go of the connection that ended (then replaced)."""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wanted.wait()
            try:
                async with HiveClient.connect(self.socket_path, client="hive-mcp") as client:
                    self._client, self._error = client, None
                    self._settled.set()
                    self._error = await client.wait_closed()
            except HiveError as exc:  # no daemon, or it refused the connection
                self._error = exc
            finally:
                self._client = None
                self._wanted = anyio.Event()
                settled, self._settled = self._settled, anyio.Event()
                settled.set()
                released, self._released = self._released, anyio.Event()
                released.set()

    async def client(self) -> HiveClient:
        """The live connection, connecting first if there is none."""
        client = self._client
        if client is not None:
            if client.closed is None:
                return client
            # a call has just found it ended: `run` lets go of it at its next step
            await self._released.wait()
        settled = self._settled
        self._wanted.set()
        await settled.wait()
        if self._client is None:
            raise self._error or ConnectionLost()
        return self._client


class Tools:
    """The tool implementations: each builds one request, calls the daemon, formats the reply."""

    def __init__(self, link: DaemonLink) -> None:
        self.link = link

    def _request(self, verb: type[m.Request], fields: dict[str, Any]) -> m.Request:
        args = {k: v for k, v in fields.items() if v is not None}
        try:
            return build(verb, args)
        except InvalidRequest as exc:
            raise ToolError(exc.summary) from None

    async def _with_client(self, fn: Callable[[HiveClient], Awaitable[R]]) -> R:
        try:
            try:
                return await fn(await self.link.client())
            except ConnectionLost as exc:
                if exc.sent:
                    raise
                # the connection was gone before the call left (the daemon restarted
                # since the last call): nothing was sent, so send it on a fresh one
                return await fn(await self.link.client())
        except HiveError as exc:
            text = f"{exc.code}: {exc.message}"
            if exc.retry_after_seconds is not None:
                text += f" (retry after {exc.retry_after_seconds:.0f}s)"
            raise ToolError(text) from None

    async def call(self, verb: type[m.Request], reply: type[R], **fields: Any) -> R:
        req = self._request(verb, fields)
        return await self._with_client(lambda c: c.expect(req, reply))

    # ------------------------------------------------------------------ messaging

    async def send(self, to: str, body: str, in_reply_to: int | None = None) -> str:
        """Send a message to an agent, to "operator", or to "*" (every other agent).

        "name@hive" (or "operator@hive") reaches another hive of the federation.

        `in_reply_to` (a message id) threads it; an unknown id just starts a new thread.
        A body over the size cap is written to a file and the message carries its path.
        """
        sent = await self.call(m.Send, m.Sent, to=to, body=body, in_reply_to=in_reply_to)
        ids = ", ".join(f"#{i}" for i in sent.message_ids)
        text = f"sent {ids} to {to}"
        if sent.body_file:
            text += f" (full body written to {sent.body_file})"
        return text

    async def recv(self, wait_seconds: float = 0.0) -> str:
        """Take the next message waiting for you, waiting up to `wait_seconds` for one."""
        return await self.recv_batch(1, wait_seconds)

    async def recv_batch(self, max: int = 10, wait_seconds: float = 0.0) -> str:
        """Take up to `max` waiting messages at once, waiting up to `wait_seconds` for the first."""
        got = await self.call(m.Take, m.Taken, max=max, wait_seconds=wait_seconds)
        return format_messages(got.messages, got.more)

    # ------------------------------------------------------------------ questions

    async def ask(
        self,
        target: str,
        question: str,
        options: list[str] | None = None,
        multi: bool = False,
        ttl_seconds: int | None = None,
    ) -> str:
        """Ask the operator or another agent a question; the answer arrives as a message.

        `options` offers choices (`multi` allows several); after `ttl_seconds` an unanswered
        question is answered "[expired]" for you.
        """
        asked = await self.call(
            m.Ask,
            m.Asked,
            target=target,
            question=question,
            options=options,
            multi=multi,
            ttl_seconds=ttl_seconds,
        )
        return (
            f"question #{asked.question_id} sent to {target} as message #{asked.message_id}; "
            f"the answer will arrive as a message in reply to #{asked.message_id}"
        )

    async def answer(self, question_id: int, answer: str) -> str:
        """Answer a question addressed to you (its question_id is in the message)."""
        await self.call(m.Answer, m.Ok, question_id=question_id, answer=answer)
        return f"answered question #{question_id}"

    async def list_my_asks(self) -> str:
        """Your own questions still waiting for an answer."""
        asks = (await self.call(m.ListMyAsks, m.Asks)).asks
        if not asks:
            return "(no open questions)"
        return "\n".join(
            f"question #{a.id} to {a.target}, asked {_when(a.asked_at)}: {a.question}" for a in asks
        )

    async def cancel_ask(self, id: int) -> str:
        """Withdraw one of your own open questions."""
        await self.call(m.CancelAsk, m.Ok, id=id)
        return f"question #{id} withdrawn"

    async def get_open_threads(self) -> str:
        """What is still open against you: questions you asked or were asked, approvals, and
        merge requests you opened or review."""
        got = await self.call(m.GetOpenThreads, m.OpenThreads)
        if not got.threads:
            return "(nothing open)"
        text = "\n".join(format_thread(t) for t in got.threads)
        if got.total > len(got.threads):
            text += f"\n(the {len(got.threads)} oldest of {got.total} open threads)"
        return text

    # ------------------------------------------------------------------ reminders

    async def remind(
        self, body: str, at: float | None = None, in_seconds: float | None = None
    ) -> str:
        """Set a reminder for yourself: `in_seconds` from now, or `at` a unix time (one of them).

        When due it comes back to you as a message carrying the reminder id.
        """
        if (at is None) == (in_seconds is None):
            raise ToolError("invalid: give exactly one of `at` or `in_seconds`")
        got = await self.call(m.Remind, m.Reminded, body=body, at=at, in_seconds=in_seconds)
        r = got.reminder
        text = f"reminder #{r.id} set, due {_when(r.due_at)} (in {max(0, int(r.due_at - time.time()))}s)"
        if got.body_file:
            text += f" (full body written to {got.body_file})"
        return text

    async def list_my_reminders(self) -> str:
        """Your pending and failed reminders, soonest first."""
        rows = (await self.call(m.ListMyReminders, m.Reminders)).reminders
        if not rows:
            return "(no reminders)"
        return "\n".join(format_reminder(r) for r in rows)

    async def cancel_reminder(self, id: int) -> str:
        """Cancel one of your own pending or failed reminders."""
        await self.call(m.CancelReminder, m.Ok, id=id)
        return f"reminder #{id} cancelled"

    # ------------------------------------------------------------------ self

    async def whoami(self) -> str:
        """Who you are in this hive: name, role, model, and the hive's revision."""
        me = await self.call(m.Whoami, m.Identity)
        return (
            f"name: {me.name}\nrole: {me.role}\nmodel: {me.model or '-'}\n"
            f"hyperhive: {me.hyperhive_rev}\nstarted: {_when(me.started_at)}"
        )

    async def set_status(self, text: str) -> str:
        """Say what you are doing; the operator sees it on the dashboard next to your name."""
        await self.call(m.SetStatus, m.Ok, text=text)
        return "status set"

    async def get_logs(self, lines: int = 200) -> str:
        """The last `lines` lines of your own harness log (turn failures, restarts)."""
        got = await self.call(m.GetLogs, m.Logs, lines=lines)
        return "\n".join(got.lines) if got.lines else f"(log {got.path} is empty)"

    # ------------------------------------------------------------------ manager only

    async def read_agent_config(self, agent: str) -> str:
        """An agent's `agent.toml` as the meta repo's main branch holds it (what you edit)."""
        got = await self.call(m.ReadAgentConfig, m.AgentConfigText, agent=agent)
        return f"# {got.source}\n{got.text}"

    async def propose_config(self, agent: str, agent_toml: str, message: str = "") -> str:
        """Commit a new `agent.toml` for `agent` on the branch `proposals/<agent>`.

        `agent_toml` is the whole file (start from `read_agent_config`). Nothing changes for
        the agent until you `request_apply_commit` and the operator approves; proposing again
        replaces the branch.
        """
        got = await self.call(
            m.ProposeConfig, m.Proposed, agent=agent, agent_toml=agent_toml, message=message
        )
        return (
            f"committed {got.sha[:12]} on {got.branch} ({got.summary}); "
            f"ask for it with request_apply_commit(agent={agent!r}, sha={got.sha[:12]!r})"
        )

    async def request_apply_commit(self, agent: str, sha: str) -> str:
        """Ask the operator to deploy the meta repo's `agents/<agent>/` as of commit `sha`.

        `sha` is a commit or a branch (`proposals/<agent>`); it is pinned now, so changing
        the branch later does not change what is approved. On approval the agent is rebuilt
        with that config; the outcome comes back to you as a message.
        """
        got = await self.call(m.RequestApplyCommit, m.ApprovalInfo, agent=agent, sha=sha)
        return format_approval(got.approval)

    async def request_spawn(
        self,
        name: str,
        role_description: str = "",
        instructions: str = "",
        model: str = "",
        runtime: str = "",
    ) -> str:
        """Ask the operator to create a new agent `name`.

        On approval it gets a config in the meta repo, a `CLAUDE.md` with `role_description`
        and `instructions` in its state dir, and a running container. An empty `runtime` is
        yours; an empty `model` is the runtime's default. The outcome comes back as a message.
        """
        got = await self.call(
            m.RequestSpawn,
            m.ApprovalInfo,
            name=name,
            role_description=role_description,
            instructions=instructions,
            model=model,
            runtime=runtime,
        )
        return format_approval(got.approval)

    async def request_init_config(self, name: str) -> str:
        """Ask for a config template `agents/<name>/agent.toml` to edit before `request_spawn`."""
        got = await self.call(m.RequestInitConfig, m.ApprovalInfo, name=name)
        return format_approval(got.approval)

    async def request_update_meta_inputs(self, names: list[str] | None = None) -> str:
        """Ask to update the meta repo's pinned inputs (all, or only `names`); nixos hives only."""
        got = await self.call(m.RequestUpdateMetaInputs, m.ApprovalInfo, names=names)
        return format_approval(got.approval)

    async def cancel_approval(self, id: int) -> str:
        """Withdraw one of your own pending approvals."""
        await self.call(m.CancelApproval, m.ApprovalInfo, id=id)
        return f"approval #{id} cancelled"


AGENT_TOOLS = (
    "send",
    "recv",
    "recv_batch",
    "ask",
    "answer",
    "list_my_asks",
    "cancel_ask",
    "get_open_threads",
    "remind",
    "list_my_reminders",
    "cancel_reminder",
    "whoami",
    "set_status",
    "get_logs",
)
MANAGER_TOOLS: tuple[str, ...] = (
    "read_agent_config",
    "propose_config",
    "request_apply_commit",
    "request_spawn",
    "request_init_config",
    "request_update_meta_inputs",
    "cancel_approval",
)
"""Tools that exist only on a manager's socket (its verbs are in `MANAGER_REQUESTS`)."""


def invalid_from_pydantic(exc: ValidationError) -> str:
    """The MCP library's argument check, said the way every other bad argument is:
    `invalid: <field>: <what is wrong>` (no library name, no documentation link, and the
    rejected value only by its type)."""
    parts = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "arguments"
        if err["type"] == "missing":
            parts.append(f"{field}: required")
            continue
        got = type(err.get("input")).__name__
        msg = str(err["msg"])
        parts.append(f"{field}: {msg[:1].lower()}{msg[1:]} (got {got})")
    return "invalid: " + "; ".join(parts)


class HiveMCPServer(MCPServer):
    """`MCPServer` whose tool errors read as docs/agent-tools.md says: `invalid: <field> …` for
    a bad argument, `<code>: <message>` for a daemon error, without the library's
    "Error executing tool …" prefix. Crashes are left to the library (which hides their text)."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, ValidationError):
                text = invalid_from_pydantic(cause)
            elif isinstance(cause, ToolError):
                text = str(cause)  # ours: "invalid: …" or "<code>: <message>"
            else:
                raise  # an unknown tool and the like: the library's own answer
            log.info("tool %s: %s", name, text[:200])
            return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def build_server(link: DaemonLink, role: str) -> MCPServer:
    """An `MCPServer` with the tools this socket's role may use."""
    tools = Tools(link)
    forge = ForgeTools(tools)
    instructions = (
        INSTRUCTIONS + FORGE_INSTRUCTIONS + (MANAGER_INSTRUCTIONS if role == "manager" else "")
    )
    server = HiveMCPServer("hyperhive", instructions=instructions)
    names = AGENT_TOOLS + (MANAGER_TOOLS if role == "manager" else ())
    for name in names:
        server.add_tool(getattr(tools, name), name=name, structured_output=False)
    for name in FORGE_TOOLS:
        server.add_tool(getattr(forge, name), name=name, structured_output=False)
    return server


async def learn_role(link: DaemonLink, attempts: int = 20) -> str:
    """The socket's role from the daemon's `Welcome`, waiting out a daemon that is restarting.

    The connection it opens is the one the session's tool calls use."""
    for attempt in range(attempts):
        try:
            return (await link.client()).welcome.role
        except ConnectionLost as exc:
            if attempt == attempts - 1:
                log.warning("%s; serving the agent tools only", exc.message)
                break
            await anyio.sleep(0.25)
    return "agent"


async def serve(socket_path: str) -> None:
    async with anyio.create_task_group() as tg:
        link = DaemonLink(socket_path)
        await tg.start(link.run)
        role = await learn_role(link)
        await build_server(link, role).run_stdio_async()
        tg.cancel_scope.cancel()


def run_stdio(socket_path: str) -> None:
    """Serve the tools on stdin/stdout until the client closes them."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="hive-mcp %(levelname)s %(message)s"
    )
    anyio.run(serve, socket_path, backend="asyncio")
