"""The in-container harness: lease a message, drive one runtime turn for it, ack it.

`serve` is supervised: any failure of the loop (daemon restart, socket error, a bug) is
logged with context, reported to the daemon when it can still be reached, backed off and
retried, so the loop can never die silently while the MCP side keeps answering — the seed's
"missed wake" bug. A message is acked only after its turn ended; a turn that fails hands its
message back at once (`Nack`) so it comes again. SIGTERM stops taking work, lets the running
turn finish, and exits. The emergency stop takes the leases back itself and sends `park`
naming them: the turn working on one is cancelled, never acked (its message stays queued),
and a message whose lease was taken back before its turn began is not started.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc

from protocol import messages as m
from protocol.client import ConnectionLost, HiveClient, HiveError

from .runtimes.base import AgentContext, LoginRequired, RateLimited, Runtime, Turn, TurnFailed

log = logging.getLogger("ag3nt.harness")

HEARTBEAT_SECONDS = 15.0
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
LOGIN_RETRY_SECONDS = 60.0
FAILED_TURN_PAUSE = 0.5
"""A breather after a failed turn; the daemon backs the message itself off (retry_backoff_seconds)."""
MIN_RENEW_SECONDS = 0.5
MAX_CRASHES = 5
"""Crashes of the loop in a row (each within a minute of the last start) after which the
harness exits instead: a loop that cannot even make its runtime will not mend by itself, and
an exit lets the daemon restart the container and, if that keeps failing, mark the agent
failed, which puts it in the operator's inbox and tells the managers with the log's tail."""


class CrashLoop(RuntimeError):
    """The harness loop crashed `MAX_CRASHES` times in a row."""


RuntimeFactory = Callable[[AgentContext], Runtime]


def wake_prompt(msg: m.MessageRow, more: int) -> str:
    """What the model is woken with: the message, its context, and the queue behind it."""
    head = f"New {msg.kind} #{msg.id} from {msg.from_}"
    if msg.in_reply_to is not None:
        head += f", in reply to #{msg.in_reply_to}"
    if msg.question_id is not None and msg.kind == "question":
        head += f" (question_id={msg.question_id})"
    lines = [head + ":", msg.body]
    if msg.hint:
        lines.append(f"({msg.hint})")
    if more > 0:
        lines.append(f"(+{more} more queued; consider draining before acting)")
    return "\n".join(lines)


PARKED_MEMORY = 256
"""Leases taken back by the emergency stop that the harness remembers (never started)."""


@dataclass
class TurnState:
    running: anyio.CancelScope | None = None
    cancelled_by_operator: bool = False
    parked: bool = False
    """The running turn was cancelled by the emergency stop: its lease is already gone."""
    revoked: list[str] = field(default_factory=list)
    """Leases the emergency stop took back (the most recent `PARKED_MEMORY`)."""
    stopping: bool = False
    idle: anyio.Event = field(default_factory=anyio.Event)
    holding: m.Delivery | None = None
    """The message whose turn is under way; its lease is renewed until it is acked."""
    held: anyio.Event = field(default_factory=anyio.Event)
    """Set when `holding` is set, to wake the lease keeper."""


def sole_cause(exc: BaseException) -> BaseException:
    """`exc`, or the one failure a task group's exceptions all are: when the daemon goes away,
    every task reading from it raises `ConnectionLost`, and that is a reconnect, not a crash."""
    while isinstance(exc, BaseExceptionGroup):
        leaves = [sole_cause(e) for e in exc.exceptions]
        if any(type(leaf) is not type(leaves[0]) for leaf in leaves):
            return exc
        exc = leaves[0]
    return exc


class Harness:
    def __init__(self, ctx: AgentContext, make_runtime: RuntimeFactory) -> None:
        self.ctx = ctx
        self.make_runtime = make_runtime
        self.state = TurnState()
        self.stop_reason = ""
        """Why `serve` returned (a signal), for the last line of the log."""

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT; restart the loop after any failure, with backoff."""
        failures = crashes = 0
        crash: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_signals, tg.cancel_scope)
            while not self.state.stopping:
                started = time.monotonic()
                crashed = False
                try:
                    await self._run_connected()
                except Exception as raised:
                    exc = sole_cause(raised)
                    if isinstance(exc, ConnectionLost):
                        log.warning("lost the daemon (%s); reconnecting", exc.message)
                    elif isinstance(exc, HiveError):
                        log.error("daemon refused the harness: %s", exc)
                    else:
                        log.exception("harness loop failed; restarting it")
                        await self._report_crash()
                        crashed, crash = True, exc
                if self.state.stopping:
                    break
                steady = time.monotonic() - started > 60
                failures = 0 if steady else failures + 1
                crashes = 0 if steady or not crashed else crashes + 1
                if crashes >= MAX_CRASHES:
                    log.error(
                        "the harness loop crashed %d times in a row; exiting, so that the daemon"
                        " restarts the container (and marks the agent failed if it goes on)",
                        crashes,
                    )
                    break
                await anyio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
            tg.cancel_scope.cancel()
        if crashes >= MAX_CRASHES:
            self.stop_reason = f"crashed {crashes} times in a row"
            raise CrashLoop(f"the harness loop crashed {crashes} times in a row") from crash

    async def _watch_signals(self, main: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info(
                    "%s: finishing the current turn, then stopping", signal.Signals(signum).name
                )
                self.state.stopping = True
                self.stop_reason = f"{signal.Signals(signum).name} from the daemon"
                if self.state.running is None:
                    main.cancel()
                    return
                await self.state.idle.wait()
                main.cancel()
                return

    async def _report_crash(self) -> None:
        """Tell the daemon the loop crashed, on a fresh connection (best effort)."""
        with anyio.move_on_after(5):
            try:
                async with HiveClient.connect(str(self.ctx.socket), client="harness-crash") as c:
                    await c.call(
                        m.ReportState(state="error", reason="harness loop crashed; restarting")
                    )
            except HiveError:
                log.warning("could not report the crash to the daemon")

    async def _run_connected(self) -> None:
        async with HiveClient.connect(
            str(self.ctx.socket), client=f"harness/{self.ctx.name}"
        ) as client:
            me = await client.expect(m.Whoami(), m.Identity)
            self.ctx.name, self.ctx.role = me.name, me.role
            if me.model and not self.ctx.model:
                self.ctx.model = me.model
            runtime = self.make_runtime(self.ctx)
            log.info("serving %s (%s) with the %s runtime", me.name, me.role, runtime.name)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._heartbeat, client)
                    tg.start_soon(self._keep_lease, client)
                    tg.start_soon(self._controls, client, runtime)
                    tg.start_soon(runtime.serve)
                    await self._work(client, runtime)
                    tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await runtime.aclose()

    async def _heartbeat(self, client: HiveClient) -> None:
        while True:
            await anyio.sleep(HEARTBEAT_SECONDS)
            await client.expect(m.Ping(), m.Pong)

    async def _keep_lease(self, client: HiveClient) -> None:
        """Renew the held lease at half its remaining time, so a long turn (or a long
        rate-limit wait) never lets the message expire and come again while it is worked on."""
        while True:
            held = self.state.holding
            if held is None or held.expires_at is None:
                self.state.held = anyio.Event()
                await self.state.held.wait()
                continue
            await anyio.sleep(max(MIN_RENEW_SECONDS, (held.expires_at - time.time()) / 2))
            if self.state.holding is not held:
                continue
            try:
                renewed = await client.expect(m.Renew(lease=held.lease), m.Renewed)
            except HiveError as exc:
                if isinstance(exc, ConnectionLost):
                    raise
                log.warning("could not renew the lease of message #%d: %s", held.message.id, exc)
                self.state.holding = None
                continue
            held.expires_at = renewed.expires_at

    async def _report(
        self, client: HiveClient, state: str, reason: str = "", model: str | None = None
    ) -> None:
        await client.expect(m.ReportState(state=state, reason=reason[:2000], model=model), m.Ok)  # type: ignore[arg-type]

    async def _work(self, client: HiveClient, runtime: Runtime) -> None:
        await self._report(client, "idle", model=runtime.model)
        async with client.stream(m.WaitForWork()) as work:
            async for frame in work:
                if not isinstance(frame, m.Work):
                    continue
                await self._handle(client, runtime, frame.delivery, frame.more)
                if self.state.stopping:
                    return

    async def _handle(
        self, client: HiveClient, runtime: Runtime, delivery: m.Delivery, more: int
    ) -> None:
        msg = delivery.message
        if delivery.lease in self.state.revoked:
            log.info("message #%d was taken back by the emergency stop; not started", msg.id)
            return
        turn = Turn(prompt=wake_prompt(msg, more), message=msg)
        self.state.idle = anyio.Event()
        self.state.cancelled_by_operator = False
        self.state.parked = False
        self.state.holding = delivery
        self.state.held.set()
        stats: m.TurnStats | None = None
        try:
            # one scope around the retries too: a cancel or a park ends a rate-limit wait
            with anyio.CancelScope() as scope:
                self.state.running = scope
                await self._report(client, "turn", f"message #{msg.id} from {msg.from_}")
                while True:
                    try:
                        stats = await runtime.turn(turn)
                        break
                    except RateLimited as exc:
                        await self._report(client, "rate_limited", str(exc))
                        log.warning(
                            "rate limited; retrying message #%d in %.0fs", msg.id, exc.retry_after
                        )
                        await anyio.sleep(exc.retry_after)
                        await self._report(client, "turn", f"retrying message #{msg.id}")
        except TurnFailed as exc:
            failure: TurnFailed | None = exc
        else:
            failure = None
        finally:
            self.state.running = None
            self.state.holding = None
            self.state.idle.set()
        if self.state.parked:  # the daemon has the lease back: never ack, never nack it
            if stats is not None:  # it ended just as it was parked: what it spent still counts
                stats.message_id = msg.id
                await client.expect(m.ReportTurn(turn=stats), m.Ok)
            await client.expect(
                m.ReportControl(
                    action="park",
                    ok=True,
                    detail=f"turn for message #{msg.id} cancelled; it stays queued",
                ),
                m.Ok,
            )
            await self._report(client, "idle", model=runtime.model)
            return
        if isinstance(failure, LoginRequired):
            await self._failed(client, delivery, "needs_login", str(failure))
            await anyio.sleep(LOGIN_RETRY_SECONDS)
            return
        if failure is not None:
            await self._failed(client, delivery, "error", str(failure))
            await anyio.sleep(FAILED_TURN_PAUSE)
            return
        if scope.cancelled_caught or stats is None:
            await self._ack(client, delivery)
            await client.expect(
                m.ReportControl(
                    action="cancel",
                    ok=True,
                    detail=f"turn for message #{msg.id} cancelled; message dropped",
                ),
                m.Ok,
            )
            await self._report(client, "idle", model=runtime.model)
            return
        stats.message_id = msg.id
        await client.expect(m.ReportTurn(turn=stats), m.Ok)
        await self._ack(client, delivery)
        await self._report(client, "idle", model=runtime.model)

    async def _ack(self, client: HiveClient, delivery: m.Delivery) -> None:
        try:
            await client.expect(m.Ack(lease=delivery.lease), m.Ok)
        except HiveError as exc:
            if exc.code != "not_found" or isinstance(exc, ConnectionLost):
                raise
            # the lease ran out before the turn ended (renewal could not keep it): the message
            # is queued again and will drive another turn; nothing to undo here
            log.warning(
                "message #%d: lease lost before ack; it will come again", delivery.message.id
            )

    async def _failed(
        self, client: HiveClient, delivery: m.Delivery, state: str, reason: str
    ) -> None:
        msg = delivery.message
        log.error("turn for message #%d failed (%s): %s", msg.id, state, reason)
        await client.expect(m.Nack(lease=delivery.lease, reason=f"{state}: {reason}"[:500]), m.Ok)
        await client.expect(
            m.ReportTurn(turn=m.TurnStats(ok=False, result=reason[:4000], message_id=msg.id)), m.Ok
        )
        await self._report(client, state, reason)
        await client.expect(m.SetStatus(text=f"turn failed ({state}): {reason}"[:500]), m.Ok)

    def _park(self, leases: list[str]) -> bool:
        """The emergency stop took `leases` back: cancel the turn working on one of them
        (any running turn when none is named). True when a turn was cancelled."""
        self.state.revoked = [*self.state.revoked, *leases][-PARKED_MEMORY:]
        held = self.state.holding
        running = self.state.running
        if running is None or (leases and (held is None or held.lease not in leases)):
            return False
        self.state.parked = True
        self.state.holding = None  # nothing to renew: the daemon has it back
        running.cancel()
        return True

    async def _controls(self, client: HiveClient, runtime: Runtime) -> None:
        async with client.stream(m.WaitForControl()) as controls:
            async for frame in controls:
                if not isinstance(frame, m.ControlFrame):
                    continue
                ok, detail = True, ""
                try:
                    if frame.action == "park":
                        if self._park(frame.leases):
                            continue  # the work loop reports once the turn has ended
                        detail = "no turn of those messages was running"
                    elif frame.action == "cancel":
                        if self.state.running is None:
                            ok, detail = False, "no turn is running"
                        else:
                            self.state.cancelled_by_operator = True
                            self.state.running.cancel()
                            continue  # the work loop reports the outcome
                    elif frame.action == "compact":
                        detail = await runtime.compact()
                    elif frame.action == "new_session":
                        detail = await runtime.new_session()
                    elif frame.action == "set_model" and frame.model:
                        detail = runtime.set_model(frame.model)
                        await self._report(
                            client,
                            "idle" if self.state.running is None else "turn",
                            detail,
                            model=runtime.model,
                        )
                except TurnFailed as exc:
                    ok, detail = False, str(exc)
                await client.expect(
                    m.ReportControl(action=frame.action, ok=ok, detail=detail[:2000]), m.Ok
                )
