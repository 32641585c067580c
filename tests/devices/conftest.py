"""Fixtures of the device tests: the session instrument connected as ophyd devices."""

from __future__ import annotations

import pytest
from documents import DocumentCollector


@pytest.fixture(scope="session")
def devices(instrument):
    """``temsims.devices.connect`` on the session's IOCs (all five)."""
    from temsims.devices import connect

    return connect(instrument.instrument_prefix, timeout=15.0)


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
