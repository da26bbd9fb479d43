"""The project code a jail runs (jailcc.jobs), carried into the jail in memory, never run by root.

A jail cannot load code once it is chrooted (its file system holds the toolchain image, no
Python), and the launcher, which forks every jail, runs as root: so the launcher takes the
jail-side modules in as *source*, and only the jail runs them.

  launcher (root), once at start-up, before any jail forks:
    import_libraries(names)   import the few libraries the jail code needs that cannot be
                              loaded after chroot (C extensions: gssapi, lz4). Never project
                              code: a name in the jailcc package is refused.
    JailCode.read(names)      find each project module's file without importing it or its
                              package, read the source, compile() it (compiling runs nothing).
                              Refuses a module the launcher has imported itself, and fails
                              at once if a file is missing.
  each jail's init, a fork of the launcher, chrooted, after privileges.drop:
    jail_code.load()          put this finder first on sys.meta_path and import every module
                              from the code objects in memory, in the order given (a jobs
                              module registers its connection handler as it is imported, see
                              jail_init.CONNECTION_HANDLERS). The init does it while warming up
                              in the pool, so no connection waits for it.

What the served modules import besides must already be in the launcher's sys.modules (the
jail's init and the launcher's own modules, the libraries above) or be served too:
jobs/__init__.py keeps the lists, tests/test_jobs_loading.py checks them.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from collections.abc import Sequence
from types import CodeType, ModuleType

PROJECT = "jailcc"


class JailCodeError(Exception):
    """A module cannot be served to jails: no source file, or the launcher holds it itself."""


def import_libraries(names: Sequence[str]) -> None:
    """Import third-party libraries (never the project's own code) into the launcher, so that
    the jails it forks hold them: a jail cannot load a C extension after its chroot."""
    for name in names:
        if name == PROJECT or name.startswith(PROJECT + "."):
            raise JailCodeError(f"{name}: project code is never imported by the launcher")
        importlib.import_module(name)


class _Source:
    """One module's compiled code, and where it came from."""

    __slots__ = ("code", "path", "search")

    def __init__(self, path: str, search: list[str] | None, code: CodeType) -> None:
        self.path = path
        self.search = search  # a package's directories on the host (None: not a package)
        self.code = code


class JailCode:
    """A meta-path finder and loader for a fixed set of modules, compiled from their source."""

    def __init__(self, modules: dict[str, _Source]) -> None:
        self.modules = modules

    @classmethod
    def read(cls, names: Sequence[str]) -> JailCode:
        """Read and compile the named modules; a package must come before its modules."""
        modules: dict[str, _Source] = {}
        for name in names:
            if name in sys.modules:
                raise JailCodeError(f"{name}: the launcher has imported it; it must not run it")
            path, search = _find_source(name, modules)
            with open(path, "rb") as f:
                source = f.read()
            code = compile(source, path, "exec", dont_inherit=True)
            modules[name] = _Source(path, search, code)
        return cls(modules)

    def load(self) -> None:
        """In the jail: serve these modules from memory, and import them all now."""
        if not self.modules:
            return
        sys.meta_path.insert(0, self)
        for name in self.modules:
            importlib.import_module(name)

    # -- importlib's finder and loader protocol ----------------------------------------------

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        source = self.modules.get(fullname)
        if source is None:
            return None
        # A package's __path__ stays empty: its modules come from here or not at all.
        spec = importlib.machinery.ModuleSpec(
            fullname, self, origin=source.path, is_package=source.search is not None
        )
        spec.has_location = True  # __file__ names the host file, for tracebacks
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        exec(self.modules[module.__name__].code, module.__dict__)


def _find_source(name: str, read: dict[str, _Source]) -> tuple[str, list[str] | None]:
    """A module's source file (and a package's directories), found as import would find it
    but without importing its package: the parent is one of the launcher's own modules or a
    package read just before."""
    parent = name.rpartition(".")[0]
    if parent in read:
        search = read[parent].search
    elif parent in sys.modules:
        search = getattr(sys.modules[parent], "__path__", None)
    elif parent:
        raise JailCodeError(f"{name}: list its package {parent} before it")
    else:
        search = None
    spec = None
    if parent == "" or search is not None:
        for finder in sys.meta_path:  # the path finder, or an editable install's finder
            find = getattr(finder, "find_spec", None)
            spec = find(name, search) if find is not None else None
            if spec is not None:
                break
    if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
        raise JailCodeError(f"{name}: no Python source file found for it")
    locations = spec.submodule_search_locations
    return str(spec.origin), None if locations is None else list(locations)
