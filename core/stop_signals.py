"""Serving until SIGINT or SIGTERM without a lock in the signal handler.

Python runs a signal handler in the main thread between bytecodes, also while that
thread holds a lock. A handler that sets a ``threading.Event`` which the main thread
is waiting on takes the Event's (non-reentrant) lock, which ``Event.wait`` holds
around its inner wait: a SIGTERM landing there deadlocks the process for good (an
instrument orphaned by a killed demo, SIGTERM from the kernel, hung in
``Event.set`` inside ``Event.wait``; found by tests/test_lifecycle.py). Here the
handler only records the signal; the main thread polls that record.
"""

from __future__ import annotations

import signal
import time

#: How often :meth:`StopSignals.wait` looks at the record (s): the stop's latency.
POLL_S = 0.05


class StopSignals:
    """Records SIGINT and SIGTERM from construction until :meth:`restore`.

    Examples
    --------
    >>> stop = StopSignals()
    >>> try:
    ...     while not stop.wait(0.5):
    ...         pass  # check what is served
    ... finally:
    ...     stop.restore()
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.received: int | None = None
        self._previous = {sig: signal.signal(sig, self._record) for sig in signals}

    def _record(self, signum: int, frame: object) -> None:
        self.received = signum  # an attribute store: no lock

    def is_set(self) -> bool:
        """True once a signal has arrived."""
        return self.received is not None

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s`` or until a signal has arrived; True if one has."""
        deadline = time.monotonic() + timeout_s
        while self.received is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL_S, left))
        return True

    def restore(self) -> None:
        """Put back the handlers found at construction."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
