"""web.books.BookMirror and its depth views, against a naive full book rebuilt from the same
updates.

What web/books.py promises (and DESIGN.md "Fan-out"): a client that applies a view's snapshot
and then its updates holds exactly the top N of the book, levels entering and leaving the
window included; each update's ``prev_sequence`` is the previous frame's ``sequence`` on that
channel (a mismatch means a gap); a view that would need levels beyond those the key held, and
a worker-side gap, are served by re-reading the key and sending the difference as an ordinary
update. The hub (web/hub.py) drives the mirror; the last tests go through it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from engine.markets import Market
from protocol import wire
from protocol.config import load_markets
from protocol.keys import Namespace
from web import books
from web.books import BookMirror, BookView
from web.hub import Hub

SYMBOL = "BTC-USDT"
MARKET: Market = load_markets()[SYMBOL]
SIDES = ("bids", "asks")
#: bids on ticks 1000..1019, asks on 1020..1039: few enough levels to collide often
TICKS = {"bids": range(1000, 1020), "asks": range(1020, 1040)}


class FullBook:
    """Every level, as the worker knows it: side -> ticks -> lots."""

    def __init__(self) -> None:
        self.levels: dict[str, dict[int, int]] = {"bids": {}, "asks": {}}
        self.sequence = 0

    def change(self, changes: dict[tuple[str, int], int]) -> dict[str, Any]:
        """Apply ``(side, ticks) -> lots`` (0 removes) and return the worker's increment:
        every changed level with its final quantity, best first, no-ops included (a batch may
        add and remove the same order)."""
        prev = self.sequence
        self.sequence += max(1, len(changes))
        out: dict[str, Any] = {"prev_sequence": prev, "sequence": self.sequence}
        for side in SIDES:
            rows = sorted(((t, q) for (s, t), q in changes.items() if s == side),
                          key=lambda row: -row[0] if side == "bids" else row[0])  # fmt: skip
            for ticks, lots in rows:
                if lots:
                    self.levels[side][ticks] = lots
                else:
                    self.levels[side].pop(ticks, None)
            out[side] = [[MARKET.format_price(t), MARKET.format_qty(q)] for t, q in rows]
        return out

    def top(self, side: str, depth: int) -> list[list[str]]:
        ordered = sorted(self.levels[side].items(), reverse=side == "bids")[:depth]
        return [[MARKET.format_price(t), MARKET.format_qty(q)] for t, q in ordered]

    def key(self, depth: int = books.MAX_DEPTH) -> dict[str, Any]:
        """The ``book:<symbol>`` value: the top ``depth`` levels per side."""
        return {"symbol": SYMBOL, "sequence": self.sequence,
                **{side: self.top(side, depth) for side in SIDES}}  # fmt: skip


class ClientView:
    """What a WebSocket client of one view holds: snapshot, then updates."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        assert snapshot["type"] == "snapshot"
        self.sequence = snapshot["sequence"]
        self.levels = {side: dict(snapshot[side]) for side in SIDES}

    def apply(self, update: dict[str, Any]) -> None:
        assert update["type"] == "update"
        assert update["prev_sequence"] == self.sequence, "a gap the client would resubscribe on"
        assert update["sequence"] > update["prev_sequence"]
        for side in SIDES:
            prices = [p for p, _ in update[side]]
            assert len(prices) == len(set(prices)), f"a price twice in one update: {update}"
            for price, qty in update[side]:
                assert self.levels[side].get(price, "0") != qty, f"a no-op change: {update}"
                if Decimal(qty) == 0:
                    del self.levels[side][price]  # only levels it shows are removed
                else:
                    self.levels[side][price] = qty
        self.sequence = update["sequence"]

    def rows(self, side: str) -> list[list[str]]:
        ordered = sorted(self.levels[side].items(), key=lambda row: Decimal(row[0]),
                         reverse=side == "bids")  # fmt: skip
        return [list(row) for row in ordered]


def _agree(full: FullBook, clients: dict[str, tuple[int, ClientView]]) -> None:
    for channel, (depth, client) in clients.items():
        for side in SIDES:
            assert client.rows(side) == full.top(side, depth), (channel, side)


# -- the mirror alone ---------------------------------------------------------------------------

level_changes = st.dictionaries(
    st.tuples(st.sampled_from(SIDES), st.integers(0, 19)), st.integers(0, 4), min_size=1,
    max_size=6,
).map(lambda d: {(s, TICKS[s][i]): q for (s, i), q in d.items()})  # fmt: skip
steps = st.lists(
    st.one_of(st.tuples(st.just("change"), level_changes),
              st.tuples(st.just("view"), st.sampled_from((1, 2, 3, 5, 8, 50))),
              st.tuples(st.just("close"), st.sampled_from((1, 2, 3, 5, 8, 50)))),
    max_size=60,
)  # fmt: skip


@given(initial=st.lists(level_changes, max_size=4), steps=steps)
def test_views_hold_the_top_n_of_a_naive_book(initial, steps) -> None:
    """After every increment, each view's snapshot + updates equal the naive book's top N,
    every update chains on the view's previous frame and changes only what the client shows."""
    full = FullBook()
    for changes in initial:
        full.change(changes)
    mirror = BookMirror(MARKET, SYMBOL)
    mirror.load(full.key())
    clients: dict[str, tuple[int, ClientView]] = {}

    def open_view(depth: int) -> None:
        channel = f"book:{SYMBOL}:{depth}"
        if channel not in mirror.views:  # as the hub does: one view per channel
            view = mirror.views[channel] = BookView(channel, depth, mirror.sequence)
            clients[channel] = (depth, ClientView(mirror.snapshot(view)))

    open_view(3)
    for kind, arg in steps:
        if kind == "view":
            open_view(arg)
        elif kind == "close":
            mirror.views.pop(f"book:{SYMBOL}:{arg}", None)
            clients.pop(f"book:{SYMBOL}:{arg}", None)
        else:
            increment = full.change(arg)
            assert increment["prev_sequence"] == mirror.sequence
            frames = mirror.apply(increment)
            assert mirror.sequence == increment["sequence"]
            assert all(mirror.reliable_for(v.depth) for v in mirror.views.values())  # < 500
            framed = [view.channel for view, _ in frames]
            assert len(framed) == len(set(framed)), "two frames for one view"
            for view, update in frames:
                assert update["channel"] == view.channel
                clients[view.channel][1].apply(update)
        _agree(full, clients)


def test_levels_enter_and_leave_a_window() -> None:
    """A worked example: a better level pushes the last one out of a depth-2 view (told as a
    removal), removing it brings that level back (told as an addition)."""
    full = FullBook()
    full.change({("asks", 1020): 1, ("asks", 1021): 2, ("asks", 1022): 3})
    mirror = BookMirror(MARKET, SYMBOL)
    mirror.load(full.key())
    view = mirror.views["book:BTC-USDT:2"] = BookView("book:BTC-USDT:2", 2, mirror.sequence)
    assert [list(row) for row in mirror.snapshot(view)["asks"]] == [["10.20", "0.00001"],
                                                                   ["10.21", "0.00002"]]

    [(got, update)] = mirror.apply(full.change({("asks", 1019): 5}))
    assert got is view
    assert update["asks"] == [["10.19", "0.00005"], ["10.21", "0"]]
    assert update["bids"] == [] and update["prev_sequence"] == 3  # the snapshot's

    [(_, update)] = mirror.apply(full.change({("asks", 1019): 0}))
    assert update["asks"] == [["10.19", "0"], ["10.21", "0.00002"]]
    assert update["prev_sequence"] == 4 and update["sequence"] == 5

    # a change below the window: no frame, and the next one still chains on sequence 5
    assert mirror.apply(full.change({("asks", 1030): 7})) == []
    [(_, update)] = mirror.apply(full.change({("asks", 1020): 4}))
    assert update["prev_sequence"] == 5 and update["sequence"] == 7
    assert update["asks"] == [["10.20", "0.00004"]]


def test_a_key_cut_at_max_depth_makes_deep_views_unreliable_until_reloaded() -> None:
    """Beyond the worst level the key held the mirror knows only what increments said: once
    a view would need such levels it is served from a re-read key, in ONE update per view."""
    full = FullBook()
    full.change({("asks", 2000 + i): 1 for i in range(books.MAX_DEPTH + 20)})
    mirror = BookMirror(MARKET, SYMBOL)
    mirror.load(full.key())  # the worker's key: the top MAX_DEPTH only
    assert len(mirror.levels["asks"]) == books.MAX_DEPTH
    deep = mirror.views["deep"] = BookView("deep", books.MAX_DEPTH, mirror.sequence)
    shallow = mirror.views["shallow"] = BookView("shallow", 10, mirror.sequence)
    clients = {"deep": (books.MAX_DEPTH, ClientView(mirror.snapshot(deep))),
               "shallow": (10, ClientView(mirror.snapshot(shallow)))}  # fmt: skip

    def deliver(frames: list[tuple[BookView, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        by_channel = {view.channel: update for view, update in frames}
        assert len(by_channel) == len(frames), "two frames for one view"
        for channel, update in by_channel.items():
            clients[channel][1].apply(update)
        return by_channel

    # a level beyond the key's worst one: known now, but it cannot fill a hole above it
    deliver(mirror.apply_or_reload(full.change({("asks", 2000 + 600): 3}), full.key))
    assert mirror.reliable_for(books.MAX_DEPTH)
    probe = BookMirror(MARKET, SYMBOL)  # what the plain apply leaves: a hole at the bottom
    probe.load(full.key())
    probe.apply(full.change({("asks", 2000): 0}))
    assert not probe.reliable_for(books.MAX_DEPTH) and probe.reliable_for(10)

    # the same increment through apply_or_reload: the deep view gets the 501st level from the key
    increment = {"prev_sequence": mirror.sequence, "sequence": full.sequence,
                 "bids": [], "asks": [[MARKET.format_price(2000), "0"]]}  # fmt: skip
    reads = []
    updates = deliver(mirror.apply_or_reload(increment, lambda: reads.append(1) or full.key()))
    assert reads == [1] and mirror.reliable_for(books.MAX_DEPTH)
    assert set(updates) == {"deep", "shallow"}  # both saw the best level go
    assert updates["deep"]["prev_sequence"] < updates["deep"]["sequence"] == full.sequence
    assert [MARKET.format_price(2000 + books.MAX_DEPTH), MARKET.format_qty(1)] in \
        updates["deep"]["asks"]  # fmt: skip
    _agree(full, clients)

    # a gap only the deep view can see: re-read; the shallow view sends nothing and keeps the
    # sequence of its last frame, so its next update still chains on what its clients saw
    full.change({("asks", 2000 + 300): 0})  # lost
    shallow_last = shallow.sequence
    assert set(deliver(mirror.reload(full.key()))) == {"deep"}
    assert shallow.sequence == shallow_last
    updates = deliver(mirror.apply_or_reload(full.change({("asks", 2001): 9}), full.key))
    assert updates["shallow"]["prev_sequence"] == shallow_last
    _agree(full, clients)


# -- through the hub: gaps, stale messages, a key cut short -------------------------------------


class _Sub:
    """A socket as the hub sees it, decoding the frames it is offered."""

    account = None

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def offer(self, data: bytes) -> bool:
        size = data[1] & 0x7F
        start = 2 if size < 126 else 4 if size == 126 else 10
        self.frames.append(json.loads(data[start:]))
        return True

    def next_sequence(self, channel: str) -> int:  # pragma: no cover - no orders channel
        return 0

    def slow_consumer(self) -> None:  # pragma: no cover - never full here
        raise AssertionError("slow consumer")

    def revoked(self) -> None:  # pragma: no cover
        raise AssertionError("revoked")


class _KeyStore:
    """The one Redis read the hub makes for books: GET of the book key."""

    def __init__(self, full: FullBook, depth: int) -> None:
        self.full = full
        self.depth = depth
        self.reads = 0

    def get(self, key: str) -> bytes:
        assert key == Namespace("fb", [SYMBOL]).keys_for(SYMBOL).book(SYMBOL)
        self.reads += 1
        return wire.dumps(self.full.key(self.depth))


hub_steps = st.lists(
    st.one_of(st.tuples(st.just("deliver"), level_changes),
              st.tuples(st.just("drop"), level_changes),
              st.tuples(st.just("stale"), st.none())),
    min_size=1, max_size=50,
)  # fmt: skip


@given(initial=st.lists(level_changes, max_size=5), steps=hub_steps)
def test_hub_views_survive_lost_messages_stale_ones_and_a_short_key(initial, steps) -> None:
    """The key holds only 6 levels per side here (MAX_DEPTH patched), views go to depth 6;
    some increments are lost (the next one is a gap: the key is re-read), some arrive twice
    (ignored). After every delivered message each client holds the naive top N."""
    cut = 6
    with mock.patch.object(books, "MAX_DEPTH", cut):
        full = FullBook()
        for changes in initial:
            full.change(changes)
        store = _KeyStore(full, cut)
        hub = Hub(lambda: store, {SYMBOL: MARKET}, Namespace("fb", [SYMBOL]))  # type: ignore[arg-type,return-value]
        sub = _Sub()
        depths = {f"book:{SYMBOL}:{d}": d for d in (1, 2, 4, cut)}
        for channel in depths:
            hub.subscribe(sub, channel)
        clients = {f["channel"]: (depths[f["channel"]], ClientView(f)) for f in sub.frames}
        assert set(clients) == set(depths)
        _agree(full, clients)
        delivered: list[bytes] = []
        for kind, arg in steps:
            seen = len(sub.frames)
            if kind == "stale":
                if delivered:
                    hub.dispatch({"channel": b"fb:md:" + SYMBOL.encode(), "data": delivered[-1]})
                    assert len(sub.frames) == seen, "a message seen before must change nothing"
                continue
            message = wire.market_data_message(SYMBOL, [], full.change(arg), None)
            if kind == "drop":  # lost on the way: the next delivered one shows the gap
                continue
            delivered.append(message)
            hub.dispatch({"channel": b"fb:md:" + SYMBOL.encode(), "data": message})
            for update in sub.frames[seen:]:
                clients[update["channel"]][1].apply(update)
            _agree(full, clients)
        assert hub.stats["poison"] == 0


def test_hub_rereads_the_key_on_a_gap() -> None:
    full = FullBook()
    full.change({("bids", 1010): 1, ("bids", 1011): 1})
    store = _KeyStore(full, books.MAX_DEPTH)
    hub = Hub(lambda: store, {SYMBOL: MARKET}, Namespace("fb", [SYMBOL]))  # type: ignore[arg-type,return-value]
    sub = _Sub()
    hub.subscribe(sub, f"book:{SYMBOL}:1")
    [snapshot] = sub.frames
    assert snapshot["bids"] == [["10.11", "0.00001"]] and store.reads == 1
    full.change({("bids", 1012): 2})  # lost
    last = full.change({("asks", 1030): 1})  # below nothing the view shows... but a gap
    hub.dispatch({"channel": "fb:md:BTC-USDT",
                  "data": wire.market_data_message(SYMBOL, [], last, None)})  # fmt: skip
    assert store.reads == 2  # re-read, not applied blindly
    [update] = sub.frames[1:]
    assert update["prev_sequence"] == snapshot["sequence"] and update["sequence"] == 4
    assert update["bids"] == [["10.12", "0.00002"], ["10.11", "0"]]
    assert update["asks"] == [["10.30", "0.00001"]]


def test_an_unusable_increment_changes_nothing_before_the_reread() -> None:
    """A level that cannot be parsed fails the whole increment before any level is applied:
    the re-read key is then compared with what the clients really hold."""
    full = FullBook()
    full.change({("bids", 1011): 1})
    store = _KeyStore(full, books.MAX_DEPTH)
    hub = Hub(lambda: store, {SYMBOL: MARKET}, Namespace("fb", [SYMBOL]))  # type: ignore[arg-type,return-value]
    sub = _Sub()
    hub.subscribe(sub, f"book:{SYMBOL}:5")
    [snapshot] = sub.frames
    client = ClientView(snapshot)
    increment = full.change({("bids", 1011): 5})  # the worker committed this level...
    increment["bids"].append(["10.111", "0.00001"])  # ...and a second one arrives off tick
    hub.dispatch({"channel": "fb:md:BTC-USDT",
                  "data": wire.market_data_message(SYMBOL, [], increment, None)})  # fmt: skip
    assert hub.stats["poison"] == 1
    [update] = sub.frames[1:]  # from the re-read key
    client.apply(update)
    assert client.rows("bids") == full.top("bids", 5) == [["10.11", "0.00005"]]
