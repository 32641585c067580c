"""The ion raster's opt-in calibration errors (issue 15): field of view and rotation;
and the extraction field's bend of the beam (always on, decision 0036).

The simulator's truth only: the spectrometer maps through the true raster while every
PV (and so every plan's metadata) keeps the nominal field and rotation. Off by default.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from temsims.ioc.physics import ion_optics
from temsims.ioc.physics import sims as sp
from temsims.ioc.server import parse_options
from temsims.ioc.spectrometer import SpectrometerIOC

SNAP = {"nx": 64, "ny": 48, "fov": 8.0, "rotation": 10.0, "x": 1.0, "y": -2.0,
        "incidence": 45.0}


def _geometry(incidence: float = 45.0, **errors: float) -> sp.ScanGeometry:
    """SpectrometerIOC.geometry on a stand-in carrying only what it reads."""
    ioc = SimpleNamespace(params=sp.SimsParameters(),
                          **{"fov_error_pct": 0.0, "raster_rotation_deg": 0.0, **errors})
    return SpectrometerIOC.geometry(ioc, {**SNAP, "incidence": incidence})


def test_exact_geometry_on_request_the_raster_is_the_nominal_one():
    # The default is a real instrument's errors (decision 0042, 2026-12-05 amendment;
    # tests/ioc/test_geometry_errors.py); --calibration-errors none is the exact one.
    options = parse_options(["--calibration-errors", "none"])
    assert options.fov_error_pct == 0.0 and options.raster_rotation_deg == 0.0
    g = _geometry()
    assert g.fov_um == 8.0 and g.rotation_deg == 10.0


def test_the_map_is_written_with_the_true_raster():
    g = _geometry(fov_error_pct=3.0, raster_rotation_deg=-1.5)
    assert g.fov_um == pytest.approx(8.0 * 1.03)
    assert g.rotation_deg == pytest.approx(8.5)
    # A corner pixel lands 3 % further out and 1.5 deg round from the nominal one.
    nominal = _geometry()
    u, v = nominal.beam_coords([0], [63])
    x_true, y_true = g.to_specimen(*g.beam_coords([0], [63]))
    x_nom, y_nom = nominal.to_specimen(u, v)
    r_true = math.hypot(x_true[0] - 1000.0, (y_true[0] + 2000.0) / g.stretch)
    r_nom = math.hypot(x_nom[0] - 1000.0, (y_nom[0] + 2000.0) / g.stretch)
    assert r_true / r_nom == pytest.approx(1.03)
    assert ion_optics.true_raster(5.0, 0.0, fov_error_pct=-2.0, rotation_error_deg=1.0) \
        == pytest.approx((4.9, 1.0))


@pytest.mark.parametrize("argv", [["--fov-error-pct", "12"], ["--fov-error-pct", "nan"],
                                  ["--raster-rotation-deg", "-11"]])
def test_out_of_range_errors_are_refused(argv):
    with pytest.raises(SystemExit):
        parse_options(argv)


def test_the_extraction_field_bends_the_beam():
    """tan t = sqrt(E sin^2 45 / (E cos^2 45 - V)) with E the column's 30 kV: the
    landing angle the issue quotes (about 50 deg on +4.5 kV, 41 deg on -4.5 kV)."""
    ioc = SimpleNamespace(params=sp.SimsParameters(), extraction_field_factor=1.0)
    bent = SpectrometerIOC.incidence_deg(ioc, 25.5, 4500.0)
    assert bent == pytest.approx(50.08, abs=0.01)
    assert 1 / math.cos(math.radians(bent)) == pytest.approx(1.558, abs=0.001)
    assert SpectrometerIOC.incidence_deg(ioc, 34.5, -4500.0) == pytest.approx(41.25, abs=0.01)
    assert SpectrometerIOC.incidence_deg(ioc, 30.0, 0.0) == pytest.approx(45.0)
    # A 5 kV column cannot reach a +4.5 kV holder at 45 deg (normal energy 2.5 keV).
    assert SpectrometerIOC.incidence_deg(ioc, 0.5, 4500.0) is None
    ioc.extraction_field_factor = 1.03  # a gap whose field the beam sees 3 % stronger
    assert SpectrometerIOC.incidence_deg(ioc, 25.5, 4500.0) == pytest.approx(50.26, abs=0.01)
    g = _geometry(incidence=50.08)
    assert g.stretch == pytest.approx(1.558, abs=0.001)


def test_each_instrument_has_its_own_extraction_field():
    factors = [ion_optics.draw_extraction_field_factor(seed) for seed in range(2000)]
    mean = sum(factors) / len(factors)
    sd = math.sqrt(sum((f - mean) ** 2 for f in factors) / (len(factors) - 1))
    assert abs(mean - 1.0) < 0.003 and sd == pytest.approx(0.03, rel=0.1)
    assert max(abs(f - 1.0) for f in factors) <= 0.09 + 1e-12
    assert ion_optics.draw_extraction_field_factor(7) == ion_optics.draw_extraction_field_factor(7)
