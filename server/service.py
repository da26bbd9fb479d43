"""The network service, unprivileged: accept a connection, read the peer's hello and handshake
frames under deadlines and caps, have the root monitor authenticate and authorize the peer
(monitor_link.py), and have it hand the connection to a jail, where its jobs are read and run
(jobs/session.py).

This process runs as its own uid with no capabilities. Before the hand-over it reads only the
small, capped hello and handshake frames; after it, it answers just the jail's questions the
monitor relays (a slot, and the job's end), so it never parses what an authenticated client
sends, and it holds neither the jail's channel nor a job connection's security context.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import queue
import select
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from jailcc import __version__
from jailcc import protocol as proto
from jailcc.peer import LocalAuthorizer, Peer, peer_credentials, unix_peer

from .admission import Busy, Slots, Withdrawn, measure_speed
from .caps import ConnectionCaps
from .metrics import Metrics
from .monitor_link import ConnectionLink, MonitorGone, MonitorLink, MonitorRefused

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

log = logging.getLogger("jailccd")

# How long a peer refused by its credentials has to close first, so that a hello it sent just
# as we refused lands in our (unread) buffer instead of meeting a closed socket: it then reads
# our ERROR rather than a broken pipe.
REFUSAL_LINGER = 2.0
ACCEPT_PAUSE = 0.1  # seconds the accept loop waits when out of descriptors or memory
# How a jail says its client went away (the words of EPIPE, ECONNRESET and a closed channel).
CLIENT_HANG_UPS = ("Broken pipe", "Connection reset by peer", "channel closed", "client went")


@dataclass
class ServiceConfig:
    """The service's settings, as the monitor sends them at start (JSON)."""

    slots: int
    max_connections: int = 256
    # TCP peers: "gssapi" (Kerberos, the monitor accepts), "insecure", or None (no TCP).
    tcp_auth: str | None = None
    principal: str = ""  # the server's own Kerberos principal, for the mDNS TXT record
    # Who may compile on the Unix socket (--allow-user, --allow-group): the service refuses
    # others before reading a byte; the monitor decides again before it makes a jail.
    allow_users: list[str] = field(default_factory=list)
    allow_groups: list[str] = field(default_factory=list)
    max_queue: int = 0  # jobs that may wait for a slot before "busy"; 0: 4 x slots, 8 at least
    speed: float | None = None  # this server's relative speed; None: measure it
    # Before authentication: real deadlines (protocol.DeadlineSocket), caps on connections
    # (ConnectionCaps) and on log lines (PeerLog), all per peer where a peer could hog them.
    handshake_timeout: float = 10.0  # from accept to authorized
    frame_timeout: float = 5.0  # from a frame's first byte to its last
    max_unauthenticated: int = 0  # 0: half of max_connections
    max_unauthenticated_per_peer: int = 16
    max_connections_per_user: int = 0  # 0: a quarter of max_connections, 8 at least
    # Bytes one user's frames may hold at once in their jails while they arrive, unpack and
    # wait for their job's end (the jails ask before reading a large one); 0: no budget.
    user_memory: int = 0
    peer_log_lines: int = 20  # a minute, about one unauthenticated peer
    # Whose running jobs a status request shows with their source names: "own" or "all".
    status_show_sources: str = "own"


# Refusal codes that are failures to authenticate or be authorized (counted by reason).
AUTH_FAILURES = frozenset({"unauthenticated", "unauthorized", "unavailable"})
# A status answer lists at most this many running jobs (one per connection holding a slot).
MAX_STATUS_JOBS = 1000


class Refused(Exception):
    """The peer may not go on; `code` and the message go back to it in an ERROR frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class CatalogView:
    """The images as the monitor last described them: a copy, read at start and again when
    the monitor has rescanned them (it sends us SIGHUP then)."""

    images: list[dict[str, Any]] = field(default_factory=list)  # the hello's "images"
    offers: dict[str, str] = field(default_factory=dict)  # compiler identity -> image mount

    def refresh(self, monitor: MonitorLink) -> None:
        answer = monitor.catalog()
        offers = answer.get("offers")
        images = answer.get("images")
        if not isinstance(offers, dict) or not isinstance(images, list):
            raise MonitorGone("the monitor sent a malformed catalog")
        self.offers, self.images = {str(k): str(v.get("image")) for k, v in offers.items()}, images

    def identities(self) -> list[str]:
        return sorted(self.offers)


@dataclass(frozen=True)
class Offer:
    image: str  # the image version's mount name
    identity: str


class JobService:
    def __init__(self, monitor: MonitorLink, catalog: CatalogView, config: ServiceConfig) -> None:
        self.monitor = monitor
        self.catalog = catalog
        self.config = config
        self.local = LocalAuthorizer(
            config.allow_users, config.allow_groups, allow_tcp=config.tcp_auth == "insecure"
        )
        self.slots = Slots(config.slots, config.max_queue or max(8, 4 * config.slots))
        self.speed = config.speed if config.speed is not None else measure_speed()
        self.active: dict[int, _Questions] = {}  # by connection: connections in a jail now
        self.reserved: dict[str, int] = {}  # by share: the memory its jails' frames hold
        self.active_lock = threading.Lock()  # (also for reserved)
        self.idle_priority = False
        self.caps = ConnectionCaps(
            config.max_connections,
            config.max_unauthenticated or max(1, config.max_connections // 2),
            config.max_unauthenticated_per_peer,
            config.max_connections_per_user or max(8, config.max_connections // 4),
        )
        self.peer_log = PeerLog(config.peer_log_lines)
        self.user_log = PeerLog(10 * config.peer_log_lines)
        self.workers = _Workers()
        self.listeners: list[socket.socket] = []
        self.metrics = Metrics(self.load, config.slots, self._memory_held)
        self.started = time.monotonic()
        self._stopping = threading.Event()
        # Set on SIGHUP, which the monitor sends once it has rescanned the images.
        self.rescanned = threading.Event()
        self.failed = False  # stopped because something it cannot do without died

    # -- listening -------------------------------------------------------------------------

    def adopt_listener(self, sock: socket.socket) -> None:
        """A listening socket the monitor bound (it may be a port below 1024)."""
        self.listeners.append(sock)

    def serve_forever(self) -> None:
        selector = selectors.DefaultSelector()
        for sock in self.listeners:
            selector.register(sock, selectors.EVENT_READ)
        # Its own thread: a new image is offered as soon as the monitor has it, not after the
        # accept loop's next wake-up, and one slow answer from the monitor holds up no accept.
        threading.Thread(target=self._follow_rescans, name="rescans", daemon=True).start()
        try:
            while not self._stopping.is_set():
                if self.monitor.closed:
                    # Without it no peer can be authenticated nor a jail built: stop, so the
                    # monitor (or a supervisor) restarts us, rather than refuse every job.
                    log.critical("the monitor is gone: the network service stops")
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
                        # Out of descriptors or memory the listener stays ready: without a
                        # pause this loop spun, and without a budget it filled the disk.
                        self.peer_log.log("accepting", logging.WARNING, "accept failed: %s", exc)
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            time.sleep(ACCEPT_PAUSE)
                        continue
                    self._start_connection(conn, addr)
        finally:
            selector.close()

    def _follow_rescans(self) -> None:
        while not self._stopping.is_set():
            if self.rescanned.wait(timeout=1.0):
                self.rescanned.clear()
                self._reread_catalog()

    def _reread_catalog(self) -> None:
        try:
            self.catalog.refresh(self.monitor)
        except (MonitorGone, MonitorRefused) as exc:
            log.error("the images could not be read again from the monitor: %s", exc)
        else:
            log.info("images now: %s", ", ".join(i.get("name", "?") for i in self.catalog.images))

    def stop(self) -> None:
        self._stopping.set()
        for sock in self.listeners:
            sock.close()  # the monitor removes the Unix socket's file

    def _start_connection(self, conn: socket.socket, addr: Any) -> None:
        try:
            key = peer_key(conn, addr)
        except (OSError, ValueError) as exc:
            log.warning("dropped a connection whose peer cannot be told: %s", exc)
            conn.close()
            return
        refused = self.caps.admit(key, conn)
        if refused is not None:
            self.metrics.refusal("busy", by_caps=True)
            self.peer_log.log(key, logging.WARNING, "refused %s: busy: %s", key, refused)
            with contextlib.suppress(OSError):
                # Nothing is read; the frame fits in the socket's empty buffer, so this send
                # cannot block the accept loop.
                conn.settimeout(0)
                proto.send(conn, proto.ERROR, {"code": "busy", "message": refused})
            conn.close()
            return
        self.workers.run(self._connection, conn, addr, key)

    # -- one connection --------------------------------------------------------------------

    def _connection(self, conn: socket.socket, addr: Any, key: str) -> None:
        # Named in log lines before the handshake names it better: the uid on the Unix socket.
        peer: Peer | str = f"{addr[0]}:{addr[1]}" if conn.family != socket.AF_UNIX else key
        link: ConnectionLink | None = None
        authenticated = False  # (the looser log budget)

        def on_authenticated(stop_waiting: bool = True) -> None:
            nonlocal authenticated
            authenticated = True
            if stop_waiting:
                self.caps.authenticated(conn)

        def note(level: int, message: str, *args: Any) -> None:
            # Lines about a connection's failures are rate-limited per peer: tightly before
            # authentication, ten times more loosely after (an allowed user can open
            # connections as fast as anyone, and must not fill the log either).
            (self.user_log if authenticated else self.peer_log).log(key, level, message, *args)

        def open_link() -> ConnectionLink:
            # Only once the client's hello is read: a peer that never sends one costs the
            # monitor (root) nothing, not even a table entry.
            nonlocal link
            link = self.monitor.open(conn)
            return link

        try:
            self.metrics.connection()
            timed = proto.DeadlineSocket(
                conn,
                time.monotonic() + self.config.handshake_timeout,
                self.config.frame_timeout,
            )
            peer, offer, auth, channel = self._handshake(
                timed, open_link, peer, on_authenticated, note
            )
            assert link is not None
            if offer is None:
                # A status request: answered here, in the channel the handshake left (sealed
                # on Kerberos), with no jail.
                assert channel is not None
                channel.send(proto.STATUS, self.status(_user_name(peer)))
                return
            name = _user_name(peer)
            # --insecure TCP: each connection's name has its port; its share is its address's.
            counted = key if auth == "none" else name
            refused = self.caps.take_user(counted)
            if refused is not None:
                # One user's connections (and their jails) are a share of the server's. On
                # Kerberos only the jail could seal an ERROR: the connection just closes.
                self.metrics.refusal("busy", by_caps=True)
                self.peer_log.log(name, logging.WARNING, "refused %s: busy: %s", name, refused)
                if channel is not None:
                    channel.send(proto.ERROR, {"code": "busy", "message": refused})
                return
            hello = self._greeting(offer)
            if channel is not None:  # unsealed: on Kerberos the jail's READY is the hello
                channel.send(proto.HELLO, {**hello, "auth": auth})
            try:
                self._hand_over(conn, link, offer, hello, str(peer), name, counted)
            finally:
                self.caps.release_user(counted)
        except Refused:
            pass  # told the peer and logged by _handshake
        except proto.ProtocolError as exc:
            note(logging.WARNING, "protocol error from %s: %s", peer, _printable(exc, 300))
            self.metrics.refusal("protocol")
            with contextlib.suppress(OSError, proto.ProtocolError):
                conn.settimeout(1.0)
                proto.send(conn, proto.ERROR, {"code": "protocol", "message": str(exc)[:300]})
        except MonitorGone as exc:
            log.error("connection from %s: %s", _printable(peer, 300), exc)
        except (OSError, MonitorRefused) as exc:
            note(logging.WARNING, "connection from %s ended: %s", _printable(peer, 300), exc)
        finally:
            if link is not None:
                link.close()
            self.caps.close(conn)  # first: once closed, the descriptor may be another's
            conn.close()

    def _hand_over(
        self,
        conn: socket.socket,
        link: ConnectionLink,
        offer: Offer,
        hello: dict[str, Any],
        user: str,
        name: str,
        share: str,
    ) -> None:
        """The monitor hands the connection to a jail; we answer the jail's questions. `share`:
        whose share of the queue its jobs take (Slots)."""
        questions = _Questions(self, link, user, name, offer.image, share)
        try:
            # The monitor's copy of the socket is the one the jail gets: once it is asked to
            # hand over, ours goes, and from then on only the jail reads the client's bytes.
            end = link.serve(offer.identity, hello, conn.close, questions.answer)
        finally:
            questions.forget()
        if isinstance(end.get("built"), int | float):
            self.metrics.jail_build.observe(end["built"])
        for seconds in end.get("teardowns") or []:
            self.metrics.jail_teardown.observe(_number(seconds))
        ended = end.get("error")
        if ended is not None:
            # Per user, rate-limited: an allowed user can end connections as fast as anyone.
            # A client that hangs up (Ctrl-C in make) is no warning.
            hung_up = any(why in str(ended) for why in CLIENT_HANG_UPS)
            level = logging.INFO if hung_up else logging.WARNING
            self.user_log.log(
                name, level, "connection from %s ended: %s", user, _printable(ended, 300)
            )

    def _handshake(
        self,
        conn: proto.DeadlineSocket,
        open_link: Callable[[], ConnectionLink],
        peer: Peer | str,
        on_authenticated: Callable[..., None],
        note: Callable[..., None],
    ) -> tuple[Peer | str, Offer | None, str, proto.Channel | None]:
        """Credentials (Unix socket), hello, authentication (Kerberos), authorization: the
        monitor decides (a local peer again at the hand-over), we only refuse early. Opens the
        connection's link to the monitor (open_link) once the client's hello is read. Returns
        (peer, offer, auth kind, the channel to go on in, None for a Kerberos job connection,
        whose channel is the jail's). The offer is None for a status
        request, which needs no image. Every read and write is bounded by conn's deadlines.
        Raises Refused after telling the peer."""

        def recv(frame_cap: int) -> tuple[int, dict[str, Any], list[bytes]]:
            conn.next_frame()
            return proto.recv(conn, frame_cap)

        def refuse(code: str, message: str, sealed: proto.Channel | None = None) -> Refused:
            note(logging.INFO, "refused %s: %s: %s", _printable(peer, 300), code, message)
            self.metrics.refusal(code)
            if code in AUTH_FAILURES:
                self.metrics.auth_failure(code)
            with contextlib.suppress(OSError, proto.ProtocolError):
                (sealed or proto.Channel(conn)).send(
                    proto.ERROR, {"code": code, "message": message}
                )
            return Refused(code, message)

        if conn.family == socket.AF_UNIX:
            # The kernel names the peer: refuse one who may not compile before reading a byte
            # (what it sent stays unread; closing with it unread resets the connection, which
            # the peer sees after our ERROR frame). The monitor decides again, from its own copy
            # of the socket, before it makes a jail.
            peer = unix_peer(conn.sock)
            if not self.local.allowed(peer):
                refused = refuse(
                    "unauthorized",
                    f"{peer.user} may not use this server: ask its admin to add you"
                    " (jailccd --allow-user/--allow-group)",
                )
                _until_closed(conn.sock, min(REFUSAL_LINGER, conn.deadline - time.monotonic()))
                raise refused
            on_authenticated(stop_waiting=False)
        try:
            hello = _client_hello(recv(proto.MAX_HELLO_FRAME))
        except Refused as exc:
            raise refuse(exc.code, str(exc)) from None
        if isinstance(peer, Peer):
            # Only now: until its hello, a local connection counts against its uid's share of
            # the connections waiting (one allowed user must not hold them all silently).
            on_authenticated()
        link = open_link()
        offer = None
        if hello.get("request") != "status":
            identity = str(hello.get("identity"))[:200]
            image = self.catalog.offers.get(identity)
            if image is None:
                raise refuse("image", "no toolchain image here matches your compiler")
            offer = Offer(image, identity)
        if isinstance(peer, Peer):
            return peer, offer, "local", proto.Channel(conn)
        if self.config.tcp_auth != "gssapi":  # --insecure
            if not self.local.allowed(Peer("tcp", str(peer))):
                raise refuse("unauthorized", "this server does not take unauthenticated TCP")
            on_authenticated()
            return peer, offer, "none", proto.Channel(conn)
        proto.send(conn, proto.HELLO, {"protocol": proto.PROTOCOL_VERSION, "auth": "gssapi"})
        token = _auth_token(recv(proto.MAX_AUTH_TOKEN + 4096))
        while True:
            try:
                answer, ours = link.gss_step(token)
            except MonitorRefused as exc:
                raise refuse(
                    "unauthenticated", f"Kerberos authentication failed: {_printable(exc, 300)}"
                ) from None
            if answer.get("complete") is True:
                break
            proto.send(conn, proto.AUTH, {}, [ours])
            token = _auth_token(recv(proto.MAX_AUTH_TOKEN + 4096))
        proto.send(conn, proto.AUTH, {}, [ours])
        principal = str(answer.get("principal"))
        shown = _printable(principal, 300)  # the KDC's word, but a realm can name anything
        if answer.get("allowed") is not True:
            sealed = _SealedByMonitor(conn, link)
            if "unavailable" in answer:
                log.error("authorization unavailable for %s: %s", shown, answer["unavailable"])
                raise refuse(
                    "unavailable",
                    "the server cannot check who may compile right now (its directory is"
                    " down); try later",
                    sealed,
                )
            raise refuse(
                "unauthorized", f"{shown} may not use this server: ask its admin to add you", sealed
            )
        on_authenticated()
        log.info("authenticated %s from %s", shown, peer)
        return principal, offer, "gssapi", (_SealedByMonitor(conn, link) if offer is None else None)

    def _greeting(self, offer: Offer) -> dict[str, Any]:
        """The server's hello for a job connection (the jail's READY repeats it)."""
        return proto.hello_header(
            "server",
            server=f"jailccd {__version__}",
            images=self.catalog.images,
            slots=self.config.slots,
            image=offer.image,
            load=self.load(),
            alive=True,
        )

    # -- status ------------------------------------------------------------------------------

    def status(self, requester: str) -> dict[str, Any]:
        """The STATUS header for an authenticated requester (PROTOCOL.md, "Status")."""
        load = self.load()
        return {
            "server": f"jailccd {__version__}",
            "protocol": proto.PROTOCOL_VERSION,
            "host": socket.gethostname(),
            "uptime": round(time.monotonic() - self.started, 3),
            "slots": self.config.slots,
            "slots_now": load["slots"],
            "running": load["running"],
            "queued": load["queued"],
            "owner_busy": load["owner_busy"],
            "speed": load["speed"],
            "images": [
                {
                    "name": image.get("name"),
                    "compilers": [
                        {k: c.get(k) for k in ("name", "identity", "version")}
                        for c in image.get("compilers", [])
                    ],
                }
                for image in self.catalog.images
            ],
            "jobs": self._running_jobs(requester),
            "memory_held": self._memory_held(),
            "totals": self.metrics.totals(),
        }

    def _memory_held(self) -> int:
        with self.active_lock:
            return sum(self.reserved.values())

    def _running_jobs(self, requester: str) -> list[dict[str, Any]]:
        everyone = self.config.status_show_sources == "all"
        now = time.monotonic()
        with self.active_lock:
            running = [q for q in self.active.values() if q.holding]
        return [
            {
                "user": q.name,
                "source": q.source if everyone or q.name == requester else None,
                "elapsed": round(max(0.0, now - q.started), 3),
                "jail": q.jail_id,
            }
            for q in running[:MAX_STATUS_JOBS]
        ]

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
            self.monitor.set_idle(idle)
        if evict:
            for questions in active:
                if questions.holding:
                    questions.evicted = True
                    self.monitor.evict(questions.conn)


class _Workers:
    """A thread per connection for its whole life, kept when it ends to take the next one:
    starting a thread costs a new connection about 0.1 ms. As many as connections at once (the
    caps bound them), at most MAX_IDLE kept idle; daemons, so that no open connection holds
    up the service's exit."""

    MAX_IDLE = 32

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._idle = 0
        self._lock = threading.Lock()

    def run(self, task: Callable[..., None], *args: Any) -> None:
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1  # that one is spoken for
        self._tasks.put((task, args))
        if start:
            threading.Thread(target=self._work, name="connection", daemon=True).start()

    def _work(self) -> None:
        while True:
            task, args = self._tasks.get()
            try:
                task(*args)
            except Exception:  # a bug: this connection ends, the worker goes on
                log.exception("a connection's handler failed")
            with self._lock:
                if self._idle >= self.MAX_IDLE:
                    return
                self._idle += 1


class _SealedByMonitor(proto.Channel):
    """The one sealed frame of a connection that gets no jail (a status answer, a refusal):
    the monitor seals it, since the GSSAPI context never leaves root. Send only."""

    sealed = True

    def __init__(self, sock: socket.socket, link: ConnectionLink) -> None:
        super().__init__(sock)
        self.link = link

    def send(
        self,
        frame_type: int,
        header: dict[str, Any],
        blobs: Sequence[bytes] = (),
        compress: Sequence[bool] | None = None,
    ) -> int:
        token = self.link.seal(proto.encode(frame_type, header, blobs, compress))
        self.sock.sendall(proto.U32.pack(len(token)) + token)
        return 4 + len(token)

    def recv(self, *_args: Any) -> tuple[int, dict[str, Any], list[bytes]]:
        raise proto.ProtocolError("a connection that gets no jail reads no sealed frame")


def _until_closed(conn: socket.socket, seconds: float) -> None:
    """Wait up to `seconds` for the peer to close its end, reading nothing."""
    poller = select.poll()
    poller.register(conn, select.POLLRDHUP)  # not POLLIN: what it sends does not wake us
    poller.poll(max(0, int(seconds * 1000)))


def _client_hello(frame: tuple[int, dict[str, Any], list[bytes]]) -> dict[str, Any]:
    """A client's hello: a job's (naming the compiler identity) or a status request.
    ProtocolError if it is no hello, Refused (not yet told to the peer) for a protocol version
    we do not speak."""
    frame_type, header, _ = frame
    if frame_type != proto.HELLO:
        raise proto.ProtocolError("expected HELLO")
    version = header.get("protocol")
    if type(version) is not int or version != proto.PROTOCOL_VERSION:  # (not 2.0, not True)
        raise Refused(
            "version",
            f"protocol {_printable(header.get('protocol'), 40)} not supported; this server"
            f" speaks {proto.PROTOCOL_VERSION}",
        )
    if header.get("role") != "client":
        raise proto.ProtocolError('a client\'s hello says role "client"')
    return header


def _user_name(peer: Peer | str) -> str:
    """Who a peer is for the status answer: a local user's name, a Kerberos principal, or
    (--insecure) an address, which matches no job's user but its own connection's."""
    return peer.user if isinstance(peer, Peer) else str(peer)


def _auth_token(frame: tuple[int, dict[str, Any], list[bytes]]) -> bytes:
    frame_type, _, blobs = frame
    if frame_type != proto.AUTH or len(blobs) != 1 or len(blobs[0]) > proto.MAX_AUTH_TOKEN:
        raise proto.ProtocolError("expected an AUTH frame with one token")
    return blobs[0]


# The jail's words are shown and counted, never trusted: these bound what it can make us keep.
MAX_SOURCE = 200  # characters of a job's source name, for the log and status answers
MAX_COUNTED_BYTES = 1 << 36  # a job's input or result, as the jail reports it
# ("hung-up": the client went away mid-job, and the jail stopped it; "disk": the jail's work
# dir or /tmp was full)
KNOWN_LIMITS = frozenset(
    {"memory", "pids", "cpu", "wall", "idle", "output", "file-size", "disk", "hung-up"}
)
JOB_REFUSALS = frozenset({"policy", "protocol", "image"})  # the "refused" question's codes


class _Questions:
    """The service's answers to one connection's jail, relayed by the monitor (which mounts the
    work dir and reads the cgroup's verdict itself). As in OpenSSH's monitor, the interface is
    a table (QUESTIONS, below): each question, whether a job must be running ("holding" a
    slot) for it, and its handler; anything else, or out of turn, ends the connection.

        start    no job    a slot; names the job's source
        abort    a job     the slot back: the monitor could not set the job up
        done     a job     the slot back, the log line; the cgroup's verdict, byte counts
        refused  any       a job refused before it started, for the log and the counts
        reserve  any       memory for a large frame the jail is about to read (its bytes in
                           all, 0 to give them back), within the user's --user-memory
    """

    def __init__(
        self,
        service: JobService,
        link: ConnectionLink,
        user: str,
        name: str,
        image: str,
        share: str,
    ) -> None:
        # user: the peer for the log; name: for status answers (user name or principal).
        self.service, self.link, self.conn, self.image = service, link, link.id, image
        self.user, self.name, self.share = user, name, share
        self.jail_id = 0  # the monitor's jail number, for the log and status answers
        self.holding = False
        self.evicted = False
        self.source = ""
        self.started = 0.0
        self.reserved = 0  # bytes of the user's memory budget this connection's frames hold
        with service.active_lock:
            service.active[self.conn] = self

    def answer(self, jail_id: int, question: dict[str, Any]) -> dict[str, Any]:
        self.jail_id = jail_id
        what = question.get("what")
        entry = QUESTIONS.get(what) if isinstance(what, str) else None
        if entry is None or entry[0] not in (None, self.holding):
            raise MonitorGone(f"the jail asked out of turn: {_printable(what, 20)}")
        return entry[1](self, question)

    def _start(self, question: dict[str, Any]) -> dict[str, Any]:
        try:
            self.service.slots.acquire(self.share, self.link.spoke)
        except Withdrawn:
            # The monitor says the jail gave the job up (its client went): out of the queue;
            # the connection then ends.
            self.link.take_withdrawal()
            return {"ok": False, "error": "withdrawn: the client went"}
        except Busy as exc:
            self.service.metrics.job_refused("busy")
            return {"ok": False, "error": f"busy: {exc}"}
        # Set before `holding`, which makes the job show in status answers.
        self.source = _display_source(question.get("source"))
        self.started = time.monotonic()
        self.holding = True
        self.evicted = False
        return {"ok": True}

    def _abort(self, _question: dict[str, Any]) -> dict[str, Any]:
        self.release()
        self.service.metrics.job_refused("jail")
        return {"ok": True}

    def _done(self, question: dict[str, Any]) -> dict[str, Any]:
        seconds = time.monotonic() - self.started
        self.release()
        limit = question.get("limit")
        limit = limit if limit in KNOWN_LIMITS else None
        status = _printable(question.get("status"), 40)
        self._count(status, limit, seconds, question)
        log.info(
            "job user=%s image=%s jail=%d source=%s status=%s queue=%.1fms run=%.1fms",
            self.user,
            self.image,
            self.jail_id,
            _printable(self.source, MAX_SOURCE),
            status + (f" limit:{limit}" if limit else ""),
            _number(question.get("queue")) * 1000,
            _number(question.get("run")) * 1000,
        )
        return {"ok": True, "evicted": self.evicted, "load": self.service.load()}

    def _count(
        self, status: str, limit: str | None, seconds: float, question: dict[str, Any]
    ) -> None:
        """Count a job that held a slot by its outcome (metrics.OUTCOMES)."""
        metrics = self.service.metrics
        if status == "refused":  # the jail would not run it (a bad file name, say)
            metrics.job_refused("jail")
            return
        limit = limit or (status[6:] if status.startswith("limit:") else None)
        if limit is not None and limit not in KNOWN_LIMITS:
            limit = "other"
        if self.evicted:
            outcome = "evicted"
        elif limit:
            outcome = "limit"
        else:
            outcome = "ok" if status == "exit:0" else "failed"
        sent = 0 if self.evicted else _size(question.get("bytes_out"))
        metrics.job_ended(outcome, seconds, limit, _size(question.get("bytes_in")), sent)

    def _refused(self, question: dict[str, Any]) -> dict[str, Any]:
        code = question.get("code")
        self.service.metrics.job_refused(code if code in JOB_REFUSALS else "other")
        # Any number may come in any state, so a jail could fill the log: rate-limited per user.
        self.service.peer_log.log(
            f"jobs refused to {self.user}",
            logging.INFO,
            "job refused user=%s code=%s: %s",
            self.user,
            _printable(code, 20),
            _printable(question.get("message"), 300),
        )
        return {"ok": True}

    def _reserve(self, question: dict[str, Any]) -> dict[str, Any]:
        """A new total for this connection: granted while the user's connections together stay
        within the budget (giving back always is); the jail reads the frame only if granted."""
        wanted = question.get("bytes")
        if not (type(wanted) is int and 0 <= wanted <= MAX_COUNTED_BYTES):
            return {"ok": False, "error": "a reservation is a number of bytes"}
        budget = self.service.config.user_memory
        with self.service.active_lock:
            others = self.service.reserved.get(self.share, 0) - self.reserved
            granted = wanted <= self.reserved or not budget or others + wanted <= budget
            if granted:
                self._hold(others, wanted)
        if granted:
            return {"ok": True}
        self.service.metrics.job_refused("busy")
        self.service.user_log.log(
            f"memory of {self.user}",
            logging.WARNING,
            "job refused user=%s: its jobs would hold %d MiB, past --user-memory (%d MiB)",
            self.user,
            (others + wanted) >> 20,
            budget >> 20,
        )
        return {"ok": False, "error": f"{self.name}'s jobs hold this server's memory for one user"}

    def _hold(self, others: int, mine: int) -> None:
        """(Under active_lock.)"""
        self.reserved = mine
        if others + mine:
            self.service.reserved[self.share] = others + mine
        else:
            self.service.reserved.pop(self.share, None)

    def release(self) -> None:
        if self.holding:
            self.holding = False
            self.service.slots.release(self.share)

    def forget(self) -> None:
        self.release()
        with self.service.active_lock:
            self.service.active.pop(self.conn, None)
            self._hold(self.service.reserved.get(self.share, 0) - self.reserved, 0)


# The jail's questions: name -> (whether a job must be running, None: either; the handler).
QUESTIONS: dict[str, tuple[bool | None, Callable[[_Questions, dict[str, Any]], dict[str, Any]]]] = {
    "start": (False, _Questions._start),
    "abort": (True, _Questions._abort),
    "done": (True, _Questions._done),
    "refused": (None, _Questions._refused),
    "reserve": (None, _Questions._reserve),
}


def _display_source(value: Any) -> str:
    """A job's source name as the jail gave it, fit to show: text, at most MAX_SOURCE
    characters, the unprintable ones replaced."""
    text = value if isinstance(value, str) else ""
    return "".join(c if c.isprintable() else "\ufffd" for c in text[:MAX_SOURCE])


def _size(value: Any) -> int:
    """A byte count the jail reported, or 0 if it is not a plausible one."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNTED_BYTES
    return value if ok else 0


def _printable(value: Any, limit: int) -> str:
    """A peer's or a jail's words for the log: one line of at most `limit` of its characters,
    the unprintable ones escaped."""
    text = str(value)
    shown = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit]
    )
    return shown + "..." if len(text) > limit else shown


def peer_key(conn: socket.socket, addr: Any) -> str:
    """Who a connection counts against for the caps and log limits before authentication: a
    uid on the Unix socket; on TCP an IPv4 address, or an IPv6 /64 (one host or site usually
    has a whole /64 to pick addresses from)."""
    if conn.family == socket.AF_UNIX:
        return f"uid {peer_credentials(conn)[1]}"
    address = ipaddress.ip_address(str(addr[0]).split("%")[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class PeerLog:
    """Log lines about peers not yet authenticated, at most `per_minute` a peer a minute and
    then one line saying the rest are suppressed: such a peer must not be able to fill the
    disk, or drown the lines that matter. And at most ten times that for all peers together:
    thousands of addresses (an IPv6 /48 is 65536 /64s) must not either."""

    WINDOW = 60.0
    MAX_PEERS = 10_000  # past this many in a minute, the others share one budget
    ALL_PEERS = 10  # the budget of all peers together, in peers' budgets

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.total = 0
        self.window_end = 0.0

    def log(self, peer: str, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self.lock:
            if now >= self.window_end:
                self.counts.clear()
                self.total = 0
                self.window_end = now + self.WINDOW
            if peer not in self.counts and len(self.counts) >= self.MAX_PEERS:
                peer = "other peers"
            count = self.counts[peer] = self.counts.get(peer, 0) + 1
            if count <= self.per_minute:
                self.total += 1
            total, peers = self.total, len(self.counts)
        cap = self.ALL_PEERS * self.per_minute
        if count <= self.per_minute and total <= cap:
            log.log(level, message, *args)
        elif count == self.per_minute + 1 and total <= cap:
            log.warning("more log lines about %s suppressed for up to a minute", peer)
        elif count <= self.per_minute and total == cap + 1:
            log.warning("more log lines about %d peers suppressed for up to a minute", peers)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
