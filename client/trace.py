"""The build timeline: what the per-user proxy records of each job (Span, Spans), and what
`jailcc trace` makes of the last build: Chrome trace-event JSON (Perfetto, chrome://tracing)
and a PNG.

In the proxy (proxy.py `_job`, pool.py `run`), each job gets a Span: wall-clock phases
    analysis   argument analysis and local preprocessing (all a local job has: it ends at
               the decision, since the proxy only tells jailcc to exec the compiler and never
               sees that compile end)
    queue      waiting in the pool for a slot on a server (and for a fresh connection)
    remote     sending, the server's queue and compile (RESULT's times.queue and times.run,
               in the span's server_times), receiving
    result     writing the outputs
(queue and remote once per attempt: a job that was retried elsewhere shows each), the server,
the outcome (remote; local: not a job for a server; fallback: it could have gone but compiled
locally, with the reason) and the exit status. The proxy keeps the last MAX_SPANS finished
jobs in a ring; that is all it does per job (a few time.time() calls and an append).

Lanes are not recorded: the renderer gives each job the lowest lane of its server (or of
"local") that is free over the job's whole life, so boxes never overlap. Where jobs do not
queue, a server's lanes are its slots; where they do, the extra lanes are the jobs waiting.
"""

from __future__ import annotations

import collections
import time
from typing import Any

MAX_SPANS = 100_000
LOCAL = "local"  # the pseudo-server of jobs compiled on this machine
PHASES = ("analysis", "queue", "remote", "result")


class Span:
    """One job as the proxy saw it (times from time.time())."""

    __slots__ = (
        "end",
        "exit_code",
        "outcome",
        "phases",
        "reason",
        "server",
        "server_times",
        "source",
        "start",
    )

    def __init__(self, start: float) -> None:
        self.start = start
        self.end = 0.0
        self.source = ""
        self.phases: list[tuple[str, float, float]] = []
        self.server = ""  # str(Host) of the server that ran it (or last tried it)
        self.server_times: dict[str, Any] = {}
        self.outcome = "local"
        self.reason = ""
        self.exit_code: int | None = None

    def phase(self, name: str, start: float, end: float | None = None) -> float:
        """Record a phase from start to end (now if not given); returns its end."""
        end = time.time() if end is None else end
        self.phases.append((name, start, end))
        return end

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "start": self.start,
            "end": self.end,
            "server": self.server if self.outcome == "remote" else LOCAL,
            "tried": self.server,
            "outcome": self.outcome,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "phases": [[name, start, end] for name, start, end in self.phases],
            "server_times": self.server_times,
        }


# Seconds without any job that end a build: `jailcc trace`'s last build, `jailcc mon`'s
# current one, and the proxy's once-per-build notices.
BUILD_GAP = 10.0


class Spans:
    """The proxy's ring of finished jobs, in the order they finished."""

    def __init__(self, size: int = MAX_SPANS) -> None:
        self.ring: collections.deque[Span] = collections.deque(maxlen=size)

    def add(self, span: Span) -> None:
        self.ring.append(span)  # atomic: jobs finish on many threads

    def last_build(self, gap: float, running_since: float | None = None) -> list[Span]:
        """The jobs since the last stretch of at least `gap` seconds in which no job ran
        (running_since: the start of the oldest job still running, if any), oldest first.
        The ring is in order of end, so walking back stops at the first job that ended
        `gap` before every later job started."""
        build: list[Span] = []
        earliest = running_since if running_since is not None else float("inf")
        for span in reversed(list(self.ring)):
            if (build or running_since is not None) and span.end + gap <= earliest:
                break
            build.append(span)
            earliest = min(earliest, span.start)
        build.reverse()
        return build


# -- jailcc trace -----------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    import argparse
    import json
    import sys

    from . import proxy_wire as pw
    from .proxy_cli import ask_json

    parser = argparse.ArgumentParser(prog="jailcc trace", description="The last build's timeline.")
    parser.add_argument("-o", dest="output", default="jailcc-trace.json", help="'-': stdout")
    parser.add_argument("--png", help="also draw the timeline as this PNG")
    parser.add_argument("--gap", type=float, default=BUILD_GAP, help="idle seconds between builds")
    args = parser.parse_args(argv)
    data = ask_json(pw.MAGIC_TRACE, json.dumps({"gap": args.gap}).encode())
    if data is None:
        return 1
    jobs = data["jobs"]
    if not jobs:
        print("jailcc: the proxy has seen no jobs yet", file=sys.stderr)
        return 1
    text = json.dumps(chrome_trace(jobs))
    if args.output == "-":
        print(text)
    else:
        with open(args.output, "w") as f:
            f.write(text)
    if args.png:
        render_png(jobs, args.png)
    written = " and ".join(p for p in (args.output, args.png) if p and p != "-")
    print(
        f"jailcc: last build: {summary(jobs)}" + (f"; {written}" if written else ""),
        file=sys.stderr,
    )
    return 0


# -- rendering ---------------------------------------------------------------------------------


def assign_lanes(jobs: list[dict[str, Any]]) -> dict[str, int]:
    """Give each job (as_dict) a "lane" within its server: the lowest one free over its whole
    life. Returns the number of lanes per server."""
    ends: dict[str, list[float]] = {}
    for job in sorted(jobs, key=lambda j: j["start"]):
        lanes = ends.setdefault(job["server"], [])
        free = next((i for i, end in enumerate(lanes) if end <= job["start"]), len(lanes))
        if free == len(lanes):
            lanes.append(0.0)
        lanes[free] = job["end"]
        job["lane"] = free
    return {server: len(lanes) for server, lanes in ends.items()}


def servers_in_order(jobs: list[dict[str, Any]]) -> list[str]:
    """The servers as they first took a job, "local" last."""
    seen = dict.fromkeys(j["server"] for j in sorted(jobs, key=lambda j: j["start"]))
    return [s for s in seen if s != LOCAL] + ([LOCAL] if LOCAL in seen else [])


def chrome_trace(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Trace Event Format: per job an "X" event named for its source on (pid = its
    server, tid = its lane), with its phases as nested "X" events; "M" events name them."""
    lanes = assign_lanes(jobs)
    servers = servers_in_order(jobs)
    pids = {server: i + 1 for i, server in enumerate(servers)}
    t0 = min((j["start"] for j in jobs), default=0.0)

    def us(t: float) -> float:
        return round((t - t0) * 1e6, 1)

    events: list[dict[str, Any]] = []
    for server in servers:
        pid = pids[server]
        name = "local (this machine)" if server == LOCAL else server
        events.append(_meta("process_name", pid, 0, name=name))
        events.append(_meta("process_sort_index", pid, 0, sort_index=pid))
        for lane in range(lanes[server]):
            events.append(_meta("thread_name", pid, lane, name=f"lane {lane}"))
    for job in jobs:
        pid, tid = pids[job["server"]], job["lane"]
        start, end = job["start"], max(job["end"], job["start"])
        events.append(
            {
                "ph": "X",
                "cat": "job",
                "name": job["source"] or "?",
                "pid": pid,
                "tid": tid,
                "ts": us(start),
                "dur": round((end - start) * 1e6, 1),
                "args": _job_args(job),
            }
        )
        for name, p_start, p_end in job["phases"]:
            p_start = min(max(p_start, start), end)  # within the job: the viewers nest by time
            p_end = min(max(p_end, p_start), end)
            events.append(
                {
                    "ph": "X",
                    "cat": "phase",
                    "name": name,
                    "pid": pid,
                    "tid": tid,
                    "ts": us(p_start),
                    "dur": round((p_end - p_start) * 1e6, 1),
                }
            )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"build_start": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0))},
    }


def _meta(kind: str, pid: int, tid: int, **args: Any) -> dict[str, Any]:
    return {"ph": "M", "name": kind, "pid": pid, "tid": tid, "ts": 0, "args": args}


def _job_args(job: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {"outcome": job["outcome"]}
    if job["reason"]:
        args["reason"] = job["reason"]
    if job["tried"] and job["outcome"] != "remote":
        args["tried"] = job["tried"]
    if job["exit_code"] is not None:
        args["exit_code"] = job["exit_code"]
    for name, start, end in job["phases"]:
        key = f"{name}_ms"
        args[key] = round(args.get(key, 0.0) + 1000 * (end - start), 2)
    for name in ("queue", "run"):
        value = job["server_times"].get(name)
        if isinstance(value, int | float):
            args[f"server_{name}_ms"] = round(1000 * value, 2)
    return args


def summary(jobs: list[dict[str, Any]]) -> str:
    """One line: how many jobs, over how long, where."""
    if not jobs:
        return "no jobs"
    counts = collections.Counter(j["outcome"] for j in jobs)
    wall = max(j["end"] for j in jobs) - min(j["start"] for j in jobs)
    kinds = ", ".join(f"{counts[k]} {k}" for k in ("remote", "local", "fallback") if counts[k])
    return f"{len(jobs)} jobs over {wall:.1f} s ({kinds})"


# Phase colours, and the outline of a job that did not go remote.
COLOURS = {
    "analysis": (230, 159, 0),
    "queue": (190, 190, 190),
    "remote": (0, 114, 178),
    "result": (0, 158, 115),
}
OUTLINES = {"local": (120, 60, 160), "fallback": (213, 94, 0)}
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def render_png(jobs: list[dict[str, Any]], path: str, width: int = 1200) -> tuple[int, int]:
    """A timeline: one row per lane of each server (and of local jobs), each job a box
    coloured by phase, a time axis and a legend. Returns the image's size."""
    from PIL import Image, ImageDraw, ImageFont  # only here: jailcc trace, never a compile

    lanes = assign_lanes(jobs)
    servers = servers_in_order(jobs)
    rows = sum(lanes[s] for s in servers)
    lane_h = max(3, min(14, 2400 // max(rows, 1)))
    gap_h, top, left, right = 6, 34, 230, 20
    height = top + rows * lane_h + gap_h * len(servers) + 60
    t0 = min((j["start"] for j in jobs), default=0.0)
    span = max((j["end"] for j in jobs), default=t0 + 1.0) - t0 or 1.0
    scale = (width - left - right) / span
    try:
        font: Any = ImageFont.truetype(FONT, 12)
    except OSError:
        font = ImageFont.load_default()
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 8), f"jailcc trace: {summary(jobs)}", fill="black", font=font)
    y = top
    origin: dict[str, int] = {}
    for server in servers:
        origin[server] = y
        label = "local (this machine)" if server == LOCAL else server
        draw.text((8, y), _elide(label, 34), fill="black", font=font)
        y += lanes[server] * lane_h
        draw.line([(left, y + gap_h // 2), (width - right, y + gap_h // 2)], fill=(225, 225, 225))
        y += gap_h
    _axis(draw, font, left, width - right, top, y, span, scale)
    for job in jobs:
        job_top = origin[job["server"]] + job["lane"] * lane_h
        box = (job_top + 1, job_top + lane_h - 1)
        for name, start, end in job["phases"]:
            x0 = left + (start - t0) * scale
            x1 = max(x0 + 1, left + (end - t0) * scale)
            draw.rectangle([x0, box[0], x1, box[1]], fill=COLOURS.get(name, (0, 0, 0)))
        if job["outcome"] in OUTLINES:
            x0 = left + (job["start"] - t0) * scale
            x1 = max(x0 + 2, left + (job["end"] - t0) * scale)
            draw.rectangle([x0, box[0], x1, box[1]], outline=OUTLINES[job["outcome"]])
    _legend(draw, font, left, y + 26)
    image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    image.save(path, optimize=True)
    return image.size


def _axis(
    draw: Any, font: Any, x0: int, x1: int, top: int, bottom: int, span: float, scale: float
) -> None:
    """Seconds along the bottom, with light grid lines at a round step."""
    step = next(
        s for s in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1e9) if s * scale >= 60
    )
    draw.line([(x0, bottom), (x1, bottom)], fill="black")
    tick = 0.0
    while tick <= span + 1e-9:
        x = x0 + tick * scale
        draw.line([(x, top), (x, bottom)], fill=(235, 235, 235))
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x - 8, bottom + 6), f"{tick:g} s", fill="black", font=font)
        tick += step


def _legend(draw: Any, font: Any, x: int, y: int) -> None:
    for name, colour in COLOURS.items():
        draw.rectangle([x, y, x + 12, y + 10], fill=colour)
        draw.text((x + 16, y - 2), name, fill="black", font=font)
        x += 110
    for name, colour in OUTLINES.items():
        draw.rectangle([x, y, x + 12, y + 10], outline=colour)
        draw.text((x + 16, y - 2), f"{name} (outline)", fill="black", font=font)
        x += 140


def _elide(text: str, width: int) -> str:
    """text cut in the middle to width characters."""
    if len(text) <= width:
        return text
    keep = width - 3
    return text[: keep // 2] + "..." + text[len(text) - (keep - keep // 2) :]
