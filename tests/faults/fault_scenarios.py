"""Fault injections on a real instrument, shared by tests/faults and
benchmarks/fault_benchmark.py (imported by name).

A part is killed or hung through the instrument's simulation control (``SIM:<PART>``
Dead / Hung, decision 0013: to a CA client exactly a SIGKILLed or SIGSTOPped IOC; a
real signal would stop all five parts, which share one process). Each scenario runs
a plan under :func:`temsims.app.faults.install_suspenders` into a real catalog,
injects the fault from another thread when the plan reaches a given point, brings
the part back, and returns the figures: detection time, whether the instrument was
safe while suspended, lines stored, lost and duplicated.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: A hung part is declared after this much heartbeat silence in these tests (s, wall).
HUNG_AFTER_S = 2.0
MD = {"sample": "li2co3-particles seed 1", "specimen": "li2co3-particles",
      "operator": "pytest"}


@dataclass
class Bench:
    """A connected instrument, a RunEngine with suspenders, a catalog and its docs."""

    procs: Any
    d: Any
    RE: Any
    guard: Any
    cat: Any
    docs: Any
    out: list = field(default_factory=list)
    writer: Any = None
    #: False: the catalog is its opener's (``make_bench(catalog=...)``), kept open.
    owns_catalog: bool = True

    def close(self) -> None:
        self.guard.remove()
        if self.owns_catalog:
            self.cat.close(timeout=60)
        else:
            self.writer.close(timeout=60)


def make_bench(procs: Any, d: Any, catalog_dir: Path | None = None, *,
               hung_after_s: float = HUNG_AFTER_S, catalog: Any = None) -> Bench:
    """A bench on a new catalog at ``catalog_dir``, or writing to ``catalog``, an open
    one that its opener keeps (a new directory's catalog costs ~1.5 s to open)."""
    from bluesky import RunEngine
    from documents import DocumentCollector

    from temsims.app.faults import install_suspenders
    from temsims.catalog import open_catalog, require_metadata

    RE = RunEngine(dict(MD), call_returns_result=True)
    require_metadata(RE)
    docs = DocumentCollector()
    RE.subscribe(docs)
    cat = open_catalog(catalog_dir) if catalog is None else catalog
    writer = cat.writer()
    RE.subscribe(writer)
    guard = install_suspenders(RE, d, hung_after_s=hung_after_s, resume_sleep_s=0.2)
    return Bench(procs=procs, d=d, RE=RE, guard=guard, cat=cat, docs=docs, writer=writer,
                 owns_catalog=catalog is None)


def wait_for(predicate, timeout: float, poll: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001 - a PV of a part coming back
            pass
        time.sleep(poll)
    return False


def instrument_safe(d: Any) -> bool:
    """Beam blanked and bias output at 0 V (within 1 V), as the client reads them."""
    return str(d.column.blank.get()) == "Blanked" and abs(float(d.bias.readback.get())) < 1.0


@dataclass
class Injection:
    """One fault, injected from a thread when ``trigger`` fires."""

    bench: Bench
    part: str
    kind: str  # "Dead" or "Hung"
    down_s: float = 1.0
    check_safe: bool = True
    #: What "safe" means while the part is down (a dead bias or column cannot be read).
    safe: Any = instrument_safe
    figures: dict = field(default_factory=dict)
    thread: threading.Thread | None = None
    error: BaseException | None = None

    def fire(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            b, dog = self.bench, self.bench.guard.watchdogs[self.part]
            n0 = len(dog.history)
            t0 = time.monotonic()
            b.procs.set_part(self.part, self.kind)
            detected = wait_for(lambda: len(dog.history) > n0 and dog.down.get(),
                                HUNG_AFTER_S + 10)
            went_down = next((h for h in dog.history[n0:] if h["state"] != "up"), None)
            self.figures["run_state_at_detection"] = str(b.RE.state)
            self.figures.update(
                detected=detected, state=went_down and went_down["state"],
                detect_s=(went_down["at"] - t0) if went_down else None)
            if self.check_safe:
                safe = wait_for(lambda: self.safe(b.d), 10)
                self.figures["safe_while_suspended"] = safe
                if not safe:  # what was not safe, for the failure's message
                    self.figures["unsafe_state"] = _state_of(b.d, b.RE)
            emitted = _data_documents(b)
            time.sleep(self.down_s)
            # The suspension holds: no data while the part is down.
            self.figures["held"] = _data_documents(b) == emitted
            # Every reason it was down for: on a loaded machine a killed part can be
            # seen hung (no heartbeat for hung_after_s) before its circuit drops.
            self.figures["states"] = [h["state"] for h in dog.history[n0:]
                                      if h["state"] != "up"]
            seen_dead = next((h for h in dog.history[n0:] if h["state"] == "dead"), None)
            self.figures["dead_detect_s"] = (seen_dead["at"] - t0) if seen_dead else None
            b.procs.set_part(self.part, "Up")
            t_up = time.monotonic()
            self.figures["back_after_s"] = t_up - t0
            # Suspension to resumption: the part back to the run's next data.
            n_up = _data_documents(b)
            if wait_for(lambda: _data_documents(b) > n_up or b.RE.state == "idle", 60) \
                    and _data_documents(b) > n_up:
                self.figures["resume_s"] = time.monotonic() - t_up
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    def join(self, timeout: float = 60) -> dict:
        if self.thread is not None:
            self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.figures


def _state_of(d: Any, RE: Any) -> dict:
    """The beam, the bias and the RunEngine as the client sees them now."""
    state: dict = {"RE": str(RE.state)}
    for key, read in (("blank", lambda: d.column.blank.get()),
                      ("bias_v", lambda: d.bias.readback.get()),
                      ("bias_enable", lambda: d.bias.enable.get()),
                      ("raster", lambda: d.column.scan.acquire_rbv.get())):
        try:
            state[key] = read()
        except Exception as exc:  # noqa: BLE001 - a part that is down
            state[key] = f"unreadable: {exc!r}"
    return state


def _data_documents(bench: Bench) -> int:
    return len(bench.docs.docs["event"]) + len(bench.docs.docs["event_page"])


def on_line(imager: Any, at_line: int, action) -> int:
    """Subscribe: call ``action()`` once LINES_DONE reaches ``at_line``."""
    fired: list = []

    def cb(value, **kwargs) -> None:
        if int(value) >= at_line and not fired:
            fired.append(True)
            action()

    return imager.lines_done.subscribe(cb, run=False)


def stored_lines(bench: Bench, uid: str) -> dict:
    """Read the run back from the catalog: its lines, maps and stop document."""
    from temsims.app.loaders import _as_run
    from temsims.callbacks.maps import IncompleteMapError

    assert bench.cat.flush(60)
    # The loaders' read (each stream in one request, 0.1-0.2 s), not load_run's
    # request per column (2.5-4.5 s a run on the 2-core machine).
    run = _as_run(bench.cat.runs[uid] if hasattr(bench.cat, "runs") else bench.cat[uid])
    lines = np.asarray(run.primary["imager_line"]).astype(int).ravel()
    counts = Counter(lines.tolist())
    ny = int(run.start["map"]["pixels"][1]) * int(run.start["map"].get("frames", 1))
    out = {"events": len(lines), "expected": ny,
           "duplicated": sum(c - 1 for c in counts.values() if c > 1),
           "exit_status": (run.stop or {}).get("exit_status"),
           "reason": (run.stop or {}).get("reason", "")}
    try:
        maps = run.maps()
        out["complete"] = True
        out["lost"] = 0
        out["maps"] = maps
    except IncompleteMapError:
        partial = run.maps(partial=True)
        first = next(iter(partial.values()))
        out["complete"] = False
        out["lost"] = int(np.isnan(first).any(axis=-1).sum())
    return out


def fly_map_with_part_fault(bench: Bench, part: str, kind: str, *,
                            pixels=(16, 128), dwell_s: float = 0.02, at_line: int = 16,
                            down_s: float = 1.0, safe=instrument_safe) -> dict:
    """A fly map; ``part`` is killed or hung at line ``at_line`` and brought back;
    ``safe(devices)`` is what must hold while it is down.

    The default map rasters for 2 s (time scale 20) and the fault is asked for at line
    16: with a 1 s map and line 32 a hang (seen after ``HUNG_AFTER_S``) landed after the
    run's end once in 8 runs at load 13, and no suspension followed
    (``run_state_at_detection`` then reads "idle").
    """
    from temsims.plans import sims_map

    d = bench.d
    inj = Injection(bench, part, kind, down_s=down_s, check_safe=True, safe=safe)
    token = on_line(d.imager, at_line, inj.fire)
    t0 = time.monotonic()
    try:
        uid = bench.RE(sims_map(d.imager, d.spectrometer, d.column, d.stage, d.bias,
                                species=("6Li", "7Li"), fov_um=1.0, pixels=pixels,
                                dwell_s=dwell_s, md={"purpose": f"fault {part} {kind}"})
                       ).plan_result
    finally:
        d.imager.lines_done.unsubscribe(token)
    figures = dict(inj.join())
    figures["wall_s"] = time.monotonic() - t0
    figures.update(stored_lines(bench, uid))
    figures.update(part=part, kind=kind, plan="sims_map fly", uid=uid)
    return figures


def mosaic_with_stage_fault(bench: Bench, kind: str, *, n_tiles=(3, 2), at_tile: int = 2,
                            down_s: float = 1.0) -> dict:
    """A TEM mosaic (a step scan of the stage); the stage is killed or hung when tile
    ``at_tile`` is being read, and brought back."""
    from temsims.plans import tem_mosaic

    d = bench.d
    inj = Injection(bench, "stage", kind, down_s=down_s, check_safe=False)
    seen: list = []

    def on_doc(name, doc):
        if name == "event":
            seen.append(doc)
            if len(seen) == at_tile:
                inj.fire()

    token = bench.RE.subscribe(on_doc, "event")
    t0 = time.monotonic()
    try:
        uid = bench.RE(tem_mosaic(d.stage, d.tem, d.camera, center=(0.0, 0.0),
                                  n_tiles=n_tiles, fov_um=2.0, exposure_s=0.01,
                                  md={"purpose": f"fault stage {kind}"})).plan_result
    finally:
        bench.RE.unsubscribe(token)
    figures = dict(inj.join())
    figures["wall_s"] = time.monotonic() - t0
    assert bench.cat.flush(60)
    from temsims.callbacks.export import load_run

    run = load_run(bench.cat.runs[uid] if hasattr(bench.cat, "runs") else bench.cat[uid])
    xs = np.round(np.asarray(run.primary["stage_x"], float), 2)
    ys = np.round(np.asarray(run.primary["stage_y"], float), 2)
    tiles = Counter(zip(xs.tolist(), ys.tolist(), strict=True))
    expected = n_tiles[0] * n_tiles[1]
    figures.update(part="stage", kind=kind, plan="tem_mosaic", uid=uid,
                   events=len(xs), expected=expected,
                   duplicated=sum(c - 1 for c in tiles.values() if c > 1),
                   lost=expected - len(tiles), complete=len(tiles) == expected,
                   exit_status=(run.stop or {}).get("exit_status"))
    return figures


def fly_map_with_arcs(bench: Bench, arcs: int, *, pixels=(16, 64), dwell_s: float = 0.02,
                      at_line: int = 32) -> dict:
    """A fly map; the bias arcs ``arcs`` times (the first at line ``at_line``, each next
    one once the map goes on at its voltage); after each arc the fault is reset.

    Figures per arc: ``detect_s`` (the arc put to the suspender tripped), ``safe_s``
    (to beam blanked and bias at 0 V), ``resume_s`` (the reset to the beam on again
    at the map's voltage), ``resumed_at_voltage``. ``raised`` holds the exception of
    ``RE(...)`` if any."""
    from temsims.plans import sims_map

    d, guard = bench.d, bench.guard
    figures: dict = {"arcs_injected": 0, "safe_after_arc": [], "detect_s": [],
                     "safe_s": [], "resume_s": [], "resumed_at_voltage": []}
    errors: list = []

    def mapping() -> bool:
        return (abs(float(d.bias.readback.get())) > 4000.0
                and str(d.column.blank.get()) == "Unblanked")

    def inject() -> None:
        try:
            for _ in range(arcs):
                t0 = time.monotonic()
                d.bias.fault.set("Arc").wait(10)
                figures["arcs_injected"] += 1
                wait_for(lambda: guard.arc.tripped, 10)
                figures["detect_s"].append(time.monotonic() - t0)
                safe = wait_for(lambda: instrument_safe(d), 10)
                figures["safe_after_arc"].append(safe)
                figures["safe_s"].append(time.monotonic() - t0)
                t_reset = time.monotonic()
                d.bias.reset.set("Reset").wait(10)
                # The next arc once the map goes on at its voltage, or the run ended.
                wait_for(lambda: mapping() or bench.RE.state == "idle", 30)
                if bench.RE.state == "idle":
                    break
                figures["resumed_at_voltage"].append(mapping())
                figures["resume_s"].append(time.monotonic() - t_reset)
                time.sleep(0.1)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=inject, daemon=True)
    token = on_line(d.imager, at_line, thread.start)
    t0 = time.monotonic()
    uid = None
    try:
        uid = bench.RE(sims_map(d.imager, d.spectrometer, d.column, d.stage, d.bias,
                                species=("6Li", "7Li"), fov_um=1.0, pixels=pixels,
                                dwell_s=dwell_s, md={"purpose": f"{arcs} arcs"})
                       ).plan_result
    except Exception as exc:  # noqa: BLE001 - the caller asserts on it
        figures["raised"] = exc
    finally:
        d.imager.lines_done.unsubscribe(token)
        if thread.ident is not None:
            thread.join(60)
    if errors:
        raise errors[0]
    figures["wall_s"] = time.monotonic() - t0
    figures["safe_at_end"] = instrument_safe(d)
    uid = uid or bench.docs.docs["start"][-1]["uid"]
    figures.update(stored_lines(bench, uid))
    figures.update(part="bias", kind="arc", plan="sims_map fly", uid=uid)
    return figures
