"""``python -m bench all [--json PATH] [--quick]``: the set, short, in a few minutes, one JSON.

Runs ``bench baseline`` (short), ``bench core`` (a shorter flow), the ``bench worker`` drain
(100k entries) and ``bench e2e`` (8 s), each through its own ``main`` with the sizes below, and
writes every benchmark's figures, calibrations and ratios into one JSON; a compact table at the
end. Each benchmark measures its own calibration in its own run, so the ratios hold even when the
machine's speed changes between them. ``--quick`` shrinks every size (a smoke run: its figures
mean nothing).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

#: (name, arguments, quick arguments)
PLAN: list[tuple[str, list[str], list[str]]] = [
    ("baseline", ["--orders", "200000", "--runs", "3", "--seconds", "4", "--warmup", "1"],
     ["--orders", "5000", "--runs", "1", "--seconds", "1", "--warmup", "0.5"]),
    ("core", ["--commands", "200000", "--runs", "3", "--mixed-commands", "100000"],
     ["--commands", "5000", "--runs", "2", "--mixed-commands", "5000"]),
    ("worker", ["--entries", "100000"], ["--entries", "3000"]),
    ("e2e", ["--seconds", "8", "--warmup", "2"],
     ["--seconds", "1", "--warmup", "0.5", "--clients", "4"]),
]  # fmt: skip


def run_all(quick: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bench": "all",
        "quick": quick,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "loadavg_at_start": list(os.getloadavg()),
        "results": {},
        "seconds": {},
        "errors": {},
    }
    with tempfile.TemporaryDirectory(prefix="fb-bench-all-") as tmp:
        for name, args, quick_args in PLAN:
            path = Path(tmp) / f"{name}.json"
            argv = [*(quick_args if quick else args), "--json", str(path)]
            print(f"\n== python -m bench {name} {' '.join(argv[:-2])}", flush=True)
            started = time.monotonic()
            try:
                module = importlib.import_module(f"bench.{name}")
                rc = int(module.main(argv) or 0)
                if rc:
                    raise RuntimeError(f"exit status {rc}")
                result["results"][name] = json.loads(path.read_text())
            except Exception as exc:  # one failure must not lose the other figures
                traceback.print_exc()
                result["errors"][name] = f"{type(exc).__name__}: {exc}"
            result["seconds"][name] = round(time.monotonic() - started, 1)
            sys.stdout.flush()
    result["ratios"] = ratios(result["results"])
    return result


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """Every benchmark's headline ratio to its same-run calibration."""
    out: dict[str, float | None] = {}
    if "baseline" in results:
        out["baseline_matcher_to_guide"] = results["baseline"]["matcher"]["ratio_to_guide"]
        out["baseline_flask_xadd_to_guide"] = results["baseline"]["flask_xadd"]["ratio_to_guide"]
    if "core" in results:
        out["core_engine_to_bare_matcher"] = results["core"]["ratio"]
        out["core_ledger_on_to_off"] = results["core"].get("risk_ratio")
        out["core_mixed_ledger_on_to_off"] = results["core"].get("mixed_flow", {}).get("risk_ratio")
    if "worker" in results:
        out["worker_drain_to_redis_alone"] = results["worker"].get("ratio")
    if "e2e" in results:
        out["e2e_to_flask_xadd"] = results["e2e"].get("ratio")
    return out


def _n(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:,.0f}{unit}"


def table(result: dict[str, Any]) -> str:
    """The compact summary: figure, its calibration from the same run, ratio, target."""
    r = result["results"]
    rows: list[tuple[str, str, str, str, str]] = []
    if "baseline" in r:
        m, f = r["baseline"]["matcher"], r["baseline"]["flask_xadd"]
        rows.append(("baseline matcher", _n(m["orders_per_s"], " orders/s"), "guide ~500k",
                     f"{m['ratio_to_guide']}x", ""))  # fmt: skip
        rows.append(("baseline Flask+XADD", _n(f["requests_per_s"], " req/s"), "guide ~2k",
                     f"{f['ratio_to_guide']}x", ""))  # fmt: skip
    if "core" in r:
        c = r["core"]
        rows.append(("core (same flow)", _n(c["engine"]["commands_per_s"], " cmd/s"),
                     "bare matcher " + _n(c["bare_matcher"]["commands_per_s"], " cmd/s"),
                     f"{c['ratio']}x", f">= {c.get('target_ratio', 0.5)}x"))  # fmt: skip
        if "risk_switch" in c:
            sw = c["risk_switch"]
            rows.append(("core ledger on/off", _n(sw["ledger_on_commands_per_s"], " cmd/s"),
                         "ledger off " + _n(sw["ledger_off_commands_per_s"], " cmd/s"),
                         f"{c['risk_ratio']}x",
                         f">= {c.get('target_risk_ratio', 0.85)}x"))  # fmt: skip
        if "mixed_flow" in c:
            mf = c["mixed_flow"]
            rows.append(("core mixed flow", _n(mf["commands_per_s"], " cmd/s"),
                         f"p50 {mf['p50_us']} us, p99 {mf['p99_us']} us",
                         f"ledger on/off {mf['risk_ratio']}x" if "risk_ratio" in mf else "",
                         ""))  # fmt: skip
    if "worker" in r:
        w = r["worker"]
        alone = w.get("redis_alone") or {}
        rows.append(("worker drain", _n(w["entries_per_s"], " entries/s"),
                     "Redis alone " + _n(alone.get("entries_per_s"), " entries/s"),
                     f"{w.get('ratio', '-')}x", ""))  # fmt: skip
    if "e2e" in r:
        e = r["e2e"]
        base = e.get("baseline") or {}
        p = e["post_to_result_ms"]
        rows.append(("e2e (unpaced)", _n(e["requests_per_s"], " req/s"),
                     "Flask+XADD " + _n(base.get("requests_per_s"), " req/s"),
                     f"{e.get('ratio', '-')}x", f">= {e.get('target_ratio', 1.0)}x"))  # fmt: skip
        rows.append(("e2e POST->result", f"p50 {p['p50']} ms", f"p99 {p['p99']} ms", "", ""))
    for name, error in result["errors"].items():
        rows.append((name, "FAILED", error[:60], "", ""))
    head = ("benchmark", "figure", "calibration, same run", "ratio", "target")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [head, *rows]]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench all", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    ap.add_argument("--json", metavar="PATH", help="write every figure and ratio as JSON here")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run only")
    opts = ap.parse_args(argv)
    started = time.monotonic()
    result = run_all(opts.quick)
    result["total_seconds"] = round(time.monotonic() - started, 1)
    if opts.json:
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\npython -m bench all: {result['total_seconds']} s "
          f"({', '.join(f'{k} {v} s' for k, v in result['seconds'].items())})")  # fmt: skip
    print(table(result))
    return 1 if result["errors"] else 0
