"""The jail's init: PID 1 of the jail's PID namespace, running as the jail's uid.

It takes one command at a time from its control socket, runs it under rlimits and a wall
clock, captures stdout and stderr up to caps, sweeps away every process the command left,
returns the named output files and wipes the work dir and /tmp for the next command; or it
serves a whole client connection with a registered connection handler (the jobs, jobs/).
It holds no privilege, so whatever a job does to it gains nothing beyond the jail.

It knows nothing of compilers: the same generic init runs the selftest's probes. The launcher
forks it (sandbox/launcher.py, _jail_main), builds the jail around it and drops its privileges
before this code takes over.
"""

from __future__ import annotations

import contextlib
import os
import resource  # noqa: F401 - os.wait4 imports it lazily; the launcher imports it for us too
import select
import signal
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

from jailcc import seccomp, wire

from .spec import JailLimits, RunLimits

MAX_NAMES = 1000
NPROC_MARGIN = 8  # RLIMIT_NPROC above the cgroup's pids.max (see _rlimits)
MAX_NAME_BYTES = 4096
MAX_OPEN_PARENTS = 64  # directory descriptors kept open while writing a job's inputs
MAX_ARGS_BYTES = 256 * 1024


# Connection handlers by name, registered by the modules the init imports from memory once it
# is unprivileged (jail_code.py: jailcc.jobs.session registers "jobs"). A handler speaks to a
# client directly, from inside the jail, on a socket the server hands over: so the code that
# parses what an authenticated client sends runs here, unprivileged, instead of in the server.
# It returns None when the client ended the connection cleanly, or why it ended otherwise.
ConnectionHandler = Callable[["JailInit", socket.socket, dict[str, Any], bytes], "str | None"]
CONNECTION_HANDLERS: dict[str, ConnectionHandler] = {}


class JobRefused(Exception):
    """The request is malformed; the init answers with an error and carries on."""


class ClientGone(ConnectionError):
    """A connection's client went while its job waited: the connection ends."""


def _check_relative(name: Any) -> str:
    if not isinstance(name, str) or not name or "\0" in name or name.startswith("/"):
        raise JobRefused(f"bad file name {name!r}: must be a relative path")
    if len(os.fsencode(name)) > MAX_NAME_BYTES or any(
        p in ("", ".", "..") for p in name.split("/")
    ):
        raise JobRefused(f"bad file name {name!r}")
    return name


def _check_strings(values: Any, what: str) -> list[str]:
    if not isinstance(values, list) or not all(
        isinstance(v, str) and "\0" not in v for v in values
    ):
        raise JobRefused(f"{what} must be a list of strings")
    return values


class JailInit:
    def __init__(
        self,
        sock: socket.socket,
        limits: JailLimits,
        weaken: frozenset[str],
        spawn_helper: str,
        io_counters: int,
    ) -> None:
        self.sock = sock
        self.io_counters = io_counters  # our /proc/self/io, opened before we became non-dumpable
        self.limits = limits
        self.weaken = weaken
        self.spawn_helper = spawn_helper
        self.devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self.dirty = False  # set when a job left something the wipe could not remove
        # Its user's blob store, a directory on no path (launcher.py _give_store), for the
        # connection handlers: given once, kept for the jail's life, never passed to a job.
        self.store: int | None = None
        # The connection a handler serves (jobs/session.py sets it): its client hanging up
        # mid-job ends the job, which nobody waits for any more.
        self.client_fd: int | None = None
        # While a job that asked for it waits or runs: (every so many seconds, tell its client
        # it still does; False once the client cannot be told). Set by the handler too.
        self.keep_alive: tuple[float, Callable[[], bool]] | None = None
        if os.geteuid() == 0 and "root_uid" not in weaken:
            # Its sweep and wipes assume a jail: never let it loose on the host.
            raise RuntimeError("the jail init must run inside a jail, unprivileged")

    def warm_up(self) -> None:
        """Run one job through the whole path before the first real one: this process is a
        fresh fork, and its first pass through any code copies the pages it touches (copy-on-
        write). Paying that while the jail waits in the warm pool keeps it off the first
        compile. The job runs a program that does not exist, in /tmp, and is wiped after."""
        request = {
            "op": "run",
            "argv": ["/.jailcc-warm-up"],
            "env": {},
            "cwd": "/tmp",
            "inputs": ["in"],
            "outputs": ["in"],
            "executables": [],
            "limits": RunLimits().to_dict(),
        }
        ours, theirs = socket.socketpair()
        try:
            wire.send_message(theirs, request, [b"warm-up"])
            header, blobs = wire.recv_message(ours, 1 << 20)
            reply, out_blobs = self._dispatch(header, blobs)
            wire.send_message(ours, reply, out_blobs)
            wire.recv_message(theirs, 1 << 20)
        finally:
            ours.close()
            theirs.close()
        self.confine()

    def confine(self) -> None:
        """Put this init under the jobs' seccomp filter too (jailcc.seccomp): it parses every
        byte an authenticated client sends, so a bug there meets the kernel a job meets: no
        keyrings (they would outlive the jail with its uid), io_uring, namespaces, mounts or
        odd socket families."""
        if "no_seccomp" in self.weaken:
            return
        which = seccomp.ANY_SOCKET_FAMILY if "any_socket_family" in self.weaken else seccomp.JOBS
        seccomp.confine(self.spawn_helper, which)

    def serve(self) -> None:
        max_input = self.limits.work_bytes + MAX_ARGS_BYTES
        while True:
            try:
                header, blobs, fds = wire.recv_message_with_fds(self.sock, max_input, 1)
            except wire.PeerClosed:
                return
            try:
                if header.get("op") == "connection" and len(fds) == 1:
                    reply, out_blobs = self._connection(header, blobs, fds.pop()), []
                elif header.get("op") == "store" and len(fds) == 1 and self.store is None:
                    self.store, reply, out_blobs = fds.pop(), {"ok": True}, []
                elif fds:
                    raise JobRefused("unexpected descriptors")
                else:
                    reply, out_blobs = self._dispatch(header, blobs)
            except JobRefused as exc:
                reply, out_blobs = {"ok": False, "error": str(exc)}, []
            finally:
                for fd in fds:
                    os.close(fd)
            wire.send_message(self.sock, reply, out_blobs)

    def _connection(self, header: dict[str, Any], blobs: list[bytes], fd: int) -> dict[str, Any]:
        """Serve a client connection with a registered handler until it ends."""
        conn = socket.socket(fileno=fd)
        try:
            handler = CONNECTION_HANDLERS.get(str(header.get("handler")))
            params = header.get("params")
            if handler is None or not isinstance(params, dict) or len(blobs) != 1:
                raise JobRefused("no such connection handler, or a malformed hand-over")
            try:
                error = handler(self, conn, params, blobs[0])
            except Exception as exc:  # a handler bug ends this connection, not the jail
                error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        return {"ok": True, "end": True, "error": error, "dirty": self.dirty}

    # -- for connection handlers -------------------------------------------------------------

    def ask(self, message: dict[str, Any], for_slot: bool = False) -> dict[str, Any]:
        """Ask the server something (a slot, a working directory) and wait for its answer.
        A slot (for_slot) may be long in coming: meanwhile the job's client is told it still
        waits (ALIVE, if it asked), and if it goes, the job is given up (ClientGone), which
        the monitor sees as this jail speaking out of turn: it ends the connection, and the
        job's place in the queue goes to others."""
        wire.send_message(self.sock, {"ask": True, **message})
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        if for_slot and self.client_fd is not None:
            poller.register(self.client_fd, select.POLLRDHUP)  # (data from it waits its turn)
        keep_alive = self.keep_alive
        while True:
            events = poller.poll(None if keep_alive is None else keep_alive[0] * 1000)
            if any(fd == self.sock.fileno() for fd, _ in events):
                break
            if events or (keep_alive is not None and not keep_alive[1]()):
                if for_slot:
                    raise ClientGone("the client went while its job waited for a slot")
                keep_alive = None  # its client went: the job, given a slot, stops at once
        reply, _ = wire.recv_message(self.sock, 0)
        return reply

    def run(
        self, request: dict[str, Any], blobs: list[bytes], max_names: int = MAX_NAMES
    ) -> tuple[dict, list[bytes]]:
        """Run one job, as the server's "run" operation does; JobRefused if malformed. A
        connection handler may allow more files than the server's operation (max_names)."""
        return self._run(request, blobs, max_names)

    def _dispatch(self, header: dict[str, Any], blobs: list[bytes]) -> tuple[dict, list[bytes]]:
        op = header.get("op")
        if op == "ping":
            return {"ok": True}, []
        if op == "run":
            return self._run(header, blobs)
        raise JobRefused(f"unknown operation {op!r}")

    # -- one job ---------------------------------------------------------------------------

    def _run(
        self, req: dict[str, Any], blobs: list[bytes], max_names: int = MAX_NAMES
    ) -> tuple[dict, list[bytes]]:
        """One command. The request names its argv, env, cwd and limits; the files to write
        before ("inputs", with the blobs) and to read back after ("outputs"), relative to the
        work dir, which is cwd unless "workdir" names a prepared directory holding cwd (made
        if missing, as are the "dirs" named, relative to it); "readonly_inputs" writes the
        inputs 0444; "tmp_outputs" are read back from /tmp; "keep" leaves the work dir and
        /tmp as they are for the next command when this one completes (it then must follow,
        and wipes them); "arg0" is the name argv[0]'s program is told it runs under."""
        argv = _check_strings(req.get("argv"), "argv")
        if not argv or not argv[0].startswith("/"):
            raise JobRefused("argv[0] must be an absolute path in the jail")
        program = argv[0]  # what runs; "arg0", if given, is the name the program is told
        arg0 = req.get("arg0", program)
        if not isinstance(arg0, str) or "\0" in arg0:
            raise JobRefused("arg0 must be a string")
        argv = [arg0, *argv[1:]]
        env = req.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and "=" not in k and "\0" not in k + v
            for k, v in env.items()
        ):
            raise JobRefused("env must map names to strings")
        cwd = req.get("cwd")
        if not isinstance(cwd, str) or not cwd.startswith("/") or "\0" in cwd:
            raise JobRefused("the working directory must be an absolute path")
        workdir = req.get("workdir", cwd)
        if (
            not isinstance(workdir, str)
            or not workdir.startswith("/")
            or not (cwd == workdir or cwd.startswith(workdir.rstrip("/") + "/"))
        ):
            raise JobRefused("the working directory must lie in the work dir")
        below = [_check_relative(p) for p in cwd[len(workdir) :].split("/") if p]
        try:
            st = os.stat(workdir, follow_symlinks=False)
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise JobRefused("the job's working directory was not prepared")
        names = [_check_relative(n) for n in _check_strings(req.get("inputs", []), "inputs")]
        outputs = [_check_relative(n) for n in _check_strings(req.get("outputs", []), "outputs")]
        tmp = [_check_relative(n) for n in _check_strings(req.get("tmp_outputs", []), "tmp")]
        executables = set(_check_strings(req.get("executables", []), "executables"))
        if len(names) != len(blobs) or len(names) + len(outputs) > max_names:
            raise JobRefused("inputs do not match the data sent, or too many files")
        try:
            limits = RunLimits.from_dict(req.get("limits") or {})
        except (TypeError, ValueError) as exc:
            raise JobRefused(str(exc)) from None
        readonly = req.get("readonly_inputs") is True
        dirs = [_check_relative(d) for d in _check_strings(req.get("dirs", []), "dirs")]
        if len(dirs) > max_names:
            raise JobRefused("too many directories")

        completed = False
        try:
            for parts in [below, *(d.split("/") for d in dirs)]:
                if parts:
                    os.close(_open_beneath(workdir, parts, create=True))
            self._write_inputs(workdir, names, blobs, executables, readonly)
            result, stdout, stderr = self._execute(program, argv, env, cwd, limits)
            out_blobs: list[bytes] = []
            for key, top, wanted in (("outputs", workdir, outputs), ("tmp_outputs", "/tmp", tmp)):
                result[key] = []
                for name in wanted:
                    data = _read_output(top, name, limits.output_file_bytes)
                    if data is None:
                        continue
                    if data is False:
                        result["limit"] = result["limit"] or "output"
                        continue
                    result[key].append(name)
                    out_blobs.append(data)
            completed = True
        except OSError as exc:
            raise JobRefused(f"job set-up failed: {exc}") from None
        finally:
            self._sweep()
            # A jail the job left unwipeable is retired: the server gets a fresh one.
            if "no_wipe" not in self.weaken and not (completed and req.get("keep") is True):
                self.dirty = not (_wipe(workdir) and _wipe("/tmp")) or self.dirty
        result["dirty"] = self.dirty
        return result, [stdout, stderr, *out_blobs]

    def _write_inputs(
        self,
        top: str,
        names: list[str],
        blobs: list[bytes],
        executables: set[str],
        readonly: bool,
    ) -> None:
        parents: dict[str, int] = {}  # directory descriptors by name, below top
        try:
            for name, data in zip(names, blobs, strict=True):
                parent, _, base = name.rpartition("/")
                fd = parents.get(parent)
                if fd is None:
                    if len(parents) >= MAX_OPEN_PARENTS:
                        _close_all(parents)
                    fd = parents[parent] = _open_beneath(
                        top, parent.split("/") if parent else [], create=True
                    )
                mode = 0o444 if readonly else 0o700 if name in executables else 0o600
                self._write_input(fd, base, data, mode)
        finally:
            _close_all(parents)

    def _write_input(self, parent: int, name: str, data: bytes, mode: int) -> None:
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=parent
        )
        try:
            wire.write_all(fd, data)
        finally:
            os.close(fd)

    def _execute(
        self, program: str, argv: list[str], env: dict[str, str], cwd: str, limits: RunLimits
    ) -> tuple[dict[str, Any], bytes, bytes]:
        out_r, out_w = _output_channel()
        err_r, err_w = _output_channel()
        started = time.monotonic()
        written_before = _bytes_written(self.io_counters)
        pid = self._spawn(program, argv, env, cwd, limits, out_w, err_w)
        os.close(out_w)
        os.close(err_w)
        pidfd = os.pidfd_open(pid)
        caps = {out_r: limits.stdout_bytes, err_r: limits.stderr_bytes}
        chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
        sizes = {out_r: 0, err_r: 0}
        poller = select.poll()
        for fd in (out_r, err_r, pidfd, self.sock.fileno()):
            poller.register(fd, select.POLLIN)
        if self.client_fd is not None:
            poller.register(self.client_fd, select.POLLRDHUP)  # (data from it waits its turn)
        deadline = None if "no_wall_clock" in self.weaken else started + limits.wall_seconds
        limit: str | None = None
        open_pipes = {out_r, err_r}
        exited = False
        keep_alive = self.keep_alive
        told = started
        cpu_seen, still_since, looked = -1, started, started
        try:
            while open_pipes or not exited:
                now = time.monotonic()
                timeout = None if deadline is None else deadline - now
                if timeout is not None and timeout <= 0:
                    limit = "wall"
                    break
                if not exited and "no_wall_clock" not in self.weaken:
                    # A job that waits for nothing that can come (say a read of a pipe it
                    # holds itself) would keep its slot to the wall clock at no cost.
                    if now - looked >= IDLE_LOOK:
                        looked = now
                        used = _jobs_cpu_ticks()
                        if used != cpu_seen:
                            cpu_seen, still_since = used, now
                        elif now - still_since >= limits.idle_seconds:
                            limit = "idle"
                            break
                    due = looked + IDLE_LOOK - now
                    timeout = due if timeout is None else min(timeout, due)
                if keep_alive is not None:
                    if now - told >= keep_alive[0]:
                        if not keep_alive[1]():
                            limit = "hung-up"  # its client stopped reading: nobody waits
                            break
                        told = now
                    due = told + keep_alive[0] - now
                    timeout = due if timeout is None else min(timeout, due)
                events = poller.poll(None if timeout is None else timeout * 1000)
                for fd, _ in events:
                    if fd == pidfd:
                        exited = True
                        poller.unregister(pidfd)
                        # Whatever still holds the pipes is a leftover of the job: stop it now.
                        self._sweep(keep_reaping=False)
                    elif fd == self.sock.fileno():
                        # The server hung up (or spoke out of turn) mid-job: stop everything.
                        os.kill(pid, signal.SIGKILL)
                        os._exit(1)
                    elif fd == self.client_fd:
                        limit = "hung-up"  # the client went: its slot goes to others now
                        break
                    else:
                        data = os.read(fd, 65536)
                        if not data:
                            poller.unregister(fd)
                            open_pipes.discard(fd)
                            continue
                        sizes[fd] += len(data)
                        if sizes[fd] > caps[fd] and "no_output_cap" not in self.weaken:
                            limit = "output"
                            break
                        chunks[fd].append(data)
                if limit:
                    break
        finally:
            if limit:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            wall = time.monotonic() - started
            for fd in (out_r, err_r, pidfd):
                os.close(fd)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        cpu = usage.ru_utime + usage.ru_stime
        if limit is None and sig is not None:
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds):
                limit = "cpu"
            elif sig == signal.SIGXFSZ:
                limit = "file-size"
        stdout, stderr = b"".join(chunks[out_r]), b"".join(chunks[err_r])
        if limit is None and (sig is not None or os.WEXITSTATUS(status) != 0):
            # Writes to files only: less what went to the job's stdout and stderr.
            written = _bytes_written(self.io_counters) - written_before - sum(sizes.values())
            if _file_size_limit_hit(written, self._rlimits(limits)[2], stderr):
                limit = "file-size"
            elif DISK_FULL_MESSAGE in stderr:
                limit = "disk"  # the work dir or /tmp is full: a local compile has room
            elif limits.cpu_seconds and cpu >= limits.cpu_seconds:
                # RLIMIT_CPU is a process's: a cc1 it killed leaves its driver failing as for
                # any error. (Several processes that used this much together: a local compile.)
                limit = "cpu"
        result = {
            "ok": True,
            "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": sig,
            "limit": limit,
            "usage": {
                "user_seconds": usage.ru_utime,
                "system_seconds": usage.ru_stime,
                "max_rss_bytes": usage.ru_maxrss * 1024,
                "wall_seconds": wall,
            },
        }
        return result, stdout, stderr

    def _rlimits(self, limits: RunLimits) -> tuple[int, int, int, int, int]:
        """CPU, address space, file size, open files, processes; 0 = leave as inherited."""
        weak = self.weaken
        return (
            0 if "no_cpu_limit" in weak else limits.cpu_seconds,
            0 if "no_memory_limit" in weak else limits.address_space_bytes,
            limits.file_bytes,
            limits.open_files,
            # The uid is this jail's alone, so RLIMIT_NPROC counts this jail only. A backstop a
            # little above the cgroup's pids.max: the kernel checks it first at fork, and at the
            # same figure a fork bomb would stop there, unseen by pids.events, so the job's end
            # could not name the pids limit.
            0 if {"no_pids_limit", "root_uid"} & weak else self.limits.pids_max + NPROC_MARGIN,
        )

    def _spawn(
        self,
        program: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        limits: RunLimits,
        out_w: int,
        err_w: int,
    ) -> int:
        """Start the job through the C helper (spawn.c) with vfork: no copy of this process."""
        helper = self.spawn_helper
        seccomp = "1"
        if "no_seccomp" in self.weaken:
            seccomp = "0"
        elif "any_socket_family" in self.weaken:
            seccomp = "2"  # the filter without its socket family check
        args = [helper, cwd, *(str(v) for v in self._rlimits(limits)), seccomp, program, *argv]
        return os.posix_spawn(
            helper,
            args,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, self.devnull, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
            ],
        )

    def _sweep(self, keep_reaping: bool = True) -> None:
        """Kill every process in the jail but ourselves, and reap them all."""
        if "no_pidns" in self.weaken or os.getpid() != 1:
            return  # kill(-1) outside a PID namespace of our own would hit the host
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        if not keep_reaping:
            return
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return


# What the file-size limit makes a compiler driver or tool say: strsignal(SIGXFSZ) (gcc's driver
# when it kills as or cc1: "... signal terminated program as"), strerror(EFBIG) (a tool that
# gets the error instead, SIGXFSZ being ignored). In English: images carry no translations.
IDLE_LOOK = 5.0  # seconds between looks at the CPU time a job's processes have used


def _output_channel() -> tuple[int, int]:
    """(ours to read, the job's to write) for its stdout or stderr: a socket pair, which,
    unlike a pipe, the job cannot open again for reading through /proc/self/fd (a compile
    that #includes its own stderr would otherwise wait on itself to the wall clock)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.shutdown(socket.SHUT_WR)
    theirs.shutdown(socket.SHUT_RD)
    return ours.detach(), theirs.detach()


def _jobs_cpu_ticks() -> int:
    """The CPU time (clock ticks) of every process in the jail but its init, and of the
    children they reaped: it stays the same only while none of them runs."""
    total, own = 0, str(os.getpid())
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == own:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total


FILE_SIZE_MESSAGES = (b"File size limit exceeded", b"File too large")
# strerror(ENOSPC), as the compiler, the assembler and the linker print it. A job's own text
# that says it too (an #error) costs only a local compile, which then says it as well.
DISK_FULL_MESSAGE = b"No space left on device"


def _file_size_limit_hit(written: int, file_bytes: int, stderr: bytes) -> bool:
    """Whether a failed job was stopped by RLIMIT_FSIZE in a process below it (as, cc1), which
    the job's own status does not show: its driver fails as for any error. Either the job wrote
    as many bytes as the limit (a file reaches it by no less, unless written sparse), or its
    diagnostics name the limit (as seeks past its zero-filled sections: it may hit the limit
    having written little). Taking a compile error for a limit costs only a local compile; the
    other way round, the client would take the failure as the answer."""
    if 0 < file_bytes <= written:
        return True
    return any(message in stderr for message in FILE_SIZE_MESSAGES)


def _bytes_written(io_counters: int) -> int:
    """Bytes written so far by this process and every descendant it (or they) waited for: the
    kernel adds a reaped child's I/O counters to its parent's. io_counters is /proc/self/io."""
    for line in os.pread(io_counters, 4096, 0).splitlines():
        if line.startswith(b"wchar:"):
            return int(line.split()[1])
    return 0


MAX_WIPE_DEPTH = 64


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def _step(fd: int, name: str, flags: int) -> int:
    """The directory name in fd's, not by a symlink; fd is closed either way."""
    try:
        return os.open(name, flags | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


def _walk(path: str) -> int:
    """An O_PATH descriptor for the directory at path, refusing a symlink at every step from
    /: the job may have put one anywhere it could write, /tmp included (a work dir may lie
    under it), and the init must not follow it out (to its own /proc/1, say)."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    for part in filter(None, path.split("/")):
        fd = _step(fd, part, os.O_PATH)
    return fd


def _open_beneath(top: str, parts: list[str], create: bool = False) -> int:
    """A directory descriptor for top/parts..., refusing any symlink on the way (the job
    controls every name below top, and may have made those above it under /tmp)."""
    fd = _step(_walk(top), ".", os.O_RDONLY)
    for part in parts:
        if create:
            try:
                os.mkdir(part, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            except BaseException:
                os.close(fd)
                raise
        fd = _step(fd, part, os.O_RDONLY)
    return fd


def _read_output(cwd: str, name: str, cap: int) -> bytes | bool | None:
    """The file's bytes; None if absent or not a regular file; False if over the cap (or
    sparse: a hole costs the jail nothing but would cost the server its full size)."""
    parts = name.split("/")
    try:
        parent = _open_beneath(cwd, parts[:-1])
    except OSError:
        return None
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
    except OSError:
        return None
    finally:
        os.close(parent)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > cap or st.st_blocks * 512 < st.st_size:
            return False
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > cap:
                return False
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _wipe(top: str) -> bool:
    """Empty a directory the job could write to, whatever it did to it; True if it is empty
    afterwards. Runs after every job process is gone, so nothing moves underneath."""
    try:
        os.close(_walk(top))  # no symlink on the way: the chmod below follows none
        os.chmod(top, 0o700)  # the job owns the directory and may have locked it
        fd = _open_beneath(top, [])
        try:
            return _empty(fd, 0)
        finally:
            os.close(fd)
    except Exception:
        return False


def _empty(dir_fd: int, depth: int) -> bool:
    if depth > MAX_WIPE_DEPTH:
        return False
    clean = True
    here = os.fstat(dir_fd).st_dev
    me = os.getuid()
    for entry in list(os.scandir(dir_fd)):
        name = entry.name
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            continue
        if st.st_dev != here:
            continue  # a mount point (the work dir under /tmp): wiped on its own
        if st.st_uid == me:
            os.chmod(name, 0o700, dir_fd=dir_fd)  # a directory, not a symlink: no follow
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            clean = _empty(sub, depth + 1) and clean
        finally:
            os.close(sub)
        # The launcher's directories on the way to a work dir stay; the job's go.
        if clean and st.st_uid == me:
            os.rmdir(name, dir_fd=dir_fd)
    return clean
