"""The pure matching core: units, markets, commands, validation, order book, matching engine.

No I/O, no clock, no randomness: what goes in (commands carrying their ids and timestamps)
decides what comes out, byte for byte.
"""


def native() -> bool:
    """True when the core runs as mypyc-compiled extension modules (scripts/build_native.py)."""
    from engine import book

    return not book.__file__.endswith(".py")
