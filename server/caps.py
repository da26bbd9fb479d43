"""Who may hold one of the server's connections (the network service's accept loop asks).

At most `total` connections at once; of those at most `unauthenticated` from network peers
that have not authenticated yet, and at most `per_peer` of those from any one peer (a uid on
the Unix socket, an IPv4 address, an IPv6 /64: server/service.py peer_key); at most `per_user`
handed to one user's jails. So peers that never authenticate (or may not compile) cannot take
more than their share, nor can one user take every connection and jail from the others.

A full pool of network peers waiting to authenticate does not lock newcomers out: silent
connections from a handful of addresses, each opened again when its handshake deadline drops
it, would otherwise keep every Kerberos user away at no cost. A newcomer takes the place of
the oldest waiting connection of the peer that holds the most, when that peer holds more than
the newcomer's would (so the heavy peers lose places, never the light ones), or else of the
oldest one in the pool once that has waited EVICT_AFTER seconds, longer than a handshake takes
(so even one connection from each of many addresses must hurry). That connection is shut down;
its handshake fails, and its handler, which still holds it, closes it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass

EVICT_AFTER = 2.0  # seconds: a client sends its hello at once, a Kerberos handshake takes ms


def is_local(peer: str) -> bool:
    return peer.startswith("uid ")  # (peer_key's name for a Unix socket's peer)


@dataclass(eq=False)
class _Waiting:
    conn: object  # its socket, shut down if it must give its place up
    peer: str
    since: float


class ConnectionCaps:
    """The counts, under one lock. A connection is known by the object the caller passes
    (its socket): admit it, then tell authenticated() or close() of the same one."""

    def __init__(self, total: int, unauthenticated: int, per_peer: int, per_user: int) -> None:
        self.total, self.unauthenticated, self.per_peer = total, unauthenticated, per_peer
        self.per_user = per_user
        self.lock = threading.Lock()
        self.open = 0
        self.waiting = 0  # network connections not authenticated yet
        self.waiting_by_peer: dict[str, int] = {}
        self.by_user: dict[str, int] = {}
        self._queue: dict[object, _Waiting] = {}  # waiting connections, the oldest first
        self.evicted = 0

    def admit(self, peer: str, conn: object) -> str | None:
        """Count a new connection from peer as unauthenticated; or why it may not open. conn:
        its socket, shut down if it must later give its place up."""
        victim: _Waiting | None = None
        with self.lock:
            if self.open >= self.total:
                return "too many connections"
            local = is_local(peer)
            if self.waiting_by_peer.get(peer, 0) >= self.per_peer:
                return f"too many connections from {peer} waiting to authenticate"
            if not local and self.waiting >= self.unauthenticated:
                victim = self._victim(peer)
                if victim is None:
                    return "too many connections waiting to authenticate"
                self._stop_waiting(victim)
                self.evicted += 1
            self.open += 1
            self.waiting += not local
            self.waiting_by_peer[peer] = self.waiting_by_peer.get(peer, 0) + 1
            self._queue[conn] = _Waiting(conn, peer, time.monotonic())
            if victim is not None and isinstance(victim.conn, socket.socket):
                # Under the lock: its handler closes it only after close() below, so the
                # descriptor is still this connection's.
                with contextlib.suppress(OSError):  # (it has closed already)
                    victim.conn.shutdown(socket.SHUT_RDWR)
            return None

    def _victim(self, newcomer: str) -> _Waiting | None:
        """Whose place a newcomer from the network takes when the pool is full (the module's
        docstring), or None."""
        counts = self.waiting_by_peer
        heavy = max((p for p in counts if not is_local(p)), key=counts.__getitem__, default=None)
        if heavy is None:
            return None
        network = (w for w in self._queue.values() if not is_local(w.peer))  # oldest first
        if counts[heavy] > counts.get(newcomer, 0) + 1:
            return next(w for w in network if w.peer == heavy)
        oldest = next(network)
        return oldest if time.monotonic() - oldest.since >= EVICT_AFTER else None

    def take_user(self, user: str) -> str | None:
        """Count a connection about to be handed to user's jail; or why it may not be."""
        with self.lock:
            if self.by_user.get(user, 0) >= self.per_user:
                return f"{self.per_user} connections of {user} are open already"
            self.by_user[user] = self.by_user.get(user, 0) + 1
            return None

    def release_user(self, user: str) -> None:
        with self.lock:
            left = self.by_user[user] - 1
            if left:
                self.by_user[user] = left
            else:
                del self.by_user[user]

    def authenticated(self, conn: object) -> None:
        with self.lock:
            waiting = self._queue.get(conn)
            if waiting is not None:
                self._stop_waiting(waiting)

    def close(self, conn: object) -> None:
        """The connection ends (call before closing its socket)."""
        with self.lock:
            self.open -= 1
            waiting = self._queue.get(conn)
            if waiting is not None:
                self._stop_waiting(waiting)

    def _stop_waiting(self, waiting: _Waiting) -> None:
        del self._queue[waiting.conn]
        self.waiting -= not is_local(waiting.peer)
        left = self.waiting_by_peer[waiting.peer] - 1
        if left:
            self.waiting_by_peer[waiting.peer] = left
        else:
            del self.waiting_by_peer[waiting.peer]
