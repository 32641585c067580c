"""Fixtures of the plan tests: the session's shared instrument (all five parts,
li2co3-particles seed 1), reset at the start of each module and connected as ophyd
devices, and a RunEngine that enforces the metadata contract."""

from __future__ import annotations

import pytest
from documents import DocumentCollector


@pytest.fixture(scope="module")
def plan_instrument(instruments):
    """The shared li2co3-particles (seed 1) instrument, reset for this module: the
    plans sputter and switch geometry, and no module sees what another left."""
    return instruments.get(specimen="li2co3-particles", seed=1)


@pytest.fixture(scope="module")
def pdev(plan_instrument):
    """Devices on the module's instrument (connected once a session); fast axes and
    ramps, 64 px camera (the reset restored the defaults)."""
    from instrument_support import connect_fast

    return connect_fast(plan_instrument, camera_size=64)


@pytest.fixture(scope="session")
def particles():
    """(largest labelled, largest natural) particle of the specimen's ground truth."""
    from temsims.ioc.physics.specimen import build_specimen

    truth = build_specimen("li2co3-particles", 1).truth["particles"]
    labelled = sorted((p for p in truth if p["labelled"]), key=lambda p: -p["radius_nm"])
    natural = sorted((p for p in truth if not p["labelled"]), key=lambda p: -p["radius_nm"])
    return labelled, natural


@pytest.fixture
def RE():
    """RunEngine with a document collector ``RE.docs``; it refuses runs whose start
    metadata break the catalog contract (``temsims.catalog.require_metadata``)."""
    from bluesky import RunEngine

    from temsims.catalog import require_metadata

    engine = RunEngine({"sample": "li2co3-particles seed 1", "specimen": "li2co3-particles",
                        "operator": "pytest"}, call_returns_result=True)
    require_metadata(engine)
    engine.docs = DocumentCollector()
    engine.subscribe(engine.docs)
    engine.msgs = []
    engine.msg_hook = engine.msgs.append
    yield engine
    if engine.state != "idle":
        engine.halt()
