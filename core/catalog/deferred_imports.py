"""Importing tiled and bluesky-tiled-plugins without the libraries they need only later.

Two processes use it (decisions 0014 and its amendments):

- the catalog host (:data:`HOST`, :mod:`temsims.catalog.server`): tiled's catalog
  adapter and app import, through a few modules, dask.dataframe, dask.array, pandas,
  xarray, sparse (numba, scipy), awkward and ragged, 55-60 % of the host's imports,
  although those modules use them only in annotations evaluated at import, in
  module-level ``Union`` aliases, or inside functions that a server calls when it reads
  or writes data, never to start;
- an opener of a catalog (:data:`READER`, :mod:`temsims.catalog.client`): the run
  classes of bluesky-tiled-plugins import, through its validator, its writer and its
  utilities, tiled's array and table clients (dask.array with sparse and numba,
  dask.dataframe), xarray and tiled's storage module (SQLAlchemy), which opening and a
  first look at the runs never use.

A :class:`Deferral` names modules, each with the imports it may defer, read in the
releases of :attr:`Deferral.versions`. :meth:`Deferral.import_lean` imports what it is
given while, in those modules only, an ``import`` statement of a deferrable name gives
a :class:`_Deferred` reference instead of the module. A reference imports what it
stands for at its first use (an attribute, a call), and only that, then binds the real
objects in place of the references whose modules are imported;
:meth:`Deferral.finish` imports all of them at once (the host, once it listens; a
shell, in the background). A module imported afterwards by any route
(tiled's clients import ``tiled.client.array`` when they meet an array) is the plain
module.

Any other release, or those modules already imported, and :meth:`Deferral.import_lean`
imports plainly (slower, and correct).
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Iterable, Mapping


class _Deferred:
    """Stands for a module (or one of its attributes) a deferred statement imported.

    While :meth:`Deferral.import_lean` runs, an attribute of it that its importer's own
    code takes is another reference (annotations such as ``dask.dataframe.DataFrame``,
    ``from a import b``); otherwise any attribute, call, ``isinstance``/``issubclass``
    or use as a base class imports the target and forwards to it. ``except`` and
    ``match`` class patterns cannot be made to resolve one: no deferred name may be one
    its importer uses there (each list below was read for that)."""

    __slots__ = ("_deferral", "_importer", "_path")

    def __init__(self, deferral: Deferral, importer: str, path: str) -> None:
        object.__setattr__(self, "_deferral", deferral)
        object.__setattr__(self, "_importer", importer)
        object.__setattr__(self, "_path", path)

    def _resolve(self):
        return self._deferral._resolve(self._importer, self._path)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        if self._deferral._importing_here(self._importer):
            return _Deferred(self._deferral, self._importer, f"{self._path}.{name}")
        return getattr(self._resolve(), name)

    def __call__(self, *args, **kwargs):
        return self._resolve()(*args, **kwargs)

    # Never needed by the modules listed below (read for it), but a caller's code may
    # hold a reference it took by ``from module import name``.
    def __instancecheck__(self, instance) -> bool:
        return isinstance(instance, self._resolve())

    def __subclasscheck__(self, subclass) -> bool:
        return issubclass(subclass, self._resolve())

    def __mro_entries__(self, bases):
        return (self._resolve(),)

    def __repr__(self) -> str:
        return f"<deferred {self._path}>"


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _related(name: str, path: str) -> bool:
    """Whether importing ``name`` is what resolving ``path`` needs (one is the other or
    inside it: ``dask`` bound by ``import dask.array``, ``tiled.client.array.ArrayClient``)."""
    return name == path or path.startswith(name + ".") or name.startswith(path + ".")


def _target(path: str):
    """What ``path`` (``package.module.attribute``) names, importing a submodule that its
    package does not import itself (as ``from package import submodule`` does)."""
    parts = path.split(".")
    obj = importlib.import_module(parts[0])
    for i, attr in enumerate(parts[1:], start=2):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[:i]))
    return obj


class Deferral:
    """Modules of some releases, each with the imports it may defer.

    Parameters
    ----------
    name
        What it is for (logs, ``repr``).
    versions
        Distribution -> the release whose modules were read for what they import and why.
    modules
        Module -> the names whose import statements it may defer (a package or module
        and everything inside it): in these modules and releases they are used only in
        annotations, ``Union``/``NewType`` aliases and function bodies, as
        ``name.attribute``, or bound by ``from name import x`` where the module only
        calls ``x`` or takes attributes of it (never in ``isinstance`` or ``except``).
    standalone
        Modules that a deferring module uses at import and that are loaded on their own,
        without their package's ``__init__`` (the host's ``ragged._typing``).
    present
        Modules that must be importable for a deferred statement to mean what the plain
        one does (a deferred ``from tiled.storage import ...`` cannot fall back as the
        plain one does when SQLAlchemy is missing).
    """

    def __init__(self, name: str, versions: Mapping[str, str],
                 modules: Iterable[tuple[str, frozenset[str]]], *,
                 standalone: Iterable[str] = (), present: Iterable[str] = ()) -> None:
        self.name = name
        self.versions = dict(versions)
        self.modules: tuple[tuple[str, frozenset[str]], ...] = tuple(modules)
        self._deferrable = dict(self.modules)
        self.standalone = frozenset(standalone)
        self.present = tuple(present)
        self._lock = threading.RLock()
        #: importing module -> full names its deferred statements asked for.
        self._wanted: dict[str, set[str]] = {}
        #: (module, global name) bound to a reference, rebound when it resolves.
        self._bound: list[tuple[str, str]] = []
        self._finished = False
        #: The thread running :meth:`import_lean` (None: none runs).
        self._lean_thread: int | None = None

    def __repr__(self) -> str:
        return f"<Deferral {self.name}>"

    def applies(self) -> bool:
        """Whether the installed releases are those :attr:`versions` names, what
        :attr:`present` lists is importable, and none of :attr:`modules` is imported
        yet."""
        from importlib.metadata import version

        try:
            if any(version(dist) != release for dist, release in self.versions.items()):
                return False
            if any(importlib.util.find_spec(name) is None for name in self.present):
                return False
        except Exception:  # noqa: BLE001 - not installed, no metadata: do nothing special
            return False
        return not any(name in sys.modules for name, _ in self.modules)

    def import_lean(self, names: Iterable[str] | None = None) -> bool:
        """Import ``names`` (default: :attr:`modules`) with :attr:`modules`' deferrable
        imports deferred. False (and a plain import) when :meth:`applies` says no.

        Meanwhile ``builtins.__import__`` defers any import statement a listed module
        runs, on any thread, of a name it may defer; every other statement is the
        plain import."""
        names = [name for name, _ in self.modules] if names is None else list(names)
        with self._lock:
            if not self.applies():
                for name in names:
                    importlib.import_module(name)
                return False
            real_import = builtins.__import__
            hook = self._hook(real_import)
            builtins.__import__ = hook
            self._lean_thread = threading.get_ident()
            try:
                for name in names:
                    importlib.import_module(name)
            finally:
                self._lean_thread = None
                if builtins.__import__ is hook:
                    builtins.__import__ = real_import
            for module_name in self._deferrable:
                module = sys.modules.get(module_name)
                for key, value in (vars(module).items() if module is not None else ()):
                    if isinstance(value, _Deferred):
                        self._bound.append((module_name, key))
            return True

    def _hook(self, real_import):
        deferrable = self._deferrable

        def deferring_import(what, globals=None, locals=None, fromlist=(), level=0):
            importer = globals.get("__name__") if globals else None
            # Still the plain import once import_lean returned (if another hook was
            # installed over this one meanwhile, it stays in the chain).
            if self._lean_thread is None or importer not in deferrable:
                return real_import(what, globals, locals, fromlist, level)
            if level == 0 and what in self.standalone:
                return _standalone(what)
            name = (importlib.util.resolve_name("." * level + what, globals.get("__package__"))
                    if level else what)
            if any(_inside(name, prefix) for prefix in deferrable[importer]):
                self._wanted.setdefault(importer, set()).add(name)
                # ``import a.b`` binds the package ``a``; ``from a.b import c`` takes ``c``
                # from ``a.b`` itself.
                return _Deferred(self, importer, name if fromlist or level else name.partition(".")[0])
            return real_import(what, globals, locals, fromlist, level)

        return deferring_import

    def _importing_here(self, importer: str) -> bool:
        """Whether ``importer``'s own code takes a reference's attribute while
        :meth:`import_lean` runs on this thread (an annotation such as
        ``dask.dataframe.DataFrame``, ``from a import b`` on a reference): the frame
        two up from here is the one that asked."""
        return (self._lean_thread == threading.get_ident()
                and sys._getframe(2).f_globals.get("__name__") == importer)

    def _resolve(self, importer: str, path: str):
        """Import what ``importer``'s deferred statements asked for that ``path`` needs,
        bind the real objects where references to imported modules stood (in every
        listed module: another route may have imported them meanwhile), and return
        ``path``'s object. Imports run outside the lock (importlib has its own per
        module)."""
        for name in sorted(self._wanted.get(importer, ())):
            if _related(name, path):
                importlib.import_module(name)
        self._bind()
        return _target(path)

    def _bind(self) -> None:
        """Bind the real objects in place of references whose imports are done."""
        with self._lock:
            for module_name, key in self._bound:
                module = sys.modules.get(module_name)
                value = vars(module).get(key) if module is not None else None
                if not isinstance(value, _Deferred):
                    continue
                path = object.__getattribute__(value, "_path")
                needed = [n for n in self._wanted.get(module_name, ()) if _related(n, path)]
                if all(n in sys.modules for n in needed):
                    setattr(module, key, _target(path))
            for name in self.standalone:  # its package, once imported, has it as its own
                package, _, leaf = name.rpartition(".")
                if name in sys.modules and package in sys.modules:
                    setattr(sys.modules[package], leaf, sys.modules[name])

    def finish(self) -> None:
        """Import what the deferred statements asked for and bind it where they would
        have (idempotent; a no-op unless :meth:`import_lean` deferred something)."""
        if self._finished:
            return
        for name in self.wanted():
            importlib.import_module(name)
        self._bind()
        self._finished = True

    def wanted(self) -> list[str]:
        """The modules :meth:`finish` imports (for the host's idle-time imports)."""
        return sorted({name for names in self._wanted.values() for name in names})


def _standalone(name: str):
    module = sys.modules.get(name)
    if module is None:
        package, _, leaf = name.rpartition(".")
        location = importlib.util.find_spec(package).submodule_search_locations[0]
        spec = importlib.util.spec_from_file_location(name, os.path.join(location, f"{leaf}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
    return module


#: The tiled release whose modules :data:`HOST` and :data:`READER` list were read in.
TILED_VERSION = "0.2.20"
#: The bluesky-tiled-plugins release whose modules :data:`READER` lists were read in.
BLUESKY_TILED_PLUGINS_VERSION = "2.0.12"

#: The catalog host's tiled server stack, in tiled 0.2.20 (what each module uses its
#: deferred packages for: decision 0014's amendments).
HOST = Deferral("catalog host", {"tiled": TILED_VERSION}, (
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
),
    # ``from ragged._typing import SupportsDLPack`` in tiled.structures.ragged is used at
    # import (``runtime_checkable``): that one small module is loaded on its own, without
    # ``ragged/__init__`` (which imports awkward).
    standalone={"ragged._typing"})

#: An opener's reader imports (``temsims.catalog.client.READER_IMPORTS``), in tiled 0.2.20
#: and bluesky-tiled-plugins 2.0.12. What each module does with what it defers:
READER = Deferral("catalog reader", {"tiled": TILED_VERSION,
                                      "bluesky-tiled-plugins": BLUESKY_TILED_PLUGINS_VERSION}, (
    # As in the host (imported here by tiled.client.stream and tiled.mimetypes).
    ("tiled.media_type_registration", frozenset({"blosc2"})),
    ("tiled.serialization.table", frozenset({"pandas"})),
    # ``from tiled.storage import size_from_uri`` (SQLAlchemy): only called, by the
    # validator's asset check. Its ``except ImportError`` fallback (tiled without its
    # server extras) needs SQLAlchemy missing, which ``present`` rules out.
    ("bluesky_tiled_plugins.utils", frozenset({"tiled.storage"})),
    # ``ArrayClient``/``DataFrameClient`` (dask.array with sparse and numba,
    # dask.dataframe) appear in annotations only; ``pyarrow.`` in the functions that
    # append a table.
    ("bluesky_tiled_plugins.writing.tiled_writer",
     frozenset({"tiled.client.array", "tiled.client.dataframe", "pyarrow"})),
    # ``xarray.Dataset.from_dict`` in ``read()`` only.
    ("bluesky_tiled_plugins.clients.bluesky_event_stream", frozenset({"xarray"})),
    # ``validate(...)`` and ``raise ValidationException(...)`` in ``BlueskyRun.validate``
    # only (the validator module imports tiled's array and table clients, and uses
    # them in ``isinstance``: it is deferred whole, not trimmed).
    ("bluesky_tiled_plugins.clients.bluesky_run",
     frozenset({"bluesky_tiled_plugins.writing.validator"})),
    # The package's re-export of its streaming subscriptions (``from pandas import
    # DataFrame`` there serves an ``isinstance``: that module is deferred whole). Only a
    # caller's code uses these three names: a call, an attribute, ``isinstance`` and
    # subclassing resolve them.
    ("bluesky_tiled_plugins", frozenset({"bluesky_tiled_plugins.streaming"})),
), present=("sqlalchemy",))
