"""The Li2CO3 particle case (the default): ``temsims demo --case particles``.

On ``li2co3-particles``: :func:`temsims.plans.correlative_tem_sims` (TEM overview,
regions found from TEM contrast, 6Li/7Li maps, TEM zooms) and
:func:`temsims.plans.find_labelled_particles`, read back with
:func:`temsims.app.loaders.load_correlative`, and the report of
:func:`temsims.app.demo.write_report`. The measurement and the report stay in
:mod:`temsims.app.demo`, where they were before cases existed, so that this case
runs and prints exactly what ``temsims demo`` did then.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from temsims.app.cases import Case, CaseReport
from temsims.app.demo import ALIGNMENT, FULL, QUICK


def measure(RE, devices, sizes: dict[str, Any], say) -> dict[str, Any]:
    """The two experiments (:func:`temsims.app.demo._measure`)."""
    from temsims.app.demo import _measure

    result = _measure(RE, devices, sizes)
    result["correlation_ids"] = [result["correlative"]["correlation_id"],
                                 result["particles"]["correlation_id"]]
    return result


def report(cat, measured: dict[str, Any], out: Path, sizes: dict[str, Any],
           say) -> CaseReport:
    """Both experiments read back from ``cat`` and the report written in ``out``."""
    from temsims.app.demo import read_back, write_report

    t = time.monotonic()
    experiment, search = read_back(cat, measured)
    say(f"runs read back from the catalog (temsims.app.loaders.load_correlative) and "
        f"registered in {time.monotonic() - t:.1f} s")
    t = time.monotonic()
    files = write_report(Path(out), experiment, search, sizes)
    say(f"report written in {time.monotonic() - t:.1f} s")
    cands = [dict(p) for p in search.particles]
    particles = [p for p in cands if p.get("labelled")]
    say(f"{len(experiment.rois)} regions mapped by SIMS and TEM; "
        f"{len(cands)} particles segmented on the SIMS map, {len(particles)} with 6Li/7Li "
        "significantly above natural:")
    for p in particles:
        say(f"  particle at ({p['x_um']:+.3f}, {p['y_um']:+.3f}) um: N6 {p['n6']:.0f}, "
            f"N7 {p['n7']:.0f}, 6Li/7Li {p['ratio']:.3f}, z {p['z']:.1f} sigma")
    summary = {"particles": particles, "candidates": cands}
    if measured.get("alignment"):  # the session alignment the runner did first
        summary["alignment"] = measured["alignment"]
    return CaseReport(files=files, correlation_ids=list(measured["correlation_ids"]),
                      summary=summary)


CASE = Case(
    name="particles", specimen="li2co3-particles",
    title="Li2CO3 particles, some 6Li-labelled: correlative 6Li/7Li maps and the "
          "labelled-particle search",
    full=FULL, quick=QUICK, measure=measure, report=report, alignment=ALIGNMENT)
