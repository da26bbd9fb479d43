"""The jailcc wire protocol, version 1 (see PROTOCOL.md for the document).

A frame is a 4-byte big-endian length N followed by N bytes: a 1-byte frame type, a 4-byte
big-endian header length H, H bytes of a JSON object, then the frame's blobs back to back.
The header lists each blob's length on the wire under "blobs" and, for compressed blobs, its
length once decompressed under "raw"; both are checked against caps before anything is read or
decompressed. Blobs marked compressed are LZ4 blocks.

This module is imported by the client on every compile: standard library and lz4 only.
"""

from __future__ import annotations

import json
import socket
import struct

from jailcc.sandbox.wire import recv_exact

TYPE_CHECKING = False  # typing costs milliseconds to import, on every compile; type checkers know
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_PORT = 3633

# Frame types.
HELLO = 1
JOB = 2
RESULT = 3
ERROR = 4

FRAME_NAMES = {HELLO: "HELLO", JOB: "JOB", RESULT: "RESULT", ERROR: "ERROR"}

# Caps. Before the hello exchange only a small frame is accepted.
MAX_HELLO_FRAME = 64 * 1024
MAX_HEADER = 256 * 1024
DEFAULT_MAX_FRAME = 256 * 1024 * 1024
MAX_BLOBS = 64

_PREFIX = struct.Struct(">IBI")  # frame length, type, header length


class ProtocolError(Exception):
    """The peer broke the protocol: malformed, oversized or unexpected frame."""


class ConnectionClosed(ProtocolError):
    """The peer closed the connection (cleanly at a frame boundary, or mid-frame)."""


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
    if len(head) > MAX_HEADER:
        raise ProtocolError(f"header of {len(head)} bytes exceeds {MAX_HEADER}")
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


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    return recv_exact(sock, size, ConnectionClosed)


def recv(
    sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME, max_raw: int | None = None
) -> tuple[int, dict[str, Any], list[bytes]]:
    """Read one frame: (type, header, blobs decompressed). max_frame caps the bytes on the wire,
    max_raw the decompressed total (default: 4 x max_frame)."""
    first = sock.recv(_PREFIX.size, socket.MSG_WAITALL)
    if not first:
        raise ConnectionClosed("connection closed")
    if len(first) < _PREFIX.size:
        first += _recv_exact(sock, _PREFIX.size - len(first))
    body_len, frame_type, head_len = _PREFIX.unpack(first)
    if body_len > max_frame:
        raise ProtocolError(f"frame of {body_len} bytes exceeds the cap of {max_frame}")
    if frame_type not in FRAME_NAMES:
        raise ProtocolError(f"unknown frame type {frame_type}")
    if head_len > MAX_HEADER or 5 + head_len > body_len:
        raise ProtocolError("bad header length")
    try:
        header = json.loads(_recv_exact(sock, head_len))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"malformed header: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not an object")
    sizes = header.pop("blobs", [])
    raws = header.pop("raw", [None] * len(sizes))
    if (
        not isinstance(sizes, list)
        or not isinstance(raws, list)
        or len(sizes) != len(raws)
        or len(sizes) > MAX_BLOBS
        or not all(_is_size(s) for s in sizes)
        or not all(r is None or _is_size(r) for r in raws)
    ):
        raise ProtocolError("malformed blob table")
    if 5 + head_len + sum(sizes) != body_len:
        raise ProtocolError("blob lengths do not add up to the frame length")
    limit = 4 * max_frame if max_raw is None else max_raw
    if sum(r if r is not None else s for s, r in zip(sizes, raws, strict=True)) > limit:
        raise ProtocolError(f"frame would decompress to more than {limit} bytes")
    blobs = []
    for size, raw in zip(sizes, raws, strict=True):
        data = _recv_exact(sock, size)
        blobs.append(data if raw is None else _decompress(data, raw))
    return frame_type, header, blobs


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def expect(
    sock: socket.socket, wanted: int, max_frame: int = DEFAULT_MAX_FRAME
) -> tuple[dict[str, Any], list[bytes]]:
    """Read a frame of the wanted type; an ERROR frame raises RemoteError."""
    frame_type, header, blobs = recv(sock, max_frame)
    if frame_type == ERROR:
        raise RemoteError(str(header.get("code", "error")), str(header.get("message", "")))
    if frame_type != wanted:
        raise ProtocolError(f"expected {FRAME_NAMES[wanted]}, got {FRAME_NAMES[frame_type]}")
    return header, blobs


class RemoteError(Exception):
    """The server refused a request with an ERROR frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def hello_header(role: str, **extra: Any) -> dict[str, Any]:
    return {"protocol": PROTOCOL_VERSION, "role": role, **extra}
