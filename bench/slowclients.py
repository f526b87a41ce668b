"""``python -m bench slowclients [--held N] [--requests N] [--rounds N] [--json PATH]``.

Why: a few hundred slow, half-sent connections from one address must not delay anyone else
(issue 13). Each round times ``--requests`` GETs from 127.0.0.1 with nothing held (the
calibration, same run), then again while ``--held`` connections from 127.0.0.2 each hold a
request line without its headers; it prints p50/p95 of both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from typing import Any

import requests

from bench.stack import Stack


def _latencies(url: str, count: int) -> list[float]:
    out = []
    with requests.Session() as session:
        for _ in range(count):
            started = time.perf_counter()
            if session.get(url + "/api/v1/symbols", timeout=30).status_code != 200:
                raise RuntimeError("the calibration request failed")
            out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def _summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[int(len(ms) * 0.95)], 2)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench slowclients", description=__doc__)
    ap.add_argument("--held", type=int, default=400, help="half-sent connections from 127.0.0.2")
    ap.add_argument("--requests", type=int, default=40, help="timed GETs per phase")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    rounds: list[dict[str, Any]] = []
    with Stack(worker=False) as stack:
        for n in range(args.rounds):
            quiet = _summary(_latencies(stack.url, args.requests))
            held = []
            try:
                for _ in range(args.held):
                    conn = socket.create_connection(("127.0.0.1", stack.web_port), timeout=10,
                                                    source_address=("127.0.0.2", 0))  # fmt: skip
                    conn.sendall(b"GET /api/v1/symbols HTTP/1.1\r\nHost")
                    held.append(conn)
                loaded = _summary(_latencies(stack.url, args.requests))
            finally:
                for conn in held:
                    conn.close()
            ratio = round(loaded["p50_ms"] / quiet["p50_ms"], 3)
            rounds.append({"quiet": quiet, "held": loaded, "p50_ratio": ratio})
            print(f"round {n}: nothing held p50 {quiet['p50_ms']} ms p95 {quiet['p95_ms']} ms | "
                  f"{args.held} half-sent from 127.0.0.2: p50 {loaded['p50_ms']} ms "
                  f"p95 {loaded['p95_ms']} ms = {ratio}x")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"bench": "slowclients", "held": args.held, "rounds": rounds}, fh, indent=2)
    return 0
