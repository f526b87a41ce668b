"""Compile the hot modules with mypyc: ``python scripts/build_native.py [--check | --clean]``.

Optional by design: every module stays plain Python and behaves the same without this step
(``tests/test_native.py`` checks byte-identical output). Compiled, the matching core and the
worker's processor/renderer run ~1.3x faster, which is most of what the worker drain benchmark
spends. Python imports an extension module before a source file of the same name, so the
built ``.so`` files sit next to their ``.py``; a stamp of the sources' hashes makes a rebuild
happen only when a source changed, and ``--check`` fails on a stale build (an outdated
``.so`` would silently shadow an edited ``.py``).

Exit status: 0 built or up to date (``--check``: current or not built), 1 build failed or
(``--check``) stale.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The modules on the hot path of matching and committing, in import order.
MODULES = (
    "engine/events.py",
    "engine/units.py",
    "engine/commands.py",
    "engine/markets.py",
    "engine/validation.py",
    "engine/orders.py",
    "engine/ledger.py",
    "engine/book.py",
    "engine/stops.py",
    "engine/matcher.py",
    "protocol/keys.py",
    "protocol/wire.py",
    "worker/batch.py",
    "worker/orders.py",
    "worker/processor.py",
)
WORK_DIR = ROOT / "var" / "native"
STAMP = WORK_DIR / "stamp"
LOCK = ROOT / "var" / "native.lock"
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def sources_digest() -> str:
    """Hash of the compiled sources, the Python version and mypyc's version."""
    import mypy.version

    digest = hashlib.sha256(f"{sys.version}|{mypy.version.__version__}".encode())
    for module in MODULES:
        digest.update(module.encode() + b"\0" + (ROOT / module).read_bytes())
    return digest.hexdigest()


def built_files() -> list[Path]:
    """Every extension file a build leaves in the tree (per-module shims + the shared lib)."""
    found = [ROOT / module.replace(".py", EXT_SUFFIX) for module in MODULES]
    found += ROOT.glob(f"*__mypyc{EXT_SUFFIX}")
    return [path for path in found if path.exists()]


def clean() -> None:
    for path in built_files():
        path.unlink()
    shutil.rmtree(WORK_DIR, ignore_errors=True)


def is_current() -> bool:
    return (
        STAMP.exists()
        and STAMP.read_text() == sources_digest()
        and len([p for p in built_files() if p.parent != ROOT]) == len(MODULES)
    )


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    WORK_DIR.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    extensions = mypycify(
        [*MODULES, "--cache-dir", str(WORK_DIR / "mypy-cache"), "--ignore-missing-imports"],
        opt_level="3",
        target_dir=str(WORK_DIR / "c"),
    )
    setup(
        name="fairbook-native",
        packages=[],
        py_modules=[],
        ext_modules=extensions,
        script_args=["-q", "build_ext", "--inplace", "--build-temp", str(WORK_DIR / "obj"),
                     "--build-lib", str(WORK_DIR / "lib")],
    )  # fmt: skip
    STAMP.write_text(sources_digest())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/build_native.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="fail if a build exists but is stale")
    group.add_argument("--clean", action="store_true", help="remove the compiled modules")
    group.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)  # fmt: skip
    # one build at a time: scripts/run and scripts/test started together must not clobber
    # each other's files (the second waits, then finds the build current)
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.clean:
        clean()
        print("[fairbook] native modules removed: pure Python")
        return 0
    if args.check:
        if not built_files() or is_current():
            return 0
        print("[fairbook] native modules are stale: run scripts/build_native.py", file=sys.stderr)
        return 1
    if not args.force and is_current():
        print("[fairbook] native modules up to date")
        return 0
    clean()
    started = time.monotonic()
    try:
        build()
    except (Exception, SystemExit) as exc:  # setup() reports compiler failures as SystemExit
        clean()
        print(f"[fairbook] native build failed ({exc}); running pure Python", file=sys.stderr)
        return 1
    print(f"[fairbook] compiled {len(MODULES)} modules with mypyc in "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
