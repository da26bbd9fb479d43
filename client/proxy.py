"""The per-user proxy: `python -m jailcc.client.proxy`, started on demand by jailcc.

It runs as the user, serves a Unix socket in the user's private runtime directory (peers must
be the same uid), keeps authenticated connections to the servers open (pool.py), and does the
whole compile for each jailcc that asks: argument analysis, local preprocessing in the client's
directory with its environment and umask, the remote job with retries, writing the object.
jailcc itself then only forwards argv and prints the answer, so its start-up is all a compile
pays. The proxy exits after --idle seconds without work, or on `jailcc proxy stop`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any

from . import proxy_wire as pw
from .decide import RunLocally, decide
from .hosts import HostsError, candidates
from .job import Invocation, Outcome, finish, prepare
from .pool import Pool

log = logging.getLogger("jailcc-proxy")
DEFAULT_IDLE = 900.0
REQUEST_TIMEOUT = 30.0
_U32 = struct.Struct(">I")


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.time()
        self.running = 0
        self.done = 0
        self.remote = 0
        self.local = 0  # jobs that could never go remote (linking, -E, ...)
        self.fallback = 0  # jobs that could have, but compiled locally after a failure
        self.overhead_total = 0.0  # seconds of proxy time beyond the server's compile
        self.overhead_jobs = 0

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            mean = self.overhead_total / self.overhead_jobs if self.overhead_jobs else None
            return {
                "uptime_seconds": round(time.time() - self.started, 1),
                "jobs_running": self.running,
                "jobs_done": self.done,
                "remote": self.remote,
                "local": self.local,
                "fallback": self.fallback,
                "mean_overhead_ms": None if mean is None else round(mean * 1000, 2),
            }


class Proxy:
    def __init__(self, env: dict[str, str], idle: float) -> None:
        self.env = env
        self.idle = idle
        self.path = pw.socket_path(env)
        self.pool = Pool(candidates(env))
        self.stats = Stats()
        self.last_activity = time.monotonic()
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # stale: we hold the lock, so no proxy serves it
        self.sock.bind(self.path)
        os.chmod(self.path, 0o600)
        self.sock.listen(256)
        self.sock.settimeout(1.0)

    def serve(self) -> None:
        servers = [str(link.host) for link in self.pool.links]
        log.info("proxy serving %s for servers %s", self.path, servers)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                with self.stats.lock:
                    quiet = self.stats.running == 0
                if quiet and time.monotonic() - self.last_activity > self.idle:
                    log.info("idle for %.0f s: stopping", self.idle)
                    break
                continue
            self.last_activity = time.monotonic()
            threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.sock.close()
        self.pool.close()

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            try:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                if struct.unpack("3i", creds)[1] != os.getuid():
                    return  # only our own user: not their compiles, not our tickets
                conn.settimeout(REQUEST_TIMEOUT)
                from jailcc.sandbox.wire import recv_exact

                head = recv_exact(conn, 8, ValueError)
                magic, (size,) = head[:4], _U32.unpack(head[4:])
                if size > pw.MAX_REQUEST:
                    return
                body = recv_exact(conn, size, ValueError)
                if magic == pw.MAGIC_JOB:
                    conn.sendall(self._job(pw.decode_request(body)))
                elif magic == pw.MAGIC_STATUS:
                    data = json.dumps(self.status()).encode()
                    conn.sendall(_U32.pack(len(data)) + data)
                elif magic == pw.MAGIC_STOP:
                    conn.sendall(_U32.pack(0))
                    self._stop.set()
            except (OSError, ValueError) as exc:
                log.debug("client connection failed: %s", exc)
            finally:
                self.last_activity = time.monotonic()

    def _job(self, request: pw.Request) -> bytes:
        inv = Invocation(request.cwd, request.env, request.stderr_tty, request.umask)
        with self.stats.lock:
            self.stats.running += 1
        started = time.monotonic()
        went_remote: list[float] = []

        def remote(compiler: str, job: Any, inv: Invocation) -> Outcome:
            prepared = prepare(compiler, job, inv)
            host, result = self.pool.run(prepared.header, prepared.blobs, prepared.identity)
            went_remote.append(float(result.times.get("run", 0.0)))
            return finish(job, inv, host, result)

        try:
            answer = decide(request.argv, request.exe, inv, remote)
        finally:
            with self.stats.lock:
                self.stats.running -= 1
                self.stats.done += 1
        with self.stats.lock:
            if isinstance(answer, RunLocally):
                if went_remote or "compiling locally" in answer.message:
                    self.stats.fallback += 1
                else:
                    self.stats.local += 1
            else:
                self.stats.remote += 1
                if went_remote:
                    self.stats.overhead_total += time.monotonic() - started - went_remote[-1]
                    self.stats.overhead_jobs += 1
        if isinstance(answer, RunLocally):
            return pw.encode_local(answer.compiler, answer.args, answer.message)
        return pw.encode_done(answer.exit_code, answer.stdout, answer.stderr)

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "socket": self.path,
            "servers": self.pool.status(),
            "jobs": self.stats.as_dict(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jailcc-proxy", description=__doc__)
    parser.add_argument(
        "--idle",
        type=float,
        default=float(os.environ.get("JAILCC_PROXY_IDLE", DEFAULT_IDLE)),
        help="seconds without work before the proxy exits (default: JAILCC_PROXY_IDLE or 900)",
    )
    args = parser.parse_args(argv)
    env = dict(os.environ)
    path = pw.socket_path(env)
    directory = os.path.dirname(path)
    try:
        pw.ensure_private_dir(directory)
    except OSError as exc:
        print(f"jailcc proxy: {exc}", file=sys.stderr)
        return 1
    lock_fd = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another proxy for these settings runs (or is starting)
    logging.basicConfig(
        filename=path.removesuffix(".sock") + ".log",
        level=logging.INFO,
        format="%(asctime)s jailcc-proxy[%(process)d] %(levelname)s %(message)s",
    )
    try:
        proxy = Proxy(env, args.idle)
    except HostsError as exc:
        log.error("%s", exc)
        return 1
    proxy.listen()
    signal.signal(signal.SIGTERM, lambda *_: proxy._stop.set())
    proxy.serve()
    log.info("stopped: %s", proxy.stats.as_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
