"""Every benchmark script answers ``--help`` with plain text naming its options.

The scripts are run in-process (``runpy``) with ``--help``: argparse formats every
help string then, so a bad one (a bare ``%`` in a setting's name) fails here rather
than in the hands of whoever wants to reproduce a figure.
"""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py")
                 if "argparse" in (text := p.read_text()) and "__main__" in text)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_help_is_plain_text(script: Path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script.name, "--help"])
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    text = out.getvalue()
    assert exit_info.value.code == 0, text
    assert text.startswith("usage:") and "--help" in text
    assert "``" not in text and ":func:" not in text, text
