"""The map plans' interference check as a plan stub, without an instrument (the
instrument's window, refusal before anything moves and the start document's block:
tests/plans/test_plans_sims.py and tests/faults/test_bad_input.py)."""

from __future__ import annotations

import pytest


def _result(plan):
    """The return value of a plan stub that yields nothing (no signal to read)."""
    try:
        next(plan)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the stub read a signal")


def test_the_plans_check_assumes_a_window_and_warns_once(caplog):
    """Another lab's spectrometer without ``collector_window``: 0.8 u assumed and
    said so; the warning is logged once per process for the same set, recorded in
    every run's block."""
    from temsims.plans import sims

    class Spectrometer:  # no collector_window
        pass

    sims._INTERFERENCES_WARNED.clear()
    with caplog.at_level("WARNING", logger="temsims.plans.sims"):
        blocks = [_result(sims.interference_check(Spectrometer(), ("6Li", "7Li"), "warn"))
                  for _ in range(3)]
    assert all(b == blocks[0] for b in blocks)
    assert blocks[0]["window_assumed"] and blocks[0]["window_u"] == 0.8
    assert [i["ion"] for i in blocks[0]["unresolved"]] == ["6LiH+"]
    warned = [r.getMessage() for r in caplog.records if "unresolved" in r.getMessage()]
    assert len(warned) == 1 and "6LiH+" in warned[0], warned
    assert _result(sims.interference_check(Spectrometer(), ("6Li", "7Li"), "ignore")) == {
        "policy": "ignore"}
    with pytest.raises(ValueError, match="6LiH"):
        _result(sims.interference_check(Spectrometer(), ("6Li", "7Li"), "refuse"))
