"""The privileged monitor: what jailccd's root process answers its unprivileged network service.

    jailccd (root, this module)      authentication and authorization, jails (by the launcher)
     +- launcher (root)              makes and unmakes jails (sandbox/)
     +- network service (own uid)    accepts, parses every byte before authentication,
                                     admission, status, metrics, mDNS, the owner monitor (server/)

As in OpenSSH's privilege separation, the service may only ask what the tables below list, each
request only in the states it names, each message capped (core/wire.py); anything else ends
that connection. So a service taken over by a peer's bytes still cannot get a jail for anyone
the monitor did not authenticate and authorize itself: it reads SO_PEERCRED from its own copy
of the client's socket, runs the GSSAPI accept on the tokens passed to it, asks the principal
file or LDAP, picks the jail, its user, image and limits, and hands the client's socket and the
security context to the jail's init. The service never holds a jail's channel, nor a job
connection's GSSAPI context.

Channels (Unix stream sockets, core/wire.py messages):
- main, one: "open" (a connection whose hello the service has read, so that root holds
  nothing of peers that never send one: its socket, and the end of a socket pair that becomes
  the connection's channel, passed along; not answered, so that opening costs a connection
  no round trip), "catalog", "evict", "idle".
- per connection: on TCP with Kerberos the handshake ("gss_step"), then either "seal" (a
  status answer or a refusal, the one frame that connection gets sealed: it never gets a jail)
  or "serve" (the hand-over: the monitor then relays the jail's questions to the service as
  "ask" messages until the connection ends). A peer on the Unix socket (or, with --insecure,
  on TCP) goes straight to "serve", which first decides on it from SO_PEERCRED read here (or
  its address); the service refuses peers early by the same rule, before reading a byte,
  but only the monitor's decision makes a jail.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from jailcc import wire
from jailcc.jobs import handover
from jailcc.sandbox.api import Jail, JailBroken, Sandbox, SandboxError
from jailcc.sandbox.spec import JailLimits, RunLimits

TYPE_CHECKING = False
if TYPE_CHECKING:
    from jailcc.peer import LocalAuthorizer

    from .authz import Authorizer
    from .catalog import Catalog
    from .jail_cache import JailCache
    from .kerberos import KerberosAcceptor

log = logging.getLogger("jailccd")

# How long the monitor waits for the jail's next question: a connection may idle between jobs
# and a job may run its whole wall clock; the jail's own timeouts end both before this.
QUESTION_TIMEOUT = handover.IDLE_TIMEOUT + 60.0
# How long the service has to answer a relayed question.
ANSWER_TIMEOUT = 30.0
MAX_AUTH_TOKEN = 48 * 1024  # as the wire protocol caps a client's token (core/protocol.py)
MAX_AUTH_ROUNDS = 4
# Blobs of any one request: a GSSAPI token, or a frame to seal (a status answer's header is
# capped by core/wire.py's MAX_HEADER).
MAX_REQUEST_BYTES = wire.MAX_HEADER + 64 * 1024
# The frames the service may have sealed, by their type (core/protocol.py ERROR and STATUS;
# byte 4 of a frame): never READY or RESULT, which only a jail sends.
SEALABLE_FRAMES = frozenset({4, 7})
MAX_REPLY_BYTES = 64 * 1024  # blobs of any one answer from the service (none are expected)


class State(enum.Enum):
    NEW = "new"
    ACCEPTING = "accepting"  # GSSAPI tokens going back and forth
    AUTHORIZED = "authorized"
    REFUSED = "refused"
    NO_JAIL = "no jail"  # it had its one sealed frame: never a jail for it
    SERVING = "serving"


class OutOfTurn(Exception):
    """The service asked something not allowed now: the connection ends."""


@dataclass
class MonitorConfig:
    jail_limits: JailLimits
    run_limits: RunLimits
    max_input_bytes: int
    max_connections: int  # connections the service may have open here at once
    store_bytes: int = handover.STORE_BYTES  # each jail's store of tree jobs' blobs
    # The Unix socket jailccd serves (None: none): a connection on another one, which the
    # service could have made itself, would have its listener's SO_PEERCRED (root's, say).
    unix_socket: str | None = None


@dataclass
class _Connection:
    id: int  # the service's number for the connection ("open"; "evict" names it)
    client: socket.socket  # the peer's socket, as the service accepted it
    channel: socket.socket  # to the service, this connection's requests
    state: State = State.NEW
    user: str = ""  # a user name, a principal, or (--insecure) an address
    auth: str = ""  # "local", "gssapi" or "none"
    context: Any = None  # the accepted GSSAPI context
    rounds: int = 0
    jail: Jail | None = None
    holding: bool = False  # a job runs: the jail asked "start", not yet "done"
    before: dict[str, int] = field(default_factory=dict)


class Monitor:
    def __init__(
        self,
        sandbox: Sandbox,
        catalog: Catalog,
        jail_cache: JailCache,
        local: LocalAuthorizer,
        config: MonitorConfig,
        kerberos: KerberosAcceptor | None = None,
        principals: Authorizer | None = None,
    ) -> None:
        self.sandbox, self.catalog, self.jail_cache = sandbox, catalog, jail_cache
        self.local, self.kerberos, self.principals = local, kerberos, principals
        self.config = config
        self.teardowns: list[float] = []  # seconds, reported to the service with "end"
        self.connections: dict[int, _Connection] = {}  # by the service's number for it
        self.lock = threading.Lock()
        self.idle = False
        self.stopping = False  # jailccd stops: its jails go down under their connections
        # A thread per open connection, kept for the next one: starting a thread is a good
        # part of a connection's set-up. The cap on connections bounds the pool.
        self.threads = ThreadPoolExecutor(config.max_connections, thread_name_prefix="conn")

    # -- the main channel --------------------------------------------------------------------

    def serve(self, main: socket.socket) -> None:
        """Answer the service's main channel until it closes."""
        while True:
            try:
                header, _, fds = wire.recv_message_with_fds(main, 0, 2)
            except wire.PeerClosed:
                return
            except (OSError, wire.WireError) as exc:
                # Nonsense on the main channel: stop answering; the service then stops, and
                # jailccd with it (fail closed).
                log.error("network service: main channel: %s: closing it", exc)
                main.close()
                return
            op = header.get("op")
            try:
                if op == "open":
                    self._open(header, fds)  # answered on the connection's own channel
                    continue
                entry = MAIN_REQUESTS.get(op) if isinstance(op, str) else None
                if entry is None or fds:
                    raise OutOfTurn(f"unknown request {str(op)[:40]!r} or wrong descriptors")
                reply = entry(self, header)
            except OutOfTurn as exc:
                log.error("network service: %s", exc)
                reply = {"ok": False, "error": str(exc)}
            except Exception:  # a request that breaks the monitor: fail closed, as above
                log.exception("network service: main channel: %s: closing it", str(op)[:40])
                main.close()
                return
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        socket.close(fd)
            wire.send_message(main, reply)

    def _open(self, header: dict[str, Any], fds: list[int]) -> None:
        """A new connection: fds are the client's socket and the connection's channel (our
        copies: the caller closes the originals). Refusals go on the channel, if it is one."""
        if len(fds) != 2:
            log.error("network service: open without a socket and a channel")
            return
        copies: list[int] = []
        try:
            copies.extend(socket.dup(fd) for fd in fds)
        except OSError as exc:  # out of descriptors: this connection fails, not jailccd
            for fd in copies:
                os.close(fd)
            log.error("network service: open: %s", exc)
            return
        sockets: list[socket.socket] = []
        try:
            sockets.extend(socket.socket(fileno=fd) for fd in copies)
        except OSError:  # (not a socket: the copy is not the socket's to close)
            for sock in sockets:
                sock.close()
            for fd in copies[len(sockets) :]:
                os.close(fd)
            log.error("network service: open: not two sockets")  # (open is never answered)
            return
        client, channel = sockets
        conn = None
        try:
            if channel.family != socket.AF_UNIX or channel.type != socket.SOCK_STREAM:
                raise OutOfTurn("open: the channel is not a Unix stream socket")
            if (
                client.type != socket.SOCK_STREAM
                or client.family not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)
                # A listening socket's SO_PEERCRED names whoever listened (root): never a peer.
                or client.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            ):
                raise OutOfTurn("open: not a connected stream socket")
            if client.family == socket.AF_UNIX and client.getsockname() != self.config.unix_socket:
                raise OutOfTurn("open: a Unix socket not accepted on jailccd's own")
            number = header.get("conn")
            with self.lock:
                if not isinstance(number, int) or number in self.connections:
                    raise OutOfTurn(f"open: connection number {str(number)[:20]} taken or bad")
                if len(self.connections) >= self.config.max_connections:
                    raise OutOfTurn("too many connections")
                conn = _Connection(number, client, channel)
                self.connections[number] = conn
        except OutOfTurn as exc:
            log.error("network service: %s", exc)
            with contextlib.suppress(OSError, wire.WireError):
                channel.settimeout(0)
                wire.send_message(channel, {"ok": False, "error": str(exc)})
            client.close()
            channel.close()
            return
        self.threads.submit(self._connection, conn)

    def _catalog(self, _header: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, **catalog_snapshot(self)}

    def _evict(self, header: dict[str, Any]) -> dict[str, Any]:
        """Kill the running job of a connection (the desktop owner needs the machine)."""
        number = header.get("conn")
        conn = self.connections.get(number) if isinstance(number, int) else None
        if conn is not None and conn.holding and conn.jail is not None:
            conn.jail.kill_job()
        return {"ok": True}

    def _set_idle(self, header: dict[str, Any]) -> dict[str, Any]:
        """Every jail's jobs at SCHED_IDLE (or normal again), now and for new jails."""
        self.idle = header.get("idle") is True
        with self.lock:
            jails = [c.jail for c in self.connections.values() if c.jail is not None]
        for jail in jails:
            with contextlib.suppress(SandboxError, OSError):
                jail.set_idle(self.idle)
        return {"ok": True}

    # -- one connection ----------------------------------------------------------------------

    def _connection(self, conn: _Connection) -> None:
        try:
            while True:
                try:
                    header, blobs = wire.recv_message(conn.channel, MAX_REQUEST_BYTES)
                except wire.PeerClosed:
                    return
                op = header.get("op")
                entry = REQUESTS.get(op) if isinstance(op, str) else None
                if entry is None or conn.state not in entry[0]:
                    raise OutOfTurn(
                        f"connection {conn.id}: {str(op)[:40]!r} out of turn"
                        f" (state: {conn.state.value})"
                    )
                reply, out_blobs = entry[1](self, conn, header, blobs)
                wire.send_message(conn.channel, reply, out_blobs)
        except OutOfTurn as exc:
            log.error("network service: %s: connection closed", exc)
            with contextlib.suppress(OSError, wire.WireError):
                wire.send_message(conn.channel, {"ok": False, "error": str(exc)})
        except (OSError, wire.WireError) as exc:
            log.warning("network service: connection %d: %s", conn.id, exc)
        except Exception:
            log.exception("monitor: connection %d", conn.id)  # a bug here: that connection ends
        finally:
            with self.lock:
                self.connections.pop(conn.id, None)
            conn.client.close()
            conn.channel.close()

    def _authorize_without_kerberos(self, conn: _Connection) -> bool:
        """A peer on the Unix socket (the kernel names it: SO_PEERCRED, read here from our own
        copy of the socket), or with --insecure one on TCP known by its address: decide."""
        from jailcc.peer import Peer, unix_peer

        if conn.client.family == socket.AF_UNIX:
            peer = unix_peer(conn.client)
            conn.user, conn.auth = peer.user, "local"
        elif self.kerberos is None:
            host, port = conn.client.getpeername()[:2]
            peer = Peer("tcp", f"{host}:{port}")
            conn.user, conn.auth = peer.user, "none"
        else:
            raise OutOfTurn(f"connection {conn.id}: serve out of turn, before Kerberos")
        allowed = self.local.allowed(peer)
        conn.state = State.AUTHORIZED if allowed else State.REFUSED
        return allowed

    def _gss_step(
        self, conn: _Connection, _header: dict[str, Any], blobs: list[bytes]
    ) -> tuple[dict, list[bytes]]:
        """One GSSAPI accept step on the client's token; at the end, who it is and whether
        they may compile."""
        from .authz import AuthorizationUnavailable
        from .kerberos import AuthenticationFailed

        if self.kerberos is None or conn.client.family == socket.AF_UNIX:
            raise OutOfTurn(f"connection {conn.id}: gss_step without Kerberos")
        if len(blobs) != 1 or len(blobs[0]) > MAX_AUTH_TOKEN:
            raise OutOfTurn(f"connection {conn.id}: gss_step takes one token")
        conn.rounds += 1
        if conn.state is State.NEW:
            conn.context = self.kerberos.new_context()
            conn.state = State.ACCEPTING
        try:
            if conn.rounds > MAX_AUTH_ROUNDS:
                raise AuthenticationFailed("the handshake took too many rounds")
            token, complete = self.kerberos.step(conn.context, blobs[0])
            if not complete:
                return {"ok": True, "complete": False}, [token]
            principal = self.kerberos.established(conn.context)
        except AuthenticationFailed as exc:
            conn.state, conn.context = State.REFUSED, None
            return {"ok": False, "code": "unauthenticated", "message": str(exc)}, []
        conn.user, conn.auth = principal, "gssapi"
        assert self.principals is not None
        try:
            allowed = self.principals.allowed(principal)
        except AuthorizationUnavailable as exc:
            conn.state = State.REFUSED
            reply = {"ok": True, "complete": True, "principal": principal, "allowed": False}
            return {**reply, "unavailable": str(exc)[:300]}, [token]
        conn.state = State.AUTHORIZED if allowed else State.REFUSED
        return {"ok": True, "complete": True, "principal": principal, "allowed": allowed}, [token]

    def _seal(
        self, conn: _Connection, _header: dict[str, Any], blobs: list[bytes]
    ) -> tuple[dict, list[bytes]]:
        """Seal one frame the service built, a status answer or a refusal, as the connection's
        first sealed frame (sequence number 0), for a connection that then never gets a jail.
        The context never leaves root: a service taken over can neither read a job's frames
        nor seal a READY or RESULT of its own."""
        frame = blobs[0] if len(blobs) == 1 else b""
        if conn.context is None or len(frame) < 9 or frame[4] not in SEALABLE_FRAMES:
            raise OutOfTurn(f"connection {conn.id}: seal takes one ERROR or STATUS frame")
        conn.state = State.NO_JAIL
        context, conn.context = conn.context, None
        return {"ok": True}, [context.wrap(bytes(8) + frame, True).message]

    def _serve(
        self, conn: _Connection, header: dict[str, Any], _blobs: list[bytes]
    ) -> tuple[dict, list[bytes]]:
        """Hand the connection to a jail of its user's and relay the jail's questions until it
        ends. The service names only the compiler identity and the hello to repeat; the image,
        limits and the user come from here."""
        hello = header.get("hello")
        if not isinstance(hello, dict):
            raise OutOfTurn(f"connection {conn.id}: serve needs a hello")
        if conn.state is State.NEW and not self._authorize_without_kerberos(conn):
            return {"ok": False, "code": "unauthorized", "error": f"{conn.user} may not"}, []
        conn.state = State.SERVING
        offer = self.catalog.by_identity.get(str(header.get("identity"))[:200])
        if offer is None:  # retired since the service looked
            return {"ok": False, "code": "image", "error": "no image here serves it now"}, []
        started = time.monotonic()
        # Jails kept for reuse hold their user's files: by how the user was identified too (a
        # local name is no principal), and none for --insecure peers, known by an address and
        # port that the next peer may well have.
        owner = None if conn.auth == "none" else f"{conn.auth}:{conn.user}"
        jail = None if owner is None else self.jail_cache.take(owner, offer.image)
        built = None
        ended: str | None = "not started"
        try:
            if jail is None:
                # The user's blob store, by how they were identified too (a local name is
                # no principal); none for --insecure peers, whose names are their addresses.
                store_for = None if owner is None else (owner, self.config.store_bytes)
                jail = self.sandbox.create_jail(
                    offer.image, self.config.jail_limits, store_for=store_for
                )
                built = time.monotonic() - started
                if jail.store_error:
                    log.warning(
                        "jail of %s without their blob store: %s", conn.user[:300], jail.store_error
                    )
            conn.jail = jail
            if self.idle:
                jail.set_idle(True)
            params = handover.session_params(
                auth=conn.auth,
                identity=offer.compiler.identity,
                compiler_path=offer.compiler.path,
                compiler_kind=offer.compiler.kind,
                image=offer.image,
                max_input_bytes=self.config.max_input_bytes,
                run_limits=self.config.run_limits,
                hello=hello,
                store_bytes=self.config.store_bytes,
            )
            token = conn.context.export() if conn.context is not None else b""
            conn.context = None
            relay = _Relay(conn, jail)
            ended = jail.serve_connection(
                conn.client, handover.HANDLER, params, token, relay.answer, QUESTION_TIMEOUT
            )
        except JailBroken as exc:
            ended = "jailccd stopped" if self.stopping else f"the jail broke: {exc}"
            if not self.stopping:
                log.error("jail broke user=%s: %s", conn.user[:300], exc)
        except SandboxError as exc:
            ended = str(exc)
        finally:
            if jail is not None:
                if ended is None and jail.usable and owner is not None:
                    self.jail_cache.give_back(owner, offer.image, jail)
                else:
                    self.jail_cache.discard(jail)
            conn.jail = None
        with self.lock:
            teardowns, self.teardowns = self.teardowns, []
        reply = {"ok": True, "end": True, "error": ended, "teardowns": teardowns[:1000]}
        return {**reply, "jail": jail.id if jail else None, "built": built}, []

    def torn_down(self, seconds: float) -> None:
        with self.lock:
            if len(self.teardowns) < 1000:
                self.teardowns.append(seconds)


class _Relay:
    """The jail's questions, checked here against the job's state and passed on to the service
    (which keeps the slots) with what only root can add: the work dir it mounts and the
    cgroup's verdict."""

    def __init__(self, conn: _Connection, jail: Jail) -> None:
        self.conn, self.jail = conn, jail

    def answer(self, question: dict[str, Any]) -> dict[str, Any]:
        what = question.get("what")
        conn = self.conn
        if what == "start" and not conn.holding:
            # The service answers when a slot is free: a job may wait in its queue as long as
            # the jobs before it run (each bounded by the job timeout).
            reply = self._ask({"what": "start", "source": question.get("source")}, queued=True)
            if reply.get("ok") is not True:
                return {"ok": False, "error": str(reply.get("error"))[:300], "code": "busy"}
            conn.holding = True
            try:
                self.jail.enter_workdir(str(question.get("cwd")))
            except SandboxError as exc:
                conn.holding = False
                self._ask({"what": "abort"})
                return {"ok": False, "error": str(exc)[:300], "end": not self.jail.usable}
            conn.before = self.jail.job_counters()
            return {"ok": True}
        if what == "done" and conn.holding:
            after = self.jail.job_counters()
            conn.holding = False
            limit = self.jail.limit_hit(conn.before, after) if question.get("failed") else None
            fields = ("status", "queue", "run", "bytes_in", "bytes_out", "failed")
            reply = self._ask(
                {"what": "done", "limit": limit, **{k: question.get(k) for k in fields}}
            )
            return {
                "limit": limit,
                "jail_cpu": (after["cpu_ns"] - conn.before["cpu_ns"]) / 1e9,
                "evicted": reply.get("evicted") is True,
                "load": reply.get("load"),
            }
        if what == "refused":
            self._ask({"what": "refused", **{k: question.get(k) for k in ("code", "message")}})
            return {}
        if what == "reserve":
            reply = self._ask({"what": "reserve", "bytes": question.get("bytes")})
            return {"ok": reply.get("ok") is True}
        raise SandboxError(f"the jail asked out of turn: {str(what)[:20]}")

    def _ask(self, question: dict[str, Any], queued: bool = False) -> dict[str, Any]:
        channel = self.conn.channel
        channel.settimeout(None if queued else ANSWER_TIMEOUT)
        try:
            wire.send_message(channel, {"ask": question, "jail": self.jail.id})
            if queued and not _first(channel, self.jail.channel()):
                # Out of turn: the jail gave its queued job up (its client went), or died. The
                # service withdraws the job from its queue; its answer ends the question.
                wire.send_message(channel, {"withdraw": True})
                channel.settimeout(ANSWER_TIMEOUT)
                wire.recv_message(channel, 0)
                raise SandboxError("the client went while its job waited for a slot")
            reply, _ = wire.recv_message(channel, 0)
        except (OSError, wire.WireError) as exc:
            raise SandboxError(f"the network service did not answer: {exc}") from None
        finally:
            channel.settimeout(None)
        return reply


def _first(ours: socket.socket, theirs: socket.socket) -> bool:
    """Wait until either socket has something to read; whether ours does."""
    poller = select.poll()
    for sock in (ours, theirs):
        poller.register(sock, select.POLLIN)
    return any(fd == ours.fileno() for fd, _ in poller.poll())


def catalog_snapshot(monitor: Monitor) -> dict[str, Any]:
    """What the service needs of the images: names, compilers, and which identity each serves."""
    catalog = monitor.catalog
    return {
        "images": catalog.describe(),
        "offers": {
            identity: {"image": offer.image, "compiler": offer.compiler.name}
            for identity, offer in catalog.by_identity.items()
        },
    }


Handler = Callable[[Monitor, _Connection, dict[str, Any], list[bytes]], tuple[dict, list[bytes]]]
# Per connection: request -> (the states it is allowed in, its handler).
REQUESTS: dict[str, tuple[frozenset[State], Handler]] = {
    "gss_step": (frozenset({State.NEW, State.ACCEPTING}), Monitor._gss_step),
    "seal": (frozenset({State.AUTHORIZED, State.REFUSED}), Monitor._seal),
    # In NEW only without Kerberos: the monitor then decides who the peer is itself, first.
    "serve": (frozenset({State.NEW, State.AUTHORIZED}), Monitor._serve),
}
# The main channel's requests but "open" (which is not answered there): request -> handler.
MainHandler = Callable[[Monitor, dict[str, Any]], dict[str, Any]]
MAIN_REQUESTS: dict[str, MainHandler] = {
    "catalog": Monitor._catalog,
    "evict": Monitor._evict,
    "idle": Monitor._set_idle,
}
