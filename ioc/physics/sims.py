"""Physics of the simulated magnetic-sector SIMS, free of Channel Access.

Everything the mass spectrometer IOC (:mod:`temsims.ioc.spectrometer`) computes is
here as plain functions and small classes, so that it can be unit-tested and
benchmarked without a server. Numbers are named defaults in :class:`SimsParameters`
(sources: ``../shared/reference/instrument.md``).

Model
-----
Secondary-ion signal of species ``s`` in one pixel (instrument.md, "Secondary ion
signal")::

    counts_s = ions x eta x blur[ Y x alpha_s x C_s ]

with ``ions = I dwell / e`` the primary Ga+ ions on the pixel, ``Y`` the local
sputter yield, ``alpha_s`` the matrix-dependent ionisation probability of the
element, ``eta`` the transmission and ``C_s`` the atomic fraction of the isotope
at the present sputtered depth. ``blur`` is the beam footprint on the specimen: a
Gaussian of the probe FWHM plus the pixel-area average in the beam-normal plane,
stretched by ``1 / cos(incidence)`` along the specimen's y axis (the FIB column is at
45 deg to the surface, bent to ~50 deg by a +4.5 kV extraction field: a map is
foreshortened by ~0.64 along y), convolved with the
ion-solid interaction spread. It is applied once per collector to the sum of the
species it accepts, on the grid window under the raster.

Implanted Ga grows with the sputtered depth ``d`` toward the steady state
``1 / (1 + Y)``: ``f_Ga = f_ss (1 - exp(-d / d_b))`` with ``d_b`` about half the
projected range. Sputtering advances a per-grid-pixel depth map by
``dose x Y / n`` (ions/nm^2 x atoms/ion / atoms/nm^3). The composition at ``d`` is
the layers' weighted by Hofmann's mixing-roughness-information function
(:func:`depth_weights`, decision 0038): the depth resolution of a real profile.

Instrumental mass fractionation (decision 0035): the light isotope is emitted and
transmitted preferentially, by ``(m_ref / m)^beta`` with ``m_ref`` the element's mean
natural mass and ``beta`` a property of the matrix (mixed linearly between phases),
so two matrices bias a ratio differently. Each multicollector counts with its own
yield ("gain"), a few per cent from 1, drifting linearly plus a slow random walk in
instrument time; it scales what that collector counts (maps, COUNT), not the axial
mass scan. Both are drawn per instrument seed (:func:`mass_bias_parameters`).

Quasi-simultaneous arrival (decision 0043, :mod:`temsims.ioc.physics.qsa`): the
ions one primary impact delivers to one collector, ``K`` on average, give one pulse:
``1 - exp(-K)`` pulses per primary ion where it lands, before the footprint's blur.

Detection: a non-paralyzable dead time ``tau`` turns a true count rate ``N`` into
``M = N / (1 + N tau)``; dark counts add; the counts are sub-Poissonian, variance
``M T / (1 + N tau)^2`` (:func:`detect`). ``tau`` is the instrument's own, drawn from
its seed (:func:`true_dead_time_s`) and published nowhere (decision 0034). The Ga
ion source's current fluctuates (:class:`BeamCurrentNoise`): a factor common to all
collectors on the true counts.

Mass selection: ``m/q = B^2 r^2 / (2 U)``. The Hall probe reads the gap field
plus a fixed zero offset; the gap field lags the setpoint by a hysteresis that
depends on the direction of approach. Calibrated against the Hall readback,
``m = a (B - B0)^2`` with ``a = e r^2 / (2 U u)`` and ``B0`` the Hall offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
from scipy import ndimage, special
from scipy.optimize import brentq

from temsims.constants import SIMS_INCIDENCE_DEG, SIMS_TILT_DEG, TILT_TOLERANCE_DEG
from temsims.ioc.physics.materials import (
    ATOMIC_MASS_UNIT_KG,
    ELEMENTARY_CHARGE_C,
    ion_range_nm,
    isotope_mass_u,
    natural_abundances,
    parse_species,
    projected_range_nm,
    total_yield_factor,
)
from temsims.ioc.physics.qsa import qsa_thinned_emission
from temsims.ioc.physics.specimen import Specimen, _crop

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
HYDROGEN_MASS_U = 1.00782503207
#: Reference extraction voltage (V) at which the published calibration is stored.
REFERENCE_VOLTAGE_V = 4500.0
GA_ISOTOPES = ("69Ga", "71Ga")

#: Molecular secondary ions (decision 0039). MH+/M+ per element, surfaces in a SIMS
#: vacuum of 1e-8 to 1e-9 mbar: hydride ions of metals are 1e-4 to 1e-2 of the atomic
#: ion (Wilson, Stevie & Magee 1989, *SIMS: A Practical Handbook*, its
#: mass-interference tables; Benninghoven, Rudenauer & Werner 1987, *SIMS*):
#: LiH+/Li+ ~1e-3 from Li compounds, CH+/C+ 0.1-0.3 from carbon with adsorbed
#: hydrocarbons. Elements not listed take ``hydride_fraction``.
HYDRIDE_RATIO_NOMINAL: tuple[tuple[str, float], ...] = (
    ("Li", 1e-3), ("C", 0.2), ("N", 0.05), ("O", 0.05), ("Na", 5e-4), ("Al", 2e-3),
    ("V", 5e-3),
)
#: Dimer formation yield ``k`` of I(M2+) = k Y alpha f^2 (Benninghoven et al. 1987
#: on cluster emission: dimers fall with the atom's fraction squared; ToF-SIMS
#: studies of Li2CO3 and SEI films report Li2+, Li2O+ and LiH+ among the positive
#: clusters). k 1e-3 (an estimate of that order) gives Li2+/Li+ ~3e-4 in Li2CO3.
DIMER_YIELD_NOMINAL: tuple[tuple[str, float], ...] = (("Li", 1e-3),)
#: Oxide formation yield ``k`` of I(MO+) = k Y alpha_M f_M f_O: MO+/M+ is ~1e-3 for
#: alkalis, ~1e-2 for Al, 0.1-1 for V and the refractory metals from oxides (Wilson et
#: al. 1989: oxide ion ratios grow with the M-O bond energy).
OXIDE_YIELD_NOMINAL: tuple[tuple[str, float], ...] = (
    ("Li", 2e-3), ("Al", 0.02), ("V", 0.5),
)


@dataclass(frozen=True)
class SimsParameters:
    """Named defaults of the spectrometer model (all overridable).

    Attributes (units in the names)
    -------------------------------
    transmission
        Fraction of the secondary ions that reach a collector (> 40 %).
    dead_time_s
        Non-paralyzable dead time of each electron multiplier (the truth the counts
        are drawn with; the spectrometer IOC sets it from its seed, 22-45 ns).
    dark_rate_per_s
        Dark count rate of each detector (< 1 /s).
    qsa
        Quasi-simultaneous arrival (decision 0043, :mod:`.qsa`): the ions of one
        primary impact on one collector count as one pulse, ``1 - exp(-K)`` pulses per
        primary ion for ``K`` ions delivered. False: every ion counts.
    sector_radius_m
        Radius of the axial trajectory in the magnet.
    resolving_power
        M/dM of the axial (scanning) detector: flat-top width = m / R.
    peak_edge_fraction
        Gaussian sigma of a peak's edges as a fraction of its flat-top width.
    collector_window_u, collector_edge_u
        Full width of a multicollector's flat-topped acceptance (u) and the sigma of
        its edges: a collector counts every species within about +-0.4 u of its
        mass (a wide exit slit), isotopes one unit apart never overlap.
    hydride_fraction, hydride_ratios
        Intensity of MH+ relative to M+ per element (element, ratio), e.g. 6LiH+ on
        7Li+ (unresolved: M/dM ~1000 would be needed), and for the elements not
        listed (decision 0039).
    dimer_yields, oxide_yields
        Formation yield of the dimers M2+ and oxides MO+ per element (element,
        yield): ``I(ab+) = k Y alpha_M f_a f_b`` (x 2 for a != b), relative to the
        atomic ``I(M+) = Y alpha_M f_M`` (decision 0039).
    incidence_deg
        Angle between the ion beam and the specimen normal in SIMS geometry without
        an extraction field (the column's angle); the spectrometer bends it with the
        bias (``ion_optics.landing_incidence_deg``, decision 0036).
    interaction_fwhm_nm
        Lateral spread of the ion-solid interaction (the resolution floor).
    halo_fraction, halo_fwhm_nm
        The probe's halo (decision 0040): this fraction of the beam current lands in
        a broad Gaussian of this FWHM around the core (the aberration and
        column-scattering tails of a liquid-metal-ion-source probe); the core carries
        the rest. 0: no halo.
    ga_buildup_nm
        Sputtered depth over which implanted Ga approaches its steady state
        (``None``: half the projected range at the landing energy; with
        ``depth_mixing`` the range of the matrix exposed, per material).
    depth_mixing
        Depth resolution of the mixing-roughness-information model (decision 0038):
        the composition seen at a sputtered depth is the layers' weighted by the MRI
        function (:func:`mri_cdf`). False (the default, not yet on): sharp layers.
    mri_mixing_nm, mri_roughness_nm, mri_information_nm
        The MRI model's steady-state atomic-mixing length ``w`` (``None``: the exposed
        matrix's projected range x cos(incidence); it builds up over the first half
        range sputtered), roughness sigma and information depth.
    drift_nm_per_min, drift_direction_deg, drift_start_nm
        Slow drift of the specimen relative to the beam (zero allowed), and the
        displacement already accumulated at elapsed time zero.
    hall_offset_t
        Zero offset of the Hall probe (what ``B0`` calibrates).
    hall_noise_t
        Noise of one Hall-probe reading.
    hysteresis_t
        The gap field lags the setpoint by this much in the direction of approach.
    settle_tau_s, settle_tau_per_t_s
        Exponential settling of the magnet: tau = a + b |jump|.
    settled_tolerance_t
        Distance to the final field below which SETTLED reads 1.
    cal_a_error, cal_b0_t
        How far the published calibration starts from the truth (relative error of
        ``a``, and ``B0`` instead of the Hall offset).
    sims_alpha_deg, sims_alpha_tolerance_deg, min_bias_v
        SIMS geometry conditions: holder alpha and minimum |bias|.
    focal_plane_radius_ratio
        Radius range of the focal plane relative to the axial radius.
    imf_beta, imf_beta_default
        Instrumental mass fractionation exponent ``beta`` per matrix (material name,
        beta) and for the matrices not listed: each isotope's emission is scaled by
        ``(m_ref / m)^beta``. 0 (the default): no fractionation.
    collector_gain, collector_gain_drift_per_s
        Per multicollector (in the order of the collector masses): its counting yield
        at instrument time 0 and its relative linear drift per second (missing: 1, 0).
    gain_walk_rel_per_sqrt_s, gain_walk_seed
        Random walk of each collector's yield on top of the drift (relative, per
        square root of a second, nodes every :data:`GAIN_WALK_STEP_S`), seeded.
    gain_clock_s
        Instrument time (s) at elapsed time 0 of a frame or count (the gain's clock).
    relief
        Topography (decision 0041): the beam meets each grid pixel's facet of the
        specimen's height ``thickness - depth`` at its own incidence (Yamamura's yield
        there), with the dose per unit area ``1 + tan(theta) dh/dy`` (0 on a facet
        turned away) and none where relief up-beam casts a shadow
        (:func:`relief`), and each beam position's ray lands where it first meets the
        surface: a point ``h`` above the raster's nominal plane (the specimen's median
        surface) is seen ``h tan(theta)`` down-beam (parallax; decision 0041's
        amendment). False (the default): a flat specimen; on, a particle's back flank
        and the film behind it get less or no dose and its image is its projection
        along the beam.
    """

    transmission: float = 0.45
    dead_time_s: float = 30e-9
    dark_rate_per_s: float = 0.2
    qsa: bool = True
    sector_radius_m: float = 0.10
    resolving_power: float = 500.0
    peak_edge_fraction: float = 0.08
    collector_window_u: float = 0.8
    collector_edge_u: float = 0.02
    hydride_fraction: float = 2e-4
    hydride_ratios: tuple[tuple[str, float], ...] = HYDRIDE_RATIO_NOMINAL
    dimer_yields: tuple[tuple[str, float], ...] = DIMER_YIELD_NOMINAL
    oxide_yields: tuple[tuple[str, float], ...] = OXIDE_YIELD_NOMINAL
    incidence_deg: float = SIMS_INCIDENCE_DEG
    interaction_fwhm_nm: float = 8.0
    halo_fraction: float = 0.03
    halo_fwhm_nm: float = 300.0
    ga_buildup_nm: float | None = None
    depth_mixing: bool = True
    mri_mixing_nm: float | None = None
    mri_roughness_nm: float = 2.0
    mri_information_nm: float = 1.0
    drift_nm_per_min: float = 3.0
    drift_direction_deg: float = 30.0
    drift_start_nm: float = 0.0
    hall_offset_t: float = 4e-4
    hall_noise_t: float = 2e-6
    hysteresis_t: float = 3e-4
    settle_tau_s: float = 0.02
    settle_tau_per_t_s: float = 0.3
    settled_tolerance_t: float = 2e-6
    cal_a_error: float = 0.003
    cal_b0_t: float = 0.0
    sims_alpha_deg: float = SIMS_TILT_DEG
    sims_alpha_tolerance_deg: float = TILT_TOLERANCE_DEG
    min_bias_v: float = 100.0
    focal_plane_radius_ratio: tuple[float, float] = (0.6, 1.4)
    imf_beta: tuple[tuple[str, float], ...] = ()
    imf_beta_default: float = 0.0
    collector_gain: tuple[float, ...] = ()
    collector_gain_drift_per_s: tuple[float, ...] = ()
    gain_walk_rel_per_sqrt_s: float = 0.0
    gain_walk_seed: int = 0
    gain_clock_s: float = 0.0
    relief: bool = False

    @property
    def focal_plane_mass_ratio(self) -> tuple[float, float]:
        lo, hi = self.focal_plane_radius_ratio
        return lo * lo, hi * hi

    def with_(self, **changes) -> SimsParameters:
        return replace(self, **changes)


# ======================================================================================
# Magnet and mass calibration
# ======================================================================================
def true_cal_a(voltage_v: float, params: SimsParameters = SimsParameters()) -> float:
    """``a`` of m = a (B - B0)^2 in u/T^2 at extraction voltage ``voltage_v``."""
    u = max(abs(voltage_v), 1e-3)
    return ELEMENTARY_CHARGE_C * params.sector_radius_m**2 / (2.0 * u * ATOMIC_MASS_UNIT_KG)


def mass_for_gap_field(field_t: float | np.ndarray, voltage_v: float,
                       params: SimsParameters = SimsParameters()):
    """True m/q (u) on the axial trajectory for gap field ``field_t``."""
    return true_cal_a(voltage_v, params) * np.square(field_t)


def gap_field_for_mass(mass_u: float | np.ndarray, voltage_v: float,
                       params: SimsParameters = SimsParameters()):
    return np.sqrt(np.asarray(mass_u) / true_cal_a(voltage_v, params))


def calibrated_mass(hall_t, a: float, b0: float):
    """Mass from a Hall reading with the calibration m = a (B - B0)^2."""
    return a * np.square(np.asarray(hall_t) - b0)


def field_for_calibrated_mass(mass_u, a: float, b0: float):
    """Hall reading at which the calibration puts ``mass_u`` on the axis."""
    return b0 + np.sqrt(np.maximum(np.asarray(mass_u, dtype=float), 0.0) / a)


def fit_calibration(fields_t: np.ndarray, masses_u: np.ndarray) -> tuple[float, float]:
    """Fit ``m = a (B - B0)^2`` to peaks: ``sqrt(m) = sqrt(a) B - sqrt(a) B0`` (linear)."""
    fields_t = np.asarray(fields_t, dtype=float)
    root = np.sqrt(np.asarray(masses_u, dtype=float))
    slope, intercept = np.polyfit(fields_t, root, 1)
    a = slope * slope
    return float(a), float(-intercept / slope)


def starting_cal_a(params: SimsParameters = SimsParameters()) -> float:
    """``a`` the spectrometer publishes at start-up, at :data:`REFERENCE_VOLTAGE_V`:
    the truth off by ``cal_a_error`` (a mass scan of the Ga peaks calibrates it)."""
    return true_cal_a(REFERENCE_VOLTAGE_V, params) * (1.0 + params.cal_a_error)


def extraction_voltage(bias_v: float | None, params: SimsParameters = SimsParameters()
                       ) -> float:
    """Extraction voltage (V) that sets the mass scale: ``|bias_v|``, or the reference
    voltage while the bias is off (below ``min_bias_v``, or unknown)."""
    v = abs(bias_v or 0.0)
    return v if v >= params.min_bias_v else REFERENCE_VOLTAGE_V


def published_cal_a(a_ref: float, voltage_v: float) -> float:
    """``a`` at ``voltage_v`` of a calibration stored at :data:`REFERENCE_VOLTAGE_V`
    (``a`` scales as 1 / U)."""
    return a_ref * REFERENCE_VOLTAGE_V / voltage_v


def reference_cal_a(a: float, voltage_v: float) -> float:
    """Inverse of :func:`published_cal_a`: ``a`` at ``voltage_v`` stored at the reference."""
    return a * voltage_v / REFERENCE_VOLTAGE_V


class Magnet:
    """Sector magnet with settling and hysteresis; time is passed in (seconds).

    The gap field relaxes exponentially to ``setpoint - direction x hysteresis``
    (it lags in the direction of approach); the Hall probe reads the gap field
    plus its zero offset (plus noise when an ``rng`` is given).
    """

    def __init__(self, params: SimsParameters = SimsParameters(), field_t: float = 0.0,
                 now: float = 0.0) -> None:
        self.params = params
        self.setpoint = float(field_t)
        self.direction = 1.0
        self._start = float(field_t) - params.hysteresis_t
        self._target = self._start
        self._t0 = now
        self._tau = params.settle_tau_s

    def set(self, field_t: float, now: float) -> float:
        """Start a move to ``field_t``; returns the settling time constant (s)."""
        current = self.gap_field(now)
        if field_t != self.setpoint:
            self.direction = 1.0 if field_t > self.setpoint else -1.0
        self.setpoint = float(field_t)
        self._start = current
        self._target = self.setpoint - self.direction * self.params.hysteresis_t
        self._t0 = now
        self._tau = self.params.settle_tau_s + self.params.settle_tau_per_t_s * abs(
            self._target - current)
        return self._tau

    def gap_field(self, now: float) -> float:
        dt = max(now - self._t0, 0.0)
        return self._target + (self._start - self._target) * math.exp(-dt / self._tau)

    def final_gap_field(self) -> float:
        return self._target

    def hall(self, now: float, rng: np.random.Generator | None = None) -> float:
        noise = 0.0 if rng is None else rng.normal(0.0, self.params.hall_noise_t)
        return self.gap_field(now) + self.params.hall_offset_t + noise

    def settled(self, now: float) -> bool:
        return abs(self.gap_field(now) - self._target) < self.params.settled_tolerance_t

    def time_to_settle(self, now: float) -> float:
        gap = abs(self.gap_field(now) - self._target)
        if gap < self.params.settled_tolerance_t:
            return 0.0
        return self._tau * math.log(gap / self.params.settled_tolerance_t)


def primary_ion_rate(current_pa: float) -> float:
    """Ga+ ions per second on the specimen from a beam of ``current_pa``."""
    return current_pa * 1e-12 / ELEMENTARY_CHARGE_C


# ======================================================================================
# Peaks, collectors, species
# ======================================================================================
def flat_top(mass_u, centre_u, width_u: float, sigma_u: float):
    """Rectangle of full width ``width_u`` convolved with a Gaussian: a difference of
    two error functions, 1 on the plateau."""
    x = np.asarray(mass_u, dtype=float) - centre_u
    s = math.sqrt(2.0) * max(sigma_u, 1e-12)
    return 0.5 * (special.erf((x + width_u / 2) / s) - special.erf((x - width_u / 2) / s))


def axial_peak(mass_u, centre_u, params: SimsParameters = SimsParameters()):
    """Transmission profile of the axial detector (mass scan) for a species at
    ``centre_u``: flat top of width m/R with Gaussian edges."""
    width = centre_u / params.resolving_power
    return flat_top(mass_u, centre_u, width, params.peak_edge_fraction * width)


def collector_acceptance(mass_u, centre_u, params: SimsParameters = SimsParameters()):
    """Weight with which a multicollector set to true mass ``mass_u`` counts a
    species of mass ``centre_u``."""
    return flat_top(mass_u, centre_u, params.collector_window_u, params.collector_edge_u)


#: Separator of the atoms in a molecular ion's emission key ("6Li*7Li", "51V*16O").
MOLECULE_SEP = "*"
OXYGEN_ISOTOPE = "16O"


def _key_rows(key: str, hydrides: tuple, default_h: float, dimers: tuple,
              oxides: tuple) -> list[tuple[str, str, float, float]]:
    """(ion label, emission key, mass, factor) of the ions of one emission key: an
    isotope gives M+ and MH+ (factor: the element's MH+/M+), a molecule key its ion."""
    if MOLECULE_SEP not in key:
        symbol, _ = parse_species(key)
        m = isotope_mass_u(key)
        h = dict(hydrides).get(symbol, default_h)
        return [(key + "+", key, m, 1.0), (key + "H+", key, m + HYDROGEN_MASS_U, h)]
    a, b = key.split(MOLECULE_SEP)
    symbol, _ = parse_species(a)
    mass = isotope_mass_u(a) + isotope_mass_u(b)
    if b == OXYGEN_ISOTOPE and parse_species(b)[0] != symbol:
        return [(f"{a}O+", key, mass, dict(oxides).get(symbol, 0.0))]
    label = f"{a}2+" if a == b else f"{a}{b}+"
    # Random pairing: a hetero-dimer forms both ways round.
    return [(label, key, mass, dict(dimers).get(symbol, 0.0) * (1.0 if a == b else 2.0))]


@lru_cache(maxsize=64)
def molecule_keys(species: tuple[str, ...], dimers: tuple = DIMER_YIELD_NOMINAL,
                  oxides: tuple = OXIDE_YIELD_NOMINAL) -> tuple[str, ...]:
    """Emission keys of the dimers and oxides the isotopes ``species`` form: pairs of
    isotopes of an element with a dimer yield (lighter first), and isotope-16O for an
    element with an oxide yield when 16O is among ``species``."""
    d, o = dict(dimers), dict(oxides)
    isotopes = sorted((s for s in species if MOLECULE_SEP not in s), key=isotope_mass_u)
    keys = []
    for i, a in enumerate(isotopes):
        symbol, _ = parse_species(a)
        if d.get(symbol, 0.0) > 0:
            keys.extend(f"{a}{MOLECULE_SEP}{b}" for b in isotopes[i:]
                        if parse_species(b)[0] == symbol)
        if o.get(symbol, 0.0) > 0 and OXYGEN_ISOTOPE in isotopes and symbol != "O":
            keys.append(f"{a}{MOLECULE_SEP}{OXYGEN_ISOTOPE}")
    return tuple(keys)


@lru_cache(maxsize=128)
def _species_table(keys: tuple[str, ...], hydrides: tuple = HYDRIDE_RATIO_NOMINAL,
                   default_h: float = 2e-4, dimers: tuple = DIMER_YIELD_NOMINAL,
                   oxides: tuple = OXIDE_YIELD_NOMINAL
                   ) -> tuple[tuple[str, str, float, float], ...]:
    """(ion label, emission key, mass, factor) of every ion of the emission keys."""
    rows = []
    for key in keys:
        rows.extend(r for r in _key_rows(key, hydrides, default_h, dimers, oxides) if r[3] > 0)
    return tuple(rows)


def ion_table(species, params: SimsParameters = SimsParameters(), *, molecules: bool = True
              ) -> tuple[tuple[str, str, float, float], ...]:
    """Every secondary ion of the isotopes ``species`` (emission keys, molecular keys
    allowed): (label, emission key, mass u, factor on the key's emission). With
    ``molecules``, the dimers and oxides the isotopes form are added."""
    keys = tuple(species)
    if molecules:
        keys = keys + tuple(k for k in molecule_keys(keys, params.dimer_yields,
                                                     params.oxide_yields) if k not in keys)
    return _species_table(keys, params.hydride_ratios, params.hydride_fraction,
                          params.dimer_yields, params.oxide_yields)


def candidate_species(specimen: Specimen) -> tuple[str, ...]:
    """Isotopes that can reach the detector: the specimen's plus the beam's Ga."""
    return tuple(sorted(set(specimen.species()) | set(GA_ISOTOPES)))


def species_weights(true_mass_u: float, species: tuple[str, ...], *, axial: bool = False,
                    params: SimsParameters = SimsParameters(),
                    min_weight: float = 1e-6) -> dict[str, float]:
    """Emission key -> weight of its signal seen at ``true_mass_u``: isotopes (their
    hydrides folded in with the element's MH+/M+) and the dimers and oxides the
    isotopes form (keys "6Li*7Li", "7Li*16O", see :meth:`SurfaceEmitter.emission`).
    Collector mode uses the wide collector window, axial mode the narrow scanning
    peak."""
    out: dict[str, float] = {}
    for _label, key, mass, factor in ion_table(tuple(species), params):
        if abs(mass - true_mass_u) > 2.0:
            continue
        if axial:
            w = float(axial_peak(true_mass_u, mass, params))
        else:
            w = float(collector_acceptance(true_mass_u, mass, params))
        w *= factor
        if w > min_weight:
            out[key] = out.get(key, 0.0) + w
    return out


# ======================================================================================
# Mass fractionation and collector yields (decision 0035)
# ======================================================================================
#: Nominal IMF exponent ``beta`` per matrix: 6Li/7Li is measured high by
#: ``(m7/m6)^beta - 1``: +26 per mil in Li2CO3 (beta 0.165), +17 in LiPON, +37 in
#: LiV3O8. Li SIMS IMF is tens of per mil and matrix dependent (Bell et al. 2009,
#: Chem. Geol. 258, 5: olivine; Li et al. 2023, JAAS 38, 1962: up to 19 per mil
#: between silicate glasses; Kasemann et al. 2005, Anal. Chem. 77, 5251).
IMF_BETA_NOMINAL = (("Li2CO3", 0.165), ("LiPON", 0.11), ("LiV3O8", 0.235))
IMF_BETA_DEFAULT = 0.15
#: Per-instrument spread of beta (relative, 1 sigma): the tuning of the secondary
#: column and energy window changes the IMF from one instrument to the next.
IMF_BETA_SPREAD = 0.15
#: Per-collector yield at start-up (1 sigma from 1), drift per 10 min (1 sigma) and
#: random walk per sqrt(10 min): electron multipliers in a multicollector differ by a
#: few per cent and age at high count rates (estimate, decision 0035).
GAIN_SPREAD = 0.02
GAIN_DRIFT_PER_10MIN = 0.005
GAIN_WALK_PER_SQRT_10MIN = 0.001
#: Node spacing (s) of the collectors' yield random walk (linear in between).
GAIN_WALK_STEP_S = 60.0
_GAIN_WALK_CHUNK = 1024


def mass_bias_parameters(seed: int, n_collectors: int = 4) -> dict:
    """The harder twin's IMF and collector yields for an instrument seeded ``seed``:
    keyword changes of :class:`SimsParameters` (``params.with_(**...)``). Only the
    simulator and the tests that score against it use this (the truth)."""
    rng = np.random.default_rng([int(seed), 35])
    scale = 1.0 + IMF_BETA_SPREAD * rng.standard_normal()
    return {
        "imf_beta": tuple((name, float(beta * scale)) for name, beta in IMF_BETA_NOMINAL),
        "imf_beta_default": float(IMF_BETA_DEFAULT * scale),
        "collector_gain": tuple(
            float(g) for g in 1.0 + GAIN_SPREAD * rng.standard_normal(n_collectors)),
        "collector_gain_drift_per_s": tuple(
            float(r) for r in GAIN_DRIFT_PER_10MIN / 600.0 * rng.standard_normal(n_collectors)),
        "gain_walk_rel_per_sqrt_s": GAIN_WALK_PER_SQRT_10MIN / math.sqrt(600.0),
        "gain_walk_seed": int(rng.integers(2**31)),
    }


def imf_beta(material: str, params: SimsParameters) -> float:
    """IMF exponent of a matrix (by material name)."""
    return dict(params.imf_beta).get(material, params.imf_beta_default)


def imf_factor(isotope: str, beta):
    """``(m_ref / m)^beta`` of an isotope, ``m_ref`` its element's mean natural mass."""
    symbol, _ = parse_species(isotope)
    abund = natural_abundances(symbol)
    m_ref = sum(a * isotope_mass_u(i) for i, a in abund.items()) / max(sum(abund.values()),
                                                                      1e-12)
    return np.exp(np.asarray(beta) * math.log(m_ref / isotope_mass_u(isotope)))


@lru_cache(maxsize=64)
def _walk_chunk(seed: int, index: int, chunk: int) -> np.ndarray:
    """Walk nodes ``chunk * C .. (chunk + 1) * C`` (unit steps), continuing the last."""
    start = 0.0 if chunk == 0 else float(_walk_chunk(seed, index, chunk - 1)[-1])
    steps = np.random.default_rng([seed, index, chunk]).standard_normal(_GAIN_WALK_CHUNK)
    return start + np.cumsum(steps)


def collector_gain(index: int, t_s, params: SimsParameters):
    """Counting yield of collector ``index`` at instrument time ``t_s`` (s, >= 0)."""
    t = np.maximum(np.asarray(t_s, dtype=float), 0.0)
    g0 = params.collector_gain[index] if index < len(params.collector_gain) else 1.0
    rates = params.collector_gain_drift_per_s
    g = g0 * (1.0 + (rates[index] if index < len(rates) else 0.0) * t)
    if params.gain_walk_rel_per_sqrt_s > 0:
        x = t / GAIN_WALK_STEP_S
        k = np.floor(x).astype(int)
        hi = int(k.max()) + 1 if k.size else 1
        nodes = np.concatenate([[0.0]] + [
            _walk_chunk(params.gain_walk_seed, index, c)
            for c in range(hi // _GAIN_WALK_CHUNK + 1)])
        walk = nodes[k] + (nodes[k + 1] - nodes[k]) * (x - k)
        g = g * (1.0 + params.gain_walk_rel_per_sqrt_s * math.sqrt(GAIN_WALK_STEP_S) * walk)
    return g


def has_collector_gain(params: SimsParameters) -> bool:
    return bool(params.collector_gain or params.collector_gain_drift_per_s
                or params.gain_walk_rel_per_sqrt_s > 0)


# ======================================================================================
# Detection
# ======================================================================================
def dead_time_rate(true_rate, tau_s: float):
    """Measured rate of a non-paralyzable detector: M = N / (1 + N tau)."""
    n = np.asarray(true_rate, dtype=float)
    return n / (1.0 + n * tau_s)


def dead_time_correct(measured_rate, tau_s: float):
    """Inverse of :func:`dead_time_rate`: N = M / (1 - M tau)."""
    m = np.asarray(measured_rate, dtype=float)
    return m / (1.0 - m * tau_s)


#: The counting chain's dead time the maker states (s): what DEAD_TIME publishes until a
#: calibration (``plans.counting.calibrate_dead_time``) measures the chain's own.
NOMINAL_DEAD_TIME_S = 30e-9
#: Spread of the true dead time between instruments (s): electron multipliers and
#: their discriminators of one make differ by tens of per cent (instrument.md: 10-50 ns).
DEAD_TIME_SPREAD_S = (22e-9, 45e-9)


def true_dead_time_s(seed: int) -> float:
    """The hidden dead time of the instrument of ``seed`` (s), drawn uniformly from
    :data:`DEAD_TIME_SPREAD_S`. Published nowhere: the spectrometer counts with it, the
    control side must measure it; only tests read it (to score a calibration)."""
    rng = np.random.default_rng([int(seed), 0xDEAD])
    return float(rng.uniform(*DEAD_TIME_SPREAD_S))


#: Below this loss fraction ``N tau`` a count is drawn as Poisson (its variance differs
#: from the sub-Poissonian one by under 1 %).
SUB_POISSON_MIN_X = 5e-3
#: Below this mean count a count is drawn as Poisson whatever ``N tau``: its variance
#: deficit ``~2 N tau M T`` is a small fraction of a count, and counts over a few dead
#: times are not a renewal process's asymptotic law anyway.
SUB_POISSON_MIN_COUNTS = 1.0
#: From this mean count on, a sub-Poissonian count is drawn from a rounded normal (as
#: fast as a Poisson draw); below it from a binomial of the same two moments (exact
#: integers, but 2-3 times slower: only the few dim pixels at tiny dwells need it).
NORMAL_MIN_COUNTS = 20.0


def detect(expected_counts, time_s: float, params: SimsParameters,
           rng: np.random.Generator | None, dark: bool = True) -> np.ndarray:
    """Counts from expected true counts over ``time_s``: dark counts, dead time, noise.

    A non-paralyzable counter with true rate ``N`` registers a renewal process: over
    ``T >> tau`` its counts have mean ``M T = N T / (1 + N tau)`` and variance
    ``M T / (1 + N tau)^2`` (Mueller 1973, Nucl. Instrum. Methods 112, 47; Knoll,
    Radiation Detection and Measurement, ch. 4): sub-Poissonian. Drawn with those two
    moments: as Poisson where ``N tau`` < :data:`SUB_POISSON_MIN_X` or the mean is
    below :data:`SUB_POISSON_MIN_COUNTS`, else as a normal
    rounded to an integer (its variance less the rounding's 1/12) from
    :data:`NORMAL_MIN_COUNTS` counts on, else as ``Binomial(n, p)`` with
    ``p = 1 - 1 / (1 + N tau)^2`` and ``n`` one of the two integers around
    ``M T / p`` (picked at random so that the mean is exact).

    ``rng=None`` returns the expectation (float) instead of a draw. The draws of an
    array depend only on its values, in order: a map drawn row by row is the same
    however its rows are grouped into calls.
    """
    lam = np.asarray(expected_counts, dtype=np.float64)
    if dark:
        lam = lam + params.dark_rate_per_s * time_s
    x = None
    if params.dead_time_s > 0 and time_s > 0:
        x = lam * (params.dead_time_s / time_s)  # N tau
        lam = lam / (1.0 + x)
    if rng is None:
        return lam
    if x is None or not x.size or x.max() < SUB_POISSON_MIN_X:
        return rng.poisson(lam).astype(np.int32)
    scalar = lam.ndim == 0
    lam, x = np.atleast_1d(lam), np.atleast_1d(x)
    sub = (x >= SUB_POISSON_MIN_X) & (lam >= SUB_POISSON_MIN_COUNTS)
    if sub.all():
        out = _sub_poisson(lam, x, rng)
    elif not sub.any():
        out = rng.poisson(lam).astype(np.int32)
    else:
        out = np.empty(lam.shape, np.int32)
        out[~sub] = rng.poisson(lam[~sub])
        out[sub] = _sub_poisson(lam[sub], x[sub], rng)
    return out[0] if scalar else out


def _sub_poisson(mean: np.ndarray, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integers with mean ``mean`` and variance ``mean / (1 + x)^2``."""
    var = mean / np.square(1.0 + x)
    out = np.floor(mean + np.sqrt(np.maximum(var - 1.0 / 12.0, 0.0))
                   * rng.standard_normal(mean.shape) + 0.5)
    np.maximum(out, 0.0, out=out)
    dim = mean < NORMAL_MIN_COUNTS
    if dim.any():
        m, xd = mean[dim], x[dim]
        p = 1.0 - 1.0 / np.square(1.0 + xd)
        n_real = m / p
        n = np.floor(n_real)
        n += rng.random(n.shape) < (n_real - n)
        out[dim] = rng.binomial(n.astype(np.int64), p)
    return out.astype(np.int32)


#: Step (instrument s) at which a map samples the probe current along a line.
CURRENT_SAMPLE_S = 0.03


class BeamCurrentNoise:
    """Relative fluctuation of the Ga+ probe current, a seeded function of time.

    A liquid-metal ion source regulated on its extraction current still lets the probe
    current through an aperture fluctuate: about 1 % rms short-term noise with most
    power below ~10 Hz, and a drift of 1-2 % per hour (Orloff, Utlaut and Swanson,
    High Resolution Focused Ion Beams, 2003, ch. 3; Swanson, Nucl. Instrum. Methods
    218, 347 (1983)). Modelled as two stationary Gaussian processes with exponential
    correlation, ``rms_fast`` over ``tau_fast_s`` and ``rms_slow`` over ``tau_slow_s``,
    each a sum of ``n_modes`` cosines whose angular frequencies are drawn from the
    Lorentzian (Cauchy) spectrum of that correlation (spectral synthesis: a function of
    time alone, so a line, a count or a scan step reads the same factor however the
    work is split, and nothing needs to be stored).

    ``factor(t)`` is ``1 + g(t)`` at instrument times ``t`` (s, any shape);
    ``mean_factor(t0, t1)`` its average over an interval (a count). ``origin_s`` is
    subtracted from the times first: cosines of epoch-sized arguments are three times
    slower (argument reduction) and lose digits.
    """

    def __init__(self, seed: int, *, rms_fast: float = 0.01, tau_fast_s: float = 0.3,
                 rms_slow: float = 0.01, tau_slow_s: float = 1800.0, n_modes: int = 32,
                 origin_s: float = 0.0) -> None:
        rng = np.random.default_rng([int(seed), 0x6A])
        self.origin_s = float(origin_s)
        omegas, phases, amps = [], [], []
        for rms, tau in ((rms_fast, tau_fast_s), (rms_slow, tau_slow_s)):
            if rms <= 0:
                continue
            # |omega| ~ Cauchy(0, 1/tau): E[cos(omega dt)] = exp(-|dt| / tau).
            omegas.append(np.abs(rng.standard_cauchy(n_modes)) / tau)
            phases.append(rng.uniform(0.0, 2.0 * np.pi, n_modes))
            amps.append(np.full(n_modes, rms * math.sqrt(2.0 / n_modes)))
        self.omega = np.concatenate(omegas) if omegas else np.zeros(0)
        self.phase = np.concatenate(phases) if phases else np.zeros(0)
        self.amp = np.concatenate(amps) if amps else np.zeros(0)

    def factor(self, t_s) -> np.ndarray:
        t = np.asarray(t_s, dtype=np.float64) - self.origin_s
        if not self.omega.size:
            return np.ones_like(t)
        arg = t[..., None] * self.omega + self.phase
        return 1.0 + np.cos(arg) @ self.amp

    def mean_factor(self, t0_s: float, t1_s: float) -> float:
        if not self.omega.size:
            return 1.0
        a, b = float(t0_s) - self.origin_s, float(t1_s) - self.origin_s
        if b - a <= 0:
            return float(self.factor(a))
        w = np.maximum(self.omega, 1e-300)
        mean = (np.sin(w * b + self.phase) - np.sin(w * a + self.phase)) / (w * (b - a))
        return float(1.0 + mean @ self.amp)


# ======================================================================================
# Conditions
# ======================================================================================
@dataclass(frozen=True)
class SimsConditions:
    """The instrument state that decides whether ions reach the detector."""

    alpha_deg: float | None
    objective_on: bool | None
    bias_enabled: bool | None
    bias_v: float | None
    beam_unblanked: bool | None

    def problems(self, params: SimsParameters = SimsParameters(), *,
                 beam: bool = True) -> list[str]:
        """What keeps the instrument from SIMS now (``beam=False``: the geometry only,
        the ion beam's blanking left out)."""
        out = []
        if self.alpha_deg is None or not (
                abs(self.alpha_deg - params.sims_alpha_deg) <= params.sims_alpha_tolerance_deg):
            out.append(f"alpha not within {params.sims_alpha_tolerance_deg:g} deg of "
                       f"{params.sims_alpha_deg:g}")
        if self.objective_on is None or self.objective_on:
            out.append("objective lens on")
        if not self.bias_enabled or self.bias_v is None or abs(self.bias_v) < params.min_bias_v:
            out.append("bias off")
        if beam and not self.beam_unblanked:
            out.append("ion beam blanked")
        return out

    def ready(self, params: SimsParameters = SimsParameters()) -> bool:
        return not self.problems(params)

    @property
    def polarity(self) -> int:
        return -1 if (self.bias_v or 0.0) < 0 else 1


# ======================================================================================
# Drift
# ======================================================================================
def drift_offset_nm(elapsed_s, params: SimsParameters = SimsParameters()):
    """Specimen displacement (dx, dy) in nm after ``elapsed_s`` of drift."""
    t = np.asarray(elapsed_s, dtype=float)
    d = params.drift_start_nm + params.drift_nm_per_min * t / 60.0
    ang = math.radians(params.drift_direction_deg)
    return d * math.cos(ang), d * math.sin(ang)


# ======================================================================================
# Scan geometry
# ======================================================================================
@dataclass(frozen=True)
class ScanGeometry:
    """Raster of the ion column projected on the specimen.

    ``fov_um`` is the raster width in the beam-normal plane; pixels are square there
    (``fov / nx``). The beam-normal raster is rotated by ``rotation_deg`` and then
    projected on the specimen, which stretches it along the specimen's y by
    ``1 / cos(incidence)``. Map row 0 is the -y edge, column 0 the -x edge.
    ``centre_*_nm`` is the specimen point at the map centre (stage position).
    """

    nx: int
    ny: int
    fov_um: float
    rotation_deg: float = 0.0
    centre_x_nm: float = 0.0
    centre_y_nm: float = 0.0
    incidence_deg: float = SIMS_INCIDENCE_DEG

    @property
    def pixel_nm(self) -> float:
        return self.fov_um * 1000.0 / self.nx

    @property
    def stretch(self) -> float:
        return 1.0 / math.cos(math.radians(self.incidence_deg))

    @property
    def pixel_area_nm2(self) -> float:
        """Area on the specimen of one map pixel."""
        return self.pixel_nm**2 * self.stretch

    def beam_coords(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.pixel_nm
        u = (np.asarray(cols, dtype=np.float64) - (self.nx - 1) / 2.0) * p
        v = (np.asarray(rows, dtype=np.float64) - (self.ny - 1) / 2.0) * p
        return u, v

    def to_specimen(self, u: np.ndarray, v: np.ndarray, offset_x_nm=0.0,
                    offset_y_nm=0.0) -> tuple[np.ndarray, np.ndarray]:
        """Beam-plane (u, v) in nm -> specimen (x, y) in nm; ``offset`` is the drift
        of the specimen (subtracted: the beam sees the point that drifted under it)."""
        th = math.radians(self.rotation_deg)
        c, s = math.cos(th), math.sin(th)
        ur = u * c - v * s
        vr = u * s + v * c
        return (self.centre_x_nm + ur - offset_x_nm,
                self.centre_y_nm + vr * self.stretch - offset_y_nm)

    def from_specimen(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Specimen (x, y) nm -> beam-plane (u, v) nm (no drift)."""
        ur = np.asarray(x) - self.centre_x_nm
        vr = (np.asarray(y) - self.centre_y_nm) / self.stretch
        th = math.radians(self.rotation_deg)
        c, s = math.cos(th), math.sin(th)
        return ur * c + vr * s, -ur * s + vr * c

    def at_spot(self, spot_x_um: float, spot_y_um: float) -> ScanGeometry:
        """This raster centred on a parked beam (spot mode) at (``spot_x_um``,
        ``spot_y_um``) from the field centre, in the beam-normal plane (its y is
        stretched on the specimen; the scan rotation does not move the spot)."""
        return replace(self, centre_x_nm=self.centre_x_nm + 1000.0 * spot_x_um,
                       centre_y_nm=self.centre_y_nm + 1000.0 * spot_y_um * self.stretch)

    def corners_nm(self, margin_nm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        hu = self.nx * self.pixel_nm / 2 + margin_nm
        hv = self.ny * self.pixel_nm / 2 + margin_nm
        u = np.array([-hu, hu, hu, -hu])
        v = np.array([-hv, -hv, hv, hv])
        return self.to_specimen(u, v)


# ======================================================================================
# Surface: what each grid pixel emits
# ======================================================================================
def ga_buildup_nm(landing_kev: float, params: SimsParameters = SimsParameters()) -> float:
    if params.ga_buildup_nm is not None:
        return params.ga_buildup_nm
    return 0.5 * ion_range_nm(landing_kev)


# ---- depth resolution: Hofmann's mixing-roughness-information model (decision 0038) ----
#: Below this many decay lengths or sigmas the MRI function's CDF is taken as 0 or 1.
_MRI_TAIL = 14.0
_MRI_MIN_NM = 0.05


def mri_cdf(x, w, sigma: float, lam: float) -> np.ndarray:
    """CDF of ``V + N``: ``V = X_lam - X_w`` (two exponentials, information depth and
    atomic mixing) and ``N`` Gaussian roughness, in closed form (exponentially
    modified Gaussians, via ``log_ndtr`` so that neither tail overflows).

    An atom at original depth ``z`` is seen at sputtered depth ``d`` with density
    ``g(z - d)`` where ``z - d = w + V + N``; a layer ``[top, bottom]`` weighs
    ``mri_cdf(bottom - d - w) - mri_cdf(top - d - w)``. ``w`` may be an array.
    """
    x = np.asarray(x, np.float64)
    w = np.maximum(np.asarray(w, np.float64), _MRI_MIN_NM)
    s = max(float(sigma), _MRI_MIN_NM)
    lam = max(float(lam), _MRI_MIN_NM)
    lo = x < -_MRI_TAIL * (w + s)
    hi = x > _MRI_TAIL * (lam + s)
    out = np.where(hi, 1.0, 0.0)
    mid = ~(lo | hi)
    if not mid.any():
        return out
    xm = x[mid] if x.ndim else x
    wm = np.broadcast_to(w, x.shape)[mid] if x.ndim else w
    a = lam / (lam + wm)
    up = np.exp(-xm / lam + s * s / (2 * lam * lam) + special.log_ndtr((xm - s * s / lam) / s))
    down = np.exp(xm / wm + s * s / (2 * wm * wm) + special.log_ndtr(-(xm + s * s / wm) / s))
    val = np.clip(special.ndtr(xm / s) - a * up + (1.0 - a) * down, 0.0, 1.0)
    if x.ndim:
        out[mid] = val
        return out
    return np.asarray(val)


#: Lookup table of :func:`mri_cdf` (steps in x and in sqrt(w), nm and nm^0.5):
#: evaluated once per (sigma, lambda), then bilinear on the pixels off the tails
#: (several times cheaper than the closed form on a map's full window; error < 1e-3).
_MRI_DX, _MRI_DSW, _MRI_W_MAX = 0.1, 0.02, 40.0


@lru_cache(maxsize=4)
def _mri_table(sigma: float, lam: float) -> tuple[np.ndarray, float]:
    x0 = -(14.0 * _MRI_W_MAX + 8.0 * sigma)
    x = np.arange(x0, 14.0 * lam + 8.0 * sigma + sigma * sigma / lam + _MRI_DX, _MRI_DX)
    sw = np.arange(0.0, math.sqrt(_MRI_W_MAX) + 2 * _MRI_DSW, _MRI_DSW)
    xx, ww = np.meshgrid(x, sw * sw)
    return mri_cdf(xx, ww, sigma, lam).astype(np.float32), float(x0)


def _mri_lookup(table: np.ndarray, x0: float, x: np.ndarray, w: np.ndarray, sigma: float,
                lam: float) -> np.ndarray:
    """:func:`_mri_cdf_fast` on arrays of any shape, pixel by pixel (the table's bilinear
    lookup only off the tails)."""
    hi_x = max(6.0 * sigma, lam * (14.0 + sigma * sigma / (2.0 * lam * lam)))
    lo = x < -(6.0 * sigma + 14.0 * w)
    hi = x > hi_x
    mid = ~(lo | hi)
    out = np.where(hi, np.float32(1.0), np.float32(0.0))
    if not mid.any():
        return out
    if not mid.all():
        x, w = x[mid], w[mid]
    fx = (x - np.float32(x0)) * np.float32(1.0 / _MRI_DX)
    fw = np.sqrt(w) * np.float32(1.0 / _MRI_DSW)
    nw, nx = table.shape
    np.clip(fx, 0.0, nx - 1.001, out=fx)
    fw = np.clip(fw, 0.0, nw - 1.001)
    val = ndimage.map_coordinates(table, [fw.ravel(), fx.ravel()], order=1,
                                  mode="nearest", prefilter=False)
    if mid.all():
        return val.reshape(out.shape)
    out[mid] = val
    return out


#: Side (grid pixels) of the tiles over which :func:`_tilewise` looks for constant
#: arguments.
_MRI_TILE = 16


def _tiles(a: np.ndarray, t: int) -> np.ndarray:
    """The whole ``t`` x ``t`` tiles of a 2-D array as a (rows, cols, t, t) view."""
    ny, nx = a.shape
    return a[:ny - ny % t, :nx - nx % t].reshape(ny // t, t, nx // t, t).swapaxes(1, 2)


def _constant_tiles(a: np.ndarray, t: int = _MRI_TILE) -> np.ndarray:
    """Per whole tile of a 2-D array: every pixel equals the tile's first."""
    ny, nx = a.shape[0] // t, a.shape[1] // t
    v = a[:ny * t, :nx * t].reshape(ny, t, nx, t)
    # Two contiguous reductions (over the tile's rows, then its columns): five times
    # faster than one over both axes.
    same = (v == v[:, :1, :, :1]).reshape(ny, t, nx * t).all(axis=1)
    return same.reshape(ny, nx, t).all(axis=2)


def _tilewise(func, arrays: tuple[np.ndarray, ...],
              constant: tuple[np.ndarray | None, ...] | None = None,
              t: int = _MRI_TILE) -> np.ndarray:
    """``func(*arrays)`` for a ``func`` computed pixel by pixel (its value at a pixel
    depends on that pixel's arguments only) on 2-D arrays of one shape, evaluated once
    per ``t`` x ``t`` tile where every argument is constant, on every pixel elsewhere:
    the same values, bit for bit. A frame's arguments are mostly piecewise constant
    (the unsputtered field, a raster's uniform dose on one matrix, a uniform film).
    ``constant``: each argument's :func:`_constant_tiles` when known (None: found)."""
    shape = arrays[0].shape
    if len(shape) != 2 or min(shape) < 2 * t:
        return func(*arrays)
    same = None
    for i, a in enumerate(arrays):
        c = constant[i] if constant is not None and constant[i] is not None else \
            _constant_tiles(a, t)
        same = c if same is None else same & c
    views = [_tiles(a, t) for a in arrays]
    first = func(*(v[:, :, 0, 0] for v in views))
    out = np.empty(shape, first.dtype)
    vo = _tiles(out, t)
    vo[same] = first[same][:, None, None]
    other = ~same
    if other.any():
        vo[other] = func(*(v[other] for v in views))
    ny, nx = vo.shape[0] * t, vo.shape[1] * t
    if ny < shape[0]:
        out[ny:] = func(*(a[ny:] for a in arrays))
    if nx < shape[1]:
        out[:ny, nx:] = func(*(a[:ny, nx:] for a in arrays))
    return out


def _mri_cdf_fast(x: np.ndarray, w: np.ndarray, sigma: float, lam: float,
                  w_constant: np.ndarray | None = None) -> np.ndarray:
    """:func:`mri_cdf` by bilinear lookup (``w`` clipped to 40 nm): 0 and 1 in the
    tails (below ``-(6 sigma + 14 w)``, above ``6 sigma`` and
    ``lam (14 + sigma^2 / (2 lam^2))``), the table between.

    The lookup is scipy's ``map_coordinates`` (order 1, edges clamped): one pass in C
    over a frame's grid, where numpy's masked gather made ~8 full-size temporaries
    and was 2.5-3x slower (the frame set-up's largest part; same values). It is made
    once per tile of constant ``(x, w)`` (:func:`_tilewise`), only off the tails, and
    not at all where every pixel is in the upper tail (a layer's bottom far below):
    the values of the lookup on every pixel, bit for bit. ``w_constant``: the
    :func:`_constant_tiles` of ``w`` when known (a frame's layers share one ``w``).
    """
    sigma, lam = max(float(sigma), _MRI_MIN_NM), max(float(lam), _MRI_MIN_NM)
    table, x0 = _mri_table(sigma, lam)
    x = np.asarray(x, np.float32)
    w = np.broadcast_to(np.asarray(w, np.float32), x.shape)
    hi_x = max(6.0 * sigma, lam * (14.0 + sigma * sigma / (2.0 * lam * lam)))
    if x.size and x.min() > hi_x:  # wholly in the upper tail: 1 everywhere
        return np.ones(x.shape, np.float32)
    return _tilewise(lambda xs, ws: _mri_lookup(table, x0, xs, ws, sigma, lam), (x, w),
                     (None, w_constant))


def mixing_length_nm(range_nm, incidence_deg: float, params: SimsParameters) -> np.ndarray:
    """The MRI mixing length ``w``: the projected range along the surface normal."""
    if params.mri_mixing_nm is not None:
        return np.asarray(params.mri_mixing_nm, np.float64)
    return np.asarray(range_nm, np.float64) * math.cos(math.radians(incidence_deg))


def mri_quantile_width_nm(w: float, sigma: float, lam: float,
                          lo: float = 0.16, hi: float = 0.84) -> float:
    """Depth resolution of the MRI function: the ``lo``-``hi`` width of a sharp
    interface's profile (16-84 %: 2 sigma of an error-function step)."""
    span = _MRI_TAIL * (w + lam + sigma) + 1.0

    def q(p):
        return brentq(lambda x: float(mri_cdf(x, w, sigma, lam)) - p, -span, span, xtol=1e-6)

    return q(hi) - q(lo)


#: Height (nm) by which relief up-beam must clear a pixel's ray to shadow it (float32
#: noise on a flat surface must not).
_SHADOW_TOL_NM = 0.05


def reference_height_nm(specimen: Specimen) -> tuple[float, float]:
    """(reference, highest) height (nm above the specimen's back) of a specimen's
    relief: the raster's nominal plane, where a beam position lands where the map's
    geometry says, is the specimen's median surface as made (the plane its height was
    set on: a particle specimen's film, a lamella's mid-thickness), and the tallest
    point. Cached on the specimen (a subsampled median: one pass of a few ms)."""
    cached = getattr(specimen, "_relief_heights", None)
    if cached is None:
        step = max(1, min(specimen.shape) // 256)
        sub = specimen.thickness_nm((slice(None, None, step), slice(None, None, step)))
        cached = (float(np.median(sub)), float(specimen.thickness_nm().max()))
        specimen._relief_heights = cached
    return cached


def parallax_margin_nm(specimen: Specimen, incidence_deg: float,
                       params: SimsParameters) -> float:
    """How far (nm, along y) from its nominal position a beam position can land on the
    relief (0 without ``params.relief``): a grid window must reach that far to hold
    every landing point."""
    if not params.relief:
        return 0.0
    ref, top = reference_height_nm(specimen)
    th = math.radians(min(max(float(incidence_deg), 0.0), 89.0))
    return max(top - ref, ref) * math.tan(th) + 2.0 * specimen.pixel_nm


@dataclass(frozen=True)
class Relief:
    """The beam on a specimen's relief, per grid pixel of one window (decision 0041;
    parallax: its amendment).

    Attributes
    ----------
    dose_factor
        Ions per unit grid area relative to a flat specimen's: ``1 + tan(theta) h_y``
        on a lit facet, 0 in the shadow or on a facet turned away.
    local_incidence_deg
        The angle between the beam and each facet's normal.
    nominal_shift_nm
        How far down-beam (+y) of itself a lit pixel appears in the map: ``(h -
        h_ref) tan(theta)``, the beam position whose ray lands on it.
    hit_row
        Per grid position taken as a beam position (its nominal point on the reference
        plane), the window row where its ray first meets the surface, in the same
        column (the beam travels along the columns): the first pixel whose running
        maximum reaches it.
    """

    dose_factor: np.ndarray
    local_incidence_deg: np.ndarray
    nominal_shift_nm: np.ndarray
    hit_row: np.ndarray

    def gather(self, image: np.ndarray) -> np.ndarray:
        """``image`` (per surface pixel) seen from the beam positions: each grid
        position takes the value where its ray lands."""
        return np.take_along_axis(image, self.hit_row, axis=0)


def relief(specimen: Specimen, depth_nm: np.ndarray, window, incidence_deg: float
           ) -> Relief:
    """The beam on the relief of ``window`` (:class:`Relief`).

    Height ``h = thickness - depth`` (nm above the specimen's back). The beam comes in
    at ``theta`` from the normal, travelling toward +y (map row 0, the -y edge, is
    up-beam). A facet of slopes ``(h_x, h_y)`` is met at ``cos(theta_l) =
    (cos theta + sin theta h_y) / sqrt(1 + h_x^2 + h_y^2)`` and takes, per unit area of
    the grid (the projected area the dose is counted on), ``1 + tan(theta) h_y`` times
    the flat dose (0 where that is negative: turned away). A surface point ``(y, h)``
    lies on the ray of the beam position ``y + (h - h_ref) tan(theta)`` on the
    reference plane (:func:`reference_height_nm`); a column's running maximum of that
    position (one cumulative maximum per column) is where its rays have reached: a
    pixel below it is in the shadow, and the ray of a beam position lands on the
    first pixel whose running maximum reaches it (one search over the flattened
    columns). The shadow takes exactly the ions the flank facing the beam gains: the
    dose over a column is conserved; every ray lands once.
    """
    th = math.radians(min(max(float(incidence_deg), 0.0), 89.0))
    tan = math.tan(max(th, 1e-3))
    h = specimen.thickness_nm(window).astype(np.float32) - np.asarray(depth_nm, np.float32)
    h = np.broadcast_to(h, np.asarray(depth_nm).shape)
    step = 1 if window is None else (window[0].step or 1)
    px = np.float32(specimen.pixel_nm * step)
    n, m = h.shape
    if min(h.shape) < 2:
        ones = np.ones(h.shape, np.float32)
        return Relief(ones, np.full(h.shape, incidence_deg, np.float32),
                      np.zeros(h.shape, np.float32),
                      np.broadcast_to(np.arange(n)[:, None], h.shape))
    hy, hx = np.gradient(h, px)
    k = np.maximum(1.0 + math.tan(th) * hy, 0.0)
    ref, _ = reference_height_nm(specimen)
    shift = (h - np.float32(ref)) * np.float32(tan)
    # Nominal row of each surface pixel's beam position, and how far the rays reached.
    s = np.arange(n, dtype=np.float64)[:, None] + shift.astype(np.float64) / float(px)
    reach = np.maximum.accumulate(s, axis=0)
    ahead = np.vstack([np.full((1, m), -np.inf), reach[:-1]])
    lit = s >= ahead - _SHADOW_TOL_NM * tan / float(px)
    # The first row whose reach attains each beam position r0 (column by column: the
    # columns laid end to end, each offset beyond the last one's range).
    span = max(float(reach.max()), n) - min(float(reach.min()), 0.0) + 2.0
    offset = span * np.arange(m, dtype=np.float64)[None, :]
    keys = (reach + offset).T.ravel()
    # (less a hair: a flat surface's rounding must not move a ray to the next row)
    queries = (np.arange(n, dtype=np.float64)[:, None] - 1e-3 + offset).T.ravel()
    i = np.searchsorted(keys, queries, side="left") - n * np.repeat(np.arange(m), n)
    # (on a slope the landing point is held to the grid's pixels, 2 nm; a wall facing
    # the beam takes every ray that meets it, in the taller column's material)
    hit = np.ascontiguousarray(np.clip(i, 0, n - 1).reshape(m, n).T)
    cos_l = (math.cos(th) + math.sin(th) * hy) / np.sqrt(1.0 + hx * hx + hy * hy)
    local = np.degrees(np.arccos(np.clip(cos_l, -1.0, 1.0)))
    return Relief(np.where(lit, k, 0.0).astype(np.float32), local.astype(np.float32),
                  shift.astype(np.float32), hit)


def relief_dose(specimen: Specimen, depth_nm: np.ndarray, window, incidence_deg: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """(dose factor, local incidence in deg) per grid pixel of ``window`` on a specimen
    with relief (:func:`relief`, decision 0041)."""
    r = relief(specimen, depth_nm, window, incidence_deg)
    return r.dose_factor, r.local_incidence_deg


def layer_bounds(specimen: Specimen, window) -> list[tuple[object, object]]:
    """(top, bottom) of each layer, per pixel (broadcastable), in nm from the surface."""
    out = []
    top = 0.0
    for layer in specimen.layers:
        bottom = top + _crop(layer.thickness_nm, window)
        out.append((top, bottom))
        top = bottom
    return out


def depth_weights(specimen: Specimen, depth_nm: np.ndarray, window, landing_kev: float,
                  incidence_deg: float, params: SimsParameters = SimsParameters()
                  ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Per-layer weights of the MRI function at sputtered depth ``depth_nm`` (one array
    per layer, float32), the per-pixel mixing length and the projected range used.

    ``w`` is that of the matrix exposed at ``depth_nm`` (its projected range at the
    landing energy x cos(incidence)), grown from 0 at the surface as
    ``1 - exp(-d / (Rp / 2))`` (the Ga build-up's length); the model's share from above the original
    surface goes to the matrix exposed at ``d`` (a layer of no thickness at a pixel
    weighs nothing there) and beyond the last layer is nothing: the weights sum to 1
    inside the specimen, less near its bottom, and are 0 where it is sputtered
    through.
    """
    depth = np.asarray(depth_nm, np.float32)
    bounds = layer_bounds(specimen, window)
    index = specimen.layer_at_depth(depth, window, [bottom for _, bottom in bounds])
    rng_nm = np.zeros(index.shape, np.float32)
    for i, layer in enumerate(specimen.layers):
        m = index == i
        if m.any():
            r = layer._mix(window, lambda mat: projected_range_nm(mat, landing_kev))
            np.copyto(rng_nm, np.broadcast_to(np.asarray(r, np.float32), index.shape), where=m)
    rng_nm[index < 0] = ion_range_nm(landing_kev)
    # The mixed zone builds up with the dose as the implanted Ga does (steady state
    # after ~ a range sputtered; the MRI model describes the steady state): a
    # surface map at d ~ 0 still sees the top monolayers.
    # (Per tile of constant depth and range where it can: :func:`_tilewise`.)
    def mixing(d, r):
        wm = np.broadcast_to(mixing_length_nm(r, incidence_deg, params), r.shape)
        return (wm * -np.expm1(-np.maximum(d, 0.0) / np.maximum(0.5 * r, 1e-6))
                ).astype(np.float32)

    w = _tilewise(mixing, (np.broadcast_to(depth, index.shape), rng_nm))
    s, lam = params.mri_roughness_nm, params.mri_information_nm
    through = index < 0
    weights = []
    # The layers' CDFs share ``w``: its constant tiles are found once.
    w_constant = _constant_tiles(w) if w.ndim == 2 and min(w.shape) >= _MRI_TILE else None
    # What the model would take from above the original surface (gone, and absent
    # from a pixel where the top layer has no thickness) is the matrix exposed at d.
    above = _mri_cdf_fast(-depth - w, w, s, lam, w_constant)
    below = above
    for i, (_top, bottom) in enumerate(bounds):
        x = np.broadcast_to(np.asarray(bottom, np.float32), index.shape) - depth - w
        cdf = _mri_cdf_fast(x, w, s, lam, w_constant)
        # cdf - below, plus ``above`` where layer i is exposed, at least 0, and 0 where
        # sputtered through (in place: the same values as the expression's temporaries).
        wt = cdf - below
        np.add(wt, above, out=wt, where=index == i)
        np.maximum(wt, 0.0, out=wt)
        wt[through] = 0.0
        weights.append(wt)
        below = cdf
    return weights, w, rng_nm


class SurfaceEmitter:
    """Per-grid-pixel emission ``Y x alpha x C`` of each species on one window, at the
    depth map given (sputtered depth), with the implanted Ga folded in.

    With ``params.depth_mixing`` the composition is the layers' weighted by the MRI
    depth-resolution function (:func:`depth_weights`; yield, ionisation and mass bias
    are the weighted means, the atomic fractions the weighted sums) and the Ga
    build-up length is half the exposed matrix's own projected range.
    """

    def __init__(self, specimen: Specimen, depth_nm: np.ndarray, window, polarity: int,
                 landing_kev: float, params: SimsParameters = SimsParameters(),
                 incidence_deg: float | None = None) -> None:
        self.specimen = specimen
        self.window = window
        self.params = params
        self.polarity = 1 if polarity >= 0 else -1
        depth = np.asarray(depth_nm[window] if window is not None else depth_nm)
        self.mixed: list[tuple[object, np.ndarray]] | None = None
        inc = params.incidence_deg if incidence_deg is None else incidence_deg
        #: The beam on the relief (:func:`relief`; None: a flat specimen): emission is
        #: taken where each beam position's ray lands (parallax, shadows).
        self.relief = None
        local_inc = inc
        if params.relief:
            self.relief = relief(specimen, depth, window, inc)
            local_inc = self.relief.local_incidence_deg
        if params.depth_mixing:
            weights, _, rng_nm = depth_weights(specimen, depth, window, landing_kev, inc,
                                               params)
            self.shape = weights[0].shape
            self.mixed = [(layer, wt) for layer, wt in zip(specimen.layers, weights, strict=True)
                          if wt.max() > 1e-7]
            # The layers' weights summed in order (what np.sum over the stacked list
            # does, without stacking them).
            total = np.zeros(self.shape, np.float32)
            if self.mixed:
                total = self.mixed[0][1].copy()
                for _, wt in self.mixed[1:]:
                    total += wt
            self.present = total > 1e-6
            self._norm = np.where(self.present, 1.0 / np.maximum(total, 1e-6), 0.0
                                  ).astype(np.float32)
            buildup = (0.5 * rng_nm if params.ga_buildup_nm is None
                       else np.full(self.shape, params.ga_buildup_nm))
            buildup = np.maximum(buildup, 1e-6).astype(np.float32)
        else:
            index = specimen.layer_at_depth(depth, window)
            self.shape = index.shape
            self.masks = [(layer, index == i) for i, layer in enumerate(specimen.layers)]
            self.masks = [(layer, m) for layer, m in self.masks if m.any()]
            self.present = index >= 0
            buildup = np.float32(max(ga_buildup_nm(landing_kev, params), 1e-6))
        # The matrix's partial yield at this landing energy and incidence (decision 0041).
        self.yield_ = self._select(
            lambda layer: layer.sputter_yield(window, landing_kev, local_inc))
        f_ss = 1.0 / (1.0 + np.maximum(self.yield_, 1e-9))
        ga = f_ss * (1.0 - np.exp(-depth.astype(np.float32) / buildup))
        if self.mixed is not None:
            ga = ga * np.minimum(total, 1.0)  # the implant is in the mixed zone's atoms too
        self.ga_implanted = np.where(self.present, ga, np.float32(0.0)).astype(np.float32)
        # Atoms sputtered per ion: the matrix leaves at Y whatever Ga the surface holds,
        # the Ga with it in the surface's proportion, Y / (1 - f) in all (1 + Y at the
        # steady state: 1 Ga per ion, the mass balance; decision 0041).
        self.total_yield = (self.yield_ * total_yield_factor(self.ga_implanted)
                            ).astype(np.float32)
        self._ion: dict[str, np.ndarray] = {}
        # Per isotope, for every emission of this emitter (the collectors share them).
        self._fractions: dict[str, np.ndarray] = {}
        self._bias: dict[str, np.ndarray | None] = {}

    def _select(self, getter, *, mean: bool = True, log: bool = False) -> np.ndarray:
        """Per-pixel value of ``getter(layer)`` for the layer exposed there (0 in holes).

        (Like :meth:`Specimen.surface` but float32 with the layer masks computed once:
        this is the per-frame cost of a map.) With depth mixing: the MRI-weighted mean
        (``mean``; log-linear with ``log``) or sum of the layers' values.
        """
        out = np.zeros(self.shape, np.float32)
        if self.mixed is not None:
            for layer, wt in self.mixed:
                value = np.asarray(getter(layer), dtype=np.float32)
                out += wt * (np.log(np.maximum(value, 1e-30)) if log else value)
            if mean:
                out *= self._norm
            if log:
                out = np.where(self.present, np.exp(out), 0.0).astype(np.float32)
            return out
        for layer, mask in self.masks:
            value = np.asarray(getter(layer), dtype=np.float32)
            np.copyto(out, np.broadcast_to(value, self.shape), where=mask)
        return out

    def ionisation(self, symbol: str) -> np.ndarray:
        if symbol not in self._ion:
            pol, win = self.polarity, self.window
            self._ion[symbol] = self._select(
                lambda layer: layer.ionisation(symbol, pol, win), log=True)
        return self._ion[symbol]

    def fraction(self, isotope: str) -> np.ndarray:
        """Atomic fraction of an isotope at the surface, implanted Ga included."""
        symbol, _ = parse_species(isotope)
        win = self.window
        native = self._select(lambda layer: layer.species_fraction(isotope, win), mean=False)
        native *= 1.0 - self.ga_implanted
        if symbol == "Ga":
            native += self.ga_implanted * np.float32(natural_abundances("Ga")[isotope])
        return native

    def mass_bias(self, isotope: str) -> np.ndarray | None:
        """Per-pixel IMF factor of an isotope in the exposed matrix (None: none)."""
        p = self.params
        if not p.imf_beta and p.imf_beta_default == 0.0:
            return None
        win = self.window
        return self._select(lambda layer: imf_factor(
            isotope, layer._mix(win, lambda m: imf_beta(m.name, p))))

    def emission(self, weights: dict[str, float]) -> np.ndarray:
        """Sum over emission keys of weight x Y x alpha x C x IMF per primary ion of the
        beam position at each grid pixel (float32): on a flat specimen the pixel's own;
        with relief that of the surface its ray lands on (parallax; every position's
        ion lands once, none in a shadow: :class:`Relief`). A molecular key ("6Li*7Li",
        "51V*16O") emits in proportion to the product of its atoms' surface fractions,
        ionised like its first atom (its formation yield is in the weight; decision
        0039)."""
        total = np.zeros(self.shape, np.float32)
        fractions = self._fractions

        def frac(iso: str) -> np.ndarray:
            if iso not in fractions:
                fractions[iso] = self.fraction(iso)
            return fractions[iso]

        for key, w in weights.items():
            if MOLECULE_SEP in key:
                a, b = key.split(MOLECULE_SEP)
                symbol, _ = parse_species(a)
                total += np.float32(w) * self.ionisation(symbol) * frac(a) * frac(b)
                continue
            symbol, _ = parse_species(key)
            term = np.float32(w) * self.ionisation(symbol) * frac(key)
            if key not in self._bias:
                self._bias[key] = self.mass_bias(key)
            bias = self._bias[key]
            total += term if bias is None else term * bias
        total *= self.total_yield
        return total if self.relief is None else self.relief.gather(total)


def _counted(emission: np.ndarray, params: SimsParameters) -> np.ndarray:
    """What a collector counts of ``emission`` where each primary ion lands: thinned by
    quasi-simultaneous arrival when ``params.qsa`` (decision 0043)."""
    return qsa_thinned_emission(emission, params.transmission) if params.qsa else emission


def footprint_sigma_nm(geometry: ScanGeometry, probe_fwhm_nm: float,
                       params: SimsParameters = SimsParameters()) -> tuple[float, float]:
    """(sigma_y, sigma_x) in nm of the beam footprint on the specimen.

    Beam-normal plane: probe Gaussian plus the pixel-area average (a box of one pixel
    has variance p^2/12), isotropic, so scan rotation does not change it. On the
    specimen it is stretched by 1/cos(incidence) along y; the interaction spread
    adds isotropically.
    """
    s_beam2 = (probe_fwhm_nm * FWHM_TO_SIGMA) ** 2 + geometry.pixel_nm**2 / 12.0
    s_iv2 = (params.interaction_fwhm_nm * FWHM_TO_SIGMA) ** 2
    return (math.sqrt(s_beam2 * geometry.stretch**2 + s_iv2), math.sqrt(s_beam2 + s_iv2))


def halo_sigma_nm(geometry: ScanGeometry,
                  params: SimsParameters = SimsParameters()) -> tuple[float, float] | None:
    """(sigma_y, sigma_x) in nm of the probe halo's footprint on the specimen (``None``
    without a halo): the halo's Gaussian through :func:`footprint_sigma_nm`."""
    if params.halo_fraction <= 0.0 or params.halo_fwhm_nm <= 0.0:
        return None
    return footprint_sigma_nm(geometry, params.halo_fwhm_nm, params)


def _linear_nodes(n_out: int, n_in: int, k_in: int) -> tuple[np.ndarray, np.ndarray]:
    """(lower node, weight of the upper one) of linear interpolation from the nodes of a
    grid coarsened by ``k_in`` to the ``n_out`` pixels of the grid it coarsens (node i
    sits at pixel i k + (k - 1) / 2; held at the edge nodes)."""
    pos = np.clip((np.arange(n_out) - (k_in - 1) / 2.0) / k_in, 0.0, n_in - 1.0)
    lo = np.minimum(np.floor(pos).astype(np.intp), max(n_in - 2, 0))
    return lo, (pos - lo).astype(np.float32)


def _upsample(coarse: np.ndarray, shape: tuple[int, int], k: int) -> np.ndarray:
    """Bilinear interpolation of a grid coarsened by ``k`` back onto ``shape``, by
    gathers (a BLAS product's threads spun on and slowed the rest of the frame on a
    busy two-core machine)."""
    out = coarse.astype(np.float32, copy=False)
    for axis, n in enumerate(shape):
        m = out.shape[axis]
        lo, w = _linear_nodes(n, m, k)
        hi = np.minimum(lo + 1, m - 1)
        w = w[:, None] if axis == 0 else w[None, :]
        a, b = np.take(out, lo, axis=axis), np.take(out, hi, axis=axis)
        out = a + (b - a) * w
    return out


def _halo_blur(core: np.ndarray, k: int, core_sigma_px: tuple[float, float],
               halo_sigma_px: tuple[float, float], fraction: float) -> np.ndarray:
    """``(1 - fraction) core + fraction halo`` on the core's grid of blocks ``k``.

    The halo is Gaussian, so ``halo * emission = G(sqrt(h^2 - c^2)) * (core * emission)``:
    it is blurred from the core's blurred map, on a grid coarsened once more for its
    own width (4 blocks per sigma), and interpolated back: no second pass over the fine
    grid (a few ms where a full-grid blur of hundreds of taps would cost seconds; a
    frame 4-8 % dearer than without a halo). Beyond the plan's window (the core's margin)
    the emission is taken as its mirror image: widening the window by the halo's reach
    made a small field's frame plan 2-3 times as costly.
    """
    rest = [math.sqrt(max(h * h - c * c, 0.0)) / k
            for h, c in zip(halo_sigma_px, core_sigma_px, strict=True)]
    m = block_size(*rest)
    halo = _upsample(_block_blur(core, rest[0], rest[1], m, mode="reflect"), core.shape, m)
    halo *= np.float32(fraction)
    halo += core * np.float32(1.0 - fraction)
    return halo


def _blur(image: np.ndarray, sigma_rows_px: float, sigma_cols_px: float,
          mode: str = "constant") -> np.ndarray:
    return ndimage.gaussian_filter(image, (sigma_rows_px, sigma_cols_px), mode=mode,
                                   cval=0.0, truncate=3.5)


#: A footprint this many grid pixels wide (sigma) or more is blurred on a grid coarsened
#: by sigma / BLOCK_PER_SIGMA: the block average adds a variance of k^2/12 (taken off
#: the filter's), and linear sampling between coarse nodes adds at most k^2/6, under
#: 1 % of the footprint's variance at 4 blocks per sigma.
BLOCK_PER_SIGMA = 4.0


def block_size(sigma_rows_px: float, sigma_cols_px: float) -> int:
    """Coarsening factor of the emission grid for a footprint of these sigmas."""
    return max(1, int(min(sigma_rows_px, sigma_cols_px) / BLOCK_PER_SIGMA))


#: Up to this many terms numpy's float32 sum along a short last axis adds them one by
#: one, left to right (checked bit for bit; from eight on, its pairwise summation
#: keeps eight partial sums).
_SEQUENTIAL_SUM_MAX = 7


def _sum_last(blocks: np.ndarray, k: int) -> np.ndarray:
    """``blocks.sum(axis=-1, dtype=np.float32)`` of a float32 array whose last axis has
    ``k`` terms: for ``k`` <= :data:`_SEQUENTIAL_SUM_MAX` as ``k - 1`` strided
    additions in numpy's order (the same values, bit for bit, ~10x faster than the
    reduction's short inner loops over a full grid), else numpy's own."""
    if k > _SEQUENTIAL_SUM_MAX or blocks.dtype != np.float32:
        return blocks.sum(axis=-1, dtype=np.float32)
    out = blocks[..., 0].copy()
    for j in range(1, k):
        out += blocks[..., j]
    return out


def _block_blur(image: np.ndarray, sigma_rows_px: float, sigma_cols_px: float,
                k: int, mode: str = "constant") -> np.ndarray:
    """Gaussian blur of ``image`` on a grid ``k`` times coarser (k = 1: the plain blur).

    Why: a map's footprint is often tens of grid pixels wide, and the blur of the whole
    field (millions of grid pixels, kernels of hundreds of taps) was the cost of a frame
    plan: 2 s for a 64 x 64 map of 4 um. Node (i, j) of the result is the blurred
    block mean of grid pixels [i k, (i+1) k) x [j k, (j+1) k).
    """
    if k <= 1:
        return _blur(image, sigma_rows_px, sigma_cols_px, mode)
    ny, nx = image.shape
    pad = ((0, (-ny) % k), (0, (-nx) % k))
    shape = ((ny + pad[0][1]) // k, k, (nx + pad[1][1]) // k, k)
    padded = np.pad(image, pad) if pad[0][1] or pad[1][1] else image
    # Two contiguous reductions are several times faster than one over axes (1, 3).
    coarse = _sum_last(padded.reshape(shape), k).sum(axis=1)
    # A partial block at the far edges averages only the grid pixels it holds.
    rows = np.minimum(k, ny - k * np.arange(shape[0]))
    cols = np.minimum(k, nx - k * np.arange(shape[2]))
    coarse /= np.outer(rows, cols).astype(np.float32)
    box = (k * k - 1) / 12.0
    return _blur(coarse, math.sqrt(max(sigma_rows_px**2 - box, 0.0)) / k,
                 math.sqrt(max(sigma_cols_px**2 - box, 0.0)) / k, mode)


# ======================================================================================
# A frame: precomputed once, rendered line by line
# ======================================================================================
@dataclass
class FramePlan:
    """Everything a map needs, snapshot at the frame start; lines are rendered lazily.

    Parameters
    ----------
    specimen
        The virtual specimen.
    geometry
        The raster on the specimen.
    collector_masses_u
        True masses (u) at the collectors.
    current_pa, dwell_s, probe_fwhm_nm, landing_kev
        Column state.
    polarity
        +1 or -1 (sign of the bias).
    ready
        SIMS conditions met; if not, only dark counts.
    depth_nm
        Per-grid-pixel sputtered depth (read, not modified).
    elapsed_s
        Drift clock at the frame start (s since the drift began).
    drift_slack_s
        The grid window covers the drift of this much longer than the frame, so that
        a plan prepared ahead of time stays valid for a while (see :meth:`retarget`).
    beam_noise, frame_start_s
        The probe current's fluctuation (:class:`BeamCurrentNoise`, ``None``: a steady
        current) and the instrument time (s) of the frame's first pixel: each pixel's
        true counts are scaled by the current factor at its time.
    """

    specimen: Specimen
    geometry: ScanGeometry
    collector_masses_u: tuple[float, ...]
    current_pa: float
    dwell_s: float
    probe_fwhm_nm: float
    landing_kev: float
    polarity: int
    ready: bool
    depth_nm: np.ndarray
    elapsed_s: float = 0.0
    params: SimsParameters = field(default_factory=SimsParameters)
    drift_slack_s: float = 0.0
    species: tuple[str, ...] | None = None
    window: object = None
    blurred: list[np.ndarray] = field(default_factory=list)
    weights: list[dict[str, float]] = field(default_factory=list)
    # Set by _prepare with ``blurred``; fields, so that retarget (dataclasses.replace)
    # keeps them: a plan that lost them read its coarse maps as the full grid.
    block: int = 1
    blurred_shape: tuple[int, ...] | None = None
    beam_noise: BeamCurrentNoise | None = None
    frame_start_s: float = 0.0

    def __post_init__(self) -> None:
        if self.species is None:
            self.species = candidate_species(self.specimen)
        self.ions_per_pixel = self.current_pa * 1e-12 * self.dwell_s / ELEMENTARY_CHARGE_C
        self.line_time_s = self.geometry.nx * self.dwell_s
        self.frame_time_s = self.line_time_s * self.geometry.ny
        self.weights = [species_weights(m, self.species, params=self.params)
                        for m in self.collector_masses_u]
        if not self.blurred:
            self._prepare()

    def retarget(self, **changes) -> FramePlan:
        """The same prepared footprint with other current, dwell, readiness, drift clock
        or detector parameters (the blurred emission maps are reused)."""
        return replace(self, **changes)

    def _prepare(self) -> None:
        spec, geo = self.specimen, self.geometry
        sy, sx = footprint_sigma_nm(geo, self.probe_fwhm_nm, self.params)
        halo = halo_sigma_nm(geo, self.params)
        drift_total = drift_offset_nm(
            [self.elapsed_s, self.elapsed_s + self.frame_time_s + self.drift_slack_s + 1.0],
            self.params)
        margin = 4.0 * max(sy, sx) + 2 * spec.pixel_nm
        xs, ys = geo.corners_nm(margin_nm=margin)
        xs = np.concatenate([xs - drift_total[0][0], xs - drift_total[0][1]])
        ys = np.concatenate([ys - drift_total[1][0], ys - drift_total[1][1]])
        # With relief a beam position's ray lands up to this far along y from it.
        reach = parallax_margin_nm(spec, geo.incidence_deg, self.params)
        ys = np.concatenate([ys - reach, ys + reach])
        xs = np.concatenate([xs, xs])
        self.window = spec.window_for(xs, ys, margin_px=2)
        emitter = SurfaceEmitter(spec, self.depth_nm, self.window, self.polarity,
                                 self.landing_kev, self.params, geo.incidence_deg)
        self.blurred = []
        sy_px, sx_px = sy / spec.pixel_nm, sx / spec.pixel_nm
        self.block = block_size(sy_px, sx_px)
        self.blurred_shape = None
        cache: dict[tuple, np.ndarray] = {}
        for w in self.weights:
            key = tuple(sorted(w.items()))
            if key not in cache:
                if not w:
                    cache[key] = None
                else:
                    cache[key] = _block_blur(_counted(emitter.emission(w), self.params),
                                             sy_px, sx_px, self.block)
                    if halo is not None:
                        cache[key] = _halo_blur(
                            cache[key], self.block, (sy_px, sx_px),
                            (halo[0] / spec.pixel_nm, halo[1] / spec.pixel_nm),
                            self.params.halo_fraction)
                    self.blurred_shape = cache[key].shape
            self.blurred.append(cache[key])

    def line_times(self, rows: np.ndarray) -> np.ndarray:
        """Time (s after the frame start) at the middle of each row."""
        return (np.asarray(rows) + 0.5) * self.line_time_s

    def specimen_coords(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(r0, r1)[:, None]
        cols = np.arange(self.geometry.nx)[None, :]
        u, v = self.geometry.beam_coords(rows, cols)
        dx, dy = drift_offset_nm(self.elapsed_s + self.line_times(rows), self.params)
        return self.geometry.to_specimen(u, v, dx, dy)

    def expected_lines(self, r0: int, r1: int) -> list[np.ndarray]:
        """Expected true secondary-ion counts (no dark, no dead time) for rows r0..r1-1,
        one (r1 - r0, nx) array per collector."""
        shape = (r1 - r0, self.geometry.nx)
        if not self.ready:
            return [np.zeros(shape) for _ in self.collector_masses_u]
        x, y = self.specimen_coords(r0, r1)
        gr, gc = self.specimen.to_index(x, y)
        coords = np.array([gr - self.window[0].start, gc - self.window[1].start])
        k = getattr(self, "block", 1)
        inside = None
        if k > 1 and self.blurred_shape is not None:
            # Grid pixel g lies at (g - (k - 1) / 2) / k on the grid of blocks; the half
            # block at each edge is held at the edge node, and outside the window (off
            # the specimen) the signal is 0, as on the full grid.
            nodes = np.array(self.blurred_shape, float)[:, None, None]
            n = np.array([self.window[0].stop - self.window[0].start,
                          self.window[1].stop - self.window[1].start], float)[:, None, None]
            inside = ((coords >= 0) & (coords <= n - 1)).all(axis=0)
            coords = np.clip((coords - (k - 1) / 2.0) / k, 0.0, nodes - 1)
        out = []
        scale = self.ions_per_pixel * self.params.transmission
        current = self.current_factor(r0, r1)
        done: dict[int, np.ndarray] = {}
        for b in self.blurred:
            if b is None:
                out.append(np.zeros(shape))
                continue
            if id(b) not in done:
                done[id(b)] = scale * ndimage.map_coordinates(
                    b, coords, order=1, mode="constant", cval=0.0, prefilter=False)
                if inside is not None:
                    done[id(b)] *= inside
                if current is not None:
                    done[id(b)] *= current
            out.append(done[id(b)])
        if has_collector_gain(self.params):
            # One yield per line and collector (it drifts over minutes, a line takes ms).
            t = (self.params.gain_clock_s + self.elapsed_s
                 + self.line_times(np.arange(r0, r1)))[:, None]
            out = [e * collector_gain(i, t, self.params) for i, e in enumerate(out)]
        return out

    def current_factor(self, r0: int, r1: int) -> np.ndarray | None:
        """The probe current's factor at each pixel of rows r0..r1-1 (``None`` without
        :attr:`beam_noise`): sampled every :data:`CURRENT_SAMPLE_S` along each line and
        interpolated (its fast part is correlated over ~0.3 s)."""
        if self.beam_noise is None:
            return None
        nx, dwell = self.geometry.nx, self.dwell_s
        n = min(nx, int(math.ceil(nx * dwell / CURRENT_SAMPLE_S)) + 1)
        cols = np.linspace(0.0, nx - 1.0, max(n, 2))
        rows = np.arange(r0, r1, dtype=np.float64)[:, None]
        coarse = self.beam_noise.factor(self.frame_start_s + (rows * nx + cols) * dwell)
        if n >= nx:
            return coarse if coarse.shape[1] == nx else coarse[:, :nx]
        every = np.arange(nx, dtype=np.float64)
        return np.stack([np.interp(every, cols, line) for line in coarse])

    def render_lines(self, r0: int, r1: int, rng: np.random.Generator | None) -> list[np.ndarray]:
        """Detected counts (int32; float expectation if ``rng`` is None) for rows r0..r1-1.

        Drawn row by row, collector by collector: a frame's counts are the same however
        its rows are grouped into calls. The spectrometer renders more rows per call at
        a higher time scale (it publishes at most 25 times a wall second), and a draw
        per call made the noise of a seeded map depend on the time scale.
        """
        expected = self.expected_lines(r0, r1)
        if rng is None:
            return [detect(e, self.dwell_s, self.params, None) for e in expected]
        out = [np.empty(e.shape, np.int32) for e in expected]
        for row in range(r1 - r0):
            for counts, e in zip(out, expected, strict=True):
                counts[row] = detect(e[row], self.dwell_s, self.params, rng)
        return out

    def render(self, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """The whole frame at once, collector by collector (the scored analysis tests'
        synthetic maps; the spectrometer renders by lines, :meth:`render_lines`)."""
        return [detect(e, self.dwell_s, self.params, rng)
                for e in self.expected_lines(0, self.geometry.ny)]


# ======================================================================================
# Sputtering
# ======================================================================================
def sputter(specimen: Specimen, depth_nm: np.ndarray, geometry: ScanGeometry,
            ions_per_pixel: float, rows_done: int | None = None, elapsed_s: float = 0.0,
            params: SimsParameters = SimsParameters(), landing_kev: float = 25.5) -> None:
    """Advance ``depth_nm`` (in place) by the dose of a (partial) raster.

    The dose is uniform over the rastered footprint (ions per pixel over the pixel's
    area on the specimen); depth += dose x Y / n with the local yield and atomic
    density of the layer exposed at the start of the raster (with
    ``params.depth_mixing``: their MRI-weighted means, :func:`depth_weights`).
    """
    ny = geometry.ny if rows_done is None else int(rows_done)
    if ny <= 0 or ions_per_pixel <= 0:
        return
    dx, dy = drift_offset_nm(elapsed_s, params)
    xs, ys = geometry.corners_nm(margin_nm=2 * specimen.pixel_nm)
    reach = parallax_margin_nm(specimen, geometry.incidence_deg, params)
    window = specimen.window_for(np.concatenate([xs, xs]) - dx,
                                 np.concatenate([ys - reach, ys + reach]) - dy, margin_px=1)
    rows = specimen.y_nm()[window[0]][:, None]
    cols = specimen.x_nm()[window[1]][None, :]
    local = depth_nm[window]
    inc = geometry.incidence_deg
    factor = 1.0
    if params.relief:
        # A lit pixel takes the ions of the beam position whose ray lands on it.
        rel = relief(specimen, local, window, geometry.incidence_deg)
        factor, inc = rel.dose_factor, rel.local_incidence_deg
        rows = rows + rel.nominal_shift_nm
    u, v = geometry.from_specimen(cols + dx, rows + dy)
    hu, hv = geometry.nx * geometry.pixel_nm / 2, geometry.ny * geometry.pixel_nm / 2
    inside = (np.abs(u) <= hu) & (v >= -hv) & (v <= -hv + ny * geometry.pixel_nm)
    if not inside.any():
        return
    dose = ions_per_pixel / geometry.pixel_area_nm2  # ions / nm^2
    if params.depth_mixing:
        weights, _, _ = depth_weights(specimen, local, window, landing_kev,
                                      geometry.incidence_deg, params)
        values = [(np.asarray(layer.sputter_yield(window, landing_kev, inc), float),
                   np.asarray(layer.atomic_density_per_nm3(window), float))
                  for layer in specimen.layers]
        # Per pixel (per tile of constant arguments where it can, :func:`_tilewise`):
        # the per-layer maps are its arguments, the uniform values constants.
        shape = local.shape
        maps = [np.broadcast_to(a, shape) for a in weights]
        maps += [np.broadcast_to(v, shape) for pair in values for v in pair if np.ndim(v)]
        maps += [inside] + ([np.broadcast_to(factor, shape)] if np.ndim(factor) else [])

        def advance(*args):
            args = list(args)
            wts = [args.pop(0) for _ in weights]
            y = np.zeros(wts[0].shape)
            n = np.zeros(wts[0].shape)
            total = np.zeros(wts[0].shape)
            for wt, (y_l, n_l) in zip(wts, values, strict=True):
                y += wt * (args.pop(0) if np.ndim(y_l) else y_l)
                n += wt * (args.pop(0) if np.ndim(n_l) else n_l)
                total += wt
            into = args.pop(0)
            f = args.pop(0) if np.ndim(factor) else factor
            # Mean over the mixed matrix; 0 where sputtered through (total 0).
            y = np.divide(y, total, out=np.zeros_like(y), where=total > 1e-6)
            n = np.divide(n, total, out=np.zeros_like(n), where=total > 1e-6)
            step = np.divide(dose * y * f, n, out=np.zeros_like(y), where=n > 0)
            return np.where(into, step, 0.0).astype(local.dtype)

        local += _tilewise(advance, tuple(maps))
        return
    surf = specimen.surface(local, window)
    y = surf.sputter_yield(landing_kev, inc)
    n = surf.atomic_density_per_nm3()
    step = np.divide(dose * y * factor, n, out=np.zeros_like(y), where=n > 0)
    # Below the last layer nothing is left to sputter (step stays 0 there).
    local += np.where(inside, step, 0.0).astype(local.dtype)


def sputter_dose(specimen: Specimen, depth_nm: np.ndarray, geometry: ScanGeometry,
                 current_pa: float, seconds: float, *, spot: bool, probe_fwhm_nm: float,
                 params: SimsParameters = SimsParameters(), landing_kev: float = 25.5) -> None:
    """Advance ``depth_nm`` (in place) by ``seconds`` of beam on a counting footprint.

    A parked beam (``spot``, ``geometry`` centred on it) digs a hole of about the probe
    size with the core's share of the current (the halo's few % spread over ~10^2 times
    the area dig ~10^-4 of the hole's depth: left out); a raster spreads the dose
    uniformly over its pixels (the halo's spill over the raster's edge is left out).
    """
    ions = current_pa * 1e-12 * seconds / ELEMENTARY_CHARGE_C
    if spot:
        ions *= 1.0 - max(params.halo_fraction, 0.0)
        size_um = max(probe_fwhm_nm, 1.0) / 1000.0
        geometry = replace(geometry, nx=1, ny=1, fov_um=size_um)
        sputter(specimen, depth_nm, geometry, ions, params=params, landing_kev=landing_kev)
    else:
        sputter(specimen, depth_nm, geometry, ions / (geometry.nx * geometry.ny),
                params=params, landing_kev=landing_kev)


# ======================================================================================
# Counting and mass scans: signal from the beam footprint
# ======================================================================================
def _footprint_means(specimen: Specimen, depth_nm: np.ndarray, window, weight: np.ndarray,
                     keys: tuple[str, ...], polarity: int, landing_kev: float,
                     params: SimsParameters, incidence_deg: float) -> dict[str, float] | None:
    """Each key's counted emission averaged with ``weight`` over ``window`` (None if the
    weight is nowhere positive)."""
    total = weight.sum()
    if total <= 0:
        return None
    emitter = SurfaceEmitter(specimen, depth_nm, window, polarity, landing_kev, params,
                             incidence_deg)
    # Per pixel, then averaged: a molecule's emission is a product of fractions, and
    # quasi-simultaneous arrival acts where each primary ion lands.
    return {key: float((_counted(emitter.emission({key: 1.0}), params) * weight).sum()
                       / total) for key in keys}


def halo_step_px(specimen: Specimen, sigma_nm: float) -> int:
    """Grid pixels between the samples of the halo's share of a count."""
    return max(1, int(sigma_nm / (8.0 * specimen.pixel_nm)))


def _halo_window(specimen: Specimen, xs: np.ndarray, ys: np.ndarray, sigma_nm: float):
    """A grid window over ``xs``, ``ys`` sampled every :func:`halo_step_px` pixels (an
    eighth of the halo's sigma: the halo is ~10^2 times wider than a grid pixel; a sharp
    edge is seen within half a step, 7 nm at 300 nm FWHM, by the halo's few %)."""
    step = halo_step_px(specimen, sigma_nm)
    rows, cols = specimen.window_for(xs, ys, margin_px=2)
    window = (slice(rows.start, rows.stop, step), slice(cols.start, cols.stop, step))
    return window, specimen.y_nm()[window[0]][:, None], specimen.x_nm()[window[1]][None, :]


def footprint_emission(specimen: Specimen, depth_nm: np.ndarray, geometry: ScanGeometry,
                       species: tuple[str, ...], polarity: int, landing_kev: float,
                       params: SimsParameters = SimsParameters(),
                       spot: bool = False, probe_fwhm_nm: float = 10.0,
                       elapsed_s: float = 0.0) -> dict[str, float]:
    """Mean emission (Y x alpha x C) of each isotope, and of each dimer and oxide they
    form (:func:`molecule_keys`), over the rastered area (or under the spot at the
    geometry's centre): multiply by ions x transmission for counts. Each is what a
    collector counts of it (quasi-simultaneous arrival, decision 0043), and the probe's
    halo (decision 0040) brings its share ``halo_fraction`` from around the spot, or
    from the raster blurred by the halo's Gaussian."""
    dx, dy = drift_offset_nm(elapsed_s, params)
    keys = tuple(species) + molecule_keys(tuple(species), params.dimer_yields,
                                          params.oxide_yields)
    # With relief the rays land up to this far along y from their beam positions.
    reach = np.array([-1.0, 1.0]) * parallax_margin_nm(specimen, geometry.incidence_deg,
                                                       params)
    if spot:
        sy, sx = footprint_sigma_nm(replace(geometry, nx=1, fov_um=1e-6), probe_fwhm_nm,
                                    params)
        xs = np.array([-3 * sx, 3 * sx]) + geometry.centre_x_nm - dx
        ys = np.array([-3 * sy, 3 * sy]) + reach + geometry.centre_y_nm - dy
        window = specimen.window_for(xs, ys, margin_px=2)
        rows = specimen.y_nm()[window[0]][:, None]
        cols = specimen.x_nm()[window[1]][None, :]
        weight = np.exp(-0.5 * (((cols - geometry.centre_x_nm + dx) / sx) ** 2
                                + ((rows - geometry.centre_y_nm + dy) / sy) ** 2))
    else:
        xs, ys = geometry.corners_nm()
        window = specimen.window_for(np.concatenate([xs, xs]) - dx,
                                     np.concatenate([ys + reach[0], ys + reach[1]]) - dy,
                                     margin_px=1)
        rows = specimen.y_nm()[window[0]][:, None]
        cols = specimen.x_nm()[window[1]][None, :]
        u, v = geometry.from_specimen(cols + dx, rows + dy)
        hu, hv = geometry.nx * geometry.pixel_nm / 2, geometry.ny * geometry.pixel_nm / 2
        weight = ((np.abs(u) <= hu) & (np.abs(v) <= hv)).astype(np.float64)
    out = _footprint_means(specimen, depth_nm, window, weight, keys, polarity, landing_kev,
                           params, geometry.incidence_deg)
    if out is None:
        return dict.fromkeys(keys, 0.0)
    halo = halo_sigma_nm(replace(geometry, nx=1, fov_um=1e-6) if spot else geometry, params)
    if halo is None:
        return out
    hy, hx = halo
    if spot:
        xs = np.array([-3 * hx, 3 * hx]) + geometry.centre_x_nm - dx
        ys = np.array([-3 * hy, 3 * hy]) + reach + geometry.centre_y_nm - dy
        h_window, rows, cols = _halo_window(specimen, xs, ys, min(hx, hy))
        h_weight = np.exp(-0.5 * (((cols - geometry.centre_x_nm + dx) / hx) ** 2
                                  + ((rows - geometry.centre_y_nm + dy) / hy) ** 2))
    else:
        # The raster's box convolved with the halo's Gaussian, in the beam-normal plane
        # (where the halo is round: its sigma there is the specimen's x one).
        xs, ys = geometry.corners_nm(margin_nm=3 * hx)
        h_window, rows, cols = _halo_window(specimen, np.concatenate([xs, xs]) - dx,
                                            np.concatenate([ys + reach[0], ys + reach[1]])
                                            - dy, hx)
        u, v = geometry.from_specimen(cols + dx, rows + dy)
        hu, hv = geometry.nx * geometry.pixel_nm / 2, geometry.ny * geometry.pixel_nm / 2
        r2 = math.sqrt(2.0) * hx
        h_weight = ((special.erf((hu - u) / r2) + special.erf((hu + u) / r2))
                    * (special.erf((hv - v) / r2) + special.erf((hv + v) / r2)))
    halo_out = _footprint_means(specimen, depth_nm, h_window, h_weight, keys, polarity,
                                landing_kev, params, geometry.incidence_deg)
    if halo_out is None:
        return out
    f = params.halo_fraction
    return {k: (1.0 - f) * out[k] + f * halo_out[k] for k in keys}


def spectrum_expectation(true_masses_u: np.ndarray, emission: dict[str, float],
                         ions_per_s: float, dwell_s: float,
                         params: SimsParameters = SimsParameters()) -> np.ndarray:
    """Expected true counts per step of a mass scan on the axial detector."""
    masses = np.asarray(true_masses_u, dtype=float)
    counts = np.zeros_like(masses)
    scale = ions_per_s * dwell_s * params.transmission
    for _label, key, mass, factor in ion_table(tuple(emission), params, molecules=False):
        e = emission[key] * factor
        if e <= 0:
            continue
        near = np.abs(masses - mass) < 1.0
        if near.any():
            counts[near] += scale * e * axial_peak(masses[near], mass, params)
    return counts


def mass_scan_fields(setpoints_t: np.ndarray, params: SimsParameters,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(gap field, Hall reading) at each step of a mass scan swept up through the
    Hall setpoints ``setpoints_t`` (approached from below: the gap field lags each
    setpoint by the hysteresis; each reading has its noise)."""
    gap = setpoints_t - params.hysteresis_t
    hall = gap + params.hall_offset_t + rng.normal(0.0, params.hall_noise_t, len(gap))
    return gap, hall


def mass_scan_expectation(true_masses_u: np.ndarray, emission_start: dict[str, float],
                          emission_end: dict[str, float], ions_per_s: float, dwell_s: float,
                          params: SimsParameters = SimsParameters()) -> np.ndarray:
    """Expected true counts at each step of a mass scan on the axial detector, the
    emission changing linearly from ``emission_start`` (first step) to ``emission_end``
    (last step): the scan sputters the surface it reads."""
    npts = len(true_masses_u)
    frac = np.linspace(0.0, 1.0, npts)
    expected = np.zeros(npts)
    for iso in emission_start:
        part = spectrum_expectation(true_masses_u, {iso: 1.0}, ions_per_s, dwell_s, params)
        expected += part * (emission_start[iso]
                            + (emission_end[iso] - emission_start[iso]) * frac)
    return expected


def collector_expectation(true_masses_u, emission: dict[str, float], ions_per_s: float,
                          time_s: float, params: SimsParameters = SimsParameters()) -> np.ndarray:
    """Expected true counts on each collector (true masses) in ``time_s``, with each
    collector's yield at the middle of the count (``params.gain_clock_s`` at its start)."""
    out = []
    scale = ions_per_s * time_s * params.transmission
    t_mid = params.gain_clock_s + 0.5 * time_s
    isotopes = tuple(k for k in emission if MOLECULE_SEP not in k)
    for i, m in enumerate(np.atleast_1d(true_masses_u)):
        # The molecules' emissions are in ``emission`` (footprint_emission) or absent.
        w = species_weights(float(m), isotopes, params=params)
        w = {k: v for k, v in w.items() if k in emission}
        out.append(scale * sum(emission[k] * v for k, v in w.items())
                   * float(collector_gain(i, t_mid, params)))
    return np.array(out)


__all__ = [
    "DEAD_TIME_SPREAD_S",
    "NOMINAL_DEAD_TIME_S",
    "BeamCurrentNoise",
    "FramePlan",
    "Magnet",
    "ScanGeometry",
    "SimsConditions",
    "SimsParameters",
    "SurfaceEmitter",
    "axial_peak",
    "calibrated_mass",
    "candidate_species",
    "collector_acceptance",
    "collector_expectation",
    "collector_gain",
    "dead_time_correct",
    "dead_time_rate",
    "detect",
    "drift_offset_nm",
    "extraction_voltage",
    "field_for_calibrated_mass",
    "fit_calibration",
    "flat_top",
    "footprint_emission",
    "footprint_sigma_nm",
    "halo_sigma_nm",
    "gap_field_for_mass",
    "imf_beta",
    "imf_factor",
    "ion_table",
    "mass_bias_parameters",
    "mass_for_gap_field",
    "mass_scan_expectation",
    "mass_scan_fields",
    "molecule_keys",
    "primary_ion_rate",
    "published_cal_a",
    "Relief",
    "parallax_margin_nm",
    "reference_height_nm",
    "relief",
    "relief_dose",
    "reference_cal_a",
    "spectrum_expectation",
    "sputter",
    "sputter_dose",
    "species_weights",
    "starting_cal_a",
    "true_cal_a",
    "true_dead_time_s",
]
