"""Which vLLM server a user's requests go to (rendezvous hashing), without a server."""

from serving.upstream import Server, pick


def test_users_stay_on_their_server_and_move_only_when_it_goes():
    servers = [Server(f"http://10.0.0.{i}:8000", healthy=True) for i in range(4)]
    users = [f"user-{i}" for i in range(400)]
    before = {u: pick(servers, u).url for u in users}
    assert len(set(before.values())) == 4
    servers[1].healthy = False
    after = {u: pick(servers, u).url for u in users}
    moved = {u for u in users if before[u] != after[u]}
    assert moved == {u for u in users if before[u] == servers[1].url}
    servers[1].healthy = True
    assert {u: pick(servers, u).url for u in users} == before


def test_no_healthy_server_means_none():
    assert pick([Server("http://a", healthy=False)], "user") is None
