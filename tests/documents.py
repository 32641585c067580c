"""A RunEngine subscriber that keeps every document, for tests that assert on them
(imported by name: several ``conftest.py`` files exist)."""

from __future__ import annotations

from collections import defaultdict


class DocumentCollector:
    """Keeps every document a RunEngine emits, by name."""

    def __init__(self) -> None:
        self.docs: dict[str, list[dict]] = defaultdict(list)

    def __call__(self, name: str, doc: dict) -> None:
        self.docs[name].append(doc)

    def clear(self) -> None:
        self.docs.clear()

    def start(self) -> dict:
        return self.docs["start"][-1]

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

    def run(self, uid: str | None = None):
        """One run (default the last) as :class:`temsims.callbacks.export.RunData`: what
        the catalog would hold, its maps assembled by temsims.analysis.maps."""
        from temsims.callbacks.export import documents_to_run

        start = self.start() if uid is None else next(
            d for d in self.docs["start"] if d["uid"] == uid)
        descs = [d for d in self.docs["descriptor"] if d["run_start"] == start["uid"]]
        uids = {d["uid"] for d in descs}
        docs = [("start", start)] + [("descriptor", d) for d in descs]
        docs += [("event", e) for e in self.docs["event"] if e["descriptor"] in uids]
        docs += [("event_page", e) for e in self.docs["event_page"] if e["descriptor"] in uids]
        docs += [("stop", d) for d in self.docs["stop"] if d["run_start"] == start["uid"]]
        return documents_to_run(docs)
