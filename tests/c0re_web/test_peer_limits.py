"""The dashboard's per-client bounds, below the server: who a connection counts against."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from c0re_web.peer_limits import (
    PeerLimits,
    can_tell_local_clients_apart,
    client_key,
    local_peer_uid,
)


def test_a_local_connection_counts_against_the_uid_that_holds_it():
    assert can_tell_local_clients_apart()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()) as client:
            server_side, peer = listener.accept()
            with server_side:
                assert peer == client.getsockname()
                assert local_peer_uid(peer, server_side.getsockname()) == os.getuid()
                assert client_key(peer, server_side.getsockname()) == f"uid {os.getuid()}"
    # no such socket on this host: a remote client, counted by its address
    assert local_peer_uid(("127.0.0.1", 9), ("127.0.0.1", 8765)) is None
    assert client_key(("192.0.2.7", 40000), ("0.0.0.0", 8765)) == "address 192.0.2.7"
    assert client_key(None, None) == "unknown"


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["uid 0", "uid 70001", "address x"]))))
def test_no_client_ever_holds_more_than_its_share(steps):
    limits = PeerLimits(per_client=3)
    held: dict[str, int] = {}
    for connect, client in steps:
        if connect:
            admitted = limits.admit(client)
            assert admitted == (held.get(client, 0) < 3)
            held[client] = held.get(client, 0) + admitted
        elif held.get(client, 0):
            limits.release(client)
            held[client] -= 1
        assert limits.open == {c: n for c, n in held.items() if n}


def test_a_local_client_of_a_dual_stack_bind_is_still_its_uid():
    """On `--bind [::]:PORT` a local browser's 127.0.0.1 arrives as ::ffff:127.0.0.1."""
    listener = None
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("::", 0))
    except OSError:
        if listener is not None:
            listener.close()
        pytest.skip("no IPv6 on this host (no AF_INET6 socket or no [::] bind)")
    with listener:
        listener.listen(2)
        port = listener.getsockname()[1]
        for address in ("127.0.0.1", "::1"):
            with socket.create_connection((address, port)) as client:
                server_side, peer = listener.accept()
                with server_side:
                    local = server_side.getsockname()[:2]
                    assert client.getsockname()[1] == peer[1]
                    assert client_key(peer[:2], local) == f"uid {os.getuid()}", address
