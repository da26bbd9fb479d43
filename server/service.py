"""The job service: accept a connection, identify and authorize the peer, then run its jobs one
at a time in the connection's own jail; tear the jail down when the connection ends.

A job is: a compiler identity (which picks the image and the compiler inside it), compiler
arguments (checked by compiler_policy), the working directory path, the preprocessed input and
optional extra files, and whether to stop at assembly. A result is: exit status or signal,
stdout, stderr, the output file, resource use. Nothing else crosses the wire.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from jailcc import __version__
from jailcc.sandbox.api import Jail, JailBroken, Sandbox, SandboxError
from jailcc.sandbox.spec import JailLimits, MiB, RunLimits, RunResult

from . import compiler_policy as policy
from . import protocol as proto
from .catalog import Catalog
from .jail_cache import JailCache
from .local_auth import LocalAuthorizer, Peer, unix_peer

log = logging.getLogger("jailccd")

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 600.0
SEND_TIMEOUT = 60.0
# The input's name in the jail: the client's source base name with .i/.ii (keeps diagnostics
# and any name-derived output the same as a local compile's).
_INPUT_NAME = re.compile(r"^[A-Za-z0-9_+.,=@%-]{1,200}\.(i|ii)$")


@dataclass
class ServiceConfig:
    slots: int
    max_connections: int = 256
    max_input_bytes: int = 128 * MiB
    jail_limits: JailLimits = field(default_factory=JailLimits)
    run_limits: RunLimits = field(default_factory=RunLimits)


class JobRejected(Exception):
    """A job the server will not run; the client is told why and compiles locally."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class JobService:
    def __init__(
        self, sandbox: Sandbox, catalog: Catalog, authorizer: LocalAuthorizer, config: ServiceConfig
    ) -> None:
        self.sandbox = sandbox
        self.catalog = catalog
        self.authorizer = authorizer
        self.config = config
        self.slots = threading.BoundedSemaphore(config.slots)
        self.connections = threading.BoundedSemaphore(config.max_connections)
        self.listeners: list[socket.socket] = []
        self.jail_cache = JailCache(
            config.slots, lambda leaks: log.error("jail teardown left: %s", leaks)
        )
        self._stopping = threading.Event()
        self.failed = False  # stopped because something it cannot do without died
        self.stats = {"jobs": 0, "failed": 0, "rejected": 0, "connections": 0}
        self._stats_lock = threading.Lock()

    # -- listening -------------------------------------------------------------------------

    def listen_unix(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # a stale socket from a server that is gone
            else:
                raise OSError(f"another jailccd is serving {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        # Anyone may connect; who may compile is decided from the peer's credentials.
        os.chmod(path, 0o666)
        sock.listen(128)
        self.listeners.append(sock)
        log.info("listening on unix:%s, allowing %s", path, self.authorizer.describe())

    def listen_tcp(self, host: str, port: int) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        self.listeners.append(sock)
        bound = sock.getsockname()[1]
        log.warning(
            "listening on tcp:%s:%d WITHOUT AUTHENTICATION (--insecure): anyone who can reach"
            " this port can run compiles here",
            host,
            bound,
        )
        return bound

    def serve_forever(self) -> None:
        selector = selectors.DefaultSelector()
        for sock in self.listeners:
            selector.register(sock, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                status = self.sandbox.launcher_exit
                if status is not None:
                    # Without it no jail can be built: stop, so a supervisor restarts us, rather
                    # than refuse every job while looking alive.
                    log.critical(
                        "the jail launcher died (status %s): stopping; restart jailccd", status
                    )
                    self.failed = True
                    break
                for key, _ in selector.select(timeout=0.5):
                    listener = key.fileobj
                    assert isinstance(listener, socket.socket)
                    try:
                        conn, addr = listener.accept()
                    except OSError as exc:
                        log.warning("accept failed: %s", exc)
                        continue
                    self._start_connection(conn, addr)
        finally:
            selector.close()

    def stop(self) -> None:
        self._stopping.set()
        self.jail_cache.close()
        for sock in self.listeners:
            with contextlib.suppress(OSError):
                if sock.family == socket.AF_UNIX:
                    os.unlink(sock.getsockname())
            sock.close()

    def _start_connection(self, conn: socket.socket, addr: Any) -> None:
        if not self.connections.acquire(blocking=False):
            with contextlib.suppress(OSError):
                conn.settimeout(1.0)
                proto.send(conn, proto.ERROR, {"code": "busy", "message": "too many connections"})
            conn.close()
            return
        thread = threading.Thread(target=self._connection, args=(conn, addr), daemon=True)
        thread.start()

    # -- one connection --------------------------------------------------------------------

    def _connection(self, conn: socket.socket, addr: Any) -> None:
        peer = Peer("tcp", f"{addr[0]}:{addr[1]}") if conn.family != socket.AF_UNIX else None
        jail: Jail | None = None
        jail_image: str | None = None
        clean_end = False
        try:
            if peer is None:
                peer = unix_peer(conn)
            with self._stats_lock:
                self.stats["connections"] += 1
            conn.settimeout(HANDSHAKE_TIMEOUT)
            if not self._handshake(conn, peer):
                return
            while True:
                conn.settimeout(IDLE_TIMEOUT)
                try:
                    frame_type, header, blobs = proto.recv(
                        conn,
                        self.config.max_input_bytes + 1024 * 1024,
                        max_raw=4 * self.config.max_input_bytes,
                    )
                except proto.ConnectionClosed:
                    clean_end = True  # between jobs: the jail is wiped and may serve again
                    return
                if frame_type != proto.JOB:
                    raise proto.ProtocolError(f"expected JOB, got {proto.FRAME_NAMES[frame_type]}")
                conn.settimeout(SEND_TIMEOUT)
                try:
                    offer_image, argv, job = self._check_job(header, blobs)
                except (JobRejected, policy.PolicyError) as exc:
                    code = exc.code if isinstance(exc, JobRejected) else "policy"
                    self._count("rejected")
                    log.info("job refused user=%s code=%s: %s", peer, code, exc)
                    proto.send(
                        conn,
                        proto.ERROR,
                        {"code": code, "message": str(exc), "id": header.get("id")},
                    )
                    continue
                if jail is not None and not jail.usable:  # broken, or retired dirty
                    jail.close()
                    jail = None
                if jail is None or jail_image != offer_image:
                    if jail is not None:
                        self.jail_cache.give_back(str(peer), jail_image or "", jail)
                        jail = None
                    jail = self.jail_cache.take(str(peer), offer_image)
                    if jail is None:
                        jail = self.sandbox.create_jail(offer_image, self.config.jail_limits)
                    jail_image = offer_image
                try:
                    self._run_job(conn, peer, jail, offer_image, argv, job)
                except JailBroken as exc:
                    log.error("jail broke user=%s image=%s: %s", peer, offer_image, exc)
                    proto.send(
                        conn,
                        proto.ERROR,
                        {
                            "code": "internal",
                            "id": job["id"],
                            "message": "the jail failed; try again",
                        },
                    )
                    jail.close()
                    jail = None
        except proto.ProtocolError as exc:
            log.warning("protocol error from %s: %s", peer or addr, exc)
            with contextlib.suppress(OSError, proto.ProtocolError):
                proto.send(conn, proto.ERROR, {"code": "protocol", "message": str(exc)})
        except (OSError, SandboxError) as exc:
            log.warning("connection from %s ended: %s", peer or addr, exc)
        finally:
            if jail is not None:
                if clean_end and jail_image is not None:
                    self.jail_cache.give_back(str(peer), jail_image, jail)
                else:
                    self.jail_cache.discard(jail)
            conn.close()
            self.connections.release()

    def _handshake(self, conn: socket.socket, peer: Peer) -> bool:
        frame_type, header, _ = proto.recv(conn, proto.MAX_HELLO_FRAME)
        if frame_type != proto.HELLO:
            raise proto.ProtocolError("expected HELLO")
        if header.get("protocol") != proto.PROTOCOL_VERSION:
            proto.send(
                conn,
                proto.ERROR,
                {
                    "code": "version",
                    "message": f"protocol {header.get('protocol')!r} not supported; this server"
                    f" speaks {proto.PROTOCOL_VERSION}",
                },
            )
            log.info("refused %s: protocol version %r", peer, header.get("protocol"))
            return False
        if not self.authorizer.allowed(peer):
            proto.send(
                conn,
                proto.ERROR,
                {
                    "code": "unauthorized",
                    "message": f"{peer.user} may not use this server: ask its admin to add you"
                    " (jailccd --allow-user/--allow-group)",
                },
            )
            log.info("refused %s: not authorized", peer)
            return False
        proto.send(
            conn,
            proto.HELLO,
            proto.hello_header(
                "server",
                server=f"jailccd {__version__}",
                images=self.catalog.describe(),
                slots=self.config.slots,
            ),
        )
        return True

    def _check_job(self, header: dict[str, Any], blobs: list[bytes]) -> tuple[str, list[str], dict]:
        job_id = header.get("id")
        identity = header.get("identity")
        cwd = header.get("cwd")
        input_name = header.get("input")
        mode = header.get("mode")
        files = header.get("files", [])
        if not isinstance(job_id, int) or not isinstance(identity, str):
            raise JobRejected("protocol", "a job needs an id and a compiler identity")
        if not isinstance(cwd, str) or not cwd.startswith("/") or len(cwd) > 1024:
            raise JobRejected("protocol", "a job needs an absolute working directory")
        if not isinstance(input_name, str) or not _INPUT_NAME.match(input_name):
            raise JobRejected("protocol", "bad input file name")
        if mode not in ("c", "S"):
            raise JobRejected("protocol", "mode must be c or S")
        if (
            not isinstance(files, list)
            or len(files) != len(blobs) - 1
            or not all(isinstance(f, str) for f in files)
        ):
            raise JobRejected("protocol", "extra files do not match the data sent")
        offer = self.catalog.by_identity.get(identity)
        if offer is None:
            raise JobRejected("image", "no toolchain image here matches your compiler")
        args = policy.check_args(header.get("args"))
        env = policy.job_env(header.get("env"))
        steps = header.get("steps")
        if steps not in (None, policy.DEBUG_EXACT) or (steps and offer.compiler.kind != "gcc"):
            raise JobRejected("protocol", f"unknown job steps {steps!r}")
        stem = input_name.rsplit(".", 1)[0]
        output = f"{stem}.{'o' if mode == 'c' else 's'}"
        base = [offer.compiler.path, *args]
        argv = [*base, f"-{mode}", input_name, "-o", output]
        inputs = {input_name: blobs[0], **dict(zip(files, blobs[1:], strict=True))}
        job = {
            "id": job_id,
            "cwd": cwd,
            "inputs": inputs,
            "output": output,
            "env": env,
            "source": str(header.get("source", input_name))[:200],
            "steps": steps,
            "base": base,
            "input": input_name,
            "mode": mode,
        }
        return offer.image, argv, job

    def _run_job(
        self,
        conn: socket.socket,
        peer: Peer,
        jail: Jail,
        image: str,
        argv: list[str],
        job: dict[str, Any],
    ) -> None:
        queued = time.monotonic()
        with self.slots:
            started = time.monotonic()
            try:
                if job["steps"] == policy.DEBUG_EXACT:
                    result = self._run_debug_exact(jail, job)
                else:
                    result = jail.run(
                        argv,
                        cwd=job["cwd"],
                        inputs=job["inputs"],
                        outputs=[job["output"]],
                        env=job["env"],
                        limits=self.config.run_limits,
                    )
            except JailBroken:
                raise
            except SandboxError as exc:
                # A request the jail cannot serve (e.g. a working directory inside the
                # image): the client compiles locally.
                self._count("rejected")
                log.info(
                    "job refused user=%s image=%s source=%s: %s", peer, image, job["source"], exc
                )
                proto.send(
                    conn, proto.ERROR, {"code": "jail", "id": job["id"], "message": str(exc)}
                )
                return
        finished = time.monotonic()
        status = (
            f"limit:{result.limit}"
            if result.limit
            else f"signal:{result.signal}"
            if result.signal
            else f"exit:{result.exit_code}"
        )
        self._count("jobs" if result.ok else "failed")
        log.info(
            "job user=%s image=%s jail=%d source=%s status=%s queue=%.1fms run=%.1fms",
            peer,
            image,
            jail.id,
            job["source"],
            status,
            (started - queued) * 1000,
            (finished - started) * 1000,
        )
        output = result.outputs.get(job["output"])
        proto.send(
            conn,
            proto.RESULT,
            {
                "id": job["id"],
                "exit_code": result.exit_code,
                "signal": result.signal,
                "limit": result.limit,
                "has_output": output is not None,
                "usage": {
                    "jail_cpu": result.usage.jail_cpu_seconds,
                    "user": result.usage.user_seconds,
                    "sys": result.usage.system_seconds,
                    "max_rss": result.usage.max_rss_bytes,
                },
                "times": {"queue": started - queued, "run": finished - started},
            },
            [result.stdout, result.stderr, output or b""],
            compress=[False, False, True],
        )

    def _run_debug_exact(self, jail: Jail, job: dict[str, Any]) -> RunResult:
        """gcc -g with debug info exactly a local compile's (see compiler_policy)."""
        base, name, limits, env = job["base"], job["input"], self.config.run_limits, job["env"]

        def run(args: list[str], inputs: dict[str, bytes], output: str) -> RunResult:
            return jail.run(
                [*base, *args],
                cwd=job["cwd"],
                inputs=inputs,
                outputs=[output],
                env=env,
                limits=limits,
            )

        first = run(["-fdirectives-only", "-S", name, "-o", "a.s"], job["inputs"], "a.s")
        if not first.ok:
            return first  # a compile error or a limit: the answer as it stands
        lang = "c++" if name.endswith(".ii") else "c"
        second = run(
            ["-nostdinc", "-x", lang, "-S", name, "-o", "b.s"], {name: job["inputs"][name]}, "b.s"
        )
        if not second.ok or "b.s" not in second.outputs:
            raise SandboxError("the second compile for exact debug info failed")
        try:
            merged = policy.transplant_debug_strings(
                first.outputs["a.s"].decode("utf-8", "surrogateescape"),
                second.outputs["b.s"].decode("utf-8", "surrogateescape"),
            ).encode("utf-8", "surrogateescape")
        except policy.TransplantError as exc:
            raise SandboxError(f"exact debug info: {exc}") from None
        if job["mode"] == "S":
            first.outputs = {job["output"]: merged}
            return first
        assembled = run(
            ["-c", "merged.s", "-o", job["output"]], {"merged.s": merged}, job["output"]
        )
        if not assembled.ok:
            raise SandboxError("assembling the exact-debug-info assembly failed")
        first.outputs = assembled.outputs
        return first

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1
