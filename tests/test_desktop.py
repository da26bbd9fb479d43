"""A server on someone's desktop gets out of the way: when the owner's own work takes the CPU,
jailccd --desktop evicts the job it is running, and the client's proxy re-runs it on another
server; the build gets the right object and nothing is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from serverutil import Server, start_server, stop_server

pytestmark = requires_root
JAILCC = str(BIN / "jailcc")
# Enough -O2 work to take seconds, so that the owner arrives while it runs.
SLOW = "".join(
    f"int f{i}(int *a, int n) {{ int s = 0; for (int j = 0; j < n; j++) {{ s += a[j] * {i}"
    f" + (a[j] >> 3) - j; if (s > {i * 7}) s ^= a[(j * {i}) % n]; }} return s; }}\n"
    for i in range(1500)
)


@pytest.fixture
def servers(gcc_image: Path, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    desktop = start_server(
        tmp_path / "desktop",
        gcc_image,
        "--allow-user",
        "root",
        "--jobs",
        "1",
        "--desktop",
        "--desktop-calm",
        "1",
        "--desktop-evict-after",
        "2",
        "--speed",
        "2",  # the faster: the proxy's first choice while its owner is away
    )
    other = start_server(
        tmp_path / "other", gcc_image, "--allow-user", "root", "--jobs", "1", "--speed", "1"
    )
    yield desktop, other
    stop_server(desktop)
    stop_server(other)


def wait_for(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_the_owner_gets_the_desktop_back_and_the_job_runs_elsewhere(servers, tmp_path):
    desktop, other = servers
    env = {
        **os.environ,
        "JAILCC_HOSTS": f"unix:{desktop.socket_path} unix:{other.socket_path}",
        "JAILCC_VERBOSE": "1",
    }
    (tmp_path / "slow.c").write_text(SLOW)
    subprocess.run(["gcc-12", "-O2", "-c", "slow.c", "-o", "local.o"], cwd=tmp_path, check=True)
    # The owner is away: the desktop server offers its slot again.
    wait_for(lambda: "desktop owner away: 1 slots" in desktop.log_text(), "a calm desktop")
    subprocess.run([JAILCC, "proxy", "start"], env=env, check=True, capture_output=True)
    # A first small compile: the proxy opens its connections and hears both servers' load
    # reports (their speeds), so the slow job then goes to the faster, desktop server.
    (tmp_path / "small.c").write_text("int small(void) { return 1; }\n")
    for _ in range(2):
        subprocess.run(
            [JAILCC, "gcc-12", "-c", "small.c", "-o", "small.o"], cwd=tmp_path, env=env, check=True
        )
    burners: list[subprocess.Popen] = []
    try:
        build = subprocess.Popen(
            [JAILCC, "gcc-12", "-O2", "-c", "slow.c", "-o", "slow.o"],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )

        def running_on_desktop() -> bool:
            out = subprocess.run(
                [JAILCC, "status", "--json"], env=env, capture_output=True, text=True
            ).stdout
            servers = json.loads(out)["servers"] if out else []
            return any(s["running"] and str(desktop.socket_path) in s["server"] for s in servers)

        wait_for(running_on_desktop, "the job on the desktop server", 30)
        # The owner comes back with work of their own on every core.
        burners = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(2 * (os.cpu_count() or 1))
        ]
        _, stderr = build.communicate(timeout=300)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True)
    assert build.returncode == 0, stderr
    assert (tmp_path / "slow.o").read_bytes() == (tmp_path / "local.o").read_bytes()
    assert "evicting running jobs" in desktop.log_text()
    assert f"remote on unix:{other.socket_path}" in stderr  # re-run on the other server
    assert "slow.c status=exit:0" in other.log_text()
