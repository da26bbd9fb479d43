"""Before authentication: real deadlines, credentials checked before a byte is read, caps that
keep peers who may not compile from locking out those who may, bounded and rate-limited log
lines, and frame headers that cannot make the parser recurse. Real jailccd, raw clients."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from jailcc import protocol as proto
from serverutil import Server, as_nobody, start_server, stop_server, tcp_port

pytestmark = requires_root

# How late after its deadline a connection may close: the server's own wake-up, and our poll
# once a second, on a loaded machine.
SLACK = 3.0
NOBODY = 65534


@pytest.fixture(scope="module")
def server(gcc_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("preauth"),
        gcc_image,
        "--allow-user",
        "root",
        "--speed",
        "1",
        "--log-peer-lines",
        "5",
    )
    yield srv
    stop_server(srv)


def trickle(sock: socket.socket, data: bytes, seconds: float) -> float | None:
    """Send data a byte a second until the server closes the connection: when it did, or None
    if it had not within `seconds`."""
    end = time.monotonic() + seconds
    for byte in data:
        if time.monotonic() > end:
            return None
        try:
            sock.send(bytes([byte]))
            if select.select([sock], [], [], 1.0)[0] and not sock.recv(65536):
                return time.monotonic()
        except OSError:
            return time.monotonic()
    return None


@pytest.mark.parametrize(
    ("options", "idle", "deadline", "words"),
    [
        (["--handshake-timeout", "3", "--frame-timeout", "60"], 0, 3, "handshake's deadline"),
        (["--handshake-timeout", "60", "--frame-timeout", "2"], 3, 2, "after its first byte"),
    ],
    ids=["handshake", "frame"],
)
def test_a_trickling_peer_is_cut_at_the_deadline(
    gcc_image, tmp_path, options, idle, deadline, words
):
    srv = start_server(tmp_path, gcc_image, "--allow-user", "root", "--speed", "1", *options)
    try:
        hello = proto.encode(proto.HELLO, proto.hello_header("client", identity="sha256:0"))
        with srv.connect() as sock:
            started = time.monotonic()
            time.sleep(idle)  # the frame's deadline runs from its first byte, not from accept
            first_byte = time.monotonic()
            closed = trickle(sock, hello, deadline + SLACK + 5)
        assert closed is not None, "a trickling peer kept its connection"
        assert closed > first_byte  # the byte that started the frame was taken
        assert closed - (started if words.startswith("handshake") else first_byte) <= (
            deadline + SLACK
        )
        assert words in srv.log_text()
    finally:
        stop_server(srv)


def test_a_unix_peer_who_may_not_compile_is_refused_before_a_byte_is_read(server):
    def attempt() -> bytes:
        # Protocol 99: had the server read this hello, it would refuse it as "version".
        with server.connect() as sock:
            try:
                sock.sendall(proto.encode(proto.HELLO, {"protocol": 99, "role": "client"}))
                sent = "sent"
            except BrokenPipeError:  # the server closed first: it read nothing either
                sent = "unsent"
            try:
                proto.expect(sock, proto.HELLO)
                return b"accepted"
            except proto.RemoteError as exc:
                code = exc.code
            try:
                end = "eof" if not sock.recv(1) else "more"
            except ConnectionResetError:
                # A Unix socket's peer closed with our bytes still unread in its queue.
                end = "reset"
            return f"{code} {sent} {end}".encode()

    answer = as_nobody(attempt).decode()
    assert answer in ("unauthorized sent reset", "unauthorized unsent eof"), answer
    text = server.log_text()
    assert "refused nobody(uid 65534): unauthorized" in text
    assert "version" not in text


def test_idle_connections_of_a_user_who_may_not_compile_leave_others_served(server, tmp_path):
    """A local user who may not compile opens hundreds of connections and sends nothing; an
    allowed user's compile meanwhile still goes remote."""
    before = len(server.log_text())
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            held = []
            signal.alarm(60)  # blocking connects (a full backlog makes others fail at once)
            for _ in range(300):
                sock = socket.socket(socket.AF_UNIX)
                try:
                    sock.connect(str(server.socket_path))
                    held.append(sock)
                except OSError:
                    sock.close()
            os.write(ready_w, str(len(held)).encode())
            select.select([done_r], [], [], 120)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert select.select([ready_r], [], [], 60)[0], "the idle connections were not opened"
        assert int(os.read(ready_r, 16)) > 250
        (tmp_path / "unit.c").write_text("int twice(int a) { return 2 * a; }\n")
        result = subprocess.run(
            [str(BIN / "jailcc"), "gcc-12", "-O2", "-c", "unit.c", "-o", "unit.o"],
            cwd=tmp_path,
            env={
                **os.environ,
                "JAILCC_HOSTS": f"unix:{server.socket_path}",
                "JAILCC_VERBOSE": "1",
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_r, done_r, done_w):
            os.close(fd)
    assert result.returncode == 0, result.stderr
    assert "remote on unix:" in result.stderr, result.stderr
    # Each was refused by its credentials; the log tells of a few, then says it stopped.
    new = server.log_text()[before:]
    refusals = new.count("refused nobody(uid 65534): unauthorized")
    assert 0 < refusals <= 2 * 5, refusals  # --log-peer-lines 5 (a minute may have turned)
    assert "more log lines about uid 65534 suppressed" in new


def test_root_holds_nothing_of_a_connection_before_its_hello(server):
    """The privileged monitor first hears of a connection once the network service has read a
    valid hello: connections that send nothing, or half a hello, cost root no descriptor (it
    would hold a copy of each socket and of its channel to the service)."""

    def root_fds() -> int:
        return len(os.listdir(f"/proc/{server.proc.pid}/fd"))

    hello = proto.encode(proto.HELLO, proto.hello_header("client", identity="sha256:0"))
    before = root_fds()
    held = [server.connect() for _ in range(14)]  # (16 may wait at once from one uid)
    try:
        for sock in held[::2]:
            sock.sendall(hello[:7])
        time.sleep(1.0)  # the service has accepted them all (it answers a new one below)
        with server.connect() as probe:
            probe.sendall(hello)
            with pytest.raises(proto.RemoteError, match="image"):
                proto.expect(probe, proto.HELLO)
        assert root_fds() - before < 7, (before, root_fds())
    finally:
        for sock in held:
            sock.close()
        # Let the service log their ends here, not in the next test's window.
        deadline, logged = time.monotonic() + 10, -1
        while logged != len(server.log_text()) and time.monotonic() < deadline:
            logged = len(server.log_text())
            time.sleep(0.5)


def test_peer_strings_in_log_lines_are_bounded_and_escaped(gcc_image, tmp_path):
    # A server of its own: the module's has spent root's log budget for this minute.
    server = start_server(tmp_path, gcc_image, "--allow-user", "root", "--speed", "1")
    try:
        before = len(server.log_text())
        bait = "A" * 60000 + "\nFORGED jailccd line\x1b[2J"
        for _ in range(10):
            with server.connect() as sock:
                proto.send(sock, proto.HELLO, {"protocol": bait, "role": "client"})
                with pytest.raises(proto.RemoteError) as refused:
                    proto.expect(sock, proto.HELLO)
                assert refused.value.code == "version"
                assert len(refused.value.message) < 200
        new = server.log_text()[before:]
        assert new.count("not supported") == 10
        assert len(new) < 10 * 400, f"{len(new)} bytes logged"
        assert "\nFORGED" not in new and "\x1b" not in new
    finally:
        stop_server(server)


def test_an_allowed_users_failures_are_logged_within_a_budget_too(gcc_image, tmp_path):
    """A user allowed to compile can open connections as fast as anyone: the lines about their
    failed connections are rate-limited too, ten times more loosely than before
    authentication (--log-peer-lines 2 here: 20 a minute)."""
    srv = start_server(tmp_path, gcc_image, "--allow-user", "root", "--log-peer-lines", "2")
    try:
        for _ in range(30):
            with srv.connect() as sock:
                proto.send(sock, proto.HELLO, {"protocol": 99, "role": "client"})
                with pytest.raises(proto.RemoteError):
                    proto.expect(sock, proto.HELLO)
        deadline = time.monotonic() + 10
        while "suppressed" not in srv.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        text = srv.log_text()
        assert text.count("not supported") == 20, text[-2000:]
        assert "more log lines about uid 0 suppressed" in text
    finally:
        stop_server(srv)


def test_many_peers_together_log_within_a_budget(caplog):
    """Each of thousands of addresses keeps within its own budget (20 lines a minute), but
    all of them together could write millions of lines a day: ten peers' budgets is all."""
    from jailcc.server.service import PeerLog

    peer_log = PeerLog(per_minute=3)
    with caplog.at_level("INFO", logger="jailccd"):
        for n in range(2000):
            peer_log.log(f"192.0.2.{n % 200}", logging.WARNING, "refused %s", n)
    lines = caplog.messages
    assert len([m for m in lines if m.startswith("refused")]) == 10 * 3
    assert lines[-1] == "more log lines about 31 peers suppressed for up to a minute"
    assert len(lines) <= 10 * 3 + 1


def test_a_deeply_nested_header_is_a_protocol_error(server):
    depth = (proto.MAX_HELLO_FRAME - 9) // 2
    head = b"[" * depth + b"]" * depth
    frame = struct.pack(">IBI", 5 + len(head), proto.HELLO, len(head)) + head
    assert len(frame) <= proto.MAX_HELLO_FRAME + 4
    with server.connect() as sock:
        sock.sendall(frame)
        with pytest.raises(proto.RemoteError) as refused:
            proto.expect(sock, proto.HELLO)
    assert refused.value.code == "protocol" and "nested" in refused.value.message
    assert server.proc.poll() is None


def test_decode_refuses_deep_nesting_without_recursing():
    for depth in (33, 1000, 100_000):
        head = b"[" * depth + b"]" * depth
        frame = struct.pack(">IBI", 5 + len(head), proto.HELLO, len(head)) + head
        with pytest.raises(proto.ProtocolError, match="nested more than 32"):
            proto.decode(frame, 1 << 20)
    # Brackets inside strings are no nesting.
    head = b'{"a":"' + b"[" * 1000 + b'\\"[[[","b":[[1]]}'
    frame = struct.pack(">IBI", 5 + len(head), proto.HELLO, len(head)) + head
    assert proto.decode(frame, 1 << 20)[1] == {"a": "[" * 1000 + '"[[[', "b": [[1]]}


@pytest.mark.parametrize(
    "table", [b'"blobs":null', b'"blobs":7', b'"blobs":[1],"raw":null', b'"blobs":"ab"']
)
def test_a_blob_table_of_the_wrong_type_is_a_protocol_error(table):
    # Found by tests/fuzz (target "job"): "blobs": null raised TypeError, not ProtocolError.
    head = b"{" + table + b"}"
    frame = struct.pack(">IBI", 5 + len(head), proto.JOB, len(head)) + head
    with pytest.raises(proto.ProtocolError, match="malformed blob table"):
        proto.decode(frame, 1 << 20)


def test_connection_caps_keep_a_share_for_authenticated_peers():
    from jailcc.server.caps import ConnectionCaps

    caps = ConnectionCaps(total=8, unauthenticated=4, per_peer=2, per_user=8)
    a1, a2, b, c, d, e, f, g, h = (object() for _ in range(9))
    assert caps.admit("a", a1) is None and caps.admit("a", a2) is None
    assert "from a" in str(caps.admit("a", object()))  # a third from one peer
    assert caps.admit("b", b) is None and caps.admit("c", c) is None
    # Half the total waits to authenticate: a newcomer takes the place of the oldest of the
    # peer that holds more than the newcomer's would (a's two), then of none.
    assert caps.admit("d", d) is None
    assert caps.waiting_by_peer == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert "waiting to authenticate" in str(caps.admit("e", object()))
    caps.close(a1)  # its handler closes it: counted once
    for conn in (a2, b, c):
        caps.authenticated(conn)  # three authenticate: their places free up for others
    assert caps.admit("e", e) is None and caps.admit("f", f) is None
    assert caps.admit("g", g) is None
    assert "waiting to authenticate" in str(caps.admit("h", object()))  # d, e, f, g wait
    caps.authenticated(d)
    assert caps.admit("h", h) is None  # 8 open: 4 authenticated, 4 waiting
    assert caps.admit("i", object()) == "too many connections"
    caps.close(h)
    caps.close(b)  # (authenticated)
    assert caps.admit("i", object()) is None
    assert caps.waiting_by_peer == {"e": 1, "f": 1, "g": 1, "i": 1}


def test_a_full_pool_of_silent_peers_gives_way_to_newcomers(monkeypatch):
    """Peers that never authenticate cannot keep the others out by filling the pool: a
    newcomer takes the place of the heaviest peer's oldest connection, which is shut down, or,
    when every peer holds as few, of the oldest once it has waited longer than a handshake."""
    from jailcc.server import caps as caps_module

    caps = caps_module.ConnectionCaps(total=32, unauthenticated=4, per_peer=3, per_user=8)
    silent = [socket.socketpair() for _ in range(3)]
    for ours, _ in silent:
        assert caps.admit("192.0.2.1", ours) is None
    other = object()
    assert caps.admit("192.0.2.2", other) is None  # full: 192.0.2.1 holds 3, .2 holds 1
    try:
        newcomer = object()
        assert caps.admit("198.51.100.7", newcomer) is None
        assert silent[0][1].recv(1) == b""  # the oldest of the heaviest, shut down
        assert caps.waiting_by_peer == {"192.0.2.1": 2, "192.0.2.2": 1, "198.51.100.7": 1}
        caps.close(silent[0][0])  # its handler's own close: counted once
        assert caps.waiting == 4 and caps.open == 4
        # Its next newcomer may not evict its own kind's equals: 2 against 1 + 1.
        assert "waiting to authenticate" in str(caps.admit("192.0.2.2", object()))
        # Two a peer now: nobody is heavier than a newcomer would be, so only a connection
        # that has waited long gives its place up.
        assert caps.admit("203.0.113.9", object()) is None  # .1 still held 2 against 0 + 1
        assert caps.waiting_by_peer == {
            "192.0.2.1": 1,
            "192.0.2.2": 1,
            "198.51.100.7": 1,
            "203.0.113.9": 1,
        }
        late = object()
        assert "waiting to authenticate" in str(caps.admit("192.0.2.99", late))
        monkeypatch.setattr(caps_module, "EVICT_AFTER", 0.0)
        assert caps.admit("192.0.2.99", late) is None
        assert silent[2][1].recv(1) == b""  # the oldest in the pool
        # Local users, whom the kernel names, have their own pool: never evicted, never
        # evicting.
        assert caps.admit("uid 1000", object()) is None
        assert caps.waiting == 4 and caps.evicted == 3
    finally:
        for pair in silent:
            for sock in pair:
                sock.close()


def test_silent_peers_that_fill_the_pool_do_not_lock_a_client_out(gcc_image, tmp_path):
    """Real jailccd on TCP: two addresses hold every place of the pool with connections that
    never speak (each would be opened again as its deadline drops it); a client from a third
    address is still served, in the place of the heaviest peer's oldest connection."""
    from jailcc.images.identity import compiler_identity

    srv = start_server(
        tmp_path, gcc_image, "--listen", "127.0.0.1:0", "--insecure",
        "--max-unauthenticated", "4", "--max-unauthenticated-per-peer", "3",
        "--handshake-timeout", "60",
    )  # fmt: skip
    silent: list[socket.socket] = []
    try:
        port = tcp_port(srv)
        for source in ("127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3"):
            sock = socket.socket()
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            silent.append(sock)
        time.sleep(0.5)  # all four accepted and counted
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            identity = compiler_identity("/usr/bin/gcc-12")
            proto.send(client, proto.HELLO, proto.hello_header("client", identity=identity))
            header, _ = proto.expect(client, proto.HELLO)
            assert header["protocol"] == proto.PROTOCOL_VERSION
            proto.expect(client, proto.READY)
        silent[0].settimeout(10)
        assert silent[0].recv(1) == b""  # the oldest of 127.0.0.2's, given up
        for sock in silent[1:]:
            assert not select.select([sock], [], [], 0)[0]  # the others wait on
    finally:
        for sock in silent:
            sock.close()
        stop_server(srv)


def test_network_peers_cannot_crowd_out_local_users_nor_one_user_the_others():
    """Peers from the network that never authenticate fill their pool, not the Unix socket's:
    a local user, whom the kernel names, still connects (within its own per-uid cap). And one
    user holds at most per_user connections (each a jail), so it cannot take them all."""
    from jailcc.server.caps import ConnectionCaps

    caps = ConnectionCaps(total=16, unauthenticated=4, per_peer=2, per_user=3)
    for peer in ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"):
        assert caps.admit(peer, object()) is None
    assert "waiting to authenticate" in str(caps.admit("192.0.2.5", object()))
    first, second, other = object(), object(), object()
    assert caps.admit("uid 1000", first) is None and caps.admit("uid 1000", second) is None
    assert "from uid 1000" in str(caps.admit("uid 1000", object()))  # its own cap still holds
    assert caps.admit("uid 1001", other) is None
    caps.authenticated(first)
    caps.close(other)
    assert caps.waiting == 4 and "waiting to authenticate" in str(caps.admit("192.0.2.5", 1))
    for _ in range(3):
        assert caps.take_user("alice") is None
    assert "3 connections of alice" in str(caps.take_user("alice"))
    assert caps.take_user("bob") is None
    caps.release_user("alice")
    assert caps.take_user("alice") is None


def test_one_user_holds_at_most_its_share_of_connections(gcc_image, tmp_path):
    """--max-connections-per-user: past it the user's next connection is told "busy" before
    any jail is made for it, and gets one again once an earlier one closes."""
    from jailcc.images.identity import compiler_identity

    srv = start_server(
        tmp_path, gcc_image, "--allow-user", "root", "--max-connections-per-user", "2"
    )
    hello = proto.hello_header("client", identity=compiler_identity("/usr/bin/gcc-12"))
    try:
        held = []
        for _ in range(2):
            sock = srv.connect()
            proto.send(sock, proto.HELLO, hello)
            proto.expect(sock, proto.HELLO)
            proto.expect(sock, proto.READY)
            held.append(sock)
        with srv.connect() as third:
            proto.send(third, proto.HELLO, hello)
            with pytest.raises(proto.RemoteError, match="2 connections of root"):
                proto.expect(third, proto.HELLO)
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the closed one's place comes back once the jail has let it go
            with srv.connect() as again:
                proto.send(again, proto.HELLO, hello)
                try:
                    proto.expect(again, proto.HELLO)
                    proto.expect(again, proto.READY)
                    break
                except proto.RemoteError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
        for sock in held:
            sock.close()
    finally:
        stop_server(srv)


def test_an_allowed_users_silent_connections_leave_other_users_served(gcc_image, tmp_path):
    """An allowed local user's connections counted as authenticated from the accept, before
    their hello: 300 silent ones took every connection, and another allowed user was "busy"."""
    from jailcc.images.identity import compiler_identity

    srv = start_server(
        tmp_path, gcc_image, "--allow-user", "root", "--allow-user", "nobody",
        "--max-connections", "64",
    )  # fmt: skip
    hello = proto.hello_header("client", identity=compiler_identity("/usr/bin/gcc-12"))

    def served() -> bytes:
        try:
            with srv.connect() as sock:
                proto.send(sock, proto.HELLO, hello)
                proto.expect(sock, proto.HELLO)
                proto.expect(sock, proto.READY)
            return b"served"
        except (OSError, proto.ProtocolError, proto.RemoteError) as exc:
            return repr(exc).encode()

    held = []
    try:
        for _ in range(300):
            sock = socket.socket(socket.AF_UNIX)
            sock.setblocking(False)
            try:
                sock.connect(str(srv.socket_path))
                held.append(sock)
            except OSError:
                sock.close()
        time.sleep(1)  # all accepted, none has said a word
        assert as_nobody(served) == b"served"
        assert "too many connections from uid 0 waiting" in srv.log_text()
    finally:
        for sock in held:
            sock.close()
        stop_server(srv)


def test_connections_ended_in_their_jails_are_logged_within_the_users_budget(gcc_image, tmp_path):
    """Each connection a jail ended (here on a malformed frame) was a WARNING line of its own,
    without limit: 50 a second from one user."""
    from jailcc.images.identity import compiler_identity

    srv = start_server(tmp_path, gcc_image, "--allow-user", "root", "--log-peer-lines", "1")
    hello = proto.hello_header("client", identity=compiler_identity("/usr/bin/gcc-12"))
    try:
        for _ in range(40):
            with srv.connect() as sock:
                proto.send(sock, proto.HELLO, hello)
                proto.expect(sock, proto.HELLO)
                proto.expect(sock, proto.READY)
                sock.sendall(b"\x00\x00\x00\x05\x63garbage")
                with contextlib.suppress(OSError, proto.ProtocolError, proto.RemoteError):
                    proto.recv(sock)
    finally:
        stop_server(srv)
    ended = srv.log_text().count("connection from root(uid 0) ended")
    assert 0 < ended <= 2 * 10, ended  # 10 x --log-peer-lines a minute (a minute may turn)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
    ],
)
def test_tcp_peers_are_counted_by_address_and_ipv6_by_64(address, key):
    from jailcc.server.service import peer_key

    with socket.socket(socket.AF_INET6) as sock:
        assert peer_key(sock, (address, 1234, 0, 0)) == key


def test_a_frame_declared_but_not_sent_takes_no_memory() -> None:
    """A peer declares a 128 MiB frame and sends ten bytes: the reader takes memory as bytes
    come (at most a megabyte ahead), not the declared size, so a few hundred such peers do
    not exhaust the host (each took 129 MiB before, zero-filled)."""
    import tracemalloc

    from jailcc import wire

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        theirs.sendall(b"x" * 10)
        theirs.shutdown(socket.SHUT_WR)
        tracemalloc.start()
        try:
            with pytest.raises(wire.WireError, match="after 10 of"):
                wire.recv_exact(ours, 128 << 20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 4 << 20, peak
    # Whole frames still come back whole, across parts.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    data = os.urandom(3 << 20) + b"end"
    with ours, theirs:
        sender = threading.Thread(target=theirs.sendall, args=(data,))
        sender.start()
        assert wire.recv_exact(ours, len(data)) == data
        sender.join()
