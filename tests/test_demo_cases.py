"""The case studies of ``temsims demo`` (temsims.app.cases): found, listed, chosen.

No instrument: the registry, ``temsims demo --help`` and the command line's hand-over
to :func:`temsims.app.demo.run_demo` (monkeypatched).
"""

from __future__ import annotations

import os

import pytest

from temsims.app import cli
from temsims.app.cases import DEFAULT_CASE, Case, available_cases, get_case


@pytest.fixture(autouse=True)
def _environment_kept():
    """``run_demo`` exports its instrument's CA environment into this process (it is a
    command's process), here the test worker's: later modules' CA clients would search
    the demo's default ports instead of the worker's slots."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_cases_are_found_by_their_modules_default_first():
    cases = available_cases()
    assert next(iter(cases)) == DEFAULT_CASE == "particles"
    assert cases["particles"].specimen == "li2co3-particles"
    assert cases["cathode"].specimen == "livo-cathode"
    for case in cases.values():
        assert isinstance(case, Case) and callable(case.measure) and callable(case.report)
        assert "camera_size" in case.sizes(True) and "camera_size" in case.sizes(False)
    with pytest.raises(ValueError, match="unknown case 'nope'"):
        get_case("nope")


def test_demo_help_lists_every_case_and_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "\x1b" not in text  # plain text
    for case in available_cases().values():
        assert case.name in text and case.specimen in text
    assert "(default: particles)" in " ".join(text.split())


def test_demo_hands_the_case_on_and_refuses_a_specimen_that_does_not_fit(monkeypatch,
                                                                          capsys):
    import temsims.app.demo as demo

    real_run_demo = demo.run_demo
    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda **kw: seen.update(kw))
    assert cli.main(["demo", "--case", "cathode"]) == 0
    assert seen["case"] == "cathode" and seen["specimen"] is None
    assert cli.main(["demo"]) == 0
    assert seen["case"] == "particles"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--case", "cathode", "--specimen", "li2co3-particles"])
    assert exit_.value.code == 2
    assert "does not fit --case cathode" in capsys.readouterr().err
    # The function refuses it too, before it starts anything.
    with pytest.raises(ValueError, match="runs on the specimen 'livo-cathode'"):
        real_run_demo(case="cathode", specimen="solar-cell")


def test_demo_all_on_running_iocs_says_what_to_do_without_a_traceback(monkeypatch, capsys):
    """``--case all`` starts IOCs for each case's specimen: IOCs already answering at
    the prefix are refused in one line naming the ways on, exit status 2, nothing
    started (the instrument probe monkeypatched: no IOC here)."""
    import temsims.app.demo as demo

    monkeypatch.setattr(demo, "iocs_running", lambda layout, prefix: True)
    code = cli.main(["demo", "--case", "all", "--base-port", "5064"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and err.count("\n") == 1
    assert "IOCs already answer at 'TEMSIMS:'" in err
    assert "--base-port" in err and "--prefix" in err and "one --case" in err
