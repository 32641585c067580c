"""EDX-guided SIMS calibration on a diffusion couple: an EDX line, then a SIMS map.

:func:`edx_sims_calibration` is a two-run plan (bluesky's "multi-run plans" pattern,
like :func:`temsims.plans.correlative.correlative_tem_sims`): an ``edx_line`` run
across the concentration gradient in the TEM geometry, then a ``sims_map`` run of
the zone around it in the SIMS geometry, both sharing one ``correlation_id`` (also
recorded as ``calibration_id``). EDX runs first because the SIMS map sputters the
surface and implants Ga. The instrument is left in the TEM geometry, ion beam
blanked, bias at 0 V (also on failure or abort: :func:`with_safe_state`).

Each run's start document carries a ``calibration`` block with what the analysis
(:mod:`temsims.app.calibration_data`, :mod:`temsims.analysis.edx`,
:mod:`temsims.analysis.quantification`) needs besides the data, described in
``docs/calibration.md``: the shared keys (``calibration_id``, ``role`` =
``"edx_line"`` or ``"sims_map"``, analyte and matrix reference, ``binary``,
``gradient_direction``, the line), then for the EDX run the energy axis, the beam
energy (HT readback) and current, live time, tilt, the detector resolution and the
k-factors with their source, and for the SIMS run which species is the analyte and
which the matrix, dead time, dark rate, ion current, polarity and the frame's dose
(the map's geometry, data keys and dwell are in its ``map`` block, as in every SIMS
map run).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from temsims.analysis.geometry import SimsMapGeometry
from temsims.constants import SIMS_COLUMN_KV, extraction_incidence_deg, species_mass
from temsims.plans._common import (
    _num,
    check_int,
    check_md,
    check_number,
    check_pair,
    check_species,
    check_within,
    device_limits,
    microscope_parts,
    plan_args_md,
    read_dead_time,
    with_safe_state,
)
from temsims.plans.correlative import ensure_tem_mode
from temsims.plans.edx import (
    LIVE_TIME_RANGE_S,
    NPTS_RANGE,
    PROBE_RANGE_UM,
    edx_line,
    edx_point,
)
from temsims.plans.mode import MAX_BIAS_V, MIN_SIMS_BIAS_V, to_sims_mode, to_tem_mode
from temsims.plans.sims import (
    DWELL_RANGE_S,
    MAX_MASS_RATIO,
    MAX_PIXELS_PER_SIDE,
    beam_incidence_deg,
    sims_map,
    sputter_depth_nm,
)
from temsims.plans.types import Microscope, Plan

PLAN_NAME = "edx_sims_calibration"
#: The parts of the microscope the calibration uses, in the order it unpacks them.
PARTS = ("stage", "tem", "edx", "mode", "imager", "spectrometer", "column", "bias")
ROLES = ("edx_line", "sims_map")
#: The optional EDX run off the specimen that measures the column's system peaks.
REFERENCE_ROLE = "edx_system_reference"
#: Elements of the system peaks that the specimen does not hold (the pole piece's Fe).
DEFAULT_SYSTEM_ELEMENTS = ("Fe",)
#: TEM BEAM_CURRENT range (nA).
EDX_CURRENT_RANGE_NA = (1e-5, 100.0)
#: Plausible FWHM at Mn Ka of an EDX detector (eV).
FWHM_RANGE_EV = (30.0, 300.0)
#: The EDX line must lie this many EDX steps inside the SIMS field (each EDX point
#: needs its whole bin of SIMS pixels).
LINE_MARGIN_STEPS = 0.5
K_FACTOR_TBD = "none given: measure k-factors on a standard of known composition"


# ============================================================================ geometry
def line_in_field(points_um: Sequence[Sequence[float]], geometry: SimsMapGeometry) -> bool:
    """True if every point (specimen um) lies inside the pixels of ``geometry``."""
    pts = np.asarray(points_um, dtype=float).reshape(-1, 2)
    row, col = geometry.specimen_to_pixel(pts[:, 0], pts[:, 1])
    tol = 1e-6  # pixels: a line that just fits is inside
    return bool(np.all((col >= -0.5 - tol) & (col <= geometry.nx - 0.5 + tol)
                       & (row >= -0.5 - tol) & (row <= geometry.ny - 0.5 + tol)))


def line_with_bins(start_um: Sequence[float], stop_um: Sequence[float],
                   points: int) -> list[list[float]]:
    """The line's ends extended by half a step: the extent of its points' bins (um)."""
    h = LINE_MARGIN_STEPS / (points - 1)
    sx, sy = start_um
    ex, ey = stop_um
    return [[sx - h * (ex - sx), sy - h * (ey - sy)], [ex + h * (ex - sx), ey + h * (ey - sy)]]


# ============================================================================ checks
def _element_of(species: str) -> str:
    return species.lstrip("0123456789")


def _check_k_factors(k_factors: Any, elements: Sequence[str]) -> dict[str, float] | None:
    if k_factors is None:
        return None
    if not isinstance(k_factors, Mapping):
        raise TypeError(f"k_factors must be a dict element -> k (e.g. {{'Cu': 1.3, 'Ni': 1.0}}) "
                        f"or None, got {k_factors!r}")
    if set(k_factors) != set(elements):
        raise ValueError(f"k_factors must give exactly the elements {list(elements)}, got "
                         f"{sorted(map(str, k_factors))}")
    return {el: check_number(f"k_factors[{el!r}]", k_factors[el], low=0.0, low_open=True)
            for el in elements}


def _check_analyte(analyte: Any, analyte_species: str, matrix_species: str) -> tuple[str, str]:
    if not isinstance(analyte, str) or not analyte.isalpha():
        raise TypeError(f"analyte must be an element symbol such as 'Cu', got {analyte!r}")
    if _element_of(analyte_species) != analyte:
        raise ValueError(f"analyte_species {analyte_species!r} is not an isotope of the "
                         f"analyte {analyte!r}")
    matrix = _element_of(matrix_species)
    if matrix == analyte:
        raise ValueError(f"matrix_species {matrix_species!r} must be an isotope of another "
                         f"element than the analyte {analyte!r}")
    return analyte, matrix


def _check_aperture(column, aperture: Any) -> str | None:
    if aperture is None:
        return None
    if not isinstance(aperture, str):
        raise TypeError(f"sims_aperture must be an aperture name such as '1 nA' or None, "
                        f"got {aperture!r}")
    names = tuple(getattr(column.aperture, "enum_strs", None) or ())
    if names and aperture not in names:
        raise ValueError(f"sims_aperture {aperture!r} is not one of the column's apertures "
                         f"{list(names)}")
    return aperture


# ============================================================================ plan
def edx_sims_calibration(microscope: Microscope, *,
                         start_um: tuple[float, float], stop_um: tuple[float, float], points: int,
                         edx_live_time_s: float = 1.0, edx_current_na: float | None = None,
                         sims_fov_um: float | None = None,
                         sims_pixels: tuple[int, int] = (256, 64), sims_dwell_s: float = 1e-3,
                         sims_aperture: str | None = None,
                         sims_center_um: tuple[float, float] | None = None,
                         sims_voltage_v: float = 4500.0, analyte: str = "Cu",
                         analyte_species: str = "63Cu", matrix_species: str = "58Ni",
                         k_factors: dict[str, float] | None = None,
                         k_factor_source: str | None = None, fwhm_mn_ka_ev: float = 130.0,
                         edx_reference_um: tuple[float, float] | None = None,
                         edx_reference_live_time_s: float = 10.0,
                         edx_reference_current_na: float | None = None,
                         system_elements: tuple[str, ...] = DEFAULT_SYSTEM_ELEMENTS,
                         md: dict | None = None) -> Plan[dict]:
    """EDX line across a concentration gradient, then a SIMS map of the same zone.

    The two runs an EDX-guided SIMS quantification needs (``docs/calibration.md``):
    EDX gives ``C(x)`` where it is above its detection limit, the SIMS map gives the
    analyte and matrix-reference intensities at the same positions and below the
    EDX limit; :func:`temsims.app.calibration_data.quantify` fits RSF(C) and turns the
    map into concentrations.

    Sequence: TEM geometry (if not already) -> EDX line (``edx_line``; TEM beam
    current set to ``edx_current_na`` for it and restored after) -> SIMS geometry
    (``to_sims_mode``) -> stage to the map centre, aperture -> SIMS map
    (``sims_map`` of ``analyte_species`` and ``matrix_species``) -> TEM geometry.
    EDX first: the ion beam sputters the surface and implants Ga.

    Parameters
    ----------
    microscope : temsims.plans.types.Microscope
        The instrument with its ``edx`` detector: ``stage``, ``tem`` (HT and beam
        current are read, the current may be set) and ``edx``
        (:func:`temsims.plans.edx.edx_line`), ``mode`` (the geometry switch),
        ``imager``, ``spectrometer``, ``column``, ``bias``
        (:func:`temsims.plans.sims.sims_map`).
    start_um, stop_um : (float, float)
        Ends of the EDX line on the specimen (stage coordinates, um), across the
        gradient: the analysis takes the gradient along start -> stop.
    points : int
        EDX points on the line, 2..256 (ends included); the EDX step is the width
        of the SIMS bins the analysis compares with each point.
    edx_live_time_s : float
        EDX live time per point (s), 0.001..600.
    edx_current_na : float, optional
        Electron beam current for the EDX line (nA), 1e-5..100; restored after it.
        ``None``: the present current.
    sims_fov_um : float, optional
        SIMS raster width (um); default the line's extent along x plus one EDX step.
    sims_pixels : (int, int)
        SIMS map (nx, ny), each 1..1024.
    sims_dwell_s : float
        SIMS dwell per pixel (s), 1e-7..0.1.
    sims_aperture : str, optional
        Ion-column aperture for the map (e.g. ``"1 nA"``); restored after it.
        ``None``: the present one.
    sims_center_um : (float, float), optional
        Stage position of the map centre (um); default the midpoint of the line.
    sims_voltage_v : float
        Holder bias in SIMS (V), 100..4500 in magnitude; its sign is the polarity.
    analyte : str
        Element quantified (EDX and SIMS), e.g. ``"Cu"``.
    analyte_species, matrix_species : str
        Isotopes mapped by SIMS: the analyte's and the matrix reference's (the other
        element of the binary couple, e.g. ``"58Ni"``).
    k_factors : dict, optional
        Cliff-Lorimer factors ``{analyte: k, matrix: k}`` relative to a reference
        element (k = 1), recorded for the analysis; ``None`` records that they must
        come from a standard.
    k_factor_source : str, optional
        Where the k-factors come from (standard, calculation, ...).
    fwhm_mn_ka_ev : float
        EDX detector resolution at Mn Ka (eV), 30..300: the detector's specification,
        recorded for the peak fit.
    edx_reference_um : (float, float), optional
        A stage position where the beam meets no specimen (a hole, beyond the
        lamella's edge): an ``edx_point`` spectrum there, before the line, records the
        column's system peaks (Cu K of grid and holder, Fe K of the pole piece) for
        the analysis to subtract (``docs/calibration.md``). ``None``: none taken.
    edx_reference_live_time_s : float
        Live time of the reference (s), 0.001..600; the system peaks are weak in a
        hole, so it is long (default 10 s).
    edx_reference_current_na : float, optional
        Beam current of the reference (nA), 1e-5..100 (default: ``edx_current_na``).
    system_elements : tuple of str
        System-peak elements absent from the specimen (default ``("Fe",)``), fitted
        and used to scale the system spectrum at each point; recorded.
    md : dict, optional
        Extra start metadata of both runs; ``correlation_id`` here links the runs
        (else a new uuid4). ``sample``, ``specimen``, ``operator`` come from here or
        ``RE.md``.

    Yields
    ------
    msg : Msg
        Two runs: ``edx_line`` (one event of ``edx_line_spectra`` and ``edx_energy``)
        and ``sims_map`` (one event per map line, ``imager_<species>``), both with
        the ``calibration`` start block; with ``edx_reference_um`` first an
        ``edx_point`` run (role ``"edx_system_reference"``).

    Returns
    -------
    dict
        ``calibration_id`` and ``uids`` {"edx_line": uid, "sims_map": uid, and
        "edx_system_reference": uid with a reference}; the data are in the runs
        (:func:`temsims.app.calibration_data.from_catalog`).

    Raises
    ------
    TypeError, ValueError
        For any invalid argument, before any message that moves or triggers.

    See Also
    --------
    temsims.app.calibration_data.quantify : the analysis of the two runs.
    temsims.plans.correlative.correlative_tem_sims : the multi-run pattern.

    Notes
    -----
    The whole EDX line must lie inside the SIMS field, half an EDX step from its
    edges (checked here, with the column's present scan rotation). The couple's
    concentration must be constant across the line (the gradient along it), which is
    what lets the analysis average the map across the gradient.
    """
    stage, tem, edx, mode, imager, spectrometer, column, bias = microscope_parts(
        microscope, *PARTS)
    start = check_pair("start_um", start_um, unit="um")
    stop = check_pair("stop_um", stop_um, unit="um")
    npts = check_int("points", points, low=NPTS_RANGE[0], high=NPTS_RANGE[1])
    live = check_number("edx_live_time_s", edx_live_time_s, low=LIVE_TIME_RANGE_S[0],
                        high=LIVE_TIME_RANGE_S[1], unit="s")
    if edx_current_na is not None:
        edx_current_na = check_number("edx_current_na", edx_current_na,
                                      low=EDX_CURRENT_RANGE_NA[0],
                                      high=EDX_CURRENT_RANGE_NA[1], unit="nA")
    dx, dy = stop[0] - start[0], stop[1] - start[1]
    length = math.hypot(dx, dy)
    if length == 0:
        raise ValueError("start_um and stop_um must differ (a line of zero length)")
    if max(abs(dx), abs(dy)) > 2 * PROBE_RANGE_UM:
        raise ValueError(f"start_um..stop_um spans {length:g} um: each coordinate may differ "
                         f"by at most {2 * PROBE_RANGE_UM:g} um")
    mid = ((start[0] + stop[0]) / 2.0, (start[1] + stop[1]) / 2.0)
    check_within("midpoint x of start_um/stop_um", mid[0], device_limits(stage.x), "um")
    check_within("midpoint y of start_um/stop_um", mid[1], device_limits(stage.y), "um")
    step_um = length / (npts - 1)
    nx, ny = check_pair("sims_pixels", sims_pixels, integer=True, low=1,
                        high=MAX_PIXELS_PER_SIDE)
    volts = check_number("sims_voltage_v", sims_voltage_v, low=-MAX_BIAS_V, high=MAX_BIAS_V,
                         unit="V")
    # The extraction field bends the beam: 50 deg at +4.5 kV, 41 deg at -4.5 kV.
    incidence_deg = extraction_incidence_deg(SIMS_COLUMN_KV, volts)
    if sims_fov_um is None:  # the smallest field holding the line and its bins
        sims_fov_um = max(abs(dx) + step_um, (abs(dy) + step_um) * nx / ny
                          * math.cos(math.radians(incidence_deg)))
    fov = check_number("sims_fov_um", sims_fov_um, low=0.0, low_open=True, unit="um")
    check_within("sims_fov_um", fov, device_limits(column.scan.fov), "um")
    dwell = check_number("sims_dwell_s", sims_dwell_s, low=DWELL_RANGE_S[0],
                         high=DWELL_RANGE_S[1], unit="s")
    aperture = _check_aperture(column, sims_aperture)
    centre = mid if sims_center_um is None else check_pair("sims_center_um", sims_center_um,
                                                           unit="um")
    check_within("sims_center_um[0]", centre[0], device_limits(stage.x), "um")
    check_within("sims_center_um[1]", centre[1], device_limits(stage.y), "um")
    if abs(volts) < MIN_SIMS_BIAS_V:
        raise ValueError(f"sims_voltage_v = {sims_voltage_v!r} V: SIMS needs |sims_voltage_v| "
                         f"in [{MIN_SIMS_BIAS_V:g}, {MAX_BIAS_V:g}] V")
    a_label, m_label = check_species("(analyte_species, matrix_species)",
                                     (analyte_species, matrix_species), min_n=2, max_n=2)
    masses = sorted((species_mass(a_label), species_mass(m_label)))
    if masses[1] / masses[0] > MAX_MASS_RATIO:
        raise ValueError(f"{a_label} and {m_label}: the heavier may be at most "
                         f"{MAX_MASS_RATIO:g} times the lighter (one magnet field)")
    analyte, matrix = _check_analyte(analyte, a_label, m_label)
    elements = [analyte, matrix]
    k = _check_k_factors(k_factors, elements)
    if k_factor_source is not None and not isinstance(k_factor_source, str):
        raise TypeError(f"k_factor_source must be a string or None, got {k_factor_source!r}")
    fwhm = check_number("fwhm_mn_ka_ev", fwhm_mn_ka_ev, low=FWHM_RANGE_EV[0],
                        high=FWHM_RANGE_EV[1], unit="eV")
    reference = None
    if edx_reference_um is not None:
        reference = check_pair("edx_reference_um", edx_reference_um, unit="um")
        check_within("edx_reference_um[0]", reference[0], device_limits(stage.x), "um")
        check_within("edx_reference_um[1]", reference[1], device_limits(stage.y), "um")
    ref_live = check_number("edx_reference_live_time_s", edx_reference_live_time_s,
                            low=LIVE_TIME_RANGE_S[0], high=LIVE_TIME_RANGE_S[1], unit="s")
    ref_current = edx_reference_current_na
    if ref_current is not None:
        ref_current = check_number("edx_reference_current_na", ref_current,
                                   low=EDX_CURRENT_RANGE_NA[0], high=EDX_CURRENT_RANGE_NA[1],
                                   unit="nA")
    if isinstance(system_elements, str) or not isinstance(system_elements, Sequence):
        raise TypeError(f"system_elements must be a tuple of element symbols, got "
                        f"{system_elements!r}")
    system = tuple(system_elements)
    for el in system:
        if not isinstance(el, str) or not el.isalpha():
            raise TypeError(f"system_elements must hold element symbols, got {el!r}")
        if el in (analyte, matrix):
            raise ValueError(f"system element {el!r} is an element of the specimen: it cannot "
                             "measure the system peaks")
    md = check_md(md)
    # The EDX line inside the SIMS field (with the column's present scan rotation, read
    # through the RunEngine before anything moves).
    rotation = _num((yield from bps.rd(column.scan.rotation, default_value=0.0)))
    nominal = SimsMapGeometry(nx=nx, ny=ny, fov_um=fov, centre_x_um=centre[0],
                              centre_y_um=centre[1], rotation_deg=rotation,
                              incidence_deg=incidence_deg)
    if not line_in_field(line_with_bins(start, stop, npts), nominal):
        raise ValueError(f"the EDX line {list(start)} -> {list(stop)} um is not inside the SIMS "
                         f"field ({fov:g} um x {nx}x{ny} px at {list(centre)} um, rotation "
                         f"{rotation:g} deg) with half an EDX step ({step_um * 500:.1f} nm) "
                         "to spare: enlarge sims_fov_um or ny, or move sims_center_um")

    cid = md.get("correlation_id") or str(uuid.uuid4())
    direction = [dx / length, dy / length]
    plan_args = plan_args_md(
        microscope={name: getattr(microscope, name) for name in PARTS}, start_um=start, stop_um=stop, points=npts,
        edx_live_time_s=live, edx_current_na=edx_current_na, sims_fov_um=fov,
        sims_pixels=(nx, ny), sims_dwell_s=dwell, sims_aperture=aperture,
        sims_center_um=centre, sims_voltage_v=volts, analyte=analyte,
        analyte_species=a_label, matrix_species=m_label, k_factors=k,
        k_factor_source=k_factor_source, fwhm_mn_ka_ev=fwhm, edx_reference_um=reference,
        edx_reference_live_time_s=ref_live, edx_reference_current_na=ref_current,
        system_elements=system)
    common = {"calibration_id": cid, "parent_plan": PLAN_NAME, "parent_plan_args": plan_args,
              "analyte": analyte, "matrix_reference": matrix, "elements": elements,
              "analyte_species": a_label, "matrix_species": m_label, "binary": True,
              "gradient_direction": direction,
              "line": {"start_um": list(start), "stop_um": list(stop), "points": npts,
                       "step_nm": round(1000.0 * step_um, 6),
                       "length_um": round(length, 6)}}
    base_md = {**md, "correlation_id": cid, "calibration_id": cid}
    result: dict[str, Any] = {"calibration_id": cid, "uids": {"edx_line": None,
                                                              "sims_map": None}}
    if reference is not None:
        result["uids"][REFERENCE_ROLE] = None

    def edx_part():
        old_current = None
        if edx_current_na is not None:
            old_current = yield from bps.rd(tem.beam_current, default_value=None)
            yield from bps.mv(tem.beam_current, edx_current_na)

        def system_reference():
            line_current = yield from bps.rd(tem.beam_current, default_value=None)
            if ref_current is not None:
                yield from bps.mv(tem.beam_current, ref_current)
            current = yield from bps.rd(tem.beam_current, default_value=0.0)
            block = dict(common, role=REFERENCE_ROLE)
            block["reference"] = {
                "point_um": list(reference), "live_time_s": ref_live,
                "beam_current_na": float(current or 0.0),
                "data_key": f"{edx.name}_spectrum", "system_elements": list(system),
                "note": "EDX spectrum where the beam meets no specimen: the column's "
                        "system peaks alone"}
            result["uids"][REFERENCE_ROLE] = yield from edx_point(
                stage, tem, edx, x_um=reference[0], y_um=reference[1], live_time_s=ref_live,
                md={**base_md, "calibration": block})
            if ref_current is not None and line_current is not None:
                yield from bps.mv(tem.beam_current, float(line_current))

        def measure():
            if reference is not None:
                yield from system_reference()
            ht = yield from bps.rd(tem.ht, default_value=0.0)
            current = yield from bps.rd(tem.beam_current, default_value=0.0)
            # A detector constant; an EDX device without it records 0 (no sum-peak model).
            pulse_pair = 0.0
            if getattr(edx, "pulse_pair_ns", None) is not None:
                pulse_pair = yield from bps.rd(edx.pulse_pair_ns, default_value=0.0)
            nchan = yield from bps.rd(edx.nchan, default_value=0)
            gain = yield from bps.rd(edx.ev_per_chan, default_value=0.0)
            offset = yield from bps.rd(edx.offset_ev, default_value=0.0)
            tilt = yield from bps.rd(stage.alpha, default_value=0.0)
            block = dict(common, role="edx_line")
            block["edx"] = {
                "beam_kev": float(ht or 0.0), "beam_current_na": float(current or 0.0),
                "live_time_s": live, "nchan": int(nchan or 0),
                "ev_per_chan": float(gain or 0.0), "offset_ev": float(offset or 0.0),
                "tilt_deg": float(tilt or 0.0), "fwhm_mn_ka_ev": fwhm,
                "fwhm_source": "detector specification (plan argument)",
                "elements": elements, "k_factors": k,
                "k_factor_source": (k_factor_source or "given") if k is not None
                else K_FACTOR_TBD,
                "data_keys": {"spectra": f"{edx.name}_line_spectra",
                              "energy": f"{edx.name}_energy"},
                "points_key": "edx.points_um",
                "pulse_pair_time_s": float(pulse_pair or 0.0) * 1e-9,
                "system_elements": list(system),
                "system_reference_run": result["uids"].get(REFERENCE_ROLE)}
            result["uids"]["edx_line"] = yield from edx_line(
                stage, tem, edx, start=start, stop=stop, npts=npts, live_time_s=live,
                md={**base_md, "calibration": block})

        def restore():
            if old_current is not None:
                yield from bps.mv(tem.beam_current, float(old_current))

        yield from bpp.finalize_wrapper(measure(), restore())

    def sims_part():
        yield from to_sims_mode(mode, voltage_v=volts)
        yield from bps.mv(stage.x, centre[0], stage.y, centre[1])
        old_aperture = None
        if aperture is not None:
            old_aperture = yield from bps.rd(column.aperture, default_value=None)
            yield from bps.mv(column.aperture, aperture)

        def measure():
            x = float((yield from bps.rd(stage.x, default_value=centre[0])))
            y = float((yield from bps.rd(stage.y, default_value=centre[1])))
            rot = float((yield from bps.rd(column.scan.rotation, default_value=0.0)))
            landing = float((yield from bps.rd(column.landing, default_value=0.0)) or 0.0)
            geometry = SimsMapGeometry(
                nx=nx, ny=ny, fov_um=fov, centre_x_um=x, centre_y_um=y, rotation_deg=rot,
                incidence_deg=beam_incidence_deg({"beam_energy_keV": landing,
                                                  "bias_kV": volts / 1000.0}))
            current = float((yield from bps.rd(column.current, default_value=0.0)) or 0.0)
            probe = float((yield from bps.rd(column.probe, default_value=0.0)) or 0.0)
            ap = yield from bps.rd(column.aperture, default_value="")
            dead, dead_source = yield from read_dead_time(spectrometer, 0.0)
            dead = float(dead or 0.0)
            dark = float((yield from bps.rd(spectrometer.dark_rate, default_value=0.0)) or 0.0)
            dose, depth = sputter_depth_nm(current, nx * ny * dwell, fov, (nx, ny),
                                           incidence_deg=geometry.incidence_deg)
            block = dict(common, role="sims_map", edx_run_uid=result["uids"]["edx_line"])
            # The map's geometry, data keys and dwell are in the run's map block.
            block["sims"] = {
                "species": {"analyte": a_label, "matrix": m_label},
                "dead_time_s": dead, "dead_time_source": dead_source,
                "dark_rate_per_s": dark,
                "beam_current_pa": current, "probe_fwhm_nm": probe, "aperture": str(ap),
                "polarity": "positive" if volts > 0 else "negative",
                "bias_kV": round(volts / 1000.0, 4), "frame_index": 0, "frames": 1,
                "dose_ions_nm2": dose, "depth_estimate_nm": depth,
                "edx_line_inside": line_in_field(line_with_bins(start, stop, npts), geometry)}
            result["uids"]["sims_map"] = yield from sims_map(
                imager, spectrometer, column, stage, bias, species=(a_label, m_label),
                fov_um=fov, pixels=(nx, ny), dwell_s=dwell,
                md={**base_md, "calibration": block})

        def restore():
            if old_aperture is not None:
                yield from bps.mv(column.blank, "Blanked")
                yield from bps.mv(column.aperture, str(old_aperture))

        yield from bpp.finalize_wrapper(measure(), restore())

    def body():
        yield from ensure_tem_mode(stage, mode)
        yield from edx_part()
        yield from sims_part()
        yield from to_tem_mode(mode)
        return result

    return (yield from with_safe_state(body(), column, bias, ramp_bias_on_success=True))


__all__ = ["REFERENCE_ROLE", "edx_sims_calibration", "line_in_field", "line_with_bins"]
