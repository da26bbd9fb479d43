"""The sandbox as the job service sees it: a Sandbox (one launcher, the mounted images) that
makes Jails; a Jail runs commands one at a time and is torn down when closed.

Thread-safe: many server threads may create and use jails at once (each Jail is used by one
thread at a time). Create the Sandbox from a long-lived thread (the main one): the launcher's
parent-death signal fires when the thread that started it exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jailcc import wire

from .cgroups import JailCgroup
from .rootfs import DEVICES
from .spec import (
    WEAKENINGS,
    JailLimits,
    ResourceUsage,
    RunLimits,
    RunResult,
    TeardownReport,
)
from .uidpool import DEFAULT_BASE, DEFAULT_COUNT

LAUNCHER_START_TIMEOUT = 60.0
LAUNCHER_REQUEST_TIMEOUT = 30.0
DEFAULT_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


class SandboxError(Exception):
    """The sandbox could not do what was asked (bad request, set-up failure, launcher gone)."""


class WorkdirRefused(SandboxError):
    """The launcher refused a work dir before touching the jail: it goes on as it was."""


class JailBroken(SandboxError):
    """The jail stopped answering or answered nonsense; close it and use another."""


class Sandbox:
    def __init__(
        self,
        images: Mapping[str, str],
        *,
        uid_base: int = DEFAULT_BASE,
        uid_count: int = DEFAULT_COUNT,
        warm: int = 1,
        allow_weaken: bool = False,
        jail_modules: Sequence[str] = (),
        jail_libraries: Sequence[str] = (),
        python: str = sys.executable,
        image_dir: str | None = None,
        all_jails_memory: int | None = None,
    ) -> None:
        for name, path in images.items():
            if not os.path.exists(path):
                raise SandboxError(f"toolchain image {name}: {path} does not exist")
        from .helpers import HelperUnavailable, build_static

        try:
            self.spawn_helper = spawn_helper = build_static("spawn.c")
        except (HelperUnavailable, OSError) as exc:
            raise SandboxError(f"cannot build the jail's spawn helper: {exc}") from None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [
            python,
            "-m",
            "jailcc.sandbox.launcher",
            "--control-fd",
            str(theirs.fileno()),
            "--parent-pid",
            str(os.getpid()),
            "--uid-base",
            str(uid_base),
            "--uid-count",
            str(uid_count),
            f"--warm={warm}",
            f"--spawn-helper={spawn_helper}",
        ]
        if allow_weaken:  # tests and the selftest's own proofs only
            cmd.append("--allow-weaken")
        # The code each jail's init imports once unprivileged (jailcc.jobs): the launcher reads
        # it as source and never runs it; and the libraries it needs, which the launcher
        # imports (see jail_code.py).
        cmd += [f"--jail-module={module}" for module in jail_modules]
        cmd += [f"--jail-library={library}" for library in jail_libraries]
        if all_jails_memory is not None:  # else the jails' parent group keeps what it has
            cmd.append(f"--jails-memory={all_jails_memory}")
        if image_dir is not None:  # where mount_image may take images from later
            cmd.append(f"--image-dir={os.path.realpath(image_dir)}")
        cmd += [f"--image={name}={os.path.abspath(path)}" for name, path in images.items()]
        proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        self._proc: subprocess.Popen[bytes] | None = proc
        theirs.close()
        self._control = ours
        self._lock = threading.Lock()
        self._closed = False
        ours.settimeout(LAUNCHER_START_TIMEOUT)
        try:
            hello, _ = wire.recv_packet(ours)
        except (OSError, wire.WireError) as exc:
            self.close()
            raise SandboxError(f"the jail launcher did not start: {exc}") from None
        if not hello.get("ok"):
            self.close()
            raise SandboxError(str(hello.get("error", "the jail launcher failed to start")))
        ours.settimeout(LAUNCHER_REQUEST_TIMEOUT)
        self.images: list[str] = list(hello.get("images", []))
        self.launcher_pid = proc.pid

    @classmethod
    def attach(cls, control: socket.socket, images: Sequence[str], launcher_pid: int) -> Sandbox:
        """Drive a launcher that another process started and handed over, by its control
        channel (`jailccd selftest` starts it as root and runs its probes as another uid)."""
        sandbox = cls.__new__(cls)
        sandbox._proc = None
        sandbox._control = control
        sandbox._lock = threading.Lock()
        sandbox._closed = False
        control.settimeout(LAUNCHER_REQUEST_TIMEOUT)
        sandbox.images = list(images)
        sandbox.launcher_pid = launcher_pid
        return sandbox

    @property
    def control_fd(self) -> int:
        """The launcher's control channel, to hand over (attach); use nothing here meanwhile."""
        return self._control.fileno()

    def _request(
        self, message: dict[str, Any], max_fds: int = 0
    ) -> tuple[dict[str, Any], list[int]]:
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox is closed")
            try:
                wire.send_packet(self._control, message)
                reply, fds = wire.recv_packet(self._control, max_fds)
            except (OSError, wire.WireError) as exc:
                # A reply may still come, and would answer the next request, perhaps another
                # user's (a jail and store not theirs): this channel is done for, and the
                # launcher, which sees it close, stops (and jailccd with it: fail closed).
                self._control.close()
                raise SandboxError(f"the jail launcher failed: {exc}") from None
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            refused = WorkdirRefused if reply.get("untouched") is True else SandboxError
            raise refused(str(reply.get("error", "unknown launcher error")))
        return reply, fds

    def create_jail(
        self,
        image: str,
        limits: JailLimits | None = None,
        weaken: frozenset[str] = frozenset(),
        store_for: tuple[str, int] | None = None,
    ) -> Jail:
        """A jail from image. With store_for (user, bytes), the jail also holds that user's
        blob store, shared with the user's other jails (made at that size on first use); if
        the launcher cannot give it one, the jail's store_error says why."""
        limits = limits or JailLimits()
        limits.validate()
        if not weaken <= WEAKENINGS:
            raise SandboxError(f"unknown weakenings {sorted(weaken - WEAKENINGS)}")
        if image not in self.images:
            raise SandboxError(
                f"no toolchain image named {image!r} (have: {', '.join(self.images)})"
            )
        request = {"op": "create", "image": image, "limits": limits.to_dict()}
        request["weaken"] = sorted(weaken)
        if store_for is not None:
            request["store"] = {"user": store_for[0], "bytes": store_for[1]}
        reply, fds = self._request(request, max_fds=1)
        if len(fds) != 1:
            raise SandboxError("the launcher sent no channel to the jail")
        return Jail(self, reply, socket.socket(fileno=fds[0]), limits)

    def mount_image(self, name: str, path: str) -> None:
        """Mount another image file as `name` (the launcher takes only files it was given at
        start and *.img files in its image directory)."""
        self._request({"op": "mount_image", "name": name, "path": os.path.abspath(path)})
        self.images = [*self.images, name]

    def retire_image(self, name: str) -> None:
        """No new jail from `name`; jails built from it keep it until they end."""
        self._request({"op": "retire_image", "name": name})
        self.images = [n for n in self.images if n != name]

    @property
    def launcher_exit(self) -> int | None:
        """The launcher's exit status once it has died (None while it runs, or not ours)."""
        return None if self._proc is None else self._proc.poll()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(OSError):
                self._control.close()
        if self._proc is None:  # attached: the process that started the launcher reaps it
            return
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Jail:
    def __init__(
        self, sandbox: Sandbox, info: dict[str, Any], channel: socket.socket, limits: JailLimits
    ) -> None:
        self._sandbox = sandbox
        self.id: int = int(info["jail"])
        self.pid: int = int(info["pid"])  # the jail's init, as the host sees it
        self.uid: int = int(info["uid"])
        self.limits = limits
        self._cgroups: dict[str, str] = dict(info["cgroups"])
        self._channel = channel
        self._workdir: tuple[str, bool] | None = None  # (path, executable)
        self.store_error: str | None = info.get("store_error")
        self._closed = False
        self._broken = False

    # -- running ---------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        inputs: Mapping[str, bytes] | None = None,
        outputs: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        limits: RunLimits | None = None,
        executables: Sequence[str] = (),
    ) -> RunResult:
        """Run argv in the jail with cwd as its working directory (created in the jail, empty
        but for inputs); return its status, output and the wanted output files. Inputs named
        in executables are made executable (the selftest ships its probes that way)."""
        self._check_usable()
        limits = limits or RunLimits()
        limits.validate()
        inputs = dict(inputs or {})
        self.enter_workdir(cwd, executable=bool(executables))
        before = self._counters()
        request = {
            "op": "run",
            "argv": list(argv),
            "env": dict(DEFAULT_ENV if env is None else env),
            "cwd": cwd,
            "inputs": list(inputs),
            "outputs": list(outputs),
            "executables": list(executables),
            "limits": limits.to_dict(),
        }
        max_reply = (
            limits.stdout_bytes
            + limits.stderr_bytes
            + 65536
            + len(outputs) * (limits.output_file_bytes)
        )
        try:
            self._channel.settimeout(LAUNCHER_REQUEST_TIMEOUT)
            wire.send_message(self._channel, request, list(inputs.values()))
            # The init keeps the wall clock; this is only the backstop for a wedged init.
            self._channel.settimeout(limits.wall_seconds + LAUNCHER_REQUEST_TIMEOUT)
            header, blobs = wire.recv_message(self._channel, max_reply)
        except (OSError, wire.WireError) as exc:
            self._broken = True
            raise JailBroken(f"the jail stopped answering: {exc}") from None
        if not header.get("ok"):
            raise SandboxError(str(header.get("error", "the jail refused the job")))
        if header.get("dirty"):
            # The job left files the init could not wipe: no later job may see them.
            self._broken = True
        try:
            return self._result(header, blobs, list(outputs), before)
        except (KeyError, TypeError, ValueError) as exc:
            self._broken = True
            raise JailBroken(f"the jail sent a malformed result: {exc}") from None

    def enter_workdir(self, cwd: str, executable: bool = False) -> None:
        """Give the jail a fresh, empty work dir at cwd (the launcher mounts it) unless the last
        job used the same one: the init wipes it after every job. Nothing in it can be
        executed unless `executable`."""
        self._check_usable()
        if (cwd, executable) == self._workdir:
            return
        previous, self._workdir = self._workdir, None
        try:
            request = {"op": "workdir", "jail": self.id, "path": cwd, "executable": executable}
            self._sandbox._request(request)
        except WorkdirRefused:
            self._workdir = previous
            raise
        except SandboxError:
            # After a previous job, a failed switch may leave its files in reach.
            self._broken = self._broken or previous is not None
            raise
        self._workdir = (cwd, executable)

    def serve_connection(
        self,
        conn: socket.socket,
        handler: str,
        params: dict[str, Any],
        blob: bytes,
        answer: Callable[[dict[str, Any]], dict[str, Any]],
        timeout: float,
    ) -> str | None:
        """Hand a client connection to a connection handler in the jail (see jail_init.py) and
        answer its questions until the connection ends. Returns None for a clean end, or why
        it ended otherwise. `timeout` bounds the wait for each question. Our copy of conn is
        closed once it is handed over: from then on only the jail can read or write it."""
        self._check_usable()
        try:
            self._channel.settimeout(LAUNCHER_REQUEST_TIMEOUT)
            wire.send_message(
                self._channel,
                {"op": "connection", "handler": handler, "params": params},
                [blob],
                fds=[conn.fileno()],
            )
            conn.close()
            while True:
                self._channel.settimeout(timeout)
                header, _ = wire.recv_message(self._channel, 0)
                if header.get("ask") is True:
                    wire.send_message(self._channel, answer(header))
                    continue
                break
        except (OSError, wire.WireError) as exc:
            self._broken = True
            raise JailBroken(f"the jail stopped answering: {exc}") from None
        if not header.get("ok"):
            raise SandboxError(str(header.get("error", "the jail refused the connection")))
        if header.get("dirty"):
            self._broken = True
        error = header.get("error")
        return None if error is None else str(error)[:500]

    def channel(self) -> socket.socket:
        """The init's end, to watch while its question waits (it must not speak meanwhile)."""
        return self._channel

    def job_pids(self) -> list[int]:
        """The host pids of everything in the jail but its init: the running job, if any."""
        return [pid for pid in JailCgroup(self._cgroups).pids() if pid != self.pid]

    def kill_job(self) -> None:
        """Stop the running job at once (its result then says signal 9): every process of the
        jail but its init, each through a pidfd checked to be in the jail (see cgroups)."""
        JailCgroup(self._cgroups).signal_members(signal.SIGKILL, spare={self.pid})

    def set_idle(self, idle: bool) -> None:
        """Run the jail at SCHED_IDLE (or normally again): its init, so every job it starts
        from now on, and the job running now."""
        # Under cgroup v2 with the cpu controller, the jail's group too (cpu.idle): it then
        # weighs least against jailccd's other groups, whatever its processes' policy.
        JailCgroup(self._cgroups).set_idle(idle)
        policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
        for pid in [self.pid, *self.job_pids()]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.sched_setscheduler(pid, policy, os.sched_param(0))
            # Each job is a session of its own, so an autogroup of its own, which the
            # scheduler weighs as one equal of the owner's whatever its policy: lower that too
            # (jobs started later take the init's, see spawn.c).
            with contextlib.suppress(OSError), open(f"/proc/{pid}/autogroup", "w") as f:
                f.write("19" if idle else "0")

    def job_counters(self) -> dict[str, int]:
        """The jail's cgroup counters (CPU, OOM kills, pids-limit hits), peak memory reset."""
        return self._counters()

    def init_isolation_problems(self) -> list[str]:
        """Seen from the host (root: another uid's /proc/PID/fd): what of ours the jail's init
        holds, a terminal or log for stdio or our session (code in it could then type into a
        shell with TIOCSTI), and whether its seccomp filter is on (it parses what clients
        send). `jailccd selftest` runs its other probes unprivileged."""
        problems = []
        null = os.makedev(*DEVICES["null"])
        for fd in (0, 1, 2):
            # The jail's own /dev/null: by its device number, its path is the jail's.
            st = os.stat(f"/proc/{self.pid}/fd/{fd}")
            if not stat.S_ISCHR(st.st_mode) or st.st_rdev != null:
                problems.append(f"fd {fd} is {os.readlink(f'/proc/{self.pid}/fd/{fd}')}")
        with open(f"/proc/{self.pid}/stat") as f:
            if int(f.read().rsplit(")", 1)[1].split()[3]) == os.getsid(0):
                problems.append("it shares the server's session")
        with open(f"/proc/{self.pid}/status") as f:
            if "\nSeccomp:\t2\n" not in f.read():
                problems.append("it runs without its seccomp filter")
        return problems

    @staticmethod
    def limit_hit(before: dict[str, int], after: dict[str, int]) -> str | None:
        """Which cgroup limit a job that failed between the two readings ran into, if any."""
        if after["oom_kill"] > before["oom_kill"]:
            return "memory"
        if after["pids_max_events"] > before["pids_max_events"]:
            return "pids"
        return None

    def _result(
        self, header: dict[str, Any], blobs: list[bytes], wanted: list[str], before: dict[str, int]
    ) -> RunResult:
        names = header["outputs"]
        if len(blobs) != 2 + len(names) or not set(names) <= set(wanted):
            raise ValueError("outputs do not match the request")
        after = self._counters()
        limit = header["limit"]
        signal_number = header["signal"]
        exit_code = header["exit_code"]
        failed = signal_number is not None or exit_code != 0
        if limit is None and failed:
            limit = self.limit_hit(before, after)
        usage = header["usage"]
        return RunResult(
            exit_code=None if exit_code is None else int(exit_code),
            signal=None if signal_number is None else int(signal_number),
            stdout=blobs[0],
            stderr=blobs[1],
            outputs=dict(zip(names, blobs[2:], strict=True)),
            limit=None if limit is None else str(limit),
            usage=ResourceUsage(
                user_seconds=float(usage["user_seconds"]),
                system_seconds=float(usage["system_seconds"]),
                max_rss_bytes=max(int(usage["max_rss_bytes"]), after["memory_peak"]),
                wall_seconds=float(usage["wall_seconds"]),
                jail_cpu_seconds=(after["cpu_ns"] - before["cpu_ns"]) / 1e9,
            ),
        )

    def _counters(self) -> dict[str, int]:
        group = JailCgroup(self._cgroups)
        counters = group.counters()
        with contextlib.suppress(PermissionError):  # not root (the selftest's probes): the
            group.reset_peak()  # peak then counts from the jail's start
        return counters

    def _check_usable(self) -> None:
        if self._closed or self._broken:
            raise SandboxError("the jail is closed" if self._closed else "the jail is broken")

    @property
    def usable(self) -> bool:
        """False once closed, broken, or retired because a job left it dirty."""
        return not (self._closed or self._broken)

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> TeardownReport:
        if self._closed:
            return TeardownReport(seconds=0.0)
        self._closed = True
        with contextlib.suppress(OSError):
            self._channel.close()
        reply, _ = self._sandbox._request({"op": "destroy", "jail": self.id})
        return TeardownReport(seconds=float(reply["seconds"]), leaks=list(reply["leaks"]))

    def __enter__(self) -> Jail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
