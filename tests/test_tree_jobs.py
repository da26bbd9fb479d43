"""Tree jobs (PROTOCOL.md, "Tree jobs"): the client ships the sources by content, the jail runs
the user's own compile once at the user's own paths. A real jailccd, real jails, and a raw
client built on core/protocol, against an image that holds the compilers' system headers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, build_image, requires_root
from jailcc import protocol as proto
from jailcc.images.identity import compiler_identity
from serverutil import Server, as_nobody, start_server, stop_server

pytestmark = requires_root

GCC, CLANG = "/usr/bin/gcc-12", "/usr/bin/clang-16"
X_C = b'#include <stdio.h>\n#include "a.h"\nint main(void) { printf("%d\\n", A); return 0; }\n'
A_H = b"#define A 42\n"
ARGS = ["-g", "-O2", "-c", "x.c", "-o", "x.o", "-Iinc", "-MD", "-MF", "x.d"]


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def server(headers_server: Server) -> Server:
    return headers_server


class Project:
    """A project in a temporary directory: root/src/x.c and root/src/inc/a.h; the compile
    runs in root/src."""

    def __init__(self, top: Path, files: dict[str, bytes] | None = None) -> None:
        self.root = top / "proj"
        self.cwd = self.root / "src"
        self.files = files or {"src/x.c": X_C, "src/inc/a.h": A_H}
        for rel, data in self.files.items():
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.root / rel).write_bytes(data)

    def write(self, rel: str, data: bytes) -> None:
        self.files[rel] = data
        (self.root / rel).write_bytes(data)

    def job(self, ident: str, args: list[str] = ARGS, **changes: object) -> dict:
        header = {
            "id": 7,
            "identity": ident,
            "kind": "tree",
            "args": args,
            "cwd": str(self.cwd),
            "root": str(self.root),
            "tree": [[rel, digest(data), len(data)] for rel, data in self.files.items()],
            "image": [["/usr/include/stdio.h", digest(Path("/usr/include/stdio.h").read_bytes())]],
            "outputs": [str(self.cwd / "x.o"), str(self.cwd / "x.d")],
            "env": {"LC_ALL": "C"},
            "source": "x.c",
        }
        header.update(changes)
        return header

    def blobs(self) -> dict[str, bytes]:
        return {digest(data): data for data in self.files.values()}


def connect(server: Server, compiler: str = GCC) -> socket.socket:
    sock = server.connect()
    proto.send(
        sock, proto.HELLO, proto.hello_header("client", identity=compiler_identity(compiler))
    )
    proto.expect(sock, proto.HELLO)
    proto.expect(sock, proto.READY)
    return sock


def run(
    sock: socket.socket, job: dict, blobs: dict[str, bytes]
) -> tuple[list[str] | None, int, dict, list[bytes]]:
    """Send a tree job, answer its NEED if any: (the digests asked for, and the answer)."""
    proto.send(sock, proto.JOB, job)
    frame_type, header, out = proto.recv(sock)
    need = None
    if frame_type == proto.NEED:
        need = header["missing"]
        assert header["id"] == job["id"] and len(set(need)) == len(need)
        for start in range(0, len(need), proto.MAX_BLOBS):
            part = need[start : start + proto.MAX_BLOBS]
            data = [blobs[d] for d in part]
            proto.send(
                sock, proto.BLOBS, {"id": job["id"], "digests": part}, data, [True] * len(data)
            )
        frame_type, header, out = proto.recv(sock)
    return need, frame_type, header, out


def refused(sock: socket.socket, job: dict, blobs: dict[str, bytes] | None = None) -> dict:
    _, frame_type, header, _ = run(sock, job, blobs or {})
    assert frame_type == proto.ERROR, header
    return header


def local(compiler: str, project: Project, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "LC_ALL": "C"}  # as the jobs ask for
    return subprocess.run([compiler, *args], cwd=project.cwd, capture_output=True, env=env)


def driver(compiler: str) -> dict[str, str]:
    """What a clang job says of its driver's mode (PROTOCOL.md, "driver")."""
    return {"driver": "/usr/bin/clang"} if compiler == CLANG else {}


def check_reads(project: Project, reads: list[list[str]]) -> None:
    """Every file the jail read is this machine's file at that path."""
    for name, got in reads:
        path = Path(name) if name.startswith("/") else project.cwd / name
        assert got == digest(path.read_bytes()), name


@pytest.mark.parametrize("compiler", [GCC, CLANG])
def test_a_tree_job_is_a_local_compile(server, tmp_path, compiler):
    project = Project(tmp_path)
    done = local(compiler, project, ARGS)
    assert done.returncode == 0, done.stderr
    obj, deps = (project.cwd / "x.o").read_bytes(), (project.cwd / "x.d").read_bytes()
    (project.cwd / "x.o").unlink()
    (project.cwd / "x.d").unlink()
    with connect(server, compiler) as sock:
        job = project.job(compiler_identity(compiler), **driver(compiler))
        need, frame_type, header, out = run(sock, job, project.blobs())
        # A new jail asks for both files; a reused one may hold them from an earlier test.
        assert need is None or set(need) <= set(project.blobs())
        assert frame_type == proto.RESULT, header
        assert header["exit_code"] == 0 and header["has_output"], out[1]
        assert header["outputs"] == [str(project.cwd / "x.o"), str(project.cwd / "x.d")]
        assert out[2] == obj and out[3] == deps  # byte-identical: same paths, same compile
        names = [name for name, _ in header["reads"]]
        assert names[0] == "x.c" and "inc/a.h" in names and "/usr/include/stdio.h" in names
        check_reads(project, header["reads"])
        # The same job again: everything is in the jail's store, no NEED.
        need, frame_type, header, _ = run(sock, job, {})
        assert need is None and frame_type == proto.RESULT and out[2] == obj


def test_only_what_changed_is_asked_for(server, tmp_path):
    project = Project(tmp_path)
    ident = compiler_identity(GCC)
    with connect(server) as sock:
        run(sock, project.job(ident), project.blobs())
        project.write("src/inc/a.h", b"#define A 43\n")
        need, frame_type, header, out = run(sock, project.job(ident), project.blobs())
        assert need == [digest(b"#define A 43\n")]
        assert frame_type == proto.RESULT and header["exit_code"] == 0
        assert ["inc/a.h", digest(b"#define A 43\n")] in header["reads"]
    # Without -M options, and with -MMD (whose rule leaves the system headers out).
    for args in (ARGS[:8], [*ARGS[:8], "-MMD"]):
        with connect(server) as sock:
            _, frame_type, header, out = run(sock, project.job(ident, args), project.blobs())
        assert frame_type == proto.RESULT and header["exit_code"] == 0, out[1]
        assert local(GCC, project, args).returncode == 0
        assert out[2] == (project.cwd / "x.o").read_bytes()
        names = [name for name, _ in header["reads"]]
        assert {"x.c", "inc/a.h", "/usr/include/stdio.h", "/usr/include/stdc-predef.h"} <= set(
            names
        )
        check_reads(project, header["reads"])


def test_outputs_go_to_directories_the_tree_does_not_have(server, tmp_path):
    """CMake's layout: the build directory holds no source, the object goes two levels down."""
    project = Project(tmp_path)
    project.cwd = project.root / "build"
    obj, dep = "CMakeFiles/t.dir/src/x.c.o", "CMakeFiles/t.dir/src/x.c.o.d"
    args = ["-g", "-I../src/inc", "-MD", "-MT", obj, "-MF", dep, "-o", obj, "-c", "../src/x.c"]
    (project.cwd / "CMakeFiles/t.dir/src").mkdir(parents=True)
    done = local(GCC, project, args)
    assert done.returncode == 0, done.stderr
    job = project.job(
        compiler_identity(GCC), args, outputs=[str(project.cwd / obj), str(project.cwd / dep)]
    )
    with connect(server) as sock:
        _, frame_type, header, out = run(sock, job, project.blobs())
    assert frame_type == proto.RESULT and header["exit_code"] == 0, out[1]
    assert out[2] == (project.cwd / obj).read_bytes()
    assert out[3] == (project.cwd / dep).read_bytes()
    check_reads(project, header["reads"])


def test_cxx_headers_named_as_gxx_names_them(server, tmp_path):
    """C++: libstdc++'s headers are checked and reported as g++ names them; an image entry
    may name a file as a compiler may open it, through "..", resolved in the jail's image."""
    source = b"#include <vector>\nint f(int n) { return std::vector<int>(n).size(); }\n"
    project = Project(tmp_path, {"src/v.cc": source})
    args = ["-O2", "-g", "-c", "v.cc", "-o", "v.o"]
    deps = local("/usr/bin/g++-12", project, ["-M", "-MT", "x", "v.cc"]).stdout.decode()
    from jailcc.jobs.tree import parse_make_rule

    system = [name for name in parse_make_rule(deps) if name.startswith("/")]
    image = [[name, digest(Path(name).read_bytes())] for name in system]
    stdio = "/usr/lib/gcc/x86_64-linux-gnu/12/../../../../include/stdio.h"
    image.append([stdio, digest(Path(stdio).read_bytes())])
    done = local("/usr/bin/g++-12", project, args)
    assert done.returncode == 0, done.stderr
    job = project.job(
        compiler_identity("/usr/bin/g++-12"), args, image=image, outputs=[str(project.cwd / "v.o")]
    )
    with connect(server, "/usr/bin/g++-12") as sock:
        _, frame_type, header, out = run(sock, job, project.blobs())
    assert frame_type == proto.RESULT and header["exit_code"] == 0, out[1]
    assert out[2] == (project.cwd / "v.o").read_bytes()
    assert {name for name, _ in header["reads"]} == {"v.cc", *system}
    check_reads(project, header["reads"])


def test_a_compile_error_comes_back_as_a_local_one(server, tmp_path):
    project = Project(tmp_path)
    project.write("src/inc/a.h", b"#define A missing\n")
    ident = compiler_identity(GCC)
    done = local(GCC, project, ARGS)
    assert done.returncode == 1
    with connect(server) as sock:
        _, frame_type, header, out = run(sock, project.job(ident), project.blobs())
    assert frame_type == proto.RESULT and header["exit_code"] == 1
    assert out[1] == done.stderr and b"inc/a.h:1:11: error" in out[1]
    # What the local compile leaves: the dependency file, no object.
    assert header["outputs"] == [str(project.cwd / "x.d")] and header["has_output"]
    assert out[2] == (project.cwd / "x.d").read_bytes()


def test_a_blob_with_other_content_is_refused(server, tmp_path):
    project = Project(tmp_path, {"src/x.c": b"int x(void) { return 7; }\n"})
    ident = compiler_identity(GCC)
    job = project.job(ident, ["-c", "x.c", "-o", "x.o"], image=[])
    with connect(server) as sock:
        proto.send(sock, proto.JOB, job)
        frame_type, header, _ = proto.recv(sock)
        assert frame_type == proto.NEED
        (wanted,) = header["missing"]
        proto.send(
            sock, proto.BLOBS, {"id": 7, "digests": [wanted]}, [b"int x(void) { return 8; }\n"]
        )
        frame_type, header, _ = proto.recv(sock)
        assert frame_type == proto.ERROR and header["code"] == "protocol" and header["id"] == 7
        assert "other content" in header["message"]
        with pytest.raises(proto.ConnectionClosed):  # the connection ends
            proto.recv(sock)
    with connect(server) as sock:  # and the server goes on
        _, frame_type, header, _ = run(sock, job, project.blobs())
        assert frame_type == proto.RESULT and header["exit_code"] == 0
    # A blob the store holds is the size the tree says too (the job's limits went by those).
    ((path, held, size),) = job["tree"]
    with connect(server) as sock:
        proto.send(sock, proto.JOB, {**job, "tree": [[path, held, 1]]})
        frame_type, header, _ = proto.recv(sock)
        assert frame_type == proto.ERROR and header["code"] == "protocol", header
        assert f"{size} bytes, the tree says 1" in header["message"]


def _bad(project: Project, ident: str) -> list[tuple[dict, str, str]]:
    """(job, code, words in the message) for jobs that must be refused."""
    job = project.job
    fake = [["f.h", "sha256:" + "1" * 64, 1]]
    return [
        (job(ident, tree=[["src/../x.c", digest(X_C), len(X_C)]]), "protocol", "normalized"),
        (job(ident, tree=[["/etc/passwd", digest(X_C), len(X_C)]]), "protocol", "absolute"),
        (job(ident, tree=[["src/x.c", digest(X_C), len(X_C)]] * 2), "protocol", "twice"),
        (job(ident, root="/", cwd="/"), "tree", "root /"),
        (job(ident, root="/etc/p", cwd="/etc/p"), "tree", "cannot lie in /etc"),  # not "jail"
        (job(ident, root="/usr/proj", cwd="/usr/proj"), "tree", "toolchain image"),
        (job(ident, outputs=["/tmp/elsewhere.o"]), "protocol", "not beneath the root"),
        (job(ident, [*ARGS, "-fplugin=/tmp/evil.so"]), "policy", "-fplugin=/tmp/evil.so"),
        (job(ident, [*ARGS, "--sysroot", "/tmp"]), "policy", "--sysroot"),
        (job(ident, [*ARGS, "-Wp,-fplugin=/tmp/e.so"]), "policy", "-Wp,-fplugin"),
        (job(ident, [*ARGS, "inc/a.h"]), "policy", "exactly one input"),
        (job(ident, ["-c", "x.c", "-o", "../../x.o"]), "policy", "outside the job's root"),
        (job(ident, ["-c", "y.c"]), "policy", "not a file of the job's tree"),
        (
            job(ident, image=[["/usr/include/stdio.h", "sha256:" + "0" * 64]]),
            "tree",
            "/usr/include/stdio.h differs from the image's copy",
        ),
        (job(ident, image=[["/usr/include/no-such.h", fake[0][1]]]), "tree", "not in the image"),
        (job(ident, image=[[str(project.cwd / "x.c"), digest(X_C)]]), "tree", "not in the image"),
        (job(ident, image=[["/proc/self/environ", fake[0][1]]]), "tree", "not in the image"),
        (
            job(ident, tree=[[f"big{n}", "sha256:" + f"{n}" * 64, 100 << 20] for n in (1, 2)]),
            "tree",
            "too large",
        ),
        (
            job(ident, tree=[[f"d/f{n}.h", f"sha256:{n:064x}", 1] for n in range(30000)]),
            "tree",
            "30000 files: a tree job takes at most 20000",
        ),
        (
            # 20000 files, each in a directory of its own: more inodes than the work dir has.
            job(ident, tree=[[f"d{n}/f.h", f"sha256:{n:064x}", 1] for n in range(20000)]),
            "tree",
            "too many files",
        ),
        (job(ident, dirs="inc"), "protocol", "dirs must be a list"),
        (job(ident, dirs=["../up"]), "protocol", "not normalized"),
        (job(ident, dirs=["/etc"]), "protocol", "absolute"),
        (job(ident, dirs=["src/x.c/below"]), "protocol", "both a file and a directory"),
        (job(ident, dirs=[f"e{n}" for n in range(5000)]), "protocol", "at most 4096"),
        (job(ident, kind="forest"), "protocol", "unknown job kind"),
        (job(ident, driver="clang"), "protocol", "for clang only"),  # this is gcc
    ]


def test_refused_tree_jobs_say_why_and_the_connection_goes_on(server, tmp_path):
    project = Project(tmp_path)
    ident = compiler_identity(GCC)
    with connect(server) as sock:
        for job, code, words in _bad(project, ident):
            error = refused(sock, job)
            assert error["code"] == code and words in error["message"], (job["args"], error)
            assert error["id"] == 7
        _, frame_type, header, _ = run(sock, project.job(ident), project.blobs())
        assert frame_type == proto.RESULT and header["exit_code"] == 0
    with connect(server) as sock:  # the next connection is served as well
        _, frame_type, header, _ = run(sock, project.job(ident), project.blobs())
        assert frame_type == proto.RESULT and header["exit_code"] == 0
    assert server.proc.poll() is None


def test_the_store_is_kept_for_the_users_next_connection_and_evicts_old_blobs(
    headers_image, tmp_path
):
    srv = start_server(tmp_path / "srv", headers_image, "--allow-user", "root", "--store-mb", "1")
    try:
        ident = compiler_identity(GCC)
        args = ["-c", "x.c", "-o", "x.o"]
        big = [Project(tmp_path / f"p{n}", {"src/x.c": X_C, "src/inc/a.h": A_H}) for n in range(2)]
        for n, project in enumerate(big):
            project.write("src/pad.h", bytes([65 + n]) * (700 << 10))  # two do not fit in 1 MiB
        with connect(srv) as sock:
            need, frame_type, _, _ = run(sock, big[0].job(ident, args), big[0].blobs())
            assert frame_type == proto.RESULT and len(need) == 3
        # The same jail, its store still full, once the server has it back: a connection
        # that comes before that gets a new jail (which the loop then finds kept in turn).
        for attempt in range(10):
            time.sleep(0.1 * attempt)
            sock = connect(srv)
            need, frame_type, _, _ = run(sock, big[0].job(ident, args), big[0].blobs())
            assert frame_type == proto.RESULT
            if need is None:
                break
            sock.close()
        with sock:
            assert need is None
            need, _, _, _ = run(sock, big[1].job(ident, args), big[1].blobs())
            assert need == [digest(big[1].files["src/pad.h"])]  # x.c and a.h are shared
            need, _, _, _ = run(sock, big[0].job(ident, args), big[0].blobs())
            assert need == [digest(big[0].files["src/pad.h"])]  # evicted for p1's
            tree = [*big[0].job(ident)["tree"], ["x", f"sha256:{1:064x}", 2 << 20]]
            error = refused(sock, big[0].job(ident, args, tree=tree))
            assert error["code"] == "tree" and "too large" in error["message"]
            assert "--store-mb" in error["message"]
    finally:
        stop_server(srv)


def test_a_job_named_by_its_listing(server, tmp_path):
    """A tree job may be named by the digest of its listing (PROTOCOL.md, "listing"): the
    store keeps the listing of every tree job answered; one it lacks it asks for."""
    ident = compiler_identity(GCC)
    project = Project(tmp_path)

    def by_listing() -> tuple[dict, str, bytes]:
        ref, listing = proto.job_listing(project.job(ident))
        return {"id": 7, "kind": "tree", "image": [], "listing": ref}, ref, listing

    with connect(server) as sock:
        _, frame_type, header, _ = run(sock, project.job(ident), project.blobs())
        assert frame_type == proto.RESULT and header["exit_code"] == 0
    with connect(server) as sock:  # any connection of the user's: the store is the user's
        job, ref, listing = by_listing()
        need, frame_type, header, _ = run(sock, job, {})
        assert need is None and frame_type == proto.RESULT and header["exit_code"] == 0
        assert header["outputs"] == [str(project.cwd / "x.o"), str(project.cwd / "x.d")]
        # A listing the store lacks is asked for, then the files as ever.
        new_a_h = f"#define A 43 /* {os.urandom(8).hex()} */\n".encode()  # in no store yet
        project.write("src/inc/a.h", new_a_h)
        job, ref, listing = by_listing()
        need, frame_type, header, _ = run(sock, job, {ref: listing})
        assert need == [ref] and frame_type == proto.NEED
        assert header["missing"] == [digest(new_a_h)]
        proto.send(sock, proto.BLOBS, {"id": 7, "digests": header["missing"]}, [new_a_h])
        frame_type, header, _ = proto.recv(sock)
        assert frame_type == proto.RESULT and header["exit_code"] == 0
        error = refused(sock, {**project.job(ident), "listing": ref})
        assert error["code"] == "protocol" and "only id, kind" in error["message"]
        # A listing with other bytes than its digest ends the connection.
        ref = digest(b'{"kind":"tree"}x')
        need, frame_type, header, _ = run(sock, {**job, "listing": ref}, {ref: b'{"kind":"tree"}'})
        assert frame_type == proto.ERROR and header["code"] == "protocol", header
        with pytest.raises((proto.ConnectionClosed, OSError)):
            proto.send(sock, proto.JOB, project.job(ident))
            proto.recv(sock)
    with connect(server) as sock:  # a listing that names an id is refused as a bad blob
        bad = b'{"id":1,"kind":"tree"}'
        need, frame_type, header, _ = run(sock, {**job, "listing": digest(bad)}, {digest(bad): bad})
        assert frame_type == proto.ERROR and "no id" in header["message"], header


def _launcher_pid(srv: Server) -> int:
    import psutil

    for child in psutil.Process(srv.proc.pid).children(recursive=True):
        if "jailcc.sandbox.launcher" in " ".join(child.cmdline()):
            return child.pid
    raise AssertionError("no launcher under the server")


def test_a_users_jails_share_one_store_that_no_other_user_sees(headers_image, tmp_path):
    srv = start_server(
        tmp_path / "srv", headers_image, "--allow-user", "root", "--allow-user", "nobody"
    )
    try:
        ident = compiler_identity(GCC)
        project = Project(tmp_path)
        assert local(GCC, project, ARGS).returncode == 0
        obj = (project.cwd / "x.o").read_bytes()
        (tmp_path / "proj").chmod(0o755)  # nobody's job names the same files
        tmp_path.chmod(0o755)
        with connect(srv) as first:
            need, frame_type, _, _ = run(first, project.job(ident), project.blobs())
            assert frame_type == proto.RESULT and sorted(need) == sorted(project.blobs())
            # While the first connection holds its jail, a second one gets another jail,
            # which finds the blobs the first was sent.
            with connect(srv) as second:
                need, frame_type, _, _ = run(second, project.job(ident), project.blobs())
                assert frame_type == proto.RESULT and need is None

            def as_other_user() -> bytes:
                with connect(srv) as sock:
                    need, frame_type, _, _ = run(sock, project.job(ident), project.blobs())
                return json.dumps([frame_type, need]).encode()

            frame_type, need = json.loads(as_nobody(as_other_user))
            assert frame_type == proto.RESULT and sorted(need) == sorted(project.blobs())

            # A file of the store spoilt behind the jails' backs (as another jail of the
            # user's could) is asked for again, never compiled from.
            x_c = digest(project.files["src/x.c"]).removeprefix("sha256:")
            # In place, the same size: only the file's ctime tells the jails it changed.
            spoil = (
                f"for f in /run/jailcc/mnt/store*/{x_c}; do"
                " printf X | dd of=$f bs=1 conv=notrunc status=none; done"
            )
            mount_ns = f"--mount=/proc/{_launcher_pid(srv)}/ns/mnt"
            subprocess.run(["nsenter", mount_ns, "sh", "-c", spoil], check=True)
            need, frame_type, header, out = run(first, project.job(ident), project.blobs())
            assert frame_type == proto.RESULT and header["exit_code"] == 0
            assert need == [digest(project.files["src/x.c"])]
            assert out[2] == obj
    finally:
        stop_server(srv)


def test_a_root_in_the_image_is_a_clean_refusal_for_preprocessed_jobs_too(server, tmp_path):
    """The launcher refuses a work dir in the image before touching the jail, which goes on."""
    ident = compiler_identity(GCC)
    (tmp_path / "unit.c").write_bytes(b"int f(void) { return 1; }\n")
    pre = subprocess.run(
        ["gcc-12", "-E", "unit.c"], cwd=tmp_path, check=True, capture_output=True
    ).stdout
    job = {
        "id": 1,
        "identity": ident,
        "args": ["-O2"],
        "input": "unit.i",
        "mode": "c",
        "env": {},
        "files": [],
        "source": "unit.c",
    }
    with connect(server) as sock:
        for cwd in ("/usr/lib/x", "/lib/x", str(tmp_path), "/usr", str(tmp_path)):
            proto.send(sock, proto.JOB, {**job, "cwd": cwd}, [pre], [True])
            frame_type, header, _ = proto.recv(sock)
            if cwd.startswith("/tmp"):
                assert frame_type == proto.RESULT and header["exit_code"] == 0, header
            else:
                assert frame_type == proto.ERROR and header["code"] == "jail", header
                assert "toolchain image" in header["message"]


def test_headers_image_holds_the_system_headers(headers_image):
    info = subprocess.run(
        [str(BIN / "jailcc-image"), "info", str(headers_image)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert '"/usr/include/stdio.h"' in info
    assert f'"{os.path.realpath("/usr/lib/gcc/x86_64-linux-gnu/12/include/stddef.h")}"' in info


def test_make_rules_and_header_lists_are_read_as_the_compilers_write_them():
    from jailcc.jobs.tree import parse_header_list, parse_make_rule

    rule = (
        "x.o x.d: x.c /usr/include/stdio.h \\\n  ../sp\\ ace/b$$h\\#.h \\\n"
        " back\\\\\\ slash.h\n\n/usr/include/stdio.h:\n../sp\\ ace/b$$h\\#.h:\n"
    )
    assert parse_make_rule(rule) == [
        "x.c",
        "/usr/include/stdio.h",
        "../sp ace/b$h#.h",
        "back\\ slash.h",
    ]
    assert parse_header_list("/usr/include/stdio.h\n.. inc/a.h\n./../b.h\n") == [
        "/usr/include/stdio.h",
        "inc/a.h",
        "./../b.h",
    ]


def test_the_store_evicts_the_least_recently_used_but_never_the_jobs_own():
    from jailcc.jobs.blobstore import BlobMismatch, BlobStore, StoreFull

    store = BlobStore(10)
    blobs = {name: name.encode() * 4 for name in "abc"}  # 4 bytes each
    store.add(digest(blobs["a"]), blobs["a"])
    store.add(digest(blobs["b"]), blobs["b"])
    assert store.missing([digest(blobs["a"])]) == []  # a is now the most recently used
    store.add(digest(blobs["c"]), blobs["c"], keep={digest(blobs["c"])})
    assert digest(blobs["b"]) not in store and digest(blobs["a"]) in store
    with pytest.raises(StoreFull):
        store.add(digest(b"d" * 4), b"d" * 4, keep={digest(blobs["a"]), digest(blobs["c"])})
    with pytest.raises(BlobMismatch):
        store.add(digest(b"e"), b"f")


def test_file_names_with_spaces_dollars_and_hashes(server, tmp_path):
    name = "inc dir/b$h#.h"
    source = b'#include "b$h#.h"\nint f(void) { return B; }\n'
    project = Project(tmp_path, {"src/x.c": source, f"src/{name}": b"#define B 1\n"})
    for compiler, args in [
        (GCC, ["-c", "x.c", "-I", "inc dir"]),  # the read log
        (GCC, ["-c", "x.c", "-I", "inc dir", "-MMD"]),
        (CLANG, ["-c", "x.c", "-I", "inc dir"]),  # CC_PRINT_HEADERS
    ]:
        with connect(server, compiler) as sock:
            job = project.job(compiler_identity(compiler), args, image=[], **driver(compiler))
            _, frame_type, header, out = run(sock, job, project.blobs())
        assert frame_type == proto.RESULT and header["exit_code"] == 0, out[1]
        assert header["reads"][0] == ["x.c", digest(source)]
        assert [name, digest(b"#define B 1\n")] in header["reads"], header["reads"]
        check_reads(project, header["reads"])


def test_a_clang_job_names_its_drivers_mode(server, tmp_path):
    """The image names clang once for all its names, and the name sets the language of a .c
    file; the directory it was found in sets where it looks for its GCC installation: a clang
    job without "driver", or with a name other than clang's two gcc-style modes, or a
    directory the image lacks, is refused before anything runs."""
    project = Project(tmp_path)
    ident = compiler_identity(CLANG)
    refusals = [
        ({}, "protocol", "must be an absolute path"),
        ({"driver": "clang"}, "protocol", "must be an absolute path"),
        ({"driver": ["/usr/bin/clang"]}, "protocol", "must be an absolute path"),
        ({"driver": "/usr/bin/clang-cl"}, "protocol", "is named clang or clang++"),
        ({"driver": "/usr/bin/x86_64-linux-gnu-clang"}, "protocol", "is named clang or"),
        ({"driver": "/no/such/bin/clang"}, "tree", "/no/such/bin is not in the image"),
        ({"driver": f"{project.root}/bin/clang"}, "tree", "is not in the image"),
    ]
    with connect(server, CLANG) as sock:
        for named, code, words in refusals:
            error = refused(sock, project.job(ident, **named))
            assert error["code"] == code and words in error["message"], (named, error)
        job = project.job(ident, **driver(CLANG))
        _, frame_type, header, _ = run(sock, job, project.blobs())
        assert frame_type == proto.RESULT and header["exit_code"] == 0
        assert header["driver"] == "/usr/bin/clang"


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> Iterator[None]:
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_tree_sent_as_a_difference_from_the_last_one(server, tmp_path):
    """tree_delta: against the connection's last tree job answered with a RESULT, under the
    same root; without such a tree, a clear refusal and the connection goes on."""
    project = Project(tmp_path)
    ident = compiler_identity(GCC)
    with connect(server) as sock:
        whole = project.job(ident)
        orphan = {k: v for k, v in whole.items() if k != "tree"}
        orphan["tree_delta"] = {"remove": [], "add": whole["tree"]}
        assert "without a previous tree" in refused(sock, orphan)["message"]
        _, frame_type, header, _ = run(sock, whole, project.blobs())
        assert frame_type == proto.RESULT and header["exit_code"] == 0
        # A header changes: only it goes, as a difference; the object is the new one's.
        project.write("src/inc/a.h", A_H + b"int extra;\n")
        changed = project.job(ident)
        delta = {k: v for k, v in changed.items() if k != "tree"}
        delta["tree_delta"] = {
            "remove": [],
            "add": [e for e in changed["tree"] if e not in whole["tree"]],
        }
        assert len(delta["tree_delta"]["add"]) == 1
        need, frame_type, header, out = run(sock, delta, project.blobs())
        assert frame_type == proto.RESULT and header["exit_code"] == 0, out[1]
        assert need == [digest(A_H + b"int extra;\n")]
        check_reads(project, header["reads"])
        # Both ways at once is malformed.
        both = {**delta, "tree": changed["tree"]}
        assert "either tree or tree_delta" in refused(sock, both)["message"]


def test_the_read_log_tells_every_file_read_and_every_name_looked_for(server, tmp_path):
    """gcc with -MMD (whose rule omits system headers) in one compile: the image's read log
    reports the system headers read, and the names the header search and __has_include
    looked for in vain, a directory on the include path among them."""
    source = X_C + b'#if __has_include("nothere.h")\n#error no\n#endif\n'
    files = {"src/x.c": source, "src/inc/a.h": A_H, "src/inc/stdio.h/keep": b""}
    project = Project(tmp_path, files)
    args = ["-g", "-O2", "-c", "x.c", "-o", "x.o", "-Iinc", "-MMD", "-MP"]
    done = local(GCC, project, args)
    assert done.returncode == 0, done.stderr
    obj, deps = (project.cwd / "x.o").read_bytes(), (project.cwd / "x.d").read_bytes()
    with connect(server) as sock:
        _, frame_type, header, out = run(
            sock, project.job(compiler_identity(GCC), args), project.blobs()
        )
    assert frame_type == proto.RESULT and header["exit_code"] == 0, out[1]
    assert out[2:] == [obj, deps]
    names = [name for name, _ in header["reads"]]
    assert {"x.c", "inc/a.h", "/usr/include/stdio.h", "/usr/include/stdc-predef.h"} <= set(names)
    check_reads(project, header["reads"])
    assert {"nothere.h", "inc/nothere.h", "inc/stdio.h"} <= set(header["misses"])
    assert "inc/stdio.h" not in names
    for name in header["misses"]:
        assert not (project.cwd / name).is_file(), name


def test_read_logs_are_trusted_only_whole():
    from jailcc.jobs.tree import parse_read_log

    assert parse_read_log(b"Rx.c\0M/usr/include/a.h\0Rx.c\0") == (["x.c"], ["/usr/include/a.h"])
    assert parse_read_log(b"") == ([], [])
    for bad in (b"Rx.c", b"?\0", b"R\0", b"Xx.c\0", b"R\xff.h\0"):
        assert parse_read_log(bad) is None, bad


@pytest.fixture(scope="module")
def server_without_read_log(images_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """gcc-12 with its headers, built with --no-read-log: the jail learns what a compile read
    from gcc's own dependency output."""
    image = build_image(images_dir / "no-read-log.img", GCC, headers=True, read_log=False)
    srv = start_server(tmp_path_factory.mktemp("no-read-log"), image, "--allow-user", "root")
    yield srv
    stop_server(srv)


@pytest.mark.parametrize(
    "deps",
    [
        [],  # SUNPRO_DEPENDENCIES
        ["-MD", "-MF", "x.d"],  # the user's own -MF file
        ["-MMD", "-MP"],  # a preprocessing-only pass first
    ],
)
def test_without_the_read_log_the_compilers_dependency_output_tells(
    server_without_read_log, tmp_path, deps
):
    project = Project(tmp_path)
    args = [*ARGS[:8], *deps]
    done = local(GCC, project, args)
    assert done.returncode == 0, done.stderr
    wanted = [project.cwd / "x.o", *([project.cwd / "x.d"] if deps else [])]
    expected = [path.read_bytes() for path in wanted]
    job = project.job(compiler_identity(GCC), args, outputs=[str(p) for p in wanted])
    with connect(server_without_read_log) as sock:
        _, frame_type, header, out = run(sock, job, project.blobs())
    assert frame_type == proto.RESULT and header["exit_code"] == 0, out[1]
    assert out[2:] == expected and "misses" not in header
    names = [name for name, _ in header["reads"]]
    assert {"x.c", "inc/a.h", "/usr/include/stdio.h", "/usr/include/stdc-predef.h"} <= set(names)
    check_reads(project, header["reads"])


def test_a_tree_or_a_header_past_the_users_memory_is_refused_busy(headers_image, tmp_path):
    """--user-memory counts a tree job's files (held in the jail's memory from the store's
    first look to the job's end) and what a header parses to, not only the frames' bytes: a
    24 MiB tree, or a header of 200000 empty objects (600 KB, counted as some 40 MB once
    parsed), is refused busy with 20 MiB to spend; a 12 MiB tree compiles."""
    srv = start_server(
        tmp_path / "srv", headers_image, "--allow-user", "root", "--user-memory", "20"
    )
    try:
        ident = compiler_identity(GCC)
        for size, answer in ((24 << 20, proto.ERROR), (12 << 20, proto.RESULT)):
            project = Project(tmp_path / str(size))
            project.write("src/inc/unread.h", b"/* never included */\n" * (size // 22))
            with connect(srv) as sock:
                need, frame_type, header, _ = run(sock, project.job(ident), project.blobs())
                assert frame_type == answer, header
                if answer == proto.ERROR:
                    assert header["code"] == "busy" and need is None, header
                    sock.settimeout(30)
                    assert sock.recv(1) == b""  # the connection ended
        with connect(srv) as sock:
            padded = project.job(ident, pad=[{}] * 200_000)
            _, frame_type, header, _ = run(sock, padded, project.blobs())
            assert frame_type == proto.ERROR and header["code"] == "busy", header
    finally:
        stop_server(srv)
