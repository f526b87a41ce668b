"""The pure matching core: wire schema, order book, matching engine (no I/O, no clock)."""

from pathlib import Path

#: The default markets file. Located here, in plain Python, because compiled modules (mypyc,
#: see ``scripts/build_native``) have no ``__file__`` while they initialise.
DEFAULT_SYMBOLS_FILE = Path(__file__).with_name("symbols.json")


def native() -> bool:
    """True when the core runs as mypyc-compiled extension modules (scripts/build_native.py)."""
    from engine import book

    return not book.__file__.endswith(".py")
