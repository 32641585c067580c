"""What every temsims plan shares: argument checks, start metadata, the safe state.

Argument checks
    ``check_*`` raise ``TypeError`` (wrong type) or ``ValueError`` (out of range),
    naming the argument and what is allowed. Plans call them *before their first
    message*, so a refused argument never leaves anything moved or triggered.

Start metadata
    :func:`region_md` (a plan stub reading the stage) and :func:`start_metadata`
    build the start-document contract of ``temsims.catalog.check_start_metadata``:
    ``mode``, ``plan_name``, ``plan_args``, ``correlation_id`` (from ``md`` or a new
    uuid4), ``region`` {x_um, y_um, z_um, tilt_deg, fov_um}, and for SIMS runs
    ``collectors`` (list of {name, species, mass_u}), ``polarity``, ``bias_kV``,
    ``beam_energy_keV``, ``beam_current_pA`` (:func:`sims_md`). ``sample``,
    ``specimen`` and ``operator`` are not invented here: they come from ``md`` or
    ``RE.md``. Keys given in ``md`` win over what the plan computes.

Safe state
    :func:`safe_state` blanks the ion beam, stops any raster and ramps the holder
    bias to 0 V; :func:`with_safe_state` runs a plan under ``bpp.finalize_wrapper``
    so that on failure or abort the instrument is left that way (on success the
    beam is blanked and, unless asked otherwise, the bias is left where it is so
    the next SIMS run can follow).
"""

from __future__ import annotations

import logging
import math
import numbers
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from temsims.constants import species_for_mass, species_label, species_mass, value_dtype

logger = logging.getLogger(__name__)

#: Messages that move or trigger hardware (what argument checks must precede).
HARDWARE_COMMANDS = frozenset({"set", "trigger", "kickoff", "complete", "collect", "stage",
                               "open_run"})
N_COLLECTORS = 4


# ============================================================================ checks
def check_number(name: str, value: Any, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False,
                 high_open: bool = False, unit: str = "") -> float:
    """``value`` as a float, or ``TypeError``/``ValueError`` naming ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{_range_text(low, high, low_open, high_open, unit)}"
                        f", got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number"
                         f"{_range_text(low, high, low_open, high_open, unit)}, got {value!r}")
    bad_low = low is not None and (v <= low if low_open else v < low)
    bad_high = high is not None and (v >= high if high_open else v > high)
    if bad_low or bad_high:
        raise ValueError(f"{name} = {value!r}{' ' + unit if unit else ''} is outside the allowed "
                         f"range{_range_text(low, high, low_open, high_open, unit)}")
    return v


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int (integral numbers only), within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and math.isfinite(float(value)) and float(value) == int(value):
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer{_range_text(low, high, False, False, '')}"
                            f", got {value!r} ({type(value).__name__})")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{name} = {v} is outside the allowed range"
                         f"{_range_text(low, high, False, False, '')}")
    return v


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_pair(name: str, value: Any, *, integer: bool = False, low=None, high=None,
               unit: str = "") -> tuple:
    """A 2-sequence ``(a, b)`` of numbers (or integers), each within the range."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (a, b), got {value!r}")
    if integer:
        return tuple(check_int(f"{name}[{i}]", v, low=low, high=high) for i, v in enumerate(value))
    return tuple(check_number(f"{name}[{i}]", v, low=low, high=high, unit=unit)
                 for i, v in enumerate(value))


def check_md(md: Any) -> dict:
    if md is None:
        return {}
    if not isinstance(md, Mapping):
        raise TypeError(f"md must be a dict or None, got {type(md).__name__}")
    for key in md:
        if not isinstance(key, str):
            raise TypeError(f"md keys must be strings, got {key!r}")
    cid = md.get("correlation_id")
    if cid is not None and not (isinstance(cid, str) and cid.strip()):
        raise ValueError(f"md['correlation_id'] must be a non-empty string, got {cid!r}")
    return dict(md)


def check_device(name: str, obj: Any, protocol: type) -> None:
    """``TypeError`` unless ``obj`` has every attribute ``protocol`` (one of
    :mod:`temsims.plans.types`) asks of it."""
    from temsims.plans.types import required_attributes

    if obj is None or isinstance(obj, str | numbers.Number):
        raise TypeError(f"{name} must be a device, got {obj!r}")
    missing = [a for a in required_attributes(protocol) if not hasattr(obj, a)]
    if missing:
        raise TypeError(f"{name} ({getattr(obj, 'name', obj)!r}) is not a "
                        f"{protocol.__name__}: it has no {', '.join(missing)}")


def microscope_parts(microscope: Any, *names: str) -> tuple:
    """The parts ``names`` of ``microscope`` (a :class:`temsims.plans.types.Microscope`),
    each checked against its protocol: ``TypeError`` naming the part and what it lacks."""
    from temsims.plans.types import MICROSCOPE_PARTS

    if microscope is None or isinstance(microscope, str | numbers.Number | Mapping):
        raise TypeError(f"microscope must be an object with the instrument's parts as "
                        f"attributes (temsims.devices.connect() returns one), got {microscope!r}")
    for name in names:
        check_device(f"microscope.{name}", getattr(microscope, name, None),
                     MICROSCOPE_PARTS[name])
    return tuple(getattr(microscope, name) for name in names)


def check_species(name: str, species: Any, *, max_n: int = N_COLLECTORS,
                  min_n: int = 1) -> tuple[str, ...]:
    """Canonical isotope labels (``"7Li"``) of a sequence of species, unique."""
    if isinstance(species, str) or not isinstance(species, Sequence):
        raise TypeError(f"{name} must be a list or tuple of species such as ('6Li', '7Li'), "
                        f"got {species!r}")
    if not min_n <= len(species) <= max_n:
        raise ValueError(f"{name} must hold {min_n}..{max_n} species, got {len(species)}")
    labels = []
    for i, s in enumerate(species):
        if not isinstance(s, str):
            raise TypeError(f"{name}[{i}] must be an isotope string such as '7Li', got {s!r}")
        try:
            species_mass(s)
            labels.append(species_label(s))
        except ValueError as exc:
            raise ValueError(f"{name}[{i}]: {exc}") from None
    if len(set(labels)) != len(labels):
        raise ValueError(f"{name} must not repeat a species, got {list(species)}")
    return tuple(labels)


def device_limits(obj: Any) -> tuple[float, float] | None:
    """The limits ``obj`` published when it connected, or ``None`` while it is not
    connected (a plan listed or summarised with no IOC behind its devices).

    Limits are channel metadata the control layer cached at connection, not a read:
    a plan checks its arguments against them before anything moves, and skips the
    check when there are none.
    """
    if not getattr(obj, "connected", False):
        return None
    try:
        low, high = obj.limits
    except Exception:  # noqa: BLE001 - a device without limits: nothing to check
        return None
    if low is None or high is None:
        return None
    return float(low), float(high)


def within(value: float, limits: tuple[float, float] | None) -> bool:
    """Whether ``value`` is within device limits ``(low, high)``; True when there are
    none (``None``, or low >= high: caproto's and ophyd's "no limits")."""
    return limits is None or not limits[0] < limits[1] or limits[0] <= value <= limits[1]


def clip_within(value: float, limits: tuple[float, float] | None) -> float:
    """``value`` moved to the nearest end of device limits ``(low, high)`` if outside."""
    if within(value, limits):
        return value
    return min(max(value, limits[0]), limits[1])


def require_settings(part: Any, role: str, attrs: Sequence[str], purpose: str) -> None:
    """Refuse ``part`` (TypeError, naming it) unless it has every signal of ``attrs``:
    what a plan that writes a calibration or a setting needs (``purpose``, as in
    "this plan needs a raster calibration to write")."""
    for attr in attrs:
        if getattr(part, attr, None) is None:
            raise TypeError(f"{role} {getattr(part, 'name', part)!r} has no {attr}: "
                            f"this plan needs {purpose}")


def check_within(name: str, value: float, limits: tuple[float, float] | None,
                 unit: str = "") -> None:
    """``ValueError`` unless ``value`` is within device limits ``(low, high)`` (if any)."""
    if not within(value, limits):
        low, high = limits
        raise ValueError(f"{name} = {value!r}{' ' + unit if unit else ''} is outside the "
                         f"device's limits [{low:g}, {high:g}]{' ' + unit if unit else ''}")


def _range_text(low, high, low_open, high_open, unit) -> str:
    if low is None and high is None:
        return ""
    u = f" {unit}" if unit else ""
    if high is None:
        return f" ({'>' if low_open else '>='} {low:g}{u})"
    if low is None:
        return f" ({'<' if high_open else '<='} {high:g}{u})"
    return (f" {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}{u}")


# ============================================================================ metadata
def plan_args_md(**kwargs) -> dict:
    """``plan_args``: devices by name, numbers and strings as they are, tuples as lists."""
    def clean(v):
        if hasattr(v, "name") and hasattr(v, "read"):
            return repr(v.name)
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        if v is None or isinstance(v, bool | int | float | str):
            return v
        return repr(v)
    return {k: clean(v) for k, v in kwargs.items()}


def _num(value, default: float = 0.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


#: ``calibration=`` of the correlative plans (:func:`check_geometry_calibration`).
CALIBRATION_POLICIES = ("warn", "refuse", "ignore")
#: A coincidence correction measured within this many volts of the working bias holds.
CALIBRATION_BIAS_TOLERANCE_V = 1.0


def check_calibration_policy(policy: Any) -> str:
    """``calibration=`` of a correlative plan: one of :data:`CALIBRATION_POLICIES`."""
    if not isinstance(policy, str) or policy not in CALIBRATION_POLICIES:
        raise ValueError(f"calibration must be one of {CALIBRATION_POLICIES}, got {policy!r}")
    return policy


def _enforce_calibration_policy(problems: list[str], policy: str, plan: str) -> None:
    """What ``calibration=`` does with a check's ``problems``: "refuse" raises
    RuntimeError (before anything moves), otherwise each is logged as a warning."""
    if not problems:
        return
    text = f"{plan}: " + "; ".join(problems)
    if policy == "refuse":
        raise RuntimeError(text + " (or pass calibration='warn' to map anyway)")
    logger.warning(text)


def check_geometry_calibration(column, voltage_v: float, policy: str, *, plan: str):
    """Plan stub (reads only): is the ion beam's geometry calibrated for a map at the
    holder bias ``voltage_v``?

    A real column has a raster field and rotation error and a TEM/FIB coincidence
    offset that follows the bias (decisions 0029, 0042); a lab calibrates them at the
    start of a session. The raster is taken as never calibrated while SCAN:FOV_CAL is
    1 and SCAN:ROT_CAL 0 (their start-up values), the coincidence while
    COINCIDENCE:BIAS (the bias it was measured at) is 0; a coincidence measured at
    another bias does not hold at this one. A column without these PVs is not checked.

    Parameters
    ----------
    column
        The ion column (``fov_cal``, ``rot_cal``, ``coincidence_x/y``,
        ``coincidence_bias`` where it has them).
    voltage_v : float
        The bias the plan maps at (V).
    policy : {"warn", "refuse", "ignore"}
        What to do about a problem: log a warning, raise, or nothing (the column is
        not read).
    plan : str
        The plan's name, for the messages.

    Returns
    -------
    dict
        The start documents' ``geometry_calibration`` block: ``policy``, the values
        read (``fov_cal``, ``rot_cal_deg``, ``coincidence_um``,
        ``coincidence_bias_v``; None where the column has none) and ``problems``
        (list of str, each naming the plan to run).

    Raises
    ------
    RuntimeError
        With ``policy="refuse"`` and a problem, before anything moves.
    """
    out: dict[str, Any] = {"policy": policy, "fov_cal": None, "rot_cal_deg": None,
                           "coincidence_um": None, "coincidence_bias_v": None, "problems": []}
    if policy == "ignore":
        return out

    def read(name, default):
        sig = getattr(column, name, None)
        if sig is None:
            return None
        return _num((yield from bps.rd(sig, default_value=default)), default)

    out["fov_cal"] = yield from read("fov_cal", 1.0)
    out["rot_cal_deg"] = yield from read("rot_cal", 0.0)
    cx = yield from read("coincidence_x", 0.0)
    cy = yield from read("coincidence_y", 0.0)
    if cx is not None and cy is not None:
        out["coincidence_um"] = [cx, cy]
    out["coincidence_bias_v"] = bias_v = yield from read("coincidence_bias", 0.0)
    if out["fov_cal"] == 1.0 and out["rot_cal_deg"] == 0.0:
        out["problems"].append(
            "the ion raster's field and rotation are not calibrated (SCAN:FOV_CAL 1, "
            "SCAN:ROT_CAL 0, their start-up values): run calibrate_raster first")
    if bias_v is not None:
        if bias_v == 0.0:
            out["problems"].append(
                "the TEM/FIB coincidence was never measured (COINCIDENCE:BIAS 0): run "
                f"calibrate_coincidence(voltage_v={voltage_v:g}) first")
        elif abs(bias_v - voltage_v) > CALIBRATION_BIAS_TOLERANCE_V:
            out["problems"].append(
                f"the TEM/FIB coincidence correction in force was measured at {bias_v:g} V, "
                f"this plan maps at {voltage_v:g} V (the offset follows the bias): run "
                f"calibrate_coincidence(voltage_v={voltage_v:g}) first")
    _enforce_calibration_policy(out["problems"], policy, plan)
    return out


def region_md(stage, *, fov_um: float, x_um: float | None = None, y_um: float | None = None):
    """Plan stub: the ``region`` dict, from ``x_um``/``y_um`` if given (targets) else the
    stage readbacks; ``z_um`` and ``tilt_deg`` (alpha) are always read."""
    out = {}
    for key, axis, given in (("x_um", stage.x, x_um), ("y_um", stage.y, y_um),
                             ("z_um", stage.z, None), ("tilt_deg", stage.alpha, None)):
        if given is not None:
            out[key] = float(given)
        else:
            out[key] = _num((yield from bps.rd(axis, default_value=0.0)))
    out["fov_um"] = float(fov_um)
    return out


def sims_md(spectrometer, column, bias):
    """Plan stub: the SIMS keys of the contract, read from the devices now.

    ``collectors``: one dict per collector {name ('col1'..), species (if the mass is a
    known isotope), mass_u}; ``polarity`` from the spectrometer; ``bias_kV`` from
    the bias readback (omitted without ``bias``); ``beam_energy_keV`` the landing
    energy and ``beam_current_pA`` the ion-beam current (omitted without ``column``),
    ``probe_nm`` its probe's FWHM in focus (PROBE_RBV, nm: the quantification divides
    its blur out of a gradient's profile);
    ``dead_time_s`` the counting chain's calibrated dead time (DEAD_TIME, if the
    spectrometer has it), which the analysis needs to correct high count rates, and
    ``dead_time_source`` where it came from (DEAD_TIME:SOURCE: "nominal", "manual",
    "calibrated <run> <date>"; :func:`read_dead_time`); ``coincidence_um`` the TEM/FIB
    coincidence correction the column applies (COINCIDENCE:X/Y, um; a column that has
    one: decision 0042); ``raster_cal`` the raster calibration it applies
    ({"fov_factor", "rotation_deg"}: SCAN:FOV_CAL, SCAN:ROT_CAL; decision 0029);
    ``focus_um`` the objective focus offset the column applies (FOCUS, um; a column
    that has one: decision 0044) and ``focus_table_um`` its bias focus table's move
    (FOCUS_TABLE_RBV, um).
    """
    out: dict[str, Any] = {}
    collectors = []
    for n, col in enumerate(spectrometer.collector_list(), start=1):
        mass = _num((yield from bps.rd(col.mass, default_value=0.0)))
        entry: dict[str, Any] = {"name": f"col{n}"}
        species = yield from bps.rd(col.species, default_value="")
        label = str(species or "") or (species_for_mass(mass, 0.02) or "")
        if label:
            entry["species"] = label
        if mass > 0:
            entry["mass_u"] = round(mass, 5)
        if "species" not in entry and "mass_u" not in entry:
            entry["mass_u"] = 1.0  # unknown in a simulation without a live IOC
        collectors.append(entry)
    out["collectors"] = collectors
    polarity = yield from bps.rd(spectrometer.polarity, default_value="Positive")
    out["polarity"] = "negative" if str(polarity).lower().startswith("neg") else "positive"
    dead, source = yield from read_dead_time(spectrometer, None)
    if dead is not None:
        out["dead_time_s"] = dead
        out["dead_time_source"] = source
    if bias is not None:
        volts = _num((yield from bps.rd(bias.readback, default_value=0.0)))
        out["bias_kV"] = round(volts / 1000.0, 4)
    if column is not None:
        out["beam_energy_keV"] = _num((yield from bps.rd(column.landing, default_value=0.0)))
        out["beam_current_pA"] = _num((yield from bps.rd(column.current, default_value=0.0)))
        shift_x = getattr(column, "coincidence_x", None)
        shift_y = getattr(column, "coincidence_y", None)
        if shift_x is not None and shift_y is not None:
            out["coincidence_um"] = [
                _num((yield from bps.rd(shift_x, default_value=0.0))),
                _num((yield from bps.rd(shift_y, default_value=0.0)))]
        fov_cal = getattr(column, "fov_cal", None)
        rot_cal = getattr(column, "rot_cal", None)
        if fov_cal is not None and rot_cal is not None:
            out["raster_cal"] = {
                "fov_factor": _num((yield from bps.rd(fov_cal, default_value=1.0)), 1.0),
                "rotation_deg": _num((yield from bps.rd(rot_cal, default_value=0.0)))}
        probe = getattr(column, "probe", None)
        if probe is not None:
            out["probe_nm"] = _num((yield from bps.rd(probe, default_value=0.0)))
        focus = getattr(column, "focus", None)
        if focus is not None:
            out["focus_um"] = _num((yield from bps.rd(focus, default_value=0.0)))
        table = getattr(column, "focus_table", None)
        if table is not None:
            out["focus_table_um"] = _num((yield from bps.rd(table, default_value=0.0)))
    return out


def read_dead_time(spectrometer, default: float | None):
    """Plan stub: ``(dead_time_s, source)``, the spectrometer's calibrated dead time
    (DEAD_TIME) and where it came from (DEAD_TIME:SOURCE; "unknown" if it has none);
    ``(default, "default")`` without a DEAD_TIME (or in a simulation)."""
    if getattr(spectrometer, "dead_time", None) is None:
        return default, "default"
    dead = yield from bps.rd(spectrometer.dead_time, default_value=None)
    if dead is None:
        return default, "default"
    source = "unknown"
    if getattr(spectrometer, "dead_time_source", None) is not None:
        source = str((yield from bps.rd(spectrometer.dead_time_source,
                                        default_value="unknown")) or "unknown")
    return _num(dead), source


#: DEAD_TIME:SOURCE values that mean the maker's nominal dead time is in force (the
#: IOC's start-up and SIM:RESET value; "default": no DEAD_TIME read at all).
UNCALIBRATED_DEAD_TIME_SOURCES = ("nominal", "default")


def check_dead_time_calibration(spectrometer, policy: str, *, plan: str,
                                default: float | None):
    """Plan stub (reads only): ``(dead_time_s, source, problems)`` of the spectrometer
    (:func:`read_dead_time`), with a problem when the dead time in force is only the
    nominal one (:data:`UNCALIBRATED_DEAD_TIME_SOURCES`).

    An instrument's counting chain has its own dead time (22-45 ns in the twin against
    the maker's nominal 30 ns; decision 0034): on the nominal one the natural pad's
    7Li (MHz) is corrected wrongly and its K with it, which biased a bracketed
    search's labelled 6Li/7Li pulls to a mean of -1.2 (decision 0035, 2026-12-05
    amendment). ``policy`` as :func:`check_geometry_calibration`'s: "warn" logs the
    problem, "refuse" raises RuntimeError (before anything moves), "ignore" reports
    no problem (the dead time is still read).
    """
    tau, source = yield from read_dead_time(spectrometer, default)
    problems = []
    if policy != "ignore" and source in UNCALIBRATED_DEAD_TIME_SOURCES:
        shown = "unknown" if tau is None else f"{tau * 1e9:g} ns"
        problems.append(
            f"the dead time in force ({shown}, DEAD_TIME:SOURCE {source!r}) is the nominal "
            "one, not this instrument's (22-45 ns): run calibrate_dead_time first")
    _enforce_calibration_policy(problems, policy, plan)
    return tau, source, problems


def read_primary_current(column):
    """Plan stub: the ion column's current (pA, CURRENT_RBV: the aperture's), the
    primary ions per second of the quasi-simultaneous-arrival correction (decision
    0043); None without a reading (a simulation) or if it is not a positive number."""
    if getattr(column, "current", None) is None:
        return None
    value = yield from bps.rd(column.current, default_value=None)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def start_metadata(*, plan_name: str, plan_args: dict, mode: str, region: dict | None,
                   md: Mapping | None = None, sims: Mapping | None = None,
                   extra: Mapping | None = None) -> dict:
    """The start-document metadata a plan contributes (``md`` keys win)."""
    if mode not in ("TEM", "SIMS"):
        raise ValueError(f"mode must be 'TEM' or 'SIMS', got {mode!r}")
    out: dict[str, Any] = {"plan_name": plan_name, "plan_args": plan_args, "mode": mode}
    if region is not None:
        out["region"] = dict(region)
    if sims:
        out.update(sims)
    if extra:
        out.update(extra)
    md = dict(md or {})
    out.update(md)
    if not out.get("correlation_id"):
        out["correlation_id"] = str(uuid.uuid4())
    return out


# ============================================================================ readables
class Values:
    """A minimal Readable of computed values (for streams a plan derives itself).

    ``set_values(**values)`` stores them; ``read()`` returns them with one timestamp;
    ``describe()`` gives each value's dtype, ``dtype_numpy`` and shape, ``dims`` for an
    array and ``units`` if known. ``hints`` name the scalar values only, so a live
    table shows them and has no array to skip.

    Parameters
    ----------
    name
        Prefix of the data keys (``<name>_<value name>``).
    units
        Units by value name.
    describe_fn
        Replaces the description made from the values.
    dims
        Axis names by value name, for arrays; an array without them gets
        ``array_dims``, else names of its own (``<key>_0``, ...), so that no other
        array's axis of another size shares them.
    array_dims
        Axis names of every array not in ``dims`` (e.g. ``("line", "x")`` for map lines
        whose keys are known only when the values are).
    """

    parent = None

    def __init__(self, name: str, units: Mapping[str, str] | None = None,
                 describe_fn=None, dims: Mapping[str, Sequence[str]] | None = None,
                 array_dims: Sequence[str] | None = None) -> None:
        self.name = name
        self._units = dict(units or {})
        self._dims = {k: list(v) for k, v in (dims or {}).items()}
        self._array_dims = None if array_dims is None else list(array_dims)
        self._values: dict[str, Any] = {}
        self._describe_fn = describe_fn
        self._t = 0.0

    def set_values(self, **values) -> None:
        import time

        self._values = values
        self._t = time.time()

    def read(self) -> dict:
        return {f"{self.name}_{k}": {"value": v, "timestamp": self._t}
                for k, v in self._values.items()}

    def describe(self) -> dict:
        if self._describe_fn is not None:
            return self._describe_fn()
        desc = {}
        for k, v in self._values.items():
            key = f"{self.name}_{k}"
            arr = np.asarray(v)
            if arr.ndim:
                dtype = "array"
            elif isinstance(v, str):
                dtype = "string"
            elif isinstance(v, bool | np.bool_):
                dtype = "boolean"
            elif isinstance(v, numbers.Integral):
                dtype = "integer"
            else:
                dtype = "number"
            entry = {"source": f"plan:{self.name}", "dtype": dtype, "shape": list(arr.shape),
                     "dtype_numpy": value_dtype(v)}
            if arr.ndim:
                dims = (self._dims.get(k) or self._array_dims
                        or [f"{key}_{axis}" for axis in range(arr.ndim)])
                if len(dims) != arr.ndim:
                    raise ValueError(f"{key}: dims {dims} do not match shape {list(arr.shape)}")
                entry["dims"] = list(dims)
            if k in self._units:
                entry["units"] = self._units[k]
            desc[key] = entry
        return desc

    @property
    def hints(self) -> dict:
        return {"fields": [f"{self.name}_{k}" for k, v in self._values.items()
                           if not np.ndim(v)]}

    def read_configuration(self) -> dict:
        return {}

    def describe_configuration(self) -> dict:
        return {}


# ============================================================================ safe state
def safe_state(column=None, bias=None, *, ramp_bias: bool = True):
    """Plan: blank the ion beam, stop any raster, ramp the holder bias to 0 V.

    Parameters
    ----------
    column
        The ion column (:class:`~temsims.devices.column.IonColumn`), or any object
        with a ``blank`` signal; ``None`` to leave the beam alone.
    bias
        The bias supply (:class:`~temsims.devices.bias.BiasSupply`); ``None`` to leave
        it alone.
    ramp_bias
        Ramp the bias to 0 V (the ramp runs at the supply's RAMP_RATE, V/s).
    """
    if column is not None:
        blank = getattr(column, "blank", None) or getattr(column, "ion_blank", None)
        if hasattr(column, "scan"):
            yield from bps.stop(column)  # aborts a raster (no-op when idle)
        if blank is not None:
            yield from bps.abs_set(blank, "Blanked", group="_safe_state")
    if bias is not None and ramp_bias:
        yield from bps.abs_set(bias, 0.0, group="_safe_state")
    yield from bps.wait(group="_safe_state")


def with_safe_state(plan, column=None, bias=None, *, ramp_bias_on_success: bool = False):
    """Run ``plan`` under ``bpp.finalize_wrapper(..., safe_state)``.

    The beam is blanked whatever happens; the bias is ramped to 0 V when the plan
    fails or is aborted (and on success only with ``ramp_bias_on_success``).
    """
    state = {"ok": False}

    def body():
        ret = yield from plan
        state["ok"] = True
        return ret

    def final():
        yield from safe_state(column, bias,
                              ramp_bias=(not state["ok"]) or ramp_bias_on_success)

    return (yield from bpp.finalize_wrapper(body(), final))


__all__ = [
    "CALIBRATION_POLICIES",
    "HARDWARE_COMMANDS",
    "Values",
    "check_bool",
    "check_calibration_policy",
    "check_device",
    "check_dead_time_calibration",
    "check_geometry_calibration",
    "check_int",
    "check_md",
    "check_number",
    "check_pair",
    "check_species",
    "check_within",
    "clip_within",
    "device_limits",
    "plan_args_md",
    "read_dead_time",
    "read_primary_current",
    "region_md",
    "safe_state",
    "sims_md",
    "start_metadata",
    "with_safe_state",
]
