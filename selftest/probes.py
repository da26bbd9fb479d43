"""`jailccd selftest`: build real jails exactly as for jobs and try to break out of them.

Each probe is a job run in a fresh jail (the escape programs in probes.c, compiled statically on
the host and shipped in as the job's input). PASS means the jail held, FAIL that it did not.
The host side prepares what the probes aim at: a planted file outside the jail, a loopback
listener and an abstract socket in the host's network namespace, a canary key in the keyring
the launcher inherits, a neighbouring live jail.

`jailccd selftest` runs all this as a uid of its own (selftest/driver.py), driving a
launcher that root started (monitor/cli.py), which also plants the canary key and looks at one
jail's init from the host for init_isolation (another uid's /proc/PID/fd is root's to read).
Run in-process by root (the tests), run_selftest does those two itself.

The caller may add a check of the production job path (`jailccd selftest` does, with
selftest/jobs_probe.py): its jails load the job code as jailccd's do (jail_modules), and the
check gets a fresh jail of each image to hand a connection to. It is not an escape probe:
PASS means the jobs ran.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from jailcc import SELFTEST_PROBES
from jailcc.sandbox import helpers, leaks, rootfs
from jailcc.sandbox import syscalls as sc
from jailcc.sandbox.api import Jail, Sandbox
from jailcc.sandbox.spec import JailLimits, MiB, RunLimits, RunResult

JAIL_LIMITS = JailLimits(
    memory_bytes=128 * MiB,
    pids_max=32,
    work_bytes=16 * MiB,
    work_inodes=256,
    tmp_bytes=8 * MiB,
    tmp_inodes=64,
)
RUN_LIMITS = RunLimits(
    cpu_seconds=1,
    wall_seconds=2.0,
    stdout_bytes=1 * MiB,
    stderr_bytes=1 * MiB,
    output_file_bytes=1 * MiB,
)
CPU_PROBE_LIMITS = replace(RUN_LIMITS, wall_seconds=30.0)
WORKDIR = "/selftest/work"
PROBE_SOURCE = Path(__file__).with_name("probes.c")


# A check of the production job path: its name, and a function of a fresh jail and the image's
# name that says whether it passed and why.
JobsCheck = tuple[str, Callable[[Jail, str], tuple[bool, str]]]


class SelftestError(Exception):
    """The selftest could not run (no compiler for the probes, the sandbox failed)."""


@dataclass
class ProbeResult:
    name: str
    passed: bool
    detail: str


@dataclass
class ImageReport:
    image: str
    probes: list[ProbeResult] = field(default_factory=list)
    build_ms_median: float = 0.0
    teardown_ms_median: float = 0.0
    jails_timed: int = 0
    leftovers: list[str] = field(default_factory=list)  # what the probes' jails left behind

    @property
    def failed(self) -> int:
        """Failed probes, plus one if the probes' jails left anything behind."""
        return sum(not p.passed for p in self.probes) + (1 if self.leftovers else 0)


def build_probe_binary(directory: str) -> bytes:
    """Compile probes.c statically with the host's C compiler: the jail has no libc to offer."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SelftestError(
            "the selftest needs a C compiler on the host to build its probes:"
            " install gcc and libc6-dev"
        )
    out = os.path.join(directory, "probe")
    proc = subprocess.run(
        [compiler, "-static", "-O1", "-o", out, str(PROBE_SOURCE)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SelftestError(
            f"building the probes failed (is libc6-dev installed?): {proc.stderr.strip()[:500]}"
        )
    return Path(out).read_bytes()


class _HostBait:
    """What the probes try to reach on the host, set up for one selftest run."""

    def __init__(self, canary: str | None = None) -> None:
        token = secrets.token_hex(6)
        self.planted = os.path.join(tempfile.gettempdir(), f"jailcc-selftest-{token}")
        with open(self.planted, "w") as f:
            f.write("a secret outside the jail\n")
        os.chmod(self.planted, 0o644)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.port = self.tcp.getsockname()[1]
        self.abstract_name = f"jailcc-selftest-{token}"
        self.abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract.bind("\0" + self.abstract_name)
        self.abstract.listen(8)
        if canary is None:  # run by root in-process: plant it before the launcher starts
            canary = f"jailcc-canary-{token}"
            plant_canary_key(canary)
        self.canary = canary

    def close(self) -> None:
        self.tcp.close()
        self.abstract.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.planted)


def plant_canary_key(description: str) -> None:
    """Join a fresh session keyring and put a key in it; the launcher (started after this)
    inherits the keyring, so a jail that kept it would find the key."""
    with contextlib.suppress(OSError):
        sc.join_new_session_keyring()
    with contextlib.suppress(OSError):  # no canary: the keyctl probe then proves less
        sc.add_key("user", description, b"canary")


def _verdict(result: RunResult) -> tuple[bool, str]:
    lines = result.stdout.decode(errors="replace").strip().splitlines()
    last = lines[-1] if lines else ""
    if result.exit_code == 0 and last.startswith("PASS"):
        return True, last[5:]
    if last.startswith("FAIL"):
        return False, last[5:]
    err = result.stderr.decode(errors="replace").strip()[-300:]
    return False, f"probe did not report (exit {result.exit_code}, signal {result.signal}): {err}"


class _Runner:
    def __init__(
        self,
        sandbox: Sandbox,
        image: str,
        image_path: str,
        probe: bytes,
        bait: _HostBait,
        weaken: frozenset[str],
        init_problems: list[str] | None,
    ) -> None:
        self.sandbox, self.image, self.probe, self.bait = sandbox, image, probe, bait
        self.image_path = image_path
        self.weaken = weaken
        self.init_problems = init_problems  # root's look at an init, when not ours to take
        # Host paths a jail's mount table must not name: the image file, where the helpers
        # are built, where the launcher mounts things.
        self.host_paths = (os.path.abspath(image_path), helpers.CACHE_DIR, rootfs.MOUNT_BASE)
        self.uids: set[int] = set()  # of every jail made, for the leftovers check

    def jail(self) -> Jail:
        jail = self.sandbox.create_jail(self.image, JAIL_LIMITS, self.weaken)
        self.uids.add(jail.uid)
        return jail

    def run(
        self, jail: Jail, *args: str, cwd: str = WORKDIR, limits: RunLimits = RUN_LIMITS
    ) -> RunResult:
        return jail.run(
            [f"{cwd}/probe", *args],
            cwd=cwd,
            inputs={"probe": self.probe},
            executables=["probe"],
            limits=limits,
        )

    def with_jail(
        self, check: Callable[[Jail, str], tuple[bool, str]]
    ) -> Callable[[], tuple[bool, str]]:
        """A check of a fresh jail of this image, given the jail and the image's name."""

        def run() -> tuple[bool, str]:
            with self.jail() as jail:
                return check(jail, self.image)

        return run

    def simple(self, *args: str) -> tuple[bool, str]:
        with self.jail() as jail:
            return _verdict(self.run(jail, *args))

    def limit(self, expected: str, *args: str, limits: RunLimits = RUN_LIMITS) -> tuple[bool, str]:
        with self.jail() as jail:
            result = self.run(jail, *args, limits=limits)
        if result.limit == expected:
            return True, f"stopped by the {expected} limit"
        return _verdict(result)  # the probe may also have been stopped short (ENOSPC, EAGAIN)

    def outlive(self) -> tuple[bool, str]:
        jail = self.jail()
        try:
            passed, detail = _verdict(self.run(jail, "daemon", "30"))
        finally:
            report = jail.close()
        survivors = leaks.processes_of_uids(jail.uid, jail.uid + 1) if jail.uid else []
        if report.leaks or survivors:
            for pid, _ in survivors:  # the probe's daemon: do not leave it for the next test
                with contextlib.suppress(ProcessLookupError, PermissionError):  # (root's: its
                    os.kill(pid, 9)  # launcher's end kills it, in `jailccd selftest`)
            return False, "; ".join(report.leaks) or f"{len(survivors)} process(es) survived"
        if not passed:
            return False, detail
        return True, f"nothing left after teardown ({report.seconds * 1000:.1f} ms)"

    def init_isolation(self) -> tuple[bool, str]:
        """From the host: the jail's init holds no terminal or log of ours, in no session of
        ours, and runs under its seccomp filter (api.Jail.init_isolation_problems)."""
        problems = self.init_problems
        if problems is None:
            with self.jail() as jail:
                problems = jail.init_isolation_problems()
        if problems:
            return False, "the jail's init: " + "; ".join(problems)
        return True, "init has /dev/null for stdio, a session of its own and its seccomp filter"

    def leftovers(self) -> tuple[bool, str]:
        """A job that litters and locks its work dir and /tmp leaves nothing for the next."""
        with self.jail() as jail:
            self.run(jail, "leave_files")
            if not jail.usable:
                return True, "the jail was retired: the next job gets a fresh one"
            return _verdict(self.run(jail, "check_clean"))

    def neighbour(self) -> tuple[bool, str]:
        marker = f"jailcc-marker-{secrets.token_hex(4)}"
        with self.sandbox.create_jail(self.image, JAIL_LIMITS) as other, self.jail() as jail:
            holder: dict[str, RunResult] = {}
            thread = threading.Thread(
                target=lambda: holder.setdefault("r", self.run(other, "marker", marker, "3")),
                daemon=True,
            )
            thread.start()
            time.sleep(0.3)  # let the marker process start and plant its file
            passed, detail = _verdict(self.run(jail, "neighbour", f"{WORKDIR}/{marker}", marker))
            same_uid = jail.uid == other.uid
            thread.join()
        if same_uid:
            return False, f"two live jails share uid {jail.uid}"
        return passed, detail


def _probe_table(r: _Runner) -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
    b = r.bait
    cap_mem = str(2 * JAIL_LIMITS.memory_bytes // MiB)
    return [
        ("read_host_file", lambda: r.simple("read_host_file", b.planted)),
        ("write_image", lambda: r.simple("write_image")),
        ("write_outside_workdir", lambda: r.simple("write_outside_workdir")),
        ("network", lambda: r.simple("network", str(b.port), b.abstract_name)),
        ("host_processes", lambda: r.simple("host_processes", str(os.getpid()))),
        ("uid0_caps", lambda: r.simple("uid0_caps")),
        ("setuid_binaries", lambda: r.simple("setuid_binaries")),
        ("exec_writable", lambda: r.simple("exec_writable")),
        ("new_userns", lambda: r.simple("new_userns")),
        ("mount", lambda: r.simple("mount")),
        ("chroot_escape", lambda: r.simple("chroot_escape", b.planted)),
        ("ptrace", lambda: r.simple("ptrace")),
        ("devices", lambda: r.simple("devices")),
        ("device_nodes", lambda: r.simple("device_nodes")),
        ("socket_families", lambda: r.simple("socket_families")),
        ("mount_table", lambda: r.simple("mount_table", *r.host_paths)),
        ("keyctl", lambda: r.simple("keyctl", b.canary)),
        ("proc_sys_write", lambda: r.simple("proc_sys_write")),
        ("memory", lambda: r.limit("memory", "memory", cap_mem)),
        ("fork_bomb", lambda: r.limit("pids", "fork_bomb", str(4 * JAIL_LIMITS.pids_max))),
        (
            "fill_disk",
            lambda: r.limit("file-size", "fill_disk", str(2 * JAIL_LIMITS.work_bytes // MiB)),
        ),
        ("wall_clock", lambda: r.limit("wall", "sleep", str(int(RUN_LIMITS.wall_seconds) + 3))),
        # (A wall clock of its own: on a busy machine 1 s of CPU takes more than 2 s.)
        ("cpu_time", lambda: r.limit("cpu", "spin", "4", limits=CPU_PROBE_LIMITS)),
        (
            "output_flood",
            lambda: r.limit("output", "flood", str(4 * RUN_LIMITS.stdout_bytes // MiB)),
        ),
        ("outlive_jail", r.outlive),
        ("neighbour_jail", r.neighbour),
        ("init_isolation", r.init_isolation),
        ("leftovers", r.leftovers),
    ]


PROBE_NAMES = SELFTEST_PROBES[1:]  # after jobs_compile (selftest/jobs_probe.py)


def _time_jails(sandbox: Sandbox, image: str, rounds: int) -> tuple[float, float]:
    build, teardown = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        jail = sandbox.create_jail(image, JAIL_LIMITS)
        t1 = time.perf_counter()
        jail.close()
        t2 = time.perf_counter()
        build.append(t1 - t0)
        teardown.append(t2 - t1)
    return statistics.median(build) * 1000, statistics.median(teardown) * 1000


@dataclass(frozen=True)
class FromRoot:
    """What root did for an unprivileged run (`jailccd selftest`, monitor/cli.py): the
    launcher it started and handed over, the canary key it planted in the keyring that
    launcher inherited, and, by image, what it saw of one jail's init from the host."""

    sandbox: Sandbox
    canary: str
    init_problems: dict[str, list[str]]


def run_selftest(
    images: dict[str, str],
    *,
    weaken: frozenset[str] = frozenset(),
    only: Iterable[str] | None = None,
    timing_rounds: int = 20,
    progress: Callable[[str, ProbeResult], None] | None = None,
    jobs_check: JobsCheck | None = None,
    jail_modules: Sequence[str] = (),
    jail_libraries: Sequence[str] = (),
    from_root: FromRoot | None = None,
) -> list[ImageReport]:
    """Run the probes against a jail of each image; images maps a name to an image path.
    jobs_check, if given, runs first, in a jail whose init holds jail_modules (and jail
    libraries) as the server's do (see api.Sandbox). Without from_root, this process (root)
    starts the launcher itself, with those modules."""
    names = [*([jobs_check[0]] if jobs_check else []), *PROBE_NAMES]
    wanted = list(only) if only is not None else names
    unknown = set(wanted) - set(names)
    if unknown:
        raise SelftestError(f"unknown probes: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="jailcc-selftest-") as tmp:
        probe = build_probe_binary(tmp)
        bait = _HostBait(None if from_root is None else from_root.canary)
        try:
            init_problems = {} if from_root is None else from_root.init_problems
            # No warm jails: every jail here is built on demand (what the timing reports),
            # and after the probes no jail of this launcher may exist at all.
            if from_root is not None:
                sandbox = from_root.sandbox
            else:
                sandbox = Sandbox(
                    images,
                    warm=0,
                    allow_weaken=bool(weaken),
                    jail_modules=jail_modules,
                    jail_libraries=jail_libraries,
                )
            with sandbox:
                runners = [
                    _Runner(sandbox, name, path, probe, bait, weaken, init_problems.get(name))
                    for name, path in images.items()
                ]
                return [_run_image(r, wanted, timing_rounds, progress, jobs_check) for r in runners]
        finally:
            bait.close()


def _run_image(
    runner: _Runner,
    wanted: list[str],
    timing_rounds: int,
    progress: Callable[[str, ProbeResult], None] | None,
    jobs_check: JobsCheck | None,
) -> ImageReport:
    name, sandbox = runner.image, runner.sandbox
    report = ImageReport(image=name)
    table = _probe_table(runner)
    if jobs_check:
        table.insert(0, (jobs_check[0], runner.with_jail(jobs_check[1])))
    for probe_name, check in table:
        if probe_name not in wanted:
            continue
        try:
            passed, detail = check()
        except Exception as exc:
            passed, detail = False, f"{type(exc).__name__}: {exc}"
        result = ProbeResult(probe_name, passed, detail.strip())
        report.probes.append(result)
        if progress:
            progress(name, result)
    if timing_rounds:
        report.build_ms_median, report.teardown_ms_median = _time_jails(
            sandbox, name, timing_rounds
        )
        report.jails_timed = timing_rounds
    # Every probe's jail is closed by now: none of their uids may have a process.
    # (uid 0 is the root_uid weakening's: not ours to check.)
    report.leftovers = leaks.leftovers(uids=runner.uids - {0}, owner_pid=sandbox.launcher_pid)
    return report


def reports_to_json(reports: Sequence[ImageReport]) -> dict:
    passed = sum(len(r.probes) - r.failed for r in reports)
    failed = sum(r.failed for r in reports)
    return {
        "images": [asdict(r) | {"failed": r.failed} for r in reports],
        "passed": passed,
        "failed": failed,
    }
