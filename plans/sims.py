"""SIMS imaging plans: element/isotope maps and depth profiles.

Maps are taken at the present stage position with the ion column rastering
``fov_um`` in ``pixels = (nx, ny)`` (square pixels in the beam-normal plane, so
the map covers ``fov_um x fov_um * ny / nx``). Up to four species, one per
collector (collector n gets ``species[n-1]``; the others keep their masses).

Fly mode (default) rasters with the imager flyer: ``primary`` holds one event per
map line with ``imager_line`` and ``imager_<species>`` ((1, nx) counts) for each
collector. Step mode parks the beam in Spot mode on each pixel centre and counts
``dwell_s`` there (stream ``pixels``: the spectrometer's counts and the spot
position per pixel); its ``primary`` stream has exactly the keys and shapes of fly
mode, assembled line by line, so both modes analyse alike. Step mode is for small
maps (at most 4096 pixels) and comparisons.

Every plan blanks the ion beam at the end; on failure or abort the raster is
stopped, the beam blanked and the bias ramped to 0 V.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import FailedStatus, short_uid

from temsims.analysis.interferences import unresolved_interferences
from temsims.analysis.maps import MapLayout, SimsMapAccumulator, map_block
from temsims.constants import SIMS_INCIDENCE_DEG, extraction_incidence_deg, species_mass
from temsims.plans._common import (
    Values,
    _num,
    check_bool,
    check_device,
    check_int,
    check_md,
    check_number,
    check_pair,
    check_species,
    check_within,
    device_limits,
    plan_args_md,
    region_md,
    sims_md,
    start_metadata,
    with_safe_state,
)
from temsims.plans.spectra import _unblank
from temsims.plans.types import (
    BiasDevice,
    ImagerDevice,
    IonColumnDevice,
    Plan,
    SpectrometerDevice,
    StageDevice,
)

logger = logging.getLogger(__name__)

MAX_PIXELS_PER_SIDE = 1024
#: What a map does about ions its collectors cannot tell from its species.
INTERFERENCE_POLICIES = ("warn", "refuse", "ignore")
#: Collector mass window assumed when the spectrometer does not publish one (u).
DEFAULT_COLLECTOR_WINDOW_U = 0.8
_INTERFERENCES_WARNED: set[str] = set()
#: While a frame rasters, its lines are collected (emitted) this often (s).
FLUSH_PERIOD_S = 0.2
MAX_STEP_PIXELS = 4096
DWELL_RANGE_S = (1e-7, 0.1)
STEP_MIN_DWELL_S = 1e-4
MAX_FRAMES = 10000
#: Collector masses reachable at one field, relative to the axial mass (and the
#: widest mass ratio accepted, with a margin).
FOCAL_PLANE = (0.36, 1.96)
MAX_MASS_RATIO = 5.0
#: Elementary charge (C).
E_CHARGE_C = 1.602176634e-19
#: Defaults of the depth estimate: Li2CO3 (2.11 g/cm^3, 6 atoms per 73.89 u formula
#: unit -> 103.3 atoms/nm^3) under 25-30 keV Ga+ (yield ~2.5 atoms/ion, uncertain
#: within a factor of two); the ion beam meets the specimen at 45 deg.
DEFAULT_SPUTTER_YIELD = 2.5
DEFAULT_ATOMIC_DENSITY_NM3 = 2.11 * 6.02214076e23 / (73.89 / 6.0) * 1e-21


def check_sims_map_args(imager, spectrometer, column, stage, bias, species, fov_um, pixels,
                        dwell_s, frames, md, *, fly: bool = True, check_fov: bool = True,
                        arg_names: Mapping[str, str] | None = None):
    """Validate the arguments of a SIMS map (before anything moves).

    Used by :func:`sims_map`, :func:`depth_profile` and the plans that run maps inside
    them (:func:`temsims.plans.correlative.correlative_tem_sims`), so that a map which
    would be refused is refused before the first run of an experiment.
    ``check_fov=False`` skips the field-of-view check (regions still to be found); step mode
    (``fly=False``; ``fly`` is a bool its callers have checked) adds its own limits
    (pixels, dwell; sims_map itself reads that the scan is not rotated).

    ``arg_names`` renames the arguments in the error messages (a calling plan's own
    names, e.g. ``{"pixels": "sims_pixels"}``).

    Returns
    -------
    labels, fov_um, (nx, ny), dwell_s, frames, md
    """
    check_device("imager", imager, ImagerDevice)
    check_device("spectrometer", spectrometer, SpectrometerDevice)
    check_device("column", column, IonColumnDevice)
    check_device("stage", stage, StageDevice)
    check_device("bias", bias, BiasDevice)
    name = {"species": "species", "fov_um": "fov_um", "pixels": "pixels", "dwell_s": "dwell_s",
            "frames": "frames", **(arg_names or {})}
    labels = check_species(name["species"], species, max_n=4)
    if check_fov:
        fov_um = check_number(name["fov_um"], fov_um, low=0.0, low_open=True, unit="um")
        check_within(name["fov_um"], fov_um, device_limits(column.scan.fov), "um")
    nx, ny = check_pair(name["pixels"], pixels, integer=True, low=1, high=MAX_PIXELS_PER_SIDE)
    dwell_s = check_number(name["dwell_s"], dwell_s, low=DWELL_RANGE_S[0], high=DWELL_RANGE_S[1],
                           unit="s")
    frames = check_int(name["frames"], frames, low=1, high=MAX_FRAMES)
    md = check_md(md)
    masses = [species_mass(s) for s in labels]
    if max(masses) / min(masses) > MAX_MASS_RATIO:
        raise ValueError(f"{name['species']} {list(labels)}: the heaviest may be at most "
                         f"{MAX_MASS_RATIO:g} times the lightest (the focal plane spans "
                         f"{FOCAL_PLANE[0]:g}..{FOCAL_PLANE[1]:g} x the axial mass)")
    if not fly:
        if nx * ny > MAX_STEP_PIXELS:
            raise ValueError(f"{name['pixels']} {(nx, ny)}: step mode (fly=False) is limited to "
                             f"{MAX_STEP_PIXELS} pixels; use fly=True for larger maps")
        if dwell_s < STEP_MIN_DWELL_S:
            raise ValueError(f"{name['dwell_s']} = {dwell_s!r} s: step mode counts at least "
                             f"{STEP_MIN_DWELL_S:g} s per pixel (the spectrometer's COUNT_TIME)")
    return labels, fov_um, (nx, ny), dwell_s, frames, md


def check_interference_policy(interferences: Any) -> str:
    """``interferences`` of a map plan: one of :data:`INTERFERENCE_POLICIES`."""
    if interferences not in INTERFERENCE_POLICIES:
        raise ValueError(f"interferences must be one of {', '.join(INTERFERENCE_POLICIES)}, "
                         f"got {interferences!r}")
    return interferences


def interference_check(spectrometer, labels, policy: str):
    """Plan stub: the ions each species' collector would count with it, at the
    spectrometer's present window (``COL:WINDOW``), read before anything moves.

    Returns the start document's ``interferences`` block (``policy``, ``window_u``,
    ``window_assumed``, ``unresolved``: :meth:`Interference.as_dict` of each); logs a
    warning naming them, once per process for the same set ("warn"), or refuses the
    map ("refuse"). "ignore" checks nothing.
    """
    if policy == "ignore":
        return {"policy": policy}
    window = None
    signal = getattr(spectrometer, "collector_window", None)
    if signal is not None:
        window = yield from bps.rd(signal, default_value=None)
    assumed = window is None or not _num(window) > 0
    window_u = DEFAULT_COLLECTOR_WINDOW_U if assumed else _num(window)
    found = unresolved_interferences(labels, window_u)
    if found:
        text = "; ".join(f.describe() for f in found)
        if policy == "refuse":
            raise ValueError(
                f"species {list(labels)}: the collectors' {window_u:g} u window counts "
                f"these ions with them: {text}. Map other species, or pass "
                "interferences='warn' to map them and record the interferences")
        message = (f"SIMS map of {list(labels)}: unresolved at the collectors' {window_u:g} u "
                   f"window: {text} (recorded in each run's 'interferences')")
        if message not in _INTERFERENCES_WARNED:  # once per process: a mosaic maps many
            _INTERFERENCES_WARNED.add(message)
            logger.warning(message)
    return {"policy": policy, "window_u": window_u, "window_assumed": assumed,
            "unresolved": [f.as_dict() for f in found]}


def beam_incidence_deg(sims: dict) -> float:
    """The ion beam's angle to the specimen normal for a map (deg): the column's 45 deg
    bent by the extraction field (:func:`temsims.constants.extraction_incidence_deg`,
    the uniform-field model) at the landing energy and bias of ``sims`` (the block of
    :func:`temsims.plans._common.sims_md`); 45 deg if either is not known."""
    landing, bias_kv = sims.get("beam_energy_keV"), sims.get("bias_kV")
    if not landing or bias_kv is None:  # no column or no bias given (a simulation)
        return SIMS_INCIDENCE_DEG
    try:
        return round(extraction_incidence_deg(landing + bias_kv, 1000.0 * bias_kv), 4)
    except ValueError as exc:
        raise ValueError(f"{exc}: raise the column's HV or lower the bias") from None


def _map_md(plan_name, plan_args, imager, spectrometer, column, stage, bias, labels, fov_um,
            pixels, dwell_s, frames, md, extra, incidence_deg=None):
    region = yield from region_md(stage, fov_um=fov_um)
    sims = yield from sims_md(spectrometer, column, bias)
    if incidence_deg is None:
        incidence_deg = beam_incidence_deg(sims)
    for n, label in enumerate(labels):  # the species this plan puts on collectors 1..
        sims["collectors"][n] = {"name": f"col{n + 1}", "species": label,
                                 "mass_u": round(species_mass(label), 5)}
    rotation = _num((yield from bps.rd(column.scan.rotation, default_value=0.0)))
    nx, ny = pixels
    extra = dict(extra)
    extra.update({"detectors": [imager.name], "num_points": ny * frames, "shape": [ny, nx],
                  "map": map_block(imager=imager.name, species=labels, pixels=pixels,
                                   fov_um=fov_um, dwell_s=dwell_s, frames=frames,
                                   centre_um=(region["x_um"], region["y_um"]),
                                   scan_rotation_deg=rotation, incidence_deg=incidence_deg)})
    return start_metadata(plan_name=plan_name, plan_args=plan_args, mode="SIMS",
                          region=region, md=md, sims=sims, extra=extra)


def ensure_focal_plane(spectrometer, masses):
    """Plan stub: if some of ``masses`` (u) are outside the focal plane at the present
    field, set the magnet to put their geometric mean on the axis (the move ends when
    the magnet has settled) and confirm the readback has them on the focal plane."""
    def covered():
        a = yield from bps.rd(spectrometer.cal_a, default_value=None)
        b0 = yield from bps.rd(spectrometer.cal_b0, default_value=0.0)
        field = yield from bps.rd(spectrometer.field_rbv, default_value=0.0)
        if a is None:  # simulation (no RunEngine): assume it is
            return True, 1.0, 0.0
        axial = float(a) * (float(field) - float(b0)) ** 2
        lo, hi = FOCAL_PLANE[0] * axial, FOCAL_PLANE[1] * axial
        return (lo * 1.01 <= min(masses) and max(masses) <= hi * 0.99), float(a), float(b0)

    ok, a, b0 = yield from covered()
    if ok:
        return
    # The focal plane is not centred on the axis in log mass (0.36 x .. 1.96 x): the
    # axial mass that puts the pair's geometric mean in its log middle is that mean
    # over sqrt(0.36 x 1.96); the mean itself put 7Li..27Al (ratio 3.9 < 5) outside.
    axial = math.sqrt(min(masses) * max(masses) / (FOCAL_PLANE[0] * FOCAL_PLANE[1]))
    # The field's set() finishes once the magnet has settled (the IOC's put completion).
    yield from bps.mv(spectrometer.field, b0 + math.sqrt(axial / a))
    # The readback's monitor can arrive after the put completion on a loaded machine
    # (1 cathode demo in 4 at load 7 read the field from before the move): read again
    # for up to a second before calling the field wrong.
    for _ in range(20):
        ok, _, _ = yield from covered()
        if ok:
            break
        yield from bps.sleep(0.05)
    if not ok:
        raise RuntimeError(f"{spectrometer.name}: the settled field does not put "
                           f"{min(masses):.3f}..{max(masses):.3f} u on the focal plane")


def _configure(imager, spectrometer, column, labels, fov_um, pixels, dwell_s, scan_mode):
    yield from ensure_focal_plane(spectrometer, [species_mass(s) for s in labels])
    cols = spectrometer.collector_list()
    args = []
    for n, label in enumerate(labels):
        args += [cols[n], label]
    nx, ny = pixels
    yield from bps.mv(column.scan.mode, scan_mode)
    yield from bps.mv(*args)
    yield from bps.mv(column.scan.fov, fov_um, column.scan.nx, nx, column.scan.ny, ny,
                      column.scan.dwell, dwell_s, imager.lines_per_event, 1)


def _fly_frame(imager, restore: Callable[[], Plan[Any]] | None = None):
    """One raster frame through the imager flyer; returns the collected events.

    The lines are collected every :data:`FLUSH_PERIOD_S` while the raster runs
    (bluesky's ``collect_while_completing`` pattern), so their documents reach the
    live views and the catalog during the frame, not all at its end.

    A pause or a suspension (a part died or hung, the bias arced; decision 0026)
    interrupts the frame: the imager hands over the lines it took, abandons the frame's
    statuses and sets ``interrupted``. When the RunEngine goes on, ``restore()`` (a
    plan putting back what the map needs: settings, bias, beam) runs and the frame is rastered again from a
    checkpoint, emitting only the lines from the first one not collected: every line
    index is stored once. The frame's completion is read from its status, never from
    the ``wait`` message, which an interruption answers with "done".

    A frame that ends the run (an abort while paused, a failure, the arc limit) hands
    the lines taken before it to the run first: :meth:`pause` buffers them for the
    next collect, and bluesky collects a flyer at the run's end only if it was never
    collected, so they would be dropped.
    """
    try:
        return (yield from _fly_frame_lines(imager, restore))
    except Exception:  # RequestAbort too; not GeneratorExit (halt): nothing may run
        try:
            yield from bps.collect(imager)
        except Exception:  # noqa: BLE001 - the run's own error is the one to report
            pass
        raise


def _fly_frame_lines(imager, restore: Callable[[], Plan[Any]] | None = None):
    """:func:`_fly_frame` without the last collect of a frame that ends the run."""
    events: list = []
    next_line = 0
    line_key = f"{imager.name}_line"
    retry = False
    while True:
        if retry:  # the RunEngine rewinds to here if interrupted again
            yield from bps.checkpoint()
            if restore is not None:
                yield from restore()
            # The kickoff's own argument, not a Msg kwarg (bluesky warns that passing
            # those down to hardware may be deprecated).
            yield from bps.mv(imager.first_line, next_line)
            yield from bps.kickoff(imager, wait=True)
        else:
            yield from bps.kickoff(imager, wait=True)
        group = short_uid("complete")
        status = yield from bps.complete(imager, group=group)
        done = False
        failure: FailedStatus | None = None
        while not done:
            try:
                done = yield from bps.wait(group=group, timeout=FLUSH_PERIOD_S,
                                           error_on_timeout=False)
            except FailedStatus as exc:  # a failed frame; the lines taken go out first
                failure, done = exc, True
            # Read before the collect: a frame that ends (or is interrupted) after it
            # would otherwise end the loop with its last lines left uncollected.
            interrupted = bool(getattr(imager, "interrupted", False))
            ended = status is None or status.done
            new = (yield from bps.collect(imager)) or []
            events.extend(new)
            for ev in new:  # each event holds complete lines, in order
                block = next((v for k, v in ev.get("data", {}).items() if k != line_key), None)
                n = int(np.shape(block)[0]) if block is not None and np.ndim(block) == 2 else 1
                next_line = max(next_line, int(ev["data"][line_key]) + n)
            # None: a simulation (summarize_plan), no status; "done" after an
            # interruption means only that the wait was cut short.
            done = done is None or done or ended or interrupted
        if interrupted:  # its statuses never finish: re-acquire from next_line
            retry = True  # (also when no line was collected: restore() must run)
            continue
        if status is None or (status.done and status.success):
            return events
        if failure is not None:
            raise failure
        raise RuntimeError(f"{imager.name}: frame failed ({status.exception()!r})")


def _map_conditions(column, bias, configure: Callable[[], Plan[Any]]):
    """Plan stub: read the bias the map is taken at; return a plan that puts back what
    a frame needs after an interruption made the instrument safe.

    That plan switches the bias output on and ramps it back if it was on, runs
    ``configure()`` again (a part that died comes back with its start-up settings:
    collector masses, magnet field, raster) and unblanks the beam. The bias goes
    first: the extraction voltage sets the mass scale the focal plane is checked on.
    """
    volts = _num((yield from bps.rd(bias.readback, default_value=0.0)))
    output = yield from bps.rd(bias.enable, default_value="Off")
    bias_on = str(output) in ("On", "1") and abs(volts) > 1.0

    def restore():
        if bias_on:
            now = yield from bps.rd(bias.enable, default_value="Off")
            if str(now) not in ("On", "1"):
                yield from bps.mv(bias.enable, "On")
            yield from bps.mv(bias, round(volts, 1))
        yield from configure()
        yield from _unblank(column)

    return restore


def _frame_totals(events, imager, labels) -> dict[str, float]:
    totals = dict.fromkeys(labels, 0.0)
    for ev in events or []:
        data = ev.get("data", {})
        for label in labels:
            value = data.get(f"{imager.name}_{label}")
            if value is not None:
                totals[label] += float(np.asarray(value).sum())
    return totals


def _step_frame(imager, spectrometer, column, pixels, fov_um, line_buffer, settle_s):
    """One frame pixel by pixel in Spot mode; ``primary`` gets one event per line."""
    nx, ny = pixels
    pitch = fov_um / nx
    cols = spectrometer.collector_list()
    labels = None
    for iy in range(ny):
        yield from bps.checkpoint()
        row = np.zeros((len(cols), nx), dtype=np.int32)
        sy = (iy + 0.5 - ny / 2.0) * pitch
        for ix in range(nx):
            sx = (ix + 0.5 - nx / 2.0) * pitch
            yield from bps.mv(column.scan.spot_x, sx, column.scan.spot_y, sy)
            if settle_s > 0:
                yield from bps.sleep(settle_s)
            reading = yield from bps.trigger_and_read(
                [spectrometer, column.scan.spot_x, column.scan.spot_y], name="pixels")
            if reading:
                for k, col in enumerate(cols):
                    row[k, ix] = int(reading[col.counts.name]["value"])
        if labels is None:
            labels = imager.collector_labels()
        values = {"line": iy}
        for k, label in enumerate(labels):
            values[label] = row[k][None, :].copy()
        line_buffer.set_values(**values)
        yield from bps.trigger_and_read([line_buffer])


def sims_map(imager: ImagerDevice, spectrometer: SpectrometerDevice, column: IonColumnDevice,
             stage: StageDevice, bias: BiasDevice, *, species: tuple = ("6Li", "7Li"),
             fov_um: float, pixels: tuple = (64, 64), dwell_s: float, frames: int = 1,
             fly: bool = True, settle_s: float = 0.0,
             after_map: Callable[[dict[str, np.ndarray], MapLayout], Plan[Any]] | None = None,
             interferences: str = "warn", md: dict | None = None) -> Plan[str]:
    """SIMS map of up to four species at the present stage position.

    Parameters
    ----------
    imager : temsims.devices.imager.SIMSImager
        The flyer (fly mode); its name prefixes the map data keys in both modes.
    spectrometer : temsims.devices.spectrometer.MassSpectrometer
        Collectors 1..len(species) are set to ``species``; counts in step mode.
    column : temsims.devices.column.IonColumn
        Raster (FOV, pixels, dwell) and blanker; needs the SIMS geometry (see
        :func:`temsims.plans.mode.to_sims_mode`).
    stage : temsims.devices.stage.Stage
        Read for the region metadata (not moved).
    bias : temsims.devices.bias.BiasSupply
        Recorded (``bias_kV``); ramped to 0 V if the plan fails or is aborted.
    species : tuple of str
        1..4 distinct isotopes ("6Li", "7Li", "12C", ...), within the focal plane at
        the present magnet field.
    fov_um : float
        Raster width along x (um), within SCAN:FOV's limits.
    pixels : (int, int)
        (nx, ny), each 1..1024; step mode at most 4096 pixels in all.
    dwell_s : float
        Dwell per pixel (s), 1e-7..0.1 (step mode: at least 1e-4).
    frames : int
        Frames to acquire one after the other (1..10000); all in ``primary``, event
        k belongs to frame k // ny.
    fly : bool
        True: raster with the imager flyer; False: step mode (Spot + counting).
    settle_s : float
        Step mode: extra wait after each spot move before counting (s), 0..1
        (beam settling of a real deflector). Not needed for correctness: the
        spectrometer reads the spot position afresh from the column when a count
        starts.
    after_map : callable, optional
        ``after_map(maps, layout)``: a plan run inside this run once every frame is
        taken, with the maps assembled from this run's own events
        (:class:`temsims.analysis.maps.SimsMapAccumulator`: {species: (ny, nx) or
        (frames, ny, nx) counts}) and the :class:`~temsims.analysis.maps.MapLayout`
        of its start document (``layout.geometry()``: where the pixels lie); the
        readings it takes go into this run's streams (e.g. the particle table of
        :func:`temsims.plans.find_labelled_particles`). Both are None in a simulation
        such as ``summarize_plan``, where no document is emitted.
    interferences : {"warn", "refuse", "ignore"}
        Known ions (isobars, hydrides, oxides, dimers of the species' elements, the
        beam's Ga and the surface's H, C, O) that the collectors' mass window
        (``COL:WINDOW``) counts with a species
        (:func:`temsims.analysis.interferences.unresolved_interferences`): "warn"
        logs them and maps, "refuse" raises before anything moves, "ignore" does
        not look. Recorded in the start document's ``interferences``.
    md : dict, optional
        Extra start metadata.

    Yields
    ------
    msg : Msg
        One run. ``primary``: ``ny * frames`` events of ``imager_line`` and
        ``imager_<species>`` ((1, nx) int32 counts) for the four collectors.
        Step mode adds ``pixels`` (one event per pixel). The start document's
        ``map`` block (:func:`temsims.analysis.maps.map_block`: pixels, fov_um,
        dwell_s, centre_um, scan_rotation_deg, incidence_deg, pixel_to_specimen) is
        what :class:`temsims.analysis.maps.MapLayout` and
        :meth:`temsims.analysis.geometry.SimsMapGeometry.from_metadata` read.

    Returns
    -------
    str
        The run's uid.
    """
    fly = check_bool("fly", fly)
    if after_map is not None and not callable(after_map):
        raise TypeError(f"after_map must be a plan function f(maps) or None, got {after_map!r}")
    labels, fov_um, pixels, dwell_s, frames, md = check_sims_map_args(
        imager, spectrometer, column, stage, bias, species, fov_um, pixels, dwell_s, frames, md,
        fly=fly)
    settle_s = check_number("settle_s", settle_s, low=0.0, high=1.0, unit="s")
    interferences = check_interference_policy(interferences)
    nx, ny = pixels
    interference_md = yield from interference_check(spectrometer, labels, interferences)
    if not fly:  # read through the RunEngine, before anything moves
        rotation = _num((yield from bps.rd(column.scan.rotation, default_value=0.0)))
        if rotation != 0.0:
            raise ValueError(f"step mode needs SCAN:ROTATION = 0 (is {rotation:g} deg): the "
                             "spot position is not rotated by the column")

    _md = yield from _map_md(
        "sims_map",
        plan_args_md(imager=imager, spectrometer=spectrometer, column=column, stage=stage,
                     bias=bias, species=list(labels), fov_um=fov_um, pixels=pixels,
                     dwell_s=dwell_s, frames=frames, fly=fly, settle_s=settle_s,
                     interferences=interferences),
        imager, spectrometer, column, stage, bias, labels, fov_um, pixels, dwell_s, frames, md,
        {"acquisition": "fly" if fly else "step", "interferences": interference_md})

    maps = SimsMapAccumulator(frames="all") if after_map is not None else None

    @bpp.run_decorator(md=_md)
    def inner():
        if fly:
            def configure():
                return (yield from _configure(imager, spectrometer, column, labels, fov_um,
                                              pixels, dwell_s, "Raster"))

            yield from configure()
            restore = yield from _map_conditions(column, bias, configure)
            yield from _unblank(column)
            for _ in range(frames):
                yield from bps.checkpoint()
                yield from _fly_frame(imager, restore)
        else:
            yield from _configure(imager, spectrometer, column, labels, fov_um, pixels,
                                  dwell_s, "Spot")
            yield from bps.mv(spectrometer.count_time, dwell_s)
            yield from _unblank(column)
            # The keys, shapes and axes of the fly map's lines (the imager's describe).
            line_buffer = Values(imager.name, array_dims=("line", "x"))
            for _ in range(frames):
                yield from _step_frame(imager, spectrometer, column, pixels, fov_um,
                                       line_buffer, settle_s)
        yield from bps.mv(column.blank, "Blanked")
        if maps is not None:  # no map descriptor: a simulation (summarize_plan)
            yield from after_map(*((maps.result(), maps.layout) if maps.assembler is not None
                                   else (None, None)))

    def restore_raster():
        yield from bps.mv(column.blank, "Blanked")
        yield from bps.mv(column.scan.mode, "Raster")

    # Staged for the run: the imager refuses replays while a frame it flew may be
    # rewound to (between its stage and unstage); unstaged, a pause later in the same
    # RunEngine call rewinds to its own checkpoint (unstage clears the RunEngine's
    # message cache, so no checkpoint before the frame can be replayed).
    plan = (bpp.stage_wrapper(inner(), [imager]) if fly
            else bpp.finalize_wrapper(inner(), restore_raster()))
    if maps is not None:  # fed this run's documents as the RunEngine emits them
        plan = bpp.subs_wrapper(plan, maps)
    return (yield from with_safe_state(plan, column, bias))


def sputter_depth_nm(current_pa: float, frame_time_s: float, fov_um: float, pixels,
                     *, sputter_yield: float = DEFAULT_SPUTTER_YIELD,
                     atomic_density_nm3: float = DEFAULT_ATOMIC_DENSITY_NM3,
                     incidence_deg: float = SIMS_INCIDENCE_DEG) -> tuple[float, float]:
    """Dose (ions/nm^2) and depth (nm) of one frame: depth = dose x Y / n.

    The rastered area on the specimen is ``fov x fov * ny / nx`` in the beam-normal
    plane, stretched by ``1 / cos(incidence)`` on the specimen.
    """
    nx, ny = pixels
    ions = current_pa * 1e-12 * frame_time_s / E_CHARGE_C
    area_nm2 = (fov_um * 1000.0) ** 2 * ny / nx / math.cos(math.radians(incidence_deg))
    dose = ions / area_nm2
    return dose, dose * sputter_yield / atomic_density_nm3


def depth_profile(imager: ImagerDevice, spectrometer: SpectrometerDevice, column: IonColumnDevice,
                  stage: StageDevice, bias: BiasDevice, *, species: tuple = ("6Li", "7Li"),
                  fov_um: float, pixels: tuple = (32, 32), dwell_s: float, frames: int = 10,
                  sputter_yield: float = DEFAULT_SPUTTER_YIELD,
                  atomic_density_nm3: float = DEFAULT_ATOMIC_DENSITY_NM3,
                  incidence_deg: float | None = None, interferences: str = "warn",
                  md: dict | None = None) -> Plan[str]:
    """Depth profile: ``frames`` maps of the same area, with the sputtered depth per frame.

    The depth is estimated, not measured: each frame's dose ``D = I t_frame / (e A)``
    (ion current I from CURRENT_RBV, ``t_frame = nx ny dwell``, A the rastered
    area on the specimen) removes ``D x sputter_yield / atomic_density_nm3``.
    The defaults assume Li2CO3: yield 2.5 atoms/ion (uncertain within a factor of
    two), 103.3 atoms/nm^3 (2.11 g/cm^3, 12.3 u per atom); the incidence is the
    column's 45 deg bent by the extraction field at the map's bias (50 deg at +4.5 kV).
    The yield is that of +4.5 kV on a 30 kV column (25.5 keV at 50 deg): it changes
    with the landing energy and, most, the incidence (Yamamura; ~0.83 of it at -4.5 kV,
    decision 0041). Where the depth matters, measure it on the profile (the dose
    through a layer of known thickness, ``analysis.grains.sputter_yield_from_profile``)
    and rescale the depth axis.

    Parameters
    ----------
    imager, spectrometer, column, stage, bias
        As in :func:`sims_map` (fly mode).
    species : tuple of str
        1..4 isotopes.
    fov_um : float
        Raster width (um).
    pixels : (int, int)
        (nx, ny), each 1..1024.
    dwell_s : float
        Dwell per pixel (s), 1e-7..0.1.
    frames : int
        Frames (2..10000).
    sputter_yield : float
        Assumed sputter yield (atoms/ion), 0.01..100.
    atomic_density_nm3 : float
        Assumed atomic density of the matrix (atoms/nm^3), 1..500.
    incidence_deg : float, optional
        Angle between the ion beam and the specimen normal (deg), 0..85; default the
        extraction-field model at the map's landing energy and bias
        (:func:`beam_incidence_deg`). Recorded in the ``map`` block and used for the
        rastered area.
    interferences : {"warn", "refuse", "ignore"}
        As in :func:`sims_map`.
    md : dict, optional
        Extra start metadata.

    Yields
    ------
    msg : Msg
        One run: ``primary`` as in :func:`sims_map`; ``depth``: one event per frame
        with ``depth_frame``, ``depth_dose_ions_nm2`` (this frame),
        ``depth_depth_nm`` (cumulative, at the end of the frame),
        ``depth_depth_start_nm`` and ``depth_total_<species>`` (counts in the frame).

    Returns
    -------
    str
        The run's uid.
    """
    labels, fov_um, pixels, dwell_s, frames, md = check_sims_map_args(
        imager, spectrometer, column, stage, bias, species, fov_um, pixels, dwell_s, frames, md)
    if frames < 2:
        raise ValueError(f"frames = {frames}: a depth profile needs at least 2 frames")
    sputter_yield = check_number("sputter_yield", sputter_yield, low=0.01, high=100.0,
                                 unit="atoms/ion")
    atomic_density_nm3 = check_number("atomic_density_nm3", atomic_density_nm3, low=1.0,
                                      high=500.0, unit="atoms/nm^3")
    if incidence_deg is not None:
        incidence_deg = check_number("incidence_deg", incidence_deg, low=0.0, high=85.0,
                                     unit="deg")
    interferences = check_interference_policy(interferences)
    nx, ny = pixels
    frame_time = nx * ny * dwell_s
    interference_md = yield from interference_check(spectrometer, labels, interferences)

    _md = yield from _map_md(
        "depth_profile",
        plan_args_md(imager=imager, spectrometer=spectrometer, column=column, stage=stage,
                     bias=bias, species=list(labels), fov_um=fov_um, pixels=pixels,
                     dwell_s=dwell_s, frames=frames, sputter_yield=sputter_yield,
                     atomic_density_nm3=atomic_density_nm3, incidence_deg=incidence_deg,
                     interferences=interferences),
        imager, spectrometer, column, stage, bias, labels, fov_um, pixels, dwell_s, frames, md,
        {"acquisition": "fly", "interferences": interference_md,
         "depth_model": {"formula": "depth = dose x sputter_yield / atomic_density",
                         "sputter_yield_atoms_per_ion": sputter_yield,
                         "atomic_density_per_nm3": atomic_density_nm3,
                         "assumed_matrix": "Li2CO3 (defaults)"}},
        incidence_deg=incidence_deg)
    incidence_deg = _md["map"]["incidence_deg"]
    _md["depth_model"]["incidence_deg"] = incidence_deg

    @bpp.run_decorator(md=_md)
    def inner():
        def configure():
            return (yield from _configure(imager, spectrometer, column, labels, fov_um, pixels,
                                          dwell_s, "Raster"))

        yield from configure()
        restore = yield from _map_conditions(column, bias, configure)
        yield from _unblank(column)
        depth = 0.0
        stream = Values("depth", units={"dose_ions_nm2": "ions/nm^2", "depth_nm": "nm",
                                        "depth_start_nm": "nm",
                                        **{f"total_{s}": "counts" for s in labels}})
        for frame in range(frames):
            yield from bps.checkpoint()
            events = yield from _fly_frame(imager, restore)
            current = yield from bps.rd(column.current, default_value=0.0)
            dose, d = sputter_depth_nm(float(current or 0.0), frame_time, fov_um, pixels,
                                       sputter_yield=sputter_yield,
                                       atomic_density_nm3=atomic_density_nm3,
                                       incidence_deg=incidence_deg)
            totals = _frame_totals(events, imager, labels)
            row = {"frame": frame, "dose_ions_nm2": dose, "depth_start_nm": depth,
                   "depth_nm": depth + d,
                   **{f"total_{s}": totals[s] for s in labels}}
            depth += d
            stream.set_values(**row)
            yield from bps.trigger_and_read([stream], name="depth")
        yield from bps.mv(column.blank, "Blanked")

    # Staged for the run, as in sims_map: later pauses rewind to their own checkpoint.
    return (yield from with_safe_state(bpp.stage_wrapper(inner(), [imager]), column, bias))


__all__ = ["beam_incidence_deg", "depth_profile", "sims_map", "sputter_depth_nm"]
