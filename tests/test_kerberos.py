"""Kerberos on TCP, end to end: a real MIT KDC (two realms with cross-realm trust, from
scripts/realm.py), a real jailccd with a keytab, real `jailcc` clients with real tickets, and raw
protocol clients that tamper, replay and flood."""

from __future__ import annotations

import os
import random
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import BIN, requires_root
from jailcc import protocol as proto
from jailcc.client.hosts import parse_hosts
from jailcc.client.remote import connect, open_session, run_job
from jailcc.images.identity import compiler_identity
from realm_fixtures import realm_module
from serverutil import (
    Server,
    kerberos_options,
    start_kerberos_server,
    start_server,
    stop_server,
    tcp_port,
)

pytestmark = requires_root

SOURCE = "int twice(int a) { return 2 * a; }\n"


@pytest.fixture(scope="module")
def realm() -> Iterator:
    with realm_module.Realm() as r:
        # A principal the KDC knows but the server has no key for: a wrong service principal.
        r.addprinc("jailcc/elsewhere", keytab=r.dir / "elsewhere.keytab")
        yield r


@pytest.fixture(scope="module")
def server(realm, gcc_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    principals = "# who may compile\nalice@KRBTEST.COM\n\ncarol@KRBTEST.COM\n"
    srv = start_kerberos_server(tmp_path_factory.mktemp("krb-server"), gcc_image, realm, principals)
    yield srv
    stop_server(srv)


def client_env(realm, server: Server, ccache_env: dict[str, str], **extra: str) -> dict[str, str]:
    principal = extra.pop("principal", realm.service_principal)
    return {
        **os.environ,
        **ccache_env,
        "JAILCC_HOSTS": f"tcp:127.0.0.1:{tcp_port(server)};principal={principal}",
        "JAILCC_VERBOSE": "1",
        **extra,
    }


def compile_with(env: dict[str, str], work: Path) -> subprocess.CompletedProcess[str]:
    (work / "unit.c").write_text(SOURCE)
    return subprocess.run(
        [str(BIN / "jailcc"), "gcc-12", "-O2", "-c", "unit.c", "-o", "unit.o"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def local_object(work: Path) -> bytes:
    (work / "unit.c").write_text(SOURCE)
    subprocess.run(["gcc-12", "-O2", "-c", "unit.c", "-o", "local.o"], cwd=work, check=True)
    return (work / "local.o").read_bytes()


def test_a_listed_user_compiles_remotely_and_gets_the_local_object(realm, server, tmp_path):
    env = client_env(realm, server, realm.kinit("alice", tmp_path / "alice.cc"))
    result = compile_with(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "remote on tcp:127.0.0.1" in result.stderr
    assert (tmp_path / "unit.o").read_bytes() == local_object(tmp_path)
    assert "authenticated alice@KRBTEST.COM" in server.log_text()


@pytest.mark.parametrize(
    ("who", "how", "words"),
    [
        ("bob", {}, "bob@KRBTEST.COM may not use this server"),
        ("alice@OTHER.TEST", {}, "alice@OTHER.TEST may not use this server"),
        ("alice", {"principal": "jailcc/elsewhere@KRBTEST.COM"}, "authentication failed"),
    ],
    ids=["not-listed", "other-realm", "wrong-service-principal"],
)
def test_refused_principals_compile_locally_with_a_reason(realm, server, tmp_path, who, how, words):
    env = client_env(realm, server, realm.kinit(who, tmp_path / "cc"), **how)
    result = compile_with(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "compiling locally" in result.stderr and words in result.stderr
    assert (tmp_path / "unit.o").read_bytes() == local_object(tmp_path)


def test_a_refused_principal_is_told_so_on_every_compile_and_never_waits(
    realm, gcc_image, tmp_path
):
    """Through the proxy, compile after compile: the sealed refusal of a connection the
    proxy opened ahead of time escaped it as an internal error, and left the server counted
    busy: the fourth compile waited 600 s for room. (A server of its own: its refusals spend
    the log budget of 127.0.0.1, which other tests read the module's server's log for.)"""
    server = start_kerberos_server(tmp_path, gcc_image, realm, "alice@KRBTEST.COM\n")
    env = client_env(realm, server, realm.kinit("bob", tmp_path / "cc"))
    try:
        for _ in range(5):
            started = time.monotonic()
            result = compile_with(env, tmp_path)
            assert result.returncode == 0, result.stderr
            assert "internal error" not in result.stderr, result.stderr
            assert "compiling locally" in result.stderr, result.stderr
            assert time.monotonic() - started < 20
            time.sleep(0.5)  # the proxy meanwhile opens connections ahead of time
    finally:
        subprocess.run([str(BIN / "jailcc"), "proxy", "stop"], env=env, capture_output=True)
        stop_server(server)


def test_a_stale_server_keytab_is_said_with_kerberos_own_words(realm, gcc_image, tmp_path):
    """The server's key was made again (ktadd elsewhere) after its keytab was written: the
    client's ticket is for a key the server lacks. The user is told why, in Kerberos' words
    (not "refused", then "check that jailccd runs there"), and the server logs it."""
    service = "jailcc/stale.test"
    keytab = tmp_path / "stale.keytab"
    realm.kadmin_local(f"addprinc -randkey {service}")
    realm.kadmin_local(f"ktadd -k {keytab} {service}")
    realm.kadmin_local(f"ktadd -k {tmp_path / 'elsewhere.keytab'} {service}")  # a new key
    allowed = tmp_path / "principals"
    allowed.write_text("alice@KRBTEST.COM\n")
    srv = start_server(
        tmp_path / "srv", gcc_image, "--listen", "127.0.0.1:0", "--keytab", str(keytab),
        "--principal", f"{service}@KRBTEST.COM", "--allow-principals", str(allowed),
        env={**os.environ, **realm.env},
    )  # fmt: skip
    try:
        env = client_env(
            realm, srv, realm.kinit("alice", tmp_path / "cc"), principal=f"{service}@KRBTEST.COM"
        )
        del env["JAILCC_VERBOSE"]
        result = compile_with(env, tmp_path)
        log = srv.log_text()
    finally:
        stop_server(srv)
        subprocess.run([str(BIN / "jailcc"), "proxy", "stop"], env=env, capture_output=True)
    assert result.returncode == 0
    assert "Kerberos authentication failed: " in result.stderr, result.stderr
    assert "failed: refused" not in result.stderr and "key" in result.stderr.lower()
    assert "Kerberos authentication failed: refused" not in log


def test_a_host_scan_names_the_server_and_its_authentication(server, tmp_path):
    """`jailcc hosts scan` found every server "image" (its hello asked for no compiler, and
    each answered that it had no image for it, logging a refusal)."""
    port = tcp_port(server)
    found = subprocess.run(
        [str(BIN / "jailcc"), "hosts", "scan", "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert f"127.0.0.1:{port}  protocol 2, kerberos" in found.stdout, found.stdout
    assert "no toolchain image here matches" not in server.log_text()[-3000:]
    bad = subprocess.run(
        [str(BIN / "jailcc"), "hosts", "scan", "127.0.0.1", "abc"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "is no port number" in bad.stderr


def test_no_ticket_says_run_kinit_without_verbose(realm, server, tmp_path):
    env = client_env(realm, server, {**realm.env, "KRB5CCNAME": f"FILE:{tmp_path}/none"})
    del env["JAILCC_VERBOSE"]
    started = time.monotonic()
    result = compile_with(env, tmp_path)
    assert time.monotonic() - started < 30
    assert result.returncode == 0
    assert result.stderr.strip().endswith("no Kerberos ticket: run kinit")
    assert len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "unit.o").read_bytes() == local_object(tmp_path)


def test_an_expired_ticket_says_run_kinit(realm, server, tmp_path):
    ccache = realm.expired_ccache("alice", tmp_path / "old.cc")
    env = client_env(realm, server, ccache)
    del env["JAILCC_VERBOSE"]
    result = compile_with(env, tmp_path)
    assert result.returncode == 0
    assert "ticket has expired: run kinit" in result.stderr
    assert (tmp_path / "unit.o").read_bytes() == local_object(tmp_path)


def test_tickets_keep_working_while_the_kdc_is_down(realm, server, tmp_path):
    env = client_env(realm, server, realm.kinit("carol", tmp_path / "carol.cc"))
    assert "remote on" in compile_with(env, tmp_path).stderr  # fetches the service ticket
    realm.stop_kdc()
    try:
        result = compile_with(env, tmp_path)
    finally:
        realm.start_kdc()
    assert "remote on" in result.stderr, result.stderr


def test_a_kdc_that_does_not_answer_holds_no_compile(realm, server, tmp_path):
    """A KDC that hangs rather than refuses (a firewall dropping its packets) held each new
    connection for libkrb5's half-minute of retries, and the build with it. A job waits for a
    connection's set-up at most SETUP_DEADLINE, then compiles locally: through the proxy, and
    in-process (JAILCC_PROXY=0)."""
    env = client_env(realm, server, realm.kinit("carol", tmp_path / "fresh.cc"))
    realm.pause_kdc()  # carol has no service ticket yet: each set-up asks the KDC for one
    try:
        results = [
            compile_with(env, tmp_path),
            compile_with({**env, "JAILCC_PROXY": "0"}, tmp_path),
        ]
    finally:
        realm.resume_kdc()
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "compiling locally" in result.stderr
        assert "no connection after 10 s: the server, or its Kerberos KDC, does not answer" in (
            result.stderr
        )
    assert "no jailcc server could be reached" in results[0].stderr  # (the proxy's words)
    assert (tmp_path / "unit.o").read_bytes() == local_object(tmp_path)


def test_a_server_without_the_key_refuses_to_start(realm, gcc_image, tmp_path):
    proc = subprocess.run(
        [
            str(BIN / "jailccd"),
            "--toolchain-image",
            str(gcc_image),
            *kerberos_options(realm, "jailcc/nothere@KRBTEST.COM"),
            "--allow-principals",
            "/dev/null",
        ],
        env={**os.environ, **realm.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no key for jailcc/nothere@KRBTEST.COM" in proc.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--listen", "127.0.0.1:0"], "--listen needs Kerberos"),
        (["--listen", "127.0.0.1:0", "--keytab", "K", "--principal", "jailcc/h@R"], "who may"),
    ],
)
def test_tcp_without_kerberos_and_authorization_refuses_to_start(gcc_image, tmp_path, args, words):
    proc = subprocess.run(
        [str(BIN / "jailccd"), "--toolchain-image", str(gcc_image), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and words in proc.stderr


# -- raw clients ------------------------------------------------------------------------------


@pytest.fixture
def alice(realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This test process speaks Kerberos as alice."""
    for key, value in realm.kinit("alice", tmp_path / "alice.cc").items():
        monkeypatch.setenv(key, value)


def a_job(tmp: Path) -> tuple[dict, list[bytes]]:
    (tmp / "unit.c").write_text(SOURCE)
    pre = subprocess.run(
        ["gcc-12", "-E", "unit.c"], cwd=tmp, check=True, capture_output=True
    ).stdout
    header = {
        "id": 1,
        "identity": compiler_identity("/usr/bin/gcc-12"),
        "args": ["-O2"],
        "cwd": str(tmp),
        "input": "unit.i",
        "mode": "c",
        "env": {},
        "files": [],
        "source": "unit.c",
    }
    return header, [pre]


def open_sealed(realm, server: Server) -> proto.SealedChannel:
    host = parse_hosts(f"tcp:127.0.0.1:{tcp_port(server)};principal={realm.service_principal}")[0]
    sock = connect(host)
    channel, _ = open_session(sock, host, compiler_identity("/usr/bin/gcc-12"))
    assert isinstance(channel, proto.SealedChannel)
    return channel


def wait_for_log(server: Server, words: str, before: int = 0, timeout: float = 10.0) -> str:
    """The log once it holds more than `before` lines with `words`."""
    deadline = time.monotonic() + timeout
    while server.log_text().count(words) <= before:
        assert time.monotonic() < deadline, f"{words!r} never logged"
        time.sleep(0.05)
    return server.log_text()


def test_sealed_jobs_run_and_answers_are_encrypted(realm, server, alice, tmp_path):
    """The client's channel refuses any frame that is not encrypted, so a result means it was."""
    channel = open_sealed(realm, server)
    try:
        header, blobs = a_job(tmp_path)
        result = run_job(channel, parse_hosts("tcp:x:1")[0], header, blobs, 1 << 26)
        assert result.exit_code == 0 and result.output
        assert channel.confidential and channel.recv_seq == 2  # READY and RESULT
    finally:
        channel.sock.close()


def _sealed_frame(channel: proto.SealedChannel, header: dict, blobs: list[bytes]) -> bytes:
    frame = proto.encode(proto.JOB, header, blobs)
    token = channel.context.wrap(struct.pack(">Q", channel.send_seq) + frame, True).message
    channel.send_seq += 1
    return struct.pack(">I", len(token)) + token


@pytest.mark.parametrize("attack", ["tamper", "replay", "reorder", "truncate", "unencrypted"])
def test_a_forged_frame_ends_the_connection_with_a_log_line(realm, server, alice, tmp_path, attack):
    channel = open_sealed(realm, server)
    header, blobs = a_job(tmp_path)
    if attack == "unencrypted":  # a well-formed frame, integrity-protected only
        token = channel.context.wrap(
            struct.pack(">Q", 0) + proto.encode(proto.JOB, header, blobs), False
        ).message
        first = second = struct.pack(">I", len(token)) + token
    else:
        first = _sealed_frame(channel, header, blobs)
        second = _sealed_frame(channel, dict(header, id=2), blobs)
    if attack == "tamper":
        wire = bytearray(first)
        wire[len(wire) // 2] ^= 0x40
        data = bytes(wire)
    elif attack == "replay":
        data = first + first
    elif attack == "reorder":
        data = second + first
    elif attack == "truncate":
        data = first[: len(first) // 2]
    else:
        data = first
    sock = channel.sock
    ended_before = server.log_text().count("ended:")
    try:
        sock.sendall(data)
        if attack == "truncate":
            sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:  # closed with our bytes unread: fine
            pass
    finally:
        sock.close()
    text = wait_for_log(server, "ended:", ended_before)
    if attack in ("replay",):
        assert got  # the first job's READY and RESULT came back before the replay was caught
    expected = {
        "truncate": "closed after",
        "unencrypted": "encryption is required",
        "replay": "duplicate",
        "reorder": "expected per-message token was not received",
    }.get(attack, "integrity check")
    last_end = [line for line in text.splitlines() if "ended:" in line][-1]
    assert expected in last_end


def test_a_replayed_handshake_gets_nothing(realm, gcc_image, alice, tmp_path):
    """Record a real client's bytes, then replay them on a new connection: Kerberos' mutual
    authentication gives the replayer a context under a new acceptor subkey, so the recorded
    job frame fails its check there and nothing runs. (A server of its own, whose log budget
    for 127.0.0.1 no earlier test has spent: the replay's line must be there.)"""
    server = start_kerberos_server(tmp_path / "srv", gcc_image, realm, "alice@KRBTEST.COM\n")
    try:
        _replay(realm, server, tmp_path)
    finally:
        stop_server(server)


def _replay(realm, server: Server, tmp_path: Path) -> None:
    port = tcp_port(server)
    recorded: list[bytes] = []
    relay = socket.create_server(("127.0.0.1", 0))
    relay_port = relay.getsockname()[1]

    def record() -> None:
        conn, _ = relay.accept()
        upstream = socket.create_connection(("127.0.0.1", port))

        def pump(src: socket.socket, dst: socket.socket, keep: bool) -> None:
            while data := src.recv(65536):
                if keep:
                    recorded.append(data)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, conn, False))
        back.start()
        pump(conn, upstream, True)
        back.join()
        conn.close()
        upstream.close()

    recorder = threading.Thread(target=record)
    recorder.start()
    jobs_before = server.log_text().count(" job user=")
    env = {
        **os.environ,
        "JAILCC_HOSTS": f"tcp:127.0.0.1:{relay_port};principal={realm.service_principal}",
        "JAILCC_VERBOSE": "1",
        # One connection, the compile's own, to record: not a proxy's, kept open and warmed.
        "JAILCC_PROXY": "0",
    }
    result = compile_with(env, tmp_path)
    recorder.join(timeout=60)
    relay.close()
    assert "remote on" in result.stderr, result.stderr
    log_before = len(server.log_text())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"".join(recorded))
        try:  # (the server may have ended it already: ENOTCONN, or a reset)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except OSError:
            pass
    # The server says why it ended the replay (its log lines come a moment after, and other
    # lines, such as the recorded compile's own job, may come between).
    deadline = time.monotonic() + 15
    while not any(
        words in server.log_text()[log_before:].lower()
        for words in ("integrity", "replay", "authentication failed")
    ):
        assert time.monotonic() < deadline, server.log_text()[log_before:]
        time.sleep(0.1)
    assert server.log_text().count(" job user=") == jobs_before + 1  # the recorded one only


def test_a_flood_of_garbage_before_authentication_leaves_the_server_serving(
    realm, server, tmp_path
):
    port = tcp_port(server)
    rss_before = psutil.Process(server.proc.pid).memory_info().rss
    rng = random.Random(4)
    alice_env = client_env(realm, server, realm.kinit("alice", tmp_path / "alice.cc"))
    results: list[subprocess.CompletedProcess[str]] = []
    worker = threading.Thread(
        target=lambda: results.extend(compile_with(alice_env, tmp_path) for _ in range(3))
    )
    worker.start()
    for n in range(2000):
        kind = n % 4
        if kind == 0:
            data = rng.randbytes(rng.randrange(1, 300))
        elif kind == 1:  # a frame claiming to be huge
            data = struct.pack(">IBI", 0xFFFFFFF0, proto.HELLO, 10)
        elif kind == 2:  # a proper hello, then an oversized AUTH token
            hello = proto.encode(
                proto.HELLO,
                proto.hello_header("client", identity=compiler_identity("/usr/bin/gcc-12")),
            )
            data = hello + struct.pack(">IBI", proto.MAX_AUTH_TOKEN * 4, proto.AUTH, 2) + b"{}"
        else:  # a hello, then a garbage token
            hello = proto.encode(
                proto.HELLO,
                proto.hello_header("client", identity=compiler_identity("/usr/bin/gcc-12")),
            )
            data = hello + proto.encode(proto.AUTH, {}, [rng.randbytes(500)])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                sock.recv(4096)
            except OSError:
                pass
    worker.join(timeout=300)
    assert len(results) == 3 and all("remote on" in r.stderr for r in results), results[-1:]
    assert server.proc.poll() is None
    growth = psutil.Process(server.proc.pid).memory_info().rss - rss_before
    assert growth < 64 * 1024 * 1024, f"the server grew by {growth >> 20} MiB"


def test_one_address_holding_idle_connections_does_not_lock_others_out(realm, server, tmp_path):
    """Hundreds of connections from one address (127.0.0.2) that never say a word: past the
    per-peer cap they are refused at once, and a user elsewhere still compiles remotely."""
    port = tcp_port(server)
    held: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.socket()
            sock.settimeout(10)
            sock.bind(("127.0.0.2", 0))
            sock.connect(("127.0.0.1", port))
            held.append(sock)
        env = client_env(realm, server, realm.kinit("alice", tmp_path / "alice.cc"))
        result = compile_with(env, tmp_path)
        busy = 0
        for sock in held:
            sock.settimeout(0.2)
            try:
                proto.expect(sock, proto.HELLO)
            except proto.RemoteError as exc:
                busy += exc.code == "busy"
            except (OSError, proto.ProtocolError):
                pass  # still waiting for its hello
    finally:
        for sock in held:
            sock.close()
    assert "remote on" in result.stderr, result.stderr
    assert busy >= 300 - 16, busy  # --max-unauthenticated-per-peer's default
    assert "too many connections from 127.0.0.2 waiting to authenticate" in server.log_text()


# -- LDAP authorization -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def directory(realm) -> Iterator:
    with realm_module.Directory(realm) as d:
        realm.addprinc("dave")  # has tickets, but no entry in the directory
        yield d


def ldap_server(realm, directory, gcc_image: Path, tmp: Path, *options: str) -> Server:
    return start_server(
        tmp,
        gcc_image,
        *kerberos_options(realm),
        "--ldap-url",
        directory.url,
        "--ldap-base",
        directory.base,
        *options,
        env={**os.environ, **realm.env},
    )


@pytest.fixture(scope="module")
def gssapi_ldap_server(realm, directory, gcc_image, tmp_path_factory) -> Iterator[Server]:
    srv = ldap_server(
        realm,
        directory,
        gcc_image,
        tmp_path_factory.mktemp("ldap-gssapi"),
        "--ldap-group",
        directory.group,
        "--ldap-cache-ttl",
        "0",
        "--ldap-timeout",
        "1",
    )
    yield srv
    stop_server(srv)


@pytest.mark.parametrize(
    ("who", "remote"),
    [("alice", True), ("bob", False), ("dave", False), ("alice@OTHER.TEST", False)],
    ids=["posixGroup-member", "not-a-member", "not-in-the-directory", "other-realm"],
)
def test_ldap_group_decides_with_a_gssapi_bind(realm, gssapi_ldap_server, tmp_path, who, remote):
    env = client_env(realm, gssapi_ldap_server, realm.kinit(who, tmp_path / "cc"))
    result = compile_with(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("remote on" in result.stderr) == remote, result.stderr
    if not remote:
        assert "may not use this server" in result.stderr
    assert (tmp_path / "unit.o").read_bytes() == local_object(tmp_path)


def test_ldap_groupofnames_with_a_simple_bind(realm, directory, gcc_image, tmp_path):
    srv = ldap_server(
        realm,
        directory,
        gcc_image,
        tmp_path,
        "--ldap-group",
        directory.devs_group,
        "--ldap-bind",
        "simple",
        "--ldap-bind-dn",
        directory.bind_dn,
        "--ldap-password-file",
        str(directory.password_file),
    )
    try:
        carol = compile_with(client_env(realm, srv, realm.kinit("carol", tmp_path / "c")), tmp_path)
        alice = compile_with(client_env(realm, srv, realm.kinit("alice", tmp_path / "a")), tmp_path)
    finally:
        stop_server(srv)
    assert "remote on" in carol.stderr, carol.stderr
    assert "may not use this server" in alice.stderr


def test_a_wrong_ldap_password_stops_the_server_at_start(realm, directory, gcc_image, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password")
    proc = subprocess.run(
        [
            str(BIN / "jailccd"),
            "--toolchain-image",
            str(gcc_image),
            *kerberos_options(realm),
            "--ldap-url",
            directory.url,
            "--ldap-base",
            directory.base,
            "--ldap-group",
            directory.group,
            "--ldap-bind",
            "simple",
            "--ldap-bind-dn",
            directory.bind_dn,
            "--ldap-password-file",
            str(wrong),
        ],
        env={**os.environ, **realm.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "jailccd: error:" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("outage", ["down", "hung"])
def test_ldap_outage_refuses_new_connections_while_open_ones_carry_on(
    realm, directory, gssapi_ldap_server, alice, tmp_path, outage
):
    server = gssapi_ldap_server
    established = open_sealed(realm, server)
    # Each compile its own connection: a proxy leaves a server alone a while after a refusal
    # (up to a minute once its warmer has met the outage too), which is not what this shows.
    env = client_env(realm, server, realm.kinit("alice", tmp_path / "cc"), JAILCC_PROXY="0")
    if outage == "down":
        directory.stop()
    else:
        directory.pause()
    try:
        started = time.monotonic()
        refused = compile_with(env, tmp_path)
        took = time.monotonic() - started
        header, blobs = a_job(tmp_path)
        carried_on = run_job(established, parse_hosts("tcp:x:1")[0], header, blobs, 1 << 26)
    finally:
        established.sock.close()
        if outage == "down":
            directory.start()
        else:
            directory.resume()
    assert refused.returncode == 0
    assert "cannot check who may compile right now" in refused.stderr, refused.stderr
    assert took < 15  # bounded by --ldap-timeout 1, not by the directory
    assert (tmp_path / "unit.o").read_bytes() == local_object(tmp_path)
    assert carried_on.exit_code == 0 and carried_on.output
    assert "remote on" in compile_with(env, tmp_path).stderr  # back again


def test_after_authentication_only_the_unprivileged_jail_holds_the_connection(realm, server, alice):
    channel = open_sealed(realm, server)
    try:
        channel.expect(proto.READY, proto.MAX_HELLO_FRAME)
        ours, theirs = channel.sock.getsockname(), channel.sock.getpeername()
        # This very connection's other end (an old one of our port may linger in TIME_WAIT,
        # held by no process).
        holders = {
            c.pid
            for c in psutil.net_connections("tcp")
            if c.laddr == theirs[:2] and c.raddr == ours[:2] and c.pid != os.getpid()
        }
        assert len(holders) == 1, holders  # not the server too
        holder = psutil.Process(holders.pop())
        assert holder.pid != server.proc.pid
        assert min(holder.uids()) >= 1_500_000_000  # a throwaway jail uid, not root
        assert holder.name() == "jailcc-init" or "jailcc-init" in " ".join(holder.cmdline())
        server_netns = os.readlink(f"/proc/{server.proc.pid}/ns/net")
        assert os.readlink(f"/proc/{holder.pid}/ns/net") != server_netns
    finally:
        channel.sock.close()
