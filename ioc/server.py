"""Serve one instrument: its five parts as Channel Access servers over one world.

One process holds the :class:`~temsims.ioc.world.World` and serves each part (stage,
TEM, ion column, bias supply, mass spectrometer) from its own thread, event loop,
caproto server and CA port (decision 0013). A part can be killed, hung and brought
back on its own, and to a CA client that looks exactly like a dead or a hung IOC:

- **Dead**: the part's server closes its listening, search and client sockets
  (circuits drop), its tasks are cancelled and its world quantities read None.
- **Hung**: the part's event loop is blocked (as SIGSTOP would block a process):
  circuits stay open and nothing answers until it resumes.
- **Up**: a dead part is built afresh on the same port; a hung one resumes.

A sixth server, the simulation control (``<instrument>SIM:``, port base + 9), is
what tests and operators use for that:

SIM:TIME_SCALE (float, read-only)
    Simulated seconds per wall second (``--time-scale``).
SIM:<PART> (enum Up/Dead/Hung), PART = STAGE, TEM, COLUMN, BIAS, SPECTROMETER
    The part's state; a put makes the transition and completes when it is done.
SIM:RESET (enum Idle/Reset)
    Put Reset: every part back to its start-up state (beam blanked, bias off at 0 V,
    TEM mode with the objective on, stage home, nothing acquiring) and a pristine
    specimen. Completes when done; parts that are not up are brought up first.
SIM:NOW (float, s, read-only)
    The instrument's nominal clock (epoch s).

Each part's PVs are ``<instrument prefix><suffix>`` (``channel_access.PART_SUFFIXES``:
``STAGE:``, ``TEM:``, ``FIB:``, ``BIAS:``, ``MS:``) unless ``--part-prefix PART=PREFIX``
(``Instrument(part_prefixes=...)``) names the part otherwise: the same instrument
served as another lab names its PVs (``docs/plans-across-labs.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from temsims.channel_access import IOC_PORT_OFFSETS, PART_SUFFIXES, CALayout
from temsims.ioc.world import Clock, World, install_clock
from temsims.stop_signals import StopSignals

logger = logging.getLogger(__name__)

ALL_PARTS: tuple[str, ...] = tuple(IOC_PORT_OFFSETS)
PART_STATES = ("Up", "Dead", "Hung")
DEFAULT_INSTRUMENT_PREFIX = "TEMSIMS:"


class PartStartError(RuntimeError):
    """A part's server could not start (its port is taken, or its group failed)."""


def part_group_class(part: str) -> type:
    """The caproto PVGroup class that serves ``part``."""
    import importlib

    from temsims.ioc.common import InstrumentIOC

    module = importlib.import_module(f"temsims.ioc.{part}")
    for obj in vars(module).values():
        if (isinstance(obj, type) and issubclass(obj, InstrumentIOC)
                and obj is not InstrumentIOC and obj.__module__ == module.__name__):
            return obj
    raise LookupError(f"no InstrumentIOC in temsims.ioc.{part}")


class PartServer:
    """One part: a PVGroup served by caproto in its own thread and event loop.

    Parameters
    ----------
    part
        Key of ``IOC_PORT_OFFSETS``.
    make_group
        Builds the part's PVGroup (called in the part's thread, at every start).
    port, host
        The part's CA server port and interface.
    world
        The instrument's world (the part's quantities read None while it is down).
    """

    def __init__(self, part: str, make_group: Callable[[], Any], port: int, host: str,
                 world: World) -> None:
        self.part = part
        self.make_group = make_group
        self.port = port
        self.host = host
        self.world = world
        self.state = "Dead"
        self.group: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._context: Any = None
        self._run_task: asyncio.Task | None = None
        self._resume: threading.Event | None = None

    # ---- start --------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        """Build the group and serve it; returns once the port answers."""
        if self.state != "Dead":
            return
        self.world.part_up(self.part)
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._main, args=(ready, failure),
                                        name=f"part-{self.part}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            # Whatever a group that never came up published must not pass for current.
            self.world.part_down(self.part)
            if not failure:
                raise PartStartError(f"{self.part}: its server did not start in {timeout} s")
            self._thread.join(5)
            raise PartStartError(f"{self.part}: {failure[0]}") from failure[0]
        self.state = "Up"

    def _main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready, failure))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            if not ready.is_set():
                failure.append(exc)
                ready.set()
            else:
                logger.exception("part %s stopped", self.part)
        finally:
            with contextlib.suppress(Exception):
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        from caproto.asyncio.server import Context

        try:
            self.group = self.make_group()
            context = Context(self.group.pvdb, [self.host])
            context.ca_server_port = self.port
        except Exception as exc:
            failure.append(exc)
            ready.set()
            return
        self._context = context
        startup = getattr(self.group, "startup_hook", None)
        self._run_task = asyncio.get_running_loop().create_task(
            context.run(startup_hook=startup))
        # caproto falls back to a random port when ours is taken: that is a failure.
        while not context.udp_socks and not self._run_task.done():
            await asyncio.sleep(0.005)
        if self._run_task.done() or getattr(context, "port", None) != self.port:
            failure.append(PartStartError(
                f"CA port {self.port} on {self.host} is taken"
                if not self._run_task.done() else repr(self._run_task.exception())))
            self._run_task.cancel()
            ready.set()
            return
        ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._run_task

    # ---- faults -------------------------------------------------------------------
    def kill(self, timeout: float = 10.0) -> None:
        """Stop serving, as a killed IOC: sockets closed, tasks gone, quantities None."""
        if self.state == "Dead":
            return
        # Down for its peers before it stops answering, not after: while it is being
        # stopped (the thread join can take long under load) its last values would
        # still pass for current, e.g. a tilt that let the beam be unblanked.
        self.world.part_down(self.part)
        if self.state == "Hung":
            self.resume()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # The loop may finish (and cancel what is left) before the future reports.
            with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError,
                                     concurrent.futures.TimeoutError):
                future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
                future.result(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        self.state = "Dead"
        self.group = None

    async def _shutdown(self) -> None:
        context = self._context
        link = getattr(self.group, "world_link", None)
        if link is not None:
            link.stop()
        # The sockets first, as a killed process's drop: clients see the circuit go
        # now, not after the server's tasks have been cancelled (which under load took
        # over a second). caproto would leave them to the garbage collector.
        if context is not None:
            for circuit in list(getattr(context, "circuits", ())):
                with contextlib.suppress(Exception):
                    circuit.client.close()
            for sock in context.tcp_sockets.values():
                with contextlib.suppress(Exception):
                    sock.close()
        if self._run_task is not None:
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._run_task
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    def hang(self) -> None:
        """Block the part's event loop until :meth:`resume` (a SIGSTOP of this part)."""
        if self.state != "Up" or self._loop is None:
            return
        self._resume = threading.Event()
        blocked = threading.Event()

        def block(resume: threading.Event = self._resume) -> None:
            blocked.set()
            resume.wait()

        self._loop.call_soon_threadsafe(block)
        blocked.wait(5.0)
        self.state = "Hung"

    def resume(self) -> None:
        if self.state == "Hung" and self._resume is not None:
            self._resume.set()
            self.state = "Up"

    def set_state(self, state: str) -> None:
        if state == self.state:
            return
        if state == "Dead":
            self.kill()
        elif state == "Hung":
            if self.state == "Dead":
                self.start()
            self.hang()
        elif state == "Up":
            if self.state == "Hung":
                self.resume()
            else:
                self.start()
        else:
            raise ValueError(f"{self.part}: state must be one of {PART_STATES}, not {state!r}")

    def call(self, coroutine_function: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run ``coroutine_function()`` in the part's loop and wait for its result."""
        if self.state != "Up" or self._loop is None:
            raise RuntimeError(f"{self.part} is {self.state}")
        return asyncio.run_coroutine_threadsafe(coroutine_function(), self._loop).result(timeout)


class Instrument:
    """The world and the five part servers of one instrument, in this process.

    Parameters
    ----------
    layout
        CA ports and interface.
    instrument_prefix
        PV prefix shared by every part (each adds its suffix, e.g. ``STAGE:``).
    specimen, seed
        The virtual specimen in the holder.
    parts
        Which parts to serve (default: all five).
    time_scale
        Simulated seconds per wall second.
    part_options
        Extra keyword arguments of each part's PVGroup (e.g. the spectrometer's
        ``drift_nm_per_min``).
    part_prefixes
        Full PV prefix of a part, replacing ``instrument_prefix + PART_SUFFIXES[part]``
        (e.g. ``{"stage": "LAB2:GONIO:"}``): the instrument as another lab names it.
        The simulation control stays ``<instrument_prefix>SIM:``.
    """

    def __init__(self, layout: CALayout | None = None, *,
                 instrument_prefix: str = DEFAULT_INSTRUMENT_PREFIX,
                 specimen: str = "li2co3-particles", seed: int = 1,
                 parts: Sequence[str] = ALL_PARTS, time_scale: float = 1.0,
                 part_options: dict[str, dict[str, Any]] | None = None,
                 part_prefixes: Mapping[str, str] | None = None) -> None:
        unknown = set(parts) - set(ALL_PARTS)
        if unknown:
            raise ValueError(f"unknown part(s) {sorted(unknown)}; expected {ALL_PARTS}")
        self.layout = layout or CALayout()
        self.instrument_prefix = instrument_prefix
        self.part_prefixes = check_part_prefixes(part_prefixes)
        self.world = World(Clock(time_scale), specimen=specimen, seed=seed)
        self.part_options = part_options or {}
        self.parts: dict[str, PartServer] = {
            part: PartServer(part, self._factory(part), self.layout.server_port(part),
                             self.layout.host, self.world)
            for part in ALL_PARTS if part in parts
        }
        self.control: PartServer | None = None

    def part_prefix(self, part: str) -> str:
        """The PV prefix ``part`` is served under."""
        return self.part_prefixes.get(part, self.instrument_prefix + PART_SUFFIXES[part])

    def _factory(self, part: str) -> Callable[[], Any]:
        cls = part_group_class(part)
        options = dict(self.part_options.get(part, {}))

        def make() -> Any:
            return cls(prefix=self.part_prefix(part),
                       instrument_prefix=self.instrument_prefix, world=self.world,
                       **options)

        return make

    def start(self) -> Instrument:
        """Serve every part and the simulation control."""
        from temsims.ioc.common import install_tcp_nodelay

        install_tcp_nodelay()
        install_clock(self.world.clock)
        # Specimen maps are built once, before the parts that image them start.
        if {"tem", "spectrometer"} & set(self.parts):
            _ = self.world.holder.specimen
        try:
            for server in self.parts.values():
                server.start()
            self.control = PartServer("sim", self._make_control, self.layout.sim_port,
                                      self.layout.host, self.world)
            self.control.start()
        except Exception:
            self.stop()
            raise
        return self

    def _make_control(self) -> Any:
        from temsims.ioc.simcontrol import SimControlIOC

        return SimControlIOC(prefix=self.instrument_prefix + "SIM:", instrument=self)

    def stop(self) -> None:
        for server in [*self.parts.values(), self.control]:
            if server is not None:
                with contextlib.suppress(Exception):
                    server.kill()

    def reset(self) -> None:
        """Every part back to its start-up state, and a pristine specimen."""
        for server in self.parts.values():
            server.set_state("Up")
        # The order keeps the interlocks satisfied: beam and bias off before the
        # stage leaves the SIMS tilt and before the objective comes back on.
        for part in ("spectrometer", "column", "bias", "stage", "tem"):
            server = self.parts.get(part)
            if server is not None:
                server.call(server.group.reset_state)
        if "spectrometer" not in self.parts:  # it restores the specimen itself
            self.world.holder.restore()


def check_part_prefixes(part_prefixes: Mapping[str, str] | None) -> dict[str, str]:
    """``{part: PV prefix}`` checked: known parts, non-empty prefixes, no two alike.

    Raises
    ------
    ValueError
        Naming the unknown part or the bad prefix.
    """
    out = dict(part_prefixes or {})
    unknown = set(out) - set(ALL_PARTS)
    if unknown:
        raise ValueError(f"part prefix of unknown part(s) {sorted(unknown)}; "
                         f"expected some of {ALL_PARTS}")
    for part, prefix in out.items():
        if not isinstance(prefix, str) or not prefix.strip() or prefix != prefix.strip():
            raise ValueError(f"part prefix of {part}: expected a PV prefix such as "
                             f"'LAB2:GONIO:', got {prefix!r}")
    if len(set(out.values())) != len(out):
        raise ValueError(f"two parts would share a PV prefix: {out}")
    return out


def parse_part_prefixes(items: Sequence[str]) -> dict[str, str]:
    """``["stage=LAB2:GONIO:", ...]`` (``--part-prefix``) -> ``{"stage": "LAB2:GONIO:"}``."""
    out: dict[str, str] = {}
    for item in items:
        part, sep, prefix = item.partition("=")
        if not sep:
            raise ValueError(f"--part-prefix {item!r}: expected PART=PREFIX")
        out[part.strip()] = prefix
    return check_part_prefixes(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m temsims.ioc.server",
        description="Serve the instrument's parts (stage, tem, column, bias, spectrometer) "
        "over Channel Access on one world, until SIGINT or SIGTERM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--prefix", default=DEFAULT_INSTRUMENT_PREFIX,
                        help="instrument PV prefix")
    parser.add_argument("--base-port", type=int, default=CALayout.from_environment().base_port,
                        help="CA port of the stage; the other parts follow (+2 .. +8), "
                        "the repeater is +1, the simulation control +9")
    parser.add_argument("--host", default="127.0.0.1", help="interface to serve on")
    parser.add_argument("--specimen", default="li2co3-particles",
                        choices=("li2co3-particles", "livo-cathode", "diffusion-couple",
                                 "solar-cell"), help="virtual specimen in the holder")
    parser.add_argument("--seed", type=int, default=1, help="seed of the specimen")
    parser.add_argument("--parts", default=",".join(ALL_PARTS),
                        help="comma-separated parts to serve")
    parser.add_argument("--part-prefix", action="append", default=[], metavar="PART=PREFIX",
                        help="serve PART under PV prefix PREFIX instead of --prefix plus "
                        "its suffix (STAGE:, TEM:, FIB:, BIAS:, MS:); repeat per part")
    add_simulation_arguments(parser)
    parser.add_argument("--list-pvs", action="store_true", help="log the PV names served")
    return parser


def add_simulation_arguments(parser: argparse.ArgumentParser) -> None:
    """``--time-scale``, ``--drift-nm-per-min``, ``--calibration-errors`` (the geometry
    errors' default set, decision 0042's 2026-12-05 amendment), the ion raster's errors
    ``--fov-error-pct``, ``--raster-rotation-deg``, ``--relief`` and the TEM/FIB
    coincidence's ``--landing-error-pct``, ``--eucentric-dz-um``, ``--coincidence-um`` and
    the probe focus's ``--focus-error-um`` (shared with ``temsims ioc``)."""
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="simulated seconds per wall second (moves, ramps, exposures "
                        "and maps run this much faster; every PV keeps nominal values)")
    parser.add_argument("--drift-nm-per-min", type=float, default=None,
                        help="specimen drift relative to the ion beam, nm/min (0..1000; "
                        "default: the spectrometer's own)")
    parser.add_argument("--calibration-errors", choices=("typical", "none"),
                        default="typical",
                        help="the ion beam's geometry errors: 'typical' draws a real "
                        "instrument's from --seed (field 2-4 %%, rotation 1-2 deg, "
                        "coincidence +-1 um per axis, landing +-0.3 %%, eucentric height "
                        "+-1 um; calibrate them with calibrate_coincidence and "
                        "calibrate_raster), 'none' is the exact geometry; each option "
                        "below overrides its part")
    parser.add_argument("--fov-error-pct", type=float, default=argparse.SUPPRESS,
                        help="ion raster's field-of-view calibration error, %% (-10..10; "
                        "default: from --calibration-errors): the true field is FOV * "
                        "(1 + e/100), the PVs and the plans keep the nominal one")
    parser.add_argument("--raster-rotation-deg", type=float, default=argparse.SUPPRESS,
                        help="ion raster's rotation error, deg (-10..10; default: "
                        "--calibration-errors'), added to the nominal scan rotation, "
                        "published nowhere")
    parser.add_argument("--relief", action="store_true",
                        help="the ion beam meets the specimen's relief: local incidence, "
                        "more dose on flanks facing the beam, none in their shadow, "
                        "parallax (decision 0041; off by default)")
    # The TEM/FIB coincidence (decision 0042): the simulator's truth, published nowhere.
    parser.add_argument("--landing-error-pct", type=float, default=argparse.SUPPRESS,
                        help="what the column's bias beam shift leaves of the extraction "
                        "field's landing shift, %% of it (-2..2; default: from "
                        "--calibration-errors): +0.3 moves the ion field +0.27 um along y "
                        "on +4.5 kV, -0.20 um on -4.5 kV")
    parser.add_argument("--eucentric-dz-um", type=float, default=argparse.SUPPRESS,
                        help="specimen height above the eucentric point, um (-5..5; "
                        "default: from --calibration-errors): the ion field moves "
                        "dz sin(alpha) along y (-0.93 dz at -68 deg)")
    parser.add_argument("--coincidence-um", type=float, nargs=2, default=argparse.SUPPRESS,
                        metavar=("X", "Y"),
                        help="the ion field's offset from the TEM's at 0 V, um (each "
                        "-2..2; default: from --calibration-errors)")
    parser.add_argument("--focus-error-um", type=float, default=0.0,
                        help="what the column's bias focus table leaves at 4.5 kV, um "
                        "(0..50; default 0: off): each instrument's seed draws 0.5-1 times "
                        "it, either sign, scaled by bias / 4.5 kV; at 1 mrad 10 um defocus "
                        "adds 11.8 nm to the probe in quadrature (decision 0044)")


def resolve_geometry_errors(args: argparse.Namespace) -> None:
    """Fill the geometry errors not given explicitly from ``--calibration-errors``
    (drawn from ``--seed``; :mod:`temsims.ioc.physics.geometry_errors`)."""
    from temsims.ioc.physics.geometry_errors import draw_geometry_errors

    drawn = draw_geometry_errors(args.seed, getattr(args, "calibration_errors", "typical"))
    for name, value in drawn.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def parse_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = set(parts) - set(ALL_PARTS)
    if unknown or not parts:
        parser.error(f"--parts: {sorted(unknown) or 'none given'}; choose from "
                     f"{','.join(ALL_PARTS)}")
    args.parts = parts
    try:
        args.part_prefixes = parse_part_prefixes(args.part_prefix)
    except ValueError as exc:
        parser.error(str(exc))
    if not (args.time_scale > 0 and args.time_scale <= 1000):
        parser.error(f"--time-scale must be in (0, 1000], got {args.time_scale}")
    if args.drift_nm_per_min is not None and not 0 <= args.drift_nm_per_min <= 1000:
        parser.error("--drift-nm-per-min must be within 0..1000")
    resolve_geometry_errors(args)
    for name in ("fov_error_pct", "raster_rotation_deg"):
        value = getattr(args, name)
        if not -10.0 <= value <= 10.0:  # also refuses NaN
            parser.error(f"--{name.replace('_', '-')} must be within -10..10, got {value}")
    for name, bound in (("landing_error_pct", 2.0), ("eucentric_dz_um", 5.0)):
        value = getattr(args, name)
        if not -bound <= value <= bound:
            parser.error(f"--{name.replace('_', '-')} must be within -{bound:g}..{bound:g}, "
                         f"got {value}")
    if not 0.0 <= args.focus_error_um <= 50.0:  # also refuses NaN
        parser.error(f"--focus-error-um must be within 0..50, got {args.focus_error_um}")
    args.coincidence_um = tuple(float(v) for v in args.coincidence_um)
    if not all(-2.0 <= v <= 2.0 for v in args.coincidence_um):
        parser.error(f"--coincidence-um must be within -2..2 each, got {args.coincidence_um}")
    try:
        CALayout(base_port=args.base_port, host=args.host)
    except ValueError as exc:
        parser.error(f"--base-port: {exc}")
    return args


def serve(args: argparse.Namespace, *, announce: Callable[[Instrument], None] | None = None
          ) -> int:
    """Serve until SIGINT or SIGTERM (both stop every part and the repeater thread)."""
    from temsims.ioc.common import ensure_loopback_repeater

    layout = CALayout(base_port=args.base_port, host=args.host)
    # Read by caproto at import and at server start (beacons to loopback only).
    os.environ.update(layout.server_environment("stage"))
    part_options: dict[str, dict[str, Any]] = {}
    if args.drift_nm_per_min is not None:
        part_options["spectrometer"] = {"drift_nm_per_min": args.drift_nm_per_min}
    if args.fov_error_pct or args.raster_rotation_deg:
        part_options.setdefault("spectrometer", {}).update(
            fov_error_pct=args.fov_error_pct, raster_rotation_deg=args.raster_rotation_deg)
    if getattr(args, "relief", False):
        part_options.setdefault("spectrometer", {})["relief"] = True
    if args.landing_error_pct or args.eucentric_dz_um or any(args.coincidence_um):
        part_options.setdefault("spectrometer", {}).update(
            landing_error_pct=args.landing_error_pct, eucentric_dz_um=args.eucentric_dz_um,
            coincidence_um=args.coincidence_um)
    if args.focus_error_um:
        part_options.setdefault("spectrometer", {})["focus_error_um"] = args.focus_error_um
    ensure_loopback_repeater(layout.host, layout.repeater_port)
    instrument = Instrument(layout, instrument_prefix=args.prefix, specimen=args.specimen,
                            seed=args.seed, parts=args.parts, time_scale=args.time_scale,
                            part_options=part_options,
                            part_prefixes=args.part_prefixes)
    stop = StopSignals()
    try:
        instrument.start()
        if args.list_pvs:
            for server in instrument.parts.values():
                for name in server.group.pvdb:
                    logger.info("%s", name)
        if announce is not None:
            announce(instrument)
        print(f"temsims: serving {', '.join(instrument.parts)} on {layout.host} "
              f"(time scale {args.time_scale:g})", flush=True)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        instrument.stop()
        stop.restore()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return serve(parse_options(argv))


if __name__ == "__main__":
    sys.exit(main())
