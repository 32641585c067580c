"""Fixtures of the device tests: the session's shared instrument, reset at the start of
each module, connected as ophyd devices (once a session)."""

from __future__ import annotations

import pytest
from documents import DocumentCollector


@pytest.fixture(scope="module")
def devices(instruments):
    """``temsims.devices.connect`` on the shared instrument (all five parts,
    li2co3-particles seed 1), reset for this module: start-up state and defaults."""
    from instrument_support import connected

    return connected(instruments.get())


@pytest.fixture
def RE():
    """A RunEngine of its own (no persistence), with a document collector ``RE.docs``."""
    from bluesky import RunEngine

    engine = RunEngine({}, call_returns_result=True)
    engine.docs = DocumentCollector()
    engine.subscribe(engine.docs)
    yield engine
    if engine.state != "idle":
        engine.halt()
