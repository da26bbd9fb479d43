"""Discovery: mDNS announcements between network namespaces (tests/netns.py), the staleness
rule for a cut link, the scanner against fake jailccd responders, SRV look-ups against a tiny
DNS server on 127.0.0.1, static entries, and the merged host table."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from jailcc import protocol as proto
from jailcc.client.discovery import (
    DiscoveryError,
    HostTable,
    MdnsBrowser,
    Server,
    expand_pattern,
    scan,
    srv_lookup,
    static,
)
from jailcc.client.hosts import HostsError
from jailcc.dnssd import (
    MAX_TXT_BYTES,
    TxtRecord,
    decode_identity,
    encode_identity,
    parse_txt,
    txt_properties,
)
from jailcc.server.announce import Announcer
from netns import NetLab

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

ID_GCC = "sha256:" + "0123456789abcdef" * 4
ID_GXX = "sha256:" + "fedcba9876543210" * 4

# An announcer in its own process (inside a namespace): reads commands from stdin.
ANNOUNCER = r"""
import json, sys
from jailcc.server.announce import Announcer
a = Announcer(**json.loads(sys.argv[1]))
a.start()
print("ready", a.name, flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "free":
        a.update(free_slots=int(args[0]))
    elif cmd == "quit":
        break
a.close()
print("closed", flush=True)
"""


def wait_for(what: Callable[[], object], timeout: float, interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = what()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def read_line(proc: subprocess.Popen[str], timeout: float = 15) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no answer from the announcer"
    return proc.stdout.readline().strip()


class Announcers:
    """Announcer processes in a lab's hosts."""

    def __init__(self, lab: NetLab) -> None:
        self.lab = lab
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, *hosts: str, principal: bool = True) -> None:
        for host in hosts:
            config = {
                "port": 3633,
                "principal": f"jailcc/{host}.example.test@EXAMPLE.TEST" if principal else "",
                "images": self.identities(host),
                "slots": 4,
                "host_name": host,
                "addresses": [self.lab.address(host)],
                "min_interval": 1.0,
            }
            argv = [sys.executable, "-c", ANNOUNCER, json.dumps(config)]
            self.procs[host] = self.lab.popen(
                host, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
        for host in hosts:
            assert read_line(self.procs[host]).startswith(f"ready jailccd on {host}")

    @staticmethod
    def identities(host: str) -> list[str]:
        return [ID_GCC, "sha256:" + host.encode().hex().ljust(64, "0"), f"other:{host}"]

    def send(self, host: str, command: str) -> None:
        stdin = self.procs[host].stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()


class TxtSniffer:
    """The `free` figure of every TXT record for one service instance seen on a host's link."""

    def __init__(self, lab: NetLab, host: str, instance: str) -> None:
        self.free: list[str] = []
        self.instance = instance.lower()
        with lab.inside(host):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.sock.bind(("", 5353))  # beside zeroconf's socket: both get every packet
            group = socket.inet_aton("224.0.0.251") + socket.inet_aton(lab.address(host))
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
        self.sock.settimeout(0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from zeroconf import DNSIncoming

        while not self.stop.is_set():
            try:
                packet = self.sock.recv(9000)
            except TimeoutError:
                continue
            for record in DNSIncoming(packet).answers():
                if record.type == 16 and record.name.lower().startswith(self.instance):
                    text, strings = record.text, []
                    while text:
                        strings.append(text[1 : 1 + text[0]].decode())
                        text = text[1 + text[0] :]
                    props = dict(item.partition("=")[::2] for item in strings)
                    self.free.append(props.get("free", "?"))

    def __enter__(self) -> TxtSniffer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Server]] = []
        self.lock = threading.Lock()

    def __call__(self, event: str, server: Server) -> None:
        with self.lock:
            self.events.append((event, server))

    def of(self, host: str) -> list[tuple[str, Server]]:
        with self.lock:
            return [(e, s) for e, s in self.events if s.host == f"{host}.local"]


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab(["s1", "s2", "s3", "s4", "s5", "cli"]) as lab:
        yield lab
    assert not lab.leftovers()


def hosts_of(browser: MdnsBrowser) -> set[str]:
    return {s.host for s in browser.snapshot()}


@requires_root
def test_mdns_discovers_updates_and_drops(lab: NetLab) -> None:
    announcers = Announcers(lab)
    announcers.start("s1", "s2", "s3")
    announcers.start("s4", principal=False)
    seen = Recorder()
    table = HostTable()

    def on_change(event: str, server: Server) -> None:
        seen(event, server)
        table.on_mdns(event, server)

    with lab.inside("cli"):
        browser = MdnsBrowser(on_change, interfaces=[lab.address("cli")])
        browser.start()
    try:
        four = {f"s{i}.local" for i in range(1, 5)}
        assert wait_for(lambda: hosts_of(browser) == four, 10), hosts_of(browser)
        for server in browser.snapshot():
            host = server.host.removesuffix(".local")
            assert server.address == lab.address(host)
            assert server.port == 3633
            assert server.identities == tuple(Announcers.identities(host))
            assert (server.slots, server.free, server.protocol) == (4, 4, 2)
            assert (
                server.source == "mdns" and server.name == f"jailccd on {host}._jailcc._tcp.local."
            )
            if host == "s4":
                assert (server.principal, server.auth) == ("", "none")
            else:
                assert server.principal == f"jailcc/{host}.example.test@EXAMPLE.TEST"
                assert server.auth == "kerberos"
        assert {e.server.host for e in table.entries()} == four

        # Load updates: the first goes out at once; two more within min_interval are merged
        # into one announcement of the latest figure (the wire never carries free=0).
        with TxtSniffer(lab, "cli", "jailccd on s1.") as wire:
            announcers.send("s1", "free 1")
            assert wait_for(lambda: ("updated", 1) in [(e, s.free) for e, s in seen.of("s1")], 5)
            announcers.send("s1", "free 0")
            announcers.send("s1", "free 3")
            assert wait_for(lambda: [s.free for _, s in seen.of("s1")][-1] == 3, 5)
            time.sleep(1.5)  # the repeat of the last announcement
        assert [(e, s.free) for e, s in seen.of("s1")] == [
            ("added", 4),
            ("updated", 1),
            ("updated", 3),
        ]
        # Each announcement goes out twice (the repeat is skipped if superseded in time).
        assert set(wire.free) == {"1", "3"} and wire.free == sorted(wire.free), wire.free
        assert 3 <= len(wire.free) <= 6, wire.free  # (answers to queries carry it too)

        # A server that stops says goodbye: dropped at once.
        announcers.send("s2", "quit")
        assert read_line(announcers.procs["s2"]) == "closed"
        assert wait_for(lambda: "s2.local" not in hosts_of(browser), 3)
        assert seen.of("s2")[-1][0] == "removed"
        assert "s2.local" not in {e.server.host for e in table.entries()}

        # A new one appears.
        announcers.start("s5")
        assert wait_for(lambda: "s5.local" in hosts_of(browser), 5)
        assert hosts_of(browser) == {"s1.local", "s3.local", "s4.local", "s5.local"}
    finally:
        browser.close()


@requires_root
def test_mdns_drops_a_cut_server_and_keeps_quiet_live_ones(lab: NetLab) -> None:
    announcers = Announcers(lab)
    announcers.start("s1", "s2")
    seen = Recorder()
    with lab.inside("cli"):
        browser = MdnsBrowser(
            seen, interfaces=[lab.address("cli")], stale_after=2.0, probe_timeout=0.75, probes=2
        )
        browser.start()
    try:
        assert wait_for(lambda: hosts_of(browser) == {"s1.local", "s2.local"}, 10)
        # Quiet but alive: several staleness periods pass, each answered.
        time.sleep(6)
        assert hosts_of(browser) == {"s1.local", "s2.local"}
        assert [e for e, _ in seen.events] == ["added", "added"]

        lab.cut("s1")
        cut_at = time.monotonic()
        # Stale 2-2.5 s after s1 was last heard, which may be just before the cut; then two
        # unanswered queries 0.75 s apart. The first may have left just before the cut, so the
        # drop comes no sooner than about 1.5 s after it: never on the first silence.
        assert wait_for(lambda: hosts_of(browser) == {"s2.local"}, 8)
        assert time.monotonic() - cut_at > 1.25
        assert seen.of("s1")[-1][0] == "removed"

        lab.restore("s1")
        assert wait_for(lambda: hosts_of(browser) == {"s1.local", "s2.local"}, 8)
        assert [e for e, _ in seen.of("s1")] == ["added", "removed", "added"]
        assert [e for e, _ in seen.of("s2")] == ["added"]
    finally:
        browser.close()


def own_addresses() -> list[str]:
    import psutil

    return sorted(a.address for addrs in psutil.net_if_addrs().values() for a in addrs)


def fail() -> None:
    raise LookupError("inside")


@requires_root
def test_netlab_runs_things_inside_and_cleans_up() -> None:
    with NetLab(["a", "b"]) as lab:
        assert "10.77.0.2" in lab.call("b", own_addresses)
        assert "10.77.0.2" not in own_addresses()
        with pytest.raises(LookupError, match="inside"):
            lab.call("a", fail)
        with lab.inside("a"):
            assert "10.77.0.1" in own_addresses()
        assert "10.77.0.1" not in own_addresses()
        proc = lab.popen("a", ["sleep", "60"])
        names = [lab.netns(h) for h in lab.hosts]
        assert set(names) <= set(lab.leftovers())
    assert proc.poll() is not None
    assert not lab.leftovers()
    assert not set(names) & set(os.listdir("/run/netns"))


# Scanning.


def fake_server(sock: socket.socket, mode: str, hellos: list[dict]) -> None:
    """Answer each connection's hello as a jailccd in `mode` would (or would not)."""
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            try:
                conn.settimeout(5)
                if mode == "silent":
                    conn.recv(1)  # waits for the client to give up
                    continue
                frame_type, header, _ = proto.recv(conn, proto.MAX_HELLO_FRAME)
                assert frame_type == proto.HELLO
                hellos.append(header)
                if mode == "kerberos":
                    proto.send(conn, proto.HELLO, {"protocol": 2, "auth": "gssapi"})
                elif mode == "image":
                    proto.send(conn, proto.ERROR, {"code": "image", "message": "no image"})
                elif mode == "insecure":
                    images = [
                        {
                            "name": "gcc-12",
                            "compilers": [{"identity": ID_GCC}, {"identity": ID_GXX}],
                        }
                    ]
                    greeting = proto.hello_header("server", images=images, slots=6, auth="none")
                    proto.send(conn, proto.HELLO, greeting)
                elif mode == "garbage":
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            except (OSError, proto.ProtocolError):
                continue


@requires_root
def test_scan_finds_the_jailccds_in_a_range(lab: NetLab) -> None:
    modes = {"s1": "kerberos", "s2": "image", "s3": "insecure", "s4": "garbage", "s5": "silent"}
    hellos: list[dict] = []
    sockets = []
    try:
        for host, mode in modes.items():
            with lab.inside(host):
                sock = socket.create_server((lab.address(host), 3633))
            sockets.append(sock)
            threading.Thread(target=fake_server, args=(sock, mode, hellos), daemon=True).start()
        started = time.monotonic()
        with lab.inside("cli"):  # .1-.5 listen, .6 refuses, .7 and .8 do not exist
            found = scan("10.77.0.[1-8]", 3633, timeout=1.0, identity=ID_GCC)
        took = time.monotonic() - started
    finally:
        for sock in sockets:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
    assert took < 3.0, "probes must run concurrently"
    by_address = {s.address: s for s in found}
    assert sorted(by_address) == ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
    assert all(s.source == "scan" and s.port == 3633 for s in found)
    kerberos, no_image, insecure = (by_address[f"10.77.0.{i}"] for i in (1, 2, 3))
    assert (kerberos.auth, kerberos.protocol, kerberos.identities, kerberos.error) == (
        "kerberos",
        2,
        (ID_GCC,),
        "",
    )
    assert (no_image.error, no_image.identities) == ("image", ())
    assert (insecure.auth, insecure.identities, insecure.slots) == ("none", (ID_GCC, ID_GXX), 6)
    assert insecure.to_host().auth == "kerberos"  # never talked out of authenticating
    assert len(hellos) == 4  # every listener but the silent one got a well-formed hello
    for hello in hellos:
        assert hello["protocol"] == 2 and hello["role"] == "client"
        assert (hello["identity"], hello["auth"]) == (ID_GCC, "gssapi")


def test_expand_pattern() -> None:
    assert expand_pattern("build[1-3].example.com") == [
        "build1.example.com",
        "build2.example.com",
        "build3.example.com",
    ]
    assert expand_pattern("10.0.[0-1].[1,5-6]") == [
        "10.0.0.1",
        "10.0.0.5",
        "10.0.0.6",
        "10.0.1.1",
        "10.0.1.5",
        "10.0.1.6",
    ]
    assert expand_pattern("n[08-10]") == ["n08", "n09", "n10"]
    assert expand_pattern("plain.host") == ["plain.host"]
    for bad in ("a[3-1]", "a[x]", "a[1-]", "a[1", "a]1"):
        with pytest.raises(ValueError):
            expand_pattern(bad)
    with pytest.raises(ValueError, match="more than"):
        expand_pattern("h[1-100].[1-100]")


# Static entries, SRV, the table.


def test_static_entries() -> None:
    servers = static(
        "unix:/run/jailccd/jailccd.sock build1.example.test:3633/8;principal=jailcc/b1@EX"
        " 192.0.2.5:3634;auth=none"
    )
    unix, named, literal = servers
    assert (unix.kind, unix.host, unix.port, unix.source) == (
        "unix",
        "/run/jailccd/jailccd.sock",
        0,
        "static",
    )
    assert (named.host, named.address, named.port, named.slots) == (
        "build1.example.test",
        "",
        3633,
        8,
    )
    assert (named.principal, named.auth) == ("jailcc/b1@EX", "kerberos")
    assert (literal.address, literal.auth, literal.to_host().auth) == ("192.0.2.5", "none", "none")
    assert named.to_host().service_principal == "jailcc/b1@EX"
    with pytest.raises(HostsError):
        static("build1.example.test")


@contextlib.contextmanager
def dns_server(zone: dict[str, list[str]], additional: dict[str, list[str]]) -> Iterator[int]:
    """A UDP DNS server on 127.0.0.1 (its port is yielded) answering SRV questions from `zone`
    (name -> SRV texts), NXDOMAIN for other names; `additional` gives A records for the
    additional section of every answer."""
    import dns.message
    import dns.rcode
    import dns.rrset

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            name = query.question[0].name.to_text()
            if name in zone:
                response.answer.append(dns.rrset.from_text_list(name, 60, "IN", "SRV", zone[name]))
                for target, addresses in additional.items():
                    response.additional.append(
                        dns.rrset.from_text_list(target, 60, "IN", "A", addresses)
                    )
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_srv_lookup() -> None:
    zone = {
        "_jailcc._tcp.example.test.": [
            "10 5 3633 build1.example.test.",
            "10 50 3634 build2.example.test.",
            "5 0 3633 build3.example.test.",
        ],
        "_jailcc._tcp.nowhere.test.": ["0 0 0 ."],
    }
    with dns_server(zone, {"build1.example.test.": ["192.0.2.7"]}) as port:
        found = srv_lookup("example.test", nameservers=["127.0.0.1"], port=port, timeout=2)
        assert [(s.host, s.port, s.address, s.source) for s in found] == [
            ("build3.example.test", 3633, "", "srv"),
            ("build2.example.test", 3634, "", "srv"),
            ("build1.example.test", 3633, "192.0.2.7", "srv"),
        ]
        assert found[0].to_host().service_principal == "jailcc/build3.example.test"
        assert srv_lookup("nowhere.test.", nameservers=["127.0.0.1"], port=port) == []
        assert srv_lookup("missing.test", nameservers=["127.0.0.1"], port=port) == []
    with pytest.raises(DiscoveryError):  # nobody answers there any more
        srv_lookup("example.test", nameservers=["127.0.0.1"], port=port, timeout=0.5)


def test_host_table_merges_and_trusts_static_for_principals() -> None:
    table = HostTable()
    table.set_source("static", static("build1.example.test:3633"))
    table.set_source("srv", [Server("BUILD1.example.test.", 3633, "192.0.2.7", source="srv")])
    rogue = Server(
        "b1.local",
        3633,
        "192.0.2.7",
        principal="jailcc/evil.example.test@EXAMPLE.TEST",
        identities=(ID_GCC,),
        slots=8,
        free=2,
        source="mdns",
        auth="none",
    )
    table.on_mdns("added", rogue)
    table.set_source("scan", [Server("192.0.2.9", 3633, "192.0.2.9", source="scan", error="image")])
    first, second = table.entries()
    assert first.sources == ("static", "srv", "mdns")
    merged = first.server
    assert (merged.host, merged.address, merged.source) == (
        "build1.example.test",
        "192.0.2.7",
        "static",
    )
    assert (merged.identities, merged.slots, merged.free) == ((ID_GCC,), 8, 2)
    assert merged.to_host().service_principal == "jailcc/build1.example.test"  # not evil's
    assert merged.to_host().auth == "kerberos"
    assert rogue.to_host().auth == "kerberos"
    assert (second.sources, second.server.error) == (("scan",), "image")

    table.on_mdns("removed", rogue)
    assert table.entries()[0].sources == ("static", "srv")
    table.set_source("scan", [])
    assert len(table.entries()) == 1


# The TXT record.


def test_txt_record_round_trip() -> None:
    ids = [ID_GCC, ID_GXX, "md5:abc"]
    props = txt_properties("jailcc/h@R", ids, 8, 3)
    assert props["id0"] != ID_GCC and len(props["id0"]) == 43  # compact, yet whole
    assert props["id2"] == "md5:abc"
    assert parse_txt(props) == TxtRecord(2, "jailcc/h@R", tuple(ids), 8, 3)
    # Keys sort numerically, junk is skipped, malformed numbers are None.
    many = {f"id{i}": encode_identity(ID_GCC if i != 10 else ID_GXX) for i in range(12)}
    assert parse_txt({**many, "id12": "!!", "free": "x"}).identities[10] == ID_GXX
    assert parse_txt({"id0": "!!", "free": "x"}) == TxtRecord(None, "", (), None, None)
    assert decode_identity(encode_identity(ID_GXX)) == ID_GXX
    with pytest.raises(ValueError):
        encode_identity("no-algorithm")
    with pytest.raises(ValueError, match="exceeds"):
        txt_properties("", [f"sha256:{i:064x}" for i in range(40)], 1, 1)
    assert MAX_TXT_BYTES < 1500
    with pytest.raises(ValueError):
        Announcer(3633, "p" * 300, [ID_GCC], 4, "h", ["192.0.2.1"])
