"""The include analysis (client/includes.py) against the compilers' own dependency output.

* Every compile of Debian's zlib and lua5.4 builds (third_party/src, Debian's flags, recorded
  from a real build through a wrapper), run with gcc-12/g++-12 and with clang-16/clang++-16:
  the analysis must hold every file that ``CC -M`` lists (a superset).  How much more it holds
  is printed (``pytest -s``), not required.
* Small trees in tmp_path, one per rule of the search (quote and angle order, -iquote, -I-,
  #include_next, computed includes, __has_include, -include/-imacros, symlinks, generated and
  changed headers, cycles, missing headers): compared with ``gcc-12 -M`` (and clang-16's where
  it takes the same options), exactly where the analysis should be exact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jailcc.client.includes import Analysis, IncludeAnalyzer, parse_directives

GCC, GXX, CLANG, CLANGXX = "gcc-12", "g++-12", "clang-16", "clang++-16"
COMPILERS = [GCC, CLANG]

pytestmark = pytest.mark.skipif(
    any(shutil.which(c) is None for c in (GCC, GXX, CLANG, CLANGXX)),
    reason="needs gcc-12, g++-12, clang-16 and clang++-16",
)


# ---------------------------------------------------------------------------------------------
# Helpers


def without_output(argv: list[str]) -> list[str]:
    """argv less -c, -o X and dependency-file options: ready for -M."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-o", "-MF", "-MT", "-MQ"):
            i += 2
            continue
        if a in ("-c", "-MD", "-MMD", "-MP"):
            i += 1
            continue
        out.append(a)
        i += 1
    return out


def parse_make_deps(text: str) -> list[str]:
    """The prerequisites of the one rule ``CC -M`` writes (paths hold no spaces here)."""
    text = text.replace("\\\n", " ")
    return text.split(":", 1)[1].split()


def compiler_deps(argv: list[str], cwd: Path | str, flags: tuple[str, ...] = ()) -> set[str]:
    """The files ``argv`` reads according to its own ``-M``, absolute and normalized."""
    dep = Path(cwd, ".deps.d")
    p = subprocess.run(
        [*without_output(argv), *flags, "-M", "-MF", str(dep)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    deps = parse_make_deps(dep.read_text())
    dep.unlink()
    return {os.path.normpath(os.path.join(cwd, d)) for d in deps}


def analysed(analysis: Analysis) -> set[str]:
    assert analysis.ok, analysis.unsupported
    return {os.path.normpath(p) for p in analysis.paths}


def tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def check(
    root: Path, argv: list[str], exact: bool = True, analyzer: IncludeAnalyzer | None = None
) -> Analysis:
    """Analyse argv in root and compare with the compiler's -M: a superset always, equal when
    exact."""
    analysis = (analyzer or IncludeAnalyzer()).files_read(argv, str(root))
    got, want = analysed(analysis), compiler_deps(argv, root)
    assert want <= got, f"the analysis lacks {sorted(want - got)}"
    if exact:
        assert got == want, f"the analysis adds {sorted(got - want)}"
    return analysis


def rel(root: Path, analysis: Analysis) -> set[str]:
    """The analysed paths under root, relative (system headers left out)."""
    prefix = str(root) + "/"
    return {p[len(prefix) :] for p in analysed(analysis) if p.startswith(prefix)}


def set_old_mtime(*paths: Path) -> None:
    old = time.time() - 3600
    for p in paths:
        os.utime(p, (old, old))


# ---------------------------------------------------------------------------------------------
# Search order


@pytest.mark.parametrize("cc", COMPILERS)
def test_quote_and_angle_search_order(tmp_path: Path, cc: str) -> None:
    tree(
        tmp_path,
        {
            "src/main.c": '#include "a.h"\n#include <a.h>\n#include "b.h"\nint x;\n',
            "src/a.h": "/* beside the source: quote includes find it first */\n",
            "inc/a.h": "/* -I: angle includes find it */\n",
            "inc/b.h": "/* only here: the quote chain falls through to -I */\n",
            "other/b.h": "/* later in the chain: never read */\n",
        },
    )
    a = check(tmp_path, [cc, "-Iinc", "-Iother", "-c", "src/main.c"])
    assert rel(tmp_path, a) == {"src/main.c", "src/a.h", "inc/a.h", "inc/b.h"}


@pytest.mark.parametrize("cc", COMPILERS)
def test_iquote(tmp_path: Path, cc: str) -> None:
    tree(
        tmp_path,
        {
            "src/main.c": '#include "h.h"\n#include <h.h>\n',
            "q/h.h": "/* -iquote: quote includes only */\n",
            "i/h.h": "/* -I */\n",
        },
    )
    a = check(tmp_path, [cc, "-iquote", "q", "-I", "i", "-c", "src/main.c"])
    assert rel(tmp_path, a) == {"src/main.c", "q/h.h", "i/h.h"}


def test_I_minus(tmp_path: Path) -> None:
    """-I dirs before -I- are for quote includes only, and the includer's own directory is not
    searched (gcc only: clang-16 refuses -I-)."""
    tree(
        tmp_path,
        {
            "src/main.c": '#include "x.h"\n#include <x.h>\n',
            "src/x.h": "/* not searched with -I- */\n",
            "a/x.h": "/* quote */\n",
            "b/x.h": "/* angle */\n",
        },
    )
    a = check(tmp_path, [GCC, "-Ia", "-I-", "-Ib", "-c", "src/main.c"])
    assert rel(tmp_path, a) == {"src/main.c", "a/x.h", "b/x.h"}


@pytest.mark.parametrize("cc", COMPILERS)
def test_include_next(tmp_path: Path, cc: str) -> None:
    tree(
        tmp_path,
        {
            "main.c": "#include <foo.h>\nint main(void) { return FOO; }\n",
            "d1/foo.h": "#include_next <foo.h>\n",
            "d2/foo.h": "#define FOO 0\n",
        },
    )
    a = check(tmp_path, [cc, "-Id1", "-Id2", "-c", "main.c"])
    assert rel(tmp_path, a) == {"main.c", "d1/foo.h", "d2/foo.h"}


@pytest.mark.parametrize("cc", COMPILERS)
def test_system_dirs_and_duplicates(tmp_path: Path, cc: str) -> None:
    """-isystem before the compiler's directories, -idirafter after them, a -I that names a
    system directory is dropped (so <limits.h> resolves as without it), a missing -I is
    ignored."""
    tree(
        tmp_path,
        {
            "main.c": "#include <limits.h>\n#include <sys.h>\n#include <after.h>\n",
            "sys/sys.h": "",
            "after/after.h": "",
            "after/stdio.h": "/* after the system's: never found */\n",
        },
    )
    argv = [cc, "-I/usr/include", "-Inowhere", "-isystem", "sys", "-idirafter", "after"]
    a = check(tmp_path, [*argv, "-c", "main.c"], exact=False)  # (limits.h's #if branches)
    assert rel(tmp_path, a) == {"main.c", "sys/sys.h", "after/after.h"}


# ---------------------------------------------------------------------------------------------
# Computed includes, __has_include, forced includes


@pytest.mark.parametrize("cc", COMPILERS)
def test_computed_includes(tmp_path: Path, cc: str) -> None:
    tree(
        tmp_path,
        {
            "main.c": (
                '#include "config.h"\n'
                "#include PLATFORM_H\n"
                '#define HDR "real.h"\n'
                "#include HDR\n"
                "#define STR(x) #x\n"
                "#define XSTR(x) STR(x)\n"
                "#define NAME other.h\n"
                "#include XSTR(NAME)\n"
                "#include CFG\n"
                "#define ANGLE <angled.h>\n"
                "#include ANGLE\n"
                "#define CAT(a, b) a##b\n"
                "#define PASTED XSTR(CAT(pas, ted.h))\n"
                "#include PASTED\n"
                "#ifdef USER_H\n"
                "#include USER_H\n"  # defined nowhere: inactive
                "#endif\n"
            ),
            "config.h": '#define PLATFORM_H "plat_linux.h"\n',
            "plat_linux.h": "",
            "real.h": "",
            "other.h": "",
            "cfg.h": "",
            "inc/angled.h": "",
            "pasted.h": "",
        },
    )
    a = check(tmp_path, [cc, '-DCFG="cfg.h"', "-Iinc", "-c", "main.c"])
    assert {"plat_linux.h", "real.h", "other.h", "cfg.h", "inc/angled.h", "pasted.h"} <= rel(
        tmp_path, a
    )
    assert any("USER_H" in note for note in a.notes)


def test_computed_include_takes_every_definition(tmp_path: Path) -> None:
    """Conditionals are not evaluated: both definitions count (more files, never fewer)."""
    tree(
        tmp_path,
        {
            "main.c": (
                '#ifdef A\n#define SEL "sel_a.h"\n#else\n#define SEL "sel_b.h"\n#endif\n'
                "#include SEL\n"
            ),
            "sel_a.h": "",
            "sel_b.h": "",
        },
    )
    a = check(tmp_path, [GCC, "-c", "main.c"], exact=False)
    assert {"sel_a.h", "sel_b.h"} <= rel(tmp_path, a)


def test_computed_include_that_cannot_be_evaluated_gives_up(tmp_path: Path) -> None:
    tree(tmp_path, {"main.c": "#if 0\n#define BAD 1 + 2\n#include BAD\n#endif\nint x;\n"})
    a = IncludeAnalyzer().files_read([GCC, "-c", "main.c"], str(tmp_path))
    assert not a.ok and "computed include" in (a.unsupported or "")
    assert a.files == ()
    compiler_deps([GCC, "-c", "main.c"], tmp_path)  # gcc itself is happy


@pytest.mark.parametrize("cc", COMPILERS)
def test_has_include(tmp_path: Path, cc: str) -> None:
    """A file found by __has_include is shipped (the probe must answer the same in the jail)
    even when nothing includes it; a missing one is no error."""
    tree(
        tmp_path,
        {
            "main.c": (
                '#if __has_include("opt.h")\n#include "opt.h"\n#endif\n'
                "#if __has_include(<probe_only.h>)\n#define HAVE_PROBE 1\n#endif\n"
                '#if defined(__has_include) && __has_include("absent.h")\n'
                '#include "absent.h"\n#endif\n'
            ),
            "opt.h": "",
            "inc/probe_only.h": "",
        },
    )
    a = check(tmp_path, [cc, "-Iinc", "-c", "main.c"], exact=False)
    assert str(tmp_path / "inc/probe_only.h") in a.paths
    extra = analysed(a) - compiler_deps([cc, "-Iinc", "-c", "main.c"], tmp_path)
    assert extra <= {str(tmp_path / "inc/probe_only.h")}  # (clang-16's -M lists it too)
    assert a.missing == ('"absent.h"',)  # the #include in the branch not taken


@pytest.mark.parametrize("cc", COMPILERS)
def test_forced_includes(tmp_path: Path, cc: str) -> None:
    """-include and -imacros look in the working directory first, then the chain."""
    tree(
        tmp_path,
        {
            "src/main.c": "int x = FORCED + MACROS;\n",
            "forced.h": '#define FORCED 1\n#include "beside_forced.h"\n',
            "beside_forced.h": "",
            "src/forced.h": "/* the source's directory: not searched for -include */\n",
            "inc/macros.h": "#define MACROS 2\n",
        },
    )
    argv = [cc, "-include", "forced.h", "-imacros", "macros.h", "-Iinc", "-c", "src/main.c"]
    a = check(tmp_path, argv)
    assert rel(tmp_path, a) == {"src/main.c", "forced.h", "beside_forced.h", "inc/macros.h"}


# ---------------------------------------------------------------------------------------------
# Symlinks, generated and changed headers, cycles, missing headers


@pytest.mark.parametrize("cc", COMPILERS)
def test_symlinked_header(tmp_path: Path, cc: str) -> None:
    """A header reached through a symlink: reported at the path the compiler opens, with its
    real path; its quote includes resolve from the symlink's directory, as the compiler's."""
    tree(
        tmp_path,
        {
            "main.c": '#include "link.h"\n#include <viadir.h>\n',
            "real/target.h": '#include "sibling.h"\n',
            "real/sibling.h": "/* beside the target: not read */\n",
            "real/viadir.h": "",
            "inc/sibling.h": "/* beside the link: read */\n",
        },
    )
    (tmp_path / "inc/link.h").symlink_to("../real/target.h")
    (tmp_path / "dirlink").symlink_to("real")
    a = check(tmp_path, [cc, "-Iinc", "-Idirlink", "-c", "main.c"])
    assert rel(tmp_path, a) == {"main.c", "inc/link.h", "inc/sibling.h", "dirlink/viadir.h"}
    reads = {f.path: f for f in a.files}
    assert reads[str(tmp_path / "inc/link.h")].real == str(tmp_path / "real/target.h")
    assert reads[str(tmp_path / "dirlink/viadir.h")].real == str(tmp_path / "real/viadir.h")


def test_header_created_after_a_first_analysis(tmp_path: Path) -> None:
    """A miss is never kept beyond the directory's state: a generated header is found as soon
    as it exists, also when it shadows one found before, in a directory listed long ago."""
    tree(
        tmp_path,
        {
            "main.c": '#include "gen.h"\n#include <g2.h>\n',
            "inc/g2.h": "/* found first; shadowed once gen/g2.h exists */\n",
        },
    )
    (tmp_path / "gen").mkdir()
    set_old_mtime(tmp_path / "gen", tmp_path)  # listings old enough to be kept
    analyzer = IncludeAnalyzer()
    argv = [GCC, "-Igen", "-Iinc", "-c", "main.c"]
    first = analyzer.files_read(argv, str(tmp_path))
    assert first.missing == ('"gen.h"',)
    assert rel(tmp_path, first) == {"main.c", "inc/g2.h"}

    (tmp_path / "gen.h").write_text("/* generated */\n")  # just now: within the racy window
    (tmp_path / "gen/g2.h").write_text("/* generated */\n")
    second = check(tmp_path, argv, analyzer=analyzer)
    assert second.missing == ()
    assert rel(tmp_path, second) == {"main.c", "gen.h", "gen/g2.h"}


def test_header_changed_between_analyses(tmp_path: Path) -> None:
    """Contents are keyed by their digest: a header rewritten with the same size and mtime is
    read again, and a content seen before is not parsed again."""
    tree(
        tmp_path,
        {"main.c": '#include "a.h"\n', "a.h": '#include "b.h"\n', "b.h": "", "c.h": ""},
    )
    set_old_mtime(tmp_path / "a.h")
    mtime = (tmp_path / "a.h").stat().st_mtime_ns
    analyzer = IncludeAnalyzer()
    argv = [GCC, "-c", "main.c"]
    first = check(tmp_path, argv, analyzer=analyzer)
    assert rel(tmp_path, first) == {"main.c", "a.h", "b.h"}

    (tmp_path / "a.h").write_text('#include "c.h"\n')  # same size
    os.utime(tmp_path / "a.h", ns=(mtime, mtime))
    second = check(tmp_path, argv, analyzer=analyzer)
    assert rel(tmp_path, second) == {"main.c", "a.h", "c.h"}
    a_h = str(tmp_path / "a.h")
    assert {f.digest for f in first.files if f.path == a_h} != {
        f.digest for f in second.files if f.path == a_h
    }

    parsed = analyzer.counters["parsed"]
    (tmp_path / "a.h").write_text('#include "b.h"\n')  # back to a content seen before
    third = check(tmp_path, argv, analyzer=analyzer)
    assert rel(tmp_path, third) == {"main.c", "a.h", "b.h"}
    assert analyzer.counters["parsed"] == parsed


@pytest.mark.parametrize("cc", COMPILERS)
def test_include_cycles(tmp_path: Path, cc: str) -> None:
    tree(
        tmp_path,
        {
            "main.c": '#include "a.h"\n#include "d/mem.h"\n',
            "a.h": '#ifndef A_H\n#define A_H\n#include "b.h"\n#endif\n',
            "b.h": '#ifndef B_H\n#define B_H\n#include "a.h"\n#endif\n',
            # every pass names it by a longer path (d/../d/../d/mem.h ...): one file
            "d/mem.h": '#ifndef MEM_H\n#define MEM_H\n#include "../d/mem.h"\n#endif\n',
        },
    )
    a = check(tmp_path, [cc, "-c", "main.c"], exact=False)
    assert rel(tmp_path, a) >= {"main.c", "a.h", "b.h", "d/mem.h"}


def test_missing_header(tmp_path: Path) -> None:
    """The analysis names it; the compile fails anyway (and -MG lists it)."""
    tree(tmp_path, {"main.c": '#include "nope.h"\n#include <also_nope.h>\n'})
    argv = [GCC, "-c", "main.c"]
    a = IncludeAnalyzer().files_read(argv, str(tmp_path))
    assert a.ok and a.missing == ('"nope.h"', "<also_nope.h>")
    assert rel(tmp_path, a) == {"main.c"}
    p = subprocess.run([GCC, "-M", "main.c"], cwd=tmp_path, capture_output=True)
    assert p.returncode != 0
    generated = compiler_deps(argv, tmp_path, ("-MG",))
    assert {os.path.basename(d) for d in generated} >= {"nope.h", "also_nope.h"}


def test_a_compiler_that_refuses_the_probe_is_asked_once(tmp_path: Path) -> None:
    """Flags the compiler refuses fail every job alike: the analysis says so from what it
    kept, without running the compiler again, until the compiler file changes."""
    tree(tmp_path, {"main.c": "int x;\n"})
    log = tmp_path / "runs"
    compiler = tmp_path / "counting-gcc"
    compiler.write_text(f'#!/bin/sh\necho run >> {log}\nexec {GCC} "$@"\n')
    compiler.chmod(0o755)
    analyzer = IncludeAnalyzer()
    argv = [str(compiler), "-mno-such-option-anywhere", "-c", "main.c"]
    for _ in range(3):
        refused = analyzer.files_read(argv, str(tmp_path))
        assert not refused.ok and "-E -v failed" in refused.unsupported
        assert "-mno-such-option-anywhere" in refused.unsupported
    assert log.read_text().count("run") == 1
    os.utime(compiler, ns=(0, 0))  # another compiler file now: asked again
    assert not analyzer.files_read(argv, str(tmp_path)).ok
    assert log.read_text().count("run") == 2
    assert analyzer.files_read([str(compiler), "-c", "main.c"], str(tmp_path)).ok


def test_missing_source(tmp_path: Path) -> None:
    a = IncludeAnalyzer().files_read([GCC, "-c", "absent.c"], str(tmp_path))
    assert a.ok and a.files == () and a.missing == (str(tmp_path / "absent.c"),)


# ---------------------------------------------------------------------------------------------
# C++, options, what the analysis refuses


@pytest.mark.parametrize("cxx", [GXX, CLANGXX])
def test_cxx_standard_library(tmp_path: Path, cxx: str) -> None:
    tree(
        tmp_path,
        {
            "main.cc": (
                "#include <vector>\n#include <string>\n#include <iostream>\n#include <map>\n"
                "#include <cstdlib>\n#include <cmath>\n#include <memory>\n#include <thread>\n"
                "int main() { return 0; }\n"
            )
        },
    )
    a = check(tmp_path, [cxx, "-O2", "-std=c++17", "-c", "main.cc"], exact=False)
    want = compiler_deps([cxx, "-O2", "-std=c++17", "-c", "main.cc"], tmp_path)
    print(f"\n{cxx} <vector>...: -M {len(want)} files, analysis {len(a.files)}")


def test_response_files_and_wp_options(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {"main.c": "#include <r.h>\n#include <w.h>\n", "r/r.h": "", "w/w.h": "", "rsp": "-Ir\n"},
    )
    a = check(tmp_path, [GCC, "@rsp", "-Wp,-Iw", "-c", "main.c"])
    b = IncludeAnalyzer().files_read(
        [GCC, "@rsp", "-Wp,-Iw,-MD,main.d", "-c", "main.c"], str(tmp_path)
    )
    assert a.paths == b.paths


def test_preprocessed_input_reads_only_itself(tmp_path: Path) -> None:
    tree(tmp_path, {"main.i": '# 1 "main.c"\nint x;\n'})
    a = IncludeAnalyzer().files_read([GCC, "-c", "main.i"], str(tmp_path))
    assert a.ok and rel(tmp_path, a) == {"main.i"}


@pytest.mark.parametrize(
    ("argv", "env", "reason"),
    [
        ([GCC, "-c", "main.c"], {"CPATH": "/tmp"}, "CPATH"),
        ([CLANG, "-Xclang", "-include", "-Xclang", "x.h", "-c", "main.c"], {}, "-Xclang"),
        ([GCC, "-c", "-x", "c", "-"], {}, "stdin"),
        ([GCC, "-c", "main.c", "main.c"], {}, "more than one input"),
        ([GCC, "--sysroot=/opt/sys", "-c", "main.c"], {}, "--sysroot"),
        ([GCC, "-c", "main.s"], {}, "not C/C++"),
        (["no-such-compiler-12", "-c", "main.c"], {}, "not found"),
    ],
)
def test_unsupported(tmp_path: Path, argv: list[str], env: dict[str, str], reason: str) -> None:
    tree(tmp_path, {"main.c": "int x;\n", "main.s": ""})
    a = IncludeAnalyzer().files_read(argv, str(tmp_path), {"PATH": os.environ["PATH"], **env})
    assert not a.ok and reason in (a.unsupported or ""), a


def test_directive_scanner() -> None:
    """Comments, splices and literals as the preprocessor sees them."""
    d = parse_directives(
        b"/* #include <in_comment.h>\n */ #include <after_comment.h>\n"
        b'  #  include \\\n "spliced.h"\n'
        b'#include /* comment */ "commented.h" // trailing\n'
        b'const char *s = "/*"; \n#include <after_string.h>\n'
        b"#include <a//b.h>\n"
        b"%:include <digraph.h>\n"
        b"#include_next <next.h>\n#import <imported.h>\n"
        b"#define X __has_include(<probed.h>)\n#include X\n"
        b'#pragma GCC dependency "parse.y"\n'
        b"// #include <line_comment.h>\n"
    )
    names = [(i.text, i.next, i.probe) for i in d.includes]
    assert names == [
        ("after_comment.h", False, False),
        ("spliced.h", False, False),
        ("commented.h", False, False),
        ("after_string.h", False, False),
        ("a//b.h", False, False),
        ("digraph.h", False, False),
        ("next.h", True, False),
        ("imported.h", False, False),
        ("probed.h", False, True),
        ("X", False, False),
        ("parse.y", False, True),
    ]
    assert "X" in d.defines


# ---------------------------------------------------------------------------------------------
# Real projects: every compile of zlib and lua5.4, gcc-12 and clang-16


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import projects  # noqa: E402 - scripts/projects.py, as the other project tests load it

# Records each compile's directory and argv (NUL-separated, a file per process: make -j2
# runs two at once), then compiles at -O0 without debug info: the build only has to produce
# objects, quickly.
_RECORDER = """#!/bin/sh
printf '%s\\0' "$PWD" "$@" >"$(mktemp "$RECORD_ARGV_DIR/XXXXXXXX")"
exec "$@" -O0 -g0
"""


def _recorded_compiles(workdir: Path, name: str) -> list[tuple[str, list[str]]]:
    workdir.mkdir(parents=True, exist_ok=True)
    recorder = workdir / "record-argv"
    recorder.write_text(_RECORDER)
    recorder.chmod(0o755)
    log = workdir / "argv"
    log.mkdir()
    result = projects.build(
        name,
        workdir / "build",
        f"{recorder} gcc-12",
        f"{recorder} g++-12",
        2,
        {"RECORD_ARGV_DIR": str(log)},
        configure_cc="gcc-12",
        configure_cxx="g++-12",
    )
    assert result.ok, result.log_tail()
    compiles = []
    for record in sorted(log.iterdir()):
        words = [w.decode() for w in record.read_bytes().split(b"\0")[:-1]]
        if "-c" in words:
            compiles.append((words[0], words[1:]))
    assert len(compiles) == projects.get(name).compiles
    return compiles


@pytest.fixture(scope="module")
def project_compiles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list]]:
    missing = [n for n in ("zlib", "lua5.4") if not projects.get(n).source_dir().is_dir()]
    if missing:
        pytest.skip(f"{missing} not fetched: run scripts/fetch-sources")
    workdir = tmp_path_factory.mktemp("includes-projects")
    yield {name: _recorded_compiles(workdir / name, name) for name in ("zlib", "lua5.4")}


def _as(argv: list[str], family: str) -> list[str]:
    cxx = "++" in argv[0]
    compiler = {"gcc": GXX if cxx else GCC, "clang": CLANGXX if cxx else CLANG}[family]
    return [compiler, *argv[1:]]


@pytest.mark.parametrize("family", ["gcc", "clang"])
@pytest.mark.parametrize("name", ["zlib", "lua5.4"])
def test_every_project_compile_is_covered(
    project_compiles: dict[str, list], name: str, family: str
) -> None:
    compiles = [(cwd, _as(argv, family)) for cwd, argv in project_compiles[name]]
    analyzer = IncludeAnalyzer()
    started = time.perf_counter()
    cold = [analyzer.files_read(argv, cwd) for cwd, argv in compiles]
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    warm = [analyzer.files_read(argv, cwd) for cwd, argv in compiles]
    warm_s = time.perf_counter() - started

    lacking, exact, listed, extra = [], 0, 0, 0
    for (cwd, argv), a_cold, a_warm in zip(compiles, cold, warm, strict=True):
        assert a_cold.ok and a_warm.ok, a_cold.unsupported or a_warm.unsupported
        assert a_cold.paths == a_warm.paths
        got, want = analysed(a_warm), compiler_deps(argv, cwd)
        if want - got:
            lacking.append((argv[-1], sorted(want - got)))
        exact += got == want
        listed += len(want)
        extra += len(got - want)
    n = len(compiles)
    print(
        f"\n{name} {family}: {n} compiles, -M lists {listed / n:.1f} files each, the analysis"
        f" {extra / n:.1f} more ({exact} exact); analysis cold {1000 * cold_s / n:.1f} ms,"
        f" warm {1000 * warm_s / n:.2f} ms per compile"
    )
    assert not lacking, lacking[:3]


@pytest.mark.parametrize(
    ("text", "once"),
    [
        (b"#pragma once\n", True),
        (b"  #  pragma   once  // guard\n", True),
        (b"%:pragma once\n", True),
        (b'_Pragma("once")\n', True),
        (b'_Pragma ( u8"once" )\n', True),
        (b"#define P(x) _Pragma(#x)\nP(once)\n", True),  # a macro makes the string
        (b'_Pragma("GCC diagnostic push")\n/* once upon a time */\n', False),
        (b'_Pragma("message(\\"once\\")")\nconst char *s = "once";\n', False),
        (b"#pragma onceler\n", False),
        (b"#pragma GCC system_header\n#include <x.h>\n", False),
        (b"/* #pragma once */\n", False),
    ],
)
def test_pragma_once_is_seen(text: bytes, once: bool) -> None:
    assert parse_directives(text).once is once


@pytest.mark.parametrize(
    ("text", "compares"),
    [
        (b'_Pragma("GCC dependency \\"x.h\\"")\n', True),
        (b'#define P(x) _Pragma(#x)\nP(GCC dependency "x.h")\n', True),
        (b"int t = __TIMESTAMP__;\n", True),
        # curl's curl.h: a diagnostic _Pragma, and the word in a comment and a string.
        (b'#define IGN _Pragma("GCC diagnostic push")\n/* stream dependency */\n', False),
        (b'_Pragma("GCC diagnostic push")\nconst char *e = "no dependency";\n', False),
    ],
)
def test_mtime_comparisons_through_the_pragma_operator_are_seen(text: bytes, compares) -> None:
    """A file that compares mtimes cannot go as sources (the jail's copies have their own):
    #pragma GCC dependency said through _Pragma is one; a mere mention is none."""
    assert parse_directives(text).timestamp is compares


@pytest.mark.parametrize(
    ("include_dir", "reason"),
    [
        ("loop", "Too many levels of symbolic links"),  # gcc: an error
        ("afile/sub", "Not a directory"),  # gcc: an error
        ("afile", "is not a directory"),  # gcc: a warning
    ],
)
def test_a_search_directory_the_compiler_complains_of_is_not_guessed(
    tmp_path: Path, include_dir: str, reason: str
) -> None:
    """A missing directory is passed over, by gcc as by the analysis; one gcc warns of or
    fails on (or cannot list: its files still open) leaves the job to the compiler."""
    tree(tmp_path, {"main.c": '#include "h.h"\n', "afile": "", "inc/h.h": ""})
    os.symlink("loop", tmp_path / "loop")
    argv = [GCC, f"-I{include_dir}", "-Iinc", "-c", "main.c"]
    a = IncludeAnalyzer().files_read(argv, str(tmp_path))
    assert not a.ok and reason in (a.unsupported or ""), a
    assert subprocess.run(argv, cwd=tmp_path, capture_output=True).stderr  # gcc says something
    assert IncludeAnalyzer().files_read([GCC, "-Inone", "-Iinc", "-c", "main.c"], str(tmp_path)).ok


def test_a_header_the_compiler_cannot_open_is_not_passed_over(tmp_path: Path) -> None:
    tree(tmp_path, {"main.c": "#include <h.h>\n", "two/h.h": ""})
    (tmp_path / "one").mkdir()
    os.symlink("h.h", tmp_path / "one" / "h.h")  # a loop where the compiler looks first
    argv = [GCC, "-Ione", "-Itwo", "-c", "main.c"]
    a = IncludeAnalyzer().files_read(argv, str(tmp_path))
    assert not a.ok and "Too many levels" in (a.unsupported or ""), a


@pytest.mark.parametrize("cc", COMPILERS)
def test_a_header_name_through_a_file_is_searched_past(tmp_path: Path, cc: str) -> None:
    """Qt's layout: include/QtCore/QtCore is a file, so <QtCore/qglobal.h> under -Iinclude/QtCore
    names a path through a file (ENOTDIR), which the compilers pass over to -Iinclude."""
    tree(tmp_path, {"main.c": "#include <QtCore/qglobal.h>\n", "include/QtCore/qglobal.h": ""})
    (tmp_path / "include/QtCore/QtCore").write_text("")
    a = check(tmp_path, [cc, "-Iinclude/QtCore", "-Iinclude", "-c", "main.c"])
    assert rel(tmp_path, a) == {"main.c", "include/QtCore/qglobal.h"}
