"""Who may send which verb: the socket decides the role, the verb tables answer, identity comes from the socket."""

from __future__ import annotations

import msgspec
import pytest
import trio

from protocol import messages as m
from protocol.client import HiveClient, HiveError
from protocol.framing import FrameDecoder, encode_frame
from protocol.wire import encode, reply_decoder, welcome_decoder


async def test_each_socket_speaks_its_role(hive):
    for path, role, agent in [
        (hive.paths.admin_sock, "admin", None),
        (hive.paths.web_sock, "web", None),
        (hive.paths.agent_sock("alice"), "agent", "alice"),
        (hive.paths.agent_sock("boss"), "manager", "boss"),
    ]:
        async with HiveClient.connect(str(path)) as client:
            assert (client.welcome.role, client.welcome.agent) == (role, agent)
            await client.expect(m.Ping(), m.Pong)


async def test_an_agent_socket_cannot_express_an_admin_verb(hive):
    async with HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice:
        with pytest.raises(HiveError) as err:
            await alice.call(m.AddAgent(name="mallory"))
        assert err.value.code == "forbidden"
        with pytest.raises(HiveError) as err:
            await alice.call(m.ListAgents())
        assert err.value.code == "forbidden"
    assert "mallory" not in hive.registry.agents


async def test_the_web_socket_cannot_register_agents(hive):
    async with HiveClient.connect(str(hive.paths.web_sock)) as web:
        with pytest.raises(HiveError) as err:
            await web.call(m.AddAgent(name="mallory"))
        assert err.value.code == "forbidden"


async def test_whoami_is_the_socket_identity_whatever_the_payload(hive):
    async with HiveClient.connect(str(hive.paths.agent_sock("bob"))) as bob:
        who = await bob.expect(m.Whoami(), m.Identity)
        assert (who.name, who.role, who.hyperhive_rev) == ("bob", "agent", hive.rev)
        assert who.port == hive.settings.web_port
    # a payload that claims another identity does not even decode
    async with await trio.open_unix_socket(str(hive.paths.agent_sock("bob"))) as raw:
        await raw.send_all(encode(m.Hello(protocol=m.PROTOCOL_VERSION)))
        body = msgspec.msgpack.encode({"id": 9, "req": {"op": "whoami", "name": "alice"}})
        await raw.send_all(encode_frame(body))
        decoder = FrameDecoder()
        frames: list[bytes] = []
        while len(frames) < 2:
            frames += decoder.feed(await raw.receive_some(65536))
        welcome, reply = welcome_decoder.decode(frames[0]), reply_decoder.decode(frames[1])
        assert welcome.agent == "bob"
        assert isinstance(reply, m.Error) and (reply.id, reply.code) == (9, "invalid")
