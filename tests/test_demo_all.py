"""``temsims demo --case all --quick`` in a subprocess: every case into one catalog, one
HTML index whose links all resolve.

Every case :func:`temsims.app.cases.available_cases` finds runs (on IOCs with its own
specimen, started and stopped by the demo for each), stores its runs in the one
catalog, and gets a section of ``index.html`` linking its PNGs and ``report.json``.
The index is parsed with :mod:`html.parser` (every ``img`` and link a file that exists)
and, where a Chromium is installed (Debian's ``chromium-headless-shell``), loaded in it
headless: every image loaded and decoded. The cases' figures are their own tests'.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from demo_support import check_in_chromium, index_links, run_demo, starts_of

from temsims.app.cases import available_cases


@pytest.mark.slow
def test_demo_all_quick_writes_one_index_linking_every_case(slot_pool, tmp_path):
    cases = available_cases()
    run = run_demo(slot_pool, tmp_path, "--case", "all", "--quick", timeout_s=900.0,
                   tail=1500)
    assert run.proc.returncode == 0, run.failure()
    index = run.out / "index.html"
    assert index.is_file() and f"report index: {index}" in run.stdout
    assert run.stdout.count("IOCs stopped") == len(cases)

    links = index_links(index)
    assert links["sections"] == list(cases), links["sections"]
    targets = [(index.parent / h).resolve() for h in links["href"] + links["img"]]
    missing = [str(t) for t in targets if not t.is_file()]
    assert not missing, missing
    for name, case in cases.items():
        report = run.out / name / "report.json"
        pngs = sorted((run.out / name).glob("*.png"))
        assert report.resolve() in targets, name
        assert pngs and all(p.resolve() in targets for p in pngs), (name, pngs)
        # Each case's runs are in the one catalog, linked by its correlation id(s).
        cids = json.loads(report.read_text())["correlation_ids"]
        for cid in (cids.values() if isinstance(cids, dict) else cids):
            starts = starts_of(run.catalog, cid)
            assert starts and {s["specimen"] for s in starts} == {case.specimen}, name

    seen = check_in_chromium(index)
    if seen is None:
        print("no Chromium installed: the index was checked with html.parser only")
        return
    print(f"{seen['browser']}: {len(seen['images'])} images, "
          f"{sum(i['ok'] for i in seen['images'])} loaded; sections {seen['sections']}")
    assert seen["sections"] == list(cases)
    assert len(seen["images"]) == len(links["img"])
    assert all(i["ok"] for i in seen["images"]), [i for i in seen["images"] if not i["ok"]]
    assert {Path(h).name for h in seen["links"] if not h.startswith("#")} == \
        {Path(h).name for h in links["href"]}
