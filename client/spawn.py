"""Run a program and capture its output without importing subprocess (it costs several ms of
start-up, and jailcc starts once per compile)."""

from __future__ import annotations

import os
import select

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .job import Invocation


def run_capture(argv: list[str], inv: Invocation | None = None) -> tuple[int, bytes, bytes]:
    """Run argv (looked up on PATH) with stdin from /dev/null; return (exit status as a shell
    reports it, stdout, stderr). With `inv`, in its directory, environment and umask (the proxy
    runs a client's preprocessor); otherwise in this process's."""
    if inv is not None and (inv.cwd != os.getcwd() or inv.env is not os.environ):
        import subprocess

        proc = subprocess.run(
            argv,
            cwd=inv.cwd,
            env=inv.env,
            umask=inv.umask,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            close_fds=True,
        )
        return proc.returncode, proc.stdout, proc.stderr
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = os.posix_spawnp(
            argv[0],
            argv,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
            ],
        )
    finally:
        for fd in (out_w, err_w, null):
            os.close(fd)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    poller = select.poll()
    for fd in chunks:
        poller.register(fd, select.POLLIN)
    open_fds = set(chunks)
    try:
        while open_fds:
            for fd, _ in poller.poll():
                data = os.read(fd, 1 << 20)
                if data:
                    chunks[fd].append(data)
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
    finally:
        os.close(out_r)
        os.close(err_r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks[out_r]), b"".join(chunks[err_r])


def shell_status(code: int) -> int:
    """A negative code (killed by a signal) as a shell would report it."""
    return 128 - code if code < 0 else code
