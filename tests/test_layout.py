"""The layers import downward only (DESIGN.md, "Layout"; docs/architecture.md, "Where each part
lives"): every layer may use core (the package root: jailcc.wire, jailcc.protocol, jailcc.dnssd,
jailcc.options...), core uses no layer, and a layer reaches into another only through the
modules listed below, each with its reason. So the client never imports the server or the
sandbox, the jobs never import the server or the monitor, and the network service never
imports the root monitor: a new import across the lines fails here instead of going unseen.

Imports are read with ast from every file of every layer: at module level, inside functions
and under `if TYPE_CHECKING:` alike, each resolved to the project module it loads."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent
PROJECT = "jailcc"
# Folder -> package (pyproject.toml's package-dir): core/ is the package root, jailcc.
PACKAGES = {
    folder: package
    for package, folder in tomllib.loads((TOP / "pyproject.toml").read_text())["tool"][
        "setuptools"
    ]["package-dir"].items()
}
CORE = "core"

# The layers each folder may import wholesale, besides its own and core.
MAY_USE: dict[str, set[str]] = {
    "core": set(),  # the bottom: what every layer shares imports none of them
    "sandbox": set(),
    "images": set(),
    "jobs": set(),
    "client": set(),
    "server": set(),
    # jailccd's root process starts the launcher (sandbox/) and reads the images (images/)
    "monitor": {"sandbox", "images"},
    # jailccd selftest's probes drive a launcher root started (sandbox/'s client side)
    "selftest": {"sandbox"},
    # the LDAP helper: the directory's questions, asked for root by a uid of their own
    "ldaphelper": set(),
}

# Single modules of another layer a folder may import, and why: the rest of that layer stays
# out of its reach.
EXCEPTIONS: dict[str, dict[str, str]] = {
    "jobs": {
        "jailcc.sandbox.jail_init": "the jail's generic init, which every jail runs anyway:"
        " the jobs register their connection handler with it and run compiles through it",
        "jailcc.sandbox.spec": "RunLimits, the limits a job runs under: plain data the init"
        " and the monitor read too",
    },
    "client": {
        "jailcc.images.identity": "the local compiler's identity, computed exactly as an"
        " image's is (or no server would ever match)",
        "jailcc.images.errors": "ImageError, what images.identity raises",
    },
    "server": {
        "jailcc.sandbox.cgroups": "the owner monitor (server/owner.py) tells the desktop"
        " owner's load from the jails' by their cgroups, which only cgroups.py knows where to"
        " find (it reads them, never writes)",
    },
    "monitor": {
        "jailcc.jobs": "JAIL_MODULES and JAIL_LIBRARIES, what the launcher is started with",
        "jailcc.jobs.handover": "what a connection's hand-over to its jail carries: plain"
        " data (jailccd selftest's probe uses it too)",
    },
    "selftest": {
        "jailcc.jobs.handover": "the jobs_compile probe hands a connection to a jail's jobs"
        " handler as the monitor does: plain data",
    },
}


def folder_of(module: str) -> str:
    """The folder (layer) a project module lives in: its longest package."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        for folder, package in PACKAGES.items():
            if package == ".".join(parts[:i]):
                return folder
    raise AssertionError(f"{module}: not a project module")


def is_module(name: str) -> bool:
    """Whether name is one of the project's modules (not a name defined in one)."""
    folder = folder_of(name)
    rest = name.removeprefix(PACKAGES[folder]).lstrip(".").split(".")
    base = TOP / folder / Path(*rest) if rest != [""] else TOP / folder
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def module_name(path: Path) -> str:
    folder = path.relative_to(TOP).parts[0]
    parts = [PACKAGES[folder], *path.relative_to(TOP / folder).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports, anywhere in it."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            if not _is_project(base):
                continue
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.add(name if alias.name != "*" and is_module(name) else base)
    return {m for m in found if _is_project(m)}


def _is_project(name: str) -> bool:
    return name == PROJECT or name.startswith(PROJECT + ".")


def layer_files(folder: str) -> list[Path]:
    files = sorted((TOP / folder).glob("*.py"))
    assert files, f"no Python files in {folder}/"
    return files


def crossings(folder: str) -> dict[str, set[str]]:
    """Imported module -> the files of folder importing it, for each module of another layer."""
    found: dict[str, set[str]] = {}
    for path in layer_files(folder):
        for module in project_imports(path):
            if folder_of(module) not in (folder, CORE):
                found.setdefault(module, set()).add(str(path.relative_to(TOP)))
    return found


def test_the_rules_cover_every_layer() -> None:
    assert set(MAY_USE) == set(PACKAGES)
    assert set(EXCEPTIONS) <= set(PACKAGES)


@pytest.mark.parametrize("folder", sorted(MAY_USE))
def test_layers_import_downward_only(folder: str) -> None:
    allowed = EXCEPTIONS.get(folder, {})
    wrong = {
        module: sorted(files)
        for module, files in crossings(folder).items()
        if folder_of(module) not in MAY_USE[folder] and module not in allowed
    }
    assert not wrong, (
        f"{folder}/ imports across the layers (see DESIGN.md, 'Layout'; if a crossing is"
        f" right, list it in EXCEPTIONS with its reason): {wrong}"
    )


@pytest.mark.parametrize("folder", sorted(EXCEPTIONS))
def test_every_exception_is_still_used(folder: str) -> None:
    """An exception no longer needed goes from the list, so it cannot cover a new import."""
    unused = set(EXCEPTIONS[folder]) - set(crossings(folder))
    assert not unused, f"{folder}/ no longer imports {sorted(unused)}: remove the exceptions"


def test_the_import_reader() -> None:
    """Relative imports resolve, and `from package import module` names the module."""
    imports = project_imports(TOP / "client" / "proxy_client.py")
    assert {"jailcc.client.proxy_wire", "jailcc.client.decide"} <= imports
    assert "jailcc.client" not in imports  # `from . import proxy_wire` is the module
    assert "jailcc.wire" in project_imports(TOP / "sandbox" / "launcher.py")
    assert folder_of("jailcc.wire") == CORE and folder_of("jailcc.sandbox.spec") == "sandbox"
    assert is_module("jailcc.protocol") and not is_module("jailcc.protocol.send")
