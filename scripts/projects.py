"""Real C and C++ projects, built with any compiler command, object files compared.

The projects are Debian 12 source packages that scripts/fetch-sources unpacks (patches applied)
into third_party/src/<package>. Each build copies the pristine tree into a work directory of its
own, configures and builds it the way Debian's own rules do (Debian's compiler flags, from
dpkg-buildflags), with exactly the compiler command it is given, e.g. CC="gcc-12" or
CC="jailcc gcc-12", for every object, sub-makes included; then hashes every object file.

    zlib     C,   ./configure + make          34 compiles (static, PIC, examples)
    lua5.4   C and C++, make + libtool        136 compiles: every .c as C and as C++ (Debian's
                                              liblua5.4-c++), each PIC and non-PIC (libtool)
    re2      C++, plain Makefile              67 compiles: the library (static and PIC) and the
                                              test programs' objects

Bench-only (BENCH_PROJECTS: get() and build() know them, PROJECTS, which the tests iterate, does
not; scripts/fetch-sources fetches them only when asked, fetch(extra=["git"])):

    git      C,   plain Makefile, `make all`  501 compiles: git's own flags
                                              (-g -O2 -Wall), not Debian's

Objects embed no path of the build tree by default: Debian's flags map it to "." with
-ffile-prefix-map (for git, whose own flags have none, the harness adds the same map), so
builds made in different directories compare equal. With map_paths=False
the objects record the real directory (DW_AT_comp_dir and friends): compare such builds only
when they were made in the same work directory, one after the other (build() wipes it first).
SOURCE_DATE_EPOCH is set from debian/changelog, which fixes __DATE__ and __TIME__ for gcc; source
files that use them anyway are reported (BuildResult.timestamp_sources), never hidden.

As a command: python scripts/projects.py --help
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
SRC_ROOT = Path(os.environ.get("JAILCC_PROJECTS_SRC", TOP / "third_party" / "src"))
FETCH = TOP / "scripts" / "fetch-sources"
# Debian's interpreter: re2's table generators need python3-six, which the venv lacks.
SYSTEM_PYTHON = "/usr/bin/python3"

# Inherited variables that would change a build behind our back; pass them in env to use them.
_SCRUB = re.compile(
    r"(MAKEFLAGS|MFLAGS|MAKELEVEL|MAKEOVERRIDES|GNUMAKEFLAGS|CC|CXX|CPP|CFLAGS|CXXFLAGS|CPPFLAGS"
    r"|LDFLAGS|LIBS|AR|SOURCE_DATE_EPOCH|GCC_EXEC_PREFIX|COMPILER_PATH|CPATH|C_INCLUDE_PATH"
    r"|CPLUS_INCLUDE_PATH|LIBRARY_PATH|DEB_.*|DPKG_.*"
    # git's Makefile records `git rev-parse HEAD` of its own tree in version.o (none: no .git)
    r"|GIT_DIR|GIT_WORK_TREE|GIT_COMMON_DIR)"
)
_PREFIX_MAPS = ("-ffile-prefix-map=", "-fdebug-prefix-map=", "-fmacro-prefix-map=")
_SOURCE_SUFFIXES = {".c", ".cc", ".cpp", ".cxx", ".c++", ".C", ".h", ".hh", ".hpp", ".hxx", ".inc"}
_TIMESTAMP_MACROS = re.compile(rb"__(DATE|TIME|TIMESTAMP)__")


@dataclass
class BuildResult:
    project: str
    tree: Path  # where it was built
    seconds: float  # the make step (what a compile farm speeds up)
    configure_seconds: float
    make_cpu: float  # CPU seconds of the make step, its children included (not a proxy's)
    returncode: int
    log: str
    objects: dict[str, str] = field(default_factory=dict)  # relpath -> sha256 hex
    sizes: dict[str, int] = field(default_factory=dict)  # relpath -> bytes
    # Sources that use __DATE__/__TIME__/__TIMESTAMP__, and gcc's -Wdate-time warnings.
    timestamp_sources: list[str] = field(default_factory=list)
    timestamp_warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.splitlines()[-lines:])


@dataclass
class Flags:
    """Compiler flags for one build: Debian's (dpkg-buildflags) plus the caller's extras."""

    cflags: list[str]
    cxxflags: list[str]
    cppflags: list[str]
    ldflags: list[str]


class Project:
    name: str = ""  # also the Debian source package and the directory under SRC_ROOT
    languages: tuple[str, ...] = ()
    compiles: int = 0  # compiler invocations with -c in one full build
    make_subdir: str = ""  # where the compiles run (dpkg-buildflags maps this dir to ".")

    def source_dir(self, src_root: Path | None = None) -> Path:
        return (src_root or SRC_ROOT) / self.name

    def version(self, src_root: Path | None = None) -> str:
        stamp = (src_root or SRC_ROOT) / f"{self.name}.version"
        return stamp.read_text().strip() if stamp.exists() else "?"

    def flags(
        self, tree: Path, env: Mapping[str, str], extra: Sequence[str], map_paths: bool
    ) -> Flags:
        """The compile flags of a build: Debian's, plus the caller's extras (see debian_flags)."""
        return debian_flags(self, tree, env, extra, map_paths)

    def configure(self, tree: Path, cc: str, cxx: str, flags: Flags, env: dict[str, str]) -> None:
        """Prepare the copied tree; raise subprocess.CalledProcessError on failure."""

    def make_argv(self, cc: str, cxx: str, jobs: int, flags: Flags) -> list[str]:
        raise NotImplementedError


def _multiarch() -> str:
    return subprocess.run(
        ["dpkg-architecture", "-qDEB_HOST_MULTIARCH"], capture_output=True, text=True, check=True
    ).stdout.strip()


class Zlib(Project):
    """Debian's debian/rules: CFLAGS and uname=GNU ./configure --shared, then make (default
    target: static and shared library, the examples, their 64-bit-offset twins). The shared
    objects are compiled to objs/x.o and renamed to x.lo (real objects, not libtool files)."""

    name = "zlib"
    languages = ("c",)
    compiles = 34

    def configure(self, tree: Path, cc: str, cxx: str, flags: Flags, env: dict[str, str]) -> None:
        cflags = flags.cflags + flags.cppflags
        cenv = dict(env, CC=cc, AR="ar", uname="GNU")
        cenv["CFLAGS"] = shlex.join(cflags)
        cenv["LDFLAGS"] = shlex.join(flags.ldflags)
        argv = ["./configure", "--shared", "--prefix=/usr", f"--libdir=/usr/lib/{_multiarch()}"]
        _run(argv, tree, cenv)

    def make_argv(self, cc: str, cxx: str, jobs: int, flags: Flags) -> list[str]:
        return ["make", f"-j{jobs}", f"CC={cc}"]

    @staticmethod
    def debian_cflags() -> list[str]:
        # debian/rules appends these after dpkg-buildflags' CFLAGS and CPPFLAGS (amd64: -O3 and
        # -DUNALIGNED_OK). Callers' extra flags come after them.
        return ["-Wall", "-D_REENTRANT", "-O3", "-DUNALIGNED_OK"]


class Lua(Project):
    """Debian's build: the patched src/Makefile compiles every .c twice, as C with $(CC) and as
    C++ with $(CXX) (liblua5.4-c++), each through libtool, which runs the compiler twice (-fPIC
    -DPIC -o .libs/x.o, and -o x.o). Differences from debian/rules: target `linux` (no readline,
    so no libreadline-dev), the system's /usr/bin/libtool (libtool-bin) instead of one made by
    autoreconf, CC is exactly the command given (Debian's rules add -std=gnu99 to it; gcc-12's
    default, gnu17, builds lua as well), and the rule that links both libraries becomes a
    grouped target, which fixes a race under make -j. libtool links the shared libraries with
    its own configured compiler (plain gcc/g++), not $(CC): links only, no objects."""

    name = "lua5.4"
    languages = ("c", "c++")
    compiles = 136
    make_subdir = "src"

    def configure(self, tree: Path, cc: str, cxx: str, flags: Flags, env: dict[str, str]) -> None:
        # A race under make -j: one rule makes both libraries (C and C++), and make runs it once
        # per target, in parallel, so two libtool links of liblua5.4.la collide ("ranlib: unable
        # to copy file .libs/liblua5.4.a"). GNU make's grouped target (&:) runs it once.
        makefile = tree / "src" / "Makefile"
        text = makefile.read_text()
        if "$(LUA_A): $(BASE_O)\n" not in text:
            raise RuntimeError(f"{makefile}: the $(LUA_A) rule changed; review the -j fix")
        makefile.write_text(text.replace("$(LUA_A): $(BASE_O)\n", "$(LUA_A) &: $(BASE_O)\n"))
        # debian/rules' override_dh_auto_configure writes this header; luaconf.h includes it.
        (tree / "src" / "lua5.4-deb-multiarch.h").write_text(
            "#ifndef _LUA_DEB_MULTIARCH_\n#define _LUA_DEB_MULTIARCH_\n"
            f'#define DEB_HOST_MULTIARCH "{_multiarch()}"\n#endif\n'
        )

    def make_argv(self, cc: str, cxx: str, jobs: int, flags: Flags) -> list[str]:
        libtool = shutil.which("libtool") or "/usr/bin/libtool"
        return [
            "make",
            f"-j{jobs}",
            "linux",
            f"CC={cc}",
            f"CXX={cxx}",
            f"LIBTOOL={libtool}",
            f"DEB_HOST_MULTIARCH={_multiarch()}",
            # The Makefile would call dpkg-buildflags itself; the same flags, made explicit.
            "MYCFLAGS=" + shlex.join(flags.cflags + flags.cppflags),
            "MYCXXFLAGS=" + shlex.join(flags.cxxflags + flags.cppflags),
            "MYLDFLAGS=" + shlex.join(flags.ldflags),
        ]


class Re2(Project):
    """Upstream's plain Makefile, as debian/rules drives it, with targets `all` (static and
    shared library: every library source compiled twice, once -fPIC) and the 14 test programs
    (which add 23 test-only objects). The Unicode tables are not in the dfsg tarball: configure
    generates them as REBUILD_TABLES=1 would, from unicode-data (Perl, and Debian's python3 with
    python3-six). Differences from debian/rules: -O2 (Debian patches its CXXFLAGS to -O3), no
    -std=c++11 (g++-12's default, gnu++17, builds it)."""

    name = "re2"
    languages = ("c++",)
    compiles = 67
    TESTS = (
        "charclass_test",
        "compile_test",
        "filtered_re2_test",
        "mimics_pcre_test",
        "parse_test",
        "possible_match_test",
        "re2_test",
        "re2_arg_test",
        "regexp_test",
        "required_prefix_test",
        "search_test",
        "set_test",
        "simplify_test",
        "string_generator_test",
    )

    def configure(self, tree: Path, cc: str, cxx: str, flags: Flags, env: dict[str, str]) -> None:
        tables = [
            (["perl", "re2/make_perl_groups.pl"], "re2/perl_groups.cc"),
            ([SYSTEM_PYTHON, "re2/make_unicode_casefold.py"], "re2/unicode_casefold.cc"),
            ([SYSTEM_PYTHON, "re2/make_unicode_groups.py"], "re2/unicode_groups.cc"),
        ]
        for argv, out in tables:
            with open(tree / out, "wb") as f:
                subprocess.run(
                    argv, cwd=tree, env=env, stdout=f, stderr=subprocess.PIPE, text=True, check=True
                )

    def make_argv(self, cc: str, cxx: str, jobs: int, flags: Flags) -> list[str]:
        return [
            "make",
            f"-j{jobs}",
            f"CXX={cxx}",
            "CXXFLAGS=" + shlex.join(flags.cxxflags),
            "CPPFLAGS=" + shlex.join(flags.cppflags),
            "LDFLAGS=" + shlex.join(flags.ldflags),
            "all",
            *(f"obj/test/{t}" for t in self.TESTS),
        ]


class Git(Project):
    """Debian's git source package built the way upstream's Makefile builds it with no
    configuration (no config.mak, no ./configure), as a developer runs `make`: target `all`
    with git's own CFLAGS, -g -O2 -Wall (not Debian's dpkg-buildflags; the caller's extra flags
    come after them, so -g0 wins), curl, expat, OpenSSL and gettext all on (scripts/fetch-sources
    --with git installs their -dev packages). `all` includes the test helpers (t/helper) and
    the fuzz objects; its msgfmt runs (git's translations, gitk's and git-gui's) and generated
    scripts compile nothing. No documentation (not part of `all`), nothing from the network;
    no tclsh needed (git-gui falls back to an unoptimized tclIndex). Three settings that are
    not flags: COMPUTE_HEADER_DEPENDENCIES=yes, what `auto` picks with gcc and clang, without
    the probe that compiles /dev/null through CC (so every compiler command gets the same
    command lines: -MF .depend/x.o.d -MQ x.o -MMD -MP); prefix=/usr instead of $HOME, which
    would go into exec-cmd.o and others, so objects do not depend on who builds; and V=1, so
    the log shows the compiles. CC with a space works: the Makefile never quotes $(CC)."""

    name = "git"
    languages = ("c",)
    compiles = 501
    CFLAGS = ("-g", "-O2", "-Wall")  # upstream Makefile's default

    def flags(
        self, tree: Path, env: Mapping[str, str], extra: Sequence[str], map_paths: bool
    ) -> Flags:
        cflags = list(self.CFLAGS)
        if map_paths:  # as dpkg-buildflags does for the others: the tree becomes "."
            cflags.append(f"-ffile-prefix-map={tree}=.")
        return Flags(cflags=cflags + list(extra), cxxflags=[], cppflags=[], ldflags=[])

    def configure(self, tree: Path, cc: str, cxx: str, flags: Flags, env: dict[str, str]) -> None:
        # GIT-VERSION-GEN reads the release tarball's version file; without it, it would ask
        # `git describe`, which answers from whatever repository holds the tree.
        if not (tree / "version").is_file():
            raise RuntimeError(f"{tree}/version missing: not a release tarball?")

    def make_argv(self, cc: str, cxx: str, jobs: int, flags: Flags) -> list[str]:
        return [
            "make",
            f"-j{jobs}",
            f"CC={cc}",
            "CFLAGS=" + shlex.join(flags.cflags),
            "COMPUTE_HEADER_DEPENDENCIES=yes",
            "prefix=/usr",
            "V=1",
            "all",
        ]


PROJECTS: dict[str, Project] = {p.name: p for p in (Zlib(), Lua(), Re2())}
# Too slow for the test suite (which iterates PROJECTS and fetches only the default set): built
# by name only, e.g. scripts/bench --projects git, after scripts/fetch-sources --with git.
BENCH_PROJECTS: dict[str, Project] = {p.name: p for p in (Git(),)}


def get(project: str | Project) -> Project:
    if isinstance(project, Project):
        return project
    known = PROJECTS | BENCH_PROJECTS
    try:
        return known[project]
    except KeyError:
        raise KeyError(f"unknown project {project!r}; known: {', '.join(known)}") from None


def fetch(dest: Path | None = None, extra: Iterable[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run scripts/fetch-sources (fast when already fetched) for the default set (PROJECTS) and
    the bench-only projects named in extra (e.g. ["git"]; names in PROJECTS are ignored).
    Exit status 75: no network."""
    withs = [a for name in extra if name not in PROJECTS for a in ("--with", name)]
    argv = [str(FETCH), *withs, str(dest or SRC_ROOT)]
    return subprocess.run(argv, capture_output=True, text=True)


def build_env(tree: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a build: the caller's, less what would alter it unseen (MAKEFLAGS,
    CFLAGS, DEB_*, ...), in the C locale and UTC, SOURCE_DATE_EPOCH from debian/changelog; the
    env argument wins over all of it."""
    out = {k: v for k, v in os.environ.items() if not _SCRUB.fullmatch(k)}
    out.update(LC_ALL="C", TZ="UTC")
    epoch = subprocess.run(
        ["dpkg-parsechangelog", "-STimestamp"], cwd=tree, capture_output=True, text=True
    )
    if epoch.returncode == 0 and epoch.stdout.strip():
        out["SOURCE_DATE_EPOCH"] = epoch.stdout.strip()
    out.update(env or {})
    return out


def debian_flags(
    project: Project,
    tree: Path,
    env: Mapping[str, str],
    extra: Sequence[str] = (),
    map_paths: bool = True,
) -> Flags:
    """dpkg-buildflags as seen from the directory the compiles run in (so -ffile-prefix-map
    maps it to "."), plus the project's own flags from debian/rules, then the caller's extras
    last (so e.g. -O1 wins)."""
    out = subprocess.run(
        ["dpkg-buildflags", "--export=configure"],
        cwd=tree / project.make_subdir,
        env=dict(env),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    got = dict(item.split("=", 1) for item in shlex.split(out))

    def words(name: str) -> list[str]:
        ws = got.get(name, "").split()
        return ws if map_paths else [w for w in ws if not w.startswith(_PREFIX_MAPS)]

    cflags = words("CFLAGS")
    if isinstance(project, Zlib):
        cflags += Zlib.debian_cflags()
    return Flags(
        cflags=cflags + list(extra),
        cxxflags=words("CXXFLAGS") + list(extra),
        cppflags=words("CPPFLAGS"),
        ldflags=words("LDFLAGS"),
    )


def _run(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> str:
    p = subprocess.run(
        argv, cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if p.returncode:
        raise subprocess.CalledProcessError(p.returncode, list(argv), output=p.stdout)
    return p.stdout


def is_object_file(path: Path) -> bool:
    """An ELF relocatable file (ET_REL): what `cc -c` writes, whatever the name (.o, .lo)."""
    try:
        with open(path, "rb") as f:
            head = f.read(18)
    except OSError:
        return False
    if len(head) < 18 or head[:4] != b"\x7fELF":
        return False
    byteorder = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[16:18], byteorder) == 1


def object_files(tree: Path) -> dict[str, Path]:
    found = {}
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            path = Path(dirpath, name)
            if not path.is_symlink() and is_object_file(path):
                found[str(path.relative_to(tree))] = path
    return dict(sorted(found.items()))


def timestamp_sources(tree: Path) -> list[str]:
    """C and C++ sources and headers in the tree that use __DATE__, __TIME__ or __TIMESTAMP__
    (gcc fixes the first two with SOURCE_DATE_EPOCH; __TIMESTAMP__ is the file's mtime, which
    the copy keeps)."""
    hits = []
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            path = Path(dirpath, name)
            if (
                path.suffix in _SOURCE_SUFFIXES
                and not path.is_symlink()
                and _TIMESTAMP_MACROS.search(path.read_bytes())
            ):
                hits.append(str(path.relative_to(tree)))
    return sorted(hits)


def copy_source(project: Project, tree: Path, src_root: Path | None = None) -> None:
    src = project.source_dir(src_root)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} missing: run scripts/fetch-sources first")
    if tree.exists():
        shutil.rmtree(tree)
    tree.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, tree, symlinks=True)  # copy2 keeps mtimes


def build(
    project: str | Project,
    workdir: str | os.PathLike[str],
    cc: str = "gcc-12",
    cxx: str = "g++-12",
    jobs: int = 2,
    env: Mapping[str, str] | None = None,
    *,
    extra_flags: Sequence[str] = (),
    map_paths: bool = True,
    configure_cc: str | None = None,
    configure_cxx: str | None = None,
    src_root: Path | None = None,
) -> BuildResult:
    """Copy the pristine source into workdir/<project> (wiped first), configure, run make with
    CC=cc and CXX=cxx (each a whole command, e.g. "jailcc gcc-12"), and hash every object file.

    extra_flags are appended to the C and C++ compile flags. configure_cc/configure_cxx: the
    compilers configure probes with (zlib's ./configure), default cc/cxx; make always gets cc/cxx
    on its command line, which overrides the Makefiles' own CC and reaches every sub-make."""
    proj = get(project)
    tree = Path(workdir).resolve() / proj.name
    if any(c.isspace() for c in str(tree)):
        raise ValueError(f"build trees cannot contain white space: {tree}")
    copy_source(proj, tree, src_root)
    benv = build_env(tree, env)
    log: list[str] = []
    t0 = time.monotonic()
    try:
        flags = proj.flags(tree, benv, extra_flags, map_paths)
        proj.configure(tree, configure_cc or cc, configure_cxx or cxx, flags, benv)
    except subprocess.CalledProcessError as e:
        output = (e.output or "") + (e.stderr or "")
        log.append(f"$ {shlex.join(e.cmd)}\n{output}")
        return BuildResult(
            proj.name, tree, 0.0, time.monotonic() - t0, 0.0, e.returncode or 1, log[0]
        )
    configure_seconds = time.monotonic() - t0
    argv = proj.make_argv(cc, cxx, jobs, flags)
    log.append(f"$ {shlex.join(argv)}")
    t1, cpu1 = time.monotonic(), _children_cpu()
    p = subprocess.run(
        argv, cwd=tree, env=benv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seconds, make_cpu = time.monotonic() - t1, _children_cpu() - cpu1
    log.append(p.stdout)
    result = BuildResult(
        proj.name, tree, seconds, configure_seconds, make_cpu, p.returncode, "\n".join(log)
    )
    for rel, path in object_files(tree).items():
        data = path.read_bytes()
        result.objects[rel] = hashlib.sha256(data).hexdigest()
        result.sizes[rel] = len(data)
    result.timestamp_sources = timestamp_sources(tree)
    result.timestamp_warnings = [
        line for line in p.stdout.splitlines() if "might prevent reproducible builds" in line
    ]
    return result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compare(a: BuildResult, b: BuildResult) -> list[str]:
    """Every difference between the object files of two builds, one line each; empty when both
    builds succeeded, produced objects, and every object is byte-identical."""
    problems = []
    for name, r in (("a", a), ("b", b)):
        if not r.ok:
            problems.append(f"build {name} ({r.tree}) failed with status {r.returncode}")
        if not r.objects:
            problems.append(f"build {name} ({r.tree}) produced no object files")
    for rel in sorted(a.objects.keys() | b.objects.keys()):
        if rel not in b.objects:
            problems.append(f"only in a: {rel}")
        elif rel not in a.objects:
            problems.append(f"only in b: {rel}")
        elif a.objects[rel] != b.objects[rel]:
            problems.append(f"differs: {rel}")
    return problems


# --- a recording wrapper: proves every object was compiled (-c) through the compiler command ---

_RECORDER = r"""#!/bin/sh
# Records each compiler invocation, then runs it: CC="THIS gcc-12".
# Log line: "c" or "other", sha256 of the -o file after a successful -c (or "-"), $PWD, argv.
out= c= prev=
for a in "$@"; do
    [ "$prev" = -o ] && out=$a
    case $a in -c) c=1 ;; -o?*) out=${a#-o} ;; esac
    prev=$a
done
"$@"
rc=$?
kind=other hash=-
if [ -n "$c" ]; then
    kind=c
    if [ $rc = 0 ] && [ -n "$out" ] && [ -f "$out" ]; then
        hash=$(sha256sum <"$out") && hash=${hash%% *}
    fi
fi
printf '%s\t%s\t%s\t%s\n' "$kind" "$hash" "$PWD" "$*" >>"$RECORD_COMPILES_LOG"
exit $rc
"""


@dataclass
class Invocation:
    kind: str  # "c" (compile only) or "other" (link, probe, ...)
    output_hash: str
    cwd: str
    argv: str


def write_recorder(path: Path) -> Path:
    """Write the recording wrapper; use CC=f"{path} gcc-12" and set RECORD_COMPILES_LOG in env."""
    path.write_text(_RECORDER)
    path.chmod(0o755)
    return path


def read_record(log: Path) -> list[Invocation]:
    if not log.exists():
        return []
    return [Invocation(*line.split("\t", 3)) for line in log.read_text().splitlines() if line]


_SOURCE_ARG = re.compile(r"\S+\.(c|cc|cpp|cxx|c\+\+|C)(\s|$)")


def check_recorded(result: BuildResult, invocations: Iterable[Invocation]) -> list[str]:
    """Objects the wrapper did not see being compiled with -c, and invocations that compile a
    source without -c (compile and link in one step, which a compile farm cannot distribute)."""
    invocations = list(invocations)
    seen = {i.output_hash for i in invocations if i.kind == "c"}
    problems = [
        f"not compiled through the wrapper: {rel}"
        for rel, h in result.objects.items()
        if h not in seen
    ]
    problems += [
        f"compiled without -c: {i.argv}"
        for i in invocations
        if i.kind == "other" and _SOURCE_ARG.search(i.argv)
    ]
    return problems


# --- command line -------------------------------------------------------------------------------


def _summary(r: BuildResult) -> str:
    status = "ok" if r.ok else f"FAILED ({r.returncode})"
    return (
        f"{r.project}: {status}, make {r.seconds:.1f} s (configure {r.configure_seconds:.1f} s), "
        f"{len(r.objects)} objects, {sum(r.sizes.values()) // 1024} KiB"
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="projects.py", description="Build real projects with a compiler command."
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="the projects, their sources and versions")
    b = sub.add_parser("build", help="build projects; with --ref-cc, compare against a 2nd build")
    b.add_argument("projects", nargs="*", default=list(PROJECTS))
    b.add_argument("--cc", default="gcc-12")
    b.add_argument("--cxx", default="g++-12")
    b.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2)
    b.add_argument("--workdir", type=Path, help="default: a temporary directory, removed")
    b.add_argument("--ref-cc", help="build again with these compilers and compare the objects")
    b.add_argument("--ref-cxx")
    b.add_argument("--ref-jobs", type=int)
    b.add_argument("--configure-cc", help="the C compiler configure probes with (default: --cc)")
    b.add_argument("--configure-cxx")
    b.add_argument("--flag", action="append", default=[], help="an extra compile flag")
    b.add_argument(
        "--no-map-paths",
        action="store_true",
        help="no -ffile-prefix-map: objects record the build directory; the reference is then "
        "built in the same directory, after the first build",
    )
    b.add_argument("--verbose", "-v", action="store_true", help="print the build logs")
    args = ap.parse_args(argv)

    if args.cmd == "info":
        for p in (PROJECTS | BENCH_PROJECTS).values():
            print(
                f"{p.name:8} {p.version():22} {'+'.join(p.languages):6} {p.compiles:4} compiles  "
                f"{p.source_dir()}"
            )
        return 0

    fetched = fetch(extra=args.projects)
    if fetched.returncode:
        sys.stderr.write(fetched.stdout + fetched.stderr)
        return 1
    failed = False
    with tempfile.TemporaryDirectory(prefix="jailcc-projects-") as tmp:
        workdir = args.workdir or Path(tmp)
        for name in args.projects:
            common = dict(extra_flags=args.flag, map_paths=not args.no_map_paths)
            a = build(
                name,
                workdir / "a",
                args.cc,
                args.cxx,
                args.jobs,
                configure_cc=args.configure_cc,
                configure_cxx=args.configure_cxx,
                **common,
            )
            print(f"{args.cc} / {args.cxx} -j{args.jobs}: {_summary(a)}", flush=True)
            if args.verbose or not a.ok:
                print(a.log if args.verbose else a.log_tail())
            for label, found in (
                ("uses __DATE__/__TIME__", a.timestamp_sources),
                ("warning", a.timestamp_warnings),
            ):
                for item in found:
                    print(f"  {label}: {item}")
            failed |= not a.ok
            if not args.ref_cc:
                continue
            where = workdir / ("a" if args.no_map_paths else "ref")
            ref_cxx = args.ref_cxx or args.cxx
            ref_jobs = args.ref_jobs or args.jobs
            r = build(name, where, args.ref_cc, ref_cxx, ref_jobs, **common)
            print(f"{args.ref_cc} / {ref_cxx} -j{ref_jobs}: {_summary(r)}", flush=True)
            diffs = compare(a, r)
            for line in diffs:
                print(f"  {line}")
            print(f"  {'identical' if not diffs else f'{len(diffs)} differences'}")
            failed |= bool(diffs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
