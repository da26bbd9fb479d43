"""Which servers to use: the hosts the user configured, read as distcc reads DISTCC_HOSTS and its
hosts files. The one place that knows where they are and parses them (the Python client, the
per-user proxy, its discovery and `jailcc hosts` all come here).

Where, the first that is there wins:
    JAILCC_HOSTS                        the variable, when set (set but empty: no servers)
    $XDG_CONFIG_HOME/jailcc/hosts       the user's file; $HOME/.config/jailcc/hosts when
                                        XDG_CONFIG_HOME is unset, empty or relative
    /etc/jailcc/hosts                   the machine's file (SYSTEM_HOSTS_FILE)
    nothing configured                  the local jailccd's socket, if there is one (and the
                                        proxy looks for servers by mDNS: client/proxy.py)
A file is there when it exists: an empty one (or only comments) means no servers, and one that
cannot be read is an error, not a reason to look further. The proxy re-reads its file when it
changes (proxy.py); which user file it reads is part of the proxy's key (proxy_wire.py).

Syntax, the same in the variable and the files: entries separated by white space or newlines;
`#` starts a comment that runs to the end of its line.
    unix:/run/jailccd/jailccd.sock      a server's Unix socket (local mode)
    tcp:HOST:PORT  or  HOST:PORT        a server's TCP port ([v6addr]:PORT for IPv6), Kerberos
    ENTRY/N                             N slots on that server: what the proxy plans with (and
                                        how many connections it keeps open there) instead of
                                        what the server says; 0 or none: as the server says
and, after a TCP entry's port and slots, options separated by ";":
    ;principal=jailcc/HOST@REALM        the server's Kerberos principal; the default is
                                        jailcc/HOST in the default realm, HOST exactly as
                                        written (never canonicalized through DNS)
    ;auth=none                          a server started with --insecure (no Kerberos): only
                                        ever used when asked for here, so nobody in between
                                        can talk a client out of authenticating
A socket path has slashes too, so for unix: entries the rule is: a last component of digits
only is always the slot count (unix:/run/jailccd/jailccd.sock/4: 4 slots). A socket whose own
name is all digits is written with a count after it: unix:/run/s/7/0 is the socket /run/s/7
with as many slots as its server says. A socket path cannot end in "/".
"""

from __future__ import annotations

import os
from collections import namedtuple

TYPE_CHECKING = False  # typing costs milliseconds to import, on every compile
if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_SOCKET = "/run/jailccd/jailccd.sock"
# The machine's hosts file. Tests point this elsewhere in-process (they never write the real
# one); nothing else changes it.
SYSTEM_HOSTS_FILE = "/etc/jailcc/hosts"
VARIABLE = "JAILCC_HOSTS"
_EXPECTED = "expected unix:PATH, HOST:PORT or tcp:HOST:PORT, each optionally followed by /SLOTS"


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
    """The user's host list is wrong: the message is one line naming the variable or the file
    and line, and the entry."""


class HostsConfig(namedtuple("HostsConfig", "where text is_file")):
    """Hosts the user configured: where ("JAILCC_HOSTS" or a file's path), the text, and
    whether it came from a file (errors then name the line)."""

    __slots__ = ()

    def parse(self) -> list[Host]:
        return parse_hosts(self.text, self.where, self.is_file)


def parse_hosts(text: str, where: str = VARIABLE, numbered: bool = False) -> list[Host]:
    """Entries of JAILCC_HOSTS or a hosts file; HostsError names `where` (and the line, when
    `numbered`) and the bad entry."""
    hosts = []
    for number, line in enumerate(text.split("\n"), 1):
        for item in line.partition("#")[0].split():
            try:
                hosts.append(_parse_entry(item))
            except ValueError as exc:
                place = f"{where}:{number}" if numbered else where
                raise HostsError(f"{place}: bad entry {item!r}: {exc}") from None
    return hosts


def _parse_entry(item: str) -> Host:
    entry, *options = item.split(";")
    principal, auth = "", "kerberos"
    for option in options:
        key, _, value = option.partition("=")
        if key == "principal" and value:
            principal = value
        elif key == "auth" and value in ("kerberos", "none"):
            auth = value
        else:
            raise ValueError(f"unknown option {option!r} (principal=NAME or auth=none)")
    spec, slots = entry, 0
    head, slash, count = entry.rpartition("/")
    if slash and count.isdigit():
        spec, slots = head, int(count)
    elif slash and not entry.startswith("unix:"):
        raise ValueError(f"bad slot count {count!r} after '/'")
    if spec.startswith("unix:"):
        if options:
            raise ValueError("options are for TCP servers only")
        path = spec[5:]
        if not path and slots:
            raise ValueError("no socket path before the slot count")
        if not path.startswith("/"):
            raise ValueError("a unix socket path must be absolute")
        if path.endswith("/"):
            raise ValueError("a unix socket path cannot end in '/'")
        return Host("unix", path, 0, slots)
    host, _, port = spec.removeprefix("tcp:").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(_EXPECTED)
    return Host("tcp", host.strip("[]"), int(port), slots, principal, auth)


def user_hosts_file(env: Mapping[str, str] = os.environ) -> str:
    """The user's hosts file's path ("" with neither XDG_CONFIG_HOME nor HOME). The native
    client (jailcc.c) computes the same, for the proxy's key: keep them alike."""
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg.startswith("/"):  # the XDG spec: a relative path is invalid, and ignored
        return f"{xdg}/jailcc/hosts"
    home = env.get("HOME", "")
    return f"{home}/.config/jailcc/hosts" if home else ""


def _files(env: Mapping[str, str]) -> list[str]:
    user = user_hosts_file(env)
    return [user, SYSTEM_HOSTS_FILE] if user else [SYSTEM_HOSTS_FILE]


def configured(env: Mapping[str, str] = os.environ) -> HostsConfig | None:
    """The hosts the user configured, None when nothing is: at most an open or two."""
    text = env.get(VARIABLE)
    if text is not None:
        return HostsConfig(VARIABLE, text, False)
    for path in _files(env):
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return HostsConfig(path, f.read(), True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise HostsError(f"{path}: cannot read the hosts file: {reason}") from None
    return None


def config_stamp(env: Mapping[str, str] = os.environ) -> tuple[object, ...]:
    """What changes whenever candidates(env) may give another answer: which source is used, and
    that file's identity, size and times (a stat or two; the proxy asks about once a second)."""
    if VARIABLE in env:
        return (VARIABLE, env[VARIABLE])
    for path in _files(env):
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            return (path, exc.errno)
        return (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return ("", os.path.exists(DEFAULT_SOCKET))


def default_hosts() -> list[Host]:
    """With nothing configured: the local jailccd's socket, if there is one."""
    return [Host("unix", DEFAULT_SOCKET)] if os.path.exists(DEFAULT_SOCKET) else []


def candidates(env: Mapping[str, str] = os.environ) -> list[Host]:
    """The servers to try for a job, best first; HostsError if the configuration is wrong."""
    config = configured(env)
    return default_hosts() if config is None else config.parse()
