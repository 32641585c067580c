"""The plans import nothing from temsims but protocols, shared constants and analysis.

A plan library another lab can run on its own devices must not reach into our devices,
callbacks, catalog or application (issue 13, decision 0024). Every module of
``temsims.plans`` is parsed (``ast``: imports at any depth, inside functions too, and
``importlib.import_module``/``__import__`` of a literal name) and each import of a
``temsims`` module outside the allowed ones fails the test, named with its file and
line. A fresh interpreter that imports the plan library must not have loaded them
either (what the plans' own imports pull in through the allowed modules).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import temsims.plans

#: The temsims modules plans may import (and their sub-modules).
ALLOWED = ("temsims.plans", "temsims.constants", "temsims.analysis")
#: Names ``from temsims import NAME`` may take (modules of ALLOWED).
ALLOWED_FROM_TEMSIMS = {"plans", "constants", "analysis"}
PLANS_DIR = Path(temsims.plans.__file__).parent


def _allowed(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ALLOWED)


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module an ``ImportFrom`` names, relative imports resolved in ``package``."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def forbidden_imports(source: str, package: str = "temsims.plans") -> list[tuple[int, str]]:
    """``(line, module)`` of every temsims import in ``source`` a plan may not make.

    Parameters
    ----------
    source
        A module's text.
    package
        The package the module is in (resolves ``from . import x``).
    """
    found: list[tuple[int, str]] = []

    def check(line: int, module: str) -> None:
        if (module == "temsims" or module.startswith("temsims.")) and not _allowed(module):
            found.append((line, module))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, package)
            if module == "temsims":
                for alias in node.names:
                    if alias.name not in ALLOWED_FROM_TEMSIMS:
                        found.append((node.lineno, f"temsims.{alias.name}"))
            else:
                check(node.lineno, module)
        elif isinstance(node, ast.Call):
            # importlib.import_module("temsims.x") / __import__("temsims.x")
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if (name in ("import_module", "__import__") and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                check(node.lineno, node.args[0].value)
    return sorted(found)


def _plan_modules() -> list[Path]:
    return sorted(PLANS_DIR.glob("*.py"))


def test_checker_finds_what_it_must():
    """The checker itself: every spelling of a forbidden import is caught and named,
    the allowed ones pass."""
    source = "\n".join([
        "import temsims.devices",
        "from temsims.callbacks.maps import map_block",
        "from temsims import catalog",
        "def f():",
        "    from temsims.app.loaders import load_correlative",
        "    import importlib",
        "    importlib.import_module('temsims.devices.stage')",
        "from .. import ioc",
        "from temsims.constants import SIMS_TILT_DEG",
        "from temsims.analysis.maps import MapLayout",
        "from temsims import constants, analysis",
        "from temsims.plans.types import Microscope",
        "from . import _common",
        "import numpy",
    ])
    assert forbidden_imports(source) == [
        (1, "temsims.devices"), (2, "temsims.callbacks.maps"), (3, "temsims.catalog"),
        (5, "temsims.app.loaders"), (7, "temsims.devices.stage"), (8, "temsims.ioc")]


@pytest.mark.parametrize("path", _plan_modules(), ids=lambda p: p.name)
def test_plan_module_imports_only_protocols_constants_and_analysis(path):
    bad = forbidden_imports(path.read_text(), "temsims.plans")
    assert not bad, (f"plans/{path.name} imports what a plan may not (allowed: "
                     f"{', '.join(ALLOWED)}): "
                     + "; ".join(f"line {line}: {module}" for line, module in bad))


def test_importing_the_plan_library_loads_no_forbidden_module():
    """A fresh interpreter: ``import temsims.plans`` and the names it exports loads no
    temsims module outside the allowed ones (nor ophyd: the plans know devices only
    by their protocols)."""
    code = ("import json, sys, temsims.plans as p\n"
            "[getattr(p, n) for n in p.__all__]\n"
            "print(json.dumps(sorted(m for m in sys.modules "
            "if m.startswith(('temsims', 'ophyd')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    bad = [m for m in loaded if m != "temsims" and not _allowed(m)]
    assert not bad, f"import temsims.plans loaded {bad}"
