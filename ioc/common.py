"""What every temsims part shares: its base class, the CA fixes, interlock helpers.

A part module (``stage``, ``tem``, ``column``, ``bias``, ``spectrometer``) defines a
declarative :class:`caproto.server.PVGroup` subclass of :class:`InstrumentIOC`;
:mod:`temsims.ioc.server` serves the parts of one instrument over one world, each
on its own CA port, with the TCP_NODELAY fix applied and a CA repeater on loopback.
"""

from __future__ import annotations

import logging
import math
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import caproto as ca
from caproto import AlarmSeverity, AlarmStatus
from caproto.server import PVGroup, pvproperty

from temsims.channel_access import port_free
from temsims.constants import SIMS_TILT_DEG, TILT_TOLERANCE_DEG
from temsims.ioc.world import World, mirror_pv

logger = logging.getLogger(__name__)

DEFAULT_INSTRUMENT_PREFIX = "TEMSIMS:"


# --------------------------------------------------------------------------------------
# caproto 1.3.0 fix: TCP_NODELAY on the server's listening socket.
# --------------------------------------------------------------------------------------
_nodelay_installed = False


def install_tcp_nodelay() -> None:
    """Make caproto's asyncio server create its TCP sockets with TCP_NODELAY.

    Why: caproto 1.3.0 creates the listening socket with ``proto=0`` and never sets
    TCP_NODELAY. Nagle's algorithm plus the client's delayed ACK then hold back every
    CA reply that follows another within ~40 ms, which is every step of a scan:
    measured 53-63 ms per point of a step scan with the stock server, ~20 ms with
    this fix (``../shared/reference/stack.md``). Accepted sockets inherit the option
    from the listening socket on Linux, so patching the one factory is enough.
    """
    global _nodelay_installed
    if _nodelay_installed:
        return
    import caproto.asyncio.server as asyncio_server

    async def _create_bound_tcp_socket_nodelay(addr: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sock.bind((addr, port))
        return sock

    asyncio_server._create_bound_tcp_socket = _create_bound_tcp_socket_nodelay
    _nodelay_installed = True


# --------------------------------------------------------------------------------------
# caproto 1.3.0 fixes: monitors queued together go out together; a read does not wait
# a loop pass for a write lock that is free.
# --------------------------------------------------------------------------------------
_batching_installed = False
_read_fast_path_installed = False
_fixes_lock = threading.Lock()


def install_server_fixes() -> None:
    """The caproto server fixes every part relies on (idempotent, process-wide, from
    any part's thread): :func:`install_monitor_batching` and
    :func:`install_read_fast_path`."""
    with _fixes_lock:
        install_monitor_batching()
        install_read_fast_path()
        install_client_put_guard()


_put_guard_installed = False


def check_client_put(channel: Any, data: Any, data_type: Any) -> None:
    """Refuse a client's put that no putter should ever see (``ValueError``: put error).

    - more than one element put to a scalar PV (caproto would keep the first one);
    - NaN or an infinity put to a floating-point PV (as a number or as a string such
      as ``"nan"``), including motor-record fields that have no putter (``TWV``);
    - a non-integral number put to an integer PV (caproto would truncate 2.5 to 2).
    """
    from caproto import ChannelType
    from caproto._backend import backend
    from caproto._dbr import native_type
    from caproto._utils import ConversionDirection

    if data_type in (ChannelType.PUT_ACKS, ChannelType.PUT_ACKT):
        return  # alarm acknowledgements, not values
    name = getattr(channel, "pvname", None) or type(channel).__name__
    native = native_type(data_type)
    if channel.max_length == 1 and native != ChannelType.CHAR and len(data) > 1:
        raise ValueError(f"{name}: {len(data)} values put to a scalar PV (one value expected)")
    target = channel.data_type
    if target not in (ChannelType.DOUBLE, ChannelType.FLOAT, ChannelType.LONG,
                      ChannelType.INT):
        return
    try:
        values = backend.convert_values(
            values=data, from_dtype=native, to_dtype=target,
            string_encoding=channel.string_encoding,
            direction=ConversionDirection.FROM_WIRE)
    except Exception:  # noqa: BLE001 - caproto's own conversion refuses it with its message
        return
    if target in (ChannelType.DOUBLE, ChannelType.FLOAT):
        bad = [float(v) for v in values if not math.isfinite(float(v))]
        if bad:
            raise ValueError(f"{name}: {bad[0]!r} is not a finite number{_limits_text(channel)}")
    elif native in (ChannelType.DOUBLE, ChannelType.FLOAT, ChannelType.STRING):
        for raw in data:
            try:
                number = float(raw.decode() if isinstance(raw, bytes) else raw)
            except ValueError:
                return
            if not (math.isfinite(number) and number == int(number)):
                raise ValueError(f"{name}: {number!r} is not an integer{_limits_text(channel)}")


async def _alarm_refused(channel: Any) -> None:
    """The WRITE/MAJOR alarm caproto raises on a put its putter refused.

    Not on a PV whose alarm a read-only PV shares (a motor-record field without an
    alarm of its own, such as TWV, shares the record's with RBV): ophyd judges every
    move by RBV's alarm, so one refused TWV put would fail every later move.
    """
    shared_with = getattr(channel.alarm, "_channels", ())  # caproto keeps no public list
    if any(getattr(getattr(other, "pvspec", None), "read_only", False)
           for other in shared_with if other is not channel):
        return
    await channel.alarm.write(status=AlarmStatus.WRITE, severity=AlarmSeverity.MAJOR_ALARM)


def _put_repr(data: Any) -> str:
    values = [v.decode(errors="replace") if isinstance(v, bytes)
              else v.item() if hasattr(v, "item") else v for v in data]
    return repr(values[0] if len(values) == 1 else values)


def _allowed_form(channel: Any) -> str:
    """What ``channel`` takes, for a refusal: its states, or a number and its range."""
    strings = getattr(channel, "enum_strings", None)
    if strings:
        return f"one of {list(strings)}"
    return f"a number{_limits_text(channel)}"


def _limits_text(channel: Any) -> str:
    """`` (allowed: [low, high])`` from the PV's ctrl limits, or nothing without any."""
    low = getattr(channel, "lower_ctrl_limit", 0)
    high = getattr(channel, "upper_ctrl_limit", 0)
    return f" (allowed: [{low:g}, {high:g}])" if low < high else ""


def install_client_put_guard() -> None:
    """Run :func:`check_client_put` on every client put, before caproto converts it.

    Why: caproto silently keeps the first element of an array put to a scalar PV,
    truncates 2.5 to 2 for an integer PV, and stores NaN in a float PV that has no
    putter (motor-record fields such as ``TWV``): each a silent accept of bad input
    (``docs/pv-reference.md``: a put that is out of range, NaN or malformed is
    refused with a put error). Only client puts pass here (``auth_write``); the
    IOCs' own writes do not.
    """
    global _put_guard_installed
    if _put_guard_installed:
        return
    from caproto import CaprotoConversionError
    from caproto._data import CannotExceedLimits, ChannelData

    auth_write = ChannelData.auth_write

    async def guarded_auth_write(self, hostname, username, data, data_type, metadata,
                                 **kwargs):
        try:
            check_client_put(self, data, data_type)
        except ValueError:
            await _alarm_refused(self)  # visible as caproto's own refusals are
            raise
        try:
            return await auth_write(self, hostname, username, data, data_type, metadata,
                                    **kwargs)
        except CannotExceedLimits as err:  # caproto's message does not name the PV
            raise ValueError(f"{self.pvname}: {err}") from None
        except CaprotoConversionError:  # caproto's message is empty, and no alarm
            await _alarm_refused(self)
            raise ValueError(f"{self.pvname}: {_put_repr(data)} is not "
                             f"{_allowed_form(self)}") from None

    ChannelData.auth_write = guarded_auth_write
    _put_guard_installed = True


def install_read_fast_path() -> None:
    """Make caproto's asyncio ``Event.wait(timeout)`` return at once when the event is
    set.

    Why: the server answers every CA read after ``await write_event.wait(timeout)``
    (the circuit's "no write in progress" event, set but for the instants a write is
    being handled). caproto's asyncio event implements the timeout with
    ``asyncio.wait_for``, which wraps even a set event's wait in a new task and a
    timer and returns only on the event loop's next pass: every read (a detector
    read of a step scan) paid that pass and the task. The answer is the same
    (``is_set()``); only the wait for a set event is skipped.
    """
    global _read_fast_path_installed
    if _read_fast_path_installed:
        return
    import caproto.asyncio.server as asyncio_server

    event_class = asyncio_server.AsyncioEvent
    wait_with_timeout = event_class.wait

    async def wait(self, timeout=None):
        if self.is_set():
            return True
        return await wait_with_timeout(self, timeout)

    event_class.wait = wait
    _read_fast_path_installed = True


def install_monitor_batching() -> None:
    """Make each CA circuit of caproto's asyncio server send, in one write, every
    monitor update queued for it when it wakes, without waiting for more.

    Why: the servers run with ``CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC=0`` (decision
    0010: no waiting for updates to batch with). caproto's loop then asks its queue
    for more with ``asyncio.wait_for(get(), 0)``, which never returns an item, even a
    queued one (the getter task has not run yet): every update went out alone, one
    write and one client wake-up each, after a task created and cancelled for the
    empty ask and a set of the circuit's ~80 subscription ids built for it. A stage
    step's four (DMOV 0, VAL, RBV, DMOV 1) took four writes, 0.1-0.5 ms apart; now
    what the event loop queued before the circuit's turn goes in one write (a step:
    one, see ``temsims.ioc.stage.MotorAxis.move_to``; decision 0019). Nothing waits:
    an update is sent at the first chance, as before.

    Kept from caproto's loop: updates of a subscription over its quota are dropped
    (the queue holds weak references), updates of subscriptions cancelled since they
    were queued are not sent, a batch is cut at ``SUB_BATCH_THRESH`` bytes.
    """
    global _batching_installed
    if _batching_installed:
        return
    import asyncio

    import caproto.asyncio.server as asyncio_server
    import caproto.server.common as server_common

    async def subscription_queue_loop(self) -> None:
        maybe_awaitable = self.events_on.set()
        if maybe_awaitable is not None:
            await maybe_awaitable
        queue: asyncio.Queue = self.subscription_queue
        while True:
            try:
                refs = [await queue.get()]
            except asyncio.CancelledError:
                break
            while not queue.empty():
                refs.append(queue.get_nowait())
            # None: an update over its subscription's quota (old news), dropped
            commands = [command for command in (ref() for ref in refs) if command is not None]
            try:
                while commands:
                    size = count = 0
                    while count < len(commands) and size < server_common.SUB_BATCH_THRESH:
                        size += len(commands[count])
                        count += 1
                    await self._send_live(commands[:count])
                    del commands[:count]
            except server_common.DisconnectedCircuit:
                await self._on_disconnect()
                self.circuit.disconnect()
                await self.context.circuit_disconnected(self)
                break

    async def _send_live(self, commands) -> None:
        """Send ``commands`` but those of subscriptions cancelled since they were queued
        (no EventAddResponse may follow its EventCancelResponse)."""
        live = {sub.subscriptionid for subs in self.subscriptions.values() for sub in subs}
        commands = [command for command in commands if command.subscriptionid in live]
        if commands:
            await self.send(*commands)

    asyncio_server.VirtualCircuit.subscription_queue_loop = subscription_queue_loop
    asyncio_server.VirtualCircuit._send_live = _send_live
    _batching_installed = True


# --------------------------------------------------------------------------------------
# Repeater on loopback
# --------------------------------------------------------------------------------------
def repeater_running(host: str, port: int) -> bool:
    """True when something already holds the repeater's UDP port on ``host``."""
    return not port_free(host, port, socket.SOCK_DGRAM)


def ensure_loopback_repeater(host: str, port: int) -> threading.Thread | None:
    """Run caproto's repeater in a daemon thread unless one already listens.

    Beacons are sent to the repeater port; with nothing there the server logs a
    traceback every beacon period. ``caproto-repeater`` binds 0.0.0.0, so we run the
    same code bound to loopback instead.
    """
    if repeater_running(host, port):
        return None
    from caproto.sync import repeater

    thread = threading.Thread(
        target=repeater.run, kwargs={"host": host}, name="ca-repeater", daemon=True
    )
    thread.start()
    return thread


# --------------------------------------------------------------------------------------
# Base class and validation helpers
# --------------------------------------------------------------------------------------
class InstrumentIOC(PVGroup):
    """Base of every temsims part: a Channel Access view of the instrument's world.

    Subclasses set :attr:`part` and mirror the readbacks they own into the world
    (:meth:`mirror`); what they read of other parts comes from the world too
    (:class:`~temsims.ioc.world.WorldLink`), never over Channel Access.

    PVs
    ---
    UPTIME (float, s, read-only)
        Nominal seconds since the part started; answers as soon as the server is up,
        which is what readiness checks poll.
    """

    #: Key of ``temsims.channel_access.IOC_PORT_OFFSETS``.
    part: ClassVar[str] = ""

    uptime = pvproperty(
        name="UPTIME", value=0.0, read_only=True, units="s", precision=1,
        doc="Seconds since this IOC started",
    )

    def __init__(
        self,
        *args: Any,
        instrument_prefix: str = DEFAULT_INSTRUMENT_PREFIX,
        world: World | None = None,
        **kwargs: Any,
    ) -> None:
        self.instrument_prefix = instrument_prefix
        self.world = world if world is not None else World()
        self.clock = self.world.clock
        self.seed = self.world.seed
        self.started_at = self.clock.now()
        install_server_fixes()  # process-wide, before this part's server runs
        super().__init__(*args, **kwargs)

    def mirror(self, key: str, instance: Any) -> None:
        """Publish every write of the PV ``instance`` as the world quantity ``key``."""
        mirror_pv(self.world, self.part, key, instance)

    async def reset_state(self) -> None:
        """Back to the start-up state (``SIM:RESET``); parts with state override it."""

    async def restore_defaults(self, *attrs: str) -> None:
        """Write each named PV's declared default back, clearing its alarm."""
        for attr in attrs:
            default = getattr(type(self), attr).pvspec.value
            instance = getattr(self, attr)
            await clear_alarm(instance)
            await write_if_changed(instance, default)

    @uptime.scan(period=1.0)
    async def uptime(self, instance, async_lib):
        await instance.write(self.clock.now() - self.started_at)


def require_finite(value: float, what: str) -> float:
    """Refuse NaN and infinities with a put error (the client's put fails)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what}: {value!r} is not a finite number")
    return value


def require_range(value: float, low: float, high: float, what: str) -> float:
    """Refuse values outside [low, high] with a put error, as DRVL/DRVH would."""
    value = require_finite(value, what)
    if not low <= value <= high:
        raise ValueError(f"{what}: {value} outside [{low}, {high}]")
    return value


# --------------------------------------------------------------------------------------
# SIMS geometry and PV helpers shared by the IOCs
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimsGeometry:
    """The SIMS-geometry condition and the peer PVs it is read from.

    In SIMS mode the holder is tilted to -68 deg (the FIB then hits the sample at
    45 deg and the extraction axis is normal to it) and the TEM objective lens is
    off (its field would deflect the ions). Used by the column (unblank) and the
    bias supply (output enable) IOCs.
    """

    tilt_deg: float = SIMS_TILT_DEG
    tolerance_deg: float = TILT_TOLERANCE_DEG
    alpha_key: str = "stage.A"
    objective_key: str = "tem.objective"

    def keys(self) -> tuple[str, str]:
        """World quantities of (stage alpha readback, objective lens readback)."""
        return self.alpha_key, self.objective_key

    def blocker(self, alpha_deg: Any, objective: Any) -> str | None:
        """Why the geometry forbids ion beam or bias now, or None if it permits.

        ``None`` inputs are parts that are down: they block (fail safe). The reasons
        are short (they go into a 40-character STATUS string after a prefix).
        """
        if alpha_deg is None:
            return "stage link down"
        if objective is None:
            return "TEM link down"
        try:
            alpha = float(alpha_deg)
        except (TypeError, ValueError):
            return "alpha unreadable"
        if not math.isfinite(alpha) or abs(alpha - self.tilt_deg) > self.tolerance_deg:
            return f"alpha {alpha:.1f} deg not {self.tilt_deg:g}+/-{self.tolerance_deg:g}"
        if objective not in (0, "Off"):
            return "objective lens on"
        return None


def status_text(prefix: str, reason: str) -> str:
    """``"<prefix>: <reason>"`` cut to fit a CA DBR_STRING (39 characters)."""
    return f"{prefix}: {reason}"[:39]


def enum_value(instance: Any, value: Any) -> str:
    """The enum string put to ``instance``, or a put error for an unknown state."""
    if isinstance(value, str) and value in instance.enum_strings:
        return value
    raise ValueError(
        f"{instance.pvname}: {value!r} is not one of {list(instance.enum_strings)}"
    )


async def clear_alarm(instance: Any) -> None:
    """Clear the alarm left on ``instance`` by an earlier refused put or trip."""
    alarm = instance.alarm
    if alarm.severity != AlarmSeverity.NO_ALARM or alarm.status != AlarmStatus.NO_ALARM:
        await alarm.write(status=AlarmStatus.NO_ALARM, severity=AlarmSeverity.NO_ALARM)


async def write_if_changed(instance: Any, value: Any, **metadata: Any) -> None:
    """Write ``value`` unless the PV already holds it (no redundant monitor events).

    ``metadata`` (e.g. ``timestamp``) goes with the write."""
    if instance.value != value:
        await instance.write(value, verify_value=False, **metadata)


def setpoint_pv(name: str, value: Any, **kwargs: Any) -> pvproperty:
    """A writable PV with its own alarm (a refused put alarms this PV only)."""
    kwargs.setdefault("alarm_group", name)
    return pvproperty(name=name, value=value, **kwargs)


def readback_pv(name: str, value: Any, **kwargs: Any) -> pvproperty:
    return pvproperty(name=name, value=value, read_only=True, **kwargs)


def serve_part(part: str, argv: list[str] | None = None) -> None:
    """``python -m temsims.ioc.<part>``: serve that part alone (see temsims.ioc.server)."""
    from temsims.ioc.server import main

    args = sys.argv[1:] if argv is None else list(argv)
    raise SystemExit(main(["--parts", part, *args]))


__all__ = [
    "InstrumentIOC",
    "ca",
    "install_monitor_batching",
    "install_read_fast_path",
    "install_server_fixes",
    "install_tcp_nodelay",
    "require_finite",
    "require_range",
    "serve_part",
]
