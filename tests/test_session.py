"""The session factory and the IPython profile, against the real IOCs and catalog."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from temsims.app.session import configure_session

pytestmark = pytest.mark.timeout(240)


def contract_md(sample: str) -> dict:
    return {
        "sample": sample, "specimen": "li2co3-particles", "operator": "tester",
        "mode": "TEM", "correlation_id": f"corr-{sample}",
        "region": {"x_um": 0.0, "y_um": 0.0, "z_um": 0.0, "tilt_deg": 0.0, "fov_um": 2.0},
    }


def test_session_builds_the_namespace_and_stores_runs(instrument, tmp_path):
    ns: dict = {}
    session = configure_session(
        ns, prefix=instrument.instrument_prefix, catalog=tmp_path / "catalog",
        md_dir=tmp_path / "md", plots=False, magics=False, pbar=False,
    )
    try:
        for name in ("RE", "bp", "bps", "bpp", "camera", "stage", "spectrometer", "imager",
                     "mode", "catalog", "bec"):
            assert name in ns, name
        RE, bp = ns["RE"], ns["bp"]
        ns["camera"].size.set(64).wait(5)
        (uid,) = RE(bp.count([ns["camera"]]), **contract_md("session-a"))
        session.catalog.flush(30)
        run = ns["catalog"][uid]
        image = run["primary"]["camera_image"].read()
        assert image.shape == (1, 64, 64) and image.dtype == "float32"
        assert run.metadata["start"]["sample"] == "session-a"
        # The metadata contract is enforced before anything runs.
        from temsims.catalog import MetadataError

        with pytest.raises(MetadataError):
            RE(bp.count([ns["camera"]]), sample="incomplete")
        # RE.md persists on disk for the next session.
        RE.md["proposal"] = "P-42"
        with pytest.raises(RuntimeError):
            configure_session(ns)
    finally:
        session.close()
    # One PersistentDict per directory at a time (zict): drop the first before reopening.
    import gc

    del ns, session, RE
    gc.collect()
    ns2: dict = {}
    session2 = configure_session(ns2, catalog="none", connect_devices=False, bec=False,
                                 md_dir=tmp_path / "md", magics=False, pbar=False)
    assert ns2["RE"].md["proposal"] == "P-42"
    session2.close()


@pytest.mark.slow
def test_ipython_profile_runs_a_plan(instrument, tmp_path):
    from temsims.profile import install_profile

    ipython_dir = tmp_path / "ipython"
    install_profile(ipython_dir)
    md = contract_md("from-ipython")
    code = textwrap.dedent(f"""
        camera.size.set(64).wait(5)
        uid, = RE(bp.count([camera]), **{md!r})
        catalog.flush(30)
        print("RESULT", catalog[uid].metadata["start"]["sample"], len(catalog))
    """)
    env = {**os.environ,
           "TEMSIMS_PREFIX": instrument.instrument_prefix,
           "TEMSIMS_CATALOG": str(tmp_path / "catalog"),
           "TEMSIMS_MD_DIR": str(tmp_path / "md"),
           "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "IPython", f"--ipython-dir={ipython_dir}", "--profile=temsims",
         "--no-banner", "--colors=nocolor", "-c", code],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert "RESULT from-ipython 1" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_temsims_shell_opens_the_profile(instrument, tmp_path):
    """``temsims shell`` (the console script's code path) with its own options: the
    profile is installed, IPython starts with it, the devices answer over CA on the
    instrument's ports and a run lands in the catalog given by ``--catalog``."""
    md = contract_md("from-shell")
    code = textwrap.dedent(f"""
        print("PREFIX", stage.x.user_readback.pvname)
        uid, = RE(bp.count([bias]), **{md!r})
        catalog.flush(30)
        print("RESULT", catalog[uid].metadata["start"]["sample"], len(catalog))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMSIMS_")}
    env.update({"TEMSIMS_MD_DIR": str(tmp_path / "md"), "MPLBACKEND": "Agg"})
    proc = subprocess.run(
        [sys.executable, "-m", "temsims.app.cli", "shell", "--prefix", instrument.instrument_prefix,
         "--base-port", str(instrument.layout.base_port), "--catalog", str(tmp_path / "cat"),
         "--ipython-dir", str(tmp_path / "ipython"), "--no-banner", "--colors=nocolor",
         "-c", code],
        env=env, capture_output=True, text=True, timeout=180,
    )
    out = proc.stdout + proc.stderr
    assert f"PREFIX {instrument.instrument_prefix}STAGE:X.RBV" in proc.stdout, out[-3000:]
    assert "RESULT from-shell 1" in proc.stdout, out[-3000:]
    assert (tmp_path / "ipython" / "profile_temsims" / "startup").is_dir()
    assert (tmp_path / "cat").is_dir()
    # It leaves quietly: the session is closed and caproto's client disconnected before
    # the interpreter shuts its thread pools down (a traceback per circuit before).
    assert "cannot schedule new futures" not in out and "Traceback" not in out, out[-3000:]
