"""Where the client's servers come from, as distcc reads its hosts: JAILCC_HOSTS, else the user's
hosts file ($XDG_CONFIG_HOME/jailcc/hosts, ~/.config/jailcc/hosts), else /etc/jailcc/hosts, else
the local jailccd; the files' syntax (comments, newlines, /N slots, for unix: entries too); a
proxy that follows its file as it is edited; mistakes told in one line, with a local compile."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from jailcc.client import hosts as hosts_mod
from jailcc.client import proxy_wire as pw
from jailcc.client.hosts import Host, HostsError, candidates, configured, parse_hosts
from serverutil import Server, start_server, stop_server

JAILCC = str(BIN / "jailcc")
SOURCE = "int twice(int x) { return 2 * x; }\n"


# The lookup order (in-process; the system file is pointed at a temporary one).


@pytest.fixture
def system_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "etc" / "jailcc" / "hosts"
    path.parent.mkdir(parents=True)
    monkeypatch.setattr(hosts_mod, "SYSTEM_HOSTS_FILE", str(path))
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_lookup_order_is_distccs(tmp_path, system_file):
    home = tmp_path / "home"
    env = {"HOME": str(home)}
    assert configured(env) is None  # nothing anywhere: the default (the local jailccd)

    write(system_file, "sys.example.test:3633\n")
    assert configured(env).where == str(system_file)
    assert candidates(env) == [Host("tcp", "sys.example.test", 3633)]

    user = write(home / ".config" / "jailcc" / "hosts", "user.example.test:3633/3\n")
    assert configured(env).where == str(user)
    assert candidates(env) == [Host("tcp", "user.example.test", 3633, 3)]

    # XDG_CONFIG_HOME replaces ~/.config (its file missing: on to the system's, as XDG says);
    # a relative one is invalid and ignored.
    xdg = tmp_path / "xdg"
    assert configured({**env, "XDG_CONFIG_HOME": str(xdg)}).where == str(system_file)
    xdg_file = write(xdg / "jailcc" / "hosts", "xdg.example.test:1\n")
    assert configured({**env, "XDG_CONFIG_HOME": str(xdg)}).where == str(xdg_file)
    assert configured({**env, "XDG_CONFIG_HOME": "relative"}).where == str(user)

    # The variable wins over every file, even set empty (no servers at all).
    assert (
        candidates({**env, "JAILCC_HOSTS": "var.example.test:2"})[0].address == "var.example.test"
    )
    assert candidates({**env, "JAILCC_HOSTS": ""}) == []

    # An empty file (or one of comments) is there: it means no servers, not "look further".
    user.write_text("# nothing today\n")
    assert configured(env).where == str(user) and candidates(env) == []

    # Neither XDG_CONFIG_HOME nor HOME: only the system file.
    assert configured({}).where == str(system_file)


def test_a_file_that_cannot_be_read_is_an_error_naming_it(tmp_path, system_file):
    (tmp_path / "cfg" / "jailcc" / "hosts").mkdir(parents=True)  # a directory, not a file
    with pytest.raises(HostsError, match=r"/cfg/jailcc/hosts: cannot read the hosts file"):
        candidates({"XDG_CONFIG_HOME": str(tmp_path / "cfg")})


def test_file_syntax_comments_newlines_and_line_numbers():
    text = (
        "# the build farm\n"
        "build1.example.test:3633/8   build2.example.test:3633 # the old one\n"
        "\n"
        "   unix:/run/jailccd/jailccd.sock/2\t# local, two slots\n"
        "tcp:[2001:db8::1]:3633;principal=jailcc/b3@EXAMPLE.TEST\n"
    )
    assert parse_hosts(text, "/etc/jailcc/hosts", numbered=True) == [
        Host("tcp", "build1.example.test", 3633, 8),
        Host("tcp", "build2.example.test", 3633),
        Host("unix", "/run/jailccd/jailccd.sock", 0, 2),
        Host("tcp", "2001:db8::1", 3633, 0, "jailcc/b3@EXAMPLE.TEST"),
    ]
    with pytest.raises(HostsError) as err:
        parse_hosts("# farm\nbuild1:3633\n  build2 # no port\n", "/home/u/hosts", numbered=True)
    assert str(err.value) == (
        "/home/u/hosts:3: bad entry 'build2': expected unix:PATH, HOST:PORT or tcp:HOST:PORT,"
        " each optionally followed by /SLOTS"
    )
    with pytest.raises(HostsError, match=r"^JAILCC_HOSTS: bad entry 'x:1/many': bad slot count"):
        parse_hosts("a:1 x:1/many")


def test_unix_entries_take_a_slot_count_too():
    assert parse_hosts("unix:/run/jailccd/jailccd.sock/4") == [
        Host("unix", "/run/jailccd/jailccd.sock", 0, 4)
    ]
    assert parse_hosts("unix:/run/jailccd/jailccd.sock") == [
        Host("unix", "/run/jailccd/jailccd.sock", 0, 0)
    ]
    # A last component of digits is always the count: a socket named by digits takes one.
    assert parse_hosts("unix:/run/s/7/0 unix:/run/s/7/3") == [
        Host("unix", "/run/s/7", 0, 0),
        Host("unix", "/run/s/7", 0, 3),
    ]
    for bad, why in [
        ("unix:/4", "no socket path before the slot count"),
        ("unix:/run/s//4", "cannot end in '/'"),
        ("unix:/run/s/", "cannot end in '/'"),
        ("unix:run/s/4", "must be absolute"),
        ("unix:/run/s/4;auth=none", "options are for TCP servers only"),
    ]:
        with pytest.raises(HostsError, match=why):
            parse_hosts(bad)


# The proxy's key: which settings get a proxy of their own, the same in C and Python.


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Iterator[Path]:
    import tempfile

    # Short: a Unix socket's path has 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="jcc-", dir="/tmp"))
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def native_client_asks(env: dict[str, str], cwd: Path) -> bool:
    """Whether the native jailcc, run with env, sends its request to the socket that the Python
    side names for env (a fake proxy there answers "exit 42")."""
    path = pw.socket_path(env)
    pw.ensure_private_dir(os.path.dirname(path))
    asked: list[bytes] = []
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(4)
        listener.settimeout(10)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                asked.append(conn.recv(4))
                conn.sendall(pw.encode_done(42, b"", b""))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            proc = subprocess.run(
                [JAILCC, "gcc-12", "-c", "x.c"], cwd=cwd, env=env, capture_output=True, timeout=60
            )
        finally:
            listener.close()
            thread.join()
            os.unlink(path)
    return asked == [pw.MAGIC_JOB] and proc.returncode == 42


def fake_proxy_place(runtime_dir: Path, cwd: Path, **extra: str) -> tuple[dict[str, str], str]:
    """A client environment with no servers, a source x.c in cwd, and the path (its directory
    made) where that environment's proxy would listen: a test's stand-in listens there."""
    env = {
        "PATH": os.environ["PATH"],
        "XDG_RUNTIME_DIR": str(runtime_dir),
        "JAILCC_DISCOVER": "",
        "JAILCC_HOSTS": "",
        **extra,
    }
    (cwd / "x.c").write_text("int x(void) { return 1; }\n")
    path = pw.socket_path(env)
    pw.ensure_private_dir(os.path.dirname(path))
    return env, path


@pytest.mark.parametrize(
    "settings",
    [
        {"JAILCC_HOSTS": "unix:/x.sock/4", "HOME": "/home/a"},
        {"JAILCC_HOSTS": "", "HOME": "/home/a", "KRB5CCNAME": "FILE:/tmp/cc"},
        {"HOME": "/home/a"},
        {"HOME": "/home/a", "XDG_CONFIG_HOME": "/cfg/a"},
        {"HOME": "/home/a", "XDG_CONFIG_HOME": "relative"},
        {},
    ],
)
def test_the_native_client_finds_the_proxy_python_names(settings, runtime_dir, tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "XDG_RUNTIME_DIR": str(runtime_dir),
        "JAILCC_DISCOVER": "",
        **settings,
    }
    assert native_client_asks(env, tmp_path)


AS_USER_ASKS = """
import os, socket, subprocess, sys, threading
from jailcc.client import proxy_wire as pw
env = {"PATH": os.environ["PATH"], "HOME": sys.argv[1], "JAILCC_HOSTS": ""}
path = pw.socket_path(env)
pw.ensure_private_dir(os.path.dirname(path))
asked = []
with socket.socket(socket.AF_UNIX) as listener:
    listener.bind(path)
    listener.listen(1)
    def serve():
        conn, _ = listener.accept()
        with conn:
            asked.append(conn.recv(4))
            conn.sendall(pw.encode_done(42, b"", b""))
    threading.Thread(target=serve, daemon=True).start()
    done = subprocess.run([sys.argv[2], "gcc-12", "-c", "x.c"], cwd=sys.argv[1], env=env)
print(path, asked == [pw.MAGIC_JOB] and done.returncode == 42)
"""


@requires_root
def test_a_runtime_dir_another_user_took_in_tmp_sends_the_proxy_home():
    """Without XDG_RUNTIME_DIR or /run/user/UID (cron, ssh without pam_systemd) the proxy's
    directory is /tmp/jailcc-UID, which anyone may make first: then both clients agree on a
    directory in the user's home instead, rather than lose the proxy."""
    uid = 48151  # a user of the test's own, with neither directory
    squatted = Path(f"/tmp/jailcc-{uid}")
    home = Path(tempfile.mkdtemp(prefix="jailcc-home-", dir="/var/tmp"))  # (others may enter)
    os.chown(home, uid, uid)
    (home / "x.c").write_text("int x(void) { return 1; }\n")
    env = {"HOME": str(home)}
    shutil.rmtree(squatted, ignore_errors=True)
    assert pw.runtime_dir(uid, env) == str(squatted)
    squatted.mkdir(mode=0o700)
    try:
        os.chown(squatted, uid + 1, uid + 1)  # another user's
        assert pw.runtime_dir(uid, env) == str(home / ".jailcc-proxy")
        done = subprocess.run(
            [sys.executable, "-c", AS_USER_ASKS, str(home), JAILCC],
            user=uid, group=uid, extra_groups=[], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        path, asked = done.stdout.split()
        assert path.startswith(f"{home}/.jailcc-proxy/") and asked == "True", done.stdout
    finally:
        squatted.rmdir()
        shutil.rmtree(home)


@pytest.mark.parametrize("client", ["jailcc", "jailcc-py"])
def test_a_proxy_that_accepts_nothing_holds_no_compile(client, runtime_dir, tmp_path):
    """A proxy that does not accept (stopped, with its queue full) made connect() wait for
    good: both clients connect without blocking, and compile on their own."""
    env, path = fake_proxy_place(runtime_dir, tmp_path)
    queued = []
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(0)
        while True:  # fill its queue
            sock = socket.socket(socket.AF_UNIX)
            sock.setblocking(False)
            try:
                sock.connect(path)
            except BlockingIOError:
                sock.close()
                break
            queued.append(sock)
        try:
            done = subprocess.run(
                [str(BIN / client), "gcc-12", "-c", "x.c"],
                cwd=tmp_path, env=env, capture_output=True, timeout=60,
            )  # fmt: skip
        finally:
            for sock in queued:
                sock.close()
            os.unlink(path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x.o").stat().st_size > 0


def test_a_proxy_that_dies_before_reading_means_a_fallback_not_sigpipe(runtime_dir, tmp_path):
    """The native client's request to a proxy that closes without reading it fails with EPIPE:
    the compile must then go on without the proxy, not die of SIGPIPE ("Broken pipe" in make)."""
    # Larger than the socket's buffer, so the write is still going when the proxy closes.
    pad = {f"JAILCC_TEST_PAD{i}": "x" * 100_000 for i in range(10)}
    env, path = fake_proxy_place(runtime_dir, tmp_path, **pad)
    accepted = 0
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(4)
        listener.settimeout(0.2)
        stop = threading.Event()

        def slam() -> None:
            nonlocal accepted
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                conn.close()  # unread
                accepted += 1

        thread = threading.Thread(target=slam, daemon=True)
        thread.start()
        try:
            proc = subprocess.run(
                [JAILCC, "gcc-12", "-c", "x.c"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                timeout=60,
            )
        finally:
            stop.set()
            thread.join()
            os.unlink(path)
    assert accepted >= 1
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert (tmp_path / "x.o").stat().st_size > 0


def test_the_key_follows_which_hosts_file_not_unrelated_settings():
    key = pw.settings_key
    home_a, home_b = {"HOME": "/home/a"}, {"HOME": "/home/b"}
    # Without JAILCC_HOSTS, HOME and XDG_CONFIG_HOME say which file: another file, another proxy.
    assert key(home_a) != key(home_b)
    assert key({**home_a, "XDG_CONFIG_HOME": "/cfg"}) == key({**home_b, "XDG_CONFIG_HOME": "/cfg"})
    assert key({**home_a, "XDG_CONFIG_HOME": "rel"}) == key(home_a)
    # With it, they do not matter; and set-but-empty (no servers) is not unset (the files).
    assert key({**home_a, "JAILCC_HOSTS": "h:1"}) == key({**home_b, "JAILCC_HOSTS": "h:1"})
    assert key({**home_a, "JAILCC_HOSTS": ""}) != key(home_a)


# The proxy's discovery follows the file (in-process, with a stand-in pool and mDNS browser).


class FakePool:
    def __init__(self) -> None:
        self.hosts: list[Host] = []

    def set_hosts(self, hosts: list[Host]) -> None:
        self.hosts = hosts


class FakeBrowser:
    running: list[FakeBrowser] = []

    def __init__(self, on_change: object) -> None:
        pass

    def start(self) -> None:
        FakeBrowser.running.append(self)

    def close(self) -> None:
        FakeBrowser.running.remove(self)


def test_the_proxy_follows_its_hosts_file(tmp_path, system_file, monkeypatch):
    from jailcc.client import discovery
    from jailcc.client.proxy import Discovery

    monkeypatch.setattr(discovery, "MdnsBrowser", FakeBrowser)
    monkeypatch.setattr(Discovery, "CHECK_INTERVAL", 0.0)
    monkeypatch.setattr(hosts_mod, "DEFAULT_SOCKET", str(tmp_path / "no-jailccd.sock"))
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}  # JAILCC_DISCOVER unset: the default
    pool = FakePool()
    found = Discovery(env, pool)  # type: ignore[arg-type]
    try:
        # Nothing configured: no static hosts, and mDNS looks for some.
        assert pool.hosts == [] and len(FakeBrowser.running) == 1 and found.where == ""

        user = write(tmp_path / "cfg" / "jailcc" / "hosts", "a.example.test:1 # first\n")
        found.check()
        assert pool.hosts == [Host("tcp", "a.example.test", 1, 0, "jailcc/a.example.test")]
        assert FakeBrowser.running == []  # configured now: no mDNS
        assert found.where == str(user)

        user.write_text("a.example.test:1\nunix:/run/b.sock/4\n")  # same second, longer
        found.check()
        assert [str(h) for h in pool.hosts] == ["unix:/run/b.sock", "tcp:a.example.test:1"]
        assert next(h for h in pool.hosts if h.kind == "unix").slots == 4

        user.write_text("a.example.test:1\n\nnonsense\n")
        found.check()
        assert pool.hosts == []
        assert found.error == f"{user}:3: bad entry 'nonsense': " + (
            "expected unix:PATH, HOST:PORT or tcp:HOST:PORT, each optionally followed by /SLOTS"
        )
        assert FakeBrowser.running == []  # a broken file is still the user's word

        user.unlink()  # on to the system's file
        write(system_file, "sys.example.test:2\n")
        found.check()
        assert found.error == "" and found.where == str(system_file)
        assert [h.address for h in pool.hosts] == ["sys.example.test"]
    finally:
        found.close()
    assert FakeBrowser.running == []


def test_the_proxy_looks_at_its_file_at_most_once_a_second(tmp_path, system_file):
    from jailcc.client.proxy import Discovery

    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "JAILCC_DISCOVER": ""}
    user = write(tmp_path / "cfg" / "jailcc" / "hosts", "a.example.test:1\n")
    pool = FakePool()
    found = Discovery(env, pool)  # type: ignore[arg-type]
    try:
        user.write_text("b.example.test:1\n")
        found.check()  # within the second: not looked at yet
        assert [h.address for h in pool.hosts] == ["a.example.test"]
        time.sleep(Discovery.CHECK_INTERVAL + 0.1)
        found.check()
        assert [h.address for h in pool.hosts] == ["b.example.test"]
    finally:
        found.close()


# End to end: a real jailccd, the native client, its proxy.


@pytest.fixture(scope="module")
def server(gcc_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("hosts-server"), gcc_image, "--allow-user", "root")
    yield srv
    stop_server(srv)


def client_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAILCC_HOSTS"}
    env.update(JAILCC_VERBOSE="1", LC_ALL="C", JAILCC_DISCOVER="")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    env.update(extra)
    return env


def jailcc(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [JAILCC, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def status(cwd: Path, env: dict[str, str]) -> dict:
    return json.loads(jailcc(["status", "--json"], cwd, env).stdout)


def compile_and_compare(tmp_path: Path, env: dict[str, str]) -> str:
    """Compile x.c with jailcc and locally; the objects and exit status must be the same.
    jailcc's stderr."""
    got = jailcc(["gcc-12", "-O2", "-c", "x.c", "-o", "jailcc.o"], tmp_path, env)
    local = subprocess.run(["gcc-12", "-O2", "-c", "x.c", "-o", "local.o"], cwd=tmp_path)
    assert got.returncode == local.returncode == 0, got.stderr
    assert (tmp_path / "jailcc.o").read_bytes() == (tmp_path / "local.o").read_bytes()
    return got.stderr


def wait_for(what, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


@requires_root
def test_a_hosts_file_is_used_followed_and_its_mistakes_told(server, tmp_path):
    (tmp_path / "x.c").write_text(SOURCE)
    hosts = tmp_path / "cfg" / "jailcc" / "hosts"
    write(hosts, f"# our farm\n\nunix:{server.socket_path}/4   # four slots\n")
    env = client_env(tmp_path)
    try:
        # The first compile (no proxy yet) and the next (through it) both use the file.
        assert "remote on unix:" in compile_and_compare(tmp_path, env)
        wait_for(lambda: jailcc(["status", "--json"], tmp_path, env).returncode == 0)
        assert "remote on unix:" in compile_and_compare(tmp_path, env)
        state = status(tmp_path, env)
        assert state["hosts_from"] == str(hosts) and state["jobs"]["remote"] >= 1
        (link,) = state["servers"]
        assert link["server"] == f"unix:{server.socket_path}"
        assert link["slots"] == 4  # ours, not the server's 2: so it plans with 4 ...
        # ... and keeps 4 connections open there, as it would to a TCP server with /4.
        wait_for(lambda: status(tmp_path, env)["servers"][0]["connections"] == 4)

        # Edited while the proxy runs: picked up within a second or so, no restart.
        pid = state["pid"]
        hosts.write_text(f"unix:{tmp_path}/nobody-here.sock\n")
        time.sleep(1.1)
        assert "compiling locally" in compile_and_compare(tmp_path, env)
        state = status(tmp_path, env)
        assert state["pid"] == pid
        assert [s["server"] for s in state["servers"]] == [f"unix:{tmp_path}/nobody-here.sock"]

        # A mistake: one line naming the file, the line and the entry; then a local compile.
        hosts.write_text(f"unix:{server.socket_path}\n  bogus   # oops\n")
        time.sleep(1.1)
        said = compile_and_compare(tmp_path, env)
        assert said == (
            f"jailcc: {hosts}:2: bad entry 'bogus': expected unix:PATH, HOST:PORT or"
            " tcp:HOST:PORT, each optionally followed by /SLOTS; compiling x.c locally\n"
        )
        listed = jailcc(["hosts"], tmp_path, env)
        assert listed.returncode == 1 and f"{hosts}:2: bad entry 'bogus'" in listed.stderr
        assert "internal error" not in said + listed.stderr

        # JAILCC_HOSTS still wins over the (broken) file.
        env_var = client_env(tmp_path, JAILCC_HOSTS=f"unix:{server.socket_path}")
        try:
            assert "remote on unix:" in compile_and_compare(tmp_path, env_var)
        finally:
            jailcc(["proxy", "stop"], tmp_path, env_var)
    finally:
        jailcc(["proxy", "stop"], tmp_path, env)


@requires_root
@pytest.mark.parametrize("proxy", ["1", "0"])
def test_a_jailcc_hosts_mistake_is_one_line_and_a_local_compile(tmp_path, proxy):
    (tmp_path / "x.c").write_text(SOURCE)
    env = client_env(
        tmp_path, JAILCC_HOSTS="unix:/run/jailccd/jailccd.sock bogus", JAILCC_PROXY=proxy
    )
    env.pop("JAILCC_VERBOSE")
    expected = (
        "jailcc: JAILCC_HOSTS: bad entry 'bogus': expected unix:PATH, HOST:PORT or"
        " tcp:HOST:PORT, each optionally followed by /SLOTS; compiling x.c locally\n"
    )
    try:
        assert compile_and_compare(tmp_path, env) == expected
        if proxy == "1":  # the proxy runs by now, and says the same
            wait_for(lambda: jailcc(["status", "--json"], tmp_path, env).returncode == 0)
            assert compile_and_compare(tmp_path, env) == expected
            assert status(tmp_path, env)["jobs"]["fallback"] >= 1
        listed = jailcc(["hosts"], tmp_path, env)
        assert listed.returncode == 1
        assert listed.stderr.splitlines()[-1] == expected.split(";")[0]
    finally:
        jailcc(["proxy", "stop"], tmp_path, env)


def test_the_native_client_knows_the_same_subcommands() -> None:
    """A subcommand the native client does not know is sent to the proxy as a compile."""
    import re

    from jailcc.client.cli import SUBCOMMANDS

    source = (Path(__file__).resolve().parent.parent / "client" / "jailcc.c").read_text()
    table = re.search(r"SUBCOMMANDS\[\] = \{([^}]*)\}", source)
    assert table is not None
    assert tuple(re.findall(r'"([a-z]+)"', table.group(1))) == SUBCOMMANDS
