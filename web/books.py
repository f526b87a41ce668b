"""One symbol's book as the web holds it (:class:`BookMirror`), and what each depth view sees.

Levels are keyed by integer ticks (negated for bids, so both sides sort best first); the
texts are kept as the worker rendered them. The worker publishes the levels a batch changed;
the mirror applies them and tells each view the part it can see, plus the levels that enter
or leave its top N, so snapshot + updates always equal the REST book at that depth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sortedcontainers import SortedDict

from engine.markets import Market
from engine.units import check_decimal_text
from protocol import wire

MAX_DEPTH = 500  # the worker's book key holds the top 500 levels per side
SIDES = ("bids", "asks")

Level = tuple[str, str]  # (price, quantity) as the worker rendered them


class BookView:
    """The subscribers of ``book:<symbol>[:<depth>]`` and the sequence of their last frame."""

    __slots__ = ("channel", "depth", "subs", "sequence")

    def __init__(self, channel: str, depth: int, sequence: int) -> None:
        self.channel = channel
        self.depth = depth
        self.subs: set[Any] = set()  # web.hub.Subscriber
        self.sequence = sequence


class BookMirror:
    """One symbol's book as the worker published it, and its depth views.

    Levels are keyed by integer ticks (negated for bids, so both sides sort best first);
    the texts are kept as the worker rendered them. The ``book:<symbol>`` key holds at most
    :data:`MAX_DEPTH` levels per side: beyond the worst level it held (``worst``), the mirror
    knows only what increments told it, so a view that would need more is served after a
    re-read of the key.
    """

    def __init__(self, market: Market, symbol: str) -> None:
        self.market = market
        self.symbol = symbol
        self.sequence = -1  # not loaded
        self.levels: dict[str, SortedDict] = {"bids": SortedDict(), "asks": SortedDict()}
        self.worst: dict[str, int | None] = {"bids": None, "asks": None}
        self.bbo: dict[str, Any] = wire.bbo_object(0, None, "0", None, "0")
        self.views: dict[str, BookView] = {}

    def _key(self, side: str, price: str) -> int:
        ticks = self.market.price_to_ticks(price)
        return -ticks if side == "bids" else ticks

    def load(self, snap: dict[str, Any]) -> None:
        """Replace everything with the worker's ``book:<symbol>`` value."""
        self.sequence = int(snap.get("sequence") or 0)
        for side in SIDES:
            rows = snap.get(side) or []
            levels = self.levels[side] = SortedDict(
                (self._key(side, p), (p, q)) for p, q in rows
            )
            self.worst[side] = levels.keys()[-1] if len(rows) >= MAX_DEPTH else None
        bbo = snap.get("bbo")
        if isinstance(bbo, dict):
            self.bbo = bbo
        else:
            self.bbo = wire.bbo_object(int(snap.get("bbo_sequence") or 0), None, "0", None, "0")

    def top(self, side: str, depth: int) -> list[Level]:
        levels = self.levels[side]
        return [levels[k] for k in levels.islice(0, depth)]

    def reliable_for(self, depth: int) -> bool:
        """False when a view of ``depth`` may need levels the key did not carry."""
        for side in SIDES:
            worst = self.worst[side]
            if worst is not None and self.levels[side].bisect_right(worst) < depth:
                return False
        return True

    def snapshot(self, view: BookView) -> dict[str, Any]:
        """The view's ``snapshot`` frame."""
        return {
            "channel": view.channel,
            "type": "snapshot",
            "sequence": view.sequence,
            "bids": self.top("bids", view.depth),
            "asks": self.top("asks", view.depth),
        }

    def _boundaries(self) -> dict[tuple[str, int], int | None]:
        """(side, depth) -> key of the view's last visible level (None: it sees them all)."""
        out: dict[tuple[str, int], int | None] = {}
        for side in SIDES:
            keys = self.levels[side].keys()
            for view in self.views.values():
                out[(side, view.depth)] = keys[view.depth - 1] if len(keys) >= view.depth else None
        return out

    def apply(self, increment: dict[str, Any]) -> list[tuple[BookView, dict[str, Any]]]:
        """Apply one increment (its ``prev_sequence`` checked by the caller); the frame each
        view must send, for the views whose top N changed. Every level is parsed before any is
        applied: an increment that cannot be used raises and leaves the mirror as its views'
        clients hold it, so a re-read of the key (:meth:`reload`) can tell them the rest."""
        sequence = int(increment["sequence"])
        parsed: list[tuple[str, int, str, str]] = []
        for side in SIDES:
            for price, qty in increment.get(side) or ():
                check_decimal_text(qty, "quantity")
                parsed.append((side, self._key(side, price), price, qty))
        before = self._boundaries()
        old: dict[str, dict[int, Level | None]] = {"bids": {}, "asks": {}}
        for side, key, price, qty in parsed:
            levels = self.levels[side]
            old[side].setdefault(key, levels.get(key))
            if _is_zero(qty):
                levels.pop(key, None)
            else:
                levels[key] = (price, qty)
        self.sequence = sequence
        after = self._boundaries()
        frames = []
        for view in self.views.values():
            changes = {
                side: self._visible_changes(side, old[side], before[(side, view.depth)],
                                            after[(side, view.depth)])
                for side in SIDES
            }  # fmt: skip
            if changes["bids"] or changes["asks"]:
                frames.append((view, self._update(view, changes)))
        return frames

    def apply_or_reload(
        self, increment: dict[str, Any], read_key: Callable[[], dict[str, Any]]
    ) -> list[tuple[BookView, dict[str, Any]]]:
        """:meth:`apply`; if a view would then need levels beyond those the key held, the key
        is re-read (``read_key()``) instead and each view gets ONE update, from what it showed
        before the increment to the key: never a second frame with the same sequence."""
        shown = self._shown()
        sequences = {name: view.sequence for name, view in self.views.items()}
        frames = self.apply(increment)
        if all(self.reliable_for(view.depth) for view in self.views.values()):
            return frames
        for name, view in self.views.items():  # those frames are never sent
            view.sequence = sequences[name]
        return self._reload(read_key(), shown)

    def _visible_changes(
        self, side: str, old: dict[int, Level | None], was: int | None, now: int | None
    ) -> list[list[str]]:
        """What a view whose last visible key went from ``was`` to ``now`` must be told."""
        levels = self.levels[side]
        candidates = set(old)
        if now is None or (was is not None and now > was):  # levels entered from below
            candidates.update(levels.irange(was, now, inclusive=(False, True)))
        if was is None or (now is not None and was > now):  # levels pushed out below
            candidates.update(levels.irange(now, was, inclusive=(False, True)))
        out = []
        for key in sorted(candidates):
            seen_before = old[key] if key in old else levels.get(key)
            if seen_before is not None and was is not None and key > was:
                seen_before = None
            seen_now = levels.get(key)
            if seen_now is not None and now is not None and key > now:
                seen_now = None
            if seen_before != seen_now:
                if seen_now is not None:
                    out.append(list(seen_now))
                elif seen_before is not None:
                    out.append([seen_before[0], "0"])
        return out

    def _shown(self) -> dict[str, dict[str, dict[str, str]]]:
        """What each view's clients hold: view name -> side -> price -> quantity."""
        return {name: {side: dict(self.top(side, view.depth)) for side in SIDES}
                for name, view in self.views.items()}  # fmt: skip

    def reload(self, snap: dict[str, Any]) -> list[tuple[BookView, dict[str, Any]]]:
        """Re-read the key (after a gap, or when a view needs more than the mirror knows): each
        view gets the difference between what it showed and the new book as a normal update."""
        return self._reload(snap, self._shown())

    def _reload(
        self, snap: dict[str, Any], shown: dict[str, dict[str, dict[str, str]]]
    ) -> list[tuple[BookView, dict[str, Any]]]:
        self.load(snap)
        frames = []
        for name, view in self.views.items():
            changes = {}
            for side in SIDES:
                was, now = shown[name][side], dict(self.top(side, view.depth))
                diff = [[p, q] for p, q in now.items() if was.get(p) != q]
                diff += [[p, "0"] for p in was if p not in now]
                changes[side] = diff
            # a view that shows the same sends nothing and keeps its sequence: its next
            # update must chain on the last frame its clients saw
            if changes["bids"] or changes["asks"]:
                frames.append((view, self._update(view, changes)))
        return frames

    def _update(self, view: BookView, changes: dict[str, list[list[str]]]) -> dict[str, Any]:
        prev, view.sequence = view.sequence, self.sequence
        return {
            "channel": view.channel,
            "type": "update",
            "prev_sequence": prev,
            "sequence": view.sequence,
            "bids": changes["bids"],
            "asks": changes["asks"],
        }


def _is_zero(qty: str) -> bool:
    return qty.strip("0.") == ""
