"""What every temsims IOC shares: the command line, the CA fixes, links to peers.

An IOC module defines a declarative :class:`caproto.server.PVGroup` subclass of
:class:`InstrumentIOC` and ends with::

    def main(argv=None):
        run_instrument_ioc(StageIOC, ioc_name="stage", argv=argv)

``run_instrument_ioc`` gives every IOC the same options (caproto's ``--prefix``,
``--list-pvs``, ``--interfaces``, plus ``--instrument-prefix``, ``--specimen``,
``--seed``), binds loopback unless told otherwise, applies the TCP_NODELAY fix and
makes sure a CA repeater listens on loopback so that beacons have somewhere to go.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import caproto as ca
from caproto import AlarmSeverity, AlarmStatus
from caproto.server import PVGroup, pvproperty, template_arg_parser

from temsims.channel_access import PART_SUFFIXES, CALayout, port_free

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
# Links to peer IOCs (caproto's asyncio client inside the server's event loop)
# --------------------------------------------------------------------------------------
class PeerMonitor:
    """Latest values of PVs served by other IOCs, kept by CA monitors.

    A disconnected PV reads as ``None``: interlocks built on it then refuse (fail
    safe), and the value comes back by itself when the peer IOC restarts.

    Parameters
    ----------
    pv_names
        Full PV names to follow.
    on_update
        Optional callable ``on_update(pv_name, value)`` run in the event loop after
        each update, and with ``value=None`` when the PV disconnects (awaited if it
        is a coroutine function).
    """

    def __init__(
        self,
        pv_names: Iterable[str],
        on_update: Callable[[str, Any], Any] | None = None,
    ) -> None:
        self.pv_names = list(pv_names)
        self.values: dict[str, Any] = dict.fromkeys(self.pv_names)
        self.timestamps: dict[str, float] = {}
        self._on_update = on_update
        self._task: asyncio.Task | None = None
        self._context = None

    def start(self) -> None:
        """Start following the PVs; call from inside the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        from caproto.asyncio.client import Context

        self._context = Context()
        try:
            async for event, context, data in self._context.monitor(*self.pv_names):
                if event == "connection":
                    name = getattr(context, "name", context)
                    if data != "connected":
                        self.values[name] = None
                        await self._notify(name, None)
                    continue
                name = context.pv.name
                value = _unwrap(data.data)
                self.values[name] = value
                self.timestamps[name] = data.metadata.timestamp
                await self._notify(name, value)
        except AttributeError:
            # caproto 1.3.0's Context.monitor() cleanup calls .values() on a list
            # when the generator is closed at shutdown; nothing is lost.
            pass

    async def _notify(self, name: str, value: Any) -> None:
        if self._on_update is None:
            return
        # An exception from the handler is logged, never raised: it would end the
        # monitor task, and the IOC would stop seeing its peers (a flyer then waited
        # 30 s for a frame the spectrometer never heard was started).
        try:
            result = self._on_update(name, value)
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            logger.exception("handling the update %s=%r", name, value)

    def get(self, pv_name: str, default: Any = None) -> Any:
        value = self.values.get(pv_name)
        return default if value is None else value

    def connected(self, pv_name: str) -> bool:
        return self.values.get(pv_name) is not None

    async def refresh(self, *pv_names: str, timeout: float = 1.0) -> None:
        """Read ``pv_names`` now, over CA, into :attr:`values`.

        A monitor update may still be in flight when a client that just finished a put
        on the peer asks this IOC to act on it (a put-then-trigger sequence from two
        different IOCs); a fresh read after the put has completed cannot be stale.
        """
        if self._context is None:
            return
        # A PV whose monitor says it is disconnected is not waited for (its peer is
        # down: the value stays None); the others are read concurrently.
        names = [name for name in pv_names if self.connected(name)]
        if not names:
            return
        pvs = await self._context.get_pvs(*names)

        async def read(pv) -> None:
            try:
                await pv.wait_for_connection(timeout=timeout)
                response = await pv.read(timeout=timeout)
            except (TimeoutError, OSError):
                self.values[pv.name] = None
                return
            self.values[pv.name] = _unwrap(response.data)

        await asyncio.gather(*(read(pv) for pv in pvs))

    async def write(self, pv_name: str, value: Any, *, wait: bool = True, timeout: float = 2.0):
        """Put to a peer PV (used sparingly: IOCs mostly only read their peers)."""
        if self._context is None:
            raise RuntimeError("PeerMonitor not started")
        (pv,) = await self._context.get_pvs(pv_name)
        await pv.wait_for_connection(timeout=timeout)
        return await pv.write(value if isinstance(value, list | tuple) else [value], wait=wait,
                              timeout=timeout)


def _unwrap(data: Any) -> Any:
    """A scalar for a one-element CA payload, else the array; strings decoded."""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    try:
        if len(data) == 1:
            item = data[0]
            return item.decode(errors="replace") if isinstance(item, bytes) else item
    except TypeError:
        return data
    return data


# --------------------------------------------------------------------------------------
# Base class and validation helpers
# --------------------------------------------------------------------------------------
class InstrumentIOC(PVGroup):
    """Base of every temsims IOC.

    PVs
    ---
    UPTIME (float, s, read-only)
        Seconds since the IOC started; answers as soon as the server is up, which is
        what readiness checks poll.
    """

    uptime = pvproperty(
        name="UPTIME", value=0.0, read_only=True, units="s", precision=1,
        doc="Seconds since this IOC started",
    )

    def __init__(
        self,
        *args: Any,
        instrument_prefix: str = DEFAULT_INSTRUMENT_PREFIX,
        specimen: str | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.instrument_prefix = instrument_prefix
        self.specimen_name = specimen
        self.seed = seed
        self.started_at = time.monotonic()
        super().__init__(*args, **kwargs)

    def peer_pv(self, part: str, suffix: str) -> str:
        """Full PV name of ``suffix`` on the peer IOC ``part`` (e.g. ``"stage"``)."""
        return f"{self.instrument_prefix}{PART_SUFFIXES[part]}{suffix}"

    @uptime.scan(period=1.0)
    async def uptime(self, instance, async_lib):
        await instance.write(time.monotonic() - self.started_at)


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

    tilt_deg: float = -68.0
    tolerance_deg: float = 1.0
    alpha_suffix: str = "A.RBV"
    objective_suffix: str = "OBJ_RBV"

    def pv_names(self, ioc: InstrumentIOC) -> tuple[str, str]:
        """Full names of (stage alpha readback, objective lens readback)."""
        return (ioc.peer_pv("stage", self.alpha_suffix),
                ioc.peer_pv("tem", self.objective_suffix))

    def blocker(self, alpha_deg: Any, objective: Any) -> str | None:
        """Why the geometry forbids ion beam or bias now, or None if it permits.

        ``None`` inputs are disconnected peers: they block (fail safe). The reasons
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


async def write_if_changed(instance: Any, value: Any) -> None:
    """Write ``value`` unless the PV already holds it (no redundant monitor events)."""
    if instance.value != value:
        await instance.write(value, verify_value=False)


def setpoint_pv(name: str, value: Any, **kwargs: Any) -> pvproperty:
    """A writable PV with its own alarm (a refused put alarms this PV only)."""
    kwargs.setdefault("alarm_group", name)
    return pvproperty(name=name, value=value, **kwargs)


def readback_pv(name: str, value: Any, **kwargs: Any) -> pvproperty:
    return pvproperty(name=name, value=value, read_only=True, **kwargs)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def run_instrument_ioc(
    group_cls: type[InstrumentIOC],
    *,
    ioc_name: str,
    argv: list[str] | None = None,
    desc: str | None = None,
    needs_specimen: bool = False,
    extra_kwargs: Callable[[Any], dict] | None = None,
) -> None:
    """Parse the command line, set up loopback CA and serve ``group_cls`` until stopped.

    Parameters
    ----------
    group_cls
        The IOC's PV group.
    ioc_name
        Key of ``temsims.channel_access.IOC_PORT_OFFSETS`` (selects the default port
        and the default PV prefix).
    argv
        Command-line arguments without the program name (default ``sys.argv[1:]``).
    desc
        Help text (default: the class docstring).
    needs_specimen
        Whether the IOC renders the virtual specimen (adds its construction).
    extra_kwargs
        ``extra_kwargs(args)`` returns more keyword arguments for ``group_cls``.
    """
    layout = CALayout.from_environment()
    # Servers bind loopback and beacon to loopback unless the caller set otherwise.
    # (Launched by temsims these are already set; caproto reads some at import, which
    # is why the launcher sets them in the child's environment.)
    if "EPICS_CAS_INTF_ADDR_LIST" not in os.environ:
        os.environ.update(layout.server_environment(ioc_name))

    default_prefix = DEFAULT_INSTRUMENT_PREFIX + PART_SUFFIXES[ioc_name]
    parser, split_args = template_arg_parser(
        desc=desc or (group_cls.__doc__ or ioc_name),
        default_prefix=default_prefix,
        argv=argv,
        supported_async_libs=("asyncio",),
    )
    parser.add_argument(
        "--instrument-prefix", default=None,
        help="Prefix shared by the instrument's IOCs, used to reach peer IOCs "
        "(default: --prefix without its part suffix, else TEMSIMS:)",
    )
    parser.add_argument("--specimen", default="li2co3-particles",
                        help="Virtual specimen loaded in the holder")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the specimen's randomness")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    ioc_options, run_options = split_args(args)

    instrument_prefix = args.instrument_prefix
    if instrument_prefix is None:
        suffix = PART_SUFFIXES[ioc_name]
        prefix = ioc_options["prefix"]
        instrument_prefix = prefix[: -len(suffix)] if prefix.endswith(suffix) else (
            DEFAULT_INSTRUMENT_PREFIX)

    kwargs: dict[str, Any] = dict(
        prefix=ioc_options["prefix"],
        instrument_prefix=instrument_prefix,
        specimen=args.specimen if needs_specimen else None,
        seed=args.seed,
    )
    if extra_kwargs is not None:
        kwargs.update(extra_kwargs(args))

    install_tcp_nodelay()
    ensure_loopback_repeater(
        os.environ.get("EPICS_CAS_INTF_ADDR_LIST", layout.host).split()[0],
        int(os.environ.get("EPICS_CA_REPEATER_PORT", layout.repeater_port)),
    )
    ioc = group_cls(**kwargs)
    from caproto.asyncio.server import run

    startup = getattr(ioc, "startup_hook", None)
    run(ioc.pvdb, startup_hook=startup, interfaces=run_options["interfaces"],
        log_pv_names=run_options["log_pv_names"])


__all__ = [
    "InstrumentIOC",
    "PeerMonitor",
    "ca",
    "install_tcp_nodelay",
    "require_finite",
    "require_range",
    "run_instrument_ioc",
]
