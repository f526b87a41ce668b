"""``kill -9`` of a ``python -m worker`` leaves nothing of it running.

Why: with several partitions the worker forks one child per partition (``_run_children``);
a parent killed outright cannot forward a signal, so each child asks the kernel for SIGTERM
when its parent dies (PR_SET_PDEATHSIG, ``_die_with_parent``). An orphan would keep matching
(and renewing its lease) beside the replacement an operator starts. Processes are read from
/proc: a pid counts as the same process only with the same start time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protocol.keys import Namespace
from redis_server import STARTUP_TIMEOUT, wait_until

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = "BTC-USDT=0,ETH-USDT=1,SOL-USDT=2"
#: how long the children may outlive their parent
GRACE_S = 2.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

Ident = tuple[int, int]  # (pid, start time in clock ticks): a pid may be reused


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> set[Ident]:
    """Every living process below ``root`` (children, their children...)."""
    children: dict[int, list[Ident]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[0] not in "ZX":
            children.setdefault(st[1], []).append((int(entry), st[2]))
    found: set[Ident] = set()
    todo = [root]
    while todo:
        for ident in children.get(todo.pop(), ()):
            if ident not in found:
                found.add(ident)
                todo.append(ident[0])
    return found


def _alive(ident: Ident) -> bool:
    """Still running: same pid, same start time, not a zombie waiting to be reaped."""
    st = _stat(ident[0])
    return st is not None and st[2] == ident[1] and st[0] not in "ZX"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")
    except OSError:
        return []


def _spawn(redis_url: str, partitions: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url,
           "FAIRBOOK_PARTITIONS": partitions}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "worker", "--lease-ms", "10000"], cwd=ROOT,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip


def _leases(partitions: str) -> list[str]:
    namespace = Namespace("fb", [p.split("=")[0] for p in partitions.split(",") if p],
                          partitions)  # fmt: skip
    return [namespace.keys(p).lease for p in namespace.partitions]


def _kill_and_wait_gone(proc: subprocess.Popen, idents: set[Ident]) -> tuple[float, set[Ident]]:
    """SIGKILL the worker; how long until every one of ``idents`` stopped (up to the grace
    period, polled: no fixed sleep) and those still running then."""
    os.kill(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    proc.wait(10)
    deadline = killed + GRACE_S
    while any(_alive(i) for i in idents) and time.monotonic() < deadline:
        time.sleep(0.02)
    return time.monotonic() - killed, {i for i in idents if _alive(i)}


def _cleanup(proc: subprocess.Popen, idents: set[Ident]) -> None:
    """Whatever a failed test left: nothing may outlive it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid, _ in (i for i in idents if _alive(i)):
        os.kill(pid, signal.SIGKILL)


def test_partition_children_die_with_a_killed_worker(redis_client, redis_url):
    proc = _spawn(redis_url, PARTITIONS)
    idents: set[Ident] = set()
    try:
        leases = _leases(PARTITIONS)
        assert len(leases) == 3
        # every partition matched by a child: its lease held (a busy machine starts slowly)
        wait_until(lambda: all(redis_client.exists(k) for k in leases), STARTUP_TIMEOUT,
                   "the partition workers' leases", alive=lambda: proc.poll() is None)  # fmt: skip
        idents = _descendants(proc.pid)
        partitions = sorted(_cmdline(pid)[_cmdline(pid).index("--partition") + 1]
                            for pid, _ in idents if "--partition" in _cmdline(pid))  # fmt: skip
        assert partitions == ["0", "1", "2"], [_cmdline(pid) for pid, _ in idents]
        holders = {redis_client.get(k).decode() for k in leases}
        assert all(any(f":{pid}:" in h for pid, _ in idents) for h in holders), holders

        took, left = _kill_and_wait_gone(proc, idents)
        assert not left, f"still running {took:.2f} s after kill -9: " + repr(
            [_cmdline(pid) for pid, _ in left])
        # they stopped cleanly (SIGTERM, not an abrupt death): each released its lease, long
        # before the 10 s lease would have expired
        assert not any(redis_client.exists(k) for k in leases)
    finally:
        _cleanup(proc, idents)


def test_a_single_partition_worker_has_no_child_to_leave(redis_client, redis_url):
    proc = _spawn(redis_url, "")
    idents: set[Ident] = set()
    try:
        [lease] = _leases("")
        wait_until(lambda: redis_client.exists(lease), STARTUP_TIMEOUT, "the worker's lease",
                   alive=lambda: proc.poll() is None)  # fmt: skip
        assert f":{proc.pid}:" in redis_client.get(lease).decode()  # matched in the process
        idents = _descendants(proc.pid)
        assert idents == set(), [_cmdline(pid) for pid, _ in idents]
        _, left = _kill_and_wait_gone(proc, idents)
        assert not left and proc.returncode == -signal.SIGKILL
    finally:
        _cleanup(proc, idents)
