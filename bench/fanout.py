"""WebSocket fan-out benchmark: ``python -m bench fanout [--sockets 100,1000] [--seconds S]``.

Starts a private redis-server, ``python -m worker`` and gunicorn (the chosen worker class), opens
N sockets (a light asyncio client: raw frames, no per-message JSON except on sample sockets)
subscribed to ``trades:<symbol>``, journals crossing orders at a steady rate straight into the
worker's stream, and reports the messages/s delivered in total and the latency from the moment
the crossing order was appended to the moment a socket received its trade (p50/p99).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import shlex
import statistics
import struct
import threading
import time
from typing import Any

from bench.stack import Stack
from web.journal import Journal

SYMBOL = "BTC-USDT"
SAMPLE_SOCKETS = 50  # sockets whose every message is parsed for latency


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class WSClient(asyncio.Protocol):
    """Just enough of RFC 6455 for a subscriber: handshake, masked sends, frame counting."""

    def __init__(self, sample: bool, sent_at: dict[int, float], latencies: list[float]) -> None:
        self.sample = sample
        self.sent_at = sent_at
        self.latencies = latencies
        self.buf = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.acked = asyncio.get_running_loop().create_future()
        self.count = 0
        self.closed: int | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send_text(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        header = bytes((0x81, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x81, 0xFE, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        assert self.transport is not None
        self.transport.write(header + mask + masked)

    def send_pong(self, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None
        self.transport.write(bytes((0x8A, 0x80 | len(payload))) + mask + masked)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if b" 101 " not in buf[:end].split(b"\r\n", 1)[0]:
                self.upgraded.set_exception(RuntimeError(buf[:end].decode(errors="replace")))
                return
            self.upgraded.set_result(True)
            buf = buf[end + 4 :]
        pos, size = 0, len(buf)
        now = time.time()
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1] & 0x7F
            if b1 < 126:
                start, n = pos + 2, b1
            elif b1 == 126:
                if size - pos < 4:
                    break
                start, n = pos + 4, struct.unpack_from("!H", buf, pos + 2)[0]
            else:
                if size - pos < 10:
                    break
                start, n = pos + 10, struct.unpack_from("!Q", buf, pos + 2)[0]
            if size < start + n:
                break
            opcode = b0 & 0x0F
            if opcode == 1:
                self.count += 1
                if not self.acked.done():
                    self.acked.set_result(True)
                elif self.sample:
                    msg = json.loads(buf[start : start + n])
                    data_ = msg.get("data")
                    if data_:
                        t0 = self.sent_at.get(data_["taker_order_id"])
                        if t0 is not None:
                            self.latencies.append(now - t0)
            elif opcode == 9:
                self.send_pong(buf[start : start + n])
            elif opcode == 8:
                self.closed = struct.unpack_from("!H", buf, start)[0] if n >= 2 else 1005
            pos = start + n
        self.buf = buf[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed is None:
            self.closed = 1006


async def open_socket(
    host: str, port: int, sample: bool, sent_at: dict[int, float], latencies: list[float]
) -> WSClient:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: WSClient(sample, sent_at, latencies), host, port
    )
    key = base64.b64encode(os.urandom(16)).decode()
    assert proto.transport is not None
    proto.transport.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await asyncio.wait_for(proto.upgraded, 30)
    proto.send_text(json.dumps({"op": "subscribe", "channels": [f"trades:{SYMBOL}"]}))
    await asyncio.wait_for(proto.acked, 30)
    return proto


def _order(account: str, side: str) -> dict[str, Any]:
    return {
        "op": "new", "account": account, "symbol": SYMBOL, "side": side, "type": "limit",
        "time_in_force": "GTC", "post_only": False, "price": "100", "quantity": "0.02",
        "quote_quantity": None, "stop_price": None, "client_order_id": None,
        "stp": "cancel_maker",
    }  # fmt: skip


def drive(
    stack: Stack, rate: float, stop: threading.Event, sent_at: dict[int, float], out: dict,
    maker: str = "1", taker: str = "2",
) -> None:  # fmt: skip
    """Append ``rate`` crossing pairs per second (every 10 ms a slice), record append times."""
    journal = Journal(stack.redis(), 0)
    tick = 0.01
    carry = 0.0
    trades = 0
    next_t = time.monotonic()
    while not stop.is_set():
        carry += rate * tick
        n = int(carry)
        carry -= n
        if n:
            journal.append_many([_order(maker, "sell") for _ in range(n)])
            wires = [_order(taker, "buy") for _ in range(n)]
            t0 = time.time()
            ids = journal.append_many(wires)
            t1 = time.time()
            mid = (t0 + t1) / 2
            for oid in ids:
                sent_at[oid] = mid
            trades += n
        next_t += tick
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    out["trades"] = trades


async def run_one(stack: Stack, sockets: int, seconds: float, rate: float, maker: str = "1",
                  taker: str = "2") -> dict[str, Any]:  # fmt: skip
    host, port = "127.0.0.1", stack.web_port
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    clients: list[WSClient] = []
    t_open = time.monotonic()
    for i in range(0, sockets, 100):
        batch = [
            open_socket(host, port, j < SAMPLE_SOCKETS, sent_at, latencies)
            for j in range(i, min(sockets, i + 100))
        ]
        clients.extend(await asyncio.gather(*batch))
    open_s = time.monotonic() - t_open
    stop = threading.Event()
    out: dict[str, Any] = {}
    driver = threading.Thread(target=drive, args=(stack, rate, stop, sent_at, out, maker, taker),
                              daemon=True)  # fmt: skip
    driver.start()
    await asyncio.sleep(1.0)  # warm-up
    latencies.clear()
    c0 = sum(c.count for c in clients)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    c1 = sum(c.count for c in clients)
    t1 = time.monotonic()
    stop.set()
    driver.join()
    await asyncio.sleep(0.5)
    held = sum(1 for c in clients if c.closed is None)
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    ms = [x * 1000 for x in latencies]
    return {
        "sockets": sockets,
        "sockets_held": held,
        "open_seconds": round(open_s, 2),
        "trade_rate_target": rate,
        "messages": c1 - c0,
        "seconds": round(t1 - t0, 2),
        "messages_per_s": round((c1 - c0) / (t1 - t0)),
        "latency_ms": {
            "samples": len(ms),
            "p50": None if not ms else round(pct(ms, 0.5) or 0, 2),
            "p99": None if not ms else round(pct(ms, 0.99) or 0, 2),
            "max": None if not ms else round(max(ms), 2),
            "mean": None if not ms else round(statistics.fmean(ms), 2),
        },
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench fanout", description=__doc__)
    ap.add_argument("--sockets", default="100,1000", help="comma list of socket counts")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    ap.add_argument(
        "--messages", type=float, default=20000, help="target total messages/s (rate = this / N)"
    )
    ap.add_argument("--gunicorn-args", default="-k web.server.Worker -w 1",
                    help="web worker options")
    ap.add_argument("--json", dest="json_path", help="write the results here")
    opts = ap.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    results = []
    for n in [int(x) for x in opts.sockets.split(",") if x]:
        rate = max(1.0, opts.messages / n)
        # N sockets from one address is the point here: lift the per-address socket cap to N
        stack = Stack(gunicorn_args=shlex.split(opts.gunicorn_args),
                      env={"FAIRBOOK_WS_MAX_PER_IP": str(n),
                           "FAIRBOOK_MAX_CONNECTIONS_PER_IP": str(n + 64)})  # fmt: skip
        stack.start()
        try:
            maker = stack.create_account("maker")["account_id"]
            taker = stack.create_account("taker")["account_id"]
            for account in (maker, taker):  # every order needs funds: deposits first
                stack.fund(account)
            res = asyncio.run(run_one(stack, n, opts.seconds, rate, maker, taker))
        finally:
            stack.stop()
        res["gunicorn_args"] = opts.gunicorn_args
        results.append(res)
        lat = res["latency_ms"]
        print(
            f"sockets={n:5d} held={res['sockets_held']:5d} trades/s={rate:8.1f} "
            f"delivered={res['messages_per_s']:7d} msg/s  p50={lat['p50']} ms  "
            f"p99={lat['p99']} ms  max={lat['max']} ms  (open {res['open_seconds']} s)",
            flush=True,
        )
    if opts.json_path:
        with open(opts.json_path, "w") as fh:
            json.dump({"bench": "fanout", "results": results}, fh, indent=2)
    return 0
