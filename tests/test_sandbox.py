"""The jail: real namespaces, a real gcc image, real limits, and nothing left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import requires_root
from jailcc.sandbox import cgroups, leaks
from jailcc.sandbox.api import Jail, JailBroken, Sandbox, SandboxError
from jailcc.sandbox.cgroups import JailCgroup
from jailcc.sandbox.spec import JailLimits, MiB, RunLimits, RunResult
from jailcc.sandbox.uidpool import DEFAULT_BASE, DEFAULT_COUNT

pytestmark = requires_root

SOURCE = b'#include <stdio.h>\nint main(void) { printf("%d\\n", 6 * 7); return 0; }\n'
SMALL = JailLimits(memory_bytes=128 * MiB, pids_max=32, work_bytes=16 * MiB, tmp_bytes=8 * MiB)
QUICK = RunLimits(cpu_seconds=1, wall_seconds=2.0, stdout_bytes=1 * MiB)


def preprocess(
    tmp_path: Path, compiler: str = "gcc-12", source: bytes = SOURCE, suffix: str = ".c"
) -> bytes:
    src = tmp_path / f"hello{suffix}"
    src.write_bytes(source)
    return subprocess.run([compiler, "-E", str(src)], check=True, capture_output=True).stdout


def host_compile(
    tmp_path: Path, preprocessed: bytes, args: list[str], compiler: str, name: str = "hello.i"
) -> bytes:
    (tmp_path / name).write_bytes(preprocessed)
    subprocess.run([compiler, *args, "-c", name, "-o", "host.o"], cwd=tmp_path, check=True)
    return (tmp_path / "host.o").read_bytes()


def run_probe(jail, probe: bytes, *args: str, limits: RunLimits = QUICK):
    return jail.run(
        ["/w/probe", *args], cwd="/w", inputs={"probe": probe}, executables=["probe"], limits=limits
    )


def test_compile_in_jail_is_byte_identical_to_host(sandbox, tmp_path: Path) -> None:
    pre = preprocess(tmp_path)
    args = ["-g", "-O2"]
    expected = host_compile(tmp_path, pre, args, "gcc-12")
    with sandbox.create_jail("gcc-12") as jail:
        # The same absolute working directory as the host compile: DW_AT_comp_dir matches.
        result = jail.run(
            ["/usr/bin/gcc-12", *args, "-c", "hello.i", "-o", "hello.o"],
            cwd=str(tmp_path),
            inputs={"hello.i": pre},
            outputs=["hello.o"],
        )
    assert result.exit_code == 0, result.stderr
    assert result.outputs["hello.o"] == expected
    assert str(tmp_path).encode() in expected  # debug info names the working directory


def test_cxx_compile_in_jail_is_byte_identical(sandbox, tmp_path: Path) -> None:
    source = b"#include <vector>\nint f() { std::vector<int> v{1, 2, 3}; return v.size(); }\n"
    pre = preprocess(tmp_path, "g++-12", source, ".cc")
    expected = host_compile(tmp_path, pre, ["-O1", "-g"], "g++-12", "hello.ii")
    with sandbox.create_jail("gcc-12") as jail:
        result = jail.run(
            ["/usr/bin/g++-12", "-O1", "-g", "-c", "hello.ii", "-o", "hello.o"],
            cwd=str(tmp_path),
            inputs={"hello.ii": pre},
            outputs=["hello.o"],
        )
    assert result.exit_code == 0, result.stderr
    assert result.outputs["hello.o"] == expected


def test_compile_error_comes_back_as_diagnostics(sandbox) -> None:
    with sandbox.create_jail("gcc-12") as jail:
        result = jail.run(
            ["/usr/bin/gcc-12", "-c", "bad.i", "-o", "bad.o"],
            cwd="/src",
            inputs={"bad.i": b'# 1 "bad.c"\nint f( {\n'},
            outputs=["bad.o"],
        )
    assert result.exit_code == 1 and result.limit is None
    assert b"bad.c:1:" in result.stderr
    assert result.outputs == {}


def test_identity_inside_the_jail(sandbox, probe_binary: bytes) -> None:
    with sandbox.create_jail("gcc-12") as jail:
        result = run_probe(jail, probe_binary, "uid0_caps")
        assert result.stdout.startswith(b"PASS"), result.stdout
        assert DEFAULT_BASE <= jail.uid < DEFAULT_BASE + DEFAULT_COUNT


def test_the_init_runs_under_the_jobs_seccomp_filter(sandbox, probe_binary: bytes) -> None:
    """The init parses what authenticated clients send: it is filtered as a job is (spawn.c
    prints the filter it installs), and stays usable under it."""
    with sandbox.create_jail("gcc-12") as jail:
        status = Path(f"/proc/{jail.pid}/status").read_text()
        assert "\nSeccomp:\t2\n" in status and "\nNoNewPrivs:\t1\n" in status
        assert run_probe(jail, probe_binary, "uid0_caps").stdout.startswith(b"PASS")


def test_several_runs_share_a_jail_and_start_clean(sandbox, probe_binary: bytes) -> None:
    with sandbox.create_jail("gcc-12") as jail:
        first = jail.run(
            ["/w/probe", "marker", "left-over", "0"],
            cwd="/w",
            inputs={"probe": probe_binary, "dir/input.txt": b"x"},
            executables=["probe"],
            outputs=["left-over", "dir/input.txt"],
        )
        assert set(first.outputs) == {"left-over", "dir/input.txt"}
        # Same directory again: the previous job's files are gone.
        second = jail.run(
            ["/w/probe", "neighbour", "/w/left-over", "no-such-process"],
            cwd="/w",
            inputs={"probe": probe_binary},
            executables=["probe"],
            outputs=["left-over", "dir/input.txt"],
        )
        assert second.stdout.startswith(b"PASS"), second.stdout
        assert second.outputs == {}
        # Another directory: a fresh work dir there.
        third = jail.run(["/usr/bin/gcc-12", "--version"], cwd="/home/someone/project")
        assert third.exit_code == 0 and b"12.2" in third.stdout


LOADER = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"


def test_what_a_job_writes_never_runs(sandbox, probe_binary: bytes) -> None:
    """A job's work dir and /tmp are noexec: the image's loader cannot map code from them (a
    compile's own loader led by an ld.so.preload or ld.so.cache of the job's); only the
    selftest, which ships its probes as executables, gets a work dir they run from. And no
    work dir lies in /etc, where the loader looks."""
    library = Path("/usr/lib/x86_64-linux-gnu/libm.so.6").read_bytes()  # any shared object
    preloading = [LOADER, "--preload", "/w/lib.so", "/usr/bin/gcc-12", "--version"]
    refused = b"cannot be preloaded (failed to map segment from shared object)"
    with sandbox.create_jail("gcc-12") as jail:
        loaded = jail.run(preloading, cwd="/w", inputs={"lib.so": library})
        assert loaded.exit_code == 0 and refused in loaded.stderr, loaded
        ran = jail.run(preloading, cwd="/w", inputs={"lib.so": library}, executables=["lib.so"])
        assert ran.exit_code == 0 and b"preloaded" not in ran.stderr, ran  # (the test can fail)
        # And back: the next job without executables gets a noexec work dir again.
        again = jail.run(preloading, cwd="/w", inputs={"lib.so": library})
        assert refused in again.stderr, again
        assert run_probe(jail, probe_binary, "exec_writable").stdout.startswith(b"PASS")
        for where in ("/etc", "/etc/x"):
            with pytest.raises(SandboxError, match="cannot lie in /etc"):
                jail.run(["/usr/bin/gcc-12", "--version"], cwd=where)
        assert jail.run(["/usr/bin/gcc-12", "--version"], cwd="/w").exit_code == 0


def test_outputs_that_are_not_regular_files_are_not_returned(sandbox, probe_binary) -> None:
    with sandbox.create_jail("gcc-12") as jail:
        # /w/probe makes nothing called out.o; ask for the input itself through a symlink.
        result = jail.run(
            ["/w/probe", "daemon", "0"],
            cwd="/w",
            inputs={"probe": probe_binary},
            executables=["probe"],
            outputs=["missing.o", "probe"],
        )
        assert set(result.outputs) == {"probe"}


@pytest.mark.parametrize(
    ("argv", "cwd", "inputs", "message"),
    [
        (["gcc-12"], "/w", {}, "absolute path"),
        (["/usr/bin/gcc-12"], "relative", {}, "absolute"),
        (["/usr/bin/gcc-12"], "/w/../etc", {}, "normalized"),
        (["/usr/bin/gcc-12"], "/proc/x", {}, "/proc"),
        (["/usr/bin/gcc-12"], "/usr/src/project", {}, "toolchain image"),
        (["/usr/bin/gcc-12"], "/w", {"../escape": b""}, "bad file name"),
        (["/usr/bin/gcc-12"], "/w", {"/etc/passwd": b""}, "relative"),
    ],
)
def test_bad_requests_are_refused_and_the_jail_stays_usable(
    sandbox, argv, cwd, inputs, message
) -> None:
    with sandbox.create_jail("gcc-12") as jail:
        with pytest.raises(SandboxError, match=message):
            jail.run(argv, cwd=cwd, inputs=inputs)
        assert jail.run(["/usr/bin/gcc-12", "--version"], cwd="/ok").exit_code == 0


def test_unknown_image_and_bad_limits_are_refused(sandbox) -> None:
    with pytest.raises(SandboxError, match="no toolchain image"):
        sandbox.create_jail("clang-99")
    with pytest.raises(ValueError):
        sandbox.create_jail("gcc-12", JailLimits(pids_max=0))
    with pytest.raises(SandboxError, match="weakenings"):
        sandbox.create_jail("gcc-12", weaken=frozenset({"no_such_thing"}))


@pytest.mark.parametrize(
    ("args", "limit"),
    [
        (["memory", "512"], "memory"),
        (["sleep", "10"], "wall"),
        (["spin", "10"], "cpu"),
        (["flood", "8"], "output"),
    ],
)
def test_a_job_killed_by_a_limit_says_which(sandbox, probe_binary, args, limit) -> None:
    with sandbox.create_jail("gcc-12", SMALL) as jail:
        result = run_probe(jail, probe_binary, *args)
        assert result.limit == limit, (result.exit_code, result.signal, result.stdout[-200:])
        assert not result.ok
        # The jail survives a job that hit a limit.
        assert jail.run(["/usr/bin/gcc-12", "--version"], cwd="/w").exit_code == 0


@contextlib.contextmanager
def groups_of_our_own() -> Iterator[None]:
    """This process (and so a launcher it starts) in new groups below its own, so that the
    launcher's jailcc parents are its alone: their limits reach no other test's jails."""
    if "memory" in cgroups.offered_v2():
        pytest.skip("cgroup v2 offers memory here: a child group of ours could not enable it")
    own = [d for c in (*cgroups.CONTROLLERS, None) if (d := cgroups.group_dir("self", c))]
    moved: list[tuple[str, str]] = []
    try:
        for group in own:
            mine = os.path.join(group, f"jailcc-test-{os.getpid()}")
            os.mkdir(mine)
            moved.append((group, mine))
            Path(mine, "cgroup.procs").write_text("0")
        yield
    finally:
        for group, _ in moved:
            Path(group, "cgroup.procs").write_text("0")
    for _, mine in moved:  # once the launcher is gone (it removes its own parents)
        os.rmdir(mine)


def test_all_jails_together_stay_within_their_memory(gcc_image, probe_binary) -> None:
    """jailccd --jails-memory: the jails' parent group holds all of them below it, whatever
    each jail's own limit, and a job stopped there is a memory limit (its client compiles
    locally), not the compile's own failure."""
    with groups_of_our_own():
        sandbox = Sandbox({"gcc-12": str(gcc_image)}, warm=0, all_jails_memory=96 * MiB)
        try:
            parent = cgroups.parent_dirs()
            if "memory" in parent:
                limit = Path(parent["memory"], "memory.limit_in_bytes").read_text()
            else:
                limit = Path(parent[cgroups.UNIFIED], "memory.max").read_text()
            assert int(limit) == 96 * MiB
            big = JailLimits(memory_bytes=512 * MiB, pids_max=32, work_bytes=16 * MiB)
            with sandbox.create_jail("gcc-12", big) as jail:
                within = run_probe(jail, probe_binary, "memory", "32")
                assert within.ok, (within.exit_code, within.signal, within.stdout[-200:])
                beyond = run_probe(jail, probe_binary, "memory", "200")
                assert beyond.limit == "memory", (beyond.exit_code, beyond.signal)
        finally:
            sandbox.close()


def test_a_job_that_waits_on_nothing_gives_its_slot_up(sandbox, probe_binary) -> None:
    """A job whose processes use no CPU time for idle_seconds is stopped ("idle"): one that
    waits on something that cannot come would hold its slot to the wall clock at no cost."""
    idle = RunLimits(cpu_seconds=5, wall_seconds=60.0, idle_seconds=2.0)
    with sandbox.create_jail("gcc-12", SMALL) as jail:
        result = run_probe(jail, probe_binary, "sleep", "50", limits=idle)
        assert result.limit == "idle", (result.exit_code, result.signal, result.stdout[-200:])
        assert result.usage.wall_seconds < 30
        # Busy is not idle: a job that computes runs on.
        busy = run_probe(jail, probe_binary, "spin", "10", limits=idle)
        assert busy.limit == "cpu", (busy.exit_code, busy.signal, busy.stdout[-200:])


@pytest.mark.parametrize("name", ["/proc/self/fd/2", "/dev/stderr", "/proc/self/fd/1"])
def test_a_compile_cannot_wait_on_its_own_output(sandbox, name) -> None:
    """The job's stdout and stderr are sockets, which cannot be opened again for reading: a
    source that #includes its own stderr fails at once instead of waiting on itself."""
    limits = RunLimits(cpu_seconds=10, wall_seconds=30.0)
    with sandbox.create_jail("gcc-12", SMALL) as jail:
        result = jail.run(
            ["/usr/bin/gcc-12", "-c", "x.c", "-o", "x.o"],
            cwd="/w",
            inputs={"x.c": f'#include "{name}"\nint x;\n'.encode()},
            limits=limits,
        )
    assert result.limit is None and result.exit_code == 1, (result.limit, result.stderr)
    assert b"No such device or address" in result.stderr, result.stderr


def test_pids_and_file_size_limits(sandbox, probe_binary) -> None:
    with sandbox.create_jail("gcc-12", SMALL) as jail:
        before = jail.job_counters()
        bomb = run_probe(jail, probe_binary, "fork_bomb", "200")
        assert bomb.stdout.startswith(b"PASS"), bomb.stdout
        # The cgroup's pids.max stopped it (not RLIMIT_NPROC, set above it): so a job that
        # fails this way is reported as having hit the pids limit.
        assert Jail.limit_hit(before, jail.job_counters()) == "pids"
        small_files = RunLimits(cpu_seconds=5, wall_seconds=5.0, file_bytes=1 * MiB)
        fill = run_probe(jail, probe_binary, "fill_disk", "8", limits=small_files)
        assert fill.limit == "file-size"


def test_uids_are_unique_across_live_jails_and_sandboxes(sandbox, gcc_image) -> None:
    with Sandbox({"gcc-12": str(gcc_image)}) as other:
        jails = [sandbox.create_jail("gcc-12") for _ in range(10)]
        jails += [other.create_jail("gcc-12") for _ in range(10)]
        try:
            assert len({j.uid for j in jails}) == 20
        finally:
            for jail in jails:
                assert jail.close().leaks == []


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def own_copy(image: Path, tmp_path: Path) -> Path:
    """A copy of the image, so that loop devices of this test's sandbox alone are counted."""
    copy = tmp_path / image.name
    copy.write_bytes(image.read_bytes())
    return copy


def test_a_thousand_jails_in_sequence_and_twenty_at_once_leave_nothing(gcc_image, tmp_path) -> None:
    gcc_image = own_copy(gcc_image, tmp_path)
    used_uids: set[int] = set()
    # No warm jails here, so that any live jail process after the loop is a leak.
    with Sandbox({"gcc-12": str(gcc_image)}, warm=0) as sb:

        def cycle() -> None:
            jail = sb.create_jail("gcc-12")
            used_uids.add(jail.uid)
            assert jail.run(["/usr/bin/gcc-12", "-dumpversion"], cwd="/w").exit_code == 0
            assert jail.close().leaks == []

        for _ in range(50):  # warm-up: caches, allocator pools
            cycle()
        server_before, launcher_before = _rss(os.getpid()), _rss(sb.launcher_pid)
        for _ in range(1000):
            cycle()
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                for _ in range(5):
                    cycle()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert leaks.leftovers(uids=used_uids, owner_pid=sb.launcher_pid) == []
        growth_server = _rss(os.getpid()) - server_before
        growth_launcher = _rss(sb.launcher_pid) - launcher_before
        assert growth_server < 8 * MiB, growth_server
        assert growth_launcher < 8 * MiB, growth_launcher
    assert leaks.leftovers(images=[str(gcc_image)], uids=used_uids, owner_pid=sb.launcher_pid) == []


def test_killing_the_launcher_takes_every_jail_with_it(gcc_image, probe_binary, tmp_path) -> None:
    gcc_image = own_copy(gcc_image, tmp_path)
    sb = Sandbox({"gcc-12": str(gcc_image)})
    jails = [sb.create_jail("gcc-12") for _ in range(3)]
    uids = [j.uid for j in jails]
    holder = {}

    def long_job() -> None:
        try:
            run_probe(jails[0], probe_binary, "sleep", "30", limits=RunLimits(wall_seconds=60.0))
        except BaseException as exc:
            holder["error"] = exc

    thread = threading.Thread(target=long_job)
    thread.start()
    time.sleep(0.5)
    os.kill(sb.launcher_pid, signal.SIGKILL)
    thread.join(timeout=10)
    assert isinstance(holder.get("error"), JailBroken)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        any(leaks.processes_of_uids(u, u + 1) for u in uids)
        or leaks.loop_devices_backed_by([str(gcc_image)])
    ):
        time.sleep(0.05)
    assert [leaks.processes_of_uids(u, u + 1) for u in uids] == [[], [], []]
    assert leaks.loop_devices_backed_by([str(gcc_image)]) == []
    sb.close()
    # Empty cgroups of the dead launcher are removed by the next launcher that starts.
    with Sandbox({"gcc-12": str(gcc_image)}) as again:
        assert all(
            not p.split("/")[-1].startswith(f"{sb.launcher_pid}-") for p in leaks.jail_cgroups()
        )
        assert again.images == ["gcc-12"]


def test_missing_or_corrupt_image_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="does not exist"):
        Sandbox({"x": str(tmp_path / "nope.img")})
    bad = tmp_path / "bad.img"
    bad.write_bytes(b"\0" * 65536)
    with pytest.raises(SandboxError, match="not a squashfs or ext4 image"):
        Sandbox({"x": str(bad)})
    assert leaks.loop_devices_backed_by([str(bad)]) == []
    # A loop device reads its file live: one that others may write, or not root's, or a
    # symlink (whose target may change between the check and the mount) is refused.
    bad.chmod(0o666)
    with pytest.raises(SandboxError, match="writable by no one else"):
        Sandbox({"x": str(bad)})
    bad.chmod(0o644)
    os.chown(bad, 65534, 65534)
    with pytest.raises(SandboxError, match="root's"):
        Sandbox({"x": str(bad)})
    link = tmp_path / "link.img"
    link.symlink_to(bad)
    with pytest.raises(SandboxError, match="symbolic links"):
        Sandbox({"x": str(link)})


def test_cpu_of_children_never_waited_for_is_still_counted(sandbox, probe_binary) -> None:
    with sandbox.create_jail("gcc-12") as jail:
        result = run_probe(
            jail,
            probe_binary,
            "spin_children",
            "2",
            "1",
            limits=RunLimits(cpu_seconds=10, wall_seconds=10.0),
        )
    assert result.exit_code == 0, result.stderr
    # The job itself slept: its own rusage knows nothing of its children's CPU...
    assert result.usage.user_seconds + result.usage.system_seconds < 0.5
    # ...the jail's cgroup does: two children that used a second of CPU each.
    assert result.usage.jail_cpu_seconds >= 2.0, result.usage


def test_a_broken_host_dev_null_does_not_reach_the_jails(gcc_image, probe_binary, tmp_path) -> None:
    """The jail's device nodes come from fixed numbers, not from the host's /dev: with a regular
    file over /dev/null (in a mount namespace of the test's own), jails still work."""
    fake = tmp_path / "not-a-device"
    fake.write_bytes(b"")
    (tmp_path / "probe").write_bytes(probe_binary)
    script = tmp_path / "jail.py"
    script.write_text(
        "import os, stat, sys\n"
        "from jailcc.sandbox.api import Sandbox\n"
        "assert stat.S_ISREG(os.stat('/dev/null').st_mode), 'the host /dev/null is not broken'\n"
        f"probe = open({str(tmp_path / 'probe')!r}, 'rb').read()\n"
        f"with Sandbox({{'gcc-12': {str(gcc_image)!r}}}, warm=0) as sb:\n"
        "    with sb.create_jail('gcc-12') as jail:\n"
        "        r = jail.run(['/w/probe', 'device_nodes'], cwd='/w', inputs={'probe': probe},\n"
        "                     executables=['probe'])\n"
        "        sys.stdout.write(r.stdout.decode())\n"
    )
    # unshare(1) makes the new namespace's mounts private: the host's /dev/null is untouched.
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            'mount --bind "$1" /dev/null && exec "$2" "$3"',
            "sh",
            str(fake),
            sys.executable,
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("PASS"), proc.stdout
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def _compile_big(jail: Jail, source: bytes, limits: RunLimits) -> RunResult:
    return jail.run(
        ["/usr/bin/gcc-12", "-c", "big.i", "-o", "big.o"],
        cwd="/src",
        inputs={"big.i": source},
        outputs=["big.o"],
        limits=limits,
    )


SWAP_IN_A_SYMLINK = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    return rename("/tmp/a", "/tmp/z") != 0 || symlink("/proc", "/tmp/a") != 0;
}
"""


def test_the_init_follows_no_symlink_the_job_made_on_the_way_to_its_work_dir(
    sandbox, tmp_path
) -> None:
    """A work dir under /tmp (a tree job's root may lie there): the job, which owns /tmp, put
    a symlink to /proc in place of /tmp/a, and the init read its own /proc/1/maps back as the
    job's "output" (a compiler exploit's view of the init, which the job itself may not read)."""
    (tmp_path / "swap.c").write_text(SWAP_IN_A_SYMLINK)
    subprocess.run(
        ["cc", "-static", "-O1", "-o", str(tmp_path / "swap"), str(tmp_path / "swap.c")],
        check=True,
    )
    with sandbox.create_jail("gcc-12") as jail:
        result = jail.run(
            ["/tmp/a/1/swap"],
            cwd="/tmp/a/1",
            inputs={"swap": (tmp_path / "swap").read_bytes()},
            executables=["swap"],
            outputs=["maps", "status", "1/maps"],
        )
        assert result.exit_code == 0, (result, result.stderr)
        assert result.outputs == {}, sorted(result.outputs)
        assert not jail.usable  # its work dir could not be wiped: retired


def test_a_full_work_dir_is_reported_as_the_disk_limit(sandbox) -> None:
    """An object larger than the work dir's tmpfs: as fails with ENOSPC, an ordinary failure
    to the driver, where a local compile succeeds. The result must name the limit, or the
    client would take the failure for the answer."""
    source = b"char big[24 << 20] = {1};\n"
    limits = RunLimits(cpu_seconds=20, wall_seconds=30.0, file_bytes=256 * MiB)
    with sandbox.create_jail("gcc-12", SMALL) as jail:  # a 16 MiB work dir
        result = _compile_big(jail, source, limits)
        assert b"No space left on device" in result.stderr, result.stderr
        assert result.exit_code != 0 and result.limit == "disk", (result, result.stderr)


def test_a_cpu_limit_below_the_compiler_driver_is_reported(sandbox) -> None:
    """RLIMIT_CPU stops cc1, not the gcc driver, which then fails with a status of its own
    ("CPU time limit exceeded signal terminated program cc1", or "Killed signal" past the hard
    limit): the result must name the limit, so that the client compiles locally."""
    chain = "".join(
        f"int f{i}(int x) {{ return f{i - 1}(x) * 3 + {i}; }}\n" for i in range(1, 6000)
    )
    source = ("int f0(int x) { return x; }\n" + chain).encode()
    with sandbox.create_jail("gcc-12") as jail:
        result = jail.run(
            ["/usr/bin/gcc-12", "-O2", "-c", "slow.i", "-o", "slow.o"],
            cwd="/src",
            inputs={"slow.i": source},
            limits=RunLimits(cpu_seconds=1, wall_seconds=60.0),
        )
        assert result.signal is None and result.exit_code != 0, (result, result.stderr)
        assert b"terminated program cc1" in result.stderr, result.stderr
        assert result.limit == "cpu", (result, result.stderr)


def test_a_file_size_limit_below_the_compiler_driver_is_reported(sandbox, tmp_path) -> None:
    """as, not the gcc driver, is stopped by RLIMIT_FSIZE: the driver fails with an ordinary
    status, and the result must still name the limit (the client then compiles locally)."""
    source = b"char big[4 << 20] = {1};\n"
    limits = RunLimits(cpu_seconds=10, wall_seconds=20.0, file_bytes=1 * MiB)
    with sandbox.create_jail("gcc-12") as jail:
        result = _compile_big(jail, source, limits)
        assert result.exit_code != 0 and result.limit == "file-size", (result, result.stderr)
        # Within RLIMIT_FSIZE but over the cap on what is read back: the output limit.
        over_cap = _compile_big(jail, source, RunLimits(file_bytes=8 * MiB, output_file_bytes=MiB))
        assert over_cap.exit_code == 0 and over_cap.limit == "output" and not over_cap.ok
        # Below the limit the same job is an ordinary success...
        small = jail.run(
            ["/usr/bin/gcc-12", "-c", "small.i", "-o", "small.o"],
            cwd="/src",
            inputs={"small.i": b"char small[4096] = {1};\n"},
            outputs=["small.o"],
            limits=limits,
        )
        assert small.ok and "small.o" in small.outputs
        # ...and a compile error that writes little is no limit.
        bad = jail.run(
            ["/usr/bin/gcc-12", "-c", "bad.i", "-o", "bad.o"],
            cwd="/src",
            inputs={"bad.i": b"int f( {\n"},
            limits=limits,
        )
        assert bad.exit_code == 1 and bad.limit is None


def _sleeper_in(group: JailCgroup) -> subprocess.Popen:
    proc = subprocess.Popen(["sleep", "60"])
    for path in group.paths.values():
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
    return proc


def test_cgroup_kill_reads_no_pids(monkeypatch) -> None:
    """Teardown kills by cgroup.kill where there is a cgroup2 group: no pid read from
    cgroup.procs, which a recycled pid could turn into a host process."""
    parents = cgroups.parent_dirs()
    if cgroups.UNIFIED not in parents:
        pytest.skip("no cgroup2 hierarchy mounted")
    group = JailCgroup.create(parents, f"{os.getpid()}-kill-test", 64 * MiB, 8)
    proc = _sleeper_in(group)
    try:

        def no_pids(self) -> list[int]:
            raise AssertionError("cgroup.procs read to kill")

        monkeypatch.setattr(JailCgroup, "pids", no_pids)
        assert group.remove() == []
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
        monkeypatch.undo()
        group.remove()


def test_cgroup_kill_without_cgroup2_goes_by_verified_pidfds(monkeypatch) -> None:
    parents = {c: p for c, p in cgroups.parent_dirs().items() if c != cgroups.UNIFIED}
    group = JailCgroup.create(parents, f"{os.getpid()}-pidfd-test", 64 * MiB, 8)
    outsider = subprocess.Popen(["sleep", "60"])
    proc = _sleeper_in(group)
    try:
        # A pid that is not (or no longer) in the group is never signalled.
        real_pids = JailCgroup.pids
        monkeypatch.setattr(JailCgroup, "pids", lambda self: [outsider.pid, *real_pids(self)])
        assert group.remove() == []
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert outsider.poll() is None
    finally:
        for p in (proc, outsider):
            p.kill()
            p.wait()
        monkeypatch.undo()
        group.remove()


def test_a_users_store_goes_to_the_jails_init_and_no_job_sees_it(sandbox, tmp_path) -> None:
    from jailcc.sandbox.launcher import MAX_STORES

    size = 4 * MiB
    # What a job sees of the mounts and descriptors: the store would show as a "jailcc-store"
    # tmpfs, or as a descriptor left open.
    source = tmp_path / "look.c"
    source.write_text(
        "#include <stdio.h>\n#include <unistd.h>\n"
        'int main(void) { char b[65536]; FILE *f = fopen("/proc/self/mountinfo", "r");'
        " size_t n = fread(b, 1, sizeof b, f); fclose(f); fwrite(b, 1, n, stdout);"
        ' for (int fd = 3; fd < 1024; fd++) if (fcntl(fd, F_GETFD) != -1) printf("fd %d\\n", fd);'
        " return 0; }\n"
    )
    subprocess.run(
        [
            "gcc-12",
            "-static",
            "-O",
            "-include",
            "fcntl.h",
            str(source),
            "-o",
            str(tmp_path / "look"),
        ],
        check=True,
    )
    look = (tmp_path / "look").read_bytes()
    with (
        sandbox.create_jail("gcc-12", store_for=("alice", size)) as alice,
        sandbox.create_jail("gcc-12", store_for=("alice", size)) as alice_too,
    ):
        assert alice.store_error is None and alice_too.store_error is None
        seen = alice.run(
            ["/w/look"], cwd="/w", inputs={"look": look}, executables=["look"], limits=QUICK
        )
        assert seen.exit_code == 0 and b"jailcc-root" in seen.stdout, seen.stderr
        assert b"jailcc-store" not in seen.stdout and b"fd " not in seen.stdout, seen.stdout
        # Stores held by live jails are never taken away: past the limit a jail goes without.
        more = [sandbox.create_jail("gcc-12", store_for=(f"u{n}", size)) for n in range(MAX_STORES)]
        try:
            errors = [jail.store_error for jail in more]
            assert errors[: MAX_STORES - 1] == [None] * (MAX_STORES - 1)
            assert "held by live jails" in str(errors[-1])
        finally:
            for jail in more:
                jail.close()
    # Once no jail holds them, a new user's store replaces the least recently used.
    with sandbox.create_jail("gcc-12", store_for=("carol", size)) as carol:
        assert carol.store_error is None


@pytest.mark.parametrize(
    "store", [{"user": "", "bytes": MiB}, {"user": "a", "bytes": 1}, {"user": "a"}, "a"]
)
def test_bad_store_requests_are_refused_before_any_jail_is_made(sandbox, store) -> None:
    with pytest.raises(SandboxError, match="store"):
        sandbox._request({"op": "create", "image": "gcc-12", "store": store}, max_fds=1)
    with sandbox.create_jail("gcc-12", store_for=("alice", MiB)) as jail:
        assert jail.store_error is None
