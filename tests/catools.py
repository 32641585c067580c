"""Channel Access helpers shared by the IOC tests (``from catools import ...``).

Two clients, each for what it does well:

* caproto's **sync client** (:func:`caread`, :func:`caget`, :func:`caget_str`,
  :func:`caput`, :func:`refused`, :func:`assert_refused`): one
  channel per call, and the only caproto client that reports a put error
  (``ErrorResponseReceived``; the threading client ignores it and the put times out).
  Every call passes ``repeater=False``: the sync client would otherwise spawn a CA
  repeater bound to 0.0.0.0 (conftest runs one on loopback).
* caproto's **threading client** (:func:`context`, :func:`pv`, :func:`read`,
  :func:`get`, :func:`stamped`, :func:`severity`, :func:`put`, :class:`Monitor`): one
  context for the session, made on first use (after conftest exported the loopback CA
  environment), with persistent, cached channels.

Plus :func:`wait_for` (poll until a condition holds) and :func:`move_motor`.

Timing asserts use the IOC's own timestamps (:class:`Monitor` with ``clock="server"``,
:func:`stamped`), never the client's wall clock: the instruments run on a simulated
clock (``--time-scale``) whose timestamps keep nominal durations. The wall-clock
waits here (``wait_for``, ``timeout``) only bound how long a test may hang.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from caproto import AlarmSeverity, ChannelType, ErrorResponseReceived
from caproto.sync.client import read as _sync_read
from caproto.sync.client import write as _sync_write
from caproto.threading.client import Context


def _decoded(value):
    return value.decode() if isinstance(value, bytes) else value


def _put_type(value):
    """Strings are written as DBR_STRING: enum state names, text."""
    return ChannelType.STRING if isinstance(value, str) else None


# --------------------------------------------------------------------------------------
# Polling
# --------------------------------------------------------------------------------------
def wait_for(predicate: Callable[[], object], timeout: float, what: str = "the condition",
             interval: float = 0.02) -> None:
    """Poll ``predicate`` every ``interval`` s until it is true; AssertionError after
    ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# Sync client
# --------------------------------------------------------------------------------------
def retry_search(func, *args, **kwargs):
    """Call a sync-client function, retrying a failure to *reach* the channel.

    On the shared, loaded test machine a UDP search now and then goes unanswered for
    seconds although the IOC is alive, and the sync client's fresh TCP circuit is
    now and then closed while the channel is created ("Disconnected during
    initialization": nothing was read or written yet, so a retry is safe). A put
    error (ErrorResponseReceived) is never retried.
    """
    from caproto import CaprotoError, ErrorResponseReceived

    for attempt in range(3):
        try:
            return func(*args, **kwargs)
        except ErrorResponseReceived:
            raise
        except TimeoutError:
            if attempt == 2:
                raise
        except CaprotoError as exc:
            if "during initialization" not in str(exc) or attempt == 2:
                raise


def caread(name: str, timeout: float = 5.0, **kwargs):
    """The sync client's read response (``data_type=...`` etc. passed on)."""
    return retry_search(_sync_read, name, timeout=timeout, repeater=False, **kwargs)


def caget(name: str, **kwargs):
    """The PV's first element (strings decoded)."""
    return _decoded(caread(name, **kwargs).data[0])


def caget_str(name: str) -> str:
    """Enum PVs as their string (DBR_STRING read)."""
    return caget(name, data_type=ChannelType.STRING)


def caput(name: str, value, timeout: float = 5.0) -> None:
    """Put with completion; raises ErrorResponseReceived when the IOC refuses it."""
    retry_search(_sync_write, name, [value], notify=True, data_type=_put_type(value),
                 timeout=timeout, repeater=False)


def refused(name: str, value, timeout: float = 5.0) -> bool:
    """True when the IOC answers the put with a put error."""
    try:
        caput(name, value, timeout=timeout)
    except ErrorResponseReceived:
        return True
    return False


def assert_refused(name: str, value) -> None:
    with pytest.raises(ErrorResponseReceived):
        caput(name, value)


def move_motor(motor: str, target: float, velocity: float, tolerance: float = 0.05,
               timeout: float = 10.0) -> None:
    """Move a motor record at ``velocity`` and wait until it is done at ``target``."""
    caput(motor + ".VELO", velocity)
    caput(motor, target)
    wait_for(lambda: caget(motor + ".DMOV") == 1 and abs(caget(motor + ".RBV") - target) < tolerance,
             timeout, f"{motor} at {target}")


# --------------------------------------------------------------------------------------
# Threading client
# --------------------------------------------------------------------------------------
_CONTEXT: Context | None = None
_PVS: dict[str, object] = {}


def context() -> Context:
    """The tests' one threading-client context, made on first use."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = Context()
    return _CONTEXT


#: Seconds to find and connect a PV: a search whose first datagram an instrument that
#: has just started missed is repeated with caproto's backoff, and at load 11-14 a fresh
#: instrument's SIM:NOW was still "searching" after 5 s.
CONNECT_TIMEOUT_S = 20.0


def pv(name: str):
    """A connected PV, cached."""
    if name not in _PVS:
        (channel,) = context().get_pvs(name, timeout=CONNECT_TIMEOUT_S)
        channel.wait_for_connection(timeout=CONNECT_TIMEOUT_S)
        _PVS[name] = channel
    return _PVS[name]


def read(name: str, data_type=None, timeout: float = 5.0):
    return pv(name).read(data_type=data_type, timeout=timeout)


def get(name: str, data_type=None, timeout: float = 5.0):
    """One element: the value (strings decoded); several: a numpy array."""
    data = read(name, data_type=data_type, timeout=timeout).data
    if len(data) == 1:
        return _decoded(data[0])
    return np.asarray(data)


def stamped(name: str, timeout: float = 5.0) -> tuple[float, object]:
    """(the IOC's timestamp, value) of the PV's present value (one element)."""
    response = read(name, data_type="time", timeout=timeout)
    return response.metadata.timestamp, _decoded(response.data[0])


def severity(name: str) -> AlarmSeverity:
    """The PV's alarm severity, read on its persistent channel: a refusal's alarm can
    be short-lived (an IOC may clear a shared alarm on its next update), and a sync
    read, with its search and new circuit, may come too late for it."""
    return AlarmSeverity(read(name, data_type="time").metadata.severity)


def put(name: str, value, timeout: float = 5.0, wait: bool = True) -> None:
    """Put (with completion unless ``wait=False``)."""
    pv(name).write([value], data_type=_put_type(value), wait=wait, timeout=timeout)


class Monitor:
    """Every CA monitor update of one PV as (time, value), in :attr:`updates`.

    ``clock="server"``: the IOC's timestamp of the update (the instrument's nominal
    clock, epoch seconds: what timing asserts use); ``clock="arrival"``:
    ``time.monotonic()`` when it reached this process (for ordering only). Waits for
    the first update (the current value). :meth:`clear` ends it.
    """

    def __init__(self, name: str, clock: str = "server") -> None:
        if clock not in ("server", "arrival"):
            raise ValueError(f"clock must be 'server' or 'arrival', not {clock!r}")
        self.name, self.clock = name, clock
        self.updates: list[tuple[float, object]] = []
        self.changed = threading.Condition()
        self.sub = pv(name).subscribe(data_type="time")
        self._token = self.sub.add_callback(self._on_update)
        self.wait_for(lambda updates: len(updates) >= 1)

    def _on_update(self, sub, response) -> None:
        t = response.metadata.timestamp if self.clock == "server" else time.monotonic()
        with self.changed:
            self.updates.append((t, response.data[0]))
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float = 10.0) -> None:
        """Wait until ``predicate(updates)`` holds; TimeoutError after ``timeout`` s."""
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.updates), timeout):
                raise TimeoutError(f"{self.name}: condition not met in {timeout} s")

    def since(self, t0: float) -> list[tuple[float, object]]:
        """The updates at or after ``t0`` (on this monitor's clock)."""
        with self.changed:
            return [u for u in self.updates if u[0] >= t0]

    def values(self) -> list:
        with self.changed:
            return [v for _, v in self.updates]

    def clear(self) -> None:
        """Stop recording (other monitors of the same PV keep theirs)."""
        self.sub.remove_callback(self._token)
