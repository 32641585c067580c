"""Every invalid argument is refused before any hardware message; summarize_plan runs."""

from __future__ import annotations

import math

import pytest
from bluesky.simulators import summarize_plan

from temsims.plans import (
    calibrate_dead_time,
    calibrate_masses,
    depth_profile,
    edx_line,
    edx_point,
    focus_probe,
    mass_spectrum,
    sims_map,
    tem_image,
    tem_mosaic,
    to_sims_mode,
    to_tem_mode,
)
from temsims.plans._common import HARDWARE_COMMANDS


def _cases(d):
    """plan -> (positional devices, valid kwargs, [(bad kwargs, expected exception)])."""
    sims_devs = (d.imager, d.spectrometer, d.column, d.stage, d.bias)
    sims_ok = dict(species=("6Li", "7Li"), fov_um=1.0, pixels=(4, 4), dwell_s=1e-3)
    common_num = [math.nan, "1", None, True]
    return {
        tem_image: ((d.stage, d.tem, d.camera),
                    dict(x_um=0.0, y_um=0.0, fov_um=2.0, exposure_s=0.01),
                    [{"x_um": 5000.0}, {"y_um": -5000.0}, {"fov_um": 0.0}, {"fov_um": 500.0},
                     {"exposure_s": 0.0}, {"exposure_s": 100.0}, {"md": "x"},
                     {"md": {"correlation_id": ""}}]
                    + [{"x_um": v} for v in common_num] + [{"exposure_s": v} for v in common_num]),
        tem_mosaic: ((d.stage, d.tem, d.camera),
                     dict(center=(0.0, 0.0), n_tiles=(2, 2), fov_um=2.0, exposure_s=0.01),
                     [{"center": (0.0,)}, {"center": "00"}, {"center": (2000.0, 0.0)},
                      {"n_tiles": (0, 2)}, {"n_tiles": (2.5, 2)}, {"n_tiles": (30, 2)},
                      {"fov_um": -1.0}, {"overlap": 0.95}, {"overlap": -0.1},
                      {"exposure_s": math.inf}, {"md": 3}]),
        edx_point: ((d.stage, d.tem, d.edx), dict(x_um=0.0, y_um=0.0, live_time_s=0.01),
                    [{"x_um": 1e4}, {"y_um": math.nan}, {"live_time_s": 0.0},
                     {"live_time_s": 1000.0}, {"live_time_s": "fast"}]),
        edx_line: ((d.stage, d.tem, d.edx),
                   dict(start=(0.0, 0.0), stop=(1.0, 0.0), npts=5, live_time_s=0.01),
                   [{"start": (0.0, 0.0), "stop": (0.0, 0.0)}, {"stop": (500.0, 0.0)},
                    {"npts": 1}, {"npts": 1000}, {"npts": 2.5}, {"start": None},
                    {"live_time_s": -1.0}]),
        mass_spectrum: ((d.spectrometer,),
                        dict(start_u=5.0, stop_u=8.0, step_u=0.01, dwell_s=1e-3),
                        [{"start_u": 0.0}, {"stop_u": 4.0}, {"step_u": 0.0},
                         {"step_u": 1e-5}, {"dwell_s": 0.0}, {"dwell_s": "x"},
                         {"start_u": 1.0, "stop_u": 299.0, "step_u": 0.001},
                         {"min_counts": -1.0}, {"column": "FIB"}]),
        calibrate_masses: ((d.spectrometer,), dict(),
                           [{"peaks": ("69Ga",)}, {"peaks": ("69Ga", "69Ga")},
                            {"peaks": ("69Ga", "Xx71")}, {"peaks": "69Ga,71Ga"},
                            {"window_u": 0.0}, {"window_u": 50.0}, {"step_u": 1.0},
                            {"dwell_s": 0.0}, {"write": "yes"}, {"bias": 3}]),
        calibrate_dead_time: ((d.spectrometer, d.column), dict(),
                              [{"apertures": ("1 nA",)}, {"apertures": "1 nA"},
                               {"species": ()}, {"repeats": 0}, {"count_time_s": 0.0},
                               {"fov_um": 0.0}, {"center_um": (0.0, 0.0)},
                               {"scale_rms": 1.0}, {"apply": "yes"}, {"bias": 3}]),
        sims_map: (sims_devs, dict(sims_ok),
                   [{"species": ()}, {"species": ("6Li", "7Li", "12C", "13C", "16O")},
                    {"species": ("6Li", "6Li")}, {"species": ("Li",)}, {"species": "6Li"},
                    {"species": ("6Li", "69Ga")}, {"fov_um": 0.0}, {"fov_um": 1e6},
                    {"pixels": (0, 4)}, {"pixels": (4, 2000)}, {"pixels": 4},
                    {"dwell_s": 1.0}, {"dwell_s": 0.0}, {"frames": 0}, {"frames": 1.5},
                    {"fly": "no"}, {"fly": False, "pixels": (128, 128)},
                    {"fly": False, "dwell_s": 1e-6}, {"settle_s": 5.0}, {"md": []}]),
        depth_profile: (sims_devs, dict(sims_ok, frames=3),
                        [{"frames": 1}, {"sputter_yield": 0.0}, {"atomic_density_nm3": 1e4},
                         {"incidence_deg": 90.0}, {"species": ("6Li", "200Hg")},
                         {"pixels": (4, 4, 4)}]),
        to_sims_mode: ((d.mode,), dict(voltage_v=4500.0),
                       [{"voltage_v": 50.0}, {"voltage_v": 9000.0}, {"voltage_v": math.nan},
                        {"voltage_v": "4.5 kV"}]),
        to_tem_mode: ((d.mode,), dict(), []),
        focus_probe: ((d,), dict(),
                      [{"edge": (1.8,)}, {"edge": (5000.0, 0.0)}, {"voltage_v": 50.0},
                       {"span_um": 0.5}, {"span_um": 60.0}, {"steps": 3}, {"steps": 4.5},
                       {"step_along_um": -0.1}, {"pixels": (8, 4)}, {"species": ()},
                       {"dwell_s": 0.0}, {"fov_um": 0.0}, {"md": []}]),
    }


def _refused_before_hardware(plan, exc_types=(ValueError, TypeError)):
    seen = []
    with pytest.raises(exc_types) as info:
        for msg in plan:
            seen.append(msg)
    hw = [m for m in seen if m.command in HARDWARE_COMMANDS]
    assert not hw, f"hardware messages before the refusal: {hw}"
    return info.value


def test_every_invalid_argument_refused_before_any_hardware_message(pdev):
    n = 0
    for plan_fn, (devs, ok, bads) in _cases(pdev).items():
        for bad in bads:
            exc = _refused_before_hardware(plan_fn(*devs, **{**ok, **bad}))
            # the message names the refused argument (or, for pairs, the one checked)
            assert any(name in str(exc) for name in bad) or "start and stop" in str(exc), \
                (plan_fn, bad, exc)
            n += 1
    assert n > 80


def test_devices_checked_too(pdev):
    d = pdev
    _refused_before_hardware(tem_image(None, d.tem, d.camera, x_um=0.0, y_um=0.0, fov_um=1.0,
                                       exposure_s=0.01))
    _refused_before_hardware(sims_map(d.imager, d.spectrometer, d.stage, d.stage, d.bias,
                                      fov_um=1.0, dwell_s=1e-3))
    _refused_before_hardware(to_sims_mode(d.stage))


def test_messages_of_a_refused_plan_with_a_run_engine(RE, pdev):
    """The same with a RunEngine msg hook: the plan never sends a message."""
    d = pdev
    with pytest.raises(ValueError, match="exposure_s"):
        RE(tem_image(d.stage, d.tem, d.camera, x_um=0.0, y_um=0.0, fov_um=2.0, exposure_s=-1))
    assert RE.msgs == []
    assert "start" not in RE.docs.docs


def test_summarize_plan_on_every_plan(pdev, capsys):
    for plan_fn, (devs, ok, _) in _cases(pdev).items():
        summarize_plan(plan_fn(*devs, **ok))
        out = capsys.readouterr().out
        assert out.strip(), plan_fn.__name__
    summarize_plan(sims_map(*(_cases(pdev)[sims_map][0]), species=("6Li",), fov_um=1.0,
                            pixels=(2, 2), dwell_s=1e-3, fly=False))
    assert "column_scan_spot_x" in capsys.readouterr().out


def test_plans_are_typed_and_the_devices_fit_the_types(pdev):
    """Every public plan annotates each parameter and its return (a message generator);
    temsims' devices are instances of the structural types the plans ask for."""
    import inspect
    import typing
    from collections.abc import Generator

    import temsims.plans as plans
    from temsims.plans import types

    for name in plans.__all__:
        if name == "safe_state":
            continue
        fn = getattr(plans, name)
        hints = typing.get_type_hints(fn)
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind is not p.VAR_KEYWORD]
        missing = {p.name for p in params} - set(hints)
        assert not missing, (name, missing)
        assert typing.get_origin(hints["return"]) is Generator, name
    d = pdev
    expected = {"stage": types.StageDevice, "tem": types.TemColumnDevice,
                "camera": types.CameraDevice, "edx": types.EdxDevice,
                "mode": types.ModeDevice, "imager": types.ImagerDevice,
                "spectrometer": types.SpectrometerDevice, "column": types.IonColumnDevice,
                "bias": types.BiasDevice}
    for part, protocol in expected.items():
        assert isinstance(getattr(d, part), protocol), part
    assert not isinstance(d.stage, types.CameraDevice)
