"""The RunEngine preprocessor that sends a message again when it failed on a part
that was dying (``temsims.app.faults``), with no IOC: ophyd soft devices, a stock
suspender, a read that fails once with ophyd's DisconnectedError.

Regression (a full run at load 20, stage dead mid mosaic): the read failed, the
suspension came during the wait before the retry, the RunEngine rewound to its
checkpoint and replayed the read itself; the retry then read the stage a second time
into the same event: "Data keys ... collide with those from" the same motor.
"""

from __future__ import annotations

import threading

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky import RunEngine
from bluesky.suspenders import SuspendBoolHigh
from ophyd import Component, Device, Signal
from ophyd.sim import SynAxis
from ophyd.utils.errors import DisconnectedError


class DyingReadback(Device):
    """A readable whose first read fails as a dying part's does, and raises the
    watchdog's ``down`` for ``down_s`` at that moment."""

    value = Component(Signal, value=1.5, kind="hinted")

    def __init__(self, *args, down: Signal, down_s: float | None, failures: int = 1,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._down, self._down_s, self._failures = down, down_s, failures
        self.reads = 0

    def read(self):
        self.reads += 1
        if self.reads <= self._failures:
            if self._down_s is not None:
                self._down.put(1)
                threading.Timer(self._down_s, self._down.put, args=(0,)).start()
            raise DisconnectedError(f"{self.name}.value: not connected (part dying)")
        return super().read()


def _run(down_s: float | None, failures: int = 1):
    from temsims.app.faults import make_retry_on_disconnect

    down = Signal(name="part_down", value=0)
    dying = DyingReadback(name="dying", down=down, down_s=down_s, failures=failures)
    motor = SynAxis(name="motor")
    RE = RunEngine({}, call_returns_result=True)
    RE.install_suspender(SuspendBoolHigh(down, sleep=0.05))
    RE.preprocessors.append(make_retry_on_disconnect(RE))
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))

    @bpp.run_decorator()
    def plan():
        for x in (1.0, 2.0):
            yield from bps.checkpoint()
            yield from bps.mv(motor, x)
            readings = yield from bps.trigger_and_read([motor, dying])
            assert "dying_value" in readings and "motor" in readings
    result = RE(plan())
    events = [doc for name, doc in docs if name == "event"]
    return result, events, dying


def test_a_read_replayed_by_a_suspension_is_not_read_twice():
    # Down for 0.2 s: the suspension comes and goes within the 0.5 s retry wait.
    result, events, dying = _run(down_s=0.2)
    assert result.exit_status == "success"
    assert [e["data"]["motor"] for e in events] == [1.0, 2.0]
    assert all(e["data"]["dying_value"] == 1.5 for e in events)


def test_a_read_without_a_suspension_is_sent_again():
    # No watchdog sees it (a glitch): only the retry helps.
    result, events, dying = _run(down_s=None)
    assert result.exit_status == "success"
    assert len(events) == 2 and dying.reads == 3
