"""The case studies ``temsims demo --case NAME`` runs (decision 0027).

A case is a module of this package (its name not starting with ``_``) that defines
``CASE``, a :class:`Case`: which specimen the instrument must hold, the measurement as
plans on the connected devices, and the report, read back only from the catalog. The
demo's runner (:func:`temsims.app.demo.run_demo`) does everything else the same way
for every case: it starts the IOCs with the case's specimen, connects the devices,
opens the catalog, builds the RunEngine that writes into it and enforces the metadata
contract, and prints where everything is.

A module is found by its file alone (:func:`available_cases`): adding a case adds a
module and touches no other case. Case modules import nothing heavy at import time
(``temsims demo --help`` lists them), only inside their functions.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The case ``temsims demo`` runs without ``--case``.
DEFAULT_CASE = "particles"
#: ``--case`` value that runs every case into one catalog, with an HTML index.
ALL_CASES = "all"


@dataclass
class CaseReport:
    """What a case's report step returns to the runner.

    Attributes
    ----------
    files : list of pathlib.Path
        Every file written (PNGs, ``report.json``), printed by the runner.
    correlation_ids : list of str
        The experiments the report was read from.
    summary : dict
        The case's figures (what :class:`temsims.app.demo.DemoResult` carries on).
    """

    files: list[Path]
    correlation_ids: list[str]
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One case study of the demo.

    Attributes
    ----------
    name : str
        ``--case`` value.
    specimen : str
        The virtual specimen the IOCs must be started with (``temsims ioc --specimen``).
    title : str
        One line for ``temsims demo --help``.
    full, quick : mapping
        Sizes of the full and the ``--quick`` run; ``camera_size`` (px) is set on the
        camera by the runner, the rest is the case's own.
    measure : callable
        ``measure(RE, devices, sizes, say) -> dict``: the plans, run on ``RE`` (which
        writes to the catalog); the dict holds at least ``correlation_ids`` (list of
        str), and whatever ``report`` needs to find the runs (never the data).
    report : callable
        ``report(catalog, measured, out, sizes, say) -> CaseReport``: reads the runs
        back from ``catalog`` (the data only from there) and writes the report in
        ``out``; it may ``say`` its figures.
    alignment : mapping, optional
        The session alignment the runner does before ``measure``
        (:func:`temsims.plans.align_ion_beam`'s ``center``, ``voltage_v``,
        ``species``, ...): a feature-rich area of the specimen both beams see, at the
        case's working bias. None: the case's specimen has no such area the
        alignment is proven on; the runner then starts its instrument with exact
        geometry (``--calibration-errors none``; decision 0042, 2026-12-05
        amendment).
    """

    name: str
    specimen: str
    title: str
    full: Mapping[str, Any]
    quick: Mapping[str, Any]
    measure: Callable[..., dict]
    report: Callable[..., CaseReport]
    alignment: Mapping[str, Any] | None = None

    def sizes(self, quick: bool) -> dict[str, Any]:
        return dict(self.quick if quick else self.full)


def available_cases() -> dict[str, Case]:
    """Every case of this package, by name (the default first, then by name)."""
    found: dict[str, Case] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        case = getattr(importlib.import_module(f"{__name__}.{info.name}"), "CASE", None)
        if isinstance(case, Case):
            found[case.name] = case
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != DEFAULT_CASE, kv[0])))


def get_case(name: str) -> Case:
    """The case called ``name``.

    Raises
    ------
    ValueError
        For a name no module defines.
    """
    cases = available_cases()
    if name not in cases:
        raise ValueError(f"unknown case {name!r}; expected one of {', '.join(cases)}")
    return cases[name]


__all__ = ["ALL_CASES", "DEFAULT_CASE", "Case", "CaseReport", "available_cases", "get_case"]
