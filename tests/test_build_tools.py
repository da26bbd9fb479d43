"""jailcc as build tools call it, against a real jailccd: CMake's compiler launcher (Ninja, with
precompiled headers) and ccache's CCACHE_PREFIX. Each project is built twice in the same
directory (debug info names it), locally and through jailcc, and every object and dependency
record compared; jailcc's own lines (JAILCC_VERBOSE) say which compiles went remote."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from serverutil import Server

pytestmark = requires_root
JAILCC = str(BIN / "jailcc")

CMAKE_LISTS = """\
cmake_minimum_required(VERSION 3.16)
project(demo C)
add_library(demo STATIC a.c b.c)
target_include_directories(demo PUBLIC include)
target_precompile_headers(demo PRIVATE include/common.h)
add_executable(app main.c)
target_link_libraries(app demo)
"""
SOURCES = {
    "include/common.h": "#ifndef COMMON_H\n#define COMMON_H\n#include <stdio.h>\n"
    "#include <stdlib.h>\nstruct item { int id; char name[16]; };\nint a(int), b(int);\n#endif\n",
    "a.c": '#include "common.h"\nint a(int x) { struct item i = {x, "a"}; '
    'printf("%s\\n", i.name); return abs(i.id); }\n',
    "b.c": '#include "common.h"\nint b(int x) { return a(x) * 2; }\n',
    "main.c": '#include <stdio.h>\n#include "common.h"\n'
    'int main(void) { printf("%d\\n", b(-3)); return 0; }\n',
}


@pytest.fixture(scope="module")
def env(headers_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A user who ships sources to the server, with a proxy of their own."""
    run = tmp_path_factory.mktemp("run")
    env = {
        **os.environ,
        "JAILCC_HOSTS": f"unix:{headers_server.socket_path}",
        "JAILCC_VERBOSE": "1",
        "LC_ALL": "C",
        "XDG_RUNTIME_DIR": str(run),
        "CC": "gcc-12",
    }
    subprocess.run([JAILCC, "proxy", "start"], env=env, check=True, capture_output=True)
    yield env
    subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True, timeout=60)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def _run(argv: list[str], cwd: Path, env: dict) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _ninja_deps(text: str) -> dict[str, list[str]]:
    """`ninja -t deps`: each target's recorded dependencies (its mtime left out)."""
    deps: dict[str, list[str]] = {}
    target = ""
    for line in text.splitlines():
        if line.startswith(" "):
            deps[target].append(line.strip())
        elif ": #deps" in line:
            target = line.split(": #deps", 1)[0]
            deps[target] = []
    return deps


def _objects(build: Path) -> dict[str, bytes]:
    return {str(p.relative_to(build)): p.read_bytes() for p in sorted(build.rglob("*.o"))}


@pytest.mark.skipif(not shutil.which("cmake") or not shutil.which("ninja"), reason="no cmake")
def test_cmake_launcher_with_precompiled_headers(env: dict, tmp_path: Path) -> None:
    """CMAKE_C_COMPILER_LAUNCHER=jailcc: the objects and Ninja's dependency records as a local
    build's; the files that use the precompiled header compile locally, the others remote."""
    _write(tmp_path, {**SOURCES, "CMakeLists.txt": CMAKE_LISTS})
    build = tmp_path / "build"
    results = []
    for launcher in ([], [f"-DCMAKE_C_COMPILER_LAUNCHER={JAILCC}"]):
        shutil.rmtree(build, ignore_errors=True)
        configure = ["cmake", "-G", "Ninja", "-S", ".", "-B", "build"]
        _run([*configure, "-DCMAKE_BUILD_TYPE=RelWithDebInfo", *launcher], tmp_path, env)
        said = _run(["ninja", "-C", "build", "-j2", "-v"], tmp_path, env)
        deps = _ninja_deps(_run(["ninja", "-C", "build", "-t", "deps"], tmp_path, env))
        results.append((_objects(build), deps, said))
    (local, local_deps, _), (farm, farm_deps, said) = results
    assert farm == local and len(local) == 3, said
    assert farm_deps == local_deps and len(local_deps) == 4  # and the PCH's
    lines = [line for line in said.splitlines() if line.startswith("jailcc: ")]
    assert any(
        line.endswith("/main.c: remote (sources)") or "/main.c: remote (sources) on" in line
        for line in lines
    ), said
    for name in ("a.c", "b.c"):
        line = next(line for line in lines if f"/{name}: " in line)
        assert "precompiled header" in line and "remote" not in line.split(": ", 2)[2], line


@pytest.mark.skipif(not shutil.which("ccache"), reason="no ccache")
def test_ccache_prefix(env: dict, tmp_path: Path) -> None:
    """CCACHE_PREFIX=jailcc: ccache's misses compile through jailcc, remote, into the same
    objects as a local build; a second build is all hits and runs no compile."""
    _write(tmp_path, {k: v for k, v in SOURCES.items() if k != "main.c"})
    makefile = "OBJS = a.o b.o\nall: $(OBJS)\n%.o: %.c\n\t$(CC) -g -O2 -Iinclude -MD -c $< -o $@\n"
    (tmp_path / "Makefile").write_text(makefile)
    cache = {"CCACHE_DIR": str(tmp_path / "cache"), "CCACHE_PREFIX": JAILCC}
    builds = []
    for cc in ("gcc-12", "ccache gcc-12", "ccache gcc-12"):
        for stale in (*tmp_path.glob("*.o"), *tmp_path.glob("*.d")):
            stale.unlink()
        said = _run(["make", "-j2", f"CC={cc}"], tmp_path, {**env, **cache})
        outputs = {p.name: p.read_bytes() for p in sorted(tmp_path.glob("*.[od]"))}
        builds.append((outputs, said))
    (local, _), (first, said), (second, _) = builds
    assert first == local and second == local and len(local) == 4, said
    assert said.count(": remote (sources) on") == 2, said
    stats = _run(["ccache", "--print-stats"], tmp_path, {**env, **cache})
    counts = dict(line.split("\t", 1) for line in stats.splitlines() if "\t" in line)
    assert int(counts["direct_cache_hit"]) == 2 and int(counts["cache_miss"]) == 2, stats
