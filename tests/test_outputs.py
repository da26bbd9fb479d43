"""Outputs are written as the local compiler writes them (client/outputs.py): device files and
FIFOs in place, symlinks, hard links and failed compiles as gcc-12 and clang-16 treat them.
Each case runs the real compiler locally and `jailcc` against a real jailccd on twin trees and
compares what the two left behind: node types, symlink targets, contents, device numbers."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from serverutil import Server, start_server, stop_server

pytestmark = requires_root
JAILCC = str(BIN / "jailcc")
GOOD = b"int f(int x) { return x * 3; }\n"
BAD = b"int f(void) { return y; }\n"


@pytest.fixture(scope="module")
def server(
    gcc_image: Path, clang_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("outputs-server"),
        gcc_image,
        "--toolchain-image",
        str(clang_image),
        "--allow-user",
        "root",
    )
    yield srv
    stop_server(srv)


def env_for(server: Server | None, ship: str = "preprocessed") -> dict[str, str]:
    # Preprocessed jobs by default, whose failed compiles come back as the answer too (a tree
    # job's failed compile is compiled locally); tree jobs write their outputs through the
    # same client/outputs.py (test_tree_jobs_leave_outputs_as_the_local_compiler_does).
    hosts = f"unix:{server.socket_path}" if server else "unix:/nonexistent.sock"
    return dict(os.environ, JAILCC_VERBOSE="1", LC_ALL="C", JAILCC_HOSTS=hosts, JAILCC_SHIP=ship)


def snapshot(top: Path) -> dict[str, tuple]:
    """What a build left in a tree: each entry's kind and what identifies its content."""
    seen: dict[str, tuple] = {}
    for path in sorted(top.rglob("*")):
        st = path.lstat()
        name = str(path.relative_to(top))
        if stat.S_ISLNK(st.st_mode):
            seen[name] = ("symlink", os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            seen[name] = ("file", path.read_bytes(), st.st_nlink, oct(st.st_mode & 0o7777))
        elif stat.S_ISCHR(st.st_mode):
            seen[name] = ("chr", st.st_rdev)
        elif stat.S_ISFIFO(st.st_mode):
            seen[name] = ("fifo",)
        else:
            seen[name] = ("other", stat.S_IFMT(st.st_mode))
    return seen


def mkfile(name: str, data: bytes = b"old output\n", mode: int = 0o644) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / name).write_bytes(data)
        (d / name).chmod(mode)

    return make


def mksymlink(name: str, target: str, target_data: bytes | None = None) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        if target_data is not None:
            (d / target).write_bytes(target_data)
        (d / name).symlink_to(target)

    return make


def mkhardlink(name: str, other: str) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / other).write_bytes(b"old output\n")
        os.link(d / other, d / name)

    return make


def mkchr(name: str) -> Callable[[Path], None]:
    # A private null device: writes vanish, and the node must stay a character device.
    return lambda d: os.mknod(d / name, stat.S_IFCHR | 0o666, os.makedev(1, 3))


def compile_both(
    tmp: Path,
    server: Server,
    compiler: str,
    args: list[str],
    source: bytes,
    prepare,
    ship: str = "preprocessed",
) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess, dict, dict]:
    """Run the local compile and jailcc's in twin trees at the same path (for identical
    objects); return both processes and both snapshots."""
    same = tmp / "build"
    results = []
    for env in (None, env_for(server, ship)):
        same.mkdir()
        (same / "x.c").write_bytes(source)
        if prepare is not None:
            prepare(same)
        argv = [compiler, *args] if env is None else [JAILCC, compiler, *args]
        proc = subprocess.run(argv, cwd=same, env=env or env_for(None), capture_output=True)
        results.append((proc, snapshot(same)))
        subprocess.run(["rm", "-rf", str(same)], check=True)
    (local, local_tree), (ours, our_tree) = results
    return local, ours, local_tree, our_tree


def where(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode().splitlines() if ln.startswith("jailcc: ")]
    return lines[-1] if lines else ""


CASES = [
    # (output, what exists before, source)
    ("x.o", None, GOOD),
    ("x.o", mkfile("x.o"), GOOD),
    ("x.o", mkfile("x.o", b"", 0o600), GOOD),  # BFD rewrites an empty file, keeping its mode
    ("link.o", mksymlink("link.o", "target.o", b"old target\n"), GOOD),
    ("link.o", mksymlink("link.o", "missing.o"), GOOD),
    ("h1.o", mkhardlink("h1.o", "h2.o"), GOOD),
    ("null", mkchr("null"), GOOD),
    ("devlink.o", mksymlink("devlink.o", "/dev/null"), GOOD),
    ("x.o", mkfile("x.o"), BAD),
    ("link.o", mksymlink("link.o", "target.o", b"old target\n"), BAD),
    ("null", mkchr("null"), BAD),
]
IDS = ["new", "regular", "empty", "symlink", "dangling", "hardlink", "chrdev", "to-devnull"]
IDS += ["fail-regular", "fail-symlink", "fail-chrdev"]


@pytest.mark.parametrize("compiler", ["gcc-12", "clang-16"])
@pytest.mark.parametrize("mode", ["-c", "-S"])
@pytest.mark.parametrize(("output", "prepare", "source"), CASES, ids=IDS)
def test_outputs_are_left_as_the_local_compiler_leaves_them(
    server, tmp_path, compiler, mode, output, prepare, source
):
    args = ["-O2", mode, "x.c", "-o", output]
    local, ours, local_tree, our_tree = compile_both(
        tmp_path, server, compiler, args, source, prepare
    )
    assert ours.returncode == local.returncode, ours.stderr
    if source is BAD and mode == "-S" and compiler == "gcc-12" and output == "link.o":
        # cc1 wrote part of the .s through the link before failing: only a local run can
        assert "leaves part of its output" in where(ours.stderr), ours.stderr
    else:
        assert "remote on unix:" in where(ours.stderr), ours.stderr
    assert our_tree == local_tree


@pytest.fixture(scope="module")
def tree_server(headers_server: Server) -> Server:
    """The server with system headers, its proxy started (tree jobs go through a proxy)."""
    env = env_for(headers_server, "sources")
    subprocess.run([JAILCC, "proxy", "start"], env=env, check=True, capture_output=True)
    return headers_server


@pytest.mark.parametrize("compiler", ["gcc-12", "clang-16"])
@pytest.mark.parametrize(("output", "prepare", "source"), CASES[:8], ids=IDS[:8])
def test_tree_jobs_leave_outputs_as_the_local_compiler_does(
    tree_server, tmp_path, compiler, output, prepare, source
):
    args = ["-O2", "-c", "x.c", "-o", output]
    local, ours, local_tree, our_tree = compile_both(
        tmp_path, tree_server, compiler, args, source, prepare, ship="sources"
    )
    assert ours.returncode == local.returncode == 0, ours.stderr
    assert "remote (sources) on unix:" in where(ours.stderr), ours.stderr
    assert our_tree == local_tree


def test_dev_null_as_the_output_stays_the_device(server, tmp_path):
    """The report: `jailcc gcc-12 -c x.c -o /dev/null` as root replaced the host's /dev/null."""
    (tmp_path / "x.c").write_bytes(GOOD)
    before = os.stat("/dev/null")
    for args in (["-c", "x.c", "-o", "/dev/null"], ["-S", "x.c", "-o", "/dev/null"]):
        proc = subprocess.run(
            [JAILCC, "gcc-12", "-O2", *args], cwd=tmp_path, env=env_for(server), capture_output=True
        )
        assert proc.returncode == 0, proc.stderr
        assert "remote on unix:" in where(proc.stderr)
        after = os.stat("/dev/null")
        assert stat.S_ISCHR(after.st_mode) and after.st_rdev == os.makedev(1, 3)
        assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def read_into(path: Path, received: list[bytes]) -> None:
    received.append(path.read_bytes())


@pytest.mark.parametrize("compiler", ["gcc-12", "clang-16"])
def test_a_fifo_gets_the_object_or_the_local_compilers_error(server, tmp_path, compiler):
    """clang writes an object into a FIFO; gcc's assembler cannot (it seeks): jailcc must do
    the same, the first remotely, the second by compiling locally for the exact error."""
    results = []
    for env in (None, env_for(server)):
        work = tmp_path / ("local" if env is None else "ours")
        work.mkdir()
        (work / "x.c").write_bytes(GOOD)
        os.mkfifo(work / "pipe.o")
        received: list[bytes] = []
        reader = threading.Thread(target=read_into, args=(work / "pipe.o", received))
        reader.start()
        argv = [compiler, "-O2", "-c", "x.c", "-o", "pipe.o"]
        if env is not None:
            argv.insert(0, JAILCC)
        proc = subprocess.run(argv, cwd=work, env=env or env_for(None), capture_output=True)
        # If the compiler failed before opening the FIFO, the reader still waits: release it.
        # Non-blocking, so that a reader that already finished leaves nothing to wait for.
        with contextlib.suppress(OSError):
            os.close(os.open(work / "pipe.o", os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=30)
        assert stat.S_ISFIFO((work / "pipe.o").lstat().st_mode)
        results.append((proc, received[0]))
    (local, local_bytes), (ours, our_bytes) = results
    assert ours.returncode == local.returncode
    assert our_bytes == local_bytes
    if compiler == "clang-16":
        assert local.returncode == 0 and our_bytes.startswith(b"\x7fELF")
        assert "remote on unix:" in where(ours.stderr)
    else:
        assert local.returncode != 0
        assert "compiling locally" in where(ours.stderr) or "local" in where(ours.stderr)


def test_a_directory_as_the_output_gets_the_compilers_own_error(server, tmp_path):
    (tmp_path / "x.c").write_bytes(GOOD)
    (tmp_path / "out.o").mkdir()
    args = ["gcc-12", "-c", "x.c", "-o", "out.o"]
    local = subprocess.run(args, cwd=tmp_path, capture_output=True)
    ours = subprocess.run([JAILCC, *args], cwd=tmp_path, env=env_for(server), capture_output=True)
    assert ours.returncode == local.returncode != 0
    assert (tmp_path / "out.o").is_dir()


def test_a_fifo_nobody_reads_is_left_to_a_local_compile(tmp_path, monkeypatch):
    """A proxy thread must not wait for ever on a FIFO whose reader never comes (the build
    that asked may be gone): after FIFO_WAIT the job compiles locally, whose wait dies with
    the build; a reader that comes in time gets the object."""
    from jailcc.client import outputs

    monkeypatch.setattr(outputs, "FIFO_WAIT", 0.3)
    fifo = tmp_path / "out.o"
    os.mkfifo(fifo)
    with pytest.raises(outputs.OutputError, match="nobody reads the FIFO"):
        outputs.write(str(fifo), b"object", 0o022, outputs.plan(str(fifo), True, False))
    received: list[bytes] = []
    late_reader = threading.Timer(0.1, read_into, (fifo, received))
    late_reader.start()
    outputs.write(str(fifo), b"object" * 20000, 0o022, outputs.plan(str(fifo), True, False))
    late_reader.join(timeout=10)
    assert received == [b"object" * 20000]


@pytest.mark.parametrize("compiler", ["gcc-12", "clang-16"])
@pytest.mark.parametrize("ship", ["preprocessed", "sources"])
@pytest.mark.parametrize(
    ("output", "prepare"),
    [("x.c", None), ("./x.c", None), ("link.o", mksymlink("link.o", "x.c"))],
    ids=["same", "spelled-otherwise", "symlink"],
)
def test_an_output_that_is_the_input_is_the_compilers_to_handle(
    tree_server, tmp_path, compiler, ship, output, prepare
):
    """`gcc -c x.c -o x.c` (or through a link to x.c): gcc refuses it and the source stays;
    clang writes its object there. jailcc had written the object over the source for both."""
    args = ["-O2", "-c", "x.c", "-o", output]
    local, ours, local_tree, our_tree = compile_both(
        tmp_path, tree_server, compiler, args, GOOD, prepare, ship=ship
    )
    assert ours.returncode == local.returncode, ours.stderr
    assert our_tree == local_tree
    assert "local (the output is the input file)" in where(ours.stderr), ours.stderr
    if compiler == "gcc-12":
        assert local.returncode == 1 and local_tree["x.c"] == ("file", GOOD, 1, "0o644")
