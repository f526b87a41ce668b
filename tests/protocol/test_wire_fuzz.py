"""Property tests of the decoders that read what others wrote: whatever bytes a Redis key, a
journal entry or a reply token holds, the decoder answers "absent" or raises its one documented
error type, never anything else (the worker and the web skip a damaged value and go on)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.units import SchemaError
from engine.validation import command_from_wire
from protocol import wire
from protocol.config import load_markets
from tests.strategies import json_values as shared_json_values
from worker.processor import _decode

MARKETS = load_markets()
json_values = shared_json_values(max_text=12, max_leaves=10)
#: bytes that are sometimes JSON, sometimes nearly JSON, sometimes noise
raw = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["account", "order_id", "symbol", "fills", "x"]), json_values,
                    max_size=5).map(lambda d: json.dumps(d).encode()),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
)  # fmt: skip


@given(data=raw)
def test_loads_raises_only_its_decode_error(data: bytes) -> None:
    try:
        wire.loads(data)
    except wire.DecodeError:
        pass


@given(data=st.one_of(st.none(), raw, raw.map(lambda b: b.decode("utf-8", "replace"))))
def test_order_records_read_as_a_record_or_absent(data: Any) -> None:
    record = wire.parse_order_record(data)
    if record is not None:
        account, order = record
        assert isinstance(account, str) and isinstance(order, dict) and "account" not in order


TOKENS = st.from_regex(r"[A-Za-z0-9_]{1,32}-[0-9]{1,20}", fullmatch=True)


@given(token=st.one_of(json_values, st.binary(max_size=40), TOKENS, TOKENS.map(lambda t: t + "\n")))
def test_reply_tokens_name_an_inbox_or_nobody(token: Any) -> None:
    inbox = wire.reply_inbox(token)
    assert inbox is None or (isinstance(token, str) and token.startswith(inbox + "-"))
    if isinstance(token, str) and token.endswith("\n"):
        assert inbox is None


@given(fields=st.dictionaries(st.sampled_from([b"c", "c", b"x", "t"]),
                              st.one_of(raw, st.none(), st.integers()), max_size=3))  # fmt: skip
def test_journal_entries_decode_to_a_command_object_or_none(fields: dict) -> None:
    command = _decode(b"1-1", fields)
    assert command is None or isinstance(command, dict)


wire_commands = st.fixed_dictionaries(
    {"op": st.sampled_from(["new", "cancel", "cancel_all", "amend", "nope"]) | json_values},
    optional={name: json_values | st.sampled_from(["BTC-USDT", "buy", "limit", "100.00", "1", 7])
              for name in ("id", "account", "symbol", "side", "type", "price", "quantity",
                           "order_id", "time_in_force", "stop_price", "quote_quantity", "extra")},
)  # fmt: skip


@given(command=wire_commands)
def test_a_journaled_command_is_a_command_or_a_schema_error(command: dict) -> None:
    try:
        command_from_wire(command, 1, MARKETS)
    except SchemaError as exc:
        assert exc.code and exc.message
    except Exception as exc:  # noqa: BLE001 - the property: nothing else escapes
        pytest.fail(f"{type(exc).__name__}: {exc} for {command!r}")
