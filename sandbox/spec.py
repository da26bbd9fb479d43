"""What a jail is asked to be and to do, and what it reports back. Plain data, no behaviour."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

MiB = 1024 * 1024

# Deliberate weakenings, for tests that prove each selftest probe can fail. They are accepted
# only through the Python API (never from the network or the command line of jailccd).
WEAKENINGS = frozenset(
    {
        "no_netns",  # share the host's network namespace
        "no_pidns",  # share the host's PID namespace, and skip the end-of-job sweep
        "root_uid",  # stay uid 0 with every capability
        "writable_image",  # skip the read-only remount of the image binds
        "writable_root",  # leave the jail's root tmpfs writable and owned by the jail uid
        "suid_mounts",  # leave nosuid off the jail's mounts
        "exec_mounts",  # leave noexec off the jail's writable mounts (/tmp, work dirs)
        "rw_proc_sys",  # skip the read-only bind over /proc/sys
        "no_chroot_nesting",  # pivot_root only: the kernel then allows new user namespaces
        "dumpable_init",  # leave the jail's init ptrace-able by the jail uid
        "keep_session_keyring",  # keep the launcher's session keyring
        "share_host_paths",  # bind the host's /etc and /tmp into the jail (read-only)
        "no_memory_limit",
        "no_pids_limit",
        "no_disk_limit",
        "no_wall_clock",
        "no_cpu_limit",
        "no_output_cap",
        "no_wipe",  # leave the job's files in the work dir and /tmp for the next job
        "no_seccomp",  # start jobs without the spawn helper's seccomp filter
        "init_keeps_stdio",  # the jail's init keeps the launcher's stdio and session
        "wrong_dev_nodes",  # make each of the jail's device nodes with the next one's numbers
        "any_socket_family",  # the seccomp filter without its socket family check
        "host_mount_sources",  # bind the spawn helper from its host path (mountinfo shows it)
    }
)


class _Limits:
    """Positive numeric limits, exchanged as plain dicts (from a peer: checked on the way in)."""

    _kinds: tuple[type, ...] = (int,)
    _what = "limit"

    def validate(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if not isinstance(value, self._kinds) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{self._what} {f.name} must be a positive number")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected an object")
        unknown = set(data) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        limits = cls(**data)
        limits.validate()
        return limits

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class JailLimits(_Limits):
    """Limits that hold for the jail's whole life (cgroup and tmpfs sizes)."""

    _what = "jail limit"

    memory_bytes: int = 1024 * MiB  # cgroup memory: processes plus tmpfs pages
    pids_max: int = 128  # cgroup pids: every process and thread, the jail's init included
    work_bytes: int = 512 * MiB  # size of the writable work dir tmpfs
    work_inodes: int = 32768  # a tree job's files and directories (jobs/tree.py: 20000 files)
    tmp_bytes: int = 256 * MiB  # size of the writable /tmp
    tmp_inodes: int = 1024

    def validate(self) -> None:
        super().validate()
        if self.pids_max < 4:
            raise ValueError("jail limit pids_max must be at least 4 (init, job, helpers)")


@dataclass(frozen=True)
class RunLimits(_Limits):
    """Limits for one command run in a jail."""

    _kinds = (int, float)
    _what = "run limit"

    cpu_seconds: int = 300  # RLIMIT_CPU: SIGXCPU, then SIGKILL a second later
    wall_seconds: float = 600.0  # killed by the jail's init when it runs longer
    idle_seconds: float = 60.0  # ...or when its processes use no CPU time this long
    file_bytes: int = 512 * MiB  # RLIMIT_FSIZE: no single file larger
    address_space_bytes: int = 8 * 1024 * MiB  # RLIMIT_AS: a backstop; the cgroup is the limit
    open_files: int = 256  # RLIMIT_NOFILE
    stdout_bytes: int = 4 * MiB  # output beyond these caps kills the job
    stderr_bytes: int = 4 * MiB
    output_file_bytes: int = 256 * MiB  # each output file read back


@dataclass(frozen=True)
class ResourceUsage:
    user_seconds: float = 0.0  # of the job's process and the children it waited for
    system_seconds: float = 0.0
    max_rss_bytes: int = 0
    wall_seconds: float = 0.0
    jail_cpu_seconds: float = 0.0  # all CPU the jail used meanwhile (cgroup): nothing escapes it


# The limit names a RunResult can carry, so callers can tell a limit from a compile error.
LIMIT_REASONS = ("memory", "pids", "cpu", "wall", "idle", "output", "file-size", "hung-up")


@dataclass
class RunResult:
    exit_code: int | None  # None when killed by a signal
    signal: int | None
    stdout: bytes
    stderr: bytes
    outputs: dict[str, bytes] = field(default_factory=dict)  # wanted outputs that exist
    limit: str | None = None  # which limit killed or stopped the job, if any
    usage: ResourceUsage = field(default_factory=ResourceUsage)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.limit is None


@dataclass
class TeardownReport:
    seconds: float
    leaks: list[str] = field(default_factory=list)  # empty when nothing was left behind
