"""The NATS client of a federated hive, on its own asyncio loop in a dedicated thread.

nats-py is asyncio; the daemon is trio. `AsyncioLoop` runs an asyncio event loop on a thread
that a trio task owns (started with `trio.to_thread.run_sync`, stopped and joined when that
task is cancelled), and `AsyncioLoop.call(fn)` is the one typed door from trio into it: it
schedules `fn()` on the loop and waits for its result without holding a trio thread, and
cancelling the trio caller cancels the coroutine. `NatsLink` lives entirely on the asyncio
side: every nats object is created, used and closed there, and only plain data (`Outgoing`,
`Incoming`) and opaque ack handles cross. Every failure of the client surfaces as one
exception type, `LinkError`, whose message is meant for the operator.

Why not trio-asyncio: see docs/federation.md ("How it is built").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import nats
import nats.errors
import nats.js.errors
import trio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api as js_api

from .config import FederationSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
Feed = Literal["msgs", "status"]
PULL_EXPIRES = 5.0
"""A pull request lives this long on the server; a new one follows when it ends."""
PUBLISH_TIMEOUT = 5.0
DUPLICATE_WINDOW = 120.0
CLOSE_SECONDS = 10.0


class LinkError(Exception):
    """The NATS link could not do what was asked; the message says why, for the operator."""


class ConsumerGone(LinkError):
    """This hive's consumer is not (or no longer) there: bind again (and provision)."""


# --------------------------------------------------------------------------- the bridge


class AsyncioLoop:
    """An asyncio event loop on a dedicated thread, owned by the trio task that runs `run`.

    `run` takes responsibility for the thread: it starts it, reports started once the loop
    is running, and when cancelled stops the loop (cancelling whatever still runs on it)
    and waits for the thread to end. `call` may be used only while `run` is running.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def on_close(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run `fn()` on the loop when `run` is cancelled, before the loop stops (bounded)."""
        self._closers.append(fn)

    async def run(
        self, *, task_status: trio.TaskStatus[AsyncioLoop] = trio.TASK_STATUS_IGNORED
    ) -> None:
        loop = asyncio.new_event_loop()
        running = threading.Event()
        self._token = trio.lowlevel.current_trio_token()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(running.set)
            try:
                loop.run_forever()
            finally:
                leftover = asyncio.all_tasks(loop)
                for task in leftover:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        async with trio.open_nursery() as nursery:
            # its own limiter: a thread held for the daemon's life takes no worker slot
            nursery.start_soon(
                partial(trio.to_thread.run_sync, main, limiter=trio.CapacityLimiter(1))
            )
            try:
                await trio.to_thread.run_sync(running.wait)
                self._loop = loop
                task_status.started(self)
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_SECONDS):
                    for closer in reversed(self._closers):
                        try:
                            await self.call(closer)
                        except Exception:  # shutting down: report, and close the rest
                            log.exception("closing the asyncio side")
                self._loop = None
                loop.call_soon_threadsafe(loop.stop)

    def to_trio(self, fn: Callable[[], None]) -> None:
        """From the asyncio thread: run `fn` on trio's thread soon (dropped once trio is done)."""
        if self._token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn()` on the asyncio loop and return its result (or raise its exception)."""
        loop = self._loop
        if loop is None:
            raise LinkError("the NATS client thread is not running")
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        async def job() -> T:
            return await fn()

        def wake(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future = asyncio.run_coroutine_threadsafe(job(), loop)
        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise LinkError("the NATS client thread stopped") from None


# --------------------------------------------------------------------------- the link


@dataclass(frozen=True)
class Outgoing:
    subject: str
    data: bytes
    msg_id: str


@dataclass(frozen=True)
class Incoming:
    subject: str
    data: bytes
    delivered: int
    """How many times JetStream has delivered it (1 the first time)."""
    handle: Any = field(repr=False)
    """Opaque: give it back to `settle`; it is only ever touched on the asyncio thread."""


def stream_names(namespace: str) -> tuple[str, str]:
    """(messages stream, status stream) of a federation namespace."""
    upper = namespace.upper().replace("-", "_")
    return f"{upper}_MSGS", f"{upper}_STATUS"


def describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def _first_line(path: str) -> str:
    try:
        return Path(path).read_text().splitlines()[0].strip()
    except (OSError, IndexError) as exc:
        raise LinkError(f"cannot read {path}: {exc}") from None


def connect_options(settings: FederationSettings) -> dict[str, Any]:
    """The keyword arguments of `nats.connect` for this hive's settings."""
    opts: dict[str, Any] = {
        "servers": [u.strip() for u in settings.url.split(",") if u.strip()],
        "name": f"hyperhive-{settings.hive}",
        "inbox_prefix": f"_INBOX_{settings.hive}",
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "connect_timeout": 5,
        "ping_interval": 10,
        "max_outstanding_pings": 3,
    }
    if settings.creds_file:
        opts["user_credentials"] = settings.creds_file
    if settings.user:
        opts["user"] = settings.user
    if settings.password_file:
        opts["password"] = _first_line(settings.password_file)
    if settings.token_file:
        opts["token"] = _first_line(settings.token_file)
    if settings.tls_ca or settings.tls_cert:
        context = ssl.create_default_context(cafile=settings.tls_ca or None)
        if settings.tls_cert:
            context.load_cert_chain(settings.tls_cert, settings.tls_key or None)
        opts["tls"] = context
    return opts


class _Puller:
    """One durable pull consumer, fed by one outstanding pull request at a time.

    Unlike nats-py's `fetch`, it hands over what has arrived as soon as something has
    (a batch fetch waits for the whole batch or its timeout), so an idle hive's latency is
    one round trip, and a busy one still gets `batch` messages per request.
    """

    def __init__(self, nc: NatsClient, stream: str, consumer: str, batch: int) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._batch = batch
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._inbox = ""
        self._owed = 0
        self._request_ends = 0.0
        self._sub: Any = None

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._arrived)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # the connection may be gone already; nothing to stop then
                log.debug("nats: unsubscribe: %s", describe(exc))
            self._sub = None

    async def _arrived(self, msg: Msg) -> None:
        self._queue.put_nowait(msg)

    def reset(self) -> None:
        """The connection was re-established: the server forgot the request in flight."""
        self._owed = 0

    async def _request(self) -> None:
        body = {"batch": self._batch, "expires": int(PULL_EXPIRES * 1e9)}
        await self._nc.publish(self._next, json.dumps(body).encode(), reply=self._inbox)
        self._owed = self._batch
        self._request_ends = time.monotonic() + PULL_EXPIRES + 1.0

    def _take(self, msg: Msg, out: list[Msg]) -> None:
        status = (msg.headers or {}).get("Status")
        if status is None:
            out.append(msg)
            self._owed -= 1
        elif status in ("404", "408"):  # no messages / the request expired
            self._owed = 0
        elif status == "100":  # idle heartbeat
            pass
        else:
            description = (msg.headers or {}).get("Description", "")
            self._owed = 0
            raise ConsumerGone(f"pull from {self._next}: {status} {description}".strip())

    async def next_group(self, wait: float) -> list[Msg]:
        """Whatever has arrived, waiting up to `wait` seconds for the first message."""
        if not self._nc.is_connected:
            raise LinkError("not connected to NATS")
        out: list[Msg] = []
        deadline = time.monotonic() + wait
        while not out:
            if self._owed <= 0 or time.monotonic() > self._request_ends:
                await self._request()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return out
            try:
                msg = await asyncio.wait_for(
                    self._queue.get(), timeout=min(remaining, self._request_ends - time.monotonic())
                )
            except TimeoutError:
                continue
            self._take(msg, out)
            while not self._queue.empty() and len(out) < self._batch:
                self._take(self._queue.get_nowait(), out)
        return out


class NatsLink:
    """This hive's connection to NATS JetStream. Every method runs on the asyncio thread.

    `on_state(link, detail)` is called (on the asyncio thread) when an established
    connection is lost (`disconnected`) or comes back (`connected`), and with `link=""` and
    the error when the client reports one.
    """

    def __init__(self, settings: FederationSettings, on_state: Callable[[str, str], None]) -> None:
        self.settings = settings
        self.msgs_stream, self.status_stream = stream_names(settings.namespace)
        self._on_state = on_state
        self._nc: NatsClient | None = None
        self._pullers: dict[Feed, _Puller] = {}

    # ---------------------------------------------------------------- connection

    async def connect(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            return
        options = connect_options(self.settings)

        async def error_cb(exc: Exception) -> None:
            log.warning("nats: %s", describe(exc))
            self._on_state("", describe(exc))

        async def disconnected_cb() -> None:
            self._on_state("disconnected", "lost the connection to NATS; reconnecting")

        async def reconnected_cb() -> None:
            for puller in self._pullers.values():
                puller.reset()
            self._on_state("connected", f"reconnected to {self._url()}")

        try:
            self._nc = await nats.connect(
                **options,
                error_cb=error_cb,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
            )
        except Exception as exc:  # nats-py raises many types here; all mean "not connected"
            raise LinkError(f"cannot connect to {self.settings.url}: {describe(exc)}") from None
        # "connected" is the trio side's to say, once this hive's consumers are bound too

    def _url(self) -> str:
        nc = self._nc
        if nc is None or nc.connected_url is None:
            return self.settings.url
        url = nc.connected_url
        return f"{url.scheme}://{url.hostname}:{url.port}"

    def _client(self) -> NatsClient:
        if self._nc is None or self._nc.is_closed:
            raise LinkError("not connected to NATS")
        return self._nc

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        self._pullers.clear()
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), timeout=5)
            except Exception as exc:  # closing is best effort; the process is leaving
                log.warning("nats: close: %s", describe(exc))

    # ---------------------------------------------------------------- streams and consumers

    async def provision(self, hives: list[str], max_age_days: float) -> list[str]:
        """Create (or keep) both streams and each hive's consumers; return what was created."""
        js = self._client().jetstream(timeout=PUBLISH_TIMEOUT)
        created = []
        ns = self.settings.namespace
        try:
            for stream, config in (
                (
                    self.msgs_stream,
                    js_api.StreamConfig(
                        name=self.msgs_stream,
                        subjects=[f"{ns}.msg.>"],
                        retention=js_api.RetentionPolicy.WORK_QUEUE,
                        storage=js_api.StorageType.FILE,
                        max_age=max_age_days * 86400,
                        duplicate_window=DUPLICATE_WINDOW,
                    ),
                ),
                (
                    self.status_stream,
                    js_api.StreamConfig(
                        name=self.status_stream,
                        subjects=[f"{ns}.status.*"],
                        retention=js_api.RetentionPolicy.LIMITS,
                        storage=js_api.StorageType.FILE,
                        max_msgs_per_subject=1,
                        duplicate_window=DUPLICATE_WINDOW,
                    ),
                ),
            ):
                try:
                    await js.stream_info(stream)
                except nats.js.errors.NotFoundError:
                    await js.add_stream(config)
                    created.append(f"stream {stream}")
            for hive in hives:
                for stream, filter_subject, deliver in (
                    (self.msgs_stream, f"{ns}.msg.{hive}.*", js_api.DeliverPolicy.ALL),
                    (self.status_stream, f"{ns}.status.*", js_api.DeliverPolicy.LAST_PER_SUBJECT),
                ):
                    try:
                        await js.consumer_info(stream, hive)
                    except nats.js.errors.NotFoundError:
                        await js.add_consumer(
                            stream,
                            js_api.ConsumerConfig(
                                durable_name=hive,
                                filter_subject=filter_subject,
                                deliver_policy=deliver,
                                ack_policy=js_api.AckPolicy.EXPLICIT,
                                ack_wait=self.settings.ack_wait_seconds,
                                max_deliver=-1,
                                max_ack_pending=10_000,
                            ),
                        )
                        created.append(f"consumer {stream}/{hive}")
        except LinkError:
            raise
        except Exception as exc:
            raise LinkError(f"provisioning JetStream: {describe(exc)}") from None
        return created

    async def bind(self) -> None:
        """Check that both consumers of this hive exist and start pulling from them."""
        nc = self._client()
        js = nc.jetstream(timeout=PUBLISH_TIMEOUT)
        hive = self.settings.hive
        pullers: dict[Feed, _Puller] = {}
        for feed, stream in (("msgs", self.msgs_stream), ("status", self.status_stream)):
            try:
                await js.consumer_info(stream, hive)
            except nats.js.errors.NotFoundError:
                raise LinkError(
                    f"JetStream has no consumer {stream}/{hive}: provision it"
                    " (`hive federation provision`, or `provision = true`)"
                ) from None
            except Exception as exc:
                raise LinkError(f"looking up consumer {stream}/{hive}: {describe(exc)}") from None
            puller = _Puller(nc, stream, hive, self.settings.fetch_batch)
            await puller.start()
            pullers[feed] = puller  # type: ignore[index]
        old, self._pullers = self._pullers, pullers
        for puller in old.values():
            await puller.stop()

    # ---------------------------------------------------------------- traffic

    async def publish(self, items: list[Outgoing]) -> list[str | None]:
        """Publish each to JetStream; per item, `None` once stored, else why it was not."""
        nc = self._client()
        if not nc.is_connected:
            raise LinkError("not connected to NATS")
        js = nc.jetstream(timeout=PUBLISH_TIMEOUT)

        async def one(item: Outgoing) -> str | None:
            try:
                await js.publish(item.subject, item.data, headers={"Nats-Msg-Id": item.msg_id})
            except Exception as exc:  # per item: the others may still have been stored
                return describe(exc)
            return None

        return list(await asyncio.gather(*(one(item) for item in items)))

    async def fetch(self, feed: Feed, wait: float) -> list[Incoming]:
        """What has arrived on one of this hive's consumers, waiting up to `wait` seconds."""
        puller = self._pullers.get(feed)
        if puller is None:
            raise ConsumerGone("not bound to JetStream")
        try:
            msgs = await puller.next_group(wait)
        except LinkError:
            raise
        except Exception as exc:
            raise LinkError(f"fetching: {describe(exc)}") from None
        out = []
        for msg in msgs:
            try:
                delivered = msg.metadata.num_delivered or 1
            except Exception:  # not a JetStream message: its ack would go nowhere anyway
                delivered = 1
            out.append(
                Incoming(subject=msg.subject, data=msg.data, delivered=delivered, handle=msg)
            )
        return out

    async def settle(self, acks: list[Incoming], terms: list[Incoming]) -> None:
        """Ack what was committed, terminate what can never be, and flush both to the server."""
        nc = self._client()
        try:
            for item in acks:
                await item.handle.ack()
            for item in terms:
                await item.handle.term()
            await nc.flush(timeout=int(PUBLISH_TIMEOUT))
        except Exception as exc:  # unacked ones are redelivered and dropped by id then
            raise LinkError(f"acking: {describe(exc)}") from None

    async def publish_status(self, subject: str, data: bytes) -> None:
        nc = self._client()
        if not nc.is_connected:
            raise LinkError("not connected to NATS")
        try:
            await nc.jetstream(timeout=PUBLISH_TIMEOUT).publish(subject, data)
        except Exception as exc:
            raise LinkError(f"publishing status: {describe(exc)}") from None


async def provision_federation(
    settings: FederationSettings, hives: list[str], max_age_days: float
) -> list[str]:
    """Connect with `settings` (an administrator's credentials), create or keep both streams
    and the consumers of each of `hives`, and disconnect. Runs on any asyncio loop."""
    link = NatsLink(settings, lambda link, detail: None)
    await link.connect()
    try:
        return await link.provision(hives, max_age_days)
    finally:
        await link.close()
