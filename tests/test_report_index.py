"""The HTML index of ``temsims demo --case all`` (temsims.app.report_index), without an
instrument: every link resolves relative to the page, text is escaped, a failed case
is shown; ``all`` is offered and refused with ``--specimen``."""

from __future__ import annotations

import pytest
from demo_support import index_links

from temsims.app import cli
from temsims.app.report_index import IndexEntry, write_index


def test_index_links_every_file_relative_and_escapes(tmp_path):
    out = tmp_path / "report"
    entries = []
    for name in ("alpha", "beta gamma"):
        d = out / name
        d.mkdir(parents=True)
        files = [d / "a.png", d / "b c.png", d / "report.json"]
        for f in files:
            f.write_bytes(b"x")
        entries.append(IndexEntry(name=name, title=f"<{name}> & co", specimen="s",
                                  correlation_ids=["id-1"], files=files,
                                  lines=["V 1.0 +- 0.1 <nm>"], out=d))
    entries.append(IndexEntry(name="broken", title="t", specimen="s", correlation_ids=[],
                              files=[], error="RuntimeError: <boom>"))
    index = write_index(out, entries, catalog="/cat", wall_s=12.0)
    assert index == out / "index.html"
    text = index.read_text()
    assert "&lt;alpha&gt; &amp; co" in text and "&lt;nm&gt;" in text
    assert "RuntimeError: &lt;boom&gt;" in text and "<boom>" not in text
    links = index_links(index)
    assert links["sections"] == ["alpha", "beta gamma", "broken"]
    assert len(links["img"]) == 4 and len(links["href"]) == 6
    from urllib.parse import unquote

    for href in links["img"] + links["href"]:
        assert not href.startswith("/") and (out / unquote(href)).is_file(), href


def test_all_is_a_case_choice_and_refuses_a_specimen(monkeypatch, capsys):
    import temsims.app.demo as demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda **kw: seen.update(kw))
    assert cli.main(["demo", "--case", "all", "--drift-nm-per-min", "0.15"]) == 0
    assert seen["case"] == "all" and seen["drift_nm_per_min"] == 0.15
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--case", "all", "--specimen", "livo-cathode"])
    assert exit_.value.code == 2 and "does not fit --case all" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--drift-nm-per-min", "-1"])
    monkeypatch.undo()
    # The function refuses it too, before it starts anything.
    with pytest.raises(ValueError, match="runs every case on its own specimen"):
        demo.run_demo(case="all", specimen="solar-cell")
