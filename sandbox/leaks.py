"""What a torn-down jail (or a stopped launcher) may have left on the host, found from outside.

Used by the tests after every jail and by the selftest's "outlive the jail" probe.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence

from . import cgroups, rootfs
from .uidpool import DEFAULT_BASE, DEFAULT_COUNT


def processes_of_uids(low: int, high: int) -> list[tuple[int, int]]:
    """(pid, uid) of every live process whose real uid lies in [low, high)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{name}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    uid = int(line.split()[1])
                    if low <= uid < high:
                        found.append((int(name), uid))
                    break
    return found


def jail_cgroups() -> list[str]:
    """Per-jail cgroups still present under the jailcc parents."""
    parents = sorted(set(cgroups.candidate_parents().values()))
    found = []
    for parent in parents:
        with contextlib.suppress(FileNotFoundError):
            found += [
                os.path.join(parent, n)
                for n in os.listdir(parent)
                if os.path.isdir(os.path.join(parent, n))
            ]
    return found


def host_mounts() -> list[str]:
    """Mounts under the launcher's mount base visible in the host's namespace (should be none)."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(rootfs.MOUNT_BASE)]


def loop_devices_backed_by(paths: Iterable[str]) -> list[str]:
    """Loop devices whose backing file is one of paths."""
    wanted = {os.path.realpath(p) for p in paths}
    found = []
    with contextlib.suppress(FileNotFoundError):
        for dev in os.listdir("/sys/block"):
            backing = f"/sys/block/{dev}/loop/backing_file"
            with contextlib.suppress(OSError), open(backing) as f:
                if f.read().strip() in wanted:
                    found.append(f"/dev/{dev}")
    return found


def leftovers(
    images: Sequence[str] = (), uids: Iterable[int] | None = None, owner_pid: int | None = None
) -> list[str]:
    """Everything jails left behind: processes of the given jail uids (default: the whole
    reserved range), cgroups (with owner_pid, only that launcher's), host-visible mounts and
    loop devices still backed by the given images."""
    if uids is None:
        procs = processes_of_uids(DEFAULT_BASE, DEFAULT_BASE + DEFAULT_COUNT)
    else:
        wanted = set(uids)
        procs = [
            p
            for p in processes_of_uids(min(wanted, default=0), max(wanted, default=0) + 1)
            if p[1] in wanted
        ]
    problems = [f"process {pid} of jail uid {uid} alive" for pid, uid in procs]
    for path in jail_cgroups():
        if owner_pid is None or os.path.basename(path).startswith(f"{owner_pid}-"):
            problems.append(f"cgroup {path} left")
    problems += [f"mount {m} visible on the host" for m in host_mounts()]
    problems += [f"loop device {d} still attached" for d in loop_devices_backed_by(images)]
    return problems
