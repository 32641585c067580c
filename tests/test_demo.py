"""``temsims demo --quick`` in a subprocess: it finishes, and its report is not blank."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import numpy as np
import pytest


@pytest.mark.slow
def test_demo_quick_runs_and_writes_report(slot_pool, tmp_path):
    slot, layout = slot_pool.take()
    prefix = f"D{uuid.uuid4().hex[:6].upper()}:"
    out = tmp_path / "report"
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "temsims.app.cli", "demo", "--quick", "--prefix", prefix,
             "--base-port", str(layout.base_port), "--catalog", str(tmp_path / "catalog"),
             "--out", str(out), "--log-dir", str(tmp_path / "logs"), "--time-scale", "20"],
            capture_output=True, text=True, timeout=240,
        )
    finally:
        slot_pool.give_back(slot)
    wall = time.monotonic() - t0
    print(f"\ndemo --quick wall time {wall:.1f} s\n{proc.stdout[-1500:]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert wall < 180
    assert "report:" in proc.stdout and "catalog:" in proc.stdout
    assert "IOCs stopped" in proc.stdout
    import matplotlib.image as mpimg

    for name in ("correlative.png", "fusion.png", "sims_ratio.png", "particles.png",
                 "quantified.png"):
        path = out / name
        assert path.exists(), name
        img = mpimg.imread(path)
        assert img.ndim == 3 and float(np.std(img)) > 0.0, name
        assert str(path) in proc.stdout, name  # the demo says where everything is
    assert (tmp_path / "catalog" / "catalog.db").exists()
    # report.json: the figures, per region registration and fusion metrics, particles.
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["source"] == "catalog"  # read back by temsims.app.loaders
    assert report["regions"]
    for region in report["regions"]:
        reg = region["registration"]
        assert reg["refined"] and reg["ncc"] > 0.5, reg
        for method in ("ihs", "laplacian"):
            metrics = region["fusion"][method]
            assert all(metrics[k] is not None for k in ("q", "ssim", "sam_deg", "ergas",
                                                        "spatial_cc")), metrics
        assert 0.0 <= region["x6Li"]["map"] <= 1.0 and region["x6Li"]["sigma"] > 0
    parts = report["particles"]
    assert parts["segmented"] == len(parts["table"]) and parts["labelled"] >= 1
    assert set(report["figures"]) == {str(out / n) for n in (
        "correlative.png", "fusion.png", "sims_ratio.png", "particles.png", "quantified.png")}
