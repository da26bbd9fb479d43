"""Shared fixtures: real toolchain images built once per session, the probe binary, and a
sandbox (one launcher) for the tests that need no sandbox of their own."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")


def pytest_configure(config: pytest.Config) -> None:
    """Mount again any cgroup v1 hierarchy an interrupted cgroup_v2 run left unmounted."""
    if os.geteuid() == 0:
        import cgroup_release

        try:
            for line in cgroup_release.repair():
                print(f"conftest: {line}", file=sys.stderr)
        except (OSError, RuntimeError) as exc:  # the marker stays: the next start tries again
            print(f"conftest: WARNING: {exc}", file=sys.stderr)


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir() -> Iterator[Path]:
    """The tests' per-user proxies live in a runtime dir of the session's own (each test's
    settings make a proxy, a socket, a lock and a log): not in the host's /tmp/jailcc-UID or
    /run/user. At the end every proxy still up there is stopped and the dir removed."""
    # Short: a Unix socket's path has 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="jcc-run-", dir="/tmp"))
    before = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(path)
    try:
        yield path
    finally:
        for proxy in (path / "jailcc").glob("proxy-*.sock"):
            env = {**os.environ, "JAILCC_PROXY_SOCKET": str(proxy)}
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    [str(BIN / "jailcc"), "proxy", "stop"], env=env, capture_output=True, timeout=30
                )
        if before is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = before
        shutil.rmtree(path, ignore_errors=True)


def build_image(out: Path, *compilers: str, headers: bool = False, read_log: bool = True) -> Path:
    cmd = [str(BIN / "jailcc-image"), "build", "-o", str(out), *(["--headers"] if headers else [])]
    cmd += [] if read_log else ["--no-read-log"]
    for compiler in compilers:
        cmd += ["--compiler", compiler]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def gcc_image(images_dir: Path) -> Path:
    """gcc-12 and g++-12 in one image."""
    return build_image(images_dir / "gcc-12.img", "/usr/bin/gcc-12", "/usr/bin/g++-12")


@pytest.fixture(scope="session")
def clang_image(images_dir: Path) -> Path:
    return build_image(images_dir / "clang-16.img", "/usr/bin/clang-16")


@pytest.fixture(scope="session")
def headers_image(images_dir: Path) -> Path:
    """gcc-12, g++-12 and clang-16 with their system headers (jailcc-image build --headers),
    which tree jobs compile against. The image's entry for clang's binary (one identity for
    all its names) is its C++ driver in LLVM's own directory: a jail that ran it as it is
    named would compile a clang-16 user's C as C++, and look for the GCC installation from
    another directory than the user's /usr/bin (C++ debug info would name other paths)."""
    compilers = ("/usr/bin/gcc-12", "/usr/bin/g++-12", "/usr/lib/llvm-16/bin/clang++")
    return build_image(images_dir / "headers.img", *compilers, headers=True)


@pytest.fixture(scope="session")
def probe_binary(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from jailcc.selftest.probes import build_probe_binary

    return build_probe_binary(str(tmp_path_factory.mktemp("probe")))


@pytest.fixture(scope="session")
def sandbox(gcc_image: Path) -> Iterator[object]:
    from jailcc.sandbox.api import Sandbox

    with Sandbox({"gcc-12": str(gcc_image)}) as sb:
        yield sb


@pytest.fixture
def root_server(gcc_image: Path, tmp_path: Path) -> Iterator[object]:
    """A jailccd of its own on a Unix socket, for root (the test's user), with the gcc image."""
    from serverutil import start_server, stop_server

    srv = start_server(tmp_path / "srv", gcc_image, "--allow-user", "root")
    yield srv
    if srv.proc.poll() is None:
        stop_server(srv)


@pytest.fixture(scope="module")
def headers_server(
    headers_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """A jailccd for root serving the image with system headers, which tree jobs need: one
    per test module."""
    from serverutil import start_server, stop_server

    srv = start_server(
        tmp_path_factory.mktemp("tree-server"), headers_image, "--allow-user", "root"
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def sim() -> object:
    """scripts/simulate_farm.py, loaded as a module."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "simulate_farm.py"
    spec = importlib.util.spec_from_file_location("simulate_farm", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["simulate_farm"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session", autouse=True)
def proxies_do_not_outlive_the_tests() -> Iterator[None]:
    """jailcc starts per-user proxies on demand (one per JAILCC_HOSTS); make those the tests
    start leave soon after their last job, and stop any still running at the end."""
    import psutil

    os.environ["JAILCC_PROXY_IDLE"] = "20"
    # Never browse mDNS on this machine's own network: tests that discover servers do it
    # inside network namespaces of their own, with their own environment.
    os.environ["JAILCC_DISCOVER"] = ""
    # ...nor read this machine's user's hosts file (~/.config/jailcc/hosts): tests name their
    # servers themselves, and the discovery tests need "nothing configured".
    config_home = tempfile.mkdtemp(prefix="jailcc-test-config-")
    os.environ["XDG_CONFIG_HOME"] = config_home
    started = time.time()
    yield
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        cmdline = proc.info["cmdline"] or []
        if "jailcc.client.proxy" in cmdline and proc.info["create_time"] >= started - 1:
            with contextlib.suppress(psutil.Error):
                # Ours only (they have our XDG_CONFIG_HOME): not another session's proxies.
                if proc.environ().get("XDG_CONFIG_HOME") == config_home:
                    proc.terminate()
    shutil.rmtree(config_home, ignore_errors=True)


@pytest.fixture(scope="session")
def sources() -> Path:
    """Debian's zlib, lua5.4 and re2 sources (scripts/fetch-sources); skips the tests that need
    them when the archive cannot be reached."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import projects

    proc = projects.fetch()
    if proc.returncode == 75:
        pytest.skip("the Debian source archive is unreachable from here")
    assert proc.returncode == 0, proc.stderr
    return projects.SRC_ROOT
