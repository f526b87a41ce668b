"""The optional mypyc build (scripts/build_native.py) must not change a single output byte."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import book

ROOT = Path(__file__).resolve().parent.parent
NATIVE = not book.__file__.endswith(".py")


def _build_native_module():
    spec = importlib.util.spec_from_file_location("build_native", ROOT / "scripts/build_native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digest(tree: Path) -> dict:
    out = subprocess.run(
        [sys.executable, str(tree / "tests/native_digest.py")],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_native_build_is_not_stale() -> None:
    """An outdated .so would shadow an edited .py: the tests would test old code."""
    native = _build_native_module()
    if not native.built_files():
        pytest.skip("no native build in this tree (pure Python)")
    assert native.is_current(), "native modules are stale: run scripts/build_native.py"
    assert NATIVE, "a native build exists but the modules imported are the .py files"


@pytest.mark.skipif(not NATIVE, reason="no native build in this tree (pure Python)")
def test_native_and_pure_python_outputs_are_byte_identical(tmp_path: Path) -> None:
    pure = tmp_path / "pure"
    for pattern in ("engine/*.py", "protocol/*.py", "protocol/*.json", "worker/*.py",
                    "bench/__init__.py", "bench/flow.py", "tests/native_digest.py"):
        for path in ROOT.glob(pattern):
            target = pure / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    compiled, plain = _digest(ROOT), _digest(pure)
    assert compiled["native"] is True and plain["native"] is False
    assert compiled["trades"] > 1000  # the flow really matched
    # with the ledger: deposits first, transfers among the flow, balances digested
    assert compiled["deposits"] > 0 and compiled["transfers"] > 0 and compiled["accounts"] > 1
    assert compiled == {**plain, "native": True}
