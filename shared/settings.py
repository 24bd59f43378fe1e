"""Collector settings: defaults < YAML file < environment (COLLECTOR_*) < CLI flags.

The YAML file is named by ``--config`` or ``COLLECTOR_CONFIG``. Environment variables use the
prefix ``COLLECTOR_`` and ``__`` between nesting levels, e.g. ``COLLECTOR_REDIS__URL`` or
``COLLECTOR_EXCHANGES__BINANCE__SYMBOLS='["BTC-USDT"]'``. CLI flags are passed as init values and
win over everything. Secrets (the Redis password) never appear in ``repr``/``str`` or in
:func:`format_config_error` output.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

from pydantic import (
    BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator,
)
from pydantic_settings import (
    BaseSettings,
    SettingsError,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from shared.symbols import is_canonical_symbol

#: every exchange name the project knows; each is a field of :class:`ExchangesSettings`.
EXCHANGE_NAMES: tuple[str, ...] = (
    "binance", "okx", "bybit", "deribit", "coinbase", "kraken", "kucoin",
    "gate", "bitget", "htx", "mexc", "bingx", "phemex", "whitebit",
)

_NODE_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _default_run_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"collector-{os.getuid()}"


#: query parameters a Redis URL may carry (redis-py's names; read by collector.redis_writer)
REDIS_URL_PARAMS: tuple[str, ...] = ("db", "ssl_ca_certs", "ssl_cert_reqs", "ssl_check_hostname", "ssl_certfile",
                                     "ssl_keyfile")


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    #: overrides a password given in the URL
    password: SecretStr | None = None
    #: a file whose first line is the password (e.g. a systemd credential or docker secret)
    password_file: Path | None = None
    connect_timeout: float = Field(5.0, gt=0)
    socket_timeout: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("has no host")
        # a mistyped parameter would be ignored, and ssl_* on redis:// would quietly mean plaintext
        for key, values in parse_qs(parts.query, keep_blank_values=True).items():
            if key == "ssl_cert_reqs" and values[-1].lower() not in ("none", "optional", "required"):
                raise ValueError("ssl_cert_reqs must be none, optional or required")
            if key not in REDIS_URL_PARAMS:
                raise ValueError(f"unknown URL parameter {key[:40]!r} (known: {', '.join(REDIS_URL_PARAMS)})")
            if key.startswith("ssl_") and parts.scheme != "rediss":
                raise ValueError(f"URL parameter {key!r} needs a rediss:// URL (TLS)")
        return v

    def resolved_password(self) -> str | None:
        """Password from password_file, else `password`, else the URL."""
        if self.password_file is not None:
            try:
                return self.password_file.read_text().splitlines()[0].strip() or None
            except (OSError, IndexError) as exc:
                raise ValueError(f"redis.password_file: cannot read ({exc.__class__.__name__})") from None
        if self.password is not None:
            return self.password.get_secret_value()
        pw = urlsplit(self.url).password
        return unquote(pw) if pw else None

    def connection_url(self) -> str:
        """The URL with the resolved password put in (for clients only; never log it)."""
        pw = self.resolved_password()
        parts = urlsplit(self.url)
        if parts.scheme == "unix" or pw is None:
            return self.url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{quote(user, safe='')}:{quote(pw, safe='')}@{host}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def redacted_url(self) -> str:
        """The URL safe to print: any password replaced by ***."""
        return redact_url(self.url)

    def __repr_args__(self):  # keep the URL's password out of repr()
        for k, v in super().__repr_args__():
            yield (k, redact_url(v) if k == "url" else v)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


#: exchanges with market data only (no listings source)
MARKET_DATA_ONLY: tuple[str, ...] = ("deribit",)
#: market-data types a worker can collect (``channels``); each exchange supports a subset
#: (``agg_trade``: Binance spot ``@aggTrade`` only)
MD_CHANNELS: tuple[str, ...] = (
    "trade", "agg_trade", "book", "bbo", "ticker", "kline", "funding", "open_interest", "liquidation", "long_short",
    "volatility_index",
)
#: markets the market-data settings can select (``markets``)
MD_MARKETS: tuple[str, ...] = ("spot", "perp")
#: kline intervals in our spelling (an exchange supports a subset)
KLINE_INTERVALS: tuple[str, ...] = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h",
                                    "1d", "3d", "1w", "1M")
#: long/short ratio sample periods (an exchange supports a subset)
LONG_SHORT_PERIODS: tuple[str, ...] = ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")


def _subset(v: list[str] | None, known: tuple[str, ...], what: str) -> list[str] | None:
    if v is None:
        return None
    bad = [x for x in v if x not in known]
    if bad:
        raise ValueError(f"unknown {what} {', '.join(repr(str(b)[:20]) for b in bad[:5])} "
                         f"(known: {', '.join(known)})")
    return list(dict.fromkeys(v))


class ExchangeSettings(_Section):
    """One exchange's worker. The same keys exist for every exchange name."""

    enabled: bool = False
    #: replaces scheme, host and port of every REST request this exchange's worker makes
    rest_url: str | None = None
    #: replaces scheme, host and port of every WebSocket connection this worker opens
    ws_url: str | None = None
    #: canonical BASE-QUOTE symbols whose market data is collected
    symbols: list[str] = Field(default_factory=list)
    #: instruments poll interval for listing detection, seconds
    poll_interval: float = Field(5.0, ge=0.05, le=3600)
    #: up to this fraction of poll_interval is taken off each wait at random (never added)
    poll_jitter: float = Field(0.1, ge=0, le=0.5)
    listings: bool = True
    #: also listen to the exchange's instrument push channel where it has one (OKX `instruments`,
    #: Binance USDⓈ-M `!contractInfo`), beside polling
    listing_push: bool = True
    #: a pushed status outranks a disagreeing instruments poll for this long, seconds (REST lists lag)
    listing_push_grace: float = Field(30.0, ge=0, le=3600)
    trades: bool = True
    #: no message on a WebSocket connection for this long -> reconnect (counted)
    stale_timeout: float = Field(60.0, gt=0)
    #: streams per WebSocket connection (Binance allows 1024)
    max_streams_per_connection: int = Field(200, ge=1, le=1024)
    #: reconnect proactively (with overlap) before the exchange's forced cut, seconds
    max_connection_age: float = Field(23.5 * 3600, gt=0)
    #: outgoing WebSocket messages per second per connection (Binance counts pings and pongs: 5/s)
    ws_send_rate: float = Field(4.0, gt=0)
    reconnect_initial: float = Field(1.0, gt=0)
    reconnect_max: float = Field(60.0, gt=0)
    rest_timeout: float = Field(10.0, gt=0)
    rest_max_retries: int = Field(3, ge=0, le=10)
    breaker_threshold: int = Field(5, ge=1)
    breaker_recovery: float = Field(300.0, gt=0)
    #: Node A tier put on this exchange's listing events; None = shared.exchanges' default
    tier: int | None = Field(None, ge=1, le=9)
    #: Node A score weight put on this exchange's listing events; None = shared.exchanges' default
    score_weight: float | None = Field(None, gt=0, le=100)
    #: a symbol must be missing from this many consecutive full instrument lists before `delisting`
    delist_confirm_polls: int = Field(3, ge=1, le=10_000)
    #: a full list missing more than this fraction of a market's known, not-delisted symbols is
    #: treated as truncated (an outage): no symbol's missing count advances
    delist_max_fraction: float = Field(0.1, gt=0, le=1)

    # ---- market data (issue 4): off by default, so listing-only deployments are unchanged ----
    #: collect the market-data channels below for ``symbols`` (trades then come from the
    #: market-data feeds, on every selected market, instead of the spot trade stream)
    market_data: bool = False
    #: data types to collect; None = every type the exchange supports (see MD_CHANNELS). The
    #: ``trade`` and ``agg_trade`` channels also need ``trades: true``
    channels: list[str] | None = None
    #: markets to collect (spot, perp); None = every market the exchange has market data for
    markets: list[str] | None = None
    kline_intervals: list[str] = Field(default_factory=lambda: ["1m", "5m", "1h"])
    #: price levels per side kept in each local order book
    book_depth: int = Field(1000, ge=1, le=5000)
    #: levels per side in published ``book`` events (at most book_depth)
    book_top_n: int = Field(20, ge=1, le=1000)
    #: seconds between ``book`` publishes of a changed book
    book_publish_interval: float = Field(1.0, ge=0.01, le=3600)
    #: top: periodic top-N ``book`` events; delta: every applied update as ``book_delta``; both
    book_mode: Literal["top", "delta", "both"] = "top"
    #: the first book comes over the WebSocket; false = from REST with buffered updates (OKX, after
    #: it withdraws the WS snapshot)
    book_ws_snapshot: bool = True
    #: open-interest and long/short REST polls, seconds
    rest_poll_interval: float = Field(60.0, ge=1, le=86400)
    long_short_period: str = "5m"
    #: a subscription acknowledged (or just sent) that brings no data within this many seconds is a
    #: failure: resubscribed alone (3 in a row reconnect its connection)
    subscribe_timeout: float = Field(30.0, gt=0, le=3600)
    #: a subscription (with periodic data) silent this long is a failure, handled as above
    stream_stale_timeout: float = Field(60.0, gt=0, le=86400)
    #: after a WebSocket reconnect, fetch the trades missed meanwhile from the exchange's REST
    #: trade history (a ``trade_gap`` marker where it cannot)
    trade_gap_fill: bool = True
    #: REST pages fetched per gap at most (then a ``trade_gap`` marker covers the rest); 40 pages of
    #: 1000 cover a 25 s outage of a symbol trading 1500/s
    gap_fill_max_pages: int = Field(40, ge=1, le=1000)
    #: while a symbol's gap is being filled (or, at worker start, while the resume point from Redis
    #: is awaited) its live trades are held back so the tape stays in id order: at most this many
    #: trades per symbol ...
    gap_hold_max_trades: int = Field(20_000, ge=0, le=1_000_000)
    #: ... and at most this many seconds; beyond either bound a ``trade_gap`` marker covers what is
    #: not filled yet and the held trades go out (0 trades = never hold: fills follow live trades)
    gap_hold_seconds: float = Field(10.0, gt=0, le=300)

    @field_validator("rest_url", "ws_url")
    @classmethod
    def _check_base(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
            raise ValueError("must be scheme://host[:port], e.g. http://127.0.0.1:8900")
        return v

    @field_validator("symbols")
    @classmethod
    def _check_symbols(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not is_canonical_symbol(s)]
        if bad:
            raise ValueError(f"not canonical BASE-QUOTE symbols: {', '.join(repr(b[:40]) for b in bad[:5])}")
        return list(dict.fromkeys(v))

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, v: list[str] | None) -> list[str] | None:
        return _subset(v, MD_CHANNELS, "channel")

    @field_validator("markets")
    @classmethod
    def _check_markets(cls, v: list[str] | None) -> list[str] | None:
        v = _subset(v, MD_MARKETS, "market")
        if v is not None and not v:
            raise ValueError("must name at least one market (or be left out for all)")
        return v

    @field_validator("kline_intervals")
    @classmethod
    def _check_intervals(cls, v: list[str]) -> list[str]:
        return _subset(v, KLINE_INTERVALS, "kline interval") or []

    @field_validator("long_short_period")
    @classmethod
    def _check_period(cls, v: str) -> str:
        if v not in LONG_SHORT_PERIODS:
            raise ValueError(f"must be one of {', '.join(LONG_SHORT_PERIODS)}")
        return v

    @field_validator("book_top_n")
    @classmethod
    def _check_top_n(cls, v: int, info: ValidationInfo) -> int:
        depth = info.data.get("book_depth")
        if isinstance(depth, int) and v > depth:
            raise ValueError(f"must not exceed book_depth ({depth})")
        return v

    def md_channels(self, supported: tuple[str, ...] | frozenset[str]) -> list[str]:
        """The channels to collect on an exchange supporting ``supported`` (the trade tapes, ``trade``
        and ``agg_trade``, need trades)."""
        wanted = self.channels if self.channels is not None else list(MD_CHANNELS)
        return [c for c in wanted if c in supported and (c not in ("trade", "agg_trade") or self.trades)]


class BinanceSettings(ExchangeSettings):
    enabled: bool = True
    symbols: list[str] = Field(default_factory=lambda: ["BTC-USDT", "ETH-USDT"])


class ExchangesSettings(_Section):
    binance: BinanceSettings = Field(default_factory=BinanceSettings)
    okx: ExchangeSettings = Field(default_factory=ExchangeSettings)
    bybit: ExchangeSettings = Field(default_factory=ExchangeSettings)
    deribit: ExchangeSettings = Field(default_factory=ExchangeSettings)
    coinbase: ExchangeSettings = Field(default_factory=ExchangeSettings)
    kraken: ExchangeSettings = Field(default_factory=ExchangeSettings)
    kucoin: ExchangeSettings = Field(default_factory=ExchangeSettings)
    gate: ExchangeSettings = Field(default_factory=ExchangeSettings)
    bitget: ExchangeSettings = Field(default_factory=ExchangeSettings)
    htx: ExchangeSettings = Field(default_factory=ExchangeSettings)
    mexc: ExchangeSettings = Field(default_factory=ExchangeSettings)
    bingx: ExchangeSettings = Field(default_factory=ExchangeSettings)
    phemex: ExchangeSettings = Field(default_factory=ExchangeSettings)
    whitebit: ExchangeSettings = Field(default_factory=ExchangeSettings)

    def enabled(self) -> dict[str, ExchangeSettings]:
        return {name: getattr(self, name) for name in EXCHANGE_NAMES if getattr(self, name).enabled}


class ChannelSettings(_Section):
    """Worker -> publisher channel (one Unix-socket connection per worker)."""

    batch_size: int = Field(100, ge=1, le=10000)
    #: a partial batch is sent after this long, seconds
    flush_interval: float = Field(0.005, gt=0, le=1)
    #: batches a worker holds while the publisher is slow or away; beyond it batches are dropped
    max_queued_batches: int = Field(2000, ge=1)
    #: how long the event loop may wait for room before dropping, seconds
    put_timeout: float = Field(0.05, ge=0, le=5)
    #: batches written to the publisher but not yet acknowledged (in Redis) that a worker keeps
    #: to send again after a publisher restart; at the bound it stops sending (backpressure)
    max_unacked_batches: int = Field(1000, ge=1)
    max_unacked_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)


#: MAXLEN per stream class: the high-rate types keep ~100k entries, snapshots-like types (one
#: ``book`` top per symbol per second, klines, tickers, statistics) fewer. ``book_gap`` markers are
#: XADDed into the book AND book_delta streams, so they get the larger of the two (a marker must
#: never trim a delta stream below its own MAXLEN).
DEFAULT_MAXLEN: dict[str, int] = {
    "default": 100_000, "listing": 100_000, "trade": 100_000, "agg_trade": 100_000, "trade_gap": 100_000,
    "book": 10_000, "book_delta": 100_000,
    "book_gap": 100_000, "bbo": 100_000, "ticker": 10_000, "kline": 10_000, "funding": 10_000,
    "open_interest": 10_000, "liquidation": 10_000, "long_short": 10_000, "volatility_index": 10_000,
}


class PublisherSettings(_Section):
    dedup_window: float = Field(300.0, gt=0)
    dedup_max_keys: int = Field(2_000_000, ge=1000)
    #: events per second per stream class; 0 or absent = unlimited
    rate_limits: dict[str, float] = Field(default_factory=lambda: {"listing": 100.0})
    #: MAXLEN ~ per stream class; "default" for classes not named. Keys given in the config replace
    #: these defaults one by one (the others stay)
    maxlen: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_MAXLEN))
    #: events held while Redis is unreachable; beyond it new events are dropped and counted
    buffer_max_events: int = Field(500_000, ge=100)
    #: XADDs per pipelined round trip
    pipeline_max: int = Field(1000, ge=1, le=100_000)
    heartbeat_interval: float = Field(30.0, gt=0)
    heartbeat_ttl: int = Field(120, ge=1)
    #: Redis reconnect backoff, seconds
    retry_initial: float = Field(0.1, gt=0)
    retry_max: float = Field(5.0, gt=0)
    #: seconds a producer's batch watermark (``pub:wm:{node_id}:{producer}``) outlives its last
    #: write: long enough for any re-send of its batches, short enough that dead producers go away
    producer_ttl: int = Field(86400, ge=60)
    #: seconds a stream's monotonic-id high-watermark (``pub:hwm:{stream}``) outlives its last write
    hwm_ttl: int = Field(86400, ge=60)
    #: HA pairs: deduplicate events WITHOUT a monotonic id (Bybit and Deribit trades, OKX and Bybit
    #: book updates, tickers, klines, ...) in Redis too, by their natural key (``SET pub:dd:{key}
    #: NX EX dedup_window`` in the apply script), so two nodes write each once. Costs Redis one
    #: small key per such event for ``dedup_window`` seconds (~100 B x events/s x window)
    cross_node_dedup: bool = False
    # ---- disk spool (collector/spool.py): events beyond the in-memory buffer while Redis is down ----
    spool_enabled: bool = True
    #: None = <run_dir>/<node_id>.spool (Settings.spool_directory); put it on a persistent disk
    #: in production (the default run dir may be a tmpfs, wiped at reboot)
    spool_dir: Path | None = None
    #: bound of the spool on disk; beyond it events are dropped and counted
    spool_max_bytes: int = Field(1024 ** 3, ge=1024 ** 2)
    #: segment file size (capped at spool_max_bytes); one record (a part of up to 1000 events)
    #: must fit in a segment
    spool_segment_bytes: int = Field(16 * 1024 ** 2, ge=64 * 1024, le=1024 ** 3)
    #: always: fsync before a record counts as durable; interval: every spool_fsync_interval_ms;
    #: never: left to the OS (survives a process crash, not a power loss)
    spool_fsync: Literal["always", "interval", "never"] = "interval"
    spool_fsync_interval_ms: int = Field(200, ge=1, le=60_000)

    @field_validator("spool_segment_bytes")
    @classmethod
    def _check_segment(cls, v: int, info: ValidationInfo) -> int:
        bound = info.data.get("spool_max_bytes")
        if isinstance(bound, int) and v > bound:
            raise ValueError(f"must not exceed spool_max_bytes ({bound})")
        return v

    @field_validator("maxlen")
    @classmethod
    def _merge_maxlen(cls, v: dict[str, int]) -> dict[str, int]:
        bad = [k for k, n in v.items() if not isinstance(n, int) or n < 1]
        if bad:
            raise ValueError(f"must be >= 1 (class {str(bad[0])[:32]!r})")
        return {**DEFAULT_MAXLEN, **v}


class SupervisorSettings(_Section):
    backoff_initial: float = Field(1.0, gt=0)
    backoff_max: float = Field(60.0, gt=0)
    #: a child RUNNING this long has its backoff reset
    stable_after: float = Field(60.0, gt=0)
    #: more than max_restarts crashes within restart_window seconds -> FATAL
    max_restarts: int = Field(5, ge=1)
    restart_window: float = Field(300.0, gt=0)
    #: a child that sends no readiness signal within this time is killed (counts as a crash)
    ready_timeout: float = Field(30.0, gt=0)
    sample_interval: float = Field(5.0, gt=0)
    max_rss_mb: float = Field(1024.0, gt=0)
    max_fds: int = Field(1024, ge=16)
    #: consecutive samples over a limit before a recycle
    over_limit_samples: int = Field(3, ge=1)
    #: graceful stop deadline for one child before SIGKILL, seconds
    stop_timeout: float = Field(10.0, gt=0)
    #: whole-collector graceful shutdown deadline, seconds (keep supervisord stopwaitsecs above it)
    shutdown_timeout: float = Field(30.0, gt=0)
    #: a child whose event loop has not beaten for this long is considered hung
    beat_timeout: float = Field(30.0, gt=0)
    #: a hung child is asked for a faulthandler stack dump (into its log), then SIGKILLed this
    #: many seconds later; 0 = SIGKILL at once, no dump
    hung_dump_grace: float = Field(0.5, ge=0, le=10)


class HttpSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8089, ge=0, le=65535)


class HealthSettings(_Section):
    #: an exchange with no data message for this long is degraded (the worker reconnects too)
    stale_after: float = Field(60.0, gt=0)
    #: Redis unreachable for this long -> unhealthy (shorter -> degraded)
    redis_unhealthy_after: float = Field(60.0, gt=0)


class TestingSettings(_Section):
    """Test hooks. Never set in production."""

    #: the worker of this exchange allocates memory forever (to exercise recycling)
    leak_exchange: str | None = None
    leak_mb_per_s: float = Field(0.0, ge=0)
    #: the worker of this exchange opens file descriptors forever
    fd_leak_exchange: str | None = None
    fd_leak_per_s: float = Field(0.0, ge=0)
    #: the worker of this exchange blocks its event loop (time.sleep forever inside a task)
    #: hang_after_s after it becomes ready, to exercise hung detection; with hang_once only its
    #: first process does (a marker file in run_dir), so the replacement runs normally
    hang_exchange: str | None = None
    hang_after_s: float = Field(2.0, ge=0)
    hang_once: bool = True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="COLLECTOR_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    node_id: str = "NODE_A"
    run_dir: Path = Field(default_factory=_default_run_dir)
    log_dir: Path | None = None  # default: <run_dir>/logs
    log_level: str = "INFO"
    log_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    log_backups: int = Field(5, ge=0)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    exchanges: ExchangesSettings = Field(default_factory=ExchangesSettings)
    channel: ChannelSettings = Field(default_factory=ChannelSettings)
    publisher: PublisherSettings = Field(default_factory=PublisherSettings)
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    testing: TestingSettings = Field(default_factory=TestingSettings)

    # set by settings_customise_sources' caller; not a setting
    _yaml_path: Path | None = None

    @field_validator("node_id")
    @classmethod
    def _check_node_id(cls, v: str) -> str:
        if not _NODE_ID_RE.fullmatch(v):
            raise ValueError("must be 1-64 characters from A-Z a-z 0-9 _ . -")
        return v

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        v = v.upper()
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return v

    @model_validator(mode="after")
    def _defaults(self) -> "Settings":
        if self.log_dir is None:
            object.__setattr__(self, "log_dir", self.run_dir / "logs")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_path = _CONFIG_PATH_OVERRIDE.get("path")
        if yaml_path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)

    # ---- derived paths (one place, so collectorctl and the collector agree) ----
    @property
    def control_socket(self) -> Path:
        return self.run_dir / f"{self.node_id}.ctl.sock"

    @property
    def publisher_socket(self) -> Path:
        return self.run_dir / f"{self.node_id}.pub.sock"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / f"{self.node_id}.lock"

    @property
    def spool_directory(self) -> Path:
        return self.publisher.spool_dir or self.run_dir / f"{self.node_id}.spool"

    def log_file(self, name: str) -> Path:
        assert self.log_dir is not None
        return self.log_dir / f"{name}.log"


# The YAML path for the next Settings() construction (pydantic-settings sources are built per class).
_CONFIG_PATH_OVERRIDE: dict[str, Path | None] = {"path": None}


class ConfigError(Exception):
    """A bad configuration; str() is one line naming the field, never a secret value."""


def load_settings(config_path: str | Path | None = None, **cli_overrides: Any) -> Settings:
    """Build Settings from YAML (``config_path`` or ``$COLLECTOR_CONFIG``), env and CLI overrides.

    ``cli_overrides`` are nested dicts or values, e.g. ``{"redis": {"url": ...}}``; None values
    are ignored. Raises :class:`ConfigError` with one clear line.
    """
    path = config_path or os.environ.get("COLLECTOR_CONFIG") or None
    yaml_path: Path | None = None
    if path:
        yaml_path = Path(path)
        if not yaml_path.is_file():
            raise ConfigError(f"config file {str(yaml_path)!r} does not exist or is not a file")
        try:
            import yaml

            loaded = yaml.safe_load(yaml_path.read_text())
        except Exception as exc:  # noqa: BLE001 - any YAML problem is a config error
            raise ConfigError(f"config file {str(yaml_path)!r} is not valid YAML: {exc.__class__.__name__}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(yaml_path)!r} must hold a mapping at the top level")
    overrides = _drop_none(cli_overrides)
    _CONFIG_PATH_OVERRIDE["path"] = yaml_path
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_config_error(exc)) from None
    except SettingsError as exc:
        raise ConfigError(_env_json_error() or f"config error: {exc}") from None
    finally:
        _CONFIG_PATH_OVERRIDE["path"] = None
    try:
        settings.redis.resolved_password()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for name in MARKET_DATA_ONLY:
        ex = getattr(settings.exchanges, name)
        if ex.enabled and not ex.market_data:
            # no listings source: its worker would have nothing to collect
            raise ConfigError(f"config error: exchanges.{name}.market_data: {name} has market data only "
                              f"(no listings); enabling it needs market_data: true and symbols")
    object.__setattr__(settings, "_yaml_path", yaml_path)
    return settings


def config_file_warnings(settings: Settings) -> list[str]:
    """Warnings about the config file itself (e.g. a password readable by others)."""
    out: list[str] = []
    path = getattr(settings, "_yaml_path", None)
    if path is None:
        return out
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError:
        return out
    if (mode & (stat.S_IRGRP | stat.S_IROTH)) and re.search(r"password|:[^/@\s]+@", text):
        out.append(f"config file {path} holds a password and is readable by others; chmod 600 it")
    return out


def format_config_error(exc: ValidationError) -> str:
    """One line per the first error: the dotted field and the message, never the input value."""
    errs = exc.errors(include_input=False, include_url=False)
    if not errs:
        return "invalid configuration"
    first = errs[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
    msg = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        msg = "unknown setting"
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"config error: {loc}: {msg}{more}"


def _env_json_error() -> str | None:
    """Name the COLLECTOR_* variable whose value should be JSON (a list or mapping) and is not."""
    import json
    import typing

    for name, value in sorted(os.environ.items()):
        if not name.startswith("COLLECTOR_"):
            continue
        path = name[len("COLLECTOR_"):].lower().split("__")
        model: Any = Settings
        annotation: Any = None
        for part in path:
            fields = getattr(model, "model_fields", None)
            if not fields or part not in fields:
                annotation = None
                break
            annotation = fields[part].annotation
            model = annotation
        origin = typing.get_origin(annotation)
        if origin in (list, dict):
            try:
                json.loads(value)
            except ValueError:
                kind = "list" if origin is list else "mapping"
                return f"config error: {'.'.join(path)}: {name} is not valid JSON (expected a JSON {kind})"
    return None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out
