"""Thin ctypes wrappers for the Linux syscalls the jail needs and Python's os module lacks.

Each wrapper raises OSError with the errno and a short description of what was attempted, so a
failure during jail set-up says which step failed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# Namespace flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000

# Mount flags (linux/mount.h).
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2

# prctl options used without python-prctl (it does not know every capability of new kernels).
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# keyctl(2)
KEYCTL_JOIN_SESSION_KEYRING = 1

_SYSCALL_NUMBERS = {
    # name: (x86_64, aarch64)
    "pivot_root": (155, 41),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "close_range": (436, 436),
    "open_tree": (428, 428),
}
_ARCH_INDEX = {"x86_64": 0, "aarch64": 1}


def _nr(name: str) -> int:
    try:
        return _SYSCALL_NUMBERS[name][_ARCH_INDEX[platform.machine()]]
    except KeyError as exc:  # pragma: no cover - other architectures
        raise OSError(f"{name}: unsupported architecture {platform.machine()}") from exc


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    def enc(value: str | None) -> bytes | None:
        return None if value is None else os.fsencode(value)

    result = _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(result, f"mount {source or fstype} on {target}")


# open_tree(2): a copy of a mount, detached from every mount namespace, as a descriptor.
OPEN_TREE_CLONE = 1


def clone_mount(path: str) -> int:
    """A detached copy of the mount at path, as a descriptor (close-on-exec)."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC
    result = _libc.syscall(
        ctypes.c_long(_nr("open_tree")), ctypes.c_int(-100), os.fsencode(path), ctypes.c_uint(flags)
    )
    return _check(result, f"open_tree {path}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    result = _libc.syscall(
        ctypes.c_long(_nr("pivot_root")), os.fsencode(new_root), os.fsencode(put_old)
    )
    _check(result, "pivot_root")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    args = (ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5))
    return _check(_libc.prctl(ctypes.c_int(option), *args), f"prctl({option})")


def _cap_last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


# Read once at import, in the launcher: reading /proc/sys in each fresh jail costs ~0.5 ms.
CAP_LAST_CAP = _cap_last_cap()


def drop_bounding_set() -> None:
    """Drop every capability the running kernel knows from the bounding set."""
    for cap in range(CAP_LAST_CAP + 1):
        prctl(PR_CAPBSET_DROP, cap)


def clear_ambient_caps() -> None:
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def join_new_session_keyring() -> None:
    """Leave the inherited (root's) session keyring for a fresh anonymous one.

    Without this a jailed process still 'possesses' the launcher's session keyring and could
    read keys in it through possessor permissions.
    """
    result = _libc.syscall(
        ctypes.c_long(_nr("keyctl")), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), None
    )
    _check(result, "keyctl(JOIN_SESSION_KEYRING)")


KEY_SPEC_SESSION_KEYRING = -3


def add_key(
    key_type: str, description: str, payload: bytes, keyring: int = KEY_SPEC_SESSION_KEYRING
) -> int:
    """Add a key to a keyring (the session keyring by default); its serial number."""
    result = _libc.syscall(
        ctypes.c_long(_nr("add_key")),
        key_type.encode(),
        description.encode(),
        payload,
        ctypes.c_size_t(len(payload)),
        ctypes.c_int(keyring),
    )
    return _check(result, "add_key")


def close_fds_except(keep: set[int]) -> None:
    """Close every file descriptor not in keep (close_range where possible)."""
    low = 3
    for fd in [*sorted(keep), 2**31 - 1]:
        if fd >= low:
            if fd > low:
                res = _libc.syscall(
                    ctypes.c_long(_nr("close_range")),
                    ctypes.c_uint(low),
                    ctypes.c_uint(fd - 1),
                    ctypes.c_uint(0),
                )
                if res == -1:
                    os.closerange(low, fd)
            low = fd + 1
