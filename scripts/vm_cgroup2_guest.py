#!/usr/bin/python3.11 -s
"""The guest side of scripts/vm-cgroup2: PID 1 of a small VM booted with only cgroup v2 (no v1
hierarchy is ever mounted, so every controller is in cgroup2, as on a stock Debian 12), which
checks sandbox/cgroups.py the way the launcher uses it, then builds real jails with the real
launcher (jailcc.sandbox.api.Sandbox) and runs the selftest's escape probes in them, and
prints one PASS or FAIL line per check (INFO lines for figures), then DONE, and powers the VM
off. The package jailcc (core/*.py and sandbox/) and prctl are in /jailcc.

Roles (argv[1]): none (PID 1: mounts, lays out groups as systemd would, runs the scenarios),
"jailccd" (joins a group, runs a launcher as its child, like jailccd.service's main process),
"launcher" (makes the jails' parent with cgroups.parent_dirs() and runs jails' worth of
processes in groups made by JailCgroup), "jails" (joins a group and, like jailccd, makes a
Sandbox whose launcher builds jails from the directory image IMAGE, as tests/test_sandbox.py
does, then runs selftest/probes.py's escape probes).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time

JAILCC = "/jailcc"
sys.path.insert(0, JAILCC)
os.environ["PYTHONPATH"] = JAILCC  # for the launcher that Sandbox starts
from jailcc.sandbox import cgroups  # noqa: E402

ROOT = "/sys/fs/cgroup"
MiB = 1 << 20
PYTHON = sys.executable
# The toolchain image: a directory (the launcher bind-mounts it read-only) holding usr/bin/probe
# (selftest/probes.c) and usr/bin/forkbomb, static; the files come in /image and are copied to a
# tmpfs of its own, so that the jails' mount table names no host path (as with a squashfs
# image: the selftest's mount_table probe checks it).
IMAGE_FILES = "/image"
IMAGE = "/images/static"
PROBE = "/usr/bin/probe"


def say(ok: bool, name: str, detail: str = "") -> bool:
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def in_child(group: cgroups.JailCgroup, body) -> int:
    """Fork a child that joins the jail's groups and runs body; its wait status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            group.join_self()
            code = body()
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


# -- the launcher's part ------------------------------------------------------------------------


def launcher() -> None:
    try:
        parents = cgroups.parent_dirs()
    except cgroups.CgroupError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return
    unit = sys.argv[2]
    leaf = os.path.join(unit, cgroups.LEAF_NAME)
    jailcc = os.path.join(unit, cgroups.PARENT_NAME)
    say(parents == {cgroups.UNIFIED: jailcc}, "parent_dirs uses cgroup v2 only", repr(parents))
    own, parent = cgroups.group_dir("self", None), cgroups.group_dir(os.getppid(), None)
    say(own == leaf and parent == leaf, "jailccd and the launcher moved to the leaf", own or "")
    say(cgroups.unified_parent() == jailcc, "the parent is found again after the move")
    enabled = set(read(os.path.join(jailcc, "cgroup.subtree_control")).split())
    say({"memory", "pids", "cpu"} <= enabled, "controllers enabled for the jails", str(enabled))

    group = cgroups.JailCgroup.create(parents, f"{os.getpid()}-1", 64 * MiB, 16)
    path = group.paths[cgroups.UNIFIED]
    swap = os.path.join(path, "memory.swap.max")
    say(
        read(os.path.join(path, "memory.max")).strip() == str(64 * MiB)
        and (not os.path.exists(swap) or read(swap).strip() == "0")
        and read(os.path.join(path, "pids.max")).strip() == "16",
        "memory.max, memory.swap.max, pids.max written",
    )

    before = group.counters()

    def hog() -> int:
        held = b"\x01" * (256 * MiB)  # every page written: four times the limit
        return 0 if held else 1

    status = in_child(group, hog)
    after = group.counters()
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    say(
        killed and after["oom_kill"] > before["oom_kill"],
        "a memory hog is OOM-killed and memory.events oom_kill counts it",
        f"status {status}, {before} -> {after}",
    )
    say(after["memory_failcnt"] > 0, "memory.events max counts hits of memory.max")
    say(
        after["memory_peak"] >= 32 * MiB,
        "memory.peak reports the peak",
        f"{after['memory_peak'] // MiB} MiB",
    )
    group.reset_peak()  # read-only memory.peak before Linux 6.12: nothing to hold on to
    say(group.counters()["memory_peak"] >= 0, "reset_peak and counters still work")

    def bomb() -> int:
        children = []
        try:
            for _ in range(64):
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                children.append(pid)
        except OSError:
            pass
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        return len(children)

    before = group.counters()
    status = in_child(group, bomb)
    after = group.counters()
    forked = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    say(
        0 <= forked < 16 and after["pids_max_events"] > before["pids_max_events"],
        "a fork bomb stops at pids.max and pids.events max counts it",
        f"{forked} forked; {before['pids_max_events']} -> {after['pids_max_events']}",
    )

    def spin() -> int:
        pid = os.fork()  # a child nobody waits for: the group still counts its CPU
        end = time.process_time() + 0.5
        while time.process_time() < end:
            pass
        if pid == 0:
            os._exit(0)
        return 0

    before = group.counters()
    in_child(group, spin)
    time.sleep(0.3)
    after = group.counters()
    used = (after["cpu_ns"] - before["cpu_ns"]) / 1e9
    say(used >= 0.9, "cpu.stat usage_usec counts the jail's CPU", f"{used:.2f} s")

    say(group.set_idle(True) is True, "set_idle writes the v2 cpu controller's files")
    idle = os.path.join(path, "cpu.idle")
    if os.path.exists(idle):
        say(read(idle).strip() == "1", "cpu.idle is 1")
    group.set_idle(False)

    sleepers = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            group.join_self()
            time.sleep(60)
            os._exit(0)
        sleepers.append(pid)
    time.sleep(0.2)
    problems = group.remove()
    statuses = [os.waitpid(pid, 0)[1] for pid in sleepers]
    say(
        problems == [] and not os.path.exists(path) and all(os.WTERMSIG(s) == 9 for s in statuses),
        "teardown kills the members by cgroup.kill and removes the group",
        f"{problems} {statuses}",
    )

    os.mkdir(os.path.join(jailcc, "99999-1"))
    removed = cgroups.remove_stale(parents)
    say(
        removed == [os.path.join(jailcc, "99999-1")],
        "remove_stale removes a dead launcher's empty group",
        repr(removed),
    )
    for path in parents.values():
        os.rmdir(path)
    print(json.dumps({"error": None}), flush=True)


def jailccd() -> None:
    write(os.path.join(sys.argv[2], "cgroup.procs"), "0")
    done = subprocess.run([PYTHON, "-s", __file__, "launcher", sys.argv[2]], check=False)
    sys.exit(done.returncode)


def start_jailccd(unit: str) -> dict:
    """Run "jailccd" in unit; the launcher's JSON verdict (its PASS/FAIL lines pass through)."""
    proc = subprocess.run(
        [PYTHON, "-s", __file__, "jailccd", unit], capture_output=True, text=True, timeout=120
    )
    lines = proc.stdout.splitlines()
    for line in lines[:-1]:
        print(line, flush=True)
    try:
        assert proc.returncode == 0
        return json.loads(lines[-1])
    except (AssertionError, IndexError, ValueError):
        say(False, f"jailccd in {unit} ran", (lines[-1:] or [""])[0] + proc.stderr[-2000:])
        return {"error": "crashed"}


# -- real jails --------------------------------------------------------------------------------


def jails() -> None:
    """As jailccd: join the unit's group, start the real launcher through Sandbox and build
    jails with limits as tests/test_sandbox.py does, then run `jailccd selftest`'s probes."""
    write(os.path.join(sys.argv[2], "cgroup.procs"), "0")
    from jailcc.sandbox import leaks
    from jailcc.sandbox.api import Sandbox
    from jailcc.sandbox.spec import JailLimits, RunLimits
    from jailcc.selftest import probes as selftest

    unit = sys.argv[2]
    small = JailLimits(memory_bytes=128 * MiB, pids_max=32, work_bytes=16 * MiB, tmp_bytes=8 * MiB)
    # Roomier than test_sandbox.py's QUICK: TCG is several times slower than the host.
    quick = RunLimits(cpu_seconds=5, wall_seconds=15.0, stdout_bytes=1 * MiB)
    uids: set[int] = set()
    started = time.monotonic()
    # No warm jails: after the jails are closed, none of this launcher may exist. Weakening
    # allowed for the one root_uid jail below (an unweakened jail is built the same way).
    with Sandbox({"static": IMAGE}, warm=0, allow_weaken=True) as sb:
        say(
            cgroups.group_dir(sb.launcher_pid, None) == os.path.join(unit, cgroups.LEAF_NAME),
            "jail: the real launcher starts, moved with jailccd to the unit's leaf",
            f"{time.monotonic() - started:.1f} s",
        )
        jail = sb.create_jail("static", small)
        uids.add(jail.uid)
        group = cgroups.group_dir(jail.pid, None) or ""
        expected = os.path.join(unit, cgroups.PARENT_NAME, f"{sb.launcher_pid}-{jail.id}")
        swap = os.path.join(group, "memory.swap.max")
        say(
            group == expected
            and read(os.path.join(group, "memory.max")).strip() == str(small.memory_bytes)
            and (not os.path.exists(swap) or read(swap).strip() == "0")
            and read(os.path.join(group, "pids.max")).strip() == str(small.pids_max),
            "jail: its init is in its own cgroup v2 group with memory.max and pids.max",
            group,
        )

        normal = jail.run([PROBE, "uid0_caps"], cwd="/w", limits=quick)
        say(
            normal.ok and normal.stdout.startswith(b"PASS"),
            "jail: a command from the image exits 0 with its stdout",
            f"{normal.exit_code} {normal.stdout[:120]!r} {normal.stderr[-200:]!r}",
        )

        hog = jail.run([PROBE, "memory", "512"], cwd="/w", limits=quick)
        say(
            hog.limit == "memory" and hog.signal == 9 and not hog.ok,
            "jail: a memory hog beyond memory.max is reported as the memory limit",
            f"limit {hog.limit}, signal {hog.signal}, exit {hog.exit_code}",
        )
        say(
            hog.usage.max_rss_bytes >= 64 * MiB,
            "jail: the hog's peak memory is reported (memory.peak)",
            f"{hog.usage.max_rss_bytes // MiB} MiB",
        )
        again = jail.run([PROBE, "uid0_caps"], cwd="/w", limits=quick)
        say(again.ok, "jail: the jail survives the OOM kill", repr(again.stdout[:120]))

        # The init sets RLIMIT_NPROC to pids_max for the jail's uid, which counts the same
        # tasks as pids.max and is checked first (copy_process): a fork fails with EAGAIN
        # before pids.max is reached, and pids.events stays put.
        bomb = jail.run(["/usr/bin/forkbomb", "200"], cwd="/w", limits=quick)
        after = jail.run([PROBE, "uid0_caps"], cwd="/w", limits=quick)
        say(
            bomb.exit_code == 1 and b"fork failed" in bomb.stdout and after.ok,
            "jail: a fork bomb is stopped at pids_max, and the jail stays usable",
            f"limit {bomb.limit}, exit {bomb.exit_code}, {bomb.stdout.strip()[:120]!r}",
        )
        events = read(os.path.join(group, "pids.events")).split()
        print(f"INFO the unweakened jail's fork bomb: limit {bomb.limit}, pids.events {events}")
        # With the root_uid weakening the init sets no RLIMIT_NPROC (and root is exempt from
        # it): pids.max alone stops the bomb, counted in pids.events.
        with sb.create_jail("static", small, frozenset({"root_uid"})) as root:
            root_group = cgroups.group_dir(root.pid, None) or ""
            bomb = root.run(["/usr/bin/forkbomb", "200"], cwd="/w", limits=quick)
            say(
                bomb.limit == "pids" and bomb.exit_code == 1,
                "jail: a fork bomb that only pids.max stops (root_uid jail) is reported as the"
                " pids limit",
                f"limit {bomb.limit}, exit {bomb.exit_code}, {bomb.stdout.strip()[:120]!r}",
            )
            report = root.close()
        say(
            report.leaks == [] and root_group != "" and not os.path.exists(root_group),
            "jail: the root_uid jail's teardown is clean too",
            f"{report.leaks}",
        )

        # Two children spin a second of CPU each, never waited for: the job's own rusage knows
        # nothing of them, the jail's cgroup does (test_cpu_of_children_never_waited_for_...).
        spin = jail.run(
            [PROBE, "spin_children", "2", "1"],
            cwd="/w",
            limits=RunLimits(cpu_seconds=10, wall_seconds=30.0),
        )
        own = spin.usage.user_seconds + spin.usage.system_seconds
        say(
            spin.ok
            and spin.stdout == b"PASS children spun unwaited\n"
            and spin.usage.jail_cpu_seconds >= 2.0
            and own < 0.5,
            "jail: CPU of children never waited for is accounted from cpu.stat",
            f"jail {spin.usage.jail_cpu_seconds:.2f} s, job's own {own:.2f} s, {spin.stdout!r}",
        )

        # A daemon that would outlive the job and the jail: teardown must end it.
        daemon = jail.run([PROBE, "daemon", "60"], cwd="/w", limits=quick)
        report = jail.close()
        say(
            daemon.ok
            and report.leaks == []
            and not os.path.exists(group)
            and leaks.processes_of_uids(jail.uid, jail.uid + 1) == [],
            "jail: teardown is clean: no leaks reported, its group gone, no process of its uid",
            f"{report.leaks} in {report.seconds * 1000:.0f} ms",
        )

        # Three jails more, alive at once, each with a job run, then closed.
        others = [sb.create_jail("static", small) for _ in range(3)]
        uids.update(other.uid for other in others)
        runs = [other.run([PROBE, "uid0_caps"], cwd="/w", limits=quick).ok for other in others]
        reports = [other.close().leaks for other in others]
        left = leaks.leftovers(images=[IMAGE], uids=uids, owner_pid=sb.launcher_pid)
        say(
            len({other.uid for other in others}) == 3
            and all(runs)
            and reports == [[], [], []]
            and left == [],
            "jail: sandbox.leaks finds nothing left by closed jails",
            f"{runs} {reports} {left}",
        )
        launcher = sb.launcher_pid
    left = leaks.leftovers(images=[IMAGE], uids=uids) + leaks.jail_cgroups()
    parent = os.path.join(unit, cgroups.PARENT_NAME)
    say(
        left == [] and not os.path.exists(parent) and sb.launcher_exit == 0,
        "jail: the launcher exits with the sandbox and leaves nothing, its jailcc group removed",
        f"{left} exit {sb.launcher_exit} (launcher {launcher})",
    )

    # The selftest's escape probes against the same image (no gcc in the guest: the probes
    # were built on the host, as selftest.build_probe_binary builds them).
    with open(IMAGE + PROBE, "rb") as f:
        probe = f.read()
    selftest.build_probe_binary = lambda directory: probe
    started = time.monotonic()
    (image,) = selftest.run_selftest({"static": IMAGE}, timing_rounds=5)
    for result in image.probes:
        say(result.passed, f"selftest {result.name}", result.detail[:200])
    say(
        [p.name for p in image.probes] == list(selftest.PROBE_NAMES),
        "selftest: every probe ran",
        f"{len(image.probes)} of {len(selftest.PROBE_NAMES)}",
    )
    say(image.leftovers == [], "selftest: the probes' jails left nothing", repr(image.leftovers))
    print(
        f"INFO selftest took {time.monotonic() - started:.1f} s; jail build"
        f" {image.build_ms_median:.0f} ms, teardown {image.teardown_ms_median:.0f} ms (median)",
        flush=True,
    )


def start_jails(unit: str) -> None:
    """Run "jails" in unit (a delegated jailccd.service of its own); its lines pass through."""
    os.mkdir(unit)
    started = time.monotonic()
    try:
        proc = subprocess.run([PYTHON, "-s", __file__, "jails", unit], timeout=240)
        code: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timed out"
    say(code == 0, "the real jails' checks ran", f"status {code}")
    print(f"INFO real jails took {time.monotonic() - started:.1f} s", flush=True)


# -- PID 1 -------------------------------------------------------------------------------------


def mount(source: str, target: str, fstype: str, data: str = "") -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    os.makedirs(target, exist_ok=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), 0, data.encode()) != 0:
        raise OSError(ctypes.get_errno(), f"mount {fstype} on {target}")


def power_off() -> None:
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(0x4321FEDC)  # LINUX_REBOOT_CMD_POWER_OFF


MS_BIND, MS_MOVE = 0x1000, 0x2000


def switch_root() -> None:
    """Make the root a mount of its own, as switch_root does: pivot_root(2), by which every
    jail enters its root, refuses a process whose root is the initramfs itself."""
    libc = ctypes.CDLL(None, use_errno=True)
    os.mkdir("/newroot")
    if libc.mount(b"/", b"/newroot", None, MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), "bind / on /newroot")
    os.chdir("/newroot")
    if libc.mount(b".", b"/", None, MS_MOVE, None) != 0:
        raise OSError(ctypes.get_errno(), "move /newroot to /")
    os.chroot(".")
    os.chdir("/")


def loopback_up() -> None:
    """Bring lo up (127.0.0.1): the selftest's host-side bait listens there."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh22x", b"lo", flags | iff_up))


def init() -> None:
    switch_root()
    mount("proc", "/proc", "proc")
    mount("sysfs", "/sys", "sysfs")
    mount("devtmpfs", "/dev", "devtmpfs")
    mount("tmpfs", "/tmp", "tmpfs")
    mount("tmpfs", "/run", "tmpfs", "mode=0755")  # the launcher's uid locks and mount base
    mount("images", IMAGE, "tmpfs", "mode=0755")
    shutil.copytree(IMAGE_FILES, IMAGE, symlinks=True, dirs_exist_ok=True)
    loopback_up()
    mount("cgroup2", ROOT, "cgroup2", "nsdelegate")
    controllers = read(f"{ROOT}/cgroup.controllers").strip()
    print(f"kernel {os.uname().release}; cgroup v2 controllers: {controllers}", flush=True)
    v1, v2 = cgroups._mounts()
    say(v1 == {} and v2 is not None and v2.point == ROOT, "pure cgroup v2: no v1 hierarchy")

    # As systemd lays it out: controllers enabled down to a delegated jailccd.service.
    for group in (ROOT, f"{ROOT}/system.slice"):
        os.makedirs(group, exist_ok=True)
        write(f"{group}/cgroup.subtree_control", "+memory +pids +cpu")
    unit = f"{ROOT}/system.slice/jailccd.service"
    os.mkdir(unit)
    verdict = start_jailccd(unit)
    say(verdict.get("error") is None, "the launcher in a delegated unit", str(verdict["error"]))

    # A group shared with a process that is not jailccd's (a login shell's scope, say).
    scope = f"{ROOT}/system.slice/session-1.scope"
    os.mkdir(scope)
    shell = subprocess.Popen([PYTHON, "-s", "-c", "import time; time.sleep(60)"])
    write(f"{scope}/cgroup.procs", str(shell.pid))
    verdict = start_jailccd(scope)
    error = verdict.get("error") or ""
    say(
        "not jailccd's" in error and cgroups.group_dir(shell.pid, None) == scope,
        "a group not delegated to us: processes that are not jailccd's stay, a clear error",
        error[:300],
    )
    # The same group marked delegated, as systemd-run --scope -p Delegate=yes does (251+).
    os.setxattr(scope, "trusted.delegate", b"1")
    verdict = start_jailccd(scope)
    say(
        verdict.get("error") is None
        and cgroups.group_dir(shell.pid, None) == f"{scope}/{cgroups.LEAF_NAME}",
        "a delegated group: every process in it moves to the leaf",
        str(verdict.get("error")),
    )
    shell.kill()
    shell.wait()

    # A group that cgroup v2 offers no memory controller, with no v1 to fall back on.
    os.makedirs(f"{ROOT}/pids-only.slice/x.service")
    write(f"{ROOT}/pids-only.slice/cgroup.subtree_control", "+pids")
    verdict = start_jailccd(f"{ROOT}/pids-only.slice/x.service")
    error = verdict.get("error") or ""
    say("no memory controller" in error, "a missing controller is a clear error", error[:300])

    # Real jails, from a unit of their own as a freshly started jailccd.service would.
    start_jails(f"{ROOT}/system.slice/jailccd-jails.service")
    print("DONE", flush=True)


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else "init"
    if role == "launcher":
        launcher()
    elif role == "jailccd":
        jailccd()
    elif role == "jails":
        jails()
    else:
        try:
            init()
        except BaseException as exc:
            say(False, "the guest check ran", f"{type(exc).__name__}: {exc}")
        finally:
            power_off()
