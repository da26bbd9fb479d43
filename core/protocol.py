"""The jailcc wire protocol, version 2 (see PROTOCOL.md for the document).

A frame is a 4-byte big-endian length N followed by N bytes: a 1-byte frame type, a 4-byte
big-endian header length H, H bytes of a JSON object, then the frame's blobs back to back.
The header lists each blob's length on the wire under "blobs" and, for compressed blobs, its
length once decompressed under "raw"; both are checked against caps before anything is read or
decompressed. Blobs marked compressed are LZ4 blocks. After the handshake a connection's frames
go sealed (SealedChannel).

The client, the network service, the jobs inside each jail and `jailccd selftest` all speak it.
Its reads, header parsing and header cap are jailcc.wire's. This module is imported by the
client on every compile: standard library and lz4 only.
"""

from __future__ import annotations

import json
import socket
import struct
import time

from jailcc.wire import (
    MAX_HEADER,
    MAX_JSON_VALUES,
    U32,
    is_size,
    json_object,
    json_values,
    parsed_size,
    recv_exact,
    recv_start,
)

TYPE_CHECKING = False  # typing costs milliseconds to import, on every compile; type checkers know
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

PROTOCOL_VERSION = 2
DEFAULT_PORT = 3633

# Frame types.
HELLO = 1
JOB = 2
RESULT = 3
ERROR = 4
AUTH = 5  # a GSSAPI context token, in blob 0 (before the connection is sealed)
READY = 6  # the connection's jail is ready and the peer authorized (first sealed frame)
STATUS = 7  # the server's state, the answer to a hello with "request": "status"
NEED = 8  # a tree job's blobs the jail's store lacks, by digest (server to client)
BLOBS = 9  # some of those blobs (client to server)
ALIVE = 10  # a job that asked is still queued or running (server to client)

FRAME_NAMES = {
    HELLO: "HELLO",
    JOB: "JOB",
    RESULT: "RESULT",
    ERROR: "ERROR",
    AUTH: "AUTH",
    READY: "READY",
    STATUS: "STATUS",
    NEED: "NEED",
    BLOBS: "BLOBS",
    ALIVE: "ALIVE",
}

# A job may ask ("alive": seconds, from 1 to 60) for an ALIVE frame at least that often while
# it waits for a slot or runs, from a server whose READY says "alive": true, so that its
# client can tell a stopped or cut-off server from a long compile.
ALIVE_RANGE = (1, 60)

# Caps. Before the hello exchange only a small frame is accepted.
MAX_HELLO_FRAME = 64 * 1024
# A frame's JSON header is capped at jailcc.wire's MAX_HEADER, but for the frames that list a
# tree job's files (JOB, NEED, RESULT: up to 20000 paths and digests each way), which may carry
# up to MAX_TREE_HEADER. Every frame is capped as a whole first (max_frame), so before
# authentication (64 KiB frames) this changes nothing.
MAX_TREE_HEADER = 8 * 1024 * 1024
DEFAULT_MAX_FRAME = 256 * 1024 * 1024
MAX_BLOBS = 64
# A GSSAPI token before the context is complete (a Kerberos AP-REQ with a PAC fits easily).
MAX_AUTH_TOKEN = 48 * 1024
MAX_AUTH_ROUNDS = 4
# A STATUS frame (the client's cap: the server's report is bounded well below it).
MAX_STATUS_FRAME = 1024 * 1024
# What wrapping adds to a frame: the token header, padding and checksum, our sequence number.
SEAL_OVERHEAD = 4096

_PREFIX = struct.Struct(">IBI")  # frame length, type, header length


def header_cap(frame_type: int) -> int:
    """The largest JSON header a frame of this type may carry."""
    return MAX_TREE_HEADER if frame_type in (JOB, NEED, RESULT) else MAX_HEADER


class ProtocolError(Exception):
    """The peer broke the protocol: malformed, oversized or unexpected frame."""


class ConnectionClosed(ProtocolError):
    """The peer closed the connection cleanly, at a frame boundary."""


class TruncatedFrame(ProtocolError):
    """The connection ended inside a frame (the peer died, or someone cut it)."""


def _compress(data: bytes) -> bytes:
    import lz4.block

    return lz4.block.compress(data, store_size=False)


def _decompress(data: bytes, size: int) -> bytes:
    import lz4.block

    try:
        out = lz4.block.decompress(data, uncompressed_size=size)
    except lz4.block.LZ4BlockError as exc:
        raise ProtocolError(f"corrupt compressed data: {exc}") from None
    if len(out) != size:
        raise ProtocolError("compressed data has the wrong length")
    return out


# What a tree job's listing leaves out: what differs between connections for the same job.
LISTING_OMITS = frozenset({"id", "image", "listing", "tree_delta", "alive"})


def job_listing(header: dict[str, Any]) -> tuple[str, bytes]:
    """A tree job as the blob both ends name it by (PROTOCOL.md, "listing"): its digest, and
    the bytes, the JOB header but LISTING_OMITS with its tree sorted by path, as compact JSON
    with sorted keys. The same job in the next build has the same listing."""
    import hashlib  # only the proxy and the jails need it, not every compile

    job = {k: v for k, v in header.items() if k not in LISTING_OMITS}
    job["tree"] = sorted(job.get("tree", []))
    data = json.dumps(job, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def encode(
    frame_type: int,
    header: dict[str, Any],
    blobs: Sequence[bytes] = (),
    compress: Sequence[bool] | None = None,
) -> bytes:
    """One frame as bytes. compress[i] says whether blob i goes LZ4-compressed."""
    wire_blobs, raw = [], []
    for i, blob in enumerate(blobs):
        if compress and compress[i] and len(blob) > 64:
            packed = _compress(blob)
            wire_blobs.append(packed)
            raw.append(len(blob))
        else:
            wire_blobs.append(blob)
            raw.append(None)
    header = dict(header, blobs=[len(b) for b in wire_blobs], raw=raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    if len(head) > header_cap(frame_type):
        raise ProtocolError(f"header of {len(head)} bytes exceeds {header_cap(frame_type)}")
    body_len = 1 + 4 + len(head) + sum(len(b) for b in wire_blobs)
    return b"".join([_PREFIX.pack(body_len, frame_type, len(head)), head, *wire_blobs])


def send(
    sock: socket.socket,
    frame_type: int,
    header: dict[str, Any],
    blobs: Sequence[bytes] = (),
    compress: Sequence[bool] | None = None,
) -> int:
    data = encode(frame_type, header, blobs, compress)
    sock.sendall(data)
    return len(data)


def _recv_exact(sock: socket.socket | DeadlineSocket, size: int) -> bytes:
    return recv_exact(sock, size, TruncatedFrame)


# `reserve`: asked what a frame will hold in memory before it is read, before its header is
# parsed and before its blobs are decompressed: the wire bytes (a sealed frame's three times
# over: the token, the unwrapped message and the blobs cut from it), then those plus what the
# header parses to (wire.parsed_size), then those plus the declared decompressed sizes. Its
# False refuses the frame (OverBudget).


class OverBudget(ProtocolError):
    """`reserve` said no: the frame was not read (or not decompressed). Its bytes on the wire
    were read and dropped, so nothing of it is kept; a sealed channel cannot go on after it."""


def recv(
    sock: socket.socket | DeadlineSocket,
    max_frame: int = DEFAULT_MAX_FRAME,
    max_raw: int | None = None,
    reserve: Callable[[int], bool] | None = None,
) -> tuple[int, dict[str, Any], list[bytes]]:
    """Read one frame: (type, header, blobs decompressed). max_frame caps the bytes on the wire,
    max_raw the decompressed total (default: 4 x max_frame)."""
    first = _recv_start(sock, _PREFIX.size)
    unread = _PREFIX.unpack(first)[0] - 5  # the body after the prefix

    def read(size: int) -> bytes:
        nonlocal unread
        unread -= size
        return _recv_exact(sock, size)

    def reserved(wire: int, raw: int) -> bool:
        assert reserve is not None
        if reserve(wire + raw):
            return True
        _discard(sock, unread)
        return False

    return _parse(first, read, max_frame, max_raw, reserved if reserve is not None else None)


def _discard(sock: socket.socket | DeadlineSocket, size: int) -> None:
    """Read and drop `size` bytes, a little at a time."""
    while size > 0:
        size -= len(_recv_exact(sock, min(size, 1 << 16)))


def _recv_start(sock: socket.socket | DeadlineSocket, size: int) -> bytes:
    """A frame's first `size` bytes: ConnectionClosed if the peer closed cleanly before any,
    TruncatedFrame if it closed after some."""
    return recv_start(sock, size, ConnectionClosed, TruncatedFrame)


class DeadlineSocket:
    """A socket read and written against absolute deadlines, for the frames before
    authentication. Every call's timeout is the time left, not a fresh one, so a peer that
    trickles a byte at a time gains nothing: all must be done by `deadline` (time.monotonic()),
    and each frame must be whole within `frame_seconds` of its first byte."""

    def __init__(self, sock: socket.socket, deadline: float, frame_seconds: float) -> None:
        self.sock = sock
        self.family = sock.family
        self.deadline = deadline
        self.frame_seconds = frame_seconds
        self.frame_deadline: float | None = None  # set by a frame's first byte

    def next_frame(self) -> None:
        self.frame_deadline = None

    def recv(self, size: int, flags: int = 0) -> bytes:
        end = self._arm(reading=True)
        try:
            data = self.sock.recv(size, flags)
        except TimeoutError:
            raise self._expired(end) from None
        self._started(len(data))
        return data

    def recv_into(self, buffer: memoryview, nbytes: int = 0) -> int:
        end = self._arm(reading=True)
        try:
            got = self.sock.recv_into(buffer, nbytes)
        except TimeoutError:
            raise self._expired(end) from None
        self._started(got)
        return got

    def sendall(self, data: bytes) -> None:
        end = self._arm(reading=False)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise self._expired(end) from None

    def _started(self, got: int) -> None:
        if got and self.frame_deadline is None:
            self.frame_deadline = time.monotonic() + self.frame_seconds

    def _arm(self, reading: bool) -> float:
        """Set the socket's timeout to what is left; the deadline that applies."""
        end = self.deadline
        if reading and self.frame_deadline is not None:
            end = min(end, self.frame_deadline)
        left = end - time.monotonic()
        if left <= 0:
            raise self._expired(end)
        self.sock.settimeout(left)
        return end

    def _expired(self, end: float) -> TimeoutError:
        if end == self.deadline:
            return TimeoutError("the handshake's deadline passed")
        return TimeoutError(f"a frame not whole {self.frame_seconds:g} s after its first byte")


def decode(
    data: bytes,
    max_frame: int,
    max_raw: int | None = None,
    reserve: Callable[[int, int], bool] | None = None,
) -> tuple[int, dict, list]:
    """One frame from bytes that must hold exactly that frame (a sealed frame's payload)."""
    view, offset = memoryview(data), _PREFIX.size

    def read(size: int) -> bytes:
        nonlocal offset
        if offset + size > len(view):
            raise ProtocolError("frame shorter than its lengths say")
        offset += size
        return bytes(view[offset - size : offset])

    if len(data) < _PREFIX.size:
        raise ProtocolError("frame shorter than its prefix")
    frame = _parse(bytes(view[: _PREFIX.size]), read, max_frame, max_raw, reserve)
    if offset != len(data):
        raise ProtocolError("trailing bytes after the frame")
    return frame


def _parse(
    prefix: bytes,
    read: Callable[[int], bytes],
    max_frame: int,
    max_raw: int | None,
    reserve: Callable[[int, int], bool] | None = None,
) -> tuple[int, dict[str, Any], list[bytes]]:
    body_len, frame_type, head_len = _PREFIX.unpack(prefix)
    if body_len > max_frame:
        raise ProtocolError(f"frame of {body_len} bytes exceeds the cap of {max_frame}")
    if reserve is not None and not reserve(body_len, 0):
        raise OverBudget(f"a frame of {body_len} bytes")
    if frame_type not in FRAME_NAMES:
        raise ProtocolError(f"unknown frame type {frame_type}")
    if head_len > header_cap(frame_type) or 5 + head_len > body_len:
        raise ProtocolError("bad header length")
    head = read(head_len)
    # (Past the cap on values json_object refuses it: nothing to reserve for.)
    parsed = parsed_size(head) if reserve and json_values(head) <= MAX_JSON_VALUES else 0
    if parsed and not reserve(body_len, parsed):
        raise OverBudget(f"a frame of {body_len} bytes whose header parses to {parsed}")
    header = json_object(head, ProtocolError)
    del head
    sizes = header.pop("blobs", [])
    raws = header.pop("raw", [None] * len(sizes) if isinstance(sizes, list) else None)
    if (
        not isinstance(sizes, list)
        or not isinstance(raws, list)
        or len(sizes) != len(raws)
        or len(sizes) > MAX_BLOBS
        or not all(is_size(s) for s in sizes)
        or not all(r is None or is_size(r) for r in raws)
    ):
        raise ProtocolError("malformed blob table")
    if 5 + head_len + sum(sizes) != body_len:
        raise ProtocolError("blob lengths do not add up to the frame length")
    limit = 4 * max_frame if max_raw is None else max_raw
    unpacked = sum(r for r in raws if r is not None)
    if unpacked + sum(s for s, r in zip(sizes, raws, strict=True) if r is None) > limit:
        raise ProtocolError(f"frame would decompress to more than {limit} bytes")
    if unpacked and reserve is not None and not reserve(body_len, parsed + unpacked):
        raise OverBudget(f"a frame of {body_len} bytes that unpacks to {unpacked} more")
    blobs = []
    for size, raw in zip(sizes, raws, strict=True):
        data = read(size)
        blobs.append(data if raw is None else _decompress(data, raw))
    return frame_type, header, blobs


def expect(
    sock: socket.socket, wanted: int, max_frame: int = DEFAULT_MAX_FRAME
) -> tuple[dict[str, Any], list[bytes]]:
    """Read a frame of the wanted type; an ERROR frame raises RemoteError."""
    frame_type, header, blobs = recv(sock, max_frame)
    return expected(wanted, frame_type, header, blobs)


class RemoteError(Exception):
    """The server refused a request with an ERROR frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def hello_header(role: str, **extra: Any) -> dict[str, Any]:
    return {"protocol": PROTOCOL_VERSION, "role": role, **extra}


class Channel:
    """Frames over a socket as they are: local mode, where the kernel vouches for the peer and
    nobody sits between the two ends of a Unix socket."""

    sealed = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.alive = False  # the server sends ALIVE frames to a job that asks (its READY says)

    def send(
        self,
        frame_type: int,
        header: dict[str, Any],
        blobs: Sequence[bytes] = (),
        compress: Sequence[bool] | None = None,
    ) -> int:
        return send(self.sock, frame_type, header, blobs, compress)

    def recv(
        self,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_raw: int | None = None,
        reserve: Callable[[int], bool] | None = None,
    ) -> tuple[int, dict[str, Any], list[bytes]]:
        return recv(self.sock, max_frame, max_raw, reserve)

    def expect(
        self, wanted: int, max_frame: int = DEFAULT_MAX_FRAME
    ) -> tuple[dict[str, Any], list[bytes]]:
        """Read a frame of the wanted type; an ERROR frame raises RemoteError."""
        frame_type, header, blobs = self.recv(max_frame)
        return expected(wanted, frame_type, header, blobs)


class SealedChannel(Channel):
    """Frames wrapped by an established GSSAPI security context, with integrity and
    confidentiality both ways (integrity alone measured no faster on real, LZ4-compressed
    sources: BENCHMARKS.md). On the wire each is a u32 length and a wrap token whose
    payload is a u64 sequence number and the frame. The numbers run 0, 1, 2... in each
    direction, so a replayed, dropped or reordered frame is refused even where the mechanism
    would only flag it; a tampered one fails the token's own check."""

    sealed = True
    confidential = True  # only a benchmark turns it off, to measure what it costs
    _SEQ = struct.Struct(">Q")

    def __init__(self, sock: socket.socket, context: Any) -> None:
        super().__init__(sock)
        self.context = context
        self.send_seq = 0
        self.recv_seq = 0

    def send(
        self,
        frame_type: int,
        header: dict[str, Any],
        blobs: Sequence[bytes] = (),
        compress: Sequence[bool] | None = None,
    ) -> int:
        frame = encode(frame_type, header, blobs, compress)
        token = self.context.wrap(self._SEQ.pack(self.send_seq) + frame, self.confidential)
        token = token.message
        self.send_seq += 1
        self.sock.sendall(U32.pack(len(token)) + token)
        return 4 + len(token)

    def recv(
        self,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_raw: int | None = None,
        reserve: Callable[[int], bool] | None = None,
    ) -> tuple[int, dict[str, Any], list[bytes]]:
        (size,) = U32.unpack(_recv_start(self.sock, U32.size))
        if size > max_frame + _PREFIX.size + SEAL_OVERHEAD:
            raise ProtocolError(f"sealed frame of {size} bytes exceeds the cap of {max_frame}")
        if reserve is not None and not reserve(3 * size):
            _discard(self.sock, size)
            raise OverBudget(f"a sealed frame of {size} bytes")
        token = _recv_exact(self.sock, size)
        try:
            unwrapped = self.context.unwrap(token)
        except Exception as exc:  # the mechanism's own errors: bad MIC, duplicate, gap...
            raise IntegrityError(
                f"frame {self.recv_seq} failed its integrity check: {exc}"
            ) from None
        if self.confidential and not unwrapped.encrypted:
            raise IntegrityError("an unencrypted frame: encryption is required")
        payload = unwrapped.message
        if len(payload) < 8 or self._SEQ.unpack_from(payload)[0] != self.recv_seq:
            raise IntegrityError(f"frame out of sequence (expected number {self.recv_seq})")
        self.recv_seq += 1
        # (Its wire bytes are reserved already: only what it unpacks to is asked for.)
        reserved = (
            None if reserve is None else lambda _wire, raw: not raw or reserve(3 * size + raw)
        )
        return decode(payload[8:], max_frame, max_raw, reserved)


class IntegrityError(ProtocolError):
    """A sealed frame was tampered with, replayed, reordered or not encrypted as required."""


def expected(
    wanted: int, frame_type: int, header: dict[str, Any], blobs: list[bytes]
) -> tuple[dict[str, Any], list[bytes]]:
    """A received frame, if of the wanted type; an ERROR frame raises RemoteError, any other
    ProtocolError."""
    if frame_type == ERROR:
        raise RemoteError(str(header.get("code", "error")), str(header.get("message", "")))
    if frame_type != wanted:
        raise ProtocolError(f"expected {FRAME_NAMES[wanted]}, got {FRAME_NAMES[frame_type]}")
    return header, blobs
