"""Starting and stopping a real jailccd for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from conftest import BIN


class Server:
    def __init__(self, socket_path: Path, log: Path, proc: subprocess.Popen) -> None:
        self.socket_path, self.log, self.proc = socket_path, log, proc

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(30)
        sock.connect(str(self.socket_path))
        return sock

    def log_text(self) -> str:
        return self.log.read_text()


def start_server(
    tmp: Path,
    image: Path | None,
    *extra: str,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
) -> Server:
    """jailccd serving image (None: only what its other options name, e.g. --image-dir),
    run through prefix (e.g. prlimit and its options) if given."""
    # The socket lives where any user can reach it (pytest's tmp dirs are 0700 root).
    sock_dir = Path(tempfile.mkdtemp(prefix="jailccd-test-"))
    sock_dir.chmod(0o755)
    tmp.mkdir(parents=True, exist_ok=True)
    sock, log = sock_dir / "jailccd.sock", tmp / "jailccd.log"
    proc = subprocess.Popen(
        [
            *prefix,
            str(BIN / "jailccd"),
            *(["--toolchain-image", str(image)] if image else []),
            "--socket",
            str(sock),
            "--log-file",
            str(log),
            "--jobs",
            "2",
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 30
    while not sock.exists() and not (log.exists() and "jailccd ready" in log.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"jailccd did not start: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    return Server(sock, log, proc)


def tcp_port(server: Server) -> int:
    """The TCP port a server started with --listen HOST:0 got (once its log says, 10 s at most:
    the line may come just after the Unix socket)."""
    deadline = time.monotonic() + 10
    while "listening on tcp" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = server.log_text()
    return int(text.split("listening on tcp:127.0.0.1:")[1].split()[0].rstrip(","))


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    assert not server.socket_path.exists()  # the server removes its socket
    server.socket_path.parent.rmdir()


def kerberos_options(realm: object, principal: str | None = None) -> list[str]:
    """jailccd's options for Kerberos on loopback with a scripts/realm.py Realm's keytab."""
    return [
        "--listen",
        "127.0.0.1:0",
        "--keytab",
        str(realm.keytab),  # type: ignore[attr-defined]
        "--principal",
        principal or realm.service_principal,  # type: ignore[attr-defined]
    ]


def start_kerberos_server(
    tmp: Path, image: Path, realm: object, principals: str, *extra: str
) -> Server:
    """A jailccd on 127.0.0.1 with the realm's keytab, allowing the principals listed (the
    text of an --allow-principals file)."""
    tmp.mkdir(parents=True, exist_ok=True)
    allowed = tmp / "principals"
    allowed.write_text(principals)
    return start_server(
        tmp,
        image,
        *kerberos_options(realm),
        "--allow-principals",
        str(allowed),
        *extra,
        env={**os.environ, **realm.env},  # type: ignore[attr-defined]
    )


def as_nobody(fn: Callable[[], bytes]) -> bytes:
    """fn's answer, run in a forked child that dropped to the unprivileged user nobody (what a
    server sees in SO_PEERCRED, or what the file system lets another user do)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, fn())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as answer:
        return answer.read()
