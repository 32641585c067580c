"""The two runs of ``edx_sims_calibration`` -> arrays -> an absolute concentration map.

:func:`from_documents` (Bluesky documents, e.g. a RunEngine subscriber's) and
:func:`from_runs` / :func:`from_catalog` (tiled ``BlueskyRun`` s of the catalog) read
the EDX line run and the SIMS map run of one calibration (``calibration_id``) into a
:class:`CalibrationData`; :func:`quantify` runs the EDX-guided SIMS quantification
on it (``docs/calibration.md``):

1. EDX: :func:`temsims.analysis.edx.quantify_line_scan` of the line spectra with the
   recorded energy axis, beam energy, detector resolution and k-factors (given here
   or recorded by the plan) -> ``C_EDX`` per point, its uncertainty, its detection
   limit.
2. SIMS: the analyte and matrix maps, dead-time corrected per pixel and less the
   dark counts, summed in bins along the gradient centred on the EDX points
   (:func:`temsims.analysis.quantification.map_profile` with the recorded pixel ->
   specimen affine): the SIMS intensities at the EDX positions, at the EDX step's
   resolution; each bin divided by the blur the probe (the run's recorded
   ``probe_nm`` and the lab's measured halo, ``constants.PROBE_HALO``) and the bin
   put into it (:func:`temsims.analysis.quantification.blur_factor`), so that SIMS
   and EDX compare at one resolution.
3. :func:`~temsims.analysis.quantification.calibrate_rsf` where EDX detects both
   elements; :func:`~temsims.analysis.quantification.quantify_map` of the profile
   (at the EDX positions, also below the EDX limit) and of the map, pixel by pixel.

Pure reading and numpy: no bluesky, ophyd or IOC imports (tiled objects are only
duck-typed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from temsims.analysis import edx as edx_analysis
from temsims.analysis import quantification as qn
from temsims.constants import PROBE_HALO

ROLES = ("edx_line", "sims_map")
#: Optional third run: the EDX system-peak reference taken off the specimen.
REFERENCE_ROLE = "edx_system_reference"
ELEMENTARY_CHARGE_C = 1.602176634e-19


class CalibrationDataError(ValueError):
    """The runs do not make one complete EDX-SIMS calibration."""


# ======================================================================================
# Data
# ======================================================================================
@dataclass(frozen=True)
class CalibrationData:
    """Everything the quantification needs from the two runs (units in the names).

    Attributes
    ----------
    calibration_id, edx_uid, sims_uid
        The calibration and its two runs.
    analyte, matrix, analyte_species, matrix_species, binary
        What is quantified against what.
    points_um
        ``(n, 2)`` specimen positions of the EDX points (stage coordinates, um).
    direction
        Unit vector of the gradient on the specimen (start -> stop of the line).
    spectra, axis, beam_kev, fwhm_mn_ka_ev, k_factors, k_factor_source
        EDX line spectra ``(n, nchan)``, their energy axis, beam energy, detector
        resolution and the recorded k-factors (``None`` if the plan had none).
    analyte_map, matrix_map
        SIMS counts ``(ny, nx)`` as recorded (no correction).
    affine_nm
        3x3 map pixel ``(col, row, 1)`` -> specimen ``(x_nm, y_nm, 1)``.
    dwell_s, dead_time_s, dark_rate_per_s
        Counting parameters of the map.
    start
        The two start documents, by role.
    """

    calibration_id: str
    edx_uid: str
    sims_uid: str
    analyte: str
    matrix: str
    analyte_species: str
    matrix_species: str
    binary: bool
    points_um: np.ndarray
    direction: tuple[float, float]
    spectra: np.ndarray
    axis: edx_analysis.EnergyAxis
    beam_kev: float
    fwhm_mn_ka_ev: float
    k_factors: dict[str, float] | None
    k_factor_source: str
    analyte_map: np.ndarray
    matrix_map: np.ndarray
    affine_nm: np.ndarray
    dwell_s: float
    dead_time_s: float
    dark_rate_per_s: float
    start: dict[str, dict] = field(default_factory=dict)
    #: EDX dose per point and pulse processing (0 / None where not recorded).
    edx_live_time_s: float | None = None
    edx_current_na: float | None = None
    pulse_pair_time_s: float = 0.0
    #: System-peak elements absent from the specimen (e.g. ("Fe",)) and the
    #: reference spectrum off the specimen, if the plan took one.
    system_elements: tuple[str, ...] = ()
    system_reference: edx_analysis.SystemReference | None = None
    reference_uid: str | None = None

    @property
    def edx_electrons(self) -> float | None:
        """Electrons per EDX point (beam current x live time / e), if recorded."""
        if not (self.edx_live_time_s and self.edx_current_na):
            return None
        return self.edx_current_na * 1e-9 * self.edx_live_time_s / ELEMENTARY_CHARGE_C

    @property
    def positions_nm(self) -> np.ndarray:
        """EDX points projected on the gradient direction (nm), increasing."""
        d = np.asarray(self.direction)
        return 1000.0 * (self.points_um @ d)

    @property
    def step_nm(self) -> float:
        p = self.positions_nm
        return float(np.median(np.diff(p))) if p.size > 1 else float("nan")

    def line_inside_field(self) -> bool:
        """Every EDX point and its half-step bin on both ends lies inside the SIMS map."""
        p = np.asarray(self.points_um, dtype=float) * 1000.0
        half = 0.5 * self.step_nm * np.asarray(self.direction)
        ends = np.array([p[0] - half, p[-1] + half])
        inv = np.linalg.inv(self.affine_nm)
        col, row, _ = inv @ np.vstack([ends.T, np.ones(2)])
        ny, nx = self.analyte_map.shape
        tol = 1e-6
        return bool(np.all((col >= -0.5 - tol) & (col <= nx - 0.5 + tol)
                           & (row >= -0.5 - tol) & (row <= ny - 0.5 + tol)))


@dataclass(frozen=True)
class CalibrationResult:
    """The quantification of one calibration.

    Attributes
    ----------
    data
        The input (:class:`CalibrationData`).
    edx
        EDX quantification of the line (fractions, sigma, detection limits per point).
    positions_nm
        Bin centres along the gradient (the EDX points, projected).
    analyte_profile, matrix_profile
        SIMS counts summed per bin (dead-time and dark corrected).
    mask
        Points used for the RSF fit (EDX detects analyte and matrix).
    calibration
        The fitted RSF(r) (:class:`~temsims.analysis.quantification.RSFCalibration`).
    profile
        Quantified SIMS concentration at the EDX positions (from the binned counts).
    map
        Quantified SIMS concentration per map pixel.
    detection_limit, quantification_limit
        EDX limits of the analyte (atomic fraction; median over the line).
    k_factors
        The k-factors used.
    corrections
        What the EDX analysis subtracted (sum peaks, system peaks).
    probe_blur
        The probe whose blur the SIMS bins were divided by and the factors' range
        (None: not matched, no probe recorded or ``match_resolution=False``).
    """

    data: CalibrationData
    edx: edx_analysis.EDXQuantification
    positions_nm: np.ndarray
    analyte_profile: qn.MapProfile
    matrix_profile: qn.MapProfile
    mask: np.ndarray
    calibration: qn.RSFCalibration
    profile: qn.QuantifiedMap
    map: qn.QuantifiedMap
    detection_limit: float
    quantification_limit: float
    k_factors: dict[str, float]
    corrections: dict[str, Any] = field(default_factory=dict)
    probe_blur: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """The calibration as a JSON-able derived record pointing at both runs."""
        cal = self.calibration
        return {"calibration_id": self.data.calibration_id,
                "runs": {"edx_line": self.data.edx_uid, "sims_map": self.data.sims_uid},
                "analyte": self.data.analyte, "matrix_reference": self.data.matrix,
                "analyte_species": self.data.analyte_species,
                "matrix_species": self.data.matrix_species,
                "model": "ln(rho / r) = sum_k a_k C^k, solved for C at each r = I_A / I_M, "
                         + ("rho = C / (1 - C)" if cal.binary else "rho = C"),
                "coefficients": [float(c) for c in cal.coefficients],
                "covariance": np.asarray(cal.covariance, dtype=float).tolist(),
                "binary": bool(cal.binary), "degree": cal.degree,
                "degree_selection": {
                    "method": cal.degree_selection.get("method"),
                    "press": {str(d): v for d, v in
                              cal.degree_selection.get("press", {}).items()}},
                "r_range": list(cal.r_range), "c_range": list(cal.c_range),
                "reduced_chi2": float(cal.reduced_chi2), "n_points": int(self.mask.sum()),
                "k_factors": dict(self.k_factors),
                "edx_detection_limit": self.detection_limit,
                "edx_quantification_limit": self.quantification_limit,
                "edx_corrections": dict(self.corrections),
                "sims_probe_blur": self.probe_blur}


# ======================================================================================
# Reading documents
# ======================================================================================
def _iter_documents(documents) -> Iterable[tuple[str, dict]]:
    """(name, doc) pairs from a sequence of pairs or a mapping name -> list of docs."""
    if hasattr(documents, "docs") and isinstance(documents.docs, Mapping):
        documents = documents.docs
    if isinstance(documents, Mapping):
        order = ("start", "descriptor", "event", "event_page", "stop")
        for name in order:
            for doc in documents.get(name, []):
                yield name, doc
        return
    for item in documents:
        name, doc = item
        yield name, doc


def _calibration_block(start: Mapping) -> dict | None:
    block = start.get("calibration")
    if isinstance(block, Mapping) and block.get("role") in (*ROLES, REFERENCE_ROLE):
        return dict(block)
    return None


def _pick(starts: Sequence[Mapping], calibration_id: str | None) -> dict[str, dict]:
    """The start document of each role of one calibration (the latest one if several)."""
    found: dict[str, dict[str, dict]] = {}
    for s in starts:
        block = _calibration_block(s)
        if block is None:
            continue
        cid = block.get("calibration_id") or s.get("correlation_id")
        if calibration_id is not None and cid != calibration_id:
            continue
        found.setdefault(cid, {})[block["role"]] = dict(s)
    complete = {cid: roles for cid, roles in found.items() if set(ROLES) <= set(roles)}
    if not complete:
        which = f" {calibration_id!r}" if calibration_id else ""
        raise CalibrationDataError(
            f"no complete calibration{which}: need an 'edx_line' and a 'sims_map' run whose "
            f"start documents carry a 'calibration' block (found {sorted(found)})")
    if calibration_id is None and len(complete) > 1:
        # The latest calibration (by the time of its SIMS run).
        return max(complete.values(), key=lambda r: r["sims_map"].get("time", 0.0))
    return next(iter(complete.values()))


def from_documents(documents, calibration_id: str | None = None) -> CalibrationData:
    """A calibration from Bluesky documents.

    Parameters
    ----------
    documents
        ``(name, doc)`` pairs in emission order, a mapping name -> list of documents,
        or an object with such a mapping in ``.docs`` (a document collector).
    calibration_id
        Which calibration (default: the latest complete one).

    Raises
    ------
    CalibrationDataError
        If no complete calibration (both runs, both with their data) is found.
    """
    from event_model import unpack_event_page

    starts: list[dict] = []
    descriptors: dict[str, dict] = {}
    events: dict[str, list[dict]] = {}
    for name, doc in _iter_documents(documents):
        if name == "start":
            starts.append(doc)
        elif name == "descriptor":
            descriptors[doc["uid"]] = doc
        elif name == "event":
            events.setdefault(doc["descriptor"], []).append(doc)
        elif name == "event_page":
            events.setdefault(doc["descriptor"], []).extend(unpack_event_page(doc))
    runs = _pick(starts, calibration_id)

    def primary(run_uid: str) -> list[dict]:
        out = []
        for uid, desc in descriptors.items():
            if desc.get("run_start") == run_uid and desc.get("name", "primary") == "primary":
                out.extend(events.get(uid, []))
        return sorted(out, key=lambda e: e["seq_num"])

    def column(evs: list[dict], key: str) -> np.ndarray:
        values = [np.asarray(e["data"][key]) for e in evs if key in e.get("data", {})]
        if not values:
            raise CalibrationDataError(f"no {key!r} in the run's primary stream")
        return np.stack(values)

    edx_start, sims_start = runs["edx_line"], runs["sims_map"]
    edx_events = primary(edx_start["uid"])
    sims_events = primary(sims_start["uid"])
    ref_start = runs.get(REFERENCE_ROLE)
    ref_column = None
    if ref_start is not None:
        ref_events = primary(ref_start["uid"])
        ref_column = lambda key: column(ref_events, key)  # noqa: E731
    return _read(edx_start, sims_start, lambda key: column(edx_events, key),
                 lambda key: column(sims_events, key), ref_start, ref_column)


def from_runs(runs: Iterable[Any], calibration_id: str | None = None) -> CalibrationData:
    """A calibration from tiled ``BlueskyRun`` s (``run.metadata["start"]``,
    ``run["primary"][key].read()``), e.g. ``cat.by_correlation_id(cid).values()``."""
    runs = list(runs)
    starts = [dict(r.metadata["start"]) for r in runs]
    picked = _pick(starts, calibration_id)
    by_uid = {s["uid"]: r for s, r in zip(starts, runs, strict=True)}
    edx_start, sims_start = picked["edx_line"], picked["sims_map"]
    edx_run, sims_run = by_uid[edx_start["uid"]], by_uid[sims_start["uid"]]

    def read(run, key: str) -> np.ndarray:
        stream = run["primary"]
        if key not in stream:
            raise CalibrationDataError(f"no {key!r} in run {run.metadata['start']['uid']}")
        return np.asarray(stream[key].read())

    ref_start = picked.get(REFERENCE_ROLE)
    ref_column = None
    if ref_start is not None:
        ref_run = by_uid[ref_start["uid"]]
        ref_column = lambda key: read(ref_run, key)  # noqa: E731
    return _read(edx_start, sims_start, lambda key: read(edx_run, key),
                 lambda key: read(sims_run, key), ref_start, ref_column)


def _read(edx_start: Mapping, sims_start: Mapping, edx_column, sims_column,
          ref_start: Mapping | None = None, ref_column=None) -> CalibrationData:
    """The calibration from each run's columns (``*_column(key)``: events first)."""
    keys = _edx_keys(edx_start)
    skeys = _sims_keys(sims_start)
    arrays = {"spectra": edx_column(keys["spectra"])}
    try:
        arrays["energy"] = edx_column(keys["energy"])
    except CalibrationDataError:
        arrays["energy"] = None
    for label in ("analyte", "matrix"):
        arrays[label] = sims_column(skeys[label])
    if ref_start is not None:
        ref = (ref_start["calibration"].get("reference") or {})
        arrays["reference"] = ref_column(ref.get("data_key", "edx_spectrum"))
    return _assemble(edx_start, sims_start, arrays, sims_column(skeys["line"]), ref_start)


def from_catalog(catalog, calibration_id: str) -> CalibrationData:
    """A calibration from a temsims catalog (``temsims.catalog.open_catalog(...)``)."""
    node = catalog.by_correlation_id(calibration_id)
    runs = [node[uid] for uid in node]
    return from_runs(runs, calibration_id)


def _edx_keys(start: Mapping) -> dict[str, str]:
    keys = (start["calibration"].get("edx") or {}).get("data_keys") or {}
    return {"spectra": keys.get("spectra", "edx_line_spectra"),
            "energy": keys.get("energy", "edx_energy")}


def _sims_keys(start: Mapping) -> dict[str, str]:
    from temsims.analysis.maps import MapLayout

    species = (start["calibration"].get("sims") or {}).get("species") or {}
    try:
        layout = MapLayout.from_start(start)
        return {"analyte": layout.key(species["analyte"]),
                "matrix": layout.key(species["matrix"]), "line": layout.line_key}
    except KeyError as exc:
        raise CalibrationDataError(f"the SIMS run's calibration block misses {exc}") from None
    except ValueError as exc:
        raise CalibrationDataError(f"the SIMS run's start document: {exc}") from None


def _assemble(edx_start: Mapping, sims_start: Mapping, arrays: dict, lines,
              ref_start: Mapping | None = None) -> CalibrationData:
    eb = edx_start["calibration"]
    sb = sims_start["calibration"]
    e = eb.get("edx") or {}
    s = sb.get("sims") or {}
    points = np.asarray((edx_start.get("edx") or {}).get("points_um"), dtype=float)
    spectra = np.asarray(arrays["spectra"], dtype=float)
    if spectra.ndim == 3:  # one event of (npts, nchan)
        spectra = spectra[-1]
    if points.ndim != 2 or points.shape[0] != spectra.shape[0]:
        raise CalibrationDataError(f"{points.shape[0] if points.ndim == 2 else 0} EDX points "
                                   f"recorded for {spectra.shape[0]} spectra")
    if arrays.get("energy") is not None:
        energy = np.asarray(arrays["energy"], dtype=float)
        axis = edx_analysis.EnergyAxis.from_centres(energy.reshape(-1, energy.shape[-1])[-1])
    else:
        axis = edx_analysis.EnergyAxis(int(e["nchan"]), float(e["ev_per_chan"]),
                                       float(e.get("offset_ev", 0.0)))
    from temsims.analysis.maps import IncompleteMapError, MapLayout, assemble

    layout = MapLayout.from_start(sims_start)
    try:
        maps = assemble(layout, lines, {"analyte": arrays["analyte"],
                                        "matrix": arrays["matrix"]})
    except (IncompleteMapError, ValueError) as exc:
        raise CalibrationDataError(f"SIMS map of run {sims_start['uid']}: {exc}") from None
    if maps["analyte"].ndim != 2:
        raise CalibrationDataError(f"the SIMS run holds {maps['analyte'].shape[0]} frames; "
                                   "the calibration reads one")
    affine_nm = layout.geometry().affine_to_specimen()
    affine_nm[:2] *= 1000.0  # the unit of temsims.analysis.quantification.map_profile

    direction = tuple(float(v) for v in eb["gradient_direction"])
    norm = math.hypot(*direction)
    k = e.get("k_factors")
    reference = None
    if ref_start is not None:
        rb = ref_start["calibration"].get("reference") or {}
        counts = np.asarray(arrays["reference"], dtype=float)
        counts = counts.reshape(-1, counts.shape[-1])[-1]
        electrons = (float(rb["beam_current_na"]) * 1e-9 * float(rb["live_time_s"])
                     / ELEMENTARY_CHARGE_C)
        if counts.size != spectra.shape[1]:
            raise CalibrationDataError(f"the system reference has {counts.size} channels, the "
                                       f"line spectra {spectra.shape[1]}")
        reference = edx_analysis.SystemReference(counts, electrons, float(rb["live_time_s"]))
    return CalibrationData(
        calibration_id=str(eb["calibration_id"]), edx_uid=edx_start["uid"],
        sims_uid=sims_start["uid"], analyte=eb["analyte"], matrix=eb["matrix_reference"],
        analyte_species=eb["analyte_species"], matrix_species=eb["matrix_species"],
        binary=bool(eb.get("binary", True)), points_um=points,
        direction=(direction[0] / norm, direction[1] / norm), spectra=spectra, axis=axis,
        beam_kev=float(e["beam_kev"]), fwhm_mn_ka_ev=float(e.get("fwhm_mn_ka_ev", 130.0)),
        k_factors=None if k is None else {str(a): float(b) for a, b in k.items()},
        k_factor_source=str(e.get("k_factor_source", "")),
        analyte_map=maps["analyte"].astype(float), matrix_map=maps["matrix"].astype(float),
        affine_nm=affine_nm, dwell_s=layout.dwell_s, dead_time_s=float(s.get("dead_time_s", 0.0)),
        dark_rate_per_s=float(s.get("dark_rate_per_s", 0.0)),
        start={"edx_line": dict(edx_start), "sims_map": dict(sims_start),
               **({REFERENCE_ROLE: dict(ref_start)} if ref_start is not None else {})},
        edx_live_time_s=float(e["live_time_s"]) if e.get("live_time_s") else None,
        edx_current_na=float(e["beam_current_na"]) if e.get("beam_current_na") else None,
        pulse_pair_time_s=float(e.get("pulse_pair_time_s") or 0.0),
        system_elements=tuple(e.get("system_elements") or ()),
        system_reference=reference,
        reference_uid=None if ref_start is None else ref_start["uid"])


# ======================================================================================
# Quantification
# ======================================================================================
def corrected_counts(counts: np.ndarray, *, dwell_s: float, dead_time_s: float,
                     dark_counts: float = 0.0) -> np.ndarray:
    """True counts per pixel: non-paralyzable dead time ``N = M / (1 - M tau / dwell)``,
    then the expected dark counts subtracted (not clipped: unbiased when summed)."""
    m = np.asarray(counts, dtype=float)
    if dead_time_s > 0:
        f = dead_time_s / dwell_s
        if np.any(m * f >= 1):
            raise ValueError("counts at or beyond dead-time saturation")
        m = m / (1.0 - m * f)
    return m - dark_counts


def probe_blur(sims_start: Mapping, direction=(1.0, 0.0)) -> dict[str, Any] | None:
    """The ion probe a SIMS map run recorded (``probe_nm``, its FWHM in the
    beam-normal plane; or its calibration block's ``probe_fwhm_nm``) with the lab's
    halo (``constants.PROBE_HALO``, decision 0040), both along ``direction`` on the
    specimen (stretched by the map's ``stretch`` along y), as
    :func:`~temsims.analysis.quantification.blur_factor`'s keywords; None for a run
    that recorded no probe."""
    probe = sims_start.get("probe_nm")
    if probe is None:  # the calibration plan's own record, older than probe_nm
        probe = ((sims_start.get("calibration") or {}).get("sims") or {}).get("probe_fwhm_nm")
    if probe is None or not (math.isfinite(float(probe)) and float(probe) > 0):
        return None
    stretch = float((sims_start.get("map") or {}).get("stretch", 1.0) or 1.0)
    dx, dy = (float(v) for v in direction)
    along = math.hypot(dx, dy * stretch) / math.hypot(dx, dy)
    return {"core_fwhm_nm": float(probe) * along,
            "halo": (float(PROBE_HALO["fraction"]), float(PROBE_HALO["fwhm_nm"]) * along)}


def quantify(data: CalibrationData, *, k_factors: Mapping[str, float] | None = None,
             k_sigma: Mapping[str, float] | None = None, degree: int | str = "auto",
             half_width_nm: float | None = None,
             min_detected_sigma: float | None = None,
             edx_corrections: bool = True,
             match_resolution: bool = True) -> CalibrationResult:
    """EDX-guided SIMS quantification of one calibration.

    Parameters
    ----------
    data
        From :func:`from_documents`, :func:`from_runs` or :func:`from_catalog`.
    k_factors
        Cliff-Lorimer factors of the analyte and the matrix element (relative to a
        reference, ``k_ref = 1``); default the ones the run recorded.
    k_sigma
        Their 1-sigma uncertainties (default 0).
    degree
        Degree of the ``ln RSF`` polynomial in C, or ``"auto"`` (default, as
        :func:`~temsims.analysis.quantification.calibrate_rsf`): chosen by weighted
        leave-one-out cross-validation among 0..3 (decision 0027).
    half_width_nm
        Use only SIMS pixels within this distance of the EDX line (default: the whole
        map, averaged across the gradient).
    min_detected_sigma
        Fit only points whose analyte fraction exceeds this many sigma of the blank
        (default: the EDX detection limit, 3 sigma).
    edx_corrections
        Subtract the EDX sum peaks (recorded live time and pulse-pair time) and the
        system peaks (the recorded reference off the specimen, ``system_elements``
        fitted) where the runs recorded what they need (default). ``False``: the
        plain fit, for comparison.
    match_resolution
        Divide each SIMS bin by the blur of the probe and the bin
        (:func:`probe_blur`; default): EDX sees a point, the map a 90 nm probe
        with a halo, which on a curved profile bends the RSF fitted in C. Only where
        the SIMS run recorded its ``probe_nm``; ``False``: the plain ratios.

    Returns
    -------
    CalibrationResult

    Raises
    ------
    ValueError
        No k-factors (neither given nor recorded), or the analysis refuses the data.
    """
    k = dict(k_factors) if k_factors is not None else data.k_factors
    if not k:
        raise ValueError("no k-factors: the runs recorded none (measure them on a standard) "
                         "and none were given")
    for el in (data.analyte, data.matrix):
        if el not in k:
            raise ValueError(f"k_factors must include {data.analyte!r} and {data.matrix!r}, "
                             f"got {sorted(k)}")
    k = {el: float(k[el]) for el in (data.analyte, data.matrix)}
    resolution = edx_analysis.DetectorResolution(fwhm_mn_ka_ev=data.fwhm_mn_ka_ev)
    extra: dict[str, Any] = {}
    corrections: dict[str, Any] = {"sum_peaks": None, "system_peaks": None}
    if edx_corrections and data.edx_live_time_s and data.pulse_pair_time_s > 0:
        extra.update(live_time_s=data.edx_live_time_s, pulse_pair_time_s=data.pulse_pair_time_s)
        corrections["sum_peaks"] = {"live_time_s": data.edx_live_time_s,
                                    "pulse_pair_time_s": data.pulse_pair_time_s}
    if edx_corrections and data.system_reference is not None and data.edx_electrons:
        extra.update(system_elements=data.system_elements,
                     system_reference=data.system_reference, electrons=data.edx_electrons)
    profile_edx = edx_analysis.quantify_line_scan(data.spectra, data.axis, k,
                                                  beam_kev=data.beam_kev,
                                                  resolution=resolution, k_sigma=k_sigma,
                                                  **extra)
    if profile_edx.system is not None:
        corrections["system_peaks"] = {"reference_run": data.reference_uid,
                                       "reference_electrons": data.system_reference.electrons,
                                       **profile_edx.system.record()}
    dark = data.dark_rate_per_s * data.dwell_s
    a_map = corrected_counts(data.analyte_map, dwell_s=data.dwell_s,
                             dead_time_s=data.dead_time_s, dark_counts=dark)
    m_map = corrected_counts(data.matrix_map, dwell_s=data.dwell_s,
                             dead_time_s=data.dead_time_s, dark_counts=dark)
    positions = data.positions_nm
    band = {}
    if half_width_nm is not None:
        p0 = 1000.0 * data.points_um[0]
        band = {"line_point_nm": (float(p0[0]), float(p0[1])), "half_width_nm": half_width_nm}
    a_prof = qn.map_profile(a_map, data.affine_nm, positions, direction=data.direction, **band)
    m_prof = qn.map_profile(m_map, data.affine_nm, positions, direction=data.direction, **band)
    if np.any(a_prof.npixels == 0):
        raise ValueError("some EDX points have no SIMS pixels in their bin: the line is not "
                         "inside the SIMS field")
    a_tot = np.maximum(a_prof.total, 0.0)
    m_tot = np.maximum(m_prof.total, 0.0)
    blur = probe_blur(data.start.get("sims_map", {}), data.direction) \
        if match_resolution else None
    blur_record = None
    if blur is not None:
        # Along the gradient only: across it the bins average the whole map (or the band).
        fa_, fm_ = (qn.blur_factor(img, data.affine_nm, positions, direction=data.direction,
                                   **blur) for img in (a_map, m_map))
        a_tot, m_tot = a_tot / fa_, m_tot / fm_
        blur_record = {"core_fwhm_nm": blur["core_fwhm_nm"], "halo": list(blur["halo"]),
                       "analyte_factor_range": [float(fa_.min()), float(fa_.max())],
                       "matrix_factor_range": [float(fm_.min()), float(fm_.max())]}
    fa = profile_edx.fractions[data.analyte]
    if min_detected_sigma is None:
        mask = profile_edx.detected[data.analyte] & profile_edx.detected[data.matrix]
    else:
        blank = profile_edx.detection_limit[data.analyte] / edx_analysis.DETECTION_SIGMA
        mask = (fa > min_detected_sigma * blank) & profile_edx.detected[data.matrix]
    calibration = qn.calibrate_rsf(fa, profile_edx.sigma[data.analyte], a_tot, m_tot,
                                   mask=mask, degree=degree, binary=data.binary)
    at_points = qn.quantify_map(a_tot, m_tot, calibration)
    a_px, m_px = np.maximum(a_map, 0.0), np.maximum(m_map, 0.0)
    if blur is not None:
        a_px, m_px = (img / qn.blur_factor(img, data.affine_nm, direction=data.direction,
                                           **blur) for img in (a_px, m_px))
    per_pixel = qn.quantify_map(a_px, m_px, calibration)
    return CalibrationResult(
        data=data, edx=profile_edx, positions_nm=positions, analyte_profile=a_prof,
        matrix_profile=m_prof, mask=np.asarray(mask, bool), calibration=calibration,
        profile=at_points, map=per_pixel,
        detection_limit=float(np.median(profile_edx.detection_limit[data.analyte])),
        quantification_limit=float(np.median(profile_edx.quantification_limit[data.analyte])),
        k_factors=k, corrections=corrections, probe_blur=blur_record)


__all__ = [
    "CalibrationData",
    "CalibrationDataError",
    "CalibrationResult",
    "corrected_counts",
    "from_catalog",
    "from_documents",
    "from_runs",
    "probe_blur",
    "quantify",
]
