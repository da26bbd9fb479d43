"""Replay a real build's compile jobs over simulated compile farms and compare placement policies
and job models, and give the speed-up over a local build.

    scripts/simulate-farm [--seed N] [--seeds K] [--farms 10,50,100,500] [--client-cores 8,32]
                          [--jobs 5000] [--policies ours,distcc,...] [--json]
                          [--model preprocessed,sources] [--client-overhead 0.02]
                          [--blob-store host|connection]
    scripts/simulate-farm --record PROJECT [--repeat 3]    re-measure scripts/traces/PROJECT.json
    scripts/simulate-farm --record-sources PROJECT         add the include analysis's fields only

The jobs: scripts/traces/{zlib,lua5.4,re2}.json, every compile of a real build of those Debian
packages, timed on the machine each trace names (how: the traces' "method" field, and record()
below). A farm builds something bigger than the three, so the traces are concatenated in make's
order and the whole repeated until the build has --jobs jobs (the output says how many copies).
Two job models (--model; both by default, every policy under each):
  preprocessed  distcc's, and jailcc's classic jobs: the client preprocesses and sends the
                preprocessed file.
    client: its measured preprocessing CPU time (-E) + CLIENT_OVERHEAD, on a client core
    remote: its measured CPU time compiling the preprocessed file, divided by the host's speed,
            after sending its input (rtt/2 + bytes x INPUT_WIRE / bandwidth) and before its
            object comes back
    local:  the same compile on a client core, at the client's speed (1.0, the reference)
  sources       tree jobs (client/tree.py, issue 11): the per-user proxy's include analysis
                lists the files the compile reads, and the host gets the ones its toolchain
                image lacks, content-addressed.
    client: the measured CPU time of that job's analysis (analysis_cpu_seconds: one
            IncludeAnalyzer for the whole build, as warm as at that point of the build, its
            hashing included) + CLIENT_OVERHEAD. The analysis may have been timed on another
            machine than the rest of the trace (--record-sources), so it is divided by the
            trace's compile_cpu_ratio (the same compiles' CPU time on that machine over their
            cpu_seconds).
    remote: the user's own compile from source as make ran it (cpu_seconds: preprocessing and
            compiling, now on the server), divided by the host's speed, after sending the JOB
            header (tree_header_bytes: the tree's and the image's digests, uncompressed) and the
            blobs that host has not received yet in this run, which costs a round trip more (the
            server's NEED, the client's BLOBS): rtt/2 + header over the bandwidth, or rtt/2 +
            rtt + (header + new blobs) over the bandwidth. A blob goes at its LZ4 size, plus
            its digest in NEED and BLOBS. Each host keeps the set of blobs it was sent (with
            --blob-store connection, each of the client's connections to it keeps its own, as
            each connection's jail has its own store in jailccd). Every copy of a trace is a
            project of its own (its blobs are new to every host) and hosts start empty: the
            first jobs on a host pay for its headers, later ones only for what is new.
    local:  the user's compile on a client core (cpu_seconds).
    A job the analysis could not bound ships preprocessed output after its analysis (none in
    the current traces). The policies weigh a tree job by the size of every file the analysis
    lists (analysed_bytes, as the proxy does: TreeJob.size).
The local build, the speed-ups' reference: make -j on the client's cores alone, each compile as
make ran it (cpu_seconds), in make's order, on the first free core.
CPU times rather than wall-clock: other work on the recording machine inflates them less.
Compiles only: links and make's dependency order are not modelled (every job is ready as soon as
make has a free -j slot). A job's kind, which the cost model may use, is its compiler and its
source's directory: what a proxy sees.

The farm (seeded): hosts of three kinds (20% build servers, 60% desktops, 20% old desktops and
laptops) with speeds 0.5-3x, 2-32 slots, their own rtt and bandwidth, and an advertised speed
(their benchmark: the true speed with a 20% error). A share of the desktops and old ones have
owners who come and go (busy about 20 s, away about 60 s): while an owner is busy, the host
offers a quarter of its slots, runs our jobs at half speed, and hands back at once the jobs
beyond those slots (running ones lose their work); the client re-places them, nothing is lost.
A host refuses a job that arrives when all the slots it offers are taken (admission: clients
cannot overbook it); the client re-places that one too. Hosts push a load report every
REPORT_INTERVAL seconds and whenever their slots change; it reaches the client rtt/2 later.

The client runs make -j N (N: twice the farm's slots): N jobs in flight at most, each first
preprocessed (or analysed: its client cost, either model) on one of the client's cores (FIFO),
then placed by the policy under test:
  ours      client/placement.py, imported: earliest estimated finish, biggest job first, job
            costs and host speeds learned from its own jobs, starting from the advertised
            speeds; it sees the load reports, its own dispatches and their results, never the
            future. Its local compiles run at nice 19 (preprocessing always comes first).
  distcc    the host list in the order a user wrote it (random here, localhost/2 last), each
            host's full slots, fixed: the first host with a free slot by its own count. A host
            that gives a job back is backed off for 60 s, as distcc does after a failure.
  icecream  its scheduler's "fastest" rule (icecream/scheduler/scheduler.cpp) with central
            knowledge of every job: among hosts with a free slot and load under 1000, the best
            speed x (1000 - load) / 1000 x (1 - jobs / 2 slots), the speed being what icecream
            measures (object bytes per compile second, last 200 jobs; hosts without a figure
            tried first); load from the same reports (the owner's share of the host, per mille).
            The client's machine is a candidate too, with icecream's submitter rule (x0.1 when
            its clients outnumber its cores). A host that hands a job back is skipped until it
            reports again.
  random    a uniformly random host with a free slot by its own count (localhost/2 included),
            with distcc's back-off: distcc --randomize.
  ours+     not a real system: ours told every job's cost and every host's true speed.
  icecream+ not a real system: icecream's rule told every host's true speed from the start.
Every policy re-places the jobs a host hands back by its own rule. Baselines' local compiles
compete with preprocessing for the client's cores (FIFO, no nice).

The lower bound on the makespan, for each job model, is the largest of:
  client  every job is preprocessed (or analysed) on the client's cores: sum(the model's client
          costs) / cores, plus the least time any job needs after that (transfer, compile on
          its best host; a tree job's transfer counts its header alone, as if the host held
          every blob).
          With make's order: job j cannot start preprocessing before make's earlier jobs have
          (FIFO), i.e. before (their client costs - (cores - 1) x the largest) / cores; then it
          needs its own preprocessing and its best compile.
  work    all compile work must be done by the farm's capacity over time (sum over hosts of
          speed x slots offered: half the speed and a quarter of the slots while an owner is
          busy, exactly as this run's owners come and go) plus the client's cores left over
          from preprocessing: the first T at which that capacity integrates to the total work.
          Also per suffix of make's order (every 1%): its work cannot start before its first
          job can have been preprocessed, and then has at most the farm and every client core.
  job     the longest single job: its preprocessing, then its compile on the best host.
It treats work as divisible across slots and ignores waiting for slots, transfers (but for the
client and job terms), make's -j limit and the work that evictions lose, so no schedule reaches
it: a ratio to it bounds how far from optimal a policy can be, not how far it is.

The output: per job model, every policy's makespan as a ratio to that model's bound; then the
speed-up over the local build (local build / makespan) of distcc's model (the distcc policy,
preprocessed jobs), of ours with preprocessed jobs and of ours with tree jobs, each with its
ratio to its own bound, and the speed-up each model's bound allows. Not modelled: the client's
own network link (all transfers run at the host's bandwidth at once), contention on a host's
link, the server's work laying out a tree, blobs a host kept from an earlier build.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import math
import os
import platform
import random
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRACES = HERE / "traces"
PROJECTS = ("zlib", "lua5.4", "re2")
try:
    from jailcc.client import placement
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(HERE.parent))
    import client.placement as placement  # type: ignore[no-redef]

CLIENT_OVERHEAD = 0.02  # s of client CPU per job beyond -E: jailcc's start, lz4, the request
CLIENT_CORES = 8
LOCALHOST_SLOTS = 2  # distcc's and random's "localhost/2"
REPORT_INTERVAL = 1.0
BUSY_SLOTS_SHARE = 0.25  # a busy owner's host keeps this share of its slots
BUSY_SPEED = 0.5  # and runs our jobs at this share of its speed
INPUT_WIRE = 0.3  # lz4 on preprocessed source
NEED_BYTES = 2 * 74  # per blob a server lacks: its digest in NEED and again in BLOBS
MODELS = ("preprocessed", "sources")
BLOB_STORES = ("host", "connection")
OUTPUT_WIRE = 0.5  # lz4 on objects
ADVERTISED_ERROR = 0.2  # a host's benchmark against its true speed (log-normal sigma)
DISTCC_BACKOFF = 60.0


# --- the build -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Job:
    idx: int
    name: str
    kind: str  # its compiler and directory, e.g. "g++-12 re2/re2/testing"
    work: float  # reference seconds of compiling, remote or local: see make_build
    input_bytes: int  # what the policy weighs the job by (and the preprocessed model sends)
    object_bytes: int
    client_cost: float  # reference seconds on a client core before the job can be placed
    # The sources model: the blobs of its tree (id in this build, bytes on the wire) and the
    # JOB header; None: it ships its preprocessed input (input_bytes, INPUT_WIRE).
    blobs: tuple[tuple[int, int], ...] | None = None
    header_bytes: int = 0
    compile_cost: float = 0.0  # the compile as make ran it, for the local build (0: unknown)


def load_traces(names: Sequence[str] = PROJECTS) -> list[dict]:
    return [json.loads((TRACES / f"{n}.json").read_text()) for n in names]


def make_build(
    traces: Sequence[dict],
    target_jobs: int,
    model: str = "preprocessed",
    overhead: float = CLIENT_OVERHEAD,
) -> tuple[list[Job], int]:
    """The traces concatenated in make's order, repeated up to target_jobs; (jobs, copies).

    model "preprocessed" (distcc's, jailcc's classic jobs): the client preprocesses (client
    cost: cpp_cpu_seconds + CLIENT_OVERHEAD) and sends the preprocessed file; the work, remote
    or local, is compiling it (remote_cpu_seconds). Model "sources" (tree jobs): the client
    runs the include analysis (analysis_cpu_seconds, scaled to the machine that timed the rest
    of the trace, + CLIENT_OVERHEAD) and sends the tree's blobs a host lacks; the work is the
    user's own compile from source (cpu_seconds); jobs the analysis could not bound ship
    preprocessed output after it. Each copy of a trace is a project of its own: its blobs are
    new to every host."""
    if model not in MODELS:
        raise ValueError(f"unknown job model {model!r}: one of {', '.join(MODELS)}")
    # A job's kind, for the cost model: its compiler and its directory, which a proxy knows.
    one = [
        (j, f"{j['driver']} {t['project']}/{os.path.dirname(j['name'].split(' -> ')[0])}", ti)
        for ti, t in enumerate(traces)
        for j in t["jobs"]
    ]
    blob_wire = [[b[2] for b in t.get("tree_blobs", ())] for t in traces]
    offsets = [sum(len(w) for w in blob_wire[:ti]) for ti in range(len(traces))]
    per_copy = sum(len(w) for w in blob_wire)
    ratios = [t.get("sources_recording", {}).get("compile_cpu_ratio", 1.0) for t in traces]
    copies = max(1, math.ceil(target_jobs / len(one)))
    jobs = []
    for c in range(copies):
        for j, kind, ti in one:
            cpp = j.get("cpp_cpu_seconds", j["cpp_seconds"])
            job = Job(
                idx=len(jobs),
                name=f"{j['name']} #{c}",
                kind=kind,
                work=j["remote_cpu_seconds"],
                input_bytes=j["input_bytes"],
                object_bytes=j["object_bytes"],
                client_cost=cpp + overhead,
                compile_cost=j["cpu_seconds"],
            )
            if model == "sources":
                if "analysis_cpu_seconds" not in j:
                    raise SystemExit(
                        f"{j['name']}: no include analysis in its trace "
                        "(scripts/simulate-farm --record-sources PROJECT)"
                    )
                analysis = j["analysis_cpu_seconds"] / ratios[ti]
                if "tree_unsupported" in j:  # preprocessed after all, once the analysis said so
                    job.client_cost += analysis
                else:
                    base = c * per_copy + offsets[ti]
                    job.client_cost = analysis + overhead
                    job.work = j["cpu_seconds"]
                    job.input_bytes = j["analysed_bytes"]  # TreeJob.size: what the proxy passes
                    job.blobs = tuple(
                        (base + d, blob_wire[ti][d]) for d in dict.fromkeys(j["tree_digests"])
                    )
                    job.header_bytes = j["tree_header_bytes"]
            jobs.append(job)
    return jobs, copies


def local_build(jobs: Sequence[Job], cores: int) -> float:
    """The build without a farm: make -j CORES on the client, every compile as make ran it (no
    jailcc), in make's order on the first free core."""
    free = [0.0] * cores
    for j in jobs:
        t = heapq.heappop(free)
        heapq.heappush(free, t + (j.compile_cost or j.client_cost + j.work))
    return max(free)


def send_seconds(job: Job, h: Host, stored: set[int] | None) -> tuple[float, int]:
    """The time from dispatch to the job's arrival on host h and the bytes sent; a tree job's
    blobs the host lacks (not in stored, which this adds them to) cost a round trip more: the
    server's NEED, the client's BLOBS."""
    if job.blobs is None:
        nbytes = job.input_bytes * INPUT_WIRE
        return h.rtt / 2 + nbytes / h.bandwidth, round(nbytes)
    new = [(b, wire) for b, wire in job.blobs if stored is None or b not in stored]
    nbytes = job.header_bytes
    t = h.rtt / 2
    if new:
        if stored is not None:
            stored.update(b for b, _ in new)
        nbytes += sum(wire for _, wire in new) + NEED_BYTES * len(new)
        t += h.rtt
    return t + nbytes / h.bandwidth, nbytes


# --- the farm ------------------------------------------------------------------------------------


@dataclass
class Host:
    idx: int
    name: str
    kind: str
    speed: float
    slots: int
    rtt: float
    bandwidth: float  # bytes/s
    advertised_speed: float
    busy_changes: list[float] = field(default_factory=list)  # owner arrives, leaves, arrives...
    # state during a run
    busy: bool = False
    eff_slots: int = 0
    running: list[Run] = field(default_factory=list)
    rate: float = 0.0
    last_update: float = 0.0


@dataclass(slots=True)
class Run:
    job: Job
    remaining: float  # reference seconds still to do
    started: float
    version: int = 0


HOST_KINDS = (
    # kind, share, slots, speed range, rtt range (s), bandwidth range (bytes/s), owner?
    ("server", 0.2, (16, 24, 32), (1.2, 3.0), (0.0002, 0.0005), (1.25e8, 1.25e9), False),
    ("desktop", 0.6, (4, 8, 12, 16), (0.7, 2.0), (0.0003, 0.001), (1.25e8, 1.25e8), True),
    ("old", 0.2, (2, 4), (0.5, 1.0), (0.001, 0.005), (2.5e6, 1.25e7), True),
)


def make_farm(n: int, seed: int, busy_share: float, horizon: float = 20000.0) -> list[Host]:
    """n hosts; busy_share of all hosts (desktops and old ones only) have owners who are busy
    for exponential spells (mean 20 s) between exponential idle spells (mean 60 s)."""
    rng = random.Random(f"farm:{seed}:{n}")
    kinds = [k for k in HOST_KINDS for _ in range(round(k[1] * n))]
    while len(kinds) < n:
        kinds.append(HOST_KINDS[1])
    kinds = kinds[:n]
    rng.shuffle(kinds)  # the host list's order has nothing to do with speed

    def logu(lo: float, hi: float) -> float:
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))

    hosts = []
    for i, (kind, _share, slots, speeds, rtts, bws, _owner) in enumerate(kinds):
        speed = logu(*speeds)
        hosts.append(
            Host(
                idx=i,
                name=f"{kind}{i:03d}",
                kind=kind,
                speed=speed,
                slots=rng.choice(slots),
                rtt=logu(*rtts),
                bandwidth=logu(*bws),
                advertised_speed=speed * math.exp(rng.gauss(0, ADVERTISED_ERROR)),
            )
        )
    owners = [h for h, k in zip(hosts, kinds, strict=True) if k[6]]
    for h in rng.sample(owners, min(len(owners), round(busy_share * n))):
        t, busy = 0.0, rng.random() < 0.25  # a quarter start with the owner at work
        if busy:
            h.busy_changes.append(0.0)
        while t < horizon:
            t += rng.expovariate(1 / 20.0) if busy else rng.expovariate(1 / 60.0)
            h.busy_changes.append(t)
            busy = not busy
    return hosts


def busy_slots(h: Host) -> int:
    return int(h.slots * BUSY_SLOTS_SHARE)


# --- the policies --------------------------------------------------------------------------------

LOCAL = -1  # a decision: compile on the client


@dataclass(slots=True)
class Report:
    """A host's load report as the client receives it."""

    host: int
    slots: int  # offered now
    running: int
    owner_busy: bool
    load: int  # per mille of the host's CPU the owner takes (icecream's "load")


class Policy:
    name = ""
    nice_local = False  # its local compiles run at nice 19: preprocessing always comes first

    def __init__(
        self, hosts: list[Host], client_cores: int, seed: int, jobs: Sequence[Job]
    ) -> None:
        self.hosts = hosts
        self.client_cores = client_cores
        self.jobs = jobs
        self.mine = [0] * len(hosts)  # our jobs per host (dispatched, not back)
        self.local = 0
        self.clients = 0  # jobs make has in flight (set before each plan)

    def plan(self, now: float, waiting: list[Job], local_free: int) -> list[tuple[Job, int]]:
        raise NotImplementedError

    def dispatched(self, job: Job, host: int, now: float) -> None:
        if host == LOCAL:
            self.local += 1
        else:
            self.mine[host] += 1

    def finished(self, job: Job, host: int, now: float, seconds: float, busy: bool) -> None:
        if host == LOCAL:
            self.local -= 1
        else:
            self.mine[host] -= 1

    def evicted(self, job: Job, host: int, now: float) -> None:
        self.mine[host] -= 1

    def report(self, r: Report, now: float) -> None:
        pass


class Ours(Policy):
    name = "ours"
    nice_local = True

    def __init__(
        self, hosts: list[Host], client_cores: int, seed: int, jobs: Sequence[Job]
    ) -> None:
        super().__init__(hosts, client_cores, seed, jobs)
        self.p = placement.Placement()
        self.index = {h.name: h.idx for h in hosts}
        for h in hosts:  # discovery: advertised speed and slots; rtt and bandwidth measured
            self.p.update(self._view(h, h.slots, False))

    @staticmethod
    def _view(h: Host, slots: int, busy: bool) -> placement.ServerView:
        return placement.ServerView(
            h.name,
            slots=slots,
            speed=h.advertised_speed,
            rtt=h.rtt,
            bandwidth=h.bandwidth,
            owner_busy=busy,
        )

    def plan(self, now: float, waiting: list[Job], local_free: int) -> list[tuple[Job, int]]:
        local = placement.LocalView(slots=local_free, running=0)
        got = self.p.plan([(j, j.input_bytes, j.kind) for j in waiting], now, local)
        return [(j, LOCAL if w == placement.LOCAL else self.index[w]) for j, w in got]

    def dispatched(self, job: Job, host: int, now: float) -> None:
        super().dispatched(job, host, now)
        where = placement.LOCAL if host == LOCAL else self.hosts[host].name
        self.p.on_dispatch(job.idx, where, job.input_bytes, job.kind, now)

    def finished(self, job: Job, host: int, now: float, seconds: float, busy: bool) -> None:
        super().finished(job, host, now, seconds, busy)
        self.p.on_finish(job.idx, now, seconds, busy=busy)

    def evicted(self, job: Job, host: int, now: float) -> None:
        super().evicted(job, host, now)
        self.p.on_evicted(job.idx, now)

    def report(self, r: Report, now: float) -> None:
        self.p.update(self._view(self.hosts[r.host], r.slots, r.owner_busy))


class _Knowing(placement.Estimator):
    """An Estimator told the truth: every job's cost (by its size and kind, averaged over the
    jobs that share them) and every host's speed; it learns nothing."""

    def __init__(self, costs: dict[tuple[int, str], float]) -> None:
        super().__init__()
        self.costs = costs

    def work(self, job_bytes: int, kind: str = "") -> float:
        got = self.costs.get((job_bytes, kind))
        return got if got is not None else super().work(job_bytes, kind)

    def observe(self, server: str | None, *args: object, **kwargs: object) -> None:
        pass


class OursKnowing(Ours):
    """Not a real system: our rule told every job's cost and every host's true speed, to show
    what estimation costs and what is left to the lower bound's slack."""

    name = "ours+"

    def __init__(
        self, hosts: list[Host], client_cores: int, seed: int, jobs: Sequence[Job]
    ) -> None:
        super().__init__(hosts, client_cores, seed, jobs)
        by_key: dict[tuple[int, str], list[float]] = {}
        for j in self.jobs:
            by_key.setdefault((j.input_bytes, j.kind), []).append(j.work)
        est = _Knowing({k: sum(v) / len(v) for k, v in by_key.items()})
        for h in hosts:
            est.speeds[h.name] = [math.log(h.speed), 0.0]
        self.p = placement.Placement(est)
        for h in hosts:
            self.p.update(self._view(h, h.slots, False))


class Distcc(Policy):
    name = "distcc"

    def __init__(
        self, hosts: list[Host], client_cores: int, seed: int, jobs: Sequence[Job]
    ) -> None:
        super().__init__(hosts, client_cores, seed, jobs)
        self.retry_at = [0.0] * len(hosts)

    def plan(self, now: float, waiting: list[Job], local_free: int) -> list[tuple[Job, int]]:
        out = []
        i = 0  # hosts before i are full for this round
        for job in waiting:
            while i < len(self.hosts) and (
                self.mine[i] >= self.hosts[i].slots or self.retry_at[i] > now
            ):
                i += 1
            if i < len(self.hosts):
                out.append((job, i))
                self.mine[i] += 1  # counted now so the scan sees it; undone in dispatched()
            elif self.local < LOCALHOST_SLOTS:
                out.append((job, LOCAL))
                self.local += 1
            else:
                break
        for _job, h in out:
            if h == LOCAL:
                self.local -= 1
            else:
                self.mine[h] -= 1
        return out

    def evicted(self, job: Job, host: int, now: float) -> None:
        super().evicted(job, host, now)
        self.retry_at[host] = now + DISTCC_BACKOFF


class Random(Distcc):
    name = "random"

    def __init__(
        self, hosts: list[Host], client_cores: int, seed: int, jobs: Sequence[Job]
    ) -> None:
        super().__init__(hosts, client_cores, seed, jobs)
        self.rng = random.Random(f"random-policy:{seed}")

    def plan(self, now: float, waiting: list[Job], local_free: int) -> list[tuple[Job, int]]:
        free = [
            h.idx for h in self.hosts if self.mine[h.idx] < h.slots and self.retry_at[h.idx] <= now
        ]
        extra: dict[int, int] = {}
        local = LOCALHOST_SLOTS - self.local
        out = []
        for job in waiting:
            n = len(free) + max(local, 0)
            if n == 0:
                break
            k = self.rng.randrange(n)
            if k >= len(free):
                out.append((job, LOCAL))
                local -= 1
                continue
            h = free[k]
            out.append((job, h))
            extra[h] = extra.get(h, 0) + 1
            if self.mine[h] + extra[h] >= self.hosts[h].slots:
                free[k] = free[-1]
                free.pop()
        return out


class Icecream(Policy):
    """icecream's scheduler, "fastest" strategy (icecream/scheduler/scheduler.cpp), with the
    speed it measures: output bytes per compile second over a host's last 200 jobs (jobs with
    less than 4 KiB of output ignored, one job moving it by 20% at most), optimistic for hosts
    with fewer than 7 jobs, and hosts it has no figure for yet tried first."""

    name = "icecream"

    def __init__(
        self, hosts: list[Host], client_cores: int, seed: int, jobs: Sequence[Job]
    ) -> None:
        super().__init__(hosts, client_cores, seed, jobs)
        self.load = [0] * len(hosts)
        self.full = [False] * len(hosts)  # gave a job back: full until it reports again
        n = len(hosts) + 1  # the last one is the client's own machine
        self.stats: list[deque[tuple[float, float]]] = [deque(maxlen=200) for _ in range(n)]
        self.sums = [[0.0, 0.0] for _ in range(n)]

    def speed(self, i: int) -> float:
        """Relative speed; inf: no figure yet."""
        out, secs = self.sums[i]
        if not self.stats[i] or secs <= 0:
            return math.inf
        f = out / secs / 1e6
        n = len(self.stats[i])
        return f * (4.5 - 0.5 * n) if n < 7 else f

    def plan(self, now: float, waiting: list[Job], local_free: int) -> list[tuple[Job, int]]:
        out = []
        extra = [0] * len(self.hosts)
        local_extra = 0
        clients = self.clients
        speeds = [self.speed(h.idx) for h in self.hosts]
        local_speed = self.speed(len(self.hosts))
        for job in waiting:
            best, best_score = None, 0.0
            for h in self.hosts:
                cur = self.mine[h.idx] + extra[h.idx]
                if cur >= h.slots or self.load[h.idx] >= 1000 or self.full[h.idx]:
                    continue
                if speeds[h.idx] == math.inf:
                    best = h.idx
                    break
                load = (1000 - self.load[h.idx]) / 1000
                score = speeds[h.idx] * load * (1 - 0.5 * cur / h.slots)
                if score > best_score:
                    best, best_score = h.idx, score
            cur = self.local + local_extra
            if cur < self.client_cores and (best is None or speeds[best] < math.inf):
                # The submitter itself, with icecream's penalty when its clients outnumber it.
                f = 1.0
                if clients > self.client_cores:
                    f = 0.1
                elif clients == self.client_cores:
                    f = 0.8
                elif clients <= self.client_cores // 2:
                    f = 1.1
                score = min(local_speed, 1e9) * f * (1 - 0.5 * cur / self.client_cores)
                if score > best_score:
                    best, best_score = LOCAL, score
            if best is None:
                break
            out.append((job, best))
            if best == LOCAL:
                local_extra += 1
            else:
                extra[best] += 1
        return out

    def finished(self, job: Job, host: int, now: float, seconds: float, busy: bool) -> None:
        super().finished(job, host, now, seconds, busy)
        i = len(self.hosts) if host == LOCAL else host
        if job.object_bytes < 4096 or seconds <= 0:
            return
        nbytes = float(job.object_bytes)
        if len(self.stats[i]) >= 7:  # smooth spikes: one job moves the speed 20% at most
            cur = self.sums[i][0] / self.sums[i][1]
            nbytes = min(max(nbytes, cur / 1.2 * seconds), cur * 1.2 * seconds)
        if len(self.stats[i]) == self.stats[i].maxlen:
            old_out, old_secs = self.stats[i][0]
            self.sums[i][0] -= old_out
            self.sums[i][1] -= old_secs
        self.stats[i].append((nbytes, seconds))
        self.sums[i][0] += nbytes
        self.sums[i][1] += seconds

    def evicted(self, job: Job, host: int, now: float) -> None:
        super().evicted(job, host, now)
        self.full[host] = True

    def report(self, r: Report, now: float) -> None:
        self.load[r.host] = r.load
        self.full[r.host] = False


class IcecreamTrueSpeed(Icecream):
    """Not a real system: icecream's rule knowing every host's true speed from the start."""

    name = "icecream+"

    def speed(self, i: int) -> float:
        return self.hosts[i].speed if i < len(self.hosts) else 1.0


POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (Ours, Distcc, Icecream, Random, OursKnowing, IcecreamTrueSpeed)
}


# --- the simulation ------------------------------------------------------------------------------

# Event kinds, in the order they are handled at equal times.
BUSY, ARRIVE, RUN_DONE, REPORT, AT_CLIENT, PRE_DONE, LOCAL_DONE, NICE_DONE, RESULT, EVICTED = range(
    10
)


@dataclass
class Outcome:
    policy: str
    makespan: float
    remote: int = 0
    local: int = 0
    evicted: int = 0
    lost_work: float = 0.0  # reference seconds of work thrown away by evictions
    refused: int = 0  # jobs a host refused: all the slots it offered were taken
    sent_bytes: int = 0  # to the hosts: preprocessed inputs, or tree headers and blobs
    blobs_sent: int = 0
    plan_seconds: float = 0.0  # CPU time the policy took to decide


class Sim:
    def __init__(
        self,
        jobs: list[Job],
        hosts: list[Host],
        policy_cls: type[Policy],
        client_cores: int,
        make_jobs: int,
        seed: int,
        blob_store: str = "host",
    ) -> None:
        self.jobs = jobs
        self.hosts = hosts
        self.cores = client_cores
        self.make_jobs = make_jobs
        self.policy = policy_cls(hosts, client_cores, seed, jobs)
        self.out = Outcome(policy_cls.name, 0.0)
        self.events: list[tuple[float, int, int, object]] = []
        self.seq = 0
        if blob_store not in BLOB_STORES:
            raise ValueError(f"blob_store: one of {', '.join(BLOB_STORES)}")
        # The blobs a tree job's host holds: one store per host ("host"), or one per connection
        # ("connection": the jail's, client/pool.py's connections, the idle ones taken last in
        # first out, a new one when none is idle, back when the job's answer or refusal comes).
        self.per_connection = blob_store == "connection"
        self.stored: list[set[int]] = [set() for _ in hosts]
        self.idle_stores: list[list[set[int]]] = [[] for _ in hosts]
        self.job_store: dict[int, set[int]] = {}
        for h in hosts:
            h.busy, h.eff_slots, h.running = False, h.slots, []
            h.rate, h.last_update = h.speed, 0.0

    def push(self, t: float, kind: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, payload))

    # --- hosts ---

    def _advance(self, h: Host, now: float) -> None:
        for r in h.running:
            r.remaining -= (now - h.last_update) * h.rate
        h.last_update = now

    def _schedule(self, h: Host, r: Run, now: float) -> None:
        r.version += 1
        self.push(now + max(r.remaining, 0.0) / h.rate, RUN_DONE, (h, r, r.version))

    def _report(self, h: Host, now: float) -> None:
        load = round(1000 * (1 - h.eff_slots / h.slots))  # the owner's share of the CPU
        r = Report(h.idx, h.eff_slots, len(h.running), h.busy, load)
        self.push(now + h.rtt / 2, AT_CLIENT, r)

    def _busy(self, h: Host, now: float, busy: bool) -> None:
        self._advance(h, now)
        h.busy = busy
        h.eff_slots = busy_slots(h) if busy else h.slots
        h.rate = h.speed * (BUSY_SPEED if busy else 1.0)
        if busy:
            # Give back the newest runs beyond the slots left (the least work lost).
            h.running.sort(key=lambda r: r.started)
            while len(h.running) > h.eff_slots:
                r = h.running.pop()
                r.version += 1  # cancels its RUN_DONE
                self.out.lost_work += r.job.work - r.remaining
                self.out.evicted += 1
                self.push(now + h.rtt / 2, EVICTED, (r.job, h.idx))
        for r in h.running:
            self._schedule(h, r, now)
        self._report(h, now)

    # --- the client ---

    def run(self) -> Outcome:
        for h in self.hosts:
            for k, t in enumerate(h.busy_changes):
                self.push(t, BUSY, (h, k % 2 == 0))
            phase = (h.idx * 0.618) % 1.0 * REPORT_INTERVAL
            self.push(phase, REPORT, h)
        pending = list(reversed(self.jobs))  # make's order; pop() takes the next
        pre_queue: list[Job] = []  # waiting for a client core (FIFO)
        local_queue: list[Job] = []  # placed here, waiting for a core
        cores_busy = 0  # by preprocessing and local compiles at normal priority
        niced: list[Run] = []  # local compiles at nice 19, oldest first: on the cores left
        niced_active = 0  # how many of them have a core now
        niced_since = 0.0
        waiting: list[tuple[int, Job]] = []  # preprocessed, waiting for placement (heap by idx)
        in_flight = 0
        done = 0
        now = 0.0
        policy = self.policy

        def feed() -> None:
            nonlocal in_flight
            while pending and in_flight < self.make_jobs:
                pre_queue.append(pending.pop())
                in_flight += 1

        def use_cores() -> None:
            nonlocal cores_busy
            while cores_busy < self.cores and (local_queue or pre_queue):
                cores_busy += 1
                if local_queue:  # a placed compile first: its make slot is waiting on it
                    job = local_queue.pop(0)
                    self.push(now + job.work, LOCAL_DONE, job)
                else:
                    job = pre_queue.pop(0)
                    self.push(now + job.client_cost, PRE_DONE, job)

        def renice() -> None:
            # Progress of the niced compiles since the last change, then the cores they get now.
            nonlocal niced_active, niced_since
            for r in niced[:niced_active]:
                r.remaining -= now - niced_since
            niced_since = now
            niced_active = min(len(niced), max(0, self.cores - cores_busy))
            for k, r in enumerate(niced):
                r.version += 1
                if k < niced_active:
                    self.push(now + max(r.remaining, 0.0), NICE_DONE, (r, r.version))

        feed()
        use_cores()
        while done < len(self.jobs):
            now, kind, _, payload = heapq.heappop(self.events)
            if kind == BUSY:
                h, busy = payload  # type: ignore[misc]
                self._busy(h, now, busy)
            elif kind == REPORT:
                h = payload  # type: ignore[assignment]
                self._report(h, now)
                self.push(now + REPORT_INTERVAL, REPORT, h)
            elif kind == ARRIVE:
                job, h = payload  # type: ignore[misc]
                r = Run(job, job.work, now)
                self._advance(h, now)
                if len(h.running) < h.eff_slots:
                    h.running.append(r)
                    self._schedule(h, r, now)
                else:
                    self.out.refused += 1
                    self.push(now + h.rtt / 2, EVICTED, (job, h.idx))
            elif kind == RUN_DONE:
                h, r, version = payload  # type: ignore[misc]
                if version != r.version:
                    continue
                self._advance(h, now)
                h.running.remove(r)
                back = h.rtt / 2 + r.job.object_bytes * OUTPUT_WIRE / h.bandwidth
                self.push(now + back, RESULT, (r.job, h.idx, now - r.started, h.busy))
            elif kind == AT_CLIENT:
                policy.report(payload, now)  # type: ignore[arg-type]
            elif kind == PRE_DONE:
                job = payload  # type: ignore[assignment]
                cores_busy -= 1
                heapq.heappush(waiting, (job.idx, job))
            elif kind == LOCAL_DONE:
                job = payload  # type: ignore[assignment]
                cores_busy -= 1
                policy.finished(job, LOCAL, now, job.work, False)
                done += 1
                in_flight -= 1
                self.out.local += 1
            elif kind == NICE_DONE:
                r, version = payload  # type: ignore[misc]
                if version != r.version:
                    continue
                for q in niced[:niced_active]:  # progress up to now, before the list changes
                    q.remaining -= now - niced_since
                niced_since = now
                niced.remove(r)
                niced_active -= 1
                policy.finished(r.job, LOCAL, now, r.job.work, False)
                done += 1
                in_flight -= 1
                self.out.local += 1
            elif kind == RESULT:
                job, hi, seconds, busy = payload  # type: ignore[misc]
                if self.per_connection:
                    self.idle_stores[hi].append(self.job_store.pop(job.idx))
                policy.finished(job, hi, now, seconds, busy)
                done += 1
                in_flight -= 1
                self.out.remote += 1
            elif kind == EVICTED:
                job, hi = payload  # type: ignore[misc]
                if self.per_connection:
                    self.idle_stores[hi].append(self.job_store.pop(job.idx))
                policy.evicted(job, hi, now)
                heapq.heappush(waiting, (job.idx, job))
            # Decide once all that happens at this instant has happened.
            if self.events and self.events[0][0] == now:
                continue
            feed()
            use_cores()
            if waiting:
                local_free = max(0, self.cores - cores_busy - len(niced))
                policy.clients = in_flight
                t0 = time.process_time()
                order = [j for _, j in sorted(waiting)]
                decided = policy.plan(now, order, local_free)
                self.out.plan_seconds += time.process_time() - t0
                if decided:
                    taken = {j.idx for j, _ in decided}
                    waiting = [(i, j) for i, j in waiting if i not in taken]
                    heapq.heapify(waiting)
                for job, hi in decided:
                    policy.dispatched(job, hi, now)
                    if hi == LOCAL and policy.nice_local:
                        niced.append(Run(job, job.work, now))
                    elif hi == LOCAL:
                        local_queue.append(job)
                    else:
                        h = self.hosts[hi]
                        store = self.stored[hi]
                        if self.per_connection:
                            idle = self.idle_stores[hi]
                            store = self.job_store[job.idx] = idle.pop() if idle else set()
                        held = len(store)
                        send, nbytes = send_seconds(job, h, store)
                        self.out.sent_bytes += nbytes
                        self.out.blobs_sent += len(store) - held
                        self.push(now + send, ARRIVE, (job, h))
            use_cores()
            renice()
        self.out.makespan = now
        return self.out


# --- the lower bound -----------------------------------------------------------------------------


def best_after_preprocessing(job: Job, hosts: Sequence[Host]) -> float:
    """The least time a job needs once preprocessed (or analysed): here, or on its best host at
    full speed (a tree job's host may hold every blob already: its header alone)."""
    best = job.work  # the client's speed is 1.0
    sent = job.input_bytes * INPUT_WIRE if job.blobs is None else job.header_bytes
    wire = sent + job.object_bytes * OUTPUT_WIRE
    for h in hosts:
        best = min(best, h.rtt + wire / h.bandwidth + job.work / h.speed)
    return best


def lower_bound(jobs: Sequence[Job], hosts: Sequence[Host], cores: int) -> dict[str, float]:
    """The makespan no placement can beat on this farm and client (see the module docstring)."""
    client_total = sum(j.client_cost for j in jobs)
    after = [best_after_preprocessing(j, hosts) for j in jobs]
    client = client_total / cores + min(after)
    # Make's order: job j starts preprocessing once all jobs before it have started (FIFO), so
    # their work, less what cores-1 others may still be doing, is done by then.
    slack = (cores - 1) * max(j.client_cost for j in jobs)
    starts = []  # the earliest start of each job's preprocessing
    started = 0.0
    for j, a in zip(jobs, after, strict=True):
        starts.append(max(0.0, started - slack) / cores)
        client = max(client, starts[-1] + j.client_cost + a)
        started += j.client_cost
    job = max(j.client_cost + a for j, a in zip(jobs, after, strict=True))

    # Work. The farm's cumulative capacity (reference seconds of compiling it can do by time
    # t), piecewise linear between the owners' comings and goings.
    changes = sorted((t, h.idx, k % 2 == 0) for h in hosts for k, t in enumerate(h.busy_changes))
    full = [h.speed * h.slots for h in hosts]
    busy = [h.speed * BUSY_SPEED * busy_slots(h) for h in hosts]
    times, cum = [0.0], [0.0]
    rate = sum(full)
    for t, hi, starts_busy in changes:
        if t > times[-1]:
            cum.append(cum[-1] + rate * (t - times[-1]))
            times.append(t)
        rate += (busy[hi] - full[hi]) if starts_busy else (full[hi] - busy[hi])
    last_rate = rate

    def farm(t: float) -> float:
        i = bisect.bisect_right(times, t) - 1
        r = last_rate if i == len(times) - 1 else (cum[i + 1] - cum[i]) / (times[i + 1] - times[i])
        return cum[i] + r * (t - times[i])

    def solve(f: Callable[[float], float], need: float, lo: float) -> float:
        """The first t >= lo with f(t) >= need (f is continuous and increasing)."""
        hi = max(lo, 1.0)
        while f(hi) < need:
            hi *= 2
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if f(mid) >= need else (mid, hi)
        return hi

    # All the work, by the farm and the client's cores once preprocessing leaves them free.
    total = sum(j.work for j in jobs)
    work = solve(lambda t: farm(t) + max(0.0, cores * t - client_total), total, 0.0)
    # The work of make's last jobs cannot start before they are preprocessed: for each suffix
    # (every 1% of the build), its work from its first job's earliest preprocessing on, with
    # every client core compiling (generous).
    suffix = 0.0
    step = max(1, len(jobs) // 100)
    c_min = min(j.client_cost for j in jobs)
    for k in range(len(jobs) - 1, -1, -1):
        suffix += jobs[k].work
        if k % step == 0:
            t0 = starts[k] + c_min
            base = farm(t0) + cores * t0
            work = max(work, solve(lambda t: farm(t) + cores * t, base + suffix, t0))
    return {"client": client, "work": work, "job": job}


# --- the command ---------------------------------------------------------------------------------


REAL_BASELINES = ("distcc", "icecream", "random")
# The speed-up table's columns: (policy, job model); distcc's is the preprocessed model.
SPEEDUP_COLUMNS = (("distcc", "preprocessed"), ("ours", "preprocessed"), ("ours", "sources"))


def simulate(
    n_hosts: int,
    seed: int,
    jobs: list[Job],
    policies: Sequence[str],
    busy_share: float,
    client_cores: int,
    model: str = "preprocessed",
    blob_store: str = "host",
) -> dict:
    """One farm (n_hosts, seed), every policy over it; a row of the JSON output."""
    hosts = make_farm(n_hosts, seed, busy_share)
    slots = sum(h.slots for h in hosts)
    make_jobs = 2 * slots
    bound = lower_bound(jobs, hosts, client_cores)
    lb = max(bound.values())
    local = local_build(jobs, client_cores)
    row: dict = {
        "model": model,
        "client_cores": client_cores,
        "hosts": n_hosts,
        "seed": seed,
        "slots": slots,
        "make_jobs": make_jobs,
        "owners": sum(1 for h in hosts if h.busy_changes),
        "local_build": round(local, 3),
        "lower_bound": round(lb, 3),
        "bound_by": max(bound, key=bound.__getitem__),
        "bounds": {k: round(v, 3) for k, v in bound.items()},
        "bound_speedup": round(local / lb, 3),
        "policies": {},
    }
    for name in policies:
        out = Sim(jobs, hosts, POLICIES[name], client_cores, make_jobs, seed, blob_store).run()
        row["policies"][name] = {
            "makespan": round(out.makespan, 3),
            "ratio": round(out.makespan / lb, 4),
            "speedup": round(local / out.makespan, 3),
            "remote": out.remote,
            "local": out.local,
            "evicted": out.evicted,
            "lost_work": round(out.lost_work, 1),
            "refused": out.refused,
            "sent_mb": round(out.sent_bytes / 1e6, 1),
            "blobs_sent": out.blobs_sent,
            "plan_seconds": round(out.plan_seconds, 2),
        }
    return row


def table(rows: list[dict], policies: Sequence[str]) -> tuple[str, list[str]]:
    """The Markdown table of one job model, one line per client and farm size (means over the
    seeds), and the verdicts on ours: within 1.15x of the bound, ahead of each real baseline."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["client_cores"], r["hosts"]), []).append(r)
    seeds = len(next(iter(groups.values())))
    cell = "makespan (ratio)" if seeds == 1 else f"mean ratio (worst) of {seeds} seeds"
    lines = [
        "| client | hosts | slots | owners | lower bound | " + " | ".join(policies) + " |",
        "|---|---|---|---|---|" + "---|" * len(policies),
    ]
    verdicts = []
    for (cores, hosts), rs in groups.items():
        mean = sum(r["lower_bound"] for r in rs) / len(rs)
        by = sorted({r["bound_by"] for r in rs})
        cells = []
        ratios = {p: [r["policies"][p]["ratio"] for r in rs] for p in policies}
        for p in policies:
            rr = ratios[p]
            if seeds == 1:
                cells.append(f"{rs[0]['policies'][p]['makespan']:.1f} s ({rr[0]:.3f}x)")
            else:
                cells.append(f"{sum(rr) / len(rr):.3f}x ({max(rr):.3f}x)")
        real = [p for p in policies if not p.endswith("+")] or list(policies)
        best = min(real, key=lambda p: sum(ratios[p]))
        cells = [f"**{c}**" if p == best else c for p, c in zip(policies, cells, strict=True)]
        lines.append(
            f"| {cores} cores | {hosts} | {sum(r['slots'] for r in rs) // len(rs)} | "
            f"{sum(r['owners'] for r in rs) // len(rs)} | {mean:.1f} s ({'/'.join(by)}) | "
            + " | ".join(cells)
            + " |"
        )
        if "ours" in ratios:
            ours = sum(ratios["ours"]) / len(rs)
            behind = [p for p in REAL_BASELINES if p in ratios and sum(ratios[p]) / len(rs) <= ours]
            verdicts.append(
                f"{rs[0]['model']} model, {cores} cores, {hosts} hosts: ours {ours:.3f}x the "
                f"bound ({'within' if ours <= 1.15 else 'NOT within'} 1.15x), "
                + (f"NOT ahead of {', '.join(behind)}" if behind else "ahead of every baseline")
            )
    head = f"Cells: {cell}; the best real system in bold."
    return "\n".join([head, "", *lines]), verdicts


def speedup_table(rows: list[dict]) -> str:
    """Speed-up over the local build (make -j on the client's cores alone) for distcc's model
    and ours, means over the seeds, with each one's mean ratio to its own lower bound, and the
    speed-up the bound allows."""
    groups: dict[tuple[int, int], dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["client_cores"], r["hosts"]), {}).setdefault(r["model"], []).append(r)
    models = list(dict.fromkeys(r["model"] for r in rows))
    columns = [
        (p, m)
        for p, m in SPEEDUP_COLUMNS
        if m in models and all(p in r["policies"] for r in rows if r["model"] == m)
    ]
    if not columns:
        return ""
    lines = [
        "| client | hosts | local build | "
        + " | ".join(f"{p}, {m}" for p, m in columns)
        + " | "
        + " | ".join(f"bound, {m}" for m in models)
        + " |",
        "|---|---|---|" + "---|" * (len(columns) + len(models)),
    ]
    for (cores, hosts), by_model in groups.items():
        any_rows = next(iter(by_model.values()))
        local = sum(r["local_build"] for r in any_rows) / len(any_rows)
        cells = []
        for p, m in columns:
            rs = by_model[m]
            speed = sum(r["policies"][p]["speedup"] for r in rs) / len(rs)
            ratio = sum(r["policies"][p]["ratio"] for r in rs) / len(rs)
            cells.append(f"{speed:.1f}x ({ratio:.3f})")
        for m in models:
            rs = by_model[m]
            speed = sum(r["bound_speedup"] for r in rs) / len(rs)
            by = "/".join(sorted({r["bound_by"] for r in rs}))
            cells.append(f"{speed:.1f}x ({by})")
        lines.append(f"| {cores} cores | {hosts} | {local:.0f} s | " + " | ".join(cells) + " |")
    return "\n".join(
        [
            "Speed-up over the local build (make -j on the client's cores, no farm): mean over "
            "the seeds (in brackets, the mean ratio of the makespan to that model's lower "
            "bound); bound: the speed-up the lower bound allows (what bounds it).",
            "",
            *lines,
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="simulate-farm",
        description="Replay measured compile jobs over simulated farms; compare placement "
        "policies and job models against a lower bound on the makespan, and give the speed-up "
        "over a local build (see the module docstring).",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=3, help="run seeds SEED..SEED+K-1 (default 3)")
    ap.add_argument("--farms", default="10,50,100,500", help="host counts, comma-separated")
    ap.add_argument("--client-cores", default="8,32", help="client sizes, comma-separated")
    ap.add_argument("--jobs", type=int, default=5000, help="repeat the traces up to this many")
    ap.add_argument("--projects", default=",".join(PROJECTS))
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument(
        "--model",
        default=",".join(MODELS),
        help="job models, comma-separated: preprocessed (the client preprocesses, as distcc), "
        "sources (the client analyses includes and ships the sources a host lacks); default both",
    )
    ap.add_argument(
        "--client-overhead",
        type=float,
        default=CLIENT_OVERHEAD,
        help=f"client CPU seconds per job besides -E or the analysis (default {CLIENT_OVERHEAD})",
    )
    ap.add_argument(
        "--blob-store",
        choices=BLOB_STORES,
        default="host",
        help="sources model: the blobs a host has had are kept per host (default) or per "
        "connection (each connection's jail has its own store, as jailccd's do)",
    )
    ap.add_argument("--busy-share", type=float, default=0.3, help="hosts with a busy owner")
    ap.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    ap.add_argument("--record", metavar="PROJECT", help="re-measure scripts/traces/PROJECT.json")
    ap.add_argument("--repeat", type=int, default=3, help="--record: runs per timing (min kept)")
    ap.add_argument(
        "--record-sources",
        metavar="PROJECT",
        help="add the source-shipping fields (include analysis) to scripts/traces/PROJECT.json "
        "without re-timing the rest",
    )
    args = ap.parse_args(argv)

    if args.record:
        trace = record(args.record, args.repeat, TRACES / f"{args.record}.json")
        print(f"{TRACES / args.record}.json: {len(trace['jobs'])} jobs, {trace['machine']}")
        return 0
    if args.record_sources:
        trace = record_sources(args.record_sources, TRACES / f"{args.record_sources}.json")
        print(
            f"{TRACES / args.record_sources}.json: {len(trace['jobs'])} jobs, "
            f"{len(trace['tree_blobs'])} blobs, {trace['sources_recording']}"
        )
        return 0
    policies = args.policies.split(",")
    models = args.model.split(",")
    for m in models:
        if m not in MODELS:
            ap.error(f"--model: {m!r} is not one of {', '.join(MODELS)}")
    traces = load_traces(args.projects.split(","))
    builds = {m: make_build(traces, args.jobs, m, args.client_overhead) for m in models}
    rows = [
        simulate(
            int(n), seed, builds[m][0], policies, args.busy_share, int(cores), m, args.blob_store
        )
        for m in models
        for cores in args.client_cores.split(",")
        for n in args.farms.split(",")
        for seed in range(args.seed, args.seed + args.seeds)
    ]
    jobs, copies = builds[models[0]]
    if args.json:
        out = {
            "jobs": len(jobs),
            "copies": copies,
            "models": models,
            "client_overhead": args.client_overhead,
            "blob_store": args.blob_store,
            "rows": rows,
        }
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    per_copy = len(jobs) // copies
    local = sum(j.compile_cost for j in jobs)
    costs = ", ".join(
        f"{m}: {sum(j.work for j in b):.0f} s of compile work and "
        f"{sum(j.client_cost for j in b):.0f} s of client work"
        for m, (b, _) in builds.items()
    )
    seeds = f"seeds {args.seed}..{args.seed + args.seeds - 1}" if args.seeds > 1 else "seed"
    print(
        f"Build: {len(jobs)} compile jobs, {copies} copies of the {per_copy} compiles measured "
        f"in real builds of {', '.join(t['project'] for t in traces)} (scripts/traces, "
        f"{traces[0]['compiler']}), replicated to make a big build: {local:.0f} s of compiling "
        f"as make runs it (the local build's work), at the reference speed; {costs} (client "
        f"overhead {args.client_overhead * 1000:.0f} ms a job; tree blobs kept per "
        f"{args.blob_store}). make -j "
        f"twice the farm's slots; {args.busy_share:.0%} of the hosts have owners who come and "
        f"go. Farms and owners drawn from {seeds} "
        f"{args.seed if args.seeds == 1 else ''}".rstrip()
        + "."
    )
    verdicts = []
    for m in models:
        print()
        print(f"Job model: {m}.")
        print()
        text, said = table([r for r in rows if r["model"] == m], policies)
        print(text)
        verdicts += said
    speedups = speedup_table(rows)
    if speedups:
        print()
        print(speedups)
    print()
    print(
        "Lower bound: the largest of client (make's order of preprocessing or analysis on the "
        "client's cores, then the job's quickest compile), work (all compile work over the "
        "farm's capacity as owners come and go, plus the client's spare cores; also per suffix "
        "of make's order from its earliest preprocessing) and job (the longest job alone); "
        "no schedule reaches it (see the module docstring). Not real systems, for reference: "
        "ours+ is our rule told every job's cost and every host's speed, icecream+ icecream's "
        "rule told every host's speed."
    )
    print()
    for v in verdicts:
        print(f"- {v}")
    return 0


# --- recording a trace ----------------------------------------------------------------------------

# The timing wrapper, run as CC="timecc gcc-12" by a make -j1 build. For each compile (-c, one
# source) it first asks the recorder's include analysis for the files the compile reads, as
# jailcc asks its proxy before the compile (TIMECC_ANALYSIS, a Unix socket; see
# _AnalysisServer), then runs the real command, then, with TIMECC_SPLIT=1, twice more as a
# compile farm would split it: -E (the client's share; its output is what travels) and the
# compile of that preprocessed file (the server's share). Each of the three is repeated
# TIMECC_REPEAT times and the minimum kept, which filters out interference from other work on
# the machine. One JSON line per compile.
_TIMECC = r"""#!/usr/bin/python3 -IS
import json, os, resource, socket, subprocess, sys, tempfile, time

SOURCES = (".c", ".cc", ".cpp", ".cxx", ".c++", ".C")
DEPFLAGS_ARG = ("-MF", "-MT", "-MQ")
DEPFLAGS = ("-MD", "-MMD", "-MP", "-M", "-MM")


def timed(argv, repeat):
    best_wall = best_cpu = None
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        rc = subprocess.run(argv).returncode
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if rc:
            return rc, wall, cpu
        best_wall = wall if best_wall is None else min(best_wall, wall)
        best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
    return 0, best_wall, best_cpu


def analyse(argv, output):
    # The recorder's include analysis, asked before the compile runs: its answer's number.
    path = os.environ.get("TIMECC_ANALYSIS")
    if not path:
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIMECC_")}
    request = {"argv": argv, "cwd": os.getcwd(), "env": env, "output": output}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return json.loads(reply)["seq"]


def main():
    argv = sys.argv[1:]
    args = argv[1:]
    sources = [a for a in args if a.endswith(SOURCES) and not a.startswith("-")]
    output, rest, skip = None, [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a == "-o":
            output, skip = args[i + 1], True
        elif a.startswith("-o") and len(a) > 2:
            output = a[2:]
        elif a in DEPFLAGS_ARG:
            skip = True
        elif a in DEPFLAGS or a.startswith(DEPFLAGS_ARG):
            pass
        elif a != "-c":
            rest.append(a)
    if "-c" not in args or len(sources) != 1 or any(a in ("-E", "-S") for a in args):
        return subprocess.run(argv).returncode
    seq = analyse(argv, output)
    repeat = int(os.environ.get("TIMECC_REPEAT", "1"))
    rc, wall, cpu = timed(argv, repeat)
    if rc:
        return rc
    line = {
        "source": sources[0],
        "output": output,
        "cwd": os.getcwd(),
        "argv": argv,
        "analysis": seq,
        "driver": os.path.basename(argv[0]),
        "seconds": round(wall, 4),
        "cpu_seconds": round(cpu, 4),
    }
    if os.environ.get("TIMECC_SPLIT", "1") == "1":
        cxx = "++" in os.path.basename(argv[0]) or not sources[0].endswith(".c")
        with tempfile.TemporaryDirectory(prefix="timecc-") as tmp:
            pre = os.path.join(tmp, "x.ii" if cxx else "x.i")
            obj = os.path.join(tmp, "x.o")
            rc1, cpp_wall, cpp_cpu = timed([argv[0], *rest, "-E", "-o", pre], repeat)
            no_source = [a for a in rest if a != sources[0]]
            rc2, cc1_wall, cc1_cpu = timed([argv[0], *no_source, "-c", pre, "-o", obj], repeat)
            input_bytes = os.path.getsize(pre) if rc1 == 0 else 0
        line.update(
            {
                "cpp_seconds": round(cpp_wall, 4) if rc1 == 0 else None,
                "cpp_cpu_seconds": round(cpp_cpu, 4) if rc1 == 0 else None,
                "remote_seconds": round(cc1_wall, 4) if rc2 == 0 else None,
                "remote_cpu_seconds": round(cc1_cpu, 4) if rc2 == 0 else None,
                "input_bytes": input_bytes,
            }
        )
    line["object_bytes"] = os.path.getsize(output) if output and os.path.exists(output) else 0
    with open(os.environ["TIMECC_LOG"], "a") as f:
        f.write(json.dumps(line) + "\n")
    return 0


sys.exit(main())
"""

# The fields of a job that come from the include analysis (see _AnalysisServer.analyse).
SOURCE_FIELDS = (
    "analysis_cpu_seconds",
    "analysed_files",
    "analysed_bytes",
    "tree_files",
    "tree_bytes",
    "tree_header_bytes",
    "tree_digests",
    "tree_unsupported",
)
SOURCES_METHOD = (
    " The source-shipping fields come from the per-user proxy's include analysis "
    "(client/includes.py), run the way the proxy runs it: ONE IncludeAnalyzer for the whole "
    "build, asked by the wrapper for each compile before it runs, in make's order, so each call "
    "is as warm as it is at that point of a build (generated files, objects just written and "
    "directories changed a moment ago included). analysis_cpu_seconds: the CPU time of that "
    "one files_read call (time.thread_time of the analysing thread, plus the CPU of the "
    "compiler probes it runs, once per compiler and configuration; not a minimum of repeats: "
    "the first call is the one a build pays). analysed_files, analysed_bytes: every file it "
    "lists (what the proxy weighs the job by); tree_files, tree_bytes: those not under the "
    "compiler's own include directories (Analysis.system, the toolchain image's), what a tree "
    "job ships; tree_digests: their contents, as indices into tree_blobs ([sha256, size, "
    "bytes as an LZ4 block, as the protocol sends a blob]); tree_header_bytes: the JOB header "
    "client/tree.py builds for it (compact JSON: the tree with digests and sizes, the image's "
    "files with digests, the arguments). tree_unsupported: the analysis could not bound the "
    "files (the job ships preprocessed output)."
)


class _AnalysisServer:
    """The proxy's include analysis, for the timing wrapper: one IncludeAnalyzer for the whole
    build, asked over a Unix socket by each compile before it runs (make -j1: one at a time)."""

    def __init__(self, path: Path) -> None:
        try:
            from jailcc.client.includes import IncludeAnalyzer
        except ImportError:
            from client.includes import IncludeAnalyzer  # type: ignore[no-redef]

        self.analyzer = IncludeAnalyzer()
        self.results: list[dict] = []
        self.blobs: dict[str, list] = {}  # sha256 hex -> [index, size, lz4 bytes]
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5.0)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                try:
                    req = json.loads(data)
                    result = self.analyse(req["argv"], req["cwd"], req["env"], req["output"])
                except Exception as exc:  # recorded: the job then counts as unsupported
                    result = {"analysis_cpu_seconds": 0.0, "tree_unsupported": repr(exc)}
                self.results.append(result)
                conn.sendall(json.dumps({"seq": len(self.results) - 1}).encode() + b"\n")

    def analyse(self, argv: list[str], cwd: str, env: dict, output: str | None) -> dict:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.thread_time()
        a = self.analyzer.files_read(argv, cwd, env)
        cpu = time.thread_time() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the compiler probes, if any
        cpu += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        out: dict = {"analysis_cpu_seconds": round(cpu, 5)}
        if not a.ok or not a.files:
            out["tree_unsupported"] = a.unsupported or "no source found"
            return out
        system = tuple(d.rstrip("/") + "/" for d in a.system)
        tree = [f for f in a.files if not f.path.startswith(system)]
        image = [f for f in a.files if f.path.startswith(system)]
        out["analysed_files"] = len(a.files)
        out["analysed_bytes"] = sum(f.size for f in a.files)
        out["tree_files"] = len(tree)
        out["tree_bytes"] = sum(f.size for f in tree)
        out["tree_header_bytes"] = self._header_bytes(argv, cwd, env, output, tree, image)
        out["tree_digests"] = [self._blob(f.path, f.digest, f.size) for f in tree]
        return out

    def _blob(self, path: str, digest: str, size: int) -> int:
        """The blob's index in the trace's table (its size on the wire: an LZ4 block, as
        core/protocol.py compresses blobs over 64 bytes)."""
        got = self.blobs.get(digest)
        if got is None:
            import lz4.block

            with open(path, "rb") as f:
                data = f.read()
            wire = len(lz4.block.compress(data, store_size=False)) if len(data) > 64 else len(data)
            got = self.blobs[digest] = [len(self.blobs), size, wire]
        return got[0]

    @staticmethod
    def _header_bytes(
        argv: list[str], cwd: str, env: dict, output: str | None, tree: list, image: list
    ) -> int:
        """The JOB header of client/tree.py's TreeBuilder.prepare for this job, as compact JSON
        (core/protocol.py's encoding): the identity and env are stand-ins of the same size."""
        cwd = os.path.normpath(cwd)
        outputs = [os.path.normpath(os.path.join(cwd, output or "a.o"))]
        if any(a in ("-MD", "-MMD") for a in argv):
            outputs.append(os.path.splitext(outputs[0])[0] + ".d")
        dirs = [cwd, *(os.path.dirname(f.path) for f in tree), *map(os.path.dirname, outputs)]
        root = os.path.commonpath(dirs)
        job_env = {"LC_ALL": "C"}
        if "SOURCE_DATE_EPOCH" in env:
            job_env["SOURCE_DATE_EPOCH"] = env["SOURCE_DATE_EPOCH"]
        header = {
            "id": 1,
            "identity": "sha256:" + "0" * 64,
            "kind": "tree",
            "args": argv[1:],
            "cwd": cwd,
            "root": root,
            "tree": [[os.path.relpath(f.path, root), "sha256:" + f.digest, f.size] for f in tree],
            "image": [[f.path, "sha256:" + f.digest] for f in image],
            "outputs": outputs,
            "env": job_env,
            "source": os.path.basename(tree[0].path) if tree else "",
            "blobs": [],
            "raw": [],
        }
        return len(json.dumps(header, separators=(",", ":")).encode())

    def table(self) -> list[list]:
        """The trace's tree_blobs: [sha256, size, lz4 bytes], by index."""
        rows = sorted(self.blobs.items(), key=lambda kv: kv[1][0])
        return [[digest, size, wire] for digest, (_, size, wire) in rows]


@dataclass
class _Recorded:
    lines: list[dict]  # the wrapper's, one per compile, with the analysis's fields merged in
    tree: Path
    seconds: float
    load_before: tuple[float, float, float]
    blobs: list[list]


def _build_recorded(project: str, repeat: int, split: bool) -> _Recorded:
    """Build PROJECT (scripts/projects.py: Debian's flags, gcc-12/g++-12) with make -j1 through
    the timing wrapper and the include analysis."""
    sys.path.insert(0, str(HERE))
    import projects

    proj = projects.get(project)
    fetched = projects.fetch()  # the Debian sources, unpacked once into third_party/src
    if fetched.returncode:
        raise SystemExit(f"record: scripts/fetch-sources failed:\n{fetched.stdout}{fetched.stderr}")
    with tempfile.TemporaryDirectory(prefix="jailcc-trace-") as tmp:
        wrapper = Path(tmp) / "timecc"
        wrapper.write_text(_TIMECC)
        wrapper.chmod(0o755)
        log = Path(tmp) / "log.jsonl"
        server = _AnalysisServer(Path(tmp) / "analysis.sock")
        env = {
            "TIMECC_LOG": str(log),
            "TIMECC_REPEAT": str(repeat),
            "TIMECC_SPLIT": "1" if split else "0",
            "TIMECC_ANALYSIS": str(server.path),
        }
        load_before = os.getloadavg()
        t0 = time.monotonic()
        try:
            result = projects.build(
                proj,
                Path(tmp) / "build",
                f"{wrapper} gcc-12",
                f"{wrapper} g++-12",
                jobs=1,
                env=env,
                configure_cc="gcc-12",
                configure_cxx="g++-12",
            )
        finally:
            server.close()
        elapsed = time.monotonic() - t0
        if not result.ok:
            raise SystemExit(f"record: {project} build failed:\n{result.log_tail()}")
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        tree = result.tree
    for rec in lines:
        src = os.path.relpath(os.path.join(rec["cwd"], rec["source"]), tree)
        obj = os.path.relpath(os.path.join(rec["cwd"], rec["output"] or "?"), tree)
        rec["name"] = f"{src} -> {obj}"
        got = server.results[rec["analysis"]] if rec.get("analysis") is not None else None
        if got is None:
            raise SystemExit(f"record: no include analysis for {rec['name']}")
        rec.update(got)
    return _Recorded(lines, tree, elapsed, load_before, server.table())


def _machine(load_before: tuple[float, float, float]) -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}; "
        f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}"
    )


def _source_fields(rec: dict) -> dict:
    return {k: rec[k] for k in SOURCE_FIELDS if k in rec}


def _write_trace(trace: dict, out: Path) -> None:
    """JSON with one-space indents, as the traces have always been written, but short lists
    (digest indices, a blob's row) on one line."""
    text = json.dumps(trace, indent=1)
    text = re.sub(
        r"\[\s*([^\[\]{}]*?)\s*\]",
        lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]",
        text,
    )
    assert json.loads(text) == trace
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


def record(project: str, repeat: int, out: Path) -> dict:
    """Build PROJECT with make -j1 through the timing wrapper and the include analysis and
    write the trace to OUT."""
    rec = _build_recorded(project, repeat, split=True)
    jobs = []
    for line in rec.lines:
        job = {
            "name": line["name"],
            "driver": line["driver"],
            **{
                k: line[k]
                for k in (
                    "seconds",
                    "cpu_seconds",
                    "cpp_seconds",
                    "cpp_cpu_seconds",
                    "remote_seconds",
                    "remote_cpu_seconds",
                    "input_bytes",
                    "object_bytes",
                )
            },
        }
        jobs.append({**job, **_source_fields(line)})
    sys.path.insert(0, str(HERE))
    import projects

    gcc = subprocess.run(["gcc-12", "--version"], capture_output=True, text=True).stdout
    machine = _machine(rec.load_before)
    date = time.strftime("%Y-%m-%d", time.gmtime())
    trace = {
        "project": project,
        "version": projects.get(project).version(),
        "compiler": gcc.splitlines()[0],
        "machine": machine,
        "date": date,
        "measured_by": f"scripts/simulate_farm.py --record {project} --repeat {repeat}",
        "method": (
            "scripts/projects.py builds the Debian source package with Debian's flags, make -j1, "
            "CC/CXX set to a timing wrapper around gcc-12/g++-12. For every compile (-c, one "
            "source) in make's order the wrapper times, each the minimum of --repeat runs: the "
            "compile as make ran it (seconds, cpu_seconds: wall and user+sys of the children), "
            "the same command with -E instead of -c (cpp_seconds, cpp_cpu_seconds; input_bytes "
            "is the size of its output, what a farm client sends) and the compile of that "
            "preprocessed file (remote_seconds, remote_cpu_seconds: a farm server's share). "
            "object_bytes: the object make's command wrote. The simulator uses the CPU times, "
            "which other work on the machine (see the load averages) inflates less than wall "
            "times." + SOURCES_METHOD
        ),
        "build_seconds": round(rec.seconds, 1),
        "jobs": jobs,
        "tree_blobs": rec.blobs,
        "sources_recording": {
            "date": date,
            "machine": machine,
            "measured_by": f"scripts/simulate_farm.py --record {project}",
            "compile_cpu_ratio": 1.0,
        },
    }
    _write_trace(trace, out)
    return trace


def record_sources(project: str, out: Path) -> dict:
    """Add the source-shipping fields to the trace in OUT without re-timing the rest: build
    PROJECT again with make -j1 through the wrapper (the compile run once, timed for the
    machine's ratio) and the include analysis, and merge by job, in make's order."""
    trace = json.loads(out.read_text())
    rec = _build_recorded(project, 1, split=False)
    names = [j["name"] for j in trace["jobs"]]
    got = [line["name"] for line in rec.lines]
    if names != got:
        raise SystemExit(
            f"record-sources: {project}'s compiles differ from {out}'s "
            f"({len(got)} against {len(names)}; first difference: "
            f"{next((a, b) for a, b in zip([*got, None], [*names, None], strict=False) if a != b)})"
        )
    for job, line in zip(trace["jobs"], rec.lines, strict=True):
        for k in SOURCE_FIELDS:
            job.pop(k, None)
        job.update(_source_fields(line))
    # How this machine compares with the one that timed the rest: the same compiles' CPU.
    ratio = sum(line["cpu_seconds"] for line in rec.lines) / sum(
        j["cpu_seconds"] for j in trace["jobs"]
    )
    method = trace["method"].split(SOURCES_METHOD.split(".")[0])[0].rstrip()
    trace["method"] = (
        method
        + SOURCES_METHOD
        + (
            " Added to this trace by scripts/simulate_farm.py --record-sources (sources_recording: "
            "on that machine and date; compile_cpu_ratio is the CPU time of the same compiles "
            "there, run once each, over cpu_seconds here)."
        )
    )
    trace["tree_blobs"] = rec.blobs
    trace["sources_recording"] = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": _machine(rec.load_before),
        "measured_by": f"scripts/simulate_farm.py --record-sources {project}",
        "build_seconds": round(rec.seconds, 1),
        "compile_cpu_ratio": round(ratio, 4),
    }
    _write_trace(trace, out)
    return trace


if __name__ == "__main__":
    sys.exit(main())
