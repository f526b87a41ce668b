"""The book key's levels are patched batch by batch; they must equal a full rebuild every time."""

from __future__ import annotations

import random

import pytest

from engine.schema import load_markets, make_public_id
from worker.journal import dumps_compact
from worker.loadgen import OrderFlow
from worker.processor import Processor


def journal(count: int, seed: int, mid_ticks: int = 1_000_000) -> list[tuple[bytes, list[bytes]]]:
    markets = load_markets()
    flow = OrderFlow(markets, seed=seed, mid_ticks=mid_ticks)
    entries = []
    for i in range(count):
        wire = flow.next()
        cmd_id = make_public_id(i + 1, 0)
        flow.record(wire, cmd_id)
        body = dumps_compact({"id": cmd_id, **wire})
        entries.append((f"{1_700_000_000_000 + i}-0".encode(), [b"c", body.encode()]))
    return entries


def full_levels(proc: Processor, symbol: str) -> tuple[str, str]:
    bids, asks = proc.engine.book(symbol).depth(proc.book_depth)
    fmt = proc.fmt[symbol]
    return proc.renderer.levels_json(fmt, bids), proc.renderer.levels_json(fmt, asks)


@pytest.mark.parametrize("depth", [1, 3, 8, 500])
@pytest.mark.parametrize("seed", [1, 2])
def test_patched_levels_equal_a_full_rebuild_after_every_batch(depth: int, seed: int) -> None:
    entries = journal(3_000, seed)
    proc = Processor(load_markets(), book_depth=depth)
    rng = random.Random(seed)
    at = 0
    trimmed = refilled = 0
    while at < len(entries):
        size = rng.choice((1, 1, 2, 5, 40, 300))
        batch = proc.process(entries[at : at + size])
        at += size
        assert batch.plan is not None
        for book in batch.plan[5]:
            symbol, bids_json, asks_json = book[0], book[2], book[3]
            assert (bids_json, asks_json) == full_levels(proc, symbol), (at, symbol)
        for views in proc._views.values():
            for view in views:
                trimmed += not view.complete
                refilled += len(view.keys) < depth and not view.complete
    assert not refilled  # between batches a view is never short of a deeper book
    if depth < 10:
        assert trimmed  # the small depths really exercised trimming and refilling


def test_views_are_rebuilt_after_state_only_batches() -> None:
    """Recovery applies entries without collecting level changes; the views must not go stale."""
    entries = journal(2_000, 5)
    proc = Processor(load_markets(), book_depth=5)
    proc.process(entries[:500])
    proc.process(entries[500:1500], emit=False)  # as recovery does
    batch = proc.process(entries[1500:1501])
    assert batch.plan is not None
    for book in batch.plan[5]:
        assert (book[2], book[3]) == full_levels(proc, book[0])
    # and the committed text equals what replay compares against
    for symbol in {book[0] for book in batch.plan[5]}:
        ops, _ = proc.renderer.render(batch.plan)
        assert any(proc.book_json(symbol) in op for op in ops)


def test_depth_zero_shows_no_levels() -> None:
    proc = Processor(load_markets(), book_depth=0)
    batch = proc.process(journal(200, 3))
    assert batch.plan is not None
    assert all(book[2] == "[]" and book[3] == "[]" for book in batch.plan[5])
