"""jailcc's side of the per-user proxy: ask it to do a compile; start it when it is not running.
Any failure returns None, and jailcc does the compile on its own (nothing is ever lost)."""

from __future__ import annotations

import os
import socket
import struct
import sys

from . import proxy_wire as pw
from .decide import RunLocally
from .job import Invocation, Outcome

TYPE_CHECKING = False  # (typing costs milliseconds of every compile's start)
if TYPE_CHECKING:
    import subprocess
    from typing import Any

ASK_TIMEOUT = 3600.0  # a compile may take long; a dead proxy closes the socket at once
STOPPED_CHECK = 2.0  # seconds between looks at whether a proxy that has not answered is stopped
START_WAIT = 2.0  # for a proxy just started to listen (it takes 0.2-0.3 s here)


def ask_proxy(
    argv: list[str], exe: str, inv: Invocation, ask: bool = True
) -> RunLocally | Outcome | None:
    """The proxy's answer, or None (compile on our own). Starts a proxy if none runs; with
    `ask` False (the native client asked already and got no answer), does only that."""
    path = pw.socket_path(inv.env)
    try:
        sock = connect(path)
    except ProxyStopped:
        return None  # a proxy runs that will not answer: neither ask it nor start another
    if sock is None:
        # The first compile of a build: the proxy it starts serves it too, once up (a few
        # tenths of a second), rather than a compile of our own without its analysis.
        sock = _wait_for_proxy(path, start_proxy(inv.env))
        if sock is None:
            return None
    elif not ask:
        sock.close()  # the native client asked this proxy, which did not answer
        return None
    try:
        with sock:
            sock.settimeout(ASK_TIMEOUT)
            sock.sendall(pw.encode_request(argv, exe, inv.cwd, inv.env, inv.stderr_tty, inv.umask))
            if not _answer_comes(sock):
                return None
            return _read_reply(sock)
    except (OSError, ValueError):
        return None


def _answer_comes(sock: socket.socket) -> bool:
    """Wait for the proxy's answer, which comes when the job is done however long it takes,
    but not from a proxy that is stopped (SIGSTOP, ^Z, a debugger): False then."""
    import select
    import time

    pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    deadline = time.monotonic() + ASK_TIMEOUT
    stopped = 0
    while not poller.poll(STOPPED_CHECK * 1000):
        # Twice in a row: a profiler's sample stops a process for a moment.
        stopped = stopped + 1 if _stopped(pid) else 0
        if stopped == 2 or time.monotonic() > deadline:
            return False
    return True


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            line = stat.read(512)
    except OSError:
        return False  # (gone: its socket says so)
    state = line[line.rfind(b")") + 2 : line.rfind(b")") + 3]  # after "pid (comm)"
    return state in (b"T", b"t")


def _wait_for_proxy(path: str, started: subprocess.Popen | None) -> socket.socket | None:
    """A connection to the proxy just started at path, once it listens (START_WAIT at most;
    not at all once the one we started has failed: every compile would wait in vain)."""
    import time

    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        time.sleep(0.02)
        try:
            sock = connect(path)
        except ProxyStopped:
            return None
        if sock is not None:
            return sock
        if started is not None and started.poll() not in (None, 0):  # (0: another serves)
            return None
    return None


class ProxyStopped(Exception):
    """A proxy runs there, but will not answer: it is stopped, or its queue is full."""


def connect(path: str) -> socket.socket | None:
    """A connection to the proxy at path, if one runs there as this user; ProxyStopped if it
    runs but will not answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Not blocking: a proxy that does not accept (stopped, its queue full) would hold
        # connect() for good.
        sock.setblocking(False)
        sock.connect(path)
        sock.setblocking(True)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            raise PermissionError("the proxy socket belongs to someone else")
        stopped = _stopped(pid)
    except BlockingIOError:
        sock.close()
        raise ProxyStopped from None
    except OSError:
        sock.close()
        return None
    if stopped:
        sock.close()
        raise ProxyStopped
    return sock


def _read_reply(sock: socket.socket) -> RunLocally | Outcome:
    reply = pw.read_job_reply(sock)
    if isinstance(reply, pw.Local):
        return RunLocally(reply.compiler, reply.args, reply.message)
    return Outcome(reply.exit_code, reply.stdout, reply.stderr, "")


def start_proxy(
    env: os._Environ[str] | dict[str, str], stderr: Any = None
) -> subprocess.Popen | None:
    """Start a proxy for these settings in the background, detached from this build (its own
    session, no inherited descriptors): its Popen, or None. If another jailcc starts one at
    the same moment, the proxy's lock lets only one of them run (the other exits 0)."""
    import subprocess

    try:
        return subprocess.Popen(
            [sys.executable, "-m", "jailcc.client.proxy"],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if stderr is None else stderr,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    except OSError:
        return None
