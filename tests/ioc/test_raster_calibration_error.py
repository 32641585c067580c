"""The ion raster's opt-in calibration errors (issue 15): field of view and rotation.

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

SNAP = {"nx": 64, "ny": 48, "fov": 8.0, "rotation": 10.0, "x": 1.0, "y": -2.0}


def _geometry(**errors: float) -> sp.ScanGeometry:
    """SpectrometerIOC.geometry on a stand-in carrying only what it reads."""
    ioc = SimpleNamespace(params=sp.SimsParameters(),
                          **{"fov_error_pct": 0.0, "raster_rotation_deg": 0.0, **errors})
    return SpectrometerIOC.geometry(ioc, SNAP)


def test_off_by_default_the_raster_is_the_nominal_one():
    options = parse_options([])
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
