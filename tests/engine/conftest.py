"""Fixtures of the pure-core tests (tests/engine): markets and fresh engines (ledger on, the test
accounts funded with plenty of every asset: see ``engine_helpers.fund``)."""

from __future__ import annotations

import pytest
from engine_helpers import funded
from engine_helpers import small_markets as _small_markets

from engine.markets import Market
from engine.matcher import MatchingEngine
from protocol.config import load_markets


@pytest.fixture
def markets() -> dict[str, Market]:
    """The shipped default markets (engine/symbols.json)."""
    return load_markets()


@pytest.fixture
def small_markets() -> dict[str, Market]:
    return _small_markets()


@pytest.fixture
def engine(small_markets: dict[str, Market]) -> MatchingEngine:
    return funded(small_markets)
