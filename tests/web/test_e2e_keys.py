"""End to end: a revoked key's WebSocket is closed at once; a password-protected Redis serves
every process (web, worker and its partition children, CLI), and so does one behind TLS."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from bench.stack import ROOT, Stack
from tests.redis_server import RedisServer, free_port
from tests.web.funding import fund
from tests.web.live_socket import LiveSocket
from web.journal import Journal

pytestmark = pytest.mark.e2e

FLASK = str(Path(sys.executable).with_name("flask"))
SYM = "ETH-USDT"


def flask_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """``flask --app app ...`` as an operator runs it: its own process, the stack's env."""
    return subprocess.run([FLASK, "--app", "app", *args], cwd=ROOT, env=stack.env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def assert_replay_passes(stack: Stack) -> None:
    """The replay audit, run as an operator runs it, with the stack's environment."""
    replay = subprocess.run([sys.executable, "-m", "worker", "replay"], cwd=ROOT, env=stack.env(),
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert replay.returncode == 0, replay.stdout + replay.stderr


Socket = LiveSocket


def _order(account: str, side: str, price: str, qty: str) -> dict[str, Any]:
    return {"op": "new", "account": account, "symbol": SYM, "side": side, "type": "limit",
            "time_in_force": "GTC", "post_only": False, "price": price, "quantity": qty,
            "quote_quantity": None, "stop_price": None, "client_order_id": None,
            "stp": "cancel_maker"}  # fmt: skip


def _children(pid: int) -> list[Path]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if proc.name.isdigit() and int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with Stack(log_dir=tmp_path_factory.mktemp("keys-stack")) as s:
        yield s


def test_revoke_key_closes_its_socket_within_a_second(stack):
    acct = stack.create_account("revoked")
    key, account = acct["api_key"], acct["account_id"]
    fund(stack, account)
    other = stack.create_account("bystander")
    sock, bystander = Socket(stack), Socket(stack)
    for s, a in ((sock, acct), (bystander, other)):
        s.send({"op": "auth", "api_key": a["api_key"]})
        s.until(lambda m: m.get("type") == "authenticated")
        s.send({"op": "subscribe", "channels": ["orders"]})
        s.until(lambda m: m.get("type") == "subscribed")
    headers = {"X-API-Key": key}
    body = {"symbol": SYM, "side": "buy", "price": "50", "quantity": "0.1"}
    resp = requests.post(stack.url + "/api/v1/orders", json=body, headers=headers, timeout=10)
    assert resp.status_code == 201, resp.text
    sock.until(lambda m: m.get("channel") == "orders" and m["type"] == "order")  # it works

    done = flask_cli(stack, "revoke-key", key)
    revoked_at = time.monotonic()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"account_id": account, "revoked": True}
    # a private event the dead key's socket must never see (journaled as the worker's input)
    journal = Journal(stack.redis(), stack.namespace.keys_for(SYM))
    (late,) = journal.append_many([_order(account, "buy", "51", "0.1")])
    seen, code, reason, closed_at = sock.frames_until_close(timeout=5)
    assert (code, reason) == (1008, "api key revoked")
    assert closed_at - revoked_at < 1.0, f"closed {closed_at - revoked_at:.2f} s after revoke"
    private = [m for m in seen if m.get("channel") == "orders"]
    assert not [m for m in private if m["type"] != "balance" and m["data"]["order_id"] == late]
    # nor its balance change: a balance frame here can only be the first order's (0.1 x 50 and
    # the fee reserve locked; the late one would have made it 10.111)
    assert all(m["data"]["locked"] == "5.00500000" for m in private if m["type"] == "balance")
    sock.close()

    # the key is dead for REST and for new sockets; the bystander is untouched
    dead = requests.get(stack.url + "/api/v1/orders", headers=headers, timeout=10)
    assert dead.status_code == 401
    again = Socket(stack)
    again.send({"op": "auth", "api_key": key})
    assert again.until(lambda m: True)["code"] == "unauthorized"
    again.send({"op": "subscribe", "channels": ["orders"]})
    assert again.until(lambda m: True)["code"] == "auth_required"
    again.close()
    bystander.send({"op": "ping"})
    assert bystander.until(lambda m: m.get("type") == "pong")
    bystander.close()
    requests.delete(stack.url + "/api/v1/orders", headers={"X-API-Key": other["api_key"]})


def test_rotate_key_closes_the_old_keys_socket(stack):
    acct = stack.create_account("rotating")
    sock = Socket(stack)
    sock.send({"op": "auth", "api_key": acct["api_key"]})
    sock.until(lambda m: m.get("type") == "authenticated")
    done = flask_cli(stack, "rotate-key", acct["account_id"])
    assert done.returncode == 0, done.stderr
    new_key = json.loads(done.stdout)["api_key"]
    _seen, code, _reason, _at = sock.frames_until_close(timeout=5)
    assert code == 1008
    fresh = Socket(stack)
    fresh.send({"op": "auth", "api_key": new_key})
    assert fresh.until(lambda m: True) == {"type": "authenticated", "account": acct["account_id"]}
    fresh.close()


def test_whole_stack_on_a_password_protected_redis(tmp_path):
    server = RedisServer(dir=tmp_path / "redis", extra_args=["--requirepass", "s3cret"])
    assert server.password == "s3cret" and ":s3cret@" in server.url
    (tmp_path / "stack").mkdir()
    try:
        # two partitions: the worker starts one child process per partition
        with Stack(redis_server=server, partitions="ETH-USDT=1",
                   log_dir=tmp_path / "stack") as stack:  # fmt: skip
            anonymous = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
            with pytest.raises(redis.exceptions.AuthenticationError):
                anonymous.ping()
            anonymous.close()
            assert "s3cret" not in stack.log_tail("worker", 200)
            assert stack.worker_proc is not None
            children = _children(stack.worker_proc.pid)
            assert len(children) == 2  # the partition workers: the password is not in ps
            assert not [c for c in children if b"s3cret" in (c / "cmdline").read_bytes()]
            done = flask_cli(stack, "create-account", "maker")
            assert done.returncode == 0, done.stderr
            maker = json.loads(done.stdout)
            taker = stack.create_account("taker")
            for who in (maker, taker):  # in both partitions
                fund(stack, who["account_id"])
            sock = Socket(stack)
            sock.send({"op": "subscribe", "channels": [f"trades:{SYM}", "trades:BTC-USDT"]})
            sock.until(lambda m: m.get("type") == "subscribed")
            trades = {}
            for symbol in (SYM, "BTC-USDT"):  # one per partition
                for who, side in ((maker, "sell"), (taker, "buy")):
                    body = {"symbol": symbol, "side": side, "price": "100", "quantity": "0.1"}
                    resp = requests.post(stack.url + "/api/v1/orders", json=body, timeout=10,
                                         headers={"X-API-Key": who["api_key"]})  # fmt: skip
                    assert resp.status_code == 201, resp.text
                assert resp.json()["status"] == "filled"
            for _ in range(2):
                trade = sock.until(lambda m: m.get("type") == "trade")
                trades[trade["channel"]] = trade["data"]
            assert set(trades) == {f"trades:{SYM}", "trades:BTC-USDT"}
            assert all(t["price"].startswith("100") for t in trades.values())
            sock.close()
            done = flask_cli(stack, "create-account", "ops", "--operator")
            ops = json.loads(done.stdout)["api_key"]
            health = requests.get(stack.url + "/healthz", headers={"X-API-Key": ops}, timeout=10)
            assert health.status_code == 200 and len(health.json()["partitions"]) == 2
            assert_replay_passes(stack)
    finally:
        server.stop()
        server.cleanup()


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (the openssl command line)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    folder.mkdir()
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr, ext = (folder / n for n in ("server.pem", "server.key", "server.csr", "ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "2", "-subj", "/CN=fairbook-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


def test_whole_stack_over_tls(tmp_path):
    """``rediss://`` in REDIS_URL: web, worker, CLI and replay all speak TLS (every one of
    their connections arrives on the TLS port; the plain port is only the test's own)."""
    ca, cert, key = _tls_files(tmp_path / "tls")
    tls_port = free_port()
    server = RedisServer(dir=tmp_path / "redis", extra_args=[
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"])  # fmt: skip
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    (tmp_path / "stack").mkdir()
    try:
        with Stack(redis_server=server, env={"REDIS_URL": url},
                   log_dir=tmp_path / "stack") as stack:  # fmt: skip
            done = flask_cli(stack, "create-account", "maker")
            assert done.returncode == 0, done.stderr
            maker = json.loads(done.stdout)
            taker = json.loads(flask_cli(stack, "create-account", "taker").stdout)
            # funded by the operators' CLI: it too speaks TLS, and waits for the worker's answer
            for who, asset, amount in ((maker, "ETH", "0.1"), (taker, "USDT", "10.01")):
                done = flask_cli(stack, "deposit", who["account_id"], asset, amount)
                assert done.returncode == 0, done.stderr
                transfer = json.loads(done.stdout)
                assert (transfer["status"], transfer["account_id"]) == ("completed",
                                                                        who["account_id"])
            sock = Socket(stack)
            sock.send({"op": "subscribe", "channels": [f"trades:{SYM}"]})
            sock.until(lambda m: m.get("type") == "subscribed")
            for who, side in ((maker, "sell"), (taker, "buy")):
                body = {"symbol": SYM, "side": side, "price": "100", "quantity": "0.1"}
                resp = requests.post(stack.url + "/api/v1/orders", json=body, timeout=10,
                                     headers={"X-API-Key": who["api_key"]})  # fmt: skip
                assert resp.status_code == 201, resp.text  # the reply came back over TLS
            assert resp.json()["status"] == "filled"
            assert sock.until(lambda m: m.get("type") == "trade")["data"]["price"].startswith("100")
            sock.close()
            plain = server.client(decode_responses=True)
            try:
                clients = [c for c in plain.client_list() if c["id"] != str(plain.client_id())]
            finally:
                plain.close()
            assert clients, "the web and the worker hold connections"
            assert {c["laddr"].rpartition(":")[2] for c in clients} == {str(tls_port)}
            assert_replay_passes(stack)
    finally:
        server.stop()
        server.cleanup()
