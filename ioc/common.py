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
    "install_tcp_nodelay",
    "require_finite",
    "require_range",
    "serve_part",
]
