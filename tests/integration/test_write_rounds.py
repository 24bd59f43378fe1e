"""A write round whose replies never come back (the connection dies after Redis got the commands,
or before) is sent again, and the idempotent apply script makes that exact: parts Redis applied
already are skipped by their producer watermark, lost ones are written. Real publisher process,
real redis-server, and a TCP proxy in between that can swallow replies or requests and then cut
the connection."""

from __future__ import annotations

import time

import pytest

from tests.conftest import wait_until
from tests.proxy import CutProxy
from tests.integration.test_publisher import STREAM, make_settings, procs, trade, trade_ids  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode,applied_before", [("swallow_replies", True), ("swallow_requests", False)])
def test_a_round_with_lost_replies_is_written_exactly_once(redis_server, short_tmp, procs, mode,  # noqa: F811
                                                           applied_before) -> None:
    proxy = CutProxy(redis_server.port)
    settings = make_settings(short_tmp, f"redis://127.0.0.1:{proxy.port}/0")
    pub = procs.publisher(settings)
    w = procs.worker(settings)
    r = redis_server.client()
    w.events([trade(i) for i in range(100)])
    wait_until(lambda: r.xlen(STREAM) == 100, what="first 100")
    proxy.mode = mode
    # no monotonic ids (6th element): only the producer watermark can keep the re-sent round single
    w.events([trade(i)[:5] for i in range(100, 150)])
    wait_until(lambda: proxy.swallowed > 0, what="a round in flight through the cut")
    time.sleep(0.5)  # the connection is cut; the publisher finds out and retries
    proxy.mode = "pass"
    wait_until(lambda: r.xlen(STREAM) >= 150, timeout=20, what="150 trades")
    s = pub.stats(lambda s: s["redis"] == "up" and s["buffered"] == 0 and s["delivery"]["rounds_resent"] >= 1,
                  what="the lost round sent again")
    time.sleep(0.5)
    assert trade_ids(r) == list(range(150))  # in order, none lost, none twice
    # swallowed replies: Redis had applied the part, the watermark skipped it on the re-send
    assert (s["delivery"]["parts_already_applied"] >= 1) == applied_before
    assert s["streams"]["binance|trade"]["pushed"] == 150
