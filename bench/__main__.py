"""Dispatch ``python -m bench NAME [args]`` to ``bench.NAME.main(args)`` (``all``: bench.suite)."""

from __future__ import annotations

import importlib
import sys

BENCHES = ("all", "baseline", "core", "worker", "e2e", "fanout", "slowclients", "archive")
#: names whose module is called otherwise (``all`` would shadow the builtin)
MODULES = {"all": "suite"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHES:
        print(f"usage: python -m bench {{{'|'.join(BENCHES)}}} [--json PATH] [options]")
        return 2
    module = importlib.import_module(f"bench.{MODULES.get(argv[0], argv[0])}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
