"""``temsims.devices.common.chain``: steps run one after the other on status
callbacks; a failed step fails the whole (no instrument: plain ophyd statuses)."""

from __future__ import annotations

import pytest
from ophyd.status import StatusBase

from temsims.devices.common import chain


def test_a_step_that_times_out_fails_the_chain_with_a_timeout_naming_it():
    """A step's status timing out (a put-completion past its deadline: ophyd's
    StatusTimeoutError, which ophyd refuses as another status's exception) fails
    the chain's status with a plain TimeoutError, instead of leaving it pending and
    the plan that waits on it hung (seen once in a full run, under load)."""
    ran = []

    def acquire():
        return StatusBase(timeout=0.05)

    def after():
        ran.append("after")

    st = chain(None, [acquire, after])
    with pytest.raises(TimeoutError, match="step acquire timed out") as info:
        st.wait(5)
    assert type(info.value) is TimeoutError
    assert st.done and not st.success and ran == []


def test_steps_run_in_order_and_a_failed_step_fails_the_chain_with_its_error():
    order = []

    def first():
        order.append(1)
        s = StatusBase()
        s.set_finished()
        return s

    def second():
        order.append(2)
        s = StatusBase()
        s.set_exception(RuntimeError("interlock"))
        return s

    def third():
        order.append(3)

    st = chain(None, [first, second, third])
    with pytest.raises(RuntimeError, match="interlock"):
        st.wait(5)
    assert order == [1, 2]
