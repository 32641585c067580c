"""How temsims' commands end their child processes: SIGTERM as Ctrl-C, and no child
outliving a parent killed with SIGKILL (issue 14, item 8).

- :func:`sigterm_as_interrupt`: while it is active, SIGTERM (what a service manager
  sends) raises ``KeyboardInterrupt`` in the main thread, exactly as Ctrl-C does, so
  the command's ``finally`` blocks stop the IOCs and close the catalog.
- :func:`die_with_parent`: makes a ``preexec_fn`` for ``subprocess.Popen`` that asks Linux to
  send the child SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), however
  it dies; the child then stops as on SIGTERM.

Which children use what (docs/decisions/0025-spool-and-replay.md, "Lifecycle"):
the instrument process (``temsims demo``, tests, benchmarks) dies with its parent by
PR_SET_PDEATHSIG; a writer process watches its pipe (at its end it appends what
reached it, then exits: a signal would lose those events); a catalog directory server
and the catalog host are meant to outlive their opener (decision 0014) and end by
themselves: a directory server ``SERVER_LINGER_S`` (10 s) after the last process
holding a lease ended (a flock the kernel drops with the process), the host after
``HOST_IDLE_S`` (600 s) without a server.

Nothing happens on import.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["die_with_parent", "sigterm_as_interrupt"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child receives ``sig`` when its
    parent dies, however it dies (``prctl(PR_SET_PDEATHSIG)``; Linux; elsewhere the
    function does nothing).

    ``prctl`` is looked up here, in the parent: a child forked from a threaded process
    should not ``dlopen`` (another thread may have held its lock at the fork).

    Note: Linux sends it when the *thread* that forked the child ends; start such
    children from a thread that lives as long as they should (the main thread).
    """
    parent = os.getpid()
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        prctl = None

    def preexec() -> None:
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises ``KeyboardInterrupt`` in the main thread while active (a no-op
    off the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
