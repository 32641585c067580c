"""The temsims IPython profile (``startup/00-temsims.py``), installed by ``temsims shell``."""

from __future__ import annotations

import shutil
from pathlib import Path

PROFILE_NAME = "temsims"
STARTUP_DIR = Path(__file__).with_name("startup")


def install_profile(ipython_dir: str | Path | None = None) -> Path:
    """Copy the startup files into ``<ipython_dir>/profile_temsims``; return its path."""
    if ipython_dir is None:
        from IPython.paths import get_ipython_dir

        ipython_dir = get_ipython_dir()
    profile_dir = Path(ipython_dir) / f"profile_{PROFILE_NAME}"
    startup = profile_dir / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    for source in STARTUP_DIR.glob("*.py"):
        shutil.copyfile(source, startup / source.name)
    return profile_dir
