"""Toolchain images: build, manifest, identity, verify, bad input, and real compiles inside a
loop-mounted image that must give the same object bytes as the host.

The gcc_image (gcc-12 + g++-12) and clang_image fixtures come from conftest.py (session-scoped).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jailcc.images import squashfs
from jailcc.images.errors import ImageError
from jailcc.images.identity import compiler_identity
from jailcc.images.manifest import MANIFEST_PATH, CompilerEntry, make_manifest
from jailcc.images.squashfs import read_manifest

JAILCC_IMAGE = str(Path(sys.executable).parent / "jailcc-image")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting images needs root")
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
# A private mount namespace: its mounts vanish with the command, even if the test fails.
UNSHARE = ["unshare", "-m", "--propagation", "private", "sh", "-c"]

C_SOURCE = """\
#include <string.h>
static const char greeting[] = "hello";
int count(const char *s, char c) { int n = 0; for (; *s; s++) n += *s == c; return n; }
int main(void) { return count(greeting, 'l') + (int)strlen(greeting); }
"""
CXX_SOURCE = """\
#include <algorithm>
#include <vector>
template <typename T> T total(const std::vector<T> &v) { T s{}; for (auto x : v) s += x; return s; }
int sorted_total(std::vector<int> v) { std::sort(v.begin(), v.end()); return total(v); }
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JAILCC_IMAGE, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jailcc-image: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def ask(compiler: str, flag: str) -> str:
    return subprocess.run(
        [compiler, flag], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def identity_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, private identity cache (compiler_identity reads XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "jailcc" / "identity.v1"


# --- manifest and identity ---------------------------------------------------------------


def test_gcc_manifest(gcc_image: Path, identity_cache: Path) -> None:
    m = read_manifest(str(gcc_image))
    assert [c.name for c in m.compilers] == ["gcc-12", "g++-12"]
    for entry in m.compilers:
        host = f"/usr/bin/{entry.name}"
        assert (entry.kind, entry.path) == ("gcc", host)
        assert entry.version == ask(host, "-dumpfullversion") == "12.2.0"
        assert entry.target == ask(host, "-dumpmachine") == "x86_64-linux-gnu"
        assert entry.identity == compiler_identity(host)
    assert m.compilers[0].identity != m.compilers[1].identity  # g++ has cc1plus too
    for path in (
        "/usr/lib/gcc/x86_64-linux-gnu/12/cc1",
        "/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus",
        "/usr/bin/x86_64-linux-gnu-as",
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "/usr/lib/x86_64-linux-gnu/libbfd-2.40-system.so",
    ):
        assert m.files[path] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert m.symlinks["/lib64"] == "usr/lib64"
    assert m.symlinks["/usr/bin/gcc-12"] == "x86_64-linux-gnu-gcc-12"
    assert m.symlinks["/usr/bin/as"] == "x86_64-linux-gnu-as"
    assert m.created_by == "jailcc-image 0.1.0"


def test_clang_manifest(clang_image: Path, identity_cache: Path) -> None:
    m = read_manifest(str(clang_image))
    (entry,) = m.compilers
    assert (entry.name, entry.kind, entry.path) == ("clang-16", "clang", "/usr/bin/clang-16")
    assert entry.version == ask("/usr/bin/clang-16", "-dumpversion") == "16.0.6"
    assert entry.target == ask("/usr/bin/clang-16", "-dumpmachine")
    assert entry.identity == compiler_identity("/usr/bin/clang-16")
    assert "/usr/lib/llvm-16/bin/clang" in m.files
    assert "/usr/lib/x86_64-linux-gnu/libLLVM-16.so.1" in m.files
    assert "/usr/lib/llvm-16/lib/libclang-cpp.so.16" in m.files
    assert m.symlinks["/usr/bin/clang-16"] == "../lib/llvm-16/bin/clang"
    assert not any(p.endswith("-as") for p in m.files)  # the integrated assembler


def test_identity_is_cached(identity_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = compiler_identity("/usr/bin/gcc-12")
    assert first.startswith("sha256:") and identity_cache.is_file()

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit must not run anything")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert compiler_identity("/usr/bin/gcc-12") == first
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert compiler_identity("gcc-12") == first  # a name on PATH, same driver


def test_identity_follows_the_binary(identity_cache: Path, tmp_path: Path) -> None:
    # A copy of clang still finds its libraries (through ld.so.cache): same bytes, same
    # identity wherever it lives; one byte more and the cache must notice.
    copy = tmp_path / "bin" / "clang"
    copy.parent.mkdir()
    shutil.copy2("/usr/lib/llvm-16/bin/clang", copy)
    original = compiler_identity("/usr/bin/clang-16")
    assert compiler_identity(str(copy)) == original
    with copy.open("ab") as f:
        f.write(b"\0")
    changed = compiler_identity(str(copy))
    assert changed != original
    assert compiler_identity(str(copy)) == changed


def test_identity_rejects_non_compilers(identity_cache: Path) -> None:
    with pytest.raises(ImageError, match="does not look like gcc or clang"):
        compiler_identity("/bin/true")
    with pytest.raises(ImageError, match="not found"):
        compiler_identity("/nonexistent/gcc")


def test_identity_import_is_light() -> None:
    # The client imports this on every compile: nothing heavy may come with it.
    code = (
        "import sys; before = set(sys.modules); import jailcc.images.identity; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    new = set(out.stdout.split())
    assert not new & {"subprocess", "hashlib", "json", "typing", "shutil", "re", "dataclasses"}
    assert "jailcc.images.identity" in new


# --- the image itself --------------------------------------------------------------------


def test_info_prints_the_manifest(gcc_image: Path) -> None:
    result = run_cli("info", str(gcc_image))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(read_manifest(str(gcc_image)).to_json())


@pytest.mark.parametrize("image", ["gcc_image", "clang_image"])
def test_verify_passes(image: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    path = request.getfixturevalue(image)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    result = run_cli("verify", str(path), env={**os.environ, "TMPDIR": str(tmpdir)})
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert list(tmpdir.iterdir()) == []  # the extraction is cleaned up


def test_image_tree_is_clean(gcc_image: Path) -> None:
    listing = subprocess.run(
        ["unsquashfs", "-lln", "-UTC", str(gcc_image)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    entries = {}
    for line in listing:
        mode, owner, _size, date, _time, path, *_ = line.split()
        entries[path.removeprefix("squashfs-root")] = mode
        assert owner == "0/0", line
        assert mode[0] in "-dl" and not set(mode[1:]) & set("sS"), line  # no setuid/devices
        assert date == "1970-01-01", line
    assert entries["/tmp"] == "drwxrwxrwt" and entries["/proc"] == entries["/dev"] == "drwxr-xr-x"
    assert not [p for p in entries if p.startswith(("/tmp/", "/proc/", "/dev/"))]
    assert entries[MANIFEST_PATH] == "-rw-r--r--"
    assert entries["/lib64"].startswith("l")


def test_build_is_deterministic_and_reports_progress(gcc_image: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.img"
    result = run_cli(
        "build", "--compiler", "/usr/bin/gcc-12", "--compiler", "/usr/bin/g++-12", "-o", str(again)
    )
    assert result.returncode == 0, result.stderr
    assert "collecting" in result.stderr and "compressing" in result.stderr
    assert "no system headers (--headers)" in result.stderr  # what tree jobs will meet here
    assert again.read_bytes() == gcc_image.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.img"]


def test_help_documents_every_option() -> None:
    result = run_cli("build", "--help")
    assert result.returncode == 0
    for option in ("--compiler", "--output", "--compression", "--quiet"):
        assert option in result.stdout
    assert all(c in run_cli("--help").stdout for c in ("build", "info", "verify"))


# --- compiling inside the image ----------------------------------------------------------


@contextlib.contextmanager
def mounted(image: Path, where: Path) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", str(image), str(where)], check=True)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def gcc_root(gcc_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with mounted(gcc_image, tmp_path_factory.mktemp("gcc-mnt") / "root") as root:
        yield root


@pytest.fixture(scope="module")
def clang_root(clang_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with mounted(clang_image, tmp_path_factory.mktemp("clang-mnt") / "root") as root:
        yield root


# In a private mount namespace (gone, with its mounts, when the command exits): a writable
# /tmp and a /proc, as the jail has, then the compiler chrooted into the read-only image.
IN_IMAGE = (
    'mount --bind "$1" "$2/tmp" && mount -t proc proc "$2/proc" && root=$2 chroot=$3 && '
    'shift 3 && exec env -i PATH=/usr/bin:/bin LC_ALL=C "$chroot" "$root" "$@"'
)


@needs_root
@pytest.mark.parametrize(
    ("root", "compiler", "source", "lang_flags"),
    [
        ("gcc_root", "/usr/bin/gcc-12", C_SOURCE, []),
        ("gcc_root", "/usr/bin/g++-12", CXX_SOURCE, []),
        ("clang_root", "/usr/bin/clang-16", C_SOURCE, []),
        ("clang_root", "/usr/bin/clang-16", CXX_SOURCE, ["-x", "c++"]),
    ],
    ids=["gcc-c", "g++-c++", "clang-c", "clang-c++"],
)
def test_compile_in_image_matches_host(
    root: str,
    compiler: str,
    source: str,
    lang_flags: list[str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    mnt = request.getfixturevalue(root)
    cxx = source is CXX_SOURCE
    src = tmp_path / ("x.cc" if cxx else "x.c")
    src.write_text(source)
    pre = tmp_path / ("x.ii" if cxx else "x.i")  # the suffix tells gcc what it is
    subprocess.run(
        [compiler, *lang_flags, "-E", str(src), "-o", str(pre)], env=CLEAN_ENV, check=True
    )
    flags = [*lang_flags, "-O2", "-c"]
    host = subprocess.run(
        [compiler, *flags, str(pre), "-o", str(tmp_path / "host.o")],
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    assert host.returncode == 0, host.stderr
    chroot = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert chroot is not None
    jail = subprocess.run(
        [
            *UNSHARE,
            IN_IMAGE,
            "sh",
            str(tmp_path),
            str(mnt),
            chroot,
            compiler,
            *flags,
            f"/tmp/{pre.name}",
            "-o",
            "/tmp/jail.o",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert jail.returncode == 0, jail.stderr
    assert (tmp_path / "jail.o").read_bytes() == (tmp_path / "host.o").read_bytes()


# --- verify catches changes --------------------------------------------------------------


def test_verify_names_a_changed_byte(gcc_image: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    squashfs.extract(str(gcc_image), str(root))
    victim = root / "usr/bin/x86_64-linux-gnu-as"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(data)
    tampered = tmp_path / "tampered.img"
    squashfs.make_image(str(root), str(tampered))
    assert_one_line_error(
        run_cli("verify", str(tampered)), "/usr/bin/x86_64-linux-gnu-as", "content differs"
    )


@pytest.mark.parametrize("damage", ["middle", "truncated", "superblock"])
def test_verify_rejects_a_corrupt_image(damage: str, gcc_image: Path, tmp_path: Path) -> None:
    data = bytearray(gcc_image.read_bytes())
    if damage == "middle":
        mid = len(data) // 2
        data[mid : mid + 65536] = os.urandom(65536)
    elif damage == "truncated":
        del data[len(data) // 3 :]
    else:
        data[:96] = bytes(96)
    bad = tmp_path / "bad.img"
    bad.write_bytes(data)
    assert_one_line_error(run_cli("verify", str(bad)))
    if damage == "superblock":
        assert_one_line_error(run_cli("info", str(bad)), "not a readable squashfs image")


def _tiny_image(tmp_path: Path, change: str) -> Path:
    """A small image with a correct manifest, then one change made after the manifest."""
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin/x").write_bytes(b"x" * 100)
    (root / "bin/y").symlink_to("x")
    files = {"/bin/x": hashlib.sha256(b"x" * 100).hexdigest()}
    cc = CompilerEntry("cc", "gcc", "/bin/x", "1", "x86_64-linux-gnu", "sha256:0")
    manifest = make_manifest([cc], files, {"/bin/y": "x"}, "test")
    (root / ".jailcc").mkdir()
    (root / ".jailcc/manifest.json").write_text(manifest.to_json())
    if change == "missing":
        (root / "bin/x").unlink()
    elif change == "extra":
        (root / "bin/z").write_bytes(b"z")
    elif change == "relinked":
        (root / "bin/y").unlink()
        (root / "bin/y").symlink_to("/etc/passwd")
    elif change == "setuid":
        (root / "bin/x").chmod(0o4755)
    elif change == "fifo":
        os.mkfifo(root / "bin/z")
    image = tmp_path / "tiny.img"
    squashfs.make_image(str(root), str(image))
    return image


def test_verify_passes_a_tiny_image(tmp_path: Path) -> None:
    result = run_cli("verify", str(_tiny_image(tmp_path, "none")))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", "/bin/x is missing"),
        ("extra", "/bin/z (regular file) is not in the manifest"),
        ("relinked", "/bin/y points to /etc/passwd"),
        ("setuid", "/bin/x has a setuid/setgid bit"),
        ("fifo", "/bin/z (special file) is not in the manifest"),
    ],
)
def test_verify_names_the_first_problem(change: str, message: str, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("verify", str(_tiny_image(tmp_path, change))), message)


def test_verify_names_a_file_not_owned_by_root_also_when_not_root(tmp_path: Path) -> None:
    """jailccd verifies images as the network service's uid (monitor/unprivileged.py), where
    unsquashfs keeps no owners: the owners come from its numeric listing instead."""
    from jailcc.monitor.unprivileged import image_compilers

    image = _tiny_image(tmp_path, "none")
    root = tmp_path / "root"
    os.chown(root / "bin/x", 1000, 1000)
    image.unlink()
    subprocess.run(["mksquashfs", str(root), str(image), "-quiet", "-no-progress"], check=True)
    assert_one_line_error(run_cli("verify", str(image)), "/bin/x is not owned by root")
    with pytest.raises(ImageError, match="/bin/x is not owned by root"):
        image_compilers(str(image), (65534, 65534), verify=True)
    # The same image's manifest reads as any image's: only verify looks at owners.
    assert image_compilers(str(image), (65534, 65534)).compilers[0].name == "cc"


# --- bad input -----------------------------------------------------------------------------


def _build_fails(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    result = run_cli("build", *args, "-o", str(out_dir / "x.img"), env=env)
    assert_one_line_error(result)
    assert list(out_dir.iterdir()) == []  # no image, no temp file, no staging dir
    return result.stderr


def test_build_rejects_a_non_compiler(tmp_path: Path) -> None:
    assert "does not look like gcc or clang" in _build_fails(tmp_path, "--compiler", "/bin/true")


def test_build_rejects_a_missing_compiler(tmp_path: Path) -> None:
    err = _build_fails(tmp_path, "--compiler", "/nonexistent/gcc-12")
    assert "/nonexistent/gcc-12 not found" in err


def test_build_rejects_a_wrapper_script(tmp_path: Path) -> None:
    script = tmp_path / "gcc"
    script.write_text('#!/bin/sh\nexec /usr/bin/gcc-12 "$@"\n')
    script.chmod(0o755)
    assert "not an ELF executable" in _build_fails(tmp_path, "--compiler", str(script))


def test_build_rejects_a_gcc_without_cc1(tmp_path: Path) -> None:
    # A relocated copy of the driver looks for cc1 relative to itself and finds none.
    driver = tmp_path / "bin" / "gcc-12"
    driver.parent.mkdir()
    shutil.copy2("/usr/bin/x86_64-linux-gnu-gcc-12", driver)
    assert "cannot find its cc1" in _build_fails(tmp_path, "--compiler", str(driver))


def test_build_rejects_a_gcc_without_as(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    err = _build_fails(tmp_path, "--compiler", "/usr/bin/gcc-12", env=env)
    assert "cannot find its as on PATH" in err


def test_build_rejects_a_missing_output_dir(tmp_path: Path) -> None:
    result = run_cli("build", "--compiler", "/usr/bin/gcc-12", "-o", str(tmp_path / "no/x.img"))
    assert_one_line_error(result, "does not exist")
    assert list(tmp_path.iterdir()) == []


@needs_root
def test_build_rejects_a_read_only_output_dir(tmp_path: Path) -> None:
    # Root writes anywhere, so make the directory a read-only mount in a private namespace.
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
    result = subprocess.run(
        [
            *UNSHARE,
            script,
            "sh",
            str(out_dir),
            JAILCC_IMAGE,
            "build",
            "--compiler",
            "/usr/bin/gcc-12",
            "-o",
            str(out_dir / "x.img"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert_one_line_error(result, "not writable")
    assert list(out_dir.iterdir()) == []


def test_a_failed_build_leaves_the_old_image_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jailcc.images import build

    out = tmp_path / "x.img"
    out.write_bytes(b"the previous image")

    def half_written(root: str, target: str, compression: str) -> None:
        Path(target).write_bytes(b"partial")
        raise ImageError("mksquashfs failed: disk full")

    monkeypatch.setattr(build.squashfs, "make_image", half_written)
    with pytest.raises(ImageError, match="disk full"):
        build.build_image(["/usr/bin/gcc-12"], str(out), log=lambda _msg: None)
    assert out.read_bytes() == b"the previous image"
    assert [p.name for p in tmp_path.iterdir()] == ["x.img"]


@pytest.mark.parametrize("kind", ["missing", "not-squashfs", "no-manifest", "bad-manifest"])
def test_info_and_verify_reject_bad_images(kind: str, tmp_path: Path) -> None:
    image = tmp_path / "x.img"
    if kind == "not-squashfs":
        image.write_text("hello\n")
    elif kind in ("no-manifest", "bad-manifest"):
        root = tmp_path / "root"
        root.mkdir()
        (root / "file").write_text("x")
        if kind == "bad-manifest":
            (root / ".jailcc").mkdir()
            (root / ".jailcc/manifest.json").write_text("{not json")
        squashfs.make_image(str(root), str(image))
    expected = {
        "missing": "not found",
        "not-squashfs": "not a readable squashfs image",
        "no-manifest": "not a jailcc toolchain image",
        "bad-manifest": "damaged manifest",
    }[kind]
    with pytest.raises(ImageError, match=expected):
        read_manifest(str(image))
    for command in ("info", "verify"):
        assert_one_line_error(run_cli(command, str(image)), expected)


def test_a_headers_image_holds_clangs_names_on_path(headers_image: Path) -> None:
    """A tree job runs clang from the directory the user's was found in (its GCC installation
    is looked for from there): the image holds the names PATH gives clang's binary, though
    it was built from /usr/lib/llvm-16/bin/clang++ (conftest), and gcc's are not looked for."""
    info = json.loads(run_cli("info", str(headers_image)).stdout)
    links = info["symlinks"]
    assert {"/usr/bin/clang-16", "/usr/bin/clang++-16"} <= set(links), sorted(links)[:20]
    assert os.path.realpath("/usr/bin/clang-16") == "/usr/lib/llvm-16/bin/clang"
    assert "/usr/bin/gcc" not in links
