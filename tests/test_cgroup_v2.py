"""cgroup v2 as the jails' primary backend (sandbox/cgroups.py).

Two kinds of tests:
- unmarked ones run with the rest of the suite: the choice of backend, the files read for each
  backend, stale groups, and cgroup v2's no-internal-process rule with the delegation step (on
  a real cgroup2 group of the test's own, with hugetlb standing in for memory and pids: it is
  the controller a hybrid machine like this one has in cgroup v2);
- those marked cgroup_v2 hand the v1 pids hierarchy (and cpu, cpuacct where they can go) to
  cgroup v2 and build real jails on it. They need no other launcher alive, so scripts/test runs
  them in a pytest run of their own (`pytest -m cgroup_v2`). They skip when the hierarchy
  cannot be released, saying why: on this project's build machines (CI's too) the v1 pids
  hierarchy survives its unmount (something outside our view holds it), so there cgroup v2 is
  checked by the VM tests instead: test_a_stock_cgroup_v2_kernel_in_a_vm below (the jails'
  limits, the selftest's probes) and tests/test_package.py's scripts/vm-systemd (jailccd.service
  under a real systemd). The hierarchies are mounted again after the tests, and by the next
  pytest start if a run is killed in between (tests/cgroup_release.py).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import cgroup_release
import pytest
from conftest import requires_root
from jailcc.sandbox import cgroups, leaks
from jailcc.sandbox.api import Jail, Sandbox
from jailcc.sandbox.cgroups import UNIFIED, CgroupError, JailCgroup
from jailcc.sandbox.spec import JailLimits, MiB, RunLimits

SMALL = JailLimits(memory_bytes=128 * MiB, pids_max=32, work_bytes=16 * MiB, tmp_bytes=8 * MiB)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


# -- which files each backend reads (a fake tree: plain files where cgroupfs would be) ---------


def test_v2_files_serve_what_has_no_v1_group(tmp_path: Path) -> None:
    parents = {UNIFIED: str(tmp_path / "u"), "memory": str(tmp_path / "m")}
    for parent in parents.values():
        os.mkdir(parent)
    group = JailCgroup.create(parents, "1-1", 64 * MiB, 16)
    unified, mem = group.paths[UNIFIED], group.paths["memory"]
    # memory from v1 (its group exists), pids from v2 (no v1 pids group).
    assert _read(os.path.join(mem, "memory.limit_in_bytes")) == str(64 * MiB)
    assert not os.path.exists(os.path.join(unified, "memory.max"))
    assert _read(os.path.join(unified, "pids.max")) == "16"
    _write(os.path.join(mem, "memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    _write(os.path.join(mem, "memory.failcnt"), "5\n")
    _write(os.path.join(mem, "memory.max_usage_in_bytes"), "4096\n")
    _write(os.path.join(unified, "pids.events"), "max 3\n")
    _write(os.path.join(unified, "cpu.stat"), "usage_usec 1500\nuser_usec 1000\n")
    assert group.counters() == {
        "oom_kill": 2,
        "memory_failcnt": 5,
        "memory_peak": 4096,
        "pids_max_events": 3,
        "cpu_ns": 1_500_000,
    }


def test_v2_memory_limits_and_events(tmp_path: Path) -> None:
    parent = tmp_path / "u"
    parent.mkdir()
    (parent / "with-swap").mkdir()
    (parent / "with-swap" / "memory.swap.max").write_text("max\n")
    group = JailCgroup.create({UNIFIED: str(parent)}, "1-2", 64 * MiB, 8)
    path = Path(group.paths[UNIFIED])
    assert (path / "memory.max").read_text() == str(64 * MiB)
    assert not (path / "memory.swap.max").exists()  # no swap accounting: nothing to write
    swapped = JailCgroup({UNIFIED: str(parent / "with-swap")})
    swapped._limit_memory(32 * MiB)
    assert (parent / "with-swap" / "memory.swap.max").read_text() == "0"  # no swap at all
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    (path / "pids.events").write_text("max 0\n")
    (path / "cpu.stat").write_text("usage_usec 2\n")
    counters = group.counters()
    assert (counters["oom_kill"], counters["memory_failcnt"], counters["cpu_ns"]) == (1, 7, 2000)
    assert counters["memory_peak"] == 0  # no memory.peak (Linux before 5.19)
    (path / "memory.peak").write_text("8192\n")
    assert group.counters()["memory_peak"] == 8192
    assert Jail.limit_hit({**counters, "oom_kill": 0}, counters) == "memory"
    assert group.set_idle(True) is False  # no cgroup.controllers naming cpu


def test_a_required_controller_in_neither_backend_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(cgroups, "_mounts", lambda: ({}, None))
    with pytest.raises(CgroupError, match=r"no memory controller.*Delegate=yes"):
        cgroups.parent_dirs()


def test_the_base_group_is_the_same_before_and_after_the_move() -> None:
    mount = cgroups._Mount("/sys/fs/cgroup", "/")
    unit = "/sys/fs/cgroup/system.slice/jailccd.service"
    assert cgroups._base(unit, mount) == unit
    assert cgroups._base(unit + "/" + cgroups.LEAF_NAME, mount) == unit
    assert cgroups._base("/sys/fs/cgroup", mount) == "/sys/fs/cgroup"


# -- stale groups --------------------------------------------------------------------------------


@requires_root
def test_stale_groups_are_those_of_launchers_that_are_gone(sandbox) -> None:
    parents = cgroups.parent_dirs()
    stranger = subprocess.Popen(["sleep", "60"])  # alive, but no launcher: its pid was reused
    member = subprocess.Popen(["sleep", "60"])
    names = {
        "reused": f"{stranger.pid}-stale-test",
        "launcher": f"{sandbox.launcher_pid}-stale-test",
        "occupied": f"{stranger.pid}-stale-test-busy",
    }
    groups = {k: JailCgroup.create(parents, n, None, None) for k, n in names.items()}
    try:
        for path in groups["occupied"].paths.values():
            _write(os.path.join(path, "cgroup.procs"), str(member.pid))
        removed = cgroups.remove_stale(parents)
        assert set(groups["reused"].paths.values()) <= set(removed)
        assert not any(os.path.exists(p) for p in groups["reused"].paths.values())
        assert all(os.path.isdir(p) for p in groups["launcher"].paths.values())
        assert all(os.path.isdir(p) for p in groups["occupied"].paths.values())  # not empty
    finally:
        for proc in (stranger, member):
            proc.kill()
            proc.wait()
        for group in groups.values():
            group.remove()


# -- cgroup v2's no-internal-process rule, on a real cgroup2 group --------------------------------

# "jailccd": joins a group (the test group, or its leaf once moved there), then runs the
# "launcher" as its child, which makes the jails' parent the way the real launcher does, with
# hugetlb as the required controller.
JAILCCD = textwrap.dedent(
    """
    import subprocess, sys
    with open(sys.argv[3] + "/cgroup.procs", "w") as f:
        f.write("0")
    sys.exit(subprocess.run([sys.executable, "-c", sys.argv[2], sys.argv[1]]).returncode)
    """
)
HOLDER = textwrap.dedent(
    """
    import sys, time
    with open(sys.argv[1] + "/cgroup.procs", "w") as f:
        f.write("0")
    time.sleep(60)
    """
)
LAUNCHER = textwrap.dedent(
    """
    import json, os, sys
    from jailcc.sandbox import cgroups
    try:
        parent = cgroups._make_unified_parent(sys.argv[1], ["hugetlb"], [])
        error = None
    except cgroups.CgroupError as exc:
        parent, error = None, str(exc)
    print(json.dumps({
        "parent": parent,
        "error": error,
        "own": cgroups.group_dir("self", None),
        "jailccd": cgroups.group_dir(os.getppid(), None),
        "base": cgroups.unified_base(),
    }))
    """
)


@pytest.fixture
def v2_test_group() -> Iterator[str]:
    """A cgroup2 group of the test's own, offered hugetlb by the root (enabled for the test)."""
    unified = cgroups._mounts()[1]
    if unified is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    root = unified.point
    if "hugetlb" not in _read(os.path.join(root, "cgroup.controllers")).split():
        pytest.skip("cgroup v2 offers no hugetlb controller here to stand in for memory/pids")
    root_control = os.path.join(root, "cgroup.subtree_control")
    enabled_before = "hugetlb" in _read(root_control).split()
    if not enabled_before:
        _write(root_control, "+hugetlb")
    group = os.path.join(root, f"jailcc-delegation-test-{os.getpid()}")
    os.mkdir(group)
    try:
        yield group
    finally:
        for path in (
            os.path.join(group, cgroups.PARENT_NAME),
            os.path.join(group, cgroups.LEAF_NAME),
            group,
        ):
            deadline = time.monotonic() + 5
            while os.path.isdir(path):
                try:
                    os.rmdir(path)
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        if not enabled_before:
            deadline = time.monotonic() + 5
            while "hugetlb" in _read(root_control).split():
                try:
                    _write(root_control, "-hugetlb")
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


def _run_jailccd(group: str, join: str | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", JAILCCD, group, LAUNCHER, join or group],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@requires_root
def test_jailccds_processes_move_to_a_leaf_so_controllers_can_be_enabled(v2_test_group) -> None:
    group = v2_test_group
    # Without the move, a group holding processes refuses to enable a controller.
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, group])
    try:
        deadline = time.monotonic() + 10
        while not _read(os.path.join(group, "cgroup.procs")).split():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(OSError) as refused:
            _write(os.path.join(group, "cgroup.subtree_control"), "+hugetlb")
        assert refused.value.errno == errno.EBUSY
    finally:
        holder.kill()
        holder.wait()
    result = _run_jailccd(group)
    assert result["error"] is None
    leaf = os.path.join(group, cgroups.LEAF_NAME)
    # Both jailccd and the launcher were moved, and the base is still the group.
    assert result["own"] == leaf and result["jailccd"] == leaf
    assert result["base"] == group
    assert result["parent"] == os.path.join(group, cgroups.PARENT_NAME)
    assert "hugetlb" in _read(os.path.join(group, "cgroup.subtree_control")).split()
    assert "hugetlb" in _read(os.path.join(result["parent"], "cgroup.subtree_control")).split()
    # Now the group takes no process; a later jailccd and launcher, in the leaf, find
    # everything in place.
    with pytest.raises(OSError) as refused:
        _write(os.path.join(group, "cgroup.procs"), str(os.getpid()))
    assert refused.value.errno == errno.EBUSY
    again = _run_jailccd(group, join=leaf)
    assert again["error"] is None and again["parent"] == result["parent"]


@requires_root
def test_processes_that_are_not_jailccds_move_only_from_a_delegated_group(v2_test_group) -> None:
    group = v2_test_group
    stranger = subprocess.Popen(["sleep", "60"])  # the test's child, not "jailccd"'s
    try:
        _write(os.path.join(group, "cgroup.procs"), str(stranger.pid))
        result = _run_jailccd(group)
        assert result["error"] and "not jailccd's" in result["error"], result
        assert "Delegate=yes" in result["error"]
        assert f"{stranger.pid} (sleep)" in result["error"]
        # Nothing was moved: not the stranger, not "jailccd".
        assert cgroups.group_dir(stranger.pid, None) == group
        assert not os.path.exists(os.path.join(group, cgroups.LEAF_NAME))
        # Unless systemd says the group is delegated: then all in it was started for us.
        os.setxattr(group, "trusted.delegate", b"1")
        result = _run_jailccd(group)
        assert result["error"] is None, result
        leaf = os.path.join(group, cgroups.LEAF_NAME)
        assert cgroups.group_dir(stranger.pid, None) == leaf
    finally:
        stranger.kill()
        stranger.wait()


# -- a stock cgroup v2 kernel ----------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="boots a VM and installs packages: root")
def test_a_stock_cgroup_v2_kernel_in_a_vm() -> None:
    """sandbox/cgroups.py on Debian 12's kernel with only cgroup v2 mounted, as systemd boots
    it: memory.max with no swap, an OOM kill counted in memory.events, pids.max, cpu.stat,
    cpu.idle, cgroup.kill, the move of a delegated jailccd.service's processes to a leaf.
    Then real jails there, made by the real launcher (Sandbox) from a directory image: the
    memory and pids limits reported in RunResult.limit, the jail's CPU from cpu.stat, a clean
    teardown (sandbox/leaks.py finds nothing), and the selftest's escape probes."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "vm-cgroup2"
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=900)
    said = proc.stdout + proc.stderr
    if proc.returncode == 2:  # no kernel (no mirror), python3.11, cc or .venv's prctl here
        pytest.skip(said.strip().splitlines()[-1])
    assert proc.returncode == 0, said
    passed = [line for line in proc.stdout.splitlines() if line.startswith("PASS")]
    assert len(passed) >= 70 and "FAIL" not in proc.stdout, said
    for check in (
        "memory.events oom_kill counts it",
        "pids.events max counts it",
        "cgroup.kill",
        "jail: a command from the image exits 0 with its stdout",
        "jail: a memory hog beyond memory.max is reported as the memory limit",
        "jail: a fork bomb is stopped at pids_max",
        "only pids.max stops (root_uid jail) is reported as the pids limit",
        "jail: CPU of children never waited for is accounted from cpu.stat",
        "jail: teardown is clean",
        "jail: sandbox.leaks finds nothing left by closed jails",
        "jail: the launcher exits with the sandbox and leaves nothing",
        "selftest: every probe ran",
        "selftest: the probes' jails left nothing",
    ):
        assert any(check in line for line in passed), (check, said)


# -- real jails on cgroup v2 (scripts/test's second phase) -----------------------------------------


def _cannot(reason: str) -> None:
    """The v1 hierarchy could not be handed to v2 on this machine: the VM test above still
    checks cgroup v2 (memory included) on a stock kernel."""
    pytest.skip(reason)


@pytest.fixture(scope="module")
def released() -> Iterator[set[str]]:
    """pids (required) and cpu, cpuacct (where they can go) handed to cgroup v2; the v1
    hierarchies are mounted again afterwards, also when a test fails or the run is interrupted
    by SIGINT or SIGTERM (SIGKILL: the next pytest start does it, see cgroup_release)."""
    if os.geteuid() != 0:
        pytest.skip("cgroups need root")
    offered = cgroups.offered_v2()
    if "pids" in offered:  # a cgroup v2 machine: nothing to release
        yield offered & {"pids", "cpu", "memory"}
        return
    launchers = cgroup_release.live_launchers()
    if launchers:
        pytest.skip(f"jail launchers are alive (pids {launchers}): run `pytest -m cgroup_v2` alone")
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    entries = []
    try:
        try:
            entries.append(cgroup_release.release("pids"))
        except cgroup_release.NotReleased as exc:
            _cannot(f"cannot hand the v1 pids hierarchy to cgroup v2: {exc}")
        notes = []
        for controller in ("cpu", "cpuacct"):
            try:
                entries.append(cgroup_release.release(controller))
            except cgroup_release.NotReleased as exc:
                notes.append(f"{controller} stays in v1: {exc}")
        for note in notes:
            print(f"cgroup_v2 tests: {note}", file=sys.stderr)
        yield {e["controller"] for e in entries}
    finally:
        try:
            for entry in reversed(entries):
                cgroup_release.restore(entry)
        finally:
            signal.signal(signal.SIGTERM, previous)


def run_probe(jail, probe: bytes, *args: str, limits: RunLimits):
    return jail.run(
        ["/w/probe", *args], cwd="/w", inputs={"probe": probe}, executables=["probe"], limits=limits
    )


@pytest.mark.cgroup_v2
@requires_root
def test_jails_on_cgroup_v2_pids(released, gcc_image, probe_binary, tmp_path) -> None:
    unified = cgroups.unified_parent()
    assert unified is not None
    with Sandbox({"gcc-12": str(gcc_image)}) as sb:
        with sb.create_jail("gcc-12", SMALL) as jail:
            paths = jail._cgroups
            # pids from cgroup v2 (no v1 group), CPU from cpu.stat (memory: v1 on a hybrid
            # machine like this one, where it cannot be released).
            assert "pids" not in paths and paths[UNIFIED].startswith(unified + "/"), paths
            assert "cpuacct" not in paths
            group = paths[UNIFIED]
            assert "pids" in _read(os.path.join(group, "cgroup.controllers")).split()
            assert _read(os.path.join(group, "pids.max")).strip() == "32"
            # A fork bomb stops at pids.max, and the server would call it the pids limit.
            before = jail.job_counters()
            quick = RunLimits(cpu_seconds=5, wall_seconds=10.0)
            bomb = run_probe(jail, probe_binary, "fork_bomb", "200", limits=quick)
            assert bomb.stdout.startswith(b"PASS"), bomb.stdout
            after = jail.job_counters()
            assert after["pids_max_events"] > before["pids_max_events"], (before, after)
            assert Jail.limit_hit(before, after) == "pids"
            # CPU of children never waited for is counted (cpu.stat of the jail's group).
            spun = run_probe(
                jail,
                probe_binary,
                "spin_children",
                "2",
                "1",
                limits=RunLimits(cpu_seconds=10, wall_seconds=20.0),
            )
            assert spun.exit_code == 0, spun.stderr
            assert spun.usage.jail_cpu_seconds >= 2.0, spun.usage
            if "cpu" in released:
                assert "cpu" in _read(os.path.join(group, "cgroup.controllers")).split()
                assert JailCgroup(paths).set_idle(True) is True
                assert JailCgroup(paths).set_idle(False) is True
            ok = jail.run(
                ["/usr/bin/gcc-12", "-c", "x.i", "-o", "x.o"],
                cwd="/w",
                inputs={"x.i": b"int x;\n"},
                outputs=["x.o"],
            )
            assert ok.ok and "x.o" in ok.outputs, ok.stderr
        launcher = sb.launcher_pid
        # The torn-down jail left nothing, its v2 group included.
        assert not os.path.exists(group)
        assert leaks.leftovers(images=[str(gcc_image)], owner_pid=launcher) == []
    assert leaks.leftovers(images=[str(gcc_image)], owner_pid=launcher) == []
    # The launcher removed the jailcc parent on its way out (no other launcher shares it).
    assert not os.path.isdir(unified)
