"""`jailccd selftest`: every probe passes on real images, and every probe is shown able to fail
by running it against a jail weakened in the one way it looks for."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from jailcc.monitor.unprivileged import SELFTEST_UID
from jailcc.selftest.probes import PROBE_NAMES, run_selftest

pytestmark = requires_root

# probe -> the weakening that must make it report FAIL
WEAKENED = {
    "read_host_file": {"share_host_paths"},
    "write_image": {"root_uid", "writable_image"},  # on an unpacked (directory) image
    "write_outside_workdir": {"writable_root"},
    "network": {"no_netns"},
    "host_processes": {"no_pidns"},
    "uid0_caps": {"root_uid"},
    "setuid_binaries": {"suid_mounts"},
    "exec_writable": {"exec_mounts"},
    "new_userns": {"no_chroot_nesting", "no_seccomp"},
    "mount": {"root_uid", "no_seccomp"},
    "chroot_escape": {"root_uid", "no_seccomp"},
    "ptrace": {"dumpable_init"},
    "devices": {"root_uid"},
    "device_nodes": {"wrong_dev_nodes"},
    "socket_families": {"any_socket_family"},
    "mount_table": {"host_mount_sources"},
    "keyctl": {"keep_session_keyring", "no_seccomp"},
    "proc_sys_write": {"root_uid", "rw_proc_sys"},
    "memory": {"no_memory_limit"},
    "fork_bomb": {"no_pids_limit"},
    "fill_disk": {"no_disk_limit"},
    "wall_clock": {"no_wall_clock"},
    "cpu_time": {"no_cpu_limit"},
    "output_flood": {"no_output_cap"},
    "outlive_jail": {"no_pidns"},
    "neighbour_jail": {"no_pidns"},
    "init_isolation": {"init_keeps_stdio"},
    "leftovers": {"no_wipe"},
}


def test_every_probe_has_a_weakening() -> None:
    assert set(WEAKENED) == set(PROBE_NAMES)


def test_selftest_passes_on_the_gcc_image(gcc_image: Path) -> None:
    reports = run_selftest({"gcc-12": str(gcc_image)}, timing_rounds=5)
    (report,) = reports
    failed = [(p.name, p.detail) for p in report.probes if not p.passed]
    assert failed == [] and report.leftovers == []
    assert [p.name for p in report.probes] == list(PROBE_NAMES)
    assert 0 < report.build_ms_median < 1000 and 0 < report.teardown_ms_median < 1000


@pytest.fixture(scope="module")
def unpacked_image(gcc_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gcc image as a plain directory: squashfs is read-only whatever the mount says, so
    only a directory image can show that the read-only remount is what protects it."""
    target = tmp_path_factory.mktemp("unpacked") / "root"
    subprocess.run(
        ["unsquashfs", "-q", "-d", str(target), str(gcc_image)], check=True, capture_output=True
    )
    return target


@pytest.mark.parametrize("probe", PROBE_NAMES)
def test_each_probe_fails_against_a_weakened_jail(
    probe: str, gcc_image: Path, unpacked_image: Path
) -> None:
    image = unpacked_image if probe == "write_image" else gcc_image
    (report,) = run_selftest(
        {"img": str(image)}, weaken=frozenset(WEAKENED[probe]), only=[probe], timing_rounds=0
    )
    (result,) = report.probes
    assert result.name == probe
    assert not result.passed, f"{probe} passed against a jail with {WEAKENED[probe]}"
    # Even a weakened jail must not leave anything running on the host.
    assert report.leftovers == []


def test_init_isolation_fails_for_an_init_without_its_seccomp_filter(gcc_image: Path) -> None:
    (report,) = run_selftest(
        {"img": str(gcc_image)},
        weaken=frozenset({"no_seccomp"}),
        only=["init_isolation"],
        timing_rounds=0,
    )
    (result,) = report.probes
    assert not result.passed and "without its seccomp filter" in result.detail


def test_weakened_image_probe_passes_without_the_weakening(unpacked_image: Path) -> None:
    # The same directory image with only root_uid: the read-only remount alone protects it.
    (report,) = run_selftest(
        {"img": str(unpacked_image)},
        weaken=frozenset({"root_uid"}),
        only=["write_image"],
        timing_rounds=0,
    )
    assert report.probes[0].passed, report.probes[0].detail


def test_cli_selftest_json_on_the_clang_image(clang_image: Path) -> None:
    proc = subprocess.run(
        [
            str(BIN / "jailccd"),
            "selftest",
            "--toolchain-image",
            str(clang_image),
            "--json",
            "--timing-rounds",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    # Every escape probe, and first the compile through the jobs handler (selftest/jobs_probe.py).
    assert report["failed"] == 0 and report["passed"] == len(PROBE_NAMES) + 1
    assert report["images"][0]["image"] == "clang-16"
    first = report["images"][0]["probes"][0]
    assert first["name"] == "jobs_compile" and "clang-16" in first["detail"]
    # The probes ran as a uid of their own, not root (root only started the launcher,
    # planted the canary and looked at one jail's init: init_isolation came from it).
    assert report["probes_uid"] == SELFTEST_UID != 0
    (init,) = [p for p in report["images"][0]["probes"] if p["name"] == "init_isolation"]
    assert init["passed"] and "/dev/null" in init["detail"]


def test_cli_selftest_lines_and_summary(gcc_image: Path) -> None:
    proc = subprocess.run(
        [
            str(BIN / "jailccd"),
            "selftest",
            "--toolchain-image",
            str(gcc_image),
            "--probe",
            "network",
            "--probe",
            "jobs_compile",
            "--probe",
            "uid0_caps",
            "--timing-rounds",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("PASS") and "jobs_compile" in lines[0]
    assert "compiled a C file through the jobs handler" in lines[0]
    assert lines[1].startswith("PASS") and "network" in lines[1]
    assert "median jail build" in lines[-2]
    assert lines[-1] == "selftest: 3 passed, 0 failed"


def test_cli_selftest_missing_image_is_one_clear_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(BIN / "jailccd"), "selftest", "--toolchain-image", str(tmp_path / "none.img")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "jailcc-image build" in proc.stderr
