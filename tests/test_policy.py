"""The compiler policy: the argument allowlist against hostile spellings, and the
exact-debug-info transplant, on real gcc output and on forgeries."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from jailcc.client.args import Local, analyse
from jailcc.jobs.compiler_policy import (
    PolicyError,
    TransplantError,
    check_args,
    transplant_debug_strings,
)

SOURCE = b"""#include <stdio.h>
#define TWICE(x) ((x) * 2)
/* c */ static int f(int a) { return TWICE(a); }
int main(void) { printf("%d\\n", f(
    3)); return 0; }
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("policy")
    (tmp / "m.c").write_bytes(SOURCE)
    flags = ["-g", "-O2"]

    def gcc(*args: str) -> None:
        subprocess.run(["gcc-12", *flags, *args], cwd=tmp, check=True, capture_output=True)

    gcc("-S", "m.c", "-o", "local.s")
    gcc("-E", "-fdirectives-only", "m.c", "-o", "m.i")
    gcc("-fdirectives-only", "-S", "m.i", "-o", "a.s")
    gcc("-nostdinc", "-x", "c", "-S", "m.i", "-o", "b.s")
    return {n: (tmp / f"{n}.s").read_text() for n in ("local", "a", "b")}


def test_the_transplant_gives_the_local_assembly(compiled: dict[str, str]) -> None:
    assert compiled["a"] != compiled["local"]  # the producer records -fdirectives-only
    assert transplant_debug_strings(compiled["a"], compiled["b"]) == compiled["local"]


def test_a_second_differing_string_is_refused(compiled: dict[str, str]) -> None:
    forged = compiled["b"].replace('.string\t"main"', '.string\t"evil"', 1)
    assert forged != compiled["b"]
    with pytest.raises(TransplantError, match="2 debug strings differ"):
        transplant_debug_strings(compiled["a"], forged)


def test_a_producer_differing_otherwise_is_refused(compiled: dict[str, str]) -> None:
    forged = compiled["b"].replace(" -O2", " -O3", 1)
    with pytest.raises(TransplantError, match="more than -fdirectives-only"):
        transplant_debug_strings(compiled["a"], forged)


def test_missing_or_relabelled_strings_are_refused(compiled: dict[str, str]) -> None:
    with pytest.raises(TransplantError, match=r"exactly one \.debug_str"):
        transplant_debug_strings(compiled["a"], "\t.text\n")
    label = re.search(r"^(\.LASF\d+):$", compiled["b"], re.M).group(1)
    relabelled = compiled["b"].replace(f"{label}:", ".LASF99999:", 1)
    assert relabelled != compiled["b"]
    with pytest.raises(TransplantError, match="label"):
        transplant_debug_strings(compiled["a"], relabelled)


# ---------------------------------------------------------------------------------------------
# The argument allowlist.  Each spelling below is one a hostile client used against the
# denylist this allowlist replaced; each of them (in this form, with a value that looks like an
# option, or as the last argument, where the value is the -c the server appends) passed it.
# gcc-12 -### shows that the driver really takes each one.

HOSTILE = [
    # gcc's -B: an uploaded specs file made gcc run an uploaded program
    ["--prefix=/tmp/evil/"], ["--prefix", "-evil/"], ["--pref", "-evil/"], ["--prefix"],
    ["-B-evil/"], ["-B", "-evil/"],
    # reads other files than the input
    ["--include=x.h"], ["--include", "-x.h"], ["--imacros=x.h"], ["--imac", "-x.h"],
    ["--include-directory=/x"], ["--include-directory", "-x"], ["--include-prefix=/x"],
    ["--include-pre", "-x"], ["--include-with-prefix=/x"], ["--include-with-prefix-before=/x"],
    ["-iwithprefix/x"], ["-iwithprefix", "-x"], ["-iwithprefixbefore/x"],
    ["-include", "-x.h"], ["-imacros-x.h"], ["-I/x"], ["-isystem/x"],
    # the language is the server's to choose
    ["-xassembler"], ["-xc"], ["-x", "c"], ["--language=c"], ["--language", "c"],
    ["--lang", "assembler"], ["-x"],
    # options passed on unchecked
    ["--for-assembler=-adhln=x.lst"], ["--for-assembler", "-al"], ["--for-a", "-al"],
    ["-Wa,-adhln=x.lst"], ["-Xassembler", "-al"],
    # other files written
    ["--save-temps"], ["--save"], ["-save-temps=obj"], ["--write-dependencies"],
    ["--write-user-dependencies"], ["--user-dependencies"], ["--user"], ["-MD"],
    ["-da"], ["-dD"], ["--dump=a"], ["--dump", "a"], ["-fopt-info-all=f.txt"],
    ["-fopt-info-vec-optimized=f.txt"], ["-fdump-tree-all"], ["--plugin=x.so"],
    ["--profile-generate"],
    # other programs, or cc1 run twice
    ["-fcompare-debug"], ["-fcompare-debug=-O1"], ["-fcompare-debug-second"],
    ["-fself-test=/x"], ["-no-integrated-cpp"], ["--no-integrated-cpp"], ["--no-integ"],
    # not a compile
    ["--preprocess"], ["--prep"], ["--assemble"], ["--assem"], ["-E"],
    # swallow the -c the server appends: the job becomes a link
    ["-dumpdir"], ["-dumpdir", "x"], ["-dumpbase"], ["-dumpbase", "x"], ["--dumpdir", "x"],
    ["--dumpbase", "x"], ["-dumpbase-ext"], ["-Xlinker"], ["-o"], ["-l"], ["--param"],
    # this server's CPU, not the client's
    ["-march=native"], ["-mtune=native"], ["-mcpu=native"],
]  # fmt: skip


@pytest.mark.parametrize("words", HOSTILE, ids=[" ".join(w) for w in HOSTILE])
def test_hostile_spellings_are_refused(words: list[str], tmp_path) -> None:
    with pytest.raises(PolicyError, match=re.escape(words[0])):
        check_args(["-O2", *words])
    # ... and the client never sends them: it compiles locally or keeps them to its cpp run
    job = analyse(["-c", "foo.c", *words], "/")
    assert isinstance(job, Local) or words[0] not in job.remote_args
    if words == [words[0]] and words[0] in (
        "-dumpdir",
        "-dumpbase",
        "-dumpbase-ext",
        "-Xlinker",
        "-o",
        "-l",
        "--param",
        "--prefix",
        "-x",
    ):
        return  # (the -c swallowed: gcc -### shows a link, or an error)
    if shutil.which("gcc-12") is None:
        pytest.skip("gcc-12 not installed")
    (tmp_path / "x.c").write_text("int x;\n")
    (tmp_path / "x.h").write_text("\n")
    run = subprocess.run(
        ["gcc-12", "-###", *words, "-c", "x.c"], cwd=tmp_path, capture_output=True, timeout=60
    )
    assert b"unrecognized command-line option" not in run.stderr, run.stderr[-300:]


@pytest.mark.parametrize("word", ["--incl=x.h", "--pref=/tmp", "--incl", "--include-d"])
def test_abbreviations_gcc_refuses_are_refused(word: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(word)):
        check_args([word])


REAL_BUILD = """
-O2 -g -pipe -Wall -Wextra -Werror=format-security -fPIC -fstack-protector-strong
-ffile-prefix-map=/b=. -std=gnu11 -march=x86-64-v2 -pthread -lm -L/x -Wl,-O1 -Xlinker -zdefs
-finput-charset=UTF-8 -fdiagnostics-color=always --param=ssp-buffer-size=4
--param ggc-min-expand=1 -target x86_64-linux-gnu
"""


def test_the_server_admits_what_real_builds_send() -> None:
    args = REAL_BUILD.split()
    assert check_args(args) == args
    # a family's unknown members pass (cc1 itself refuses what it does not know)
    assert check_args(["-frobnicate-x", "-Wnew-warning", "-mnew-isa"])
    # the assembler options CMake and Debian pass, which write no file
    assert check_args(["-Wa,--noexecstack", "--for-assembler=--gdwarf-5"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-O2", "x.c"], "unexpected file argument 'x.c'"),
        (["@args.rsp"], "response files"),
        (["-Xlinker", "@args.rsp"], "response files"),
        (["-Xlinker"], "missing argument to -Xlinker"),
        (["--pref", "/tmp"], r"--pref /tmp \(that is -B\)"),
        (["-finput-charset=../../evil"], "-finput-charset"),
        ([1], "list of strings"),
    ],
)
def test_refusals_name_the_option(args: list, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        check_args(args)


@pytest.mark.parametrize(
    "words",
    [
        ["-fopt-info-all=/etc/x"],
        ["-fdump-final-insns=/etc/x"],
        ["-dumpdir", "/etc/"],
        ["-dumpbase", "/etc/x"],
        ["-fprofile-dir=/etc"],
        ["-fdump-tree-all"],
        ["-save-temps"],
        ["-march=native"],
        ["-finput-charset=latin1"],
    ],
)
def test_a_tree_job_carries_only_what_a_client_ships(words: list[str]) -> None:
    """A tree job runs the user's command line in the jail; options that write or read files
    of their own choosing (beyond -o and the dependency file) or probe the server are never
    shipped by a client, and refused from one that tries."""
    from jailcc.jobs.compiler_policy import check_tree_args

    files = {"/p/m.c"}
    assert check_tree_args(["-c", "m.c", "-o", "m.o"], "/p", "/p", files).input == "m.c"
    with pytest.raises(PolicyError, match="not allowed in a tree job"):
        check_tree_args([*words, "-c", "m.c", "-o", "m.o"], "/p", "/p", files)
    # Macro debug info is what a tree job alone gives exactly: admitted.
    check_tree_args(["-g3", "-c", "m.c", "-o", "m.o"], "/p", "/p", files)
