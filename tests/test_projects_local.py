"""The real-project harness (scripts/projects.py), proven locally with gcc-12: Debian's zlib and
lua5.4 sources, each built twice in two work directories, give byte-identical, non-empty object
files; the second build runs through a recording wrapper, which proves that every object was
compiled with -c by exactly the compiler command given (sub-makes and libtool included); and
compare() catches a real difference (-O1 instead of Debian's flags). git, a bench-only project,
is neither fetched nor built here: only its registration and command line are checked."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _load_projects() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "scripts" / "projects.py"
    spec = importlib.util.spec_from_file_location("jailcc_projects", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


projects = _load_projects()


@pytest.fixture(scope="module")
def fetched() -> None:
    p = projects.fetch()
    output = (p.stdout + p.stderr)[-2000:]
    if p.returncode == 75:
        pytest.skip(f"cannot reach the Debian archive to fetch the sources:\n{output}")
    assert p.returncode == 0, output


@pytest.fixture(scope="module")
def baseline(fetched: None, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Any]:
    """A plain gcc-12 build of a project, made once per module."""
    built: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in built:
            result = projects.build(name, tmp_path_factory.mktemp("a"), "gcc-12", "g++-12", 2)
            assert result.ok, result.log_tail()
            built[name] = result
        return built[name]

    return get


@pytest.mark.parametrize("name", ["zlib", "lua5.4"])
def test_two_builds_identical_and_every_object_through_the_wrapper(
    name: str, baseline: Callable[[str], Any], tmp_path: Path
) -> None:
    project = projects.get(name)
    a = baseline(name)
    assert len(a.objects) == project.compiles
    assert all(size > 0 for size in a.sizes.values())
    assert a.timestamp_sources == [] and a.timestamp_warnings == []

    wrapper = projects.write_recorder(tmp_path / "record-cc")
    log = tmp_path / "compiles.log"
    b = projects.build(
        name,
        tmp_path / "b",
        f"{wrapper} gcc-12",
        f"{wrapper} g++-12",
        2,
        {"RECORD_COMPILES_LOG": str(log)},
        configure_cc="gcc-12",  # only the make step goes through the wrapper
    )
    assert b.ok, b.log_tail()
    assert b.tree != a.tree
    assert projects.compare(a, b) == []

    invocations = projects.read_record(log)
    compiles = [i for i in invocations if i.kind == "c"]
    assert len(compiles) == project.compiles
    assert projects.check_recorded(b, invocations) == []
    # Exactly the compilers given, each where the project's language needs it.
    drivers = {i.argv.split()[0] for i in invocations}
    wanted = {"gcc-12", "g++-12"} if "c++" in project.languages else {"gcc-12"}
    assert drivers == wanted


def test_compare_catches_a_difference(baseline: Callable[[str], Any], tmp_path: Path) -> None:
    a = baseline("zlib")
    o1 = projects.build("zlib", tmp_path, "gcc-12", "g++-12", 2, extra_flags=["-O1"])
    assert o1.ok, o1.log_tail()
    assert "-O1" in o1.log
    diffs = projects.compare(a, o1)
    assert diffs and all(d.startswith("differs: ") for d in diffs)
    assert "differs: deflate.o" in diffs

    # Missing objects and failed or empty builds are differences too.
    fewer = dataclasses.replace(a, objects=dict(a.objects))
    del fewer.objects["deflate.o"]
    assert projects.compare(a, fewer) == ["only in a: deflate.o"]
    assert projects.compare(fewer, a) == ["only in b: deflate.o"]
    failed = dataclasses.replace(a, returncode=2, objects={})
    problems = projects.compare(failed, failed)
    assert any("failed with status 2" in p for p in problems)
    assert any("produced no object files" in p for p in problems)


def test_recorder_sees_a_compile_without_dash_c(tmp_path: Path) -> None:
    """The check behind the wrapper test: an object the wrapper did not see, or a source
    compiled and linked in one step, is reported."""
    wrapper = projects.write_recorder(tmp_path / "record-cc")
    log = tmp_path / "compiles.log"
    (tmp_path / "x.c").write_text("int main(void) { return 0; }\n")
    env = {"RECORD_COMPILES_LOG": str(log), "PATH": "/usr/bin:/bin"}
    subprocess.run([wrapper, "gcc-12", "-o", "x", "x.c"], cwd=tmp_path, env=env, check=True)
    subprocess.run(["gcc-12", "-c", "-o", "y.o", "x.c"], cwd=tmp_path, check=True)
    result = projects.BuildResult("x", tmp_path, 0.0, 0.0, 0.0, 0, "")
    result.objects = {rel: "h" for rel in projects.object_files(tmp_path)}
    problems = projects.check_recorded(result, projects.read_record(log))
    assert problems == [
        "not compiled through the wrapper: y.o",
        "compiled without -c: gcc-12 -o x x.c",
    ]


def test_git_is_bench_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """git (scripts/bench --projects git) builds by name, but the tests never fetch or build it:
    it is not in PROJECTS, and fetch() asks scripts/fetch-sources for it only when named."""
    assert "git" not in projects.PROJECTS
    assert projects.get("git") is projects.BENCH_PROJECTS["git"]
    with pytest.raises(KeyError, match=r"known: zlib, lua5\.4, re2, git"):
        projects.get("nosuch")

    # An unknown --with fails before anything is fetched or created.
    p = projects.fetch(tmp_path / "dest", extra=["nosuch"])
    assert p.returncode == 1 and "--with nosuch: unknown package" in p.stderr
    assert not (tmp_path / "dest").exists()

    calls: list[list[str]] = []
    monkeypatch.setattr(projects.subprocess, "run", lambda argv, **kw: calls.append(argv))
    projects.fetch(tmp_path)
    projects.fetch(tmp_path, extra=["zlib", "git"])
    assert calls == [
        [str(projects.FETCH), str(tmp_path)],
        [str(projects.FETCH), "--with", "git", str(tmp_path)],
    ]


def test_git_flags_and_command_line(tmp_path: Path) -> None:
    """git's own flags (no dpkg-buildflags), the tree mapped to "." unless map_paths=False, the
    caller's extras last, and CC one make argument even with a space in it."""
    git = projects.get("git")
    flags = git.flags(tmp_path, {}, ["-g0"], True)
    assert flags.cflags == ["-g", "-O2", "-Wall", f"-ffile-prefix-map={tmp_path}=.", "-g0"]
    assert git.flags(tmp_path, {}, [], False).cflags == ["-g", "-O2", "-Wall"]
    argv = git.make_argv("jailcc gcc-12", "jailcc g++-12", 3, flags)
    assert argv[:3] == ["make", "-j3", "CC=jailcc gcc-12"]
    assert f"CFLAGS=-g -O2 -Wall -ffile-prefix-map={tmp_path}=. -g0" in argv
    assert argv[-1] == "all"
