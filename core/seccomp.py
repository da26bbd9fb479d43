"""Putting this process under the jobs' seccomp filter, as the spawn helper prints it
(sandbox/spawn.c --filter: one source for the policy). Two unprivileged processes take it on
themselves: each jail's init (sandbox/jail_init.py), which parses what authenticated clients
send, and the network service (server/netservice.py), which parses what everyone sends. Both
have no_new_privs, which an unprivileged process needs to install a filter."""

from __future__ import annotations

import os

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2  # <linux/prctl.h>, <linux/seccomp.h>
JOBS = "1"  # the jobs' filter
ANY_SOCKET_FAMILY = "2"  # the same without its socket family check
MAX_FILTER_BYTES = 8 * 4096  # BPF_MAXINSNS instructions of 8 bytes


class SeccompError(Exception):
    """The filter could not be had or installed: the process must not go on unfiltered."""


def confine(spawn_helper: str, which: str = JOBS) -> None:
    """Install the helper's filter (JOBS or ANY_SOCKET_FAMILY) on this process, for good."""
    install(filter_from(spawn_helper, which))


def filter_from(spawn_helper: str, which: str) -> bytes:
    """The filter's BPF program (struct sock_filter[], raw), as the spawn helper prints it."""
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn(
            spawn_helper,
            [spawn_helper, "--filter", which],
            {},
            file_actions=[(os.POSIX_SPAWN_DUP2, write_end, 1)],
        )
        os.close(write_end)
        write_end = -1
        program = b""
        while len(program) <= MAX_FILTER_BYTES and (chunk := os.read(read_end, 65536)):
            program += chunk
        status = os.waitpid(pid, 0)[1]
    except OSError as exc:
        raise SeccompError(f"cannot run the spawn helper {spawn_helper}: {exc}") from None
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if status != 0 or not program or len(program) % 8 or len(program) > MAX_FILTER_BYTES:
        raise SeccompError(f"the spawn helper {spawn_helper} printed no seccomp filter")
    return program


def install(program: bytes) -> None:
    """Install a classic BPF program on this process (and every child it will have)."""
    import ctypes

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    fprog = Fprog(len(program) // 8, program)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise SeccompError(f"cannot install the seccomp filter: {os.strerror(ctypes.get_errno())}")
