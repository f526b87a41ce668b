"""The web's journal client on a real redis-server: appends, reply inbox, no silent retries."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import redis

from engine.commands import make_public_id
from protocol.keys import Keys
from web.app import create_app
from web.journal import Inbox, Journal
from worker.runner import connect


def test_journal_append(redis_client) -> None:
    journal = Journal(redis_client, 2)
    wire = {"op": "cancel", "account": "1", "order_id": 5}
    first = journal.append(wire)
    assert first == make_public_id(1, 2) and wire["id"] == first
    ids = journal.append_many([{"op": "cancel_all", "account": "1", "symbol": None}, {}])
    assert ids == [make_public_id(2, 2), make_public_id(3, 2)]
    entries = redis_client.xrange(journal.keys.stream)
    bodies = [json.loads(fields[b"c"]) for _, fields in entries]
    assert bodies[0] == {"id": first, "op": "cancel", "account": "1", "order_id": 5}
    assert bodies[2] == {"id": ids[1]}
    assert entries[0][1][b"c"].startswith(b'{"id":')
    # id order is journal order
    assert [b["id"] for b in bodies] == sorted(b["id"] for b in bodies)


def _answer_entries(redis_client, journal, replies: dict[int, str], stop: threading.Event) -> None:
    """A stand-in worker: publishes ``replies[n]`` for the n-th journal entry (from 1) to the
    entry's inbox, as the worker's commit does."""
    seen = 0
    while not stop.is_set():
        entries = redis_client.xrange(journal.keys.stream)
        for _, fields in entries[seen:]:
            seen += 1
            body = json.loads(fields[b"c"])
            token = body.get("reply_to")
            if token and seen in replies:
                channel = journal.keys.inbox(token.partition("-")[0])
                redis_client.publish(channel, f'{{"{token}":{replies[seen]}}}')
        time.sleep(0.005)


def test_journal_submit_tags_the_command_and_waits_in_the_inbox(redis_client) -> None:
    journal = Journal(redis_client, 1)
    # nobody answers: None after the timeout, but the command is journaled with its token
    wire = {"op": "cancel", "account": "1", "order_id": 5}
    cmd_id, reply = journal.submit(wire, 0.05)
    assert reply is None and wire["id"] == cmd_id == make_public_id(1, 1)
    (_, fields), = redis_client.xrange(journal.keys.stream)
    body = json.loads(fields[b"c"])
    token = body["reply_to"]
    assert body == {"id": cmd_id, "op": "cancel", "account": "1", "order_id": 5,
                    "reply_to": token} and token == journal.inbox.id + "-1"
    assert journal.inbox.waiting == {}  # a timed-out waiter is forgotten
    # a "worker" publishing to the token's inbox is what the next submit receives
    stop = threading.Event()
    helper = threading.Thread(target=_answer_entries, daemon=True,
                              args=(redis_client, journal, {2: '{"ok":true,"n":2}'}, stop))
    helper.start()
    try:
        cmd_id2, reply2 = journal.submit({"op": "cancel", "account": "1", "order_id": 6}, 5)
    finally:
        stop.set()
        helper.join()
    assert cmd_id2 == make_public_id(2, 1) and reply2 == {"ok": True, "n": 2}
    # no timeout means no waiting and no token
    wire3 = {"op": "cancel", "account": "1", "order_id": 7}
    assert journal.submit(wire3, 0) == (make_public_id(3, 1), None)
    assert "reply_to" not in wire3
    journal.inbox.stop()


def test_inbox_routes_each_reply_to_its_waiter_only(redis_client) -> None:
    journal = Journal(redis_client, 0)
    inbox = journal.inbox
    assert inbox.wait_ready(5)
    t1, w1 = inbox.expect()
    t2, w2 = inbox.expect()
    assert t1 != t2 and t1.startswith(inbox.id + "-")
    channel = journal.keys.inbox(inbox.id)
    other = Journal(redis_client, 0).inbox  # another process's inbox hears nothing of ours
    assert other.wait_ready(5) and other.id != inbox.id
    t3, w3 = other.expect()
    redis_client.publish(channel, json.dumps({t2: {"n": 2}, t1: {"n": 1}, "zz-9": {"n": 9}}))
    assert w1.wait(5) == {"n": 1} and w2.wait(5) == {"n": 2}
    assert w3.wait(0.1) is None
    assert inbox.stats["unclaimed"] == 1 and inbox.waiting == {}
    # garbage on the channel is dropped, the reader goes on
    redis_client.publish(channel, b"not json")
    t4, w4 = inbox.expect()
    redis_client.publish(channel, json.dumps({t4: {"n": 4}}))
    assert w4.wait(5) == {"n": 4}
    # one unusable answer in a batch's message costs only its own request, not its neighbours'
    t5, w5 = inbox.expect()
    t6, w6 = inbox.expect()
    poison = inbox.stats["poison"]
    redis_client.publish(channel, json.dumps({t5: "\n<broken>", t6: {"n": 6}}))
    assert w6.wait(5) == {"n": 6}
    assert w5.wait(0.1) is None and inbox.stats["poison"] == poison + 1
    inbox.stop()
    other.stop()


def test_reply_callbacks_run_in_journal_order_and_a_claimed_token_is_dropped(redis_client):
    """Pipelined requests (the WebSocket API) hand their replies to callbacks, in the order of
    the worker's message; a token claimed by its caller (a timeout) gets no callback, and a
    failing callback costs no other reply."""
    journal = Journal(redis_client, 0)
    inbox = journal.inbox
    assert inbox.wait_ready(5)
    got: list[tuple[str, dict]] = []
    done = threading.Event()

    def failing(reply: dict) -> None:
        raise RuntimeError("a bug in one answer")

    tokens = [inbox.expect_call(lambda r, n=n: got.append((f"t{n}", r))) for n in range(3)]
    bad = inbox.expect_call(failing)
    last = inbox.expect_call(lambda r: done.set())
    assert inbox.claim(tokens[1]) and not inbox.claim(tokens[1])
    message = {tokens[2]: {"n": 2}, tokens[0]: {"n": 0}, tokens[1]: {"n": 1}, bad: {"n": 3},
               last: {}}  # fmt: skip
    redis_client.publish(journal.keys.inbox(inbox.id), json.dumps(message))
    assert done.wait(5)
    assert got == [("t2", {"n": 2}), ("t0", {"n": 0})]
    assert not inbox.claim(tokens[0]) and inbox.waiting == {}
    inbox.stop()


def test_append_all_journals_in_order_in_one_round_trip(redis_client) -> None:
    from web.journal import DirectConnections, Overloaded, append_all

    k0, k1 = Keys(0), Keys(1)
    j0, j1 = Journal(redis_client, k0), Journal(redis_client, k1, max_backlog=1)
    conns = DirectConnections(redis_client)
    cmds = [{"op": "cancel", "account": "1", "order_id": 5}, {"op": "new", "n": 1},
            {"op": "new", "n": 2}, {"op": "new", "n": 3}]  # fmt: skip
    out = append_all(conns, [(j0, cmds[0]), (j1, cmds[1]), (j0, cmds[2]), (j1, cmds[3])])
    assert out[:3] == [cmds[0]["id"], cmds[1]["id"], cmds[2]["id"]]
    assert [i & 0xFF for i in out[:3]] == [0, 1, 0] and out[0] < out[2]
    assert isinstance(out[3], Overloaded) and "id" not in cmds[3]  # partition 1 at its bound
    entries = [json.loads(f[b"c"]) for _, f in redis_client.xrange(k0.stream)]
    assert [e["id"] for e in entries] == [out[0], out[2]]


def test_inbox_resubscribes_after_losing_its_connection(redis_client) -> None:
    journal = Journal(redis_client, 0)
    inbox = journal.inbox
    assert inbox.wait_ready(5)
    killed = redis_client.client_kill_filter(_type="pubsub")
    assert killed >= 1
    deadline = time.monotonic() + 10
    while inbox.stats["reconnects"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert inbox.stats["reconnects"] == 1 and inbox.wait_ready(5)
    token, waiter = inbox.expect()
    redis_client.publish(journal.keys.inbox(inbox.id), json.dumps({token: {"ok": True}}))
    assert waiter.wait(5) == {"ok": True}
    inbox.stop()


def test_journal_big_counter(redis_client) -> None:
    journal = Journal(redis_client, 255)
    redis_client.set(journal.keys.next_id, 2**44)
    assert journal.append({"op": "x"}) == ((2**44 + 1) << 8) | 255


def test_submit_journals_once_and_returns_the_reply(
    redis_url: str, redis_client: redis.Redis
) -> None:
    keys = Keys(0)
    journal = Journal(redis_client, 0)
    answered = threading.Event()

    def worker() -> None:  # answers the one entry it finds, as the real worker would
        entries = redis_client.xread({keys.stream: "0-0"}, block=5000, count=1)
        body = entries[0][1][0][1][b"c"]
        token = json.loads(body)["reply_to"]
        answer = json.dumps({token: {"ok": True, "n": 1}})
        redis_client.publish(keys.inbox(token.partition("-")[0]), answer)
        answered.set()

    thread = threading.Thread(target=worker)
    thread.start()
    wire = {"op": "new", "account": "7", "symbol": "BTC-USDT"}
    cmd_id, reply = journal.submit(wire, timeout_s=5)
    thread.join(5)
    assert answered.is_set()
    assert reply == {"ok": True, "n": 1}
    assert cmd_id == wire["id"] == (1 << 8) | 0
    (entry,) = redis_client.xrange(keys.stream)
    assert entry[1][b"c"].startswith(b'{"id":256,"op":"new","account":"7"')
    # no reply within the timeout: the id is still returned (the order is journaled)
    cmd_id2, reply2 = journal.submit({"op": "new", "account": "7"}, timeout_s=0.05)
    assert cmd_id2 == (2 << 8) | 0 and reply2 is None
    assert redis_client.xlen(keys.stream) == 2


class _DroppingServer:
    """A TCP server that answers a client's connection handshake like Redis, then hangs up
    without answering the first real command: to the client, that command may or may not have
    run. Records the commands it dropped that way."""

    HANDSHAKE = {
        b"HELLO": b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n",
        b"CLIENT": b"+OK\r\n",
        b"PING": b"+PONG\r\n",
        b"SELECT": b"+OK\r\n",
    }

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.dropped: list[list[bytes]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        import hiredis

        reader = hiredis.Reader()
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                reader.feed(data)
                while (command := reader.gets()) is not False:
                    answer = self.HANDSHAKE.get(command[0].upper())
                    if answer is None:
                        self.dropped.append(command)
                        return  # hang up: the outcome is unknown to the client
                    conn.sendall(answer)

    def close(self) -> None:
        self.sock.close()


def appends(server: _DroppingServer) -> list[list[bytes]]:
    """The dropped commands that were appends (the inbox's SUBSCRIBE attempts left out)."""
    return [c for c in server.dropped if c[0].upper() in (b"EVAL", b"EVALSHA")]


def test_appends_are_never_retried_behind_the_callers_back() -> None:
    """An append whose connection dies may have run: resending it could journal the order twice.
    The caller must get the error (and report an unknown outcome), not a silent retry."""
    server = _DroppingServer()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        # the redis-py clients the worker and the web build: no automatic retries
        web_client = create_app({"REDIS_URL": url}).extensions["fairbook"].redis
        for client in (connect(url, socket_timeout=2), web_client):
            client_journal = Journal(client, 0)
            with pytest.raises(redis.ConnectionError):
                client_journal.append({"op": "cancel_all", "account": "7"})
            with pytest.raises(redis.ConnectionError):
                client_journal.submit({"op": "new", "account": "7"}, timeout_s=1)
        assert len(appends(server)) == 4  # one attempt each
    finally:
        server.close()


def test_inbox_pings_a_quiet_connection_instead_of_dropping_it(redis_client) -> None:
    inbox = Inbox(redis_client, [Keys(0)], ping_s=0.1)
    assert inbox.wait_ready(5)
    time.sleep(0.5)  # several quiet periods: each answered by a PING, not a reconnect
    token, waiter = inbox.expect()
    redis_client.publish(Keys(0).inbox(inbox.id), json.dumps({token: {"ok": True}}))
    assert waiter.wait(5) == {"ok": True}
    assert inbox.stats["reconnects"] == 0 and inbox.ready.is_set()
    inbox.stop()
