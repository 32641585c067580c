"""Importing tiled's server stack without the libraries it needs only later.

Runs in the catalog host only (:mod:`temsims.catalog.server`; decision 0014). tiled's
catalog adapter and app import, through a few modules, dask.dataframe, dask.array,
pandas, xarray, sparse (numba, scipy), awkward and ragged, 55-60 % of the host's
imports, although those modules use them only in annotations evaluated at import, in
module-level ``Union`` aliases, or inside functions that a server calls when it reads
or writes data, never to start. :func:`import_lean` executes those modules (listed in
:data:`DEFERRED`, checked against tiled :data:`TILED_VERSION`) with their own
top-level imports of these packages replaced by :class:`_Deferred` references; the
host then listens, and :func:`finish` imports the real packages and binds them in
those modules' namespaces, so what the host forks afterwards is what a plain import
gives. A reference used before :func:`finish` imports its target at that use.

Any other tiled version, or those modules already imported, and :func:`import_lean`
imports nothing special (the host then starts as slowly as before, and correctly).
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import os
import sys
import threading

#: The tiled release whose modules below were read for what they import and why.
TILED_VERSION = "0.2.20"
#: tiled module -> the top-level packages whose import statements it may defer: in
#: these modules (tiled 0.2.20) they appear in annotations, ``Union``/``NewType``
#: aliases and function bodies only, as ``package.attribute``, or as a name bound by
#: ``from package import name`` that the module only calls or takes attributes of
#: (never one used in ``isinstance``, which a reference could not stand for). In
#: dependency order: a module is loaded before its importers.
DEFERRED: tuple[tuple[str, frozenset[str]], ...] = (
    # blosc2 (a compression codec offered to clients) is used inside its functions only.
    ("tiled.media_type_registration", frozenset({"blosc2"})),
    ("tiled.structures.awkward", frozenset({"awkward"})),
    ("tiled.structures.ragged", frozenset({"awkward", "ragged"})),
    ("tiled.adapters.utils", frozenset({"dask"})),
    ("tiled.adapters.protocols", frozenset({"dask", "pandas", "ragged", "sparse"})),
    ("tiled.serialization.table", frozenset({"pandas"})),
    ("tiled.serialization.sparse", frozenset({"pandas"})),
    ("tiled.serialization.awkward", frozenset({"awkward"})),
    ("tiled.serialization.ragged", frozenset({"awkward", "ragged"})),
    # The streaming cache's redis client: used inside functions and in annotations
    # only, bound by ``from redis import asyncio as redis`` and ``from
    # redis.asyncio.sentinel import Sentinel`` (a class it only calls).
    ("tiled.server.streaming", frozenset({"redis"})),
)
#: ``from ragged._typing import SupportsDLPack`` in tiled.structures.ragged is used at
#: import (``runtime_checkable``): that one small module is loaded on its own, without
#: ``ragged/__init__`` (which imports awkward).
_STANDALONE = {"ragged._typing"}

_lock = threading.RLock()
#: Full names the deferred statements asked for (``dask.dataframe``), to import at finish.
_wanted: set[str] = set()
#: (module, global name) bound to a reference, rebound by :func:`finish`.
_bound: list[tuple[str, str]] = []
_finished = False


class _Deferred:
    """Stands for a package (or one of its attributes) a deferred module imported.

    While :func:`import_lean` runs, an attribute of it is another reference (for
    annotations such as ``dask.dataframe.DataFrame``); after that, any attribute or
    call imports the real package (:func:`finish`) and forwards to it."""

    __slots__ = ("_path",)

    def __init__(self, path: str) -> None:
        object.__setattr__(self, "_path", path)

    def _resolve(self):
        finish()
        return _target(self._path)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        if _loading_now():
            return _Deferred(f"{self._path}.{name}")
        return getattr(self._resolve(), name)

    def __call__(self, *args, **kwargs):
        return self._resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<deferred {self._path}>"


_loading = threading.local()


def _loading_now() -> bool:
    return getattr(_loading, "active", False)


def applies() -> bool:
    """Whether this tiled is the one :data:`DEFERRED` was checked against and none of
    its modules is imported yet."""
    spec = importlib.util.find_spec("tiled")
    if spec is None:
        return False
    try:
        from importlib.metadata import version

        if version("tiled") != TILED_VERSION:
            return False
    except Exception:  # noqa: BLE001 - no metadata: do nothing special
        return False
    return not any(name in sys.modules for name, _ in DEFERRED)


def import_lean() -> bool:
    """Import :data:`DEFERRED`'s modules with their deferrable imports deferred. False
    (and nothing imported) when :func:`applies` says no."""
    with _lock:
        if not applies():
            return False
        _loading.active = True
        try:
            for name, roots in DEFERRED:
                _load(name, roots)
        finally:
            _loading.active = False
        return True


def _load(name: str, roots: frozenset[str]) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = importlib.import_module(parent_name)
    if name in sys.modules:  # imported by an earlier one of the list
        return
    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    real_import = builtins.__import__

    def deferring_import(what, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and what in _STANDALONE:
            return _standalone(what)
        root = what.partition(".")[0]
        if level == 0 and root in roots:
            _wanted.add(what)
            # ``import a.b`` binds the package ``a``; ``from a.b import c`` takes ``c``
            # from ``a.b`` itself.
            return _Deferred(what if fromlist else root)
        return real_import(what, globals, locals, fromlist, level)

    # The module's own import statements only: other modules keep the real import.
    module.__builtins__ = {**vars(builtins), "__import__": deferring_import}
    _execute(name, spec, module)
    module.__builtins__ = builtins
    setattr(parent, child, module)
    for key, value in vars(module).items():
        if isinstance(value, _Deferred):
            _bound.append((name, key))


def _target(path: str):
    """What ``path`` (``package.module.attribute``) names, its package imported."""
    root, *attrs = path.split(".")
    obj = sys.modules[root]
    for attr in attrs:
        obj = getattr(obj, attr)
    return obj


def _standalone(name: str):
    module = sys.modules.get(name)
    if module is None:
        package, _, leaf = name.rpartition(".")
        location = importlib.util.find_spec(package).submodule_search_locations[0]
        spec = importlib.util.spec_from_file_location(name, os.path.join(location, f"{leaf}.py"))
        module = importlib.util.module_from_spec(spec)
        _execute(name, spec, module)
    return module


def _execute(name: str, spec, module) -> None:
    """Run ``module``'s code as ``sys.modules[name]`` (as an import does), leaving no
    half-made module there if it fails."""
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise


def finish() -> None:
    """Import what the deferred statements asked for and bind it where they would
    have (idempotent; a no-op unless :func:`import_lean` deferred something)."""
    global _finished
    if _finished:
        return
    with _lock:
        if _finished:
            return
        for name in sorted(_wanted):
            importlib.import_module(name)
        for module_name, key in _bound:
            module = sys.modules[module_name]
            value = vars(module).get(key)
            if isinstance(value, _Deferred):
                setattr(module, key, _target(object.__getattribute__(value, "_path")))
        for name in _STANDALONE:  # the parent package imported it as its own
            package, _, leaf = name.rpartition(".")
            if name in sys.modules and package in sys.modules:
                setattr(sys.modules[package], leaf, sys.modules[name])
        _finished = True


def wanted() -> list[str]:
    """The packages :func:`finish` will import (for the host's idle-time imports)."""
    return sorted(_wanted)
