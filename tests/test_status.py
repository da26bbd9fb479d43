"""The status request and the metrics endpoint: a real jailccd over its Unix socket (as root and
as another local user), real jobs, and Prometheus scrapes of --metrics."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import requires_root
from jailcc import protocol as proto
from jailcc.client.hosts import Host
from jailcc.client.remote import RemoteFailure
from jailcc.client.status import check_status, fetch_status
from jailcc.images.identity import compiler_identity
from prometheus_client.parser import text_string_to_metric_families
from realm_fixtures import realm_module
from serverutil import Server, as_nobody, start_kerberos_server, start_server, stop_server, tcp_port

pytestmark = requires_root

# About two seconds of gcc -O2 work on one core: long enough to be seen running.
SLOW_SOURCE = "\n".join(
    "int f0(int a) { return a; }"
    if i == 0
    else f"int f{i}(int a) {{ int s = 0; for (int j = 0; j < a; ++j) s += j * {i} ^ (s >> 3);"
    f" return s + f{i - 1}(a - 1); }}"
    for i in range(500)
)


def start(tmp: Path, image: Path, *extra: str) -> Server:
    return start_server(
        tmp,
        image,
        "--allow-user",
        "root",
        "--allow-user",
        "nobody",
        "--metrics",
        "127.0.0.1:0",
        *extra,
    )


@pytest.fixture(scope="module")
def server(gcc_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start(tmp_path_factory.mktemp("status"), gcc_image)
    yield srv
    stop_server(srv)


def local(server: Server) -> Host:
    return Host("unix", str(server.socket_path))


def metrics(server: Server) -> dict[str, float]:
    """The server's metrics now: sample name plus labels -> value."""
    deadline = time.monotonic() + 30
    while "serving metrics on" not in server.log_text():  # logged just after the socket is up
        assert time.monotonic() < deadline, "jailccd never served its metrics"
        time.sleep(0.05)
    port = int(server.log_text().split("serving metrics on http://127.0.0.1:")[1].split("/")[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def run_job(server: Server, work: Path, source: str, name: str, args: list[str]) -> dict:
    """Compile `source` as `name` over a raw connection; the RESULT or ERROR header."""
    (work / name).write_text(source)
    pre = subprocess.run(["gcc-12", "-E", name], cwd=work, check=True, capture_output=True).stdout
    ident = compiler_identity("/usr/bin/gcc-12")
    with server.connect() as sock:
        sock.settimeout(120)
        proto.send(sock, proto.HELLO, proto.hello_header("client", identity=ident))
        proto.expect(sock, proto.HELLO)
        proto.expect(sock, proto.READY)
        job = {
            "id": 1,
            "identity": ident,
            "args": args,
            "cwd": str(work),
            "input": name.rsplit(".", 1)[0] + ".i",
            "mode": "c",
            "env": {},
            "files": [],
            "source": name,
        }
        proto.send(sock, proto.JOB, job, [pre], [True])
        _, header, _ = proto.recv(sock)
        return header


def in_background(fn) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def wait_for_running_job(host: Host) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = fetch_status(host)
        if status["jobs"]:
            return status
        time.sleep(0.05)
    raise AssertionError("the job never showed in a status answer")


def status_as_nobody(host: Host) -> dict:
    return json.loads(as_nobody(lambda: json.dumps(fetch_status(host)).encode()))


def test_status_shows_a_running_job_then_counts_it(server, tmp_path):
    host = local(server)
    before = fetch_status(host)
    assert before["server"].startswith("jailccd ") and before["protocol"] == proto.PROTOCOL_VERSION
    assert before["slots"] == 2 and before["jobs"] == [] and before["running"] == 0
    assert any(c["name"] == "gcc-12" for i in before["images"] for c in i["compilers"])
    thread, out = in_background(lambda: run_job(server, tmp_path, SLOW_SOURCE, "slow.c", ["-O2"]))
    status = wait_for_running_job(host)
    (running,) = status["jobs"]
    assert running["user"] == "root" and running["source"] == "slow.c"
    assert running["elapsed"] >= 0 and isinstance(running["jail"], int)
    assert status["running"] == 1
    # Another user sees that root compiles, not what (the default, --status-show-sources own).
    seen = status_as_nobody(host)
    assert seen["jobs"] and seen["jobs"][0]["user"] == "root" and seen["jobs"][0]["source"] is None
    thread.join(120)
    assert out and out[0]["exit_code"] == 0
    after = fetch_status(host)["totals"]
    assert after["jobs"] == before["totals"]["jobs"] + 1
    assert after["ok"] == before["totals"]["ok"] + 1
    assert after["bytes_in"] - before["totals"]["bytes_in"] > len(SLOW_SOURCE)
    assert after["bytes_out"] > before["totals"]["bytes_out"]
    assert after["connections"] >= before["totals"]["connections"] + 4


def test_a_status_request_makes_no_jail(server, tmp_path):
    run_job(server, tmp_path, "int x;\n", "warm.c", ["-O2"])  # at least one jail built
    built = metrics(server)["jailccd_jail_build_seconds_count"]
    connections = fetch_status(local(server))["totals"]["connections"]
    for _ in range(3):
        fetch_status(local(server))
    assert fetch_status(local(server))["totals"]["connections"] == connections + 4
    assert metrics(server)["jailccd_jail_build_seconds_count"] == built


def test_metrics_count_jobs_by_outcome_and_time_them(server, tmp_path):
    before = metrics(server)
    assert run_job(server, tmp_path, "int a;\n", "a.c", ["-O2"])["exit_code"] == 0
    assert run_job(server, tmp_path, "int b;\n", "b.c", ["-O2"])["exit_code"] == 0
    assert run_job(server, tmp_path, "int c = x;\n", "c.c", ["-O2"])["exit_code"] == 1
    assert run_job(server, tmp_path, "int d;\n", "d.c", ["-fplugin=/x.so"])["code"] == "policy"
    after = metrics(server)

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert grew("jailccd_jobs_total{outcome=ok}") == 2
    assert grew("jailccd_jobs_total{outcome=failed}") == 1
    assert grew("jailccd_jobs_total{outcome=refused}") == 1
    assert grew("jailccd_job_run_seconds_count") == 3
    assert grew("jailccd_connections_total") == 4
    assert grew("jailccd_bytes_in_total") > 0 and grew("jailccd_bytes_out_total") > 0
    assert after["jailccd_jail_build_seconds_count"] >= 1
    assert "jailccd_jail_teardown_seconds_count" in after
    assert after["jailccd_queue_length"] == 0 and after["jailccd_running_jobs"] == 0
    assert after["jailccd_slots"] == 2 and after["jailccd_slots_now"] == 2
    assert after["jailccd_owner_busy"] == 0 and after["jailccd_memory_held_bytes"] == 0
    totals = fetch_status(local(server))["totals"]
    assert totals["refused"].get("policy", 0) >= 1 and totals["failed"] >= 1


def test_idle_metrics_connections_hold_no_more_than_a_few_threads(server):
    """Anyone who reaches the metrics port may open connections and say nothing: at most
    MAX_SCRAPES are served at once (the rest are closed at once), each dropped once it stalls
    SCRAPE_TIMEOUT, so they cannot take the service's descriptors and threads."""
    from jailcc.server.metrics import MAX_SCRAPES, SCRAPE_TIMEOUT

    metrics(server)  # up
    port = int(server.log_text().split("serving metrics on http://127.0.0.1:")[1].split("/")[0])
    service = psutil.Process(int(server.log_text().split("network service pid ")[1].split()[0]))
    threads = service.num_threads()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
    try:
        time.sleep(1.0)
        assert service.num_threads() <= threads + MAX_SCRAPES
        closed = sum(not sock.recv(1) for sock in idle[MAX_SCRAPES:])
        assert closed == len(idle) - MAX_SCRAPES
        time.sleep(SCRAPE_TIMEOUT + 1.0)
        assert metrics(server)["jailccd_slots"] == 2  # the stalled ones were dropped
    finally:
        for sock in idle:
            sock.close()


def test_sources_of_everyone_with_status_show_sources_all(gcc_image, tmp_path):
    srv = start(tmp_path / "server", gcc_image, "--status-show-sources", "all")
    try:
        host = local(srv)
        thread, _ = in_background(lambda: run_job(srv, tmp_path, SLOW_SOURCE, "slow.c", ["-O2"]))
        wait_for_running_job(host)
        seen = status_as_nobody(host)
        thread.join(120)
    finally:
        stop_server(srv)
    assert seen["jobs"] and seen["jobs"][0]["user"] == "root"
    assert seen["jobs"][0]["source"] == "slow.c"


def test_a_user_who_may_not_compile_gets_no_status(gcc_image, tmp_path):
    srv = start_server(tmp_path / "server", gcc_image, "--allow-user", "root")
    try:
        answer = as_nobody(lambda: _failure_code(local(srv)).encode())
    finally:
        stop_server(srv)
    assert answer == b"unauthorized"


def test_status_over_insecure_tcp_is_plain(gcc_image, tmp_path):
    srv = start_server(tmp_path / "server", gcc_image, "--listen", "127.0.0.1:0", "--insecure")
    try:
        status = fetch_status(Host("tcp", "127.0.0.1", tcp_port(srv), auth="none"))
        with pytest.raises(RemoteFailure):  # a client that wants Kerberos gets no plain answer
            fetch_status(Host("tcp", "127.0.0.1", tcp_port(srv)))
    finally:
        stop_server(srv)
    assert status["jobs"] == [] and status["totals"]["connections"] == 1


def _failure_code(host: Host) -> str:
    try:
        fetch_status(host)
    except RemoteFailure as exc:
        return str(exc.code)
    return "answered"


def test_the_client_refuses_a_malformed_status():
    good = {
        "server": "jailccd 0.1.0",
        "protocol": 2,
        "host": "h",
        "uptime": 1.5,
        "slots": 2,
        "slots_now": 2,
        "running": 1,
        "queued": 0,
        "owner_busy": False,
        "speed": 1.0,
        "images": [
            {"name": "gcc-12", "compilers": [{"name": "gcc-12", "identity": "x", "version": "12"}]}
        ],
        "jobs": [{"user": "alice", "source": None, "elapsed": 0.5, "jail": 3}],
        "totals": {
            "connections": 1,
            "jobs": 1,
            "ok": 1,
            "failed": 0,
            "limits": {},
            "evicted": 0,
            "refused": {"busy": 1},
            "auth_failures": {},
            "bytes_in": 1,
            "bytes_out": 2,
        },
    }
    assert check_status(json.loads(json.dumps(good))) == good
    for broken in (
        {"slots": "2"},
        {"owner_busy": 0},
        {"speed": float("nan")},
        {"jobs": [{"user": "a", "source": 7, "elapsed": 1, "jail": 1}]},
        {"jobs": [{"user": "a", "source": None, "elapsed": 1, "jail": 1}] * 1001},
        {"totals": {**good["totals"], "refused": {"busy": -1}}},
        {"host": "x" * 5000},
    ):
        with pytest.raises(ValueError):
            check_status({**good, **broken})


# -- Kerberos on TCP ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def realm() -> Iterator:
    with realm_module.Realm() as r:
        yield r


@pytest.fixture(scope="module")
def kerberos_server(realm, gcc_image, tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("status-krb")
    srv = start_kerberos_server(tmp, gcc_image, realm, "alice@KRBTEST.COM\n")
    yield srv
    stop_server(srv)


def as_principal(realm, who: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This test process speaks Kerberos as `who` from now on."""
    for key, value in realm.kinit(who, tmp / f"{who}.cc").items():
        monkeypatch.setenv(key, value)


def relay(port: int) -> tuple[int, bytearray]:
    """A loopback relay to port for one connection: its own port, and what the server sent
    through it (filled in as it comes)."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen = bytearray()

    def pump(src: socket.socket, dst: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if record:
                    seen.extend(data)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        client, _ = listener.accept()
        listener.close()
        upstream = socket.create_connection(("127.0.0.1", port))
        threading.Thread(target=pump, args=(client, upstream, False), daemon=True).start()
        pump(upstream, client, True)

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], seen


def test_status_over_kerberos_is_sealed(realm, kerberos_server, tmp_path, monkeypatch):
    as_principal(realm, "alice", tmp_path, monkeypatch)
    port, seen = relay(tcp_port(kerberos_server))
    host = Host("tcp", "127.0.0.1", port, principal=realm.service_principal)
    status = fetch_status(host)
    assert status["slots"] == 2 and status["totals"]["connections"] >= 1
    assert seen and b'"auth":"gssapi"' in seen  # the plain hello came through the relay
    for key in (b"totals", b"uptime", b"slots_now", b"jailccd 0.1.0"):
        assert key not in seen


def test_status_over_kerberos_is_refused_to_an_unauthorized_principal(
    realm, kerberos_server, tmp_path, monkeypatch
):
    host = Host("tcp", "127.0.0.1", tcp_port(kerberos_server), principal=realm.service_principal)
    as_principal(realm, "bob", tmp_path, monkeypatch)
    with pytest.raises(RemoteFailure) as refused:
        fetch_status(host)
    assert refused.value.code == "unauthorized"
    as_principal(realm, "alice", tmp_path, monkeypatch)
    totals = fetch_status(host)["totals"]
    assert totals["auth_failures"].get("unauthorized", 0) >= 1
    assert totals["refused"].get("unauthorized", 0) >= 1
