"""Who is at the other end of a connection, and who may use a server in local mode: peers on
the Unix socket, identified by the kernel (SO_PEERCRED), allowed by user name or Unix group.
Fail closed: nobody is allowed unless named.

Shared by the root monitor, which decides (it reads the peer's credentials from its own copy
of the socket before it makes a jail), and the network service, which refuses a peer early,
before reading a byte from it, and names it in status answers and the log."""

from __future__ import annotations

import grp
import pwd
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


def unix_peer(conn: socket.socket) -> Peer:
    pid, uid, _gid = peer_credentials(conn)
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"
    return Peer("unix", name, uid, pid)


class LocalAuthorizer:
    def __init__(self, users: list[str], groups: list[str], allow_tcp: bool) -> None:
        self.users = frozenset(users)
        self.groups = frozenset(groups)
        self.allow_tcp = allow_tcp  # --insecure: any TCP peer, unauthenticated
        for group in self.groups:
            try:
                grp.getgrnam(group)
            except KeyError:
                raise ValueError(f"no Unix group named {group!r}") from None

    def describe(self) -> str:
        parts = [
            f"users {', '.join(sorted(self.users))}" if self.users else "",
            f"groups {', '.join(sorted(self.groups))}" if self.groups else "",
        ]
        return " and ".join(p for p in parts if p) or "nobody"

    def allowed(self, peer: Peer) -> bool:
        if peer.kind == "tcp":
            return self.allow_tcp
        if peer.user in self.users:
            return True
        if not self.groups or peer.uid is None:
            return False
        try:
            primary = pwd.getpwuid(peer.uid).pw_gid
        except KeyError:
            return False
        for group in self.groups:
            try:
                entry = grp.getgrnam(group)
            except KeyError:
                continue
            if entry.gr_gid == primary or peer.user in entry.gr_mem:
                return True
        return False
