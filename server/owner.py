"""The desktop owner: how much of this machine someone other than jailccd is using, and what
jailccd should do about it.

OwnerMonitor measures, between two samples:
- CPU: the machine's busy time (psutil.cpu_times) less ours, where ours is the CPU time of
  jailccd's process tree (processes that are not in a jail cgroup) plus the CPU usage of the
  jail cgroups' parent ("jailcc", where sandbox/cgroups.py makes it: cpu.stat in cgroup v2,
  cpuacct.usage in v1; it counts every jail's processes, exited ones included, without double
  counting). CPU of a non-jail process of ours that ran and exited between two samples is
  missed, and so counted as the owner's: the error leans towards yielding.
- Memory: RAM not available (total - available) less ours (resident size of the same process
  tree, plus the jail parent's anonymous and shmem pages, from memory.stat of v2 or v1: tmpfs
  work dirs cannot be dropped either).
- Input: idle time from logind's IdleHint/IdleSinceHint (local user sessions, via loginctl)
  and from /dev/input/event* (events are read and thrown away at once, keeping only the time of
  the last key, button or motion; root can read them). None when neither is there.

desktop_policy() turns states into a Decision, with hysteresis: it yields as soon as one sample
says the owner is busy, and gives slots back only after `calm_seconds` of samples that all say
they are not; it evicts running jobs only when pressure has lasted `evict_after` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import psutil
from jailcc.sandbox import cgroups

log = logging.getLogger(__name__)

CGROUP_ROOT = cgroups.CGROUP_ROOT
JAIL_PARENT = cgroups.PARENT_NAME  # every jail's group sits under it
INPUT_DIR = "/dev/input"
_EVENT = struct.Struct("llHHi")  # struct input_event: timeval, type, code, value
_INPUT_TYPES = {1, 2, 3}  # EV_KEY, EV_REL, EV_ABS: someone typed, clicked or moved
LOGIND_RETRY = 60.0  # seconds before asking an absent logind again


@dataclass(frozen=True)
class OwnerState:
    busy: bool
    owner_cpu: float  # share of the machine's CPU used by others, 0..1
    owner_mem_pressure: float  # share of RAM held by others, 0..1
    idle_seconds: float | None  # since the owner's last input; None: cannot tell
    own_cpu: float = 0.0  # share of the machine's CPU used by jailccd and its jails
    at: float = 0.0  # time.monotonic() of the sample
    own_mem: int = 0  # bytes held by jailccd's tree and its jails, counted once


@dataclass(frozen=True)
class Thresholds:
    """When a sample calls the owner busy."""

    cpu: float = 0.25  # others use a quarter of the machine
    mem: float = 0.80  # others hold 80% of RAM
    input_idle: float = 120.0  # someone typed or moved the mouse in the last two minutes


# Cgroups, v2 or v1 as the jails use them. Where sandbox/cgroups.py puts things comes from its
# pure reads (mount table, /proc/PID/cgroup): nothing here creates or changes a group.


def cgroup_dir(controller: str, pid: int | str = "self") -> str | None:
    """The directory of pid's cgroup in a v1 hierarchy (None if it is not mounted)."""
    return cgroups.group_dir(pid, controller)


def default_jail_cgroups() -> list[str]:
    """Every place sandbox/cgroups.py may make the jails' parent group (v2 and each v1
    hierarchy), whether or not the launcher uses it or has made it yet: the places it does not
    use hold still (CPU is counted as a difference between samples) or hold nothing."""
    return sorted(set(cgroups.candidate_parents().values()))


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def cgroup_cpu_seconds(directory: str) -> float | None:
    usage = _read(os.path.join(directory, "cpuacct.usage"))
    if usage is not None:
        return int(usage) / 1e9
    stat = _read(os.path.join(directory, "cpu.stat"))  # cgroup v2
    for line in (stat or "").splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    return None


def cgroup_memory_bytes(directory: str) -> int | None:
    """Memory a group holds that the kernel cannot simply drop: anonymous and tmpfs pages."""
    stat = _read(os.path.join(directory, "memory.stat"))
    if stat is None:
        return None
    values = dict(line.split(" ", 1) for line in stat.splitlines() if " " in line)
    if "total_rss" in values:  # v1, hierarchical
        return int(values["total_rss"]) + int(values.get("total_shmem", 0))
    if "anon" in values:  # v2
        return int(values["anon"]) + int(values.get("shmem", 0))
    return None


# Input activity.


def parse_logind(text: str, now_realtime: float) -> float | None:
    """Idle seconds from `loginctl show-session ID... -p Remote -p Class -p IdleHint
    -p IdleSinceHint` output (blocks separated by blank lines): the least idle local user
    session; a session without the idle hint set counts as in use now."""
    best: float | None = None
    for block in text.split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if not props or props.get("Remote") == "yes" or props.get("Class", "user") != "user":
            continue
        if props.get("IdleHint") == "yes":
            since = int(props.get("IdleSinceHint") or 0) / 1e6
            idle = max(0.0, now_realtime - since) if since else math.inf
        else:
            idle = 0.0
        best = idle if best is None else min(best, idle)
    return None if best is None or best == math.inf else best


class _Logind:
    def __init__(self, loginctl: str) -> None:
        self.loginctl = loginctl
        self.retry_at = 0.0

    def idle(self) -> float | None:
        if time.monotonic() < self.retry_at:
            return None
        try:
            listing = self._run(["list-sessions", "--no-legend"])
            sessions = [line.split()[0] for line in listing.splitlines() if line.split()]
            if not sessions:
                return None
            props = ["-p", "Remote", "-p", "Class", "-p", "IdleHint", "-p", "IdleSinceHint"]
            return parse_logind(self._run(["show-session", *sessions, *props]), time.time())
        except (OSError, subprocess.SubprocessError):
            self.retry_at = time.monotonic() + LOGIND_RETRY  # no logind here (yet)
            return None

    def _run(self, args: list[str]) -> str:
        return subprocess.run(
            [self.loginctl, *args], capture_output=True, text=True, timeout=2, check=True
        ).stdout


class _InputDevices:
    """Open evdev devices, drained on each sample; only the time of the last event is kept."""

    RESCAN = 30.0

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.fds: dict[str, int] = {}
        self.last_input: float | None = None
        self.since = time.monotonic()
        self.scanned = -math.inf

    def _rescan(self) -> None:
        self.scanned = time.monotonic()
        try:
            names = [n for n in os.listdir(self.directory) if n.startswith("event")]
        except OSError:
            names = []
        for name in names:
            if name not in self.fds:
                with contextlib.suppress(OSError):
                    path = os.path.join(self.directory, name)
                    self.fds[name] = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def idle(self) -> float | None:
        now = time.monotonic()
        if now - self.scanned > self.RESCAN:
            self._rescan()
        for fd in list(self.fds.values()):
            if self._drain(fd):
                self.last_input = now
        if not self.fds and self.last_input is None:
            return None
        # Never seen an event: idle at least since we started watching.
        return now - (self.last_input if self.last_input is not None else self.since)

    def _drain(self, fd: int) -> bool:
        seen = False
        while True:
            try:
                data = os.read(fd, _EVENT.size * 64)
            except BlockingIOError:
                return seen
            except OSError as exc:  # unplugged (ENODEV) or worse: stop reading it
                if exc.errno != errno.EINTR:
                    self._forget(fd)
                    return seen
                continue
            if not data:
                return seen
            for offset in range(0, len(data) - _EVENT.size + 1, _EVENT.size):
                if _EVENT.unpack_from(data, offset)[2] in _INPUT_TYPES:
                    seen = True

    def _forget(self, fd: int) -> None:
        for name, known in list(self.fds.items()):
            if known == fd:
                del self.fds[name]
        with contextlib.suppress(OSError):
            os.close(fd)

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


# The monitor.


def _in_groups(pid: int, directories: Sequence[str]) -> bool:
    """Whether pid's cgroup, in any hierarchy, lies under one of the directories."""
    try:
        groups = cgroups.group_dirs(pid)
    except OSError:
        return False
    for top in (d.rstrip("/") for d in directories):
        if any(group == top or group.startswith(top + "/") for group in groups):
            return True
    return False


class OwnerMonitor:
    """own_pids: jailccd's root processes (default: this process), their descendants being
    ours too; or a cgroup directory (or a group path as /proc/PID/cgroup shows it, such as
    "/system.slice/jailccd.service") whose CPU and memory usage is ours: read from cgroup v2
    where the group is there (memory from v1 where v2 has no memory controller for it), else
    from the v1 cpuacct and memory hierarchies.
    jail_cgroups: the jails' parent groups (default: default_jail_cgroups())."""

    def __init__(
        self,
        own_pids: Callable[[], Iterable[int]] | str | None = None,
        interval: float = 2.0,
        *,
        jail_cgroups: Sequence[str] | None = None,
        thresholds: Thresholds = Thresholds(),
        input_dir: str = INPUT_DIR,
        loginctl: str = "loginctl",
    ) -> None:
        self.interval = interval
        self.thresholds = thresholds
        self.own_group: str | None = None
        self.own_pids: Callable[[], Iterable[int]] | None = None
        if isinstance(own_pids, str):
            self.own_group = own_pids
        else:
            self.own_pids = own_pids or (lambda: {os.getpid()})
        groups = list(default_jail_cgroups() if jail_cgroups is None else jail_cgroups)
        if self.own_group is not None:
            groups += self._group_dirs(self.own_group)
        self.groups = groups
        self.ncpu = psutil.cpu_count() or 1
        self.logind = _Logind(loginctl)
        self.inputs = _InputDevices(input_dir)
        self._proc_cpu: dict[tuple[int, float], float] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._tree_usage()  # the baseline: what the tree had used before we started
        self._last = self._counters()

    @staticmethod
    def _group_dirs(group: str) -> list[str]:
        """The group's directories to read, each measure from one hierarchy only: in a hybrid
        layout the same processes are in a v2 group and in v1 ones."""
        dirs = cgroups.hierarchy_dirs(group)
        unified = dirs.get(cgroups.UNIFIED)
        if unified is not None and os.path.isdir(unified):
            found = [unified]  # cpu.stat, and memory.stat with the memory controller
            if not os.path.exists(os.path.join(unified, "memory.stat")) and "memory" in dirs:
                found.append(dirs["memory"])
            return found
        return [dirs[c] for c in ("cpuacct", "memory") if c in dirs]

    def _outermost_groups(self) -> list[str]:
        """The groups, without those nested in another listed group. Each is read for both CPU
        and memory: a file the group lacks (cpuacct.usage in a v1 memory group) counts 0."""
        dirs = sorted({d.rstrip("/") for d in self.groups})
        return [d for d in dirs if not any(d.startswith(o + "/") for o in dirs if o != d)]

    def _tree(self) -> list[psutil.Process]:
        if self.own_pids is None:
            return []
        procs: dict[int, psutil.Process] = {}
        for pid in self.own_pids():
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                procs[root.pid] = root
                for child in root.children(recursive=True):
                    procs[child.pid] = child
        return [p for p in procs.values() if not _in_groups(p.pid, self.groups)]

    def _counters(self) -> dict[str, float]:
        """Cumulative CPU seconds (the machine's busy time, our groups'), and the time."""
        times = psutil.cpu_times()._asdict()
        # guest and guest_nice are already inside user and nice; idle and iowait are not busy.
        busy = sum(times.get(k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
        group_cpu = sum(cgroup_cpu_seconds(d) or 0.0 for d in self._outermost_groups())
        return {"wall": time.monotonic(), "busy": busy, "groups": group_cpu}

    def _tree_usage(self) -> tuple[float, int]:
        """CPU seconds our tree used since the last sample, and its resident memory. A process
        not there last time was born since (or, rarely, came into the tree: it overcounts)."""
        cpu, rss, seen = 0.0, 0, {}
        for proc in self._tree():
            with contextlib.suppress(psutil.Error):
                with proc.oneshot():
                    key = (proc.pid, proc.create_time())
                    t = proc.cpu_times()
                    total = t.user + t.system
                    rss += proc.memory_info().rss
                seen[key] = total
                cpu += max(0.0, total - self._proc_cpu.get(key, 0.0))
        self._proc_cpu = seen
        return cpu, rss

    def sample(self) -> OwnerState:
        """One measurement, over the time since the previous one (or since construction)."""
        before = self._last
        tree_cpu, tree_rss = self._tree_usage()
        now = self._counters()
        self._last = now
        span = max(1e-6, (now["wall"] - before["wall"]) * self.ncpu)
        busy = max(0.0, now["busy"] - before["busy"])
        ours = tree_cpu + max(0.0, now["groups"] - before["groups"])
        own_cpu = min(1.0, ours / span)
        owner_cpu = min(1.0, max(0.0, busy - ours) / span)

        vm = psutil.virtual_memory()
        group_mem = sum(cgroup_memory_bytes(d) or 0 for d in self._outermost_groups())
        used = vm.total - vm.available
        own_mem = tree_rss + group_mem
        owner_mem = min(1.0, max(0, used - own_mem) / vm.total)

        idles = [i for i in (self.logind.idle(), self.inputs.idle()) if i is not None]
        idle = min(idles) if idles else None
        th = self.thresholds
        owner_busy = (
            owner_cpu >= th.cpu
            or owner_mem >= th.mem
            or (idle is not None and idle < th.input_idle)
        )
        return OwnerState(owner_busy, owner_cpu, owner_mem, idle, own_cpu, now["wall"], own_mem)

    def start(self, on_state: Callable[[OwnerState], None]) -> None:
        """Sample every `interval` seconds in a thread, handing each state to on_state."""

        def run() -> None:
            while not self._stop.wait(self.interval):
                try:
                    on_state(self.sample())
                except Exception:
                    log.exception("owner monitor: sample failed")

        self._thread = threading.Thread(target=run, name="owner-monitor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.inputs.close()


# The policy.


@dataclass(frozen=True)
class PolicyConfig:
    calm_seconds: float = 60.0  # owner not busy this long before every slot comes back
    busy_share: float = 0.5  # at most this share of the slots while the owner is busy
    evict_after: float = 15.0  # pressure this long: evict the running jobs
    evict_mem: float = 0.90  # others hold this share of RAM: memory pressure
    evict_cpu: float = 0.90  # others use this share of the CPU: CPU pressure

    @property
    def horizon(self) -> float:
        """How much history desktop_policy looks at."""
        return max(self.calm_seconds, self.evict_after)


@dataclass(frozen=True)
class Decision:
    advertised_slots: int
    sched_idle: bool  # run jobs at SCHED_IDLE (nice 19 where not available)
    evict: bool  # stop the running jobs (the proxy re-runs them elsewhere)


def _lasted(samples: Sequence[OwnerState], seconds: float, test: Callable[[OwnerState], bool]):
    """Whether test held for every sample back to one at least `seconds` older than the newest
    (so a history shorter than that never qualifies)."""
    now = samples[-1].at
    for s in reversed(samples):
        if not test(s):
            return False
        if now - s.at >= seconds:
            return True
    return False


def desktop_policy(
    state: OwnerState,
    configured_slots: int,
    history: Sequence[OwnerState],
    config: PolicyConfig = PolicyConfig(),
) -> Decision:
    """What to advertise and how to run jobs, from the newest state and the earlier ones
    (oldest first, about config.horizon seconds of them; see keep_recent). Pure.

    Calm (no busy sample for calm_seconds, history proving it): every slot, normal priority.
    Otherwise, from the first busy sample on: SCHED_IDLE, and at most busy_share of the slots,
    fewer the more CPU the owner used lately. Pressure (memory or CPU past evict_*) through
    evict_after seconds: evict, and advertise nothing. A monitor that just started has no proof
    of calm yet, so it starts yielding."""
    samples = [*history, state]
    if _lasted(samples, config.calm_seconds, lambda s: not s.busy):
        return Decision(configured_slots, False, False)

    def pressure(s: OwnerState) -> bool:
        return s.owner_mem_pressure >= config.evict_mem or s.owner_cpu >= config.evict_cpu

    if _lasted(samples, config.evict_after, pressure):
        return Decision(0, True, True)
    recent = [s for s in samples if state.at - s.at <= config.calm_seconds]
    peak = max(s.owner_cpu for s in recent)
    share = min(config.busy_share, 1.0 - peak)
    return Decision(max(0, math.floor(configured_slots * share)), True, False)


def keep_recent(
    history: Sequence[OwnerState],
    now: float,
    config: PolicyConfig = PolicyConfig(),
) -> list[OwnerState]:
    """The samples desktop_policy still needs: the last one older than the horizon (it proves
    the span) and everything newer."""
    cutoff = now - config.horizon
    older = [s for s in history if s.at <= cutoff]
    return older[-1:] + [s for s in history if s.at > cutoff]
