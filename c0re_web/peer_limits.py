"""Bound what one client can hold open on the dashboard's TCP port, and for how long.

The dashboard listens on TCP (browsers speak nothing else), so every local uid can connect
to it, agents included: a sandbox shares the host's network unless `network = false`.
uvicorn accepts every connection and waits for a request head without end, so one process
that opened connections and sent half a request head held them all: at the web process's
file limit (20,000 here) the operator's own browser was refused. Two bounds close that:

- **Per client**: at most `per_client` connections open at once. A client is the uid that
  owns the other end when it is on this host (asked of the kernel with one `sock_diag`
  lookup, the way `ss -e` finds it), else its address. Each agent runs as a uid of its own,
  so one agent cannot take the others' share, nor the operator's. A browser opens at most
  six connections per host and port, so the default leaves room for two browsers.
- **Per request**: a client must send a whole request (head and body) within
  `request_seconds` of connecting or of the previous response; uvicorn's own keep-alive
  timeout only covers a connection that is silent, not one that trickles.

A refused connection is closed at once, without a reply; the first refusal for a client in
a minute is logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `hive web --help` imports the defaults below, not the server
    from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

PER_CLIENT_CONNECTIONS = 32
REQUEST_SECONDS = 15.0
LOG_EVERY_SECONDS = 60.0
LOGGED_CLIENTS = 1024

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NO_COOKIE = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states; then inet_diag_sockid
_REQ = struct.Struct("=BBBxI")
_SOCKID = struct.Struct(">HH16s16s")  # sport, dport, src, dst (network order)
_SOCKID_TAIL = struct.Struct("=III")  # interface, cookie[2]
UID_OFFSET = 4 + _SOCKID.size + _SOCKID_TAIL.size + 12  # inet_diag_msg.idiag_uid
"""family, state, timer, retrans; the socket id; expires, rqueue, wqueue; then the uid."""


def _packed(ip: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    return family, addr.packed.ljust(16, b"\0")


def local_peer_uid(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """The uid owning the TCP socket at `peer` whose other end is `local`, when that socket
    is on this host; `None` when the kernel does not know it (a remote client) or says no."""
    try:
        family, src = _packed(peer[0])
        family_local, dst = _packed(local[0])
    except ValueError:
        return None
    if family != family_local:
        return None
    request = (
        _REQ.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF)
        + _SOCKID.pack(peer[1], local[1], src, dst)
        + _SOCKID_TAIL.pack(0, NO_COOKIE, NO_COOKIE)
    )
    message = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0
    )
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.sendto(message + request, (0, 0))
            reply = nl.recv(8192)
    except OSError:
        return None
    if len(reply) < _NLMSGHDR.size:
        return None
    _, kind, _, _, _ = _NLMSGHDR.unpack_from(reply)
    payload = reply[_NLMSGHDR.size :]
    if kind != SOCK_DIAG_BY_FAMILY or len(payload) < UID_OFFSET + 4:
        return None  # NLMSG_ERROR: no such socket here (a remote client) or not allowed
    (uid,) = struct.unpack_from("=I", payload, UID_OFFSET)
    return int(uid)


def can_tell_local_clients_apart() -> bool:
    """Whether `local_peer_uid` works here (a kernel without `inet_diag`, or a sandbox that
    forbids netlink, says no): a connection of our own to a listener of our own."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname(), timeout=1) as probe:
            host, port = probe.getsockname()
            return local_peer_uid((host, port), listener.getsockname()) is not None


@dataclass
class PeerLimits:
    """The open connections of each client, shared by every connection of one server."""

    per_client: int = PER_CLIENT_CONNECTIONS
    request_seconds: float = REQUEST_SECONDS
    open: dict[str, int] = field(default_factory=dict)
    _logged: dict[str, float] = field(default_factory=dict)

    def admit(self, client: str) -> bool:
        held = self.open.get(client, 0)
        if held >= self.per_client:
            now = time.monotonic()
            if now - self._logged.get(client, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
                if len(self._logged) >= LOGGED_CLIENTS:  # many addresses: forget the old ones
                    self._logged = {
                        c: t for c, t in self._logged.items() if now - t < LOG_EVERY_SECONDS
                    }
                self._logged[client] = now
                log.warning(
                    "refused a connection from %s: it already holds %d (the most one client"
                    " may); further refusals this minute are not logged",
                    client,
                    held,
                )
            return False
        self.open[client] = held + 1
        return True

    def release(self, client: str) -> None:
        held = self.open.get(client, 0) - 1
        if held > 0:
            self.open[client] = held
        else:
            self.open.pop(client, None)


def client_key(peer: tuple[str, int] | None, local: tuple[str, int | None] | None) -> str:
    """Who a connection counts against: `uid N` for a process of this host, else its address.
    (`peer` and `local` as uvicorn gives them: `client` and `server`.)"""
    if peer is None:
        return "unknown"
    # any address may be this host's own (a LAN address, or 127.0.0.1 mapped into IPv6 on a
    # dual-stack bind): the kernel knows, so ask it whatever the address looks like
    uid = None
    if local is not None and local[1] is not None:
        uid = local_peer_uid(peer, (local[0], local[1]))
    return f"uid {uid}" if uid is not None else f"address {peer[0]}"


ACCEPT_FAILED = "socket.accept() out of system resource"


class QuietAcceptErrors:
    """An asyncio exception handler for the web process's loop. When accept(2) fails for want
    of file descriptors or memory, asyncio calls its handler once for every accept it tries
    (up to the listen backlog per wake-up, every second): a traceback each, thousands of lines
    a second, which fill a disk that may be the reason. Those are counted and said once a
    minute; anything else goes to asyncio's own handler."""

    def __init__(self) -> None:
        self.failures = 0
        self._said_at = -LOG_EVERY_SECONDS

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        retry = getattr(getattr(context.get("handle"), "_callback", None), "__name__", "")
        if retry == "_start_serving":
            # each failed accept scheduled one of these retries; one that runs after the
            # server closed its socket (at shutdown) fails, and has nothing left to say
            log.debug("a leftover accept retry failed: %s", context.get("exception"))
            return
        if context.get("message") != ACCEPT_FAILED:
            loop.default_exception_handler(context)
            return
        self.failures += 1
        now = time.monotonic()
        if now - self._said_at >= LOG_EVERY_SECONDS:
            self._said_at = now
            log.warning(
                "cannot accept connections: %s (%d failed accepts since the last such line);"
                " retrying every second",
                context.get("exception"),
                self.failures,
            )
            self.failures = 0


def guarded_protocol(limits: PeerLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with `limits` applied (pass it as `Config(http=…)`)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Guarded(H11Protocol):
        _client: str | None = None
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            client = client_key(self.client, self.server)
            if not limits.admit(client):
                transport.abort()
                return
            self._client = client
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._client is not None:
                limits.release(self._client)
                self._client = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self.conn.their_state is not h11.SEND_BODY:
                self._disarm()  # the whole request is in

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # waiting for the next request on this connection

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(limits.request_seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.abort()

    return Guarded
