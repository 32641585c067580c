"""Mass spectra of the axial collector, with peak finding, and the mass calibration.

The spectrometer's calibration is ``m = a (B - B0)^2`` (``CAL:A`` u/T^2, ``CAL:B0``
T) against the Hall readback. :func:`calibrate_masses` scans a window around each
known peak (by default the primary beam's 69Ga and 71Ga, implanted in the
specimen: sputter a little first so that they show), locates each peak in field
(centroid of the counts above half maximum) and fits ``sqrt(m) = sqrt(a) (B - B0)``.
"""

from __future__ import annotations

import math

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from temsims.constants import species_mass
from temsims.plans._common import (
    Values,
    check_bool,
    check_device,
    check_md,
    check_number,
    check_species,
    check_within,
    device_limits,
    plan_args_md,
    region_md,
    sims_md,
    start_metadata,
    with_safe_state,
)
from temsims.plans.types import BiasDevice, IonColumnDevice, Plan, SpectrometerDevice, StageDevice

MAX_SCAN_POINTS = 20000
DWELL_RANGE_S = (1e-4, 10.0)
MASS_RANGE_U = (0.5, 300.0)
#: CAL:A and CAL:B0 ranges accepted as a sane fit (u/T^2, T).
CAL_A_RANGE = (1.0, 1e5)
CAL_B0_RANGE = (-0.1, 0.1)


# ============================================================================ peaks
def find_mass_peaks(masses, counts, fields=None, *, min_counts: float = 20.0,
                    rel_prominence: float = 0.02) -> list[dict]:
    """Peaks of a mass spectrum (``scipy.signal.find_peaks``), strongest first.

    A peak must rise ``max(min_counts, rel_prominence * max, 5 sqrt(max))`` above its
    surroundings. Its position is the counts-weighted centroid of the channels
    above half its height (flat-topped peaks of a magnetic sector), in mass and, if
    ``fields`` is given, in field (T).

    Returns
    -------
    list of dict
        ``mass_u``, ``height`` (counts), ``area`` (counts), ``field_t`` (or NaN),
        ``index`` (channel of the maximum).
    """
    from scipy.signal import find_peaks, peak_widths

    masses = np.asarray(masses, dtype=float)
    counts = np.asarray(counts, dtype=float)
    if counts.size < 3 or not np.any(counts > 0):
        return []
    smooth = np.convolve(counts, np.ones(3) / 3.0, mode="same")
    top = float(smooth.max())
    prominence = max(min_counts, rel_prominence * top, 5.0 * math.sqrt(max(top, 1.0)))
    idx, _ = find_peaks(smooth, prominence=prominence)
    if idx.size == 0:
        return []
    _, _, left, right = peak_widths(smooth, idx, rel_height=0.5)
    out = []
    for i, lo, hi in zip(idx, left, right, strict=True):
        a, b = int(math.floor(lo)), int(math.ceil(hi)) + 1
        w = counts[a:b]
        total = float(w.sum())
        if total <= 0:
            continue
        peak = {"index": int(i), "height": float(smooth[i]), "area": total,
                "mass_u": float((masses[a:b] * w).sum() / total),
                "field_t": float("nan")}
        if fields is not None:
            f = np.asarray(fields, dtype=float)
            peak["field_t"] = float((f[a:b] * w).sum() / total)
        out.append(peak)
    return sorted(out, key=lambda p: -p["height"])


def fit_mass_calibration(fields_t, masses_u) -> tuple[float, float]:
    """Fit ``m = a (B - B0)^2`` to peaks: ``sqrt(m) = sqrt(a) B - sqrt(a) B0``."""
    fields_t = np.asarray(fields_t, dtype=float)
    root = np.sqrt(np.asarray(masses_u, dtype=float))
    slope, intercept = np.polyfit(fields_t, root, 1)
    return float(slope * slope), float(-intercept / slope)


# ============================================================================ checks
def _check_range(start_u, stop_u, step_u, dwell_s, spectrometer) -> tuple:
    start_u = check_number("start_u", start_u, low=MASS_RANGE_U[0], high=MASS_RANGE_U[1],
                           unit="u")
    stop_u = check_number("stop_u", stop_u, low=MASS_RANGE_U[0], high=MASS_RANGE_U[1], unit="u")
    if not stop_u > start_u:
        raise ValueError(f"stop_u ({stop_u:g} u) must be above start_u ({start_u:g} u)")
    step_u = check_number("step_u", step_u, low=1e-4, high=stop_u - start_u, unit="u")
    npts = int(math.floor((stop_u - start_u) / step_u + 1e-9)) + 1
    if npts > MAX_SCAN_POINTS:
        raise ValueError(f"start_u..stop_u in steps of step_u gives {npts} points; at most "
                         f"{MAX_SCAN_POINTS} (raise step_u)")
    dwell_s = check_number("dwell_s", dwell_s, low=DWELL_RANGE_S[0], high=DWELL_RANGE_S[1],
                           unit="s")
    check_within("dwell_s", dwell_s, device_limits(spectrometer.mass_scan.dwell), "s")
    return start_u, stop_u, step_u, dwell_s, npts


def _check_optional(column, bias, stage) -> None:
    if column is not None:
        check_device("column", column, IonColumnDevice)
    if bias is not None:
        check_device("bias", bias, BiasDevice)
    if stage is not None:
        check_device("stage", stage, StageDevice)


def _unblank(column):
    """Plan stub: unblank the ion beam, refusing clearly outside SIMS geometry."""
    permit = yield from bps.rd(column.interlock, default_value="Permit")
    if str(permit) not in ("Permit", "1"):
        reason = yield from bps.rd(column.interlock_reason, default_value="")
        raise RuntimeError(f"{column.name}: cannot unblank the ion beam, not in SIMS geometry "
                           f"({reason}); run to_sims_mode first")
    yield from bps.mv(column.blank, "Unblanked")


def _sims_start_md(plan_name, plan_args, spectrometer, column, bias, stage, md, fov_um, extra):
    region = None
    if stage is not None:
        fov = fov_um
        if fov is None and column is not None:
            fov = yield from bps.rd(column.scan.fov, default_value=1.0)
        region = yield from region_md(stage, fov_um=float(fov or 1.0))
    sims = yield from sims_md(spectrometer, column, bias)
    return start_metadata(plan_name=plan_name, plan_args=plan_args, mode="SIMS",
                          region=region, md=md, sims=sims, extra=extra)


def _scan_once(scanner, start_u, stop_u, step_u, dwell_s, stream="primary"):
    yield from bps.mv(scanner.first, start_u, scanner.last, stop_u, scanner.step, step_u,
                      scanner.dwell, dwell_s)
    reading = yield from bps.trigger_and_read([scanner], name=stream)
    if not reading:
        return None
    key = scanner.name
    return (np.asarray(reading[f"{key}_mass_axis"]["value"], dtype=float),
            np.asarray(reading[f"{key}_spectrum"]["value"], dtype=float),
            np.asarray(reading[f"{key}_field_axis"]["value"], dtype=float))


def _peaks_stream(peaks: list[dict]) -> Values:
    v = Values("peaks", units={"mass_u": "u", "height": "counts", "area": "counts",
                               "field_t": "T"},
               dims={k: ("peak",) for k in ("mass_u", "height", "area", "field_t")})
    v.set_values(mass_u=np.array([p["mass_u"] for p in peaks], dtype=float),
                 height=np.array([p["height"] for p in peaks], dtype=float),
                 area=np.array([p["area"] for p in peaks], dtype=float),
                 field_t=np.array([p["field_t"] for p in peaks], dtype=float),
                 count=len(peaks))
    return v


# ============================================================================ plans
def mass_spectrum(spectrometer: SpectrometerDevice, *, start_u: float, stop_u: float,
                  step_u: float, dwell_s: float, min_counts: float = 20.0,
                  column: IonColumnDevice | None = None, bias: BiasDevice | None = None,
                  stage: StageDevice | None = None, md: dict | None = None) -> Plan[str]:
    """Mass scan of the axial collector from ``start_u`` to ``stop_u``, with its peaks.

    Parameters
    ----------
    spectrometer : temsims.devices.spectrometer.MassSpectrometer
    start_u, stop_u : float
        Scan range (u, calibrated scale), 0.5..300, stop above start.
    step_u : float
        Mass step (u); at most 20000 points.
    dwell_s : float
        Dwell per step (s), 1e-4..10 (and within SCAN:DWELL's limits).
    min_counts : float
        Least prominence (counts) of a peak; the threshold also scales with the
        spectrum's maximum (see :func:`find_mass_peaks`).
    column : temsims.devices.column.IonColumn, optional
        If given, the ion beam is unblanked for the scan (SIMS geometry required)
        and blanked afterwards; beam energy and current go into the metadata.
    bias : temsims.devices.bias.BiasSupply, optional
        Recorded (``bias_kV``); ramped to 0 V if the plan fails or is aborted.
    stage : temsims.devices.stage.Stage, optional
        Read for the ``region`` metadata (else give ``region`` in ``md``).
    md : dict, optional
        Extra start metadata.

    Yields
    ------
    msg : Msg
        One run: stream ``primary`` (one event: spectrum, mass axis u, field axis T)
        and stream ``peaks`` (one event: arrays ``peaks_mass_u``, ``peaks_height``,
        ``peaks_area``, ``peaks_field_t`` and ``peaks_count``, strongest first).

    Returns
    -------
    str
        The run's uid; its ``peaks`` stream holds the peaks (:func:`find_mass_peaks`).
    """
    check_device("spectrometer", spectrometer, SpectrometerDevice)
    start_u, stop_u, step_u, dwell_s, npts = _check_range(start_u, stop_u, step_u, dwell_s,
                                                          spectrometer)
    min_counts = check_number("min_counts", min_counts, low=0.0)
    _check_optional(column, bias, stage)
    md = check_md(md)

    _md = yield from _sims_start_md(
        "mass_spectrum",
        plan_args_md(spectrometer=spectrometer, start_u=start_u, stop_u=stop_u, step_u=step_u,
                     dwell_s=dwell_s, min_counts=min_counts, column=column, bias=bias,
                     stage=stage),
        spectrometer, column, bias, stage, md, None,
        {"detectors": [spectrometer.mass_scan.name], "num_points": 1,
         "mass_scan": {"start_u": start_u, "stop_u": stop_u, "step_u": step_u,
                       "dwell_s": dwell_s, "npts": npts}})
    scanner = spectrometer.mass_scan

    @bpp.run_decorator(md=_md)
    def inner():
        if column is not None:
            yield from _unblank(column)
        data = yield from _scan_once(scanner, start_u, stop_u, step_u, dwell_s)
        if column is not None:
            yield from bps.mv(column.blank, "Blanked")
        peaks = [] if data is None else find_mass_peaks(*data, min_counts=min_counts)
        yield from bps.trigger_and_read([_peaks_stream(peaks)], name="peaks")

    return (yield from with_safe_state(inner(), column, bias))


def calibrate_masses(spectrometer: SpectrometerDevice, *, peaks: tuple = ("69Ga", "71Ga"),
                     window_u: float = 1.2, step_u: float = 0.005, dwell_s: float = 0.002,
                     min_counts: float = 20.0, write: bool = True,
                     column: IonColumnDevice | None = None, bias: BiasDevice | None = None,
                     stage: StageDevice | None = None, md: dict | None = None) -> Plan[str]:
    """Refit the field-to-mass calibration ``m = a (B - B0)^2`` on known peaks.

    For each species in ``peaks`` a mass scan of ``window_u`` around its mass (on
    the present calibration) locates the peak in field; ``sqrt(m) = sqrt(a) (B -
    B0)`` is fitted (least squares) and, with ``write``, CAL:A and CAL:B0 are put.

    Parameters
    ----------
    spectrometer : temsims.devices.spectrometer.MassSpectrometer
    peaks : tuple of str
        2..8 known isotopes ("69Ga", "71Ga" by default: the implanted primary beam).
    window_u : float
        Width of the scan around each peak (u), 0.1..10; larger than twice the
        present calibration error.
    step_u : float
        Mass step (u), 1e-4..window_u / 10.
    dwell_s : float
        Dwell per step (s), 1e-4..10.
    min_counts : float
        Least prominence of a peak (counts).
    write : bool
        Write the new CAL:A/CAL:B0 (False: only measure and record).
    column, bias, stage
        As in :func:`mass_spectrum` (beam unblanked for the scans if ``column``).
    md : dict, optional
        Extra start metadata.

    Yields
    ------
    msg : Msg
        One run: ``primary`` (one scan event per peak), ``calibration`` (one event:
        old and new a, b0, the fitted fields and the residuals, u).

    Returns
    -------
    str
        The run's uid; its ``calibration`` stream holds ``a``, ``b0`` (new),
        ``a_old``, ``b0_old``, ``fields_t``, ``residuals_u`` (fit) and
        ``errors_before_u`` (the old calibration's errors at the peaks).

    Raises
    ------
    RuntimeError
        If a peak is not found in its window, or the fit is not sane; nothing is
        written then.
    """
    check_device("spectrometer", spectrometer, SpectrometerDevice)
    labels = check_species("peaks", peaks, min_n=2, max_n=8)
    window_u = check_number("window_u", window_u, low=0.1, high=10.0, unit="u")
    step_u = check_number("step_u", step_u, low=1e-4, high=window_u / 10.0, unit="u")
    dwell_s = check_number("dwell_s", dwell_s, low=DWELL_RANGE_S[0], high=DWELL_RANGE_S[1],
                           unit="s")
    min_counts = check_number("min_counts", min_counts, low=0.0)
    write = check_bool("write", write)
    _check_optional(column, bias, stage)
    md = check_md(md)
    masses = [species_mass(s) for s in labels]
    if len({round(m, 3) for m in masses}) != len(masses):
        raise ValueError(f"peaks {labels} must have distinct masses")
    windows = []
    npts = int(round(window_u / step_u))
    for m in masses:
        lo = m - window_u / 2.0
        windows.append((lo, lo + npts * step_u))
        _check_range(lo, lo + npts * step_u, step_u, dwell_s, spectrometer)

    _md = yield from _sims_start_md(
        "calibrate_masses",
        plan_args_md(spectrometer=spectrometer, peaks=list(labels), window_u=window_u,
                     step_u=step_u, dwell_s=dwell_s, min_counts=min_counts, write=write,
                     column=column, bias=bias, stage=stage),
        spectrometer, column, bias, stage, md, None,
        {"detectors": [spectrometer.mass_scan.name], "num_points": len(labels),
         "calibration_peaks": [{"species": s, "mass_u": m} for s, m in zip(labels, masses,
                                                                           strict=True)]})
    scanner = spectrometer.mass_scan

    @bpp.run_decorator(md=_md)
    def inner():
        a_old = yield from bps.rd(spectrometer.cal_a, default_value=1.0)
        b0_old = yield from bps.rd(spectrometer.cal_b0, default_value=0.0)
        if column is not None:
            yield from _unblank(column)
        found = []
        for label, m, (lo, hi) in zip(labels, masses, windows, strict=True):
            yield from bps.checkpoint()
            data = yield from _scan_once(scanner, lo, hi, step_u, dwell_s)
            if data is None:  # not in a live RunEngine (simulation)
                found.append((m, 0.0, m))
                continue
            got = find_mass_peaks(*data, min_counts=min_counts)
            if not got:
                raise RuntimeError(f"calibrate_masses: no {label} peak in {lo:.3f}..{hi:.3f} u "
                                   f"(max {data[1].max():.0f} counts); is the beam on the "
                                   "specimen and Ga implanted (sputter first)?")
            found.append((m, got[0]["field_t"], got[0]["mass_u"]))
        if column is not None:
            yield from bps.mv(column.blank, "Blanked")
        true_m = np.array([f[0] for f in found])
        fields = np.array([f[1] for f in found])
        measured = np.array([f[2] for f in found])
        simulated = bool(np.all(fields == 0))  # no live RunEngine (summarize_plan ...)
        if simulated:
            a, b0 = float(a_old or 1.0), float(b0_old or 0.0)
            residuals = np.zeros_like(true_m)
        else:
            a, b0 = fit_mass_calibration(fields, true_m)
            residuals = a * (fields - b0) ** 2 - true_m
        if not simulated and not (CAL_A_RANGE[0] <= a <= CAL_A_RANGE[1] and CAL_B0_RANGE[0] <= b0 <= CAL_B0_RANGE[1]
                and np.all(np.abs(residuals) < 0.5)):
            raise RuntimeError(f"calibrate_masses: fit not sane (a={a:g}, b0={b0:g}, residuals "
                               f"{residuals}); calibration left unchanged")
        cal = Values("calibration", units={"a": "u/T^2", "b0": "T", "a_old": "u/T^2",
                                           "b0_old": "T", "fields_t": "T",
                                           "residuals_u": "u", "errors_before_u": "u"})
        cal.set_values(a=a, b0=b0, a_old=float(a_old or 0.0), b0_old=float(b0_old or 0.0),
                       fields_t=fields, residuals_u=residuals,
                       errors_before_u=measured - true_m)
        yield from bps.trigger_and_read([cal], name="calibration")
        if write:
            yield from bps.mv(spectrometer.cal_a, a, spectrometer.cal_b0, b0)

    return (yield from with_safe_state(inner(), column, bias))


__all__ = ["calibrate_masses", "find_mass_peaks", "fit_mass_calibration", "mass_spectrum"]
