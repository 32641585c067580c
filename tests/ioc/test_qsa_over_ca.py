"""Quasi-simultaneous arrival on the IOCs (decision 0043): the natural-Li pad counted
(COUNT, raster) on a fresh instrument: 6Li/7Li, dead-time corrected with the
instrument's hidden dead time, is the twin's truth with QSA (IMF, collector yields,
6LiH+, the halo, and each collector's ``(1 - exp(-K))/K``), and reads above the truth
without QSA by about ``(K7 - K6)/2`` (0.3 %, ~5 standard errors of one 10 s count).

A COUNT reads the surface at its start and sputters after it (the spectrometer's
model), so one long count of the 100 nm pad is one reading of the pristine pad."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from catools import get, put, wait_for

from temsims.constants import REFERENCE_REGIONS
from temsims.ioc.physics import sims as sp
from temsims.ioc.physics.ion_optics import draw_extraction_field_factor, landing_incidence_deg
from temsims.ioc.physics.materials import isotope_mass_u
from temsims.ioc.physics.specimen import build_specimen

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scoring import fresh_rng  # noqa: E402

SPECIMEN = "li2co3-particles"
LI = (isotope_mass_u("6Li"), isotope_mass_u("7Li"))
COUNT_S = 10.0  # instrument s (0.5 s wall at the tests' time scale 20)
RASTER = {"fov_um": 0.15, "nx": 16, "ny": 16}


def test_pad_ratio_carries_qsa_on_a_fresh_instrument(instruments):
    seed = int(fresh_rng("test_qsa_over_ca").integers(2, 1_000_000))
    procs = instruments.get(specimen=SPECIMEN, seed=seed)
    pv = procs.instrument_prefix

    def g(name):
        return get(pv + name, timeout=10)

    def p(name, value, timeout=60.0):
        put(pv + name, value, timeout=timeout, wait=True)

    def until(name, pred, timeout=30.0):
        wait_for(lambda: pred(g(name)), timeout, f"{name}", interval=0.05)

    now0 = float(g("SIM:NOW"))  # just after the reset: the collectors' yield clock ~0
    p("MS:DRIFT_NM_PER_MIN", 0.0)
    pad = REFERENCE_REGIONS[SPECIMEN]
    for axis, value in (("X", pad["x_um"]), ("Y", pad["y_um"])):
        p(f"STAGE:{axis}.VELO", 50.0)
        put(pv + f"STAGE:{axis}", value, timeout=60, wait=False)
    p("TEM:OBJ", "Off")
    until("TEM:OBJ_RBV", lambda v: int(v) == 0)
    p("STAGE:A.VELO", 30.0)
    put(pv + "STAGE:A", -68.0, timeout=60, wait=False)
    until("STAGE:A.RBV", lambda v: abs(float(v) + 68) < 0.05)
    for axis in ("X", "Y", "A"):
        until(f"STAGE:{axis}.DMOV", lambda v: int(v) == 1)
    p("BIAS:RAMP_RATE", 10000.0)
    until("BIAS:INTERLOCK_RBV", lambda v: int(v) == 1)
    p("BIAS:ENABLE", "On")
    p("BIAS:VOLTAGE", 4500.0)
    until("BIAS:VOLTAGE_RBV", lambda v: abs(float(v) - 4500) < 1)
    p("FIB:APERTURE", "100 pA")
    p("FIB:SCAN:FOV", RASTER["fov_um"])
    p("FIB:SCAN:NX", RASTER["nx"])
    p("FIB:SCAN:NY", RASTER["ny"])
    p("FIB:SCAN:MODE", "Raster")
    p("MS:COL1:MASS", LI[0])
    p("MS:COL2:MASS", LI[1])
    p("FIB:BLANK", "Unblanked")
    until("MS:SIMS_READY", lambda v: int(v) == 1, timeout=10)
    p("MS:MODE", "Counting")
    p("MS:COUNT_TIME", COUNT_S)
    t_count = float(g("SIM:NOW")) - now0
    p("MS:ACQUIRE", "Acquire", timeout=COUNT_S + 30)
    n6, n7 = (float(g(f"MS:COL{n}:COUNTS")) for n in (1, 2))
    p("FIB:BLANK", "Blanked")

    # The truth: this instrument's dead time, IMF and yields (at the count's middle,
    # within ~10 instrument s), the pristine pad under the same raster and beam.
    tau = sp.true_dead_time_s(seed)
    twin = sp.SimsParameters(drift_nm_per_min=0.0, dead_time_s=tau).with_(
        **sp.mass_bias_parameters(seed), gain_clock_s=t_count)
    spec = build_specimen(SPECIMEN, seed)
    incidence = landing_incidence_deg(float(g("FIB:LANDING_RBV")),
                                      float(g("BIAS:VOLTAGE_RBV")),
                                      field_factor=draw_extraction_field_factor(seed))
    geo = sp.ScanGeometry(RASTER["nx"], RASTER["ny"], RASTER["fov_um"],
                          centre_x_nm=1000 * float(g("STAGE:X.RBV")),
                          centre_y_nm=1000 * float(g("STAGE:Y.RBV")), incidence_deg=incidence)
    truth = {}
    for q in (True, False):
        params = twin.with_(qsa=q)
        e = sp.footprint_emission(spec, np.zeros(spec.shape, np.float32), geo,
                                  sp.candidate_species(spec), 1,
                                  float(g("FIB:LANDING_RBV")), params)
        x6, x7 = sp.collector_expectation(LI, e, sp.primary_ion_rate(100.0), COUNT_S,
                                          params)
        truth[q] = x6 / x7
    c6, c7 = (n / (1 - n * tau / COUNT_S) for n in (n6, n7))
    ratio = c6 / c7
    # Counting (the dead time inflates 7Li's variance by 1/(1 - M tau)) and the
    # yields' walk over the clock's uncertainty (~2e-4).
    sigma = ratio * math.hypot(math.sqrt(1 / c6 + 1 / (c7 * (1 - n7 * tau / COUNT_S))),
                               2e-4)
    shift = truth[False] / truth[True] - 1
    print(f"seed {seed}: 6Li/7Li {ratio:.6f} +- {sigma:.6f}; truth with QSA "
          f"{truth[True]:.6f} (pull {(ratio - truth[True]) / sigma:+.2f}), without "
          f"{truth[False]:.6f} (pull {(ratio - truth[False]) / sigma:+.2f}); QSA "
          f"{-shift:+.4%}, {n6:.3g} 6Li and {n7:.3g} 7Li counts, tau {tau * 1e9:.1f} ns")
    assert -shift > 4 * sigma / ratio  # the effect is resolved by this count
    assert ratio == pytest.approx(truth[True], abs=4 * sigma)
    assert ratio - truth[False] > 1.5 * sigma
