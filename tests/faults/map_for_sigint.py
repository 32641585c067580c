"""A session process for the Ctrl-C test: a fly map in a RunEngine with bluesky's own
SIGINT handling, as an operator's terminal runs it.

``python map_for_sigint.py PREFIX``

Connects to the instrument (in SIMS mode already), installs the suspenders as the
session factory does, and runs ``sims_map`` from the main thread, so bluesky's
``SigintHandler`` is in force (first SIGINT: a deferred pause, the next within 10 s:
a pause now). Prints ``LINE <n>`` as lines come in, ``INTERRUPTED <state>`` when
``RE()`` returns paused, then reads one command from stdin, as the operator at the
prompt: ``abort``, ``stop`` or ``resume``; prints ``STOP <exit_status> <events>`` from
the stop document, then ``SAFE <blank> <bias V>`` as the devices read them.
"""

from __future__ import annotations

import sys
import threading

_OUT = threading.Lock()


def say(text: str) -> None:
    """One line to stdout in one write: lines come from several threads."""
    with _OUT:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def main() -> int:
    from bluesky import RunEngine
    from bluesky.utils import RunEngineInterrupted

    from temsims.app.faults import install_suspenders
    from temsims.devices import connect
    from temsims.plans import sims_map

    d = connect(sys.argv[1], timeout=15.0)
    RE = RunEngine({})
    guard = install_suspenders(RE, d)
    events = []

    def on_doc(name, doc):
        if name == "event_page":
            events.extend(doc["seq_num"])
        elif name == "stop":
            say(f"STOP {doc['exit_status']} {len(events)}")

    RE.subscribe(on_doc)
    d.imager.lines_done.subscribe(lambda value, **kw: say(f"LINE {int(value)}"),
                                  run=False)
    say("READY")
    plan = sims_map(d.imager, d.spectrometer, d.column, d.stage, d.bias,
                    species=("6Li", "7Li"), fov_um=1.0, pixels=(16, 64), dwell_s=0.04)
    try:
        RE(plan)
    except RunEngineInterrupted:
        say(f"INTERRUPTED {RE.state}")
        command = sys.stdin.readline().strip()
        getattr(RE, command)()
    say(f"SAFE {d.column.blank.get()} {float(d.bias.readback.get()):.1f}")
    guard.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
