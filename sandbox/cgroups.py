"""Per-jail cgroup v1 groups for the memory and pids controllers.

Groups live under the launcher's own cgroup in each hierarchy (read from /proc/self/cgroup), in
a parent named "jailcc", one child per jail named "<launcher pid>-<jail number>" so that a later
launcher can remove the empty leftovers of one that was killed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"
# cpuacct: the jail's CPU time, children the job never waited for included.
CONTROLLERS = ("memory", "pids", "cpuacct")
PARENT_NAME = "jailcc"


class CgroupError(Exception):
    pass


def _own_path(controller: str) -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            if controller in names.split(","):
                return os.path.join(CGROUP_ROOT, controller, path.lstrip("/"))
    raise CgroupError(f"no cgroup v1 {controller} hierarchy mounted under {CGROUP_ROOT}")


def parent_dirs() -> dict[str, str]:
    """The jailcc parent group in each hierarchy, created if missing."""
    dirs = {}
    for controller in CONTROLLERS:
        path = os.path.join(_own_path(controller), PARENT_NAME)
        os.makedirs(path, exist_ok=True)
        dirs[controller] = path
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
        paths = {c: os.path.join(parents[c], name) for c in CONTROLLERS}
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
        found: set[int] = set()
        for path in self.paths.values():
            with contextlib.suppress(FileNotFoundError):
                found.update(int(p) for p in _read(os.path.join(path, "cgroup.procs")).split())
        return sorted(found)

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
                    for pid in self.pids():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, 9)
                    time.sleep(0.002)
        return problems
