"""ophyd's own EpicsMotor tests against the stage's linear axes (not collected by itself).

Run by ``test_motor_record_calibration.py::test_ophyd_epicsmotor_tests_pass_on_every_linear_axis``
in a pytest process of its own (``--noconftest``: the session's conftest would
reserve other CA ports), against the running instrument whose stage prefix is in
``$TEMSIMS_TEST_STAGE_PREFIX``, on the axes named in ``$TEMSIMS_TEST_STAGE_AXES``
(default ``XYZ``). The test functions are ophyd's
(``ophyd/tests/test_epicsmotor.py``), unchanged; the ``motor`` fixture is built as
ophyd's conftest builds it (its ``TestEpicsMotor``, LLM/HLM -100..100, ``set(0)``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import pytest
from ophyd.tests import test_epicsmotor as upstream

#: ophyd's tests left out: the bundle test needs no IOC; the two homing tests assert
#: that a home *fails* ("MotorSim is unable to execute homing"), a property of ophyd's
#: simulated motor, while our axes home (to dial 0; tests/ioc/test_stage.py).
NOT_RUN = {"test_motor_bundle", "test_homing_forward", "test_homing_reverse"}
#: ophyd's tests that take the ``motor`` fixture: 19 of the file's 22.
UPSTREAM_TESTS = sorted(
    name for name in dir(upstream) if name.startswith("test_") and name not in NOT_RUN
)
for _name in UPSTREAM_TESTS:
    globals()[_name] = getattr(upstream, _name)  # collected here, with our fixture
del _name


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(params=tuple(os.environ.get("TEMSIMS_TEST_STAGE_AXES", "XYZ")))
def motor(request):
    """ophyd's ``motor`` fixture (ophyd/tests/conftest.py) on one of our axes."""
    from temsims.devices.common import use_caproto_control_layer

    # The control layer a session uses (ophyd's caproto layer with the client fixes of
    # decision 0032: a snapshot of callbacks raced a garbage collection here in CI).
    use_caproto_control_layer()
    from ophyd.signal import DEFAULT_EPICSSIGNAL_VALUE
    from ophyd.tests.conftest import TestEpicsMotor

    prefix = os.environ["TEMSIMS_TEST_STAGE_PREFIX"]
    m = TestEpicsMotor(prefix + request.param, name="epicsmotor", settle_time=0.1,
                       timeout=10.0)
    m.wait_for_connection(timeout=10)
    # ophyd re-reads VAL's ctrl limits (``motor.limits``) only on a *change* of an
    # HLM/LLM monitor: the puts below must not beat the first monitor values (a loaded
    # machine). ophyd's fixture assumes a quiet one.
    first = (m.low_limit_travel, m.high_limit_travel, m.user_readback, m.user_offset)
    _wait_for(lambda: all(s._readback is not DEFAULT_EPICSSIGNAL_VALUE for s in first),
              10.0, "the first monitor values")
    m.low_limit_value.put(-100, wait=True)
    m.high_limit_value.put(100, wait=True)
    m.set(0).wait(timeout=10)
    # ophyd re-reads the limits on its monitor thread, behind the queued updates: on a
    # loaded machine `limits` can trail the puts by some ms. Wait (without failing:
    # limits that stay wrong fail test_limits itself).
    with contextlib.suppress(AssertionError):
        _wait_for(lambda: m.limits == (-100, 100), 2.0, "ophyd's limits")
    yield m
    m.destroy()
