"""Shipping sources (JAILCC_SHIP=sources, client/tree.py) from the client's side, against a real
jailccd: objects and dependency files identical to local ones with -g, and a local compile
whenever the jail's compile read anything this machine would not have read, including when
the include analysis is wrong on purpose."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from jailcc.client.args import analyse
from jailcc.client.hosts import Host
from jailcc.client.job import Invocation
from jailcc.client.remote import RemoteFailure, connect, open_session, run_job
from jailcc.client.tree import TreeBuilder, TreeUnsupported
from jailcc.images.identity import compiler_identity
from serverutil import Server, start_server, stop_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import projects

pytestmark = requires_root
JAILCC = str(BIN / "jailcc")
GCC = "/usr/bin/gcc-12"

MAIN = b"""#include <stdio.h>
#include <limits.h>
#include "config.h"
int main(void) { printf("%s %d %d\\n", __FILE__, __LINE__, LIMIT + INT_MAX % 7); return 0; }
"""


@pytest.fixture(scope="module")
def server(headers_server: Server) -> Server:
    return headers_server


def project(tmp: Path) -> Path:
    """proj/src/main.c, proj/inc/config.h, built from proj/build."""
    (tmp / "proj" / "src").mkdir(parents=True)
    (tmp / "proj" / "inc").mkdir()
    (tmp / "proj" / "build").mkdir()
    (tmp / "proj" / "src" / "main.c").write_bytes(MAIN)
    (tmp / "proj" / "inc" / "config.h").write_bytes(b"#define LIMIT 3\n")
    return tmp / "proj" / "build"


def ship_env(server: Server, run_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a user who ships sources to server, with a proxy of their own."""
    return {
        **os.environ,
        "JAILCC_HOSTS": f"unix:{server.socket_path}",
        "JAILCC_VERBOSE": "1",
        "JAILCC_SHIP": "sources",
        "LC_ALL": "C",
        "XDG_RUNTIME_DIR": str(run_dir),
        **extra,
    }


ARGS = ["-g", "-O2", "-I../inc", "-MD", "-MP", "-c", "../src/main.c", "-o", "main.o"]


def compile_locally(cwd: Path, args: list[str]) -> dict[str, bytes]:
    subprocess.run([GCC, *args], cwd=cwd, check=True)
    return {name: (cwd / name).read_bytes() for name in ("main.o", "main.d")}


def test_through_the_proxy_objects_and_dependencies_match_a_local_compile(server, tmp_path):
    cwd = project(tmp_path)
    local = compile_locally(cwd, ARGS)
    for name in local:
        (cwd / name).unlink()
    env = ship_env(server, tmp_path / "run")
    try:
        started = subprocess.run([JAILCC, "proxy", "start"], env=env, capture_output=True)
        assert started.returncode == 0, started.stderr
        done = subprocess.run(
            [JAILCC, "gcc-12", *ARGS], cwd=cwd, env=env, capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert b"remote (sources) on" in done.stderr, done.stderr
        for name, data in local.items():
            assert (cwd / name).read_bytes() == data, name
    finally:
        subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True, timeout=60)


# In-process: the analysis and the job's tree can be changed on purpose.


def tree_job(server: Server, cwd: Path, args: list[str], edit=None):
    """Prepare a tree job, let edit() spoil it, run it, and check the answer: the Outcome,
    or the RemoteFailure that sends the job to a local compile."""
    inv = Invocation(str(cwd), dict(os.environ, LC_ALL="C"), False, 0o022)
    job = analyse(args, str(cwd), compiler="gcc-12", debug_info_may_differ=True)
    builder = TreeBuilder()
    identity = compiler_identity(GCC)
    prepared = builder.prepare(GCC, args, job, inv, identity)
    if edit is not None:
        edit(prepared)
    host = Host("unix", str(server.socket_path))
    sock = connect(host)
    try:
        channel, _ = open_session(sock, host, identity)
        result = run_job(channel, host, prepared.header, [], 1 << 30, False, prepared.blobs)
    finally:
        sock.close()
    return builder.finish(GCC, prepared, job, inv, host, result)


def drop(path: Path):
    """An edit that leaves path out of the tree, as a wrong analysis would."""

    def edit(prepared) -> None:
        header = prepared.header
        rel = os.path.relpath(path, header["root"])
        header["tree"] = [e for e in header["tree"] if e[0] != rel]
        prepared.shipped = prepared.shipped - {str(path)}

    return edit


def test_a_project_header_the_analysis_missed_is_not_replaced_by_the_images(server, tmp_path):
    # The project's own limits.h comes first (-I../inc); the image has a limits.h too.
    cwd = project(tmp_path)
    own = tmp_path / "proj" / "inc" / "limits.h"
    own.write_bytes(b"#include_next <limits.h>\n#define PROJECT_LIMITS 1\n")
    args = ["-O2", "-I../inc", "-c", "../src/main.c", "-o", "main.o"]
    outcome = tree_job(server, cwd, args)  # a correct analysis: remote, and right
    assert outcome.exit_code == 0
    with pytest.raises(RemoteFailure, match="where this machine has"):
        tree_job(server, cwd, args, drop(own))


def test_a_translation_unit_of_thousands_of_headers_goes_as_sources(server, tmp_path):
    """Heavy C++ reads thousands of headers: 6000, each in a directory of its own, fit the
    jail's work dir (its inodes were 4096, and such a job went preprocessed)."""
    cwd = tmp_path / "many"
    cwd.mkdir()
    lines = []
    for n in range(6000):
        (cwd / f"d{n}").mkdir()
        (cwd / f"d{n}" / "h.h").write_text(f"#define H{n} {n}\n")
        lines.append(f'#include "d{n}/h.h"\n')
    (cwd / "main.c").write_text("".join(lines) + "int last = H5999;\n")
    args = ["-O2", "-c", "main.c", "-o", "main.o"]
    subprocess.run([GCC, *args[:-1], "local.o"], cwd=cwd, check=True)
    outcome = tree_job(server, cwd, args)
    assert outcome.exit_code == 0
    assert (cwd / "main.o").read_bytes() == (cwd / "local.o").read_bytes()


def test_a_header_the_jail_lacks_means_a_local_compile(server, tmp_path):
    cwd = project(tmp_path)
    args = ["-O2", "-I../inc", "-c", "../src/main.c", "-o", "main.o"]
    with pytest.raises(RemoteFailure, match=r"the jail found no \.\./inc/config\.h"):
        tree_job(server, cwd, args, drop(tmp_path / "proj" / "inc" / "config.h"))


def test_a_header_changed_after_the_analysis_means_a_local_compile(server, tmp_path):
    cwd = project(tmp_path)
    header = tmp_path / "proj" / "inc" / "config.h"
    # Content no earlier job had: the server asks for it, and it is read after the change.
    header.write_bytes(f"#define LIMIT 3 /* {tmp_path} */\n".encode())

    def change(prepared) -> None:
        header.write_bytes(b"#define LIMIT 4\n")

    with pytest.raises(RemoteFailure, match="changed during the compile"):
        tree_job(server, cwd, ["-O2", "-I../inc", "-c", "../src/main.c", "-o", "m.o"], change)


def test_an_image_header_that_differs_from_ours_is_caught(server, tmp_path):
    """The jail's stdio.h is reported with its digest; a client whose copy differed (here:
    the digest the job claims is spoiled, so the jail refuses the job) never uses it."""
    cwd = project(tmp_path)

    def spoil(prepared) -> None:
        image = prepared.header["image"]
        image[0] = [image[0][0], "sha256:" + "0" * 64]

    with pytest.raises(RemoteFailure) as failure:
        tree_job(server, cwd, ["-O2", "-I../inc", "-c", "../src/main.c", "-o", "m.o"], spoil)
    assert failure.value.code == "tree"


def test_zlib_with_debian_flags_and_g_matches_a_local_build(sources, server, tmp_path):
    env = ship_env(server, tmp_path / "run", LC_ALL=os.environ.get("LC_ALL", ""))
    workdir = tmp_path / "build"
    local = projects.build("zlib", workdir, "gcc-12", "g++-12", jobs=4)
    subprocess.run([JAILCC, "proxy", "start"], env=env, check=True, capture_output=True)
    try:
        farm = projects.build(
            "zlib",
            workdir,
            f"{JAILCC} gcc-12",
            f"{JAILCC} g++-12",
            jobs=4,
            env=env,
            configure_cc="gcc-12",
        )
    finally:
        subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True, timeout=60)
    assert farm.returncode == 0, farm.log[-3000:]
    assert projects.compare(local, farm) == []
    shipped = farm.log.count("remote (sources) on")
    assert shipped >= len(farm.objects) - 2, farm.log[-3000:]  # configure's probes may differ


def test_an_image_without_headers_sends_the_jobs_preprocessed(gcc_image, tmp_path):
    """An image built without --headers refuses tree jobs: the job goes preprocessed, and the
    proxy stops trying this compiler's tree jobs there for a while instead of paying each
    time (and, with no other server, stops analysing them)."""
    srv = start_server(tmp_path / "srv", gcc_image, "--allow-user", "root")
    cwd = project(tmp_path)
    env = ship_env(srv, tmp_path / "run")
    args = ["-O2", "-I../inc", "-c", "../src/main.c", "-o", "main.o"]
    try:
        subprocess.run([JAILCC, "proxy", "start"], env=env, check=True, capture_output=True)
        said = []
        for _ in range(2):
            done = subprocess.run(
                [JAILCC, "gcc-12", *args], cwd=cwd, env=env, capture_output=True, timeout=120
            )
            assert done.returncode == 0, done.stderr
            said.append(done.stderr.decode())
    finally:
        subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True, timeout=60)
        stop_server(srv)
    assert "remote on" in said[0] and "is not in the image" in said[0], said[0]
    assert "remote on" in said[1] and "every server's image refuses" in said[1], said[1]


def test_a_header_the_image_lacks_sends_only_the_jobs_that_read_it_preprocessed(
    headers_server, tmp_path
):
    """A system header installed after the image was built (libfmt-dev, in a review): the
    jobs that read it go preprocessed, the others keep shipping sources. One refusal turned
    off shipping for every job of that compiler on that server for five minutes."""
    header = Path(f"/usr/local/include/jailcc_lacked_{os.getpid()}.h")
    header.write_text("#define LACKED 1\n")
    try:
        (tmp_path / "uses.c").write_text(f"#include <{header.name}>\nint u = LACKED;\n")
        (tmp_path / "plain.c").write_text("#include <stdio.h>\nint p(void) { return 1; }\n")
        env = ship_env(headers_server, tmp_path / "run")
        said = []
        for source in ("uses.c", "plain.c", "uses.c", "plain.c"):
            done = subprocess.run(
                [JAILCC, "gcc-12", "-O2", "-c", source, "-o", source + ".o"],
                cwd=tmp_path, env=env, capture_output=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            said.append(done.stderr.decode())
    finally:
        header.unlink()
        subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True, timeout=60)
    for uses in (said[0], said[2]):
        assert "remote on" in uses and f"{header} is not in the image" in uses, uses
    for plain in (said[1], said[3]):
        assert "remote (sources) on" in plain, plain


def test_a_server_whose_image_refuses_tree_jobs_leaves_them_to_the_others(
    gcc_image, headers_server, tmp_path
):
    """A farm in the middle of a move to --headers images: tree jobs go to the server that
    takes them, whichever the proxy tried first, and keep going there."""
    plain = start_server(tmp_path / "plain", gcc_image, "--allow-user", "root")
    cwd = project(tmp_path)
    env = ship_env(headers_server, tmp_path / "run")
    env["JAILCC_HOSTS"] = f"unix:{plain.socket_path} unix:{headers_server.socket_path}"
    args = ["-O2", "-I../inc", "-c", "../src/main.c", "-o", "main.o"]
    try:
        subprocess.run([JAILCC, "proxy", "start"], env=env, check=True, capture_output=True)
        for _ in range(4):
            done = subprocess.run(
                [JAILCC, "gcc-12", *args], cwd=cwd, env=env, capture_output=True, timeout=120
            )
            assert done.returncode == 0, done.stderr
            said = done.stderr.decode()
            assert f"remote (sources) on unix:{headers_server.socket_path}" in said, said
    finally:
        subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True, timeout=60)
        stop_server(plain)


# The preprocessed model's known limits (tests/test_args.py, strict xfail there): one compile of
# the user's own files at their paths has none of them.

KNOWN_LIMITS = {
    "columns after macros (gcc -g)": (
        "gcc-12",
        ["-c", "-g", "col.c"],
        {"col.c": "#include <stdbool.h>\nbool ready = true;\nint get(void) { return ready; }\n"},
    ),
    "a #warning silenced by a pragma": (
        "gcc-12",
        ["-c", "-Werror", "w.c"],
        {"w.c": '#pragma GCC diagnostic ignored "-Wcpp"\n#warning quiet\nint x;\n'},
    ),
    "clang's warning count": (
        "clang-16",
        ["-c", "-Wall", "warn.c", "-o", "sub/warn.o"],
        {
            "inc/h.h": "#define H_VALUE 1\n",
            "warn.c": '#include "inc/h.h"\n#warning "check this"\nint f(int a)\n{\n'
            "    int unused;\n    return a + H_VALUE;\n}\n",
        },
    ),
    "clang -g's DWARF 5 source checksums": (
        "clang-16",
        ["-c", "real.c", "-Iinc", "-DLEVEL=2", "-include", "inc/force.h", "-g", "-O2"],
        {
            "inc/config.h": "#define SCALE 3\n",
            "inc/force.h": "#define EXTRA 1\n",
            "real.c": '#include "config.h"\nint scale(int v)\n{\n    return v * SCALE + EXTRA;\n}\n'
            "int debug_level = LEVEL;\n",
        },
    ),
    "an option warning printed once per cc1": (
        "gcc-12",
        ["-c", "-std=c++17", "foo.c"],
        {"foo.c": "int foo(void) { return 1; }\n"},
    ),
    # Not an xfail there but a rule: macro debug info compiles locally when preprocessed.
    "macro debug info (gcc -g3)": (
        "gcc-12",
        ["-c", "-g3", "-O1", "mac.c", "-Iinc"],
        {
            "inc/m.h": "#define TWICE(x) ((x) * 2)\n",
            "mac.c": '#include <stdio.h>\n#include "m.h"\n#define LOCAL_ONLY 7\n'
            "int f(int a) { return TWICE(a) + LOCAL_ONLY; }\n",
        },
    ),
    "macro debug info (clang -ggdb3)": (
        "clang-16",
        ["-c", "-ggdb3", "mac.c", "-Iinc"],
        {
            "inc/m.h": "#define TWICE(x) ((x) * 2)\n",
            "mac.c": '#include "m.h"\nint f(int a) { return TWICE(a); }\n',
        },
    ),
}


@pytest.fixture(scope="module")
def proxy_env(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    env = ship_env(server, tmp_path_factory.mktemp("run"))
    subprocess.run([JAILCC, "proxy", "start"], env=env, check=True, capture_output=True)
    yield env
    subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True, timeout=60)


def local_and_through_jailcc(compiler: str, args: list[str], files: dict, env: dict, root: Path):
    """The compile run locally, then through jailcc, in root (debug info names the directory):
    (exit code, stderr, objects and dependency files) of each, and what jailcc said of the
    second."""
    results = []
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "sub").mkdir(exist_ok=True)
    for argv in ([compiler, *args], [JAILCC, compiler, *args]):
        done = subprocess.run(argv, cwd=root, env=env, capture_output=True, timeout=120)
        said = [line for line in done.stderr.splitlines(True) if line.startswith(b"jailcc: ")]
        stderr = b"".join(line for line in done.stderr.splitlines(True) if line not in said)
        made = [p for p in root.rglob("*") if p.suffix in (".o", ".d") and p.is_file()]
        objects = {p.relative_to(root): p.read_bytes() for p in made}  # and dependency files
        for path in made:
            path.unlink()
        results.append((done.returncode, stderr, objects))
    return results[0], results[1], b"".join(said)


@pytest.mark.parametrize("case", list(KNOWN_LIMITS))
def test_known_limits_of_preprocessed_output_do_not_apply(case, proxy_env, tmp_path):
    compiler, args, files = KNOWN_LIMITS[case]
    local, remote, said = local_and_through_jailcc(compiler, args, files, proxy_env, tmp_path)
    assert b"remote (sources) on" in said, said
    assert remote == local and local[2]


# C++ as real projects write it (re2, lua5.4's C++ library), with both drivers.
CXX_FILES = {
    "k.cc": "#include <cstdlib>\n#include <cmath>\n#include <limits>\n#include <string>\n"
    "int big() { return std::numeric_limits<int>::max() - std::abs(-1); }\n"
    'double root(double x) { return std::sqrt(x) + std::string("ab").size(); }\n',
}


@pytest.mark.parametrize("compiler", ["g++-12", "clang++-16"])
def test_cxx_goes_remote_as_sources_and_matches(compiler, proxy_env, tmp_path):
    """clang++ finds libstdc++'s headers in the jail only when the image holds the GCC
    installation's crtbegin.o; <cstdlib>'s #include_next <stdlib.h> goes past libstdc++'s own
    stdlib.h, which the soundness check must not take for a header the jail missed."""
    args = ["-c", "-g", "-O2", "-Wall", "k.cc", "-o", "sub/k.o"]
    local, remote, said = local_and_through_jailcc(compiler, args, CXX_FILES, proxy_env, tmp_path)
    assert b"remote (sources) on" in said, said
    assert remote == local and local[2]


@pytest.mark.parametrize(
    ("compiler", "symbol"), [("clang++-16", b"_Z5twicei"), ("clang-16", b"T twice")]
)
def test_clang_compiles_a_c_file_in_its_drivers_language(compiler, symbol, proxy_env, tmp_path):
    """clang is one binary whose name sets its language: clang++ compiles m.c as C++, clang as
    C. The image names that binary once, for both (its clang entry is clang++-16: see
    conftest's headers_image), so the jail runs it under the user's driver's name; otherwise
    the object would differ with the same files read, which the soundness check cannot see."""
    files = {"m.c": "int twice(int a) { return 2 * a; }\n"}
    args = ["-c", "-O2", "-g", "m.c"]
    local, remote, said = local_and_through_jailcc(compiler, args, files, proxy_env, tmp_path)
    assert b"remote (sources) on" in said, said
    assert remote == local
    (tmp_path / "local.obj").write_bytes(local[2][Path("m.o")])
    symbols = subprocess.run(["nm", tmp_path / "local.obj"], capture_output=True, check=True)
    assert symbol in symbols.stdout, symbols.stdout


def test_lto_without_a_random_seed_goes_remote(proxy_env, tmp_path):
    """gcc -flto names its sections from /dev/urandom unless -frandom-seed says otherwise:
    the jail's read of it is no input of the user's (two local compiles differ as much), so
    the job is not compiled again here."""
    files = {"l.c": "int twice(int a) { return 2 * a; }\n"}
    args = ["-c", "-O2", "-flto", "l.c"]
    local, remote, said = local_and_through_jailcc("gcc-12", args, files, proxy_env, tmp_path)
    assert b"remote (sources) on" in said, said
    assert remote[0] == local[0] == 0 and set(remote[2]) == set(local[2]) == {Path("l.o")}
    seeded = [*args, "-frandom-seed=l.o"]  # and with a seed, the object is a local one's
    local, remote, said = local_and_through_jailcc("gcc-12", seeded, files, proxy_env, tmp_path)
    assert b"remote (sources) on" in said, said
    assert remote == local


@pytest.mark.parametrize("compiler", ["gcc-12", "clang-16"])
def test_assembler_options_that_write_no_file_go_remote(compiler, proxy_env, tmp_path):
    """CMake and Debian pass -Wa,--noexecstack (zstd's build, every file): it writes no file."""
    files = {"s.c": "int twice(int a) { return 2 * a; }\n"}
    args = ["-c", "-O2", "-g", "-Wa,--noexecstack", "s.c"]
    local, remote, said = local_and_through_jailcc(compiler, args, files, proxy_env, tmp_path)
    assert b"remote (sources) on" in said, said
    assert remote == local and local[2]


def test_a_same_named_header_nobody_includes_does_not_stop_the_job(server, tmp_path):
    """src/util/limits.h exists, but no file read includes "limits.h" with quotes: the image's
    limits.h found through the search is the one a local compile reads too."""
    cwd = project(tmp_path)
    util = tmp_path / "proj" / "src" / "util"
    util.mkdir()
    (util / "u.h").write_text("#define U 1\n")
    (util / "limits.h").write_text("#error not this one\n")
    main = tmp_path / "proj" / "src" / "main.c"
    main.write_bytes(b'#include "util/u.h"\n' + MAIN)
    args = ["-O2", "-I../inc", "-c", "../src/main.c", "-o", "main.o"]
    assert tree_job(server, cwd, args).exit_code == 0
    # And when u.h does include "limits.h", the local compile reads util/limits.h: the jail,
    # had it not been shipped, would have read the image's.
    (util / "u.h").write_text('#include "limits.h"\n#define U 1\n')
    with pytest.raises(RemoteFailure, match="where this machine has"):
        tree_job(server, cwd, args, drop(util / "limits.h"))


def test_a_header_only_a_computed_has_include_asks_for_is_checked(server, tmp_path):
    """A __has_include the analysis cannot see through, and it left the header out: the jail's
    answer was no, this machine's is yes, so the objects would differ. No file was read that
    could show it; the name the jail looked for in vain does."""
    cwd = project(tmp_path)
    extra = tmp_path / "proj" / "inc" / "extra.h"
    extra.write_bytes(b"#define EXTRA 7\n")
    asks = (
        b"#define NAME <extra.h>\n#if __has_include(NAME)\n#include NAME\n"
        b"#else\n#define EXTRA 0\n#endif\n"
    )
    (tmp_path / "proj" / "src" / "main.c").write_bytes(asks + MAIN + b"int extra = EXTRA;\n")
    args = ["-O2", "-I../inc", "-c", "../src/main.c", "-o", "main.o"]
    assert tree_job(server, cwd, args).exit_code == 0
    with pytest.raises(RemoteFailure, match=r"the jail found no \.\./inc/extra\.h, which this"):
        tree_job(server, cwd, args, drop(extra))


@pytest.mark.parametrize("where", ["source", "header"])
def test_timestamp_users_go_preprocessed(where, tmp_path):
    """__TIMESTAMP__ is the file's mtime, which the jail's copy does not have."""
    cwd = project(tmp_path)
    used = b"const char *when = __TIMESTAMP__;\n"
    if where == "source":
        (tmp_path / "proj" / "src" / "main.c").write_bytes(MAIN + used)
    else:
        (tmp_path / "proj" / "inc" / "config.h").write_bytes(b"#define LIMIT 3\n" + used)
    args = ["-O2", "-I../inc", "-c", "../src/main.c", "-o", "main.o"]
    inv = Invocation(str(cwd), dict(os.environ, LC_ALL="C"), False, 0o022)
    job = analyse(args, str(cwd), compiler="gcc-12")
    with pytest.raises(TreeUnsupported, match="__TIMESTAMP__"):
        TreeBuilder().prepare(GCC, args, job, inv, compiler_identity(GCC))


@pytest.mark.parametrize(
    ("compiler", "pragma", "newer"),
    [
        ("gcc-12", '#pragma GCC dependency "dep.txt" rebuild me', True),
        ("gcc-12", '#pragma GCC dependency "dep.txt"', False),
        ("gcc-12", '_Pragma("GCC dependency \\"dep.txt\\"")', True),
        ("clang-16", '#pragma GCC dependency "dep.txt"', True),
    ],
)
def test_a_dependency_pragma_compares_the_users_mtimes(
    compiler, pragma, newer, proxy_env, tmp_path
):
    """`#pragma GCC dependency "f"` warns when f is newer than the file saying it (an error
    with -Werror); the jail's copies have mtimes of their own, so the answer must come from
    this machine's files."""
    files = {"p.c": f"{pragma}\nint x;\n", "dep.txt": ""}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    shift = 3600 * 10**9 * (1 if newer else -1)
    stamp = os.stat(tmp_path / "p.c").st_mtime_ns + shift
    os.utime(tmp_path / "dep.txt", ns=(stamp, stamp))
    local, remote, said = local_and_through_jailcc(
        compiler, ["-c", "-Werror", "p.c"], {}, proxy_env, tmp_path
    )
    assert remote == local, said
    assert (local[0] != 0) == newer, local


def test_a_tree_the_server_holds_is_named_by_its_listing_not_sent(server, tmp_path):
    from jailcc import protocol as proto
    from jailcc.client import remote

    cwd = project(tmp_path)
    inv = Invocation(str(cwd), dict(os.environ, LC_ALL="C"), False, 0o022)
    job = analyse(ARGS, str(cwd), compiler="gcc-12", debug_info_may_differ=True)
    identity = compiler_identity(GCC)
    host = Host("unix", str(server.socket_path))

    def send(pretend_known: bool = False) -> tuple[dict, str]:
        """Run the job on a new connection: the JOB header sent, and the job's listing."""
        prepared = TreeBuilder().prepare(GCC, ARGS, job, inv, identity)
        ref, _ = proto.job_listing(prepared.header)
        if pretend_known:
            remote._LISTINGS.add(str(host), ref)
        sent: list[dict] = []
        with connect(host) as sock:  # a new connection each time: a new jail
            channel, _ = open_session(sock, host, identity)
            send_frame = channel.send
            channel.send = lambda kind, header, *rest, **kw: (  # type: ignore[method-assign]
                sent.append(header) if kind == proto.JOB else None,
                send_frame(kind, header, *rest, **kw),
            )[1]
            result = run_job(channel, host, prepared.header, [], 1 << 30, False, prepared.blobs)
        assert result.exit_code == 0, result.stderr
        assert remote._LISTINGS.known(str(host), ref)
        return sent[0], ref

    first, ref = send()
    assert "tree" in first and "listing" not in first
    again, same = send()
    assert same == ref and set(again) == {"id", "kind", "image", "listing", "alive"}
    # A listing we believe the server holds but it does not is asked for, and all goes on.
    (cwd.parent / "inc" / "config.h").write_bytes(b"#define LIMIT 40\n")
    spoilt, other = send(pretend_known=True)
    assert other != ref and spoilt["listing"] == other


@pytest.mark.parametrize("answered", [None, "clang"])
def test_a_result_that_ran_clang_under_another_name_is_not_trusted(answered):
    """A server from before "driver" ignores it and runs the image's name: its RESULT, which
    does not say "clang++", is a failure (compile locally), not an object."""
    from jailcc.client import remote

    job = {"id": 1, "kind": "tree", "outputs": ["/p/m.o"], "driver": "clang++"}
    header = {"id": 1, "exit_code": 0, "outputs": ["/p/m.o"], "reads": [["m.c", "sha256:"]]}
    if answered is not None:
        header["driver"] = answered
    with pytest.raises(RemoteFailure, match="did not run clang as clang\\+\\+"):
        remote._tree_result("srv", job, header, [b"", b"", b"obj"])
    header["driver"] = "clang++"
    assert remote._tree_result("srv", job, header, [b"", b"", b"obj"]).outputs == (b"obj",)


@pytest.mark.parametrize(
    ("name", "target", "mode"),
    [
        ("clang-16", "", "gcc"),
        ("/usr/bin/clang++-16", "", "g++"),
        ("c++", "", "g++"),
        ("clang++3.5", "", "g++"),
        ("clang++-tot", "", "g++"),
        ("aarch64-linux-gnu-clang", "aarch64-linux-gnu", "gcc"),
        ("x86_64-linux-gnu-clang++-16", "x86_64-linux-gnu", "g++"),
        ("clang-cl", "", "cl"),
        ("clang-cpp-16", "", "cpp"),
    ],
)
def test_what_clang_makes_of_its_name(name, target, mode):
    from jailcc.client.compiler import clang_mode

    assert clang_mode(name) == (target, mode)


def test_clang_named_for_another_target_compiles_locally(proxy_env, tmp_path):
    """clang takes its target from its name: aarch64-linux-gnu-clang (the same binary, so the
    same identity) compiles for aarch64, which the jail's clang would not."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cross = bin_dir / "aarch64-linux-gnu-clang"
    cross.symlink_to(os.path.realpath("/usr/bin/clang-16"))
    files = {"m.c": "int twice(int a) { return 2 * a; }\n"}
    local, remote, said = local_and_through_jailcc(
        str(cross), ["-c", "-O2", "m.c"], files, {**proxy_env, "JAILCC_VERBOSE": "1"}, tmp_path
    )
    assert b"local (aarch64-linux-gnu-clang compiles for aarch64-linux-gnu" in said, said
    assert remote == local
    assert local[2][Path("m.o")][18:20] == (183).to_bytes(2, "little")  # e_machine: AArch64


def test_a_name_also_included_in_a_branch_not_taken_does_not_stop_the_job(proxy_env, tmp_path):
    """<cstdlib> goes on to the C library's stdlib.h with #include_next, past libstdc++'s own,
    which the jail did not read; a plain #include <stdlib.h> in a branch not taken (as lua's
    sources have) could have looked from the start. But the jail had libstdc++'s stdlib.h (the
    server checked it against the job's image list), so a lookup that got there would have
    read it: no header was missed, and the job is not compiled again locally."""
    files = {
        "t.cc": "#include <cstdlib>\n#ifdef NEVER_DEFINED\n#include <stdlib.h>\n#endif\n"
        "int f(int a) { return std::abs(a); }\n",
    }
    args = ["-c", "-g", "-O2", "t.cc"]
    local, remote, said = local_and_through_jailcc(
        "clang++-16", args, files, {**proxy_env, "JAILCC_VERBOSE": "1"}, tmp_path
    )
    assert b"remote (sources) on" in said, said
    assert remote == local and local[2]


def test_clang_told_to_find_its_files_from_a_directory_the_image_lacks(proxy_env, tmp_path):
    """-no-canonical-prefixes: clang runs itself (cc1) from the path it was run as, not its
    binary's. Run from a directory of links the image does not have, the jail refuses the
    job (the driver's directory is not in the image): an identical object, made here. The
    proxy remembers that refusal for that directory only."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "clang-16").symlink_to(os.path.realpath("/usr/bin/clang-16"))
    files = {"m.c": "#include <stddef.h>\nsize_t n(void) { return sizeof(max_align_t); }\n"}
    args = ["-c", "-g", "-O2", "-no-canonical-prefixes", "m.c"]
    local, remote, said = local_and_through_jailcc(
        str(bin_dir / "clang-16"), args, files, {**proxy_env, "JAILCC_VERBOSE": "1"}, tmp_path
    )
    assert remote == local and local[2], said
    assert b"remote" not in said, said
    # That refusal was the directory's, not the image's: clang from /usr/bin still goes.
    args = ["-c", "-g", "-O2", "m.c"]
    local, remote, said = local_and_through_jailcc(
        "clang-16", args, files, {**proxy_env, "JAILCC_VERBOSE": "1"}, tmp_path
    )
    assert remote == local and b"remote (sources) on" in said, said


@pytest.mark.parametrize(
    "args",
    [
        ["-c", "-g", "-O2", "-MD", "m.c"],
        ["-c", "-O2", "-Wp,-MD,m.d", "m.c", "-o", "m.o"],
        ["-c", "-g", "-MMD", "-MF", "sub/m.d", "-MT", "x", "m.c"],
    ],
)
def test_clang_under_the_name_cc_is_clang(args, proxy_env, tmp_path):
    """An alternatives link may make `cc` clang: what it compiles through jailcc, object and
    dependency file, is what it compiles here, though the name says nothing of clang."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cc").symlink_to(os.path.realpath("/usr/bin/clang-16"))
    files = {"m.c": '#include <stdio.h>\nint main(void) { return puts("hi"); }\n'}
    env = {**proxy_env, "JAILCC_VERBOSE": "1"}
    for name in ("m.d", "sub/m.d"):
        (tmp_path / name).unlink(missing_ok=True)
    local, remote, said = local_and_through_jailcc(str(bin_dir / "cc"), args, files, env, tmp_path)
    assert remote == local and local[2], said


@pytest.mark.parametrize("compiler", ["gcc-12", "clang-16"])
def test_a_users_own_make_variables_in_its_targets_go_remote(compiler, proxy_env, tmp_path):
    """-MT '$(OBJ)/m.o' is written into the dependency file as it is: the server's file was
    refused as more than rules, and every such job compiled twice (remote, then locally)."""
    files = {"m.c": '#include <stdio.h>\nint main(void) { return puts("hi"); }\n'}
    args = ["-c", "-g", "-MMD", "-MP", "-MT", "$(OBJ)/m.o", "-MTa;b", "-MQ", "$(Q)", "m.c"]
    local, remote, said = local_and_through_jailcc(
        compiler, args, files, {**proxy_env, "JAILCC_VERBOSE": "1"}, tmp_path
    )
    assert remote == local and b"$(OBJ)/m.o a;b $$(Q):" in local[2][Path("m.d")], local
    assert b"remote (sources) on" in said and b"locally" not in said, said
    if compiler == "gcc-12":  # (cc1's own option: gcc takes it as it is)
        args = ["-c", "-g", "-Wp,-MMD,m.d,-MT,$(W)/m.o", "m.c", "-o", "m.o"]
        local, remote, said = local_and_through_jailcc(
            compiler, args, files, {**proxy_env, "JAILCC_VERBOSE": "1"}, tmp_path
        )
        assert remote == local and local[2][Path("m.d")].startswith(b"$(W)/m.o:"), local
        assert b"remote (sources) on" in said and b"locally" not in said, said


@pytest.mark.parametrize(
    "args",
    [
        ["-c", "-O2", "-MMD", "m.c"],
        ["-c", "-O2", "-MMD", "-MP", "-MF", "sub/m.d", "m.c", "-o", "m.o"],
        ["-c", "-O2", "-Wp,-MMD,m.d", "m.c", "-o", "m.o"],
        ["-c", "-O2", "-MD", "m.c"],
    ],
)
def test_clang_dependency_rules_leave_out_what_the_users_options_leave_out(
    args, proxy_env, tmp_path
):
    """-MMD's rule names no system header. The jail learns what clang read from
    CC_PRINT_HEADERS, which also makes clang's driver add -sys-header-deps: every -MMD rule
    listed stdio.h and the rest (all 136 of lua5.4's built with clang)."""
    files = {
        "m.c": '#include <stdio.h>\n#include "inc/h.h"\nint main(void) { return puts(H); }\n',
        "inc/h.h": '#define H "hi"\n',
    }
    env = {**proxy_env, "JAILCC_VERBOSE": "1"}
    local, remote, said = local_and_through_jailcc("clang-16", args, files, env, tmp_path)
    assert b"remote (sources) on" in said, said
    assert remote == local, said
    deps = [data for path, data in local[2].items() if path.suffix == ".d"]
    assert deps and (b"stdio.h" in deps[0]) == ("-MD" in args)


@pytest.mark.parametrize("compiler", ["clang-16", "gcc-12"])
def test_a_working_directory_named_in_latin_1_is_no_internal_error(compiler, proxy_env, tmp_path):
    """clang -v names the working directory, which need not be UTF-8: jailcc said "internal
    error (UnicodeDecodeError...)" on stderr, where the local compile says nothing."""
    root = tmp_path / os.fsdecode(b"lat\xe9n")
    root.mkdir()
    files = {"m.c": '#include <stdio.h>\nint main(void) { return puts("hi"); }\n'}
    local, remote, said = local_and_through_jailcc(
        compiler, ["-c", "-O2", "m.c"], files, {**proxy_env, "JAILCC_VERBOSE": "0"}, root
    )
    assert remote == local and local[2], said
    assert said == b""


def test_clang_under_the_name_cc_keeps_its_g_rules(proxy_env, tmp_path):
    """clang -g (DWARF 5: the line table holds the sources' MD5 sums) never goes preprocessed,
    also as `cc`: here the jail refuses the tree job (the link's directory is not in the
    image), and the compile is this machine's, not a preprocessed job in gcc's exact mode."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cc").symlink_to(os.path.realpath("/usr/bin/clang-16"))
    files = {
        "m.c": '#include "h.h"\nint f(int a) { return TWICE(a); }\n',
        "inc/h.h": "#define TWICE(x) \\\n  ((x) * 2)\n",
    }
    args = ["-c", "-g", "-O2", "-Iinc", "m.c"]
    env = {**proxy_env, "JAILCC_VERBOSE": "1"}
    local, remote, said = local_and_through_jailcc(str(bin_dir / "cc"), args, files, env, tmp_path)
    assert remote == local and local[2], said
    # clang's -g rule, not gcc's exact mode (a preprocessed job the server refuses for clang)
    assert b"which this job's debug info needs" in said, said


# Precompiled headers: gcc reads NAME.gch instead of NAME where it looks for NAME (the source's
# and -include's lookups), clang's driver NAME.pch or NAME.gch beside a -include NAME. gcc's
# dependency file then leaves out the headers the PCH holds, clang's object differs; the jail
# has no PCH, nor does gcc -E use one. (compiler, its args, the include, the PCH, environment)
PCH_HEADER = "#include <stdio.h>\n#include <stdlib.h>\nstruct thing { int a; char name[8]; };\n"
PCH_SOURCE = 'int f(struct thing *t) { printf("%d %s\\n", t->a, t->name); return abs(t->a); }\n'
PCH_CASES = {
    "gcc, beside the header": ("gcc-12", [], '"big.h"', "big.h.gch", {}),
    "gcc, -include": ("gcc-12", ["-include", "big.h"], None, "big.h.gch", {}),
    "gcc, an earlier -I directory": ("gcc-12", ["-Ipch", "-I."], "<big.h>", "pch/big.h.gch", {}),
    "gcc, a directory of them": ("gcc-12", [], '"big.h"', "big.h.gch/one.gch", {}),
    "gcc, preprocessed": (
        "gcc-12", [], '"big.h"', "big.h.gch", {"JAILCC_SHIP": "preprocessed"},
    ),
    "clang, -include": ("clang-16", ["-include", "big.h"], None, "big.h.pch", {}),
}  # fmt: skip


def _compile_twice(argv: list[str], env: dict, root: Path) -> list[tuple[int, bytes, dict]]:
    """argv run locally, then through jailcc: (exit code, stderr, the outputs t.o and t.d)."""
    runs = []
    for command in (argv, [JAILCC, *argv]):
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, timeout=120)
        outputs = {name: (root / name).read_bytes() for name in ("t.o", "t.d")}
        for name in outputs:
            (root / name).unlink()
        runs.append((done.returncode, done.stderr, outputs))
    return runs


@pytest.mark.parametrize("case", list(PCH_CASES))
def test_a_precompiled_header_compiles_locally(case, proxy_env, tmp_path):
    compiler, extra, include, pch, env = PCH_CASES[case]
    flags = ["-g", "-O2", "-Winvalid-pch"]
    (tmp_path / "t.c").write_text((f"#include {include}\n" if include else "") + PCH_SOURCE)
    (tmp_path / "big.h").write_text(PCH_HEADER)
    (tmp_path / pch).parent.mkdir(parents=True, exist_ok=True)
    made = [compiler, *flags, "-x", "c-header", "big.h", "-o", pch]
    subprocess.run(made, cwd=tmp_path, check=True)
    argv = [compiler, "-c", *flags, "-MD", *extra, "t.c"]
    local, remote = _compile_twice(argv, {**proxy_env, **env}, tmp_path)
    said = remote[1]
    assert local[0] == remote[0] == 0 and remote[2] == local[2], said
    assert b"compiling locally" in said or b"local (clang would use" in said, said
    # From the header's text the outputs differ: had jailcc compiled it elsewhere, it would show.
    os.unlink(tmp_path / pch)
    without, _ = _compile_twice(argv, {**proxy_env, **env}, tmp_path)
    assert without[2] != local[2]


@pytest.mark.parametrize("variable", ["DEPENDENCIES_OUTPUT", "SUNPRO_DEPENDENCIES"])
@pytest.mark.parametrize("value", ["dep.d", "dep.d custom-target"])
def test_a_dependency_file_named_by_the_environment_is_written(
    variable, value, proxy_env, tmp_path
):
    """gcc writes the make rule these name (without system headers, or with them) as well as
    the object: the jail's compile would not, so the job goes preprocessed, where the local
    gcc -E writes it; and the include analysis's compiler probe must not write one either."""
    (tmp_path / "m.c").write_text(
        '#include <stdio.h>\n#include "m.h"\nint main(void) { return M; }\n'
    )
    (tmp_path / "m.h").write_text("#define M 0\n")
    runs = []
    for command in (["gcc-12"], [JAILCC, "gcc-12"]):
        env = {**proxy_env, variable: value}
        argv = [*command, "-c", "-g", "-O2", "m.c", "-o", "sub/m.o"]
        (tmp_path / "sub").mkdir(exist_ok=True)
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        runs.append(((tmp_path / "dep.d").read_text(), (tmp_path / "sub/m.o").read_bytes()))
        (tmp_path / "dep.d").unlink()
        said = done.stderr
    assert runs[0] == runs[1], said
    assert "m.h" in runs[0][0]
    assert b"remote on" in said, said  # preprocessed


@pytest.mark.parametrize("variable", ["COMPILER_PATH", "GCC_EXEC_PREFIX"])
def test_a_compiler_told_to_run_other_programs_compiles_locally(variable, proxy_env, tmp_path):
    """COMPILER_PATH with a cc1 of its own (here one that drops the .comment section) and
    GCC_EXEC_PREFIX (here one that makes the local compile fail) change what gcc runs, which
    the image's gcc would not do."""
    programs = tmp_path / "programs"
    programs.mkdir()
    cc1 = programs / "cc1"
    real = subprocess.run(
        ["gcc-12", "-print-prog-name=cc1"], capture_output=True, text=True, check=True
    ).stdout.strip()
    cc1.write_text(f'#!/bin/sh\nexec {real} "$@" -fno-ident\n')
    cc1.chmod(0o755)
    value = str(programs) if variable == "COMPILER_PATH" else "/nonexistent/"
    env = {**proxy_env, variable: value}
    local, remote, said = local_and_through_jailcc(
        "gcc-12", ["-c", "-O2", "m.c"], {"m.c": "int f(void) { return 1; }\n"}, env, tmp_path
    )
    assert remote == local, said
    assert f"local ({variable} is set".encode() in said, said
    assert (local[0] == 0) == (variable == "COMPILER_PATH")


@pytest.mark.parametrize("macro", ["__BASE_FILE__", "__TIMESTAMP__"])
def test_macros_of_the_main_file_in_gcc_exact_debug_mode(macro, proxy_env, tmp_path):
    """-fdirectives-only leaves these to the server, which named the .i as the main file and
    gave the time it compiled (wrong objects, exit 0)."""
    env = {**proxy_env, "JAILCC_SHIP": "preprocessed"}
    source = tmp_path / "b.c"
    source.write_text(f"const char *b = {macro};\n")
    os.utime(source, (1577934245, 1577934245))  # 2020-01-02
    made = []
    for how in (["gcc-12"], [JAILCC, "gcc-12"]):
        done = subprocess.run(
            [*how, "-g", "-c", "b.c"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        made.append((tmp_path / "b.o").read_bytes())
    assert made[1] == made[0], done.stderr
    assert f"{macro} would be the server's" in done.stderr, done.stderr


def test_a_new_dependency_file_has_the_users_mode(proxy_env, tmp_path):
    """The proxy's own umask (022) narrowed the .d of a user whose umask is 002."""
    (tmp_path / "m.c").write_text("int f(void) { return 1; }\n")
    modes = []
    for how in (["gcc-12"], [JAILCC, "gcc-12"]):
        done = subprocess.run(
            ["sh", "-c", 'umask 002 && exec "$@"', "sh", *how, "-MD", "-c", "m.c"],
            cwd=tmp_path, env=proxy_env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        modes.append(((tmp_path / "m.d").stat().st_mode, (tmp_path / "m.o").stat().st_mode))
        (tmp_path / "m.d").unlink()
        (tmp_path / "m.o").unlink()
    assert modes[1] == modes[0] and modes[0][0] & 0o777 == 0o664, done.stderr
    assert "remote (sources)" in done.stderr, done.stderr


def test_outputs_in_a_directory_with_a_default_acl_get_what_it_says(proxy_env, tmp_path):
    """A default ACL makes the kernel ignore the umask: the proxy gave every new file the
    user's umask's mode, so objects others may not read came out world-readable."""
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["setfacl", "-d", "-m", "o::-,g:nogroup:rw", str(out)], check=True)
    (tmp_path / "m.c").write_text("int f(void) { return 1; }\n")
    seen = []
    for how in (["gcc-12"], [JAILCC, "gcc-12"]):
        done = subprocess.run(
            [*how, "-MD", "-c", "m.c", "-o", "out/m.o"],
            cwd=tmp_path, env=proxy_env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        acls = subprocess.run(
            ["getfacl", "-c", "out/m.o", "out/m.d"], cwd=tmp_path, capture_output=True, text=True
        )
        seen.append(acls.stdout)
        for name in ("m.o", "m.d"):
            (out / name).unlink()
    assert seen[1] == seen[0] and "other::---" in seen[0], seen
    assert "remote (sources)" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("compiler", "variable", "value"),
    [
        ("clang-16", "CCC_OVERRIDE_OPTIONS", "+-O2"),  # the object was -O0's
        ("gcc-12", "GCC_COMPARE_DEBUG", "1"),  # the object lacked -fcompare-debug's marks
        ("clang-16", "CC_PRINT_OPTIONS", "1"),  # with CC_PRINT_OPTIONS_FILE: no file written
    ],
)
def test_variables_that_change_the_compile_keep_it_local(
    compiler, variable, value, proxy_env, tmp_path
):
    env = {**proxy_env, variable: value, "CC_PRINT_OPTIONS_FILE": str(tmp_path / "opts.o")}
    local, remote, said = local_and_through_jailcc(
        compiler, ["-c", "-g", "m.c"], {"m.c": "int f(int x) { return x * 3; }\n"}, env, tmp_path
    )
    # (-fcompare-debug's objects differ between two local compiles: a random seed.)
    same = slice(0, 2) if variable == "GCC_COMPARE_DEBUG" else slice(0, 3)
    assert remote[same] == local[same] and local[0] == 0, said
    assert f"local ({variable} is set".encode() in said, said


@pytest.mark.parametrize("compiler", ["gcc-12", "clang-16"])
@pytest.mark.parametrize("spelling", ["{link}", "{link}/", "{real}/", "{link}/../link"])
def test_the_working_directory_as_pwd_names_it(compiler, spelling, proxy_env, tmp_path):
    """gcc and clang name the working directory in debug info as $PWD has it, written as it
    is, when it is the same directory (a path through a symlink, a trailing slash): the jail
    compiles in a directory of that name, or, when no directory's name is written so, the
    job goes preprocessed (gcc) or stays here (clang -g)."""
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    (real / "m.c").write_text('#include "m.h"\nint f(void) { return M; }\n')
    (real / "m.h").write_text("#define M 2\n")
    pwd = spelling.format(link=link, real=real)
    env = {**proxy_env, "PWD": pwd}
    objects = []
    for command in ([compiler], [JAILCC, compiler]):
        argv = [*command, "-c", "-g", "-O2", "m.c", "-o", "m.o"]
        done = subprocess.run(argv, cwd=link, env=env, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        objects.append((real / "m.o").read_bytes())
        (real / "m.o").unlink()
    assert objects[0] == objects[1], done.stderr
    assert pwd.encode() in objects[0]  # DW_AT_comp_dir, as written
    if spelling == "{link}":
        assert b"remote (sources) on" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "outputs",
    [
        ["-o", "../c.o", "-MD", "-MF", "../c.d"],
        ["-o", "../c.o", "-MD"],
        ["-o", "../c.o", "-Wp,-MD,../c.d"],
    ],
)
def test_outputs_through_a_symlinked_working_directory_land_where_the_kernel_says(
    outputs, proxy_env, tmp_path
):
    """In a directory reached through a symlink, `..` in an output's name is the real
    parent's (the kernel's answer), not $PWD's lexical one: the object and the dependency
    file land where the local compiler puts them."""
    (tmp_path / "other" / "sub").mkdir(parents=True)
    (tmp_path / "lnk").symlink_to(tmp_path / "other" / "sub")
    (tmp_path / "a.c").write_text("int x;\n")
    env = {**proxy_env, "PWD": str(tmp_path / "lnk")}
    made = []
    for command in (["gcc-12"], [JAILCC, "gcc-12"]):
        argv = [*command, "-c", "../../a.c", *outputs]
        done = subprocess.run(argv, cwd=tmp_path / "lnk", env=env, capture_output=True)
        assert done.returncode == 0, done.stderr
        files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.suffix in (".o", ".d")}
        for path in files:
            path.unlink()
        made.append(files)
    assert made[1] == made[0], done.stderr
    assert set(made[0]) >= {tmp_path / "other" / "c.o", tmp_path / "other" / "c.d"}


@pytest.mark.parametrize("compiler", ["gcc-12", "g++-12"])
def test_empty_include_directories_are_there_in_the_jail(compiler, proxy_env, tmp_path):
    """gcc's -Wmissing-include-dirs names each -I directory that does not exist: one that
    exists here but gives no file must exist in the jail too (the jail makes a tree's
    directories from its files); one that exists nowhere is named by both."""
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    outside = Path(tempfile.mkdtemp(prefix="jailcc-outside-"))
    try:
        flags = ["-Wmissing-include-dirs", "-Iempty/deeper", "-iquote", "empty", "-Inowhere"]
        files = {"m.c": "int x;\n"}
        local, remote, said = local_and_through_jailcc(
            compiler, [*flags, "-c", "m.c"], files, proxy_env, tmp_path
        )
        assert remote == local, said
        assert b"nowhere" in local[1] and b"empty" not in local[1]
        assert b"remote (sources) on" in said, said
        # An empty directory outside the tree: the jail cannot have it; preprocessed.
        flags = ["-Wmissing-include-dirs", f"-I{outside}"]
        local, remote, said = local_and_through_jailcc(
            compiler, [*flags, "-c", "m.c"], files, proxy_env, tmp_path
        )
        assert remote == local, said
        assert b"-Wmissing-include-dirs" in said and b"(sources)" not in said, said
    finally:
        outside.rmdir()


@pytest.mark.parametrize("ship", ["sources", "preprocessed"])
def test_what_the_system_refuses_is_the_compilers_to_say(ship, proxy_env, tmp_path):
    """A full disk under the dependency file, a response file too long to expand into a
    command line: the local compile says what it says; jailcc adds nothing of its own (it
    said "internal error")."""
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        (full / "fill").write_bytes(b"x" * (64 << 10))
        (tmp_path / "a.c").write_text("int x;\n")
        (tmp_path / "many.rsp").write_text(" ".join(f"-DX{n}={n}" for n in range(100_000)))
        env = {**proxy_env, "JAILCC_VERBOSE": "0", "JAILCC_SHIP": ship}
        for args in (["-MD", "-MF", str(full / "a.d")], ["@many.rsp"]):
            said = []
            for command in (["gcc-12"], [JAILCC, "gcc-12"]):
                done = subprocess.run(
                    [*command, "-c", "a.c", "-o", "a.o", *args],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    timeout=300,
                )
                said.append((done.returncode, done.stderr))
            assert said[1] == said[0], said
    finally:
        subprocess.run(["umount", str(full)], check=True)


@pytest.mark.parametrize("proxy", ["1", "0"])
def test_a_closed_stderr_is_the_compilers_to_handle(proxy, proxy_env, tmp_path):
    """`cc -Wall -c w.c 2>&-`: gcc cannot print its warning and fails, leaving no object;
    through jailcc the remote compile's warning went nowhere and the object was written."""
    (tmp_path / "w.c").write_text("int f(int a) { int unused; return a; }\n")
    env = {**proxy_env, "JAILCC_VERBOSE": "0", "JAILCC_PROXY": proxy}
    outcomes = []
    for command in ("gcc-12", f"{JAILCC} gcc-12"):
        line = f"exec 2>&-; exec {command} -Wall -c w.c -o w.o"
        done = subprocess.run(["sh", "-c", line], cwd=tmp_path, env=env, timeout=120)
        outcomes.append((done.returncode, (tmp_path / "w.o").exists()))
        (tmp_path / "w.o").unlink(missing_ok=True)
    assert outcomes[0] == outcomes[1] == (1, False), outcomes


@pytest.mark.parametrize("same_mtime", [False, True])
def test_copies_that_say_pragma_once_compile_as_locally(same_mtime, proxy_env, tmp_path):
    """Two copies of one header saying #pragma once: gcc reads the second unless both have
    the same mtime as well (then it takes them for one file). The jail's copies would agree
    on theirs; locally they differ here, and the second's struct is defined again: an error,
    which jailcc must give too, not an object."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.h").write_text("#pragma once\nstruct s { int x; };\n")
    stamp = os.stat(tmp_path / "a" / "x.h").st_mtime_ns
    later = stamp if same_mtime else stamp + 5 * 10**9
    os.utime(tmp_path / "b" / "x.h", ns=(later, later))
    files = {"m.c": '#include "a/x.h"\n#include "b/x.h"\nint f(struct s *p) { return p->x; }\n'}
    local, remote, said = local_and_through_jailcc(
        "gcc-12", ["-c", "-O2", "m.c"], files, proxy_env, tmp_path
    )
    assert remote == local, said
    assert (local[0] == 0) == same_mtime, local


@pytest.mark.parametrize("compiler", ["clang-16", "gcc-12"])
@pytest.mark.parametrize("link", ["sub/inc.h", "sym.h"])
def test_one_header_by_two_names_that_says_pragma_once(compiler, link, proxy_env, tmp_path):
    """A symlink to a header that says #pragma once: clang reads it once (one inode), the
    jail's two copies twice (n came out 2 remotely, 1 locally, exit 0)."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "inc.h").write_text("#pragma once\n+1\n")
    (tmp_path / link).symlink_to("../inc.h" if "/" in link else "inc.h")
    files = {"m.c": f'int n = 0\n#include "inc.h"\n#include "{link}"\n;\n'}
    local, remote, said = local_and_through_jailcc(
        compiler, ["-c", "-O2", "m.c"], files, proxy_env, tmp_path
    )
    assert remote == local and local[0] == 0, said


@pytest.mark.parametrize(
    ("compiler", "ship", "urls", "term"),
    [
        ("gcc-12", "sources", None, "xterm-256color"),
        ("gcc-12", "sources", "st", "xterm-256color"),
        ("gcc-12", "preprocessed", "no", "xterm-256color"),
        ("gcc-12", "preprocessed", None, "xterm-256color"),
        ("clang-16", "sources", None, "xterm-256color"),
        # Terminals gcc prints no links on by itself (auto_enable_urls), unless told to.
        ("gcc-12", "sources", None, "xterm"),
        ("gcc-12", "preprocessed", None, "linux"),
        ("gcc-12", "sources", "bel", "xterm"),
    ],
)
def test_diagnostics_on_a_terminal_as_the_local_compiler_prints_them(
    compiler, ship, urls, term, proxy_env, tmp_path
):
    """On a terminal gcc colours its warnings and links each to its option's documentation
    (OSC 8, ended as GCC_URLS or TERM_URLS say); clang colours them. The jail's stderr is no
    terminal: jailcc asks for both, and hands the variables on."""
    (tmp_path / "w.c").write_text("int f(void) { int unused; return 0; }\n")
    env = {**proxy_env, "TERM": term, "JAILCC_VERBOSE": "0", "JAILCC_SHIP": ship}
    if urls is not None:
        env["GCC_URLS"] = urls
    printed = []
    for command in ([compiler], [JAILCC, compiler]):
        line = shlex.join([*command, "-Wall", "-c", "w.c", "-o", "w.o"])
        done = subprocess.run(
            ["script", "-qec", line, "/dev/null"], cwd=tmp_path, env=env, capture_output=True
        )
        assert done.returncode == 0, done.stdout
        printed.append(done.stdout)
    assert printed[0] == printed[1]
    assert b"\x1b[" in printed[0] and b"unused" in printed[0]
    links = urls not in ("no", None) or (urls is None and term not in ("xterm", "linux"))
    assert (b"\x1b]8;;https://" in printed[0]) == (compiler == "gcc-12" and links)


@pytest.mark.parametrize("ship", ["sources", "preprocessed"])
def test_machine_readable_fixits_asked_for_by_the_environment(ship, proxy_env, tmp_path):
    """GCC_EXTRA_DIAGNOSTIC_OUTPUT=fixits-v2 makes gcc print each fix-it as a line an IDE
    reads (`fix-it:"p.c":{1:1-1:1}:"#include <stdio.h>\n"`); the jail's gcc must hear it."""
    (tmp_path / "p.c").write_text('int main(void) { printf("hi\\n"); return 0; }\n')
    env = {**proxy_env, "JAILCC_VERBOSE": "0", "JAILCC_SHIP": ship}
    env["GCC_EXTRA_DIAGNOSTIC_OUTPUT"] = "fixits-v2"
    said = []
    for command in (["gcc-12"], [JAILCC, "gcc-12"]):
        done = subprocess.run(
            [*command, "-Wall", "-c", "p.c", "-o", "p.o"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
        )
        assert done.returncode == 0, done.stderr
        said.append(done.stderr)
    assert b'fix-it:"p.c"' in said[0]
    assert said[1] == said[0]


@pytest.mark.parametrize(
    ("compiler", "flags"),
    [
        ("gcc-12", ["-g"]),
        ("gcc-12", ["-frecord-gcc-switches"]),
        ("clang-16", ["-g", "-grecord-command-line"]),
        ("clang-16", ["-frecord-command-line"]),
    ],
)
def test_the_terminal_leaves_the_object_as_a_local_compile_makes_it(
    compiler, flags, proxy_env, tmp_path
):
    """Objects that record the compile's options (gcc's debug info always, either compiler
    when asked) get none of the terminal's: gcc records -fdiagnostics-urls, clang records
    -fdiagnostics-color. (gcc's links are then missing from jailcc's warnings: a known
    difference, on a terminal only.)"""
    (tmp_path / "w.c").write_text("int f(void) { int unused; return 0; }\n")
    env = {**proxy_env, "TERM": "xterm-256color", "JAILCC_VERBOSE": "1"}
    objects, said = [], b""
    for command in ([compiler], [JAILCC, compiler]):
        line = shlex.join([*command, "-Wall", "-O2", *flags, "-c", "w.c", "-o", "w.o"])
        done = subprocess.run(
            ["script", "-qec", line, "/dev/null"], cwd=tmp_path, env=env, capture_output=True
        )
        assert done.returncode == 0, done.stdout
        objects.append((tmp_path / "w.o").read_bytes())
        said = done.stdout
    assert objects[0] == objects[1], said
    assert b"remote" in said, said


@pytest.mark.parametrize("proxy", ["1", "0"])
def test_file_names_that_are_not_utf8(proxy, proxy_env, tmp_path):
    """A source and a header named with bytes that are no UTF-8: the object and dependency
    file as a local compile's, and jailcc's own line names the file as its bytes are (it
    ended in a UnicodeEncodeError traceback, exit 1, with JAILCC_VERBOSE)."""
    root = os.fsencode(tmp_path)
    with open(root + b"/h\xff.h", "wb") as f:
        f.write(b"#define V 3\n")
    with open(root + b"/s\xfe.c", "wb") as f:
        f.write(b'#include "h\xff.h"\nint f(void) { return V; }\n')
    env = {**proxy_env, "JAILCC_PROXY": proxy}
    outputs = []
    for command in ([b"gcc-12"], [os.fsencode(JAILCC), b"gcc-12"]):
        argv = [*command, b"-g", b"-c", b"s\xfe.c", b"-o", b"s.o", b"-MD", b"-MF", b"s.d"]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs.append(((tmp_path / "s.o").read_bytes(), (tmp_path / "s.d").read_bytes()))
    assert outputs[0] == outputs[1]
    assert b"jailcc: s\xfe.c: remote" in done.stderr, done.stderr


FAILING = {
    "error": "int f(void) { return undeclared; }\n",
    "missing header": '#include <stdio.h>\n#include "absent.h"\nint f(void) { return 1; }\n',
    "warning as error": "int f(int a) { int unused; return a; }\n",
}


@pytest.mark.parametrize("compiler", ["gcc-12", "g++-12", "clang-16"])
@pytest.mark.parametrize("case", list(FAILING))
def test_a_failed_compile_is_the_answer_once_the_jail_vouches_for_its_misses(
    case, compiler, proxy_env, tmp_path
):
    """A compile error (configure's failing checks, a developer's typo) ran twice: remotely,
    then locally for exact diagnostics. With gcc's read log the jail names every header it
    looked for in vain, the client checks them, and the remote failure is the answer: the same
    status, diagnostics, dependency file and old object as the local compile leaves (clang has
    no such log: it still compiles locally, and ends the same)."""
    (tmp_path / "inc").mkdir()
    (tmp_path / "f.c").write_text(FAILING[case])
    args = ["-Wall", "-Werror", "-Iinc", "-c", "f.c", "-o", "f.o", "-MD", "-MF", "f.d"]
    ends = []
    for command in ([compiler], [JAILCC, compiler]):
        for name in ("f.o", "f.d"):
            (tmp_path / name).write_bytes(b"old\n")
        done = subprocess.run(
            [*command, *args], cwd=tmp_path, env=proxy_env, capture_output=True, timeout=120
        )
        lines = done.stderr.splitlines(True)
        said = b"".join(line for line in lines if line.startswith(b"jailcc: "))
        stderr = b"".join(line for line in lines if not line.startswith(b"jailcc: "))
        left = {
            name: (tmp_path / name).read_bytes() if (tmp_path / name).exists() else None
            for name in ("f.o", "f.d")
        }
        ends.append((done.returncode, stderr, left))
    assert ends[1] == ends[0] and ends[0][0] == 1, (ends, said)
    if compiler == "clang-16":
        assert b"locally" in said, said
    else:
        assert b"remote (sources) on" in said and b"locally" not in said, said


def test_a_failed_compile_into_a_directory_missing_here_is_the_local_compiles(proxy_env, tmp_path):
    """The jail makes the outputs' directories; where one is missing here, gcc also fails
    to open the dependency file there, which only the local compile says."""
    (tmp_path / "f.c").write_text(FAILING["error"])
    args = ["-c", "f.c", "-o", "out/f.o", "-MD", "-MF", "out/f.d"]
    ends = []
    for command in (["gcc-12"], [JAILCC, "gcc-12"]):
        done = subprocess.run(
            [*command, *args], cwd=tmp_path, env=proxy_env, capture_output=True, timeout=120
        )
        lines = done.stderr.splitlines(True)
        ends.append((done.returncode, [x for x in lines if not x.startswith(b"jailcc: ")]))
    assert ends[1] == ends[0] and b"dependency file" in b"".join(ends[0][1]), ends
    assert b"out/f.o: its directory is missing here" in done.stderr, done.stderr


def _twin_runs(
    tmp_path: Path, env: dict, compiler: str, args: list[str], files: list[str], setup=None
):
    """The compile run locally, then through jailcc, in tmp_path, each from the same files
    (the `files` as left by the caller, restored between the runs, or as setup() makes
    them): (exit code, stderr, what each of `files` holds, or None) of each, and what
    jailcc said."""
    saved = {n: (tmp_path / n).read_bytes() for n in files if (tmp_path / n).is_file()}
    ends, said = [], b""
    for command in ([compiler], [JAILCC, compiler]):
        for n in files:
            (tmp_path / n).unlink(missing_ok=True)
        if setup is not None:
            setup()
        for n, data in saved.items() if setup is None else ():
            (tmp_path / n).write_bytes(data)
        done = subprocess.run(
            [*command, *args], cwd=tmp_path, env=env, capture_output=True, timeout=120
        )
        lines = done.stderr.splitlines(True)
        said = b"".join(x for x in lines if x.startswith(b"jailcc: "))
        stderr = b"".join(x for x in lines if not x.startswith(b"jailcc: "))
        left = {n: (tmp_path / n).read_bytes() if (tmp_path / n).is_file() else None for n in files}
        ends.append((done.returncode, stderr, left))
    return ends[0], ends[1], said


def _symlinked(tmp_path: Path) -> None:
    """lnk -> other/deep, so "lnk/.." is other/ to the kernel and tmp_path to the letter."""
    (tmp_path / "other" / "deep").mkdir(parents=True)
    (tmp_path / "other" / "deps").mkdir()
    (tmp_path / "lnk").symlink_to("other/deep")


@pytest.mark.parametrize(
    "case",
    ["source through the symlink", "header through the symlink", "deps through the symlink"],
)
def test_names_through_a_symlink_and_dotdot_compile_as_locally(case, proxy_env, tmp_path):
    """The jail lays names out as they read ("lnk/.." is the directory lnk is in); this
    machine's kernel takes ".." from lnk's target. A job whose names go that way must end as
    the local compile does, not fail in the jail (and a failure must not be taken for the
    answer unchecked)."""
    _symlinked(tmp_path)
    (tmp_path / "other" / "h.h").write_text("#define H 1\n")
    (tmp_path / "other" / "a.c").write_text("int a = 1;\n")
    (tmp_path / "m.c").write_text('#include "lnk/../h.h"\nint m = H;\n')
    args = {
        "source through the symlink": ["-c", "lnk/../a.c", "-o", "a.o"],
        "header through the symlink": ["-c", "m.c", "-o", "a.o"],
        "deps through the symlink": ["-c", "m.c", "-Iother", "-o", "a.o"],
    }[case]
    if case == "deps through the symlink":
        (tmp_path / "m.c").write_text("int m = 1;\n")
        args += ["-MD", "-MF", "lnk/../deps/a.d"]
    files = ["a.o", "other/deps/a.d"]
    local, remote, said = _twin_runs(tmp_path, proxy_env, "gcc-12", args, files)
    assert local[0] == 0 and remote == local, (local, remote, said)


BROKEN = "int f(void) { return undeclared; }\n"


@pytest.mark.parametrize(
    ("case", "args", "files"),
    [
        ("-pipe", ["-pipe", "-c", "a.c", "-o", "a.o"], ["a.o"]),
        ("-pipe to a hard link", ["-pipe", "-c", "a.c", "-o", "a.o"], ["a.o", "b.o"]),
        ("-S into a directory", ["-S", "a.c", "-o", "adir"], []),
        ("two -MD names", ["-c", "a.c", "-o", "a.o", "-MD", "-Wp,-MD,b.d"], ["a.o", "a.d", "b.d"]),
        ("-MMD then -Wp,-MF", ["-c", "a.c", "-o", "a.o", "-MMD", "-Wp,-MF,b.d"], ["a.d", "b.d"]),
    ],
)
def test_a_failed_compile_leaves_what_gcc_leaves(case, args, files, proxy_env, tmp_path):
    """Where gcc's failure leaves its outputs otherwise than a plain cc1 error does (-pipe
    deletes the object, cc1 -S opens its output first, cc1 takes the last dependency file's
    name), the local compile is the answer."""
    (tmp_path / "a.c").write_text(BROKEN)
    (tmp_path / "adir").mkdir()

    def old_outputs() -> None:
        for name in files:
            (tmp_path / name).write_bytes(b"OLD\n")
        if case == "-pipe to a hard link":
            (tmp_path / "b.o").unlink()
            os.link(tmp_path / "a.o", tmp_path / "b.o")

    local, remote, said = _twin_runs(tmp_path, proxy_env, "gcc-12", args, files, old_outputs)
    assert local[0] == 1 and remote == local, (local, remote, said)
    if case == "-pipe":  # the remote failure is the answer: gcc's driver deletes the object
        assert b"remote" in said and b"locally" not in said, said


@pytest.mark.parametrize(
    "extra", [[], ["-g"], ["-fdiagnostics-color=auto"], ["-g", "-fdiagnostics-urls=auto"]]
)
def test_a_failure_on_a_terminal_prints_as_locally(extra, proxy_env, tmp_path):
    """Colours and gcc's links from a warning to its option's page, on a terminal: "auto"
    written out is the terminal's choice too, and links that gcc would record in the debug
    info (-g) the remote compile cannot print: such a failure compiles locally."""
    (tmp_path / "w.c").write_text("int f(void) { int unused; return 0; }\n")
    env = {**proxy_env, "TERM": "xterm-256color", "JAILCC_VERBOSE": "0"}
    printed = []
    for command in (["gcc-12"], [JAILCC, "gcc-12"]):
        line = shlex.join([*command, "-Wall", "-Werror", *extra, "-c", "w.c", "-o", "w.o"])
        done = subprocess.run(
            ["script", "-qec", line, "/dev/null"], cwd=tmp_path, env=env, capture_output=True
        )
        printed.append((done.returncode, done.stdout))
    assert printed[0] == printed[1] and printed[0][0] == 1, printed
    assert b"\x1b]8;;https://" in printed[0][1] and b"\x1b[" in printed[0][1]
