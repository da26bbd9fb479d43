"""The network service's side of the privilege separation: thin calls, one per request of the
root monitor's tables (monitor/monitor.py), as OpenSSH's mm_* wrappers are to its monitor.

The service runs as its own unprivileged uid; whatever it learns from a peer, it can only ask
the monitor to check it. One MonitorLink (the main channel) opens a ConnectionLink per accepted
connection, over which that connection's handshake and hand-over go.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from typing import Any

from jailcc import wire

# A GSSAPI token, or a sealed frame (a status answer: its header is capped by MAX_HEADER).
MAX_ANSWER_BYTES = wire.MAX_HEADER + 128 * 1024


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
        said = reply.get("error") or reply.get("message") or "refused"  # (gss_step: "message")
        raise MonitorRefused(str(said)[:300], str(reply.get("code", "")))
    return reply


class MonitorLink:
    """The main channel: shared by every thread of the service, one request at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.closed = False
        self.opened = 0  # connections numbered in the order we open them

    def _request(self, request: dict[str, Any], fds: list[int] = ()) -> tuple[dict, list[int]]:
        with self.lock:
            try:
                reply, _, out_fds = _exchange(self.sock, request, fds=fds)
            except MonitorGone:
                self.closed = True
                raise
        return reply, out_fds

    def open(self, client: socket.socket) -> ConnectionLink:
        """A channel for a newly accepted connection: the monitor gets a copy of its socket
        and the other end of the channel. Not answered on the main channel; a refusal (too
        many connections) is the first thing the channel says."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self.lock:
                self.opened += 1
                number = self.opened
                try:
                    wire.send_message(
                        self.sock,
                        {"op": "open", "conn": number},
                        fds=[client.fileno(), theirs.fileno()],
                    )
                except (OSError, wire.WireError) as exc:
                    self.closed = True
                    raise MonitorGone(f"the monitor did not take the connection: {exc}") from None
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ConnectionLink(ours, number)

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
    """One connection's requests: the handshake, then the hand-over or one sealed frame."""

    def __init__(self, sock: socket.socket, conn: int) -> None:
        self.sock, self.id = sock, conn

    def _request(
        self, op: str, blobs: list[bytes] = (), **fields: Any
    ) -> tuple[dict[str, Any], list[bytes]]:
        reply, out_blobs, fds = _exchange(self.sock, {"op": op, **fields}, blobs)
        for fd in fds:
            socket.close(fd)
        return reply, out_blobs

    def gss_step(self, token: bytes) -> tuple[dict[str, Any], bytes]:
        """The monitor's accept step: ({"complete", and at the end "principal", "allowed",
        maybe "unavailable"}, our token for the client). MonitorRefused("unauthenticated")."""
        reply, blobs = self._request("gss_step", [token])
        _checked(reply)
        return reply, blobs[0] if blobs else b""

    def seal(self, frame: bytes) -> bytes:
        """The monitor's seal (wrap token) of one frame, ERROR or STATUS, the first and only
        sealed frame of a connection that gets no jail."""
        reply, blobs = self._request("seal", [frame])
        _checked(reply)
        if len(blobs) != 1:
            raise MonitorGone("the monitor sealed nothing")
        return blobs[0]

    def serve(
        self,
        identity: str,
        hello: dict[str, Any],
        handed_over: Callable[[], None],
        answer: Callable[[int, dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        """Have the monitor hand the connection to a jail (it holds its own copy of the
        socket: handed_over() is called once the request is out, to close ours); answer the
        jail's questions it relays, answer(jail id, question), until the connection ends.
        Returns the end: {"error", "jail", "built", "teardowns"}."""
        try:
            wire.send_message(self.sock, {"op": "serve", "identity": identity, "hello": hello})
            handed_over()
            while True:
                message, _ = wire.recv_message(self.sock, 0)
                if message.get("withdraw") is True:
                    continue  # (it came after our answer to the question it withdrew)
                question = message.get("ask")
                if not isinstance(question, dict):
                    return _checked(message)
                wire.send_message(self.sock, answer(int(message["jail"]), question))
        except (OSError, wire.WireError, KeyError, TypeError, ValueError) as exc:
            raise MonitorGone(f"the monitor broke off the hand-over: {exc}") from None

    def spoke(self) -> bool:
        """Whether the monitor has said something (or closed) while a question is open: it
        does so only to withdraw the question (the jail gave its queued job up)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def take_withdrawal(self) -> None:
        """Read what the monitor said while a question was open: it must be a withdrawal."""
        try:
            message, _ = wire.recv_message(self.sock, 0)
        except (OSError, wire.WireError) as exc:
            raise MonitorGone(f"the monitor broke off the hand-over: {exc}") from None
        if message.get("withdraw") is not True:
            raise MonitorGone("the monitor spoke out of turn")

    def close(self) -> None:
        self.sock.close()
