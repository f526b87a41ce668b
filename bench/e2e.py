"""End-to-end benchmark: HTTP clients -> gunicorn (web) -> Redis journal -> worker -> reply.

``python -m bench e2e [--json PATH] [--clients N] [--seconds S] [--rate R] [--gunicorn ARGS]``
``[--ab-env NAME=VALUE | --api binance | --api ws [--ws-connections K]] [--pairs N]``

The headline is a ratio measured in one run: Fairbook's requests/s at its unpaced maximum over
those of the minimal Flask + XADD app of ``bench baseline`` (gunicorn sync -w 2), driven by the
same number of connections for the same duration and warm-up, once before and once after the
Fairbook run (the mean counts). Target: >= 1.0x. ``--rate R`` adds a paced latency run (on a
fresh stack) after the maximum; its figures go under ``"paced"``.

Starts a private redis-server, ``python -m worker`` and ``gunicorn app:app`` on free ports (see
``bench.stack``), then drives a seeded order flow from N concurrent keep-alive HTTP connections
(a small asyncio HTTP/1.1 client: the load generator shares the machine, so it must be cheap).
Each connection is one account, funded generously first (deposits journaled before its first
order, ``bench.stack.Stack.fund``); the flow per connection is ~65 % passive GTC limits near the
mid, ~20 % cancels of its own live orders, ~15 % marketable IOC limits. With ``--rate`` the clients
are paced (open loop) to R orders/s in total; without it they go as fast as replies come back.

Reports accepted orders/s (201 answers), cancels/s, latency POST->result (the 201 carries the
matched result), 202s (reply timeouts), worker lag when the load stops and how long it takes to
drain, and POST->fill-published latency (taker orders, measured by a pub/sub subscriber process on
``fb:acct:*``). JSON with ``--json PATH``.

``--ab-env NAME=VALUE [--pairs N]`` measures what a setting costs instead: N pairs of unpaced runs
as configured and with the setting, interleaved A B B A ..., each on a fresh stack; it prints
both means, the ratio and the web's CPU per request (e.g. ``--ab-env FAIRBOOK_RATE_LIMITS=off``:
the rate limits' cost).

``--api binance [--pairs N]`` measures what Binance's API costs against the native one: N pairs of
unpaced runs of the same seeded flow, native ``/api/v1/orders`` (A) and Binance's signed
``POST /api/v3/order`` (B), interleaved A B B A ... on fresh stacks like ``--ab-env``; it prints
both orders/s and POST->result p50/p99 (means of the runs), the binance/native ratio (target
>= 0.85x: signing and the Binance limits cost at most ~15 %) and the web's CPU per request. Each
Binance client has an HMAC key issued with ``web.binance.keys.create_api_key`` (sealed with the
stack's ``FAIRBOOK_SECRET_KEY``, made up per run); orders are form bodies signed HMAC-SHA256 over
the parameters as sent (the key's HMAC state is computed once per client and copied per request),
with ``newOrderRespType=RESULT`` so the answer waits for the worker as the native 201 does;
cancels are signed ``DELETE /api/v3/order?orderId=``. Binance's rate limits would throttle the
benchmark (one address, 100 orders / 10 s per account by default), so both sides' stacks run with
``FAIRBOOK_BINANCE_WEIGHT_1M``, ``_RAW_5M``, ``_ORDERS_10S`` and ``_ORDERS_1D`` at 1,000,000,000:
still counted (their Redis round trips are part of the cost measured), never reached. The native
limits (``FAIRBOOK_RATE_LIMIT_KEY`` / ``_IP``) are as configured on both sides. First measured
(2 CPUs shared with another test run, 32 connections, ``--seconds 5 --pairs 5``): native 314.5
orders/s p99 168 ms, binance 235.0 orders/s p99 241 ms, 0.747x (every pair 0.67-0.84x), web CPU
per request 1.34x: the Binance path makes 3 Redis round trips per request to the native 2 (the
account's order counts after the signature check; a cancel reads the order record first) and ~2x
the Redis commands (weight, raw, key, address and order counters).

``--api ws [--ws-connections K] [--ws-inflight D] [--pairs N]`` measures WebSocket order entry
against REST: N pairs of unpaced runs of the same seeded flow by the same clients (one account
and HMAC key each), Binance's signed REST ``POST /api/v3/order`` (A: one keep-alive HTTP
connection per client, one request at a time, as above) and the WebSocket API's signed
``order.place`` / ``order.cancel`` on ``/ws-api/v3`` (B: the clients share K connections, default
4, pipelined: each client keeps D requests in flight, default 4, written as they are made and
answered by ``id``), interleaved A B B A ... on fresh stacks. Both sides get the environment of
``--api binance`` plus the per-address limit out of reach (every client shares one address, and
WebSocket order entry passes its 3,000 requests/s). It prints both orders/s and request->answer
p50/p99 (means of the runs), the ws/rest ratio (target >= 3x) and the web's CPU per request
(each side's CPU per request of every component is in the JSON). ``--ws-inflight 1`` compares
at the same concurrency. WebSocket requests are signed as Binance's WebSocket API documents
(params sorted by name, ``apiKey`` and ``timestamp`` among them, HMAC-SHA256 hex), with
``newOrderRespType=RESULT``. First measured (2 CPUs shared with other test runs, load 4-6,
defaults, ``--pairs 5``): REST 560.6 orders/s p99 147 ms, WebSocket 1,203 orders/s p99 245 ms
(4x the requests in flight), 2.15x (pairs 1.8-2.4x; 2.2-3.7x over other runs that hour, higher
the quieter the machine); the web's CPU per order 0.37x REST's and the whole stack's (web,
worker, Redis, load generator, all on the same 2 cores) 0.47x, which is what bounds the ratio.
At the same concurrency (``--ws-inflight 1``): 1.7x, p99 103 against 177 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import multiprocessing as mp
import os
import platform
import random
import shlex
import statistics
import sys
import time
from decimal import Decimal
from typing import Any

import orjson
import redis

from bench.stack import Stack
from protocol.keys import Keys
from web.binance.errors import CANCEL_REJECTED, MSG_INSUFFICIENT, NEW_ORDER_REJECTED, TIMEOUT
from web.binance.keys import create_api_key
from web.binance.vault import Vault, new_key_text

SYMBOL = "BTC-USDT"
BINANCE_SYMBOL = "BTCUSDT"
MID_TICKS = 3_000_000  # 30,000.00 with tick 0.01
#: the web as deployed: the gevent worker with connection caps and JSON refusals, one process
SHIPPED_GUNICORN = "-k web.server.Worker -w 1"


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    index = min(len(values) - 1, max(0, int(round(q / 100 * len(values) + 0.5)) - 1))
    return round(values[index], 3)


def summary_ms(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "p999": pct(values, 99.9),
        "max": round(max(values), 3) if values else None,
        "mean": round(statistics.fmean(values), 3) if values else None,
    }


# -- a minimal keep-alive HTTP/1.1 client -------------------------------------------------------


class Conn:
    """One HTTP/1.1 connection; reconnects when the server closes it (sync gunicorn does)."""

    def __init__(self, host: str, port: int, api_key: str, key_header: str = "X-API-Key",
                 content_type: str = "application/json") -> None:  # fmt: skip
        self.host = host
        self.port = port
        self.api_key = api_key
        #: the headers every request sends (built once: the load generator must be cheap)
        self.fixed = (f"Host: {host}\r\n{key_header}: {api_key}\r\n"
                      f"Content-Type: {content_type}\r\n")  # fmt: skip
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            head = (
                f"{method} {path} HTTP/1.1\r\n{self.fixed}Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            try:
                self.writer.write(head + body)
                return await self._response()
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        status_line = await self.reader.readuntil(b"\r\n")
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        close = False
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# -- the flow -----------------------------------------------------------------------------------


def fmt_price(ticks: int) -> str:
    return f"{ticks // 100}.{ticks % 100:02d}"


class Client:
    """One account's seeded order flow and its measurements."""

    def __init__(self, index: int, seed: int, conn: Conn) -> None:
        self.rng = random.Random(seed * 1_000_003 + index)
        self.conn = conn
        self.live: list[int] = []
        self.post_latency: list[float] = []
        self.cancel_latency: list[float] = []
        self.taker_sent: dict[int, float] = {}  # order id -> monotonic send time
        self.created = 0
        self.short_of_funds = 0  # 201s rejected insufficient_funds: the funding must keep it 0
        self.accepted_202 = 0
        self.cancels = 0
        self.errors: dict[str, int] = {}

    def next_order(self) -> int | tuple[str, str, str, str, str | None]:
        """The next action of the flow, whatever the API: an own live order id to cancel, or
        ``(kind, side, price, quantity, time in force or None for GTC)``."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.20 and self.live:
            return self.live.pop(rng.randrange(len(self.live)))
        side = "buy" if rng.random() < 0.5 else "sell"
        qty = f"0.{rng.randint(10, 500):05d}"  # 3 .. 150 USDT notional
        if roll < 0.35:  # marketable IOC: crosses the mid by a few ticks
            off = rng.randint(0, 5) * 50
            ticks = MID_TICKS + off if side == "buy" else MID_TICKS - off
            return "taker", side, fmt_price(ticks), qty, "IOC"
        off = rng.randint(1, 40) * 50  # passive: 0.50 .. 20.00 away from the mid
        ticks = MID_TICKS - off if side == "buy" else MID_TICKS + off
        return "maker", side, fmt_price(ticks), qty, None

    def next_request(self) -> tuple[str, str, bytes, str]:
        action = self.next_order()
        if isinstance(action, int):
            return "DELETE", f"/api/v1/orders/{action}", b"", "cancel"
        kind, side, price, qty, tif = action
        body = {"symbol": SYMBOL, "side": side, "price": price, "quantity": qty}
        if tif:
            body["time_in_force"] = tif
        return "POST", "/api/v1/orders", json.dumps(body).encode(), kind

    async def one(self) -> None:
        method, path, body, kind = self.next_request()
        start = time.monotonic()
        status, raw = await self.conn.request(method, path, body)
        elapsed = (time.monotonic() - start) * 1000
        self.record(method, kind, status, raw, start, elapsed)

    def error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1

    def record(self, method: str, kind: str, status: int, raw: bytes, start: float,
               elapsed: float) -> None:  # fmt: skip
        if method == "DELETE":
            if status in (200, 404):  # 404: it filled meanwhile
                self.cancels += 1
                self.cancel_latency.append(elapsed)
            else:
                self.error(str(status))
            return
        if status == 201:
            order = json.loads(raw)
            self.created += 1
            self.short_of_funds += order.get("reject_reason") == "insufficient_funds"
            self.post_latency.append(elapsed)
            if order["status"] in ("new", "partially_filled"):
                self.live.append(order["order_id"])
            if kind == "taker" and order["fills"]:
                self.taker_sent[order["order_id"]] = start
        elif status == 202:
            self.accepted_202 += 1
        else:
            self.error(str(status))


class BinanceClient(Client):
    """The same flow through Binance's signed ``/api/v3/order``: form bodies signed
    HMAC-SHA256 over the parameters as sent (``web.binance.signing``), ``newOrderRespType=RESULT``
    (answered once the worker matched it, like the native 201), cancels by ``orderId``."""

    def __init__(self, index: int, seed: int, conn: Conn, secret: str) -> None:
        super().__init__(index, seed, conn)
        #: the key's pads hashed once; each request copies this state (a copy, not a new HMAC)
        self.mac = hmac.new(secret.encode("ascii"), digestmod=hashlib.sha256)

    def signed(self, params: str) -> bytes:
        """``params`` + ``timestamp``, then ``signature`` over exactly those bytes."""
        payload = f"{params}&timestamp={int(time.time() * 1000)}".encode("ascii")
        mac = self.mac.copy()
        mac.update(payload)
        return payload + b"&signature=" + mac.hexdigest().encode("ascii")

    def next_request(self) -> tuple[str, str, bytes, str]:
        action = self.next_order()
        if isinstance(action, int):
            query = self.signed(f"symbol={BINANCE_SYMBOL}&orderId={action}").decode("ascii")
            return "DELETE", f"/api/v3/order?{query}", b"", "cancel"
        kind, side, price, qty, tif = action
        params = (f"symbol={BINANCE_SYMBOL}&side={side.upper()}&type=LIMIT"
                  f"&timeInForce={tif or 'GTC'}&quantity={qty}&price={price}"
                  "&newOrderRespType=RESULT")  # fmt: skip
        return "POST", "/api/v3/order", self.signed(params), kind

    def record(self, method: str, kind: str, status: int, raw: bytes, start: float,
               elapsed: float) -> None:  # fmt: skip
        self.record_answer(method, kind, status, json.loads(raw) if raw else {}, start, elapsed)

    def record_answer(self, method: str, kind: str, status: int, answer: dict[str, Any],
                      start: float, elapsed: float) -> None:  # fmt: skip
        """One answer, REST's or the WebSocket API's (``result`` or ``error``): the same
        outcomes, as Binance gives both the same bodies."""
        code = answer.get("code") if status != 200 else None
        if method == "DELETE":
            if status == 200 or code == CANCEL_REJECTED:  # -2011: it filled meanwhile
                self.cancels += 1
                self.cancel_latency.append(elapsed)
            else:
                self.error(f"{status} {code}")
            return
        if status == 200:
            self.created += 1
            self.post_latency.append(elapsed)
            if answer["status"] in ("NEW", "PARTIALLY_FILLED"):
                self.live.append(answer["orderId"])
            if kind == "taker" and Decimal(answer["executedQty"]):
                self.taker_sent[answer["orderId"]] = start
        elif code == NEW_ORDER_REJECTED:  # the engine's rejection: an answer, as a 201 is
            self.created += 1
            self.short_of_funds += answer.get("msg") == MSG_INSUFFICIENT
            self.post_latency.append(elapsed)
        elif code == TIMEOUT:  # the native 202: no reply within the timeout
            self.accepted_202 += 1
        else:
            self.error(f"{status} {code}")


class WsConn:
    """One WebSocket connection to ``/ws-api/v3`` shared by several clients, pipelined: each
    request is written as soon as its client makes it, answers are matched by ``id`` (so many
    are in flight at once). A minimal RFC 6455 client on asyncio streams, like :class:`Conn`
    for HTTP: the load generator shares the machine, so it must be cheap (masking is one
    big-int XOR; no permessage-deflate offered, so the figures are the protocol's, not zlib's).
    Reconnects on the next request after the server closed it."""

    def __init__(self, host: str, port: int, path: str = "/ws-api/v3") -> None:
        self.host = host
        self.port = port
        self.path = path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.opening: asyncio.Lock | None = None
        self.task: asyncio.Task[None] | None = None
        self.opened = 0  # connections made (1 unless the server closed one)

    async def _open(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        writer.write((f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                      ).encode("ascii"))  # fmt: skip
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode("ascii")).digest())
        if status != b"101" or accept not in head:
            writer.close()
            raise ConnectionError(f"WebSocket upgrade refused: {head[:200]!r}")
        self.reader, self.writer = reader, writer
        self.opened += 1
        self.task = asyncio.ensure_future(self._read_loop(reader, writer))

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        """A masked client frame (RFC 6455 5.2): FIN, opcode, length, mask, masked payload."""
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = random.getrandbits(32).to_bytes(4, "big")
        keystream = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(
            n, "big")
        return head + mask + masked

    async def _read_loop(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:  # fmt: skip
        """Server frames (never masked, never fragmented by simple-websocket) until the end;
        then every request still waiting fails with ConnectionError."""
        try:
            while True:
                b0, b1 = await reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(await reader.readexactly(2), "big")
                elif n == 127:
                    n = int.from_bytes(await reader.readexactly(8), "big")
                payload = await reader.readexactly(n) if n else b""
                opcode = b0 & 0x0F
                if opcode == 1:
                    answer = orjson.loads(payload)
                    future = self.pending.pop(answer.get("id"), None)
                    if future is not None and not future.done():
                        future.set_result(answer)
                elif opcode == 9:  # ping: the server closes sockets that do not pong
                    writer.write(self._frame(10, payload))
                elif opcode == 8:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            if self.writer is writer:
                self.reader = self.writer = None
            writer.close()
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("WebSocket closed"))
            self.pending.clear()

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send ``{id, method, params}`` and wait for the answer with that id."""
        if self.writer is None:
            if self.opening is None:
                self.opening = asyncio.Lock()
            async with self.opening:
                if self.writer is None:
                    await self._open()
        assert self.writer is not None
        request_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        self.writer.write(self._frame(1, orjson.dumps(
            {"id": request_id, "method": method, "params": params})))
        return await future

    def close(self) -> None:
        """Nothing: the connection is shared; :meth:`shutdown` ends it after the run."""

    def shutdown(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()
        self.reader = self.writer = None


class WsClient(BinanceClient):
    """The same flow and answers as :class:`BinanceClient` through the WebSocket API
    (``order.place`` / ``order.cancel`` on a shared :class:`WsConn`): params signed as Binance's
    WebSocket API documents (sorted by name, ``name=value`` joined by ``&``, HMAC-SHA256 hex),
    ``apiKey`` in the params, ``newOrderRespType=RESULT``. ``inflight`` requests at once per
    client (what a connection that needs no answer before the next request allows; the REST
    client has one)."""

    def __init__(self, index: int, seed: int, conn: WsConn, api_key: str, secret: str,
                 inflight: int = 1) -> None:  # fmt: skip
        super().__init__(index, seed, conn, secret)  # type: ignore[arg-type]
        self.ws = conn
        self.api_key = api_key
        #: requests of this client in flight at once (``drive`` runs this many lanes)
        self.inflight = inflight

    def signed_params(self, params: dict[str, Any]) -> dict[str, Any]:
        params["apiKey"] = self.api_key
        params["timestamp"] = int(time.time() * 1000)
        payload = "&".join(f"{name}={params[name]}" for name in sorted(params))
        mac = self.mac.copy()
        mac.update(payload.encode("ascii"))
        params["signature"] = mac.hexdigest()
        return params

    async def one(self) -> None:
        action = self.next_order()
        if isinstance(action, int):
            verb, kind, method = "DELETE", "cancel", "order.cancel"
            params: dict[str, Any] = {"symbol": BINANCE_SYMBOL, "orderId": action}
        else:
            verb, method = "POST", "order.place"
            kind, side, price, qty, tif = action
            params = {"symbol": BINANCE_SYMBOL, "side": side.upper(), "type": "LIMIT",
                      "timeInForce": tif or "GTC", "quantity": qty, "price": price,
                      "newOrderRespType": "RESULT"}  # fmt: skip
        start = time.monotonic()
        answer = await self.ws.call(method, self.signed_params(params))
        elapsed = (time.monotonic() - start) * 1000
        status = answer.get("status", 0)
        body = answer.get("result") if status == 200 else answer.get("error")
        self.record_answer(verb, kind, status, body or {}, start, elapsed)


async def drive(
    clients: list[Client], seconds: float, rate: float | None
) -> tuple[float, float]:
    """Run every client until ``seconds`` pass; pacing at ``rate`` orders/s in total."""
    loop_start = time.monotonic()
    stop_at = loop_start + seconds
    per_client = rate / len(clients) if rate else None

    async def run(client: Client, offset: float) -> None:
        next_at = loop_start + offset
        while True:
            now = time.monotonic()
            if now >= stop_at:
                return
            if per_client:
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                    if time.monotonic() >= stop_at:
                        return
                next_at += 1.0 / per_client
            try:
                await client.one()
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                key = type(exc).__name__
                client.errors[key] = client.errors.get(key, 0) + 1
                client.conn.close()
                await asyncio.sleep(0.01)

    spread = (1.0 / per_client) if per_client else 0.0
    await asyncio.gather(  # a client with ``inflight`` n runs n lanes of its flow at once
        *(run(c, spread * i / len(clients))
          for i, c in enumerate(clients) for _ in range(getattr(c, "inflight", 1)))
    )  # fmt: skip
    return loop_start, time.monotonic()


# -- pub/sub fill listener (own process: its JSON parsing must not steal the clients' GIL) ------


def _listen(url: str, ready: Any, stop: Any, out: Any) -> None:
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.psubscribe("fb:acct:*")
    # ready once Redis confirmed the subscription (only then can no fill be missed); the
    # parent gives up after its own deadline
    while (message := pubsub.get_message(timeout=1.0)) is None or message["type"] != "psubscribe":
        pass
    ready.set()
    first_fill: dict[int, float] = {}
    while not stop.is_set():
        message = pubsub.get_message(timeout=0.05)
        if message is None or message["type"] != "pmessage":
            continue
        now = time.monotonic()
        try:
            events = json.loads(message["data"]).get("events", [])
        except (ValueError, AttributeError):
            continue
        for event in events:
            if event.get("event") == "fill":
                first_fill.setdefault(int(event["order_id"]), now)
    out.put(first_fill)


# -- main ---------------------------------------------------------------------------------------


def _loadavg() -> list[float] | None:
    """Host load when the run started: other work on the machine skews every latency."""
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def _proc_cpu(pid: int, reaped: bool = False) -> float:
    """utime + stime of one process in seconds (0 if it is gone); with ``reaped`` also its
    children's that it waited for (cutime + cstime: the job worker's finished work horses)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (gunicorn's workers), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(stat[1])
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(child for child, parent in parents.items() if parent == current)
    return out


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU used so far by each component (Linux /proc; zeros elsewhere)."""
    pids = {
        "web": _tree(stack.web_proc.pid) if stack.web_proc else [],
        "worker": _tree(stack.worker_proc.pid) if stack.worker_proc else [],
        "jobs": _tree(stack.jobs_proc.pid) if stack.jobs_proc else [],
        "redis": [stack.redis_server.proc.pid] if stack.redis_server.proc else [],
        "load_generator": [os.getpid()],
    }
    out = {name: sum(_proc_cpu(p) for p in group) for name, group in pids.items()}
    if stack.jobs_proc:  # a work horse per job: most of the job worker's CPU is its children's
        out["jobs"] += _proc_cpu(stack.jobs_proc.pid, reaped=True) - _proc_cpu(stack.jobs_proc.pid)
    return out


def exec_calls(client: redis.Redis) -> int:
    """EXECs Redis has run: one per worker batch commit (INFO commandstats)."""
    stats = client.info("commandstats").get("cmdstat_exec") or {}
    return int(stats.get("calls", 0))


def stream_lag(client: redis.Redis, partition: int) -> int:
    keys = Keys(partition)
    applied = client.get(keys.applied)
    start = f"({applied.decode()}" if applied else "-"
    return len(client.xrange(keys.stream, min=start, max="+", count=1_000_000))


#: ``--api binance``: both sides' stacks get this (the native API never reads it), so the runs
#: differ only in the API the clients speak. The Binance limits stay on, counting, at values no
#: benchmark reaches: all the load comes from one address and the per-account order counts
#: (100 / 10 s by default) would throttle it; their cost is part of what is measured.
BINANCE_BENCH_LIMIT = "1000000000"
BINANCE_BENCH_ENV = {name: BINANCE_BENCH_LIMIT for name in (
    "FAIRBOOK_BINANCE_WEIGHT_1M", "FAIRBOOK_BINANCE_RAW_5M", "FAIRBOOK_BINANCE_ORDERS_10S",
    "FAIRBOOK_BINANCE_ORDERS_1D")}  # fmt: skip


def setup_clients(stack: Stack, count: int, seed: int, api: str = "native",
                  server_key: str | None = None, ws_connections: int = 4,
                  ws_inflight: int = 1) -> list[Client]:  # fmt: skip
    """One funded account per client; ``api="binance"`` or ``"ws"``: each with a signed HMAC
    key, issued as ``create-api-key`` does, sealed with the stack's ``FAIRBOOK_SECRET_KEY``.
    ``binance``: one HTTP connection per client; ``ws``: the clients share ``ws_connections``
    WebSocket API connections (client i on connection i mod n), ``ws_inflight`` requests in
    flight per client."""
    port = stack.web_port
    signed = api in ("binance", "ws")
    vault = Vault(base64.urlsafe_b64decode(server_key)) if signed and server_key else None
    sockets = [WsConn("127.0.0.1", port) for _ in range(ws_connections)] if api == "ws" else []
    out: list[Client] = []
    rdb = stack.redis()
    try:
        for i in range(count):
            acct = stack.create_account(f"bench{i}")
            stack.fund(acct["account_id"])  # every order needs funds: deposits journaled first
            if signed:
                assert vault is not None, f"the {api} API needs the stack's server key"
                issued = create_api_key(rdb, vault, acct["account_id"],
                                        stack.namespace.global_keys)  # fmt: skip
            if api == "ws":
                out.append(WsClient(i, seed, sockets[i % len(sockets)], issued["api_key"],
                                    issued["secret"], ws_inflight))  # fmt: skip
            elif api == "binance":
                conn = Conn("127.0.0.1", port, issued["api_key"], key_header="X-MBX-APIKEY",
                            content_type="application/x-www-form-urlencoded")  # fmt: skip
                out.append(BinanceClient(i, seed, conn, issued["secret"]))
            else:
                out.append(Client(i, seed, Conn("127.0.0.1", port, acct["api_key"])))
    finally:
        rdb.close()
    return out


def run_bench(opts: argparse.Namespace) -> dict[str, Any]:
    load_at_start = _loadavg()
    gunicorn_args = shlex.split(opts.gunicorn)
    api = getattr(opts, "api", "native") or "native"
    env = dict(getattr(opts, "env", None) or {})
    if api in ("binance", "ws"):
        env.setdefault("FAIRBOOK_SECRET_KEY", new_key_text())
    stack = Stack(gunicorn_args=gunicorn_args, reply_timeout=opts.reply_timeout,
                  env=env or None, jobs=bool(getattr(opts, "with_jobs", False)))  # fmt: skip
    stack.start()
    ctx = mp.get_context("fork")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    listener = ctx.Process(target=_listen, args=(stack.redis_url, ready, stop, out), daemon=True)
    listener.start()
    if not ready.wait(60):  # a deadline, not a guess: without it the fill latencies are empty
        listener.terminate()
        stack.stop()
        raise RuntimeError("the pub/sub fill listener did not subscribe within 60 s")
    rdb = redis.Redis.from_url(stack.redis_url)
    try:
        ws_connections = min(opts.clients, getattr(opts, "ws_connections", 4) or 4)
        ws_inflight = getattr(opts, "ws_inflight", 1) or 1
        clients = setup_clients(stack, opts.clients, opts.seed, api,
                                env.get("FAIRBOOK_SECRET_KEY"), ws_connections,
                                ws_inflight)  # fmt: skip

        async def warm_and_drive() -> tuple[float, float]:
            try:
                if opts.warmup:
                    await drive(clients, opts.warmup, opts.rate)
                    for c in clients:  # measurements start after the warm-up
                        c.post_latency.clear()
                        c.cancel_latency.clear()
                        c.taker_sent.clear()
                        c.created = c.accepted_202 = c.cancels = c.short_of_funds = 0
                        c.errors.clear()
                    cpu_before.update(cpu_seconds(stack))
                    commits_before.append(exec_calls(rdb))
                return await drive(clients, opts.seconds, opts.rate)
            finally:
                for c in clients:  # connections belong to this event loop
                    c.conn.close()
                    if isinstance(c, WsClient):
                        c.ws.shutdown()

        cpu_before: dict[str, float] = {}
        commits_before: list[int] = []
        t0, t1 = asyncio.run(warm_and_drive())
        cpu_after = cpu_seconds(stack)
        commits = exec_calls(rdb) - (commits_before[0] if commits_before else 0)
        lag_end = stream_lag(rdb, 0)
        drain_start = time.monotonic()
        while stream_lag(rdb, 0) and time.monotonic() - drain_start < 60:
            time.sleep(0.01)
        drain = time.monotonic() - drain_start
        time.sleep(0.3)  # last pub/sub messages
        stop.set()
        first_fill = out.get(timeout=30)
        listener.join(10)
        elapsed = t1 - t0
        worker_rc = stack.worker_proc.poll() if stack.worker_proc else None
        if worker_rc is not None:
            print(f"worker exited with {worker_rc}:\n{stack.log_tail('worker')}", file=sys.stderr)
        post = [x for c in clients for x in c.post_latency]
        cancel = [x for c in clients for x in c.cancel_latency]
        fill_pub = [
            (first_fill[oid] - sent) * 1000
            for c in clients
            for oid, sent in c.taker_sent.items()
            if oid in first_fill
        ]
        errors: dict[str, int] = {}
        for c in clients:
            for k, v in c.errors.items():
                errors[k] = errors.get(k, 0) + v
        created = sum(c.created for c in clients)
        cancels = sum(c.cancels for c in clients)
        health = rdb.get(Keys(0).applied)
        return {
            "bench": "e2e",
            "config": {
                "api": api,
                "clients": opts.clients,
                **({"ws_connections": ws_connections, "ws_inflight": ws_inflight}
                   if api == "ws" else {}),
                "seconds": opts.seconds,
                "warmup": opts.warmup,
                "rate": opts.rate,
                "seed": opts.seed,
                "gunicorn": opts.gunicorn,
                "reply_timeout": opts.reply_timeout,
                "cpus": os.cpu_count(),
                "loadavg_at_start": load_at_start,
                "python": platform.python_version(),
            },
            "elapsed_s": round(elapsed, 3),
            "orders_201": created,
            "orders_202": sum(c.accepted_202 for c in clients),
            "orders_insufficient_funds": sum(c.short_of_funds for c in clients),
            "cancels": cancels,
            "errors": errors,
            "accepted_orders_per_s": round(created / elapsed, 1),
            "requests_per_s": round((created + cancels) / elapsed, 1),
            "cpu_ms_per_request": {
                name: round((cpu_after[name] - cpu_before.get(name, 0.0)) * 1000
                            / max(1, created + cancels), 3)
                for name in cpu_after
            },
            "cpu_utilisation": {
                name: round((cpu_after[name] - cpu_before.get(name, 0.0)) / elapsed, 3)
                for name in cpu_after
            },
            "post_to_result_ms": summary_ms(post),
            "cancel_ms": summary_ms(cancel),
            "post_to_fill_published_ms": summary_ms(fill_pub),
            # small batches cost the worker more per request (book, commit round trips)
            "entries_per_commit": round((created + cancels) / max(1, commits), 2),
            "worker_lag_at_end": lag_end,
            "worker_exit_code": worker_rc,
            "drain_s": round(drain, 3),
            "applied": health.decode() if health else None,
        }
    finally:
        stop.set()
        if listener.is_alive():
            listener.terminate()
        rdb.close()
        stack.stop()


def one_line(r: dict[str, Any]) -> str:
    """A human summary of one run."""
    p, f = r["post_to_result_ms"], r["post_to_fill_published_ms"]
    rate = r["config"]["rate"]
    return (
        f"[{r['config']['gunicorn']}, {f'paced at {rate:g}/s' if rate else 'unpaced'}] "
        f"{r['accepted_orders_per_s']} orders/s "
        f"({r['requests_per_s']} req/s, {r['orders_202']} x 202, errors {r['errors']}); "
        f"POST->result p50 {p['p50']} p99 {p['p99']} ms; POST->fill published p50 {f['p50']} "
        f"p99 {f['p99']} ms; lag at end {r['worker_lag_at_end']}, "
        f"{r['entries_per_commit']} entries per commit"
    )


TARGET_RATIO = 1.0


def run_baseline(opts: argparse.Namespace) -> dict[str, Any]:
    """The minimal Flask + XADD app with the Fairbook run's connections, duration and warm-up."""
    from bench.baseline import run_flask  # bench.baseline imports this module's client

    return run_flask(opts.seconds, opts.clients, opts.warmup)


def ratio_line(run: dict[str, Any], baseline: dict[str, Any]) -> str:
    p = run["post_to_result_ms"]
    return (
        f"bench e2e [{run['config']['gunicorn']}]: Fairbook {run['requests_per_s']:,} "
        f"requests/s unpaced vs minimal Flask + XADD {baseline['requests_per_s']:,} "
        f"(runs {baseline['runs']}) with {run['config']['clients']} connections = "
        f"{run['ratio']}x (target >= {TARGET_RATIO}x); POST->result p50 {p['p50']} "
        f"p99 {p['p99']} ms"
    )


def interleaved(opts: argparse.Namespace, a: dict[str, Any], b: dict[str, Any],
                names: dict[str, str]) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Unpaced runs of ``opts`` with the overrides ``a`` (A) and ``b`` (B), interleaved
    A B B A A B ... for ``--pairs`` pairs (so neither always goes first), each on a fresh stack:
    the runs of each, in order."""
    runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    order = [("A", a), ("B", b)]
    for pair in range(opts.pairs):
        for label, overrides in order if pair % 2 == 0 else order[::-1]:
            run = run_bench(argparse.Namespace(**{**vars(opts), "rate": None,
                                                  "gunicorn": opts.gunicorn[0],
                                                  **overrides}))  # fmt: skip
            runs[label].append(run)
            print(f"pair {pair + 1} {label} ({names[label]}): {one_line(run)}",
                  file=sys.stderr)  # fmt: skip
    return runs


def _ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / max(y, 1e-9) for x, y in zip(a, b, strict=True)]


def run_ab(opts: argparse.Namespace) -> dict[str, Any]:
    """``--ab-env NAME=VALUE``: unpaced runs as configured (A) and with the setting (B),
    interleaved (:func:`interleaved`); ratio of mean req/s, and of the web's CPU per request."""
    name, _, value = opts.ab_env.partition("=")
    both = interleaved(opts, {"env": None}, {"env": {name: value}},
                       {"A": f"{name}=as configured", "B": f"{name}={value}"})  # fmt: skip
    runs = {label: [r["requests_per_s"] for r in both[label]] for label in both}
    # ms of web CPU per request
    web_cpu = {label: [r["cpu_ms_per_request"]["web"] for r in both[label]] for label in both}
    a, b = statistics.fmean(runs["A"]), statistics.fmean(runs["B"])
    return {
        "bench": "e2e-ab",
        "b_env": opts.ab_env,
        "requests_per_s": runs,
        "mean_a": round(a, 1),
        "mean_b": round(b, 1),
        "ratio_a_to_b": round(a / max(b, 1e-9), 3),
        "pair_ratios": [round(x, 3) for x in _ratios(runs["A"], runs["B"])],
        "median_pair_ratio": round(statistics.median(_ratios(runs["A"], runs["B"])), 3),
        "web_cpu_ms_per_request": web_cpu,
        "web_cpu_ratio_b_to_a": round(statistics.fmean(web_cpu["B"])
                                      / max(statistics.fmean(web_cpu["A"]), 1e-9), 3),
    }  # fmt: skip


#: ``--jobs``: the job worker's schedules, tight so that the runs see archiving and audits
JOBS_ENV = {"FAIRBOOK_ARCHIVE_SCHEDULE": "2", "FAIRBOOK_AUDIT_SCHEDULE": "5",
            "FAIRBOOK_ARCHIVE_MIN_AGE_MS": "1000"}


def run_jobs_ab(opts: argparse.Namespace) -> dict[str, Any]:
    """``--jobs``: unpaced runs without (A) and with (B) the job worker (``python -m jobs``,
    archiving every 2 s and auditing every 5 s, :data:`JOBS_ENV`), interleaved; what the jobs
    cost the matching path: orders/s and POST->result p99 of each, and their ratios.

    First figures (2-core shared machine at load average 5-7, 16 clients, 8 s runs, 3 pairs):
    without 518 / 631 / 494 orders/s, with 533 / 526 / 768, median pair ratio with/without
    1.03x: no cost the noise lets one see; the job worker used 4-7 % of one core."""
    env = {**(getattr(opts, "env", None) or {}), **JOBS_ENV}
    # snapshots every 2 s in both (the archive cuts at the oldest kept one: with the default
    # 30 s a short run would archive nothing)
    worker_cmd = os.environ.get("FAIRBOOK_WORKER_CMD")
    os.environ["FAIRBOOK_WORKER_CMD"] = (worker_cmd
                                         or f"{sys.executable} -m worker --snapshot-seconds 2")
    try:
        both = interleaved(opts, {"with_jobs": False, "env": env},
                           {"with_jobs": True, "env": env},
                           {"A": "without the job worker", "B": "with the job worker"})  # fmt: skip
    finally:
        if worker_cmd is None:
            del os.environ["FAIRBOOK_WORKER_CMD"]
    orders = {k: [r["accepted_orders_per_s"] for r in v] for k, v in both.items()}
    p99 = {k: [r["post_to_result_ms"]["p99"] for r in v] for k, v in both.items()}
    jobs_cpu = [r["cpu_utilisation"].get("jobs", 0.0) for r in both["B"]]
    a, b = statistics.fmean(orders["A"]), statistics.fmean(orders["B"])
    return {
        "bench": "e2e-jobs",
        "jobs_env": JOBS_ENV,
        "accepted_orders_per_s": orders,
        "post_to_result_p99_ms": p99,
        "mean_without": round(a, 1),
        "mean_with": round(b, 1),
        "ratio_with_to_without": round(b / max(a, 1e-9), 3),
        "median_pair_ratio": round(statistics.median(_ratios(orders["B"], orders["A"])), 3),
        "jobs_cpu_utilisation": jobs_cpu,
        "runs": both,
    }  # fmt: skip


#: ``--api binance``: what signing and the Binance limits may cost (binance/native orders/s)
API_TARGET_RATIO = 0.85


def _api_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One API's side of ``--api binance``: per run and mean."""
    orders = [r["accepted_orders_per_s"] for r in runs]
    requests_ = [r["requests_per_s"] for r in runs]
    p50 = [r["post_to_result_ms"]["p50"] or 0.0 for r in runs]
    p99 = [r["post_to_result_ms"]["p99"] or 0.0 for r in runs]
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "orders_per_s": orders,
        "mean_orders_per_s": round(statistics.fmean(orders), 1),
        "requests_per_s": requests_,
        "mean_requests_per_s": round(statistics.fmean(requests_), 1),
        "post_to_result_p50_ms": p50,
        "post_to_result_p99_ms": p99,
        "mean_p50_ms": round(statistics.fmean(p50), 3),
        "mean_p99_ms": round(statistics.fmean(p99), 3),
        "web_cpu_ms_per_request": [r["cpu_ms_per_request"]["web"] for r in runs],
        # where the CPU goes (the machine's cores are shared by all four): means of the runs
        "mean_cpu_ms_per_request": {
            name: round(statistics.fmean(r["cpu_ms_per_request"][name] for r in runs), 3)
            for name in runs[0]["cpu_ms_per_request"]},
        "mean_entries_per_commit": round(statistics.fmean(r["entries_per_commit"]
                                                          for r in runs), 2),
        "orders_202": sum(r["orders_202"] for r in runs),
        "orders_insufficient_funds": sum(r["orders_insufficient_funds"] for r in runs),
        "errors": errors,
    }


def run_api(opts: argparse.Namespace) -> dict[str, Any]:
    """``--api binance``: the native API (A) and Binance's signed ``/api/v3/order`` (B), the
    same flow, interleaved (:func:`interleaved`); both stacks get the same environment (the
    server key and :data:`BINANCE_BENCH_ENV`). Ratios are binance over native."""
    env = {**BINANCE_BENCH_ENV, "FAIRBOOK_SECRET_KEY": new_key_text()}
    both = interleaved(opts, {"api": "native", "env": env}, {"api": "binance", "env": env},
                       {"A": "native /api/v1/orders", "B": "binance /api/v3/order"})  # fmt: skip
    native, binance = _api_figures(both["A"]), _api_figures(both["B"])
    pair_ratios = _ratios(binance["orders_per_s"], native["orders_per_s"])
    ratio = binance["mean_orders_per_s"] / max(native["mean_orders_per_s"], 1e-9)
    cpu_ratio = (statistics.fmean(binance["web_cpu_ms_per_request"])
                 / max(statistics.fmean(native["web_cpu_ms_per_request"]), 1e-9))  # fmt: skip
    return {
        "bench": "e2e-api",
        "config": {**both["A"][0]["config"], "api": "native vs binance", "pairs": opts.pairs},
        "env": BINANCE_BENCH_ENV,
        "native": native,
        "binance": binance,
        "ratio_orders_per_s": round(ratio, 3),
        "pair_ratios": [round(x, 3) for x in pair_ratios],
        "median_pair_ratio": round(statistics.median(pair_ratios), 3),
        "p99_ratio": round(binance["mean_p99_ms"] / max(native["mean_p99_ms"], 1e-9), 3),
        "web_cpu_ratio": round(cpu_ratio, 3),
        "target_min_ratio": API_TARGET_RATIO,
        "runs": {"native": both["A"], "binance": both["B"]},
    }


def api_line(r: dict[str, Any]) -> str:
    n, b = r["native"], r["binance"]
    return (
        f"bench e2e --api binance ({r['config']['pairs']} pairs, {r['config']['clients']} "
        f"connections): native {n['mean_orders_per_s']:,} orders/s p50 {n['mean_p50_ms']} "
        f"p99 {n['mean_p99_ms']} ms; binance {b['mean_orders_per_s']:,} orders/s p50 "
        f"{b['mean_p50_ms']} p99 {b['mean_p99_ms']} ms; binance/native = "
        f"{r['ratio_orders_per_s']}x (target >= {API_TARGET_RATIO}x; per pair "
        f"{r['pair_ratios']}), p99 {r['p99_ratio']}x, web CPU per request {r['web_cpu_ratio']}x"
    )


#: ``--api ws``: what WebSocket order entry must buy over REST (ws/rest orders/s)
WS_TARGET_RATIO = 3.0
#: ``--api ws``: both sides' stacks get this: :data:`BINANCE_BENCH_ENV`, and the per-address
#: (3,000 requests/s by default) and per-key (300/s) limits counting but out of reach: every
#: client of the benchmark comes from one address, and one pipelined WebSocket client goes past
#: 300 requests/s on a quiet machine
WS_BENCH_ENV = {**BINANCE_BENCH_ENV, "FAIRBOOK_RATE_LIMIT_IP": f"{BINANCE_BENCH_LIMIT} per second",
                "FAIRBOOK_RATE_LIMIT_KEY": f"{BINANCE_BENCH_LIMIT} per second"}
#: ``--api ws``: requests a WebSocket client keeps in flight (a REST client has 1)
WS_INFLIGHT = 4


def run_ws(opts: argparse.Namespace) -> dict[str, Any]:
    """``--api ws``: Binance's signed REST ``/api/v3/order`` (A, one HTTP connection per client)
    and the WebSocket API's ``order.place`` / ``order.cancel`` (B, the same clients over
    ``--ws-connections`` pipelined connections), the same flow, interleaved
    (:func:`interleaved`) on fresh stacks with the same environment (:data:`WS_BENCH_ENV`).
    Ratios are ws over rest."""
    env = {**WS_BENCH_ENV, "FAIRBOOK_SECRET_KEY": new_key_text()}
    both = interleaved(opts, {"api": "binance", "env": env}, {"api": "ws", "env": env},
                       {"A": "REST /api/v3/order",
                        "B": f"WebSocket /ws-api/v3 order.place over {opts.ws_connections} "
                             f"connections, {opts.ws_inflight} in flight per client"})  # fmt: skip
    rest, ws = _api_figures(both["A"]), _api_figures(both["B"])
    pair_ratios = _ratios(ws["orders_per_s"], rest["orders_per_s"])
    ratio = ws["mean_orders_per_s"] / max(rest["mean_orders_per_s"], 1e-9)
    cpu_ratio = (statistics.fmean(ws["web_cpu_ms_per_request"])
                 / max(statistics.fmean(rest["web_cpu_ms_per_request"]), 1e-9))  # fmt: skip
    return {
        "bench": "e2e-ws",
        "config": {**both["A"][0]["config"], "api": "rest vs ws", "pairs": opts.pairs,
                   "ws_connections": both["B"][0]["config"]["ws_connections"],
                   "ws_inflight": both["B"][0]["config"]["ws_inflight"]},
        "env": WS_BENCH_ENV,
        "rest": rest,
        "ws": ws,
        "ratio_orders_per_s": round(ratio, 3),
        "pair_ratios": [round(x, 3) for x in pair_ratios],
        "median_pair_ratio": round(statistics.median(pair_ratios), 3),
        "p50_ratio": round(ws["mean_p50_ms"] / max(rest["mean_p50_ms"], 1e-9), 3),
        "p99_ratio": round(ws["mean_p99_ms"] / max(rest["mean_p99_ms"], 1e-9), 3),
        "web_cpu_ratio": round(cpu_ratio, 3),
        "target_min_ratio": WS_TARGET_RATIO,
        "runs": {"rest": both["A"], "ws": both["B"]},
    }


def ws_line(r: dict[str, Any]) -> str:
    a, b = r["rest"], r["ws"]
    return (
        f"bench e2e --api ws ({r['config']['pairs']} pairs, {r['config']['clients']} clients; "
        f"ws over {r['config']['ws_connections']} connections, {r['config']['ws_inflight']} in "
        f"flight per client): REST {a['mean_orders_per_s']:,} "
        f"orders/s p50 {a['mean_p50_ms']} p99 {a['mean_p99_ms']} ms; WebSocket "
        f"{b['mean_orders_per_s']:,} orders/s p50 {b['mean_p50_ms']} p99 {b['mean_p99_ms']} ms; "
        f"ws/rest = {r['ratio_orders_per_s']}x (target >= {WS_TARGET_RATIO}x; per pair "
        f"{r['pair_ratios']}), p99 {r['p99_ratio']}x, web CPU per request {r['web_cpu_ratio']}x"
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench e2e", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    ap.add_argument("--json", metavar="PATH", help="write the result as JSON here")
    ap.add_argument("--clients", type=int, default=32, help="concurrent connections/accounts")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured duration")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured lead-in seconds")
    ap.add_argument("--rate", type=float, default=None,
                    help="also a latency run paced at this many orders/s in total "
                         "(the ratio always comes from the unpaced maximum)")  # fmt: skip
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the Flask + XADD calibration (no ratio)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--gunicorn",
        action="append",
        help=f'gunicorn worker options (default "{SHIPPED_GUNICORN}", what scripts/run '
        "starts on 2 cores); repeat to compare several",
    )
    ap.add_argument("--reply-timeout", type=float, default=2.0)
    ap.add_argument("--ab-env", metavar="NAME=VALUE",
                    help="measure the cost of a setting instead: interleaved unpaced runs as "
                         "configured (A) and with NAME=VALUE (B); prints the A/B ratio")
    ap.add_argument("--pairs", type=int, default=3, help="A/B pairs for --ab-env and --api")
    ap.add_argument("--api", choices=("native", "binance", "ws"), default="native",
                    help="binance: interleaved runs of the native API and of signed "
                         "/api/v3/order requests; ws: of signed /api/v3/order and of the "
                         "WebSocket API's order.place; prints both and the ratio")  # fmt: skip
    ap.add_argument("--ws-connections", type=int, default=4,
                    help="--api ws: WebSocket API connections the clients share (pipelined)")
    ap.add_argument("--ws-inflight", type=int, default=WS_INFLIGHT,
                    help="--api ws: requests in flight per WebSocket client (REST: 1)")
    ap.add_argument("--jobs", action="store_true",
                    help="the job worker's cost: interleaved runs without and with "
                         "python -m jobs (tight archive and audit schedules); prints the ratio")
    opts = ap.parse_args(argv)
    if opts.clients < 1 or opts.seconds <= 0:
        ap.error("--clients must be >= 1 and --seconds > 0")
    if opts.rate is not None and opts.rate <= 0:
        ap.error("--rate must be > 0")
    if opts.api in ("binance", "ws"):
        if opts.ab_env or opts.pairs < 1 or opts.rate is not None:
            ap.error(f"--api {opts.api} takes --pairs >= 1, and neither --ab-env nor --rate")
        if opts.ws_connections < 1 or opts.ws_inflight < 1:
            ap.error("--ws-connections and --ws-inflight must be >= 1")
        opts.gunicorn = opts.gunicorn or [SHIPPED_GUNICORN]
        result = run_api(opts) if opts.api == "binance" else run_ws(opts)
        text = json.dumps(result, indent=2)
        print(text)
        print(api_line(result) if opts.api == "binance" else ws_line(result))
        if opts.json:
            with open(opts.json, "w") as fh:
                fh.write(text + "\n")
        return 0
    if opts.jobs:
        if opts.ab_env or opts.pairs < 1 or opts.rate is not None or opts.api != "native":
            ap.error("--jobs takes --pairs >= 1, and neither --ab-env, --rate nor --api")
        opts.gunicorn = opts.gunicorn or [SHIPPED_GUNICORN]
        result = run_jobs_ab(opts)
        text = json.dumps(result, indent=2)
        print(text)
        print(f"bench e2e --jobs: {result['mean_without']:,} orders/s without the job worker, "
              f"{result['mean_with']:,} with (means of {opts.pairs} pairs), with/without = "
              f"{result['ratio_with_to_without']}x; p99 POST->result ms without "
              f"{result['post_to_result_p99_ms']['A']}, with "
              f"{result['post_to_result_p99_ms']['B']}")  # fmt: skip
        if opts.json:
            with open(opts.json, "w") as fh:
                fh.write(text + "\n")
        return 0
    if opts.ab_env:
        if "=" not in opts.ab_env or opts.pairs < 1:
            ap.error("--ab-env takes NAME=VALUE and --pairs must be >= 1")
        opts.gunicorn = opts.gunicorn or [SHIPPED_GUNICORN]
        result = run_ab(opts)
        text = json.dumps(result, indent=2)
        print(text)
        print(f"bench e2e --ab-env {opts.ab_env}: A {result['mean_a']:,} req/s, B "
              f"{result['mean_b']:,} req/s (means of {opts.pairs}), A/B = "
              f"{result['ratio_a_to_b']}x; per pair {result['pair_ratios']}; web CPU per "
              f"request B/A {result['web_cpu_ratio_b_to_a']}x")  # fmt: skip
        if opts.json:
            with open(opts.json, "w") as fh:
                fh.write(text + "\n")
        return 0
    baselines = [] if opts.no_baseline else [run_baseline(opts)]
    if baselines:
        print(f"minimal Flask + XADD (before): {baselines[0]['requests_per_s']:,} requests/s",
              file=sys.stderr)  # fmt: skip
    runs = []
    for gunicorn in opts.gunicorn or [SHIPPED_GUNICORN]:
        unpaced = argparse.Namespace(**{**vars(opts), "gunicorn": gunicorn, "rate": None})
        runs.append(run_bench(unpaced))
        print(one_line(runs[-1]), file=sys.stderr)
        if opts.rate:
            paced = argparse.Namespace(**{**vars(opts), "gunicorn": gunicorn})
            runs[-1]["paced"] = run_bench(paced)
            print(one_line(runs[-1]["paced"]), file=sys.stderr)
    baseline: dict[str, Any] | None = None
    if baselines:
        baselines.append(run_baseline(opts))
        print(f"minimal Flask + XADD (after): {baselines[1]['requests_per_s']:,} requests/s",
              file=sys.stderr)  # fmt: skip
        rates = [b["requests_per_s"] for b in baselines]
        baseline = {
            "app": "Flask + XADD, gunicorn -k sync -w 2 (bench baseline)",
            "requests_per_s": round(statistics.fmean(rates), 1),
            "runs": rates,
            "when": ["before", "after"],
            "clients": opts.clients,
            "seconds": opts.seconds,
            "warmup": opts.warmup,
            "measurements": baselines,
        }
        for run in runs:
            run["baseline"] = baseline
            run["ratio"] = round(run["requests_per_s"] / max(baseline["requests_per_s"], 1e-9), 3)
            run["target_ratio"] = TARGET_RATIO
    result: dict[str, Any] = runs[0] if len(runs) == 1 else {"bench": "e2e", "runs": runs}
    if len(runs) > 1 and baseline is not None:
        result["baseline"] = baseline
        result["ratio"] = runs[0]["ratio"]
    text = json.dumps(result, indent=2)
    print(text)
    for run in runs:
        if "paced" in run:
            print(f"bench e2e latency run: {one_line(run['paced'])}")
        if baseline is not None:
            print(ratio_line(run, baseline))
        else:
            print(f"bench e2e: {one_line(run)}")
    if opts.json:
        with open(opts.json, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
