"""The lines of code each root process of a jailcc server can execute, and their union.

    scripts/root-loc [--json] [--max N]

A process's code is the static import closure (ast) of the modules it starts from, over the
project's own modules (pyproject.toml's package-dir): imports inside functions count (they run
as root when called), imports under `if TYPE_CHECKING:` do not, relative imports are resolved,
and importing a module runs its packages' __init__.py too. Third-party packages root imports are
listed by name (they run as root as well) but not counted. A line counts when it holds code:
not blank, not only a comment, not part of a docstring. C sources named by root code are found
by their file names in string literals; they count unless C_NOT_ROOT below says why root only
builds them (an unknown one counts: root builds it and may run it).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import re
import sys
import tokenize
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RootProcess:
    name: str
    modules: tuple[str, ...]  # what it starts from: its main module and whatever it loads by name
    why: str  # why it is root


# Every process that runs as root. Edit here when the privilege split moves code: a process that
# drops to its own uid leaves the table; a module the launcher no longer preloads leaves its row.
ROOT_PROCESSES: tuple[RootProcess, ...] = (
    RootProcess(
        "jailccd",
        ("jailcc.monitor.cli",),
        "console script jailcc.monitor.cli:main (serving: monitor/daemon.py): start-up, the"
        " monitor's request tables, Kerberos accept, LDAP and principal-file authorization,"
        " the image catalog, jail reuse; the network service (server/) runs as its own uid",
    ),
    RootProcess(
        "launcher",
        ("jailcc.sandbox.launcher",),
        "python -m jailcc.sandbox.launcher (sandbox/api.py) makes namespaces, mounts, cgroups and"
        " uids; the jail-side job code (jobs/) it only reads and compiles, each jail imports it"
        " after dropping privileges (sandbox/jail_code.py)",
    ),
    RootProcess(
        "jailccd selftest",
        ("jailcc.monitor.cli",),
        "jailccd selftest (monitor/cli.py) reads the images' manifests, plants a canary key,"
        " starts the launcher and looks at one jail's init from the host; the probes"
        " (selftest/) run as a uid of their own, driving that launcher; cli.py imports"
        " daemon.py in functions (the configured images), so its closure is jailccd's",
    ),
)

# C sources root code names but never runs as root, and why.
C_NOT_ROOT: dict[str, str] = {
    "sandbox/spawn.c": "built as root (sandbox/helpers.py build_static, called by sandbox/api.py"
    " Sandbox) but exec'd only by a jail's init, after the privilege drop",
}

RULE = (
    "lines: not blank, not only a comment, not in a docstring; closure: every import of the"
    " project's modules, in functions too, not under `if TYPE_CHECKING:`"
)
SKIPPED_TOKENS = {"COMMENT", "NL", "NEWLINE", "INDENT", "DEDENT", "ENCODING", "ENDMARKER"}
C_NAME = re.compile(r"[\w.-]+\.c")
C_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)


def package_dirs(pyproject: Path) -> dict[str, Path]:
    """Package name -> its folder, from setuptools' package-dir."""
    table = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-dir"]
    return {package: pyproject.parent / folder for package, folder in table.items()}


def module_path(module: str, dirs: Mapping[str, Path]) -> Path | None:
    """The file of one of the project's modules, or None (not a module: a name in a package)."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        folder = dirs.get(".".join(parts[:i]))
        if folder is not None:
            base = folder.joinpath(*parts[i:])
            candidates = [base / "__init__.py"] + ([base.with_suffix(".py")] if parts[i:] else [])
            return next((path for path in candidates if path.is_file()), None)
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the body is for type checkers only
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names a module may import: modules, and for `from X import y` also X.y."""
    names: set[str] = set()
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            package = module if is_package else module.rpartition(".")[0]
            package = package.rsplit(".", node.level - 1)[0]  # up one package per extra dot
            base = f"{package}.{base}" if base else package
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


@dataclass
class Closure:
    modules: dict[str, Path] = field(default_factory=dict)
    third_party: set[str] = field(default_factory=set)
    c_sources: set[Path] = field(default_factory=set)


def closure(roots: Iterable[str], dirs: Mapping[str, Path]) -> Closure:
    ours = {package.split(".")[0] for package in dirs}
    result = Closure()
    todo = list(roots)
    for root in todo:
        if module_path(root, dirs) is None:
            raise SystemExit(f"root-loc: {root}: no such module (is the table out of date?)")
    while todo:
        name = todo.pop()
        top = name.split(".")[0]
        if top not in ours:
            if top and top not in sys.stdlib_module_names:
                result.third_party.add(top)
            continue
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # the parents' __init__
        path = module_path(name, dirs)
        if path is None or name in result.modules:
            continue
        result.modules[name] = path
        tree = ast.parse(path.read_text(), str(path))
        todo.extend(imported_names(tree, name, path.name == "__init__.py"))
        result.c_sources |= _c_sources(tree, path.parent)
    return result


def _c_sources(tree: ast.AST, folder: Path) -> set[Path]:
    """The C files beside a module that it names in a string literal."""
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    return {
        folder / s
        for s in strings
        if isinstance(s, str) and C_NAME.fullmatch(s) and (folder / s).is_file()
    }


def python_lines(source: str) -> int:
    """Lines holding code: not blank, not only a comment, not in a docstring."""
    owners = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
    docstrings = {
        (node.body[0].lineno, node.body[0].col_offset)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, owners) and ast.get_docstring(node, clean=False) is not None
    }
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        docstring = token.type == tokenize.STRING and token.start in docstrings
        if tokenize.tok_name[token.type] not in SKIPPED_TOKENS and not docstring:
            lines.update(range(token.start[0], token.end[0] + 1))
    text = source.splitlines()
    return sum(1 for n in lines if text[n - 1].strip())


def c_lines(source: str) -> int:
    """Lines of C that are not blank and not only comments (comments keep their newlines)."""
    code = C_COMMENT.sub(lambda m: "\n" * m.group().count("\n"), source)
    return sum(1 for line in code.splitlines() if line.strip())


def measure(process: RootProcess, dirs: Mapping[str, Path], top: Path = TOP) -> dict:
    found = closure(process.modules, dirs)
    modules = {name: python_lines(path.read_text()) for name, path in found.modules.items()}
    c_counted, c_not_counted = {}, {}
    for path in sorted(found.c_sources):
        name = path.relative_to(top).as_posix()
        if name in C_NOT_ROOT:
            c_not_counted[name] = C_NOT_ROOT[name]
        else:
            c_counted[name] = c_lines(path.read_text())
    return {
        "name": process.name,
        "why": process.why,
        "roots": list(process.modules),
        "lines": sum(modules.values()) + sum(c_counted.values()),
        "modules": dict(sorted(modules.items(), key=lambda item: (-item[1], item[0]))),
        "c_counted": c_counted,
        "c_not_counted": c_not_counted,
        "third_party": sorted(found.third_party),
    }


def union(reports: list[dict], dirs: Mapping[str, Path]) -> dict:
    merged: dict[str, dict] = {"modules": {}, "c_counted": {}, "c_not_counted": {}}
    for report in reports:
        for key, values in merged.items():
            values.update(report[key])
    by_package: dict[str, int] = {}
    for name, lines in merged["modules"].items():
        package = max(p for p in dirs if name == p or name.startswith(p + "."))
        by_package[package] = by_package.get(package, 0) + lines
    return {
        "lines": sum(merged["modules"].values()) + sum(merged["c_counted"].values()),
        "module_count": len(merged["modules"]),
        "by_package": dict(sorted(by_package.items(), key=lambda item: -item[1])),
        **merged,
        "third_party": sorted({name for report in reports for name in report["third_party"]}),
    }


def show(reports: list[dict], total: dict) -> None:
    print(f"Code that can run as root ({RULE}).")
    for report in reports:
        print(f"\n{report['name']}: {report['lines']} lines, {len(report['modules'])} modules")
        print(f"  why root: {report['why']}")
        for name, lines in report["modules"].items():
            print(f"  {lines:6}  {name}")
        for name, lines in report["c_counted"].items():
            print(f"  {lines:6}  {name} (C named by root code, not known to run only in jails)")
        for name, reason in report["c_not_counted"].items():
            print(f"       -  {name}: not counted: {reason}")
        print(f"  third-party, imported as root (not counted): {', '.join(report['third_party'])}")
    print(f"\nroot figure (union): {total['lines']} lines in {total['module_count']} modules")
    for package, lines in total["by_package"].items():
        print(f"  {lines:6}  {package} (package)")
    print(f"  third-party, imported as root (not counted): {', '.join(total['third_party'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--max", type=int, metavar="N", help="exit 1 if the root figure exceeds N")
    args = parser.parse_args(argv)
    dirs = package_dirs(TOP / "pyproject.toml")
    reports = [measure(process, dirs) for process in ROOT_PROCESSES]
    total = union(reports, dirs)
    if args.json:
        print(json.dumps({"rule": RULE, "processes": reports, "union": total}, indent=2))
    else:
        show(reports, total)
    if args.max is not None and total["lines"] > args.max:
        print(f"root-loc: the root figure {total['lines']} exceeds {args.max}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
