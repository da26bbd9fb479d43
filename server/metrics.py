"""What jailccd counts about itself, in the unprivileged service process, for two readers: the
STATUS answer to an authenticated client (PROTOCOL.md, "Status") and Prometheus scrapes of
`jailccd --metrics HOST:PORT` (PROTOCOL.md, "Metrics"). One place counts; both read it.

Counters and gauges are read at scrape time from these counts and the live admission state
(a custom collector), so nothing is counted twice; the three durations are histograms. Every
metric lives in a private registry: nothing of the process's own (the library's default
collectors) is published.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer

# What became of a job: it compiled (ok), the compiler failed or was killed (failed), a
# limit stopped it (limit), the desktop's owner took the machine back (evicted), or the server
# would not run it (refused: busy, policy, jail, protocol, image).
OUTCOMES = ("ok", "failed", "limit", "evicted", "refused")

MAX_SCRAPES = 4  # connections to the metrics port served at once; more are closed at once
SCRAPE_TIMEOUT = 5.0  # seconds a scrape's connection may stall

_JAIL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class Metrics:
    """The server's counts since it started. `load` gives the admission state now (the
    load report: slots, running, queued, owner_busy); `configured_slots` is --jobs."""

    def __init__(
        self,
        load: Callable[[], dict[str, Any]],
        configured_slots: int,
        memory_held: Callable[[], int] = lambda: 0,
    ) -> None:
        self._lock = threading.Lock()
        self.connections = 0
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.limits: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # every ERROR a peer got, by code
        self.auth_failures: Counter[str] = Counter()
        self.caps_refused = 0  # connections refused "busy" before authenticating
        self.bytes_in = 0
        self.bytes_out = 0
        self.registry = CollectorRegistry()
        self.jail_build = _histogram(self.registry, "jail_build", "building a jail", _JAIL_BUCKETS)
        self.job_run = _histogram(self.registry, "job_run", "a job, slot to end", _JOB_BUCKETS)
        self.jail_teardown = _histogram(
            self.registry, "jail_teardown", "tearing a jail down", _JAIL_BUCKETS
        )
        self.registry.register(_Collector(self, load, configured_slots, memory_held))

    def connection(self) -> None:
        with self._lock:
            self.connections += 1

    def refusal(self, code: str, by_caps: bool = False) -> None:
        """A peer was sent ERROR `code` (a connection or a job)."""
        with self._lock:
            self.refused[code] += 1
            if by_caps:
                self.caps_refused += 1

    def auth_failure(self, reason: str) -> None:
        with self._lock:
            self.auth_failures[reason] += 1

    def job_refused(self, code: str) -> None:
        with self._lock:
            self.outcomes["refused"] += 1
            self.refused[code] += 1

    def job_ended(
        self, outcome: str, seconds: float, limit: str | None, bytes_in: int, bytes_out: int
    ) -> None:
        """A job that held a slot ended: outcome is one of OUTCOMES but "refused"."""
        self.job_run.observe(seconds)
        with self._lock:
            self.outcomes[outcome] += 1
            if limit:
                self.limits[limit] += 1
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out

    def totals(self) -> dict[str, Any]:
        """The STATUS frame's "totals" (PROTOCOL.md)."""
        with self._lock:
            ran = sum(n for outcome, n in self.outcomes.items() if outcome != "refused")
            return {
                "connections": self.connections,
                "jobs": ran,
                "ok": self.outcomes["ok"],
                "failed": self.outcomes["failed"] + self.outcomes["limit"],
                "limits": dict(self.limits),
                "evicted": self.outcomes["evicted"],
                "refused": dict(self.refused),
                "auth_failures": dict(self.auth_failures),
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
            }

    def serve(self, server: WSGIServer) -> None:
        """Serve the registry over plain, unauthenticated HTTP on a server from bind(), from
        a daemon thread (and one a scrape)."""
        server.set_app(make_wsgi_app(self.registry))
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


class _QuietHandler(WSGIRequestHandler):
    timeout = SCRAPE_TIMEOUT  # a scraper that stalls is dropped (it held a thread for good)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # (a line per scrape otherwise)


def bind(host: str, port: int) -> WSGIServer:
    """The metrics' HTTP server, bound (a thread serves it only from Metrics.serve: the
    service binds before Landlock forbids it, and starts threads after, which Landlock then
    covers)."""

    class Server(ThreadingWSGIServer):
        # At most MAX_SCRAPES at once, each a thread and a descriptor: idle connections from
        # anyone who reaches the port took every descriptor of the service.
        scrapes = threading.BoundedSemaphore(MAX_SCRAPES)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self.scrapes.acquire(blocking=False):
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.scrapes.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.scrapes.release()

    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    Server.address_family = family
    return make_server(address[0], port, make_wsgi_app(CollectorRegistry()), Server, _QuietHandler)


def _histogram(
    registry: CollectorRegistry, name: str, what: str, buckets: tuple[float, ...]
) -> Histogram:
    return Histogram(
        f"jailccd_{name}_seconds", f"Seconds spent {what}", buckets=buckets, registry=registry
    )


class _Collector:
    """Counters and gauges made at scrape time from the counts and the admission state."""

    def __init__(
        self,
        metrics: Metrics,
        load: Callable[[], dict[str, Any]],
        configured_slots: int,
        memory_held: Callable[[], int],
    ) -> None:
        self.metrics, self.load, self.configured_slots = metrics, load, configured_slots
        self.memory_held = memory_held

    def collect(self) -> Iterator[Metric]:
        m, load = self.metrics, self.load()
        with m._lock:
            yield _counter("jobs", "Jobs by outcome", "outcome", m.outcomes)
            yield _counter(
                "auth_failures", "Failed authentications by reason", "reason", m.auth_failures
            )
            yield CounterMetricFamily("jailccd_connections", "Connections accepted", m.connections)
            yield CounterMetricFamily(
                "jailccd_unauthenticated_refused",
                "Connections refused before authentication by the connection caps",
                m.caps_refused,
            )
            yield CounterMetricFamily(
                "jailccd_bytes_in", "Bytes of job inputs received", m.bytes_in
            )
            yield CounterMetricFamily("jailccd_bytes_out", "Bytes of job results sent", m.bytes_out)
        yield GaugeMetricFamily("jailccd_queue_length", "Jobs waiting for a slot", load["queued"])
        yield GaugeMetricFamily("jailccd_slots", "Slots configured (--jobs)", self.configured_slots)
        yield GaugeMetricFamily(
            "jailccd_slots_now", "Slots taken now (fewer while the owner works)", load["slots"]
        )
        yield GaugeMetricFamily("jailccd_running_jobs", "Jobs running now", load["running"])
        yield GaugeMetricFamily(
            "jailccd_owner_busy", "1 while the desktop's owner works", int(load["owner_busy"])
        )
        yield GaugeMetricFamily(
            "jailccd_memory_held_bytes",
            "Bytes large job frames hold now (of each user's --user-memory), all users",
            self.memory_held(),
        )


def _counter(name: str, doc: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(f"jailccd_{name}", doc, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family
