"""Where each compile job runs: the per-user proxy's load-balancing policy.

Pure logic, no I/O, standard library only: the proxy feeds it server load reports and the
outcome of its own jobs, and asks it where to send the jobs waiting for a decision. The
simulator (scripts/simulate_farm.py) drives this same object.

The rule is list scheduling by earliest estimated finish time (EFT). For each waiting job,
biggest first, and each server we may use:

    finish = start + rtt + transfer + work / speed

start is when a slot there frees for us (now if one is free; else the expected end of a job
already there, from our own dispatches and the server's load report); transfer is the job's
wire size over the link; work is the job's cost in reference seconds, predicted from its
preprocessed size by the Estimator; speed is the server's speed as the Estimator learned it,
lowered while its owner is busy. The job goes to the server, or to this machine, with the
smallest finish. When that server has no free slot yet, the job is held and the slot reserved
for it, so the next job sees that server busier: jobs wait for a faster server only while that
beats the free slower ones, which keeps every useful slot busy while the backlog is long and
keeps big jobs off slow hosts at the end of a build. Biggest first (LPT) changes nothing while
the backlog is long and gives the longest jobs the fastest slots at the end, where it matters.

Nothing exceeds a server's admission: a job is sent only into a slot the server offers us now.
A server that fails is backed off (1 s, doubling per failure in a row, at most 60 s); one that
hands a job back (its owner needs the machine) is taken as busy and full until it reports.

    p = Placement()
    p.update(ServerView("a", slots=8, speed=1.5, rtt=0.001, bandwidth=100e6))
    for key, where in p.plan([(key, nbytes, "g++")], now, LocalView(slots=8, running=7)):
        ...  where is a server's name or LOCAL; jobs not returned wait
    p.on_dispatch(key, "a", nbytes, "g++", now); ... p.on_finish(key, now, compile_seconds)
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from dataclasses import dataclass, field, replace

TYPE_CHECKING = False  # typing costs milliseconds to import, on every compile; type checkers know
if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Sequence

LOCAL = "(local)"  # a decision: compile on this machine (never a server's name)

# A preprocessed byte costs about this many reference seconds until jobs teach us better: gcc-12
# -O2 -g spends 0.5-4 us per byte on scripts/traces (C++ less than C: long, cheap headers).
DEFAULT_SECONDS_PER_BYTE = 2e-6
# Bytes on the wire per preprocessed byte: lz4 makes the input about a quarter of its size, and
# the object (commonly half the input's size with -g) comes back compressed too.
WIRE_RATIO = 0.45
# A job whose expected end has passed is assumed to need this share of its estimate again.
OVERRUN_SHARE = 0.25


@dataclass(slots=True)
class ServerView:
    """One server as the proxy sees it: its last load report, and our own jobs there."""

    name: str
    slots: int  # slots it admits us to now (already lowered while its owner is busy)
    speed: float = 1.0  # relative compile speed (1.0: reference); advertised, then learned
    rtt: float = 0.0  # seconds, one request and its reply
    bandwidth: float = 0.0  # bytes/s of the link; 0: transfers are free
    queued: int = 0  # jobs waiting for a slot there, as reported
    others: int = 0  # other clients' jobs running there, as reported
    owner_busy: bool = False  # its desktop owner is active: slower, and it may evict
    alive: bool = True
    # Ours, kept by Placement:
    running: int = 0  # our jobs sent there and not finished
    ends: list[float] = field(default_factory=list)  # their expected end times, sorted
    failures: int = 0  # consecutive failures
    retry_at: float = 0.0  # backed off until then


@dataclass(slots=True)
class LocalView:
    """This machine: cores we may compile on and how many are taken (by anything: local
    compiles, preprocessing for other jobs, the user's own work)."""

    slots: int
    running: int = 0
    speed: float = 1.0

    @property
    def free(self) -> int:
        return max(0, self.slots - self.running)


class Estimator:
    """Learns job cost and server speed from what jobs took.

    The model: seconds = bytes x cost[kind] / speed[server], with cost in reference seconds per
    preprocessed byte, one per kind of job, and speed relative to the reference. A kind is words
    from general to specific, e.g. "g++-12 src/util": the compiler (C++ costs less per byte than
    C, its headers are long and cheap), then the directory (one directory's files are alike);
    a new kind starts from the nearest more general one it belongs to. Each observation
    corrects both, in log space, in proportion to how unsure each is (a Kalman filter with a
    diagonal covariance): at first a guessed cost takes most of the error, a server's advertised
    speed (its benchmark) little; once a kind's cost is known from many jobs, what a server gets
    wrong teaches its speed. This machine's speed is given, so jobs compiled here pin the scale.
    Uncertainty is added back after each observation so both keep following changes, and no
    single job moves anything by more than a factor of e. Observations made while a desktop's
    owner was busy teach only busy_factor.
    """

    __slots__ = ("busy_factor", "cost", "job_var", "speed_var", "speeds")

    KIND_VAR = 0.25  # how far (log) a new kind's cost may be from the kind it belongs to
    MAX_ERROR = 1.0  # in log: one observation counts as at most e times off (see observe)
    # Uncertainty added back per observation. A kind's cost drifts (make walks from one part of
    # the tree to another, cheap headers-heavy code after dense code); a server's speed hardly
    # does, and a quick speed would mistake a run of cheap jobs for a fast server.
    COST_DRIFT = 5e-3
    SPEED_DRIFT = 1e-4

    def __init__(
        self,
        seconds_per_byte: float = DEFAULT_SECONDS_PER_BYTE,
        *,
        cost_sigma: float = 1.0,
        speed_sigma: float = 0.3,
        job_sigma: float = 0.7,
        busy_factor: float = 0.5,
    ) -> None:
        # [mean, variance] of log(cost); "" is all jobs, the prior for a kind not seen yet.
        self.cost: dict[str, list[float]] = {"": [math.log(seconds_per_byte), cost_sigma**2]}
        self.speeds: dict[str, list[float]] = {}  # server: [mean, variance] of log(speed)
        self.speed_var = speed_sigma**2  # an advertised speed's error
        self.job_var = job_sigma**2  # one job's cost per byte against its kind's
        self.busy_factor = busy_factor  # the share of its speed a busy owner's host gives us

    def work(self, job_bytes: int, kind: str = "") -> float:
        """Predicted cost in reference seconds."""
        c = self.cost.get(kind)
        while c is None:  # a kind not seen yet: the nearest one it belongs to
            kind = kind.rpartition(" ")[0]
            c = self.cost.get(kind)
        return max(job_bytes, 1) * math.exp(c[0])

    def speed(self, server: str, advertised: float = 1.0) -> float:
        s = self.speeds.get(server)
        return math.exp(s[0]) if s is not None else advertised

    def observe(
        self,
        server: str | None,
        job_bytes: int,
        kind: str,
        seconds: float,
        speed: float = 1.0,
        busy: bool = False,
    ) -> None:
        """A job of job_bytes took seconds of compile time on server (None: this machine, whose
        speed is given). speed: the server's advertised speed, used until it has a learned one."""
        if seconds <= 0:
            return
        if busy:
            sample = self.work(job_bytes, kind) / seconds / self.speed(server or "", speed)
            self.busy_factor = math.exp(
                0.9 * math.log(self.busy_factor) + 0.1 * math.log(min(max(sample, 0.01), 1.0))
            )
            return
        if server is None:
            s = [math.log(speed), 0.0]
        else:
            s = self.speeds.setdefault(server, [math.log(speed), self.speed_var])
        c = self._entry(kind)
        seen = math.log(seconds) - math.log(max(job_bytes, 1))
        # Clipped: one job can cost ten times another of its size, and such a job should not
        # make its server look ten times faster or slower.
        error = max(-self.MAX_ERROR, min(self.MAX_ERROR, seen - (c[0] - s[0])))
        total = c[1] + s[1] + self.job_var
        kc, ks = c[1] / total, s[1] / total
        c[0] += kc * error
        c[1] = c[1] * (1 - kc) + self.COST_DRIFT
        if server is not None:
            s[0] -= ks * error
            s[1] = s[1] * (1 - ks) + self.SPEED_DRIFT
        while kind:  # and every kind it belongs to, with the speed now taken as known
            kind = kind.rpartition(" ")[0]
            base = self.cost[kind]
            k = base[1] / (base[1] + self.job_var)
            base[0] += k * max(-self.MAX_ERROR, min(self.MAX_ERROR, seen + s[0] - base[0]))
            base[1] = base[1] * (1 - k) + self.COST_DRIFT

    def _entry(self, kind: str) -> list[float]:
        """kind's [mean, variance], made from its parent's (and so on up) if new."""
        c = self.cost.get(kind)
        if c is None:
            base = self._entry(kind.rpartition(" ")[0])
            c = self.cost[kind] = [base[0], base[1] + self.KIND_VAR]
        return c


def transfer_seconds(server: ServerView, job_bytes: int) -> float:
    bw = server.bandwidth
    return server.rtt + (job_bytes * WIRE_RATIO / bw if bw > 0 else 0.0)


def _usable(s: ServerView, now: float) -> bool:
    return s.alive and s.slots > 0 and s.retry_at <= now


def _free(s: ServerView) -> int:
    """Slots free for us on s, back-off aside."""
    return max(0, s.slots - s.running - s.others - s.queued) if s.alive else 0


def _start(s: ServerView, now: float, typical: float) -> float:
    """When the next slot on s frees for us (now if one is free)."""
    taken = s.running + s.others + s.queued
    if taken < s.slots:
        return now
    k = taken - s.slots  # slots that must free before ours
    if k < len(s.ends):
        return max(s.ends[k], now + typical * OVERRUN_SHARE)
    # Beyond our own jobs (others' jobs, the server's queue): each round of slots ~ one job.
    return now + typical * (0.5 + (k - len(s.ends)) // max(s.slots, 1) + 1)


def choose(
    servers: Iterable[ServerView],
    work: float,
    job_bytes: int,
    local: LocalView | None = None,
    now: float = 0.0,
    busy_factor: float = 0.5,
) -> str | None:
    """One job's place: a server's name, LOCAL, or None (nothing admits it now and waiting for a
    slot beats compiling here). Earliest finish wins; ties go to the server with fewer of our
    jobs, then the name. One job alone, nothing reserved: Placement.plan() decides many at
    once. Server speeds are taken as given (e.g. an Estimator's)."""
    best: tuple[float, int, str] | None = None
    best_free = False
    for s in servers:
        if not _usable(s, now):
            continue
        speed = s.speed * (busy_factor if s.owner_busy else 1.0)
        start = _start(s, now, work / speed)
        key = (start + transfer_seconds(s, job_bytes) + work / speed, s.running, s.name)
        if best is None or key < best:
            best, best_free = key, start <= now
    if (
        local is not None
        and local.free > 0
        and (best is None or now + work / local.speed <= best[0])
    ):
        return LOCAL
    if best is None or not best_free:
        return None
    return best[2]


class Placement:
    """The policy's state: servers, our jobs in flight, the Estimator, back-off."""

    def __init__(
        self,
        estimator: Estimator | None = None,
        *,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        max_held: int | None = None,
    ) -> None:
        self.estimator = estimator or Estimator()
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_held = max_held  # plan() holds at most this many jobs (None: as EFT says)
        self.servers: dict[str, ServerView] = {}
        # key -> (server or LOCAL, bytes, kind, expected end, busy at dispatch)
        self.jobs: dict[Hashable, tuple[str, int, str, float, bool]] = {}
        # The servers fastest first (by speed as lowered while an owner is busy), kept in order
        # as speeds change rather than sorted per plan(): plan() runs per event, on hundreds.
        self._order: list[ServerView] = []
        self._order_keys: list[tuple[float, str]] = []
        self._key_of: dict[str, tuple[float, str]] = {}
        self._busy_factor = self.estimator.busy_factor
        # Free slots over all servers, kept up to date for the same reason; servers backed off
        # are subtracted when plan() runs.
        self._free_total = 0
        self._backed_off: set[str] = set()

    def _reorder(self, s: ServerView) -> None:
        """Put s where its speed now ranks it (after any change to its speed or busy flag)."""
        new = (-s.speed * (self.estimator.busy_factor if s.owner_busy else 1.0), s.name)
        old = self._key_of.get(s.name)
        if old == new:
            return
        if old is not None:
            i = bisect_left(self._order_keys, old)
            del self._order_keys[i], self._order[i]
        i = bisect_left(self._order_keys, new)
        self._order_keys.insert(i, new)
        self._order.insert(i, s)
        self._key_of[s.name] = new

    # --- what the proxy learns ---------------------------------------------------------------

    def update(self, report: ServerView) -> ServerView:
        """A server's load report (or its discovery): copies the reported fields, keeps ours.
        Change a known server's fields only through this and the on_* calls."""
        s = self.servers.get(report.name)
        if s is None:
            self.servers[report.name] = s = replace(report, ends=[], running=0)
            s.speed = self.estimator.speed(s.name, s.speed)
            self._free_total += _free(s)
            self._reorder(s)
            return s
        self._free_total -= _free(s)
        s.slots, s.rtt, s.bandwidth = report.slots, report.rtt, report.bandwidth
        s.queued, s.others, s.owner_busy, s.alive = (
            report.queued,
            report.others,
            report.owner_busy,
            report.alive,
        )
        s.speed = self.estimator.speed(s.name, report.speed)
        self._free_total += _free(s)
        self._reorder(s)
        return s

    def remove(self, name: str) -> None:
        s = self.servers.get(name)
        if s is not None:
            self._free_total -= _free(s)
            s.alive = False

    def on_dispatch(self, key: Hashable, where: str, job_bytes: int, kind: str, now: float) -> None:
        """A job was sent to a server (or started here: where=LOCAL)."""
        work = self.estimator.work(job_bytes, kind)
        s = self.servers.get(where)
        if s is None:
            self.jobs[key] = (where, job_bytes, kind, now + work, False)
            return
        speed = s.speed * (self.estimator.busy_factor if s.owner_busy else 1.0)
        end = now + transfer_seconds(s, job_bytes) + work / speed
        self._free_total -= _free(s)
        s.running += 1
        self._free_total += _free(s)
        insort(s.ends, end)
        self.jobs[key] = (where, job_bytes, kind, end, s.owner_busy)

    def on_finish(
        self,
        key: Hashable,
        now: float,
        seconds: float | None = None,
        local_speed: float = 1.0,
        busy: bool = False,
    ) -> None:
        """A job came back with its result; seconds: its compile time as the server measured it
        (None: unknown, nothing learned); busy: the server says its owner was busy meanwhile.
        The server is healthy again."""
        where, nbytes, kind, busy_then = self._release(key)
        s = self.servers.get(where)
        if s is not None:
            s.failures, s.retry_at = 0, 0.0
        if seconds is None:
            return
        if where == LOCAL:
            self.estimator.observe(None, nbytes, kind, seconds, local_speed)
        elif s is not None:
            busy = busy or busy_then or s.owner_busy
            self.estimator.observe(where, nbytes, kind, seconds, s.speed, busy)
            s.speed = self.estimator.speed(where, s.speed)
            self._reorder(s)

    def on_evicted(self, key: Hashable, now: float) -> None:
        """The server gave the job back unrun (its owner needs the machine): the proxy re-plans
        it. The server is busy until its next report says otherwise, with no slot to spare."""
        where, *_ = self._release(key)
        s = self.servers.get(where)
        if s is not None:
            self._free_total -= _free(s)
            s.owner_busy = True
            s.slots = min(s.slots, s.running + s.others)
            self._free_total += _free(s)
            self._reorder(s)

    def on_recovered(self, server: str) -> None:
        """The server answered after all (a connection it was given up on came late)."""
        s = self.servers.get(server)
        if s is not None:
            s.failures, s.retry_at = 0, 0.0

    def on_failure(self, server: str, now: float, key: Hashable | None = None) -> None:
        """The server failed (connection, protocol, crash): back off, doubling per failure in a
        row; the job (key), if any, is re-planned by the caller."""
        if key is not None:
            self._release(key)
        s = self.servers.get(server)
        if s is None:
            return
        s.failures += 1
        s.retry_at = now + min(self.max_backoff, self.backoff * 2 ** (s.failures - 1))
        self._backed_off.add(s.name)

    def _release(self, key: Hashable) -> tuple[str, int, str, bool]:
        where, nbytes, kind, end, busy = self.jobs.pop(key)
        s = self.servers.get(where)
        if s is not None:
            self._free_total -= _free(s)
            s.running -= 1
            self._free_total += _free(s)
            s.ends.remove(end)
        return where, nbytes, kind, busy

    # --- the decisions -----------------------------------------------------------------------

    def choose(
        self, job_bytes: int, kind: str = "", now: float = 0.0, local: LocalView | None = None
    ) -> str | None:
        """One job: a server's name, LOCAL, or None (hold it; ask again when something frees)."""
        got = self.plan([(None, job_bytes, kind)], now, local)
        return got[0][1] if got else None

    def plan(
        self,
        waiting: Sequence[tuple[Hashable, int, str]],
        now: float,
        local: LocalView | None = None,
    ) -> list[tuple[Hashable, str]]:
        """Decide the waiting jobs (key, preprocessed bytes, kind), oldest first. Returns the
        (key, server name or LOCAL) to start now; the others wait. Call on_dispatch for each
        one started, and plan again whenever something changes (a job ends, a report comes)."""
        if self.estimator.busy_factor != self._busy_factor:  # busy servers' speeds moved
            self._busy_factor = self.estimator.busy_factor
            for s in self.servers.values():
                if s.owner_busy:
                    self._reorder(s)
        # Servers fastest first, so that a job's scan stops at the first one too slow to beat
        # the best finish found so far, whatever its start.
        cands, keys = self._order, self._order_keys
        free_total = self._free_total
        for name in list(self._backed_off):
            s = self.servers[name]
            if s.retry_at <= now:
                self._backed_off.discard(name)
            else:
                free_total -= _free(s)
        local_free = local.free if local is not None else 0
        free_total += local_free
        # This round's dispatches per server, and per full server a heap of its slots' next
        # free times (reservations for held jobs included).
        sent: dict[int, list[float]] = {}
        timelines: dict[int, list[float]] = {}
        held = 0
        out: list[tuple[Hashable, str]] = []
        work_of = self.estimator.work
        # Biggest first (LPT): while the backlog is long the order changes nothing, and at the
        # end of a build it gives the longest jobs the fastest slots, where they matter most.
        jobs = sorted(
            ((work_of(b, k), i, key, b) for i, (key, b, k) in enumerate(waiting)),
            key=lambda t: (-t[0], t[1]),
        )
        for work, _, key, nbytes in jobs:
            if free_total <= 0 or (self.max_held is not None and held >= self.max_held):
                break
            best_fin = math.inf
            best_i = -1
            best_free = False
            for i, s in enumerate(cands):
                run = work / -keys[i][0]
                if now + run > best_fin:
                    break
                if not _usable(s, now):
                    continue
                free = False
                if i in timelines:
                    start = max(timelines[i][0], now)
                elif s.running + s.others + s.queued + len(sent.get(i, ())) < s.slots:
                    start, free = now, True
                else:
                    start = _start(s, now, run)
                fin = start + transfer_seconds(s, nbytes) + run
                if fin < best_fin or (
                    fin == best_fin
                    and (s.running, s.name) < (cands[best_i].running, cands[best_i].name)
                ):
                    best_fin, best_i, best_free = fin, i, free
            if local_free > 0 and now + work / local.speed <= best_fin:  # type: ignore[union-attr]
                out.append((key, LOCAL))
                local_free -= 1
                free_total -= 1
                continue
            if best_i < 0:
                break
            s = cands[best_i]
            typical = work / -keys[best_i][0]
            if best_free:
                out.append((key, s.name))
                free_total -= 1
                ends = sent.setdefault(best_i, [])
                ends.append(best_fin)
                if s.running + s.others + s.queued + len(ends) >= s.slots:
                    timelines[best_i] = _timeline(s, now, typical, ends)
                continue
            # Hold the job for the slot it wants; later jobs see that slot taken.
            line = timelines.get(best_i)
            if line is None:
                line = timelines[best_i] = _timeline(s, now, typical, sent.get(best_i, ()))
            heapq.heapreplace(line, best_fin)
            held += 1
        return out


def _timeline(s: ServerView, now: float, typical: float, sent: Iterable[float]) -> list[float]:
    """A full server's slots' next free times, as a heap: our jobs' expected ends (this round's
    dispatches included), other clients' jobs half done, then the server's queue served."""
    floor = now + typical * OVERRUN_SHARE
    line = sorted(
        [max(e, floor) for e in s.ends]
        + [max(e, now) for e in sent]
        + [now + typical * 0.5] * s.others
    )
    line = line[-s.slots :]  # more jobs than slots (slots just cut): the first ends free none
    line += [now] * (s.slots - len(line))
    heapq.heapify(line)
    for _ in range(s.queued):
        heapq.heapreplace(line, max(line[0], now) + typical)
    return line
