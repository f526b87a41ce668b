"""Machine calibration: the two reference figures the performance targets were set against.

``python -m bench baseline [--json PATH] [--orders N] [--seconds S] [--clients N]``

Why: wall-clock rates on these shared 2-core machines have varied up to 3x between days with
the same code, so a Fairbook figure means little without the speed of the machine it was taken
on. This measures what the developers' guide quotes for "these 2-core machines":

* a bare price-time matcher (SortedDict of integer-tick levels, deques, ``__slots__`` orders,
  O(1) cancel by lazy deletion) on a 60 % passive / 25 % cancel / 15 % marketable flow; the guide
  quotes ~500k orders/s;
* a minimal Flask app whose POST parses a JSON body and XADDs it, under gunicorn sync with 2
  workers, driven by the e2e benchmark's HTTP client; the guide quotes ~2k requests/s.

Divide a Fairbook figure by the machine's ratio to these references to compare across days.
``bench core`` and ``bench e2e`` measure the same references in their own runs and report their
figure as a ratio to them (``bench worker``: to Redis alone absorbing the worker's writes).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import deque
from pathlib import Path
from typing import Any

from sortedcontainers import SortedDict

from bench.e2e import Conn
from tests.redis_server import RedisServer, free_port, wait_until

GUIDE_MATCHER_ORDERS_PER_S = 500_000
GUIDE_FLASK_XADD_REQUESTS_PER_S = 2_000


# -- a bare price-time matcher --------------------------------------------------------------------


class BareOrder:
    __slots__ = ("order_id", "is_buy", "price", "qty")

    def __init__(self, order_id: int, is_buy: bool, price: int, qty: int) -> None:
        self.order_id = order_id
        self.is_buy = is_buy
        self.price = price
        self.qty = qty


class BareBook:
    """Price-time priority with integer ticks/lots; a cancel zeroes the order (O(1))."""

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()  # price -> deque of orders
        self.asks: SortedDict = SortedDict()
        self.orders: dict[int, BareOrder] = {}
        self.trades = 0

    def cancel(self, order_id: int) -> None:
        order = self.orders.pop(order_id, None)
        if order is not None:
            order.qty = 0  # skipped (and dropped) when matching reaches it

    def limit(self, order_id: int, is_buy: bool, price: int, qty: int) -> None:
        opposite = self.asks if is_buy else self.bids
        while qty and opposite:
            best = opposite.keys()[0] if is_buy else opposite.keys()[-1]
            if (best > price) if is_buy else (best < price):
                break
            level = opposite[best]
            while qty and level:
                maker = level[0]
                if maker.qty == 0:
                    level.popleft()
                    continue
                fill = min(qty, maker.qty)
                maker.qty -= fill
                qty -= fill
                self.trades += 1
                if maker.qty == 0:
                    level.popleft()
                    del self.orders[maker.order_id]
            if not level:
                del opposite[best]
        if qty:
            order = BareOrder(order_id, is_buy, price, qty)
            side = self.bids if is_buy else self.asks
            level = side.get(price)
            if level is None:
                level = side[price] = deque()
            level.append(order)
            self.orders[order_id] = order


def bare_flow(count: int, seed: int) -> list[tuple[Any, ...]]:
    """(kind, ...) tuples: ~60 % passive limits, ~25 % cancels, ~15 % marketable limits."""
    rng = random.Random(seed)
    mid = 3_000_000
    live: list[int] = []
    flow: list[tuple[Any, ...]] = []
    for order_id in range(1, count + 1):
        roll = rng.random()
        if roll < 0.25 and live:
            pick = rng.randrange(len(live))
            live[pick], live[-1] = live[-1], live[pick]
            flow.append(("cancel", live.pop()))
            continue
        is_buy = rng.random() < 0.5
        qty = rng.randint(1, 50)
        if roll < 0.40:  # marketable: crosses the mid
            price = mid + rng.randint(0, 30) if is_buy else mid - rng.randint(0, 30)
        else:
            price = mid - rng.randint(1, 200) if is_buy else mid + rng.randint(1, 200)
            live.append(order_id)
        flow.append(("limit", order_id, is_buy, price, qty))
    return flow


def time_bare(flow: list[tuple[Any, ...]]) -> tuple[float, BareBook]:
    """One timed pass of ``flow`` through a fresh :class:`BareBook`: (orders/s, the book)."""
    book = BareBook()
    limit, cancel = book.limit, book.cancel
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        for item in flow:
            if item[0] == "limit":
                limit(item[1], item[2], item[3], item[4])
            else:
                cancel(item[1])
        elapsed = time.perf_counter() - start
    finally:
        gc.unfreeze()
    return len(flow) / elapsed, book


def run_matcher(count: int, runs: int, seed: int) -> dict[str, Any]:
    flow = bare_flow(count, seed)
    rates = [time_bare(flow)[0] for _ in range(runs)]
    median = statistics.median(rates)
    return {
        "orders": count,
        "runs": [round(r) for r in rates],
        "orders_per_s": round(median),
        "guide_orders_per_s": GUIDE_MATCHER_ORDERS_PER_S,
        "ratio_to_guide": round(median / GUIDE_MATCHER_ORDERS_PER_S, 3),
    }


# -- Flask + gunicorn sync + XADD -----------------------------------------------------------------

BASELINE_APP = textwrap.dedent(
    """
    import os

    import redis
    from flask import Flask, jsonify, request

    app = Flask(__name__)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])


    @app.post("/orders")
    def place():
        body = request.get_json()
        entry_id = client.xadd("baseline:orders", {"order": request.get_data()})
        return jsonify(id=entry_id.decode(), symbol=body.get("symbol")), 201
    """
)


ORDER_BODY = json.dumps(
    {"symbol": "BTC-USDT", "side": "buy", "price": "30000.00", "quantity": "0.01000"}
).encode()


async def _hammer(port: int, clients: int, seconds: float) -> tuple[int, dict[str, int]]:
    """``clients`` keep-alive connections POSTing for ``seconds``: (201 answers, errors)."""
    done = 0
    errors: dict[str, int] = {}
    stop_at = time.monotonic() + seconds

    async def one_client() -> None:
        nonlocal done
        conn = Conn("127.0.0.1", port, "unused")
        try:
            while time.monotonic() < stop_at:
                try:
                    status, _ = await conn.request("POST", "/orders", ORDER_BODY)
                except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    conn.close()
                    await asyncio.sleep(0.01)
                    continue
                if status == 201:
                    done += 1
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
        finally:
            conn.close()

    # a request the server never answers must not hang the benchmark past its end
    await asyncio.wait_for(
        asyncio.gather(*(one_client() for _ in range(clients))), seconds + 30
    )
    return done, errors


async def _probe(port: int) -> bool:
    """One POST answered 201 within 5 s; any failure raises (the caller retries)."""
    conn = Conn("127.0.0.1", port, "unused")
    try:
        status, _ = await asyncio.wait_for(conn.request("POST", "/orders", ORDER_BODY), 5)
        return status == 201
    finally:
        conn.close()


class FlaskXadd:
    """The minimal Flask + XADD app under gunicorn sync -w 2 with a private redis-server:
    :meth:`start`, then :meth:`measure` as often as wanted, then :meth:`stop`."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="fb-baseline-"))
        self.server = RedisServer(dir=self.workdir / "redis")
        self.port = free_port()
        self.web: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> FlaskXadd:
        try:
            (self.workdir / "baseline_app.py").write_text(BASELINE_APP)
            self.server.start()
            env = dict(os.environ, REDIS_URL=self.server.url)
            self.web = web = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "baseline_app:app", "-k", "sync", "-w", "2",
                 "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning"],  # fmt: skip
                cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
            )
            # any error (refused, reset, a read that times out) is "not yet" until the
            # deadline; two probes in a row, so both sync workers have most likely booted
            wait_until(
                lambda: asyncio.run(_probe(self.port)) and asyncio.run(_probe(self.port)),
                timeout, "the baseline gunicorn", alive=lambda: web.poll() is None,
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def measure(self, seconds: float, clients: int, warmup: float = 0.0) -> dict[str, Any]:
        if warmup:
            asyncio.run(_hammer(self.port, clients, warmup))
        start = time.monotonic()
        done, errors = asyncio.run(_hammer(self.port, clients, seconds))
        elapsed = time.monotonic() - start
        rate = done / elapsed
        return {
            "gunicorn": "-k sync -w 2",
            "clients": clients,
            "seconds": round(elapsed, 3),
            "warmup": warmup,
            "requests": done,
            "errors": errors,
            "requests_per_s": round(rate, 1),
            "guide_requests_per_s": GUIDE_FLASK_XADD_REQUESTS_PER_S,
            "ratio_to_guide": round(rate / GUIDE_FLASK_XADD_REQUESTS_PER_S, 3),
        }

    def stop(self) -> None:
        if self.web is not None:
            self.web.terminate()
            try:
                self.web.wait(15)
            except subprocess.TimeoutExpired:
                self.web.kill()
                self.web.wait()
            self.web = None
        self.server.stop()
        self.server.cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> FlaskXadd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_flask(seconds: float, clients: int, warmup: float = 0.0) -> dict[str, Any]:
    """Start the app, measure it once, stop it."""
    with FlaskXadd() as app:
        return app.measure(seconds, clients, warmup)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench baseline", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    ap.add_argument("--orders", type=int, default=500_000, help="bare matcher flow length")
    ap.add_argument("--runs", type=int, default=3, help="matcher runs; the median counts")
    ap.add_argument("--seconds", type=float, default=10.0, help="Flask + XADD load duration")
    ap.add_argument("--clients", type=int, default=16, help="concurrent HTTP connections")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured Flask lead-in seconds")
    ap.add_argument("--seed", type=int, default=7)
    opts = ap.parse_args(argv)
    result = {
        "bench": "baseline",
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "matcher": run_matcher(opts.orders, opts.runs, opts.seed),
        "flask_xadd": run_flask(opts.seconds, opts.clients, opts.warmup),
    }
    m, f = result["matcher"], result["flask_xadd"]
    print(
        f"bare matcher {m['orders_per_s']:,} orders/s ({m['ratio_to_guide']}x the guide's "
        f"~500k); Flask + gunicorn sync -w 2 + XADD {f['requests_per_s']:,} requests/s "
        f"({f['ratio_to_guide']}x the guide's ~2k)"
    )
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
