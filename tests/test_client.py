"""`jailcc` end to end: a real jailccd, real gcc, results identical to local compiles, and a
local compile whenever the remote side cannot be trusted."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from jailcc import protocol as proto
from serverutil import Server, start_server, stop_server

pytestmark = requires_root
JAILCC = str(BIN / "jailcc")

C_SOURCE = b"""#include <stdio.h>
#include "local.h"
#define SQUARE(x) ((x) * (x))
/* a comment before code */ int area(int side) { return SQUARE(side) + LOCAL_OFFSET; }
int main(void) { printf("%d %s\\n", area(3), __FILE__); return 0; }
"""
HEADER = b"#define LOCAL_OFFSET 1\n"
WARN_HEADER = b"static inline int helper(int x) {\n  int unused;\n  return x;\n}\n"
CXX_SOURCE = b"""#include <map>
#include <string>
std::map<std::string, int> table() { return {{"one", 1}, {"two", 2}}; }
"""
WARNING_SOURCE = b"int f(int x) {\n  int unused;\n  return x;\n}\n"
ERROR_SOURCE = b"int f(void) {\n  return y;\n}\n"


@pytest.fixture(scope="module")
def server(gcc_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("client-server"), gcc_image, "--allow-user", "root")
    yield srv
    stop_server(srv)


def env_for(server: Server | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ, JAILCC_VERBOSE="1", LC_ALL="C")
    env["JAILCC_HOSTS"] = f"unix:{server.socket_path}" if server else "unix:/nonexistent.sock"
    env.update(extra)
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None):
    return subprocess.run(argv, cwd=cwd, env=env or env_for(None), capture_output=True)


def tree(tmp: Path) -> Path:
    (tmp / "src").mkdir(parents=True)
    (tmp / "src" / "main.c").write_bytes(C_SOURCE)
    (tmp / "src" / "local.h").write_bytes(HEADER)
    (tmp / "src" / "table.cc").write_bytes(CXX_SOURCE)
    (tmp / "src" / "warn.c").write_bytes(WARNING_SOURCE)
    (tmp / "src" / "bad.c").write_bytes(ERROR_SOURCE)
    (tmp / "src" / "warn.h").write_bytes(WARN_HEADER)
    (tmp / "src" / "uses_header.c").write_bytes(b'#include "warn.h"\nint g(void) { return 1; }\n')
    (tmp / "obj").mkdir()
    return tmp


def where(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode().splitlines() if ln.startswith("jailcc: ")]
    return lines[-1] if lines else ""


@pytest.mark.parametrize(
    ("compiler", "args", "outputs"),
    [
        ("gcc-12", ["-O2", "-Wall", "-c", "src/main.c", "-o", "obj/main.o"], ["obj/main.o"]),
        (
            "gcc-12",
            ["-O2", "-MD", "-c", "src/main.c", "-o", "obj/main.o"],
            ["obj/main.o", "obj/main.d"],
        ),
        (
            "gcc-12",
            ["-O1", "-MMD", "-MP", "-MF", "obj/deps.d", "-c", "src/main.c", "-o", "obj/m.o"],
            ["obj/m.o", "obj/deps.d"],
        ),
        ("gcc-12", ["-O2", "-S", "src/main.c", "-o", "obj/main.s"], ["obj/main.s"]),
        (
            "gcc-12",
            ["-g", "-O2", "-g0", "-c", "src/main.c", "-o", "obj/g.o"],
            ["obj/g.o"],
        ),
        (
            "g++-12",
            ["-std=c++17", "-O2", "-MD", "-c", "src/table.cc", "-o", "obj/t.o"],
            ["obj/t.o", "obj/t.d"],
        ),
        ("g++-12", ["-O1", "-c", "src/table.cc"], ["table.o"]),
        # -g: gcc's exact-debug-info mode (directives-only preprocessing, see compiler_policy)
        (
            "gcc-12",
            ["-g", "-O2", "-MD", "-c", "src/main.c", "-o", "obj/g.o"],
            ["obj/g.o", "obj/g.d"],
        ),
        ("gcc-12", ["-ggdb", "-O1", "-S", "src/main.c", "-o", "obj/g.s"], ["obj/g.s"]),
        ("g++-12", ["-g", "-O2", "-std=c++17", "-c", "src/table.cc", "-o", "obj/t.o"], ["obj/t.o"]),
    ],
)
def test_remote_results_are_byte_identical_to_local(server, tmp_path, compiler, args, outputs):
    local = tree(tmp_path / "local")
    remote = tree(tmp_path / "remote")
    # The same absolute path for both builds: debug info and dependency files name it.
    same = tmp_path / "build"
    local.rename(same)
    lres = run([compiler, *args], same)
    assert lres.returncode == 0, lres.stderr
    expected = {o: (same / o).read_bytes() for o in outputs}
    shutil.rmtree(same)
    remote.rename(same)
    rres = run([JAILCC, compiler, *args], same, env_for(server))
    assert rres.returncode == 0, rres.stderr
    assert "remote on unix:" in where(rres.stderr), rres.stderr
    for name, data in expected.items():
        assert (same / name).read_bytes() == data, name
    assert rres.stdout == lres.stdout


# (xx_YY.UTF-8: no such locale here, so gcc's setlocale fails and it quotes as in "C")
@pytest.mark.parametrize("locale", ["C", "C.UTF-8", "xx_YY.UTF-8"])
@pytest.mark.parametrize(("source", "code"), [("warn.c", 0), ("bad.c", 1), ("uses_header.c", 0)])
def test_diagnostics_and_status_are_those_of_a_local_compile(
    server, tmp_path, source, code, locale
):
    work = tree(tmp_path)
    args = ["-Wall", "-c", f"src/{source}", "-o", "obj/x.o"]
    lres = run(["gcc-12", *args], work, env_for(None, LC_ALL=locale))
    rres = run([JAILCC, "gcc-12", *args], work, env_for(server, LC_ALL=locale))
    assert rres.returncode == lres.returncode == code
    ours = b"".join(ln + b"\n" for ln in rres.stderr.splitlines() if not ln.startswith(b"jailcc:"))
    assert ours == lres.stderr  # carets and all: the source went along for the diagnostics
    if source == "uses_header.c":
        # The warning is in a header the server did not have: compiled locally for the text.
        assert "diagnostics point into files the server did not have" in where(rres.stderr)
    else:
        assert "remote on unix:" in where(rres.stderr)  # a compile error is not redone locally


@pytest.mark.parametrize(
    "flags",
    [
        ["-c", "-frecord-gcc-switches", "-o", "obj/x.o"],
        ["-S", "-fverbose-asm", "-o", "obj/x.s"],
        ["-S", "-dA", "-o", "obj/x.s"],
    ],
)
def test_outputs_that_record_the_options_are_as_local(server, tmp_path, flags):
    """gcc's exact -g mode preprocesses with -fdirectives-only and the server compiles with
    it too; DW_AT_producer is mended, but .GCC.command.line and the assembly's comments list
    every option cc1 ran with: those jobs compile here."""
    work = tree(tmp_path)
    args = ["-g", "-O2", "src/main.c", *flags]
    assert run(["gcc-12", *args], work).returncode == 0
    local = (work / flags[-1]).read_bytes()
    rres = run([JAILCC, "gcc-12", *args], work, env_for(server))
    assert rres.returncode == 0, rres.stderr
    assert (work / flags[-1]).read_bytes() == local, where(rres.stderr)


@pytest.mark.parametrize("strict", [["-Werror"], ["-pedantic-errors"], ["-Wall", "-Werror"]])
def test_exact_debug_info_with_warnings_as_errors_goes_remote(server, tmp_path, strict):
    """gcc -g's exact mode compiles twice on the server; the second compile's diagnostics are
    its own (builtins redefined), and with -Werror or -pedantic-errors they failed it, so
    every such job compiled on the server and then again here."""
    work = tree(tmp_path)
    args = ["-g", "-O2", *strict, "-c", "src/main.c", "-o", "obj/x.o"]
    lres = run(["gcc-12", *args], work)
    assert lres.returncode == 0, lres.stderr
    local = (work / "obj" / "x.o").read_bytes()
    rres = run([JAILCC, "gcc-12", *args], work, env_for(server))
    assert rres.returncode == 0 and "remote on unix:" in where(rres.stderr), rres.stderr
    assert (work / "obj" / "x.o").read_bytes() == local


@pytest.mark.parametrize(
    ("name", "source", "flags"),
    [
        # Left out by gcc -E -fdirectives-only: the loop would run serially...
        ("omp.c", "void f(int *a, int n) {\n#pragma omp parallel for\n"
         "  for (int i = 0; i < n; i++) a[i] = i * 2;\n}\n", ["-fopenmp"]),
        # ...the object would call oldname...
        ("rename.c", "#pragma redefine_extname oldname newname\nextern int oldname(void);\n"
         "int g(void) { return oldname(); }\n", []),
        # ...A would be #undef'd, not 1 again...
        ("macro.c", "#define A 1\nint A2 = 2;\n#pragma push_macro(\"A\")\n#undef A\n"
         "#define A 2\n#pragma pop_macro(\"A\")\nint a = A;\n", []),
        ("hdr.c", '#include "src/omp.h"\nint h(int *a) { f(a, 4); return a[0]; }\n', ["-fopenmp"]),
        # ...in a file with #line directives, looked for in it (lines cannot be placed)...
        ("lined.c", "#line 7\nint f(int *a) {\n#pragma omp parallel for\n"
         "  for (int i = 0; i < 4; i++) a[i] = i;\n  return 0;\n}\n", ["-fopenmp"]),
        # ...and a pragma respelled on the last line moves the static initializer's column.
        ("init.cc", "#include <string>\nstd::string s(\"hello\");\n"
         "#    pragma GCC diagnostic push\n#    pragma GCC diagnostic pop\n", []),
    ],
)  # fmt: skip
def test_pragmas_the_exact_debug_mode_would_lose_compile_locally(
    server, tmp_path, name, source, flags
):
    """gcc -g's exact mode ships gcc -E -fdirectives-only output, in which the preprocessor
    has run some pragmas itself and left nothing: the compile would differ (exit 0, another
    object). Such jobs compile locally; a -g job without them still goes remote."""
    work = tree(tmp_path)
    (work / "src" / "omp.h").write_text(
        "static void f(int *a, int n) {\n#pragma omp parallel for\n"
        "  for (int i = 0; i < n; i++) a[i] = i;\n}\n"
    )
    (work / name).write_text(source)
    compiler = "g++-12" if name.endswith(".cc") else "gcc-12"
    args = ["-g", "-O2", *flags, "-c", name, "-o", "obj/x.o"]
    assert run([compiler, *args], work).returncode == 0
    local = (work / "obj" / "x.o").read_bytes()
    env = env_for(server, JAILCC_SHIP="preprocessed")
    rres = run([JAILCC, compiler, *args], work, env)
    assert rres.returncode == 0, rres.stderr
    assert "which gcc's exact -g mode cannot keep" in where(rres.stderr), rres.stderr
    assert (work / "obj" / "x.o").read_bytes() == local
    # Such pragmas where the preprocessor skips them do not count (zlib's inffast.c).
    (work / "off.c").write_text(
        '#ifdef NOT_HERE\n#  pragma message("no")\n#pragma omp parallel for\n#endif\n'
        "int g(int a) { return a; }\n"
    )
    # Nor do lines it cannot place: bison's #line, a byte-order mark, a line past 4 KiB.
    (work / "gen.c").write_text('#line 10 "gen.y"\nint g2;\n#line 4 "gen.c"\nint g3;\n')
    (work / "bom.c").write_bytes(b"\xef\xbb\xbfint bom;\n")
    (work / "long.c").write_text("int t[] = {" + ",".join(["1"] * 3000) + "};\nint after;\n")
    for source in ("src/main.c", "off.c", "gen.c", "bom.c", "long.c"):
        plain = run([JAILCC, "gcc-12", "-g", "-O2", "-c", source, "-o", "obj/m.o"], work, env)
        assert "remote on unix:" in where(plain.stderr), plain.stderr


@pytest.mark.parametrize("source", ["src/ctor.cc", "ctor.cc", "{work}/src/ctor.cc"])
def test_exact_debug_info_of_a_static_initializer_under_fpic(server, tmp_path, source):
    """g++ -fPIC names a translation unit's static initializer after its main file
    (_GLOBAL__sub_I_...): the server's second compile must read a file of that name, as the
    preprocessed input's first line marker gives it (relative, or absolute in the tree)."""
    work = tree(tmp_path)
    (work / "src" / "ctor.cc").write_bytes(
        b"struct S { S(); };\nstatic S s;\nint f() { return 2; }\n"
    )
    (work / "ctor.cc").write_bytes((work / "src" / "ctor.cc").read_bytes())
    args = ["-g", "-O2", "-fPIC", "-c", source.format(work=work), "-o", "obj/x.o"]
    assert run(["g++-12", *args], work).returncode == 0
    local = (work / "obj" / "x.o").read_bytes()
    rres = run([JAILCC, "g++-12", *args], work, env_for(server))
    assert rres.returncode == 0 and "remote on unix:" in where(rres.stderr), rres.stderr
    assert (work / "obj" / "x.o").read_bytes() == local


@pytest.mark.parametrize(
    ("cwd", "args"),
    [
        ("obj", ["-Wall", "-c", "../src/warn.c", "-o", "x.o"]),  # a source the server lacks
        ("obj", ["-Wall", "-c", "../src/bad.c", "-o", "x.o"]),
        (".", ["-Wall", "-fno-show-column", "-c", "src/uses_header.c", "-o", "obj/x.o"]),
    ],
)
def test_diagnostics_quote_lines_the_server_did_not_have(server, tmp_path, cwd, args):
    """A diagnostic quotes its line when the compiler can read the file: where the server
    lacked it (a source outside the working directory, a header), the local compile's text
    is the one to give, also when the diagnostic names no column (-fno-show-column)."""
    work = tree(tmp_path)
    lres = run(["gcc-12", *args], work / cwd, env_for(None))
    rres = run([JAILCC, "gcc-12", *args], work / cwd, env_for(server))
    assert rres.returncode == lres.returncode
    assert b"    |" in lres.stderr  # a quoted line
    ours = b"".join(ln + b"\n" for ln in rres.stderr.splitlines() if not ln.startswith(b"jailcc:"))
    assert ours == lres.stderr, rres.stderr


@pytest.mark.parametrize(
    ("env", "remote"),
    [
        ({"LANG": "de_DE.UTF-8"}, False),  # gcc-12-locales has German: local, translated
        ({"LANG": "de_DE.UTF-8", "LANGUAGE": "fr:de"}, False),
        ({"LANG": "de_DE.UTF-8", "LANGUAGE": "en"}, True),  # English asked for
        ({"LC_ALL": "C", "LANGUAGE": "de"}, True),  # gettext ignores LANGUAGE in "C"
        ({"LC_ALL": "C.UTF-8", "LANGUAGE": "de"}, False),  # but not in C.UTF-8
        ({"LANG": "de_DE.UTF-8", "LC_MESSAGES": "C"}, True),  # German text, English messages
        ({"LANG": "xx_YY.UTF-8"}, True),  # no such locale here
    ],
)
def test_translated_diagnostics_are_the_local_compilers(server, tmp_path, env, remote):
    """gcc prints its diagnostics in the user's language when it has a catalog for it; the
    servers print English, so those jobs compile here. Quotes follow the character set of the
    locale, when it loads."""
    if "de_DE.utf8" not in subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout:
        pytest.skip("no de_DE.UTF-8 locale (scripts/setup makes it)")
    if not list(Path("/usr/share/locale/de/LC_MESSAGES").glob("gcc*.mo")):
        pytest.skip("gcc-12-locales is not installed (scripts/setup installs it)")
    work = tree(tmp_path)
    args = ["-Wall", "-c", "src/warn.c", "-o", "obj/x.o"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    local = subprocess.run(["gcc-12", *args], cwd=work, env={**clean, **env}, capture_output=True)
    mine = env_for(server)
    mine = {**{k: v for k, v in mine.items() if not k.startswith(("LC_", "LANG"))}, **env}
    rres = run([JAILCC, "gcc-12", *args], work, mine)
    ours = b"".join(ln + b"\n" for ln in rres.stderr.splitlines() if not ln.startswith(b"jailcc:"))
    assert (rres.returncode, ours) == (local.returncode, local.stderr), rres.stderr
    assert ("remote on unix:" in where(rres.stderr)) == remote, rres.stderr
    if not remote:
        assert "translated" in where(rres.stderr)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["src/main.c", "-o", "prog"], "linking"),
        (["-E", "src/main.c"], "-E"),
        (["-march=native", "-c", "src/main.c", "-o", "obj/x.o"], "-march=native"),
        (["-g3", "-c", "src/main.c", "-o", "obj/x.o"], "macro debug info"),
        (["-c", "src/main.c", "src/warn.c"], "more than one input"),
    ],
)
def test_jobs_that_must_stay_local_do(server, tmp_path, args, reason):
    # Preprocessed jobs' rules: shipped as sources, -g3 may go (tests/test_tree_client.py).
    work = tree(tmp_path)
    lres = run(["gcc-12", *args], work)
    rres = run([JAILCC, "gcc-12", *args], work, env_for(server, JAILCC_SHIP="preprocessed"))
    assert rres.returncode == lres.returncode
    assert "local (" in where(rres.stderr) and reason in where(rres.stderr)


def test_jailcc_log_takes_the_verbose_lines_off_stderr(server, tmp_path):
    """configure scripts check that a compile prints nothing (libtool's "-c -o" and PIC
    tests): JAILCC_LOG takes jailcc's lines to a file, stderr stays the compiler's."""
    work = tree(tmp_path)
    args = ["-O2", "-c", "src/main.c", "-o", "obj/main.o"]
    env = env_for(server, JAILCC_LOG="jailcc.log")
    del env["JAILCC_VERBOSE"]
    for command in ([JAILCC, "gcc-12", *args], [JAILCC, "gcc-12", "-E", "src/main.c"]):
        done = run(command, work, env)
        assert done.returncode == 0 and done.stderr == b"", done.stderr
    logged = (work / "jailcc.log").read_text().splitlines()
    assert len(logged) == 2, logged
    assert "src/main.c: remote on unix:" in logged[0] and "local (-E" in logged[1], logged
    # What is said even without JAILCC_VERBOSE (no server reached, a mistake in the hosts)
    # goes there too: it went to stderr, into configure's checks.
    for hosts in ("unix:/nonexistent/jailccd.sock", "tcp:bad:port:x"):
        done = run([JAILCC, "gcc-12", *args], work, {**env, "JAILCC_HOSTS": hosts})
        assert done.returncode == 0 and done.stderr == b"", done.stderr
    assert len((work / "jailcc.log").read_text().splitlines()) == 4


def test_without_the_proxy_the_verbose_line_says_why_preprocessed(server, tmp_path):
    work = tree(tmp_path)
    args = ["-O2", "-c", "src/main.c", "-o", "obj/main.o"]
    direct = run([JAILCC, "gcc-12", *args], work, env_for(server, JAILCC_PROXY="0"))
    assert "remote on unix:" in where(direct.stderr)
    assert "; preprocessed: no proxy" in where(direct.stderr), direct.stderr
    asked = env_for(server, JAILCC_PROXY="0", JAILCC_SHIP="preprocessed")
    assert "preprocessed:" not in where(run([JAILCC, "gcc-12", *args], work, asked).stderr)


def test_no_server_means_a_local_compile_with_the_same_result(tmp_path):
    work = tree(tmp_path)
    args = ["-O2", "-c", "src/main.c", "-o", "obj/main.o"]
    rres = run([JAILCC, "gcc-12", *args], work, env_for(None))
    assert rres.returncode == 0
    said = where(rres.stderr)
    assert "compiling locally" in said and "cannot connect" in said, said
    remote_obj = (work / "obj" / "main.o").read_bytes()
    assert run(["gcc-12", *args], work).returncode == 0
    assert (work / "obj" / "main.o").read_bytes() == remote_obj


def test_a_working_directory_that_was_removed_is_the_compilers_to_handle(tmp_path):
    """`cd build && rm -rf ../build && jailcc gcc -c /abs/x.c -o /abs/x.o`: gcc compiles it
    (it needs no working directory); jailcc died in getcwd with a traceback."""
    work = tree(tmp_path)
    src, obj = work / "src" / "main.c", work / "obj" / "main.o"
    (work / "gone").mkdir()
    for argv in (["gcc-12"], [JAILCC, "gcc-12"]):
        command = [*argv, "-O2", "-c", str(src), "-o", str(obj)]
        script = 'cd gone && rmdir ../gone && exec "$@"'
        done = run(["sh", "-c", script, "sh", *command], work, env_for(None))
        assert (done.returncode, done.stderr) == (0, b""), done.stderr
        made = obj.read_bytes()
        obj.unlink()
        (work / "gone").mkdir()
    assert run(["gcc-12", "-O2", "-c", str(src), "-o", str(obj)], work).returncode == 0
    assert obj.read_bytes() == made


@pytest.mark.parametrize("mode", ["-c", "-S"])
def test_a_compiler_crash_is_the_local_compilers(server, tmp_path, mode):
    """An internal compiler error (cc1 overflows its stack on deeply nested parentheses): the
    local compile's report names the driver as the user called it, and -S leaves its empty
    output behind; the server's named the image's driver and left nothing."""
    work = tree(tmp_path)
    depth = 100_000
    (work / "src" / "nest.c").write_text("int x = " + "(" * depth + "1" + ")" * depth + ";\n")
    args = [mode, "src/nest.c", "-o", "obj/nest.out"]
    results = []
    for command, env in ((["gcc-12"], env_for(None)), ([JAILCC, "gcc-12"], env_for(server))):
        done = run([*command, *args], work, env)
        text = b"".join(
            ln + b"\n" for ln in done.stderr.splitlines() if not ln.startswith(b"jailcc:")
        )
        results.append((done.returncode, text, sorted(p.name for p in (work / "obj").iterdir())))
        for made in (work / "obj").iterdir():
            made.unlink()
    if b"internal compiler error" not in results[0][1]:
        pytest.skip("this cc1 did not crash on the nesting")
    assert results[1] == results[0]


class FakeServer:
    """A server that answers the hello like jailccd, then misbehaves as told."""

    def __init__(self, path: Path, identity: str, behaviour: str) -> None:
        self.path, self.identity, self.behaviour = path, identity, behaviour
        self.jobs = 0
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:  # a thread per connection: the proxy may hold one open ahead of its job
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                proto.recv(conn, proto.MAX_HELLO_FRAME)
                images = [{"name": "x", "compilers": [{"identity": self.identity}]}]
                hello = {
                    "protocol": proto.PROTOCOL_VERSION,
                    "role": "server",
                    "auth": "local",
                    "images": images,
                    "slots": 1,
                }
                proto.send(conn, proto.HELLO, hello)
                load = {"slots": 1, "running": 0, "queued": 0, "owner_busy": False}
                proto.send(conn, proto.READY, {**hello, "load": load})
                _, job, _ = proto.recv(conn)
                self.jobs += 1
                if self.behaviour == "garbage":
                    conn.sendall(b"\x00\x00\x00\x10" + b"\xff" * 16)
                elif self.behaviour == "error":
                    proto.send(conn, proto.ERROR, {"code": "internal", "message": "boom"})
                elif self.behaviour == "killed":
                    proto.send(
                        conn,
                        proto.RESULT,
                        {
                            "id": job["id"],
                            "exit_code": None,
                            "signal": 9,
                            "limit": "memory",
                            "has_output": False,
                        },
                        [b"", b"", b""],
                    )
                elif self.behaviour == "out-of-memory":  # the jail's address space
                    header = {"id": job["id"], "exit_code": 1, "has_output": False}
                    stderr = b"virtual memory exhausted: Cannot allocate memory\n"
                    proto.send(conn, proto.RESULT, header, [b"", stderr, b""])
                elif self.behaviour in DRIVER_FAILURES:  # the driver exits as for an error
                    header = {"id": job["id"], "exit_code": 1, "has_output": False}
                    stderr = DRIVER_FAILURES[self.behaviour]
                    proto.send(conn, proto.RESULT, header, [b"", stderr, b""])
                # "die": close without a word
            except (OSError, proto.ProtocolError):
                pass

    def close(self) -> None:
        self.sock.close()


# What gcc's driver says, exiting 1, of a program of its own it lost (RLIMIT_CPU killed cc1)
# or could not run (an image without the assembler).
DRIVER_FAILURES = {
    "cc1-killed": b"gcc-12: fatal error: Killed signal terminated program cc1\n",
    "no-assembler": b"gcc-12: fatal error: cannot execute 'as': execvp: No such file or"
    b" directory\ncompilation terminated.\n",
}


@pytest.mark.parametrize(
    "behaviour", ["die", "garbage", "error", "killed", "out-of-memory", *DRIVER_FAILURES]
)
def test_a_failing_server_means_a_local_compile(tmp_path, behaviour):
    from jailcc.images.identity import compiler_identity

    work = tree(tmp_path)
    fake = FakeServer(tmp_path / "fake.sock", compiler_identity("/usr/bin/gcc-12"), behaviour)
    try:
        args = ["-O2", "-c", "src/main.c", "-o", "obj/main.o"]
        rres = run(
            [JAILCC, "gcc-12", *args],
            work,
            # (The fake answers preprocessed jobs: a tree job's RESULT has more to it.)
            env_for(
                None, JAILCC_HOSTS=f"unix:{tmp_path / 'fake.sock'}", JAILCC_SHIP="preprocessed"
            ),
        )
    finally:
        fake.close()
    assert rres.returncode == 0, rres.stderr
    assert "compiling locally" in where(rres.stderr), rres.stderr
    produced = (work / "obj" / "main.o").read_bytes()
    run(["gcc-12", *args], work)
    assert (work / "obj" / "main.o").read_bytes() == produced


@pytest.mark.parametrize("behaviour", ["killed", "out-of-memory"])
def test_a_job_past_a_memory_limit_compiles_locally_at_once_the_next_time(tmp_path, behaviour):
    """The proxy remembers it for an hour: the job spent the server's limit on every build
    (googletest's largest test peaks at 2 GB, the default --job-memory is 2048 MiB)."""
    from jailcc.images.identity import compiler_identity

    work = tree(tmp_path)
    fake = FakeServer(tmp_path / "fake.sock", compiler_identity("/usr/bin/gcc-12"), behaviour)
    (tmp_path / "run").mkdir(mode=0o700)
    env = env_for(
        None,
        JAILCC_HOSTS=f"unix:{tmp_path / 'fake.sock'}",
        JAILCC_SHIP="preprocessed",
        XDG_RUNTIME_DIR=str(tmp_path / "run"),
    )
    args = [JAILCC, "gcc-12", "-O2", "-c", "src/main.c", "-o", "obj/main.o"]
    try:
        first, again = run(args, work, env), run(args, work, env)
    finally:
        subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True, timeout=60)
        fake.close()
    assert first.returncode == again.returncode == 0, again.stderr
    assert b"memory" in first.stderr and b"limit 0 s ago" in again.stderr, again.stderr
    assert fake.jobs == 1


@pytest.mark.parametrize(("typed", "path"), [("./mygcc", None), ("mygcc", "bin:/usr/bin")])
def test_a_compiler_named_relative_to_the_working_directory(server, tmp_path, typed, path):
    """The proxy looked such a name up from its own working directory: "not found", local."""
    work = tree(tmp_path)
    (work / "bin").mkdir()
    for place in (work / "mygcc", work / "bin" / "mygcc"):
        place.symlink_to("/usr/bin/gcc-12")
    env = env_for(server, **({"PATH": path} if path else {}))
    args = ["-O2", "-c", "src/main.c", "-o", "obj/main.o"]
    done = run([JAILCC, typed, *args], work, env)
    assert done.returncode == 0 and "remote on" in where(done.stderr), done.stderr
    made = (work / "obj" / "main.o").read_bytes()
    run(["gcc-12", *args], work)
    assert (work / "obj" / "main.o").read_bytes() == made


def test_an_assembler_first_on_the_users_path_is_the_one_used(server, tmp_path):
    """gcc runs the first `as` on PATH. A proxy started with another PATH took its own `as`
    for the user's, and the job went remote without the user's wrapper (exit 0)."""
    work = tree(tmp_path)
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    (wrappers / "as").write_text('#!/bin/sh\nexec /usr/bin/as --defsym WRAPPED_AS=1 "$@"\n')
    (wrappers / "as").chmod(0o755)
    (tmp_path / "run").mkdir(mode=0o700)
    env = env_for(server, XDG_RUNTIME_DIR=str(tmp_path / "run"))
    theirs = {**env, "PATH": f"{wrappers}:{env['PATH']}"}
    args = ["-O2", "-c", "src/main.c", "-o", "obj/main.o"]
    try:
        subprocess.run([JAILCC, "proxy", "start"], env=env, check=True, capture_output=True)
        done = run([JAILCC, "gcc-12", *args], work, theirs)
    finally:
        subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0 and b"assembler your PATH finds" in done.stderr, done.stderr
    made = (work / "obj" / "main.o").read_bytes()
    run(["gcc-12", *args], work, theirs)
    assert (work / "obj" / "main.o").read_bytes() == made and b"WRAPPED_AS" in made


def test_a_ccache_masquerade_directory_first_on_path_is_said_for_what_it_is(server, tmp_path):
    """/usr/lib/ccache first on PATH: jailcc took ccache for the compiler and told the user to
    build a toolchain image of it, which cannot be done."""
    work = tree(tmp_path)
    masquerade = tmp_path / "ccache-bin"
    masquerade.mkdir()
    (masquerade / "gcc-12").symlink_to("/usr/bin/ccache")
    env = env_for(server, PATH=f"{masquerade}:{os.environ['PATH']}", CCACHE_DIR=str(tmp_path / "c"))
    done = run([JAILCC, "gcc-12", "-O2", "-c", "src/main.c", "-o", "obj/main.o"], work, env)
    assert done.returncode == 0 and (work / "obj" / "main.o").exists(), done.stderr
    said = where(done.stderr)
    assert "is ccache" in said and "CCACHE_PREFIX=jailcc" in said, said
    assert "jailcc-image" not in done.stderr.decode()


def test_a_compiler_without_a_matching_image_stays_local(server, tmp_path):
    work = tree(tmp_path)
    rres = run(
        [JAILCC, "clang-16", "-O2", "-c", "src/main.c", "-o", "obj/main.o"], work, env_for(server)
    )
    assert rres.returncode == 0
    # Said without JAILCC_VERBOSE too: which compiler, and how to add it on the server.
    said = where(rres.stderr)
    assert "has no toolchain image for /usr/lib/llvm-16/bin/clang" in said, said
    assert "jailcc-image build --headers --compiler /usr/lib/llvm-16/bin/clang" in said


def test_later_jobs_of_a_compiler_no_server_has_say_so_too(server, tmp_path):
    """The proxy remembers the server lacks the image; its later jobs say that, not that
    every server stayed full."""
    work = tree(tmp_path)
    (tmp_path / "run").mkdir(mode=0o700)
    env = env_for(server, XDG_RUNTIME_DIR=str(tmp_path / "run"))
    subprocess.run([JAILCC, "proxy", "start"], env=env, check=True, capture_output=True)
    try:
        argv = [JAILCC, "clang-16", "-O2", "-c", "src/main.c", "-o", "obj/main.o"]
        first, second = run(argv, work, env), run(argv, work, env)
    finally:
        subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True, timeout=60)
    assert first.returncode == second.returncode == 0
    assert "has no toolchain image for /usr/lib/llvm-16/bin/clang" in where(first.stderr)
    said = where(second.stderr)
    assert f"no toolchain image for this compiler on unix:{server.socket_path}" in said, said


@pytest.mark.parametrize("masquerade", [False, True])
@pytest.mark.parametrize("proxy", ["1", "0"])
def test_a_local_compile_runs_under_the_name_the_user_typed(server, tmp_path, proxy, masquerade):
    """gcc finds itself by its argv[0] on PATH and shows it (-v: COLLECT_GCC=gcc-12): run
    locally, it gets the name as typed, not the path jailcc found, whenever that name finds
    the same compiler once masquerade links are off PATH (as distcc takes them off), with
    the native client and the proxy, and with the Python client."""
    work = tree(tmp_path)
    args = ["-v", "-O2", "-c", "src/main.c", "-o", "obj/main.o"]
    env = env_for(server, JAILCC_PROXY=proxy, JAILCC_VERBOSE="0")
    command = [JAILCC, "gcc-12"]
    if masquerade:
        (tmp_path / "masq").mkdir()
        (tmp_path / "masq" / "gcc-12").symlink_to(JAILCC)
        env["PATH"] = f"{tmp_path / 'masq'}:{env['PATH']}"
        command = ["gcc-12"]
    ours = run([*command, *args], work, env)
    if proxy == "1":  # the first may have been the Python client's, starting the proxy
        ours = run([*command, *args], work, env)
    plain = run(["gcc-12", *args], work, env_for(server, JAILCC_VERBOSE="0"))
    assert ours.returncode == plain.returncode == 0, ours.stderr
    temp = re.compile(rb"/tmp/cc\w+\.s")  # the compiler's temporary files' names
    assert temp.sub(b"T", ours.stderr) == temp.sub(b"T", plain.stderr)
    assert b"\nCOLLECT_GCC=gcc-12\n" in ours.stderr


def test_masquerade_symlinks_find_the_real_compiler_and_never_recurse(server, tmp_path):
    work = tree(tmp_path)
    masq = tmp_path / "masq"
    masq.mkdir()
    for name in ("gcc-12", "g++-12", "cc"):
        (masq / name).symlink_to(JAILCC)
    env = env_for(server, PATH=f"{masq}:{os.environ['PATH']}")
    rres = run(["gcc-12", "-O2", "-c", "src/main.c", "-o", "obj/main.o"], work, env)
    assert rres.returncode == 0, rres.stderr
    assert "remote on unix:" in where(rres.stderr)
    # With only jailcc itself on PATH under that name, it says so instead of recursing.
    env = env_for(server, PATH=str(masq))
    rres = run([str(masq / "gcc-12"), "-c", "src/main.c"], work, env)
    assert rres.returncode == 127 and b"cannot find the compiler" in rres.stderr


def test_make_j_with_cc_jailcc(server, tmp_path):
    work = tmp_path / "proj"
    work.mkdir()
    for i in range(12):
        (work / f"u{i}.c").write_text(f"int unit{i}(int x) {{ return x * {i} + {i}; }}\n")
    (work / "main.c").write_text("int main(void) { return 0; }\n")
    objs = " ".join(f"u{i}.o" for i in range(12))
    (work / "Makefile").write_text(
        f"prog: main.o {objs}\n\t$(CC) -o $@ $^\n%.o: %.c\n\t$(CC) $(CFLAGS) -MMD -c $< -o $@\n"
    )
    res = subprocess.run(
        ["make", "-j8", f"CC={JAILCC} gcc-12", "CFLAGS=-O2"],
        cwd=work,
        env=env_for(server),
        capture_output=True,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr.count(b"remote on unix:") == 13
    remote = {p.name: p.read_bytes() for p in work.glob("*.[od]")}
    subprocess.run(["make", "clean"], cwd=work, capture_output=True)
    for p in work.glob("*.[od]"):
        p.unlink()
    subprocess.run(
        ["make", "-j8", "CC=gcc-12", "CFLAGS=-O2"], cwd=work, check=True, capture_output=True
    )
    local = {p.name: p.read_bytes() for p in work.glob("*.[od]")}
    assert remote == local and len(local) == 26


def test_clang_debug_info_stays_local(server, tmp_path):
    # clang has no directives-only mode; its -g objects would differ after separate
    # preprocessing, so they compile locally (unless JAILCC_DEBUG_REMOTE=1). Shipped as
    # sources they go remote: tests/test_tree_client.py.
    work = tree(tmp_path)
    env = env_for(server, JAILCC_SHIP="preprocessed")
    rres = run([JAILCC, "clang-16", "-g", "-c", "src/main.c", "-o", "obj/x.o"], work, env)
    assert rres.returncode == 0
    assert "local (" in where(rres.stderr) and "debug info" in where(rres.stderr)


@pytest.mark.skipif(shutil.which("clang-16") is None, reason="clang-16 not installed")
def test_clang_recording_its_command_line_is_not_shipped_preprocessed(tmp_path):
    """clang's .GCC.command.line names the file it compiled: preprocessed output would put
    the server's .i (and none of the -D, -I) there, so such a job goes as sources or stays."""
    from jailcc.client.args import RemoteJob, analyse
    from jailcc.client.job import Invocation, RemoteFailure, prepare

    (tmp_path / "a.c").write_text("int f(void) { return 1; }\n")
    args = ["-DFOO=1", "-O2", "-frecord-command-line", "-c", "a.c"]  # (-g...: local already)
    job = analyse(args, str(tmp_path), compiler="clang-16", clang=True)
    assert isinstance(job, RemoteJob), job
    inv = Invocation(str(tmp_path), dict(os.environ), False, 0o022)
    with pytest.raises(RemoteFailure, match="records its command line"):
        prepare(shutil.which("clang-16"), job, inv)


@pytest.mark.parametrize(
    ("args", "remote"),
    [
        (["-c", "a.i"], True),
        (["-c", "sub/a.i"], False),  # DW_AT_name, the FILE symbol: "sub/a.i"
        (["-c", "a b.i"], False),
        (["-x", "cpp-output", "-c", "a.c"], False),
    ],
)
def test_a_preprocessed_input_goes_only_under_its_own_name(tmp_path, args, remote):
    """A .i without line markers is compiled by its own name: the server may compile it only
    by the same one."""
    from jailcc.client.args import RemoteJob, analyse
    from jailcc.client.job import Invocation, RemoteFailure, prepare

    (tmp_path / "sub").mkdir()
    for name in ("a.i", "sub/a.i", "a b.i", "a.c"):
        (tmp_path / name).write_text("int f(int a) { return a; }\n")
    job = analyse(args, str(tmp_path), compiler="gcc-12")
    assert isinstance(job, RemoteJob) and job.preprocessed, job
    inv = Invocation(str(tmp_path), dict(os.environ), False, 0o022)
    if remote:
        assert prepare(shutil.which("gcc-12"), job, inv).header["input"] == "a.i"
    else:
        with pytest.raises(RemoteFailure, match="goes by its own name"):
            prepare(shutil.which("gcc-12"), job, inv)


@pytest.mark.parametrize(
    ("warnings", "remote"),
    [
        ([], True),
        (["-Wall"], True),
        (["-Wextra"], False),
        (["-Wimplicit-fallthrough=3"], False),
        (["-Wextra", "-Wno-implicit-fallthrough"], True),
        (["-Wimplicit-fallthrough=0", "-Wextra"], True),
    ],
)
def test_fallthrough_comments_keep_a_preprocessed_job_here(tmp_path, warnings, remote):
    """gcc -E drops the /* fallthrough */ comment that gcc's warning reads: with -Werror the
    remote compile of preprocessed output failed where the local one succeeded."""
    from jailcc.client.args import RemoteJob, analyse
    from jailcc.client.job import Invocation, RemoteFailure, prepare

    (tmp_path / "a.c").write_text(
        "int f(int a) { switch (a) { case 1: a++; /* fallthrough */\n"
        "  case 2: a++; break; } return a; }\n"
    )
    args = [*warnings, "-Werror", "-O2", "-c", "a.c"]
    job = analyse(args, str(tmp_path), compiler="gcc-12")
    assert isinstance(job, RemoteJob), job
    inv = Invocation(str(tmp_path), dict(os.environ), False, 0o022)
    if remote:
        prepare(shutil.which("gcc-12"), job, inv)
    else:
        with pytest.raises(RemoteFailure, match="fallthrough"):
            prepare(shutil.which("gcc-12"), job, inv)
    assert run(["gcc-12", *args], tmp_path).returncode == 0  # what a local compile does
    (tmp_path / "a.c").write_text("int f(int a) { return a + 1; }\n")  # no switch: no matter
    prepare(shutil.which("gcc-12"), analyse(args, str(tmp_path), compiler="gcc-12"), inv)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["@opts.rsp", "-c", "fil.c"], "fil.c"),  # the source, not the response file
        (["-c", "@all.rsp"], "@all.rsp"),  # the source is in it: the file names the compile
        (["-MT", "x.o", "-c", "y.c"], "y.c"),
        (["-c"], "?"),
    ],
)
def test_messages_name_the_source(args, named):
    from jailcc.client.decide import source_of

    assert source_of(args) == named
