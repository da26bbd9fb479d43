"""A farm of four jailccd servers (different slot counts and speeds), each in a network
namespace of its own on one bridge, found by a client in a fifth namespace through DNS-SD over
mDNS alone (no host list), with Kerberos from a KDC in the client's namespace. A real build is
spread over them while one server is killed and another's link is cut mid-job; the build stays
identical to a local one, and the servers coming back are used again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from netns import NetLab
from realm_fixtures import realm_module

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import projects

pytestmark = requires_root
JAILCC = str(BIN / "jailcc")
SERVERS = {"s1": (1, 0.5), "s2": (2, 1.0), "s3": (3, 1.5), "s4": (4, 2.0)}  # slots, speed


class Farm:
    def __init__(self, lab: NetLab, realm: object, image: Path, state: Path) -> None:
        self.lab, self.realm, self.image, self.state = lab, realm, image, state
        self.procs: dict[str, subprocess.Popen] = {}
        allowed = state / "principals"
        allowed.write_text("alice@KRBTEST.COM\n")
        self.allowed = allowed

    def log(self, host: str) -> str:
        path = self.state / f"{host}.log"
        return path.read_text() if path.exists() else ""

    def jobs(self, host: str) -> int:
        return self.log(host).count("status=exit:0")

    def start(self, host: str) -> None:
        slots, speed = SERVERS[host]
        address = self.lab.address(host)
        # Not through `ip netns exec`: it remounts /sys, hiding the cgroups jailccd needs.
        self.procs[host] = self.popen(
            host,
            [
                str(BIN / "jailccd"),
                "--toolchain-image",
                str(self.image),
                "--listen",
                f"{address}:3633",
                "--keytab",
                str(self.realm.keytab),  # type: ignore[attr-defined]
                "--principal",
                f"jailcc/{address}@KRBTEST.COM",
                "--allow-principals",
                str(self.allowed),
                "--jobs",
                str(slots),
                "--speed",
                str(speed),
                "--announce",
                "--announce-address",
                address,
                "--log-file",
                str(self.state / f"{host}.log"),
            ],
            env={**os.environ, **self.realm.env},  # type: ignore[attr-defined]
        )

    def popen(self, host: str, argv: list[str], **kwargs: object) -> subprocess.Popen:
        with self.lab.inside(host):
            proc = subprocess.Popen(argv, start_new_session=True, **kwargs)  # type: ignore[call-overload]
        self.lab.procs.append(proc)  # killed with the lab
        return proc

    def kill(self, host: str) -> None:
        self.procs[host].send_signal(signal.SIGKILL)
        self.procs[host].wait()


@pytest.fixture
def farm(gcc_image: Path, tmp_path: Path) -> Iterator[Farm]:
    with NetLab([*SERVERS, "cli"]) as lab:
        with lab.inside("cli"):  # the KDC listens on the client's own loopback
            realm = realm_module.Realm()
        try:
            for host in SERVERS:
                realm.addprinc(f"jailcc/{lab.address(host)}", keytab=realm.keytab)
            farm = Farm(lab, realm, gcc_image, tmp_path)
            for host in SERVERS:
                farm.start(host)
            yield farm
        finally:
            realm.close()


def in_client(farm: Farm, argv: list[str], env: dict[str, str], cwd: Path) -> str:
    with farm.lab.inside("cli"):
        proc = subprocess.run(argv, env=env, cwd=cwd, timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def running_on(farm: Farm, host: str, env: dict[str, str], cwd: Path) -> int:
    """Jobs the client's proxy has running on host now."""
    status = json.loads(in_client(farm, [JAILCC, "status", "--json"], env, cwd))
    address = f"tcp:{farm.lab.address(host)}:"
    return sum(s["running"] for s in status["servers"] if s["server"].startswith(address))


def test_a_farm_found_by_mdns_shares_a_build_and_survives_losing_servers(sources, farm, tmp_path):
    with farm.lab.inside("cli"):  # the KDC is reachable from there only
        ticket = farm.realm.kinit("alice", tmp_path / "alice.cc")  # type: ignore[attr-defined]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAILCC_")} | ticket
    env["JAILCC_VERBOSE"] = "1"
    env["JAILCC_PROXY_IDLE"] = "60"
    in_client(farm, [JAILCC, "proxy", "start"], env, tmp_path)
    try:
        # Discovery: all four, from mDNS, with no host list anywhere.
        deadline = time.monotonic() + 30
        while True:
            hosts = json.loads(in_client(farm, [JAILCC, "hosts", "--json"], env, tmp_path))
            if len(hosts) == 4:
                break
            assert time.monotonic() < deadline, hosts
            time.sleep(0.5)
        assert all(h["sources"] == ["mdns"] for h in hosts)
        assert {h["server"].split(":")[1] for h in hosts} == {farm.lab.address(h) for h in SERVERS}

        local = projects.build("zlib", tmp_path / "build", "gcc-12", "g++-12", jobs=4)
        results: list[projects.BuildResult] = []

        def build() -> None:
            with farm.lab.inside("cli"):
                results.append(
                    projects.build(
                        "zlib",
                        tmp_path / "build",
                        f"{JAILCC} gcc-12",
                        f"{JAILCC} g++-12",
                        jobs=10,
                        env=env,
                        configure_cc="gcc-12",
                    )
                )

        builder = threading.Thread(target=build)
        builder.start()
        deadline = time.monotonic() + 180
        while sum(farm.jobs(h) for h in SERVERS) < 6 and builder.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        farm.kill("s4")  # the biggest server dies mid-build
        while running_on(farm, "s3", env, tmp_path) == 0 and builder.is_alive():
            time.sleep(0.05)
        assert builder.is_alive(), "the build ended before s3 got a job"
        farm.lab.cut("s3")  # and another's cable is pulled, likely mid-job
        builder.join(timeout=600)
        (farm_build,) = results
        assert farm_build.returncode == 0, farm_build.log[-3000:]
        assert projects.compare(local, farm_build) == []
        served = {h: farm.jobs(h) for h in SERVERS}
        assert sum(1 for n in served.values() if n) >= 3, served  # the work was spread

        # Both come back and are used again.
        farm.lab.restore("s3")
        farm.start("s4")
        before = {h: farm.jobs(h) for h in ("s3", "s4")}
        (tmp_path / "again").mkdir()
        # The proxy retries a failed server after its back-off (at most client/pool.py's
        # MAX_BACKOFF, 60 s) and notices the cut link's end by keepalive: ample on a quiet
        # machine, and this loop ends as soon as both served a job.
        deadline = time.monotonic() + 120 + 60
        n = 0
        while any(farm.jobs(h) == before[h] for h in before):
            assert time.monotonic() < deadline, {h: farm.jobs(h) for h in SERVERS}
            for i in range(4):
                src = tmp_path / "again" / f"u{n}_{i}.c"
                src.write_text(f"int u{n}_{i}(int x) {{ return x * {n + i}; }}\n")
            procs = [
                farm.popen(
                    "cli",
                    [JAILCC, "gcc-12", "-O2", "-c", f"u{n}_{i}.c", "-o", f"u{n}_{i}.o"],
                    env=env,
                    cwd=tmp_path / "again",
                )
                for i in range(4)
            ]
            for proc in procs:
                assert proc.wait(timeout=120) == 0
            n += 1
    finally:
        in_client(farm, [JAILCC, "proxy", "stop"], env, tmp_path)
