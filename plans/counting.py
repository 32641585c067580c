"""The counting chain's dead time, measured: count rate against beam current.

The spectrometer's DEAD_TIME is the value the control side corrects counts with; it
starts at the maker's nominal 30 ns, and the chain's own dead time differs from
instrument to instrument (decision 0034). :func:`calibrate_dead_time` measures it: on
a region of uniform, bright signal (the Cu end of a Cu-Ni couple gives ~3e6 63Cu+/s
per nA) it counts two or more isotopes of one element at beam currents stepped by the
column's apertures, up and down again (a palindrome, so that a slow change of the
signal, such as the implanted Ga growing, weighs alike on every current), and fits
``M = k I s / (1 + k I s tau)`` (:func:`temsims.analysis.counting.fit_dead_time`).
With ``apply`` the result is written to DEAD_TIME and DEAD_TIME:SOURCE says
"calibrated <run uid prefix> <UTC date>".
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from temsims.analysis.counting import fit_dead_time
from temsims.constants import species_mass
from temsims.plans._common import (
    Values,
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
    read_dead_time,
    region_md,
    sims_md,
    start_metadata,
    with_safe_state,
)
from temsims.plans.sims import ensure_focal_plane
from temsims.plans.spectra import _unblank
from temsims.plans.types import BiasDevice, IonColumnDevice, Plan, SpectrometerDevice, StageDevice

PLAN_NAME = "calibrate_dead_time"
COUNT_TIME_RANGE_S = (1e-4, 10.0)
FOV_RANGE_UM = (0.05, 100.0)
#: DEAD_TIME values a fit may write (s): the PV's range.
DEAD_TIME_RANGE_S = (10e-9, 100e-9)
#: Least fraction of counts lost at the brightest count for tau to be measured.
MIN_LOSS = 0.03


def _check_apertures(column, apertures: Any) -> tuple[str, ...]:
    if isinstance(apertures, str) or not isinstance(apertures, list | tuple):
        raise TypeError(f"apertures must be a list or tuple of aperture names such as "
                        f"('300 pA', '1 nA', '3 nA', '7 nA'), got {apertures!r}")
    if not 2 <= len(apertures) <= 10:
        raise ValueError(f"apertures must hold 2..10 apertures, got {len(apertures)}")
    names = tuple(getattr(column.aperture, "enum_strs", None) or ())
    for i, a in enumerate(apertures):
        if not isinstance(a, str):
            raise TypeError(f"apertures[{i}] must be an aperture name such as '1 nA', "
                            f"got {a!r}")
        if names and a not in names:
            raise ValueError(f"apertures[{i}] = {a!r} is not one of the column's apertures "
                             f"{list(names)}")
    if len(set(apertures)) != len(apertures):
        raise ValueError(f"apertures must not repeat an aperture, got {list(apertures)}")
    return tuple(apertures)


class DeadTimeNotMeasured(RuntimeError):
    """The fit was not good enough to write DEAD_TIME (its run is stored, DEAD_TIME and
    its source are left as they were)."""


def calibrate_dead_time(spectrometer: SpectrometerDevice, column: IonColumnDevice, *,
                        species: tuple = ("63Cu", "65Cu"),
                        apertures: tuple = ("300 pA", "1 nA", "3 nA", "7 nA"),
                        repeats: int = 2, count_time_s: float = 1e-3, fov_um: float = 1.0,
                        stage: StageDevice | None = None,
                        center_um: tuple[float, float] | None = None,
                        bias: BiasDevice | None = None, scale_rms: float = 0.05,
                        max_sigma_rel: float = 0.1, apply: bool = True,
                        md: dict | None = None) -> Plan[str]:
    """Measure the counting chain's dead time from count rates against beam current.

    The instrument must be in SIMS geometry (``to_sims_mode``). The collectors are
    set to ``species`` (the magnet moved if they are off its focal plane), the raster
    to ``fov_um`` (the counts' footprint), the stage to ``center_um`` if given. Each
    of ``repeats`` passes counts once per aperture, in ``apertures`` order and back
    (``2 x repeats x len(apertures)`` counts), the beam unblanked throughout. The fit
    (:func:`temsims.analysis.counting.fit_dead_time`, one scale per count common to
    the collectors) gives ``tau`` and its standard error; with ``apply`` and a fit
    good enough (``sigma / tau <= max_sigma_rel``, the brightest count losing at
    least 3 %), DEAD_TIME is set to it and DEAD_TIME:SOURCE to "calibrated <first 8
    characters of the run uid> <UTC date>". The aperture, raster field and mode and
    COUNT_TIME are put back afterwards; the beam is left blanked.

    Parameters
    ----------
    spectrometer : temsims.devices.spectrometer.MassSpectrometer
    column : temsims.devices.column.IonColumn
    species : tuple of str
        1..4 isotopes counted at once (two or more of one element: their ratio bends
        with tau whatever the current does). Default the Cu isotopes.
    apertures : tuple of str
        2..10 of the column's apertures (named by their current), distinct. Choose
        them so that the brightest count loses several per cent to dead time
        (63Cu on Cu: ~0.1 lost per nA at 30 ns).
    repeats : int
        Passes up and down the apertures, 1..20.
    count_time_s : float
        Each count (s), 1e-4..10 and within COUNT_TIME's limits. Short counts spare
        the specimen: each pC on a 1 um field removes ~0.4 nm of Cu.
    fov_um : float
        Raster field width (um), 0.05..100 and within the column's limits.
    stage : temsims.devices.stage.Stage, optional
        Moved to ``center_um`` (if given) and read for the ``region`` metadata.
    center_um : (float, float), optional
        Stage x, y (um) of a uniform bright region; needs ``stage``.
    bias : temsims.devices.bias.BiasSupply, optional
        Recorded (``bias_kV``); ramped to 0 V if the plan fails or is aborted.
    scale_rms : float
        Relative rms of the signal between counts (probe current noise, implanted Ga
        growing), 0.001..0.5: the width of the per-count scale's prior.
    max_sigma_rel : float
        Largest relative standard error of tau that is written (0 < .. <= 1).
    apply : bool
        Write DEAD_TIME and DEAD_TIME:SOURCE (False: measure and record only).
    md : dict, optional
        Extra start metadata.

    Yields
    ------
    msg : Msg
        One run: ``primary`` (one event per count: the collectors' counts, the beam
        current) and ``dead_time`` (one event: ``tau_s``, ``tau_sigma_s``, ``k`` and
        their errors per collector, ``chi2``, ``dof``, ``max_loss``, the currents and
        counts fitted, the previous DEAD_TIME and its source, ``applied``, ``source``).

    Returns
    -------
    str
        The run's uid.

    Raises
    ------
    RuntimeError
        With ``apply``, if the fit is not good enough (nothing is written; the run
        holds the fit).
    """
    check_device("spectrometer", spectrometer, SpectrometerDevice)
    check_device("column", column, IonColumnDevice)
    labels = check_species("species", species, min_n=1, max_n=4)
    aps = _check_apertures(column, apertures)
    repeats = check_int("repeats", repeats, low=1, high=20)
    count_time_s = check_number("count_time_s", count_time_s, low=COUNT_TIME_RANGE_S[0],
                                high=COUNT_TIME_RANGE_S[1], unit="s")
    check_within("count_time_s", count_time_s, device_limits(spectrometer.count_time), "s")
    fov_um = check_number("fov_um", fov_um, low=FOV_RANGE_UM[0], high=FOV_RANGE_UM[1],
                          unit="um")
    check_within("fov_um", fov_um, device_limits(column.scan.fov), "um")
    if stage is not None:
        check_device("stage", stage, StageDevice)
    if center_um is not None:
        if stage is None:
            raise ValueError("center_um needs the stage (stage=...)")
        center_um = check_pair("center_um", center_um, unit="um")
        check_within("center_um[0]", center_um[0], device_limits(stage.x), "um")
        check_within("center_um[1]", center_um[1], device_limits(stage.y), "um")
    if bias is not None:
        check_device("bias", bias, BiasDevice)
    scale_rms = check_number("scale_rms", scale_rms, low=1e-3, high=0.5)
    max_sigma_rel = check_number("max_sigma_rel", max_sigma_rel, low=0.0, high=1.0,
                                 low_open=True)
    apply = check_bool("apply", apply)
    md = check_md(md)
    masses = [species_mass(s) for s in labels]
    order = [a for r in range(repeats) for a in (aps + aps[::-1])]
    cols = spectrometer.collector_list()[:len(labels)]
    plan_args = plan_args_md(spectrometer=spectrometer, column=column, species=list(labels),
                             apertures=list(aps), repeats=repeats, count_time_s=count_time_s,
                             fov_um=fov_um, stage=stage, center_um=center_um, bias=bias,
                             scale_rms=scale_rms, max_sigma_rel=max_sigma_rel, apply=apply)

    def body():
        region = None
        if stage is not None:
            region = yield from region_md(
                stage, fov_um=fov_um, x_um=None if center_um is None else center_um[0],
                y_um=None if center_um is None else center_um[1])
        sims = yield from sims_md(spectrometer, column, bias)
        old_tau, old_source = yield from read_dead_time(spectrometer, None)
        _md = start_metadata(
            plan_name=PLAN_NAME, plan_args=plan_args, mode="SIMS", region=region, md=md,
            sims=sims, extra={
                "detectors": [spectrometer.name], "num_points": len(order),
                "dead_time_calibration": {
                    "species": list(labels), "apertures": list(aps), "order": order,
                    "repeats": repeats, "count_time_s": count_time_s, "fov_um": fov_um,
                    "scale_rms": scale_rms, "previous_dead_time_s": old_tau,
                    "previous_source": old_source,
                    "model": "M = k I s / (1 + k I s tau), s per count (analysis.counting)"}})
        old = {}
        for key, sig in (("aperture", column.aperture), ("fov", column.scan.fov),
                         ("mode", column.scan.mode), ("count_time", spectrometer.count_time)):
            old[key] = yield from bps.rd(sig, default_value=None)

        def restore():
            yield from bps.mv(column.blank, "Blanked")
            for key, sig in (("aperture", column.aperture), ("fov", column.scan.fov),
                             ("mode", column.scan.mode),
                             ("count_time", spectrometer.count_time)):
                if old[key] is not None:
                    yield from bps.mv(sig, old[key])

        uid = yield from bps.open_run(md=_md)

        def measure():
            if center_um is not None:
                yield from bps.mv(stage.x, center_um[0], stage.y, center_um[1])
            yield from ensure_focal_plane(spectrometer, masses)
            args = []
            for col, label in zip(cols, labels, strict=True):
                args += [col, label]
            yield from bps.mv(*args)
            yield from bps.mv(column.scan.mode, "Raster", column.scan.fov, fov_um,
                              spectrometer.count_time, count_time_s)
            currents, counts = [], []
            for i, ap in enumerate(order):
                yield from bps.checkpoint()
                yield from bps.mv(column.aperture, ap)
                if i == 0:
                    yield from _unblank(column)
                reading = yield from bps.trigger_and_read([spectrometer, column.current])
                if not reading:  # not in a live RunEngine (simulation)
                    continue
                currents.append(float(reading[column.current.name]["value"]))
                counts.append([float(reading[c.counts.name]["value"]) for c in cols])
            yield from bps.mv(column.blank, "Blanked")
            if not counts:
                return
            cur, cnt = np.asarray(currents), np.asarray(counts)
            fit = fit_dead_time(cur, cnt, count_time_s, scale_rms=scale_rms,
                                tau_guess_s=float(old_tau or 30e-9))
            rel = fit.tau_sigma_s / fit.tau_s if fit.tau_s > 0 else math.inf
            good = (rel <= max_sigma_rel and fit.max_loss >= MIN_LOSS
                    and DEAD_TIME_RANGE_S[0] <= fit.tau_s <= DEAD_TIME_RANGE_S[1])
            date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
            source = f"calibrated {str(uid or 'sim')[:8]} {date}"
            applied = bool(apply and good)
            out = Values("dead_time", units={"tau_s": "s", "tau_sigma_s": "s",
                                             "k_per_s_pa": "1/s/pA",
                                             "k_sigma_per_s_pa": "1/s/pA",
                                             "currents_pa": "pA", "counts": "counts",
                                             "previous_dead_time_s": "s"},
                         dims={"k_per_s_pa": ("collector",),
                               "k_sigma_per_s_pa": ("collector",),
                               "currents_pa": ("count",), "scales": ("count",),
                               "counts": ("count", "collector")})
            out.set_values(tau_s=fit.tau_s, tau_sigma_s=fit.tau_sigma_s,
                           k_per_s_pa=np.asarray(fit.k_per_s_pa),
                           k_sigma_per_s_pa=np.asarray(fit.k_sigma_per_s_pa),
                           chi2=fit.chi2, dof=fit.dof, max_loss=fit.max_loss,
                           currents_pa=cur, counts=cnt, scales=fit.scales,
                           previous_dead_time_s=float(old_tau or 0.0),
                           previous_source=str(old_source), applied=applied,
                           source=source if applied else str(old_source))
            yield from bps.trigger_and_read([out], name="dead_time")
            if apply and not good:
                raise DeadTimeNotMeasured(
                    f"{PLAN_NAME}: tau = {fit.tau_s * 1e9:.2f} +- {fit.tau_sigma_s * 1e9:.2f} "
                    f"ns with at most {100 * fit.max_loss:.1f} % lost is not good enough "
                    f"(sigma/tau <= {max_sigma_rel:g}, loss >= {100 * MIN_LOSS:g} %, tau in "
                    f"{DEAD_TIME_RANGE_S[0] * 1e9:g}..{DEAD_TIME_RANGE_S[1] * 1e9:g} ns); "
                    "DEAD_TIME left unchanged: raise the currents or the count time")
            if applied:
                yield from bps.mv(spectrometer.dead_time, fit.tau_s)
                if getattr(spectrometer, "dead_time_source", None) is not None:
                    yield from bps.mv(spectrometer.dead_time_source, source)

        def failed(exc):
            yield from bps.close_run(exit_status="fail", reason=repr(exc))

        yield from bpp.contingency_wrapper(
            bpp.finalize_wrapper(measure(), restore()), except_plan=failed,
            else_plan=bps.close_run)
        return uid

    return (yield from with_safe_state(body(), column, bias))


__all__ = ["DeadTimeNotMeasured", "calibrate_dead_time"]
