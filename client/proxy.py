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
import functools
import hashlib
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

from . import outputs
from . import proxy_wire as pw
from .compiler import split_invocation
from .decide import RunLocally, decide, ships_sources, source_of
from .hosts import Host, HostsError, config_stamp, configured, default_hosts
from .job import Invocation, Outcome, finish, prepare
from .pool import Pool
from .remote import RemoteFailure
from .spawn import kill_running
from .trace import BUILD_GAP, Span, Spans
from .tree import TREE_REFUSALS, TreeBuilder, TreeUnsupported

log = logging.getLogger("jailcc-proxy")
DEFAULT_IDLE = 900.0
REQUEST_TIMEOUT = 30.0
STATUS_TIMEOUT = 2.0  # per server, for `jailcc mon`
STATUS_THREADS = 32
LOCK_WAIT = 15.0  # for a proxy of the same settings that holds the lock but does not answer


class Notices:
    """Says each reason a build's jobs compile locally once per build, not once per job: a
    "build" is a burst of jobs with less than BUILD_GAP seconds without any job between them
    (the same idea as `jailcc trace`'s last build)."""

    BUILD_GAP = BUILD_GAP  # (tests shorten it on an instance)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.told: set[str] = set()
        self.last_activity = 0.0

    def job_started(self) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.last_activity >= self.BUILD_GAP:
                self.told.clear()  # a new build: each reason is worth saying again
            self.last_activity = now

    def job_ended(self) -> None:
        with self.lock:
            self.last_activity = time.monotonic()

    def tell(self, failure: Any) -> bool:
        """Whether to say this failure now: the first time in this build."""
        # Each missing image is its own news (it names the compiler); other reasons by kind.
        key = failure.reason if failure.code in (None, "image") else failure.code
        with self.lock:
            if key in self.told:
                return False
            self.told.add(key)
            return True


class Outgrown:
    """Jobs that ran into a server's limit that is the job's own (its memory, CPU time,
    process count or file size), so that the next build compiles them locally at once instead
    of spending the limit again on every build (googletest's largest test peaks at 2 GB). Not
    the wall clock or the output's size: a loaded server, or warnings the user then fixes."""

    LIMITS = frozenset(f"limit:{name}" for name in ("memory", "cpu", "pids", "file-size"))
    KEEP = 3600.0  # seconds: servers' limits may change
    MAX = 4096

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[bytes, tuple[float, str]] = {}  # digest of the job: (when, which limit)

    @staticmethod
    def key(*words: str) -> bytes:
        return hashlib.sha256("\0".join(words).encode(errors="surrogateescape")).digest()

    def note(self, key: bytes, failure: BaseException) -> None:
        code = getattr(failure, "code", None)
        if code in self.LIMITS:
            with self.lock:
                if len(self.jobs) >= self.MAX:
                    del self.jobs[next(iter(self.jobs))]  # the oldest
                self.jobs[key] = (time.monotonic(), code[6:])

    def check(self, key: bytes) -> None:
        """RemoteFailure if this job outgrew a server's limit in the last KEEP seconds."""
        with self.lock:
            when, limit = self.jobs.get(key, (None, ""))
            if when is not None and time.monotonic() - when > self.KEEP:
                del self.jobs[key]
                when = None
        if when is not None:
            ago = time.monotonic() - when
            raise RemoteFailure(f"it hit a server's {limit} limit {ago:.0f} s ago", code="outgrown")


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.time()
        self.running = 0
        self.done = 0
        self.remote = 0
        self.local = 0  # jobs that could never go remote (linking, -E, ...)
        self.fallback = 0  # jobs that could have, but compiled locally after a failure
        self.failed = 0  # remote jobs that were compile errors (non-zero exit)
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
                "failed": self.failed,
                "mean_overhead_ms": None if mean is None else round(mean * 1000, 2),
            }


class Discovery:
    """Which servers the proxy uses, merged from their sources and handed to the pool whenever
    they change: the hosts the user configured (static: JAILCC_HOSTS or a hosts file, see
    hosts.py; without either, the local jailccd's socket if there is one); and, as
    JAILCC_DISCOVER says (default: "mdns" while no hosts are configured, nothing otherwise),
    DNS-SD over mDNS on the local network and DNS SRV records (`srv:DOMAIN`) for sites that
    span subnets. Announcements are not authenticated, so a discovered server is only ever
    reached with Kerberos, as a principal jailcc/... of the user's own realm: a forged
    announcement can name a host, never whom to trust.

    A hosts file is followed while the proxy runs: check() (before each job, and for status)
    looks at most once a CHECK_INTERVAL whether it changed (a stat or two) and re-reads it.
    A file, or JAILCC_HOSTS, with a mistake in it gives no static servers and `error`, which
    each job tells the user as it compiles locally."""

    SRV_INTERVAL = 60.0
    CHECK_INTERVAL = 1.0

    def __init__(self, env: dict[str, str], pool: Pool) -> None:
        from .discovery import HostTable

        self.env = env
        self.pool = pool
        self.table = HostTable()
        self.browser: Any = None
        self.where = ""  # where the static hosts come from: JAILCC_HOSTS, a file, "" (default)
        self.error = ""  # what is wrong with them, for the user
        self._stop = threading.Event()
        self._check_lock = threading.Lock()
        self._checked = 0.0
        self._stamp: object = None
        self.methods = env.get("JAILCC_DISCOVER")  # None: as configured() says
        self.srv_domains = [m[4:] for m in (self.methods or "").split() if m.startswith("srv:")]
        self.realm = _user_realm()
        self.check(force=True)
        if self.srv_domains:
            threading.Thread(target=self._srv_loop, name="srv", daemon=True).start()

    def check(self, force: bool = False) -> None:
        """Re-read the user's hosts if they may have changed since the last look."""
        from .discovery import static

        with self._check_lock:
            now = time.monotonic()
            if not force and now - self._checked < self.CHECK_INTERVAL:
                return
            self._checked = now
            stamp = config_stamp(self.env)  # before reading: a change while we read is seen
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                config = configured(self.env)
                hosts = default_hosts() if config is None else config.parse()
                error = ""
            except HostsError as exc:
                config, hosts, error = None, [], str(exc)
            where = str(stamp[0])
            if error:
                log.error("%s: compiling locally until it is fixed", error)
            else:
                log.info("hosts from %s: %s", where or "the default", [str(h) for h in hosts])
            self.where, self.error = where, error
            self.table.set_source("static", static(hosts))
            self._set_mdns(self._wants_mdns(config is not None or bool(error)))
        self.refresh()

    def _wants_mdns(self, configured_hosts: bool) -> bool:
        if self.methods is not None:
            return "mdns" in self.methods.split()
        return not configured_hosts

    def _set_mdns(self, on: bool) -> None:
        if on and self.browser is None:
            from .discovery import MdnsBrowser

            self.browser = MdnsBrowser(on_change=self._on_mdns)
            self.browser.start()
        elif not on and self.browser is not None:
            self.browser.close()
            self.browser = None
            self.table.set_source("mdns", [])

    def _on_mdns(self, event: str, server: Any) -> None:
        if self.browser is None:
            return  # a late word from a browser closed since: hosts are configured now
        self.table.on_mdns(event, server)
        self.refresh()

    def _srv_loop(self) -> None:
        from .discovery import DiscoveryError, srv_lookup

        while not self._stop.is_set():
            found = []
            for domain in self.srv_domains:
                try:
                    found += srv_lookup(domain)
                except DiscoveryError as exc:
                    log.warning("SRV lookup for %s failed: %s", domain, exc)
            self.table.set_source("srv", found)
            self.refresh()
            self._stop.wait(self.SRV_INTERVAL)

    def hosts(self) -> list[Host]:
        out = []
        for entry in self.table.entries():
            host = entry.server.to_host()
            if "static" not in entry.sources and not self._trusted(host.principal):
                host = host._replace(principal="")  # the default: jailcc/HOST, our realm
            out.append(host)
        return out

    def _trusted(self, principal: str) -> bool:
        service, _, realm = principal.partition("@")
        return service.startswith("jailcc/") and (not realm or realm == self.realm)

    def refresh(self) -> None:
        self.pool.set_hosts(self.hosts())

    def status(self) -> list[dict[str, Any]]:
        return [
            {"server": str(e.server.to_host()), "sources": sorted(e.sources)}
            for e in self.table.entries()
        ]

    def close(self) -> None:
        self._stop.set()
        with self._check_lock:
            self._set_mdns(False)


def _user_realm() -> str:
    """The realm of the user's ticket, '' without one."""
    try:
        import gssapi

        return str(gssapi.Credentials(usage="initiate").name).rpartition("@")[2]
    except Exception:  # no ticket, no Kerberos: discovered servers get the default principal
        return ""


def other_view(pid: int) -> str | None:
    """Why the process `pid` does not see the files this one sees, if it does not: another
    mount namespace or root (a container, bwrap, unshare: the same path names another file),
    or other groups (a directory only it may read, or only we may)."""
    try:
        theirs = [os.stat(f"/proc/{pid}/{name}") for name in ("ns/mnt", "root")]
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        groups = {int(g) for g in fields["Groups"].split()} | {int(fields["Gid"].split()[3])}
    except (OSError, KeyError, IndexError, ValueError) as exc:
        return f"cannot tell which files it sees ({exc})"
    ours = [os.stat(f"/proc/self/{name}") for name in ("ns/mnt", "root")]
    if any((a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) for a, b in zip(theirs, ours, strict=True)):
        return "it sees other files (another mount namespace or root directory)"
    if groups != set(os.getgroups()) | {os.getegid()}:
        return "its groups are not the proxy's (log in again, or stop the proxy)"
    return None


class Proxy:
    def __init__(self, env: dict[str, str], idle: float) -> None:
        self.env = env
        self.idle = idle
        self.path = pw.socket_path(env)
        self.pool = Pool([])
        self.discovery = Discovery(env, self.pool)
        self.stats = Stats()
        self.notices = Notices()
        self.outgrown = Outgrown()
        self.spans = Spans()
        self.trees = TreeBuilder()  # its include analysis lives as long as the proxy
        self.running: dict[int, Span] = {}  # id(span): the jobs in progress, under stats.lock
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
            except OSError as exc:  # EMFILE, ENFILE, ENOMEM: a make -j past our descriptors
                log.warning("cannot take a client now: %s", exc)  # it waits in the backlog
                time.sleep(0.1)
                continue
            self.last_activity = time.monotonic()
            threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.sock.close()
        kill_running()  # preprocessors still running for clients: they would outlive us
        self.discovery.close()
        self.pool.close()

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            try:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                pid, uid, _ = struct.unpack("3i", creds)
                if uid != os.getuid():
                    return  # only our own user: not their compiles, not our tickets
                other = other_view(pid)
                if other is not None:
                    # We read and write by path: a client that sees other files (a container)
                    # compiles on its own, as when no proxy answers.
                    log.info("a client (pid %d) not served: %s", pid, other)
                    return
                conn.settimeout(REQUEST_TIMEOUT)
                magic, body = pw.read_request(conn)
                handler = self._requests.get(magic)
                if handler is not None:
                    conn.sendall(handler(self, body, conn))
            except (OSError, ValueError) as exc:
                log.debug("client connection failed: %s", exc)
            finally:
                self.last_activity = time.monotonic()

    def _job(self, body: bytes, client: socket.socket) -> bytes:
        request = pw.decode_request(body)
        inv = Invocation(request.cwd, request.env, request.stderr_tty, request.umask, client)
        span = Span(time.time())
        user_args = split_invocation(request.argv)[1]
        span.source = source_of(user_args)  # until analysis says
        with self.stats.lock:
            self.stats.running += 1
            self.running[id(span)] = span
        started = time.monotonic()
        tried_remote: list[bool] = []
        went_remote: list[float] = []

        def remote(compiler: str, job: Any, inv: Invocation) -> Outcome:
            tried_remote.append(True)
            span.source = job.source
            this_job = Outgrown.key(compiler, inv.cwd, *user_args)
            try:
                self.outgrown.check(this_job)
                for name in (job.output, job.dep_file):
                    if name is not None and outputs.names_descriptors(inv.path(name)):
                        raise RemoteFailure(f"{name} is the compiler's own descriptor")
                self.discovery.check()
                if self.discovery.error:
                    raise HostsError(self.discovery.error)
                why_not_tree = None
                if ships_sources(inv):
                    outcome, why_not_tree = self._tree_job(compiler, user_args, job, inv, span)
                    if outcome is not None:
                        return outcome
                    if job.sources_only:
                        raise RemoteFailure(
                            f"not shipped as sources ({why_not_tree}), which this job's debug"
                            " info needs"
                        )
                prepared = prepare(compiler, job, inv)
                span.phase("analysis", span.start)
                host, result = self.pool.run(
                    prepared.header, prepared.blobs, prepared.identity, span, gone=inv.client_gone
                )
                went_remote.append(float(result.times.get("run", 0.0)))
                span.server_times = result.times
                writing = time.time()
                outcome = finish(compiler, job, inv, host, result)
                span.phase("result", writing)
                if why_not_tree is not None:
                    outcome = outcome._replace(note=f"{outcome.note}; preprocessed: {why_not_tree}")
                return outcome
            except Exception as exc:  # recorded, then decide() compiles locally
                span.reason = getattr(exc, "reason", None) or str(exc)
                self.outgrown.note(this_job, exc)
                if not span.phases:
                    span.phase("analysis", span.start)
                raise

        self.notices.job_started()
        try:
            answer = decide(request.argv, request.exe, inv, remote, self.notices.tell)
        finally:
            self.notices.job_ended()
            with self.stats.lock:
                self.stats.running -= 1
                self.stats.done += 1
                del self.running[id(span)]
        self._count(span, answer, bool(tried_remote))
        with self.stats.lock:
            if went_remote and span.outcome == "remote":
                self.stats.overhead_total += time.monotonic() - started - went_remote[-1]
                self.stats.overhead_jobs += 1
        self.spans.add(span)
        if isinstance(answer, RunLocally):
            return pw.encode_local(answer.compiler, answer.args, answer.message)
        return pw.encode_done(answer.exit_code, answer.stdout, answer.stderr)

    def _tree_job(
        self, compiler: str, args: list[str], job: Any, inv: Invocation, span: Span
    ) -> tuple[Outcome | None, str | None]:
        """The job shipped as sources (client/tree.py), or (None, why not: the caller ships
        preprocessed output). RemoteFailure: compile locally."""
        from jailcc.images.errors import ImageError
        from jailcc.images.identity import compiler_identity

        try:
            identity = compiler_identity(compiler)
            # Not worth the analysis where no server's image would take it (pool.py).
            refused = functools.partial(self.pool.refuses_trees, identity)
            tree_job = self.trees.prepare(compiler, args, job, inv, identity, refused)
        except (TreeUnsupported, ImageError) as exc:
            self.trees.counters.add(preprocessed_instead=1)
            return None, str(exc)
        span.phase("analysis", span.start)
        try:
            host, result = self.pool.run(
                tree_job.header, [], identity, span, tree_job.size, tree_job.blobs, inv.client_gone
            )
        except RemoteFailure as exc:
            if exc.code not in TREE_REFUSALS:
                raise
            self.trees.counters.add(preprocessed_instead=1)
            return None, exc.reason
        span.server_times = result.times
        writing = time.time()
        outcome = self.trees.finish(compiler, tree_job, job, inv, host, result)
        span.phase("result", writing)
        return outcome, None

    def _count(self, span: Span, answer: RunLocally | Outcome, tried_remote: bool) -> None:
        """The job's outcome, in its span and in the proxy's Stats."""
        span.end = time.time()
        if not tried_remote:
            span.outcome = "local"  # not a job for a server, or no compiler to run at all
            message = answer.message.strip() if isinstance(answer, RunLocally) else ""
            span.reason = message or "not a job for a server"
            if not span.phases:
                span.phase("analysis", span.start, span.end)
        elif isinstance(answer, RunLocally):
            span.outcome = "fallback"  # it could have gone; something stopped it
        else:
            span.outcome = "remote"
            span.exit_code = answer.exit_code
        with self.stats.lock:
            if span.outcome == "local":
                self.stats.local += 1
            elif span.outcome == "fallback":
                self.stats.fallback += 1
            else:
                self.stats.remote += 1
                self.stats.failed += int(answer.exit_code != 0)

    def _status(self, _body: bytes, _client: socket.socket) -> bytes:
        return _reply(self.status())

    def _stop_request(self, _body: bytes, _client: socket.socket) -> bytes:
        self._stop.set()
        return pw.encode_reply()

    def _trace(self, body: bytes, _client: socket.socket) -> bytes:
        """The last build's jobs: those since the last `gap` seconds (the request's JSON) in
        which no job ran."""
        gap = BUILD_GAP
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            gap = float(json.loads(body or b"{}").get("gap", BUILD_GAP))
        jobs = self.spans.last_build(max(gap, 0.0), self._running_since())
        return _reply({"jobs": [span.as_dict() for span in jobs]})

    def _running_since(self) -> float | None:
        with self.stats.lock:
            return min((span.start for span in self.running.values()), default=None)

    def _mon(self, _body: bytes, _client: socket.socket) -> bytes:
        return _reply(self.mon())

    def mon(self) -> dict[str, Any]:
        """For `jailcc mon`: every server's own status (asked in parallel: one that does not
        answer in STATUS_TIMEOUT is "down" with the reason), the pool's view of each, and this
        user's build."""
        self.discovery.check()
        hosts = [link.host for link in list(self.pool.links)]
        answers = _fetch_statuses(hosts)
        pool = {entry["server"]: entry for entry in self.pool.status()}
        sources = {entry["server"]: entry["sources"] for entry in self.discovery.status()}
        servers = []
        for host in hosts:
            name = str(host)
            answer = answers.get(name, "no answer")
            servers.append(
                {
                    "server": name,
                    "sources": sources.get(name, []),
                    "pool": pool.get(name),
                    "status": answer if isinstance(answer, dict) else None,
                    "error": answer if isinstance(answer, str) else "",
                }
            )
        return {"time": time.time(), "servers": servers, "build": self._build()}

    def _build(self) -> dict[str, Any]:
        """This user's jobs: the proxy's totals, the current (or last) build's counts, and the
        jobs in progress."""
        now = time.time()
        with self.stats.lock:
            running = [
                {
                    "source": span.source,
                    "elapsed": round(now - span.start, 2),
                    "phase": _NEXT_PHASE.get(span.phases[-1][0] if span.phases else "", "?"),
                    "server": span.server,
                }
                for span in self.running.values()
            ]
        jobs = self.spans.last_build(BUILD_GAP, self._running_since())
        outcomes = [span.outcome for span in jobs]
        failed = sum(1 for s in jobs if s.outcome == "remote" and s.exit_code not in (0, None))
        started = min([s.start for s in jobs] + [now - r["elapsed"] for r in running], default=now)
        return {
            "totals": self.stats.as_dict(),
            "current": {
                "done": len(jobs),
                "remote": outcomes.count("remote"),
                "local": outcomes.count("local"),
                "fallback": outcomes.count("fallback"),
                "failed": failed,
                "running": len(running),
                "elapsed": round(now - started, 1),
            },
            "running": sorted(running, key=lambda r: -r["elapsed"]),
        }

    _requests = {
        pw.MAGIC_JOB: _job,
        pw.MAGIC_STATUS: _status,
        pw.MAGIC_STOP: _stop_request,
        pw.MAGIC_TRACE: _trace,
        pw.MAGIC_MON: _mon,
    }

    def status(self) -> dict[str, Any]:
        self.discovery.check()
        return {
            "pid": os.getpid(),
            "socket": self.path,
            "hosts_from": self.discovery.where,
            "hosts_error": self.discovery.error,
            "servers": self.pool.status(),
            "hosts": self.discovery.status(),
            "jobs": self.stats.as_dict(),
            "sources": self.trees.counters.as_dict(),
        }


# What a job in progress does next, after the last phase it finished.
_NEXT_PHASE = {"": "analysis", "analysis": "queue", "queue": "remote", "remote": "result"}


def _reply(data: Any) -> bytes:
    return pw.encode_reply(json.dumps(data).encode())


def _fetch_statuses(hosts: list[Host]) -> dict[str, dict[str, Any] | str]:
    """Each server's status, or why not, asked in parallel; servers still silent after
    STATUS_TIMEOUT are left out (their threads finish on their own)."""
    from concurrent.futures import ThreadPoolExecutor, wait

    from .status import fetch_status

    def one(host: Host) -> dict[str, Any] | str:
        try:
            return fetch_status(host, timeout=STATUS_TIMEOUT)
        except RemoteFailure as exc:
            return exc.reason

    if not hosts:
        return {}
    executor = ThreadPoolExecutor(min(len(hosts), STATUS_THREADS), thread_name_prefix="status")
    futures = {str(host): executor.submit(one, host) for host in hosts}
    wait(futures.values(), timeout=STATUS_TIMEOUT + 1.0)
    executor.shutdown(wait=False, cancel_futures=True)
    return {name: f.result() for name, f in futures.items() if f.done() and not f.cancelled()}


def _take_lock(lock_fd: int, path: str) -> bool:
    """The settings' lock, once no other proxy holds it; False when the one holding it
    answers on the socket (it serves these settings). One that holds it without answering is
    starting, or stopping after its idle time: wait for it, for LOCK_WAIT at most; a start
    that gave up then would leave `jailcc proxy start` (and the next compiles) with none."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if _answers(path) or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def _answers(path: str) -> bool:
    """Whether a proxy answers a status request on path."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
            sock.sendall(pw.encode_message(pw.MAGIC_STATUS))
            pw.read_reply(sock)
            return True
    except (OSError, ValueError):
        return False


def _raise_descriptor_limit() -> None:
    """A descriptor per client, and per server connection: as many as we may (a soft limit
    of 1024 is common, and make -j can pass it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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
        pw.ensure_private_dir(directory, ours=not env.get("JAILCC_PROXY_SOCKET"))
    except OSError as exc:
        print(f"jailcc proxy: {exc}", file=sys.stderr)
        return 1
    _raise_descriptor_limit()
    try:
        lock_fd = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not _take_lock(lock_fd, path):
            return 0  # another proxy serves these settings
        logging.basicConfig(
            filename=path.removesuffix(".sock") + ".log",
            level=logging.INFO,
            format="%(asctime)s jailcc-proxy[%(process)d] %(levelname)s %(message)s",
        )
        proxy = Proxy(env, args.idle)  # a mistake in the hosts: jobs are told, and run locally
        proxy.listen()
    except OSError as exc:  # (a full disk, a socket path too long for its address)
        print(f"jailcc proxy: cannot serve {path}: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: proxy._stop.set())
    proxy.serve()
    log.info("stopped: %s", proxy.stats.as_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
