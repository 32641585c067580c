"""Fixtures of the device tests: the session instrument connected as ophyd devices."""

from __future__ import annotations

from collections import defaultdict

import pytest


@pytest.fixture(scope="session")
def devices(instrument):
    """``temsims.devices.connect`` on the session's IOCs (all five)."""
    from temsims.devices import connect

    return connect(instrument.instrument_prefix, timeout=15.0)


class DocumentCollector:
    """Keeps every document a RunEngine emits, by name."""

    def __init__(self) -> None:
        self.docs: dict[str, list[dict]] = defaultdict(list)

    def __call__(self, name: str, doc: dict) -> None:
        self.docs[name].append(doc)

    def events(self, stream: str = "primary") -> list[dict]:
        """Events of ``stream``, event pages unpacked (collect() emits pages)."""
        from event_model import unpack_event_page

        uids = {d["uid"] for d in self.docs["descriptor"] if d.get("name") == stream}
        events = [e for e in self.docs["event"] if e["descriptor"] in uids]
        for page in self.docs["event_page"]:
            if page["descriptor"] in uids:
                events.extend(unpack_event_page(page))
        return sorted(events, key=lambda e: e["seq_num"])

    def descriptor(self, stream: str = "primary") -> dict:
        return next(d for d in self.docs["descriptor"] if d.get("name") == stream)


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
