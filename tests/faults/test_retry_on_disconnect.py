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


class DyingPositioner(Device):
    """A positioner whose first ``set`` fails its status as a put to a part that died:
    caproto cannot connect the PV again (``delay_s`` after the set, or at once), and
    the watchdog's ``down`` is raised for ``down_s``."""

    position_signal = Component(Signal, value=0.0, kind="hinted")

    def __init__(self, *args, down: Signal, down_s: float, delay_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._down, self._down_s, self._delay_s = down, down_s, delay_s
        self.sets = 0

    @property
    def position(self):
        return self.position_signal.get()

    def set(self, value):
        from ophyd.signal import ConnectionTimeoutError
        from ophyd.status import DeviceStatus

        self.sets += 1
        status = DeviceStatus(self)
        if self.sets == 1:
            self._down.put(1)
            threading.Timer(self._down_s, self._down.put, args=(0,)).start()
            exc = ConnectionTimeoutError(f"{self.name}: could not connect within 1.0 s")
            if self._delay_s:
                threading.Timer(self._delay_s, status.set_exception, args=(exc,)).start()
            else:
                status.set_exception(exc)
            return status
        self.position_signal.put(value)
        status.set_finished()
        return status


def _run_move(delay_s: float, *, retry: bool = True):
    from temsims.app.faults import make_retry_on_disconnect

    down = Signal(name="part_down", value=0)
    blanker = DyingPositioner(name="blanker", down=down, down_s=0.2, delay_s=delay_s)
    other = SynAxis(name="other")
    RE = RunEngine({}, call_returns_result=True)
    RE.install_suspender(SuspendBoolHigh(down, sleep=0.05))
    if retry:
        RE.preprocessors.append(make_retry_on_disconnect(RE))

    @bpp.run_decorator()
    def plan():
        yield from bps.checkpoint()
        yield from bps.mv(other, 1.0, blanker, 2.0)  # one group, two moves
        yield from bps.trigger_and_read([other, blanker])

    return RE(plan()), blanker, other


def test_a_move_failed_by_a_lost_connection_is_sent_again():
    # The status fails 50 ms later (thrown at the wait) or at once (at the set).
    for delay_s in (0.05, 0.0):
        result, blanker, other = _run_move(delay_s)
        assert result.exit_status == "success", delay_s
        # Sent again by the preprocessor, and maybe also replayed by the suspension's
        # rewind to the checkpoint (an absolute move: the same either way).
        assert blanker.sets >= 2 and blanker.position == 2.0 and other.position == 1.0


def test_without_the_preprocessor_that_move_fails_the_run():
    import pytest
    from bluesky.utils import FailedStatus

    with pytest.raises(FailedStatus):
        _run_move(0.05, retry=False)
