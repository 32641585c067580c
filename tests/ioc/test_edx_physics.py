"""The EDX twin's detector and column effects (decision 0037), without IOCs.

Escape peaks (position, Reed & Ware fraction), pile-up (sum peaks grow as the current
squared), system peaks (in a hole, proportional to the dose, growing with the mass
thickness), probe broadening (t^1.5) and thin-film absorption (O K in LiV3O8 against
an independent ``xraydb.material_mu`` of the compound). All noise-free: exact physics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import xraydb

from temsims.ioc.physics import edx as E
from temsims.ioc.physics.specimen import build_specimen

NI_100NM = {"Ni": 91.4 * 100.0}  # atoms/nm^2 of 100 nm of Ni


@pytest.fixture(scope="module")
def livo_model():
    return E.EDXModel(["Li", "V", "O"], system=None)


@pytest.fixture(scope="module")
def cu_ni_model():
    return E.EDXModel(["Cu", "Ni"], system=None)


def _window(axis: E.EnergyAxis, lo: float, hi: float) -> np.ndarray:
    c = axis.centres
    return (c >= lo) & (c < hi)


def test_escape_peak_position_and_fraction():
    """Each line above the Si K edge leaves f(E) of its counts 1.74 keV lower; f is
    1.4 % just above the edge, falls with energy (0.15 % at Cu Ka), 0 below the edge."""
    f = E.escape_fraction([1700.0, 1900.0, 3000.0, 8048.0, 15000.0])
    print("escape fractions at 1.7, 1.9, 3.0, 8.05, 15 keV:", np.round(100 * f, 3), "%")
    assert f[0] == 0.0
    assert 0.010 < f[1] < 0.020
    assert np.all(np.diff(f[1:]) < 0)
    assert 0.0010 < f[3] < 0.0025
    model = E.EDXModel(["Cu"], system=None, absorption=False)
    plain = E.EDXModel(["Cu"], system=None, absorption=False,
                       detector=E.DetectorParameters(escape_peaks=False))
    dens = {"Cu": 5000.0}
    with_esc, without = model.expected(dens, 1e9), plain.expected(dens, 1e9)
    extra = with_esc - without
    ka = float(xraydb.xray_lines("Cu")["Ka1"].energy)
    peak = model.axis.centres[np.argmax(extra)]
    # (the Ka1-Ka2 blend: 8 eV below Ka1)
    assert abs(peak - (ka - E.SI_KA_EV)) <= 2 * model.axis.ev_per_chan
    # Escape counts / K-family counts = the fraction at the K lines (Ka dominates).
    k_total = model.family_counts(dens, "Cu", "K", 1e9)
    escaped = extra[_window(model.axis, 5500.0, 7500.0)].sum()
    fk = float(E.escape_fraction(ka)[0])
    print(f"Cu K escape: {escaped / k_total * 100:.3f} % of the K family (f(Ka) "
          f"{fk * 100:.3f} %) at {peak:.0f} eV")
    assert escaped / k_total == pytest.approx(fk, rel=0.15)
    # Counts move, none are lost.
    assert with_esc.sum() == pytest.approx(without.sum(), rel=1e-6)


def test_sum_peaks_grow_as_the_current_squared():
    """Ni L + Ni Ka (8.32 keV) and Ni Ka + Ni Ka (14.96 keV) sum peaks: at a fixed live
    time their counts go as the current squared, and the total pile-up is R tau of the
    counts."""
    model = E.EDXModel(["Ni"], system=None)
    live, tau = 0.1, model.detector.pulse_pair_time_s
    sums = []
    for current in (2.0, 4.0, 8.0):
        electrons = E.beam_electrons(current, live)
        single = model.expected(NI_100NM, electrons)
        piled = model.expected(NI_100NM, electrons, live_time_s=live)
        rate = single.sum() / live
        summed = piled - single * (1.0 - 2.0 * rate * tau)
        # R tau of the counts pile up; the sums beyond the 20 keV axis are lost.
        assert 0.95 * rate * tau * single.sum() < summed.sum() <= rate * tau * single.sum()
        kk = summed[_window(model.axis, 14600.0, 15400.0)].sum()
        lk = summed[_window(model.axis, 8150.0, 8500.0)].sum()
        sums.append((kk, lk))
        print(f"{current:g} nA: {rate / 1e3:.0f} kcps, Ni Ka+Ka {kk:.1f}, Ni L+Ka {lk:.1f} "
              f"counts in {live} s")
    for (k1, l1), (k2, l2) in zip(sums, sums[1:], strict=False):
        assert k2 / k1 == pytest.approx(4.0, rel=1e-3)
        assert l2 / l1 == pytest.approx(4.0, rel=1e-3)
    # The sum peak sits at the summed energy (``summed`` of 8 nA, from the loop).
    hi = _window(model.axis, 14000.0, 16000.0)
    peak = model.axis.centres[hi][np.argmax(summed[hi])]
    ka = float(xraydb.xray_lines("Ni")["Ka1"].energy)
    assert abs(peak - 2 * ka) <= 2 * model.axis.ev_per_chan


def test_system_peaks_in_a_hole_scale_with_dose_and_mass_thickness():
    model = E.EDXModel(["Cu", "Ni"])
    e1 = E.beam_electrons(100.0, 10.0)  # the reference the tests and the case take
    hole = model.expected({}, e1)
    hole2 = model.expected({}, 2 * e1)
    np.testing.assert_allclose(hole2, 2 * hole)
    assert model.expected({}, 0.0).sum() == 0.0  # blanked
    cu_k = hole[_window(model.axis, 7900.0, 8200.0)].sum()
    fe_k = hole[_window(model.axis, 6250.0, 6550.0)].sum()
    ni_k = hole[_window(model.axis, 7350.0, 7600.0)].sum()
    print(f"hole, 1 uC: Cu Ka {cu_k:.0f}, Fe Ka {fe_k:.0f}, Ni Ka window {ni_k:.2f} counts")
    assert cu_k > 500 and fe_k > 300 and ni_k < 1e-3 * cu_k
    e1 = E.beam_electrons(10.0, 0.1)  # a point of the plan's EDX line
    # On 100 nm of Ni the system Cu is ~ that of 0.1 at.% Cu in it (the defaults).
    rho_t = model.mass_thickness_ug_cm2(NI_100NM)
    system_cu = model.system_family_counts("Cu", "K", e1, rho_t)
    cu_01 = model.family_counts({"Ni": NI_100NM["Ni"] * 0.999, "Cu": NI_100NM["Ni"] * 1e-3},
                                "Cu", "K", e1)
    print(f"100 nm Ni ({rho_t:.0f} ug/cm^2): system Cu K {system_cu:.0f} counts = "
          f"{system_cu / cu_01:.2f} x the Cu K of 0.1 at.% Cu")
    assert 0.5 < system_cu / cu_01 < 2.0
    assert system_cu > 5 * model.system_family_counts("Cu", "K", e1, 0.0)


def test_beam_broadening_grows_as_t_to_the_1_5():
    b = [E.broadening_nm(t, 28, 58.69, 8.9, 200e3) for t in (50.0, 100.0, 200.0)]
    print("b(Ni, 200 kV) at 50, 100, 200 nm:", np.round(b, 2), "nm")
    assert b[1] / b[0] == pytest.approx(2**1.5)
    assert b[2] / b[1] == pytest.approx(2**1.5)
    # Goldstein's formula by hand: 7.21e5 * (28 / 2e5) * sqrt(8.9 / 58.69) * (1e-5)^1.5 cm
    assert b[1] == pytest.approx(7.21e5 * 28 / 2e5 * math.sqrt(8.9 / 58.69)
                                 * (1e-5) ** 1.5 * 1e7)
    # Halving the energy doubles it.
    assert E.broadening_nm(100.0, 28, 58.69, 8.9, 100e3) == pytest.approx(2 * b[1])
    # On the couple: the composition is averaged over the spread (a Gaussian of
    # sigma ~ b / 4.29 / 2), close to the nearest pixel's on a 700 nm erfc.
    couple = build_specimen("diffusion-couple", 1)
    window = (slice(1024, 1025), slice(1024, 1025))
    point = E.areal_densities_at(couple, 0.0, 0.0, 1.0)
    sigma = E.probe_spread_nm(couple, point, window, 1.0, 200.0)
    print(f"couple, 100 nm: depth-averaged sigma {sigma:.2f} nm")
    assert 0.5 < sigma < 3.0
    spread = E.areal_densities_at(couple, 0.0, 0.0, 1.0, ht_kv=200.0)
    assert spread["Cu"] == pytest.approx(point["Cu"], rel=0.01)


@pytest.mark.parametrize("thickness_nm", [20.0, 80.0, 200.0])
def test_o_k_absorption_in_liv3o8_against_xraydb(thickness_nm, livo_model, cu_ni_model):
    """O K (525 eV) leaving LiV3O8 (just above the V L3 edge: strongly absorbed) against
    A = (1 - exp(-x)) / x with x from xraydb.material_mu of the compound, cosec 20 deg."""
    density = 3.3  # g/cm^3, any: A depends on rho t only
    per_nm3 = density / (xraydb.atomic_mass("Li") + 3 * xraydb.atomic_mass("V")
                         + 8 * xraydb.atomic_mass("O")) * 6.02214076e23 * 1e-21
    t = thickness_nm
    dens = {"Li": per_nm3 * t, "V": 3 * per_nm3 * t, "O": 8 * per_nm3 * t}
    model = livo_model
    lines = [ln for ln in model.lines("O") if model.line_rate(ln) > 0]
    factors = model.absorption_factors(dens, "O")
    ka = next(i for i, ln in enumerate(lines) if ln.name == "Ka1")
    mu = xraydb.material_mu("LiV3O8", lines[ka].energy_ev, density=density)  # 1/cm
    x = mu * t * 1e-7 / math.sin(math.radians(20.0))
    expected = (1 - math.exp(-x)) / x
    cu_ni = cu_ni_model
    k_lines = np.array([ln.family == "K" for ln in cu_ni.lines("Ni")
                        if cu_ni.line_rate(ln) > 0])
    ni_k = cu_ni.absorption_factors({"Ni": 91.4 * t}, "Ni")[k_lines]
    print(f"{t:.0f} nm LiV3O8: O Ka transmitted {factors[ka]:.3f} (xraydb {expected:.3f}); "
          f"Ni K in {t:.0f} nm Ni: {ni_k.min():.4f}..{ni_k.max():.4f}")
    assert factors[ka] == pytest.approx(expected, rel=0.02)
    if t >= 80:
        assert factors[ka] < 0.8  # soft: absorbed
    assert ni_k.min() > 0.98  # hard K lines hardly
