"""Asking one server for its state: the client's side of the status request (PROTOCOL.md,
"Status"), for `jailcc mon` and `jailcc trace`.

The client sends its usual hello with "request": "status" and reads one STATUS frame: at once
on a Unix socket or an --insecure TCP port, sealed after the Kerberos handshake otherwise. The
answer is checked against the shape PROTOCOL.md gives before anyone displays it: a server is
trusted to say how busy it is, not to make a client crash or hoard memory.
"""

from __future__ import annotations

import math
import socket
from typing import Any

from jailcc import protocol as proto

from .hosts import Host
from .remote import (
    HANDSHAKE_ERRORS,
    RemoteFailure,
    authenticate,
    connect,
    handshake_failure,
    send_hello,
)

MAX_JOBS = 1000
MAX_IMAGES = 1000
MAX_TEXT = 1024  # any one string in the answer

# The header's keys and what each must be.
_NUMBER, _COUNT, _TEXT, _FLAG = "number", "count", "text", "flag"
_TOP = {
    "server": _TEXT,
    "protocol": _COUNT,
    "host": _TEXT,
    "uptime": _NUMBER,
    "slots": _COUNT,
    "slots_now": _COUNT,
    "running": _COUNT,
    "queued": _COUNT,
    "owner_busy": _FLAG,
    "speed": _NUMBER,
}
_TOTALS = {
    "connections": _COUNT,
    "jobs": _COUNT,
    "ok": _COUNT,
    "failed": _COUNT,
    "evicted": _COUNT,
    "bytes_in": _COUNT,
    "bytes_out": _COUNT,
}
_TOTALS_BY_NAME = ("limits", "refused", "auth_failures")  # each {name: count}
_JOB = {"user": _TEXT, "elapsed": _NUMBER, "jail": _COUNT}
_COMPILER = {"name": _TEXT, "identity": _TEXT, "version": _TEXT}


def fetch_status(host: Host, timeout: float = 3.0) -> dict[str, Any]:
    """The server's STATUS header (the "blobs" and "raw" tables removed), checked; every
    failure (cannot connect, refused, timed out, malformed) raises RemoteFailure."""
    sock = connect(host, timeout)
    try:
        header = _request(sock, host)
    finally:
        sock.close()
    try:
        return check_status(header)
    except ValueError as exc:
        raise RemoteFailure(f"{host}: malformed status: {exc}") from None


def _request(sock: socket.socket, host: Host) -> dict[str, Any]:
    try:
        want = send_hello(sock, host, request="status")
        if want != "gssapi":
            header, _ = proto.expect(sock, proto.STATUS, proto.MAX_STATUS_FRAME)
            return header
        hello, _ = proto.expect(sock, proto.HELLO, proto.MAX_HELLO_FRAME)
        channel = authenticate(sock, host, want, hello)
        header, _ = channel.expect(proto.STATUS, proto.MAX_STATUS_FRAME)
        return header
    except HANDSHAKE_ERRORS as exc:
        raise handshake_failure(host, exc) from None


def check_status(header: dict[str, Any]) -> dict[str, Any]:
    """header if it has the STATUS shape; ValueError naming what is wrong otherwise."""
    _check_fields(header, _TOP, "status")
    images = _list(header.get("images"), MAX_IMAGES, "images")
    for image in images:
        _check_fields(image, {"name": _TEXT}, "an image")
        for compiler in _list(image.get("compilers"), MAX_IMAGES, "an image's compilers"):
            _check_fields(compiler, _COMPILER, "a compiler")
    for job in _list(header.get("jobs"), MAX_JOBS, "jobs"):
        _check_fields(job, _JOB, "a job")
        if job.get("source") is not None and not _is(job.get("source"), _TEXT):
            raise ValueError("a job's source is neither text nor null")
    totals = header.get("totals")
    _check_fields(totals, _TOTALS, "totals")
    for name in _TOTALS_BY_NAME:
        counts = totals.get(name)
        if not isinstance(counts, dict) or len(counts) > 100:
            raise ValueError(f"totals.{name} is not a small object")
        if not all(_is(k, _TEXT) and _is(v, _COUNT) for k, v in counts.items()):
            raise ValueError(f"totals.{name} holds something other than counts")
    return header


def _check_fields(value: Any, fields: dict[str, str], what: str) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object")
    for key, kind in fields.items():
        if not _is(value.get(key), kind):
            raise ValueError(f"{what}: {key} is not a {kind}")


def _list(value: Any, cap: int, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > cap:
        raise ValueError(f"{what} is not a list of at most {cap}")
    return value


def _is(value: Any, kind: str) -> bool:
    if kind == _TEXT:
        return isinstance(value, str) and len(value) <= MAX_TEXT
    if kind == _FLAG:
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if kind == _COUNT:
        return isinstance(value, int) and value >= 0
    return math.isfinite(value) and value >= 0
