"""Finding jailccd servers, for the per-user proxy and `jailcc hosts`.

Four sources, each giving Server entries tagged with where they came from:

    static(hosts)            JAILCC_HOSTS or a hosts file (client/hosts.py)       "static"
    srv_lookup(domain)       DNS SRV records _jailcc._tcp.DOMAIN (dnspython)      "srv"
    MdnsBrowser(on_change)   DNS-SD _jailcc._tcp.local. on the link (zeroconf)    "mdns"
    scan(pattern, port)      TCP connect + HELLO over a host pattern (lsdistcc)    "scan"

and HostTable, which merges what they found (one row per server, with every source noted).

Trust: only static entries are the user's word. mDNS TXT records, SRV answers and scan replies
can come from anyone on the path, so when a server is also listed statically its principal and
auth mode come from the static entry alone, and Server.to_host() turns any non-static entry
into a Kerberos host (never auth=none). A principal learnt from mDNS still names whom the client
will authenticate: the proxy should accept it only within a policy (e.g. jailcc/* in its realm).

mDNS staleness rule (zeroconf alone would keep a silent server for its PTR TTL, which it
raises to at least 1125 s): every record heard from a service refreshes it; a service not heard
from for `stale_after` seconds gets an SRV query with no known answers, which a live responder
must answer; after `probes` unanswered queries, `probe_timeout` apart, it is dropped and
reported "removed". A dropped service keeps being queried every `stale_after` seconds for
`forget_after` seconds, and comes back ("added") as soon as it answers or announces. A goodbye
(a server closing its announcer) drops it at once. Answers are multicast, so one browser's query
refreshes every browser on the link.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import queue
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace

from jailcc import protocol as proto
from jailcc.dnssd import SERVICE_TYPE, parse_txt

from .hosts import Host, parse_hosts

TYPE_CHECKING = False
if TYPE_CHECKING:
    from zeroconf import RecordUpdate, Zeroconf

log = logging.getLogger(__name__)

SOURCES = ("static", "srv", "mdns", "scan")  # most trusted first: the order fields merge in
MAX_SCAN_HOSTS = 4096


class DiscoveryError(Exception):
    """A source could not answer (as opposed to answering "no servers")."""


@dataclass(frozen=True)
class Server:
    host: str  # the name found: mDNS host, SRV target, scanned name, static host; unix: a path
    port: int  # 0 for a unix socket
    address: str = ""  # an IP address to connect to, when the source gave one
    principal: str = ""  # the Kerberos service principal; "": jailcc/HOST in the default realm
    identities: tuple[str, ...] = ()  # compiler identities served (empty: not known)
    slots: int = 0  # 0: not known
    free: int | None = None  # free slots (mDNS announcements only)
    source: str = "static"
    kind: str = "tcp"  # "tcp" or "unix"
    auth: str = ""  # "kerberos", "none" or "" (not known)
    protocol: int | None = None
    error: str = ""  # scan: the ERROR code the server answered our hello with
    name: str = ""  # mDNS: the service instance name

    def to_host(self) -> Host:
        """The entry as client/hosts.py's Host, for connecting."""
        if self.kind == "unix":
            return Host("unix", self.host, 0, self.slots)
        principal = self.principal or f"jailcc/{self.host.rstrip('.')}"
        auth = self.auth if self.source == "static" and self.auth else "kerberos"
        target = self.address or self.host.rstrip(".")
        return Host("tcp", target, self.port, self.slots, principal, auth)


# Static entries.


def static(hosts: str | Iterable[Host]) -> list[Server]:
    """The user's hosts: JAILCC_HOSTS-style text (raises hosts.HostsError) or parsed ones (the
    proxy's, from JAILCC_HOSTS or a hosts file: hosts.configured)."""
    servers = []
    for h in parse_hosts(hosts) if isinstance(hosts, str) else hosts:
        address = h.address if h.kind == "tcp" and _is_ip(h.address) else ""
        auth = h.auth if h.kind == "tcp" else "local"
        servers.append(
            Server(h.address, h.port, address, h.principal, slots=h.slots, kind=h.kind, auth=auth)
        )
    return servers


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# DNS SRV.


def srv_lookup(
    domain: str,
    *,
    nameservers: Sequence[str] | None = None,
    port: int = 53,
    timeout: float = 3.0,
) -> list[Server]:
    """The servers that SRV records for _jailcc._tcp.DOMAIN name, by priority then weight
    (highest first). Addresses come from the answer's additional section where the DNS server
    put them; otherwise the entry has only the target name. nameservers/port override the
    system's resolver configuration. No such name or no SRV records: []. A resolver that
    cannot answer raises DiscoveryError."""
    import dns.exception
    import dns.rdatatype
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=nameservers is None)
    if nameservers is not None:
        resolver.nameservers = list(nameservers)
        resolver.port = port
    resolver.lifetime = timeout
    qname = f"_jailcc._tcp.{domain.rstrip('.')}."
    try:
        answer = resolver.resolve(qname, "SRV", raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except dns.exception.DNSException as exc:
        raise DiscoveryError(f"SRV lookup of {qname} failed: {exc}") from None
    if answer.rrset is None:
        return []
    addresses: dict[str, list[str]] = {}
    for rrset in answer.response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            addresses.setdefault(rrset.name.to_text().lower(), []).extend(r.address for r in rrset)
    records = sorted(answer.rrset, key=lambda r: (r.priority, -r.weight, r.target.to_text()))
    servers = []
    for r in records:
        target = r.target.to_text()
        if target == ".":  # RFC 2782: the service is decidedly not available here
            continue
        found = addresses.get(target.lower(), [""])
        servers.append(Server(target.rstrip("."), r.port, found[0], source="srv"))
    return servers


# Scanning.

_RANGE = re.compile(r"\[([^\[\]]*)\]")


def expand_pattern(pattern: str, limit: int = MAX_SCAN_HOSTS) -> list[str]:
    """Host names from a pattern: each [SPEC] is replaced by every number in SPEC, a comma list
    of N or A-B items (a zero-padded A pads the numbers to its width). Several brackets combine:
    "build[1-3].example.com", "10.0.[0-1].[1-254]", "rack[1,4]-n[01-16]". Refuses more than
    `limit` names."""
    choices: list[list[str]] = []
    for match in _RANGE.finditer(pattern):
        values: list[str] = []
        for item in match.group(1).split(","):
            low, dash, high = item.strip().partition("-")
            if not low.isdigit() or (dash and not high.isdigit()):
                raise ValueError(f"bad range [{match.group(1)}] in {pattern!r}")
            first, last = int(low), int(high) if dash else int(low)
            if last < first:
                raise ValueError(f"empty range [{match.group(1)}] in {pattern!r}")
            width = len(low) if low.startswith("0") and len(low) > 1 else 0
            values += [str(n).zfill(width) for n in range(first, last + 1)]
            if len(values) > limit:
                raise ValueError(f"{pattern!r} names more than {limit} hosts")
        choices.append(values)
    names = [""]
    parts = _RANGE.split(pattern)  # literal, spec, literal, spec, ..., literal
    for i, literal in enumerate(parts[::2]):
        names = [n + literal for n in names]
        if i < len(choices):
            names = [n + v for n in names for v in choices[i]]
            if len(names) > limit:
                raise ValueError(f"{pattern!r} names more than {limit} hosts")
    if "[" in names[0] or "]" in names[0]:
        raise ValueError(f"unbalanced brackets in {pattern!r}")
    return names


def probe(host: str, port: int, timeout: float = 1.0, identity: str = "") -> Server | None:
    """Ask one host:port whether a jailccd listens there: connect, send a client HELLO, read
    the answer. A HELLO or an ERROR frame (e.g. "image": no image for that identity) makes it a
    jailccd; anything else (refused, silence, not our protocol) gives None."""
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    with sock:
        try:
            address = sock.getpeername()[0]
            # Without a compiler to ask for, a status request: a server answers it with its
            # HELLO (protocol, authentication) before any image check.
            wanted = {"identity": identity} if identity else {"request": "status"}
            hello = proto.hello_header("client", client="jailcc-scan", auth="gssapi", **wanted)
            proto.send(sock, proto.HELLO, hello)
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            frame_type, header, _ = proto.recv(sock, proto.MAX_HELLO_FRAME)
        except (OSError, proto.ProtocolError):
            return None
    if frame_type == proto.ERROR:
        return Server(host, port, address, source="scan", error=str(header.get("code", "")))
    if frame_type != proto.HELLO or not isinstance(header.get("protocol"), int):
        return None
    identities: list[str] = []
    for image in header.get("images") or ():
        for compiler in image.get("compilers", ()) if isinstance(image, dict) else ():
            if isinstance(compiler, dict) and isinstance(compiler.get("identity"), str):
                identities.append(compiler["identity"])
    if not identities and identity:
        identities = [identity]  # it accepted our identity, so it serves it
    auth = {"gssapi": "kerberos", "none": "none"}.get(str(header.get("auth")), "")
    slots = header.get("slots")
    return Server(
        host,
        port,
        address,
        identities=tuple(identities),
        slots=slots if isinstance(slots, int) else 0,
        source="scan",
        auth=auth,
        protocol=header["protocol"],
    )


def scan(
    patterns: str | Sequence[str],
    port: int = proto.DEFAULT_PORT,
    timeout: float = 1.0,
    *,
    identity: str = "",
    concurrency: int = 32,
) -> list[Server]:
    """probe() every host the patterns name (expand_pattern; HOST:PORT overrides port), at most
    `concurrency` at once; the responders, in pattern order. Takes about
    ceil(hosts / concurrency) * timeout at worst."""
    if isinstance(patterns, str):
        patterns = patterns.split()
    targets: list[tuple[str, int]] = []
    for pattern in patterns:
        spec, has_port, port_text = pattern.rpartition(":")
        if has_port and port_text.isdigit():  # host names and IPv4 only: no IPv6 literals
            targets += [(h, int(port_text)) for h in expand_pattern(spec)]
        else:
            targets += [(h, port) for h in expand_pattern(pattern)]
        if len(targets) > MAX_SCAN_HOSTS:
            raise ValueError(f"more than {MAX_SCAN_HOSTS} hosts to scan")
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(targets)))) as pool:
        found = pool.map(lambda t: probe(t[0], t[1], timeout, identity), targets)
        return [s for s in found if s is not None]


# mDNS.

_TYPE_TXT, _TYPE_SRV, _CLASS_IN = 16, 33, 1


class MdnsBrowser:
    """Servers announced with DNS-SD on the link. on_change(event, server) is called from the
    browser's own thread with event "added", "updated" or "removed" (see the staleness rule in
    the module's docstring). interfaces: the addresses to browse on (default: all)."""

    def __init__(
        self,
        on_change: Callable[[str, Server], None] | None = None,
        *,
        interfaces: Sequence[str] | None = None,
        stale_after: float = 30.0,
        probe_timeout: float = 2.0,
        probes: int = 2,
        forget_after: float = 600.0,
        resolve_timeout: float = 3.0,
    ) -> None:
        self.on_change = on_change
        self.interfaces = list(interfaces) if interfaces else None
        self.stale_after = stale_after
        self.probe_timeout = probe_timeout
        self.probes = probes
        self.forget_after = forget_after
        self.resolve_timeout = resolve_timeout
        self._lock = threading.Lock()
        self._servers: dict[str, Server] = {}  # key: the service name, lower-cased
        self._due: dict[str, float] = {}  # when a known service becomes stale
        self._probes: dict[str, tuple[int, float]] = {}  # queries unanswered, last sent
        self._lost: dict[str, tuple[str, float, float]] = {}  # name, lost at, next query
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._zc: Zeroconf | None = None
        self._browser: object = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from zeroconf import InterfaceChoice, RecordUpdateListener, ServiceBrowser, Zeroconf

        browser = self

        class Heard(RecordUpdateListener):  # runs in zeroconf's event loop: only notes things
            def async_update_records(
                self, zc: Zeroconf, now: float, records: list[RecordUpdate]
            ) -> None:
                for update in records:
                    record = update.new
                    if record.type in (_TYPE_SRV, _TYPE_TXT) and not record.is_expired(now):
                        browser._heard(record.name)

        self._zc = Zeroconf(interfaces=self.interfaces or InterfaceChoice.All)
        try:
            self._thread = threading.Thread(target=self._run, name="mdns-browser", daemon=True)
            self._thread.start()
            self._zc.add_listener(Heard(), None)
            self._browser = ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._on_service])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._zc is not None:
            self._zc.close()  # cancels the browser too
            self._zc = None

    def __enter__(self) -> MdnsBrowser:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self) -> list[Server]:
        with self._lock:
            return sorted(self._servers.values(), key=lambda s: s.name.lower())

    # Zeroconf's threads: queue work for ours.
    def _on_service(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: object
    ) -> None:
        from zeroconf import ServiceStateChange

        event = "remove" if state_change is ServiceStateChange.Removed else "resolve"
        self._queue.put((event, name))

    def _heard(self, name: str) -> None:
        key = name.lower()
        if not key.endswith("." + SERVICE_TYPE.lower()):
            return
        with self._lock:
            if key in self._servers:
                self._due[key] = self._next_due()
                self._probes.pop(key, None)
            elif key in self._lost:
                self._queue.put(("resolve", name))

    def _next_due(self) -> float:  # jittered, so that one browser's query usually serves all
        return time.monotonic() + self.stale_after * random.uniform(1.0, 1.25)

    # Our thread.
    def _run(self) -> None:
        tick = max(0.05, min(1.0, self.probe_timeout / 4, self.stale_after / 4))
        while True:
            try:
                item = self._queue.get(timeout=tick)
            except queue.Empty:
                item = ("", "")
            if item is None:
                return
            event, name = item
            try:
                if event == "resolve":
                    self._resolve(name)
                elif event == "remove":
                    self._drop(name, lost=False)
                self._check_stale()
            except Exception:  # a bad record or a closing zeroconf must not end the browser
                if self._zc is None or self._zc.done:
                    return
                log.exception("mDNS browser: %s %s", event, name)

    def _emit(self, event: str, server: Server) -> None:
        if self.on_change is not None:
            self.on_change(event, server)

    def _resolve(self, name: str) -> None:
        zc = self._zc
        if zc is None:
            return
        info = zc.get_service_info(SERVICE_TYPE, name, timeout=int(self.resolve_timeout * 1000))
        if info is None or info.port is None or not info.server:
            with self._lock:  # unresolved: keep asking, as for a lost one, until it answers
                key, now = name.lower(), time.monotonic()
                if key not in self._servers and key not in self._lost:
                    self._lost[key] = (name, now, now + self.stale_after)
            return
        txt = parse_txt(
            {k.lower(): v for k, v in info.decoded_properties.items() if isinstance(k, str)}
        )
        addresses = info.parsed_addresses()
        v4 = [a for a in addresses if ":" not in a]
        server = Server(
            info.server.rstrip("."),
            info.port,
            (v4 or addresses or [""])[0],
            txt.principal,
            txt.identities,
            txt.slots or 0,
            txt.free,
            "mdns",
            auth="kerberos" if txt.principal else "none",
            protocol=txt.protocol,
            name=info.name,
        )
        key = name.lower()
        with self._lock:
            old = self._servers.get(key)
            self._servers[key] = server
            self._due[key] = self._next_due()
            self._probes.pop(key, None)
            self._lost.pop(key, None)
        if old != server:
            self._emit("added" if old is None else "updated", server)

    def _drop(self, name: str, lost: bool) -> None:
        key = name.lower()
        now = time.monotonic()
        with self._lock:
            server = self._servers.pop(key, None)
            self._due.pop(key, None)
            self._probes.pop(key, None)
            if lost:
                self._lost[key] = (name, now, now + self.stale_after)
            else:
                self._lost.pop(key, None)
        if server is not None:
            self._emit("removed", server)

    def _query(self, name: str) -> None:
        """An SRV question without known answers: a live responder must answer it."""
        from zeroconf import DNSOutgoing, DNSQuestion

        zc = self._zc
        if zc is None:
            return
        out = DNSOutgoing(0)  # a query
        out.add_question(DNSQuestion(name, _TYPE_SRV, _CLASS_IN))
        zc.send(out)

    def _check_stale(self) -> None:
        now = time.monotonic()
        to_query, to_drop = [], []
        with self._lock:
            for key, due in self._due.items():
                if now < due:
                    continue
                sent, last = self._probes.get(key, (0, 0.0))
                if sent and now - last < self.probe_timeout:
                    continue
                if sent >= self.probes:
                    to_drop.append(self._servers[key].name)
                else:
                    self._probes[key] = (sent + 1, now)
                    to_query.append(self._servers[key].name)
            for key, (name, lost_at, next_query) in list(self._lost.items()):
                if now - lost_at > self.forget_after:
                    del self._lost[key]
                elif now >= next_query:
                    self._lost[key] = (name, lost_at, now + self.stale_after)
                    to_query.append(name)
        for name in to_drop:
            self._drop(name, lost=True)
        for name in to_query:
            with contextlib.suppress(Exception):
                self._query(name)


# Merging.


@dataclass(frozen=True)
class HostEntry:
    server: Server  # merged: each field from the most trusted source that has it
    sources: tuple[str, ...]  # where it was found, most trusted first
    found: tuple[Server, ...] = field(repr=False, default=())  # what each source said


def _key_parts(server: Server) -> list[tuple[str, int]]:
    if server.kind == "unix":
        return [("unix:" + server.host, 0)]
    parts = [(server.host.lower().rstrip("."), server.port)]
    if server.address:
        parts.append((server.address, server.port))
    return parts


def _merge(group: list[Server]) -> Server:
    group = sorted(group, key=lambda s: SOURCES.index(s.source) if s.source in SOURCES else 9)
    best = group[0]
    values = {}
    for f in fields(Server):
        if f.name in ("principal", "auth", "source", "kind"):
            # Whom to authenticate, and how: only the most trusted source may say.
            continue
        if f.name == "identities":
            values[f.name] = tuple(dict.fromkeys(i for s in group for i in s.identities))
            continue
        for s in group:
            value = getattr(s, f.name)
            if value not in ("", 0, None, ()):
                values[f.name] = value
                break
    return replace(best, **values)


class HostTable:
    """Every server found, merged across sources: two entries are one server when they share a
    host name (case and a final dot aside) or an address, and the port. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_source: dict[str, dict[tuple[str, int, str], Server]] = {}

    @staticmethod
    def _id(server: Server) -> tuple[str, int, str]:
        return (server.host.lower(), server.port, server.name)

    def set_source(self, source: str, servers: Iterable[Server]) -> None:
        """Replace everything one source found (static, srv, scan: after each look-up)."""
        with self._lock:
            self._by_source[source] = {self._id(s): s for s in servers}

    def put(self, server: Server) -> None:
        with self._lock:
            self._by_source.setdefault(server.source, {})[self._id(server)] = server

    def discard(self, server: Server) -> None:
        with self._lock:
            self._by_source.get(server.source, {}).pop(self._id(server), None)

    def on_mdns(self, event: str, server: Server) -> None:
        """An MdnsBrowser on_change callback."""
        if event == "removed":
            self.discard(server)
        else:
            self.put(server)

    def entries(self) -> list[HostEntry]:
        with self._lock:
            everything = [s for group in self._by_source.values() for s in group.values()]
        # Union-find over shared names and addresses.
        parent = list(range(len(everything)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        owner: dict[tuple[str, int], int] = {}
        for i, server in enumerate(everything):
            for part in _key_parts(server):
                if part in owner:
                    parent[root(i)] = root(owner[part])
                else:
                    owner[part] = i
        groups: dict[int, list[Server]] = {}
        for i, server in enumerate(everything):
            groups.setdefault(root(i), []).append(server)
        rows = []
        for group in groups.values():
            merged = _merge(group)
            sources = tuple(dict.fromkeys(s.source for s in sorted(group, key=_rank)))
            rows.append(HostEntry(merged, sources, tuple(group)))
        return sorted(rows, key=lambda e: (_rank(e.server), e.server.host, e.server.port))


def _rank(server: Server) -> int:
    return SOURCES.index(server.source) if server.source in SOURCES else len(SOURCES)
