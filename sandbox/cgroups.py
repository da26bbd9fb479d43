"""Per-jail cgroup v1 groups for the memory and pids controllers, plus a cgroup v2 group (no
controllers needed) where a cgroup2 hierarchy is mounted, for its cgroup.kill.

Groups live under the launcher's own cgroup in each hierarchy (read from /proc/self/cgroup), in
a parent named "jailcc", one child per jail named "<launcher pid>-<jail number>" so that a later
launcher can remove the empty leftovers of one that was killed.

Killing never goes by a pid read from cgroup.procs, which the process may have left and the
kernel handed to a host process by the time the signal is sent: cgroup.kill where there is one
(the kernel kills the group's members itself), else a pidfd per member, checked to be in the
group after it was opened, so the signal reaches that very process or none.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"
# cpuacct: the jail's CPU time, children the job never waited for included.
CONTROLLERS = ("memory", "pids", "cpuacct")
# The key of the cgroup v2 group in a JailCgroup's paths, when there is one.
UNIFIED = "unified"
PARENT_NAME = "jailcc"


class CgroupError(Exception):
    pass


def _group_of(pid: str, controller: str) -> str | None:
    """The directory of pid's group ("self": ours) in the controller's v1 hierarchy, from
    /proc/PID/cgroup; None when the controller has no v1 hierarchy."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            if controller in names.split(","):
                return os.path.join(CGROUP_ROOT, controller, path.lstrip("/"))
    return None


def _own_path(controller: str) -> str:
    path = _group_of("self", controller)
    if path is None:
        raise CgroupError(f"no cgroup v1 {controller} hierarchy mounted under {CGROUP_ROOT}")
    return path


def _cgroup2_mount() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            separator = fields.index("-")
            if fields[separator + 1] == "cgroup2":
                return fields[4]
    return None


def _own_unified_path() -> str | None:
    """The launcher's group in the cgroup2 hierarchy, if one is mounted."""
    mount = _cgroup2_mount()
    if mount is None:
        return None
    with open("/proc/self/cgroup") as f:
        for line in f:
            hierarchy, _, path = line.rstrip("\n").split(":", 2)
            if hierarchy == "0":
                return os.path.join(mount, path.lstrip("/"))
    return None


def unified_parent() -> str | None:
    """Where the jailcc parent group of the cgroup2 hierarchy is or would be."""
    own = _own_unified_path()
    return None if own is None else os.path.join(own, PARENT_NAME)


def parent_dirs() -> dict[str, str]:
    """The jailcc parent group in each hierarchy, created if missing."""
    dirs = {}
    for controller in CONTROLLERS:
        path = os.path.join(_own_path(controller), PARENT_NAME)
        os.makedirs(path, exist_ok=True)
        dirs[controller] = path
    unified = unified_parent()
    if unified is not None:
        # Optional: without it, kills go by verified pidfds (a delegated subtree may refuse us).
        with contextlib.suppress(OSError):
            os.makedirs(unified, exist_ok=True)
            dirs[UNIFIED] = unified
    return dirs


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def remove_stale(parents: dict[str, str]) -> list[str]:
    """Remove empty jail groups whose launcher is no longer alive; return what was removed."""
    removed = []
    for parent in parents.values():
        for name in os.listdir(parent):
            full = os.path.join(parent, name)
            owner = name.split("-", 1)[0]
            if not os.path.isdir(full) or not owner.isdigit() or os.path.exists(f"/proc/{owner}"):
                continue
            with contextlib.suppress(OSError):
                os.rmdir(full)
                removed.append(full)
    return removed


@dataclass
class JailCgroup:
    paths: dict[str, str]  # controller -> directory

    @classmethod
    def create(
        cls, parents: dict[str, str], name: str, memory_bytes: int | None, pids_max: int | None
    ) -> JailCgroup:
        paths = {c: os.path.join(parents[c], name) for c in (*CONTROLLERS, UNIFIED) if c in parents}
        group = cls(paths)
        try:
            for path in paths.values():
                os.mkdir(path)
            if memory_bytes is not None:
                _write(os.path.join(paths["memory"], "memory.limit_in_bytes"), str(memory_bytes))
                swap_limit = os.path.join(paths["memory"], "memory.memsw.limit_in_bytes")
                if os.path.exists(swap_limit):  # memory plus swap: no spilling to swap either
                    _write(swap_limit, str(memory_bytes))
            if pids_max is not None:
                _write(os.path.join(paths["pids"], "pids.max"), str(pids_max))
        except OSError:
            group.remove()
            raise
        return group

    def join_self(self) -> None:
        """Move the calling process into the group (cgroup v1 reads "0" as the writer)."""
        for path in self.paths.values():
            _write(os.path.join(path, "cgroup.procs"), "0")

    def counters(self) -> dict[str, int]:
        """Event counters that tell which limit a job hit, and the memory peak."""
        mem = self.paths["memory"]
        oom = dict(
            line.split() for line in _read(os.path.join(mem, "memory.oom_control")).splitlines()
        )
        pids_events = dict(
            line.split()
            for line in _read(os.path.join(self.paths["pids"], "pids.events")).splitlines()
        )
        return {
            "oom_kill": int(oom.get("oom_kill", 0)),
            "memory_failcnt": int(_read(os.path.join(mem, "memory.failcnt"))),
            "pids_max_events": int(pids_events.get("max", 0)),
            "memory_peak": int(_read(os.path.join(mem, "memory.max_usage_in_bytes"))),
            "cpu_ns": int(_read(os.path.join(self.paths["cpuacct"], "cpuacct.usage"))),
        }

    def reset_peak(self) -> None:
        _write(os.path.join(self.paths["memory"], "memory.max_usage_in_bytes"), "0")

    def pids(self) -> list[int]:
        """Who is inside now, for reports and for the scheduler: never for a signal (see kill)."""
        found: set[int] = set()
        for path in self.paths.values():
            with contextlib.suppress(FileNotFoundError):
                found.update(int(p) for p in _read(os.path.join(path, "cgroup.procs")).split())
        return sorted(found)

    def kill(self) -> None:
        """SIGKILL everything in the groups, without trusting a pid to still be a member."""
        unified = self.paths.get(UNIFIED)
        if unified is not None and os.path.exists(os.path.join(unified, "cgroup.kill")):
            # The kernel kills every member itself, forks in flight included (Linux 5.14).
            _write(os.path.join(unified, "cgroup.kill"), "1")
            return
        self.signal_members(signal.SIGKILL)

    def signal_members(self, sig: int, spare: Iterable[int] = ()) -> None:
        """Send sig to every member (but the pids in spare) through a pidfd, opened first and
        then checked to belong to a member: a pid that has meanwhile been reused by a process
        outside the jail fails the check, and one whose process died makes the signal fail."""
        controller = "pids"
        for pid in self.pids():
            if pid in spare:
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                if self._holds(controller, pid):
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(pidfd, sig)
            finally:
                os.close(pidfd)

    def _holds(self, controller: str, pid: int) -> bool:
        """Whether pid is in our group of the controller's hierarchy, from /proc/PID/cgroup."""
        try:
            return _group_of(str(pid), controller) == self.paths[controller]
        except FileNotFoundError:
            return False

    def remove(self, timeout: float = 2.0) -> list[str]:
        """Kill anything still inside, remove the groups; return what could not be cleaned."""
        problems = []
        deadline = time.monotonic() + timeout
        for path in self.paths.values():
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        problems.append(f"cgroup {path} not removed: {exc.strerror}")
                        break
                    self.kill()
                    time.sleep(0.002)
        return problems
