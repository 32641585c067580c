"""Ga+ focused-ion-beam column IOC (``FIB:``): optics, blanker and scan generator.

The column of an FEI Magnum-class FIB: 1-30 kV, ten beam-defining apertures from
1 pA to 20 nA, a probe whose diameter follows the current and the energy (the optics
are in :mod:`temsims.ioc.physics.ion_optics`; this module is the PV layer), a beam
blanker guarded by the SIMS-geometry interlock, and a scan generator that rasters on
the instrument's clock. The beam (blanker,
current, probe, landing energy) and the raster (its parameters, ACQUIRE and
START_TIME) are world quantities (``column.*``): the mass spectrometer renders its
maps from them in step with the beam, as a detector clocked by the scan generator.

Interlock (enforced here, whatever a client does; ``docs/interlocks.md``): the beam
can only be unblanked in SIMS geometry, i.e. the holder alpha tilt (``STAGE:A.RBV``)
within ``SimsGeometry.tolerance_deg`` of ``SimsGeometry.tilt_deg`` (-68 +/- 1 deg)
and the TEM objective lens off (``TEM:OBJ_RBV`` = Off). Both are read from the
instrument's world; a part that is down counts as "not in SIMS geometry" (fail safe). Losing the geometry while
unblanked blanks the beam at once and says why in ``STATUS``.

Scan sequence, the contract with the spectrometer IOC (``docs/pv-reference.md``):
put ``SCAN:ACQUIRE`` = Start. The raster parameters (NX, NY, DWELL, FOV, ROTATION,
MODE, SPOT_X/Y, HV, APERTURE) are already published and are frozen for the frame
(puts to them are refused until it ends); the IOC resets the counters, writes
``SCAN:START_TIME`` (nominal epoch s), then ``SCAN:ACQUIRE_RBV`` and ``SCAN:ACQUIRE`` = Start.
Pixel ``k`` (row-major, ``k = line * NX + column``) is dwelt on from
``START_TIME + k * DWELL`` for ``DWELL`` seconds; one frame lasts ``NX * NY * DWELL``.
Progress is published at each line end when a line lasts >= 20 ms of wall time (with
an extra update every 0.25 s inside long lines), otherwise batched at 25 Hz. At the end the
counters read NY lines and NX*NY pixels, ``SCAN:FRAME`` increments, then
``SCAN:ACQUIRE_RBV`` and ``SCAN:ACQUIRE`` return to Stop and the put-with-completion
of Start returns. A Stop put aborts the frame (``SCAN:FRAME`` does not increment).
A raster with the beam blanked is allowed (the spectrometer then counts dark counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from dataclasses import dataclass
from typing import Any

from caproto import AlarmSeverity, AlarmStatus, ChannelType, SkipWrite

from temsims.ioc.common import (
    InstrumentIOC,
    SimsGeometry,
    clear_alarm,
    enum_value,
    readback_pv,
    require_range,
    serve_part,
    setpoint_pv,
    status_text,
    write_if_changed,
)
from temsims.ioc.physics.ion_optics import (
    APERTURES,
    EMISSION_UA,
    FOCUS_RANGE_UM,
    immersion_focus_shift_um,
    landing_energy_kev,
    probe_diameter_nm,
    source_emission_ua,
)
from temsims.ioc.world import WorldLink

logger = logging.getLogger(__name__)

#: Operating range of the column voltage (kV): the limits of HV.
HV_RANGE_KV = (1.0, 30.0)
#: Range of the coincidence correction's beam shift (um), each axis.
COINCIDENCE_RANGE_UM = 5.0
#: Range of the raster's field-of-view calibration factor (SCAN:FOV_CAL) and of its
#: rotation calibration (SCAN:ROT_CAL, deg): a few times what a column drifts by.
FOV_CAL_RANGE = (0.8, 1.2)
ROT_CAL_RANGE_DEG = 10.0


@dataclass(frozen=True)
class FrameParams:
    """Raster parameters frozen at the start of a frame."""

    nx: int
    ny: int
    dwell_s: float

    @property
    def pixels(self) -> int:
        return self.nx * self.ny

    @property
    def line_s(self) -> float:
        return self.nx * self.dwell_s

    @property
    def frame_s(self) -> float:
        return self.pixels * self.dwell_s


class ColumnIOC(InstrumentIOC):
    """Ga+ FIB column: optics, blanker, SIMS-geometry interlock and scan generator.

    PVs (prefix ``<instrument>FIB:``; units in EGU, limits in DRVL/DRVH)
    -----------------------------------------------------------------
    HV (float, kV, 1..30)
        Column acceleration voltage setpoint; refused during a frame.
    HV_RBV (float, kV, read-only)
        Column voltage.
    APERTURE (enum: 1 pA, 10 pA, 30 pA, 50 pA, 100 pA, 300 pA, 1 nA, 3 nA, 7 nA, 20 nA)
        Beam-defining aperture, named by its beam current; refused during a frame.
    CURRENT_RBV (float, pA, read-only)
        Beam current in the column (through the aperture), blanked or not.
    SAMPLE_CURRENT_RBV (float, pA, read-only)
        Current reaching the sample: CURRENT_RBV when unblanked, 0 when blanked.
    PROBE_RBV (float, nm, read-only)
        Probe diameter (FWHM) in focus, ``probe_diameter_nm`` of current and HV
        (:mod:`temsims.ioc.physics.ion_optics`): what the column's optics table says,
        as a real column reports it. The probe on the specimen is larger when it is
        out of focus (the bias's immersion lens, FOCUS; decision 0044).
    EMISSION_RBV (float, uA, read-only)
        Source emission current (regulated, ~2.2 uA), updated at 1 Hz.
    LANDING_RBV (float, keV, read-only)
        Landing energy of Ga+ = HV_RBV - BIAS:VOLTAGE_RBV / 1000. INVALID/LINK alarm
        (last known bias used) while the bias IOC is not connected.
    BLANK (enum: Blanked, Unblanked)
        Blanker setpoint. Unblanked is refused outside SIMS geometry (put error,
        STATUS, WRITE/MAJOR alarm on BLANK and BLANK_RBV). Starts Blanked.
    BLANK_RBV (enum: Blanked, Unblanked, read-only)
        Blanker state; goes Blanked by itself (STATE/MAJOR alarm) when the geometry
        is lost while unblanked.
    INTERLOCK_RBV (enum: Blocked, Permit, read-only)
        Whether SIMS geometry permits unblanking now (re-evaluated at 10 Hz and on
        every peer update).
    INTERLOCK_REASON (string, read-only)
        "OK", or why the geometry blocks unblanking now ("stage link down", "TEM
        link down", "alpha ... deg not -68+/-1", "objective lens on").
    STATUS (string, read-only)
        "OK", or the last refusal ("Refused: ...") or automatic blank ("Blanked: ...").
    SCAN:FOV (float, um, 0.01..1000)
        Raster width along the fast (x) axis in the beam-normal plane; pixels are
        square, so the raster is FOV * NY / NX high.
    SCAN:NX, SCAN:NY (long, pixels, 1..1024)
        Pixels per line and lines per frame.
    SCAN:DWELL (float, s, 1e-7..0.1)
        Dwell time per pixel.
    SCAN:ROTATION (float, deg, -180..180)
        Scan rotation.
    SCAN:MODE (enum: Raster, Spot)
        Raster: the beam steps through the pixels. Spot: the beam stays at
        SPOT_X/SPOT_Y for a frame of the same timing (counters advance alike).
    SCAN:SPOT_X, SCAN:SPOT_Y (float, um, within +/- FOV/2 and +/- FOV*NY/NX/2)
        Beam position in spot mode, relative to the field centre; clamped into the
        field when FOV, NX or NY shrink it.
    SCAN:ACQUIRE (enum: Stop, Start)
        Start rasters one frame; its put-with-completion returns at the end of the
        frame. Stop aborts. Start while a frame runs is refused.
    SCAN:ACQUIRE_RBV (enum: Stop, Start, read-only)
        Start while a frame is being rastered.
    SCAN:LINE (long, read-only)
        Lines completed in the present frame (0..NY).
    SCAN:PIXEL (long, read-only)
        Pixels completed in the present frame (0..NX*NY).
    SCAN:PROGRESS (float, %, read-only)
        100 * PIXEL / (NX*NY).
    SCAN:FRAME (long, read-only)
        Frames completed since the IOC started (aborted frames do not count).
    SCAN:START_TIME (float, s since the epoch, read-only)
        Nominal time (the instrument's clock) the present (or last) frame started.
    SCAN:FRAME_TIME (float, s, read-only)
        Duration of one frame, NX * NY * DWELL.
    SCAN:PIXEL_NM (float, nm, read-only)
        Pixel size FOV / NX.
    UPTIME (float, s, read-only)
        Seconds since the IOC started.
    COINCIDENCE:X, COINCIDENCE:Y (float, um, -5..5) [added]
        The lab's TEM/FIB coincidence correction: a beam shift that moves the ion
        field's centre by (-X, -Y) on the specimen, to where the TEM's is. What a
        coincidence calibration (``plans.coincidence.calibrate_coincidence``) measures
        at the working bias and writes; 0 at start-up and after ``SIM:RESET``. The
        column's own bias-dependent beam shift (the uniform-field model) is applied
        whatever these say (decision 0042). Refused during a frame.
    COINCIDENCE:BIAS (float, V, -5000..5000) [added]
        The holder bias COINCIDENCE:X/Y were measured at, written with them by
        ``calibrate_coincidence``; 0 (never measured) at start-up and after
        ``SIM:RESET``. A record for the plans' check that the correction in force is
        the working bias's (decision 0042, 2026-12-05 amendment); no effect on the beam.
    SCAN:FOV_CAL (float, 0.8..1.2) [added]
        The lab's raster field calibration: the deflectors' gain, a factor on the
        field the column writes for SCAN:FOV (the nominal field, which the PVs and
        every map's metadata keep). What ``plans.raster_calibration.calibrate_raster``
        measures against a TEM image and writes; 1 at start-up and after
        ``SIM:RESET`` (decision 0029, 2026-12-05 raster-calibration amendment).
        Refused during a frame.
    FOCUS (float, um, -50..50) [added]
        The lab's objective focus offset: moves the probe's crossover toward the
        specimen by this much (um, column-referred), on top of the column's own focus
        table for the holder bias (the immersion lens of the extraction gap, which the
        column compensates from its model whatever this says). What
        ``plans.focus.focus_probe`` measures through focus on an edge and writes; 0 at
        start-up and after ``SIM:RESET``. Refused during a frame.
    FOCUS_TABLE_RBV (float, um, read-only) [added]
        The focus move the column's table applies for the present HV and holder bias
        (``ion_optics.immersion_focus_shift_um``: +6.71 um on +4.5 kV, +4.94 um on
        -4.5 kV at 30 kV; 0 at 0 V), whatever FOCUS says; follows the bias.
    SCAN:ROT_CAL (float, deg, -10..10) [added]
        The lab's raster rotation calibration: added to SCAN:ROTATION by the
        deflectors, written by ``calibrate_raster``; 0 at start-up and after
        ``SIM:RESET``. Refused during a frame.

    Puts to NX, NY, DWELL, FOV, ROTATION, MODE, SPOT_X, SPOT_Y, HV, APERTURE,
    COINCIDENCE:X/Y/BIAS, FOCUS and SCAN:FOV_CAL/ROT_CAL are refused (put error) while a frame runs, so a raster in
    progress is never corrupted. Every out-of-range, NaN or unknown-enum put is refused.
    """

    part = "column"
    geometry = SimsGeometry()
    #: Lines at least this long (wall s) are published one by one; shorter are batched.
    line_publish_min_s = 0.02
    #: Progress period when lines are batched (25 Hz).
    batch_publish_s = 0.04
    #: Longest gap between progress updates inside a long line.
    max_publish_gap_s = 0.25

    # ---- optics ------------------------------------------------------------------
    hv = setpoint_pv("HV", 30.0, units="kV", precision=2,
                   lower_ctrl_limit=HV_RANGE_KV[0], upper_ctrl_limit=HV_RANGE_KV[1],
                   doc="Column acceleration voltage setpoint (kV)")
    hv_rbv = readback_pv("HV_RBV", 30.0, units="kV", precision=2, doc="Column voltage (kV)")
    aperture = setpoint_pv("APERTURE", "1 pA", dtype=ChannelType.ENUM,
                         enum_strings=tuple(APERTURES), doc="Beam-defining aperture")
    current_rbv = readback_pv("CURRENT_RBV", 1.0, units="pA", precision=1,
                            doc="Beam current through the aperture (pA)")
    sample_current_rbv = readback_pv("SAMPLE_CURRENT_RBV", 0.0, units="pA", precision=1,
                                   doc="Beam current reaching the sample (pA), 0 if blanked")
    probe_rbv = readback_pv("PROBE_RBV", probe_diameter_nm(1.0, 30.0), units="nm",
                          precision=2, doc="Probe diameter FWHM (nm)")
    emission_rbv = readback_pv("EMISSION_RBV", EMISSION_UA, units="uA", precision=3,
                             doc="Source emission current (uA)")
    landing_rbv = readback_pv("LANDING_RBV", 30.0, units="keV", precision=3,
                            alarm_group="landing", doc="Ga+ landing energy (keV)")

    # ---- blanker and interlock ---------------------------------------------------
    blank = setpoint_pv("BLANK", "Blanked", dtype=ChannelType.ENUM,
                      enum_strings=("Blanked", "Unblanked"), alarm_group="blank",
                      doc="Beam blanker setpoint")
    blank_rbv = readback_pv("BLANK_RBV", "Blanked", dtype=ChannelType.ENUM,
                          enum_strings=("Blanked", "Unblanked"), alarm_group="blank",
                          doc="Beam blanker state")
    interlock_rbv = readback_pv("INTERLOCK_RBV", "Blocked", dtype=ChannelType.ENUM,
                              enum_strings=("Blocked", "Permit"),
                              doc="SIMS geometry permits unblanking")
    status = readback_pv("STATUS", "OK", dtype=ChannelType.STRING,
                       doc="OK, last interlock refusal or automatic blank")
    interlock_reason = readback_pv("INTERLOCK_REASON", "starting", dtype=ChannelType.STRING,
                                   doc="Why SIMS geometry blocks unblanking now, or OK")

    # ---- scan generator ------------------------------------------------------------
    fov = setpoint_pv("SCAN:FOV", 4.0, units="um", precision=4,
                    lower_ctrl_limit=0.01, upper_ctrl_limit=1000.0,
                    doc="Raster field of view along x (um)")
    nx = setpoint_pv("SCAN:NX", 256, units="px", lower_ctrl_limit=1, upper_ctrl_limit=1024,
                   doc="Pixels per line")
    ny = setpoint_pv("SCAN:NY", 256, units="px", lower_ctrl_limit=1, upper_ctrl_limit=1024,
                   doc="Lines per frame")
    dwell = setpoint_pv("SCAN:DWELL", 1e-4, units="s", precision=7,
                      lower_ctrl_limit=1e-7, upper_ctrl_limit=0.1, doc="Pixel dwell time (s)")
    rotation = setpoint_pv("SCAN:ROTATION", 0.0, units="deg", precision=2,
                         lower_ctrl_limit=-180.0, upper_ctrl_limit=180.0,
                         doc="Scan rotation (deg)")
    mode = setpoint_pv("SCAN:MODE", "Raster", dtype=ChannelType.ENUM,
                     enum_strings=("Raster", "Spot"), doc="Raster or spot mode")
    spot_x = setpoint_pv("SCAN:SPOT_X", 0.0, units="um", precision=4,
                       doc="Spot-mode beam x from the field centre (um)")
    spot_y = setpoint_pv("SCAN:SPOT_Y", 0.0, units="um", precision=4,
                       doc="Spot-mode beam y from the field centre (um)")
    coincidence_x = setpoint_pv("COINCIDENCE:X", 0.0, units="um", precision=4,
                                lower_ctrl_limit=-COINCIDENCE_RANGE_UM,
                                upper_ctrl_limit=COINCIDENCE_RANGE_UM,
                                doc="TEM/FIB coincidence correction along x (um)")
    coincidence_y = setpoint_pv("COINCIDENCE:Y", 0.0, units="um", precision=4,
                                lower_ctrl_limit=-COINCIDENCE_RANGE_UM,
                                upper_ctrl_limit=COINCIDENCE_RANGE_UM,
                                doc="TEM/FIB coincidence correction along y (um)")
    focus = setpoint_pv("FOCUS", 0.0, units="um", precision=3,
                        lower_ctrl_limit=-FOCUS_RANGE_UM, upper_ctrl_limit=FOCUS_RANGE_UM,
                        doc="Objective focus offset toward the specimen (um)")
    focus_table_rbv = readback_pv("FOCUS_TABLE_RBV", 0.0, units="um", precision=3,
                                  doc="Focus move of the column's bias focus table (um)")
    coincidence_bias = setpoint_pv("COINCIDENCE:BIAS", 0.0, units="V", precision=1,
                                   lower_ctrl_limit=-5000.0, upper_ctrl_limit=5000.0,
                                   doc="Holder bias the coincidence correction was "
                                   "measured at (V; 0: never)")
    fov_cal = setpoint_pv("SCAN:FOV_CAL", 1.0, precision=5,
                          lower_ctrl_limit=FOV_CAL_RANGE[0], upper_ctrl_limit=FOV_CAL_RANGE[1],
                          doc="Raster field calibration: factor on the written field")
    rot_cal = setpoint_pv("SCAN:ROT_CAL", 0.0, units="deg", precision=4,
                          lower_ctrl_limit=-ROT_CAL_RANGE_DEG, upper_ctrl_limit=ROT_CAL_RANGE_DEG,
                          doc="Raster rotation calibration: added to the written rotation (deg)")
    acquire = setpoint_pv("SCAN:ACQUIRE", "Stop", dtype=ChannelType.ENUM,
                        enum_strings=("Stop", "Start"),
                        doc="Start one frame (completion at its end) / Stop aborts")
    acquire_rbv = readback_pv("SCAN:ACQUIRE_RBV", "Stop", dtype=ChannelType.ENUM,
                            enum_strings=("Stop", "Start"), doc="A frame is being rastered")
    line = readback_pv("SCAN:LINE", 0, doc="Lines completed in the present frame")
    pixel = readback_pv("SCAN:PIXEL", 0, doc="Pixels completed in the present frame")
    progress = readback_pv("SCAN:PROGRESS", 0.0, units="%", precision=1,
                         doc="Frame progress (%)")
    frame = readback_pv("SCAN:FRAME", 0, doc="Frames completed")
    start_time = readback_pv("SCAN:START_TIME", 0.0, units="s", precision=6,
                           doc="Nominal time (epoch s) the present frame started")
    frame_time = readback_pv("SCAN:FRAME_TIME", 256 * 256 * 1e-4, units="s", precision=4,
                           doc="Duration of one frame NX*NY*DWELL (s)")
    pixel_nm = readback_pv("SCAN:PIXEL_NM", 4000.0 / 256, units="nm", precision=3,
                         doc="Pixel size FOV/NX (nm)")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._alpha_key, self._objective_key = self.geometry.keys()
        self._bias_key = "bias.voltage_v"
        self.world_link = WorldLink(
            self.world, [self._alpha_key, self._objective_key, self._bias_key],
            on_update=self._peer_update)
        self._last_bias_v: float | None = None
        self._frame_task: asyncio.Task | None = None
        self._abort = asyncio.Event()
        self._rng = random.Random(self.seed)

    async def startup_hook(self, async_lib: Any) -> None:
        """Publish the beam and raster to the world; follow tilt, objective and bias."""
        for key, pv in self._world_quantities().items():
            self.mirror(key, pv)
        self.world_link.start()
        await self._update_optics()
        await self._update_landing()

    def _world_quantities(self) -> dict[str, Any]:
        return {
            "column.blank": self.blank_rbv, "column.current_pa": self.current_rbv,
            "column.probe_nm": self.probe_rbv, "column.landing_kev": self.landing_rbv,
            "column.nx": self.nx, "column.ny": self.ny, "column.dwell_s": self.dwell,
            "column.fov_um": self.fov, "column.rotation_deg": self.rotation,
            "column.scan_mode": self.mode, "column.spot_x_um": self.spot_x,
            "column.spot_y_um": self.spot_y, "column.start_time": self.start_time,
            "column.acquire": self.acquire,
            "column.coincidence_x_um": self.coincidence_x,
            "column.coincidence_y_um": self.coincidence_y,
            "column.fov_cal": self.fov_cal, "column.rot_cal_deg": self.rot_cal,
            "column.focus_um": self.focus,
        }

    # ---- helpers -------------------------------------------------------------------
    def frame_running(self) -> bool:
        return self._frame_task is not None and not self._frame_task.done()

    def _refuse_during_frame(self, instance: Any) -> None:
        if self.frame_running():
            raise ValueError(f"{instance.pvname}: refused while a frame is being rastered")

    def geometry_blocker(self) -> str | None:
        """Why the beam may not be unblanked now, or None."""
        return self.geometry.blocker(
            self.world.get(self._alpha_key), self.world.get(self._objective_key)
        )

    async def _update_optics(self, *, hv_kv: float | None = None,
                              aperture: str | None = None) -> None:
        hv_kv = self.hv_rbv.value if hv_kv is None else hv_kv
        current = APERTURES[self.aperture.value if aperture is None else aperture]
        await write_if_changed(self.current_rbv, current)
        await write_if_changed(self.probe_rbv, probe_diameter_nm(current, hv_kv))
        unblanked = self.blank_rbv.value == "Unblanked"
        await write_if_changed(self.sample_current_rbv, current if unblanked else 0.0)

    async def _update_landing(self) -> None:
        bias = self.world.get(self._bias_key)
        if bias is not None:
            self._last_bias_v = float(bias)
        await write_if_changed(
            self.landing_rbv, landing_energy_kev(self.hv_rbv.value, self._last_bias_v or 0.0))
        table = immersion_focus_shift_um(self.hv_rbv.value, self._last_bias_v or 0.0)
        await write_if_changed(self.focus_table_rbv, 0.0 if table is None else table)
        alarm = self.landing_rbv.alarm
        if bias is None and alarm.severity != AlarmSeverity.INVALID_ALARM:
            await alarm.write(status=AlarmStatus.LINK, severity=AlarmSeverity.INVALID_ALARM)
        elif bias is not None:
            await clear_alarm(self.landing_rbv)

    async def _update_derived(self, *, nx: int | None = None, ny: int | None = None,
                               dwell: float | None = None, fov: float | None = None) -> None:
        nx = self.nx.value if nx is None else nx
        ny = self.ny.value if ny is None else ny
        dwell = self.dwell.value if dwell is None else dwell
        fov = self.fov.value if fov is None else fov
        await write_if_changed(self.frame_time, nx * ny * dwell)
        await write_if_changed(self.pixel_nm, 1000.0 * fov / nx)
        # Keep the spot inside the field.
        half_x, half_y = fov / 2, fov * ny / nx / 2
        for pv, half in ((self.spot_x, half_x), (self.spot_y, half_y)):
            if abs(pv.value) > half:
                await pv.write(math.copysign(half, pv.value), verify_value=False)

    async def _check_geometry(self) -> None:
        """Publish the interlock state; blank the beam if the geometry was lost."""
        reason = self.geometry_blocker()
        await write_if_changed(self.interlock_rbv, "Blocked" if reason else "Permit")
        await write_if_changed(self.interlock_reason, reason or "OK")
        if reason is not None and self.blank_rbv.value == "Unblanked":
            logger.warning("auto-blank: %s", reason)
            await self.blank.write("Blanked", verify_value=False)
            await self.blank_rbv.write("Blanked", verify_value=False)
            await self.blank_rbv.alarm.write(status=AlarmStatus.STATE,
                                             severity=AlarmSeverity.MAJOR_ALARM)
            await self.status.write(status_text("Blanked", reason), verify_value=False)
            await self._update_optics()

    async def _peer_update(self, name: str, value: Any) -> None:
        if name == self._bias_key:
            await self._update_landing()
        else:
            await self._check_geometry()

    # ---- optics putters ------------------------------------------------------------
    @hv.putter
    async def hv(self, instance, value):
        self._refuse_during_frame(instance)
        value = require_range(value, *HV_RANGE_KV, "HV (kV)")
        await self.hv_rbv.write(value)
        await self._update_optics(hv_kv=value)
        await self._update_landing()
        await clear_alarm(instance)
        return value

    @aperture.putter
    async def aperture(self, instance, value):
        self._refuse_during_frame(instance)
        value = enum_value(instance, value)
        await self._update_optics(aperture=value)
        await clear_alarm(instance)
        return value

    @emission_rbv.scan(period=1.0)
    async def emission_rbv(self, instance, async_lib):
        await instance.write(source_emission_ua(self._rng))

    # ---- blanker -------------------------------------------------------------------
    @blank.putter
    async def blank(self, instance, value):
        value = enum_value(instance, value)
        if value == "Unblanked":
            # Judged and committed with no await in between: a world update that lands
            # after this check finds BLANK_RBV already Unblanked and blanks the beam
            # (_check_geometry); one landing inside an await would find it still
            # Blanked, and the beam would stay on until the 10 Hz re-check.
            reason = self.geometry_blocker()
            if reason is None:
                await self.blank_rbv.write(value, verify_value=False)
                # The writes await: the geometry may have gone meanwhile.
                reason = self.geometry_blocker()
                if reason is not None:
                    await self._check_geometry()
            if reason is not None:
                await self.status.write(status_text("Refused", reason), verify_value=False)
                raise PermissionError(f"{instance.pvname}: Unblanked refused by the SIMS interlock: "
                                      f"{reason}")
            await self.status.write("OK", verify_value=False)
        else:
            await self.blank_rbv.write(value, verify_value=False)
        await clear_alarm(instance)
        await self._update_optics()
        return value

    @interlock_rbv.scan(period=0.1)
    async def interlock_rbv(self, instance, async_lib):
        # World updates act at once; this also re-checks after anything missed.
        await self._check_geometry()
        await self._update_landing()

    # ---- scan parameters -----------------------------------------------------------
    @fov.putter
    async def fov(self, instance, value):
        self._refuse_during_frame(instance)
        value = require_range(value, 0.01, 1000.0, "SCAN:FOV (um)")
        await self._update_derived(fov=value)
        await clear_alarm(instance)
        return value

    async def _checked_setting(self, instance, value, low, high, what: str):
        """A correction the raster reads at a frame's start: refused during a frame,
        else range-checked (``what`` names it in the error)."""
        self._refuse_during_frame(instance)
        value = require_range(value, low, high, what)
        await clear_alarm(instance)
        return value

    @coincidence_x.putter
    async def coincidence_x(self, instance, value):
        return await self._checked_setting(instance, value, -COINCIDENCE_RANGE_UM,
                                           COINCIDENCE_RANGE_UM, "COINCIDENCE:X (um)")

    @coincidence_y.putter
    async def coincidence_y(self, instance, value):
        return await self._checked_setting(instance, value, -COINCIDENCE_RANGE_UM,
                                           COINCIDENCE_RANGE_UM, "COINCIDENCE:Y (um)")

    @focus.putter
    async def focus(self, instance, value):
        return await self._checked_setting(instance, value, -FOCUS_RANGE_UM, FOCUS_RANGE_UM,
                                           "FOCUS (um)")
    @coincidence_bias.putter
    async def coincidence_bias(self, instance, value):
        return await self._checked_setting(instance, value, -5000.0, 5000.0,
                                           "COINCIDENCE:BIAS (V)")

    @fov_cal.putter
    async def fov_cal(self, instance, value):
        return await self._checked_setting(instance, value, *FOV_CAL_RANGE, "SCAN:FOV_CAL")

    @rot_cal.putter
    async def rot_cal(self, instance, value):
        return await self._checked_setting(instance, value, -ROT_CAL_RANGE_DEG,
                                           ROT_CAL_RANGE_DEG, "SCAN:ROT_CAL (deg)")

    @nx.putter
    async def nx(self, instance, value):
        self._refuse_during_frame(instance)
        value = int(require_range(value, 1, 1024, "SCAN:NX"))
        await self._update_derived(nx=value)
        await clear_alarm(instance)
        return value

    @ny.putter
    async def ny(self, instance, value):
        self._refuse_during_frame(instance)
        value = int(require_range(value, 1, 1024, "SCAN:NY"))
        await self._update_derived(ny=value)
        await clear_alarm(instance)
        return value

    @dwell.putter
    async def dwell(self, instance, value):
        self._refuse_during_frame(instance)
        value = require_range(value, 1e-7, 0.1, "SCAN:DWELL (s)")
        await self._update_derived(dwell=value)
        await clear_alarm(instance)
        return value

    @rotation.putter
    async def rotation(self, instance, value):
        self._refuse_during_frame(instance)
        value = require_range(value, -180.0, 180.0, "SCAN:ROTATION (deg)")
        await clear_alarm(instance)
        return value

    @mode.putter
    async def mode(self, instance, value):
        self._refuse_during_frame(instance)
        value = enum_value(instance, value)
        await clear_alarm(instance)
        return value

    @spot_x.putter
    async def spot_x(self, instance, value):
        self._refuse_during_frame(instance)
        half = self.fov.value / 2
        value = require_range(value, -half, half, "SCAN:SPOT_X (um)")
        await clear_alarm(instance)
        return value

    @spot_y.putter
    async def spot_y(self, instance, value):
        self._refuse_during_frame(instance)
        half = self.fov.value * self.ny.value / self.nx.value / 2
        value = require_range(value, -half, half, "SCAN:SPOT_Y (um)")
        await clear_alarm(instance)
        return value

    # ---- raster --------------------------------------------------------------------
    @acquire.putter
    async def acquire(self, instance, value):
        value = enum_value(instance, value)
        if value == "Stop":
            await clear_alarm(instance)
            if self.frame_running():
                self._abort.set()
                await asyncio.shield(self._frame_task)
                return SkipWrite  # the frame wrote Stop itself, in sequence
            return "Stop"
        if self.frame_running():
            raise ValueError("SCAN:ACQUIRE: a frame is already being rastered")
        params = FrameParams(nx=int(self.nx.value), ny=int(self.ny.value),
                             dwell_s=float(self.dwell.value))
        self._abort = asyncio.Event()
        # Created synchronously in this putter, so no parameter put can slip in
        # between the check above and the frame; shielded so that a client that
        # goes away does not abort the frame.
        self._frame_task = asyncio.get_running_loop().create_task(self._raster(params))
        await clear_alarm(instance)
        await asyncio.shield(self._frame_task)
        # The frame itself wrote ACQUIRE back to Stop after its last counters; writing
        # it again here could overwrite the Start of a frame begun in the meantime.
        return SkipWrite

    async def _publish_progress(self, params: FrameParams, pixels: int,
                                timestamp: float) -> None:
        """Counters at ``pixels``, stamped with the nominal time the beam got there."""
        pixels = max(0, min(params.pixels, pixels))
        await write_if_changed(self.line, pixels // params.nx, timestamp=timestamp)
        await write_if_changed(self.pixel, pixels, timestamp=timestamp)
        await write_if_changed(self.progress, 100.0 * pixels / params.pixels,
                               timestamp=timestamp)

    async def _raster(self, params: FrameParams) -> None:
        """Raster one frame on the clock (see the module docstring for the sequence)."""
        clock = self.clock
        t0 = clock.now()
        # Every PV of the frame is stamped with the nominal time it describes: an
        # update published late (by the event loop's latency, times the time scale)
        # still tells when the beam was there.
        await self._publish_progress(params, 0, t0)
        await self.start_time.write(t0, timestamp=t0)
        await self.acquire_rbv.write("Start", timestamp=t0)
        await self.acquire.write("Start", verify_value=False, timestamp=t0)
        t_end = t0 + params.frame_s
        t_stop = t_end
        # Publishing cadences are wall-clock rates (what clients can follow).
        per_line = clock.wall(params.line_s) >= self.line_publish_min_s
        max_gap = self.max_publish_gap_s * clock.scale
        batch = self.batch_publish_s * clock.scale
        aborted = False
        try:
            while (now := clock.now()) < t_end:
                if per_line:
                    lines_done = math.floor((now - t0) / params.line_s + 1e-9)
                    wake = min(t0 + (lines_done + 1) * params.line_s, now + max_gap)
                else:
                    wake = now + batch
                wake = min(wake, t_end)
                if await clock.wait(self._abort, wake - now):
                    aborted = True
                    break
                now = clock.now()
                if now < t_end:
                    await self._publish_progress(
                        params, math.floor((now - t0) / params.dwell_s + 1e-9), now)
            if aborted:
                t_stop = clock.now()
                done = math.floor((t_stop - t0) / params.dwell_s + 1e-9)
                await self._publish_progress(params, min(done, params.pixels - 1), t_stop)
            else:
                await self._publish_progress(params, params.pixels, t_end)
                await self.frame.write(self.frame.value + 1, timestamp=t_end)
        except BaseException:  # cancelled (the part is killed): stamped now
            t_stop = min(t_end, clock.now())
            raise
        finally:
            await self.acquire_rbv.write("Stop", timestamp=t_stop)
            await self.acquire.write("Stop", verify_value=False, timestamp=t_stop)

    async def reset_state(self) -> None:
        """No frame, beam blanked, default optics and raster (``SIM:RESET``)."""
        if self.frame_running():
            self._abort.set()
            with contextlib.suppress(Exception):
                await self._frame_task
        defaults = {self.hv: 30.0, self.hv_rbv: 30.0, self.aperture: "1 pA",
                    self.blank: "Blanked", self.blank_rbv: "Blanked", self.fov: 4.0,
                    self.nx: 256, self.ny: 256, self.dwell: 1e-4, self.rotation: 0.0,
                    self.mode: "Raster", self.spot_x: 0.0, self.spot_y: 0.0,
                    self.coincidence_x: 0.0, self.coincidence_y: 0.0,
                    self.coincidence_bias: 0.0, self.fov_cal: 1.0, self.rot_cal: 0.0,
                    self.focus: 0.0}
        for pv, value in defaults.items():
            await clear_alarm(pv)
            await write_if_changed(pv, value)
        await self.status.write("OK", verify_value=False)
        await self._update_derived()
        await self._update_optics()
        await self._update_landing()
        await self._check_geometry()


def main(argv=None):
    serve_part("column", argv)


if __name__ == "__main__":
    main()
