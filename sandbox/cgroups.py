"""Per-jail cgroups: cgroup v2 where the kernel offers a controller there, cgroup v1 where only
v1 has it.

What a jail needs, and where each comes from:
- memory (required): the v2 memory controller (memory.max, memory.swap.max 0, memory.events,
  memory.peak) when the cgroup2 hierarchy offers it to our group, else the v1 memory hierarchy
  (memory.limit_in_bytes, memory.memsw.limit_in_bytes, memory.oom_control, memory.failcnt,
  memory.max_usage_in_bytes);
- pids (required): v2 pids (pids.max, pids.events), else the v1 pids hierarchy;
- CPU accounting: cpu.stat usage_usec of the v2 group (no controller needed) wherever a cgroup2
  hierarchy is mounted and we may make groups in it, else v1 cpuacct.usage;
- cgroup.kill of the v2 group for teardown (Linux 5.14), else pidfds checked to be members;
- the v2 cpu controller, when offered, for cpu.idle / cpu.weight (JailCgroup.set_idle).
"Offered" means listed in the cgroup.controllers of our group in the cgroup2 hierarchy (the
mount is found in /proc/self/mountinfo: /sys/fs/cgroup on a pure v2 machine,
/sys/fs/cgroup/unified on a hybrid one). A required controller in neither place is a start-up
error that says what to do. Each choice is made once, by parent_dirs(), in the launcher.

Layout. Groups live in a parent named "jailcc" under the launcher's own group of each hierarchy
used (read from /proc/self/cgroup), one child per jail named "<launcher pid>-<jail number>" so
that a later launcher can remove the empty leftovers of one that was killed. A JailCgroup's
paths (and the parents) are keyed by the v1 hierarchy's controller ("memory", "pids",
"cpuacct") for what v1 serves, and by UNIFIED for the v2 group, which serves every need that
has no v1 key: the paths alone say which backend each need uses, so a JailCgroup rebuilt from
them in another process (sandbox/api.py) reads the right files.

Delegation, and cgroup v2's "no internal processes" rule. A v2 group that holds processes
cannot enable controllers for its children (EBUSY), except the hierarchy's root, which is
exempt. Under systemd, jailccd.service (Delegate=yes) gets its own group, delegated to it, and
holds jailccd and the launcher (exec'd by jailccd, so in its group); the jails' groups need
memory and pids enabled in that group's cgroup.subtree_control and in jailcc's. So the launcher:
1. takes as its base the group it is in, less a trailing LEAF_NAME ("service") component, so
   that the base is the same before and after step 3, for every process of jailccd, and for a
   later launcher (and sandbox/leaks.py and server/owner.py find the parents without asking);
2. writes "+memory", "+pids", "+cpu" (those offered, one at a time, skipping those already on)
   to base/cgroup.subtree_control, creates base/jailcc and writes the same to its
   cgroup.subtree_control (jailcc never holds a process);
3. only if step 2 fails with EBUSY, and only when the base is not the hierarchy's root: moves
   the processes in the base into base/LEAF_NAME and tries again, when the base is delegated
   to us (systemd 251 and later mark a Delegate=yes unit's group with the trusted.delegate
   extended attribute, which only root can set: every process in it was started for that
   unit, e.g. `systemd-run --scope -p Delegate=yes scripts/test`, the shell included), or else
   when every process in it is jailccd's own (the launcher's parent, or a descendant of it:
   what a Delegate=yes unit of an older systemd holds). Otherwise (a login shell's session
   scope, say) it moves nothing and fails with an error that says to run jailccd as the
   systemd service or under `systemd-run --scope -p Delegate=yes`, or to enable the
   controllers by hand. At the root (a hybrid machine's /sys/fs/cgroup/unified, where jailccd
   shares "/" with every process of the machine) nothing is ever moved: the root may enable
   controllers while it holds processes.
Nothing is ever disabled again (another launcher may use it).

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
from dataclasses import dataclass, field

CGROUP_ROOT = "/sys/fs/cgroup"
# The v1 hierarchies a jail may use (cpuacct: the jail's CPU time, children the job never
# waited for included).
CONTROLLERS = ("memory", "pids", "cpuacct")
REQUIRED = ("memory", "pids")
# v2 controllers enabled for the jails where offered; cpu is optional (set_idle only).
V2_CONTROLLERS = ("memory", "pids", "cpu")
# The key of the cgroup v2 group in a JailCgroup's paths, when there is one.
UNIFIED = "unified"
PARENT_NAME = "jailcc"
# Where jailccd's own processes go when its v2 group must hold none (see the docstring).
LEAF_NAME = "service"
LAUNCHER_MODULE = "jailcc.sandbox.launcher"
MOVE_ROUNDS = 20


class CgroupError(Exception):
    pass


# -- reading where things are (pure reads: sandbox/leaks.py and server/owner.py use them) ------


@dataclass(frozen=True)
class _Mount:
    point: str  # where it is mounted
    root: str  # which group of the hierarchy is mounted there (usually "/")


def _mounts() -> tuple[dict[str, _Mount], _Mount | None]:
    """The v1 hierarchies (controller -> mount) and the cgroup2 mount, from mountinfo."""
    v1: dict[str, _Mount] = {}
    v2 = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            separator = fields.index("-")
            fstype, options = fields[separator + 1], fields[separator + 3].split(",")
            mount = _Mount(_unescape(fields[4]), _unescape(fields[3]))
            if fstype == "cgroup2" and v2 is None:
                v2 = mount
            elif fstype == "cgroup":
                for option in options:
                    if option not in ("rw", "ro"):
                        v1.setdefault(option, mount)
    return v1, v2


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        text = text.replace(code, chr(int(code[1:], 8)))
    return text


def _in_mount(mount: _Mount, path: str) -> str | None:
    """The directory of a group (a path as /proc/PID/cgroup shows it) under a mount."""
    rel = os.path.relpath(path, mount.root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return None  # not visible through this mount
    return os.path.normpath(os.path.join(mount.point, rel))


def _proc_groups(pid: int | str) -> dict[str, str]:
    """pid's group in each hierarchy, from /proc/PID/cgroup: v1 controllers by name, the v2
    group under the key ""."""
    groups: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            hierarchy, names, path = line.rstrip("\n").split(":", 2)
            if hierarchy == "0" and not names:
                groups[""] = path
            else:
                for name in names.split(","):
                    groups[name] = path
    return groups


def group_dir(pid: int | str, controller: str | None) -> str | None:
    """The directory of pid's group ("self": ours) in the controller's v1 hierarchy, or in the
    cgroup2 hierarchy for None; None when that hierarchy is not mounted."""
    v1, v2 = _mounts()
    mount = v2 if controller is None else v1.get(controller)
    path = _proc_groups(pid).get("" if controller is None else controller)
    if mount is None or path is None:
        return None
    return _in_mount(mount, path)


def group_dirs(pid: int | str) -> list[str]:
    """pid's group directories in every mounted hierarchy (v1 and v2)."""
    v1, v2 = _mounts()
    groups = _proc_groups(pid)
    found = []
    for key, mount in [*v1.items(), ("", v2)]:
        if mount is not None and key in groups:
            found.append(_in_mount(mount, groups[key]))
    return sorted({d for d in found if d is not None})


def hierarchy_dirs(path: str) -> dict[str, str]:
    """A group path (as /proc/PID/cgroup shows it, or a directory under a cgroup mount) as a
    directory in each hierarchy a jail may use that is mounted: CONTROLLERS' v1 ones, UNIFIED."""
    v1, v2 = _mounts()
    mounts = {c: v1[c] for c in CONTROLLERS if c in v1}
    if v2 is not None:
        mounts[UNIFIED] = v2
    for mount in sorted(mounts.values(), key=lambda m: -len(m.point)):
        rel = os.path.relpath(path, mount.point)
        if not (rel == os.pardir or rel.startswith(os.pardir + os.sep)):
            path = os.path.join(mount.root, rel)  # a directory: back to a group path
            break
    found = {key: _in_mount(mount, path) for key, mount in mounts.items()}
    return {key: d for key, d in found.items() if d is not None}


def _base(own: str, mount: _Mount) -> str:
    """Our v2 base group: our own, less the leaf jailccd's processes may have been moved to."""
    if os.path.basename(own) == LEAF_NAME and os.path.normpath(own) != mount.point:
        return os.path.dirname(own)
    return own


def unified_base() -> str | None:
    """The v2 group the jailcc parent is made in (see the docstring), if cgroup2 is mounted."""
    _, v2 = _mounts()
    own = group_dir("self", None)
    return None if v2 is None or own is None else _base(own, v2)


def unified_parent() -> str | None:
    """Where the jailcc parent group of the cgroup2 hierarchy is or would be."""
    base = unified_base()
    return None if base is None else os.path.join(base, PARENT_NAME)


def v1_parent(controller: str) -> str | None:
    """Where the jailcc parent group of a v1 hierarchy is or would be (None: not mounted)."""
    own = group_dir("self", controller)
    return None if own is None else os.path.join(own, PARENT_NAME)


def candidate_parents() -> dict[str, str]:
    """Every place a jailcc parent group may be, in use or not, created or not (for finding
    leftovers and for measuring: nothing is created or decided)."""
    found = {c: p for c in CONTROLLERS if (p := v1_parent(c)) is not None}
    unified = unified_parent()
    if unified is not None:
        found[UNIFIED] = unified
    return found


def offered_v2() -> set[str]:
    """The controllers cgroup v2 offers our base group (its cgroup.controllers)."""
    base = unified_base()
    if base is None:
        return set()
    try:
        return set(_read(os.path.join(base, "cgroup.controllers")).split())
    except OSError:
        return set()


# -- making the parents (the launcher, once) ----------------------------------------------------


def parent_dirs(all_jails_memory: int | None = None) -> dict[str, str]:
    """The jailcc parent group of each hierarchy the jails use, created (and controllers
    enabled) if missing, its memory limit (all jails together) set if given. Raises
    CgroupError when a required controller is nowhere or the limit does not take."""
    _, v2 = _mounts()
    offered = offered_v2()
    in_v2 = [c for c in REQUIRED if c in offered]
    dirs: dict[str, str] = {}
    for controller in REQUIRED:
        if controller in in_v2:
            continue
        parent = v1_parent(controller)
        if parent is None:
            where = f"at {v2.point}" if v2 is not None else "(no cgroup2 file system is mounted)"
            raise CgroupError(
                f"no {controller} controller for the jails: cgroup v2 {where} does not offer it "
                f"to jailccd's group {unified_base() or ''} and no cgroup v1 {controller} "
                "hierarchy is mounted. Enable it in the parent group's cgroup.subtree_control, "
                "or run jailccd as the systemd service jailccd.service (Delegate=yes)"
            )
        dirs[controller] = parent
    base = unified_base()
    if base is not None:
        optional = [c for c in V2_CONTROLLERS if c in offered and c not in REQUIRED]
        try:
            dirs[UNIFIED] = _make_unified_parent(base, in_v2, optional)
        except (OSError, CgroupError) as exc:
            if in_v2:
                if isinstance(exc, CgroupError):
                    raise
                raise CgroupError(f"cgroup v2 group for the jails under {base}: {exc}") from None
            # Only accounting and cgroup.kill were to come from v2: v1 and pidfds do them.
    if UNIFIED not in dirs:
        parent = v1_parent("cpuacct")
        if parent is None:
            raise CgroupError(
                "no CPU accounting for the jails: no cgroup2 group of ours to read cpu.stat "
                "from and no cgroup v1 cpuacct hierarchy mounted"
            )
        dirs["cpuacct"] = parent
    for path in dirs.values():
        os.makedirs(path, exist_ok=True)
    if all_jails_memory is not None:
        _limit_all_jails(dirs, all_jails_memory)
    return dirs


def _limit_all_jails(dirs: dict[str, str], limit: int) -> None:
    """Memory of all jails together, so that slots times the jail limit cannot take the
    machine (outside systemd nothing else bounds them). The parents are shared with this
    machine's other launchers: the last one to start sets it. Swap stays out by each jail's
    own limit. v1 refuses (EBUSY) a limit below what the jails already use."""
    if "memory" in dirs:
        _write(os.path.join(dirs["memory"], "memory.limit_in_bytes"), str(limit))
    else:
        _write(os.path.join(dirs[UNIFIED], "memory.max"), str(limit))


def _make_unified_parent(base: str, required: list[str], optional: list[str]) -> str:
    """base/jailcc with the controllers enabled for its children; see the docstring. Only a
    required controller is worth moving jailccd's processes for."""
    try:
        _enable(base, required, optional)
    except OSError as exc:
        if exc.errno != errno.EBUSY or not required:
            raise
        _move_ours_to_leaf(base)
        _enable(base, required, optional)
    parent = os.path.join(base, PARENT_NAME)
    os.makedirs(parent, exist_ok=True)
    _enable(parent, required, optional)
    return parent


def _enable(group: str, required: list[str], optional: list[str]) -> None:
    """Enable controllers for group's children: the required ones must take; an optional one
    that fails is left off, unless for EBUSY while required ones are wanted (the caller may
    make room and retry)."""
    control = os.path.join(group, "cgroup.subtree_control")
    enabled = set(_read(control).split())
    for controller in [*required, *optional]:
        if controller in enabled:
            continue
        try:
            _write(control, f"+{controller}")
        except OSError as exc:
            if controller in required or (exc.errno == errno.EBUSY and required):
                raise


def _move_ours_to_leaf(base: str) -> None:
    """Move the processes in base into base/LEAF_NAME, so that base may enable controllers;
    refuse when base is the hierarchy's root, or is not delegated to us and holds processes
    that are not jailccd's."""
    _, v2 = _mounts()
    if v2 is None or os.path.normpath(base) == v2.point:
        raise CgroupError(f"cannot enable controllers in {base}: it holds processes")
    procs = os.path.join(base, "cgroup.procs")
    leaf = os.path.join(base, LEAF_NAME)
    delegated = _delegated(base)
    for _ in range(MOVE_ROUNDS):
        members = [int(p) for p in _read(procs).split()]
        if not members:
            return
        strangers = [] if delegated else [p for p in members if not _is_ours(p)]
        if strangers:
            names = ", ".join(f"{p} ({_comm(p)})" for p in strangers[:5])
            raise CgroupError(
                f"cgroup v2: cannot enable controllers for the jails in {base}: it holds "
                f"processes that are not jailccd's ({names}) and a group with processes cannot "
                "(cgroup v2's no-internal-process rule). Run jailccd as the systemd service "
                "jailccd.service (Delegate=yes), or under `systemd-run --scope -p "
                "Delegate=yes`, or give it a group of its own with memory and pids enabled"
            )
        os.makedirs(leaf, exist_ok=True)
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                _write(os.path.join(leaf, "cgroup.procs"), str(pid))
    raise CgroupError(f"cgroup v2: processes keep appearing in {base}")


def _delegated(group: str) -> bool:
    """Whether systemd delegated the group (to the unit whose processes are in it)."""
    try:
        return os.getxattr(group, "trusted.delegate") == b"1"
    except OSError:
        return False


def _is_ours(pid: int) -> bool:
    """Whether pid is jailccd's: our parent (the launcher is exec'd by it), or below it."""
    top = os.getppid()
    for _ in range(64):
        if pid in (top, os.getpid()):
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == 0:
            return False
    return False


def _comm(pid: int) -> str:
    try:
        return _read(f"/proc/{pid}/comm").strip()
    except OSError:
        return "?"


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _keyed(text: str) -> dict[str, int]:
    """A flat-keyed cgroup file ("key value" lines) as numbers ("max" counts as -1)."""
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = -1 if value.strip() == "max" else int(value)
    return values


def _live_launcher(pid: str) -> bool:
    """Whether pid names a running jail launcher (not a dead one's reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return LAUNCHER_MODULE.encode() in argv


def remove_stale(parents: dict[str, str]) -> list[str]:
    """Remove the empty jail groups of launchers that are gone; return what was removed.

    A group belongs to the launcher whose pid starts its name. That pid is taken as gone unless
    it is a live process running the launcher module (a reused pid is not). A launcher in
    another PID namespace may look gone: only empty groups can be removed at all (rmdir fails
    on a group with members or children), so at worst one of its jails being set up fails."""
    removed = []
    for parent in parents.values():
        try:
            names = os.listdir(parent)
        except FileNotFoundError:
            continue
        for name in names:
            full = os.path.join(parent, name)
            owner = name.split("-", 1)[0]
            if not os.path.isdir(full) or not owner.isdigit() or _live_launcher(owner):
                continue
            with contextlib.suppress(OSError):
                os.rmdir(full)
                removed.append(full)
    return removed


# -- one jail's groups --------------------------------------------------------------------------


@dataclass
class JailCgroup:
    paths: dict[str, str]  # a v1 controller, or UNIFIED -> directory (see the docstring)
    # memory.peak opened for writing by reset_peak (v2, Linux 6.12: a reset holds for reads
    # through that descriptor only).
    _peak_fd: int | None = field(default=None, init=False, repr=False, compare=False)

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
                group._limit_memory(memory_bytes)
            if pids_max is not None:
                _write(os.path.join(group._home("pids"), "pids.max"), str(pids_max))
        except OSError:
            group.remove()
            raise
        return group

    def _home(self, need: str) -> str:
        """The directory serving a need (a v1 controller's name): its v1 group, else v2's."""
        path = self.paths.get(need) or self.paths.get(UNIFIED)
        if path is None:
            raise CgroupError(f"the jail has no cgroup for {need}")
        return path

    def _limit_memory(self, limit: int) -> None:
        if "memory" in self.paths:
            mem = self.paths["memory"]
            _write(os.path.join(mem, "memory.limit_in_bytes"), str(limit))
            swap_limit = os.path.join(mem, "memory.memsw.limit_in_bytes")
            if os.path.exists(swap_limit):  # memory plus swap: no spilling to swap either
                _write(swap_limit, str(limit))
            return
        mem = self._home("memory")
        _write(os.path.join(mem, "memory.max"), str(limit))
        swap_limit = os.path.join(mem, "memory.swap.max")  # swap alone, in v2
        if os.path.exists(swap_limit):  # absent without swap accounting
            _write(swap_limit, "0")

    def join_self(self) -> None:
        """Move the calling process into the groups ("0" is the writer, in v1 and v2)."""
        for path in self.paths.values():
            _write(os.path.join(path, "cgroup.procs"), "0")

    def counters(self) -> dict[str, int]:
        """Event counters that tell which limit a job hit, the memory peak and CPU time."""
        if "memory" in self.paths:
            mem = self.paths["memory"]
            oom = _keyed(_read(os.path.join(mem, "memory.oom_control")))
            memory = {
                "oom_kill": oom.get("oom_kill", 0),
                "memory_failcnt": int(_read(os.path.join(mem, "memory.failcnt"))),
                "memory_peak": int(_read(os.path.join(mem, "memory.max_usage_in_bytes"))),
            }
        else:
            mem = self._home("memory")
            events = _keyed(_read(os.path.join(mem, "memory.events")))
            memory = {
                "oom_kill": events.get("oom_kill", 0),
                "memory_failcnt": events.get("max", 0),
                "memory_peak": self._v2_peak(mem),
            }
        pids_events = _keyed(_read(os.path.join(self._home("pids"), "pids.events")))
        if "cpuacct" in self.paths:
            cpu_ns = int(_read(os.path.join(self.paths["cpuacct"], "cpuacct.usage")))
        else:
            stat = _keyed(_read(os.path.join(self._home("cpuacct"), "cpu.stat")))
            cpu_ns = stat.get("usage_usec", 0) * 1000
        return {**memory, "pids_max_events": pids_events.get("max", 0), "cpu_ns": cpu_ns}

    def _v2_peak(self, mem: str) -> int:
        if self._peak_fd is not None:
            return int(os.pread(self._peak_fd, 64, 0))
        try:
            return int(_read(os.path.join(mem, "memory.peak")))
        except FileNotFoundError:
            # memory.peak came with Linux 5.19; before it nothing keeps a peak (memory.current
            # after the job says nothing). 0: the job's own rusage max RSS stands alone.
            return 0

    def reset_peak(self) -> None:
        """Start the next memory peak from now. In v2 (Linux 6.12) a reset holds only for reads
        through the descriptor it was written to: this object keeps it, so reuse one
        JailCgroup per jail; elsewhere memory.peak is the jail's peak since it was made."""
        if "memory" in self.paths:
            _write(os.path.join(self.paths["memory"], "memory.max_usage_in_bytes"), "0")
            return
        if self._peak_fd is None:
            try:
                fd = os.open(os.path.join(self._home("memory"), "memory.peak"), os.O_RDWR)
            except OSError:  # absent, or read-only (before 6.12)
                return
            self._peak_fd = fd
        try:
            os.pwrite(self._peak_fd, b"reset\n", 0)
        except OSError:
            self.close()

    def close(self) -> None:
        """Let go of the descriptor reset_peak keeps (the groups stay)."""
        fd, self._peak_fd = self._peak_fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def set_idle(self, idle: bool) -> bool:
        """Weigh the jail's group as idle (cpu.idle, Linux 5.15; else the least cpu.weight) or
        normal again, for every process in it, later ones included. False where the group has
        no v2 cpu controller. It ranks the jail against its sibling groups (other jails) and,
        through them, nothing above jailccd's own group: what the owner's processes in other
        groups get against jailccd is decided by the weights of the groups above it."""
        unified = self.paths.get(UNIFIED)
        if unified is None:
            return False
        try:
            if "cpu" not in _read(os.path.join(unified, "cgroup.controllers")).split():
                return False
            if os.path.exists(os.path.join(unified, "cpu.idle")):
                _write(os.path.join(unified, "cpu.idle"), "1" if idle else "0")
            else:
                _write(os.path.join(unified, "cpu.weight"), "1" if idle else "100")
        except FileNotFoundError:
            return False
        return True

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
        for pid in self.pids():
            if pid in spare:
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                if self._holds(pid):
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(pidfd, sig)
            finally:
                os.close(pidfd)

    def _holds(self, pid: int) -> bool:
        """Whether pid is in our group (the pids one), from /proc/PID/cgroup."""
        controller = "pids" if "pids" in self.paths else None
        try:
            return group_dir(str(pid), controller) == self._home("pids")
        except FileNotFoundError:
            return False

    def remove(self, timeout: float = 2.0) -> list[str]:
        """Kill anything still inside, remove the groups; return what could not be cleaned."""
        self.close()
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
