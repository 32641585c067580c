"""Standard bracketing (temsims.analysis.bracketing): the correction factor, its
interpolation in time, its error, and bad input. The scored use on simulated maps
of the harder twin is in test_particles.py (pulls of corrected ratios)."""

import math

import numpy as np
import pytest
from analysis_sims import DEMO, REFERENCE_MAP, dead_time_of, harder_twin, particle_maps

from temsims.analysis.bracketing import (
    BracketCorrection,
    bracketing_correction,
    reference_measurement,
)
from temsims.analysis.halo import halo_sigma_px
from temsims.analysis.isotopes import NATURAL_LI6_LI7, ratio_map, ratio_of_region
from temsims.analysis.particles import find_particles
from temsims.constants import PROBE_HALO
from temsims.ioc.physics import sims as sp
from temsims.ioc.physics.specimen import build_specimen


def _ref(ratio, n7, t):
    return reference_measurement(ratio * n7, float(n7), time_s=t)


def test_factor_interpolates_and_carries_counting_drift_and_certificate():
    before, after = _ref(0.0850, 1e8, 0.0), _ref(0.0860, 1e8, 100.0)
    c = bracketing_correction(before, after)
    kb, ka = NATURAL_LI6_LI7 / 0.0850, NATURAL_LI6_LI7 / 0.0860
    assert c.k_before == pytest.approx(kb) and c.k_after == pytest.approx(ka)
    assert c.factor(0.0, certificate=False)[0] == pytest.approx(kb)
    assert c.factor(50.0)[0] == pytest.approx(0.5 * (kb + ka))
    assert c.factor(500.0)[0] == pytest.approx(ka)  # clipped, not extrapolated
    # Midway: a quarter of the change as the drift term dominates 1e8-count references.
    _, s_mid = c.factor(50.0, certificate=False)
    assert s_mid == pytest.approx(0.25 * abs(ka - kb), rel=0.05)
    _, s_end = c.factor(0.0, certificate=False)
    assert s_end == pytest.approx(kb * math.sqrt(1 / (0.085e8) + 1e-8), rel=1e-3)
    _, s_cert = c.factor(0.0)
    assert s_cert == pytest.approx(math.hypot(s_end, kb * 0.00023 / NATURAL_LI6_LI7))
    r, s = c.correct([0.1, 19.0], [0.001, 0.5], 0.0)
    assert r[1] == pytest.approx(19.0 * kb)
    assert s[1] == pytest.approx(math.hypot(kb * 0.5, 19.0 * s_cert))
    assert set(c.to_dict()) >= {"k_before", "k_after", "drift", "t_before_s"}


def test_reference_map_of_the_pad_gives_the_instrument_bias():
    """The pad (natural Li2CO3) mapped on the harder twin: the measured ratio is the
    natural one times the instrument's bias (IMF of Li2CO3 x collector yields), K
    undoes it within its counting error, and a labelled region's corrected ratio is
    the truth within its error."""
    spec = build_specimen("li2co3-particles", seed=4)
    params = harder_twin(7).with_(gain_clock_s=120.0)  # bias +6.7 %
    tau_s = dead_time_of(7)  # the instrument's, as if calibrated
    ref = spec.reference
    _, _, r6, r7 = particle_maps(4, REFERENCE_MAP["pixels"], fov_um=REFERENCE_MAP["fov_um"],
                                 params=params, spec=spec,
                                 centre_nm=(1000 * ref["x_um"], 1000 * ref["y_um"]))
    m = reference_measurement(r6, r7, time_s=120.0, dwell_s=DEMO["dwell_s"],
                              dead_time_s=tau_s, primary_current_pa=DEMO["current_pa"])
    beta = dict(params.imf_beta)["Li2CO3"]
    gains = [float(sp.collector_gain(i, 120.1, params)) for i in range(2)]
    bias = float(sp.imf_factor("6Li", beta) / sp.imf_factor("7Li", beta)) * gains[0] / gains[1]
    assert abs(bias - 1) > 0.01
    assert m.ratio == pytest.approx(NATURAL_LI6_LI7 * bias, abs=4 * m.sigma)
    c = bracketing_correction(m, m)
    k, sk = c.factor(120.0)
    assert k == pytest.approx(1 / bias, abs=4 * sk)
    # A labelled particle on the same instrument, corrected.
    lab = max((p for p in spec.truth["particles"] if p["labelled"]),
              key=lambda p: p["radius_nm"])
    _, _, n6, n7 = particle_maps(4, (24, 24), fov_um=3 * lab["radius_nm"] / 1000,
                                 params=params, spec=spec, centre_nm=(lab["x_nm"], lab["y_nm"]))
    inside = (n6 + n7) > 0.3 * (n6 + n7).max()
    raw = ratio_of_region(n6, n7, inside, dwell_s=DEMO["dwell_s"], dead_time_s=tau_s)
    fixed = ratio_of_region(n6, n7, inside, dwell_s=DEMO["dwell_s"], dead_time_s=tau_s,
                            correction=(k, sk))
    assert fixed.ratio == pytest.approx(k * raw.ratio)
    assert fixed.sigma > k * raw.sigma
    # The probe's halo (decision 0040) dilutes this small map's region with its natural
    # neighbours' 7Li (18.2 for 19.0): the truth is compared on a map wide enough to
    # hold them, the halo subtracted (find_particles(halo=...)), K applied.
    fov_um, nx = 1.2, 64
    _, _, w6, w7 = particle_maps(4, (nx, nx), fov_um=fov_um, params=params, spec=spec,
                                 centre_nm=(lab["x_nm"], lab["y_nm"]))
    table = find_particles(w6, w7, dwell_s=DEMO["dwell_s"], dead_time_s=tau_s,
                           correction=(k, sk), primary_current_pa=DEMO["current_pa"],
                           halo=(PROBE_HALO["fraction"],
                                 halo_sigma_px(PROBE_HALO["fwhm_nm"], 1e3 * fov_um / nx)))
    own = next(p for p in table if p.label == table.labels[nx // 2, nx // 2])
    assert own.labelled
    assert own.ratio == pytest.approx(lab["li6_li7_ratio"], abs=4 * own.sigma)
    rm = ratio_map(n6, n7, dwell_s=DEMO["dwell_s"], dead_time_s=tau_s,
                   correction=(k, sk))
    plain = ratio_map(n6, n7, dwell_s=DEMO["dwell_s"], dead_time_s=tau_s)
    np.testing.assert_allclose(rm.ratio[rm.valid], k * plain.ratio[plain.valid])
    assert (rm.sigma[rm.valid] >= k * plain.sigma[plain.valid]).all()


@pytest.mark.parametrize("call, exc", [
    (lambda: reference_measurement(10.0, 100.0, time_s=0.0), ValueError),  # too few counts
    (lambda: reference_measurement(1e4, 1e5, time_s=math.nan), TypeError),
    (lambda: reference_measurement(1e4, 1e5, time_s="0"), TypeError),
    (lambda: reference_measurement(1e4, 0.0, time_s=0.0), ValueError),
    (lambda: reference_measurement(-1e4, 1e5, time_s=0.0), ValueError),
    (lambda: reference_measurement(np.ones((3, 3)) * 1e3, np.ones((3, 3)) * 1e4, time_s=0.0,
                                   mask=np.ones((2, 2), bool)), ValueError),
    (lambda: bracketing_correction(_ref(0.08, 1e6, 10.0), _ref(0.08, 1e6, 0.0)), ValueError),
    (lambda: bracketing_correction(0.08, _ref(0.08, 1e6, 0.0)), TypeError),
    (lambda: bracketing_correction(_ref(0.08, 1e6, 0.0), _ref(0.08, 1e6, 1.0),
                                   certified_ratio=0.0), ValueError),
    (lambda: ratio_map(np.ones((3, 3)), np.ones((3, 3)), correction=(0.0, 0.1)), ValueError),
    (lambda: ratio_map(np.ones((3, 3)), np.ones((3, 3)), correction=(1.0, -0.1)), ValueError),
    (lambda: ratio_map(np.ones((3, 3)), np.ones((3, 3)), correction=1.0), TypeError),
])
def test_bad_input(call, exc):
    with pytest.raises(exc):
        call()


def test_correction_type():
    c = bracketing_correction(_ref(0.08, 1e6, 0.0), _ref(0.08, 1e6, 0.0))
    assert isinstance(c, BracketCorrection) and c.weight(5.0) == 0.5 and c.drift == 0.0
