"""Security (issue 5 point 8) against real parts: the collector as a restricted Redis ACL user (the
line read from docs/security.md), `rediss://` to a TLS redis-server with certificates made by
openssl, the local surfaces (control socket mode, HTTP bind address and methods), hostile symbol
names from the simulator, oversized WebSocket frames and a world-readable config file."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import redis

from collector.simulator.client import SimulatorClient, start_simulator_process, stop_simulator_process
from tests.conftest import ROOT, RedisServer, base_env, free_port, wait_until
from tests.integration.harness import CollectorProcess, delivered_ids, trade_ids

pytestmark = pytest.mark.integration

DOC = ROOT / "docs" / "security.md"
BTC = "md:trade:binance:spot:BTC-USDT"

FAST = {
    "COLLECTOR_EXCHANGES__BINANCE__POLL_INTERVAL": "0.5",
    "COLLECTOR_PUBLISHER__HEARTBEAT_INTERVAL": "1",
    "COLLECTOR_PUBLISHER__RETRY_MAX": "0.5",
    "COLLECTOR_REDIS__CONNECT_TIMEOUT": "2",
    "COLLECTOR_SUPERVISOR__BACKOFF_INITIAL": "0.5",
    "COLLECTOR_SUPERVISOR__SAMPLE_INTERVAL": "0.5",
    "COLLECTOR_SUPERVISOR__STOP_TIMEOUT": "5",
    "COLLECTOR_SUPERVISOR__SHUTDOWN_TIMEOUT": "15",
}

#: every key the collector may create; anything else in Redis would come from outside this list
ALLOWED_KEY = re.compile(
    r"(md:[a-z0-9_]+:[a-z0-9_]+:[a-z0-9_]+:[A-Z0-9]{1,20}-[A-Z0-9]{1,20}"
    r"|events:raw"
    r"|known:(pairs|info|untraded):[a-z0-9_]{1,32}"
    r"|node:heartbeat:[A-Za-z0-9_.-]{1,64}"
    r"|pub:[\x21-\x7e]{1,600})\Z")


@pytest.fixture
def sim() -> Iterator[SimulatorClient]:
    proc, url = start_simulator_process()
    try:
        yield SimulatorClient(url)
    finally:
        stop_simulator_process(proc)


def acl_setuser_line() -> str:
    """The one ``ACL SETUSER collector ...`` line of docs/security.md (so docs and test agree)."""
    lines = [ln.strip() for ln in DOC.read_text().splitlines() if ln.strip().startswith("ACL SETUSER collector ")]
    assert len(lines) == 1, f"expected one ACL SETUSER line in {DOC}, found {len(lines)}"
    return lines[0]


def acl_setuser_args(password: str) -> list[str]:
    args = acl_setuser_line().split()
    pw_tokens = [i for i, a in enumerate(args) if a.startswith(">")]
    assert len(pw_tokens) == 1, "the documented line must set exactly one password"
    args[pw_tokens[0]] = ">" + password
    return args


def all_keys(r: redis.Redis) -> list[str]:
    return list(r.scan_iter(count=1000))


# ---------------------------------------------------------------------------------------- ACL user
def test_collector_runs_as_the_documented_acl_user_and_that_user_can_do_nothing_else(
        tmp_path: Path, short_tmp: Path, sim: SimulatorClient) -> None:
    srv = RedisServer(tmp_path / "redis").start()  # `default` stays open: it is the admin here
    try:
        _acl_scenario(srv, short_tmp, sim)
    finally:
        srv.kill()


def _acl_scenario(srv: RedisServer, short_tmp: Path, sim: SimulatorClient) -> None:
    admin = srv.client()
    password = "acl-" + secrets.token_hex(16)
    assert admin.execute_command(*acl_setuser_args(password)) in ("OK", True)
    admin.execute_command("ACL", "LOG", "RESET")
    c = CollectorProcess(short_tmp / "run", f"redis://collector:{password}@127.0.0.1:{srv.port}/0",
                         sim.base_url, **FAST)
    try:
        c.start()
        wait_until(lambda: admin.exists("known:pairs:binance"), what="listing state seeded as the ACL user")
        sim.add_symbol("ACLNEWUSDT", "ACLNEW", "USDT")
        sim.set_trade_rate(100, "BTCUSDT")
        wait_until(lambda: admin.xlen("events:raw") >= 1, what="listing event written as the ACL user")
        wait_until(lambda: admin.xlen(BTC) >= 50, what="trades written as the ACL user")
        wait_until(lambda: admin.exists("node:heartbeat:TEST_NODE"), what="heartbeat written as the ACL user")
        sim.set_trade_rate(0)
        want = wait_until(lambda: (ids := delivered_ids(sim, "BTCUSDT")) and admin.xlen(BTC) >= len(ids) and ids,
                          what="every delivered trade in Redis")
        ids = trade_ids(admin, BTC)
        assert len(ids) == len(set(ids)) and set(want) <= set(ids)
        (ev,) = [f for _, f in admin.xrange("events:raw")]
        assert (ev["native_symbol"], ev["event"]) == ("ACLNEWUSDT", "listing")
        # really that user: the collector's connections are `collector`; `default` is this test's
        by_user = Counter(cl["user"] for cl in admin.client_list())
        # (`default` is only this test's own admin connections: how many the client pool keeps open varies)
        assert by_user["collector"] >= 2 and set(by_user) == {"collector", "default"}, by_user
        # nothing the collector did was refused
        assert admin.execute_command("ACL", "LOG") == []
        pub = wait_until(lambda: (p := c.status()["publisher"])["errors"] is not None and p,
                         what="a publisher beat with its counters")
        assert pub["errors"] == 0 and pub["redis_errors"] == 0 and pub["redis"] == "up", pub
        assert c.stop() == 0
    finally:
        c.kill_tree()
    # the idempotent-apply script path (EVAL / SCRIPT LOAD / EVALSHA on pub:* keys) is allowed
    user = redis.Redis(host="127.0.0.1", port=srv.port, username="collector", password=password,
                       decode_responses=True)
    script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('XADD', KEYS[2], '*', 'v', ARGV[1])"
    sha = user.script_load(script)
    assert user.evalsha(sha, 2, "pub:wm:acl-test", "md:trade:acltest:spot:X-Y", "1")
    assert user.eval(script, 2, "pub:wm:acl-test", "md:trade:acltest:spot:X-Y", "2")
    # ... and the line restricts: administration, other keys, deletion, other commands in scripts
    refused = [
        ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("CONFIG", "SET", "appendonly", "no"),
        ("KEYS", "*"), ("DEL", BTC), ("XTRIM", BTC, "MAXLEN", "0"), ("SET", "other:key", "x"),
        ("GET", "other:key"), ("SCRIPT", "FLUSH"), ("CLIENT", "LIST"), ("ACL", "LIST"), ("SHUTDOWN",),
        ("SUBSCRIBE", "ch"), ("SET", "events:raw:x", "y"),
    ]
    for cmd in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.execute_command(*cmd)
    with pytest.raises(redis.exceptions.ResponseError, match="can't run this command"):
        user.eval("return redis.call('FLUSHALL')", 0)
    with pytest.raises(redis.exceptions.ResponseError):
        user.eval("return redis.call('SET', KEYS[1], 'x')", 1, "other:key")
    assert admin.xlen(BTC) == len(ids) and not admin.exists("other:key")
    assert len(admin.execute_command("ACL", "LOG")) > 0  # the refusals were logged: the log works
    user.close()


# ---------------------------------------------------------------------------------------- TLS
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated second CA."""
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other_ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-days", "2", "-subj", f"/CN=collector test {ca}", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return {n: d / f"{n}.pem" for n in ("ca", "other_ca", "server")} | {"server_key": d / "server.key"}


class TlsRedis:
    """redis-server with TLS only (``--port 0``), requirepass, no persistence."""

    def __init__(self, workdir: Path, certs: dict[str, Path], password: str) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server not installed"
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.certs = certs
        self.password = password
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(certs["server"]), "--tls-key-file", str(certs["server_key"]),
             "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no",
             "--requirepass", password, "--save", "", "--appendonly", "no", "--dir", str(workdir),
             "--logfile", str(workdir / "redis.log"), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._pingable, what="TLS redis-server up")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, ssl=True,
                           ssl_ca_certs=str(self.certs["ca"]), decode_responses=True, socket_timeout=5)

    def _pingable(self) -> bool:
        try:
            return bool(self.client().ping())
        except (redis.exceptions.RedisError, OSError):
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def test_rediss_with_verified_certificate_and_a_clear_error_for_the_wrong_ca(
        tmp_path: Path, short_tmp: Path, sim: SimulatorClient) -> None:
    certs = make_certs(tmp_path / "certs")
    password = "tls-" + secrets.token_hex(16)
    srv = TlsRedis(tmp_path / "redis", certs, password)
    try:
        _tls_scenario(srv, certs, password, short_tmp, sim)
    finally:
        srv.kill()


def _tls_scenario(srv: TlsRedis, certs: dict[str, Path], password: str, short_tmp: Path,
                  sim: SimulatorClient) -> None:
    from tests.integration.test_secrets import assert_secret_absent

    r = srv.client()
    env = {**FAST, "COLLECTOR_REDIS__PASSWORD": password}
    good = f"rediss://127.0.0.1:{srv.port}/0?ssl_ca_certs={certs['ca']}"
    c = CollectorProcess(short_tmp / "run", good, sim.base_url, **env)
    try:
        c.start()
        sim.set_trade_rate(100, "BTCUSDT")
        wait_until(lambda: r.xlen(BTC) >= 50, what="trades written over TLS")
        # the parent's view comes with the publisher's next beat (trades can be faster than that)
        wait_until(lambda: c.status()["publisher"]["redis"] == "up", what="publisher reports redis up")
        sim.set_trade_rate(0)
        assert c.stop() == 0
    finally:
        c.kill_tree()
    stored = r.xlen(BTC)

    # a CA that did not sign the server's certificate: no connection, a clear reason, no crash
    bad = f"rediss://127.0.0.1:{srv.port}/0?ssl_ca_certs={certs['other_ca']}"
    c = CollectorProcess(short_tmp / "run2", bad, sim.base_url, **env)
    try:
        c.start()
        sim.set_trade_rate(50, "BTCUSDT")
        pub = wait_until(lambda: (p := c.child("publisher")).get("last_error") and p,
                         what="certificate error in /status")
        assert "CERTIFICATE_VERIFY_FAILED" in pub["last_error"], pub["last_error"]
        assert pub["state"] == "RUNNING" and pub["restarts"] == 0
        health = c.http_json("/health")
        assert health["status"] in ("degraded", "unhealthy")
        assert any(reason.startswith("redis: down") for reason in health["reasons"])
        assert c.status()["publisher"]["redis"] == "down"
        time.sleep(1.0)  # several reconnect attempts: each fails the same way, nothing restarts
        st = c.status()
        assert all(ch["state"] == "RUNNING" and ch["restarts"] == 0 for ch in st["children"].values())
        assert r.xlen(BTC) == stored  # nothing went around the failed verification
        sim.set_trade_rate(0)
        assert_secret_absent(c, password, extra={"/health": c.http("/health")[1].decode()})
    finally:
        c.kill_tree()


def test_tls_parameters_on_a_plain_url_or_unknown_ones_are_config_errors(short_tmp: Path) -> None:
    for url, needle in (("redis://127.0.0.1:6379/0?ssl_ca_certs=/etc/ca.pem", "needs a rediss:// URL"),
                        ("rediss://127.0.0.1:6379/0?ssl_ca_cert=/etc/ca.pem", "unknown URL parameter 'ssl_ca_cert'"),
                        ("rediss://127.0.0.1:6379/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be none, optional or")):
        env = base_env(short_tmp / "run", url)
        res = subprocess.run([sys.executable, "-m", "collector", "run"], env=env, capture_output=True,
                             text=True, timeout=30)
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("config error: redis.url:") and needle in res.stderr, res.stderr


# ---------------------------------------------------------------------------------------- local surfaces
def test_control_socket_0600_http_on_loopback_and_read_only(short_tmp: Path, redis_server, sim,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.http import make_app
    from shared.settings import load_settings

    for k in list(os.environ):
        if k.startswith("COLLECTOR_"):
            monkeypatch.delenv(k)
    assert load_settings().http.host == "127.0.0.1"  # the built-in default

    class _NoSource:  # only to list the routes the app registers
        def status(self) -> dict:
            return {}

        def metrics_snapshot(self) -> dict:
            return {}

    routes = {(res.canonical, route.method) for res in make_app(_NoSource()).router.resources() for route in res}
    assert routes == {("/health", "GET"), ("/status", "GET"), ("/metrics", "GET")}

    c = CollectorProcess(short_tmp / "run", redis_server.url, sim.base_url, **FAST)
    assert not any(k == "COLLECTOR_HTTP__HOST" for k in c.env)  # the default bind address is used
    try:
        c.start()
        sock = Path(c.env["COLLECTOR_RUN_DIR"]) / "TEST_NODE.ctl.sock"
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(c.run_dir).st_mode) == 0o700
        listening = [conn.laddr for conn in psutil.Process(c.proc.pid).net_connections(kind="inet")
                     if conn.status == psutil.CONN_LISTEN]
        assert listening and {a.ip for a in listening} == {"127.0.0.1"}
        assert {a.port for a in listening} == {c.http_port}

        def snapshot() -> dict:
            return {n: (ch["pid"], ch["state"], ch["restarts"]) for n, ch in c.status()["children"].items()}

        before = snapshot()
        body = b'{"cmd":"stop","args":{"name":"binance"}}'
        for path, _ in sorted(routes):
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                req = urllib.request.Request(f"http://127.0.0.1:{c.http_port}{path}", data=body, method=method,
                                             headers={"Content-Type": "application/json"})
                with pytest.raises(urllib.error.HTTPError) as err:
                    urllib.request.urlopen(req, timeout=5)
                assert err.value.code == 405, (method, path)
        for path in ("/stop", "/restart/binance", "/"):
            req = urllib.request.Request(f"http://127.0.0.1:{c.http_port}{path}", data=body, method="POST")
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=5)
            assert err.value.code == 404, path
        assert snapshot() == before
        assert all(state == "RUNNING" for _, state, _ in before.values())
        assert c.ctl("status").returncode == 0
        assert c.stop() == 0
    finally:
        c.kill_tree()


# ---------------------------------------------------------------------------------------- hostile symbols
#: (native symbol, base asset, quote asset) rows an exchange could list; each must be rejected
HOSTILE_ROWS = [
    ("EVIL*USDT", "EVIL*", "USDT"),
    ("*", "*", "USDT"),
    ("EVIL USDT", "EVIL ", "USDT"),
    ("EVIL\nUSDT", "EVIL\n", "USDT"),
    ("{EVIL}USDT", "{EVIL}", "USDT"),
    ("EVIL" + "A" * 10_000 + "USDT", "EVIL" + "A" * 10_000, "USDT"),
    ("ÉVILUSDT", "ÉVIL", "USDT"),
    ("ＥＶＩＬUSDT", "ＥＶＩＬ", "USDT"),
    # a safe native name whose parts are not: a unicode look-alike must not pass for BIT / SOL
    ("BITUSDT", "bıt", "USDT"),
    ("SOLUSDT", "ſol", "USDT"),
    ("EVILCURLYUSDT", "EVIL{CURLY}", "USDT"),
]
HOSTILE_FRAGMENTS = ("EVIL", "*", " ", "\n", "{", "}", "ı", "ſ")


def test_hostile_symbols_are_rejected_counted_and_never_reach_redis(short_tmp: Path, redis_server, sim) -> None:
    r = redis_server.client()
    c = CollectorProcess(short_tmp / "run", redis_server.url, sim.base_url, **FAST)
    try:
        c.start()
        wait_until(lambda: r.exists("known:pairs:binance"), what="listing state seeded")
        sim.set_trade_rate(100, "BTCUSDT")
        for native, base, quote in HOSTILE_ROWS:
            sim.add_symbol(native, base, quote, market="spot")
            sim.add_symbol(native, base, quote, status="PENDING_TRADING", market="usdm")  # also pushed
        sim.add_symbol("GOODUSDT", "GOOD", "USDT")
        wait_until(lambda: any(f["native_symbol"] == "GOODUSDT" for _, f in r.xrange("events:raw")),
                   what="the valid listing next to the hostile ones")
        # both markets' polls (and the USDⓈ-M push) have seen every hostile row at least once
        wait_until(lambda: c.child("binance").get("rejected", 0) >= 3 * len(HOSTILE_ROWS), timeout=15,
                   what="hostile rows counted as rejected")
        wait_until(lambda: r.xlen(BTC) >= 100, what="trades flowing beside the hostile listings")
        sim.set_trade_rate(0)
        w = c.child("binance")
        assert w["state"] == "RUNNING" and w["restarts"] == 0

        keys = all_keys(r)
        bad_keys = [k[:80] for k in keys if not ALLOWED_KEY.match(k)]
        assert not bad_keys, f"keys outside the naming scheme: {bad_keys}"
        for k in keys:
            assert k.isascii() and not any(f in k for f in HOSTILE_FRAGMENTS), k[:80]
        # not in a hash field or event either: the rows were rejected whole
        for k in keys:
            kind = r.type(k)
            if kind == "hash":
                text = repr(r.hgetall(k))
            elif kind == "set":
                text = repr(r.smembers(k))
            elif kind == "stream":
                text = repr(r.xrange(k)) if k == "events:raw" else ""
            else:
                text = ""
            for frag in ("EVIL", "ı", "ſ", "ÉVIL", "ＥＶＩＬ"):
                assert frag not in text, (k, frag)
        pairs = r.hgetall("known:pairs:binance")
        assert "spot:GOODUSDT" in pairs and "spot:BITUSDT" not in pairs and "spot:SOLUSDT" not in pairs
        listed = [(f["native_symbol"], f["event"]) for _, f in r.xrange("events:raw")]
        assert listed == [("GOODUSDT", "listing")]
        assert c.stop() == 0
    finally:
        c.kill_tree()


# ---------------------------------------------------------------------------------------- frame limits
def test_oversized_frame_costs_one_reconnect_and_no_trade(short_tmp: Path, redis_server, sim) -> None:
    r = redis_server.client()
    c = CollectorProcess(short_tmp / "run", redis_server.url, sim.base_url, **FAST)

    def all_delivered_stored() -> list[int]:
        return wait_until(lambda: (ids := delivered_ids(sim, "BTCUSDT")) and r.xlen(BTC) >= len(ids) and ids,
                          what="every delivered trade in Redis")

    try:
        c.start()
        wait_until(lambda: c.child("binance").get("connection") == "connected"
                   and sim.stats()["connections"]["open"] >= 1, what="binance WS connected")
        sim.set_trade_rate(100, "BTCUSDT")
        wait_until(lambda: r.xlen(BTC) >= 30, what="trades flowing")
        # no trade in flight behind the bad frame: trades the exchange sends after it on the same
        # connection die with it (refilling those from REST is the gap filler's job, not this test's)
        sim.set_trade_rate(0)
        all_delivered_stored()
        before = c.child("binance")
        # 5 MiB of JSON in one frame, over the 4 MiB limit
        sent = sim.send_malformed(kinds=["oversized"], size=5 * 1024 * 1024)
        assert sent["connections"] >= 1
        wait_until(lambda: c.child("binance")["ws_reconnects"] > before["ws_reconnects"], timeout=15,
                   what="the oversized frame closed the connection and it was reopened")
        wait_until(lambda: c.child("binance").get("connection") == "connected", what="reconnected")
        n = r.xlen(BTC)
        sim.set_trade_rate(100, "BTCUSDT")
        wait_until(lambda: r.xlen(BTC) >= n + 50, timeout=15, what="trades again after the reconnect")
        # garbage and a truncated JSON document between good frames: skipped, counted, no reconnect
        sim.send_malformed(kinds=["garbage", "truncated"], count=3)
        time.sleep(0.5)
        sim.set_trade_rate(0)
        want = all_delivered_stored()
        ids = trade_ids(r, BTC)
        assert len(ids) == len(set(ids)) and set(want) <= set(ids)  # nothing lost, nothing twice
        after = c.child("binance")
        assert after["parse_errors"] >= before["parse_errors"] + sent["connections"] + 6
        # one reconnect per connection that got the frame (the trade stream and the listing push)
        assert after["ws_reconnects"] == before["ws_reconnects"] + sent["connections"]
        assert after["state"] == "RUNNING" and after["restarts"] == 0 and after["pid"] == before["pid"]
        assert c.stop() == 0
    finally:
        c.kill_tree()


def test_rest_body_over_the_limit_is_a_counted_error_and_the_client_goes_on(sim: SimulatorClient) -> None:
    """The worker's REST client against the simulator's exchangeInfo: a body over ``max_body`` is
    refused (counted, never parsed); a body within it is read as usual by the same client."""
    import asyncio

    from shared.settings import load_settings
    from workers.transport.rest import RestClient, RestHttpError

    cfg = load_settings(exchanges={"binance": {"rest_url": sim.base_url}}).exchanges.binance

    async def scenario() -> None:
        size = len(urllib.request.urlopen(sim.base_url + "/api/v3/exchangeInfo", timeout=5).read())
        small = RestClient("binance", cfg, max_body=size - 1)
        big = RestClient("binance", cfg, max_body=size)
        try:
            with pytest.raises(RestHttpError, match="exceeds"):
                await small.get_json("https://api.binance.com/api/v3/exchangeInfo")
            assert small.stats()["rest_errors"] == 1
            resp = await big.get_json("https://api.binance.com/api/v3/exchangeInfo")
            assert resp.status == 200 and isinstance(resp.body["symbols"], list)
            assert big.stats()["rest_errors"] == 0
            sim.add_symbol("LONGNAMEUSDT", "LONGNAME", "USDT")  # the body grows past the limit
            with pytest.raises(RestHttpError, match="exceeds"):
                await big.get_json("https://api.binance.com/api/v3/exchangeInfo")
            assert big.stats()["rest_errors"] == 1
        finally:
            await small.close()
            await big.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------- config file
def test_world_readable_config_with_a_password_warns_at_startup(short_tmp: Path, redis_server) -> None:
    password = "cfg-" + secrets.token_hex(12)
    cfg = short_tmp / "collector.yaml"
    cfg.write_text(f"redis:\n  url: redis://127.0.0.1:{redis_server.port}/0\n  password: {password}\n"
                   "exchanges:\n  binance:\n    enabled: true\n    rest_url: http://127.0.0.1:9\n"
                   "    ws_url: ws://127.0.0.1:9\n")
    results = {}
    for mode in (0o644, 0o600):
        cfg.chmod(mode)
        env = base_env(short_tmp / f"run{mode:o}", "redis://127.0.0.1:1/0", COLLECTOR_CONFIG=str(cfg),
                       COLLECTOR_HTTP__PORT=str(free_port()))
        del env["COLLECTOR_REDIS__URL"]  # the file's URL, not base_env's
        proc = subprocess.Popen([sys.executable, "-m", "collector", "run"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            wait_until(lambda: (short_tmp / f"run{mode:o}" / "NODE_A.ctl.sock").exists(), timeout=20,
                       what="collector started")
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=40)
        results[mode] = (proc.returncode, err)
    rc, err = results[0o644]
    assert rc == 0
    assert f"warning: config file {cfg} holds a password and is readable by others; chmod 600 it" in err
    assert password not in err
    rc, err = results[0o600]
    assert rc == 0 and "readable by others" not in err
