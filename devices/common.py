"""What every temsims device shares: validated setpoints, complete descriptions, the
control layer, connecting.

Why client-side validation: ophyd's caproto control layer uses caproto's threading
client, which does not hand a server's put error to the caller. A put the IOC refuses
(out of range, unknown enum string, an interlock) does not raise: a put with
completion simply never completes. So every writable signal here checks the value
against what the IOC publishes (ctrl limits DRVL/DRVH, enum strings, integer type,
finiteness) *before* anything is sent, and raises a clear ``ValueError``; setpoint
writes use put completion with a write timeout, so that a refusal nobody could
foresee ends as a failed status instead of a hang. See
``docs/decisions/0006-devices.md``.

Every signal class here describes what storage needs to keep a reading as it is: the
``dtype_numpy`` of its value and, for an array, its ``shape`` and ``dims``
(:class:`DescribesDtype`, :class:`ShapedArray`). See
``docs/decisions/0016-devices-describe-their-data.md``.

Nothing here talks to the IOC modules: devices know the instrument by PV names only.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable, Iterable

import numpy as np
from ophyd import EpicsSignal, EpicsSignalRO, Signal
from ophyd.status import DeviceStatus, StatusBase
from ophyd.utils.errors import StatusTimeoutError, WaitTimeoutError

# The dtype convention of readings is shared with the plans' computed streams.
from temsims.constants import value_dtype

#: Default write timeout (s) of setpoint puts with completion (IOC putters answer in ms).
SETPOINT_WRITE_TIMEOUT_S = 10.0


class DescribesDtype:
    """Mixin for ophyd signals: ``describe()`` gives the ``dtype_numpy`` of the value,
    and ``dims`` for an array, which ophyd leaves out.

    ophyd 1.11 says only ``number``, ``integer``, ``string`` or ``array`` for an EPICS or
    soft signal; storage would then guess from that (float64 for every array, so a
    float32 image would be stored as float64). Put it first among the bases.
    """

    def describe(self):
        desc = super().describe()
        entry = desc[self.name]
        if "dtype_numpy" not in entry:
            # From get(), not the monitor's raw value ophyd looks at: get() turns an
            # enum's uint16 or a short's int16 into the Python int a reading holds.
            entry["dtype_numpy"] = value_dtype(self.get())
        if entry["dtype"] == "array" and "dims" not in entry:
            # a waveform with no axis names of its own (ShapedArray names them): names
            # of its own, so that no other array's axis of another size shares them
            entry["dims"] = [f"{self.name}_{axis}" for axis in range(len(entry["shape"]))]
        return desc


class OneMonitorCallback:
    """Mixin for ophyd's EPICS signals: a PV's monitor runs each of the signal's
    callbacks once, not twice.

    ``EpicsSignalBase._add_callback`` registers a callback (``_read_changed``, and
    ``_write_changed`` for the setpoint PV) on the PV unless ``_monitors[pvname]`` is
    truthy, and stores there the index ``add_callback`` returns. pyepics numbers a
    PV's callbacks from 1; caproto's ``pyepics_compat`` from 0, so the first index (0)
    reads as "none", and the next ``_add_callback`` of the PV (at connection, or from
    ``subscribe``) registers ``_read_changed`` again: every monitor update of a
    subscribed signal ran ``_read_changed`` and its subscribers twice (``EpicsMotor``'s
    RBV and DMOV at every move). Here each (PV, callback) is registered once; which
    callbacks a PV gets is unchanged (a signal whose setpoint PV is its read PV keeps
    both). Put it before the ophyd class among the bases.
    """

    def _add_callback(self, pvname, pv, cb):
        with self._metadata_lock:
            registered = self.__dict__.setdefault("_registered_monitor_callbacks", set())
            key = (pvname, getattr(cb, "__name__", cb))
            if key in registered:
                return
            registered.add(key)
            index = pv.add_callback(cb, run_now=pv.connected)
            if self._monitors[pvname] is None:
                self._monitors[pvname] = index


def use_caproto_control_layer() -> None:
    """Select ophyd's caproto control layer unless it is already the one in use.

    Must run before the first ophyd signal of the process exists (the layer is bound
    when a signal is created). ``import ophyd`` already picks a layer (pyepics if it is
    installed, ``OPHYD_CONTROL_LAYER`` if set): choose explicitly.
    """
    os.environ.setdefault("OPHYD_CONTROL_LAYER", "caproto")
    import ophyd

    if getattr(ophyd, "cl", None) is None or ophyd.cl.name != "caproto":
        ophyd.set_cl("caproto")
    _skip_metadata_of_lost_pvs()
    _patient_circuits()
    _callbacks_copied_whole()
    _searches_stopped_before_the_socket_closes()


def close_control_layer() -> None:
    """Disconnect caproto's shared client context of this process (its circuits, search
    and selector threads), if one was made.

    For a process about to exit: Python shuts the thread pools down before it runs
    ``atexit`` handlers, and caproto's selector thread, still receiving monitor updates
    (the parts' 1 Hz heartbeats), then printed "cannot schedule new futures after
    shutdown" with a traceback per circuit at every ``temsims shell`` exit.
    """
    from caproto.threading import pyepics_compat

    if pyepics_compat._make_context.cache_info().currsize == 0:
        return  # no PV was ever made: nothing to close (and nothing made here)
    context = pyepics_compat.PV.default_context()
    context.disconnect()
    context.broadcaster.disconnect()


#: How long caproto's threading client waits for a server's answer when it opens a
#: circuit (its default: 2 s).
CIRCUIT_HANDSHAKE_S = 10.0


def _callbacks_copied_whole() -> None:
    """Let caproto's callback handlers snapshot their callbacks without a garbage
    collection changing them mid-snapshot.

    ``CallbackHandler.process`` lists ``callbacks.items()`` under a re-entrant lock; an
    allocation of that list can start a collection that finalises a dead callback,
    whose weakref hook removes it from the same dict in the same thread: "dictionary
    changed size during iteration" (CI: ophyd's EpicsMotor suite, connecting
    ``Z.HOMR``). ``dict.copy()`` creates no container object while it copies, so no
    collection runs in the middle; the rest is caproto's ``process`` as it is.
    """
    from caproto.threading import client

    handler = client.CallbackHandler
    if getattr(handler, "_temsims_copied_whole", False):
        return

    def process(self, *args, **kwargs):
        to_remove = []
        with self.callback_lock:
            callbacks = self.callbacks.copy()
            self._last_call_values = (args, kwargs)
        for cb_id, ref in callbacks.items():
            callback = ref()
            if callback is None:
                to_remove.append(cb_id)
                continue
            try:
                self.pv.circuit_manager.user_callback_executor.submit(callback, *args, **kwargs)
            except RuntimeError:
                if self.pv.circuit_manager.dead.is_set():
                    return  # a dead circuit's executor is shut down with it (caproto's)
                raise
        with self.callback_lock:
            for remove_id in to_remove:
                self.callbacks.pop(remove_id, None)

    process.__doc__ = handler.process.__doc__
    handler.process = process
    handler._temsims_copied_whole = True


def _searches_stopped_before_the_socket_closes() -> None:
    """Stop caproto's search-retry thread before its broadcaster closes the UDP socket.

    ``SharedBroadcaster.disconnect`` closes the socket first and sets the event that
    ends the retry thread after: a retry in between sends on the closed socket, and the
    thread dies printing "Bad file descriptor" (the last context of every test worker
    going at exit, and of a ``temsims shell`` closing). Set the event and wake and join
    the thread first; then caproto's ``disconnect`` as it is.
    """
    import threading

    from caproto.threading import client

    broadcaster = client.SharedBroadcaster
    if getattr(broadcaster, "_temsims_stops_searches_first", False):
        return
    original = broadcaster.disconnect

    def disconnect(self, *, wait=True):
        self._close_event.set()
        self._search_now.set()
        thread = self._retry_unanswered_searches_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        original(self, wait=wait)

    disconnect.__doc__ = original.__doc__
    broadcaster.disconnect = disconnect
    broadcaster._temsims_stops_searches_first = True


def _patient_circuits() -> None:
    """Give caproto's client more time to open a circuit, and a second try.

    The client opens a circuit in the one thread that turns search answers into
    connections; a failure there (no answer to its version request within 2 s, or
    the server gone between its search answer and the connection) ends that thread,
    and no PV of the process connects again. At a load of 20 on 2 cores a full test
    run saw it: "Circuit with server at 127.0.0.1:30404 did not connect within
    2.0-second timeout", then 110 PVs that never connected.
    """
    from caproto.threading import client

    if getattr(client.Context, "_temsims_patient_circuits", False):
        return
    client.VirtualCircuitManager.__init__.__defaults__ = (CIRCUIT_HANDSHAKE_S,)
    open_circuit = client.Context.get_circuit_manager

    def get_circuit_manager(self, address, priority):
        for attempt in range(3):
            try:
                return open_circuit(self, address, priority)
            except OSError:  # CaprotoTimeoutError is a TimeoutError, an OSError
                if attempt == 2:
                    raise
                time.sleep(0.2)

    get_circuit_manager.__doc__ = open_circuit.__doc__
    client.Context.get_circuit_manager = get_circuit_manager
    client.Context._temsims_patient_circuits = True


def _skip_metadata_of_lost_pvs() -> None:
    """Let ophyd's first metadata read of a PV skip a PV that is gone by then.

    A signal's first connection queues a metadata read on one of ophyd's four
    utility threads; the read waits up to 10 s for a PV that has disconnected
    meanwhile. Devices connected to a part (or instrument) that goes away while
    those reads are queued (a part killed just after it connected, an instrument
    stopped) thus held the four threads for 10 s per PV: in CI every PV of the next
    instrument the process connected waited behind them, and 228 of 228 missed a
    15 s connection timeout. A skipped read is not lost: ophyd asks again at the
    PV's next connection, as it does until a first read succeeds.
    """
    from ophyd import _caproto_shim

    pv_class = _caproto_shim.PV
    if getattr(pv_class, "_temsims_skips_lost_pvs", False):
        return

    def get_all_metadata_callback(self, callback, *, timeout):
        def read_unless_lost(pvname):
            if self.connected:
                callback(pvname, self.get_all_metadata_blocking(timeout=timeout))

        _caproto_shim._dispatcher.schedule_utility_task(read_unless_lost, pvname=self.pvname)

    pv_class.get_all_metadata_callback = get_all_metadata_callback
    pv_class._temsims_skips_lost_pvs = True


class ValidatedSignal(DescribesDtype, OneMonitorCallback, EpicsSignal):
    """An ``EpicsSignal`` that refuses, before putting, what the IOC would refuse.

    Checks: ``None``, NaN and infinities; enum strings (and enum indices) against the
    PV's enum strings; integers for integer PVs; the ctrl limits (DRVL/DRVH) when the
    IOC publishes any (low < high). Puts use completion (``put_complete=True``) and
    time out after ``write_timeout`` (:data:`SETPOINT_WRITE_TIMEOUT_S` by default).
    """

    def __init__(self, read_pv, write_pv=None, *, put_complete=True,
                 write_timeout=SETPOINT_WRITE_TIMEOUT_S, **kwargs):
        super().__init__(read_pv, write_pv=write_pv, put_complete=put_complete,
                         write_timeout=write_timeout, **kwargs)

    def check_value(self, value):
        # Not super().check_value: ophyd's limit message is terse; ours names the PV.
        pv = self.setpoint_pvname
        if value is None:
            raise ValueError(f"{self.name} ({pv}): cannot write None")
        enum_strs = self.enum_strs if self.connected else None
        if enum_strs:
            if isinstance(value, str):
                if value not in enum_strs:
                    raise ValueError(
                        f"{self.name} ({pv}): {value!r} is not one of {list(enum_strs)}")
                return
            if isinstance(value, numbers.Integral) and 0 <= int(value) < len(enum_strs):
                return
            raise ValueError(f"{self.name} ({pv}): {value!r} is not one of {list(enum_strs)}")
        if isinstance(value, str):
            if self._is_string_pv():
                if len(value.encode()) >= 40:
                    raise ValueError(f"{self.name} ({pv}): string longer than 39 bytes")
                return
            raise ValueError(f"{self.name} ({pv}): expected a number, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{self.name} ({pv}): expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ValueError(f"{self.name} ({pv}): {value!r} is not a finite number")
        if self._is_integer_pv() and float(value) != int(value):
            raise ValueError(f"{self.name} ({pv}): expected an integer, got {value!r}")
        low, high = self.limits if self.connected else (0, 0)
        if low < high and not low <= value <= high:
            raise ValueError(
                f"{self.name} ({pv}): {value!r} outside the IOC's limits [{low}, {high}]")

    def _is_integer_pv(self) -> bool:
        return isinstance(self._readback, numbers.Integral | np.integer)

    def _is_string_pv(self) -> bool:
        return isinstance(self._readback, str)


class SwitchSignal(ValidatedSignal):
    """An enum setpoint (``write_pv``) whose ``set()`` finishes when its readback
    (``read_pv``, monitored) shows the new state.

    The put's completion and the readback's monitor reach the client on different
    threads: without this, a plan that reads the state right after ``bps.mv`` could
    still see the old one.
    """

    def __init__(self, read_pv, write_pv=None, *, readback_timeout: float = 3.0, **kwargs):
        kwargs.setdefault("string", True)
        kwargs.setdefault("auto_monitor", True)
        super().__init__(read_pv, write_pv=write_pv, **kwargs)
        self.readback_timeout = readback_timeout

    def set(self, value, **kwargs):
        self.check_value(value)
        states = tuple(self.enum_strs or ())
        target = value if isinstance(value, str) else states[int(value)]

        def put():
            return ValidatedSignal.set(self, value, **kwargs)

        def readback():
            return wait_until(self, lambda v: is_state(v, target, states),
                              timeout=self.readback_timeout, what=f"{self.name} {target}")

        return chain(self, [put, readback])


class Reading(DescribesDtype, OneMonitorCallback, EpicsSignalRO):
    """A read-only PV, fetched over CA at each read (unless ``auto_monitor=True``)."""


class Readback(Reading):
    """A read-only PV followed by a CA monitor (``get()`` returns the cached value)."""

    def __init__(self, read_pv, *, auto_monitor=True, **kwargs):
        super().__init__(read_pv, auto_monitor=auto_monitor, **kwargs)


class RecordField(DescribesDtype, OneMonitorCallback, EpicsSignal):
    """A writable PV with ophyd's plain ``EpicsSignal`` behaviour (no checks, no put
    completion): a field of a record that ophyd's own devices declare, such as the
    motor record's (:class:`~temsims.devices.stage.StageMotor`)."""


class SoftSignal(DescribesDtype, Signal):
    """A value kept in the client (no PV), e.g. a setting recorded as configuration."""


def _step_failure(exc: BaseException | None, step) -> BaseException:
    """What fails :func:`chain`'s status when ``step`` failed with ``exc``.

    ophyd refuses its own status timeouts as another status's exception (a step's
    put-completion timing out is one): ``set_exception`` raised ValueError on the
    callback thread, the chain's status never completed and the plan waiting on it
    hung. They are handed on as a plain TimeoutError naming the step.
    """
    name = getattr(step, "__name__", step)
    if exc is None:
        return RuntimeError(f"step {name} failed")
    if isinstance(exc, (StatusTimeoutError, WaitTimeoutError)):
        err = TimeoutError(f"step {name} timed out: {exc}")
        err.__cause__ = exc
        return err
    return exc


def chain(device, steps: Iterable, *, timeout: float | None = None) -> DeviceStatus:
    """Run ``steps`` one after the other, event-driven; one status for the whole.

    Each step is a callable returning a status (or ``None`` when it has nothing to wait
    for); it is called from the callback of the previous step's status, so nothing
    sleeps and no thread waits. An exception in a step, or a failed step status,
    fails the returned status with that exception.
    """
    steps = list(steps)
    overall = DeviceStatus(device, timeout=timeout)
    overall.step_times = []  # (step name, seconds)

    def run_from(i: int) -> None:
        while i < len(steps):
            if overall.done:
                return
            step = steps[i]
            t0 = time.monotonic()
            try:
                st = step()
            except Exception as exc:  # noqa: BLE001 - handed to the caller via the status
                overall.set_exception(_step_failure(exc, step))
                return
            if st is None:
                overall.step_times.append((getattr(step, "__name__", str(step)),
                                           time.monotonic() - t0))
                i += 1
                continue

            def on_done(s: StatusBase, i=i, t0=t0, step=step) -> None:
                if not s.success:
                    if not overall.done:
                        overall.set_exception(_step_failure(s.exception(), step))
                    return
                overall.step_times.append((getattr(step, "__name__", str(step)),
                                           time.monotonic() - t0))
                run_from(i + 1)

            st.add_callback(on_done)
            return
        if not overall.done:
            overall.set_finished()

    run_from(0)
    return overall


def finished_status(device=None) -> StatusBase:
    st = StatusBase()
    st.set_finished()
    return st


def unconnected_pvs(devices) -> list[str]:
    """PV names of every non-lazy signal of ``devices`` that is not connected."""
    missing = []
    for dev in devices:
        for walk in dev.walk_signals(include_lazy=False):
            sig = walk.item
            if sig.connected:
                continue
            for attr in ("pvname", "setpoint_pvname"):
                name = getattr(sig, attr, None)
                if name and name not in missing:
                    missing.append(name)
    return missing


def wait_connected(devices, timeout: float, part_prefixes: dict[str, str] | None = None) -> None:
    """Wait (at most ``timeout`` s) for every signal of ``devices``; name what is missing.

    ``part_prefixes`` (label -> PV prefix) groups the missing PVs by IOC in the message.

    Raises
    ------
    TimeoutError
        Listing the PV names that did not connect, grouped by PV prefix.
    """
    devices = list(devices)
    deadline = time.monotonic() + timeout
    while True:
        missing = unconnected_pvs(devices)
        if not missing:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)  # connection is the one thing with no status object in ophyd
    groups: dict[str, list[str]] = {}
    by_length = sorted((part_prefixes or {}).items(), key=lambda kv: -len(kv[1]))
    for name in missing:
        head = next((f"{label} IOC {pre}" for label, pre in by_length if name.startswith(pre)),
                    name.rsplit(":", 1)[0] + ":")
        groups.setdefault(head, []).append(name)
    summary = "; ".join(f"{head} ({len(names)} PVs: {', '.join(names[:6])}"
                        f"{', ...' if len(names) > 6 else ''})"
                        for head, names in groups.items())
    raise TimeoutError(
        f"{len(missing)} PVs did not connect within {timeout:g} s (is the IOC running and "
        f"EPICS_CA_ADDR_LIST set?): {summary}")


class ShapedArray(OneMonitorCallback, EpicsSignalRO):
    """A waveform PV read as an N-d numpy array of a known shape and dtype.

    Parameters
    ----------
    read_pv
        The waveform PV.
    shape
        ``shape(parent) -> tuple``: the array's shape now (from its size PVs).
    dtype
        numpy dtype of the data (``describe()`` reports it as ``dtype_numpy``).
    dims
        A name for each axis (``describe()`` reports them as ``dims``, which tiled
        gives the array's dimensions when it is read back).

    Not monitored: a read after an acquisition's put completion fetches the new data
    over CA (a monitor update could still be in flight).
    """

    def __init__(self, read_pv, *, shape, dtype, dims: tuple[str, ...], **kwargs):
        kwargs.setdefault("auto_monitor", False)
        super().__init__(read_pv, **kwargs)
        self._shape_fn = shape
        self._np_dtype = np.dtype(dtype)
        self.dims = tuple(dims)

    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self._shape_fn(self.parent))

    def get(self, **kwargs):
        value = np.asarray(super().get(**kwargs))
        shape = self.shape()
        n = int(np.prod(shape))
        flat = value.ravel()
        if flat.size >= n:
            flat = flat[:n]
        else:  # a shorter waveform than the size PVs say: pad, keep the shape promised
            flat = np.concatenate([flat, np.zeros(n - flat.size, flat.dtype)])
        return flat.astype(self._np_dtype, copy=False).reshape(shape)

    def describe(self):
        desc = super().describe()
        entry = desc[self.name]
        entry["shape"] = list(self.shape())
        if len(self.dims) != len(entry["shape"]):
            raise ValueError(f"{self.name}: dims {self.dims} do not match shape "
                             f"{entry['shape']}")
        entry["dims"] = list(self.dims)
        entry["dtype"] = "array"
        entry["dtype_numpy"] = self._np_dtype.str
        return desc


def is_state(value, name: str, enum_strs) -> bool:
    """``value`` (an enum string or index, as monitors deliver it) is the state ``name``."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        return value == name
    try:
        return list(enum_strs).index(name) == int(value)
    except (TypeError, ValueError):
        return False


def reads_now(signal, value: str) -> bool:
    """``signal`` (a monitored enum PV) reads ``value``, confirmed by a CA read when the
    monitor says so: the monitor can lag the put completion that ended the state (the
    spectrometer's BUSY did in 2 of 4 quiet runs), and a check on it alone refused
    what the IOC would take."""
    return str(signal.get()) == value and str(signal.get(use_monitor=False)) == value


def wait_until(signal, predicate, *, timeout: float, what: str,
               explain: Callable[[], str] | None = None) -> StatusBase:
    """A status that finishes when ``predicate(value)`` holds for ``signal`` (CA monitor).

    Fails with a ``TimeoutError`` naming ``what`` and the last value otherwise, followed
    by ``explain()`` if given (e.g. the IOC's own reason for the value).
    """
    from ophyd.status import SubscriptionStatus

    outer = StatusBase()
    inner = SubscriptionStatus(signal, lambda *args, value, **kw: bool(predicate(value)),
                               timeout=timeout, run=True)

    def done(s: StatusBase) -> None:
        if s.success:
            outer.set_finished()
        else:
            detail = f"; {explain()}" if explain is not None else ""
            outer.set_exception(TimeoutError(
                f"{what}: not reached within {timeout:g} s ({signal.name} = "
                f"{signal.get()!r}{detail})"))

    inner.add_callback(done)
    return outer
