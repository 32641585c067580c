"""TEM IOC: the electron column, its camera and the EDX detector.

Renders the instrument's specimen at the stage position and tilt, and refuses to
switch the objective lens on while the holder bias is on; both are read from the
instrument's world, and the lens state is the world's ``tem.objective``. The image
formation is in :mod:`temsims.ioc.physics.tem_optics`, the X-ray spectra in
:mod:`temsims.ioc.physics.edx`; this module is the PV layer and the real-time behaviour.

Timing: an acquisition takes its exposure (camera) or live time x points (EDX)
on the instrument's clock; a put with completion to ``CAM:ACQUIRE``/``EDX:ACQUIRE`` returns at
the end. The numerical work runs in a worker thread (``run_in_executor``), so the
server keeps answering meanwhile. Putting ``Done`` during an acquisition aborts it
(no new data); putting ``Acquire`` while busy is refused.

World quantities read: ``stage.X``, ``stage.Y`` (um), ``stage.A``, ``stage.B`` (deg),
``bias.enable``, ``bias.voltage_v``. A stage axis whose part is down is taken as 0
and named in ``STAGE_STATUS``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import numpy as np
from caproto import AlarmSeverity, AlarmStatus, ChannelType
from caproto.server import pvproperty

from temsims.ioc.common import (
    InstrumentIOC,
    clear_alarm,
    require_range,
    serve_part,
)
from temsims.ioc.physics.edx import (
    DetectorParameters,
    EDXModel,
    EnergyAxis,
    areal_densities_at,
    beam_electrons,
)
from temsims.ioc.physics.tem_optics import (
    ImageGeometry,
    ImageRenderer,
    OpticsParameters,
    contrast_mass_thickness,
    electrons_per_pixel,
)

logger = logging.getLogger(__name__)

MAX_IMAGE = 1024
MIN_IMAGE = 64
MAX_LINE_POINTS = 256
MAX_CHANNELS = 4096
#: |bias output| above which the objective lens may not be switched on (V).
BIAS_SAFE_VOLTS = 10.0
#: Beyond this |tilt| the projection is meaningless; the stage limits are tighter.
MAX_TILT_DEG = 85.0
STATUS_CHARS = 39  # DBR_STRING holds 40 bytes with the terminator


def _short(text: str) -> str:
    return text if len(text) <= STATUS_CHARS else text[: STATUS_CHARS - 1] + "~"


def _enum_on(value: Any) -> bool:
    """An Off/On enum as CA delivers it (index or string)."""
    if isinstance(value, str):
        return value.strip().lower() == "on"
    return int(value) != 0


class TEMIOC(InstrumentIOC):
    """TEM column, camera and EDX detector of the simulated TEM-SIMS.

    Every numeric put is checked: NaN, infinities and values outside the listed
    range are refused with a put error (nothing is clamped); an unknown enum string
    is refused by the enum itself.

    PVs (column)
    ------------
    HT, HT_RBV (float, kV)
        High tension, 80..200. Sets (rho t)_0 and the EDX beam energy.
    MODE, MODE_RBV (enum TEM/STEM)
        TEM: bright-field mass-thickness image. STEM: HAADF Z-contrast image.
    OBJ, OBJ_RBV (enum Off/On)
        Objective lens (On at start). Off: the image is out of focus (blurred).
        On is refused while the bias output is on (``BIAS:ENABLE_RBV`` On or
        ``|BIAS:VOLTAGE_RBV| > 10 V``) or its state is unknown (bias IOC not
        connected: fail safe); the reason goes to OBJ_STATUS and OBJ raises an alarm.
        If the bias comes on while the lens is on, OBJ_RBV shows a STATE alarm.
    OBJ_STATUS (string, read-only)
        "OK" or why the last objective change was refused.
    FOV, FOV_RBV (float, um)
        Field of view (magnification), 0.05..100.
    BLANK, BLANK_RBV (enum Unblanked/Blanked)
        Beam blanker: blanked gives zero counts on camera and EDX.
    BEAM_CURRENT (float, nA)
        Electron beam current, 1e-5..100; sets the dose of camera and EDX.
    CONTRAST (float, ug/cm^2)
        (rho t)_0 of bright-field contrast at 200 kV, 1..1000 (I = I0 exp(-rho t / (rho t)_0)).
    CONTRAST_RBV (float, ug/cm^2, read-only)
        (rho t)_0 in effect at the present HT.
    STAGE_STATUS (string, read-only)
        "OK", or which stage readbacks are not connected (taken as 0).

    PVs (camera, ``CAM:``)
    ----------------------
    CAM:EXPOSURE (float, s)
        0.001..60.
    CAM:SIZE (long, px)
        Square image size, 64..1024.
    CAM:ACQUIRE (enum Done/Acquire)
        Put Acquire with completion: returns after the exposure with a new image.
    CAM:IMAGE (float32 waveform, counts)
        SIZE x SIZE, row-major; row 0 is the -y edge, column 0 the -x edge.
    CAM:COUNTER (long)
        Images acquired.
    CAM:PIXEL_NM (float, nm, read-only)
        Pixel size on the specimen (FOV / SIZE) for the next image.
    CAM:DOSE (float, e/px, read-only)
        Electrons per pixel of the last image (beam current x exposure / e / SIZE^2).
    CAM:CENTER_X, CAM:CENTER_Y (float, um, read-only)
        Specimen point at the centre of the last image (the stage position).
    CAM:TILT_A, CAM:TILT_B (float, deg, read-only)
        Stage tilts used for the last image.

    PVs (EDX, ``EDX:``)
    -------------------
    EDX:LIVE_TIME (float, s)
        Per spectrum, 0.001..600 (no dead time: live = real time).
    EDX:ACQUIRE (enum Done/Acquire)
        Put Acquire with completion: returns after LIVE_TIME (x NPTS in Line mode).
    EDX:MODE (enum Point/Line)
    EDX:X, EDX:Y (float, um)
        Probe position relative to the image centre, in the image frame, -100..100.
    EDX:X0, EDX:Y0, EDX:X1, EDX:Y1 (float, um), EDX:NPTS (long, 1..256)
        Line scan from (X0, Y0) to (X1, Y1), both ends included.
    EDX:SPECTRUM (float32 waveform, counts)
        Last spectrum (NCHAN).
    EDX:LINE_SPECTRA (float32 waveform, counts)
        NPTS x NCHAN, row-major, of the last line scan.
    EDX:ENERGY (float waveform, eV)
        Channel centres: OFFSET_EV + (i + 0.5) EV_PER_CHAN.
    EDX:NCHAN (long, 256..4096), EDX:EV_PER_CHAN (float, eV, 1..50),
    EDX:OFFSET_EV (float, eV, -1000..1000)
        Energy axis.
    EDX:POINT (long, read-only)
        Points done in the present acquisition.
    EDX:COUNTER (long, read-only)
        Acquisitions completed.
    EDX:RATE (float, counts/s, read-only)
        Total count rate of the last spectrum.
    EDX:PULSE_PAIR_NS (float, ns, read-only)
        Pulse-pair resolving time of the pulse processor: two photons closer than this
        are recorded as one at their summed energy (sum peaks; a detector constant).

    The spectra hold what a silicon-drift detector records (:mod:`temsims.ioc.physics.edx`):
    the specimen's lines and continuum, absorbed in the foil, from the probe spread
    through it; Si escape peaks; pile-up at the count rate; and the column's system
    peaks (Cu K of grid and holder, Fe K of the pole piece), in a hole too.
    """

    part = "tem"


    # ---------------------------------------------------------------- column
    ht = pvproperty(name="HT", alarm_group="HT", value=200.0, units="kV", precision=1,
                    lower_ctrl_limit=80.0, upper_ctrl_limit=200.0, doc="High tension")
    ht_rbv = pvproperty(name="HT_RBV", alarm_group="HT_RBV", value=200.0, units="kV", precision=1, read_only=True)
    mode = pvproperty(name="MODE", alarm_group="MODE", value="TEM", enum_strings=["TEM", "STEM"],
                      dtype=ChannelType.ENUM, doc="Imaging mode")
    mode_rbv = pvproperty(name="MODE_RBV", alarm_group="MODE_RBV", value="TEM", enum_strings=["TEM", "STEM"],
                          dtype=ChannelType.ENUM, read_only=True)
    obj = pvproperty(name="OBJ", alarm_group="OBJ", value="On", enum_strings=["Off", "On"],
                     dtype=ChannelType.ENUM, doc="Objective lens")
    obj_rbv = pvproperty(name="OBJ_RBV", alarm_group="OBJ_RBV", value="On", enum_strings=["Off", "On"],
                         dtype=ChannelType.ENUM, read_only=True)
    obj_status = pvproperty(name="OBJ_STATUS", alarm_group="OBJ_STATUS", value="OK", dtype=ChannelType.STRING,
                            read_only=True)
    fov = pvproperty(name="FOV", alarm_group="FOV", value=2.0, units="um", precision=4,
                     lower_ctrl_limit=0.05, upper_ctrl_limit=100.0, doc="Field of view")
    fov_rbv = pvproperty(name="FOV_RBV", alarm_group="FOV_RBV", value=2.0, units="um", precision=4, read_only=True)
    blank = pvproperty(name="BLANK", alarm_group="BLANK", value="Unblanked", enum_strings=["Unblanked", "Blanked"],
                       dtype=ChannelType.ENUM)
    blank_rbv = pvproperty(name="BLANK_RBV", alarm_group="BLANK_RBV", value="Unblanked",
                           enum_strings=["Unblanked", "Blanked"], dtype=ChannelType.ENUM,
                           read_only=True)
    beam_current = pvproperty(name="BEAM_CURRENT", alarm_group="BEAM_CURRENT", value=1.0, units="nA", precision=5,
                              lower_ctrl_limit=1e-5, upper_ctrl_limit=100.0)
    contrast = pvproperty(name="CONTRAST", alarm_group="CONTRAST", value=OpticsParameters().contrast_mt0_ug_cm2,
                          units="ug/cm^2", precision=2, lower_ctrl_limit=1.0,
                          upper_ctrl_limit=1000.0, doc="(rho t)_0 at 200 kV")
    contrast_rbv = pvproperty(name="CONTRAST_RBV", alarm_group="CONTRAST_RBV", value=OpticsParameters().contrast_mt0_ug_cm2,
                              units="ug/cm^2", precision=2, read_only=True)
    stage_status = pvproperty(name="STAGE_STATUS", alarm_group="STAGE_STATUS", value="stage not seen yet",
                              dtype=ChannelType.STRING, read_only=True)

    # ---------------------------------------------------------------- camera
    cam_exposure = pvproperty(name="CAM:EXPOSURE", alarm_group="CAM:EXPOSURE", value=0.1, units="s", precision=3,
                              lower_ctrl_limit=0.001, upper_ctrl_limit=60.0)
    cam_size = pvproperty(name="CAM:SIZE", alarm_group="CAM:SIZE", value=256, dtype=ChannelType.LONG, units="px",
                          lower_ctrl_limit=MIN_IMAGE, upper_ctrl_limit=MAX_IMAGE)
    cam_acquire = pvproperty(name="CAM:ACQUIRE", alarm_group="CAM:ACQUIRE", value="Done", enum_strings=["Done", "Acquire"],
                             dtype=ChannelType.ENUM)
    cam_image = pvproperty(name="CAM:IMAGE", alarm_group="CAM:IMAGE", value=np.zeros(256 * 256, np.float32),
                           dtype=ChannelType.FLOAT, max_length=MAX_IMAGE * MAX_IMAGE,
                           units="counts", read_only=True)
    cam_counter = pvproperty(name="CAM:COUNTER", alarm_group="CAM:COUNTER", value=0, dtype=ChannelType.LONG, read_only=True)
    cam_pixel_nm = pvproperty(name="CAM:PIXEL_NM", alarm_group="CAM:PIXEL_NM", value=2000.0 / 256, units="nm", precision=4,
                              read_only=True)
    cam_dose = pvproperty(name="CAM:DOSE", alarm_group="CAM:DOSE", value=0.0, units="e/px", precision=3, read_only=True)
    cam_center_x = pvproperty(name="CAM:CENTER_X", alarm_group="CAM:CENTER_X", value=0.0, units="um", precision=4,
                              read_only=True)
    cam_center_y = pvproperty(name="CAM:CENTER_Y", alarm_group="CAM:CENTER_Y", value=0.0, units="um", precision=4,
                              read_only=True)
    cam_tilt_a = pvproperty(name="CAM:TILT_A", alarm_group="CAM:TILT_A", value=0.0, units="deg", precision=3,
                            read_only=True)
    cam_tilt_b = pvproperty(name="CAM:TILT_B", alarm_group="CAM:TILT_B", value=0.0, units="deg", precision=3,
                            read_only=True)

    # ---------------------------------------------------------------- EDX
    edx_live_time = pvproperty(name="EDX:LIVE_TIME", alarm_group="EDX:LIVE_TIME", value=1.0, units="s", precision=3,
                               lower_ctrl_limit=0.001, upper_ctrl_limit=600.0)
    edx_acquire = pvproperty(name="EDX:ACQUIRE", alarm_group="EDX:ACQUIRE", value="Done", enum_strings=["Done", "Acquire"],
                             dtype=ChannelType.ENUM)
    edx_mode = pvproperty(name="EDX:MODE", alarm_group="EDX:MODE", value="Point", enum_strings=["Point", "Line"],
                          dtype=ChannelType.ENUM)
    edx_x = pvproperty(name="EDX:X", alarm_group="EDX:X", value=0.0, units="um", precision=4,
                       lower_ctrl_limit=-100.0, upper_ctrl_limit=100.0)
    edx_y = pvproperty(name="EDX:Y", alarm_group="EDX:Y", value=0.0, units="um", precision=4,
                       lower_ctrl_limit=-100.0, upper_ctrl_limit=100.0)
    edx_x0 = pvproperty(name="EDX:X0", alarm_group="EDX:X0", value=-0.5, units="um", precision=4,
                        lower_ctrl_limit=-100.0, upper_ctrl_limit=100.0)
    edx_y0 = pvproperty(name="EDX:Y0", alarm_group="EDX:Y0", value=0.0, units="um", precision=4,
                        lower_ctrl_limit=-100.0, upper_ctrl_limit=100.0)
    edx_x1 = pvproperty(name="EDX:X1", alarm_group="EDX:X1", value=0.5, units="um", precision=4,
                        lower_ctrl_limit=-100.0, upper_ctrl_limit=100.0)
    edx_y1 = pvproperty(name="EDX:Y1", alarm_group="EDX:Y1", value=0.0, units="um", precision=4,
                        lower_ctrl_limit=-100.0, upper_ctrl_limit=100.0)
    edx_npts = pvproperty(name="EDX:NPTS", alarm_group="EDX:NPTS", value=10, dtype=ChannelType.LONG,
                          lower_ctrl_limit=1, upper_ctrl_limit=MAX_LINE_POINTS)
    edx_spectrum = pvproperty(name="EDX:SPECTRUM", alarm_group="EDX:SPECTRUM", value=np.zeros(2048, np.float32),
                              dtype=ChannelType.FLOAT, max_length=MAX_CHANNELS,
                              units="counts", read_only=True)
    edx_line_spectra = pvproperty(name="EDX:LINE_SPECTRA", alarm_group="EDX:LINE_SPECTRA", value=np.zeros(2048, np.float32),
                                  dtype=ChannelType.FLOAT,
                                  max_length=MAX_LINE_POINTS * MAX_CHANNELS,
                                  units="counts", read_only=True)
    edx_energy = pvproperty(name="EDX:ENERGY", alarm_group="EDX:ENERGY", value=EnergyAxis().centres,
                            dtype=ChannelType.DOUBLE, max_length=MAX_CHANNELS, units="eV",
                            read_only=True)
    edx_nchan = pvproperty(name="EDX:NCHAN", alarm_group="EDX:NCHAN", value=2048, dtype=ChannelType.LONG,
                           lower_ctrl_limit=256, upper_ctrl_limit=MAX_CHANNELS)
    edx_ev_per_chan = pvproperty(name="EDX:EV_PER_CHAN", alarm_group="EDX:EV_PER_CHAN", value=10.0, units="eV", precision=3,
                                 lower_ctrl_limit=1.0, upper_ctrl_limit=50.0)
    edx_offset_ev = pvproperty(name="EDX:OFFSET_EV", alarm_group="EDX:OFFSET_EV", value=0.0, units="eV", precision=2,
                               lower_ctrl_limit=-1000.0, upper_ctrl_limit=1000.0)
    edx_point = pvproperty(name="EDX:POINT", alarm_group="EDX:POINT", value=0, dtype=ChannelType.LONG, read_only=True)
    edx_counter = pvproperty(name="EDX:COUNTER", alarm_group="EDX:COUNTER", value=0, dtype=ChannelType.LONG, read_only=True)
    edx_rate = pvproperty(name="EDX:RATE", alarm_group="EDX:RATE", value=0.0, units="counts/s", precision=1,
                          read_only=True)
    edx_pulse_pair_ns = pvproperty(name="EDX:PULSE_PAIR_NS", alarm_group="EDX:PULSE_PAIR_NS",
                                   value=DetectorParameters().pulse_pair_time_s * 1e9, units="ns",
                                   precision=1, read_only=True)

    def __init__(self, *args: Any, optics: OpticsParameters | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.optics = optics or OpticsParameters()
        self.specimen = self.world.holder.specimen
        self.renderer = self.world.shared(
            ("tem-renderer", self.optics),
            lambda: ImageRenderer(self.specimen, self.optics, holder=self.world.holder))
        self._edx_models: dict[tuple, EDXModel] = {}
        self._stage_keys = {axis: f"stage.{axis}" for axis in "XYAB"}
        self._bias_enable_key = "bias.enable"
        self._bias_voltage_key = "bias.voltage_v"
        self._cam_busy = False
        self._cam_abort = asyncio.Event()
        self._edx_busy = False
        self._edx_abort = asyncio.Event()

    # ================================================================ links
    def stage_geometry(self) -> tuple[dict[str, float], list[str]]:
        """Stage X, Y (um), A, B (deg) now; axes not connected read 0 and are listed."""
        values, missing = {}, []
        for axis, key in self._stage_keys.items():
            value = self.world.get(key)
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = None
            if value is None or not np.isfinite(value):
                missing.append(axis)
                value = 0.0
            values[axis] = value
        values["A"] = float(np.clip(values["A"], -MAX_TILT_DEG, MAX_TILT_DEG))
        values["B"] = float(np.clip(values["B"], -MAX_TILT_DEG, MAX_TILT_DEG))
        return values, missing

    def bias_state(self) -> tuple[bool, str]:
        """(safe to switch the objective on, reason)."""
        enable = self.world.get(self._bias_enable_key)
        volts = self.world.get(self._bias_voltage_key)
        if enable is None or volts is None:
            return False, "refused: bias state unknown"
        try:
            if _enum_on(enable):
                return False, "refused: bias output enabled"
            if abs(float(volts)) > BIAS_SAFE_VOLTS:
                return False, _short(f"refused: bias at {float(volts):.0f} V")
        except (TypeError, ValueError):
            return False, "refused: bias state unreadable"
        return True, "OK"

    @stage_status.startup
    async def stage_status(self, instance, async_lib):
        """Publish the lens to the world, then keep STAGE_STATUS and the lens/bias alarm."""
        self.mirror("tem.objective", self.obj_rbv)
        # Specimen maps for the first image, computed while the server already answers.
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, self.renderer.mass_thickness)
        loop.run_in_executor(None, self.renderer.z_weighted_density)
        while True:
            _, missing = self.stage_geometry()
            text = "OK" if not missing else _short(
                "no stage " + ",".join(missing) + ": taken as 0")
            if instance.value != text:
                await instance.write(text)
            # Lens on while the bias is (known to be) on: alarm on OBJ_RBV.
            safe, _ = self.bias_state()
            bias_known_on = not safe and self.world.get(self._bias_enable_key) is not None \
                and self.world.get(self._bias_voltage_key) is not None
            lens_on = self.obj_rbv.value == "On"
            if lens_on and bias_known_on:
                if self.obj_rbv.alarm.severity != AlarmSeverity.MAJOR_ALARM:
                    await self.obj_rbv.alarm.write(status=AlarmStatus.STATE,
                                                   severity=AlarmSeverity.MAJOR_ALARM)
            else:
                await clear_alarm(self.obj_rbv)
            await asyncio.sleep(0.5)

    # ================================================================ column putters
    @ht.putter
    async def ht(self, instance, value):
        value = require_range(value, 80.0, 200.0, "HT (kV)")
        await self.ht_rbv.write(value)
        await self.contrast_rbv.write(contrast_mass_thickness(self.contrast.value, value))
        await clear_alarm(instance)
        return value

    @mode.putter
    async def mode(self, instance, value):
        await self.mode_rbv.write(value)
        await clear_alarm(instance)
        return value

    @obj.putter
    async def obj(self, instance, value):
        if value == "On" and self.obj_rbv.value != "On":
            safe, reason = self.bias_state()
            if not safe:
                await self.obj_status.write(reason)
                await instance.alarm.write(status=AlarmStatus.STATE,
                                           severity=AlarmSeverity.MAJOR_ALARM)
                logger.warning("objective lens On %s", reason)
                raise ValueError(f"{instance.pvname}: objective lens On {reason}")
        await self.obj_rbv.write(value)
        await self.obj_status.write("OK")
        await clear_alarm(instance)
        return value

    @fov.putter
    async def fov(self, instance, value):
        value = require_range(value, 0.05, 100.0, "FOV (um)")
        await self.fov_rbv.write(value)
        await self.cam_pixel_nm.write(value * 1000.0 / self.cam_size.value)
        await clear_alarm(instance)
        return value

    @blank.putter
    async def blank(self, instance, value):
        await self.blank_rbv.write(value)
        await clear_alarm(instance)
        return value

    @beam_current.putter
    async def beam_current(self, instance, value):
        value = require_range(value, 1e-5, 100.0, "BEAM_CURRENT (nA)")
        await clear_alarm(instance)
        return value

    @contrast.putter
    async def contrast(self, instance, value):
        value = require_range(value, 1.0, 1000.0, "CONTRAST (ug/cm^2)")
        await self.contrast_rbv.write(contrast_mass_thickness(value, self.ht_rbv.value))
        await clear_alarm(instance)
        return value

    # ================================================================ camera
    @cam_exposure.putter
    async def cam_exposure(self, instance, value):
        value = require_range(value, 0.001, 60.0, "CAM:EXPOSURE (s)")
        await clear_alarm(instance)
        return value

    @cam_size.putter
    async def cam_size(self, instance, value):
        value = int(require_range(value, MIN_IMAGE, MAX_IMAGE, "CAM:SIZE (px)"))
        await self.cam_pixel_nm.write(self.fov_rbv.value * 1000.0 / value)
        await clear_alarm(instance)
        return value

    def image_geometry(self) -> tuple[ImageGeometry, list[str]]:
        stage, missing = self.stage_geometry()
        return ImageGeometry(
            centre_x_um=stage["X"], centre_y_um=stage["Y"], fov_um=float(self.fov_rbv.value),
            size=int(self.cam_size.value), tilt_a_deg=stage["A"], tilt_b_deg=stage["B"],
        ), missing

    @cam_acquire.putter
    async def cam_acquire(self, instance, value):
        if value != "Acquire":
            if self._cam_busy:
                self._cam_abort.set()
            return "Done"
        if self._cam_busy:
            raise RuntimeError("camera busy: acquisition in progress")
        self._cam_busy = True
        self._cam_abort.clear()
        try:
            start = self.clock.now()
            await instance.write("Acquire", verify_value=False, timestamp=start)
            geometry, _ = self.image_geometry()
            exposure = float(self.cam_exposure.value)
            blanked = self.blank_rbv.value == "Blanked"
            dose = 0.0 if blanked else electrons_per_pixel(
                float(self.beam_current.value), exposure, geometry.size)
            rng = np.random.default_rng([self.seed, int(self.cam_counter.value), 1])
            render = functools.partial(
                self.renderer.acquire, geometry, dose, rng, mode=self.mode_rbv.value,
                ht_kv=float(self.ht_rbv.value), contrast_mt0=float(self.contrast.value),
                objective_on=self.obj_rbv.value == "On",
            )
            image = await asyncio.get_running_loop().run_in_executor(None, render)
            # The exposure's electrons stay in the specimen: later images show the damage.
            self.renderer.expose(geometry, dose)
            ready = self.clock.now()
            remaining = exposure - (ready - start)
            if remaining > 0:
                await self.clock.wait(self._cam_abort, remaining)
            if self._cam_abort.is_set():
                return "Done"
            # Stamped at the end of the exposure (or of the rendering, if that took
            # longer), not at the wake-up that publishes it (late by the event loop's
            # latency, times the time scale).
            done = {"timestamp": max(start + exposure, ready)}
            await self.cam_image.write(image.ravel(), **done)
            await self.cam_dose.write(dose, **done)
            await self.cam_center_x.write(geometry.centre_x_um, **done)
            await self.cam_center_y.write(geometry.centre_y_um, **done)
            await self.cam_tilt_a.write(geometry.tilt_a_deg, **done)
            await self.cam_tilt_b.write(geometry.tilt_b_deg, **done)
            await self.cam_counter.write(int(self.cam_counter.value) + 1, **done)
        finally:
            self._cam_busy = False
        await clear_alarm(instance)
        return "Done"

    # ================================================================ EDX
    @edx_live_time.putter
    async def edx_live_time(self, instance, value):
        value = require_range(value, 0.001, 600.0, "EDX:LIVE_TIME (s)")
        await clear_alarm(instance)
        return value

    async def _position_put(self, instance, value, what):
        value = require_range(value, -100.0, 100.0, what)
        await clear_alarm(instance)
        return value

    @edx_x.putter
    async def edx_x(self, instance, value):
        return await self._position_put(instance, value, "EDX:X (um)")

    @edx_y.putter
    async def edx_y(self, instance, value):
        return await self._position_put(instance, value, "EDX:Y (um)")

    @edx_x0.putter
    async def edx_x0(self, instance, value):
        return await self._position_put(instance, value, "EDX:X0 (um)")

    @edx_y0.putter
    async def edx_y0(self, instance, value):
        return await self._position_put(instance, value, "EDX:Y0 (um)")

    @edx_x1.putter
    async def edx_x1(self, instance, value):
        return await self._position_put(instance, value, "EDX:X1 (um)")

    @edx_y1.putter
    async def edx_y1(self, instance, value):
        return await self._position_put(instance, value, "EDX:Y1 (um)")

    @edx_npts.putter
    async def edx_npts(self, instance, value):
        value = int(require_range(value, 1, MAX_LINE_POINTS, "EDX:NPTS"))
        await clear_alarm(instance)
        return value

    def energy_axis(self, nchan=None, ev_per_chan=None, offset_ev=None) -> EnergyAxis:
        return EnergyAxis(
            nchan=int(self.edx_nchan.value if nchan is None else nchan),
            ev_per_chan=float(self.edx_ev_per_chan.value if ev_per_chan is None else ev_per_chan),
            offset_ev=float(self.edx_offset_ev.value if offset_ev is None else offset_ev),
        )

    async def _axis_put(self, instance, axis: EnergyAxis):
        if self._edx_busy:
            raise RuntimeError("EDX busy: energy axis cannot change during an acquisition")
        await self.edx_energy.write(axis.centres)
        await clear_alarm(instance)

    @edx_nchan.putter
    async def edx_nchan(self, instance, value):
        value = int(require_range(value, 256, MAX_CHANNELS, "EDX:NCHAN"))
        await self._axis_put(instance, self.energy_axis(nchan=value))
        return value

    @edx_ev_per_chan.putter
    async def edx_ev_per_chan(self, instance, value):
        value = require_range(value, 1.0, 50.0, "EDX:EV_PER_CHAN (eV)")
        await self._axis_put(instance, self.energy_axis(ev_per_chan=value))
        return value

    @edx_offset_ev.putter
    async def edx_offset_ev(self, instance, value):
        value = require_range(value, -1000.0, 1000.0, "EDX:OFFSET_EV (eV)")
        await self._axis_put(instance, self.energy_axis(offset_ev=value))
        return value

    def edx_model(self, ht_kv: float, axis: EnergyAxis) -> EDXModel:
        """The spectrum model for this beam energy and axis (cached; thread-safe enough:
        a duplicate build is harmless)."""
        key = (round(ht_kv, 6), axis)
        model = self._edx_models.get(key)
        if model is None:
            model = EDXModel(self.specimen.elements(), ht_kv=ht_kv, axis=axis)
            self._edx_models = {key: model}
        return model

    def edx_points(self) -> list[tuple[float, float]]:
        """Probe offsets (um, image frame) of the acquisition to come."""
        if self.edx_mode.value == "Line":
            n = int(self.edx_npts.value)
            xs = np.linspace(self.edx_x0.value, self.edx_x1.value, n)
            ys = np.linspace(self.edx_y0.value, self.edx_y1.value, n)
            return list(zip(xs.tolist(), ys.tolist(), strict=True))
        return [(float(self.edx_x.value), float(self.edx_y.value))]

    @edx_acquire.putter
    async def edx_acquire(self, instance, value):
        if value != "Acquire":
            if self._edx_busy:
                self._edx_abort.set()
            return "Done"
        if self._edx_busy:
            raise RuntimeError("EDX busy: acquisition in progress")
        self._edx_busy = True
        self._edx_abort.clear()
        loop = asyncio.get_running_loop()
        pending = None
        try:
            start = self.clock.now()
            await instance.write("Acquire", verify_value=False, timestamp=start)
            geometry, _ = self.image_geometry()
            axis = self.energy_axis()
            ht_kv = float(self.ht_rbv.value)
            live = float(self.edx_live_time.value)
            blanked = self.blank_rbv.value == "Blanked"
            electrons = 0.0 if blanked else beam_electrons(float(self.beam_current.value),
                                                           live)
            points = self.edx_points()
            line_mode = self.edx_mode.value == "Line"
            counter = int(self.edx_counter.value)
            model = await loop.run_in_executor(None, self.edx_model, ht_kv, axis)
            await self.edx_point.write(0, timestamp=start)
            spectra = []

            def compute(i: int) -> np.ndarray:
                x_nm, y_nm = geometry.point_nm(*points[i])
                densities = areal_densities_at(self.specimen, x_nm, y_nm,
                                               geometry.path_factor, ht_kv=ht_kv)
                rng = np.random.default_rng([self.seed, counter, i, 2])
                return model.acquire(densities, electrons, rng, live_time_s=live)

            # Each spectrum is computed while the previous point counts: a spectrum
            # takes ~1 ms, but the executor it shares with the spectrometer's frame
            # preparation can keep it waiting longer than one live time, which
            # lengthened a point on a loaded machine (0.613 s for 0.5 s).
            pending = loop.run_in_executor(None, compute, 0)
            for i in range(len(points)):
                spectrum = await pending
                if i + 1 < len(points):
                    pending = loop.run_in_executor(None, compute, i + 1)
                ready = self.clock.now()
                remaining = live - (ready - start)
                if remaining > 0:
                    await self.clock.wait(self._edx_abort, remaining)
                if self._edx_abort.is_set():
                    return "Done"
                # A point ends its live time after the previous one (or when its
                # spectrum is computed, if later), whenever the wake-up that publishes
                # it comes: stamped then, and the next point starts then.
                done = {"timestamp": max(start + live, ready)}
                start = done["timestamp"]
                spectra.append(spectrum)
                await self.edx_spectrum.write(spectrum, **done)
                await self.edx_rate.write(float(spectrum.sum()) / live, **done)
                await self.edx_point.write(i + 1, **done)
            if line_mode:
                await self.edx_line_spectra.write(np.concatenate(spectra), **done)
            await self.edx_counter.write(counter + 1, **done)
        finally:
            if pending is not None:
                pending.cancel()  # an aborted line's next spectrum, unwanted
            self._edx_busy = False
        await clear_alarm(instance)
        return "Done"


    async def reset_state(self) -> None:
        """Nothing acquiring, objective on, default optics, camera and EDX (``SIM:RESET``).

        Run after the bias supply's reset (the lens may not come on with the bias on).
        """
        self._cam_abort.set()
        self._edx_abort.set()
        await self.restore_defaults(
            "ht", "ht_rbv", "mode", "mode_rbv", "fov", "fov_rbv", "blank", "blank_rbv",
            "beam_current", "contrast", "contrast_rbv", "cam_exposure", "cam_size",
            "cam_pixel_nm", "edx_live_time", "edx_mode", "edx_x", "edx_y", "edx_x0",
            "edx_y0", "edx_x1", "edx_y1", "edx_npts", "edx_nchan", "edx_ev_per_chan",
            "edx_offset_ev", "obj_status")
        await self.obj.write("On")
        await self.restore_defaults("cam_acquire", "edx_acquire")


def main(argv=None):
    serve_part("tem", argv)


if __name__ == "__main__":
    main()
