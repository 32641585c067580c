"""Sputtering over Channel Access (decision 0041): the Ga mass balance and the yield's
dependence on the landing energy and incidence the bias sets.

One fresh instrument (its seed drawn at run time and printed) on the particles
specimen's natural-Li pad (a flat Li2CO3 square, 100 nm on the carbon film). A
raster counts 7Li+ in steps until the pad is sputtered through, at two biases of the
30 kV column: +4.5 kV (25.5 keV landing, bent to ~50 deg) and +0.5 kV (29.5 keV,
~45.5 deg), the instrument reset in between (a pristine pad). What is scored:

- the dose that sputters through the pad, whose ratio between the two biases is the
  yield's inverse ratio: Yamamura's and Matsunami's 1.10, times the ratio of the
  depths at which the MRI response (decision 0038) halves the pad's signal, 0.97 (the
  mixing length grows with the angle): ~1.07, against 0.97 for a yield blind to
  angle and energy;
- the Li+ count per ion along the pad: flat from the surface to the Ga steady state
  (the matrix leaves at its partial yield Y whatever Ga the surface holds); counting
  the matrix as ``Y (1 - f_Ga)``, as the twin did, made it fall by ``Y / (1 + Y)``
  (0.71 in Li2CO3) over the first ~30 nm.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from temsims.constants import extraction_incidence_deg
from temsims.ioc.physics import sims as sp
from temsims.ioc.physics.ion_optics import draw_extraction_field_factor
from temsims.ioc.physics.materials import MATERIALS, isotope_mass_u
from temsims.ioc.physics.specimen import build_specimen
from tests.ioc.test_spectrometer import Client, move_stage, sims_geometry
from tests.scoring import fresh_rng

SPECIMEN = "li2co3-particles"
#: Raster on the pad (um, beam-normal plane): 100 nm x 156-140 nm on the specimen,
#: inside its 240 nm square at both angles.
FOV_UM = 0.1
CURRENT = "30 pA"
#: Beam time per step (s): ~1.5 nm of Li2CO3 per step at 25.5 keV.
STEP_S = 0.005
MAX_STEPS = 120


def _profile(c: Client, bias_v: float, pad) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative dose at each step's start in ions/nm^2, 7Li+ counts per step) of a
    raster on the pad at ``bias_v``, until the Li+ has fallen below 10 % of its start."""
    sims_geometry(c, CURRENT)
    c.put("BIAS:VOLTAGE", bias_v)
    c.wait_for("BIAS:VOLTAGE_RBV", lambda v: abs(float(v) - bias_v) < 1)
    # The mass scale follows the extraction voltage: the magnet set again for 7Li.
    li7 = isotope_mass_u("7Li")
    c.put("MS:FIELD", float(c.get("MS:CAL:B0")) + math.sqrt(li7 / float(c.get("MS:CAL:A"))))
    c.put("MS:COL2:MASS", li7)
    move_stage(c, pad["x_um"], pad["y_um"])
    c.put("FIB:SCAN:MODE", "Raster")
    c.put("FIB:SCAN:FOV", FOV_UM)
    c.put("FIB:SCAN:NX", 64)
    c.put("FIB:SCAN:NY", 64)
    c.put("MS:MODE", "Counting")
    c.put("MS:COUNT_TIME", STEP_S)
    incidence = extraction_incidence_deg(float(c.get("FIB:HV_RBV")), bias_v,
                                         field_factor=draw_extraction_field_factor(c.seed))
    area_nm2 = (FOV_UM * 1000.0) ** 2 / math.cos(math.radians(incidence))
    doses, counts, dose = [], [], 0.0
    for _ in range(MAX_STEPS):
        current_pa = float(c.get("FIB:CURRENT_RBV"))
        c.put("MS:ACQUIRE", "Acquire", timeout=STEP_S + 10)
        doses.append(dose)
        counts.append(int(c.get("MS:COL2:COUNTS")))
        dose += current_pa * 1e-12 * STEP_S / 1.602176634e-19 / area_nm2
        if len(counts) > 5 and counts[-1] < 0.1 * np.median(counts[:5]):
            break
    print(f"{bias_v:+.0f} V, {incidence:.2f} deg: 7Li+ per step {counts}")
    return np.array(doses), np.array(counts, float)


def _half_fall(dose: np.ndarray, counts: np.ndarray) -> float:
    """Dose where the counts fall through half their plateau (the pad's end)."""
    plateau = float(np.median(counts[: max(3, np.argmax(counts < 0.5 * counts.max()) // 2)]))
    k = int(np.flatnonzero(counts < 0.5 * plateau)[0])
    f = (counts[k - 1] - 0.5 * plateau) / (counts[k - 1] - counts[k])
    return float(dose[k - 1] + f * (dose[k] - dose[k - 1]))


@pytest.fixture(scope="module")
def runs(instruments):
    seed = int(fresh_rng("sputtering over CA").integers(2, 1_000_000))
    print(f"instrument seed {seed}")
    pad = build_specimen(SPECIMEN, seed).reference
    procs = instruments.get(specimen=SPECIMEN, seed=seed, purpose="sputtering")
    c = Client(procs.instrument_prefix)
    c.seed = seed
    out = {}
    for bias_v in (4500.0, 500.0):
        procs.reset()
        c.put("MS:DRIFT_NM_PER_MIN", 0.0)
        out[bias_v] = _profile(c, bias_v, pad)
    out["seed"] = seed
    out["pad"] = pad
    out["current_pa"] = float(c.get("FIB:CURRENT_RBV"))
    return out


def _yield(bias_v: float, seed: int) -> float:
    theta = _incidence(bias_v, seed)
    return MATERIALS["Li2CO3"].yield_at(30.0 - bias_v / 1000.0, theta)


def _incidence(bias_v: float, seed: int) -> float:
    return extraction_incidence_deg(30.0, bias_v, field_factor=draw_extraction_field_factor(seed))


def _twin_profile(bias_v: float, seed: int, pad: dict, current_pa: float, n_steps: int):
    """(dose, 7Li emission per ion) of the same steps through the twin's physics
    (noise-free; the truth a test may read): the yield at each layer's angle and
    energy, the MRI mixing of pad and film and the yield of their mixture (which
    steepens the fall, so the half-fall comes before the pad's thickness)."""
    spec = build_specimen(SPECIMEN, seed)
    depth = np.zeros(spec.shape, np.float32)
    theta = _incidence(bias_v, seed)
    landing = 30.0 - bias_v / 1000.0
    geo = sp.ScanGeometry(64, 64, FOV_UM, centre_x_nm=1000.0 * pad["x_um"],
                          centre_y_nm=1000.0 * pad["y_um"], incidence_deg=theta)
    params = sp.SimsParameters(drift_nm_per_min=0.0)
    area = (FOV_UM * 1000.0) ** 2 / math.cos(math.radians(theta))
    per_step = current_pa * 1e-12 * STEP_S / 1.602176634e-19 / area
    doses, signal = [], []
    for k in range(n_steps):
        doses.append(k * per_step)
        signal.append(sp.footprint_emission(spec, depth, geo, ("7Li",), 1, landing,
                                            params)["7Li"])
        sp.sputter_dose(spec, depth, geo, current_pa, STEP_S, spot=False, probe_fwhm_nm=10.0,
                        params=params, landing_kev=landing)
    return np.array(doses), np.array(signal)


def test_through_dose_follows_the_yield_at_the_landing_energy_and_angle(runs):
    """The crater's depth per dose: the dose through the pad at the two biases."""
    hi, lo = _half_fall(*runs[4500.0]), _half_fall(*runs[500.0])
    seed, pad = runs["seed"], runs["pad"]
    twin = {b: _half_fall(*_twin_profile(b, seed, pad, runs["current_pa"], MAX_STEPS))
            for b in (4500.0, 500.0)}
    expected = twin[500.0] / twin[4500.0]
    yamamura = _yield(4500.0, seed) / _yield(500.0, seed)
    # The crossing lies within one step's dose (uniform error): the ratio's sd.
    step = runs[4500.0][0][1] / hi, runs[500.0][0][1] / lo
    sd = (lo / hi) * math.hypot(*step) / math.sqrt(12.0)
    print(f"through-dose {hi:.0f} (+4.5 kV) and {lo:.0f} ions/nm^2 (+0.5 kV): ratio "
          f"{lo / hi:.4f} +- {sd:.4f}; the twin's profile {expected:.4f} (through at "
          f"{twin[4500.0]:.0f} and {twin[500.0]:.0f}); Yamamura x Matsunami {yamamura:.4f}")
    assert lo / hi == pytest.approx(expected, abs=max(3.5 * sd, 0.02))
    # What the yields' ratio does not explain is the MRI's half-fall: the mixing
    # length Rp cos(theta) differs by ~3 nm, so the pad halves ~3 % earlier at the
    # steeper angle. The twin gives 0.9701-0.9727 over 20 seeds' field factors (it
    # falls as the +4.5 kV beam bends further); the test once asserted 1 +- 0.03 and
    # failed on a seed at 0.9699.
    assert expected / yamamura == pytest.approx(0.9715, abs=0.01)
    assert lo / hi - 1.0 > 4 * sd  # a yield blind to angle and energy: ~1


def test_secondary_ions_per_ion_follow_the_yield(runs):
    """At steady state the matrix leaves at Y per ion: the pad's 7Li+ per step (same
    current and time) scales as the yield, Yamamura's ratio at the two biases."""
    def plateau(b):
        dose, counts = runs[b]
        counts = sp.dead_time_correct(counts / STEP_S, sp.true_dead_time_s(runs["seed"])) * STEP_S
        top = counts[: int(np.flatnonzero(counts < 0.9 * counts[:3].mean())[0])]
        return top.mean(), top.std(ddof=1) / math.sqrt(top.size)

    (a, sa), (b, sb) = plateau(500.0), plateau(4500.0)
    expected = _yield(500.0, runs["seed"]) / _yield(4500.0, runs["seed"])
    ratio = a / b
    sd = ratio * math.hypot(sa / a, sb / b)
    print(f"7Li+ per step: {a:.0f} (+0.5 kV) / {b:.0f} (+4.5 kV) = {ratio:.4f} +- {sd:.4f}; "
          f"Y ratio {expected:.4f}")
    # The two profiles are minutes apart: the source current's slow drift (~1 %) adds.
    assert ratio == pytest.approx(expected, abs=4 * math.hypot(sd, 0.01))


def test_matrix_count_rate_stays_flat_through_the_ga_build_up(runs):
    dose, counts = runs[4500.0]
    y = _yield(4500.0, runs["seed"])
    n = MATERIALS["Li2CO3"].atomic_density_per_nm3
    depth = dose * y / n
    surface = counts[:2].mean()
    # Steady state: more than two build-up lengths (Rp/2 ~ 15 nm) in, well before the
    # pad's end (the MRI reaches ~20 nm ahead of the surface).
    steady = counts[(depth > 35.0) & (depth < 65.0)]
    assert steady.size >= 5
    ratio = steady.mean() / surface
    sd = ratio * math.sqrt(1.0 / steady.sum() + 1.0 / counts[:2].sum() + 2 * 0.01**2)
    f = 1.0 / (1.0 + y)
    print(f"7Li+ per step: surface {surface:.0f}, steady state {steady.mean():.0f} "
          f"(ratio {ratio:.4f} +- {sd:.4f}); Y (1 - f) would give {1 - f:.3f}")
    assert ratio == pytest.approx(1.0, abs=max(4 * sd, 0.03))
