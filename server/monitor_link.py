"""The network service's side of the privilege separation: thin calls, one per request of the
root monitor's tables (monitor/monitor.py), as OpenSSH's mm_* wrappers are to its monitor.

The service runs as its own unprivileged uid; whatever it learns from a peer, it can only ask
the monitor to check it. One MonitorLink (the main channel) opens a ConnectionLink per accepted
connection, over which that connection's handshake and hand-over go.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from jailcc import wire

MAX_ANSWER_BYTES = 64 * 1024  # a GSSAPI token or an exported context


class MonitorGone(Exception):
    """The monitor closed its end or answered nonsense: the service must stop."""


class MonitorRefused(Exception):
    """The monitor said no; `code` (when it gave one) is what to tell the peer."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def _exchange(
    sock: socket.socket, request: dict[str, Any], blobs: list[bytes] = (), fds: list[int] = ()
) -> tuple[dict[str, Any], list[bytes], list[int]]:
    try:
        wire.send_message(sock, request, blobs, fds)
        return wire.recv_message_with_fds(sock, MAX_ANSWER_BYTES, 1)
    except (OSError, wire.WireError) as exc:
        raise MonitorGone(f"the monitor did not answer {request.get('op')}: {exc}") from None


def _checked(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("ok") is not True:
        raise MonitorRefused(str(reply.get("error", "refused"))[:300], str(reply.get("code", "")))
    return reply


class MonitorLink:
    """The main channel: shared by every thread of the service, one request at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.closed = False

    def _request(self, request: dict[str, Any], fds: list[int] = ()) -> tuple[dict, list[int]]:
        with self.lock:
            try:
                reply, _, out_fds = _exchange(self.sock, request, fds=fds)
            except MonitorGone:
                self.closed = True
                raise
        return reply, out_fds

    def open(self, client: socket.socket) -> tuple[ConnectionLink, int]:
        """A channel for a newly accepted connection (the monitor gets a copy of its socket);
        and the catalog generation the monitor is at."""
        reply, fds = self._request({"op": "open"}, [client.fileno()])
        try:
            _checked(reply)
            if len(fds) != 1:
                raise MonitorGone("the monitor opened no channel")
        except BaseException:
            for fd in fds:
                socket.close(fd)
            raise
        link = ConnectionLink(socket.socket(fileno=fds[0]), int(reply["conn"]))
        return link, int(reply["catalog"])

    def catalog(self) -> dict[str, Any]:
        return _checked(self._request({"op": "catalog"})[0])

    def evict(self, conn: int) -> None:
        _checked(self._request({"op": "evict", "conn": conn})[0])

    def set_idle(self, idle: bool) -> None:
        _checked(self._request({"op": "idle", "idle": idle})[0])

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class ConnectionLink:
    """One connection's requests: the handshake, then the hand-over or an exported context."""

    def __init__(self, sock: socket.socket, conn: int) -> None:
        self.sock, self.id = sock, conn

    def _request(
        self, op: str, blobs: list[bytes] = (), **fields: Any
    ) -> tuple[dict[str, Any], list[bytes]]:
        reply, out_blobs, fds = _exchange(self.sock, {"op": op, **fields}, blobs)
        for fd in fds:
            socket.close(fd)
        return reply, out_blobs

    def local_peer(self) -> dict[str, Any]:
        """{"user", "uid", "pid", "allowed"}: the Unix peer as the kernel names it."""
        return _checked(self._request("local_peer")[0])

    def insecure(self) -> dict[str, Any]:
        return _checked(self._request("insecure")[0])

    def gss_step(self, token: bytes) -> tuple[dict[str, Any], bytes]:
        """The monitor's accept step: ({"complete", and at the end "principal", "allowed",
        maybe "unavailable"}, our token for the client). MonitorRefused("unauthenticated")."""
        reply, blobs = self._request("gss_step", [token])
        _checked(reply)
        return reply, blobs[0] if blobs else b""

    def export_context(self) -> bytes:
        reply, blobs = self._request("export_context")
        _checked(reply)
        if len(blobs) != 1:
            raise MonitorGone("the monitor sent no context")
        return blobs[0]

    def serve(
        self,
        identity: str,
        hello: dict[str, Any],
        on_jail: Callable[[int, float | None], None],
        answer: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        """Have the monitor hand the connection to a jail; answer the jail's questions it
        relays until the connection ends. on_jail(jail id, seconds its build took or None)
        is called once the jail is there. Returns the end: {"error", "teardowns"}."""
        try:
            wire.send_message(self.sock, {"op": "serve", "identity": identity, "hello": hello})
            first, _ = wire.recv_message(self.sock, 0)
            _checked(first)
            built = first.get("built")
            on_jail(int(first["jail"]), float(built) if built is not None else None)
            while True:
                message, _ = wire.recv_message(self.sock, 0)
                question = message.get("ask")
                if not isinstance(question, dict):
                    return _checked(message)
                wire.send_message(self.sock, answer(question))
        except (OSError, wire.WireError, KeyError, TypeError, ValueError) as exc:
            raise MonitorGone(f"the monitor broke off the hand-over: {exc}") from None

    def close(self) -> None:
        self.sock.close()
