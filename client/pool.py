"""The proxy's connections: authenticated, jailed connections to every server, opened ahead of
time and reused job after job, so Kerberos, authorization and the jail's set-up are paid per
connection and not per compile.

A connection serves one compiler identity (the server binds it to an image at the hello). For
each server and each identity the proxy has seen, a warmer thread keeps as many connections
open as the server has slots. A job takes an idle connection of the least loaded server (or
opens one), and gives it back when done. A connection that fails is closed; an idle one may
simply have gone stale (the server restarted, the ticket behind it expired), so the job is
tried once more on a fresh connection to the same server, then on the other servers, before
the caller compiles locally. A server that fails is left alone for a back-off that doubles up
to a minute; new connections take the user's current ticket, so a renewed one is picked up.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from jailcc.server import protocol as proto

from .hosts import Host
from .remote import RemoteFailure, connect, open_session, run_job

MAX_RESULT = 1 << 30
# Refusals that say something about the job, not the server: another server would say the same.
JOB_REFUSALS = ("policy", "jail", "protocol")
# Refusals that say the server cannot take it now (full, or its owner took the desktop back):
# the job goes to another server at once; this one is left alone for a moment.
ELSEWHERE = {"busy": 1.0, "evicted": 5.0}
MAX_IDLE_SECONDS = 300.0  # the server drops connections idle for 600 s
MAX_BACKOFF = 60.0
# Jobs in flight per server: its slots, and as many again waiting in its queue. Past that the
# proxy holds the job until a server has room, rather than overbook one (it would refuse).
IN_FLIGHT_PER_SLOT = 2
WAIT_FOR_ROOM = 600.0
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
        self.lacks: set[str] = set()  # identities this server has no image for
        self.load: dict[str, Any] = {}  # the server's last load report
        self.jobs = 0
        self.failed_jobs = 0
        self.bytes_sent = 0

    @property
    def usable(self) -> bool:
        return time.monotonic() >= self.retry_at

    @property
    def capacity(self) -> int:
        return self.slots or 2

    def expected_wait(self) -> float:
        """How loaded the server is for one more job, in units of its job time: the jobs ahead
        of ours (ours running there, and what it reports queued) per slot it offers now,
        divided by its speed. A server whose owner took all its slots back is last."""
        slots = self.load.get("slots", self.capacity)
        speed = self.load.get("speed") or 1.0
        if not isinstance(slots, int) or not isinstance(speed, int | float) or speed <= 0:
            slots, speed = self.capacity, 1.0
        queued = self.load.get("queued", 0) if isinstance(self.load.get("queued"), int) else 0
        if slots <= 0:
            return float("inf")
        return (self.busy + queued + 1) / slots / speed

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
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._closed = False
        self._warmer = threading.Thread(target=self._warm_loop, name="warmer", daemon=True)
        self._warmer.start()

    # -- jobs ------------------------------------------------------------------------------

    def run(self, header: dict[str, Any], blobs: list[bytes], identity: str) -> tuple[Host, Any]:
        """Run a job on the best server that will take it; RemoteFailure when none did."""
        with self._lock:
            if identity not in self.identities:
                self.identities.add(identity)
                self._wake.set()
        reasons: list[str] = []
        tell_user = False
        tried: set[int] = set()
        size = sum(len(b) for b in blobs)
        while True:
            link = self._choose(tried, identity)
            if link is None:
                raise RemoteFailure("; ".join(reasons) or "no server is up", tell_user)
            if link.busy >= IN_FLIGHT_PER_SLOT * link.capacity:
                if not self._wait_for_room(link):
                    raise RemoteFailure("every server stayed full", tell_user)
                continue
            tried.add(id(link))
            for attempt in range(2):
                channel, fresh, why = self._checkout(link, identity)
                if channel is None:
                    reasons.append(why.reason)
                    tell_user = tell_user or why.tell_user
                    break
                try:
                    result = run_job(channel, link.host, header, blobs, MAX_RESULT, ready=True)
                except RemoteFailure as exc:
                    if exc.code in JOB_REFUSALS:
                        self._checkin(link, identity, channel, size)  # the connection is fine
                        raise
                    if exc.code in ELSEWHERE:
                        self._checkin(link, identity, channel, size)
                        with self._lock:
                            link.retry_at = time.monotonic() + ELSEWHERE[exc.code]
                            link.last_error = exc.reason
                        reasons.append(exc.reason)
                        break
                    self._drop(link, identity, channel, busy=True)
                    if not fresh and attempt == 0:
                        continue  # maybe only this idle connection went stale
                    self._failed(link, exc.reason)
                    reasons.append(exc.reason)
                    break
                self._checkin(link, identity, channel, size)
                if result.load is not None:
                    link.load = result.load
                return link.host, result

    def _choose(self, tried: set[int], identity: str) -> Link | None:
        """The usable server with the most free slots (relative to its size), untried."""
        with self._lock:
            candidates = [
                k for k in self.links if id(k) not in tried and k.usable and identity not in k.lacks
            ]
            if not candidates:
                return None
            return min(candidates, key=lambda k: ((k.busy + 1) / k.capacity, self.links.index(k)))

    def _wait_for_room(self, link: Link) -> bool:
        """Wait until the best server has room again (a job anywhere ends)."""
        deadline = time.monotonic() + WAIT_FOR_ROOM
        with self._room:
            while link.busy >= IN_FLIGHT_PER_SLOT * link.capacity:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._room.wait(timeout=min(left, 1.0))
        return True

    def _checkout(
        self, link: Link, identity: str
    ) -> tuple[proto.Channel | None, bool, RemoteFailure]:
        """An idle connection (not fresh), or a new one (fresh); None and why if none can be
        had."""
        now = time.monotonic()
        with self._lock:
            link.busy += 1
            idle = link.idle.setdefault(identity, [])
            while idle:
                since, channel = idle.pop()
                if now - since < MAX_IDLE_SECONDS:
                    return channel, False, _NO_FAILURE
                link.open[identity] -= 1
                channel.sock.close()
            link.open[identity] = link.open.get(identity, 0) + 1
        channel = self._open(link, identity)
        if isinstance(channel, RemoteFailure):
            with self._lock:
                link.busy -= 1
                link.open[identity] -= 1
                self._room.notify_all()
            return None, True, channel
        return channel, True, _NO_FAILURE

    def _checkin(self, link: Link, identity: str, channel: proto.Channel, size: int) -> None:
        with self._lock:
            link.busy -= 1
            link.jobs += 1
            link.bytes_sent += size
            link.failures = 0
            link.idle.setdefault(identity, []).append((time.monotonic(), channel))
            self._room.notify_all()

    def _drop(self, link: Link, identity: str, channel: proto.Channel, busy: bool) -> None:
        channel.sock.close()
        with self._lock:
            link.open[identity] -= 1
            if busy:
                link.busy -= 1
            self._room.notify_all()

    def _failed(self, link: Link, reason: str) -> None:
        with self._lock:
            link.failed_jobs += 1
            self._back_off(link, reason)

    def _back_off(self, link: Link, reason: str) -> None:
        link.failures += 1
        link.last_error = reason
        link.retry_at = time.monotonic() + min(MAX_BACKOFF, 0.5 * 2 ** (link.failures - 1))

    # -- connections -----------------------------------------------------------------------

    def _open(self, link: Link, identity: str) -> proto.Channel | RemoteFailure:
        """Connect, authenticate, wait for the jail's READY; why not (and a back-off, unless
        the server only lacks an image for this compiler) on failure."""
        sock = None
        try:
            sock = connect(link.host)
            channel, hello = open_session(sock, link.host, identity)
            sock.settimeout(30)
            ready, _ = channel.expect(proto.READY, proto.MAX_HELLO_FRAME)
            if isinstance(ready.get("load"), dict):
                link.load = ready["load"]
            slots = ready.get("slots", hello.get("slots"))
            if isinstance(slots, int) and slots > 0 and not link.host.slots:
                link.slots = min(slots, CONNECTIONS_CAP)
            return channel
        except (RemoteFailure, proto.ProtocolError, OSError) as exc:
            if sock is not None:
                sock.close()
            if isinstance(exc, RemoteFailure):
                failure = exc
            elif isinstance(exc, proto.RemoteError):
                failure = RemoteFailure(f"{link.host} refused: {exc.message}", code=exc.code)
            else:
                failure = RemoteFailure(f"{link.host}: {exc}")
            with self._lock:
                if failure.code == "image":
                    link.lacks.add(identity)
                else:
                    self._back_off(link, failure.reason)
            return failure

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
                                or identity in link.lacks
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
