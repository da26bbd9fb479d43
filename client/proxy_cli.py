"""`jailcc proxy start|stop|status`, `jailcc status [--json]`, `jailcc hosts`, and asking the
proxy for JSON (ask_json: jailcc mon and jailcc trace)."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from . import proxy_wire as pw
from .proxy_client import ProxyStopped, connect, start_proxy

START_TIMEOUT = 30.0


def command(name: str, args: list[str]) -> int:
    if name == "status":
        return _status(args)
    if name == "hosts":
        return _hosts(args)
    if len(args) != 1 or args[0] not in ("start", "stop", "status"):
        print("usage: jailcc proxy start|stop|status", file=sys.stderr)
        return 2
    if args[0] == "status":
        return _status([])
    path = pw.socket_path()
    if args[0] == "start":
        if _ask(path, pw.MAGIC_STATUS) is not None:
            print(f"jailcc: the proxy is running ({path})")
            return 0
        if _start(path) is None:
            return 1
        print(f"jailcc: proxy started ({path})")
        return 0
    status = _ask(path, pw.MAGIC_STATUS)
    if status is None or _ask(path, pw.MAGIC_STOP) is None:
        print("jailcc: no proxy is running for these settings")
        return 0
    # Gone when its lock is free (it holds that until it exits), or when its process is, if a
    # build's next compile has started another meanwhile, which holds the lock now.
    import fcntl

    pid = _pid_of(status)
    deadline = time.monotonic() + START_TIMEOUT
    fd = os.open(path + ".lock", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        while not _gone(pid):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    print("jailcc: the proxy did not stop", file=sys.stderr)
                    return 1
                time.sleep(0.05)
    finally:
        os.close(fd)
    print("jailcc: proxy stopped")
    return 0


def _pid_of(status: bytes) -> int | None:
    try:
        pid = json.loads(status).get("pid")
    except (ValueError, AttributeError):
        return None
    return pid if type(pid) is int and pid > 0 else None


def _gone(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _status(args: list[str]) -> int:
    if args not in ([], ["--json"]):
        print("usage: jailcc status [--json]", file=sys.stderr)
        return 2
    path = pw.socket_path()
    data = _ask(path, pw.MAGIC_STATUS)
    if data is None:
        if args:
            print(json.dumps({"running": False, "socket": path}))
        else:
            print(
                f"jailcc: no proxy is running for these settings ({path}); the next compile"
                " starts one, or run `jailcc proxy start`"
            )
        return 1
    status = json.loads(data)
    if args:
        print(json.dumps({"running": True, **status}, indent=2))
        return 0
    _print_status(status)
    return 0


def _start(path: str) -> bytes | None:
    """Start the proxy for these settings and wait for its status; None (and why, said) if it
    does not answer."""
    import tempfile

    with tempfile.TemporaryFile() as errors:  # what a proxy that cannot start says
        started = start_proxy(os.environ, errors)
        deadline = time.monotonic() + START_TIMEOUT
        while (data := _ask(path, pw.MAGIC_STATUS)) is None:
            failed = started is not None and started.poll() not in (None, 0)
            if failed or time.monotonic() > deadline:
                errors.seek(0)
                said = errors.read(4096).decode(errors="replace").strip()
                print(f"jailcc: the proxy did not start: {said or f'see {_log(path)}'}",
                      file=sys.stderr)  # fmt: skip
                return None
            time.sleep(0.05)
    return data


def _hosts(args: list[str]) -> int:
    if args[:1] == ["scan"] and len(args) in (2, 3):
        from .discovery import DiscoveryError, scan

        if len(args) == 3 and not args[2].isdigit():
            print(f"jailcc: hosts scan: {args[2]!r} is no port number", file=sys.stderr)
            return 2
        port = int(args[2]) if len(args) == 3 else 3633
        try:
            found = scan([args[1]], port)
        except (DiscoveryError, ValueError) as exc:
            print(f"jailcc: {exc}", file=sys.stderr)
            return 2
        for server in found:
            detail = server.error or f"protocol {server.protocol}, {server.auth}"
            print(f"{server.host}:{server.port}  {detail}")
        print(f"jailcc: {len(found)} jailccd found", file=sys.stderr)
        return 0 if found else 1
    if args not in ([], ["--json"]):
        print("usage: jailcc hosts [--json] | jailcc hosts scan PATTERN [PORT]", file=sys.stderr)
        return 2
    path = pw.socket_path()
    data = _ask(path, pw.MAGIC_STATUS)
    if data is None:
        data = _start(path)
        if data is None:
            return 1
        print("jailcc: proxy started; servers it discovers show as found", file=sys.stderr)
    status = json.loads(data)
    hosts = status["hosts"]
    if args:
        print(json.dumps(hosts, indent=2))
    else:
        for entry in hosts:
            print(f"{entry['server']:50} {', '.join(entry['sources'])}")
    if status.get("hosts_error"):
        print(f"jailcc: {status['hosts_error']}", file=sys.stderr)
        return 1
    return 0


def _print_status(status: dict[str, Any]) -> None:
    jobs = status["jobs"]
    overhead = jobs["mean_overhead_ms"]
    print(f"proxy pid {status['pid']}, up {jobs['uptime_seconds']:.0f} s, {status['socket']}")
    if status.get("hosts_error"):
        print(f"hosts: {status['hosts_error']}: every job compiles locally")
    else:
        print(f"hosts from {status.get('hosts_from') or 'nothing configured: the local jailccd'}")
    print(
        f"jobs: {jobs['jobs_running']} running, {jobs['jobs_done']} done: {jobs['remote']}"
        f" remote, {jobs['local']} local, {jobs['fallback']} fell back to local;"
        f" mean overhead {'-' if overhead is None else f'{overhead:.1f} ms'} per remote job"
    )
    print(f"{'server':40} {'slots':>5} {'running':>7} {'conns':>5} {'jobs':>6} {'sent':>10}  state")
    for s in status["servers"]:
        print(
            f"{s['server']:40} {s['slots']:>5} {s['running']:>7} {s['connections']:>5}"
            f" {s['jobs']:>6} {s['bytes_sent']:>10}  {s['state']}"
        )


def ask_json(magic: bytes, body: bytes = b"") -> Any:
    """The proxy's JSON answer to a request, starting the proxy when none runs; None (and
    why, said) if it cannot answer."""
    path = pw.socket_path()
    data = _ask(path, magic, body)
    if data is None:
        if _start(path) is None:
            return None
        data = _ask(path, magic, body)
    if data is None:
        print(f"jailcc: the proxy did not answer; see {_log(path)}", file=sys.stderr)
        return None
    return json.loads(data)


def _ask(path: str, magic: bytes, body: bytes = b"", timeout: float = 10.0) -> bytes | None:
    try:
        sock = connect(path)
    except ProxyStopped:
        return None
    if sock is None:
        return None
    with sock:
        try:
            sock.settimeout(timeout)
            sock.sendall(pw.encode_message(magic, body))
            return pw.read_reply(sock)
        except (OSError, ValueError):
            return None


def _log(path: str) -> str:
    return path.removesuffix(".sock") + ".log"
