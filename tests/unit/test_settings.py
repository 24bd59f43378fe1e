"""Settings precedence (YAML < env < CLI), the public env names, secrets, bad config."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import ConfigError, config_file_warnings, load_settings

PUBLIC_ENV = {
    "COLLECTOR_REDIS__URL": "redis://10.1.2.3:6390/2",
    "COLLECTOR_NODE_ID": "NODE_T",
    "COLLECTOR_EXCHANGES__BINANCE__ENABLED": "true",
    "COLLECTOR_EXCHANGES__BINANCE__REST_URL": "http://127.0.0.1:8900",
    "COLLECTOR_EXCHANGES__BINANCE__WS_URL": "ws://127.0.0.1:8900",
    "COLLECTOR_EXCHANGES__BINANCE__SYMBOLS": '["BTC-USDT","SOL-USDT"]',
    "COLLECTOR_EXCHANGES__BINANCE__POLL_INTERVAL": "0.5",
    "COLLECTOR_RUN_DIR": "/tmp/run-x",
    "COLLECTOR_LOG_DIR": "/tmp/log-x",
    "COLLECTOR_HTTP__PORT": "9123",
}


def test_public_env_names_work_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in PUBLIC_ENV.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert s.redis.url == "redis://10.1.2.3:6390/2"
    assert s.node_id == "NODE_T"
    b = s.exchanges.binance
    assert b.enabled is True
    assert b.rest_url == "http://127.0.0.1:8900"
    assert b.ws_url == "ws://127.0.0.1:8900"
    assert b.symbols == ["BTC-USDT", "SOL-USDT"]
    assert b.poll_interval == 0.5
    assert s.run_dir == Path("/tmp/run-x")
    assert s.log_dir == Path("/tmp/log-x")
    assert s.http.port == 9123
    assert s.control_socket == Path("/tmp/run-x/NODE_T.ctl.sock")


def test_every_exchange_takes_the_same_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import EXCHANGE_NAMES

    for name in EXCHANGE_NAMES:
        monkeypatch.setenv(f"COLLECTOR_EXCHANGES__{name.upper()}__REST_URL", f"http://127.0.0.1:9{len(name)}00")
        monkeypatch.setenv(f"COLLECTOR_EXCHANGES__{name.upper()}__POLL_INTERVAL", "2.5")
    s = load_settings()
    for name in EXCHANGE_NAMES:
        ex = getattr(s.exchanges, name)
        assert ex.rest_url == f"http://127.0.0.1:9{len(name)}00"
        assert ex.poll_interval == 2.5


def test_precedence_yaml_then_env_then_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "node_id: FROM_YAML\n"
        "http: {port: 7001}\n"
        "redis: {url: 'redis://yaml-host:6379/0'}\n"
        "exchanges:\n  binance:\n    poll_interval: 9\n    symbols: [XRP-USDT]\n"
    )
    s = load_settings(cfg)
    assert (s.node_id, s.http.port, s.exchanges.binance.poll_interval) == ("FROM_YAML", 7001, 9)
    assert s.exchanges.binance.symbols == ["XRP-USDT"]

    monkeypatch.setenv("COLLECTOR_HTTP__PORT", "7002")
    monkeypatch.setenv("COLLECTOR_CONFIG", str(cfg))
    s = load_settings()  # file named by COLLECTOR_CONFIG
    assert s.http.port == 7002          # env beats YAML
    assert s.node_id == "FROM_YAML"     # YAML kept where env is silent
    assert s.redis.url == "redis://yaml-host:6379/0"

    s = load_settings(None, http={"port": 7003}, node_id="FROM_CLI")
    assert s.http.port == 7003          # CLI beats env
    assert s.node_id == "FROM_CLI"
    assert s.exchanges.binance.poll_interval == 9  # deep merge keeps the rest


@pytest.mark.parametrize(
    "env, field",
    [
        ({"COLLECTOR_EXCHANGES__BINANCE__POLL_INTERVAL": "fast"}, "exchanges.binance.poll_interval"),
        ({"COLLECTOR_EXCHANGES__BINANCE__SYMBOLS": '["btcusdt"]'}, "exchanges.binance.symbols"),
        ({"COLLECTOR_EXCHANGES__BINANCE__SYMBOLS": "not json"}, "exchanges.binance.symbols"),
        ({"COLLECTOR_REDIS__URL": "http://x"}, "redis.url"),
        ({"COLLECTOR_NODE_ID": "bad id with spaces"}, "node_id"),
        ({"COLLECTOR_HTTP__PORT": "70000"}, "http.port"),
        ({"COLLECTOR_EXCHANGES__BINANCE__REST_URL": "ftp://x"}, "exchanges.binance.rest_url"),
    ],
)
def test_bad_config_names_the_field(monkeypatch: pytest.MonkeyPatch, env: dict, field: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as ei:
        load_settings()
    msg = str(ei.value)
    assert "\n" not in msg
    assert field in msg, msg


def test_unknown_yaml_key_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("exchanges:\n  binance:\n    poll_intervall: 3\n")
    with pytest.raises(ConfigError, match=r"exchanges\.binance\.poll_intervall: unknown setting"):
        load_settings(cfg)


def test_missing_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(lst)


def test_password_sources_and_never_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-Pa55-zz9"
    monkeypatch.setenv("COLLECTOR_REDIS__URL", f"redis://:{secret}@127.0.0.1:6379/0")
    s = load_settings()
    assert s.redis.resolved_password() == secret
    assert secret not in repr(s) and secret not in str(s)
    assert secret not in s.redis.redacted_url()
    assert secret in s.redis.connection_url()

    monkeypatch.setenv("COLLECTOR_REDIS__URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("COLLECTOR_REDIS__PASSWORD", secret)
    s = load_settings()
    assert s.redis.resolved_password() == secret
    assert secret not in repr(s)
    assert f":{secret}@" in s.redis.connection_url()

    pw_file = tmp_path / "pw"
    pw_file.write_text("from-file-pw\n")
    monkeypatch.setenv("COLLECTOR_REDIS__PASSWORD_FILE", str(pw_file))
    s = load_settings()
    assert s.redis.resolved_password() == "from-file-pw"

    monkeypatch.setenv("COLLECTOR_REDIS__PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="redis.password_file"):
        load_settings()


def test_bad_value_error_does_not_echo_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "UniqueSecretValue123"
    monkeypatch.setenv("COLLECTOR_REDIS__URL", f"http://:{secret}@host")
    with pytest.raises(ConfigError) as ei:
        load_settings()
    assert secret not in str(ei.value)


def test_config_file_with_password_readable_by_others_warns(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("redis:\n  password: hunter2\n")
    cfg.chmod(0o644)
    s = load_settings(cfg)
    warnings = config_file_warnings(s)
    assert warnings and "chmod 600" in warnings[0]
    assert "hunter2" not in warnings[0]
    cfg.chmod(0o600)
    assert config_file_warnings(load_settings(cfg)) == []


def test_settings_survive_pickling_for_spawned_children(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    monkeypatch.setenv("COLLECTOR_REDIS__PASSWORD", "pw-x")
    s = load_settings(node_id="PICK")
    s2 = pickle.loads(pickle.dumps(s))
    assert s2.node_id == "PICK" and s2.redis.resolved_password() == "pw-x"
    assert s2.log_dir == s.log_dir
