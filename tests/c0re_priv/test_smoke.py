from protocol import messages as m
from protocol.client import HiveClient


async def test_agent_socket_identity_and_broadcast(hive, admin):
    async with HiveClient.connect(str(hive.paths.agent_sock("alice"))) as alice:
        assert alice.welcome.role == "agent" and alice.welcome.agent == "alice"
        who = await alice.expect(m.Whoami(), m.Identity)
        assert who.name == "alice"
        sent = await alice.expect(m.Send(to="*", body="hi all"), m.Sent)
        assert len(sent.message_ids) == 2
    async with HiveClient.connect(str(hive.paths.agent_sock("bob"))) as bob:
        got = await bob.expect(m.Recv(max=5), m.Deliveries)
        assert [d.message.body for d in got.items] == ["hi all"]
        assert got.items[0].message.hint
        await bob.expect(m.Ack(lease=got.items[0].lease), m.Ok)
