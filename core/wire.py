"""Bounded framing, the one module every layer's channels are built on.

Primitives: recv_start and recv_exact (whole reads, the peer closing told apart from a cut),
json_object (a JSON header, its nesting capped), is_size, write_all, U32 (the big-endian
length every jailcc framing uses). jailcc.protocol (client <-> server frames) and the per-user
proxy's protocol (client/proxy_wire.py) build their own formats on them.

Two formats of the project's internal channels live here too, with their caps:

Messages over a stream socket (the monitor, the network service, a jail's init): a 4-byte
big-endian header length, a JSON header, then the raw blobs whose sizes the header lists under
"blobs"; file descriptors may travel with the first bytes by SCM_RIGHTS. Every size is checked
against a cap before anything is read, so a peer cannot make us allocate unboundedly.

Packets (the monitor <-> the launcher): one JSON object per SOCK_SEQPACKET datagram, with file
descriptors passed alongside by SCM_RIGHTS.

The client imports this module on every compile: standard library only, nothing costly.
"""

from __future__ import annotations

import json
import os
import socket
import struct

TYPE_CHECKING = False  # typing costs milliseconds to import, on every compile; type checkers know
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


U32 = struct.Struct(">I")  # a length (or count) on the wire: 4 bytes, big-endian
MAX_HEADER = 256 * 1024
MAX_PACKET = 64 * 1024
# How deep a JSON header may nest. Ours nest three deep; much deeper would make the decoder, or
# any later repr or re-encoding of the header, recurse past Python's limit (RecursionError).
MAX_NESTING = 32
# How many values a JSON header may hold: a tree job's 20000 files and as many image files
# (about 140000), its RESULT's 50000 reads and 100000 misses (about 250000), with room. Each
# costs up to about 100 bytes once parsed (an empty object 64, its place in a list 8) against
# 2 or 3 on the wire, so without a cap an 8 MiB header of "{}," would take some 250 MiB.
MAX_JSON_VALUES = 1 << 19
PARSED_VALUE_BYTES = 100  # a value's cost once parsed, for a budget (parsed_size)


class WireError(Exception):
    """The peer sent something malformed, oversized or closed the channel early."""


class PeerClosed(WireError):
    """The peer closed the channel at a message boundary."""


def recv_start(
    sock: socket.socket,
    size: int,
    closed: type[Exception] = PeerClosed,
    error: type[Exception] = WireError,
) -> bytes:
    """A message's first size bytes: `closed` if the peer closed cleanly before sending any,
    `error` if it closed after some."""
    first = sock.recv(size, socket.MSG_WAITALL)
    if not first:
        raise closed("channel closed")
    if len(first) < size:
        first += recv_exact(sock, size - len(first), error)
    return first


RECV_AHEAD = 1 << 20  # the most memory taken for bytes a peer has declared but not sent


def recv_exact(sock: socket.socket, size: int, error: type[Exception] = WireError) -> bytes:
    """Exactly size bytes from sock, or `error` if the peer closes first. Memory is taken as
    the bytes come (a part at a time, each at most RECV_AHEAD or as large as what came
    before it), not for the size declared: a peer that declares a large frame and sends
    nothing holds a megabyte, not the frame's limit."""
    parts: list[bytearray] = []
    got = 0
    while got < size:
        want = min(size - got, max(RECV_AHEAD, got))
        part = bytearray(want)
        view = memoryview(part)
        filled = 0
        while filled < want:
            n = sock.recv_into(view[filled:], want - filled)
            if n == 0:
                raise error(f"channel closed after {got + filled} of {size} bytes")
            filled += n
        parts.append(part)
        got += want
    return b"".join(parts)


def json_values(raw: bytes) -> int:
    """About how many values the JSON text holds (its separators and containers; those in
    strings count too, which errs high), at C speed."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1


def parsed_size(raw: bytes) -> int:
    """About the most memory the JSON text takes once parsed, for a budget."""
    return 2 * len(raw) + PARSED_VALUE_BYTES * json_values(raw)


def json_object(raw: bytes, error: type[Exception] = WireError) -> dict[str, Any]:
    """The JSON object in raw, or `error`: malformed, not an object, nested too deep or holding
    more than MAX_JSON_VALUES values."""
    if json_values(raw) > MAX_JSON_VALUES:
        raise error(f"malformed header: more than {MAX_JSON_VALUES} values")
    # Counting brackets is cheap; only a header with many of them needs the real scan.
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING and _nesting(raw) > MAX_NESTING:
        raise error(f"malformed header: nested more than {MAX_NESTING} deep")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"malformed header: {exc}") from None
    if not isinstance(value, dict):
        raise error("header is not an object")
    return value


def _nesting(raw: bytes) -> int:
    """How deep the brackets in raw nest, skipping those inside JSON strings."""
    from itertools import accumulate

    # The strings go first and every byte but the brackets next, and the depth is a running
    # sum: all at C speed (a result lists hundreds of files read). Without a backslash no
    # string holds a quote, so every other piece between quotes is outside the strings.
    if b"\\" in raw:
        import re  # only for odd headers: the client imports this module on every compile

        outside = re.sub(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', b"", raw, flags=re.DOTALL)
    else:
        outside = b"".join(raw.split(b'"')[0::2])
    brackets = outside.translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets), initial=0))


_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def is_size(value: Any) -> bool:
    """Whether a header's value is a size: an int (not a bool), not negative."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def write_all(fd: int, data: bytes) -> None:
    """Write all of data to fd (os.write may write less than it was given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def send_message(
    sock: socket.socket,
    header: dict[str, Any],
    blobs: Sequence[bytes] = (),
    fds: Sequence[int] = (),
) -> None:
    """Send one message; fds (if any) travel by SCM_RIGHTS with its first bytes."""
    header = dict(header, blobs=[len(b) for b in blobs])
    raw = json.dumps(header, separators=(",", ":")).encode()
    if len(raw) > MAX_HEADER:
        raise WireError(f"header of {len(raw)} bytes exceeds {MAX_HEADER}")
    head = U32.pack(len(raw)) + raw
    if fds:
        sent = socket.send_fds(sock, [head], list(fds))
        sock.sendall(head[sent:])
    else:
        sock.sendall(head)
    for blob in blobs:
        sock.sendall(blob)


def recv_message(sock: socket.socket, max_total: int) -> tuple[dict[str, Any], list[bytes]]:
    """Read one message; its blobs may add up to at most max_total bytes."""
    return _recv_rest(sock, recv_start(sock, U32.size), max_total)


def recv_message_with_fds(
    sock: socket.socket, max_total: int, max_fds: int
) -> tuple[dict[str, Any], list[bytes], list[int]]:
    """recv_message for a message that may carry up to max_fds descriptors."""
    first, fds, flags, _ = socket.recv_fds(sock, U32.size, max(max_fds, 1))
    if len(fds) > max_fds or flags & socket.MSG_CTRUNC:
        _close_all(fds)
        raise WireError("message carrying unexpected descriptors")
    if not first:
        _close_all(fds)
        raise PeerClosed("channel closed")
    try:
        header, blobs = _recv_rest(sock, first, max_total)
    except BaseException:
        _close_all(fds)
        raise
    return header, blobs, fds


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


def _recv_rest(
    sock: socket.socket, first: bytes, max_total: int
) -> tuple[dict[str, Any], list[bytes]]:
    if len(first) < U32.size:
        first += recv_exact(sock, U32.size - len(first))
    (length,) = U32.unpack(first)
    if length > MAX_HEADER:
        raise WireError(f"header of {length} bytes exceeds {MAX_HEADER}")
    header = json_object(recv_exact(sock, length))
    sizes = header.pop("blobs", [])
    if not isinstance(sizes, list) or not all(is_size(s) for s in sizes):
        raise WireError("malformed blob sizes")
    if sum(sizes) > max_total:
        raise WireError(f"message of {sum(sizes)} bytes exceeds the cap of {max_total}")
    return header, [recv_exact(sock, s) for s in sizes]


def send_packet(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    raw = json.dumps(message, separators=(",", ":")).encode()
    if len(raw) > MAX_PACKET:
        raise WireError(f"packet of {len(raw)} bytes exceeds {MAX_PACKET}")
    if fds:
        socket.send_fds(sock, [raw], list(fds))
    else:
        sock.send(raw)


def recv_packet(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any], list[int]]:
    raw, fds, flags, _ = socket.recv_fds(sock, MAX_PACKET + 1, max(max_fds, 1))
    if len(fds) > max_fds or flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        _close_all(fds)
        raise WireError("packet truncated or carrying unexpected descriptors")
    if not raw:
        raise PeerClosed("channel closed")
    try:
        message = json_object(raw)
    except WireError:
        _close_all(fds)
        raise
    return message, fds
