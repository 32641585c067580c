"""``temsims demo --case cathode --quick --catalog http://... --api-key KEY`` into
``temsims serve`` on the tests' PostgreSQL, then another process finds its runs there
with a read-only key (issue 12, "Done when").

The cathode case (BF TEM images and Al+/V+/Li+ maps under one correlation id): the
demo's shortest (7 s of 51 s for every case on a quiet machine; the particle case
19 s), so that the PostgreSQL path costs the suite less. The particle case, the
README's main job, runs end to end into a catalog directory in tests/test_demo_all.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

FIND_RUNS = textwrap.dedent("""
    import json, sys
    from temsims.catalog import open_catalog

    cat = open_catalog(sys.argv[1], api_key=sys.argv[2])
    found = {}
    for correlation_id in sys.argv[3:]:
        runs = cat.by_correlation_id(correlation_id)
        found[correlation_id] = [
            {"plan": r.start["plan_name"], "mode": r.start["mode"],
             "exit_status": r.metadata["stop"]["exit_status"],
             "streams": sorted(r)} for r in runs.values()]
    print(json.dumps({"found": found, "total": len(cat)}))
""")


@pytest.mark.slow
def test_demo_writes_to_a_served_postgres_catalog(served_postgres, slot_pool, tmp_path):
    served = served_postgres
    slot, layout = slot_pool.take()
    prefix = f"P{uuid.uuid4().hex[:6].upper()}:"
    before = _count(served)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "temsims.app.cli", "demo", "--case", "cathode", "--quick",
             "--prefix", prefix,
             "--base-port", str(layout.base_port), "--catalog", served.uri,
             "--api-key", served.write_key, "--out", str(tmp_path / "report"),
             "--time-scale", "20"],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        slot_pool.give_back(slot)
    print(f"\ndemo --case cathode --quick into PostgreSQL: {time.monotonic() - t0:.1f} s\n"
          f"{proc.stdout[-800:]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["source"] == "catalog"  # the demo's report was read back from PostgreSQL
    ids = list(report["correlation_ids"].values())
    assert ids == [report["correlation_ids"]["cathode"]]

    seen = _find(served, ids)  # another process, a read-only key
    runs = seen["found"][ids[0]]
    assert seen["total"] == before + len(runs)
    assert runs and all(r["exit_status"] == "success" for r in runs), runs
    assert all("primary" in r["streams"] for r in runs), runs
    assert {r["mode"] for r in runs} == {"TEM", "SIMS"}
    assert "sims_map" in [r["plan"] for r in runs]
    # The report's figures were computed from what was read back there.
    assert report["v_decay_length_nm"]["value"] > 0 and report["interfaces"]


def _count(served) -> int:
    """The runs in the catalog before the demo, read here with the read key (the runs
    after it are found by another process: ``_find``; a process more cost ~2 s of CPU)."""
    from temsims.catalog import open_catalog

    cat = open_catalog(served.uri, api_key=served.read_key)
    try:
        return len(cat)
    finally:
        cat.close()


def _find(served, correlation_ids: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", FIND_RUNS, served.uri, served.read_key,
                          *correlation_ids], capture_output=True, text=True, timeout=120,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
