"""The queue server: temsims' plan list and permissions, ``temsims queue``'s errors, and
a real Redis and RE Manager running ``correlative_tem_sims`` on a real instrument
into a real catalog, driven through bluesky-queueserver-api."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from temsims.app.queue import (
    PERMISSIONS_FILE,
    PLANS_AND_DEVICES_FILE,
    QueueError,
    QueueServer,
    check_port_free,
    config_file,
)

pytestmark = pytest.mark.timeout(400)

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed (.ci/run installs it)")

#: The plans a guest may run (docs/queue.md): TEM imaging, EDX with the electron beam,
#: and the plans that only make the instrument safe. Every other plan unblanks the Ga+
#: beam or applies the holder bias.
GUEST_PLANS = {"tem_image", "tem_mosaic", "edx_point", "edx_line", "to_tem_mode", "safe_state"}
ION_BEAM_OR_BIAS_PLANS = {"sims_map", "depth_profile", "mass_spectrum", "calibrate_masses",
                          "to_sims_mode", "correlative_tem_sims", "find_labelled_particles",
                          "edx_sims_calibration", "calibrate_dead_time",
                          "bracketed_sims_maps", "calibrate_coincidence",
                          "calibrate_raster", "focus_probe",
                          "align_ion_beam"}
#: Parameters the queue lists without a type: callables (they cannot travel in a queue
#: item) and safe_state's, which the plan leaves untyped.
UNTYPED = {("sims_map", "after_map"), ("tem_image", "after_image"),
           ("safe_state", "column"), ("safe_state", "bias")}
REGENERATE = ("TEMSIMS_QUEUE_OFFLINE=1 qserver-list-plans-devices --startup-module "
              "temsims.app.queue_startup --file-dir core/app/queue_config")


def list_plans_and_devices(directory: Path) -> dict:
    """``qserver-list-plans-devices`` on the start-up module, with no instrument."""
    env = {**os.environ, "TEMSIMS_QUEUE_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-c",
         "from bluesky_queueserver.manager.gen_lists import gen_list_of_plans_and_devices_cli;"
         " gen_list_of_plans_and_devices_cli()",
         "--startup-module", "temsims.app.queue_startup", "--file-dir", str(directory)],
        env=env, check=True, capture_output=True, timeout=120, cwd=directory)
    return yaml.safe_load((directory / PLANS_AND_DEVICES_FILE).read_text())


def test_committed_plan_list_is_the_code(tmp_path):
    """The committed existing_plans_and_devices.yaml is what the code lists now; every
    plan is listed with its docstring and typed parameters, with no instrument."""
    import temsims.plans

    fresh = list_plans_and_devices(tmp_path)
    committed = yaml.safe_load(config_file(PLANS_AND_DEVICES_FILE).read_text())
    assert fresh == committed, f"the plan list is stale: regenerate it with {REGENERATE}"
    plans = fresh["existing_plans"]
    assert set(plans) == set(temsims.plans.__all__)
    for name, plan in plans.items():
        assert plan["description"].strip(), name
        for parameter in plan["parameters"]:
            if (name, parameter["name"]) not in UNTYPED:
                assert "annotation" in parameter, (name, parameter["name"])
    # The device parameters are enums of the namespace's device names.
    microscope = plans["correlative_tem_sims"]["parameters"][0]
    assert microscope["annotation"] == {"type": "Microscope",
                                        "devices": {"Microscope": ["instrument"]}}
    imager = plans["sims_map"]["parameters"][0]["annotation"]
    assert imager["devices"] == {"ImagerDevice": ["imager"]}
    assert {"instrument", "stage", "imager", "camera", "bias"} <= set(fresh["existing_devices"])


def test_guests_never_get_the_ion_beam_or_the_bias():
    from bluesky_queueserver.manager.profile_ops import (
        load_allowed_plans_and_devices,
        load_user_group_permissions,
    )

    import temsims.plans

    permissions = load_user_group_permissions(str(config_file(PERMISSIONS_FILE)))
    allowed, _ = load_allowed_plans_and_devices(
        path_existing_plans_and_devices=str(config_file(PLANS_AND_DEVICES_FILE)),
        user_group_permissions=permissions)
    every_plan = set(temsims.plans.__all__)
    # Every plan is classified, once.
    assert GUEST_PLANS | ION_BEAM_OR_BIAS_PLANS == every_plan
    assert not GUEST_PLANS & ION_BEAM_OR_BIAS_PLANS
    assert set(allowed["primary"]) == every_plan
    assert set(allowed["guest"]) == GUEST_PLANS


def test_queue_help_and_what_to_do_when_it_cannot_start(tmp_path, monkeypatch, capsys):
    from temsims.app.cli import main

    with pytest.raises(SystemExit):
        main(["queue", "--help"])
    help_text = capsys.readouterr().out
    for default in ("(default: TEMSIMS:)", "(default: 127.0.0.1)", "a free one) (default: 0)"):
        assert default in help_text

    # No instrument on these ports: exit 1, one line saying what to start.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        unused_base = s.getsockname()[1] - 20 if s.getsockname()[1] > 20000 else 40000
    assert main(["queue", "--prefix", "NOBODY:", "--base-port", str(unused_base)]) == 1
    err = capsys.readouterr().err
    assert "no instrument answers at prefix 'NOBODY:'" in err and "temsims ioc all" in err

    # A port in use names the option to change.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(QueueError, match="--redis-port"):
            check_port_free(taken.getsockname()[1], "Redis", "--redis-port")

    # No redis-server: install Debian's package.
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(QueueError, match="apt-get install redis-server"):
        QueueServer(check_instrument=False, state_dir=tmp_path / "state").start()


def _first_event_time(run) -> float:
    """Wall time (the worker's clock, this machine's) of ``run``'s first event."""
    return min(doc["time"] if name == "event" else min(doc["time"])
               for name, doc in run.documents() if name in ("event", "event_page"))


def _stored(catalog_dir: Path, uids: list[str], timeout: float = 90.0) -> list:
    """The runs ``uids`` from the catalog, once each has its stop document."""
    from temsims.catalog import open_catalog

    deadline = time.monotonic() + timeout
    while True:
        cat = open_catalog(catalog_dir)
        try:
            runs = [cat[uid] for uid in uids]
            if all(run.metadata.get("stop") for run in runs):
                return runs
        except KeyError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"runs {uids} not all stored in {catalog_dir} within {timeout} s")
        time.sleep(0.5)


#: A small correlative experiment: one region, a 16 x 11 SIMS map.
CORRELATIVE_KWARGS = {"overview_fov_um": 4.0, "max_rois": 1, "sims_pixels": [16, 11],
                      "sims_dwell_s": 1e-4, "exposure_s": 0.01}


@pytest.mark.slow  # two environment_opens: 5-22 s each with the machine loaded
@needs_redis
def test_queue_runs_correlative_into_the_catalog(instruments, tmp_path):
    from bluesky_queueserver_api import BPlan
    from bluesky_queueserver_api.zmq import REManagerAPI
    from instrument_support import connect_fast

    procs = instruments.get()
    connect_fast(procs, camera_size=64)
    catalog_dir = tmp_path / "catalog"
    md = {"sample": "queued-li2co3", "specimen": "li2co3-particles"}
    server = QueueServer(prefix=procs.instrument_prefix, base_port=procs.layout.base_port,
                         host=procs.layout.host, catalog=str(catalog_dir),
                         state_dir=tmp_path / "queue",
                         extra_env={"TEMSIMS_MD_DIR": str(tmp_path / "md")})
    server.start()
    pids = (server.manager.pid, server.redis.pid)
    api = REManagerAPI(zmq_control_addr=server.control_address, timeout_recv=30)
    try:
        t = time.monotonic()
        api.environment_open()
        api.wait_for_idle(timeout=240)
        environment_open_s = time.monotonic() - t
        assert api.status()["worker_environment_exists"]

        # A guest's SIMS map is refused, with the reason; a guest's TEM image is not.
        with pytest.raises(api.RequestFailedError, match="not in the list of allowed plans"):
            api.item_add(BPlan("sims_map", "imager", "spectrometer", "column", "stage", "bias",
                               fov_um=2.0, dwell_s=1e-4), user_group="guest")
        guest_ok = api.item_add(BPlan("tem_image", "stage", "tem", "camera", x_um=0.0,
                                      y_um=0.0, fov_um=2.0, exposure_s=0.01, md=md),
                                user_group="guest")
        assert guest_ok["success"]
        api.item_remove(uid=guest_ok["item"]["item_uid"])

        added = api.item_add(BPlan("correlative_tem_sims", "instrument", **CORRELATIVE_KWARGS,
                                   md=md))
        assert added["success"], added
        queue_start_wall = time.time()
        t = time.monotonic()
        api.queue_start()
        api.wait_for_idle(timeout=240)
        queued_client_s = time.monotonic() - t
        result = api.history_get()["items"][-1]["result"]
        assert result["exit_status"] == "completed", result
        uids = result["run_uids"]
        queued_worker_s = result["time_stop"] - result["time_start"]

        # Its runs are in the catalog, linked by one correlation_id.
        runs = _stored(catalog_dir, uids)
        assert len(runs) == 3  # overview, one SIMS map, one TEM zoom
        starts = [run.metadata["start"] for run in runs]
        assert len({s["correlation_id"] for s in starts}) == 1
        assert [s["plan_name"] for s in starts] == ["tem_image", "sims_map", "tem_image"]
        assert {s["sample"] for s in starts} == {"queued-li2co3"}
        first_event_s = _first_event_time(runs[0]) - queue_start_wall

        # The queue holds its items over environment_close and a new environment_open.
        held = [api.item_add(BPlan("tem_image", "stage", "tem", "camera", x_um=0.0, y_um=0.0,
                                   fov_um=fov, exposure_s=0.01, md=md))["item"]["item_uid"]
                for fov in (1.0, 2.0)]
        api.environment_close()
        api.wait_for_idle(timeout=120)
        assert not api.status()["worker_environment_exists"]
        t = time.monotonic()
        api.environment_open()
        api.wait_for_idle(timeout=240)
        reopen_s = time.monotonic() - t
        assert [item["item_uid"] for item in api.queue_get()["items"]] == held
        api.queue_clear()
        api.environment_close()
        api.wait_for_idle(timeout=120)
    finally:
        api.close()
        server.stop()
    for pid in pids:  # stopped by PID, both gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    # The same plan in a session of this process, on the same instrument.
    in_session_s = _correlative_in_session(procs, tmp_path)
    print(f"\nqueue: environment_open {environment_open_s:.1f} s (reopen {reopen_s:.1f} s); "
          f"queue_start -> first event {first_event_s:.2f} s; correlative_tem_sims queued "
          f"{queued_worker_s:.2f} s in the worker, {queued_client_s:.2f} s queue_start -> "
          f"idle, in a session {in_session_s:.2f} s (overhead "
          f"{queued_client_s - in_session_s:+.2f} s)")
    assert first_event_s > 0


def _correlative_in_session(procs, tmp_path: Path) -> float:
    """Seconds of ``RE(correlative_tem_sims(...))`` in a session like the worker's."""
    from instrument_support import connect_fast

    from temsims.app.session import configure_session

    connect_fast(procs, camera_size=64)
    ns: dict = {}
    session = configure_session(ns, prefix=procs.instrument_prefix,
                                catalog=tmp_path / "session-catalog", md_dir=tmp_path / "md2",
                                bec=False, pbar=False, magics=False)
    try:
        kwargs = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in CORRELATIVE_KWARGS.items()}
        t = time.monotonic()
        uids = session.RE(ns["correlative_tem_sims"](
            session.instrument, **kwargs,
            md={"sample": "session-li2co3", "specimen": "li2co3-particles"}))
        elapsed = time.monotonic() - t
        assert len(uids) == 3
        return elapsed
    finally:
        session.close()
