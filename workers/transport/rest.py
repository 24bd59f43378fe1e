"""One REST client per exchange worker: budget, pauses, retries and a circuit breaker, once.

Per call (:meth:`RestClient.get_json`), in this order:
1. circuit breaker: OPEN -> refused at once (:class:`CircuitOpenError`), no request;
2. a ban in force (418, or the adapter's ban status) -> refused at once (:class:`RestBanned`), no request;
3. a 429 pause in force -> wait until it ends (every caller of this exchange waits);
4. weight budget: if this request would take the window's used weight past ``budget_fraction``
   of the limit, wait for the next window (the used weight comes from the exchange's header,
   e.g. Binance ``X-MBX-USED-WEIGHT-1M``, which counts the whole IP, not just us);
5. the request, total timeout ``rest_timeout``; then by outcome:
   2xx -> parse JSON (invalid -> :class:`RestInvalidJson`, no retry);
   429 -> pause ALL requests until Retry-After, then retry; a ban status (``ban_statuses``,
   the adapter's ``rest_ban_statuses``: Binance 418, Bybit 403 "access too frequent") -> no
   request at all until Retry-After (else that status's default: Binance 120 s, Bybit 600 s),
   error logged, no retry; 5xx, timeouts, connection errors -> retry with backoff (1 s, 2 s, ...
   with jitter) up to ``rest_max_retries``; other 4xx -> no retry.
A call that ends in an error counts as one failure for the breaker (a refused call does not).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import aiohttp
import orjson

from shared.backoff import Backoff
from shared.settings import ExchangeSettings

from .breaker import CircuitBreaker
from .urls import override_base

log = logging.getLogger(__name__)

#: Retry-After values are clamped to this (Binance bans escalate up to 3 days)
MAX_RETRY_AFTER = 3 * 24 * 3600.0


class RestError(Exception):
    """A REST call failed; str() is one line without secrets."""

    #: False when the call was refused locally (ban or long pause in force): no verdict on the
    #: exchange, so the circuit breaker does not count it
    requested: bool = True


class RestHttpError(RestError):
    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} from {_short(url)}")
        self.status = status


class RestServerError(RestHttpError):
    """5xx after all retries."""


class RestRateLimited(RestError):
    """429 and the pause is longer than a call may wait, or retries ran out."""


class RestBanned(RestError):
    """A ban status (418 by default): the exchange banned this IP; no request until ``until``
    (monotonic). ``status`` is the HTTP status that started the ban."""

    def __init__(self, msg: str, until: float, *, requested: bool = False, status: int = 418) -> None:
        super().__init__(msg)
        self.until = until
        self.requested = requested
        self.status = status


class RestTimeout(RestError):
    pass


class RestConnectionError(RestError):
    pass


class RestInvalidJson(RestError):
    pass


class CircuitOpenError(RestError):
    pass


@dataclass(slots=True)
class RestResponse:
    status: int
    body: Any
    #: epoch ms when the response arrived (the listing's detected_at)
    received_at_ms: int
    headers: Mapping[str, str]


class RestClient:
    """REST for one exchange on one aiohttp session with a small connection pool."""

    def __init__(
        self,
        exchange: str,
        cfg: ExchangeSettings,
        *,
        weight_limit: int = 0,
        weight_header: str | None = None,
        weight_window: float = 60.0,
        budget_fraction: float = 0.8,
        pool_limit: int = 4,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
        ban_default: float = 120.0,
        max_pause_wait: float = 60.0,
        max_body: int = 64 * 1024 * 1024,
        wall_clock: Callable[[], float] = time.time,
        ban_statuses: Mapping[int, float] | None = None,
    ) -> None:
        self.exchange = exchange
        self.cfg = cfg
        self.weight_limit = weight_limit
        self.weight_header = weight_header
        self.weight_window = weight_window
        self.budget = int(weight_limit * budget_fraction) if weight_limit > 0 else 0
        self.pool_limit = pool_limit
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.ban_default = ban_default
        #: status -> ban seconds without Retry-After; None keeps the original rule (418, ban_default)
        self.ban_statuses: dict[int, float] = (
            {418: ban_default} if ban_statuses is None else {int(k): float(v) for k, v in ban_statuses.items()})
        self._ban_status = 418  # the status of the ban in force (for messages)
        self.max_pause_wait = max_pause_wait
        self.max_body = max_body
        self._wall = wall_clock
        self.breaker = CircuitBreaker(exchange, cfg.breaker_threshold, cfg.breaker_recovery)
        self._session: aiohttp.ClientSession | None = None
        # weight accounting for the current window
        self._window_id = -1
        self.used_weight = 0
        # monotonic deadlines
        self.paused_until = 0.0
        self.banned_until = 0.0
        # counters (cumulative)
        self.calls = 0          # HTTP requests sent (retries included)
        self.errors = 0         # failed requests (any non-success outcome)
        self.retries = 0
        self.invalid_json = 0
        self.rate_limited = 0   # 429 responses
        self.bans = 0           # ban-status responses (418, or the adapter's)
        self.budget_waits = 0
        self.last_error: str | None = None

    # ---- lifecycle ----
    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.pool_limit),
                timeout=aiohttp.ClientTimeout(total=self.cfg.rest_timeout),
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def url(self, url: str) -> str:
        """``url`` with the exchange's rest_url override applied (path and query kept)."""
        return override_base(url, self.cfg.rest_url)

    def stats(self) -> dict[str, Any]:
        return {
            "rest_calls": self.calls,
            "rest_errors": self.errors,
            "rest_retries": self.retries,
            "rest_invalid_json": self.invalid_json,
            "rest_rate_limited": self.rate_limited,
            "rest_bans": self.bans,
            "rest_budget_waits": self.budget_waits,
            "rest_used_weight": self.used_weight,
            "circuit": self.breaker.state.value,
        }

    # ---- the call ----
    async def get_json(self, url: str, *, weight: int = 1) -> RestResponse:
        """GET ``url`` (override applied here) and return the parsed JSON body."""
        if not self.breaker.allow():
            raise CircuitOpenError(
                f"{self.exchange} REST circuit open; next try in {self.breaker.retry_in():.0f}s")
        try:
            resp = await self._get_with_retries(self.url(url), weight)
        except asyncio.CancelledError:
            self.breaker.cancel_trial()  # a cancelled call is no verdict
            raise
        except RestError as exc:
            if exc.requested:
                self.breaker.record_failure()
            else:
                self.breaker.cancel_trial()
            self.last_error = str(exc)
            raise
        self.breaker.record_success()
        return resp

    async def _get_with_retries(self, url: str, weight: int) -> RestResponse:
        backoff = Backoff(self.retry_initial, self.retry_max)
        attempts = self.cfg.rest_max_retries + 1
        last_exc: RestError | None = None
        for attempt in range(attempts):
            if attempt:
                self.retries += 1
            await self._wait_allowed()
            await self._reserve_weight(weight)
            try:
                return await self._request_once(url)
            except (RestServerError, RestTimeout, RestConnectionError) as exc:
                last_exc = exc
                if attempt + 1 < attempts:
                    delay = backoff.next_delay()
                    log.warning("%s REST %s; retry %d/%d in %.1fs", self.exchange, exc,
                                attempt + 1, attempts - 1, delay)
                    await asyncio.sleep(delay)
            except RestRateLimited as exc:
                last_exc = exc  # the pause is set; the next attempt waits for it
            # 418, other 4xx and invalid JSON propagate: retrying cannot help
        assert last_exc is not None
        raise last_exc

    async def _wait_allowed(self) -> None:
        now = time.monotonic()
        if self.banned_until > now:
            raise RestBanned(f"{self.exchange} REST banned (HTTP {self._ban_status}) for another "
                             f"{self.banned_until - now:.0f}s", self.banned_until, status=self._ban_status)
        wait = self.paused_until - now
        if wait > 0:
            if wait > self.max_pause_wait:
                exc = RestRateLimited(f"{self.exchange} REST paused (HTTP 429) for another {wait:.0f}s")
                exc.requested = False
                raise exc
            await asyncio.sleep(wait)

    async def _reserve_weight(self, weight: int) -> None:
        """Wait until ``weight`` fits in the window's budget, then count it as used."""
        if self.budget <= 0:
            return
        while True:
            now = self._wall()
            wid = int(now // self.weight_window)
            if wid != self._window_id:
                self._window_id = wid
                self.used_weight = 0
            # a request heavier than the whole budget still goes out alone in a fresh window
            if self.used_weight + weight <= self.budget or self.used_weight == 0:
                self.used_weight += weight
                return
            delay = (wid + 1) * self.weight_window - now + 0.05
            self.budget_waits += 1
            log.warning("%s REST weight %d/%d used this window; waiting %.1fs", self.exchange,
                        self.used_weight, self.weight_limit, delay)
            await asyncio.sleep(delay)

    async def _request_once(self, url: str) -> RestResponse:
        session = self._get_session()
        self.calls += 1
        try:
            async with session.get(url) as resp:
                self._note_weight(resp.headers)
                status = resp.status
                if 200 <= status < 300:
                    raw = await self._read_body(resp)
                    received_at_ms = time.time_ns() // 1_000_000
                    try:
                        body = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        self.invalid_json += 1
                        self.errors += 1
                        raise RestInvalidJson(f"invalid JSON from {_short(url)} ({len(raw)} bytes)") from None
                    return RestResponse(status, body, received_at_ms, resp.headers)
                self.errors += 1
                if status == 429:
                    self.rate_limited += 1
                    after = parse_retry_after(resp.headers.get("Retry-After"))
                    pause = after if after is not None else Backoff(self.retry_initial, self.retry_max).next_delay()
                    self.paused_until = max(self.paused_until, time.monotonic() + pause)
                    log.warning("%s REST HTTP 429 from %s: pausing all requests for %.1fs",
                                self.exchange, _short(url), pause)
                    raise RestRateLimited(f"HTTP 429 from {_short(url)}")
                if status in self.ban_statuses:
                    # retrying (or any request) during a ban escalates it: stop everything
                    self.bans += 1
                    after = parse_retry_after(resp.headers.get("Retry-After"))
                    ban = after if after is not None else self.ban_statuses[status]
                    until = time.monotonic() + ban
                    if until >= self.banned_until:
                        self._ban_status = status
                    self.banned_until = max(self.banned_until, until)
                    log.error("%s REST HTTP %d (IP banned) from %s: no REST requests for %.0fs",
                              self.exchange, status, _short(url), ban)
                    raise RestBanned(f"HTTP {status} (banned) from {_short(url)} for {ban:.0f}s",
                                     self.banned_until, requested=True, status=status)
                if status >= 500:
                    raise RestServerError(status, url)
                raise RestHttpError(status, url)
        except RestError:
            raise
        except asyncio.TimeoutError:
            self.errors += 1
            raise RestTimeout(f"timeout after {self.cfg.rest_timeout:g}s from {_short(url)}") from None
        except aiohttp.ClientError as exc:
            self.errors += 1
            raise RestConnectionError(f"{exc.__class__.__name__} from {_short(url)}") from None

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        length = resp.content_length
        if length is not None and length > self.max_body:
            self.errors += 1
            raise RestHttpError(resp.status, f"{resp.url} (body of {length} bytes exceeds limit)")
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            buf += chunk
            if len(buf) > self.max_body:
                self.errors += 1
                raise RestHttpError(resp.status, f"{resp.url} (body exceeds {self.max_body} bytes)")
        return bytes(buf)

    def _note_weight(self, headers: Mapping[str, str]) -> None:
        if not self.weight_header:
            return
        value = headers.get(self.weight_header)
        if value is None:
            return
        try:
            used = int(value)
        except ValueError:
            return
        if used < 0:
            return
        wid = int(self._wall() // self.weight_window)
        if wid != self._window_id:
            self._window_id = wid
        # the exchange's count covers every client on this IP: it is the truth for this window
        self.used_weight = used


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), clamped; None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        secs = when.timestamp() - time.time()
    if secs != secs:  # NaN
        return None
    return min(MAX_RETRY_AFTER, max(0.0, secs))


def _short(url: str) -> str:
    """The URL without its query (queries may be long; never put credentials in logs)."""
    return str(url).split("?", 1)[0][:200]
