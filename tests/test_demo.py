"""``temsims demo --quick`` in a subprocess: it finishes, and its report is not blank."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import numpy as np


def test_demo_quick_runs_and_writes_report(slot_pool, tmp_path):
    slot, layout = slot_pool.take()
    prefix = f"D{uuid.uuid4().hex[:6].upper()}:"
    out = tmp_path / "report"
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "temsims.cli", "demo", "--quick", "--prefix", prefix,
             "--base-port", str(layout.base_port), "--catalog", str(tmp_path / "catalog"),
             "--out", str(out), "--log-dir", str(tmp_path / "logs")],
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

    for name in ("correlative.png", "sims_ratio.png", "particles.png"):
        path = out / name
        assert path.exists(), name
        img = mpimg.imread(path)
        assert img.ndim == 3 and float(np.std(img)) > 0.0, name
    assert (tmp_path / "catalog" / "catalog.db").exists()
