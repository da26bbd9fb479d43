"""The proxy's connections: authenticated, jailed connections to every server, opened ahead of
time and reused job after job, so Kerberos, authorization and the jail's set-up are paid per
connection and not per compile.

A connection serves one compiler identity (the server binds it to an image at the hello). For
each server and each identity the proxy has seen, a warmer thread keeps as many connections
open as the server has slots. The placement policy (placement.py) picks each job's server from
the servers' load reports and its own books; the job takes an idle connection there (or opens
one), and gives it back when done. A connection that fails is closed; an idle one may
simply have gone stale (the server restarted, the ticket behind it expired), so the job is
tried once more on a fresh connection to the same server, then on the other servers, before
the caller compiles locally. A server that fails is left alone for a back-off that doubles up
to a minute; new connections take the user's current ticket, so a renewed one is picked up.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from jailcc import protocol as proto

from .deadline import NO_ANSWER, SETUP_DEADLINE, within
from .hosts import Host
from .placement import Placement, ServerView
from .remote import (
    MAX_RESULT,
    RemoteFailure,
    connect,
    handshake_failure,
    open_session,
    run_job,
    sends_alive,
)
from .trace import Span

LACKS_RECHECK = 60.0  # seconds before a server without our compiler's image is asked again
# A server whose image lacks or differs in a system header (built without --headers, another
# libc: jobs/tree.py's words) would refuse every tree job of that compiler: it gets none for
# this long, and the others take them.
TREES_RECHECK = 300.0
IMAGE_REFUSALS = ("is not in the image", "differs from the image's copy")
_LACKED = re.compile(
    r"refused the job: (/.*) (?:is not in the image|differs from the image's copy)$"
)
MAX_LACKED_FILES = 10_000  # per server and compiler
# glibc's header every gcc compile reads first (-include'd by the driver): an image without it
# holds no headers (built without --headers), and refuses every tree job: no need to analyse
# them for it.
EVERY_JOB_READS = "/stdc-predef.h"
# Refusals that say something about the job, not the server: another server would say the same.
JOB_REFUSALS = ("policy", "jail", "protocol", "tree")
# Refusals that say the server cannot take it now (full, or its owner took the desktop back):
# the job goes to another server at once; this one is left alone for a moment.
ELSEWHERE = {"busy": 1.0, "evicted": 5.0}
MAX_IDLE_SECONDS = 300.0  # the server drops connections idle for 600 s
MAX_BACKOFF = 60.0
# A job goes only into a slot a server offers (placement.py): while every usable server is
# full, the proxy holds it, up to this long, rather than overbook one.
WAIT_FOR_ROOM = 600.0
LOAD_FRESH = 10.0  # seconds a server's load report is believed
CONNECTIONS_CAP = 16  # per server and identity, whatever the server offers


_NO_FAILURE = RemoteFailure("")


class Link:
    """One server as the proxy sees it."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.slots = host.slots or 0  # learnt from the server's hello when not given
        self.idle: dict[str, list[tuple[float, proto.Channel]]] = {}
        self.open: dict[str, int] = {}  # connections per identity, idle or busy or opening
        self.busy = 0
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.last_told = ""  # the last failure here the user can act on (no ticket, refused)
        # Identities this server had no image for, and when it said so: asked again after
        # LACKS_RECHECK seconds, since an admin may add the image (SIGHUP) at any time.
        self.lacks: dict[str, float] = {}
        # Tree jobs (tree_key) this server's image refused: when, and its words.
        self.refused_trees: dict[str, tuple[float, str]] = {}
        # System files a tree job read that this server's image lacks (or holds otherwise),
        # by tree_key: when it said so, and its words. Only jobs that read one go elsewhere.
        self.lacks_files: dict[str, dict[str, tuple[float, str]]] = {}
        self.load: dict[str, Any] = {}  # the server's last load report
        self.load_at = 0.0
        self.jobs = 0
        self.failed_jobs = 0
        self.bytes_sent = 0

    def lacks_image(self, identity: str, now: float) -> bool:
        said = self.lacks.get(identity)
        return said is not None and now - said < LACKS_RECHECK

    def refuses_trees(self, trees: str, now: float) -> str | None:
        """Why this server's image refused these tree jobs (tree_key) lately, else None."""
        when, why = self.refused_trees.get(trees, (0.0, ""))
        return why if now - when < TREES_RECHECK else None

    def lacks_one_of(self, trees: str, paths: frozenset[str], now: float) -> str | None:
        """Why this server's image would refuse a tree job that reads these system files (one
        it said lately it lacks), else None."""
        lacking = self.lacks_files.get(trees)
        if not lacking:
            return None
        for path in paths.intersection(lacking):
            when, why = lacking[path]
            if now - when < TREES_RECHECK:
                return why
        return None

    @property
    def usable(self) -> bool:
        return time.monotonic() >= self.retry_at

    @property
    def capacity(self) -> int:
        return self.slots or 2

    def view(self, now: float, usable: bool) -> ServerView:
        """This server for the placement policy: its load report while fresh (a stale one,
        say "no slots" from an owner long gone, must not keep it out for good)."""
        load = self.load if now - self.load_at < LOAD_FRESH else {}
        slots = load.get("slots", self.capacity)
        speed = load.get("speed", 1.0)
        queued = load.get("queued", 0)
        return ServerView(
            str(self.host),
            slots=slots if isinstance(slots, int) and slots >= 0 else self.capacity,
            speed=float(speed) if isinstance(speed, int | float) and speed > 0 else 1.0,
            queued=queued if isinstance(queued, int) and queued >= 0 else 0,
            owner_busy=bool(load.get("owner_busy")),
            alive=usable,
        )

    def status(self) -> dict[str, Any]:
        return {
            "server": str(self.host),
            "slots": self.slots,
            "running": self.busy,
            "connections": sum(self.open.values()),
            "idle": sum(len(v) for v in self.idle.values()),
            "jobs": self.jobs,
            "failed": self.failed_jobs,
            "bytes_sent": self.bytes_sent,
            "state": "up" if self.usable else f"backing off: {self.last_error}",
        }


class Pool:
    def __init__(self, hosts: list[Host]) -> None:
        self.links = [Link(h) for h in hosts]
        self.identities: set[str] = set()
        self.placement = Placement()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._closed = False
        self._warmer = threading.Thread(target=self._warm_loop, name="warmer", daemon=True)
        self._warmer.start()

    # -- jobs ------------------------------------------------------------------------------

    def run(
        self,
        header: dict[str, Any],
        blobs: list[bytes],
        identity: str,
        span: Span,
        size: int | None = None,
        provide: Callable[[list[str]], list[bytes]] | None = None,
        gone: Callable[[], bool] | None = None,
    ) -> tuple[Host, Any]:
        """Run a job where the placement policy (placement.py, the code the farm simulator
        measures) expects it to finish soonest; hold it while every server it may use is full;
        retry elsewhere after a failure; RemoteFailure when no server would do it. `span`
        gets the job's queue and remote phases, per attempt, and its server (trace.py). A tree
        job (``provide`` given) that a server's image refuses goes to another server; when none
        is left, RemoteFailure "tree" (the caller ships it preprocessed). `gone`: whether
        whoever asked has gone (the job is then abandoned, its connection closed)."""
        waiting = time.time()
        with self._lock:
            if identity not in self.identities:
                self.identities.add(identity)
                self._wake.set()
        reasons: list[str] = []
        busy: list[str] = []  # servers that said they are full (not broken)
        tell_user = False
        tried: set[str] = set()
        trees = tree_key(identity, header.get("driver")) if provide is not None else None
        refused_trees: list[str] = []
        # The system files this tree job reads: one a server's image lacks sends it elsewhere.
        reads = frozenset(e[0] for e in header.get("image", ())) if trees else frozenset()
        if size is None:
            size = len(blobs[0]) if blobs else 0
        wire = sum(len(b) for b in blobs)
        kind = f"{identity} {os.path.dirname(str(header.get('cwd', '')))}"
        key = object()
        held_until = time.monotonic() + WAIT_FOR_ROOM
        while True:
            link = self._place(key, size, kind, identity, tried, held_until, trees, reads)
            if link is None:
                if trees:
                    refused = (
                        refused_trees[-1]
                        if refused_trees
                        else self._tree_refusal(trees) or self._lacks_refusal(trees, reads)
                    )
                    if refused:
                        raise RemoteFailure(refused, code="tree")
                raise self._nowhere(reasons, tell_user, identity, busy)
            span.server = str(link.host)
            for attempt in range(2):
                # (The retry: a connection of our own, not another idle one gone as stale.)
                channel, fresh, why = self._checkout(link, identity, fresh_only=attempt > 0)
                if channel is None:
                    if why.code == "image":  # this compiler only: the server is fine
                        self._placement_released(key)
                    else:
                        self._placement_failed(link, key)
                    tried.add(str(link.host))
                    (busy if why.code in ELSEWHERE else reasons).append(why.reason)
                    tell_user = tell_user or why.tell_user
                    break
                sending = span.phase("queue", waiting)
                try:
                    result = run_job(
                        channel, link.host, header, blobs, MAX_RESULT, True, provide, gone
                    )
                except RemoteFailure as exc:
                    waiting = span.phase("remote", sending)
                    if exc.code == "gone":  # closing the connection stops the job in its jail
                        self._drop(link, identity, channel, busy=True)
                        self._placement_released(key)
                        raise
                    if exc.code in JOB_REFUSALS:
                        self._checkin(link, identity, channel, wire, key)  # the link is fine
                        if not (trees and exc.code == "tree" and _image_refusal(exc.reason)):
                            raise
                        with self._lock:
                            lacked = _lacked_file(exc.reason)
                            if lacked in reads and not lacked.endswith(EVERY_JOB_READS):
                                # Only the jobs that read it go elsewhere.
                                files = link.lacks_files.setdefault(trees, {})
                                if len(files) >= MAX_LACKED_FILES:
                                    files.clear()
                                files[lacked] = (time.monotonic(), exc.reason)
                            else:
                                link.refused_trees[trees] = (time.monotonic(), exc.reason)
                        tried.add(str(link.host))
                        refused_trees.append(exc.reason)
                        break
                    if exc.code in ELSEWHERE:
                        self._checkin(link, identity, channel, wire, key, evicted=True)
                        with self._lock:
                            link.retry_at = time.monotonic() + ELSEWHERE[exc.code]
                            link.last_error = exc.reason
                        busy.append(exc.reason)
                        break
                    self._drop(link, identity, channel, busy=True)
                    if not fresh and attempt == 0 and exc.code != "silent":
                        with self._lock:
                            link.busy += 1  # the retry on a fresh connection: the same job
                        continue  # maybe only this idle connection went stale
                    self._placement_failed(link, key)
                    self._failed(link, exc)
                    tried.add(str(link.host))
                    reasons.append(exc.reason)
                    tell_user = tell_user or exc.tell_user
                    break
                span.phase("remote", sending)
                if result.load is not None:
                    link.load, link.load_at = result.load, time.monotonic()
                self._checkin(link, identity, channel, wire, key, seconds=result.times.get("run"))
                return link.host, result

    def _place(
        self,
        key: object,
        size: int,
        kind: str,
        identity: str,
        tried: set[str],
        until: float,
        trees: str | None = None,
        reads: frozenset[str] = frozenset(),
    ) -> Link | None:
        """The server for this job (dispatched to it in the policy's books), waiting while all
        it may use are full; None when there is none to use at all, or, for a tree job, when
        the ones it may use are full and a server that refuses tree jobs is there."""
        with self._room:
            while not self._closed:
                now = time.monotonic()
                usable = {
                    str(k.host): k
                    for k in self.links
                    if k.usable
                    and not k.lacks_image(identity, now)
                    and not (trees and k.refuses_trees(trees, now))
                    and not (trees and reads and k.lacks_one_of(trees, reads, now))
                    and str(k.host) not in tried
                    and not self._placement_backs_off(str(k.host), now)
                }
                if not usable:
                    return None
                for link in self.links:
                    self.placement.update(link.view(now, str(link.host) in usable))
                where = self.placement.choose(size, kind, now)
                if where in usable:
                    self.placement.on_dispatch(key, where, size, kind, now)
                    link = usable[where]
                    link.busy += 1
                    return link
                if now > until:
                    return None
                if trees and any(
                    k.usable
                    and (
                        k.refuses_trees(trees, now) or (reads and k.lacks_one_of(trees, reads, now))
                    )
                    for k in self.links
                ):
                    # Not worth waiting for: a server whose image refuses tree jobs can take
                    # it preprocessed (the caller's fallback), rather than stand idle.
                    return None
                self._room.wait(timeout=1.0)  # a job ends, a server comes back or reports
            return None

    def _placement_backs_off(self, name: str, now: float) -> bool:
        """The policy leaves a failed server alone for a while: so do we, compiling locally
        meanwhile rather than holding jobs for a server that may be gone."""
        view = self.placement.servers.get(name)
        return view is not None and view.retry_at > now

    def _placement_released(self, key: object) -> None:
        with self._lock:
            self.placement.on_finish(key, time.monotonic())
            self._room.notify_all()

    def _placement_failed(self, link: Link, key: object) -> None:
        with self._lock:
            self.placement.on_failure(str(link.host), time.monotonic(), key)
            self._room.notify_all()

    def _checkout(
        self, link: Link, identity: str, fresh_only: bool = False
    ) -> tuple[proto.Channel | None, bool, RemoteFailure]:
        """An idle connection (not fresh) that the server has not closed, or a new one
        (fresh; the only kind with `fresh_only`); None and why if none can be had."""
        now = time.monotonic()
        with self._lock:
            idle = link.idle.setdefault(identity, [])
            while idle:
                since, channel = idle.pop()
                if not fresh_only and now - since < MAX_IDLE_SECONDS and not _hung_up(channel):
                    return channel, False, _NO_FAILURE
                link.open[identity] -= 1
                channel.sock.close()
            link.open[identity] = link.open.get(identity, 0) + 1
        # The handshake (Kerberos: a KDC that hangs) within the deadline; the jail's READY,
        # which a loaded server may take seconds to build, after.
        opened = within(
            SETUP_DEADLINE,
            lambda: self._handshake(link, identity),
            lambda late: self._handshaken_late(link, identity, late),
            f"open {link.host}",
        )
        channel = self._ready(link, identity, opened[0]) if opened else self._gave_up_on(link)
        if isinstance(channel, RemoteFailure):
            with self._lock:
                link.busy -= 1
                link.open[identity] -= 1
                self._room.notify_all()
            return None, True, channel
        return channel, True, _NO_FAILURE

    def _gave_up_on(self, link: Link) -> RemoteFailure:
        """A set-up that outlasted SETUP_DEADLINE: the server is left alone for a while."""
        failure = RemoteFailure(f"{link.host}: {NO_ANSWER}")
        with self._lock:
            self._back_off(link, failure)
        return failure

    def _handshaken_late(
        self, link: Link, identity: str, session: tuple[proto.Channel, dict] | RemoteFailure
    ) -> None:
        """A handshake whose job went on without it: its connection joins the idle ones (room
        permitting), and the server, which did answer, is used again at once. (A late failure
        changes nothing: the server was left alone when the job gave up on it.)"""
        if isinstance(session, RemoteFailure):
            return
        with self._lock:
            if (
                self._closed
                or link not in self.links
                or link.open.get(identity, 0) >= min(link.capacity, CONNECTIONS_CAP)
            ):
                session[0].sock.close()
                return
            link.open[identity] = link.open.get(identity, 0) + 1
        channel = self._ready(link, identity, session)
        with self._lock:
            if isinstance(channel, RemoteFailure):
                link.open[identity] -= 1
                return
            link.idle.setdefault(identity, []).append((time.monotonic(), channel))
            link.failures, link.retry_at = 0, 0.0
            self.placement.on_recovered(str(link.host))
            self._room.notify_all()

    def _checkin(
        self,
        link: Link,
        identity: str,
        channel: proto.Channel,
        size: int,
        key: object,
        seconds: float | None = None,
        evicted: bool = False,
    ) -> None:
        with self._lock:
            now = time.monotonic()
            link.busy -= 1
            link.jobs += 1
            link.bytes_sent += size
            link.failures = 0
            link.idle.setdefault(identity, []).append((now, channel))
            if evicted:
                self.placement.on_evicted(key, now)
            else:
                busy = bool(link.load.get("owner_busy"))
                self.placement.on_finish(key, now, seconds, busy=busy)
            self._room.notify_all()

    def _drop(self, link: Link, identity: str, channel: proto.Channel, busy: bool) -> None:
        channel.sock.close()
        with self._lock:
            link.open[identity] -= 1
            if busy:
                link.busy -= 1
            self._room.notify_all()

    def _failed(self, link: Link, failure: RemoteFailure) -> None:
        with self._lock:
            link.failed_jobs += 1
            self._back_off(link, failure)

    def _back_off(self, link: Link, failure: RemoteFailure) -> None:
        link.failures += 1
        link.last_error = failure.reason
        if failure.tell_user:  # what _nowhere says while the server is left alone
            link.last_told = failure.reason
        link.retry_at = time.monotonic() + min(MAX_BACKOFF, 0.5 * 2 ** (link.failures - 1))

    # -- connections -----------------------------------------------------------------------

    def _open(self, link: Link, identity: str) -> proto.Channel | RemoteFailure:
        """Connect, authenticate, wait for the jail's READY; why not (and a back-off, unless
        the server only lacks an image for this compiler) on failure."""
        return self._ready(link, identity, self._handshake(link, identity))

    def _handshake(
        self, link: Link, identity: str
    ) -> tuple[proto.Channel, dict[str, Any]] | RemoteFailure:
        """Connect, hello, authenticate: the channel and the server's hello, or why not."""
        sock = None
        try:
            sock = connect(link.host)
            return open_session(sock, link.host, identity)
        except (RemoteFailure, proto.RemoteError, proto.ProtocolError, OSError) as exc:
            if sock is not None:
                sock.close()
            return _as_failure(link.host, exc)

    def _ready(
        self,
        link: Link,
        identity: str,
        session: tuple[proto.Channel, dict[str, Any]] | RemoteFailure,
    ) -> proto.Channel | RemoteFailure:
        """The jail's READY on a handshaken session; on any failure, why, the server left
        alone (or, when it lacks an image for this compiler, remembered so)."""
        if isinstance(session, RemoteFailure):
            failure = session
        else:
            channel, hello = session
            try:
                channel.sock.settimeout(30)
                ready, _ = channel.expect(proto.READY, proto.MAX_HELLO_FRAME)
            except (RemoteFailure, proto.RemoteError, proto.ProtocolError, OSError) as exc:
                channel.sock.close()
                failure = _as_failure(link.host, exc)
            else:
                channel.alive = sends_alive(ready)
                if isinstance(ready.get("load"), dict):
                    link.load, link.load_at = ready["load"], time.monotonic()
                slots = ready.get("slots", hello.get("slots"))
                if isinstance(slots, int) and slots > 0 and not link.host.slots:
                    link.slots = min(slots, CONNECTIONS_CAP)
                link.last_told = ""
                return channel
        with self._lock:
            if failure.code == "image":
                link.lacks[identity] = time.monotonic()
            else:
                self._back_off(link, failure)
        return failure

    def _tree_refusal(self, trees: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            return next(filter(None, (k.refuses_trees(trees, now) for k in self.links)), None)

    def _lacks_refusal(self, trees: str, reads: frozenset[str]) -> str | None:
        now = time.monotonic()
        with self._lock:
            return next(filter(None, (k.lacks_one_of(trees, reads, now) for k in self.links)), None)

    def refuses_trees(self, identity: str, driver: str | None = None) -> str | None:
        """Why no server would take this compiler's tree jobs now (every one that has its
        image refused them lately), else None: the caller then need not analyse a job."""
        now = time.monotonic()
        trees = tree_key(identity, driver)
        with self._lock:
            serving = [k for k in self.links if not k.lacks_image(identity, now)]
            said = [k.refuses_trees(trees, now) for k in serving]
        if not serving or not all(said):
            return None
        return said[-1]

    def _nowhere(
        self, reasons: list[str], tell_user: bool, identity: str, busy: list[str]
    ) -> RemoteFailure:
        """Why a job found no server: the servers' own words when they have something to tell
        the user (no ticket, no image), that they were full (quietly), else, when none could
        be reached, what to check."""
        now = time.monotonic()
        with self._lock:
            lacking = [str(k.host) for k in self.links if k.lacks_image(identity, now)]
            if self.links and len(lacking) == len(self.links) and not reasons:
                # Said once, loudly, by the job that learned it; quietly from then on.
                return RemoteFailure(
                    f"no toolchain image for this compiler on {', '.join(lacking)}", code="image"
                )
            # Servers left alone after a failure the user can act on (warmer connections
            # refused before this job came): their words, not "unreachable".
            told = [k.last_told for k in self.links if not k.usable and k.last_told]
            backed_off = [_naming(k.host, k.last_error) for k in self.links if not k.usable]
        if tell_user or told:
            # "run kinit" once, not once per server
            return RemoteFailure("; ".join(dict.fromkeys(reasons + told)), tell_user=True)
        if not reasons and busy:
            return RemoteFailure(f"every server was full ({'; '.join(dict.fromkeys(busy))})")
        if len(backed_off) < len(self.links) and not reasons:
            return RemoteFailure("every server stayed full")  # busy, not broken: quiet
        tried = "; ".join(dict.fromkeys(reasons + backed_off))
        tried = tried or "no servers are configured or discovered"
        return RemoteFailure(
            f"no jailcc server could be reached ({tried}): check that jailccd runs there and"
            " that JAILCC_HOSTS or your hosts file names it (`jailcc hosts` shows what was found)",
            tell_user=True,
            code="unreachable",
        )

    def _warm_loop(self) -> None:
        """Keep each usable server's connections topped up to its slots, per identity."""
        while not self._closed:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            for link in list(self.links):
                for identity in list(self.identities):
                    while not self._closed:
                        with self._lock:
                            want = min(link.capacity, CONNECTIONS_CAP)
                            if (
                                not link.usable
                                or link.lacks_image(identity, time.monotonic())
                                or link.open.get(identity, 0) >= want
                            ):
                                break
                            link.open[identity] = link.open.get(identity, 0) + 1
                        channel = self._open(link, identity)
                        with self._lock:
                            if isinstance(channel, RemoteFailure):
                                link.open[identity] -= 1
                                break
                            link.idle.setdefault(identity, []).append((time.monotonic(), channel))

    def set_hosts(self, hosts: list[Host]) -> None:
        """The servers discovery currently knows: new ones are used from now on (the warmer
        opens their connections), vanished ones are dropped with their idle connections
        (jobs running on them finish or fail over)."""
        with self._lock:
            known = {link.host: link for link in self.links}
            wanted = set(hosts)
            for host, link in known.items():
                if host not in wanted:
                    for channels in link.idle.values():
                        for _, channel in channels:
                            with contextlib.suppress(OSError):
                                channel.sock.close()
                    link.idle.clear()
            self.links = [known.get(h) or Link(h) for h in hosts]
            for host in known:
                if host not in wanted:
                    self.placement.remove(str(host))
            self._room.notify_all()
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        with self._lock:
            for link in self.links:
                for channels in link.idle.values():
                    for _, channel in channels:
                        with contextlib.suppress(OSError):
                            channel.sock.close()
                link.idle.clear()

    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            return [link.status() for link in self.links]


def tree_key(identity: str, driver: str | None) -> str:
    """What a server's refusal of tree jobs is remembered by: the compiler, and for clang the
    directory it runs from (jobs/tree.py: an image may lack one user's and hold another's)."""
    return identity if driver is None else f"{identity} {os.path.dirname(driver)}"


def _image_refusal(reason: str) -> bool:
    return any(words in reason for words in IMAGE_REFUSALS)


def _lacked_file(reason: str) -> str | None:
    """The system file an image refusal names (jobs/tree.py's words), if it names one."""
    match = _LACKED.search(reason)
    return match.group(1) if match else None


def _hung_up(channel: proto.Channel) -> bool:
    """Whether the server closed this idle connection (restarted, or dropped it idle)."""
    try:
        poller = select.poll()
        poller.register(channel.sock, select.POLLRDHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _as_failure(host: Host, exc: Exception) -> RemoteFailure:
    if isinstance(exc, RemoteFailure):
        return exc
    if isinstance(exc, proto.RemoteError):  # e.g. a sealed "unauthorized" for READY
        return handshake_failure(host, exc)
    return RemoteFailure(f"{host}: {exc}")


def _naming(host: Host, reason: str) -> str:
    """A failure's reason with its server named once (most reasons already name it)."""
    return reason if str(host) in reason else f"{host}: {reason}"
