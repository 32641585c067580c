"""Mass spectrometer (``MS:``): magnetic sector, collectors 1-4, counting and mass scan.

Collectors are configured by species (``"7Li"``, ``"Li7"``, ``"Li-7"``; isotope masses
from ``periodictable``) or by mass (u). Counting is the spectrometer's ``trigger()``;
a mass scan is ``spectrometer.mass_scan.trigger()`` (spectrum and mass axis), so
``count([spectrometer])`` and ``count([spectrometer.mass_scan])`` are both plans.
Imaging (maps line by line while the ion column rasters) is
:class:`temsims.devices.imager.SIMSImager`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device
from ophyd import DynamicDeviceComponent as DDC

# Isotope names and masses are shared with the plans, which must not import devices.
from temsims.constants import species_for_mass, species_label, species_mass
from temsims.devices.common import (
    Readback,
    Reading,
    ShapedArray,
    SoftSignal,
    ValidatedSignal,
    chain,
    is_state,
    reads_now,
    wait_until,
)

N_COLLECTORS = 4
#: Collector masses the focal plane reaches: 0.36..1.96 of the axial mass
#: (radius 0.6..1.4 of the axial radius, docs/pv-reference.md).
FOCAL_PLANE_MASS_RATIO = (0.36, 1.96)
ACQUIRE_SLACK_S = 30.0
#: Seconds a trigger waits for BUSY to read Idle before it refuses. The IOC writes Idle
#: before it completes the previous ACQUIRE put, but the client runs the monitor's
#: callback and the put's on different threads: on a loaded machine the put's completion
#: (and the plan's next trigger) came first, and the trigger refused a free spectrometer.
BUSY_SETTLE_S = 5.0
#: Seconds a FIELD put may take: it completes when the magnet has settled.
FIELD_WRITE_TIMEOUT_S = 30.0
#: Magnet settling per step of a mass scan (s), as the IOC documents it.
SCAN_STEP_SETTLE_S = 1e-3
MAX_SCAN_POINTS = 20000

def mass_label(mass: float) -> str:
    """A data-key-friendly name for a collector at ``mass``: its species or ``m<mass>``."""
    label = species_for_mass(mass)
    return label if label else f"m{mass:.3f}".replace(".", "p")


class CollectorMass(ValidatedSignal):
    """Collector mass setpoint: also checks the focal plane at the present field."""

    def check_value(self, value):
        super().check_value(value)
        spectrometer = self.root
        if hasattr(spectrometer, "focal_plane_range"):
            low, high = spectrometer.focal_plane_range()
            if not low <= value <= high:
                raise ValueError(
                    f"{self.name}: {value:.4f} u outside the focal plane at the present "
                    f"field ({low:.3f}..{high:.3f} u); change MS:FIELD first")
            if spectrometer.is_busy():
                raise ValueError(f"{self.name}: refused while an acquisition runs")


class Collector(Device):
    """One ion-counting collector; ``set("7Li")`` or ``set(7.016)`` places it."""

    mass = Cpt(CollectorMass, "MASS_RBV", write_pv="MASS", kind="config",
               doc="Collector mass (u)")
    species = Cpt(SoftSignal, value="", kind="config", doc="Species the collector is set to")
    counts = Cpt(Reading, "COUNTS", kind="hinted", doc="Counts of the last count")
    rate = Cpt(Reading, "RATE", kind="normal", doc="Count rate (1/s)")

    def set(self, target, **kwargs):
        """Move the collector to a species (``"7Li"``) or a mass (u)."""
        if isinstance(target, str):
            mass, label = species_mass(target), species_label(target)
        elif isinstance(target, numbers.Real) and not isinstance(target, bool):
            mass = float(target)
            label = species_for_mass(mass, 0.005) or ""
        else:
            raise ValueError(f"{self.name}: expected a species or a mass, got {target!r}")
        st = self.mass.set(mass, **kwargs)
        self.species.put(label)
        return st

    @property
    def position(self) -> float:
        return float(self.mass.get())

    def label(self) -> str:
        """Species of the collector (as set, else recognised from its mass)."""
        return str(self.species.get()) or mass_label(float(self.mass.get()))


def _not_busy(value) -> bool:
    """A BUSY value (enum string or index, as monitors deliver it) that is not Busy."""
    return not is_state(value, "Busy", ("Idle", "Busy"))


def idle_first(device, busy):
    """A :func:`chain` step that waits (at most :data:`BUSY_SETTLE_S`) for ``busy`` to
    read Idle, and fails naming what to do if another acquisition holds the spectrometer."""

    def wait_idle():
        if _not_busy(busy.get()):
            return None
        return wait_until(busy, _not_busy,
                          timeout=BUSY_SETTLE_S,
                          what=f"{device.name}: the spectrometer is busy with another "
                               "acquisition; wait for it to end or stop it (ACQUIRE Done)")
    return wait_idle


def _scan_points(scanner) -> tuple[int]:
    start, stop, step = (float(scanner.first.get()), float(scanner.last.get()),
                         float(scanner.step.get()))
    if stop <= start or step <= 0:
        return (0,)
    return (int(math.floor((stop - start) / step + 1e-9)) + 1,)


class MassScanner(Device):
    """Mass scan of the axial collector: ``trigger()`` sweeps the magnet START..STOP.

    ``spectrum`` (counts per step), ``mass_axis`` (u, calibrated) and
    ``field_axis`` (T, Hall readback) are read; the range (``first``/``last``, PVs
    SCAN:START/STOP: ``stop`` is a reserved bluesky name), step and dwell are
    configuration.
    """

    mode = Cpt(ValidatedSignal, "MODE", string=True, kind="omitted")
    acquire = Cpt(ValidatedSignal, "ACQUIRE", string=True, kind="omitted")
    busy = Cpt(Readback, "BUSY", string=True, kind="omitted")
    first = Cpt(ValidatedSignal, "SCAN:START", kind="config", doc="First mass (u)")
    last = Cpt(ValidatedSignal, "SCAN:STOP", kind="config", doc="Last mass (u)")
    step = Cpt(ValidatedSignal, "SCAN:STEP", kind="config", doc="Mass step (u)")
    dwell = Cpt(ValidatedSignal, "SCAN:DWELL", kind="config", doc="Dwell per step (s)")
    spectrum = Cpt(ShapedArray, "SCAN:SPECTRUM", shape=_scan_points, dtype=np.float64,
                   dims=("step",), kind="normal", doc="Counts per step")
    mass_axis = Cpt(ShapedArray, "SCAN:MASS_AXIS", shape=_scan_points, dtype=np.float64,
                    dims=("step",), kind="normal", doc="Calibrated mass at each step (u)")
    field_axis = Cpt(ShapedArray, "SCAN:FIELD_AXIS", shape=_scan_points, dtype=np.float64,
                     dims=("step",), kind="normal", doc="Hall readback at each step (T)")

    def set_range(self, start_u: float, stop_u: float, step_u: float, dwell_s: float):
        """Configure the scan range; one status for the four puts."""
        self._check_range(start_u, stop_u, step_u)
        steps = [lambda s=s, v=v: s.set(v) for s, v in
                 ((self.first, start_u), (self.last, stop_u), (self.step, step_u),
                  (self.dwell, dwell_s))]
        return chain(self, steps)

    def _check_range(self, start, stop, step):
        if not stop > start:
            raise ValueError(f"{self.name}: stop ({stop}) must be above start ({start})")
        npts = int(math.floor((stop - start) / step + 1e-9)) + 1
        if npts > MAX_SCAN_POINTS:
            raise ValueError(f"{self.name}: {npts} points exceed {MAX_SCAN_POINTS}")
        return npts

    def trigger(self):
        """Switch to Scan mode (if needed) and run one mass scan."""
        npts = self._check_range(float(self.first.get()), float(self.last.get()),
                                 float(self.step.get()))
        duration = npts * (float(self.dwell.get()) + SCAN_STEP_SETTLE_S) + 1.0
        steps = [idle_first(self, self.busy)]
        if str(self.mode.get()) != "Scan":
            steps.append(lambda: self.mode.set("Scan"))
        steps.append(lambda: self.acquire.set("Acquire", timeout=duration + ACQUIRE_SLACK_S))
        return chain(self, steps)


class MassSpectrometer(Device):
    """The mass spectrometer: magnet, calibration, four collectors, counting.

    ``trigger()`` counts for ``count_time`` on all four collectors (switching MODE to
    Counting if needed); each collector's ``counts`` is hinted. ``set_species`` places
    the collectors by species or mass. ``mass_scan`` is the mass-scan detector.
    """

    # The IOC completes a FIELD put once the magnet has settled (up to ~9 s nominal for
    # a 2 T jump): set() means "there".
    field = Cpt(ValidatedSignal, "FIELD_RBV", write_pv="FIELD", kind="config",
                write_timeout=FIELD_WRITE_TIMEOUT_S,
                doc="Magnet field (T), Hall readback; set() ends when settled")
    settled = Cpt(Readback, "SETTLED", string=True, kind="omitted")
    cal_a = Cpt(ValidatedSignal, "CAL:A", auto_monitor=True, kind="config",
                doc="Mass calibration a (u/T^2)")
    cal_b0 = Cpt(ValidatedSignal, "CAL:B0", auto_monitor=True, kind="config",
                 doc="Mass calibration B0 (T)")
    field_rbv = Cpt(Readback, "FIELD_RBV", kind="omitted")
    polarity = Cpt(Readback, "POLARITY_RBV", string=True, kind="config")
    dead_time = Cpt(ValidatedSignal, "DEAD_TIME", kind="config",
                    doc="Calibrated dead time (s) counts are corrected with")
    dead_time_source = Cpt(ValidatedSignal, "DEAD_TIME:SOURCE", string=True, kind="config",
                           doc="Where DEAD_TIME came from (nominal, manual, calibrated ...)")
    dark_rate = Cpt(ValidatedSignal, "DARK_RATE", kind="config", doc="Dark rate (1/s)")
    transmission = Cpt(ValidatedSignal, "TRANSMISSION", kind="config")
    drift = Cpt(ValidatedSignal, "DRIFT_NM_PER_MIN", kind="config",
                doc="Specimen drift (nm/min)")
    collector_window = Cpt(Readback, "COL:WINDOW", kind="config",
                           doc="Mass window each collector counts (u, full width)")
    mode = Cpt(ValidatedSignal, "MODE", string=True, kind="config",
               doc="Counting/Scan/Imaging")
    count_time = Cpt(ValidatedSignal, "COUNT_TIME", kind="config", doc="Count time (s)")
    acquire = Cpt(ValidatedSignal, "ACQUIRE", string=True, kind="omitted")
    busy = Cpt(Readback, "BUSY", string=True, kind="omitted")
    sims_ready = Cpt(Readback, "SIMS_READY", string=True, kind="normal",
                     doc="All SIMS conditions met (else dark counts only)")
    status = Cpt(Readback, "STATUS", string=True, kind="omitted")
    collectors = DDC({f"col{n}": (Collector, f"COL{n}:", {}) for n in range(1, N_COLLECTORS + 1)})
    mass_scan = Cpt(MassScanner, "", kind="omitted")

    def collector_list(self) -> list[Collector]:
        return [getattr(self.collectors, f"col{n}") for n in range(1, N_COLLECTORS + 1)]

    def labels(self) -> list[str]:
        """Species (or mass) label of each collector, in collector order."""
        return [c.label() for c in self.collector_list()]

    def focal_plane_range(self) -> tuple[float, float]:
        """Masses (u) the collectors can reach at the present field."""
        a, b0 = float(self.cal_a.get()), float(self.cal_b0.get())
        axial = a * (float(self.field_rbv.get()) - b0) ** 2
        lo, hi = FOCAL_PLANE_MASS_RATIO
        return lo * axial, hi * axial

    def is_busy(self) -> bool:
        """An acquisition runs: the BUSY monitor says so and a fresh read confirms it
        (the monitor can lag the end of the previous acquisition, see BUSY_SETTLE_S)."""
        return reads_now(self.busy, "Busy")

    def set_species(self, targets):
        """Place collectors: ``["6Li", "7Li", 12.0, "13C"]`` or ``{1: "6Li", 3: "12C"}``.

        Everything is checked before the first put; one status for all.
        """
        items = targets.items() if isinstance(targets, dict) else enumerate(targets, start=1)
        plan = []
        for index, target in items:
            if not 1 <= int(index) <= N_COLLECTORS:
                raise ValueError(f"collector {index}: expected 1..{N_COLLECTORS}")
            col = getattr(self.collectors, f"col{int(index)}")
            mass = species_mass(target) if isinstance(target, str) else float(target)
            col.mass.check_value(mass)
            plan.append((col, target))
        return chain(self, [lambda c=c, t=t: c.set(t) for c, t in plan])

    def trigger(self):
        """Count for COUNT_TIME on the four collectors (mode Counting)."""
        count_time = float(self.count_time.get())
        steps = [idle_first(self, self.busy)]
        if str(self.mode.get()) != "Counting":
            steps.append(lambda: self.mode.set("Counting"))
        steps.append(lambda: self.acquire.set("Acquire", timeout=count_time + ACQUIRE_SLACK_S))
        return chain(self, steps)
