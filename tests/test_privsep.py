"""The privilege separation: the network service runs unprivileged, and the root monitor answers
only its tables, each request in its state (monitor/monitor.py). The monitor is driven here
with forged and out-of-turn requests over its real channels, as a compromised service would."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from conftest import requires_root
from jailcc import protocol as proto
from jailcc import wire
from jailcc.jobs import handover
from jailcc.monitor.kerberos import AuthenticationFailed
from jailcc.monitor.monitor import MAX_AUTH_ROUNDS, Monitor, MonitorConfig, State
from jailcc.peer import LocalAuthorizer
from jailcc.sandbox.api import SandboxError
from jailcc.sandbox.spec import JailLimits, RunLimits
from serverutil import Server

# -- the network service's process ----------------------------------------------------------


def _service_pid(server: Server) -> int:
    deadline = time.monotonic() + 30
    while not (found := re.search(r"network service pid (\d+) as uid", server.log_text())):
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
    return int(found.group(1))


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


@requires_root
def test_the_network_service_runs_unprivileged(root_server: Server) -> None:
    pid = _service_pid(root_server)
    status = _status(pid)
    assert all(int(uid) != 0 for uid in status["Uid"].split()), status["Uid"]
    assert all(int(gid) != 0 for gid in status["Gid"].split()), status["Gid"]
    assert status["Groups"].strip() == ""
    for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    assert status["NoNewPrivs"].strip() == "1"
    # Not dumpable (its /proc files are then root's): no process of its uid may trace it or
    # take its descriptors; and, before it reads a peer's byte, under a seccomp filter.
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/fd").stat().st_uid != 0:
        assert time.monotonic() < deadline, "the service stays dumpable"
        time.sleep(0.05)
    while "network service ready" not in root_server.log_text():
        assert time.monotonic() < deadline, root_server.log_text()
        time.sleep(0.05)
    assert _status(pid)["Seccomp"].strip() == "2"
    # Its parent is the root monitor, which holds no listening socket: every peer's first
    # byte is read by the unprivileged service.
    monitor = psutil.Process(pid).parent()
    assert monitor is not None and monitor.uids().effective == 0
    socket_path = str(root_server.socket_path)
    listening = [c for c in psutil.net_connections(kind="unix") if c.laddr == socket_path and c.pid]
    assert {c.pid for c in listening} == {pid}


LANDLOCK_PROBE = """
import json, os, socket, sys
import prctl
prctl.set_no_new_privs(True)
os.setgroups([]); os.setgid(65534); os.setuid(65534)
if sys.argv[2] == "confined":
    from jailcc.server import landlock
    landlock.confine_service()
def attempt(do):
    try:
        do()
        return "ok"
    except OSError as exc:
        return exc.strerror
said = {
    "read a world-readable file": attempt(lambda: open(sys.argv[1] + "/secret").read()),
    "list its directory": attempt(lambda: os.listdir(sys.argv[1])),
    "write there": attempt(lambda: open(sys.argv[1] + "/new", "w").close()),
    "read /etc": attempt(lambda: open("/etc/os-release").read()),
    "read /proc": attempt(lambda: open("/proc/self/status").read()),
    "tcp": attempt(lambda: socket.create_connection(("127.0.0.1", int(sys.argv[3])), 5).close()),
}
import zeroconf, prometheus_client, lz4.frame, decimal  # (not imported before: read now)
import jailcc.server.owner, jailcc.server.metrics
print(json.dumps(said))
"""


@requires_root
def test_the_network_service_can_read_only_what_it_runs_on(root_server: Server) -> None:
    """Landlock (server/landlock.py): once started, the service reads Python, jailcc and the
    system's files, /proc, /sys, /dev and /run, and nothing else; writes no file; connects to
    no TCP port. The same probe without it is the control: its uid alone may do all that."""
    from jailcc.server import landlock

    try:
        abi = landlock.abi_version()
    except landlock.LandlockUnavailable as exc:
        pytest.skip(f"no Landlock here: {exc}")
    deadline = time.monotonic() + 30
    while "network service ready" not in root_server.log_text():
        assert time.monotonic() < deadline, root_server.log_text()
        time.sleep(0.05)
    assert f"Landlock ABI {abi}" in root_server.log_text()  # the real service took it on
    public = Path(tempfile.mkdtemp(prefix="jailcc-landlock-", dir="/var/tmp"))
    try:
        public.chmod(0o777)
        (public / "secret").write_text("the owner's notes\n")
        (public / "secret").chmod(0o644)
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            port = str(listener.getsockname()[1])
            said = {}
            for how in ("free", "confined"):
                done = subprocess.run(
                    [sys.executable, "-c", LANDLOCK_PROBE, str(public), how, port],
                    capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                assert done.returncode == 0, done.stderr
                said[how] = json.loads(done.stdout)
    finally:
        shutil.rmtree(public)
    assert set(said["free"].values()) == {"ok"}, said["free"]
    confined = said["confined"]
    assert confined["read /etc"] == confined["read /proc"] == "ok", confined
    for what in ("read a world-readable file", "list its directory", "write there"):
        assert confined[what] == "Permission denied", (what, confined)
    assert confined["tcp"] == ("Permission denied" if abi >= 4 else "ok"), confined


def test_landlock_is_refused_while_other_threads_run() -> None:
    """Landlock covers the thread that asks and those it starts after (before ABI 8): a
    thread already running (a metrics server's, zeroconf's) would keep every right."""
    script = (
        "import threading, time\n"
        "from jailcc.server import landlock\n"
        "threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
        "try:\n"
        "    landlock.confine_service()\n"
        "except OSError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert "threads running" in done.stdout, done.stdout + done.stderr


@requires_root
def test_the_monitor_stops_when_the_service_dies(root_server: Server) -> None:
    os.kill(_service_pid(root_server), 9)
    assert root_server.proc.wait(timeout=30) == 1
    assert "the network service (uid " in root_server.log_text()
    assert "(killed by signal 9): stopping" in root_server.log_text()
    assert "must be able to read" not in root_server.log_text()  # (that is for a failed start)
    assert not root_server.socket_path.exists()
    root_server.socket_path.parent.rmdir()


@requires_root
def test_a_stop_that_reaches_the_children_first_is_clean(root_server: Server) -> None:
    """systemctl stop signals every process of the unit (KillMode=control-group), and our
    children may end before our own handler runs: that is a stop, not a failure to restart."""
    service = _service_pid(root_server)
    children = psutil.Process(root_server.proc.pid).children()
    assert service in {child.pid for child in children}
    for child in children:
        child.send_signal(15)
    time.sleep(0.5)  # past the monitor's poll: it has seen them go
    root_server.proc.send_signal(15)
    assert root_server.proc.wait(timeout=30) == 0, root_server.log_text()
    assert "stopping; " not in root_server.log_text()
    assert not root_server.socket_path.exists()
    root_server.socket_path.parent.rmdir()


# -- the monitor's tables, driven as a compromised service would ----------------------------


@dataclass
class FakeSandbox:
    """Counts the jails asked for; never builds one (the tests are about who may ask)."""

    created: list[str] = field(default_factory=list)

    stores: list[tuple[str, int] | None] = field(default_factory=list)

    def create_jail(
        self, image: str, limits: JailLimits, store_for: tuple[str, int] | None = None
    ) -> Any:
        self.created.append(image)
        self.stores.append(store_for)
        raise SandboxError("no jails here")


@dataclass
class FakeOffer:
    image: str
    compiler: Any


class FakeCatalog:
    compiler = SimpleNamespace(name="gcc-12", identity="id-1", path="/usr/bin/gcc-12", kind="gcc")
    by_identity = {"id-1": FakeOffer("gcc-12", compiler)}

    def describe(self) -> list[dict[str, Any]]:
        return []


class FakeCache:
    def take(self, owner: str, image: str) -> None:
        return None

    def give_back(self, *args: Any) -> None:
        pass

    def discard(self, *args: Any) -> None:
        pass


class FakeContext:
    complete = False


class FakeKerberos:
    """Accepts nothing: every token is garbage to it."""

    principal = "jailcc/host@TEST"

    def new_context(self) -> FakeContext:
        return FakeContext()

    def step(self, context: FakeContext, token: bytes) -> tuple[bytes, bool]:
        if token == b"continue":
            return b"more", False
        raise AuthenticationFailed("a garbage token")


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[tuple[Monitor, socket.socket, FakeSandbox]]:
    sandbox = FakeSandbox()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "jailccd.sock")
    listener.bind(path)  # jailccd's own socket, as it were
    listener.listen(16)
    mon = Monitor(
        sandbox,  # type: ignore[arg-type]
        FakeCatalog(),  # type: ignore[arg-type]
        FakeCache(),  # type: ignore[arg-type]
        LocalAuthorizer([], [], allow_tcp=False),  # nobody local may compile
        MonitorConfig(
            JailLimits(),
            RunLimits(),
            1 << 20,
            max_connections=4,
            unix_socket=path,
        ),
    )
    mon.listener = listener  # type: ignore[attr-defined]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    thread = threading.Thread(target=mon.serve, args=(theirs,), daemon=True)
    thread.start()
    ours.settimeout(10)
    yield mon, ours, sandbox
    ours.close()
    thread.join(10)
    theirs.close()
    listener.close()


def _unix_pair(mon: Monitor) -> tuple[socket.socket, socket.socket]:
    """(a local client's end, the end jailccd's socket accepted), as the service passes it."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(mon.listener.getsockname())  # type: ignore[attr-defined]
    return client, mon.listener.accept()[0]  # type: ignore[attr-defined]


def _main(main: socket.socket, request: dict[str, Any], fds: list[int] = ()) -> dict:
    wire.send_message(main, request, fds=fds)
    reply, _, out = wire.recv_message_with_fds(main, 0, 1)
    assert out == []
    return reply


_numbers = iter(range(1, 1 << 30))


def _open(main: socket.socket, client: Any, number: int | None = None) -> socket.socket:
    """A connection's channel, as the service opens one: not answered on the main channel."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fileno = client if isinstance(client, int) else client.fileno()
    number = next(_numbers) if number is None else number
    wire.send_message(main, {"op": "open", "conn": number}, fds=[fileno, theirs.fileno()])
    theirs.close()
    ours.settimeout(10)
    return ours


def _ask(channel: socket.socket, op: str, blobs: list[bytes] = (), **fields: Any) -> dict:
    wire.send_message(channel, {"op": op, **fields}, blobs)
    reply, _ = wire.recv_message(channel, 1 << 20)
    return reply


def _closed(channel: socket.socket) -> bool:
    try:
        wire.recv_message(channel, 0)
    except (wire.PeerClosed, ConnectionResetError):  # reset: it closed with our bytes unread
        return True
    return False


def _refused_and_closed(channel: socket.socket, words: str) -> None:
    reply, _ = wire.recv_message(channel, 0)
    assert reply["ok"] is False and words in reply["error"], reply
    assert _closed(channel)


def _tcp_pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    return listener, client, server_side


def test_serve_before_kerberos_is_refused_and_ends_the_connection(monitor) -> None:
    mon, main, sandbox = monitor
    mon.kerberos = FakeKerberos()  # type: ignore[assignment]
    listener, client, server_side = _tcp_pair()
    channel = _open(main, server_side)
    reply = _ask(channel, "serve", identity="id-1", hello={})
    assert reply["ok"] is False and "out of turn" in reply["error"]
    assert _closed(channel)
    assert sandbox.created == []
    for sock in (client, server_side, listener):
        sock.close()


def test_a_refused_local_peer_gets_no_jail(monitor) -> None:
    """The monitor reads the peer's credentials itself: whatever the request says, a user
    who may not compile gets no jail, and asking again is out of turn."""
    mon, main, sandbox = monitor
    _peer, client = _unix_pair(mon)
    channel = _open(main, client)
    reply = _ask(channel, "serve", identity="id-1", hello={}, user="alice", uid=1000)
    assert reply["ok"] is False and reply["code"] == "unauthorized", reply
    reply = _ask(channel, "serve", identity="id-1", hello={})
    assert reply["ok"] is False and "out of turn" in reply["error"]
    assert _closed(channel)
    assert sandbox.created == []


def test_allowed_peers_reach_the_sandbox(monitor) -> None:
    """The control for the refusals: the same requests from peers who may compile (a local
    user; with --insecure, a TCP peer) do reach the sandbox."""
    mon, main, sandbox = monitor
    mon.local = LocalAuthorizer([_user_name()], [], allow_tcp=True)
    _peer, client = _unix_pair(mon)
    reply = _ask(_open(main, client), "serve", identity="id-1", hello={})
    assert reply["end"] is True and reply["error"] == "no jails here", reply
    listener, tcp_client, server_side = _tcp_pair()
    reply = _ask(_open(main, server_side), "serve", identity="id-1", hello={})
    assert reply["end"] is True and reply["error"] == "no jails here", reply
    assert sandbox.created == ["gcc-12", "gcc-12"]
    # The jail's blob store is its user's, as the monitor itself decided who that is.
    # A --insecure peer (named by its address) gets none.
    assert sandbox.stores == [(f"local:{_user_name()}", handover.STORE_BYTES), None]
    for sock in (tcp_client, server_side, listener):
        sock.close()


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@pytest.mark.parametrize(
    ("op", "fields"),
    [
        ("seal", {}),  # no context: nobody authenticated
        ("export_context", {}),  # no such request: the context never leaves root
        ("gss_step", {}),  # no Kerberos configured, and a Unix socket
        ("insecure", {}),  # no such request (the monitor decides on TCP peers itself)
        ("local_peer", {"user": "root"}),  # nor this: the monitor reads SO_PEERCRED itself
        ("make_jail", {"user": "alice"}),  # nor this
        ("serve", {"identity": "id-1"}),  # no hello to repeat
    ],
)
def test_forged_requests_are_refused(monitor, op: str, fields: dict) -> None:
    mon, main, sandbox = monitor
    _peer, client = _unix_pair(mon)
    channel = _open(main, client)
    reply = _ask(channel, op, [b"token"] if op == "gss_step" else [], **fields)
    assert reply["ok"] is False, reply
    assert _closed(channel)
    assert sandbox.created == []


def test_kerberos_failures_and_too_many_rounds_never_authorize(monitor) -> None:
    mon, main, sandbox = monitor
    mon.kerberos = FakeKerberos()  # type: ignore[assignment]
    listener, client, server_side = _tcp_pair()
    # A garbage token: unauthenticated, and nothing after it is in turn.
    channel = _open(main, server_side)
    reply = _ask(channel, "gss_step", [b"garbage"])
    assert reply == {"ok": False, "code": "unauthenticated", "message": "a garbage token"}
    for op in ("gss_step", "serve", "seal"):
        channel = _open(main, server_side)
        _ask(channel, "gss_step", [b"garbage"])
        reply = _ask(channel, op, [b"x"] if op == "gss_step" else [], identity="id-1", hello={})
        assert reply["ok"] is False and _closed(channel), (op, reply)
    # A handshake that never completes is cut after MAX_AUTH_ROUNDS.
    channel = _open(main, server_side)
    for _ in range(MAX_AUTH_ROUNDS):
        assert _ask(channel, "gss_step", [b"continue"])["complete"] is False
    assert _ask(channel, "gss_step", [b"continue"])["code"] == "unauthenticated"
    # An oversized token is not even read: the connection ends.
    channel = _open(main, server_side)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        wire.send_message(channel, {"op": "gss_step"}, [b"x" * (1 << 20)])
    assert _closed(channel)
    assert sandbox.created == []
    for sock in (client, server_side, listener):
        sock.close()


class SealingContext(FakeContext):
    """A context that accepted alice: its wrap tokens show what was sealed."""

    def wrap(self, message: bytes, encrypt: bool) -> SimpleNamespace:
        return SimpleNamespace(message=b"sealed:" + message)

    def export(self) -> bytes:
        raise AssertionError("the context must never leave root")


class AcceptingKerberos(FakeKerberos):
    def new_context(self) -> FakeContext:
        return SealingContext()

    def step(self, context: FakeContext, token: bytes) -> tuple[bytes, bool]:
        return (b"welcome", True) if token == b"alice" else super().step(context, token)

    def established(self, context: FakeContext) -> str:
        return "alice@TEST"


def _frame(frame_type: int, header: bytes = b"{}") -> bytes:
    return struct.pack(">IBI", 1 + 4 + len(header), frame_type, len(header)) + header


@pytest.mark.parametrize("allowed", [True, False])
def test_a_service_gets_one_sealed_status_or_error_and_never_the_context(
    monitor, allowed: bool
) -> None:
    """Sealing is root's: the service has one ERROR or STATUS frame sealed (sequence number
    0) for a connection that then never gets a jail, and cannot seal a READY or RESULT of its
    own (which would let it pose as the jail), nor read what the client seals."""
    mon, main, sandbox = monitor
    mon.kerberos = AcceptingKerberos()  # type: ignore[assignment]
    mon.principals = SimpleNamespace(allowed=lambda principal: allowed)  # type: ignore[assignment]
    listener, client, server_side = _tcp_pair()

    def authenticated() -> socket.socket:
        channel = _open(main, server_side)
        reply = _ask(channel, "gss_step", [b"alice"])
        assert reply["complete"] is True and reply["allowed"] is allowed, reply
        return channel

    for frame_type in (proto.READY, proto.RESULT, proto.JOB, proto.ALIVE, proto.HELLO):
        channel = authenticated()
        assert _ask(channel, "seal", [_frame(frame_type)])["ok"] is False
        assert _closed(channel)
    channel = authenticated()
    assert _ask(channel, "seal", [_frame(proto.STATUS), _frame(proto.STATUS)])["ok"] is False
    channel = authenticated()
    assert _ask(channel, "seal", [b"\x00\x00"])["ok"] is False
    channel = authenticated()
    wire.send_message(channel, {"op": "seal"}, [_frame(proto.STATUS)])
    reply, blobs = wire.recv_message(channel, 1 << 20)
    assert reply["ok"] is True and blobs == [b"sealed:" + bytes(8) + _frame(proto.STATUS)]
    for op in ("seal", "serve"):  # once: then that connection is done
        assert _ask(channel, op, [_frame(proto.ERROR)], identity="id-1", hello={})["ok"] is False
        channel = authenticated()
        _ask(channel, "seal", [_frame(proto.ERROR)])
    assert sandbox.created == []
    for sock in (client, server_side, listener):
        sock.close()


def test_the_frame_types_root_may_seal_are_the_protocols() -> None:
    from jailcc.monitor.monitor import SEALABLE_FRAMES

    assert {proto.ERROR, proto.STATUS} == SEALABLE_FRAMES
    assert proto.encode(proto.STATUS, {})[4] == proto.STATUS  # byte 4: what root looks at


def test_the_main_channel_takes_only_its_table(monitor, caplog) -> None:
    mon, main, _sandbox = monitor
    assert _main(main, {"op": "fork_jail"})["ok"] is False
    _peer, client = _unix_pair(mon)
    assert _main(main, {"op": "catalog"}, [client.fileno()])["ok"] is False  # fd out of turn
    # Opening: refusals go on the connection's own channel.
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _refused_and_closed(_open(main, udp), "not a connected stream socket")
    udp.close()
    listening = socket.create_server(("127.0.0.1", 0))  # its peer would be whoever listened
    _refused_and_closed(_open(main, listening), "not a connected stream socket")
    listening.close()
    # Only connections jailccd's own socket accepted: one the service made itself would have
    # its listener's SO_PEERCRED (here, ours), and a socket pair's names whoever made it.
    _refused_and_closed(_open(main, _peer), "not accepted on jailccd's own")
    pair = socket.socketpair()
    _refused_and_closed(_open(main, pair[0]), "not accepted on jailccd's own")
    for sock in pair:
        sock.close()
    # Not a socket at all: logged (an open is never answered), and root keeps no copy of it.
    descriptors = len(os.listdir("/proc/self/fd"))
    with open("/dev/null", "rb") as null:
        ours, theirs = socket.socketpair()
        wire.send_message(main, {"op": "open", "conn": 98}, fds=[null.fileno(), theirs.fileno()])
        assert _main(main, {"op": "catalog"})["ok"] is True  # (open is never answered)
        assert "open: not two sockets" in caplog.text
        ours.close()
        theirs.close()
    assert len(os.listdir("/proc/self/fd")) == descriptors
    # A malformed connection number to evict is no connection, not a broken monitor.
    assert _main(main, {"op": "evict", "conn": [1]})["ok"] is True
    taken = _open(main, client, number=7)
    _refused_and_closed(_open(main, client, number=7), "taken")
    # An open without its two sockets is not answered, and the channel goes on.
    wire.send_message(main, {"op": "open", "conn": 99}, fds=[client.fileno()])
    assert _main(main, {"op": "catalog"})["ok"] is True
    assert "open without a socket and a channel" in caplog.text
    # At most max_connections open at once, however many the service asks for.
    channels = [taken] + [_open(main, client) for _ in range(3)]
    _refused_and_closed(_open(main, client), "too many connections")
    assert all(c.state is State.NEW for c in mon.connections.values())
    for channel in channels:
        channel.close()


def test_a_monitor_out_of_descriptors_fails_that_connection_not_itself(
    monitor, monkeypatch, caplog
) -> None:
    """EMFILE while root copies a new connection's sockets ends that connection alone (it
    stopped jailccd, which took every user's connections with it), and leaks no copy."""
    mon, main, _sandbox = monitor
    client, server_side = _unix_pair(mon)
    copies: list[int] = []
    real_dup = socket.dup

    def dup(fd: int) -> int:
        if copies:
            raise OSError(errno.EMFILE, "Too many open files")
        copies.append(real_dup(fd))
        return copies[-1]

    descriptors = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(socket, "dup", dup)
    channel = _open(main, server_side)
    assert _closed(channel)  # never answered: the service's end sees it close
    monkeypatch.undo()
    assert _main(main, {"op": "catalog"})["ok"] is True
    assert "open: [Errno 24] Too many open files" in caplog.text
    channel.close()
    with pytest.raises(OSError):
        os.fstat(copies[0])  # the one copy made was closed again
    assert len(os.listdir("/proc/self/fd")) == descriptors
    # The next connection is served as ever (here: refused, as nobody local may compile).
    reply = _ask(_open(main, server_side), "serve", identity="id-1", hello={})
    assert reply["ok"] is False and reply["code"] == "unauthorized", reply
    client.close()
    server_side.close()


def test_nonsense_on_the_main_channel_closes_it(monitor) -> None:
    _mon, main, _sandbox = monitor
    main.sendall(b"\xff" * 64)
    assert _closed(main)


def test_a_uid_that_cannot_load_jailcc_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Started as the unprivileged uid, a child that cannot load what it needs (an installation
    that uid cannot read; here prctl made unimportable) is a clear error, not a traceback of
    subprocess's."""
    from jailcc.monitor import unprivileged

    monkeypatch.setitem(sys.modules, "prctl", None)  # the child's `import prctl` fails
    uid = unprivileged.SERVICE_UID_FALLBACK
    with pytest.raises(unprivileged.StartError, match=f"as uid {uid} .*must be able to read"):
        unprivileged.start_unprivileged("jailcc.server.netservice", [], uid, uid)


def test_a_job_waits_in_the_services_queue_as_long_as_it_takes(monkeypatch) -> None:
    """The service answers a jail's "start" when a slot is free, which may take longer than
    any answer the monitor waits for otherwise (a job behind two long compiles): the
    connection stays; other questions still time out."""
    from jailcc.monitor import monitor as monitor_module

    monkeypatch.setattr(monitor_module, "ANSWER_TIMEOUT", 0.3)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = SimpleNamespace(channel=theirs, holding=False, before=None)
    counters = {"cpu_ns": 0}
    quiet, jail_end = socket.socketpair()  # the jail's channel: it says nothing meanwhile
    jail = SimpleNamespace(
        id=7,
        usable=True,
        enter_workdir=lambda cwd: None,
        job_counters=lambda: counters,
        channel=lambda: quiet,
    )
    relay = monitor_module._Relay(conn, jail)  # type: ignore[arg-type]

    def service() -> None:
        question, _ = wire.recv_message(ours, 0)
        assert question["ask"]["what"] == "start"
        time.sleep(1.0)  # the slot frees later than ANSWER_TIMEOUT
        wire.send_message(ours, {"ok": True})

    answering = threading.Thread(target=service, daemon=True)
    answering.start()
    with ours, theirs:
        assert relay.answer({"what": "start", "cwd": "/w"}) == {"ok": True}
        answering.join(5)
        started = time.monotonic()
        with pytest.raises(SandboxError, match="did not answer"):
            relay.answer({"what": "done", "status": "exit:0"})  # nobody answers this one
        assert time.monotonic() - started < 5
        # A jail that speaks while its job waits (its client went) ends the connection at
        # once; the service, which sees the monitor end it, gives up the place in its queue.
        conn.holding = False
        said: list[dict] = []

        def withdrawing_service() -> None:
            said.append(wire.recv_message(ours, 0)[0])  # ("done", unanswered above)
            said.append(wire.recv_message(ours, 0)[0])  # the question
            said.append(wire.recv_message(ours, 0)[0])  # then its withdrawal
            wire.send_message(ours, {"ok": False, "error": "withdrawn"})

        answering = threading.Thread(target=withdrawing_service, daemon=True)
        answering.start()
        jail_end.sendall(b"gone")
        started = time.monotonic()
        with pytest.raises(SandboxError, match="client went while its job waited"):
            relay.answer({"what": "start", "cwd": "/w"})
        answering.join(5)
        assert time.monotonic() - started < 5 and conn.holding is False
        assert said[1]["ask"]["what"] == "start" and said[2] == {"withdraw": True}
    quiet.close()
    jail_end.close()
