"""Fault-injection suite, short version (issue 5 point 6): each case of bench/faults.py against
the real collector (private redis-server, the simulator over real sockets, `collector run`) at a
sustained trade load. Every trade the exchange's tape holds from the first one delivered to the
collector must be in Redis exactly once; on spool-full exactly the counted drops are missing.
`python bench/faults.py --long` runs the issue's durations and prints the table."""

from __future__ import annotations

from typing import Iterator

import pytest

from bench.faults import CASES, SHORT, FaultRig, Row, table

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rig() -> Iterator[FaultRig]:
    with FaultRig(SHORT) as r:
        yield r


def _explain(rows: list[Row]) -> str:
    lines = [table(rows)]
    for r in rows:
        lines += [f"  {stream}: sent {d[0]} stored {d[1]} lost {d[2]} duplicated {d[3]}"
                  + (f", missing {r.missing[stream]}" if stream in r.missing else "")
                  for stream, d in r.detail.items()]
    return "\n".join(lines)


#: cases whose fault has its own dedicated test elsewhere in the default run (kill -9 of a worker:
#: test_tape_continuity; of the publisher: test_acked_delivery; Redis down with and without data:
#: test_collector_e2e / test_spool_delivery; leaks: test_collector_e2e; hung: test_hung_worker;
#: spool full: test_spool_delivery): here they run with --run-slow (make test-slow), and all of
#: them in `python bench/faults.py`
COVERED_ELSEWHERE = {"kill_binance_worker", "kill_publisher", "redis_down_keep_data", "redis_down_empty",
                     "memory_leak", "fd_leak", "hung_worker", "spool_full"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in COVERED_ELSEWHERE else c
                                  for c in CASES])
def test_fault_case_loses_and_doubles_nothing(rig: FaultRig, case: str) -> None:
    rows = CASES[case](rig)
    assert rows, f"{case}: no result"
    for row in rows:
        assert row.sent, f"{row.fault}: nothing was sent\n{_explain(rows)}"
        if case == "spool_full":
            assert row.drops, f"{row.fault}: the spool never filled\n{_explain(rows)}"
            assert row.lost == row.drops, f"{row.fault}: lost {row.lost} != counted drops {row.drops}\n{_explain(rows)}"
        else:
            assert row.lost == 0, f"{row.fault}: {row.lost} lost\n{_explain(rows)}"
        assert row.duplicated == 0, f"{row.fault}: {row.duplicated} duplicated\n{_explain(rows)}"
        assert row.stored == row.sent - row.lost, f"{row.fault}: stored {row.stored}\n{_explain(rows)}"
