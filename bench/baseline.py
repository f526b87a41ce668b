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
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
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
from tests.redis_server import RedisServer, free_port

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


def run_matcher(count: int, runs: int, seed: int) -> dict[str, Any]:
    flow = bare_flow(count, seed)
    rates = []
    for _ in range(runs):
        book = BareBook()
        limit, cancel = book.limit, book.cancel
        gc.collect()
        gc.freeze()
        start = time.perf_counter()
        for item in flow:
            if item[0] == "limit":
                limit(item[1], item[2], item[3], item[4])
            else:
                cancel(item[1])
        rates.append(count / (time.perf_counter() - start))
        gc.unfreeze()
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


async def _hammer(port: int, clients: int, seconds: float) -> tuple[int, dict[str, int]]:
    body = json.dumps(
        {"symbol": "BTC-USDT", "side": "buy", "price": "30000.00", "quantity": "0.01000"}
    ).encode()
    done = 0
    errors: dict[str, int] = {}
    stop_at = time.monotonic() + seconds

    async def one_client() -> None:
        nonlocal done
        conn = Conn("127.0.0.1", port, "unused")
        while time.monotonic() < stop_at:
            try:
                status, _ = await conn.request("POST", "/orders", body)
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                conn.close()
                continue
            if status == 201:
                done += 1
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1
        conn.close()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return done, errors


def run_flask(seconds: float, clients: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="fb-baseline-"))
    (workdir / "baseline_app.py").write_text(BASELINE_APP)
    server = RedisServer(dir=workdir / "redis")
    server.start()
    port = free_port()
    env = dict(os.environ, REDIS_URL=server.url)
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "baseline_app:app", "-k", "sync", "-w", "2",
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],  # fmt: skip
        cwd=workdir, env=env, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # wait for both gunicorn workers to answer
            try:
                done, _ = asyncio.run(_hammer(port, 2, 0.3))
                if done:
                    break
            except OSError:
                pass
            if web.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the baseline gunicorn did not start")
            time.sleep(0.1)
        start = time.monotonic()
        done, errors = asyncio.run(_hammer(port, clients, seconds))
        elapsed = time.monotonic() - start
    finally:
        web.terminate()
        web.wait(15)
        server.stop()
    rate = done / elapsed
    return {
        "gunicorn": "-k sync -w 2",
        "clients": clients,
        "seconds": round(elapsed, 3),
        "requests": done,
        "errors": errors,
        "requests_per_s": round(rate, 1),
        "guide_requests_per_s": GUIDE_FLASK_XADD_REQUESTS_PER_S,
        "ratio_to_guide": round(rate / GUIDE_FLASK_XADD_REQUESTS_PER_S, 3),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench baseline", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    ap.add_argument("--orders", type=int, default=500_000, help="bare matcher flow length")
    ap.add_argument("--runs", type=int, default=3, help="matcher runs; the median counts")
    ap.add_argument("--seconds", type=float, default=10.0, help="Flask + XADD load duration")
    ap.add_argument("--clients", type=int, default=16, help="concurrent HTTP connections")
    ap.add_argument("--seed", type=int, default=7)
    opts = ap.parse_args(argv)
    result = {
        "bench": "baseline",
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "matcher": run_matcher(opts.orders, opts.runs, opts.seed),
        "flask_xadd": run_flask(opts.seconds, opts.clients),
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
