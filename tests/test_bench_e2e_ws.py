"""``bench e2e --api ws`` must measure orders the WebSocket API accepted, not refusals: one short
run of its client (signed ``order.place`` / ``order.cancel`` pipelined over shared connections)
against a live stack answers every request without an error."""

from __future__ import annotations

import argparse

import pytest

from bench.e2e import SHIPPED_GUNICORN, WS_BENCH_ENV, run_bench
from web.binance.vault import new_key_text

pytestmark = pytest.mark.e2e


def test_ws_run_places_and_cancels_without_errors(tmp_path) -> None:
    opts = argparse.Namespace(
        api="ws", env={**WS_BENCH_ENV, "FAIRBOOK_SECRET_KEY": new_key_text()},
        clients=3, ws_connections=2, ws_inflight=2, seconds=1.0, warmup=0.3, rate=None, seed=7,
        gunicorn=SHIPPED_GUNICORN, reply_timeout=2.0,
    )  # fmt: skip
    result = run_bench(opts)
    assert result["errors"] == {} and result["orders_202"] == 0, result["errors"]
    assert result["orders_201"] > 20 and result["cancels"] > 0
    assert result["orders_insufficient_funds"] == 0
    assert result["config"]["ws_connections"] == 2 and result["config"]["ws_inflight"] == 2
    assert result["post_to_result_ms"]["count"] == result["orders_201"]
