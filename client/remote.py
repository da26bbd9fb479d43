"""Sending one compile job to a server and reading its result."""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
import weakref
from collections import namedtuple

from jailcc import __version__
from jailcc import protocol as proto

from .hosts import Host
from .proxy_wire import MAX_OUTPUT  # stdout or stderr: what the native client takes

TYPE_CHECKING = False  # typing costs milliseconds to import, on every compile; type checkers know
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CONNECT_TIMEOUT = 5.0
# The server enforces the job's wall clock; this only bounds a server that went silent.
RESULT_TIMEOUT = 900.0
# How often a job asks a server that can for an ALIVE frame; after ALIVE_MISSED of them
# missed, the server is given up on: stopped, cut off or wedged, not compiling.
ALIVE_SECONDS = 10.0
ALIVE_MISSED = 6
# The jail's READY follows authorization and a jail's making: seconds, not minutes.
READY_TIMEOUT = 30.0
# Each write of a JOB or BLOBS frame: a server that takes no byte for this long is gone.
SEND_TIMEOUT = 300.0
# A RESULT, on the wire and decompressed: an object at the server's own cap (256 MiB), stdout
# and stderr (MAX_OUTPUT each) and a dependency file. A server's larger claims are refused
# before anything is allocated for them.
MAX_RESULT = 512 << 20
MAX_SAID = 300  # characters of a server's own words (an ERROR's message) shown to the user


class _TreeState:
    """What an open connection's jail knows of our tree jobs: the (path, digest) of system
    headers it has found in its image, and the root and tree of its last tree job answered
    with a RESULT, which the next one's tree may be sent as a difference from."""

    __slots__ = ("base", "image_checked")

    def __init__(self) -> None:
        self.image_checked: set[tuple[str, ...]] = set()
        self.base: tuple[str, dict[str, list[Any]]] | None = None


_TREE_STATE: weakref.WeakKeyDictionary[proto.Channel, _TreeState] = weakref.WeakKeyDictionary()


class _Listings:
    """The listings of our tree jobs (PROTOCOL.md, "listing") each server's store holds, as far
    as we know: those its RESULTs said it keeps. A job whose listing is known is sent as that
    alone; a server that has lost it asks for it (NEED), at a round trip's cost."""

    MAX_PER_SERVER = 100_000

    def __init__(self) -> None:
        self._by_server: dict[str, dict[str, None]] = {}

    def known(self, server: str, ref: str) -> bool:
        return ref in self._by_server.get(server, {})

    def add(self, server: str, ref: str) -> None:
        refs = self._by_server.setdefault(server, {})
        refs.pop(ref, None)
        refs[ref] = None  # the most recent last
        if len(refs) > self.MAX_PER_SERVER:
            del refs[next(iter(refs))]

    def forget(self, server: str, ref: str) -> None:
        self._by_server.get(server, {}).pop(ref, None)


_LISTINGS = _Listings()


class RemoteFailure(Exception):
    """The job could not be done remotely (no server, refused, died, timed out): compile
    locally instead. `reason` is short and human; `tell_user` when the user has something to
    do about it (e.g. run kinit), so it is said even without JAILCC_VERBOSE."""

    def __init__(self, reason: str, tell_user: bool = False, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tell_user = tell_user
        self.code = code  # the server's ERROR code when it refused, "limit:NAME" when the job hit
        # a server's limit NAME; None for other failures


class RemoteResult(
    namedtuple(
        "RemoteResult",
        "exit_code signal limit stdout stderr output times load output_names outputs reads"
        " misses sent",
        defaults=(None, (), (), (), None, 0),
    )
):
    """What the server answered: exit_code (None if killed by signal), signal, limit (the limit
    that stopped the job, if any), stdout, stderr, output (the file, or None), times, and the
    server's load report (slots, running, queued, owner_busy, speed). A tree job's answer also
    has output_names and outputs (the files it wrote, by absolute path) and reads ((path,
    digest) of every file the compile read), misses (the names it looked for in vain, when the
    jail recorded them; else None), and sent, the bytes of its JOB and BLOBS frames."""

    __slots__ = ()


def connect(host: Host, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    try:
        if host.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(host.address)
            # The kernel names who listens there: jailccd is root. Anyone else's socket at
            # that path (a directory others may write) gets neither our sources nor trust.
            uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            if uid != 0:
                sock.close()
                raise RemoteFailure(f"{host} is served by uid {uid}, not root: not a jailccd")
        else:
            sock = socket.create_connection((host.address, host.port), timeout=timeout)
            # Frames are written whole; Nagle would hold a small one back for a delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A server that vanishes (a cut cable, a crash without a reset) while we wait for
            # a long compile: notice within about 15 s, not after the result timeout.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 15000)
    except OSError as exc:
        if exc.errno == errno.EACCES:  # something the user can see to: said without asking
            raise RemoteFailure(
                f"cannot connect to {host}: permission denied (the socket, or a directory on"
                " its path, does not let you in: see who jailccd allows, e.g. --allow-group)",
                tell_user=True,
            ) from None
        raise RemoteFailure(f"cannot connect to {host}: {exc.strerror or exc}") from None
    return sock


def open_session(
    sock: socket.socket, host: Host, identity: str
) -> tuple[proto.Channel, dict[str, Any]]:
    """Hello and, on TCP, Kerberos: the channel to send jobs on, and the server's hello."""
    try:
        try:
            want = send_hello(sock, host, identity=identity)
        except (BrokenPipeError, ConnectionResetError):
            # A server that refuses at once (busy) closes without reading our hello: its
            # ERROR may still wait to be read, and says more than the broken pipe.
            proto.expect(sock, proto.HELLO, proto.MAX_HELLO_FRAME)
            raise
        header, _ = proto.expect(sock, proto.HELLO, proto.MAX_HELLO_FRAME)
        version = header.get("protocol")
        if type(version) is not int or version != proto.PROTOCOL_VERSION:
            raise proto.ProtocolError(f"the server speaks protocol {said(version)}, not 2")
        if header.get("role", "server") != "server":
            raise proto.ProtocolError("the other end is no server")
        channel = authenticate(sock, host, want, header)
        channel.alive = sends_alive(header)
        return channel, header
    except HANDSHAKE_ERRORS as exc:
        failure = handshake_failure(host, exc)
        raise (missing_image(host, identity) if failure.code == "image" else failure) from None


def sends_alive(server_hello: dict[str, Any]) -> bool:
    """Whether the server sends ALIVE frames to a job that asks (its hello or READY says)."""
    return server_hello.get("alive") is True


def missing_image(host: Host, identity: str) -> RemoteFailure:
    """The server has no image of our compiler: say which, and the command that makes one."""
    from jailcc.images.identity import compiler_of

    # The identity was just computed for our compiler, and cached under its resolved path.
    compiler = compiler_of(identity) or "/usr/bin/COMPILER"
    return RemoteFailure(
        f"{host} has no toolchain image for {compiler} (identity {identity[:19]}); on the"
        f" server: `jailcc-image build --headers --compiler {compiler} -o"
        f" {os.path.basename(compiler)}.img`, put it in the image directory, then"
        " `systemctl reload jailccd` (or SIGHUP it)",
        tell_user=True,
        code="image",
    )


def send_hello(sock: socket.socket, host: Host, **extra: Any) -> str:
    """Send the client's hello asking for the authentication the host entry calls for; that
    authentication ("local", "gssapi" or "none")."""
    want = "local" if host.kind == "unix" else "gssapi" if host.auth == "kerberos" else "none"
    proto.send(
        sock,
        proto.HELLO,
        proto.hello_header("client", client=f"jailcc {__version__}", auth=want, **extra),
    )
    return want


def authenticate(
    sock: socket.socket, host: Host, want: str, server_hello: dict[str, Any]
) -> proto.Channel:
    """After the server's hello: the channel, sealed once Kerberos is done where we asked for
    it."""
    if server_hello.get("auth") != want:
        # Never let the other end (or someone in between) choose less than we asked for.
        offered = server_hello.get("auth")
        hint = (
            " (an --insecure server: name it with ;auth=none to use it)"
            if offered == "none"
            else ""
        )
        raise RemoteFailure(f"{host} offers authentication {said(offered)!r}, not {want}{hint}")
    if want != "gssapi":
        return proto.Channel(sock)
    from .kerberos import initiate

    return proto.SealedChannel(sock, initiate(sock, host))


# Refusals the user has something to act on (not allowed; the server cannot check who is, or
# could not take the user's ticket, as with a stale keytab): said
# without JAILCC_VERBOSE, once per build through the proxy.
TOLD_REFUSALS = ("unauthorized", "unavailable", "unauthenticated")

# What a refused or broken handshake raises (handshake_failure says it as a RemoteFailure).
HANDSHAKE_ERRORS = (proto.RemoteError, OSError, proto.ProtocolError)


def printable(text: str) -> str:
    """text with each character a terminal would act on (controls: escape sequences could
    retitle it, or write the clipboard) shown as "?"."""
    return "".join(c if c.isprintable() else "?" for c in text)


def said(words: object) -> str:
    """A server's own words, fit for the user's terminal: printable, at most MAX_SAID
    characters."""
    text = printable(str(words)[: MAX_SAID + 1])
    return text if len(text) <= MAX_SAID else text[:MAX_SAID] + "..."


def handshake_failure(host: Host, exc: Exception) -> RemoteFailure:
    if isinstance(exc, proto.RemoteError):
        tell = exc.code in TOLD_REFUSALS
        return RemoteFailure(f"{host} refused: {said(exc.message)}", tell, code=said(exc.code))
    return RemoteFailure(f"{host}: handshake failed: {exc}")


def run_job(
    channel: proto.Channel,
    host: Host,
    job: dict[str, Any],
    blobs: list[bytes],
    max_result: int,
    ready: bool = False,
    provide: Callable[[list[str]], list[bytes]] | None = None,
    gone: Callable[[], bool] | None = None,
) -> RemoteResult:
    """Send a job and read its result. Unless `ready`, the connection's READY (the server
    authorized us and built the jail) is read first; sending the job before it saves a round
    trip, and the job is only read in the jail. A tree job's server may first ask for the
    blobs it lacks (NEED): `provide` gives their bytes. `gone` says whether whoever waits for
    the result has gone (RemoteFailure "gone": the connection must be closed, which stops
    the job in its jail)."""
    state, sent, server, listing = None, job, str(host), None
    if job.get("kind") == "tree":
        # The jail's image does not change under a connection: each system header is checked
        # once per connection (the soundness check still covers every file a compile read).
        state = _TREE_STATE.setdefault(channel, _TreeState())
        sent = {**job, "image": [e for e in job["image"] if tuple(e) not in state.image_checked]}
        listing = proto.job_listing(job)
        if _LISTINGS.known(server, listing[0]):
            sent = {"id": job["id"], "kind": "tree", "image": sent["image"], "listing": listing[0]}
        else:
            sent = _with_tree_delta(sent, state.base)
    if channel.alive:
        sent = {**sent, "alive": ALIVE_SECONDS}
    try:
        channel.sock.settimeout(SEND_TIMEOUT)  # (not what the last answer's reads left)
        wire = channel.send(proto.JOB, sent, blobs, compress=[True] * len(blobs))
        if not ready:
            channel.sock.settimeout(READY_TIMEOUT)
            channel.expect(proto.READY, proto.MAX_HELLO_FRAME)
        answer = _Answer(channel, host, job["id"], max_result, gone)
        frame_type, header, out = answer.next()
        # Up to two: the listing, if the server lost it; then the files its store lacks.
        for _ in range(2):
            if frame_type != proto.NEED or provide is None:
                break
            if listing is not None and header.get("missing") == [listing[0]]:
                _LISTINGS.forget(server, listing[0])
                wire += _send_blobs(channel, job["id"], header, lambda _: [listing[1]])
            else:
                wire += _send_blobs(channel, job["id"], header, provide)
            frame_type, header, out = answer.next()
        if state is not None and listing is not None and frame_type == proto.RESULT:
            state.image_checked.update(tuple(e) for e in sent["image"])
            state.base = (job["root"], {e[0]: e for e in job["tree"]})
            if header.get("listing") == listing[0]:  # the server keeps it: name it next time
                _LISTINGS.add(server, listing[0])
        header, out = proto.expected(proto.RESULT, frame_type, header, out)
    except proto.RemoteError as exc:
        # A first JOB sent before READY meets the handshake's refusal: said as that one is.
        tell = exc.code in TOLD_REFUSALS
        raise RemoteFailure(
            f"{host} refused the job: {said(exc.message)}", tell, code=said(exc.code)
        ) from None
    except (OSError, proto.ProtocolError) as exc:
        raise RemoteFailure(f"{host}: {exc}") from None
    if job.get("kind") == "tree":
        return _tree_result(host, job, header, out)._replace(sent=wire)
    if len(out) != 3 or header.get("id") != job["id"]:
        raise RemoteFailure(f"{host}: malformed result")
    return _result(host, header, out, output=out[2] if header.get("has_output") else None)


class _Answer:
    """A job's frames from the server, past its ALIVE frames: all within RESULT_TIMEOUT; from
    a server that sends ALIVE, never ALIVE_MISSED of its intervals without a byte; and while
    whoever asked is still there (`gone`, checked each second)."""

    def __init__(
        self,
        channel: proto.Channel,
        host: Host,
        job_id: int,
        max_frame: int,
        gone: Callable[[], bool] | None,
    ) -> None:
        self.channel, self.host, self.job_id, self.max_frame = channel, host, job_id, max_frame
        self.gone = gone
        self.deadline = time.monotonic() + RESULT_TIMEOUT
        self.silence = ALIVE_MISSED * ALIVE_SECONDS if channel.alive else RESULT_TIMEOUT

    def next(self) -> tuple[int, dict[str, Any], list[bytes]]:
        while True:
            raw = self.channel.sock
            self._wait(raw)
            self.channel.sock = _Bounded(raw, self.deadline, self.silence)  # type: ignore[assignment]
            try:
                frame_type, header, out = self.channel.recv(self.max_frame, self.max_frame)
            except TimeoutError as exc:
                raise RemoteFailure(f"{self.host}: {exc or 'timed out'}", code="silent") from None
            finally:
                self.channel.sock = raw
            if frame_type != proto.ALIVE:
                return frame_type, header, out
            if header.get("id") != self.job_id:
                raise proto.ProtocolError("ALIVE for another job")

    def _wait(self, sock: socket.socket) -> None:
        """Until the server's next frame begins (RemoteFailure when it is too late, or when
        nobody waits for the answer any more)."""
        quiet_since = time.monotonic()
        while True:
            if self.gone is not None and self.gone():
                raise RemoteFailure("the jailcc that asked is gone", code="gone")
            now = time.monotonic()
            if now >= self.deadline:
                raise RemoteFailure(f"{self.host}: no result in {RESULT_TIMEOUT:.0f} s")
            if now - quiet_since >= self.silence:
                said = f"{self.host}: no word from the server in {self.silence:.0f} s"
                raise RemoteFailure(said, code="silent")
            wait = min(self.deadline - now, quiet_since + self.silence - now)
            if self.gone is not None:
                wait = min(wait, 1.0)
            poller = select.poll()  # (select() cannot take a descriptor past 1023)
            poller.register(sock, select.POLLIN)
            if poller.poll(wait * 1000):
                return


class _Bounded:
    """A socket whose reads each end within `idle` seconds and all before `deadline`: a
    server that trickles a frame a byte at a time gets no longer than one that sends none."""

    def __init__(self, sock: socket.socket, deadline: float, idle: float) -> None:
        self.sock, self.deadline, self.idle = sock, deadline, idle

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no result in {RESULT_TIMEOUT:.0f} s")
        self.sock.settimeout(min(left, self.idle))

    def recv(self, size: int, flags: int = 0) -> bytes:
        self._arm()
        return self.sock.recv(size, flags)

    def recv_into(self, buffer: memoryview, nbytes: int = 0) -> int:
        self._arm()
        return self.sock.recv_into(buffer, nbytes)


def _result(host: Host, header: dict[str, Any], out: list[bytes], **more: Any) -> RemoteResult:
    """A RESULT's common fields, checked; `more`: the fields of its kind of job."""
    exit_code, sig, limit = header.get("exit_code"), header.get("signal"), header.get("limit")
    # An exit status as the kernel gives it (a wait status of 256 would read as 0), or a
    # signal; stdout and stderr no larger than the client passes on.
    status_ok = (type(exit_code) is int and 0 <= exit_code <= 255 and sig is None) or (
        exit_code is None and type(sig) is int and 1 <= sig <= 64
    )
    if not status_ok or len(out[0]) > MAX_OUTPUT or len(out[1]) > MAX_OUTPUT:
        raise RemoteFailure(f"{host}: malformed result")
    times = header.get("times")
    return RemoteResult(
        exit_code=exit_code,
        signal=sig,
        limit=said(limit) if limit is not None else None,
        stdout=out[0],
        stderr=out[1],
        times=_seconds(times) if isinstance(times, dict) else {},
        load=header.get("load") if isinstance(header.get("load"), dict) else None,
        **{"output": None, **more},
    )


def _seconds(times: dict[str, Any]) -> dict[str, float]:
    """A RESULT's times ({"queue", "run"}), keeping only numbers a clock could give."""
    return {
        str(k)[:20]: float(v)
        for k, v in list(times.items())[:8]
        if type(v) in (int, float) and 0 <= v < 1e7
    }


def _with_tree_delta(
    job: dict[str, Any], base: tuple[str, dict[str, list[Any]]] | None
) -> dict[str, Any]:
    """The job with its tree as a difference from the connection's last answered tree job
    (PROTOCOL.md, tree_delta), when it shares the root and the difference is smaller."""
    if base is None or base[0] != job["root"]:
        return job
    files = base[1]
    tree = job["tree"]
    add = [e for e in tree if files.get(e[0]) != e]
    present = {e[0] for e in tree}
    remove = [rel for rel in files if rel not in present]
    if len(add) + len(remove) >= len(tree):
        return job
    rest = {k: v for k, v in job.items() if k != "tree"}
    return {**rest, "tree_delta": {"remove": remove, "add": add}}


def _send_blobs(
    channel: proto.Channel, job_id: int, need: dict[str, Any], provide: Callable
) -> int:
    """The blobs a NEED asks for, in BLOBS frames; the bytes sent."""
    missing = need.get("missing")
    if need.get("id") != job_id or not isinstance(missing, list):
        raise proto.ProtocolError("malformed NEED")
    if not all(isinstance(d, str) for d in missing) or len(set(missing)) != len(missing):
        raise proto.ProtocolError("a NEED must name each blob once")
    wire = 0
    channel.sock.settimeout(SEND_TIMEOUT)
    for start in range(0, len(missing), proto.MAX_BLOBS):
        digests = missing[start : start + proto.MAX_BLOBS]
        data = provide(digests)
        wire += channel.send(
            proto.BLOBS, {"id": job_id, "digests": digests}, data, compress=[True] * len(data)
        )
    return wire


def _tree_result(
    host: Host, job: dict[str, Any], header: dict[str, Any], out: list[bytes]
) -> RemoteResult:
    names, reads, misses = header.get("outputs"), header.get("reads"), header.get("misses", [])
    if (
        header.get("id") != job["id"]
        or not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or len(out) != 2 + len(names)
        or not set(names) <= set(job["outputs"])
        or len(set(names)) != len(names)
        or not isinstance(reads, list)
        or not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r)
            for r in reads
        )
        or not isinstance(misses, list)
        or not all(isinstance(m, str) for m in misses)
    ):
        raise RemoteFailure(f"{host}: malformed result")
    if header.get("driver") != job.get("driver"):  # a server from before "driver": wrong mode
        raise RemoteFailure(f"{host}: the server did not run clang as {job.get('driver')}")
    return _result(
        host,
        header,
        out,
        output_names=tuple(names),
        outputs=tuple(out[2:]),
        reads=tuple((r[0], r[1]) for r in reads),
        misses=tuple(misses) if "misses" in header else None,
    )
