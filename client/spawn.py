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
        return _run_for_client(argv, inv)
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


# The proxy's children that run for a client (its preprocessors), by process group: each
# is killed when its client goes away, and all of them when the proxy stops.
_RUNNING: set[int] = set()
CLIENT_POLL = 0.5  # seconds between looks at the client's connection


class ClientGone(Exception):
    """The client a program ran for went away; the program was killed."""


def _run_for_client(argv: list[str], inv: Invocation) -> tuple[int, bytes, bytes]:
    """run_capture in the client's directory, environment and umask, in a process group of
    its own (the compiler driver's children too), killed as soon as the client is gone: a
    preprocessor blocked on a FIFO must not outlive the build that asked for it."""
    import subprocess

    proc = subprocess.Popen(
        argv,
        cwd=inv.cwd,
        env=inv.env,
        umask=inv.umask,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
        start_new_session=True,
    )
    _RUNNING.add(proc.pid)
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=CLIENT_POLL)
                return proc.returncode, out, err
            except subprocess.TimeoutExpired:
                if inv.client_gone():
                    raise ClientGone(f"{argv[0]}: its client went away") from None
    finally:
        _RUNNING.discard(proc.pid)
        if proc.returncode is None:
            _kill_group(proc.pid)
            proc.wait()


def _kill_group(pgid: int) -> None:
    try:  # noqa: SIM105 - contextlib costs milliseconds of a compile's start
        os.killpg(pgid, 9)  # SIGKILL
    except OSError:
        pass  # (gone already)


def kill_running() -> None:
    """Kill every program still running for a client (the proxy is stopping)."""
    for pgid in list(_RUNNING):
        _kill_group(pgid)


def shell_status(code: int) -> int:
    """A negative code (killed by a signal) as a shell would report it."""
    return 128 - code if code < 0 else code
