"""Mass spectrometer IOC: magnetic sector, four collectors, counting, mass scan, imaging.

A double-focusing (Mattauch-Herzog) magnetic sector with four ion-counting
collectors on its focal plane. The physics lives in :mod:`temsims.ioc.physics.sims`;
this module is the Channel Access face of it. What the counts depend on (the ion
column's beam and raster, the bias output, the stage position, the objective lens
and the sputtered specimen) is read from the instrument's world (decision 0013):
a raster frame starts here the moment the column starts it, as a detector clocked
by the scan generator, and nothing crosses Channel Access.

PVs (prefix ``<instrument>MS:``)
--------------------------------
FIELD, FIELD_RBV (float, T)
    Magnet setpoint / Hall-probe readback. The field settles exponentially (tau grows
    with the jump) and lags the setpoint by a hysteresis that depends on the direction
    of approach; the Hall probe reads the gap field plus a zero offset. Refused while
    a map or a scan runs. A FIELD put completes when the magnet has settled.
SETTLED (enum No/Yes)
CAL:A (u/T^2), CAL:B0 (T)
    Published mass calibration m = a (B_hall - B0)^2 at the present extraction
    voltage (a scales as 1/|bias|). It starts slightly off the truth: calibrate on
    the 69Ga/71Ga peaks of the primary beam (mass scan).
POLARITY_RBV (enum Positive/Negative)
    Follows the sign of the bias output.
DEAD_TIME (float, s, 10e-9..100e-9)
    The *calibrated* dead time of the counting chain: what the control side corrects
    counts with. It starts at the maker's nominal 30 ns; a put stores a new value (a
    calibration, ``plans.counting.calibrate_dead_time``) and does not change the
    counting, whose dead time is the instrument's own (drawn from its seed, 22-45 ns,
    published nowhere: decision 0034). A put sets DEAD_TIME:SOURCE to "manual".
DEAD_TIME:SOURCE (string) [added]
    Where DEAD_TIME came from: "nominal" (start-up and SIM:RESET), "manual" (a put to
    DEAD_TIME), or what a calibration writes after its DEAD_TIME put ("calibrated
    <run uid prefix> <UTC date>").
DARK_RATE (float, 1/s, 0..1000)
TRANSMISSION (float, 0.05..1) [added]
DRIFT_NM_PER_MIN (float, nm/min, 0..1000) [added]
    Drift of the specimen relative to the beam (also ``--drift-nm-per-min``).
COL:WINDOW (float, u, read-only) [added]
    Full width of the mass window each collector counts (its exit slit): an ion
    closer than half of it to a collector's mass is counted there. The plans check
    a map's species for known interferences at this window before they map.
COL{n}:MASS, COL{n}:MASS_RBV (float, u), n = 1..4
    Collector masses (calibrated scale). A put outside the focal plane at the present
    field (radius 0.6..1.4 of the axial radius, i.e. 0.36..1.96 of the axial mass)
    is refused. When the field changes the collectors are moved to keep their
    masses where the focal plane allows (else parked at its edge: MASS_RBV differs).
COL{n}:COUNTS (long), COL{n}:RATE (float, 1/s)
    Counting-mode results (measured, i.e. after dead time; sub-Poissonian, and
    carrying the probe current's fluctuation, ``sims.BeamCurrentNoise``).
COL{n}:MAP (long waveform)
    Imaging: NY x NX counts, row-major (row 0 = -y edge), filled line by line.
MODE (enum Counting/Scan/Imaging)
COUNT_TIME (float, s, 1e-4..3600)
ACQUIRE (enum Done/Acquire)
    Put Acquire with completion: Counting returns after COUNT_TIME; Scan after the
    mass scan; Imaging after the next (or the running) raster frame of the column.
BUSY (enum Idle/Busy) [added]
SCAN:START, SCAN:STOP, SCAN:STEP (float, u), SCAN:DWELL (float, s)
SCAN:SPECTRUM (float waveform, counts), SCAN:MASS_AXIS (float waveform, u)
SCAN:FIELD_AXIS (float waveform, T) [added]
    Hall readback at each step (fit the calibration against it).
SCAN:NPTS (long) [added]
IMG:LINES_DONE, IMG:NX, IMG:NY, IMG:FRAME (long)
IMG:DWELL (float, s), IMG:START_TIME (float, epoch s) [added]
    Snapshot of the frame being (or last) mapped.
SIMS_READY (enum No/Yes)
    Holder alpha within 1 deg of -68, objective lens off, bias on (|V| > 100 V),
    ion beam unblanked. When not ready, every count is a dark count.
STATUS (string)
    "OK", why SIMS is not ready, or the last refusal.

Ground truth (the specimen, and this instrument's mass fractionation and collector
yields, drawn from its seed: decision 0035) stays inside this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty

from temsims.ioc.common import InstrumentIOC, require_range, serve_part
from temsims.ioc.physics import ion_optics
from temsims.ioc.physics import sims as sp
from temsims.ioc.world import WorldLink

logger = logging.getLogger(__name__)

N_COLLECTORS = 4
MAX_MAP_PIXELS = 1024 * 1024
MAX_SCAN_POINTS = 20000
#: Publish the growing maps at most this often (Hz) when lines are faster than that.
PUBLISH_RATE_HZ = 25.0
#: Longest nominal wait of a FIELD put for the magnet to settle (s): a 2 T jump takes ~9.
MAX_SETTLE_S = 30.0
#: A Stop from the column this close to the frame's end is its normal end, not an abort.
END_TOLERANCE_S = 0.05
#: Longest wait (wall s) of a parameter put for a stopped frame to wind down.
STOPPING_FRAME_WAIT_S = 5.0
#: Settling of the magnet between the (small) steps of a mass scan.
SCAN_STEP_SETTLE_S = 1e-3
#: Wall seconds without a change of what a frame is computed from before the next
#: frame's plan is prepared ahead (each costs ~0.3-1.5 s of CPU on a 2-6 um field).
PREPARE_QUIET_S = 0.2
#: Values DEAD_TIME (the calibrated dead time, s) accepts.
DEAD_TIME_RANGE_S = (10e-9, 100e-9)
#: Default collector masses (u) with the axial mass at 7 u: 6Li, 7Li, 12C, 13C.
DEFAULT_MASSES = (6.015122887, 7.01600344, 12.0, 13.00335484)

# Enum indices of peer PVs (order as in docs/pv-reference.md); strings are accepted too.
_ON = {"on", "start", "unblanked", "spot", "1"}


def _is_on(value: Any, on_index: int = 1) -> bool | None:
    """Interpret a peer enum (index or string); ``None`` when disconnected."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() in _ON
    try:
        return int(value) == on_index
    except (TypeError, ValueError):
        return None


def _float(value: Any, default: float | None = None) -> float | None:
    if value is None:
        return default
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


#: What the counts depend on, by short name here -> world quantity (owner.name).
WORLD_KEYS: dict[str, str] = {
    "acquire": "column.acquire", "start_time": "column.start_time", "nx": "column.nx",
    "ny": "column.ny", "dwell": "column.dwell_s", "fov": "column.fov_um",
    "rotation": "column.rotation_deg", "scan_mode": "column.scan_mode",
    "spot_x": "column.spot_x_um", "spot_y": "column.spot_y_um",
    "current": "column.current_pa", "probe": "column.probe_nm",
    "landing": "column.landing_kev", "blank": "column.blank",
    "bias_enable": "bias.enable", "bias_v": "bias.voltage_v", "x": "stage.X",
    "y": "stage.Y", "alpha": "stage.A", "objective": "tem.objective", "z": "stage.Z",
    "coincidence_x": "column.coincidence_x_um", "coincidence_y": "column.coincidence_y_um",
    "fov_cal": "column.fov_cal", "rot_cal": "column.rot_cal_deg",
    "focus": "column.focus_um",
}

#: Value of map pixels not acquired (yet) in the present frame.
UNACQUIRED = -1


class CollectorGroup(PVGroup):
    """One collector: ``COL{n}:`` MASS, MASS_RBV, COUNTS, RATE, MAP."""

    mass = pvproperty(name="MASS", alarm_group="MASS", value=7.0, units="u", precision=4,
                      doc="Collector mass setpoint (calibrated scale)")
    mass_rbv = pvproperty(name="MASS_RBV", alarm_group="MASS_RBV", value=7.0, units="u", precision=4, read_only=True)
    counts = pvproperty(name="COUNTS", alarm_group="COUNTS", value=0, dtype=ChannelType.LONG, read_only=True)
    rate = pvproperty(name="RATE", alarm_group="RATE", value=0.0, units="1/s", precision=1, read_only=True)
    map = pvproperty(name="MAP", alarm_group="MAP", value=np.zeros(1, np.int32), dtype=ChannelType.LONG,
                     max_length=MAX_MAP_PIXELS, read_only=True,
                     doc="NY x NX counts, row-major")

    @property
    def index(self) -> int:
        return int(self.prefix.rstrip(":").rsplit("COL", 1)[-1]) - 1

    @mass.putter
    async def mass(self, instance, value):
        return await self.parent.put_collector_mass(self.index, value)


class SpectrometerIOC(InstrumentIOC):
    """Mass spectrometer IOC (see the module docstring for the PVs)."""

    part = "spectrometer"

    field = pvproperty(name="FIELD", alarm_group="FIELD", value=0.0, units="T", precision=6,
                       lower_ctrl_limit=0.0, upper_ctrl_limit=2.0)
    field_rbv = pvproperty(name="FIELD_RBV", alarm_group="FIELD_RBV", value=0.0, units="T", precision=6, read_only=True)
    settled = pvproperty(name="SETTLED", alarm_group="SETTLED", value="Yes", enum_strings=("No", "Yes"),
                         dtype=ChannelType.ENUM, read_only=True)
    cal_a = pvproperty(name="CAL:A", alarm_group="CAL:A", value=100.0, units="u/T^2", precision=6)
    cal_b0 = pvproperty(name="CAL:B0", alarm_group="CAL:B0", value=0.0, units="T", precision=7)
    polarity_rbv = pvproperty(name="POLARITY_RBV", alarm_group="POLARITY_RBV", value="Positive",
                              enum_strings=("Positive", "Negative"), dtype=ChannelType.ENUM,
                              read_only=True)
    dead_time = pvproperty(name="DEAD_TIME", alarm_group="DEAD_TIME", value=sp.NOMINAL_DEAD_TIME_S,
                           units="s", precision=12, lower_ctrl_limit=DEAD_TIME_RANGE_S[0],
                           upper_ctrl_limit=DEAD_TIME_RANGE_S[1],
                           doc="Calibrated dead time (s) the control side corrects with")
    dead_time_source = pvproperty(name="DEAD_TIME:SOURCE", alarm_group="DEAD_TIME:SOURCE",
                                  value="nominal", dtype=ChannelType.STRING,
                                  doc="Where DEAD_TIME came from")
    dark_rate = pvproperty(name="DARK_RATE", alarm_group="DARK_RATE", value=0.2, units="1/s", precision=3,
                           lower_ctrl_limit=0.0, upper_ctrl_limit=1000.0)
    transmission = pvproperty(name="TRANSMISSION", alarm_group="TRANSMISSION", value=0.45, precision=3,
                              lower_ctrl_limit=0.05, upper_ctrl_limit=1.0)
    drift_rate = pvproperty(name="DRIFT_NM_PER_MIN", alarm_group="DRIFT_NM_PER_MIN", value=3.0, units="nm/min", precision=2,
                            lower_ctrl_limit=0.0, upper_ctrl_limit=1000.0)
    collector_window = pvproperty(name="COL:WINDOW", alarm_group="COL:WINDOW", value=0.8, units="u",
                                  precision=3, read_only=True)

    col1 = SubGroup(CollectorGroup, prefix="COL1:")
    col2 = SubGroup(CollectorGroup, prefix="COL2:")
    col3 = SubGroup(CollectorGroup, prefix="COL3:")
    col4 = SubGroup(CollectorGroup, prefix="COL4:")

    mode = pvproperty(name="MODE", alarm_group="MODE", value="Counting",
                      enum_strings=("Counting", "Scan", "Imaging"), dtype=ChannelType.ENUM)
    count_time = pvproperty(name="COUNT_TIME", alarm_group="COUNT_TIME", value=1.0, units="s", precision=4,
                            lower_ctrl_limit=1e-4, upper_ctrl_limit=3600.0)
    acquire = pvproperty(name="ACQUIRE", alarm_group="ACQUIRE", value="Done", enum_strings=("Done", "Acquire"),
                         dtype=ChannelType.ENUM)
    busy = pvproperty(name="BUSY", alarm_group="BUSY", value="Idle", enum_strings=("Idle", "Busy"),
                      dtype=ChannelType.ENUM, read_only=True)

    scan_start = pvproperty(name="SCAN:START", alarm_group="SCAN:START", value=66.0, units="u", precision=4,
                            lower_ctrl_limit=0.5, upper_ctrl_limit=400.0)
    scan_stop = pvproperty(name="SCAN:STOP", alarm_group="SCAN:STOP", value=74.0, units="u", precision=4,
                           lower_ctrl_limit=0.5, upper_ctrl_limit=400.0)
    scan_step = pvproperty(name="SCAN:STEP", alarm_group="SCAN:STEP", value=0.01, units="u", precision=5,
                           lower_ctrl_limit=1e-4, upper_ctrl_limit=10.0)
    scan_dwell = pvproperty(name="SCAN:DWELL", alarm_group="SCAN:DWELL", value=1e-3, units="s", precision=5,
                            lower_ctrl_limit=1e-5, upper_ctrl_limit=10.0)
    scan_spectrum = pvproperty(name="SCAN:SPECTRUM", alarm_group="SCAN:SPECTRUM", value=np.zeros(1), dtype=ChannelType.DOUBLE,
                               max_length=MAX_SCAN_POINTS, read_only=True)
    scan_mass_axis = pvproperty(name="SCAN:MASS_AXIS", alarm_group="SCAN:MASS_AXIS", value=np.zeros(1),
                                dtype=ChannelType.DOUBLE, max_length=MAX_SCAN_POINTS,
                                read_only=True, units="u")
    scan_field_axis = pvproperty(name="SCAN:FIELD_AXIS", alarm_group="SCAN:FIELD_AXIS", value=np.zeros(1),
                                 dtype=ChannelType.DOUBLE, max_length=MAX_SCAN_POINTS,
                                 read_only=True, units="T")
    scan_npts = pvproperty(name="SCAN:NPTS", alarm_group="SCAN:NPTS", value=0, dtype=ChannelType.LONG, read_only=True)

    img_lines_done = pvproperty(name="IMG:LINES_DONE", alarm_group="IMG:LINES_DONE", value=0, dtype=ChannelType.LONG,
                                read_only=True)
    img_nx = pvproperty(name="IMG:NX", alarm_group="IMG:NX", value=0, dtype=ChannelType.LONG, read_only=True)
    img_ny = pvproperty(name="IMG:NY", alarm_group="IMG:NY", value=0, dtype=ChannelType.LONG, read_only=True)
    img_frame = pvproperty(name="IMG:FRAME", alarm_group="IMG:FRAME", value=0, dtype=ChannelType.LONG, read_only=True)
    img_dwell = pvproperty(name="IMG:DWELL", alarm_group="IMG:DWELL", value=0.0, units="s", precision=8, read_only=True)
    img_start_time = pvproperty(name="IMG:START_TIME", alarm_group="IMG:START_TIME", value=0.0, units="s", precision=3,
                                read_only=True)

    sims_ready = pvproperty(name="SIMS_READY", alarm_group="SIMS_READY", value="No", enum_strings=("No", "Yes"),
                            dtype=ChannelType.ENUM, read_only=True)
    status = pvproperty(name="STATUS", alarm_group="STATUS", value="starting", dtype=ChannelType.STRING,
                        read_only=True)

    def __init__(self, *args: Any, drift_nm_per_min: float | None = None,
                 params: sp.SimsParameters | None = None, fov_error_pct: float = 0.0,
                 raster_rotation_deg: float = 0.0,
                 extraction_field_factor: float | None = None, relief: bool = False,
                 landing_error_pct: float = 0.0, eucentric_dz_um: float = 0.0,
                 coincidence_um: tuple[float, float] = (0.0, 0.0),
                 focus_error_um: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The ion raster's calibration errors (ion_optics.true_raster): the simulator's
        # truth, published nowhere; the map PVs keep the nominal field and rotation.
        self.fov_error_pct = float(fov_error_pct)
        self.raster_rotation_deg = float(raster_rotation_deg)
        # The TEM/FIB coincidence (decision 0042): what the column's bias beam shift
        # leaves of the landing shift (% of it), the specimen's height above the
        # eucentric point (um) and the beams' offset at 0 V: truth, published nowhere.
        self.landing_error_pct = float(landing_error_pct)
        self.eucentric_dz_um = float(eucentric_dz_um)
        self.coincidence_um = (float(coincidence_um[0]), float(coincidence_um[1]))
        # The probe's focus (decision 0044): the scale of what the column's focus table
        # leaves at 4.5 kV (um; its sign and size per instrument from the seed).
        self.focus_error_um = float(focus_error_um)
        # How much of the bias the beam's normal motion really sees (a uniform gap's
        # field would be 1): drawn per instrument, published nowhere.
        self.extraction_field_factor = (
            ion_optics.draw_extraction_field_factor(self.seed)
            if extraction_field_factor is None else float(extraction_field_factor))
        # The counting chain's own dead time (decision 0034) and this instrument's IMF
        # and collector yields (decision 0035), drawn from its seed: truth, published
        # nowhere (tests redraw them from the seed).
        self.params = params or sp.SimsParameters(
            dead_time_s=sp.true_dead_time_s(self.seed)).with_(
            **sp.mass_bias_parameters(self.seed, N_COLLECTORS))
        if drift_nm_per_min is not None:
            self.params = self.params.with_(drift_nm_per_min=float(drift_nm_per_min))
        if relief:  # the beam meets the specimen's relief (decision 0041; opt-in)
            self.params = self.params.with_(relief=True)
        self.initial_params = self.params
        self.specimen = self.world.holder.specimen
        self.species = sp.candidate_species(self.specimen)
        self.depth = self.world.holder.depth  # the specimen's sputtered depth, shared
        self.depth_version = 0
        self._seed_generators()
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sims")
        self.t_start = self.clock.now()
        # The probe current's fluctuation, a function of the instrument's time (from
        # this part's start: a restarted part draws the same process from a new origin).
        self.beam_noise = sp.BeamCurrentNoise(self.seed, origin_s=self.t_start)
        self._drift_ref = (self.t_start, 0.0)  # (time, displacement nm) at the last rate change
        # Magnet and calibration (a stored at the reference voltage).
        self.cal_a_ref = sp.starting_cal_a(self.params)
        self.cal_b0_value = self.params.cal_b0_t
        b_axial = float(sp.field_for_calibrated_mass(7.0, self.cal_a_ref, self.cal_b0_value))
        self.magnet = sp.Magnet(self.params, field_t=b_axial, now=self.clock.now())
        self.initial_cal = (self.cal_a_ref, self.cal_b0_value, b_axial)
        self.mass_ratio = [m / 7.0 for m in DEFAULT_MASSES]
        self.mass_setpoints = list(DEFAULT_MASSES)
        self._key_of = {world_key: key for key, world_key in WORLD_KEYS.items()}
        self.world_link = WorldLink(self.world, WORLD_KEYS.values(),
                                    on_update=self._on_peer_update)
        # Imaging state.
        self.frame_task: asyncio.Task | None = None
        self.frame_abort: asyncio.Event | None = None  # made in the loop
        self.frame_done = None  # asyncio.Condition, made in the loop
        self.frames_completed = 0
        self.prepared: tuple[tuple, sp.FramePlan, float] | None = None
        self._prep_task: asyncio.Task | None = None
        self._prep_pending = False
        self._inflight: tuple[tuple, asyncio.Future, float] | None = None
        self._mapping = False  # a frame's lines are being acquired
        self._last_status = ""
        self._busy = False

    # ---- helpers --------------------------------------------------------------------
    def peer(self, key: str, default: Any = None) -> Any:
        """A world quantity by its short name here (``WORLD_KEYS``)."""
        return self.world.get(WORLD_KEYS[key], default)

    def conditions(self) -> sp.SimsConditions:
        return sp.SimsConditions(
            alpha_deg=_float(self.peer("alpha")),
            objective_on=_is_on(self.peer("objective")),
            bias_enabled=_is_on(self.peer("bias_enable")),
            bias_v=_float(self.peer("bias_v")),
            beam_unblanked=_is_on(self.peer("blank")),
        )

    def voltage(self) -> float:
        """Extraction voltage used for the mass scale (nominal when the bias is off)."""
        return sp.extraction_voltage(_float(self.peer("bias_v"), 0.0), self.params)

    def cal(self) -> tuple[float, float]:
        """Published (a, B0) at the present voltage."""
        return sp.published_cal_a(self.cal_a_ref, self.voltage()), self.cal_b0_value

    def axial_cal_mass(self, hall_t: float) -> float:
        a, b0 = self.cal()
        return float(sp.calibrated_mass(hall_t, a, b0))

    def axial_true_mass(self, now: float | None = None) -> float:
        now = self.clock.now() if now is None else now
        return float(sp.mass_for_gap_field(self.magnet.gap_field(now), self.voltage(),
                                           self.params))

    def collector_true_masses(self) -> tuple[float, ...]:
        m_ax = self.axial_true_mass()
        return tuple(r * m_ax for r in self.mass_ratio)

    def collectors(self) -> list[CollectorGroup]:
        return [self.col1, self.col2, self.col3, self.col4]

    def drift_displacement_nm(self, t: float | None = None) -> float:
        t = self.clock.now() if t is None else t
        t_ref, d_ref = self._drift_ref
        return d_ref + self.params.drift_nm_per_min * (t - t_ref) / 60.0

    def physics_params(self, t: float) -> sp.SimsParameters:
        """Present detector/drift parameters, with the drift and gain clocks starting at
        ``t``."""
        return self.params.with_(drift_start_nm=self.drift_displacement_nm(t),
                                 gain_clock_s=t - self.t_start)

    def geometry(self, snap: dict) -> sp.ScanGeometry:
        # The column's raster calibration (SCAN:FOV_CAL, SCAN:ROT_CAL) acts on the
        # deflectors, before their own error.
        fov_um, rotation_deg = ion_optics.true_raster(
            float(snap["fov"]) * float(snap.get("fov_cal", 1.0)),
            float(snap["rotation"]) + float(snap.get("rot_cal", 0.0)),
            fov_error_pct=self.fov_error_pct, rotation_error_deg=self.raster_rotation_deg)
        dx, dy = snap.get("offset", (0.0, 0.0))
        return sp.ScanGeometry(
            nx=int(snap["nx"]), ny=int(snap["ny"]), fov_um=fov_um,
            rotation_deg=rotation_deg, centre_x_nm=1000.0 * (float(snap["x"]) + dx),
            centre_y_nm=1000.0 * (float(snap["y"]) + dy), incidence_deg=snap["incidence"])

    def coincidence_offset_um(self, snap: dict) -> tuple[float, float]:
        """Where the ion field's centre lies from the stage's (x, y) (um, specimen):
        the TEM/FIB coincidence offset at this bias, tilt and height, less the lab's
        correction (``ion_optics.coincidence_offset_um``)."""
        return ion_optics.coincidence_offset_um(
            snap["landing"] + snap["bias_v"] / 1000.0, snap["bias_v"], snap["alpha"],
            landing_error_pct=self.landing_error_pct,
            eucentric_dz_um=self.eucentric_dz_um + snap["z"], static_um=self.coincidence_um,
            correction_um=snap["correction"])

    def defocus_um(self, snap: dict) -> float:
        """How far (um) the probe's crossover lies from the specimen
        (``ion_optics.defocus_um``): the immersion lens of the extraction gap at the
        instrument's field strength less the column's focus table, the table's own
        error, the specimen's height (its height above the eucentric point plus the
        stage's Z, along the beam) and the lab's FIB:FOCUS."""
        column_kv = snap["landing"] + snap["bias_v"] / 1000.0
        height = (self.eucentric_dz_um + snap["z"]) / math.cos(
            math.radians(snap["incidence"]))
        defocus = ion_optics.defocus_um(
            column_kv, snap["bias_v"], snap["focus"],
            table_error_um=ion_optics.draw_focus_table_error_um(
                self.seed, self.focus_error_um, snap["bias_v"]),
            height_um=height, field_factor=self.extraction_field_factor,
            nominal_deg=self.params.incidence_deg)
        return 0.0 if defocus is None else defocus

    def incidence_deg(self, landing_kev: float, bias_v: float) -> float | None:
        """The beam's true angle to the specimen normal, bent by the extraction field
        (None: the field turns it back before it lands)."""
        return ion_optics.landing_incidence_deg(
            landing_kev, bias_v, nominal_deg=self.params.incidence_deg,
            field_factor=self.extraction_field_factor)

    def snapshot(self) -> dict:
        """The column, stage and detector state a frame (or a count) is computed from."""
        cond = self.conditions()
        snap = {
            "nx": int(_float(self.peer("nx"), 256)),
            "ny": int(_float(self.peer("ny"), 256)),
            "dwell": _float(self.peer("dwell"), 1e-3),
            "fov": _float(self.peer("fov"), 2.0),
            "rotation": _float(self.peer("rotation"), 0.0),
            "spot": bool(_is_on(self.peer("scan_mode"))),
            "spot_x": _float(self.peer("spot_x"), 0.0),
            "spot_y": _float(self.peer("spot_y"), 0.0),
            "current": _float(self.peer("current"), 0.0),
            "probe": _float(self.peer("probe"), 10.0),
            "landing": _float(self.peer("landing"), 25.5),
            "bias_v": _float(self.peer("bias_v"), 0.0),
            "x": _float(self.peer("x"), 0.0),
            "y": _float(self.peer("y"), 0.0),
            "ready": cond.ready(self.params),
            "unblanked": bool(cond.beam_unblanked),
            "polarity": cond.polarity,
            "masses": self.collector_true_masses(),
            "alpha": _float(self.peer("alpha"), 0.0),
            "z": _float(self.peer("z"), 0.0),
            "fov_cal": _float(self.peer("fov_cal"), 1.0),
            "rot_cal": _float(self.peer("rot_cal"), 0.0),
            "correction": (_float(self.peer("coincidence_x"), 0.0),
                           _float(self.peer("coincidence_y"), 0.0)),
            "focus": _float(self.peer("focus"), 0.0),
        }
        snap["offset"] = self.coincidence_offset_um(snap)
        incidence = self.incidence_deg(snap["landing"], snap["bias_v"])
        snap["incidence"] = self.params.incidence_deg if incidence is None else incidence
        snap["ready"] = snap["ready"] and incidence is not None
        # The probe the specimen sees: PROBE_RBV is the column's in-focus figure; the
        # immersion lens, the focus table's error and the lab's focus defocus it.
        snap["probe_in_focus"] = snap["probe"]
        snap["defocus"] = self.defocus_um(snap)
        snap["probe"] = ion_optics.probe_at_specimen_nm(snap["probe"], snap["defocus"])
        snap["nx"] = max(1, min(snap["nx"], 1024))
        snap["ny"] = max(1, min(snap["ny"], 1024))
        return snap

    def _plan_key(self, snap: dict) -> tuple:
        return (snap["nx"], snap["ny"], round(snap["fov"], 9), round(snap["rotation"], 6),
                round(snap["fov_cal"], 9), round(snap["rot_cal"], 6),
                round(snap["x"], 7), round(snap["y"], 7), round(snap["probe"], 4),
                tuple(round(v, 7) for v in snap["offset"]),
                round(snap["landing"], 3), snap["polarity"], round(snap["incidence"], 5),
                tuple(round(m, 5) for m in snap["masses"]), self.depth_version,
                self.params.drift_nm_per_min, self.params.interaction_fwhm_nm)

    def _make_plan(self, snap: dict, t0: float, slack_s: float,
                   depth: np.ndarray | None = None) -> sp.FramePlan:
        return sp.FramePlan(
            self.specimen, self.geometry(snap), snap["masses"], snap["current"],
            max(snap["dwell"], 1e-9), snap["probe"], snap["landing"], snap["polarity"],
            snap["ready"], self.depth if depth is None else depth, elapsed_s=0.0,
            params=self.physics_params(t0), species=self.species, drift_slack_s=slack_s)

    # ---- status ---------------------------------------------------------------------
    async def update_status(self, refusal: str | None = None) -> None:
        cond = self.conditions()
        problems = cond.problems(self.params)
        ready = not problems
        if self.sims_ready.value != ("Yes" if ready else "No"):
            await self.sims_ready.write("Yes" if ready else "No")
        pol = "Negative" if cond.polarity < 0 else "Positive"
        if self.polarity_rbv.value != pol:
            await self.polarity_rbv.write(pol)
        if refusal:
            text = refusal
        elif ready:
            text = "OK"
        else:
            text = "dark only: " + ", ".join(problems)
        text = text[:39]
        if text != self._last_status:
            self._last_status = text
            await self.status.write(text)
        a, b0 = self.cal()
        if abs(self.cal_a.value - a) > 1e-9 * a:
            # The readback of the voltage-scaled calibration, not a client's new one: not
            # through the putter, which refuses while a map runs (a bias update that
            # arrived mid-map raised there and ended the peer monitor's task).
            await self.cal_a.write(a, verify_value=False)

    async def _on_peer_update(self, name: str, value: Any) -> None:
        key = self._key_of.get(name)
        if key == "acquire":
            started = _is_on(value)
            if started:
                await self._start_frame()
            else:
                self._stop_frame()
            return
        if key in ("bias_enable", "bias_v", "alpha", "objective", "blank"):
            await self.update_status()
            if key == "bias_v":
                await self._update_masses()
        self._schedule_prepare()

    # ---- magnet ---------------------------------------------------------------------
    async def _update_masses(self) -> None:
        hall = self.magnet.hall(self.clock.now())
        m_ax = self.axial_cal_mass(hall)
        for col, ratio in zip(self.collectors(), self.mass_ratio, strict=True):
            value = ratio * m_ax
            if abs(col.mass_rbv.value - value) > 1e-6:
                await col.mass_rbv.write(value)

    def _reposition_collectors(self) -> list[str]:
        """Keep the collector masses at the magnet's final field where possible."""
        lo, hi = self.params.focal_plane_mass_ratio
        hall_final = self.magnet.final_gap_field() + self.params.hall_offset_t
        m_ax = self.axial_cal_mass(hall_final)
        parked = []
        for i, m in enumerate(self.mass_setpoints):
            ratio = m / m_ax if m_ax > 0 else 1.0
            if not lo <= ratio <= hi:
                parked.append(f"COL{i + 1}")
                ratio = min(max(ratio, lo), hi)
            self.mass_ratio[i] = ratio
        return parked

    async def _set_field(self, value: float) -> None:
        self.magnet.set(value, self.clock.now())
        parked = self._reposition_collectors()
        await self._update_magnet_pvs()
        if parked:
            await self.update_status(refusal=f"{','.join(parked)} at focal-plane edge")
        self._schedule_prepare()

    async def _update_magnet_pvs(self) -> None:
        now = self.clock.now()
        await self.field_rbv.write(self.magnet.hall(now, self.hall_rng))
        settled = "Yes" if self.magnet.settled(now) else "No"
        if self.settled.value != settled:
            await self.settled.write(settled)
        await self._update_masses()

    async def _refuse_if_busy(self, what: str) -> None:
        # Lines still to acquire, not the frame's bookkeeping after it is announced (its
        # sputter, which a client that saw IMG:FRAME cannot know is still going on).
        if self._mapping and self.frame_abort.is_set() and self.frame_task is not None:
            # A stopped frame still winding down (its plan is built before it can see
            # the stop: over 0.5 s at load 8): the put waits for it, as a controller
            # finishes an abort before it takes new settings. Refused, the restore's
            # COL:MASS puts after an arc failed the run on a 10 s put timeout (the
            # refusal does not reach a threading client).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.frame_task), STOPPING_FRAME_WAIT_S)
        if self._mapping:
            raise ValueError(f"{what}: refused while a map is being acquired")
        if self._busy:
            raise ValueError(f"{what}: refused while an acquisition runs")

    @field.startup
    async def field(self, instance, async_lib):
        self.frame_done = asyncio.Condition()
        self.depth_lock = asyncio.Lock()
        self.frame_abort = asyncio.Event()
        await self.field.write(self.magnet.setpoint, verify_value=False)
        for col, m in zip(self.collectors(), self.mass_setpoints, strict=True):
            await col.mass.write(m, verify_value=False)
        await self.cal_b0.write(self.cal_b0_value, verify_value=False)
        await self.cal_a.write(self.cal()[0], verify_value=False)
        await self._update_magnet_pvs()
        await self.update_status()
        self.world_link.start()
        self._schedule_prepare()

    @field.putter
    async def field(self, instance, value):
        """The put completes when the magnet has settled (SETTLED = Yes), as a motor's
        completes at the end of its move: a client's ``set()`` status means "there"."""
        value = require_range(value, 0.0, 2.0, "FIELD")
        await self._refuse_if_busy("FIELD")
        await self._set_field(value)
        magnet = self.magnet
        wait_s = magnet.time_to_settle(self.clock.now())
        if not math.isfinite(wait_s) or wait_s > MAX_SETTLE_S:
            logger.error("FIELD %r: settling time %r s; the put completes at once", value,
                         wait_s)
            wait_s = 0.0
        # Nominal seconds, a little past the exponential's crossing of the tolerance. One
        # wait, not a loop: a later put or a reset may move the magnet meanwhile.
        await self.clock.sleep(wait_s + 1e-3)
        if self.magnet is magnet and not magnet.settled(self.clock.now()):
            logger.warning("FIELD %r: not settled after %.4f s", value, wait_s)
        await self._update_magnet_pvs()
        return value

    @field_rbv.scan(period=0.1)
    async def field_rbv(self, instance, async_lib):
        now = self.clock.now()
        if not self.magnet.settled(now) or self.settled.value != "Yes":
            await self._update_magnet_pvs()

    @cal_a.putter
    async def cal_a(self, instance, value):
        value = require_range(value, 1.0, 1e5, "CAL:A")
        await self._refuse_if_busy("CAL:A")
        self.cal_a_ref = sp.reference_cal_a(value, self.voltage())
        self.magnet_changed_cal()
        return value

    @cal_b0.putter
    async def cal_b0(self, instance, value):
        value = require_range(value, -0.5, 0.5, "CAL:B0")
        await self._refuse_if_busy("CAL:B0")
        self.cal_b0_value = value
        self.magnet_changed_cal()
        return value

    def magnet_changed_cal(self) -> None:
        """A new calibration moves the collectors to keep their masses."""
        self._reposition_collectors()
        asyncio.get_running_loop().create_task(self._update_masses())
        self._schedule_prepare()

    async def put_collector_mass(self, index: int, value: float) -> float:
        value = require_range(value, 0.5, 400.0, f"COL{index + 1}:MASS")
        await self._refuse_if_busy(f"COL{index + 1}:MASS")
        lo, hi = self.params.focal_plane_mass_ratio
        hall_final = self.magnet.final_gap_field() + self.params.hall_offset_t
        m_ax = self.axial_cal_mass(hall_final)
        ratio = value / m_ax if m_ax > 0 else float("inf")
        if not lo <= ratio <= hi:
            await self.update_status(refusal=f"COL{index + 1}:MASS off focal plane")
            raise ValueError(
                f"COL{index + 1}:MASS {value} u outside the focal plane at the present field "
                f"({lo * m_ax:.3f}..{hi * m_ax:.3f} u)")
        self.mass_ratio[index] = ratio
        self.mass_setpoints[index] = value
        await self._update_masses()
        self._schedule_prepare()
        return value

    # ---- detector parameters ----------------------------------------------------------
    @dead_time.putter
    async def dead_time(self, instance, value):
        # The calibrated value, for the control side's corrections: the counts keep the
        # instrument's own dead time (self.params).
        value = require_range(value, *DEAD_TIME_RANGE_S, "DEAD_TIME")
        await self._refuse_if_busy("DEAD_TIME")
        await self.dead_time_source.write("manual")
        return value

    @dead_time_source.putter
    async def dead_time_source(self, instance, value):
        text = str(value).strip()
        if not text:
            raise ValueError("DEAD_TIME:SOURCE must not be empty")
        return text[:39]

    @dark_rate.putter
    async def dark_rate(self, instance, value):
        value = require_range(value, 0.0, 1000.0, "DARK_RATE")
        await self._refuse_if_busy("DARK_RATE")
        self.params = self.params.with_(dark_rate_per_s=value)
        return value

    @transmission.putter
    async def transmission(self, instance, value):
        value = require_range(value, 0.05, 1.0, "TRANSMISSION")
        await self._refuse_if_busy("TRANSMISSION")
        self.params = self.params.with_(transmission=value)
        return value

    @drift_rate.startup
    async def drift_rate(self, instance, async_lib):
        await instance.write(self.params.drift_nm_per_min, verify_value=False)
        await self.collector_window.write(self.params.collector_window_u, verify_value=False)
        await self.dead_time.write(sp.NOMINAL_DEAD_TIME_S, verify_value=False)
        await self.dead_time_source.write("nominal", verify_value=False)
        await self.dark_rate.write(self.params.dark_rate_per_s, verify_value=False)
        await self.transmission.write(self.params.transmission, verify_value=False)

    @drift_rate.putter
    async def drift_rate(self, instance, value):
        value = require_range(value, 0.0, 1000.0, "DRIFT_NM_PER_MIN")
        await self._refuse_if_busy("DRIFT_NM_PER_MIN")
        now = self.clock.now()
        self._drift_ref = (now, self.drift_displacement_nm(now))
        self.params = self.params.with_(drift_nm_per_min=value)
        self._schedule_prepare()
        return value

    @count_time.putter
    async def count_time(self, instance, value):
        return require_range(value, 1e-4, 3600.0, "COUNT_TIME")

    @scan_start.putter
    async def scan_start(self, instance, value):
        return require_range(value, 0.5, 400.0, "SCAN:START")

    @scan_stop.putter
    async def scan_stop(self, instance, value):
        return require_range(value, 0.5, 400.0, "SCAN:STOP")

    @scan_step.putter
    async def scan_step(self, instance, value):
        return require_range(value, 1e-4, 10.0, "SCAN:STEP")

    @scan_dwell.putter
    async def scan_dwell(self, instance, value):
        return require_range(value, 1e-5, 10.0, "SCAN:DWELL")

    # ---- acquisition: counting and mass scan -----------------------------------------
    @acquire.putter
    async def acquire(self, instance, value):
        if value in ("Done", 0):
            return "Done"
        mode = self.mode.value
        if mode == "Imaging":
            await self._wait_for_frame()
            return "Done"
        await self._refuse_if_busy("ACQUIRE")
        self._busy = True
        await self.busy.write("Busy")
        try:
            if mode == "Counting":
                await self._count()
            else:
                await self._mass_scan()
        finally:
            self._busy = False
            await self.busy.write("Idle")
        return "Done"

    def _footprint(self, snap: dict) -> tuple[sp.ScanGeometry, bool]:
        geo = self.geometry(snap)
        if snap["spot"]:
            geo = geo.at_spot(snap["spot_x"], snap["spot_y"])
        return geo, snap["spot"]

    def _emission(self, snap: dict, t: float) -> dict[str, float]:
        geo, spot = self._footprint(snap)
        return sp.footprint_emission(self.specimen, self.depth, geo, self.species,
                                     snap["polarity"], snap["landing"],
                                     self.physics_params(t), spot=spot,
                                     probe_fwhm_nm=snap["probe"])

    def _sputter_time(self, snap: dict, seconds: float) -> None:
        """Dose of ``seconds`` of beam on the counting footprint (not while rastering)."""
        if not snap["unblanked"] or snap["current"] <= 0 or self._raster_running():
            return
        geo, spot = self._footprint(snap)
        sp.sputter_dose(self.specimen, self.depth, geo, snap["current"], seconds, spot=spot,
                        probe_fwhm_nm=snap["probe"], params=self.params,
                        landing_kev=snap["landing"])
        self.depth_version += 1
        self.world.holder.changed()

    def _raster_running(self) -> bool:
        return self.frame_task is not None and not self.frame_task.done()

    async def _count(self) -> None:
        loop = asyncio.get_running_loop()
        count_time = float(self.count_time.value)
        t0 = self.clock.now()
        snap = self.snapshot()
        emission = await loop.run_in_executor(self.executor, self._emission, snap, t0)
        await self.clock.sleep(t0 + count_time - self.clock.now())
        ions_per_s = sp.primary_ion_rate(snap["current"]) if snap["ready"] else 0.0
        # The source's current over this count, common to the four collectors.
        ions_per_s *= self.beam_noise.mean_factor(t0, t0 + count_time)
        expected = sp.collector_expectation(snap["masses"], emission, ions_per_s, count_time,
                                            self.physics_params(t0))
        counts = sp.detect(expected, count_time, self.params, self.rng)
        for col, n in zip(self.collectors(), counts, strict=True):
            await col.counts.write(int(n))
            await col.rate.write(float(n) / count_time)
        async with self.depth_lock:
            await loop.run_in_executor(self.executor, self._sputter_time, snap, count_time)
        self._schedule_prepare()

    async def _mass_scan(self) -> None:
        start, stop, step = (float(self.scan_start.value), float(self.scan_stop.value),
                             float(self.scan_step.value))
        if stop <= start:
            raise ValueError("SCAN:STOP must be above SCAN:START")
        npts = int(math.floor((stop - start) / step + 1e-9)) + 1
        if npts > MAX_SCAN_POINTS:
            raise ValueError(f"mass scan of {npts} points exceeds {MAX_SCAN_POINTS}")
        dwell = float(self.scan_dwell.value)
        loop = asyncio.get_running_loop()
        masses = start + step * np.arange(npts)
        a, b0 = self.cal()
        setpoints = sp.field_for_calibrated_mass(masses, a, b0)
        snap = self.snapshot()
        t0 = self.clock.now()
        e0 = await loop.run_in_executor(self.executor, self._emission, snap, t0)
        # Approach the first step from below (hysteresis), then sweep up.
        previous = self.magnet.setpoint
        mono = self.clock.now()
        self.magnet.set(max(float(setpoints[0]) - 0.01, 0.0), mono)
        self.magnet.set(float(setpoints[0]), mono + 1.0)
        gap, hall = sp.mass_scan_fields(setpoints, self.params, self.rng)
        true_mass = sp.mass_for_gap_field(gap, self.voltage(), self.params)
        step_time = dwell + SCAN_STEP_SETTLE_S
        total = npts * step_time
        await self.scan_npts.write(npts)
        await self.scan_mass_axis.write(sp.calibrated_mass(hall, a, b0))
        await self.scan_field_axis.write(hall)
        ions_per_s = sp.primary_ion_rate(snap["current"]) if snap["ready"] else 0.0
        async with self.depth_lock:
            await loop.run_in_executor(self.executor, self._sputter_time, snap, total)
        e1 = await loop.run_in_executor(self.executor, self._emission, snap, t0 + total)
        expected = sp.mass_scan_expectation(true_mass, e0, e1, ions_per_s, dwell, self.params)
        expected *= self.beam_noise.factor(t0 + (np.arange(npts) + 0.5) * step_time)
        spectrum = sp.detect(expected, dwell, self.params, self.rng).astype(np.float64)
        published = 0
        while published < npts:
            now = self.clock.now()
            due = min(npts, int((now - t0) / step_time))
            if due > published:
                shown = np.zeros(npts)
                shown[:due] = spectrum[:due]
                await self.scan_spectrum.write(shown)
                published = due
            if published < npts:
                await self.clock.sleep(min(0.2 * self.clock.scale, t0 + total - now)
                                       + 1e-3 * self.clock.scale)
        await self.scan_spectrum.write(spectrum)
        # Leave the magnet where it was (approached from above: the readback shows it).
        self.magnet.set(previous, self.clock.now())
        self._reposition_collectors()
        await self._update_magnet_pvs()
        self._schedule_prepare()

    async def _wait_for_frame(self) -> None:
        """Imaging-mode ACQUIRE: wait for the running frame, else the next one (5 s)."""
        target = self.frames_completed + 1
        deadline = time.monotonic() + 5.0
        async with self.frame_done:
            while self.frames_completed < target:
                if not self._raster_running() and time.monotonic() > deadline:
                    raise ValueError("ACQUIRE (Imaging): no raster frame of the ion column")
                try:
                    await asyncio.wait_for(self.frame_done.wait(), timeout=0.2)
                except TimeoutError:
                    pass

    # ---- imaging -------------------------------------------------------------------
    def _schedule_prepare(self) -> None:
        """Prepare the next frame's blurred emission maps ahead of time (debounced)."""
        self._prep_pending = True
        if self._prep_task is None or self._prep_task.done():
            self._prep_task = asyncio.get_running_loop().create_task(self._prepare_loop())

    async def _prepare_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._prep_pending:
            self._prep_pending = False
            await asyncio.sleep(PREPARE_QUIET_S)
            if self._prep_pending:
                # Still changing (a bias ramp moves the landing at every readback): a
                # plan for this moment would not be the next map's.
                continue
            if self._raster_running() or self._busy:
                continue
            if self.conditions().problems(self.params, beam=False):
                # Not in the SIMS geometry (bias off, the stage not at the SIMS tilt,
                # the objective on; a bias ramp is the quiet time's above): the next map
                # comes after a mode change that moves the landing and incidence, so a
                # plan made now would never be used (an alignment made 8 such of its 11,
                # ~1 s of CPU each on a 4 um field). A blanked beam is no reason: maps
                # start blanked.
                continue
            snap = self.snapshot()
            key = self._plan_key(snap)
            if self.prepared is not None and self.prepared[0] == key and (
                    self.clock.now() - self.prepared[2] < 60.0):
                continue
            t0 = self.clock.now()
            # Prepared on a copy of the depth map, taken whole (a sputter writes it under
            # the lock), so that nothing that needs the lock (a reset, a sputter) waits
            # for a guess; a frame that wants this very plan awaits ``_inflight``.
            async with self.depth_lock:
                key = self._plan_key(snap)
                depth = self.depth.copy()
            future = loop.run_in_executor(self.executor, self._make_plan, snap, t0, 120.0,
                                          depth)
            self._inflight = (key, future, t0)
            try:
                plan = await future
            except Exception:  # noqa: BLE001 - a failed guess only costs time later
                logger.exception("preparing the next frame failed")
                continue
            finally:
                self._inflight = None
            if self._plan_key(snap) == key:
                self.prepared = (key, plan, t0)

    async def _start_frame(self) -> None:
        t_event = self.world.timestamp(WORLD_KEYS["acquire"]) or self.clock.now()
        if self._raster_running():
            self.frame_abort.set()
            try:
                await self.frame_task
            except Exception:  # noqa: BLE001
                pass
        self.frame_abort = asyncio.Event()
        snap = self.snapshot()
        self.frame_task = asyncio.get_running_loop().create_task(self._frame(snap, t_event))

    def _stop_frame(self) -> None:
        if self._raster_running():
            self.frame_abort.set()

    def _frame_start_time(self, t_event: float) -> float:
        # The column wrote START_TIME into the world before it started the frame.
        st = _float(self.peer("start_time"))
        return st if st is not None and st > self.img_start_time.value else t_event

    async def _frame(self, snap: dict, t_event: float) -> None:
        try:
            await self._frame_inner(snap, t_event)
        except Exception as exc:  # noqa: BLE001 - the server must keep answering
            logger.exception("imaging frame failed")
            await self.update_status(refusal=f"map failed: {exc}")
            async with self.frame_done:
                self.frame_done.notify_all()
        finally:
            self._mapping = False

    async def _frame_inner(self, snap: dict, t_event: float) -> None:
        self._mapping = True
        loop = asyncio.get_running_loop()
        abort = self.frame_abort
        nx, ny, dwell = snap["nx"], snap["ny"], snap["dwell"]
        line_time = nx * dwell
        key = self._plan_key(snap)
        t0 = self._frame_start_time(t_event)
        frame_time = line_time * ny

        def prepared_plan() -> sp.FramePlan | None:
            if self.prepared is None or self.prepared[0] != key or (
                    t0 - self.prepared[2] >= 60.0):
                return None
            _, base, t_prep = self.prepared
            return base.retarget(current_pa=snap["current"], dwell_s=dwell,
                                 ready=snap["ready"], elapsed_s=t0 - t_prep,
                                 params=self.physics_params(t_prep))

        inflight = self._inflight
        if self.prepared is None and inflight is not None and inflight[0] == key:
            # This very plan is being prepared: use it rather than computing it twice.
            with contextlib.suppress(Exception):
                self.prepared = (key, await asyncio.shield(inflight[1]), inflight[2])
        plan = prepared_plan()
        if plan is None:
            # No preparation runs during a frame (the prepare loop waits for it), so
            # nothing can have prepared this plan meanwhile.
            async with self.depth_lock:
                plan = await loop.run_in_executor(self.executor, self._make_plan, snap, t0,
                                                  0.0)
        self.prepared = None
        plan = plan.retarget(beam_noise=self.beam_noise, frame_start_s=t0)
        clock = self.clock
        # Lines go out at most PUBLISH_RATE_HZ in wall time, whatever the time scale.
        if clock.wall(line_time) >= 0.02:
            batch = 1
        else:
            batch = max(1, int(math.ceil(clock.scale / PUBLISH_RATE_HZ / line_time)))
        # -1 marks pixels not acquired yet: a client can tell a published line from one
        # whose map update has not reached it (counts are never negative).
        maps = [np.full(ny * nx, UNACQUIRED, np.int32) for _ in range(N_COLLECTORS)]
        # The frame's header is stamped at its start, like the lines after it.
        await self.img_nx.write(nx, timestamp=t0)
        await self.img_ny.write(ny, timestamp=t0)
        await self.img_dwell.write(dwell, timestamp=t0)
        await self.img_start_time.write(t0, timestamp=t0)
        await self.img_lines_done.write(0, timestamp=t0)
        for col, m in zip(self.collectors(), maps, strict=True):
            await col.map.write(m.copy(), timestamp=t0)
        rng = self.frame_rng
        rows_done = 0
        r0 = 0
        future = loop.run_in_executor(self.executor, plan.render_lines, 0, min(batch, ny), rng)
        aborted = False
        while r0 < ny:
            r1 = min(r0 + batch, ny)
            counts = await future
            if r1 < ny:
                future = loop.run_in_executor(self.executor, plan.render_lines, r1,
                                              min(r1 + batch, ny), rng)
            # Publish by the clock: line r is complete at t0 + (r + 1) line_time.
            due = t0 + r1 * line_time
            delay = due - clock.now()
            if delay > 0 and not abort.is_set():
                await clock.wait(abort, delay)
            if abort.is_set() and clock.now() < t0 + frame_time - END_TOLERANCE_S * clock.scale:
                aborted = True
                stop_t = clock.now()
                r1 = min(r1, max(r0, int((stop_t - t0) / line_time)))
                due = t0 + r1 * line_time
            # Stamped when the beam completed the lines, not when they go out (late by
            # the loop's latency, or the frame plan, times the time scale).
            stamp = min(due, clock.now())
            for m, c in zip(maps, counts, strict=True):
                m[r0 * nx:r1 * nx] = c[: r1 - r0].ravel()
            rows_done = r1
            for col, m in zip(self.collectors(), maps, strict=True):
                await col.map.write(m.copy(), timestamp=stamp)
            await self.img_lines_done.write(rows_done, timestamp=stamp)
            r0 = r1
            if aborted:
                break
        if not future.done():
            try:
                await future
            except Exception:  # noqa: BLE001
                pass
        if not aborted:
            self.frames_completed += 1
            await self.img_frame.write(self.frames_completed,
                                       timestamp=min(t0 + frame_time, clock.now()))
        self._mapping = False
        async with self.frame_done:
            self.frame_done.notify_all()
        if snap["unblanked"] and snap["current"] > 0 and rows_done > 0:
            # After the frame is announced: the next frame's plan waits for the lock.
            async with self.depth_lock:
                self.depth_version += 1
                await loop.run_in_executor(
                    self.executor, lambda: sp.sputter(
                        self.specimen, self.depth, self.geometry(snap), plan.ions_per_pixel,
                        rows_done=rows_done, elapsed_s=0.0, params=self.physics_params(t0),
                        landing_kev=snap["landing"]))
                self.world.holder.changed()
        self._schedule_prepare()

    def _seed_generators(self) -> None:
        """Counting noise from seeded generators, so that a reset instrument draws the
        same noise whatever ran before; the Hall probe, read at a wall-clock rate, has
        its own so that it cannot shift the counts' draws."""
        self.rng = np.random.default_rng(self.seed + 1000)  # event-loop thread
        self.frame_rng = np.random.default_rng(self.seed + 2000)  # executor (one at a time)
        self.hall_rng = np.random.default_rng(self.seed + 3000)

    async def reset_state(self) -> None:
        """Nothing acquiring, the start-up magnet, calibration, collectors and detector
        parameters, seeded noise and a pristine specimen (``SIM:RESET``)."""
        if self._raster_running():
            self.frame_abort.set()
            with contextlib.suppress(Exception):
                await self.frame_task
        self.params = self.initial_params
        self.cal_a_ref, self.cal_b0_value, b_axial = self.initial_cal
        self.magnet = sp.Magnet(self.params, field_t=b_axial, now=self.clock.now())
        self.mass_ratio = [m / 7.0 for m in DEFAULT_MASSES]
        self.mass_setpoints = list(DEFAULT_MASSES)
        self._drift_ref = (self.clock.now(), 0.0)
        self.t_start = self.clock.now()  # the collectors' yields restart their course too
        self._seed_generators()
        async with self.depth_lock:
            self.world.holder.restore()
            self.depth_version += 1
            self.prepared = None
        await self.restore_defaults("mode", "count_time", "acquire", "scan_start",
                                    "scan_stop", "scan_step", "scan_dwell")
        await self.field.write(self.magnet.setpoint, verify_value=False)
        for col, mass in zip(self.collectors(), self.mass_setpoints, strict=True):
            await col.mass.write(mass, verify_value=False)
        await self.cal_b0.write(self.cal_b0_value, verify_value=False)
        await self.cal_a.write(self.cal()[0], verify_value=False)
        await self.drift_rate.write(self.params.drift_nm_per_min, verify_value=False)
        await self.dead_time.write(sp.NOMINAL_DEAD_TIME_S, verify_value=False)
        await self.dead_time_source.write("nominal", verify_value=False)
        await self.dark_rate.write(self.params.dark_rate_per_s, verify_value=False)
        await self.transmission.write(self.params.transmission, verify_value=False)
        self._last_status = ""
        await self._update_magnet_pvs()
        await self.update_status()
        self._schedule_prepare()


def main(argv: list[str] | None = None) -> None:
    serve_part("spectrometer", argv)


if __name__ == "__main__":
    main()
