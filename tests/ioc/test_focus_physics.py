"""The probe's focus in the retarding field (decision 0044): the extraction gap's
immersion lens moves the focus with the bias, the column's focus table takes out its
model, and the probe the specimen sees is the in-focus probe and the defocused cone in
quadrature. Checked without an IOC; the spectrometer's snapshot uses it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from temsims.ioc.physics import ion_optics as io
from temsims.ioc.physics import sims as sp
from temsims.ioc.server import parse_options
from temsims.ioc.spectrometer import SpectrometerIOC


def test_the_focal_shift_follows_the_bias_size_and_polarity():
    shift = {v: io.immersion_focus_shift_um(30.0, v) for v in (4500, 3000, 1000, 0, -3000,
                                                               -4500)}
    # Decision 0044's figures: the crossover moves up (the gap is a net converging lens)
    # by 6.71 um on +4.5 kV and 4.94 um on -4.5 kV over the 1 mm gap at 30 kV.
    assert shift[4500] == pytest.approx(6.71, abs=0.01)
    assert shift[-4500] == pytest.approx(4.94, abs=0.01)
    assert shift[0] == 0.0
    # Second order in the bias: the bore's lens cancels the uniform field's first order,
    # and a retarding bias (Ga+ on +V) is the stronger for its size.
    assert all(s > 0 for v, s in shift.items() if v)
    assert shift[4500] > shift[-4500] and shift[3000] > shift[-3000]
    assert shift[3000] / shift[1000] == pytest.approx(9.0, rel=0.1)
    # It scales with the gap; a field that turns the beam back has no focus.
    assert io.immersion_focus_shift_um(30.0, 4500, gap_mm=2.0) == pytest.approx(
        2 * shift[4500])
    assert io.immersion_focus_shift_um(8.0, 4500) is None


def test_the_paraxial_model_against_a_ray_traced_through_the_gap():
    """The closed form against a marginal ray integrated through the uniform field after
    the bore's thin lens (the same model, solved numerically): the focus that puts the
    ray on the axis at the specimen."""
    def landing_r(delta_um, bias_v, column_kv=30.0, d=1000.0):
        e0 = column_kv * 0.5  # the normal energy at 45 deg (kV per charge)
        x = bias_v / 1000.0 / e0
        r, slope = 1.0 * (d + delta_um), -1.0  # alpha = 1 (paraxial: scales out)
        slope += r * x / (4.0 * d)  # Davisson-Calbick: 1/f = -V / (4 U d)
        z = np.linspace(0.0, d, 20001)
        v = np.sqrt(1.0 - x * z / d)  # normal speed / v0 across the gap
        dz = np.diff(z)
        # dr/dz = slope v0 / v (transverse speed kept): integrate by the trapezoid rule.
        return r + slope * np.sum(dz * 0.5 * (1 / v[1:] + 1 / v[:-1]))

    for bias in (4500.0, -4500.0, 2000.0):
        lo, hi = -50.0, 50.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if landing_r(lo, bias) * landing_r(mid, bias) <= 0:
                hi = mid
            else:
                lo = mid
        assert 0.5 * (lo + hi) == pytest.approx(io.immersion_focus_shift_um(30.0, bias),
                                                abs=0.02)


def test_the_probe_grows_with_defocus_in_quadrature():
    d0 = io.probe_diameter_nm(1.0, 30.0)
    assert io.probe_at_specimen_nm(d0, 0.0) == d0
    # 1 mrad and 10 um: a 20 nm disc, as a Gaussian of its variance 11.8 nm FWHM.
    assert io.probe_at_specimen_nm(0.0, 10.0) == pytest.approx(11.774, abs=1e-3)
    assert io.probe_at_specimen_nm(d0, -10.0) == pytest.approx(math.hypot(d0, 11.774),
                                                               abs=1e-3)
    assert io.probe_at_specimen_nm(d0, 10.0, alpha_mrad=2.0) == pytest.approx(
        math.hypot(d0, 23.548), abs=1e-3)
    # 5 um out of focus: a 1 pA probe +31 %, a 100 pA probe (39 nm) +1.1 %.
    assert io.probe_at_specimen_nm(d0, 5.0) / d0 == pytest.approx(1.307, abs=1e-3)
    big = io.probe_diameter_nm(100.0, 30.0)
    assert io.probe_at_specimen_nm(big, 5.0) / big < 1.012


def test_the_table_leaves_its_error_and_the_lab_focus_takes_it_out():
    # Without a table error the instrument's own field strength is all that is left.
    assert io.defocus_um(30.0, 4500.0, 0.0) == 0.0
    left = io.defocus_um(30.0, 4500.0, 0.0, field_factor=1.03)
    assert 0.3 < left < 0.6
    err = io.draw_focus_table_error_um(7, 10.0, 4500.0)
    assert 5.0 <= abs(err) <= 10.0
    # Linear in the bias: the other polarity, the other sign; nothing at 0 V or off.
    assert io.draw_focus_table_error_um(7, 10.0, -4500.0) == -err
    assert io.draw_focus_table_error_um(7, 10.0, 0.0) == 0.0
    assert io.draw_focus_table_error_um(7, 0.0, 4500.0) == 0.0
    signs = {np.sign(io.draw_focus_table_error_um(s, 1.0, 4500.0)) for s in range(40)}
    assert signs == {-1.0, 1.0}
    best = io.defocus_um(30.0, 4500.0, 0.0, table_error_um=err, height_um=0.5)
    assert io.defocus_um(30.0, 4500.0, best, table_error_um=err, height_um=0.5) == 0.0
    # A specimen raised toward the column meets the beam before its crossover.
    assert io.defocus_um(30.0, 4500.0, 0.0, height_um=2.0) == -2.0


def test_the_spectrometer_maps_with_the_defocused_probe():
    ioc = SimpleNamespace(seed=11, focus_error_um=10.0, eucentric_dz_um=0.0,
                          extraction_field_factor=1.0, params=sp.SimsParameters())
    snap = {"landing": 25.5, "bias_v": 4500.0, "z": 0.0, "incidence": 50.0, "focus": 0.0}
    table = io.draw_focus_table_error_um(11, 10.0, 4500.0)
    assert SpectrometerIOC.defocus_um(ioc, snap) == pytest.approx(table)
    assert SpectrometerIOC.defocus_um(ioc, {**snap, "focus": table}) == pytest.approx(0.0)
    # The stage's Z (um) along the beam at its incidence.
    assert SpectrometerIOC.defocus_um(ioc, {**snap, "focus": table, "z": 1.0}) == \
        pytest.approx(-1 / math.cos(math.radians(50.0)))


def test_the_focus_error_is_off_by_default_and_range_checked():
    assert parse_options([]).focus_error_um == 0.0
    assert parse_options(["--focus-error-um", "12"]).focus_error_um == 12.0
    for bad in ("-1", "60", "nan"):
        with pytest.raises(SystemExit):
            parse_options(["--focus-error-um", bad])
