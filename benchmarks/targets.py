"""The benchmarks' targets, in one place.

The scripts in ``benchmarks/`` print their figures against these numbers and record
them in their JSON; ``run_all.py`` judges its table with them. Each target says where
it was stated, so a change of target is a change here and in that source.

A target limits either a figure's value (``on="value"``, in ``unit``) or the figure's
ratio to its anchor, the reference measured in the same run (``on="ratio"``). ``at``
names the fields of the script's JSON result the target was stated for (map and image
sizes): a result measured at other values (``run_all.py --quick``) is shown but not
judged, because a time for a smaller map says nothing about the target's map.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, eq=False)
class Target:
    """One target: a figure, or its ratio to its anchor, at most ``limit``.

    Parameters
    ----------
    benchmark
        Script stem in ``benchmarks/`` (``step_scan_overhead``).
    figure
        Key of the figure in that benchmark's rows of ``run_all.py``.
    what
        The figure in words, for a row whose script failed.
    limit
        Upper bound (inclusive).
    on
        ``"value"``: the bound is on the figure itself, in ``unit``; ``"ratio"``: on
        the figure over its anchor.
    unit
        Unit of ``limit`` when ``on="value"``.
    at
        JSON fields of the result (name -> value) the target was stated for.
    source
        Where the target is stated.
    """

    benchmark: str
    figure: str
    what: str
    limit: float
    on: str = "value"
    unit: str = ""
    at: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        if self.on not in ("value", "ratio"):
            raise ValueError(f"Target.on must be 'value' or 'ratio', not {self.on!r}")

    def describe(self) -> str:
        """The bound as a table cell: ``<= 2x`` or ``<= 0.2 ms``."""
        if self.on == "ratio":
            return f"<= {self.limit:g}x"
        return f"<= {self.limit:g} {self.unit}".rstrip()

    def applies_to(self, result: Mapping[str, Any]) -> bool:
        """Whether ``result`` (a script's JSON) was measured where the target was stated."""
        return all(result.get(key) == value for key, value in self.at.items())

    def met(self, value: float, ratio: float | None) -> bool:
        """Whether the figure ``value`` (with ``ratio`` to its anchor) is within the target."""
        measured = ratio if self.on == "ratio" else value
        return measured is not None and measured <= self.limit


STEP_SCAN_RATIO = Target(
    "step_scan_overhead", "ca_step_scan", "CA step scan per point", 2.0, on="ratio",
    source="step_scan_overhead.py; docs/decisions/0012-motor-done-race.md")
SIMS_MAP_RATIO = Target(
    "sims_map_benchmark", "map_wall", "SIMS map wall time", 1.1, on="ratio",
    at={"nx": 512, "ny": 512, "dwell_s": 1e-6}, source="sims_map_benchmark.py")
CATALOG_CALL_MS = Target(
    "catalog_cost", "writer_call", "catalog writer call per event", 0.2, unit="ms/event",
    source="catalog_cost.py; docs/catalog.md (met for the call, not resolvable in wall time)")
CATALOG_BLOCKED_S = Target(
    "catalog_cost", "blocked", "RE blocked on storage", 0.0, unit="s",
    source="catalog_cost.py; docs/catalog.md")
FUSION_S = Target(
    "analysis_benchmark", "fusion", "fusion of 4096^2 TEM + 4 x 512^2 map", 1.0, unit="s",
    at={"tem_size": 4096, "map_size": 512}, source="analysis_benchmark.py")
REGISTRATION_S = Target(
    "analysis_benchmark", "registration", "registration of 512^2 map on 4096^2 TEM", 2.0,
    unit="s", at={"tem_size": 4096, "map_size": 512}, source="analysis_benchmark.py")
MAP_PATH_RATIO = Target(
    "map_path_benchmark", "plan_wall", "sims_map plan wall time", 1.05, on="ratio",
    at={"nx": 256, "ny": 256, "dwell_s": 1e-4}, source="issue 11, item 5")
MAP_PATH_STORED_S = Target(
    "map_path_benchmark", "stored_after", "stored after the last map line", 1.0, unit="s",
    at={"nx": 256, "ny": 256, "dwell_s": 1e-4}, source="issue 11, item 5")
CATALOG_READ_MAP_S = Target(
    "catalog_read_benchmark", "read_map", "read a 512 x 512 x 4 map back", 0.2, unit="s",
    at={"nx": 512, "ny": 512}, source="issue 12, item 5")
CATALOG_VISIBLE_S = Target(
    "catalog_read_benchmark", "visible_after", "map visible to another process after its last "
    "line", 1.0, unit="s", at={"nx": 512, "ny": 512}, source="issue 12, item 5")
CATALOG_OPEN_S = Target(
    "catalog_read_benchmark", "open", "open_catalog(DIR) in a fresh process", 2.0, unit="s",
    source="issue 12, item 1")
QUANTIFY_S = Target(
    "quantification_benchmark", "quantify_map", "quantify_map 512 x 512", 0.5, unit="s",
    at={"map_shape": [512, 512]}, source="quantification_benchmark.py")
QUANTIFY_P90 = Target(
    "quantification_benchmark", "worst_p90", "quantification: 90th percentile over fresh seed "
    "pairs of the worst |rel. error| over 0.1-10 at.%", 0.10, unit="",
    source="issue 15 (Done when)")
QUANT_CASE_P90 = Target(
    "quantification_case_benchmark", "worst_p90", "quantification case (temsims demo): 90th "
    "percentile over seeds of the worst |rel. error| of the quantified map over 0.1-10 at.%",
    0.10, unit="", source="issue 16 (scored as issue 15)")
PARTICLES_MISS = Target(
    "particles_benchmark", "miss_rate", "labelled particles missed (1 - recall, per particle "
    "by centroid)", 0.05, unit="", source="issue 15 (Done when)")
PARTICLES_FALSE = Target(
    "particles_benchmark", "false_rate", "false labelled reports (1 - precision, per particle "
    "by centroid)", 0.05, unit="", source="issue 15 (Done when)")
STREAM_PAGE_LATENCY_MS = Target(
    "zmq_stream_benchmark", "page_latency_max", "map page -> viewer's views done", 200.0,
    unit="ms", source="docs/remote.md: the views keep up with the flyer's collect period "
    "(temsims.plans.sims.FLUSH_PERIOD_S)")

HALO_RENDER_RATIO = Target(
    "twin_render_benchmark", "halo_frame", "twin frame with the probe halo", 1.6, on="ratio",
    at={"n": 512}, source="twin_render_benchmark.py; docs/decisions/0040-probe-halo.md")
TARGETS: tuple[Target, ...] = (STEP_SCAN_RATIO, SIMS_MAP_RATIO, MAP_PATH_RATIO,
                               MAP_PATH_STORED_S, CATALOG_CALL_MS, CATALOG_BLOCKED_S,
                               FUSION_S, REGISTRATION_S, QUANTIFY_S, CATALOG_READ_MAP_S,
                               CATALOG_VISIBLE_S, CATALOG_OPEN_S, STREAM_PAGE_LATENCY_MS,
                               QUANTIFY_P90, QUANT_CASE_P90, PARTICLES_MISS,
                               PARTICLES_FALSE, HALO_RENDER_RATIO)


def targets_for(benchmark: str) -> list[Target]:
    """The targets of one benchmark, in the order of :data:`TARGETS`."""
    return [t for t in TARGETS if t.benchmark == benchmark]


def target(benchmark: str, figure: str) -> Target | None:
    """The target of ``figure`` in ``benchmark``, or None if it has none."""
    return next((t for t in TARGETS if t.benchmark == benchmark and t.figure == figure), None)
