"""Ga+ ion column (``FIB:``): optics, blanker, interlock state and scan generator."""

from __future__ import annotations

from ophyd import Component as Cpt
from ophyd import Device

from temsims.devices.common import (
    Readback,
    Reading,
    SwitchSignal,
    ValidatedSignal,
    reads_now,
)

#: Slack (s) on top of NX*NY*DWELL for the put-completion of a raster frame.
FRAME_SLACK_S = 30.0
#: Setpoints the IOC refuses while a frame is rastered (docs/interlocks.md).
FROZEN_DURING_FRAME = ("fov", "nx", "ny", "dwell", "rotation", "mode", "spot_x", "spot_y")


class FrameGuardedSignal(ValidatedSignal):
    """A raster or optics setpoint: also refused client-side while a frame runs."""

    def check_value(self, value):
        super().check_value(value)
        running = self.root._raster_running() if hasattr(self.root, "_raster_running") else False
        if running:
            raise ValueError(
                f"{self.name} ({self.setpoint_pvname}): refused while a raster frame runs "
                "(the IOC freezes the raster parameters for the frame)")


class ScanGenerator(Device):
    """Raster setup (configuration) and progress of the column's scan generator."""

    fov = Cpt(FrameGuardedSignal, "FOV", kind="config", doc="Raster width along x (um)")
    nx = Cpt(FrameGuardedSignal, "NX", kind="config", doc="Pixels per line")
    ny = Cpt(FrameGuardedSignal, "NY", kind="config", doc="Lines per frame")
    dwell = Cpt(FrameGuardedSignal, "DWELL", kind="config", doc="Dwell per pixel (s)")
    rotation = Cpt(FrameGuardedSignal, "ROTATION", kind="config", doc="Scan rotation (deg)")
    mode = Cpt(FrameGuardedSignal, "MODE", string=True, kind="config", doc="Raster or Spot")
    spot_x = Cpt(FrameGuardedSignal, "SPOT_X", kind="config", doc="Spot x (um)")
    spot_y = Cpt(FrameGuardedSignal, "SPOT_Y", kind="config", doc="Spot y (um)")
    acquire = Cpt(ValidatedSignal, "ACQUIRE", string=True, kind="omitted")
    acquire_rbv = Cpt(Readback, "ACQUIRE_RBV", string=True, kind="omitted")
    line = Cpt(Reading, "LINE", kind="omitted")
    pixel = Cpt(Reading, "PIXEL", kind="omitted")
    progress = Cpt(Reading, "PROGRESS", kind="omitted")
    frame = Cpt(Readback, "FRAME", kind="omitted")
    start_time = Cpt(Reading, "START_TIME", kind="omitted")
    frame_time = Cpt(Reading, "FRAME_TIME", kind="config", doc="NX*NY*DWELL (s)")
    pixel_nm = Cpt(Reading, "PIXEL_NM", kind="config", doc="FOV/NX (nm)")

    def start_frame(self):
        """Raster one frame; the status finishes at the end of the frame.

        Raises ``RuntimeError`` if a frame is already being rastered (the IOC would
        refuse the Start and the put would never complete).
        """
        if reads_now(self.acquire_rbv, "Start"):
            raise RuntimeError(f"{self.name}: a raster frame is already running")
        timeout = float(self.frame_time.get()) + FRAME_SLACK_S
        return self.acquire.set("Start", timeout=timeout)

    def stop(self, *, success: bool = False) -> None:
        """Abort the frame being rastered (no-op when idle)."""
        # The monitored value: a stale Start costs a no-op Stop, and an abort does not
        # wait on a CA read (of a part that may be gone).
        if str(self.acquire_rbv.get()) == "Start":
            self.acquire.put("Stop", use_complete=False)


class IonColumn(Device):
    """The Ga+ focused-ion-beam column.

    ``current`` (pA through the aperture) is hinted; probe size, landing energy,
    sample current and the blanker are read with every event; HV and the aperture
    are configuration, and so are the scan generator setup (``scan``) and the TEM/FIB
    coincidence correction (``coincidence_x``, ``coincidence_y``, um: a beam shift the
    coincidence calibration writes; decision 0042) and the raster calibration
    (``fov_cal``, a factor on the field the deflectors write, and ``rot_cal``, deg added
    to their rotation: what the raster calibration writes; decision 0029) and the
    objective focus offset (``focus``, um toward the specimen: what ``focus_probe``
    writes; decision 0044).
    Unblanking is only accepted by the IOC in SIMS geometry: ``unblank()`` checks the
    column's interlock state first and raises with its reason.
    """

    hv = Cpt(FrameGuardedSignal, "HV_RBV", write_pv="HV", kind="config", doc="Column HV (kV)")
    aperture = Cpt(FrameGuardedSignal, "APERTURE", string=True, kind="config",
                   doc="Beam-defining aperture (named by its current)")
    current = Cpt(Reading, "CURRENT_RBV", kind="hinted", doc="Beam current (pA)")
    sample_current = Cpt(Reading, "SAMPLE_CURRENT_RBV", kind="normal",
                         doc="Current on the sample (pA)")
    probe = Cpt(Reading, "PROBE_RBV", kind="normal", doc="Probe diameter FWHM (nm)")
    emission = Cpt(Reading, "EMISSION_RBV", kind="omitted", doc="Emission (uA)")
    landing = Cpt(Reading, "LANDING_RBV", kind="normal", doc="Landing energy (keV)")
    blank = Cpt(SwitchSignal, "BLANK_RBV", write_pv="BLANK", kind="normal",
                doc="Blanked/Unblanked (set() ends at the readback)")
    status = Cpt(Readback, "STATUS", string=True, kind="omitted")
    interlock = Cpt(Readback, "INTERLOCK_RBV", string=True, kind="omitted")
    interlock_reason = Cpt(Readback, "INTERLOCK_REASON", string=True, kind="omitted")
    scan = Cpt(ScanGenerator, "SCAN:", kind="config")
    coincidence_x = Cpt(FrameGuardedSignal, "COINCIDENCE:X", kind="config",
                        doc="TEM/FIB coincidence correction along x (um)")
    coincidence_y = Cpt(FrameGuardedSignal, "COINCIDENCE:Y", kind="config",
                        doc="TEM/FIB coincidence correction along y (um)")
    focus = Cpt(FrameGuardedSignal, "FOCUS", kind="config",
                doc="Objective focus offset toward the specimen (um)")
    focus_table = Cpt(Reading, "FOCUS_TABLE_RBV", kind="omitted",
                      doc="Focus move of the column's bias focus table (um)")
    coincidence_bias = Cpt(FrameGuardedSignal, "COINCIDENCE:BIAS", kind="config",
                           doc="Holder bias (V) the coincidence correction was measured "
                           "at; 0: never")
    fov_cal = Cpt(FrameGuardedSignal, "SCAN:FOV_CAL", kind="config",
                  doc="Raster field calibration: factor on the field written")
    rot_cal = Cpt(FrameGuardedSignal, "SCAN:ROT_CAL", kind="config",
                  doc="Raster rotation calibration (deg), added to the rotation written")

    def _raster_running(self) -> bool:
        return reads_now(self.scan.acquire_rbv, "Start")

    def unblank(self):
        """Unblank the ion beam; refused here (ValueError) unless the interlock permits."""
        if str(self.interlock.get()) != "Permit":
            raise ValueError(f"{self.name}: unblanking refused, not in SIMS geometry "
                             f"({self.interlock_reason.get()})")
        return self.blank.set("Unblanked")

    def stop(self, *, success: bool = False) -> None:
        self.scan.stop(success=success)
