"""Real projects no one here wrote, built through jailcc and a real jailccd, every object
compared with a local build."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from serverutil import Server, start_server, stop_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import projects

pytestmark = requires_root
JAILCC = str(BIN / "jailcc")
# Debian's own flags, -g included: gcc's -g compiles go remote in the exact-debug-info mode.


@pytest.fixture(scope="module")
def server(gcc_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("farm"), gcc_image, "--allow-user", "root", "--jobs", "4"
    )
    yield srv
    stop_server(srv)


def farm_env(server: Server) -> dict[str, str]:
    return {"JAILCC_HOSTS": f"unix:{server.socket_path}", "JAILCC_VERBOSE": "1"}


def jobs_served(server: Server) -> int:
    return server.log_text().count("status=exit:0")


@pytest.mark.parametrize(
    ("project", "map_paths"),
    [("zlib", False), ("lua5.4", True)],
)
def test_real_project_through_the_farm_matches_a_local_build(
    sources, server, tmp_path, project, map_paths
):
    # Without path mapping both builds must run in the same directory, one after the other:
    # debug info then names the real working directory, which the jail must recreate.
    workdir = tmp_path / "build"
    local = projects.build(
        project,
        workdir,
        "gcc-12",
        "g++-12",
        jobs=4,
        map_paths=map_paths,
        configure_cc="gcc-12",
        configure_cxx="g++-12",
    )
    served_before = jobs_served(server)
    farm = projects.build(
        project,
        workdir,
        f"{JAILCC} gcc-12",
        f"{JAILCC} g++-12",
        jobs=8,
        env=farm_env(server),
        map_paths=map_paths,
        configure_cc="gcc-12",
        configure_cxx="g++-12",
    )
    assert farm.returncode == 0, farm.log[-3000:]
    assert projects.compare(local, farm) == []
    assert len(farm.objects) >= 30
    # The farm did the work: every compile went remote (libtool hides the output of half of
    # them, so count on the server's side), nothing fell back.
    assert jobs_served(server) - served_before == len(farm.objects), farm.log[-3000:]
    assert "compiling locally" not in farm.log
    assert os.path.exists(server.socket_path)


@pytest.mark.parametrize(
    ("project", "cc", "cxx"),
    [
        ("re2", "gcc-12", "g++-12"),
        ("zlib", "clang-16", "clang++-16"),
        ("re2", "clang-16", "clang++-16"),
    ],
)
def test_real_project_as_sources_matches_a_local_build(
    sources, headers_server, tmp_path, project, cc, cxx
):
    """Shipped as sources (an image with its system headers), every compile: C++ against
    libstdc++ (re2), with gcc and with clang, -g included; none compiled locally after the
    soundness check (re2 reads <cstdlib>, whose #include_next goes past libstdc++'s own
    stdlib.h)."""
    common = {"jobs": 4, "configure_cc": cc, "configure_cxx": cxx}
    local = projects.build(project, tmp_path / "local", cc, cxx, **common)
    assert local.returncode == 0, local.log[-3000:]
    # The proxy first, as a developer has it: a compile that finds none starts one and goes
    # on its own, preprocessed.
    env = farm_env(headers_server)
    proxy_env = {**os.environ, **env}
    subprocess.run([JAILCC, "proxy", "start"], env=proxy_env, check=True, capture_output=True)
    try:
        farm = projects.build(
            project, tmp_path / "farm", f"{JAILCC} {cc}", f"{JAILCC} {cxx}", env=env, **common
        )
    finally:
        subprocess.run([JAILCC, "proxy", "stop"], env=proxy_env, capture_output=True, timeout=60)
    assert farm.returncode == 0, farm.log[-3000:]
    assert projects.compare(local, farm) == []
    said = [line for line in farm.log.splitlines() if line.startswith("jailcc: ")]
    compiled = [line for line in said if "(linking)" not in line]
    assert len(compiled) == len(farm.objects) >= 30, said
    assert all("remote (sources) on" in line for line in compiled), said
