"""EDX detector (``TEM:EDX:``): a Triggerable X-ray spectrometer, point or line mode."""

from __future__ import annotations

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Kind

from temsims.devices.common import Reading, ShapedArray, ValidatedSignal

ACQUIRE_SLACK_S = 30.0


def _nchan(edx) -> tuple[int]:
    return (int(edx.nchan.get()),)


def _line_shape(edx) -> tuple[int, int]:
    return (int(edx.npts.get()), int(edx.nchan.get()))


class EDXDetector(Device):
    """EDX detector. ``trigger()`` acquires a spectrum (Point) or a line scan (Line).

    In Point mode ``spectrum`` (NCHAN) is read; in Line mode ``line_spectra``
    (NPTS x NCHAN) instead: the kinds follow ``mode`` at each ``trigger()`` and
    ``describe()``, so a run's documents carry the data of the mode it ran in.
    ``energy`` is the channel-centre axis (eV). Probe position, line geometry, live
    time and the energy-axis setup are configuration.
    """

    live_time = Cpt(ValidatedSignal, "EDX:LIVE_TIME", kind="config", doc="Live time (s)")
    mode = Cpt(ValidatedSignal, "EDX:MODE", string=True, kind="config", doc="Point or Line")
    x = Cpt(ValidatedSignal, "EDX:X", kind="config", doc="Probe x from image centre (um)")
    y = Cpt(ValidatedSignal, "EDX:Y", kind="config", doc="Probe y from image centre (um)")
    x0 = Cpt(ValidatedSignal, "EDX:X0", kind="config", doc="Line start x (um)")
    y0 = Cpt(ValidatedSignal, "EDX:Y0", kind="config", doc="Line start y (um)")
    x1 = Cpt(ValidatedSignal, "EDX:X1", kind="config", doc="Line end x (um)")
    y1 = Cpt(ValidatedSignal, "EDX:Y1", kind="config", doc="Line end y (um)")
    npts = Cpt(ValidatedSignal, "EDX:NPTS", kind="config", doc="Line points")
    nchan = Cpt(ValidatedSignal, "EDX:NCHAN", kind="config", doc="Channels")
    ev_per_chan = Cpt(ValidatedSignal, "EDX:EV_PER_CHAN", kind="config", doc="eV per channel")
    offset_ev = Cpt(ValidatedSignal, "EDX:OFFSET_EV", kind="config", doc="Energy offset (eV)")
    acquire = Cpt(ValidatedSignal, "EDX:ACQUIRE", string=True, kind="omitted")
    spectrum = Cpt(ShapedArray, "EDX:SPECTRUM", shape=_nchan, dtype=np.float32,
                   dims=("channel",), kind="normal", doc="Spectrum (counts per channel)")
    line_spectra = Cpt(ShapedArray, "EDX:LINE_SPECTRA", shape=_line_shape, dtype=np.float32,
                       dims=("point", "channel"), kind="omitted",
                       doc="Line scan spectra (NPTS x NCHAN counts)")
    energy = Cpt(ShapedArray, "EDX:ENERGY", shape=_nchan, dtype=np.float64,
                 dims=("channel",), kind="normal", doc="Channel centres (eV)")
    point = Cpt(Reading, "EDX:POINT", kind="omitted")
    counter = Cpt(Reading, "EDX:COUNTER", kind="normal", doc="Acquisitions completed")
    rate = Cpt(Reading, "EDX:RATE", kind="hinted", doc="Total count rate (1/s)")
    pulse_pair_ns = Cpt(Reading, "EDX:PULSE_PAIR_NS", kind="config",
                        doc="Pulse-pair resolving time (ns): sum peaks")

    def _apply_mode_kinds(self) -> str:
        mode = str(self.mode.get())
        if mode == "Line":
            self.spectrum.kind, self.line_spectra.kind = Kind.omitted, Kind.normal
        else:
            self.spectrum.kind, self.line_spectra.kind = Kind.normal, Kind.omitted
        return mode

    def trigger(self):
        """Acquire; finishes after LIVE_TIME (x NPTS in Line mode)."""
        mode = self._apply_mode_kinds()
        points = int(self.npts.get()) if mode == "Line" else 1
        timeout = float(self.live_time.get()) * points + ACQUIRE_SLACK_S
        return self.acquire.set("Acquire", timeout=timeout)

    def describe(self):
        self._apply_mode_kinds()
        return super().describe()
