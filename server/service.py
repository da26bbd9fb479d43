"""The job service: accept a connection, authenticate and authorize the peer, build (or reuse)
its jail, and hand the connection to that jail, where its jobs are read and run (session.py).

Before the hand-over this process reads only the small, capped hello and handshake frames.
After it, the server answers just two questions per job from the jail (a slot, and the job's
end), so it never parses what an authenticated client sends. A job is: a compiler identity,
compiler arguments, the working directory path, the preprocessed input and optional extra
files, and whether to stop at assembly. A result is: exit status or signal, stdout, stderr, the
output file, resource use. Nothing else crosses the wire.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from jailcc import __version__
from jailcc.sandbox.api import Jail, JailBroken, Sandbox, SandboxError
from jailcc.sandbox.spec import JailLimits, MiB, RunLimits

from . import protocol as proto
from . import session
from .admission import Busy, Slots, measure_speed
from .catalog import Catalog, Offer
from .jail_cache import JailCache
from .local_auth import LocalAuthorizer, Peer, unix_peer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .kerberos import KerberosAcceptor

log = logging.getLogger("jailccd")

HANDSHAKE_TIMEOUT = 10.0
# How long the server waits for the jail's next question: a connection may idle between jobs
# and a job may run its whole wall clock; the jail's own timeouts end both before this.
QUESTION_TIMEOUT = session.IDLE_TIMEOUT + 60.0


class PrincipalAuthorizer:
    """What the service needs of an authorization source for Kerberos principals (authz.py)."""

    def allowed(self, principal: str) -> bool:  # pragma: no cover - an interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - an interface
        raise NotImplementedError


@dataclass
class ServiceConfig:
    slots: int
    max_connections: int = 256
    max_input_bytes: int = 128 * MiB
    jail_limits: JailLimits = field(default_factory=JailLimits)
    run_limits: RunLimits = field(default_factory=RunLimits)
    # Kerberos on TCP: the acceptor, and who may compile.
    kerberos: KerberosAcceptor | None = None
    principals: PrincipalAuthorizer | None = None
    max_queue: int = 0  # jobs that may wait for a slot before "busy"; 0: 4 x slots, 8 at least
    speed: float | None = None  # this server's relative speed; None: measure it


class Refused(Exception):
    """The peer may not go on; `code` and the message go back to it in an ERROR frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class JobService:
    def __init__(
        self, sandbox: Sandbox, catalog: Catalog, authorizer: LocalAuthorizer, config: ServiceConfig
    ) -> None:
        if (config.kerberos is None) != (config.principals is None):
            raise ValueError("Kerberos needs an authorization source, and only with Kerberos")
        self.sandbox = sandbox
        self.catalog = catalog
        self.authorizer = authorizer
        self.config = config
        self.slots = Slots(config.slots, config.max_queue or max(8, 4 * config.slots))
        self.speed = config.speed if config.speed is not None else measure_speed()
        self.active: dict[int, _Questions] = {}  # by jail id: connections in a jail now
        self.active_lock = threading.Lock()
        self.idle_priority = False
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
        if self.config.kerberos is not None:
            assert self.config.principals is not None
            log.info(
                "listening on tcp:%s:%d as %s, allowing %s",
                host,
                bound,
                self.config.kerberos.principal,
                self.config.principals.describe(),
            )
        else:
            log.warning(
                "listening on tcp:%s:%d WITHOUT AUTHENTICATION (--insecure): anyone who can"
                " reach this port can run compiles here",
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
                        if conn.family != socket.AF_UNIX:
                            # Frames are written whole; Nagle would hold the jail's READY back
                            # until the client's delayed ACK of the last AUTH frame (40 ms).
                            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        peer: Peer | str = f"{addr[0]}:{addr[1]}" if conn.family != socket.AF_UNIX else "unix"
        jail: Jail | None = None
        offer: Offer | None = None
        ended: str | None = "not started"
        try:
            with self._stats_lock:
                self.stats["connections"] += 1
            deadline = time.monotonic() + HANDSHAKE_TIMEOUT
            peer, offer, auth, token, hello = self._handshake(conn, peer, deadline)
            jail = self.jail_cache.take(str(peer), offer.image)
            if jail is None:
                jail = self.sandbox.create_jail(offer.image, self.config.jail_limits)
            params = session.session_params(
                auth=auth,
                identity=offer.compiler.identity,
                compiler_path=offer.compiler.path,
                compiler_kind=offer.compiler.kind,
                image=offer.image,
                max_input_bytes=self.config.max_input_bytes,
                run_limits=self.config.run_limits,
                hello=hello,
            )
            questions = _Questions(self, jail, str(peer), offer.image)
            try:
                ended = jail.serve_connection(
                    conn, session.HANDLER, params, token, questions.answer, QUESTION_TIMEOUT
                )
            finally:
                questions.forget()
            if ended is not None:
                log.warning("connection from %s ended: %s", peer, ended)
        except Refused:
            pass  # told the peer and logged by _handshake
        except proto.ProtocolError as exc:
            log.warning("protocol error from %s: %s", peer, exc)
            with contextlib.suppress(OSError, proto.ProtocolError):
                proto.send(conn, proto.ERROR, {"code": "protocol", "message": str(exc)})
        except JailBroken as exc:
            log.error("jail broke user=%s: %s", peer, exc)
        except (OSError, SandboxError) as exc:
            log.warning("connection from %s ended: %s", peer, exc)
        finally:
            if jail is not None:
                if ended is None and offer is not None and jail.usable:
                    self.jail_cache.give_back(str(peer), offer.image, jail)
                else:
                    self.jail_cache.discard(jail)
            conn.close()
            self.connections.release()

    def _handshake(
        self, conn: socket.socket, peer: Peer | str, deadline: float
    ) -> tuple[Peer | str, Offer, str, bytes, dict[str, Any]]:
        """Hello, authentication, authorization: (peer, offer, auth kind, exported context,
        the hello the jail greets the client with). Raises Refused after telling the peer."""

        def recv(frame_cap: int) -> tuple[int, dict[str, Any], list[bytes]]:
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            return proto.recv(conn, frame_cap)

        def refuse(code: str, message: str, sealed: proto.Channel | None = None) -> Refused:
            log.info("refused %s: %s: %s", peer, code, message)
            with contextlib.suppress(OSError, proto.ProtocolError):
                conn.settimeout(5.0)
                (sealed or proto.Channel(conn)).send(
                    proto.ERROR, {"code": code, "message": message}
                )
            return Refused(code, message)

        frame_type, header, _ = recv(proto.MAX_HELLO_FRAME)
        if frame_type != proto.HELLO:
            raise proto.ProtocolError("expected HELLO")
        if header.get("protocol") != proto.PROTOCOL_VERSION:
            raise refuse(
                "version",
                f"protocol {header.get('protocol')!r} not supported; this server speaks"
                f" {proto.PROTOCOL_VERSION}",
            )
        if conn.family == socket.AF_UNIX:
            peer = unix_peer(conn)
            if not self.authorizer.allowed(peer):
                raise refuse(
                    "unauthorized",
                    f"{peer.user} may not use this server: ask its admin to add you"
                    " (jailccd --allow-user/--allow-group)",
                )
        offer = self.catalog.by_identity.get(str(header.get("identity")))
        if offer is None:
            raise refuse("image", "no toolchain image here matches your compiler")
        greeting = proto.hello_header(
            "server",
            server=f"jailccd {__version__}",
            images=self.catalog.describe(),
            slots=self.config.slots,
            image=offer.image,
            load=self.load(),
        )
        if isinstance(peer, Peer):
            proto.send(conn, proto.HELLO, {**greeting, "auth": "local"})
            return peer, offer, "local", b"", greeting
        kerberos = self.config.kerberos
        if kerberos is None:  # --insecure
            if not self.authorizer.allowed(Peer("tcp", str(peer))):
                raise refuse("unauthorized", "this server does not take unauthenticated TCP")
            proto.send(conn, proto.HELLO, {**greeting, "auth": "none"})
            return peer, offer, "none", b"", greeting
        proto.send(conn, proto.HELLO, {"protocol": proto.PROTOCOL_VERSION, "auth": "gssapi"})

        def next_token(ours: bytes) -> bytes:
            proto.send(conn, proto.AUTH, {}, [ours])
            return _auth_token(recv(proto.MAX_AUTH_TOKEN + 4096))

        from .authz import AuthorizationUnavailable
        from .kerberos import AuthenticationFailed

        try:
            principal, context, last = kerberos.accept(
                _auth_token(recv(proto.MAX_AUTH_TOKEN + 4096)), next_token, proto.MAX_AUTH_ROUNDS
            )
        except AuthenticationFailed as exc:
            raise refuse("unauthenticated", f"Kerberos authentication failed: {exc}") from None
        proto.send(conn, proto.AUTH, {}, [last or b""])
        sealed = proto.SealedChannel(conn, context)
        assert self.config.principals is not None
        try:
            allowed = self.config.principals.allowed(principal)
        except AuthorizationUnavailable as exc:
            log.error("authorization unavailable for %s: %s", principal, exc)
            raise refuse(
                "unavailable",
                "the server cannot check who may compile right now (its directory is down);"
                " try later",
                sealed,
            ) from None
        if not allowed:
            raise refuse(
                "unauthorized",
                f"{principal} may not use this server: ask its admin to add you",
                sealed,
            )
        log.info("authenticated %s from %s", principal, peer)
        # Sequence numbers continue in the jail: it sends the first sealed frame there.
        return principal, offer, "gssapi", context.export(), greeting

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    # -- load and the desktop owner ---------------------------------------------------------

    def load(self) -> dict[str, Any]:
        """The load report sent with every READY and RESULT."""
        return self.slots.report(self.speed)

    def yield_to_owner(self, slots: int, owner_busy: bool, idle: bool, evict: bool) -> None:
        """Apply the desktop policy: fewer slots, SCHED_IDLE for the jails, and eviction of
        running jobs (their clients re-run them elsewhere)."""
        self.slots.set_limit(slots, owner_busy)
        with self.active_lock:
            active = list(self.active.values())
        if idle != self.idle_priority:
            self.idle_priority = idle
            for questions in active:
                questions.jail.set_idle(idle)
        if evict:
            for questions in active:
                questions.evict()


def _auth_token(frame: tuple[int, dict[str, Any], list[bytes]]) -> bytes:
    frame_type, _, blobs = frame
    if frame_type != proto.AUTH or len(blobs) != 1 or len(blobs[0]) > proto.MAX_AUTH_TOKEN:
        raise proto.ProtocolError("expected an AUTH frame with one token")
    return blobs[0]


class _Questions:
    """The server's answers to one connection's jail: a slot (and the working directory) when a
    job starts; the slot back, the cgroup's verdict and the log line when it ends."""

    def __init__(self, service: JobService, jail: Jail, user: str, image: str) -> None:
        self.service, self.jail, self.user, self.image = service, jail, user, image
        self.holding = False
        self.evicted = False
        self.before: dict[str, int] = {}
        with service.active_lock:
            service.active[jail.id] = self
        if service.idle_priority:
            jail.set_idle(True)

    def evict(self) -> None:
        if self.holding:
            self.evicted = True
            self.jail.kill_job()

    def answer(self, question: dict[str, Any]) -> dict[str, Any]:
        what = question.get("what")
        if what == "start" and not self.holding:
            try:
                self.service.slots.acquire()
            except Busy as exc:
                return {"ok": False, "error": f"busy: {exc}", "code": "busy"}
            self.holding = True
            self.evicted = False
            try:
                self.jail.enter_workdir(str(question.get("cwd")))
            except SandboxError as exc:
                self.release()
                self.service._count("rejected")
                # A jail that can no longer be trusted ends the connection; the next one
                # gets a fresh jail.
                return {"ok": False, "error": str(exc)[:300], "end": not self.jail.usable}
            self.before = self.jail.job_counters()
            return {"ok": True}
        if what == "done" and self.holding:
            after = self.jail.job_counters()
            self.release()
            limit = self.jail.limit_hit(self.before, after) if question.get("failed") else None
            status = _printable(question.get("status"), 40)
            self.service._count("jobs" if status == "exit:0" else "failed")
            log.info(
                "job user=%s image=%s jail=%d source=%s status=%s queue=%.1fms run=%.1fms",
                self.user,
                self.image,
                self.jail.id,
                _printable(question.get("source"), 200),
                status + (f" limit:{limit}" if limit else ""),
                _number(question.get("queue")) * 1000,
                _number(question.get("run")) * 1000,
            )
            return {
                "limit": limit,
                "jail_cpu": (after["cpu_ns"] - self.before["cpu_ns"]) / 1e9,
                "evicted": self.evicted,
                "load": self.service.load(),
            }
        if what == "refused":
            self.service._count("rejected")
            log.info(
                "job refused user=%s code=%s: %s",
                self.user,
                _printable(question.get("code"), 20),
                _printable(question.get("message"), 300),
            )
            return {}
        raise SandboxError(f"the jail asked out of turn: {_printable(what, 20)}")

    def release(self) -> None:
        if self.holding:
            self.holding = False
            self.service.slots.release()

    def forget(self) -> None:
        self.release()
        with self.service.active_lock:
            self.service.active.pop(self.jail.id, None)


def _printable(value: Any, limit: int) -> str:
    """A jail's words for the log: one line, bounded, no control characters."""
    text = str(value)[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
