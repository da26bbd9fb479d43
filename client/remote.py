"""Sending one compile job to a server and reading its result."""

from __future__ import annotations

import socket
from collections import namedtuple

from jailcc import __version__
from jailcc.server import protocol as proto

from .hosts import Host

TYPE_CHECKING = False  # typing costs milliseconds to import, on every compile; type checkers know
if TYPE_CHECKING:
    from typing import Any

CONNECT_TIMEOUT = 5.0
# The server enforces the job's wall clock; this only bounds a server that went silent.
RESULT_TIMEOUT = 900.0


class RemoteFailure(Exception):
    """The job could not be done remotely (no server, refused, died, timed out): compile
    locally instead. `reason` is short and human."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RemoteResult(namedtuple("RemoteResult", "exit_code signal limit stdout stderr output times")):
    """What the server answered: exit_code (None if killed by signal), signal, limit (the limit
    that stopped the job, if any), stdout, stderr, output (the file, or None), times."""

    __slots__ = ()


def connect(host: Host) -> socket.socket:
    try:
        if host.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(host.address)
        else:
            sock = socket.create_connection((host.address, host.port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise RemoteFailure(f"cannot connect to {host}: {exc.strerror or exc}") from None
    return sock


def handshake(sock: socket.socket, host: Host) -> dict[str, Any]:
    try:
        proto.send(sock, proto.HELLO, proto.hello_header("client", client=f"jailcc {__version__}"))
        header, _ = proto.expect(sock, proto.HELLO, proto.MAX_HELLO_FRAME)
    except proto.RemoteError as exc:
        raise RemoteFailure(f"{host} refused: {exc.message}") from None
    except (OSError, proto.ProtocolError) as exc:
        raise RemoteFailure(f"{host}: handshake failed: {exc}") from None
    return header


def offers_identity(hello: dict[str, Any], identity: str) -> bool:
    for image in hello.get("images") or []:
        for compiler in image.get("compilers") or []:
            if compiler.get("identity") == identity:
                return True
    return False


def run_job(
    sock: socket.socket, host: Host, job: dict[str, Any], blobs: list[bytes], max_result: int
) -> RemoteResult:
    try:
        proto.send(sock, proto.JOB, job, blobs, compress=[True] * len(blobs))
        sock.settimeout(RESULT_TIMEOUT)
        header, out = proto.expect(sock, proto.RESULT, max_result)
    except proto.RemoteError as exc:
        raise RemoteFailure(f"{host} refused the job: {exc.message}") from None
    except (OSError, proto.ProtocolError) as exc:
        raise RemoteFailure(f"{host}: {exc}") from None
    if len(out) != 3 or header.get("id") != job["id"]:
        raise RemoteFailure(f"{host}: malformed result")
    exit_code, sig, limit = header.get("exit_code"), header.get("signal"), header.get("limit")
    if not (exit_code is None or isinstance(exit_code, int)) or not (
        sig is None or isinstance(sig, int)
    ):
        raise RemoteFailure(f"{host}: malformed result")
    times = header.get("times") if isinstance(header.get("times"), dict) else {}
    return RemoteResult(
        exit_code,
        sig,
        limit if isinstance(limit, str) else None,
        out[0],
        out[1],
        out[2] if header.get("has_output") else None,
        times,
    )
