"""jailccd serving: real server process, real jails, raw protocol clients (good and hostile)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import BIN, requires_root
from jailcc import protocol as proto
from jailcc.client.hosts import Host
from jailcc.client.status import fetch_status
from jailcc.images.identity import compiler_identity
from serverutil import Server, as_nobody, start_server, stop_server, tcp_port

pytestmark = requires_root

SOURCE = b"int twice(int a) { return 2 * a; }\n"


@pytest.fixture(scope="module")
def server(gcc_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("server"), gcc_image, "--allow-user", "root")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def identity() -> str:
    return compiler_identity("/usr/bin/gcc-12")


def hello(sock: socket.socket, ident: str | None = None) -> dict:
    """Hello for gcc-12 jobs; returns the server's hello once the jail is READY."""
    ident = ident or compiler_identity("/usr/bin/gcc-12")
    proto.send(sock, proto.HELLO, proto.hello_header("client", identity=ident))
    header, _ = proto.expect(sock, proto.HELLO)
    proto.expect(sock, proto.READY)
    return header


def preprocess(tmp: Path, source: bytes = SOURCE, name: str = "unit.c") -> bytes:
    (tmp / name).write_bytes(source)
    return subprocess.run(["gcc-12", "-E", name], cwd=tmp, check=True, capture_output=True).stdout


def job(ident: str, workdir: Path, **changes) -> dict:
    header = {
        "id": 1,
        "identity": ident,
        "args": ["-O2", "-g"],
        "cwd": str(workdir),
        "input": "unit.i",
        "mode": "c",
        "env": {},
        "files": [],
        "source": "unit.c",
    }
    header.update(changes)
    return header


def test_jobs_over_one_connection_give_byte_identical_objects(server, identity, tmp_path):
    pre = preprocess(tmp_path)
    (tmp_path / "unit.i").write_bytes(pre)
    subprocess.run(
        ["gcc-12", "-O2", "-g", "-c", "unit.i", "-o", "local.o"], cwd=tmp_path, check=True
    )
    with server.connect() as sock:
        info = hello(sock)
        assert info["protocol"] == proto.PROTOCOL_VERSION
        assert any(c["identity"] == identity for i in info["images"] for c in i["compilers"])
        for n in range(3):
            proto.send(sock, proto.JOB, job(identity, tmp_path, id=n), [pre], [True])
            header, (_, err, obj) = proto.expect(sock, proto.RESULT)
            assert header["id"] == n and header["exit_code"] == 0, err
            assert obj == (tmp_path / "local.o").read_bytes()
        # Assembly too.
        proto.send(sock, proto.JOB, job(identity, tmp_path, mode="S", id=9), [pre], [True])
        header, (_, _, asm) = proto.expect(sock, proto.RESULT)
        assert header["exit_code"] == 0 and b".globl\ttwice" in asm
    assert "status=exit:0" in server.log_text()


def test_a_job_whose_client_hangs_up_stops_and_frees_its_slot(server, identity, tmp_path):
    """make interrupted mid-compile: the client's connection closes while its job runs; the
    jail stops the compile at once (it held a slot for up to the job timeout)."""
    slow = "".join(
        f"int f{i}(int a) {{ int s = 0; for (int j = 0; j < a; j++) s += j * {i} ^ (s >> 3);"
        " return s; }\n"
        for i in range(4000)
    )
    pre = preprocess(tmp_path, slow.encode(), "slow.c")
    with server.connect() as sock:
        hello(sock)
        proto.send(sock, proto.JOB, job(identity, tmp_path, source="slow.c"), [pre], [True])
        time.sleep(1.0)  # cc1 runs (it takes several seconds)
    hung_up = time.monotonic()
    deadline = hung_up + 30
    while "source=slow.c status=limit:hung-up" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.1)
    assert time.monotonic() - hung_up < 3.0, "the compile ran on after its client left"


def _slow_source(functions: int) -> bytes:
    return "".join(
        f"int f{i}(int a) {{ int s = 0; for (int j = 0; j < a; j++) s += j * {i} ^ (s >> 3);"
        " return s; }\n"
        for i in range(functions)
    ).encode()


def _frames_until_result(sock: socket.socket) -> tuple[list[dict], dict]:
    """The ALIVE headers a job got, in order, and its RESULT's header."""
    alive = []
    while True:
        frame_type, header, _ = proto.recv(sock)
        if frame_type != proto.ALIVE:
            return alive, proto.expected(proto.RESULT, frame_type, header, [])[0]
        alive.append(header)


def test_a_job_that_asks_hears_it_is_alive_while_queued_and_while_running(
    gcc_image, identity, tmp_path
):
    """A client tells a stopped or cut-off server from a long compile or a long queue: a job
    that asks ("alive": seconds) gets ALIVE frames while it waits for a slot and runs."""
    srv = start_server(tmp_path / "srv", gcc_image, "--allow-user", "root", "--jobs", "1")
    try:
        slow = preprocess(tmp_path, _slow_source(700), "slow.c")
        quick = preprocess(tmp_path)
        with srv.connect() as running, srv.connect() as queued:
            assert hello(running)["alive"] is True
            hello(queued)
            proto.send(running, proto.JOB, job(identity, tmp_path, id=7, alive=1), [slow], [True])
            time.sleep(0.5)  # it holds the only slot
            proto.send(queued, proto.JOB, job(identity, tmp_path, id=8, alive=1), [quick], [True])
            told_running, result = _frames_until_result(running)
            assert result["id"] == 7 and result["exit_code"] == 0
            told_queued, result = _frames_until_result(queued)
            assert result["id"] == 8 and result["exit_code"] == 0
            assert result["times"]["queue"] > 1.0  # it did wait behind the slow one
        assert len(told_running) >= 1 and all(h == {"id": 7} for h in told_running)
        assert len(told_queued) >= 1 and all(h == {"id": 8} for h in told_queued)
        # A job that does not ask hears nothing but its answer.
        with srv.connect() as sock:
            hello(sock)
            proto.send(sock, proto.JOB, job(identity, tmp_path, id=9), [slow], [True])
            assert _frames_until_result(sock)[0] == []
    finally:
        stop_server(srv)


def test_a_queued_job_whose_client_went_gives_its_place_up(gcc_image, identity, tmp_path):
    """One slot, one place in the queue: a client that queues a job and hangs up (Ctrl-C in
    make) frees its place at once, rather than holding it until the job's turn comes."""
    srv = start_server(
        tmp_path / "srv", gcc_image, "--allow-user", "root", "--jobs", "1", "--max-queue", "1"
    )
    try:
        slow = preprocess(tmp_path, _slow_source(700), "slow.c")
        quick = preprocess(tmp_path)
        with srv.connect() as running:
            hello(running)
            proto.send(running, proto.JOB, job(identity, tmp_path, id=1), [slow], [True])
            time.sleep(0.5)  # it holds the only slot
            with srv.connect() as leaving:
                hello(leaving)
                proto.send(leaving, proto.JOB, job(identity, tmp_path, id=2), [quick], [True])
                deadline = time.monotonic() + 30
                while fetch_status(Host("unix", str(srv.socket_path)))["queued"] != 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            deadline = time.monotonic() + 30
            while "client went while its job waited" not in srv.log_text():
                assert time.monotonic() < deadline, srv.log_text()[-2000:]
                time.sleep(0.05)
            with srv.connect() as after:
                hello(after)
                proto.send(after, proto.JOB, job(identity, tmp_path, id=3), [quick], [True])
                header, _ = proto.expect(after, proto.RESULT)  # not "busy": the place is free
                assert header["id"] == 3 and header["exit_code"] == 0
            assert proto.expect(running, proto.RESULT)[0]["exit_code"] == 0
    finally:
        stop_server(srv)
    log = srv.log_text()
    assert " ERROR " not in log and "broke" not in log, log[-3000:]
    assert "network service: connection" not in log, log[-3000:]  # (a clean end on both sides)


@pytest.mark.parametrize("asked", [0, 0.5, 61, True, "10", [10]])
def test_an_alive_interval_out_of_range_is_refused(server, identity, tmp_path, asked):
    with server.connect() as sock:
        hello(sock)
        proto.send(sock, proto.JOB, job(identity, tmp_path, alive=asked), [preprocess(tmp_path)])
        with pytest.raises(proto.RemoteError) as refused:
            proto.expect(sock, proto.RESULT)
        assert refused.value.code == "protocol" and "alive" in refused.value.message


def test_stopping_with_connections_open_is_no_error(gcc_image, identity, tmp_path):
    """systemctl stop (SIGTERM) while clients hold connections: their jails go down as
    jailccd stops, which the log says as such, not as jails that broke."""
    srv = start_server(tmp_path / "srv", gcc_image, "--allow-user", "root")
    try:
        with srv.connect() as idle, srv.connect() as working:
            hello(idle)
            hello(working)
            slow = preprocess(tmp_path, _slow_source(700), "slow.c")
            proto.send(working, proto.JOB, job(identity, tmp_path), [slow], [True])
            time.sleep(0.5)
            srv.proc.terminate()
            assert srv.proc.wait(30) == 0
    finally:
        stop_server(srv)
    log = srv.log_text()
    assert "jailccd stopped" in log
    assert " ERROR " not in log and "broke" not in log, log[-3000:]


def test_compile_errors_come_back_with_diagnostics(server, identity, tmp_path):
    pre = preprocess(tmp_path, b"int f(void) { return x; }\n")
    with server.connect() as sock:
        hello(sock)
        proto.send(sock, proto.JOB, job(identity, tmp_path), [pre], [True])
        header, (_, err, _) = proto.expect(sock, proto.RESULT)
    assert header["exit_code"] == 1 and not header["has_output"]
    assert b"unit.c:1:22: error: 'x' undeclared" in err


@pytest.mark.parametrize(
    ("changes", "code", "words"),
    [
        ({"args": ["-fplugin=/tmp/evil.so"]}, "policy", "-fplugin=/tmp/evil.so"),
        ({"args": ["-B/tmp/x"]}, "policy", "-B/tmp/x"),
        ({"args": ["-specs=/tmp/s"]}, "policy", "-specs=/tmp/s"),
        ({"args": ["-o", "/etc/x"]}, "policy", "-o"),
        ({"args": ["/etc/shadow"]}, "policy", "/etc/shadow"),
        ({"args": ["-fdump-tree-all"]}, "policy", "-fdump-tree-all"),
        ({"args": ["-march=native"]}, "policy", "-march=native"),
        ({"identity": "sha256:" + "0" * 64}, "image", "another compiler"),
        ({"input": "../x.i"}, "protocol", "input"),
        ({"input": "unit.i\n"}, "protocol", "input"),  # "$" would match before a newline
        ({"mode": "E"}, "protocol", "mode"),
        ({"cwd": "relative"}, "protocol", "working directory"),
        ({"cwd": "/usr/lib/x"}, "jail", "image"),
        ({"id": True}, "protocol", "an id"),
        ({"env": {"TZ": ":/etc/shadow"}}, "policy", "TZ must be a fixed offset"),
        # Refused before the job takes a slot (they were, by the jail, as "jail"):
        ({"files": ["../../etc/x"]}, "protocol", "extra files"),
        ({"files": ["/etc/x"]}, "protocol", "extra files"),
        ({"files": ["a//b"]}, "protocol", "extra files"),
    ],
)
def test_refused_jobs_say_why_and_the_connection_goes_on(
    server, identity, tmp_path, changes, code, words
):
    pre = preprocess(tmp_path)
    blobs = [pre, *(b"int x;\n" for _ in changes.get("files", []))]
    with server.connect() as sock:
        hello(sock)
        proto.send(sock, proto.JOB, job(identity, tmp_path, **changes), blobs, [True] * len(blobs))
        with pytest.raises(proto.RemoteError) as refused:
            proto.expect(sock, proto.RESULT)
        assert refused.value.code == code and words in refused.value.message
        if code == "jail":  # a jail that failed to switch directories is not used again
            sock.close()
            sock = server.connect()
            hello(sock)
        proto.send(sock, proto.JOB, job(identity, tmp_path), [pre], [True])
        header, _ = proto.expect(sock, proto.RESULT)
        assert header["exit_code"] == 0


def test_an_input_past_max_input_is_refused_and_not_kept(gcc_image, identity, tmp_path):
    """--max-input is the largest input once decompressed, not what comes on the wire: a
    frame of a few hundred KiB of LZ4 that would make 96 MiB is refused, and no jail init holds
    its data while the connection waits for the next job (each could, for the idle time)."""
    srv = start_server(tmp_path / "srv", gcc_image, "--allow-user", "root", "--max-input", "64")
    try:
        bomb = b"\n" * (96 * 1024 * 1024)
        inits_before = {p.pid for p in _jail_inits(srv)}
        with srv.connect() as sock:
            hello(sock)
            proto.send(sock, proto.JOB, job(identity, tmp_path), [bomb], [True])
            with pytest.raises(proto.RemoteError) as refused:
                proto.expect(sock, proto.RESULT)
            assert refused.value.code == "policy" and "--max-input" in refused.value.message
            deadline = time.monotonic() + 10  # (the init sends the ERROR, then lets go)
            while True:
                held = {p.pid: p.memory_info().rss for p in _jail_inits(srv)}
                if (held and max(held.values()) < 48 << 20) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert held and max(held.values()) < 48 << 20, (held, inits_before)
            # The connection goes on; twice --max-input is past what any job frame may hold.
            pre = preprocess(tmp_path)
            proto.send(sock, proto.JOB, job(identity, tmp_path), [pre], [True])
            assert proto.expect(sock, proto.RESULT)[0]["exit_code"] == 0
            with contextlib.suppress(BrokenPipeError):  # (refused by its prefix, unread)
                proto.send(
                    sock, proto.JOB, job(identity, tmp_path), [bomb + bomb[: 40 << 20]], [True]
                )
            with pytest.raises(proto.RemoteError, match="decompress to more than"):
                proto.expect(sock, proto.RESULT)
    finally:
        stop_server(srv)


def test_one_users_large_inputs_stay_within_user_memory(gcc_image, identity, tmp_path):
    """--user-memory bounds what one user's large frames hold at once across connections: a
    frame past 8 MiB is read only once its jail is granted its share. One connection holds 12
    of the 20 MiB while its frame trickles in; another's 12 MiB job is refused as busy (its
    bytes read and dropped, the connection ended), and once the first job is answered the same
    job goes through."""
    srv = start_server(tmp_path / "srv", gcc_image, "--allow-user", "root", "--user-memory", "20")
    host = Host("unix", str(srv.socket_path))
    try:
        large = preprocess(tmp_path) + b"\n" * (12 << 20)
        frame = proto.encode(proto.JOB, job(identity, tmp_path), [large], [False])
        with srv.connect() as first, srv.connect() as second:
            hello(first)
            hello(second)
            first.sendall(frame[: len(frame) // 2])
            deadline = time.monotonic() + 30
            while fetch_status(host).get("memory_held", 0) < 12 << 20:
                assert time.monotonic() < deadline, "the first frame was never reserved"
                time.sleep(0.05)
            second.sendall(frame)
            with pytest.raises(proto.RemoteError) as refused:
                proto.expect(second, proto.RESULT)
            assert refused.value.code == "busy", refused.value
            second.settimeout(30)
            assert second.recv(1) == b""  # the connection ended
            first.sendall(frame[len(frame) // 2 :])
            assert proto.expect(first, proto.RESULT)[0]["exit_code"] == 0
            # Given back before the answer went out: the user's next job may come at once.
            assert fetch_status(host)["memory_held"] == 0
        with srv.connect() as third:
            hello(third)
            third.sendall(frame)
            assert proto.expect(third, proto.RESULT)[0]["exit_code"] == 0
    finally:
        stop_server(srv)


def _jail_inits(srv: Server) -> list[psutil.Process]:
    found = []
    for process in psutil.Process(srv.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if process.cmdline()[:1] == ["jailcc-init"]:
                found.append(process)
    return found


def test_environment_is_scrubbed(server, identity, tmp_path):
    # A hostile environment would make gcc load another cc1; it never reaches the compiler.
    pre = preprocess(tmp_path)
    env = {
        "GCC_EXEC_PREFIX": "/tmp/evil/",
        "COMPILER_PATH": "/tmp/evil",
        "LD_PRELOAD": "x.so",
        "LC_ALL": "de_DE.UTF-8",
    }
    with server.connect() as sock:
        hello(sock)
        proto.send(sock, proto.JOB, job(identity, tmp_path, env=env), [pre], [True])
        header, _ = proto.expect(sock, proto.RESULT)
    assert header["exit_code"] == 0


@pytest.mark.parametrize(
    ("hello_fields", "code"),
    [
        ({"protocol": 99}, "version"),
        ({"protocol": proto.PROTOCOL_VERSION + 0.0, "role": "client"}, "version"),  # 2.0
        ({"protocol": True, "role": "client"}, "version"),  # (True == 1)
        ({"protocol": proto.PROTOCOL_VERSION, "role": "server"}, "protocol"),
        ({"protocol": proto.PROTOCOL_VERSION}, "protocol"),
    ],
)
def test_a_hello_is_a_clients_in_this_protocol_exactly(server, hello_fields, code):
    with server.connect() as sock:
        proto.send(sock, proto.HELLO, hello_fields)
        with pytest.raises(proto.RemoteError) as refused:
            proto.expect(sock, proto.HELLO)
        assert refused.value.code == code, refused.value


def test_unauthorized_user_is_refused(server):
    # Talk to the server as nobody: SO_PEERCRED says who it is.
    def hello() -> bytes:
        with server.connect() as sock:
            proto.send(sock, proto.HELLO, proto.hello_header("client"))
            try:
                proto.expect(sock, proto.HELLO)
                return b"accepted"
            except proto.RemoteError as exc:
                return exc.code.encode()

    assert as_nobody(hello) == b"unauthorized"
    assert "unauthorized: nobody" in server.log_text()


def raw_frame(body_len: int, frame_type: int, head: bytes, rest: bytes = b"") -> bytes:
    return struct.pack(">IBI", body_len, frame_type, len(head)) + head + rest


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # connect and close
        b"\x00\x00",  # early EOF inside the prefix
        struct.pack(">IBI", 2**31, 1, 10),  # absurd length
        raw_frame(5 + 4, 99, b"{}  "),  # unknown type
        raw_frame(5 + 5, 1, b"nope!"),  # bad JSON
        raw_frame(5 + 2, 1, b"[]"),  # JSON not an object
        raw_frame(5 + 2 + 10, 1, b"{}", b"x" * 10),  # blobs that do not add up
        raw_frame(5 + 30, 1, b'{"blobs":[5],"raw":[999999]}', b"abcde"),  # bad lz4
        raw_frame(100, 1, b"{}"),  # truncated frame, then EOF
    ],
)
def test_malformed_frames_are_refused_and_the_server_carries_on(
    server, payload, identity, tmp_path
):
    with server.connect() as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
    test_jobs_over_one_connection_give_byte_identical_objects(server, identity, tmp_path)


def test_a_stalling_client_is_dropped_and_others_are_served(server, identity, tmp_path):
    staller = server.connect()
    staller.sendall(struct.pack(">IBI", 1000, 1, 500))  # a hello that never completes
    test_jobs_over_one_connection_give_byte_identical_objects(server, identity, tmp_path)
    # The handshake deadline (10 s) passes: the server drops the connection. recv() raising
    # a timeout here would mean the stalled connection was kept.
    staller.settimeout(30)
    while staller.recv(65536):
        pass
    staller.close()


def test_random_garbage_does_not_hurt_the_server(server, identity, tmp_path):
    rng = random.Random(1234)
    for _ in range(200):
        with server.connect() as sock:
            try:
                sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
                sock.shutdown(socket.SHUT_WR)
                sock.recv(65536)
            except OSError:
                pass
    assert server.proc.poll() is None
    test_jobs_over_one_connection_give_byte_identical_objects(server, identity, tmp_path)


def test_server_refuses_to_start_without_an_authorization_source(gcc_image, tmp_path):
    proc = subprocess.run(
        [
            str(BIN / "jailccd"),
            "--toolchain-image",
            str(gcc_image),
            "--socket",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--allow-user" in proc.stderr


def test_tcp_needs_insecure_and_then_warns(gcc_image, tmp_path, identity):
    proc = subprocess.run(
        [
            str(BIN / "jailccd"),
            "--toolchain-image",
            str(gcc_image),
            "--socket",
            str(tmp_path / "s"),
            "--allow-user",
            "root",
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--insecure" in proc.stderr
    srv = start_server(
        tmp_path, gcc_image, "--listen", "127.0.0.1:0", "--insecure",
        "--max-connections-per-user", "2",
    )  # fmt: skip
    try:
        port = tcp_port(srv)
        assert "WITHOUT AUTHENTICATION" in srv.log_text()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            hello(sock)
            pre = preprocess(tmp_path)
            proto.send(sock, proto.JOB, job(identity, tmp_path), [pre], [True])
            header, _ = proto.expect(sock, proto.RESULT)
            assert header["exit_code"] == 0
        # Peers without authentication are known by address and port, which the next peer
        # may take (SO_REUSEADDR): their jails, and the files in them, are never reused.
        source_port = None
        for n in range(2):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", source_port or 0))
                source_port = sock.getsockname()[1]
                sock.settimeout(10)
                sock.connect(("127.0.0.1", port))
                hello(sock)
                proto.send(sock, proto.JOB, job(identity, tmp_path, source=f"tcp{n}.c"), [pre])
                assert proto.expect(sock, proto.RESULT)[0]["exit_code"] == 0
            time.sleep(0.3)  # the jail is back (it would be in the cache) before the next
        text = srv.log_text()
        assert _jail_ids(text, "tcp0.c") != _jail_ids(text, "tcp1.c"), text[-1500:]
        # ...but one address's connections are one share (each used to count as a user).
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        try:
            for sock in held[:2]:
                hello(sock)
            proto.send(held[2], proto.HELLO, proto.hello_header("client", identity=identity))
            with pytest.raises(proto.RemoteError, match=r"2 connections of 127\.0\.0\.1"):
                proto.expect(held[2], proto.HELLO)
        finally:
            for sock in held:
                sock.close()
    finally:
        stop_server(srv)


def test_missing_image_is_one_clear_line(tmp_path):
    proc = subprocess.run(
        [
            str(BIN / "jailccd"),
            "--toolchain-image",
            str(tmp_path / "x.img"),
            "--allow-user",
            "root",
            "--socket",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "jailcc-image build" in proc.stderr


def _jail_ids(log_text: str, source: str) -> list[int]:
    return [
        int(line.split(" jail=")[1].split()[0])
        for line in log_text.splitlines()
        if f"source={source} " in line and " jail=" in line
    ]


def _compile_as(server: Server, identity: str, tmp: Path, source: str, uid: int | None) -> None:
    """One job on a fresh connection, as root or (forked) as another uid."""
    pre = preprocess(tmp)
    pid = os.fork() if uid is not None else 0
    if pid == 0:
        try:
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            with server.connect() as sock:
                hello(sock)
                proto.send(sock, proto.JOB, job(identity, tmp, source=source), [pre], [True])
                proto.expect(sock, proto.RESULT)
        finally:
            if uid is not None:
                os._exit(0)
    if uid is not None:
        os.waitpid(pid, 0)


def test_a_users_next_connection_reuses_its_jail_and_no_one_elses(gcc_image, tmp_path, identity):
    srv = start_server(tmp_path, gcc_image, "--allow-user", "root", "--allow-user", "nobody")
    work = Path(tempfile.mkdtemp(prefix="jailcc-reuse-"))
    try:
        work.chmod(0o755)
        for n in range(3):
            _compile_as(srv, identity, work, f"root{n}.c", None)
        _compile_as(srv, identity, work, "nobody.c", 65534)
        text = srv.log_text()
        root_jails = [_jail_ids(text, f"root{n}.c")[0] for n in range(3)]
        nobody_jail = _jail_ids(text, "nobody.c")[0]
        assert len(set(root_jails)) == 1, root_jails  # one jail served all three connections
        assert nobody_jail not in root_jails  # another user never gets it
    finally:
        stop_server(srv)
        shutil.rmtree(work, ignore_errors=True)


def test_out_of_descriptors_a_connection_fails_not_the_server(gcc_image, tmp_path):
    """Under a small descriptor limit the monitor and the launcher run out (two a connection,
    two a jail; tests/test_privsep.py makes the monitor's case sure): the connections past it
    fail, each alone, and once they close the server takes new ones (up to the jail's READY:
    a compile's own limit of 256 descriptors is above this hard limit)."""
    srv = start_server(
        tmp_path, gcc_image, "--allow-user", "root", "--max-connections-per-user", "200",
        prefix=("prlimit", "--nofile=80:80"),
    )  # fmt: skip
    held, served, failed = [], 0, 0
    try:
        for _ in range(60):
            sock = srv.connect()
            held.append(sock)
            sock.settimeout(30)
            try:
                hello(sock)
                served += 1
            except (OSError, proto.ProtocolError):
                failed += 1
        assert served and failed, (served, failed)
        assert "Too many open files" in srv.log_text()
        for sock in held:
            sock.close()
        held = []
        assert srv.proc.poll() is None
        for _ in range(3):
            with srv.connect() as sock:
                hello(sock)
    finally:
        for sock in held:
            sock.close()
        stop_server(srv)


def test_the_server_stops_loudly_when_its_launcher_dies(gcc_image, tmp_path):
    srv = start_server(tmp_path, gcc_image, "--allow-user", "root")
    try:
        launchers = [
            p
            for p in psutil.Process(srv.proc.pid).children()
            if "jailcc.sandbox.launcher" in " ".join(p.cmdline())
        ]
        assert len(launchers) == 1
        launchers[0].kill()
        assert srv.proc.wait(timeout=20) == 1
        assert "the jail launcher died" in srv.log_text()
        assert not srv.socket_path.exists()
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
        srv.socket_path.parent.rmdir()


def test_connection_workers_are_kept_for_the_next_connection_and_grow_with_load() -> None:
    import threading

    from jailcc.server.service import _Workers

    workers = _Workers()
    seen: list[str] = []
    done = threading.Event()

    def task(last: bool) -> None:
        seen.append(threading.current_thread().name + str(threading.get_ident()))
        if last:
            done.set()

    def task_then(finished: threading.Event) -> None:
        task(False)
        finished.set()

    for _ in range(5):  # one after the other: one thread takes them all
        finished = threading.Event()
        workers.run(task_then, finished)
        assert finished.wait(5)
        time.sleep(0.01)  # let it count itself idle
    assert len(set(seen)) == 1
    release = threading.Event()
    started = threading.Semaphore(0)

    def blocking() -> None:
        started.release()
        release.wait(5)

    for _ in range(3):  # at the same time: each gets a thread of its own
        workers.run(blocking)
    for _ in range(3):
        assert started.acquire(timeout=5)
    release.set()

    def broken() -> None:
        raise RuntimeError("a bug in a handler")

    workers.run(broken)  # logged; the workers go on
    workers.run(task, True)
    assert done.wait(5)
