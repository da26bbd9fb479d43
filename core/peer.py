"""Who is at the other end of a connection, as the server names a peer: shared by the root
monitor, which decides on it (monitor/local_auth.py), and the network service, which shows it."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

_UCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass(frozen=True)
class Peer:
    kind: str  # "unix" or "tcp"
    user: str  # a user name for unix peers, "host:port" for tcp peers
    uid: int | None = None
    pid: int | None = None

    def __str__(self) -> str:
        return self.user if self.uid is None else f"{self.user}(uid {self.uid})"


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of a Unix socket's peer, as the kernel saw them at connect()."""
    pid, uid, gid = _UCRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return pid, uid, gid
