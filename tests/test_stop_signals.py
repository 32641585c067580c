"""SIGINT/SIGTERM end a served loop without a lock in the handler (temsims.stop_signals).

The instrument, ``temsims serve`` and ``temsims queue`` set a ``threading.Event``
from their handlers until 2026-12-05: a SIGTERM arriving while the main thread held
the Event's lock inside ``Event.wait`` deadlocked the process (an orphaned instrument
hung for good after its demo was killed)."""

from __future__ import annotations

import os
import signal
import threading
import time

from temsims.stop_signals import StopSignals


def test_a_signal_ends_the_wait_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignals()
    try:
        assert not stop.wait(0.1) and not stop.is_set()
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        t0 = time.monotonic()
        assert stop.wait(10.0)
        assert time.monotonic() - t0 < 1.0
        assert stop.received == signal.SIGTERM
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_handler_takes_no_lock():
    """The handler runs while the main thread holds a lock it never releases: it must
    return (an Event's set() would block on the Event's own lock here)."""
    stop = StopSignals()
    lock = threading.Lock()
    try:
        with lock:
            os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode
            for _ in range(1000):
                if stop.is_set():
                    break
                time.sleep(0.001)
        assert stop.received == signal.SIGINT
    finally:
        stop.restore()
