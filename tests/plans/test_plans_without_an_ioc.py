"""Every plan can be listed and summarised with no IOC behind its devices (what the
queue server and a lab planning an experiment need): plans read the hardware only
through the RunEngine (``bps.rd``), and check limits only when the devices have them.

The devices are temsims' own, built on a PV prefix that no server answers, in a
process of their own."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import uuid

from bluesky.simulators import summarize_plan
from test_plans_validation import _cases

from temsims.plans import (
    align_ion_beam,
    bracketed_sims_maps,
    calibrate_coincidence,
    calibrate_raster,
    correlative_tem_sims,
    edx_sims_calibration,
    find_labelled_particles,
)


def _unconnected_devices():
    from temsims.devices import connect

    d = connect(f"NOIOC{uuid.uuid4().hex[:6].upper()}:", timeout=None)
    assert not d.stage.connected and not d.bias.connected
    return d


def _summary(plan) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        summarize_plan(plan)
    return out.getvalue()


def summaries_without_an_ioc() -> dict[str, str]:
    """``summarize_plan``'s text of every plan on devices no server answers."""
    d = _unconnected_devices()
    summaries = {}
    for plan_fn, (devs, ok, _) in _cases(d).items():
        summaries[plan_fn.__name__] = _summary(plan_fn(*devs, **ok))
    summaries["correlative_tem_sims"] = _summary(correlative_tem_sims(
        d, overview_fov_um=2.0, rois=[[0.0, 0.0, 1.0], [0.5, 0.5, 1.0]],
        sims_pixels=(4, 3), sims_dwell_s=1e-3))
    summaries["find_labelled_particles"] = _summary(find_labelled_particles(
        d, fov_um=2.0, pixels=(4, 3), dwell_s=1e-3))
    summaries["bracketed_sims_maps"] = _summary(bracketed_sims_maps(
        d, centers=[(0.0, 0.0), (0.5, 0.5)], fov_um=1.0, pixels=(4, 3), dwell_s=1e-3))
    summaries["calibrate_coincidence"] = _summary(calibrate_coincidence(
        d, center=(0.0, 0.0), voltage_v=-4500.0, species=("16O",), sims_pixels=(8, 6),
        passes=2))
    summaries["calibrate_raster"] = _summary(calibrate_raster(
        d, center=(0.0, 0.0), sims_pixels=(64, 64), passes=2))
    summaries["align_ion_beam"] = _summary(align_ion_beam(d, center=(0.0, 0.0)))
    summaries["edx_sims_calibration"] = _summary(edx_sims_calibration(
        d, start_um=(-0.28, 0.0), stop_um=(1.68, 0.0), points=5, edx_live_time_s=0.1,
        edx_current_na=10.0, sims_pixels=(20, 8), sims_dwell_s=1e-3, sims_aperture="1 nA"))
    return summaries


def test_every_plan_is_summarised_without_an_ioc():
    # In a process of its own: its never-connected PVs would otherwise go on searching
    # in this one, and destroying them disturbed the shared CA context of the devices
    # the other tests of this worker use.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        summaries = pool.apply(summaries_without_an_ioc)
    import temsims.plans as plans

    assert set(summaries) == set(plans.__all__) - {"safe_state"}
    for name, text in summaries.items():
        assert text.strip(), name
    # The mode changes are steps the summary shows, not one opaque set of a mode device.
    assert "stage_alpha -> -68.0" in summaries["to_sims_mode"]
    assert "tem_objective -> On" in summaries["to_tem_mode"]
    assert summaries["correlative_tem_sims"].count("Open Run") == 5
    # The coincidence calibration: a TEM image and a map per pass, in the SIMS geometry.
    assert summaries["calibrate_coincidence"].count("Open Run") == 3
    assert "bias -> -4500.0" in summaries["calibrate_coincidence"]
    # The raster calibration: the same sequence, at +4.5 kV by default.
    assert summaries["calibrate_raster"].count("Open Run") == 3
    assert "bias -> 4500.0" in summaries["calibrate_raster"]
    # The session alignment: wide coincidence (one pass), raster (two), fine coincidence.
    assert summaries["align_ion_beam"].count("Open Run") == 2 + 3 + 2
