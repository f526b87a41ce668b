"""The raw RESP client (worker/rawredis.py) and the journal's raw submit path, on real Redis."""

from __future__ import annotations

import json
import socket
import threading

import pytest
import redis

from web import create_app
from worker.journal import Journal
from worker.keys import Keys
from worker.rawredis import IDLE, RawConnection, RawPool, command
from worker.runner import connect


def test_command_frames_by_bytes_not_characters() -> None:
    assert command(["SET", "k", "é", 7, b"\x00"]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n$1\r\n7\r\n$1\r\n\x00\r\n"
    )


def test_call_round_trips_text_and_errors(redis_url: str, redis_client: redis.Redis) -> None:
    conn = RawConnection(redis_url, timeout=5)
    assert conn.call(["SET", "fb:test:é", "naïve"]) == b"OK"
    assert redis_client.get("fb:test:é") == "naïve".encode()
    with pytest.raises(redis.ResponseError):
        conn.call(["INCR", "fb:test:é"])  # not an integer: an error reply, raised
    assert conn.call(["GET", "fb:test:é"]) == "naïve".encode()  # the connection is still good
    conn.close()


@pytest.mark.parametrize("kernel_timeout", [False, True])
def test_a_silent_server_times_out_in_both_timeout_modes(kernel_timeout: bool) -> None:
    """The worker's connections enforce their timeout in the kernel (no poll per call): a
    server that never answers must still end the call, as a TimeoutError, or as IDLE."""
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    try:
        conn = RawConnection(url, timeout=0.3, kernel_timeout=kernel_timeout)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            conn.call(["PING"])
        assert 0.2 < time.monotonic() - started < 5
        assert not conn.connected  # a timed-out request/reply connection is not reused
        conn.connect()
        assert conn.next_or_idle() is IDLE and conn.connected  # a quiet reader stays open
        assert conn.sock is not None
        assert (conn.sock.gettimeout() is None) == kernel_timeout
        conn.close()
    finally:
        listener.close()


def test_kernel_timeout_connection_round_trips(redis_url: str) -> None:
    conn = RawConnection(redis_url, timeout=5, kernel_timeout=True)
    assert conn.call(["SET", "fb:test:k", "v"]) == b"OK"
    assert conn.call(["GET", "fb:test:k"]) == b"v"
    conn.close()


def test_pool_reuses_healthy_connections_and_drops_broken_ones(
    redis_url: str, redis_client: redis.Redis
) -> None:
    pool = RawPool(redis_url, timeout=5)
    assert pool.pipeline([command(["PING"]), command(["PING"])], 2) == [b"PONG", b"PONG"]
    assert len(pool.idle) == 1
    first = pool.idle[0]
    assert pool.pipeline([command(["PING"])], 1) == [b"PONG"]
    assert pool.idle == [first]  # the same connection came back
    redis_client.client_kill_filter(_type="normal", skipme=True)  # cut it from the server side
    with pytest.raises(redis.ConnectionError):
        pool.pipeline([command(["PING"])], 1)
    assert pool.idle == []  # a failed connection is never handed out again
    assert pool.pipeline([command(["PING"])], 1) == [b"PONG"]  # a fresh one is made
    assert pool.call(["SET", "fb:test:n", "x"]) == b"OK"
    with pytest.raises(redis.ResponseError):
        pool.call(["INCR", "fb:test:n"])  # an error reply is raised, the connection kept
    assert len(pool.idle) == 1 and pool.call(["GET", "fb:test:n"]) == b"x"


def test_unreachable_server_is_a_connection_error() -> None:
    pool = RawPool("redis://127.0.0.1:1/0", timeout=1, connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        pool.pipeline([command(["PING"])], 1)


def test_raw_submit_journals_once_and_returns_the_reply(
    redis_url: str, redis_client: redis.Redis
) -> None:
    keys = Keys(0)
    journal = Journal(redis_client, 0, raw=RawPool(redis_url, timeout=5))
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
    """A TCP server that reads one request per connection and hangs up without answering: to
    the client, the command may or may not have run. Counts the requests it received."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(65536)
                if data:
                    self.requests.append(data)

    def close(self) -> None:
        self.sock.close()


def appends(server: _DroppingServer) -> list[bytes]:
    """The requests of the journal's appends (the inbox's SUBSCRIBE attempts left out)."""
    return [r for r in server.requests if b"SUBSCRIBE" not in r]


def test_appends_are_never_retried_behind_the_callers_back() -> None:
    """An append whose connection dies may have run: resending it could journal the order twice.
    The caller must get the error (and report an unknown outcome), not a silent retry."""
    server = _DroppingServer()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        raw_journal = Journal(connect(url), 0, raw=RawPool(url, timeout=2, connect_timeout=1))
        with pytest.raises(redis.ConnectionError):
            raw_journal.append({"op": "cancel_all", "account": "7"})
        with pytest.raises(redis.ConnectionError):
            raw_journal.submit({"op": "new", "account": "7"}, timeout_s=1)
        assert len(appends(server)) == 2
        # the redis-py clients the worker and the web build: no automatic retries either
        web_client = create_app({"REDIS_URL": url}).extensions["fairbook"].redis
        for client in (connect(url, socket_timeout=2), web_client):
            client_journal = Journal(client, 0)
            with pytest.raises(redis.ConnectionError):
                client_journal.append({"op": "cancel_all", "account": "7"})
            with pytest.raises(redis.ConnectionError):
                client_journal.submit({"op": "new", "account": "7"}, timeout_s=1)
        assert len(appends(server)) == 6  # one attempt each
    finally:
        server.close()
