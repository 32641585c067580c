"""The stage axes' client side: what a move costs in callbacks (decision 0019)."""

from __future__ import annotations

import collections

import pytest
from ophyd import Device


@pytest.fixture
def fast_x(devices):
    """Stage x at VMAX with ACCL 0 (a 10 nm step is 50 us of motion), restored after."""
    x = devices.stage.x
    before = x.velocity.get(), x.acceleration.get()
    x.velocity.set(200.0).wait(5)
    x.acceleration.set(0.0).wait(5)
    x.set(0.0).wait(10)
    yield x
    x.set(0.0).wait(10)
    x.velocity.set(before[0]).wait(5)
    x.acceleration.set(before[1]).wait(5)


def test_each_monitor_update_reaches_a_subscriber_once(fast_x):
    """caproto numbers a PV's callbacks from 0, which ophyd took for "no monitor yet":
    every subscribed signal had its _read_changed registered twice and ran its
    subscribers twice per update (DMOV 0, 0, 1, 1 at every move)."""
    x = fast_x
    for signal in x.walk_signals():
        pv = getattr(signal.item, "_read_pv", None)
        if pv is not None:
            names = [getattr(cb, "__name__", cb) for cb, _ in pv.callbacks.values()]
            assert len(names) == len(set(names)), (signal.item.name, names)
    dmov, rbv = [], []

    def on_dmov(value, **kwargs):
        dmov.append(value)

    def on_rbv(value, **kwargs):
        rbv.append(value)

    dmov_token = x.motor_done_move.subscribe(on_dmov, run=False)
    rbv_token = x.user_readback.subscribe(on_rbv, run=False)
    try:
        for step in (1, 2, 3):
            x.set(0.01 * step).wait(5)
    finally:
        x.motor_done_move.unsubscribe(dmov_token)
        x.user_readback.unsubscribe(rbv_token)
    assert dmov == [0, 1, 0, 1, 0, 1]
    assert rbv == pytest.approx([0.01, 0.02, 0.03])


def test_stage_motor_connected_is_ophyds_answer(devices):
    """StageMotor.connected (the signals listed once) answers as Device.connected
    (which walks the component tree at every call), connected or not."""
    from temsims.devices.stage import StageMotor

    x = devices.stage.x
    assert x.connected is True and Device.connected.fget(x) is True
    nowhere = StageMotor("TEMSIMS-NOWHERE:X", name="nowhere")
    try:
        assert nowhere.connected is False and Device.connected.fget(nowhere) is False
    finally:
        nowhere.destroy()


def test_a_step_scan_point_costs_four_monitor_updates(fast_x):
    """A 10 nm move: DMOV 0, VAL, RBV and DMOV 1 reach ophyd, each once; the IOC posts
    nothing else the axis subscribes to (VAL's subscribers also run once at the put,
    which ophyd reports itself)."""
    x = fast_x
    x.set(0.01).wait(5)  # the moves below go the same way: TDIR stays
    seen: collections.Counter = collections.Counter()
    tokens = []
    for signal in (x.motor_done_move, x.user_setpoint, x.user_readback,
                   x.motor_is_moving, x.direction_of_travel, x.high_limit_switch,
                   x.low_limit_switch):
        def count(value, obj, **kwargs):
            seen[obj.attr_name] += 1
        tokens.append((signal, signal.subscribe(count, run=False)))
    try:
        x.set(0.02).wait(5)
        x.set(0.03).wait(5)
    finally:
        for signal, token in tokens:
            signal.unsubscribe(token)
    assert seen == {"motor_done_move": 4, "user_setpoint": 4, "user_readback": 2}
