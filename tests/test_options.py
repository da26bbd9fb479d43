"""jailcc.options: the one option table.  The client's classification and the server's
allowlist must agree (whatever the client sends remote the server admits; whatever the server
refuses the client keeps local), over every row of the table and many real spellings, and the
parser must read long options as gcc-12's driver reads them (checked with gcc-12 -###).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from jailcc import options
from jailcc import protocol as proto
from jailcc.client.args import Local, RemoteJob, analyse
from jailcc.images.identity import compiler_identity
from jailcc.jobs.compiler_policy import PolicyError, check_args
from serverutil import Server, start_server, stop_server

GCC = "gcc-12"
ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
COMPILERS = ("gcc-12", "g++-12", "clang-16")


def spellings_of(row: options.Option) -> list[list[str]]:
    """Command-line forms of one row: joined, separate, with values that look like options
    (a hostile client's) and like paths, and every abbreviation of a long option."""
    s = row.spelling
    forms: list[list[str]] = []
    if row.form == options.FLAG:
        forms.append([s])
    if row.form in (options.SEPARATE, options.JOINED_OR_SEPARATE):
        forms += [[s, "v"], [s, "-c"], [s, "/tmp/x"], [s, "@f"]]
    if row.form in (options.JOINED, options.JOINED_OR_SEPARATE):
        forms += [[s + "v"], [s + "/tmp/x"], [s + "=x"], [s + "native"], [s]]
    if s.startswith("--") and "=" not in s:
        for n in range(3, len(s)):
            forms += [[s[:n]], [s[:n], "v"]]
    return forms


ROW_SPELLINGS = [form for row in options.ROWS for form in spellings_of(row)]

# Flags from real builds (Debian's default CFLAGS, CMake and autotools projects, the kernel's
# and LLVM's own builds), and hostile or odd ones.
_REAL_WORLD = """
-g -O2 -ffile-prefix-map=/build/x=. -fstack-protector-strong -Wformat
-Werror=format-security -fcf-protection -Wdate-time -D_FORTIFY_SOURCE=2 -pipe -fPIC -fPIE
-pie -Wall -Wextra -Wno-unused-parameter -std=gnu11 -std=c++17 -pthread -fvisibility=hidden
-fno-strict-aliasing -fno-common -fwrapv -O3 -Os -Ofast -Og -Oz -march=x86-64-v2
-mtune=generic -msse4.2 -mavx2 -m64 -m32 -fdiagnostics-color=always -fno-exceptions
-fno-rtti -flto -flto=auto -ffunction-sections -fdata-sections -fsanitize=address,undefined
-fno-omit-frame-pointer -gdwarf-4 -ggdb -g1 -g0 -gz -gline-tables-only
-fdebug-prefix-map=/a=/b -fmacro-prefix-map=/a=/b -frandom-seed=x -ffat-lto-objects -fopenmp
-ansi -pedantic -pedantic-errors -Werror -Wl,-O1 -Wl,--as-needed -Wl,-z,relro -lm -lpthread
-L/usr/lib -static-libgcc -static-libstdc++ -shared -rdynamic -s -fuse-ld=lld
-Qunused-arguments -fcolor-diagnostics -ferror-limit=0 -Weverything -w -finput-charset=UTF-8
-fexec-charset=ISO-8859-1 -fwide-exec-charset=UTF-32LE -fopt-info-vec -fopt-info-vec-missed
-ftime-report -fmem-report -fstack-clash-protection -fno-integrated-as -no-integrated-as
-fintegrated-as -integrated-as -p -pg -march=native -mtune=native -mcpu=native -fplugin=x.so
-fno-plugin -fprofile-arcs -fno-profile-arcs -fdump-tree-all -save-temps --save-temps
-dumpdir -dumpbase -fself-test=/x -fcompare-debug -fopt-info-all=f -finput-charset=../../x
-frobnicate -fbasic-block-sections=all -fbasic-block-sections=/etc/list -fpass-plugin=x.so
--target=x86_64-linux-gnu --param=max-inline-insns-single=10 --std=c99 --pipe --ansi
--all-warnings --no-warnings --optimize --optimize=2 --debug --debug=3 --pedantic-e
--trigraphs --shared --static --pie --no-canonical-prefixes --plugin=x -stdlib=libc++
-rtlib=compiler-rt -unwindlib=libunwind -nostdlib++ -nostdinc -Wp,-MD,x.d -Wa,-adhln
-Xassembler -Xlinker -Xclang -mllvm -target -arch -- - -x
"""
REAL_WORLD = _REAL_WORLD.split()
REAL_PAIRS = [
    ["-Xlinker", "-zdefs"], ["-mllvm", "-x86-asm-syntax=intel"], ["-target", "aarch64"],
    ["--param", "ggc-min-expand=1"], ["-l", "z"], ["-L", "/opt/lib"], ["-T", "x.ld"],
    ["-u", "sym"], ["-z", "now"], ["-e", "start"], ["-include", "config.h"], ["-I", "inc"],
    ["-D", "X=1"], ["-isystem", "/x"], ["--std", "c11"], ["--imac", "m.h"], ["--pref", "/tmp"],
    ["--for-linker", "-O1"], ["--library-directory", "/x"], ["--force-link", "s"],
]  # fmt: skip
COMMAND_LINES = [[w] for w in REAL_WORLD] + REAL_PAIRS + ROW_SPELLINGS


def server_admits(words: list[str]) -> bool:
    try:
        check_args(words)
    except PolicyError:
        return False
    return True


def refused_words(extra: list[str]) -> set[str]:
    """The option words of a command line that the server refuses on their own."""
    refused, admitted, i = set(), set(), 0
    while i < len(extra):
        if not extra[i].startswith("-") or extra[i] == "-":
            i += 1  # an input
            continue
        try:
            w, i = options.option_at(extra, i)
        except ValueError:
            break
        (admitted if server_admits(list(w.words)) else refused).add(w.words[0])
    return refused - admitted


def check_agreement(extra: list[str]) -> None:
    """The promise both ways, for one command line's extra options, with each compiler."""
    refused = refused_words(extra)
    for compiler in COMPILERS:
        job = analyse(["-c", "foo.c", *extra], "/nonexistent", compiler, True)
        if isinstance(job, RemoteJob):
            # what the client sends (job.py adds -fdiagnostics-color=always on a terminal)
            sent = [*job.remote_args, "-fdiagnostics-color=always"]
            assert server_admits(sent), (compiler, extra, sent)
            # what the server refuses, the client keeps local (or to its preprocessing run)
            assert not refused & set(job.remote_args), (compiler, extra)
        else:
            assert isinstance(job, Local)


@pytest.mark.parametrize("extra", COMMAND_LINES, ids=[" ".join(c) for c in COMMAND_LINES])
def test_client_and_server_agree(extra: list[str]) -> None:
    check_agreement(extra)


def test_client_and_server_agree_on_mixtures() -> None:
    """Random command lines made of the spellings above (fixed seed: reproducible)."""
    rng = random.Random(20261206)
    pool = COMMAND_LINES
    for _ in range(3000):
        extra = [w for _ in range(rng.randint(2, 6)) for w in rng.choice(pool)]
        check_agreement(extra)


def test_the_table_is_wide_and_consistent() -> None:
    assert len(COMMAND_LINES) > 1500
    for row in options.ROWS:
        assert row.pp in (options.BOTH, options.CPP, options.REMOTE, options.LOCAL, "server")
        assert row.src in ("run", "local", "server")
        assert row.path in (None, "read", "write")
        if row.alias is not None:  # a long option names a row that exists
            assert options._target(row.alias) is not None, row
        if row.pp == options.LOCAL:  # the server refuses every spelling of a local row
            for form in spellings_of(row):
                if form[0] == row.spelling:
                    assert not server_admits(form), form
    spellings = [row.spelling for row in options.ROWS]
    assert len(spellings) == len(set(spellings))


def test_pipe_and_link_options_go_remote() -> None:
    """Issue 10 item 4: these were sent remote and refused, a round trip per job."""
    argv = "-c -pipe foo.c -O2 -lm -L/x -Wl,-O1 -Xlinker -zdefs -T x.ld -finput-charset=UTF-8"
    job = analyse(argv.split(), "/", "gcc-12")
    assert isinstance(job, RemoteJob)
    assert "-pipe" in job.remote_args and "-Xlinker" in job.remote_args
    assert check_args(job.remote_args) == job.remote_args


@pytest.mark.parametrize(
    ("word", "meaning"),
    [
        (["--imac", "m.h"], ("-imacros", "m.h")),
        (["--pref", "/tmp"], ("-B", "/tmp")),
        (["--lang", "c"], ("-x", "c")),
        (["--for-a", "-al"], ("-Wa,-al", "-al")),
        (["--user"], ("-MM", "")),
        (["--save"], ("--save-temps", "")),
        (["--pedantic-e"], ("-pedantic-errors", "")),
        (["--sys", "/sr"], ("--sysroot", "/sr")),
        (["--include=x.h"], ("-include", "x.h")),
        (["--std=c99"], ("-std=c99", "c99")),
        (["--debug=3"], ("-g3", "3")),
    ],
)
def test_long_options_and_abbreviations(word: list[str], meaning: tuple[str, str]) -> None:
    w, end = options.option_at(word, 0)
    assert (w.canonical, w.value) == meaning and end == len(word)


@pytest.mark.parametrize(
    "word",
    # ambiguous (gcc: "unrecognized"), joined values after an abbreviation (gcc matches those
    # exactly), and --param, which gcc never abbreviates (each --param=NAME= is an option)
    ["--incl", "--include-d", "--wri", "--pi", "--dumpb", "--e", "--incl=x.h", "--pref=/tmp",
     "--imac=m.h", "--par", "--frobnicate", "--no-", "--"],
)  # fmt: skip
def test_unknown_and_ambiguous_long_options(word: str) -> None:
    w, end = options.option_at([word, "next"], 0)
    assert w.option is None and w.decision == options.LOCAL and end == 1
    assert "unknown option" in w.reason
    with pytest.raises(PolicyError, match=re.escape(word)):
        check_args([word])
    assert isinstance(analyse(["-c", "foo.c", word], "/"), Local)


def _normalized(p: subprocess.CompletedProcess) -> str:
    out = p.stderr.decode(errors="replace") + p.stdout.decode(errors="replace")
    return re.sub(r"/tmp/cc\w+", "/tmp/ccX", out)


@pytest.mark.skipif(shutil.which(GCC, path=ENV["PATH"]) is None, reason="gcc-12 not installed")
def test_abbreviations_resolve_as_gcc_does(tmp_path: Path) -> None:
    """Every prefix of every gcc long option: where we resolve it, gcc-12 -### does exactly
    what the full option does; where we do not, gcc-12 refuses it or reads it as -f<rest>
    (which is why unknown long options are refused, never guessed at)."""
    (tmp_path / "x.c").write_text("int x;\n")

    def gcc(words: list[str]) -> subprocess.CompletedProcess:
        cmd = [GCC, "-###", *words, "-c", "x.c"]
        return subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, timeout=60)

    checked, wrong = 0, []
    for name in options._LONG:
        for n in range(3, len(name)):
            word = name[:n]
            w, _ = options.option_at([word, "v"], 0)
            got = gcc([*w.words])
            if w.option is None:  # gcc refuses it, or takes it for -f<rest> (option_map)
                refused = b"unrecognized command-line option" in got.stderr
                if not refused and _normalized(got) != _normalized(gcc(["-f" + word[2:]])):
                    wrong.append((word, None))
                continue
            if not w.option.spelling.startswith(word):  # a family: --print-m is --print-*
                assert w.decision == options.LOCAL and word.startswith(w.option.spelling)
                continue
            full = [w.option.spelling.rstrip("="), *w.words[1:]]
            if _normalized(got) != _normalized(gcc(full)):
                wrong.append((word, full))
            checked += 1
    assert not wrong
    assert checked > 300


def test_import_is_light() -> None:
    code = (
        "import sys; before = set(sys.modules); import jailcc.options;"
        " print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert not set(out.stdout.split()) & {"typing", "re", "dataclasses", "enum", "collections"}


# ---------------------------------------------------------------------------------------------
# Through a real jailccd: what real builds send goes remote, what a hostile client sends is
# refused by the jail's policy, the connection carries on.


@pytest.fixture(scope="module")
def server(gcc_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("options-server"), gcc_image, "--allow-user", "root")
    yield srv
    stop_server(srv)


@requires_root
def test_a_build_with_pipe_and_link_flags_goes_remote(server: Server, tmp_path: Path) -> None:
    """Issue 10 item 4: -pipe in CFLAGS (and link flags in a one-line compile-and-link rule's
    compile step) cost every job a refused round trip, then a local compile."""
    for i in range(4):
        (tmp_path / f"u{i}.c").write_text(f"int unit{i}(int x) {{ return x * {i}; }}\n")
    flags = "-O2 -pipe -Wall -finput-charset=UTF-8 -lm -L/usr/lib -Wl,-O1 -Xlinker -zdefs"
    env = dict(os.environ, JAILCC_VERBOSE="1", LC_ALL="C", JAILCC_PROXY="0")
    env["JAILCC_HOSTS"] = f"unix:{server.socket_path}"
    for i in range(4):
        argv = [str(BIN / "jailcc"), "gcc-12", *flags.split(), "-c", f"u{i}.c", "-o", f"r{i}.o"]
        res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True)
        assert res.returncode == 0 and b"remote on unix:" in res.stderr, res.stderr
        local = [GCC, *flags.split(), "-c", f"u{i}.c", "-o", f"l{i}.o"]
        subprocess.run(local, cwd=tmp_path, env=ENV, check=True)
        assert (tmp_path / f"r{i}.o").read_bytes() == (tmp_path / f"l{i}.o").read_bytes()


@requires_root
@pytest.mark.parametrize(
    "args",
    [["--prefix=/tmp/evil/"], ["--pref", "-evil/"], ["--include=/etc/passwd"], ["-xc"],
     ["-O2", "-dumpdir"], ["--save"], ["-fopt-info-all=f.txt"], ["--language=assembler"]],
)  # fmt: skip
def test_the_jail_refuses_hostile_spellings(server: Server, tmp_path: Path, args: list) -> None:
    (tmp_path / "unit.c").write_text("int f(int x) { return x; }\n")
    pre = subprocess.run(
        [GCC, "-E", "unit.c"], cwd=tmp_path, env=ENV, check=True, capture_output=True
    ).stdout
    ident = compiler_identity("/usr/bin/gcc-12")
    header = {"id": 1, "identity": ident, "args": args, "cwd": str(tmp_path), "input": "unit.i",
              "mode": "c", "env": {}, "files": [], "source": "unit.c"}  # fmt: skip
    with server.connect() as sock:
        proto.send(sock, proto.HELLO, proto.hello_header("client", identity=ident))
        proto.expect(sock, proto.HELLO)
        proto.expect(sock, proto.READY)
        proto.send(sock, proto.JOB, header, [pre], [True])
        with pytest.raises(proto.RemoteError) as refused:
            proto.expect(sock, proto.RESULT)
        assert refused.value.code == "policy" and args[-1] in refused.value.message
        proto.send(sock, proto.JOB, {**header, "args": ["-O2", "-pipe"]}, [pre], [True])
        result, _ = proto.expect(sock, proto.RESULT)
        assert result["exit_code"] == 0


def _driver_options(compiler: str) -> set[str]:
    """Every option spelling the driver admits to: gcc's --help lists, clang's completion."""
    if compiler.startswith("gcc"):
        helps = ["--help=" + h for h in ("common", "optimizers", "warnings", "target", "c", "c++")]
        out = subprocess.run(
            [compiler, *helps, "--help=undocumented"], capture_output=True, text=True
        ).stdout
        out += subprocess.run([compiler, "-v", "--help"], capture_output=True, text=True).stdout
        return {m.group(1) for m in re.finditer(r"^\s+(-[^\s=<\[]+)", out, re.M)}
    out = subprocess.run([compiler, "--autocomplete=-"], capture_output=True, text=True).stdout
    return {line.split("\t")[0].rstrip("=") for line in out.splitlines() if line[:1] == "-"}


def _swallows_the_next_word(compiler: str, option: str, cwd: Path) -> bool:
    # The server appends -c INPUT -o OUTPUT: an option that takes a separate value eats the
    # -c and the compile becomes a link (or its value, in the middle, goes unchecked).
    argv = [compiler, "-###", option, "-c", "x.i", "-o", "x.o"]
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    return "collect2" in proc.stderr or '/ld"' in proc.stderr or '"ld"' in proc.stderr


@pytest.mark.parametrize("compiler", ["gcc-12", "clang-16"])
def test_no_admitted_spelling_takes_the_next_word(compiler: str, tmp_path: Path) -> None:
    """Every spelling the server admits on its own, as the driver itself lists them, leaves the
    server's -c a compile: none is one the driver gives a separate value (the review found
    -fintrinsic-modules-path, -fnew-alignment, -mthread-model ... passing as family members)."""
    (tmp_path / "x.i").write_text("int x;\n")
    admitted = []
    for option in sorted(_driver_options(compiler)):
        try:
            check_args([option])
        except PolicyError:
            continue
        admitted.append(option)
    assert len(admitted) > 500  # the lists were read
    with ThreadPoolExecutor(4) as pool:
        found = pool.map(lambda o: _swallows_the_next_word(compiler, o, tmp_path), admitted)
        swallowing = [o for o, bad in zip(admitted, found, strict=True) if bad]
    assert swallowing == []
