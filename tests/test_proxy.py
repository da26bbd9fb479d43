"""The per-user proxy: started on demand, one per user and settings, private to its user,
serving many jailcc processes at once over connections it keeps open, and never losing a job:
a proxy killed, a server restarted or a ticket expiring in the middle of a real build still
gives a build identical to a local one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from conftest import BIN, requires_root
from realm_fixtures import realm_module
from serverutil import (
    Server,
    as_nobody,
    kerberos_options,
    start_server,
    stop_server,
    tcp_port,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import projects

pytestmark = requires_root
JAILCC = str(BIN / "jailcc")


@pytest.fixture
def server(gcc_image: Path, tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path / "srv", gcc_image, "--allow-user", "root", "--jobs", "4")
    yield srv
    if srv.proc.poll() is None:
        stop_server(srv)


def proxy_env(server: Server, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "JAILCC_HOSTS": f"unix:{server.socket_path}",
        "JAILCC_VERBOSE": "1",
        **extra,
    }


def proxies(env: dict[str, str]) -> list[psutil.Process]:
    """The proxy processes serving these settings."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        cmdline = proc.info["cmdline"] or []
        if "jailcc.client.proxy" in cmdline:
            theirs = proc.info["environ"] or {}
            if theirs.get("JAILCC_HOSTS") == env["JAILCC_HOSTS"]:
                found.append(proc)
    return found


def jailcc(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [JAILCC, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def stop_proxy(env: dict[str, str]) -> None:
    jailcc(["proxy", "stop"], Path("/"), env)


def test_the_first_compile_starts_one_proxy_and_the_next_go_through_it(server, tmp_path):
    env = proxy_env(server)
    (tmp_path / "a.c").write_text("int f(void) { return 1; }\n")
    try:
        first = jailcc(["gcc-12", "-c", "a.c", "-o", "a.o"], tmp_path, env)
        assert first.returncode == 0 and "remote" in first.stderr, first.stderr
        # The proxy it started served it: "preprocessed: no proxy" said it did the job alone.
        assert "no proxy" not in first.stderr
        deadline = time.monotonic() + 20
        while not proxies(env):
            assert time.monotonic() < deadline, "no proxy started"
            time.sleep(0.05)
        assert jailcc(["proxy", "start"], tmp_path, env).stdout.startswith("jailcc: the proxy")
        for _ in range(3):
            again = jailcc(["gcc-12", "-c", "a.c", "-o", "a.o"], tmp_path, env)
            assert "remote on" in again.stderr
        status = json.loads(jailcc(["status", "--json"], tmp_path, env).stdout)
        assert status["running"] and status["jobs"]["remote"] >= 3
        (server_status,) = status["servers"]
        assert server_status["connections"] >= 1 and server_status["state"] == "up"
        assert len(proxies(env)) == 1
        # The socket sits in a 0700 directory of ours; the proxy runs as us.
        directory = Path(status["socket"]).parent
        assert directory.stat().st_mode & 0o777 == 0o700
        assert "mean overhead" in jailcc(["status"], tmp_path, env).stdout
    finally:
        stop_proxy(env)
    assert not proxies(env)


def test_a_client_in_another_mount_namespace_compiles_what_it_sees(server, tmp_path):
    """The proxy reads headers and writes objects by path: a client in another mount
    namespace (a container, bwrap, Bazel's sandbox) must not get the proxy's files, nor have
    its object written where the proxy sees that path. It compiles on its own, with its own
    view, and starts no proxy of its own (a sandbox per compile would make one each)."""
    env = proxy_env(server)
    for name, text in {
        "inc/q.h": "int from_host_view;\n",
        "alt/q.h": "int from_its_view;\n",
    }.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "a.c").write_text("#include <q.h>\nint main(void) { return 0; }\n")
    (tmp_path / "out").mkdir()
    try:
        warm = jailcc(["gcc-12", "-Iinc", "-c", "a.c", "-o", "warm.o"], tmp_path, env)
        assert "remote" in warm.stderr, warm.stderr  # a proxy runs
        inside = (
            f"mount --bind {tmp_path}/alt {tmp_path}/inc && mount -t tmpfs tmpfs {tmp_path}/out"
            f" && {JAILCC} gcc-12 -Iinc -c a.c -o out/a.o && nm out/a.o"
        )
        done = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", inside],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "from_its_view" in done.stdout and "from_host_view" not in done.stdout
        assert not (tmp_path / "out" / "a.o").exists()  # nothing written through our view
        assert len(proxies(env)) == 1
    finally:
        stop_proxy(env)


def test_a_client_with_other_groups_gets_a_proxy_of_its_own(server, tmp_path):
    """What the proxy may read and write for a client depends on its groups: a client with
    other ones (after `newgrp`, or a change of groups) starts and uses a proxy of its own."""
    env = proxy_env(server)
    (tmp_path / "a.c").write_text("int main(void) { return 0; }\n")
    try:
        warm = jailcc(["gcc-12", "-c", "a.c", "-o", "warm.o"], tmp_path, env)
        assert "remote" in warm.stderr, warm.stderr
        (ours,) = proxies(env)
        twice = f"for i in 1 2; do {JAILCC} gcc-12 -c a.c -o a.o || exit; done"
        done = subprocess.run(
            ["sh", "-c", twice], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=120, extra_groups=[54321],
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        # Both through a proxy (the first starts it), none compiled on its own.
        assert done.stderr.count("remote") == 2 and "no proxy" not in done.stderr, done.stderr
        theirs = [p for p in proxies(env) if p.pid != ours.pid]
        assert len(theirs) == 1 and 54321 in _groups(theirs[0].pid), theirs
        assert 54321 not in _groups(ours.pid)
    finally:
        for proc in proxies(env):
            proc.terminate()
        psutil.wait_procs(proxies(env), timeout=10)


def _groups(pid: int) -> set[int]:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("Groups:"))
    return {int(g) for g in line.split()[1:]}


@pytest.mark.parametrize("client", ["jailcc", "jailcc-py"])
def test_a_stopped_proxy_does_not_freeze_the_build(client, server, tmp_path):
    """A proxy stopped by SIGSTOP (^Z, a debugger) never answers: both clients see it stopped
    while they wait, and do the job on their own."""
    env = proxy_env(server)
    (tmp_path / "a.c").write_text("int f(int x) { return x + 1; }\n")
    try:
        assert "remote" in jailcc(["gcc-12", "-c", "a.c", "-o", "warm.o"], tmp_path, env).stderr
        (proxy,) = proxies(env)
        proxy.suspend()
        try:
            done = subprocess.run(
                [str(BIN / client), "gcc-12", "-c", "a.c", "-o", "a.o"],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        finally:
            proxy.resume()
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "a.o").read_bytes() == (tmp_path / "warm.o").read_bytes()
    finally:
        stop_proxy(env)


def test_a_job_past_the_wall_clock_is_tried_remotely_again(headers_image, tmp_path):
    """The wall clock is a loaded server's as much as the job's: not remembered (memory and
    CPU time are: tests/test_client.py)."""
    srv = start_server(
        tmp_path / "srv", headers_image, "--allow-user", "root", "--job-timeout", "1"
    )
    env = proxy_env(srv)
    # 2^22 expansions in an #if: a few seconds of the preprocessor, remote or local.
    lines = ["#define A0 1", *(f"#define A{i} (A{i - 1}+A{i - 1})" for i in range(1, 23))]
    (tmp_path / "slow.c").write_text("\n".join([*lines, "#if A22 == 0", "#endif", "int f;", ""]))
    try:
        for _ in range(2):
            done = jailcc(["gcc-12", "-c", "slow.c"], tmp_path, env)
            assert done.returncode == 0 and "wall limit" in done.stderr, done.stderr
        assert (tmp_path / "slow.o").exists()
    finally:
        stop_proxy(env)
        stop_server(srv)
    assert srv.log_text().count("limit:wall") == 2, srv.log_text()


@pytest.mark.parametrize("name", ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1", "link.s"])
def test_an_output_named_by_the_compilers_own_descriptors_is_written_there(server, tmp_path, name):
    """-o /dev/stdout (or a link to it) names the compiler's stdout: the proxy's, at that name,
    is /dev/null, where the assembly went, and the user's stdout stayed empty (exit 0)."""
    env = proxy_env(server)
    (tmp_path / "a.c").write_text("int f(int x) { return x * 3; }\n")
    (tmp_path / "link.s").symlink_to("/dev/stdout")
    made = {}
    try:
        for how in (["gcc-12"], [JAILCC, "gcc-12"]):
            with open(tmp_path / "out.s", "wb") as out:
                done = subprocess.run(
                    [*how, "-S", "a.c", "-o", name], cwd=tmp_path, env=env, stdout=out,
                    stderr=subprocess.PIPE, text=True, timeout=120,
                )  # fmt: skip
            assert done.returncode == 0, done.stderr
            made[how[0]] = (tmp_path / "out.s").read_bytes()
    finally:
        stop_proxy(env)
    assert b"f:" in made["gcc-12"] and made[JAILCC] == made["gcc-12"]


ZONES = ["XXX-14", "Pacific/Kiritimati", ":/usr/share/zoneinfo/Etc/GMT+11", "<+0530>-5:30"]
ZONES += ["EST5EDT,M3.2.0,M11.1.0", None]  # (None: unset, the system's zone)


@pytest.mark.parametrize("client", ["jailcc", "jailcc-py"])
def test_date_and_time_are_the_users_local_ones(headers_image, tmp_path, client):
    """__DATE__ and __TIME__ are local times: they came out in the server's zone (UTC). Each
    client states its UTC offset: the proxy's own zone is that of whoever started it (here
    +14), and a zone it cannot name (a file, POSIX rules) is the client's to read."""
    srv = start_server(tmp_path / "srv", headers_image, "--allow-user", "root")
    env = proxy_env(srv, TZ="XXX+14")
    # The date, and the hour (minutes and seconds may turn between the two compiles).
    (tmp_path / "d.c").write_text(
        "const char d[] = __DATE__;\nconst char h[] = {__TIME__[0], __TIME__[1], 0};\n"
    )
    try:
        assert jailcc(["proxy", "start"], tmp_path, env).returncode == 0
        for tz in ZONES:
            theirs = {k: v for k, v in env.items() if k != "TZ"} | ({"TZ": tz} if tz else {})
            made = []
            for how in (["gcc-12"], [str(BIN / client), "gcc-12"]):
                done = subprocess.run(
                    [*how, "-c", "d.c"], cwd=tmp_path, env=theirs, capture_output=True, text=True
                )
                assert done.returncode == 0, done.stderr
                made.append((tmp_path / "d.o").read_bytes())
            assert "remote (sources)" in done.stderr, (tz, done.stderr)
            assert made[1] == made[0], tz
    finally:
        stop_proxy(env)
        stop_server(srv)


EXECVE_WITH = """
import ctypes, os, sys
argv, env = sys.argv[1:sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1:]
libc = ctypes.CDLL(None, use_errno=True)
def strings(words):
    return (ctypes.c_char_p * (len(words) + 1))(*[os.fsencode(w) for w in words], None)
libc.execve(os.fsencode(argv[0]), strings(argv), strings(env))
sys.exit("execve failed")
"""


def test_a_variable_given_twice_is_the_first_one_as_getenv_has_it(server, tmp_path):
    """The proxy took the last of two SOURCE_DATE_EPOCH strings, the compiler the first."""
    env = proxy_env(server)
    (tmp_path / "d.c").write_text("const char d[] = __DATE__;\n")
    base = [f"{k}={v}" for k, v in env.items() if k != "SOURCE_DATE_EPOCH"]
    twice = ["SOURCE_DATE_EPOCH=0", "SOURCE_DATE_EPOCH=1000000000", *base]
    made = []
    try:  # (the native client asks a running proxy; the Python one's os.environ has one)
        assert jailcc(["proxy", "start"], tmp_path, env).returncode == 0
        for how in (["/usr/bin/gcc-12"], [JAILCC, "gcc-12"]):
            done = subprocess.run(
                [sys.executable, "-c", EXECVE_WITH, *how, "-c", "d.c", "--", *twice],
                cwd=tmp_path, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            made.append((tmp_path / "d.o").read_bytes())
    finally:
        stop_proxy(env)
    assert b"Jan  1 1970" in made[0] and made[1] == made[0], done.stderr
    assert "remote" in done.stderr, done.stderr


def test_a_proxy_that_cannot_start_says_why_and_is_not_waited_for(tmp_path, monkeypatch):
    """A socket path too long for its address (a long XDG_RUNTIME_DIR) stopped the proxy with
    a traceback nobody saw, and every compile waited START_WAIT for it in vain."""
    from jailcc.client import proxy_client

    run_dir = tmp_path / ("r" * 120)
    run_dir.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run_dir), "JAILCC_HOSTS": "unix:/nonexistent"}
    done = subprocess.run(
        [sys.executable, "-m", "jailcc.client.proxy"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1 and "jailcc proxy: cannot serve" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    cli = subprocess.run([JAILCC, "proxy", "start"], env=env, capture_output=True, text=True)
    assert cli.returncode == 1 and "AF_UNIX path too long" in cli.stderr, cli.stderr
    monkeypatch.setattr(proxy_client, "START_WAIT", 60.0)
    started = time.monotonic()
    failed = subprocess.Popen(["false"])
    assert proxy_client._wait_for_proxy(str(run_dir / "none.sock"), failed) is None
    assert time.monotonic() - started < 30  # (not the 60 s it waits for a proxy that runs)


def test_status_counts_each_job_where_it_ran(server, tmp_path):
    env = proxy_env(server)
    (tmp_path / "a.c").write_text("int f(void) { return 1; }\n")
    assert jailcc(["proxy", "start"], tmp_path, env).returncode == 0
    try:
        missing = jailcc(["no-such-compiler-12", "-c", "a.c"], tmp_path, env)
        assert missing.returncode == 127 and "cannot find the compiler" in missing.stderr
        assert "remote on" in jailcc(["gcc-12", "-c", "a.c"], tmp_path, env).stderr
        assert jailcc(["gcc-12", "-E", "a.c"], tmp_path, env).returncode == 0  # never remote
        jobs = json.loads(jailcc(["status", "--json"], tmp_path, env).stdout)["jobs"]
        assert (jobs["jobs_done"], jobs["remote"], jobs["local"], jobs["fallback"]) == (3, 1, 2, 0)
    finally:
        stop_proxy(env)


def test_a_closed_pipe_ends_a_listing_quietly(tmp_path):
    """`jailcc status | head -1`: the reader is gone before jailcc writes; jailcc ends as a C
    tool would, without a traceback."""
    env = {**os.environ, "JAILCC_HOSTS": f"unix:{tmp_path}/none.sock"}
    for args in (["status"], ["proxy", "status"], ["hosts"], ["--help"]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            done = subprocess.run(
                [JAILCC, *args], stdout=write_end, stderr=subprocess.PIPE, env=env, timeout=60
            )
        finally:
            os.close(write_end)
        assert b"Traceback" not in done.stderr and b"Error" not in done.stderr, done.stderr
        assert done.returncode in (0, 141), (args, done.returncode)


def test_a_source_that_is_a_fifo_is_read_once_by_the_compiler(server, tmp_path):
    """A FIFO is read by whoever opens it first: the compiler, here, as locally."""
    env = proxy_env(server)
    os.mkfifo(tmp_path / "f.c")

    def feed() -> None:
        with open(tmp_path / "f.c", "w") as fifo:
            fifo.write("int x = 42;\n")

    try:
        made = []
        for command in (["gcc-12"], [JAILCC, "gcc-12"]):
            writer = threading.Thread(target=feed, daemon=True)
            writer.start()
            done = subprocess.run(
                [*command, "-c", "f.c", "-o", "f.o"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                timeout=60,
            )
            writer.join(timeout=10)
            assert done.returncode == 0, done.stderr
            made.append((tmp_path / "f.o").read_bytes())
            (tmp_path / "f.o").unlink()
        assert made[0] == made[1]
        assert b"local (the input is not a regular file)" in done.stderr
    finally:
        stop_proxy(env)


def _proxy_children(env: dict[str, str]) -> list[psutil.Process]:
    return [c for proxy in proxies(env) for c in proxy.children(recursive=True)]


@pytest.mark.parametrize("ship", ["preprocessed", "sources"])
def test_what_runs_for_a_jailcc_that_is_killed_dies_with_it(ship, server, tmp_path):
    """A compile whose jailcc is killed (make interrupted): the proxy's preprocessor stops
    (one blocked on a FIFO header nobody writes would have run for ever), the remote job is
    given up and stops in its jail (it held a server slot to the end), and nothing is
    written (make removed the target; a later build would take a late object for up to
    date)."""
    env = proxy_env(server, JAILCC_SHIP=ship)
    os.mkfifo(tmp_path / "ff.h")
    (tmp_path / "g.c").write_text('#include "ff.h"\nint y;\n')
    # About two seconds of cc1 at -O2, on the server.
    slow = "".join(
        f"int f{i}(int a) {{ int s = 0; for (int j = 0; j < a; j++) s += j * {i} ^ (s >> 3);"
        " return s; }\n"
        for i in range(1500)
    )
    (tmp_path / "slow.c").write_text(slow)
    jailcc(["proxy", "start"], tmp_path, env)
    try:
        for source in ("g.c", "slow.c"):
            client = subprocess.Popen(
                [JAILCC, "gcc-12", "-O2", "-c", source, "-o", "out.o"], cwd=tmp_path, env=env
            )
            time.sleep(0.7)  # the preprocessor is blocked, or the compile runs remotely
            client.kill()
            client.wait()
            deadline = time.monotonic() + 10
            while _proxy_children(env):
                assert time.monotonic() < deadline, _proxy_children(env)
                time.sleep(0.1)
        # The proxy gives the job up (within a second): its connection closes, and the
        # jail stops the compile, whose slot is free again at once.
        deadline = time.monotonic() + 10
        while "source=slow.c status=limit:hung-up" not in server.log_text():
            assert time.monotonic() < deadline, server.log_text()[-2000:]
            time.sleep(0.1)
        time.sleep(1)
        assert not (tmp_path / "out.o").exists()
        jailcc(["proxy", "stop"], tmp_path, env)
    finally:
        stop_proxy(env)


def test_another_user_can_use_neither_the_proxy_nor_its_tickets(server, tmp_path):
    env = proxy_env(server)
    assert jailcc(["proxy", "start"], tmp_path, env).returncode == 0
    try:
        status = json.loads(jailcc(["status", "--json"], tmp_path, env).stdout)

        def connect() -> bytes:
            with socket.socket(socket.AF_UNIX) as sock:
                try:
                    sock.connect(status["socket"])
                    return b"connected"
                except OSError as exc:
                    return (exc.strerror or "error").encode()

        assert as_nobody(connect) == b"Permission denied"
    finally:
        stop_proxy(env)


def test_an_idle_proxy_exits_by_itself(server, tmp_path):
    env = proxy_env(server, JAILCC_PROXY_IDLE="1")
    assert jailcc(["proxy", "start"], tmp_path, env).returncode == 0
    assert proxies(env)
    deadline = time.monotonic() + 20
    while proxies(env):
        assert time.monotonic() < deadline, "the idle proxy stayed"
        time.sleep(0.2)


def test_a_proxy_started_while_the_last_one_stops_takes_over(server, tmp_path):
    """The last proxy of these settings is stopping (idle): it holds the settings' lock, no
    longer answers, and is about to exit. A proxy started then waits for the lock and serves,
    instead of leaving, sure another one runs: `jailcc proxy start` failed after 30 s."""
    import fcntl

    env = proxy_env(server, JAILCC_PROXY_IDLE="60")
    from jailcc.client import proxy_wire

    path = proxy_wire.socket_path(env)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    stopping = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(stopping, fcntl.LOCK_EX)
    threading.Timer(1.5, os.close, (stopping,)).start()  # it exits
    try:
        started = jailcc(["proxy", "start"], tmp_path, env)
        assert started.returncode == 0, started.stderr
        assert "proxy started" in started.stdout
        assert len(proxies(env)) == 1
    finally:
        stop_proxy(env)


def test_a_proxy_socket_named_in_a_shared_directory_leaves_that_directory_alone(tmp_path):
    """JAILCC_PROXY_SOCKET=/tmp/p.sock made /tmp 0700 (a directory of ours was made private
    whatever it was): one others may write is refused, and keeps its mode."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    env = {**os.environ, "JAILCC_PROXY_SOCKET": str(shared / "p.sock"), "JAILCC_HOSTS": ""}
    done = subprocess.run(
        [sys.executable, "-m", "jailcc.client.proxy"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 1 and b"writable by others" in done.stderr, done.stderr
    assert shared.stat().st_mode & 0o7777 == 0o1777
    assert not (shared / "p.sock").exists()


def test_make_j32_through_one_proxy_matches_a_local_build(sources, server, tmp_path):
    env = proxy_env(server)
    workdir = tmp_path / "build"
    local = projects.build("lua5.4", workdir, "gcc-12", "g++-12", jobs=4)
    assert jailcc(["proxy", "start"], tmp_path, env).returncode == 0
    try:
        farm = projects.build(
            "lua5.4",
            workdir,
            f"{JAILCC} gcc-12",
            f"{JAILCC} g++-12",
            jobs=32,
            env=env,
            configure_cc="gcc-12",
        )
        assert farm.returncode == 0, farm.log[-3000:]
        assert projects.compare(local, farm) == []
        assert len(proxies(env)) == 1
        # Every compile went remote through the proxy: 32 at once, for a server with 4 slots
        # (the proxy holds what the server's queue would refuse).
        assert server.log_text().count("status=exit:0") == len(farm.objects)
        status = json.loads(jailcc(["status", "--json"], tmp_path, env).stdout)
        assert status["jobs"]["remote"] == len(farm.objects)
        assert status["jobs"]["fallback"] == 0
    finally:
        stop_proxy(env)


PROJECT = "zlib"  # the smallest real project: these tests only need a build in flight


def _local_build(tmp_path: Path) -> projects.BuildResult:
    return projects.build(PROJECT, tmp_path / "build", "gcc-12", "g++-12", jobs=4, map_paths=True)


def _build_while(
    local: projects.BuildResult,
    tmp_path: Path,
    env: dict[str, str],
    server: Server,
    disrupt: Callable,
) -> projects.BuildResult:
    """A build through jailcc during which disrupt() runs once the server has done a few
    jobs (in the same directory as the local build, after it)."""
    results: list[projects.BuildResult] = []
    builder = threading.Thread(
        target=lambda: results.append(
            projects.build(
                PROJECT,
                tmp_path / "build",
                f"{JAILCC} gcc-12",
                f"{JAILCC} g++-12",
                jobs=8,
                env=env,
                configure_cc="gcc-12",
            )
        )
    )
    builder.start()
    deadline = time.monotonic() + 120
    while server.log_text().count("status=exit:0") < 4 and builder.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    disrupt()
    builder.join(timeout=600)
    (farm,) = results
    return farm


def test_a_proxy_killed_mid_build_loses_no_job(sources, server, tmp_path):
    env = proxy_env(server)
    jailcc(["proxy", "start"], tmp_path, env)
    killed = []

    def kill_proxy() -> None:
        for proc in proxies(env):
            proc.send_signal(signal.SIGKILL)
            killed.append(proc.pid)

    try:
        local = _local_build(tmp_path)
        farm = _build_while(local, tmp_path, env, server, kill_proxy)
    finally:
        stop_proxy(env)
    assert killed
    assert farm.returncode == 0, farm.log[-3000:]
    assert projects.compare(local, farm) == []


def test_a_server_restarted_mid_build_is_used_again(sources, gcc_image, server, tmp_path):
    env = proxy_env(server)
    restarted: list[Server] = []

    def restart_same() -> None:
        stop_server(server)
        time.sleep(1.0)
        restarted.append(_start_at(gcc_image, tmp_path / "srv2", server.socket_path))

    try:
        local = _local_build(tmp_path)
        farm = _build_while(local, tmp_path, env, server, restart_same)
        assert farm.returncode == 0, farm.log[-3000:]
        assert projects.compare(local, farm) == []
        # The proxy backs a failed server off (doubling, at most a minute) and then uses it
        # again: compile until the restarted server has done a job.
        assert restarted
        (tmp_path / "again.c").write_text("int again(int x) { return x + 1; }\n")
        deadline = time.monotonic() + 90
        while restarted[0].log_text().count("status=exit:0") == 0:
            assert time.monotonic() < deadline, "the restarted server was never used again"
            done = jailcc(["gcc-12", "-O2", "-c", "again.c", "-o", "again.o"], tmp_path, env)
            assert done.returncode == 0, done.stderr
            time.sleep(0.5)
    finally:
        stop_proxy(env)
        for srv in restarted:
            stop_server(srv)


def test_after_a_server_restart_between_builds_the_next_compiles_go_to_it(
    gcc_image, server, tmp_path
):
    """The proxy's idle connections to a server that restarted are closed: the next build's
    jobs took them, failed ("Broken pipe"), retried on another idle one as stale, and compiled
    locally, the server backed off."""
    env = proxy_env(server)
    restarted: list[Server] = []
    for n in range(4):
        (tmp_path / f"u{n}.c").write_text(f"int u{n}(int x) {{ return x + {n}; }}\n")
    try:
        # Parallel compiles: the proxy holds several connections open, idle.
        compiles = [
            subprocess.Popen([JAILCC, "gcc-12", "-O2", "-c", f"u{n}.c"], cwd=tmp_path, env=env,
                             stderr=subprocess.PIPE, text=True)
            for n in range(4)
        ]  # fmt: skip
        for proc in compiles:
            assert proc.wait(120) == 0 and "remote on" in proc.stderr.read()
        stop_server(server)
        restarted.append(_start_at(gcc_image, tmp_path / "srv2", server.socket_path))
        for n in range(4):
            done = jailcc(["gcc-12", "-O2", "-c", f"u{n}.c"], tmp_path, env)
            assert done.returncode == 0 and "remote on" in done.stderr, done.stderr
    finally:
        stop_proxy(env)
        for srv in restarted:
            stop_server(srv)


def _start_at(image: Path, state: Path, socket_path: Path) -> Server:
    state.mkdir(parents=True, exist_ok=True)
    log = state / "jailccd.log"
    socket_path.parent.mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen(
        [
            str(BIN / "jailccd"),
            "--toolchain-image",
            str(image),
            "--socket",
            str(socket_path),
            "--allow-user",
            "root",
            "--jobs",
            "4",
            "--log-file",
            str(log),
        ],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "jailccd did not restart"
        time.sleep(0.05)
    return Server(socket_path, log, proc)


def test_a_ticket_expiring_mid_build_falls_back_and_the_build_is_right(
    sources, gcc_image, tmp_path
):
    with realm_module.Realm() as realm:
        allowed = tmp_path / "principals"
        allowed.write_text("alice@KRBTEST.COM\n")
        srv = start_server(
            tmp_path / "krb",
            gcc_image,
            *kerberos_options(realm),
            "--allow-principals",
            str(allowed),
            "--jobs",
            "4",
            env={**os.environ, **realm.env},
        )
        try:
            local = _local_build(tmp_path)
            # Long enough for configure and the first jobs on a loaded machine (make is then
            # stopped until it has expired, so the rest of the build runs without one).
            ticket = realm.kinit("alice", tmp_path / "alice.cc", lifetime=20)
            host = f"tcp:127.0.0.1:{tcp_port(srv)};principal={realm.service_principal}"
            env = {
                **os.environ,
                **ticket,
                "JAILCC_HOSTS": host,
                "JAILCC_VERBOSE": "1",
            }

            def pause_until_expired() -> None:
                # Stop make (not the compiles in flight) until the ticket has expired, so that
                # the rest of the build runs without a valid one.
                makes = []
                for proc in psutil.Process().children(recursive=True):
                    try:  # (a compile may end between the listing and the question)
                        if proc.name() == "make":
                            makes.append(proc)
                    except psutil.NoSuchProcess:
                        pass
                for proc in makes:
                    proc.suspend()
                try:
                    while realm.has_valid_tickets(tmp_path / "alice.cc"):
                        time.sleep(0.2)
                    time.sleep(realm.clockskew + 0.5)
                finally:
                    for proc in makes:
                        proc.resume()

            farm = _build_while(local, tmp_path, env, srv, pause_until_expired)
            jobs_before_expiry = srv.log_text().count("status=exit:0")
        finally:
            stop_proxy(env)
            stop_server(srv)
    assert farm.returncode == 0, farm.log[-3000:]
    assert projects.compare(local, farm) == []
    assert jobs_before_expiry >= 4  # the farm did serve the build while the ticket was valid
