"""Which servers to try, in order: JAILCC_HOSTS, or the local server's socket.

JAILCC_HOSTS is a space-separated list in the spirit of DISTCC_HOSTS:
    unix:/run/jailccd/jailccd.sock      a server's Unix socket (local mode)
    tcp:HOST:PORT  or  HOST:PORT        a server's TCP port ([v6addr]:PORT for IPv6), Kerberos
    HOST:PORT/N                         N slots (accepted, used by later load balancing)
and, after a TCP entry, options separated by ";":
    ;principal=jailcc/HOST@REALM        the server's Kerberos principal; the default is
                                        jailcc/HOST in the default realm, HOST exactly as
                                        written (never canonicalized through DNS)
    ;auth=none                          a server started with --insecure (no Kerberos): only
                                        ever used when asked for here, so nobody in between
                                        can talk a client out of authenticating
The choice sits behind candidates(): discovery and load balancing replace it later.
"""

from __future__ import annotations

import os
from collections import namedtuple

DEFAULT_SOCKET = "/run/jailccd/jailccd.sock"


class Host(
    namedtuple("Host", "kind address port slots principal auth", defaults=(0, 0, "", "kerberos"))
):
    """kind: "unix" or "tcp"; address: a socket path or a host; port; slots (0: unknown);
    principal: the server's Kerberos principal (tcp); auth: "kerberos" or "none" (tcp)."""

    __slots__ = ()

    @property
    def service_principal(self) -> str:
        return self.principal or f"jailcc/{self.address}"

    def __str__(self) -> str:
        return f"unix:{self.address}" if self.kind == "unix" else f"tcp:{self.address}:{self.port}"


class HostsError(ValueError):
    pass


def parse_hosts(text: str) -> list[Host]:
    hosts = []
    for item in text.split():
        entry, *options = item.split(";")
        principal, auth = "", "kerberos"
        for option in options:
            key, _, value = option.partition("=")
            if key == "principal" and value:
                principal = value
            elif key == "auth" and value in ("kerberos", "none"):
                auth = value
            else:
                raise HostsError(f"JAILCC_HOSTS: unknown option {option!r} in {item!r}")
        if options and entry.startswith("unix:"):
            raise HostsError(f"JAILCC_HOSTS: options are for TCP servers only: {item!r}")
        spec, slots = entry, 0
        if "/" in entry and not entry.startswith("unix:"):
            spec, _, count = entry.rpartition("/")
            if not count.isdigit():
                raise HostsError(f"JAILCC_HOSTS: bad slot count in {entry!r}")
            slots = int(count)
        if spec.startswith("unix:"):
            path = spec[5:]
            if not path.startswith("/"):
                raise HostsError(f"JAILCC_HOSTS: unix socket path must be absolute: {entry!r}")
            hosts.append(Host("unix", path, 0, slots))
            continue
        spec = spec.removeprefix("tcp:")
        host, _, port = spec.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise HostsError(f"JAILCC_HOSTS: expected unix:PATH or HOST:PORT, got {entry!r}")
        hosts.append(Host("tcp", host.strip("[]"), int(port), slots, principal, auth))
    return hosts


def candidates(environ: dict[str, str] | os._Environ[str] = os.environ) -> list[Host]:
    """The servers to try for a job, best first."""
    text = environ.get("JAILCC_HOSTS")
    if text is not None:
        return parse_hosts(text)
    if os.path.exists(DEFAULT_SOCKET):
        return [Host("unix", DEFAULT_SOCKET)]
    return []
