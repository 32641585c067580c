"""Optics of the Ga+ focused-ion-beam column: beam currents, probe size, landing energy.

The column of an FEI Magnum-class FIB (numbers: ``../shared/reference/instrument.md``):
ten beam-defining apertures from 1 pA to 20 nA (:data:`APERTURES`), a probe whose
diameter follows the current and the energy (:func:`probe_diameter_nm`), the landing
energy of an ion on a biased holder (:func:`landing_energy_kev`) and the regulated
emission of the liquid-metal ion source (:func:`source_emission_ua`), the probe's focus
in the holder bias's immersion lens (:func:`immersion_focus_shift_um`,
:func:`defocus_um`, :func:`probe_at_specimen_nm`; decision 0044) and the raster
the deflectors really write for a nominal field and rotation (:func:`true_raster`). The column IOC
(:mod:`temsims.ioc.column`) publishes these; the mass spectrometer counts with them.
"""

from __future__ import annotations

import math
import random

import numpy as np

from temsims.constants import SIMS_INCIDENCE_DEG, extraction_incidence_deg

#: Aperture label -> nominal beam current (pA) at the sample, FEI Magnum-class strip.
APERTURES: dict[str, float] = {
    "1 pA": 1.0,
    "10 pA": 10.0,
    "30 pA": 30.0,
    "50 pA": 50.0,
    "100 pA": 100.0,
    "300 pA": 300.0,
    "1 nA": 1000.0,
    "3 nA": 3000.0,
    "7 nA": 7000.0,
    "20 nA": 20000.0,
}
#: Regulated emission current of the Ga liquid-metal ion source (uA) and its jitter.
EMISSION_UA = 2.2
EMISSION_JITTER = 0.01


def probe_diameter_nm(
    current_pa: float,
    energy_kv: float,
    *,
    d0_nm: float = 7.0,
    i0_pa: float = 1.0,
    e0_kv: float = 30.0,
    current_exponent: float = 3 / 8,
    energy_exponent: float = 3 / 4,
) -> float:
    """Probe diameter (FWHM, nm) from the aberration-limited power law.

    ``d = d0 * (I / I0) ** current_exponent * (E0 / E) ** energy_exponent``

    The current exponent 3/8 is that of a spherical-aberration-limited probe at its
    optimum aperture angle; the energy exponent 3/4 that of a chromatic-aberration-
    limited probe (energy spread fixed, reduced brightness proportional to E).
    Anchored at the Magnum-class figure of ~7 nm at 30 kV and 1 pA (estimate:
    ``../shared/reference/instrument.md``); 20 nA at 30 kV gives ~290 nm, 1 pA at
    5 kV ~27 nm. ``energy_kv`` is the column voltage: this is the probe in focus;
    a biased holder's immersion lens moves the focus (:func:`defocus_um`,
    :func:`probe_at_specimen_nm`, decision 0044).
    """
    return d0_nm * (current_pa / i0_pa) ** current_exponent * (e0_kv / energy_kv) ** (
        energy_exponent
    )


def landing_energy_kev(column_kv: float, bias_v: float, charge: int = 1) -> float:
    """Landing energy (keV) of an ion of charge ``charge`` (e): q * (U_column - U_bias)."""
    return charge * (column_kv - bias_v / 1000.0)


def true_raster(fov_um: float, rotation_deg: float, *, fov_error_pct: float = 0.0,
                rotation_error_deg: float = 0.0) -> tuple[float, float]:
    """The raster the column writes for its nominal settings: (field um, rotation deg).

    A real column's field-of-view calibration is good to a few % and its scan
    rotation to a degree or two (issue 15): the deflectors' gain and the raster's
    angle to the stage drift with the lens excitations and are calibrated against a
    grating now and then. The error is the simulator's alone: the IOCs publish, and
    the plans record, the nominal ``fov_um`` and ``rotation_deg``.

    Parameters
    ----------
    fov_um, rotation_deg
        Nominal raster width (um, beam-normal plane) and scan rotation (deg).
    fov_error_pct
        Relative error of the field (%): the true width is ``fov * (1 + e / 100)``.
    rotation_error_deg
        Error of the raster's rotation (deg), added to the nominal one.
    """
    return fov_um * (1.0 + fov_error_pct / 100.0), rotation_deg + rotation_error_deg


#: Spread (1 sigma) of the extraction field's effective strength from one instrument to
#: the next: the gap is not a plane capacitor (fringe fields at the holder's edge and
#: the electrode's bore), so the beam's normal motion sees only roughly the bias.
EXTRACTION_FIELD_FACTOR_SIGMA = 0.03


def draw_extraction_field_factor(seed: int) -> float:
    """An instrument's extraction-field factor (see :func:`landing_incidence_deg`),
    from its seed: 1 +- :data:`EXTRACTION_FIELD_FACTOR_SIGMA`, clipped to +-3 sigma."""
    rng = np.random.default_rng(int(seed) + 4000)
    spread = EXTRACTION_FIELD_FACTOR_SIGMA
    return float(1.0 + np.clip(rng.normal(0.0, spread), -3 * spread, 3 * spread))


def landing_incidence_deg(landing_kev: float, bias_v: float, *,
                          nominal_deg: float = SIMS_INCIDENCE_DEG,
                          field_factor: float = 1.0, charge: int = 1) -> float | None:
    """The Ga+ beam's angle to the specimen normal where it lands on a holder at
    ``bias_v`` (deg; None if the field turns it back first).

    The column's voltage is the landing energy plus the bias (:func:`landing_energy_kev`);
    the extraction field bends the beam as :func:`temsims.constants.extraction_incidence_deg`
    says, with ``field_factor`` the fraction of the bias the beam's normal motion
    really sees (the instrument's truth; the lab's model takes 1).
    """
    column_kv = landing_kev / charge + bias_v / 1000.0
    try:
        return extraction_incidence_deg(column_kv, bias_v, nominal_deg=nominal_deg,
                                        field_factor=field_factor)
    except ValueError:
        return None


#: Distance (mm) the Ga+ ions travel through the extraction field, holder to the
#: extraction electrode's bore, along the specimen normal (estimate: the electrode must
#: fit in the TEM objective's pole-piece gap with the tilted holder).
EXTRACTION_GAP_MM = 1.0


def landing_shift_um(column_kv: float, bias_v: float, *, gap_mm: float = EXTRACTION_GAP_MM,
                     nominal_deg: float = SIMS_INCIDENCE_DEG,
                     field_factor: float = 1.0) -> float | None:
    """How far (um) the extraction field moves the Ga+ beam's landing point along its
    in-plane direction (the specimen's +y, the raster's stretched axis), against the
    straight line it would follow without a field (None: the field turns it back).

    Uniform field across a gap ``d`` (decision 0036's model): the tangential speed
    ``v_t`` stays, the normal speed goes from ``v_n0`` to ``v_n1`` linearly in time, so
    the ion crosses in ``2 d / (v_n0 + v_n1)`` instead of ``d / v_n0``:

    ``s = d v_t (2 / (v_n0 + v_n1) - 1 / v_n0)``, ``v ~ sqrt(energy)``.

    A retarding bias (positive, Ga+) slows the normal motion and lengthens the path:
    30 kV at 45 deg over 1 mm lands 89.0 um further on +4.5 kV and 65.5 um short on
    -4.5 kV. The column's beam shift compensates this (:func:`coincidence_offset_um`).
    """
    t0 = math.radians(nominal_deg)
    e_n0 = column_kv * math.cos(t0) ** 2
    e_n1 = e_n0 - field_factor * bias_v / 1000.0
    if not e_n1 > 0:
        return None
    v_t, v_n0, v_n1 = (math.sqrt(column_kv) * math.sin(t0), math.sqrt(e_n0),
                       math.sqrt(e_n1))
    return 1000.0 * gap_mm * v_t * (2.0 / (v_n0 + v_n1) - 1.0 / v_n0)


#: Convergence semi-angle (mrad) of the Ga+ probe at the specimen: ~1 mrad for a
#: liquid-metal-ion-source column at its low-current apertures (estimate: 1 pA from a
#: source of ~20 uA/sr angular intensity is a ~0.13 mrad cone at the source, ~8x
#: demagnified; Orloff, Utlaut & Swanson, *High Resolution Focused Ion Beams*, 2003,
#: ch. 5; ``../shared/reference/instrument.md`` gives no figure). One angle for every
#: aperture: a real column's angle grows with the aperture.
CONVERGENCE_SEMI_ANGLE_MRAD = 1.0
#: A defocused cone's disc of diameter ``2 alpha dz`` as the Gaussian of the same
#: variance (a uniform disc of diameter D has sigma D / 4 per axis): FWHM = this x
#: ``alpha dz``.
DEFOCUS_FWHM_PER_ALPHA_DZ = 2.0 * math.sqrt(2.0 * math.log(2.0)) * 2.0 / 4.0
#: Range (um) of the column's focus offset FIB:FOCUS.
FOCUS_RANGE_UM = 50.0


def _immersion_terms(column_kv: float, bias_v: float, nominal_deg: float,
                     field_factor: float) -> tuple[float, float] | None:
    """(c, g) of :func:`immersion_focus_shift_um` (None: the field turns the beam back)."""
    e_n0 = column_kv * math.cos(math.radians(nominal_deg)) ** 2
    x = field_factor * bias_v / 1000.0 / e_n0
    if not x < 1.0:
        return None
    k = 2.0 / (1.0 + math.sqrt(1.0 - x))
    return 1.0 - (1.0 - x / 4.0) * k, 1.0 + k * x / 4.0


def immersion_focus_shift_um(column_kv: float, bias_v: float, *,
                             gap_mm: float = EXTRACTION_GAP_MM,
                             nominal_deg: float = SIMS_INCIDENCE_DEG,
                             field_factor: float = 1.0) -> float | None:
    """How far (um) the column's focus must move toward the specimen to focus on a
    holder at ``bias_v`` rather than at 0 V: the immersion lens of the extraction gap
    (None: the field turns the beam back).

    The gap is the textbook immersion lens of a plane electrode with a bore: a thin
    aperture lens at the bore (Davisson & Calbick, Phys. Rev. 38, 585 (1931):
    ``1 / f = (E_after - E_before) / (4 U)``, here the field ``-V / d`` on the
    specimen's side, a diverging lens for a retarding bias) followed by the uniform
    field across the gap ``d``, in which the paraxial ray keeps its transverse speed
    while its normal speed goes from ``v0`` to ``v1`` (Hawkes & Kasper, *Principles of
    Electron Optics* vol. 1, ch. 2; the kinematics of decisions 0036 and 0042). The
    energies are the normal ones at the column's incidence (``U cos^2 t0``), as
    there. A marginal ray aimed at the gap's far side from the bore at angle ``a``
    lands at ``a (c d + g delta)`` from the axis, ``delta`` the column's focus moved
    toward the specimen, with ``x = V / (U cos^2 t0)``, ``k = 2 / (1 + sqrt(1 - x))``:

    ``c = 1 - (1 - x / 4) k``, ``g = 1 + k x / 4``; the focus is back on the specimen
    at ``delta = -c d / g``.

    The two parts cancel to first order in ``x`` (the uniform field's ``+x / 4``
    against the bore's ``-x / 4``): what is left is of second order, a net converging
    lens for either polarity (the one beam deceleration shows). 30 kV at 45 deg over
    1 mm: **+6.71 um on +4.5 kV, +4.94 um on -4.5 kV**, +2.79 um on +3 kV, +2.28 um on
    -3 kV, 0 at 0 V.
    The beam's tilt to the field (astigmatism) is not modelled.
    """
    terms = _immersion_terms(column_kv, bias_v, nominal_deg, field_factor)
    if terms is None:
        return None
    c, g = terms
    return -1000.0 * gap_mm * c / g


def defocus_um(column_kv: float, bias_v: float, focus_um: float, *,
               table_error_um: float = 0.0, height_um: float = 0.0,
               field_factor: float = 1.0, gap_mm: float = EXTRACTION_GAP_MM,
               nominal_deg: float = SIMS_INCIDENCE_DEG) -> float | None:
    """How far (um, column-referred: the column's focus move that would take it out) the
    probe's crossover lies from the specimen (None: the field turns the beam back).

    The column applies its focus table, :func:`immersion_focus_shift_um` of the nominal
    gap and field; the instrument's lens differs by ``field_factor`` (its true
    strength, decision 0036) and the table by ``table_error_um`` (what the table leaves
    at this bias); ``height_um`` is the specimen's height above the focal plane along
    the beam (a raised specimen meets the beam before its crossover); ``focus_um`` the
    lab's FIB:FOCUS offset, which moves the column's focus toward the specimen.
    Positive: the crossover lies above the specimen (the beam focuses short); the
    focus is right at ``focus_um`` = the value with ``focus_um`` 0. The focus offset's
    lever on the crossover behind the gap (``g``, 1.04 at +4.5 kV) is taken as 1.
    """
    true_shift = immersion_focus_shift_um(column_kv, bias_v, gap_mm=gap_mm,
                                          nominal_deg=nominal_deg, field_factor=field_factor)
    table = immersion_focus_shift_um(column_kv, bias_v, gap_mm=gap_mm, nominal_deg=nominal_deg)
    if true_shift is None or table is None:
        return None
    return true_shift - table + table_error_um - height_um - focus_um


def probe_at_specimen_nm(in_focus_nm: float, defocus: float, *,
                         alpha_mrad: float = CONVERGENCE_SEMI_ANGLE_MRAD) -> float:
    """Probe FWHM (nm) at the specimen: the in-focus probe and the defocused cone's disc
    (``2 alpha dz`` across, as the Gaussian of its variance) in quadrature.

    ``defocus`` in um (:func:`defocus_um`), ``alpha_mrad`` the convergence
    semi-angle: 1 mrad and 10 um add 11.8 nm (7 nm in focus -> 13.7 nm).
    """
    blur = DEFOCUS_FWHM_PER_ALPHA_DZ * alpha_mrad * defocus  # mrad x um = nm
    return math.hypot(in_focus_nm, blur)


#: Bias (V) at which ``--focus-error-um`` gives the table's error.
FOCUS_ERROR_REFERENCE_V = 4500.0


def draw_focus_table_error_um(seed: int, scale_um: float, bias_v: float) -> float:
    """What the column's focus table leaves at ``bias_v`` (um) on the instrument
    ``seed``: ``scale_um`` x u x V / 4.5 kV, u drawn from the seed with |u| in
    0.5..1 and either sign (a table written at installation, linear in the bias,
    right at 0 V; the holder's seating and the lens's drift since). 0 if
    ``scale_um`` is 0 (the default: off)."""
    if scale_um == 0.0:
        return 0.0
    rng = np.random.default_rng(int(seed) + 5000)
    u = float(rng.uniform(0.5, 1.0)) * float(rng.choice([-1.0, 1.0]))
    return scale_um * u * bias_v / FOCUS_ERROR_REFERENCE_V


def eucentric_shift_um(dz_um: float, tilt_deg: float) -> float:
    """Lateral shift (um, specimen y, across the alpha axis) of the field a beam sees
    when the specimen is ``dz_um`` above the eucentric height and tilted to
    ``tilt_deg``: ``dz sin(tilt)`` (0 at the TEM's 0 deg, -0.927 dz at -68 deg)."""
    return dz_um * math.sin(math.radians(tilt_deg))


def coincidence_offset_um(column_kv: float, bias_v: float, tilt_deg: float, *,
                          landing_error_pct: float = 0.0, eucentric_dz_um: float = 0.0,
                          static_um: tuple[float, float] = (0.0, 0.0),
                          correction_um: tuple[float, float] = (0.0, 0.0)
                          ) -> tuple[float, float]:
    """Where (um, specimen x, y) the ion beam's field centre really lies from where the
    stage puts the TEM's: the TEM/FIB coincidence offset (decision 0042).

    Three parts, minus the lab's ``correction_um`` (the column's COINCIDENCE:X/Y, what
    a coincidence calibration writes):

    - the landing shift the column's bias-dependent beam shift leaves: it compensates
      :func:`landing_shift_um` from the uniform-field model and the nominal gap; the
      instrument's real gap and fringe field differ by ``landing_error_pct`` % of it
      (the holder's seating changes the gap by um at each load): along y, its sign
      and size follow the bias (+0.27 um on +4.5 kV, -0.20 um on -4.5 kV at 0.3 %);
    - the eucentric-height error on the 0 -> -68 deg tilt,
      :func:`eucentric_shift_um` of ``eucentric_dz_um`` (the specimen's height above
      the eucentric point plus the stage's Z);
    - ``static_um``: the beams' coincidence at 0 V as the last alignment left it.
    """
    shift = landing_shift_um(column_kv, bias_v)
    landing = 0.0 if shift is None else landing_error_pct / 100.0 * shift
    y = landing + eucentric_shift_um(eucentric_dz_um, tilt_deg)
    return (static_um[0] - correction_um[0], static_um[1] + y - correction_um[1])


def source_emission_ua(rng: random.Random) -> float:
    """One reading of the source's emission current (uA): regulated, with jitter."""
    return EMISSION_UA * (1 + EMISSION_JITTER * rng.gauss(0.0, 1.0))


__all__ = [
    "APERTURES",
    "CONVERGENCE_SEMI_ANGLE_MRAD",
    "DEFOCUS_FWHM_PER_ALPHA_DZ",
    "FOCUS_ERROR_REFERENCE_V",
    "FOCUS_RANGE_UM",
    "EXTRACTION_GAP_MM",
    "EXTRACTION_FIELD_FACTOR_SIGMA",
    "EMISSION_JITTER",
    "EMISSION_UA",
    "coincidence_offset_um",
    "defocus_um",
    "draw_focus_table_error_um",
    "draw_extraction_field_factor",
    "eucentric_shift_um",
    "immersion_focus_shift_um",
    "landing_energy_kev",
    "landing_incidence_deg",
    "landing_shift_um",
    "probe_at_specimen_nm",
    "probe_diameter_nm",
    "source_emission_ua",
    "true_raster",
]
