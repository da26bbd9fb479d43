"""Who may use a server in local mode: peers on the Unix socket, identified by the kernel
(SO_PEERCRED), allowed by user name or Unix group. Fail closed: nobody is allowed unless named.
"""

from __future__ import annotations

import grp
import pwd
import socket

from jailcc.peer import Peer, peer_credentials


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
