"""The TEM/FIB coincidence (decision 0042): the landing shift the column's bias beam
shift leaves, the eucentric-height error on the 0 -> -68 deg tilt and the beams' own
offset, and ``calibrate_coincidence``, which measures and corrects them.

The physics is checked on the model's numbers (no IOC), then over CA: an instrument on
a fresh specimen seed, with a fresh landing error, height and offset (printed; the
entropy reproduces them), and a fresh working bias of either polarity; the plan's
first pass must find the twin's true offset, and its second pass what the correction
left, within half a SIMS pixel.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scoring import fresh_rng

from temsims.constants import SIMS_COLUMN_KV, SIMS_TILT_DEG, extraction_incidence_deg
from temsims.ioc.physics import ion_optics
from temsims.ioc.physics import sims as sp
from temsims.ioc.server import parse_options
from temsims.ioc.spectrometer import SpectrometerIOC

#: Calibration map: 2 um over 128 x 96 (15.6 nm pixels along x).
FOV_UM, PIXELS = 2.0, (128, 96)


# ============================================================================ the model
def test_the_landing_shift_follows_the_bias_polarity_and_size():
    # 30 kV at 45 deg over the 1 mm gap: further on a retarding bias, short on an
    # accelerating one; nothing at 0 V.
    assert ion_optics.landing_shift_um(30.0, 4500.0) == pytest.approx(88.93, abs=0.01)
    assert ion_optics.landing_shift_um(30.0, -4500.0) == pytest.approx(-65.50, abs=0.01)
    assert ion_optics.landing_shift_um(30.0, 0.0) == 0.0
    assert ion_optics.landing_shift_um(30.0, 3000.0, gap_mm=2.0) == pytest.approx(
        2 * ion_optics.landing_shift_um(30.0, 3000.0))
    # A field the beam cannot cross: no landing.
    assert ion_optics.landing_shift_um(8.0, 4500.0) is None
    # The same kinematics as the bent angle of decision 0036: the landing slope is the
    # ratio of the speeds, so a thin gap's shift is d (tan t - tan t0) / 2 to first order.
    d_mm, v = 1e-3, 4500.0
    t = math.radians(extraction_incidence_deg(SIMS_COLUMN_KV, v))
    first_order = 1000.0 * d_mm * (math.tan(t) - 1.0) / 2.0
    assert ion_optics.landing_shift_um(SIMS_COLUMN_KV, v, gap_mm=d_mm) == pytest.approx(
        first_order, rel=0.1)


def test_the_coincidence_offset_adds_its_parts_and_the_correction_takes_it_out():
    at = dict(landing_error_pct=0.3, eucentric_dz_um=0.2, static_um=(0.05, -0.02))
    dx, dy = ion_optics.coincidence_offset_um(30.0, 4500.0, SIMS_TILT_DEG, **at)
    assert dx == pytest.approx(0.05)
    assert dy == pytest.approx(-0.02 + 0.003 * 88.933 + 0.2 * math.sin(math.radians(-68)),
                               abs=1e-4)
    # The landing part flips with the polarity; the height's does not.
    _, dy_neg = ion_optics.coincidence_offset_um(30.0, -4500.0, SIMS_TILT_DEG, **at)
    assert dy_neg == pytest.approx(-0.02 - 0.003 * 65.497 - 0.2 * 0.92718, abs=1e-4)
    # No tilt, no height error; a correction equal to the offset leaves nothing.
    assert ion_optics.eucentric_shift_um(0.2, 0.0) == 0.0
    assert ion_optics.coincidence_offset_um(
        30.0, 4500.0, SIMS_TILT_DEG, **at, correction_um=(dx, dy)) == pytest.approx((0, 0))


def test_the_map_is_written_where_the_offset_puts_it():
    snap = {"nx": 64, "ny": 48, "fov": 2.0, "rotation": 0.0, "x": 1.0, "y": -0.5,
            "incidence": 50.0, "landing": 25.5, "bias_v": 4500.0, "alpha": SIMS_TILT_DEG,
            "z": 0.1, "correction": (0.01, 0.02)}
    ioc = SimpleNamespace(params=sp.SimsParameters(), fov_error_pct=0.0,
                          raster_rotation_deg=0.0, landing_error_pct=0.2,
                          eucentric_dz_um=-0.3, coincidence_um=(0.04, 0.0))
    snap["offset"] = SpectrometerIOC.coincidence_offset_um(ioc, snap)
    truth = ion_optics.coincidence_offset_um(
        30.0, 4500.0, SIMS_TILT_DEG, landing_error_pct=0.2, eucentric_dz_um=-0.2,
        static_um=(0.04, 0.0), correction_um=(0.01, 0.02))
    assert snap["offset"] == pytest.approx(truth)
    g = SpectrometerIOC.geometry(ioc, snap)
    assert (g.centre_x_nm, g.centre_y_nm) == pytest.approx(
        (1000.0 * (1.0 + truth[0]), 1000.0 * (-0.5 + truth[1])))


def test_off_on_request_and_out_of_range_refused():
    # On by default since decision 0042's 2026-12-05 amendment
    # (tests/ioc/test_geometry_errors.py); --calibration-errors none: the exact geometry.
    options = parse_options(["--calibration-errors", "none"])
    assert (options.landing_error_pct, options.eucentric_dz_um, options.coincidence_um) \
        == (0.0, 0.0, (0.0, 0.0))
    for argv in (["--landing-error-pct", "3"], ["--eucentric-dz-um", "nan"],
                 ["--coincidence-um", "0", "2.5"]):
        with pytest.raises(SystemExit):
            parse_options(argv)


# ============================================================================ over CA
def _truth(errors: dict, bias_v: float) -> tuple[float, float]:
    return ion_optics.coincidence_offset_um(
        SIMS_COLUMN_KV, bias_v, SIMS_TILT_DEG, landing_error_pct=errors["landing"],
        eucentric_dz_um=errors["dz"], static_um=errors["static"])


@pytest.mark.slow
def test_calibrate_coincidence_finds_and_corrects_the_offset(instruments):
    """A fresh specimen, fresh errors and a fresh bias: pass 1 measures the twin's
    offset, pass 2 what is left after the correction; both within 0.5 SIMS px.

    ~40 s (a new instrument's start, 16 s, then the plan's TEM image and two maps):
    slow tier."""
    from bluesky import RunEngine
    from documents import DocumentCollector
    from instrument_support import connect_fast

    from temsims.plans import calibrate_coincidence

    rng = fresh_rng("test_calibrate_coincidence")
    seed = int(rng.integers(2, 1_000_000))
    errors = {"landing": float(rng.uniform(0.1, 0.35) * rng.choice([-1, 1])),
              "dz": float(rng.uniform(0.05, 0.2) * rng.choice([-1, 1])),
              "static": (float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.06, 0.06)))}
    # Either polarity: positive extracts Li+, negative O- (the carbonate's oxygen).
    bias_v = float(rng.choice([2500.0, 3500.0, 4500.0, -3500.0, -4500.0]))
    species = ("6Li", "7Li") if bias_v > 0 else ("16O",)
    truth = _truth(errors, bias_v)
    print(f"li2co3-particles seed {seed}, landing error {errors['landing']:+.3f} %, "
          f"dz {errors['dz']:+.3f} um, static {errors['static']}, bias {bias_v:+.0f} V: "
          f"true offset ({truth[0]:+.4f}, {truth[1]:+.4f}) um")
    args = ["--drift-nm-per-min", "0", "--landing-error-pct", str(errors["landing"]),
            "--eucentric-dz-um", str(errors["dz"]), "--coincidence-um",
            *(str(v) for v in errors["static"])]
    procs = instruments.get(specimen="li2co3-particles", seed=seed,
                            extra_args={"spectrometer": args})
    d = connect_fast(procs, camera_size=512)
    RE = RunEngine({"sample": f"li2co3-particles seed {seed}",
                    "specimen": "li2co3-particles", "operator": "pytest"},
                   call_returns_result=True)
    docs = DocumentCollector()
    RE.subscribe(docs)
    d.column.aperture.set("100 pA").wait(10)
    result = RE(calibrate_coincidence(d, center=(0.0, 0.0), voltage_v=bias_v,
                                      species=species, sims_fov_um=FOV_UM,
                                      sims_pixels=PIXELS, passes=2)).plan_result

    # One SIMS pixel on the specimen: along x the raster's, along y stretched by the
    # bent beam's incidence.
    px_x = FOV_UM / PIXELS[0]
    stretch = 1 / math.cos(math.radians(extraction_incidence_deg(SIMS_COLUMN_KV, bias_v)))
    px_y = px_x * stretch
    first, second = result["passes"]
    err1 = ((first["dx_um"] - truth[0]) / px_x, (first["dy_um"] - truth[1]) / px_y)
    err2 = (second["dx_um"] / px_x, second["dy_um"] / px_y)
    final = np.subtract(result["correction_um"], truth) / (px_x, px_y)
    print(f"pass 1 measured ({first['dx_um']:+.4f}, {first['dy_um']:+.4f}) um, error "
          f"({err1[0]:+.3f}, {err1[1]:+.3f}) px; pass 2 left ({err2[0]:+.3f}, "
          f"{err2[1]:+.3f}) px; final correction error ({final[0]:+.3f}, {final[1]:+.3f}) px")
    assert math.hypot(*err1) < 0.5
    assert math.hypot(*err2) < 0.5
    assert math.hypot(*final) < 0.5
    # The correction is on the column and in every later map's start document.
    assert (d.column.coincidence_x.get(), d.column.coincidence_y.get()) == pytest.approx(
        tuple(result["correction_um"]), abs=1e-4)
    starts = {s["uid"]: s for s in docs.docs["start"]}
    sims_starts = [starts[u] for u in result["uids"]["sims"]]
    assert sims_starts[0]["coincidence_um"] == [0.0, 0.0]
    assert sims_starts[1]["coincidence_um"] == pytest.approx(
        [first["dx_um"], first["dy_um"]], abs=1e-4)
    assert [s["coincidence"]["index"] for s in sims_starts] == [0, 1]
    assert starts[result["uids"]["tem"]]["coincidence"]["voltage_v"] == bias_v
