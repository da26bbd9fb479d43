"""jailcc.client.args: the table of decisions, @file expansion, and the promise behind them,
checked against the real compilers: a local compile and "preprocess here, compile the .i
there" must leave the same object, the same dependency file and the same stderr.

The remote step is run locally, in the same directory (the jail's work dir is the client's
working directory), with the .i under another name in another directory.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from jailcc.client import args as argsmod
from jailcc.client.args import Local, RemoteJob, analyse, expand_response_files

GCC, GXX, CLANG, CLANGXX = "gcc-12", "g++-12", "clang-16", "clang++-16"
ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


def need(*compilers: str) -> pytest.MarkDecorator:
    missing = [c for c in compilers if shutil.which(c, path=ENV["PATH"]) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed")


# ---------------------------------------------------------------------------------------------
# The table: argv (shell words, without the compiler) -> Local(reason substring) or RemoteJob
# fields.  "cpp" is preprocess_args, "remote" is remote_args.


def remote(**fields: object) -> dict[str, object]:
    renames = {"cpp": "preprocess_args", "remote": "remote_args", "lang": "language"}
    return {renames.get(k, k): v for k, v in fields.items()}


def local(reason: str) -> str:
    return reason


CASES: list[tuple[str, dict[str, object] | str]] = [
    # plain compiles, languages by suffix, output names
    (
        "-c foo.c",
        remote(source="foo.c", lang="c", output="foo.o", cpp=[], remote=[], dep_file=None),
    ),
    ("-c foo.cpp -o out/foo.o", remote(lang="c++", output="out/foo.o", assembly=False)),
    ("-S foo.c", remote(output="foo.s", assembly=True)),
    ("-c -S foo.c", remote(output="foo.s", assembly=True)),
    ("-c src/dir/foo.cc", remote(source="src/dir/foo.cc", output="foo.o")),
    ("-c foo.C", remote(lang="c++")),
    ("-c foo.cxx", remote(lang="c++")),
    ("-c foo.cp", remote(lang="c++")),
    ("-c foo.CPP", remote(lang="c++")),
    ("-c foo.c++", remote(lang="c++")),
    ("-c foo.tar.c", remote(output="foo.tar.o")),
    ("-c foo.i", remote(lang="c", preprocessed=True, output="foo.o")),
    ("-c foo.ii -O2", remote(lang="c++", preprocessed=True, remote=["-O2"])),
    ("-c -ofoo2.o foo.c", remote(output="foo2.o")),
    ("-c -o foo2.c foo.c", remote(source="foo.c", output="foo2.c")),
    # -x: applies to later inputs only; re-added for the preprocessing run, never remote
    ("-c -x c++ foo.c", remote(lang="c++", cpp=["-x", "c++"], remote=[])),
    ("-c -xc foo.txt", remote(lang="c", output="foo.o", cpp=["-x", "c"])),
    ("-c -x cpp-output foo.txt", remote(lang="c", preprocessed=True, remote=[])),
    ("-c -x c++-cpp-output foo.txt", remote(lang="c++", preprocessed=True)),
    ("-c -x c++ -x none foo.c", remote(lang="c", cpp=[])),
    ("-c -x c foo.i", remote(lang="c", preprocessed=False, cpp=["-x", "c"])),
    # preprocessor-only options: joined and separate forms, never taken for the input
    (
        "-c -DX=1 -D Y -UZ -U W -Iinc -I inc2 foo.c -O2 -g -Wall",
        remote(
            cpp=["-DX=1", "-D", "Y", "-UZ", "-U", "W", "-Iinc", "-I", "inc2", "-O2", "-g", "-Wall"],
            remote=["-O2", "-g", "-Wall"],
        ),
    ),
    (
        "-c -include a.c -imacros m.c -isystem s.c -iquote q.c -idirafter d.c -iprefix p.c"
        " -iwithprefix w.c -iwithprefixbefore wb.c foo.c",
        remote(source="foo.c", remote=[]),
    ),
    ("-c -isystem/s -iquoteq -includecfg.h -nostdinc foo.c", remote(source="foo.c", remote=[])),
    ("-c -no-integrated-cpp -nostdinc++ foo.cc", remote(remote=[])),
    ("-c -Wp,-DX,-UY,-Iinc foo.c", remote(cpp=["-Wp,-DX,-UY,-Iinc"], remote=[])),
    # dependency files: -MF and -MQ added as a local compile's driver would
    ("-c -MD foo.c", remote(cpp=["-MD", "-MF", "foo.d", "-MQ", "foo.o"], dep_file="foo.d")),
    (
        "-c -MMD foo.c -o sub/x.o",
        remote(cpp=["-MMD", "-MF", "sub/x.d", "-MQ", "sub/x.o"], dep_file="sub/x.d", remote=[]),
    ),
    (
        "-c -MD -MF deps/x.d -MT t foo.c",
        remote(cpp=["-MD", "-MF", "deps/x.d", "-MT", "t"], dep_file="deps/x.d"),
    ),
    ("-c -MD -MFx.d '-MQ$t' foo.c", remote(cpp=["-MD", "-MFx.d", "-MQ$t"], dep_file="x.d")),
    ("-c -MD -MF a.d -MF b.d foo.c", remote(dep_file="b.d")),
    ("-S -MD foo.c", remote(cpp=["-MD", "-MF", "foo.d", "-MQ", "foo.o"], output="foo.s")),
    ("-c -MD foo.c -o sub.d/x", remote(dep_file="sub.d/x.d")),
    ("-c -MD src/foo.c", remote(cpp=["-MD", "-MF", "foo.d", "-MQ", "foo.o"])),
    ("-c -MD -MP foo.c", remote(cpp=["-MD", "-MP", "-MF", "foo.d", "-MQ", "foo.o"])),
    ("-c -MD -x c++ foo.c", remote(cpp=["-MD", "-MF", "foo.d", "-MQ", "foo.o", "-x", "c++"])),
    ("-c -Wp,-MD,dep.d foo.c -o x.o", remote(cpp=["-Wp,-MD,dep.d"], dep_file="dep.d")),
    # options kept on both sides, and their separate arguments
    (
        "-c -std=c++17 -O2 -g -fPIC -march=x86-64-v2 -mtune=generic foo.cc",
        remote(remote=["-std=c++17", "-O2", "-g", "-fPIC", "-march=x86-64-v2", "-mtune=generic"]),
    ),
    # options for the assembler that write no file (CMake's --noexecstack): the compile's
    ("-c -Wa,--noexecstack foo.c", remote(remote=["-Wa,--noexecstack"])),
    (
        "-c -Wa,--noexecstack,--compress-debug-sections=zlib foo.c",
        remote(remote=["-Wa,--noexecstack,--compress-debug-sections=zlib"]),
    ),
    (
        "-c --param max-inline-insns-single=10 --param=ggc-min-expand=1 foo.c",
        remote(remote=["--param", "max-inline-insns-single=10", "--param=ggc-min-expand=1"]),
    ),
    (
        "-c -fsanitize=address -frecord-gcc-switches -ffile-prefix-map=/a=/b -ftime-report foo.c",
        remote(
            cpp=["-fsanitize=address", "-frecord-gcc-switches", "-ffile-prefix-map=/a=/b"],
            remote=[
                "-fsanitize=address",
                "-frecord-gcc-switches",
                "-ffile-prefix-map=/a=/b",
                "-ftime-report",  # remote only: cc1 -E would print a report of its own
            ],
        ),
    ),
    (
        "-c -flto -g -O2 -gdwarf-4 -ggdb foo.c",
        remote(remote=["-flto", "-g", "-O2", "-gdwarf-4", "-ggdb"]),
    ),
    (
        "-c -pthread -fopenmp -ansi -pedantic -trigraphs -w foo.c",
        remote(
            cpp=[
                "-pthread",
                "-fopenmp",
                "-ansi",
                "-pedantic",
                "-trigraphs",
                "-w",
            ]
        ),
    ),
    ("-c -finput-charset=utf-8 foo.c", remote(remote=["-finput-charset=utf-8"])),
    ("-c -fopt-info-vec foo.c", remote(remote=["-fopt-info-vec"])),
    ("-c -target x86_64-linux-gnu foo.c", remote(source="foo.c")),
    ("-c -mllvm -x86-asm-syntax=intel foo.c", local("-mllvm")),
    # link-only options: harmless with -c, kept for the remote run only
    (
        "-c -Xlinker -zfoo foo.c -lm -l pthread -L/lib -L /lib2 -Wl,-O1 -shared -T x.ld -u sym",
        remote(
            source="foo.c",
            cpp=[],
            remote=[
                "-Xlinker",
                "-zfoo",
                "-lm",
                "-l",
                "pthread",
                "-L/lib",
                "-L",
                "/lib2",
                "-Wl,-O1",
                "-shared",
                "-T",
                "x.ld",
                "-u",
                "sym",
            ],
        ),
    ),
    # gcc's long options and their unique abbreviations (tests/test_options.py: as gcc-12 reads
    # them), and the families the server admits
    ("-c -pipe foo.c", remote(cpp=["-pipe"], remote=["-pipe"])),
    ("-c --pipe foo.c", remote(cpp=["--pipe"], remote=["--pipe"])),
    ("-c --imac m.h --include=x.h --include-directory inc foo.c", remote(remote=[])),
    ("-c --define-macro=X --undefine-macro Y --std=c99 foo.c", remote(remote=["--std=c99"])),
    ("-c --lang c foo.txt", remote(lang="c", cpp=["-x", "c"], remote=[])),
    ("--compile --output=x.o foo.c", remote(output="x.o", assembly=False)),
    ("--assem foo.c", remote(output="foo.s", assembly=True)),
    (
        "-c --write-dependencies foo.c",
        remote(cpp=["--write-dependencies", "-MF", "foo.d", "-MQ", "foo.o"], dep_file="foo.d"),
    ),
    ("-c --debug --optimize=2 foo.c", remote(remote=["--debug", "--optimize=2"])),
    ("-c -stdlib=libc++ foo.cc", remote(cpp=["-stdlib=libc++"], remote=[])),
    ("-c -frobnicate -Wnew -mnew foo.c", remote(remote=["-frobnicate", "-Wnew", "-mnew"])),
    ("-c -Qunused-arguments foo.c", remote(remote=["-Qunused-arguments"])),
    ("-c -fexec-charset=UTF8 foo.c", remote(remote=["-fexec-charset=UTF8"])),
    # what stays local, and why
    ("-c --incl=x.h foo.c", local("unknown option --incl=x.h")),
    ("-c --incl x.h foo.c", local("unknown option --incl")),
    ("-c --pref=/tmp foo.c", local("unknown option --pref=/tmp")),
    ("-c --pref /tmp foo.c", local("--pref")),
    ("-c --prefix=/tmp foo.c", local("--prefix=")),
    ("-c --save foo.c", local("--save")),
    ("-c --user foo.c", local("--user")),
    ("-c --preprocess foo.c", local("--preprocess")),
    ("-c --debug=3 foo.c", local("macro debug info")),
    ("-c --for-assembler=-al foo.c", local("--for-assembler")),
    ("-c --plugin=p.so foo.c", local("unknown option --plugin=p.so")),
    ("-c -da foo.c", local("-da")),
    ("-c -dumpdir x foo.c", local("-dumpdir")),
    ("-c -fself-test=/x foo.c", local("-fself-test")),
    ("-c -fcompare-debug foo.c", local("-fcompare-debug")),
    ("-c -fno-plugin foo.c", local("-fno-plugin")),
    ("-c -fno-integrated-as foo.c", local("external assembler")),
    ("-c -finput-charset=../x foo.c", local("-finput-charset")),
    ("-c -finput-charset=latin1 foo.c", local("-finput-charset=latin1 (a conversion")),
    ("-c -fexec-charset=ISO-8859-1 foo.c", local("iconv")),
    ("-c -fwide-exec-charset=UTF-32LE foo.c", local("iconv")),
    ("-c -fbasic-block-sections=list.txt foo.c", local("list file")),
    ("-c -Xlinker @missing.rsp foo.c", local("-Xlinker")),
    ("-c -Qfoo foo.c", local("unknown option -Qfoo")),
    ("foo.c", local("linking")),
    ("foo.c bar.c -o prog", local("linking")),
    ("-c", local("no input file")),
    ("-c -o x.o", local("no input file")),
    ("-c foo.c bar.c", local("more than one input file")),
    ("-c foo.c bar.o", local("more than one input file")),
    ("-E foo.c", local("-E")),
    ("-c -M foo.c", local("-M")),
    ("-c -MM foo.c", local("-MM")),
    ("-c -M -MD foo.c", local("-M")),
    ("-c -MD -MG foo.c", local("-MG")),
    ("-c -MD -MF - foo.c", local("stdout")),
    ("-c -", local("stdin")),
    ("-c -x c -", local("stdin")),
    ("-c foo.c -o -", local("stdout")),
    ("-c -o a.o -o b.o foo.c", local("more than one -o")),
    ("-c foo.c -x c", local("-x after the input")),
    ("-c -x assembler foo.s", local("-x assembler")),
    ("-c -x c-header foo.h", local("-x c-header")),
    ("-c -x objective-c foo.m", local("-x objective-c")),
    ("-c foo.s", local("assembler")),
    ("-c foo.S", local("assembler")),
    ("-c foo.m", local("Objective-C")),
    ("-c foo.mm", local("Objective-C")),
    ("-c foo.h", local("header")),
    ("-c foo.f90", local("not C/C++")),
    ("-c foo.go", local("not C/C++")),
    ("-c .c", local("not C/C++")),
    ("-c -MD foo.i", local("preprocessed")),
    ("-c -march=native foo.c", local("-march=native")),
    ("-c -mtune=native foo.c", local("-mtune=native")),
    ("-c -mcpu=native foo.c", local("-mcpu=native")),
    ("-c -save-temps foo.c", local("-save-temps")),
    ("-c -save-temps=obj foo.c", local("-save-temps=obj")),
    ("-c -fprofile-generate foo.c", local("-fprofile-generate")),
    ("-c -fprofile-use=x.prof foo.c", local("-fprofile-use")),
    ("-c -fprofile-arcs foo.c", local("-fprofile-arcs")),
    ("-c -fprofile-instr-generate foo.c", local("-fprofile-instr-generate")),
    ("-c -fauto-profile=x foo.c", local("-fauto-profile")),
    ("-c -ftest-coverage foo.c", local("-ftest-coverage")),
    ("-c --coverage foo.c", local("--coverage")),
    ("-c -fbranch-probabilities foo.c", local("-fbranch-probabilities")),
    ("-c -fplugin=./p.so foo.c", local("-fplugin")),
    ("-c -fplugin-arg-p-x=1 foo.c", local("-fplugin-arg")),
    ("-c -specs=my.specs foo.c", local("-specs")),
    ("-c -specs my.specs foo.c", local("-specs")),
    ("-c -wrapper gdb,--args foo.c", local("-wrapper")),
    ("-c -B/opt/bin foo.c", local("-B")),
    ("-c -B /opt/bin foo.c", local("-B")),
    ("-c --sysroot=/sr foo.c", local("--sysroot")),
    ("-c --sysroot /sr foo.c", local("--sysroot")),
    ("-c -isysroot /sr foo.c", local("-isysroot")),
    ("-c -iplugindir=/p foo.c", local("-iplugindir")),
    ("-c -Xclang -load -Xclang p.so foo.c", local("-Xclang")),
    ("-c -fdump-tree-all foo.c", local("-fdump-tree-all")),
    ("-c -fstack-usage foo.c", local("-fstack-usage")),
    ("-c -fcallgraph-info=su foo.c", local("-fcallgraph-info")),
    ("-c -fvtable-verify=std -fvtv-debug foo.cc", local("-fvtv-debug")),
    ("-c -fvtable-verify=std -fvtv-counts foo.cc", local("-fvtv-counts")),
    ("-c -aux-info protos.txt foo.c", local("-aux-info")),
    ("-c -fopt-info-vec=vec.txt foo.c", local("-fopt-info-vec=vec.txt")),
    ("-c -fdirectives-only foo.c", local("-fdirectives-only")),
    ("-c -fsyntax-only foo.c", local("-fsyntax-only")),
    ("-c -print-search-dirs foo.c", local("-print-search-dirs")),
    ("-c -dumpspecs foo.c", local("-dumpspecs")),
    ("-c -dumpbase x foo.c", local("-dumpbase")),
    ("-c -v foo.c", local("-v")),
    ("-c -### foo.c", local("-###")),
    ("-c --help foo.c", local("--help")),
    ("-c --version foo.c", local("--version")),
    ("-c -g3 foo.c", local("-g3")),
    ("-c -ggdb3 foo.c", local("-ggdb3")),
    ("-c -gdwarf3 foo.c", local("-gdwarf3")),
    ("-c -gsplit-dwarf foo.c", local("-gsplit-dwarf")),
    ("-c -MJ db.json foo.c", local("-MJ")),
    ("-c -Wa,-adhln=foo.lst foo.c", local("-Wa,")),
    ("-c -Wa,--noexecstack,-al foo.c", local("-Wa,")),  # each one must be allowed
    ("-c -Wa,@opts foo.c", local("-Wa,")),
    ("-c -Xassembler --gdwarf-5 foo.c", local("-Xassembler")),
    ("-c -Xpreprocessor -H foo.c", local("-Xpreprocessor")),
    ("-c -Wp,-H foo.c", local("-Wp,-H")),
    ("-c -H foo.c", local("-H")),
    ("-c -C foo.c", local("-C")),
    ("-c -P foo.c", local("-P")),
    ("-c -undef foo.c", local("-undef")),
    ("-c -dD foo.c", local("-dD")),
    ("-c -dM foo.c", local("-dM")),
    ("-c -emit-llvm foo.c", local("-emit-llvm")),
    ("-c -fmodules-ts foo.cc", local("-fmodules")),
    ("-c -fsanitize-ignorelist=x.txt foo.c", local("-fsanitize-ignorelist")),
    ("-c --frobnicate foo.c", local("unknown option --frobnicate")),
    ("-c -iunknown x foo.c", local("unknown option -iunknown")),
    ("-c foo.c -o", local("missing argument to -o")),
    ("-c foo.c -MF", local("missing argument to -MF")),
]


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[c[0] for c in CASES])
def test_table(argv: str, expected: dict[str, object] | str) -> None:
    # The table is about argument handling; the -g policy has its own tests below.
    job = analyse(shlex.split(argv), "/nonexistent", debug_info_may_differ=True)
    if isinstance(expected, str):
        assert isinstance(job, Local), job
        assert expected in job.reason
    else:
        assert isinstance(job, RemoteJob), job
        assert {k: getattr(job, k) for k in expected} == expected
        assert "-x" not in job.remote_args
        assert job.source not in job.preprocess_args


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 60


def test_result_types() -> None:
    job = analyse(["-c", "foo.c"], "/")
    assert isinstance(job, tuple) and job._fields == RemoteJob._fields
    assert job == RemoteJob("foo.c", "c", False, "foo.o", False, [], [], None)
    assert Local("x").reason == "x"


def test_cxx_driver_makes_c_inputs_cxx() -> None:
    job = analyse(["-c", "foo.c"], "/", compiler="/usr/bin/g++-12")
    assert isinstance(job, RemoteJob) and job.language == "c++"
    job = analyse(["-c", "foo.i"], "/", compiler="clang++-16")
    assert isinstance(job, RemoteJob) and (job.language, job.preprocessed) == ("c++", True)
    job = analyse(["-c", "-x", "c", "foo.c"], "/", compiler="g++")
    assert isinstance(job, Local) and "C++ driver" in job.reason
    job = analyse(["-c", "foo.c"], "/", compiler="gcc-12")
    assert isinstance(job, RemoteJob) and job.language == "c"


def test_wp_md_target_for_clang_only() -> None:
    argv = ["-c", "-Wp,-MD,d.d", "foo.c", "-o", "x.o"]
    gcc = analyse(argv, "/", compiler="gcc-12")
    clang = analyse(argv, "/", compiler="/usr/bin/clang-16")
    assert isinstance(gcc, RemoteJob) and gcc.preprocess_args == ["-Wp,-MD,d.d"]
    assert isinstance(clang, RemoteJob) and clang.preprocess_args == ["-Wp,-MD,d.d", "-MQ", "x.o"]


def test_long_command_lines() -> None:
    # (Speed is for benchmarks; this checks a 150 000-argument line is handled whole.)
    argv = ["-c", "foo.c"] + [f"-DM{i}=1" for i in range(100_000)] + ["-O2"] * 50_000
    job = analyse(argv, "/")
    assert isinstance(job, RemoteJob) and len(job.preprocess_args) == 150_000


def test_import_is_light() -> None:
    code = (
        "import sys; before = set(sys.modules); import jailcc.client.args;"
        " print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    new = set(out.stdout.split())
    heavy = {
        "typing",
        "dataclasses",
        "subprocess",
        "re",
        "json",
        "pathlib",
        "argparse",
        "enum",
        "shlex",
        "tempfile",
        "shutil",
    }
    assert not new & heavy, new & heavy


# ---------------------------------------------------------------------------------------------
# @file expansion


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def test_response_file_nested_and_relative_to_cwd(tmp_path: Path) -> None:
    write(tmp_path / "a.rsp", "-c @sub/b.rsp foo.c\n")
    # nested names are relative to the working directory, as in gcc, not to the outer file
    write(tmp_path / "sub" / "b.rsp", "-O2\n\t-DX  @sub/c.rsp")
    write(tmp_path / "sub" / "c.rsp", "-g")
    assert expand_response_files(["-Wall", "@a.rsp", "-o", "x.o"], str(tmp_path)) == [
        "-Wall", "-c", "-O2", "-DX", "-g", "foo.c", "-o", "x.o",
    ]  # fmt: skip
    # the same file twice, side by side, is no loop
    assert expand_response_files(["@sub/c.rsp", "@sub/c.rsp"], str(tmp_path)) == ["-g", "-g"]


def test_response_file_quotes_and_escapes(tmp_path: Path) -> None:
    text = (
        '\'-DA=single  quoted\' "-DB=double \\"inner\\"" -DC=back\\ slash -DD=\'mi\'"x"ed'
        " '-DE=it\\'s' -DF=\\\\ '' \"\" -DG=a\\\nb -DH=\"un terminated"
    )
    write(tmp_path / "q.rsp", text)
    assert expand_response_files(["@q.rsp"], str(tmp_path)) == [
        "-DA=single  quoted", '-DB=double "inner"', "-DC=back slash", "-DD=mixed", "-DE=it's",
        "-DF=\\", "", "", "-DG=a\nb", "-DH=un terminated",
    ]  # fmt: skip


def test_response_file_whitespace_is_ascii_only(tmp_path: Path) -> None:
    write(tmp_path / "w.rsp", b"-DA=1\x0b-DB=2\x0c-DC=3\r\n-DD=\xc2\xa0x \x1c-DE")
    assert expand_response_files(["@w.rsp"], str(tmp_path)) == [
        "-DA=1", "-DB=2", "-DC=3", "-DD=\xa0x", "\x1c-DE",
    ]  # fmt: skip
    write(tmp_path / "w2.rsp", b"'-DQ=1'\x0b-DB=\xc2\xa0\\x")  # the same through the slow path
    assert expand_response_files(["@w2.rsp"], str(tmp_path)) == ["-DQ=1", "-DB=\xa0x"]


def test_response_file_empty_nul_missing(tmp_path: Path) -> None:
    write(tmp_path / "empty.rsp", " \n\t ")
    write(tmp_path / "nul.rsp", b"-DA -DB\0-DC")
    got = expand_response_files(["@empty.rsp", "@nul.rsp", "@missing.rsp", "@"], str(tmp_path))
    assert got == ["-DA", "-DB", "@missing.rsp", "@"]
    job = analyse(["-c", "foo.c", "@missing.rsp"], str(tmp_path))
    assert isinstance(job, Local) and "more than one input" in job.reason


def test_response_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = str(tmp_path)
    write(tmp_path / "self.rsp", "-c @self.rsp")
    with pytest.raises(ValueError, match="includes itself"):
        expand_response_files(["@self.rsp"], cwd)
    write(tmp_path / "a.rsp", "-c @b.rsp")
    write(tmp_path / "b.rsp", "-O2 @a.rsp")
    with pytest.raises(ValueError, match="loop"):
        expand_response_files(["@a.rsp"], cwd)
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match="directory"):
        expand_response_files(["@dir"], cwd)
    os.mkfifo(tmp_path / "fifo")  # nobody writes: reading it would hang
    with pytest.raises(ValueError, match="not a regular file"):
        expand_response_files(["@fifo"], cwd)
    for i in range(40):
        write(tmp_path / f"n{i}.rsp", f"-DN{i} @n{i + 1}.rsp")
    with pytest.raises(ValueError, match="nested deeper"):
        expand_response_files(["@n0.rsp"], cwd)
    write(tmp_path / "big.rsp", "-DX " * 1000)
    monkeypatch.setattr(argsmod, "MAX_RESPONSE_BYTES", 3000)
    with pytest.raises(ValueError, match="larger than 3000 bytes"):
        expand_response_files(["@big.rsp"], cwd)
    monkeypatch.setattr(argsmod, "MAX_RESPONSE_BYTES", 4000)
    assert len(expand_response_files(["@big.rsp"], cwd)) == 1000
    with pytest.raises(ValueError, match="larger than"):
        expand_response_files(["@big.rsp", "@big.rsp"], cwd)  # the limit is for all files
    # analyse turns the errors into Local, so the compiler reports them itself
    job = analyse(["@a.rsp", "foo.c"], cwd)
    assert isinstance(job, Local) and "loop" in job.reason


def test_analyse_expands_response_files(tmp_path: Path) -> None:
    write(tmp_path / "args.rsp", "-c 'my dir/foo.c' -o \"out dir/foo.o\" -MD")
    job = analyse(["@args.rsp"], str(tmp_path))
    assert isinstance(job, RemoteJob)
    assert (job.source, job.output, job.dep_file) == (
        "my dir/foo.c",
        "out dir/foo.o",
        "out dir/foo.d",
    )


@need(GCC)
def test_response_file_rules_match_gcc(tmp_path: Path) -> None:
    """gcc-12 -### shows the options after its own expansion: the same words as ours."""
    words = {
        "fast.rsp": b"-DA1=plain -DA2=x\x0b-DA3=y\r\n-DA4=\xc2\xa0nbsp @nested.rsp",
        "nested.rsp": b"-DN1=nested",
        "slow.rsp": (
            b'\'-DB1=single  two\' "-DB2=dq \\"in\\"" -DB3=back\\ slash -DB4=\'mi\'"x"ed'
            b" '-DB5=it\\'s' -DB6=tail\\\\ -DB7=\"un terminated"
        ),
    }
    for name, data in words.items():
        write(tmp_path / name, data)
    argv = ["@fast.rsp", "@slow.rsp"]
    ours = [w[2:] for w in expand_response_files(argv, str(tmp_path))]
    out = subprocess.run(
        [GCC, "-###", "-E", *argv, "-x", "c", "/dev/null"],
        cwd=tmp_path, env=ENV, capture_output=True, check=True,
    )  # fmt: skip
    lines = out.stderr.decode("utf-8", "surrogateescape").splitlines()
    # the driver's own options, shell-quoted: "COLLECT_GCC_OPTIONS='-E' '-D' 'A1=plain' ..."
    options = shlex.split(next(line for line in lines if line.startswith("COLLECT_GCC_OPTIONS=")))
    theirs = [options[i + 1] for i, w in enumerate(options) if w == "-D"]
    assert theirs == ours
    assert "B1=single  two" in ours and "A4=\xa0nbsp" in ours


# ---------------------------------------------------------------------------------------------
# Against the real compilers: a local compile versus "preprocess here, compile the .i there"

HEADER = "#define H_VALUE 7\n"
C_DEP_SOURCE = '#include <limits.h>\n#include "inc/h.h"\nint f(void) { return H_VALUE; }\n'
CXX_DEP_SOURCE = (
    '#include <cstddef>\n#include "inc/h.h"\ntemplate <class T> T twice(T t) { return t + t; }\n'
    "std::size_t g() { return twice(H_VALUE); }\n"
)


def make_tree(root: Path, files: dict[str, str]) -> None:
    for d in ("sub", "d ir", "src"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write(root / name, text)


DEP_FILES = {
    "inc/h.h": HEADER,
    "foo.c": C_DEP_SOURCE,
    "a$b.c": C_DEP_SOURCE,
    "src/bar.c": C_DEP_SOURCE,
    "foo.cc": CXX_DEP_SOURCE,
}


def snapshot(root: Path, before: set[str]) -> dict[str, bytes]:
    """Files created since `before` (and removes them, to leave the tree as it was)."""
    new = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_file() and rel not in before:
            new[rel] = path.read_bytes()
            path.unlink()
    return new


def run(cmd: list[str], cwd: Path) -> tuple[int, bytes, bytes]:
    p = subprocess.run(
        cmd, cwd=cwd, env=ENV, stdin=subprocess.DEVNULL, capture_output=True, timeout=120
    )
    return p.returncode, p.stdout, p.stderr


def both_ways(
    tmp_path: Path, compiler: str, argv: list[str], files: dict[str, str], via_stdout: bool = False
) -> tuple[tuple[int, bytes, dict[str, bytes]], tuple[int, bytes, dict[str, bytes]], RemoteJob]:
    """(exit code, stderr, files made) of the local compile and of the remote route."""
    root = tmp_path / "work"
    make_tree(root, files)
    before = {str(p.relative_to(root)) for p in root.rglob("*")}
    code, _, err = run([compiler, *argv], root)
    local_result = (code, err, snapshot(root, before))

    # These sources put no macro or comment before a token on its line (see the -g tests).
    job = analyse(argv, str(root), compiler=compiler, debug_info_may_differ=True)
    assert isinstance(job, RemoteJob), job
    pp_dir = tmp_path / "elsewhere"
    pp_dir.mkdir()
    tmp_i = pp_dir / ("jailcc-123." + ("ii" if job.language == "c++" else "i"))
    if via_stdout:  # as the client does it
        code, out, err = run([compiler, *job.preprocess_args, "-E", job.source], root)
        tmp_i.write_bytes(out)
    else:
        code, _, err = run(
            [compiler, *job.preprocess_args, "-E", "-o", str(tmp_i), job.source], root
        )
    if code == 0:
        mode = "-S" if job.assembly else "-c"
        code, _, err2 = run([compiler, *job.remote_args, mode, str(tmp_i), "-o", job.output], root)
        err += err2
    return local_result, (code, err, snapshot(root, before)), job


DEP_CASES = [
    (GCC, "-c -MD foo.c"),
    (GCC, "-c -MMD foo.c"),
    (GCC, "-c -MD -MF x.d foo.c"),
    (GCC, "-c -MD -MT tgt foo.c -o sub/foo.o"),
    (GCC, "-c -MD -MQ '$tgt' foo.c"),
    (GCC, "-c -MD -MP foo.c -o sub/foo.o"),
    (GCC, "-c -MMD -MP -MF sub/deps.d -MT a -MQ 'b c' foo.c -o sub/foo.o"),
    (GCC, "-S -MD foo.c"),
    (GCC, "-S -MMD foo.c -o sub/foo.s"),
    (GCC, "-c -MD foo.c -o 'd ir/a$b.o'"),
    (GCC, "-c -MD 'a$b.c'"),
    (GCC, "-c -MMD -I. src/bar.c"),
    (GCC, "-c -MD foo.c -o sub/noext"),
    (GCC, "-c -Wp,-MD,sub/wp.d foo.c -o sub/foo.o"),
    (GCC, "-c -Wp,-MMD,sub/wp.d,-MT,tgt foo.c"),
    (GCC, "-c -MD -x c++ foo.c -o sub/foo.o"),
    (GCC, "-c -MD -include inc/h.h -DX=1 -I inc foo.c -o sub/foo.o"),
    (GXX, "-c -MD foo.cc -o sub/foo.o"),
    (GXX, "-c -MMD -MP foo.cc"),
    (GXX, "-c -MD foo.c"),
    (CLANG, "-c -MD foo.c"),
    (CLANG, "-c -MMD -MP -MQ '$tgt' foo.c"),
    (CLANG, "-c -MD foo.c -o 'd ir/a$b.o'"),
    (CLANG, "-S -MD foo.c"),
    (CLANG, "-c -MMD -I . src/bar.c"),
    (CLANG, "-c -Wp,-MD,sub/wp.d foo.c -o sub/foo.o"),
    (CLANG, "-c -MD -lm -L/tmp -Wl,-z,now foo.c"),
    (CLANGXX, "-c -MD foo.cc -o sub/foo.o"),
    (CLANGXX, "-c -MMD foo.c"),
]


@pytest.mark.parametrize(("compiler", "argv"), DEP_CASES, ids=[f"{c} {a}" for c, a in DEP_CASES])
def test_dependency_files_match(tmp_path: Path, compiler: str, argv: str) -> None:
    if shutil.which(compiler, path=ENV["PATH"]) is None:
        pytest.skip(f"{compiler} not installed")
    words = shlex.split(argv)
    (code, err, made), (code2, err2, made2), job = both_ways(tmp_path, compiler, words, DEP_FILES)
    assert code == 0, err
    assert (code2, err2) == (code, err)
    assert made2 == made  # the object (no -g here) and the .d, byte for byte
    deps = [name for name in made if name.endswith(".d")]
    assert len(deps) == 1 and job.dep_file == deps[0]
    if "-MMD" in words or "-MMD" in argv:
        assert b"limits.h" not in made[deps[0]] and b"h.h" in made[deps[0]]


@need(GCC)
def test_dependency_file_via_stdout(tmp_path: Path) -> None:
    """The client preprocesses to stdout, not to -o TMP.i: the .d must not notice."""
    argv = ["-c", "-MMD", "-MP", "foo.c", "-o", "d ir/a$b.o"]
    (code, err, made), (code2, err2, made2), _ = both_ways(
        tmp_path, GCC, argv, DEP_FILES, via_stdout=True
    )
    assert code == code2 == 0 and err == err2 == b""
    assert made2 == made and b"d\\ ir/a$$b.o:" in made["d ir/a$b.d"]


# Realistic sources: no macro and no comment in front of a token on its line (see the known
# limits below), so even -g objects must be byte-identical.
REAL_FILES = {
    "inc/config.h": '#define SCALE 3\n#define LEVEL_NAME "level"\n',
    "inc/shape.h": "struct point {\n    int x;\n    int y;\n};\nint area(struct point p);\n",
    "inc/force.h": "#define EXTRA 1\n",
    "real.c": (
        '#include "config.h"\n#include "shape.h"\n'
        "static int scale(int v)\n{\n    int factor = SCALE;\n    return v * factor;\n}\n"
        "int area(struct point p)\n{\n    int w = scale(p.x);\n    int h = scale(p.y);\n"
        "    return w * h + EXTRA;\n}\nconst char *name = LEVEL_NAME;\n"
        "#ifndef NDEBUG\nint debug_level = LEVEL;\n#endif\n"
    ),
    "real.cc": (
        '#include "config.h"\nnamespace geo {\ntemplate <class T>\nstruct box {\n    T w;\n'
        "    T h;\n    T area() const { return w * h; }\n};\n}\nnamespace {\n"
        "int hidden(int v) { return v + 1; }\n}\nint use(int v)\n{\n"
        "    geo::box<int> b{v, hidden(v)};\n    int scale = SCALE;\n    return b.area() * scale;\n"
        "}\nstruct counter {\n    counter();\n    int n;\n};\ncounter::counter() : n(0) {}\n"
        "static counter global_counter;\n"
    ),
}
REAL_CASES = [
    (GCC, "-c real.c -Iinc -DLEVEL=2 -include inc/force.h -g -O2 -Wall -MD -MP -o sub/real.o"),
    (GCC, "-c real.c -I inc -D LEVEL=1 -include inc/force.h -g -O0 -MMD -MF sub/r.d -MT sub/r.o"),
    (GCC, "-S real.c -Iinc -DNDEBUG -include inc/force.h -O2 -g -fPIC -o sub/real.s"),
    (GCC, "-c real.c -iquote inc -DNDEBUG -include inc/force.h -O2 -std=c11 -pedantic -MD"),
    (GXX, "-c real.cc -Iinc -std=c++17 -g -O2 -fPIC -MD -MQ '$(OBJ)' -o 'd ir/real.o'"),
    (GXX, "-c real.cc -Iinc -std=c++17 -O2 -Wall -Wextra -DNDEBUG -MMD -MP"),
    (GCC, "-c real.c -Iinc -DLEVEL=2 -include inc/force.h -O2 -flto -frandom-seed=r -MD"),
    (GXX, "-c real.cc -Iinc -O2 -g -flto -ffat-lto-objects -frandom-seed=r -o sub/real.o"),
    (GCC, "-c real.c --include-directory=inc -DLEVEL=2 --imac inc/force.h -pipe -O2 --write-dep"),
    # clang: DWARF 4, as DWARF 5 line tables hold MD5s of the sources (see the known limits)
    (CLANG, "-c real.c -Iinc -DLEVEL=2 -include inc/force.h -gdwarf-4 -O2 -MD -o sub/real.o"),
    (CLANGXX, "-c real.cc -Iinc -std=c++17 -gdwarf-4 -O2 -MMD -MP"),
    (CLANGXX, "-c real.cc -Iinc -std=c++17 -O2 -fPIC -MD -o sub/real.o"),
    (CLANG, "-c real.c -Iinc -DLEVEL=2 -include inc/force.h -pipe -O2 -lm -Qunused-arguments"),
]


@pytest.mark.parametrize(("compiler", "argv"), REAL_CASES, ids=[f"{c} {a}" for c, a in REAL_CASES])
def test_realistic_command_lines_are_byte_identical(
    tmp_path: Path, compiler: str, argv: str
) -> None:
    if shutil.which(compiler, path=ENV["PATH"]) is None:
        pytest.skip(f"{compiler} not installed")
    (code, err, made), (code2, err2, made2), job = both_ways(
        tmp_path, compiler, shlex.split(argv), REAL_FILES
    )
    assert code == 0, err
    assert (code2, err2) == (code, err)
    assert sorted(made2) == sorted(made) and job.output in made
    for name in made:
        assert made2[name] == made[name], name


WARN_FILES = {
    "inc/h.h": HEADER,
    "warn.c": (
        '#include "inc/h.h"\n#warning "check this"\nint f(int a)\n{\n    int unused;\n'
        "    return a + H_VALUE;\n}\n"
    ),
}


@pytest.mark.parametrize(("compiler", "source"), [(GCC, "warn.c"), (GXX, "warn.cc")])
def test_stderr_is_cpp_stderr_then_compile_stderr(
    tmp_path: Path, compiler: str, source: str
) -> None:
    if shutil.which(compiler, path=ENV["PATH"]) is None:
        pytest.skip(f"{compiler} not installed")
    files = {**WARN_FILES, source: WARN_FILES["warn.c"]}
    argv = ["-c", "-Wall", source, "-o", "sub/warn.o"]
    (code, err, made), (code2, err2, made2), _ = both_ways(tmp_path, compiler, argv, files)
    assert code == 0 and b"check this" in err and b"unused" in err
    assert b"    2 | #warning" in err  # the caret lines quote warn.c
    assert (code2, err2) == (code, err)
    assert made2 == made


# Known limits of the preprocessed-output model (strict: if they ever pass, the docs change).
# Tree jobs (JAILCC_SHIP=sources) have none of them: tests/test_tree_client.py
# test_known_limits_of_preprocessed_output_do_not_apply runs each through a real server.


@need(GCC)
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="separate cpp moves columns: DW_AT_decl_column differs",
)
def test_known_limit_columns_after_macros(tmp_path: Path) -> None:
    files = {"col.c": "#include <stdbool.h>\nbool ready = true;\nint get(void) { return ready; }\n"}
    (_, _, made), (_, _, made2), _ = both_ways(tmp_path, GCC, ["-c", "-g", "col.c"], files)
    assert made2 == made


@need(GCC)
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="gcc -E ignores #pragma GCC diagnostic for -Wcpp in C",
)
def test_known_limit_pragma_silenced_warning(tmp_path: Path) -> None:
    files = {
        "w.c": '#pragma GCC diagnostic ignored "-Wcpp"\n#warning quiet\nint x;\n',
    }
    (code, err, _), (code2, err2, _), _ = both_ways(tmp_path, GCC, ["-c", "-Werror", "w.c"], files)
    assert (code2, err2) == (code, err)


@need(CLANG)
@pytest.mark.xfail(
    strict=True, raises=AssertionError, reason="clang prints 'N warnings generated.' once per run"
)
def test_known_limit_clang_warning_count(tmp_path: Path) -> None:
    argv = ["-c", "-Wall", "warn.c", "-o", "sub/warn.o"]
    (code, err, _), (code2, err2, _), _ = both_ways(tmp_path, CLANG, argv, WARN_FILES)
    assert b"check this" in err and b"unused" in err
    assert (code2, err2) == (code, err)


@need(CLANG)
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="clang's DWARF 5 line table holds MD5s of the sources",
)
def test_known_limit_clang_dwarf5_checksums(tmp_path: Path) -> None:
    argv = ["-c", "real.c", "-Iinc", "-DLEVEL=2", "-include", "inc/force.h", "-g", "-O2"]
    (_, _, made), (_, _, made2), _ = both_ways(tmp_path, CLANG, argv, REAL_FILES)
    assert made2 == made


@need(GCC)
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="gcc warns once per cc1 run")
def test_known_limit_option_warning_twice(tmp_path: Path) -> None:
    argv = ["-c", "-std=c++17", "foo.c"]
    (code, err, _), (code2, err2, _), _ = both_ways(tmp_path, GCC, argv, DEP_FILES)
    assert b"valid for C++" in err
    assert (code2, err2) == (code, err)


COLUMN_FILES = {
    "col.c": (
        "#include <stdbool.h>\n#define SQ(x) ((x) * (x))\nbool ready = true;\n"
        "int get(int a) { int unused; switch (a) { case 1: a = SQ(a); /* fallthrough */\n"
        "  case 2: return a + ready; default: return 0; } }\n"
    ),
}


@need(GCC)
def test_directives_only_alternative(tmp_path: Path) -> None:
    """What -fdirectives-only in both runs would give for the column problems above: the same
    stderr (columns, no spurious fallthrough warning) and objects that differ only in the
    DW_AT_producer string, which records -fdirectives-only.  Evidence for DESIGN decisions."""
    if shutil.which("readelf", path=ENV["PATH"]) is None:
        pytest.skip("readelf not installed")
    root = tmp_path / "w"
    make_tree(root, COLUMN_FILES)
    flags = ["-g", "-O2", "-Wall", "-Wextra"]
    code, _, err = run([GCC, *flags, "-c", "col.c", "-o", "local.o"], root)
    assert code == 0 and b"unused" in err
    code, out, err1 = run([GCC, *flags, "-fdirectives-only", "-E", "col.c"], root)
    (tmp_path / "x.i").write_bytes(out)
    code2, _, err2 = run([GCC, *flags, "-fdirectives-only", "-c", str(tmp_path / "x.i")], root)
    assert code == code2 == 0 and err1 + err2 == err
    # plain -E: other columns and a fallthrough warning the local compile does not give
    code, out, err1 = run([GCC, *flags, "-E", "col.c"], root)
    (tmp_path / "y.i").write_bytes(out)
    _, _, err2 = run([GCC, *flags, "-c", str(tmp_path / "y.i"), "-o", "plain.o"], root)
    assert b"fall through" in err2 and err1 + err2 != err

    def dwarf(obj: str) -> list[str]:
        text = run(["readelf", "--debug-dump=info", obj], root)[1].decode()
        return [re.sub(r"offset: 0x[0-9a-f]+", "", line) for line in text.splitlines()[2:]]

    local_info, remote_info = dwarf("local.o"), dwarf("x.o")
    differing = [(a, b) for a, b in zip(local_info, remote_info, strict=True) if a != b]
    assert len(differing) == 1 and "DW_AT_producer" in differing[0][0]
    assert dwarf("plain.o") != local_info  # columns


# -g: separate preprocessing moves tokens to other columns (after a macro or a comment on their
# line) and other lines (the arguments of a macro call spanning lines), and debug info records
# both. So -g jobs stay local.
MACRO_SOURCE = b"""#include <stdbool.h>
#define TWICE(x) ((x) * 2)
#define ADD(a, b) ((a) + (b))
/* c */ static int f(int a) { bool b = a > 1; return TWICE(a) + b; }
int g(int a) {
  int r = ADD(f(a),
              f(a + 1));
  return r + TWICE(a);
}
"""


@pytest.mark.parametrize(
    "flags", [["-g"], ["-O2", "-ggdb"], ["-gdwarf-4", "-O1"], ["-g", "-gno-column-info"]]
)
def test_debug_info_stays_local(flags: list[str]) -> None:
    job = analyse(["-c", "m.c", *flags], "/")
    assert isinstance(job, Local) and "debug info" in job.reason
    assert isinstance(analyse(["-c", "m.c", *flags, "-g0"], "/"), RemoteJob)
    assert isinstance(analyse(["-c", "m.c", *flags], "/", debug_info_may_differ=True), RemoteJob)


@pytest.mark.parametrize("compiler", ["gcc-12", "g++-12"])
@pytest.mark.parametrize(
    ("flags", "identical"),
    # (-g -gno-column-info still differs in real code: zlib's gzlib.c moves in the line table.)
    [(["-O2"], True), (["-O2", "-g"], False)],
)
def test_why_debug_info_stays_local(compiler, flags, identical, tmp_path) -> None:
    (tmp_path / "m.c").write_bytes(MACRO_SOURCE)
    lang = ["-x", "c++"] if compiler == "g++-12" else []
    subprocess.run(
        [compiler, *lang, *flags, "-c", "m.c", "-o", "local.o"], cwd=tmp_path, check=True
    )
    pre = subprocess.run(
        [compiler, *lang, *flags, "-E", "m.c"], cwd=tmp_path, check=True, capture_output=True
    ).stdout
    name = "m.ii" if compiler == "g++-12" else "m.i"
    (tmp_path / name).write_bytes(pre)
    subprocess.run([compiler, *flags, "-c", name, "-o", "remote.o"], cwd=tmp_path, check=True)
    same = (tmp_path / "remote.o").read_bytes() == (tmp_path / "local.o").read_bytes()
    assert same is identical


@pytest.mark.parametrize(
    ("compiler", "words"),
    [
        ("gcc-12", ["-g"]),  # line and column numbers after a separate preprocessor
        ("gcc-12", ["-g3"]),  # macro definitions: a separate preprocessor loses them
        ("gcc-12", ["-ggdb3"]),
        ("clang-16", ["-g"]),  # DWARF 5 source checksums
        ("clang-16", ["-gdwarf-4", "-g3"]),
    ],
)
def test_debug_info_only_sources_can_give_goes_as_sources_only(compiler, words):
    args = [*words, "-c", "x.c", "-o", "x.o"]
    assert isinstance(argsmod.analyse(args, "/tmp", compiler=compiler), argsmod.Local)
    job = argsmod.analyse(args, "/tmp", compiler=compiler, sources=True)
    assert not isinstance(job, argsmod.Local) and job.sources_only, job
    plain = argsmod.analyse(
        ["-O2", "-c", "x.c", "-o", "x.o"], "/tmp", compiler=compiler, sources=True
    )
    assert not isinstance(plain, argsmod.Local) and not plain.sources_only
