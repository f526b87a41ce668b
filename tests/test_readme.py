"""The README's quick tour, run as written: ``scripts/run`` in one shell, the tour in another.

The only changes made to the text are the two port numbers (a free web port for 8000, a free
Redis port for 6380), so the test never collides with a developer's own ``scripts/run``, and the
private Redis keeps its AOF in a temporary directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from redis_server import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def tour_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## A quick tour", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def test_the_quick_tour_works_verbatim(tmp_path: Path) -> None:
    start, tour = tour_blocks()
    assert start.strip() == "scripts/run"
    web, redis_port = free_port(), free_port()
    tour = tour.replace("localhost:8000", f"localhost:{web}").replace(":6380/", f":{redis_port}/")
    env = {**os.environ, "PORT": str(web), "FAIRBOOK_REDIS_PORT": str(redis_port),
           "FAIRBOOK_DATA_DIR": str(tmp_path / "var")}  # fmt: skip
    env.pop("REDIS_URL", None)
    log = (tmp_path / "run.log").open("wb")
    system = subprocess.Popen(
        ["bash", "-c", start], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        # the tour's own wait loop polls until the system answers; the timeout bounds it
        script = "set -euo pipefail\n" + tour
        out = subprocess.run(
            ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr + (tmp_path / "run.log").read_text()
        lines = out.stdout.splitlines()
        placed, taken, book, trades, orders = (line for line in lines if line.strip())
        assert '"status":"new"' in placed
        assert '"status":"filled"' in taken and '"price":"30000.00"' in taken
        assert '["30000.00","0.00600"]' in book
        assert '"quantity":"0.00400"' in trades
        assert '"remaining_quantity":"0.00600"' in orders
    finally:
        os.killpg(system.pid, signal.SIGINT)  # Ctrl-C, as the README says
        try:
            system.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(system.pid, signal.SIGKILL)
            system.wait()
        log.close()
    assert system.returncode == 0, (tmp_path / "run.log").read_text()
