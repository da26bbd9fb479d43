"""Landlock for the network service: what it may reach in the file system, and no TCP.

The service parses every byte peers send before they authenticate, as a uid of its own. Its
uid alone lets it read whatever is world-readable: on a borrowed desktop, the owner's home and
source trees, /tmp. Before it starts any thread or reads a peer's byte (its metrics socket
already bound), it restricts itself with Landlock (an unprivileged LSM; it has no_new_privs) to
reading the system's programs, libraries and configuration, Python and jailcc, /proc, /sys,
/dev and /run: it can write no file, make no TCP connection or listener, and, where the
kernel scopes them, signal no process and reach no abstract Unix socket outside itself and its
children. A kernel without Landlock leaves it at its uid's rights, and says so.
"""

from __future__ import annotations

import ctypes
import os
import site
import sys
import sysconfig
import threading
from collections.abc import Iterable

# <linux/landlock.h>
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
IOCTL_DEV = 1 << 15  # ABI 5
_NET_TCP = (1 << 0) | (1 << 1)  # bind and connect, ABI 4
_SCOPES = (1 << 0) | (1 << 1)  # abstract Unix sockets and signals, ABI 6
_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}

READ = READ_FILE | READ_DIR
# Where the service, and the programs the owner's monitor runs (loginctl), read.
SYSTEM = {
    "/usr": READ | EXECUTE,
    "/lib": READ | EXECUTE,
    "/lib64": READ | EXECUTE,
    "/bin": READ | EXECUTE,
    "/etc": READ,
    "/proc": READ,
    "/sys": READ,
    "/run": READ,  # logind's session files, D-Bus's socket
    "/dev": READ | IOCTL_DEV,  # input devices for the owner's monitor
    "/dev/null": READ | WRITE_FILE,
}


class LandlockUnavailable(Exception):
    """This kernel has no Landlock (too old, or not among its security modules)."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def python_paths() -> list[str]:
    """Where this Python and jailcc's modules live, as the kernel resolves them (a development
    install links the package's parts to a checkout)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    paths.update(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib"))
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # jailcc/
    paths.add(package)
    for entry in os.scandir(package):
        target = os.path.realpath(entry.path)
        paths.add(target if os.path.isdir(target) else os.path.dirname(target))
    return sorted(os.path.realpath(p) for p in paths if p and os.path.isdir(p))


def abi_version() -> int:
    """The kernel's Landlock ABI version; LandlockUnavailable without one."""
    create = _syscalls()[0]
    libc = ctypes.CDLL(None, use_errno=True)
    flags = ctypes.c_uint32(_CREATE_RULESET_VERSION)
    version = libc.syscall(create, None, ctypes.c_size_t(0), flags)
    if version < 0:
        raise LandlockUnavailable(os.strerror(ctypes.get_errno()))
    return int(version)


def restrict(rules: Iterable[tuple[str, int]]) -> int:
    """Restrict this process, and every child it will have, to the given (path, access)
    rules beneath each path, and to no TCP; returns the ABI version used. Paths that do not
    exist are left out. LandlockUnavailable on a kernel without it; OSError if a step fails."""
    if threading.active_count() != 1:
        # (Before ABI 8, Landlock covers only the thread that asks and those it starts.)
        raise OSError(f"Landlock asked for with {threading.active_count()} threads running")
    create, add_rule, restrict_self = _syscalls()
    abi = abi_version()
    handled = _FS_BY_ABI[max(v for v in _FS_BY_ABI if v <= abi)]
    attr = _RulesetAttr(handled, _NET_TCP if abi >= 4 else 0, _SCOPES if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    libc = ctypes.CDLL(None, use_errno=True)
    ruleset = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise _error("landlock_create_ruleset")
    try:
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if not os.path.isdir(f"/proc/self/fd/{fd}"):
                    access &= READ_FILE | WRITE_FILE | EXECUTE | IOCTL_DEV  # (file rights only)
                rule = _PathBeneath(access & handled, fd)
                if libc.syscall(add_rule, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                    raise _error(f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        if libc.syscall(restrict_self, ruleset, 0):
            raise _error("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def confine_service() -> int:
    """The network service's rules (SYSTEM, and Python's and jailcc's directories)."""
    return restrict([*SYSTEM.items(), *((p, READ) for p in python_paths())])


def _syscalls() -> tuple[int, int, int]:
    numbers = _SYSCALLS.get(os.uname().machine)
    if numbers is None:
        raise LandlockUnavailable(f"no Landlock system call numbers for {os.uname().machine}")
    return numbers


def _error(what: str) -> OSError:
    errno = ctypes.get_errno()
    return OSError(errno, f"{what}: {os.strerror(errno)}")
