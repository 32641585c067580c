"""The metadata contract of every run (``docs/catalog.md``): what a start document must
hold, checked before a run starts (:func:`require_metadata`) and by the validator.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from numbers import Real
from typing import Any

MODES = ("TEM", "SIMS")
REQUIRED_KEYS = (
    "sample", "specimen", "operator", "mode", "plan_name", "plan_args", "correlation_id", "region",
)
REGION_KEYS = ("x_um", "y_um", "z_um", "tilt_deg", "fov_um")
SIMS_REQUIRED_KEYS = ("collectors", "polarity", "bias_kV", "beam_energy_keV", "beam_current_pA")
POLARITIES = ("positive", "negative")


# =========================================================================== metadata


class MetadataError(ValueError):
    """The start metadata break the contract of docs/catalog.md; the run did not start."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("run metadata incomplete or invalid:\n  - " + "\n  - ".join(problems))


def new_correlation_id() -> str:
    """A fresh id for one correlative experiment (put the same one in all its runs)."""
    return str(uuid.uuid4())


def _is_number(x) -> bool:
    """A finite real number: NaN or an infinity in the region or the beam would make
    the run unfindable by range queries and wrong in every figure drawn from it."""
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def _nonempty_str(x) -> bool:
    return isinstance(x, str) and bool(x.strip())


def check_start_metadata(doc: Mapping[str, Any]) -> list[str]:
    """Problems with the start metadata ``doc`` (empty list: it follows the contract).

    The contract (docs/catalog.md): ``sample``, ``specimen``, ``operator`` (strings),
    ``mode`` ("TEM" or "SIMS"), ``plan_name`` (string), ``plan_args`` (dict),
    ``correlation_id`` (string), ``region`` (dict of ``x_um``, ``y_um``, ``z_um``,
    ``tilt_deg``, ``fov_um``, numbers, fov > 0); for SIMS also ``collectors`` (list of
    dicts, each with ``name`` and ``species`` and/or ``mass_u``), ``polarity``
    ("positive"/"negative"), ``bias_kV``, ``beam_energy_keV``, ``beam_current_pA``
    (numbers; energy and current > 0; bias sign matching the polarity).
    """
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        return [f"metadata must be a mapping, not {type(doc).__name__}"]
    for key in REQUIRED_KEYS:
        if key not in doc:
            problems.append(f"missing {key!r}")
    for key in ("sample", "specimen", "operator", "plan_name", "correlation_id"):
        if key in doc and not _nonempty_str(doc[key]):
            problems.append(f"{key!r} must be a non-empty string, got {doc[key]!r}")
    if "plan_args" in doc and not isinstance(doc["plan_args"], Mapping):
        problems.append(f"'plan_args' must be a dict, got {type(doc['plan_args']).__name__}")
    mode = doc.get("mode")
    if "mode" in doc and mode not in MODES:
        problems.append(f"'mode' must be one of {MODES}, got {mode!r}")
    if "region" in doc:
        region = doc["region"]
        if not isinstance(region, Mapping):
            problems.append(f"'region' must be a dict with {REGION_KEYS}, got {region!r}")
        else:
            for key in REGION_KEYS:
                if key not in region:
                    problems.append(f"'region' misses {key!r}")
                elif not _is_number(region[key]):
                    problems.append(f"'region.{key}' must be a finite number, got {region[key]!r}")
            if _is_number(region.get("fov_um")) and region["fov_um"] <= 0:
                problems.append(f"'region.fov_um' must be > 0, got {region['fov_um']!r}")
    if mode == "SIMS":
        problems.extend(_check_sims(doc))
    return problems


def _check_sims(doc: Mapping[str, Any]) -> list[str]:
    problems = [f"SIMS run missing {key!r}" for key in SIMS_REQUIRED_KEYS if key not in doc]
    collectors = doc.get("collectors")
    if "collectors" in doc:
        if not isinstance(collectors, list | tuple) or not collectors:
            problems.append(f"'collectors' must be a non-empty list of dicts, got {collectors!r}")
        else:
            for i, c in enumerate(collectors):
                if not isinstance(c, Mapping):
                    problems.append(f"collectors[{i}] must be a dict, got {c!r}")
                    continue
                if not _nonempty_str(c.get("name")):
                    problems.append(f"collectors[{i}] needs a 'name'")
                has_species = _nonempty_str(c.get("species"))
                has_mass = _is_number(c.get("mass_u"))
                if not (has_species or has_mass):
                    problems.append(f"collectors[{i}] needs 'species' (e.g. '7Li') or 'mass_u'")
                if "species" in c and not has_species:
                    problems.append(f"collectors[{i}].species must be a non-empty string")
                if has_species and "." in c["species"]:
                    problems.append(f"collectors[{i}].species {c['species']!r} must not contain '.'")
                if "mass_u" in c and not (has_mass and c["mass_u"] > 0):
                    problems.append(f"collectors[{i}].mass_u must be a positive number")
    polarity = doc.get("polarity")
    if "polarity" in doc and polarity not in POLARITIES:
        problems.append(f"'polarity' must be one of {POLARITIES}, got {polarity!r}")
    for key in ("bias_kV", "beam_energy_keV", "beam_current_pA"):
        if key in doc and not _is_number(doc[key]):
            problems.append(f"{key!r} must be a finite number, got {doc[key]!r}")
    for key in ("beam_energy_keV", "beam_current_pA"):
        if _is_number(doc.get(key)) and doc[key] <= 0:
            problems.append(f"{key!r} must be > 0, got {doc[key]!r}")
    bias = doc.get("bias_kV")
    if polarity in POLARITIES and _is_number(bias) and bias != 0:
        if (bias > 0) != (polarity == "positive"):
            problems.append(f"bias_kV {bias} does not extract {polarity} ions (sign mismatch)")
    return problems


def normalize_start_metadata(md: Mapping[str, Any]) -> dict[str, Any]:
    """Derived, searchable fields: ``species`` (list) and ``species_index`` from ``collectors``.

    ``species_index`` is ``{species: True}`` so that :meth:`Catalog.by_species` is an
    exact, case-sensitive equality query on SQLite and PostgreSQL alike.
    """
    md = dict(md)
    collectors = md.get("collectors")
    if isinstance(collectors, list | tuple):
        species = [c["species"] for c in collectors
                   if isinstance(c, Mapping) and _nonempty_str(c.get("species"))]
        md.setdefault("species", species)
        md["species_index"] = {s: True for s in md["species"] if isinstance(s, str) and "." not in s}
    return md


def require_metadata(RE, *, extra_check: Callable[[Mapping], Iterable[str]] | None = None) -> None:
    """Make ``RE`` refuse to open a run whose metadata break the contract.

    Installs ``RE.md_validator`` (runs bluesky's default check, then
    :func:`check_start_metadata` on the final metadata of each ``open_run``: RE.md,
    the call's metadata and the plan's) raising :class:`MetadataError`, and
    ``RE.md_normalizer`` (:func:`normalize_start_metadata`, chained after the
    previous normalizer). A run refused this way emits no document.
    """
    from bluesky.run_engine import _default_md_validator

    previous_validator = RE.md_validator
    previous_normalizer = RE.md_normalizer

    def validator(md):
        (previous_validator or _default_md_validator)(md)
        problems = check_start_metadata(md)
        if extra_check is not None:
            problems.extend(extra_check(md))
        if problems:
            raise MetadataError(problems)

    def normalizer(md):
        if previous_normalizer is not None:
            md = previous_normalizer(md)
        return normalize_start_metadata(md)

    validator.temsims_metadata = True  # type: ignore[attr-defined]
    RE.md_validator = validator
    RE.md_normalizer = normalizer
