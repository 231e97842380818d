"""The mover's pacer: slot moves spaced evenly in time, over every worker thread that shares it."""

import threading
import time

from runbook_lib.cluster.mover import Pacer


def test_no_rate_never_waits():
    pacer = Pacer()
    assert [pacer.wait(32, 0.0) for _ in range(100)] == [0.0] * 100


def test_starts_are_spaced_by_slots_over_rate_across_threads():
    pacer, waits = Pacer(), []

    def worker() -> None:
        waits.extend(pacer.wait(1, 50.0) for _ in range(4))

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(waits) == 12
    assert time.monotonic() - began >= 11 / 50, "12 starts at 50 slots/s span 11 intervals of 20 ms at least"


def test_a_group_of_slots_books_its_share_of_time():
    pacer = Pacer()
    assert pacer.wait(4, 100.0) == 0.0
    slept = pacer.wait(1, 100.0)
    assert 0.0 < slept <= 0.04, "4 slots at 100 slots/s hold the next start back by 40 ms"
