"""`jailcc trace`: a real build with make -j2 through a real proxy and jailccd gives a trace
that is valid trace-event JSON with one job per compile, and a PNG; and what "the last build"
means, from spans made by hand."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import BIN, requires_root

JAILCC = str(BIN / "jailcc")
SOURCES = 12


def project(root: Path) -> Path:
    """A dozen small sources, a Makefile, and a link (a job that is never remote)."""
    root.mkdir()
    names = [f"unit{i}" for i in range(SOURCES)]
    for i, name in enumerate(names):
        (root / f"{name}.c").write_text(f"int {name}(int x) {{ return x * {i} + 1; }}\n")
    (root / "main.c").write_text("int main(void) { return 0; }\n")
    objects = " ".join(f"{n}.o" for n in [*names, "main"])
    (root / "Makefile").write_text(
        f"prog: {objects}\n\t$(CC) -o $@ $^\n%.o: %.c\n\t$(CC) -O2 -c $< -o $@\n"
    )
    return root


@requires_root
def test_a_real_build_gives_a_trace_and_a_png(root_server, tmp_path):
    from PIL import Image

    env = {**os.environ, "JAILCC_HOSTS": f"unix:{root_server.socket_path}"}
    started = subprocess.run([JAILCC, "proxy", "start"], env=env, capture_output=True)
    assert started.returncode == 0, started.stderr
    try:
        src = project(tmp_path / "src")
        make = subprocess.run(
            ["make", "-j2", f"CC={BIN / 'jailcc'} gcc-12"], cwd=src, env=env, capture_output=True
        )
        assert make.returncode == 0, make.stderr
        out = tmp_path / "trace.json"
        png = tmp_path / "trace.png"
        traced = subprocess.run(
            [JAILCC, "trace", "-o", str(out), "--png", str(png)],
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True)
    assert traced.returncode == 0, traced.stderr
    assert f"{SOURCES + 2} jobs" in traced.stderr  # the compiles and the link

    trace = json.loads(out.read_text())
    assert trace["displayTimeUnit"] == "ms"
    events = trace["traceEvents"]
    assert all({"ph", "ts", "pid", "tid"} <= event.keys() for event in events)
    complete = [e for e in events if e["ph"] == "X"]
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in complete)
    jobs = [e for e in complete if e["cat"] == "job"]
    assert len(jobs) == SOURCES + 2
    remote = [j for j in jobs if j["args"]["outcome"] == "remote"]
    assert sorted(j["name"] for j in remote) == sorted(
        [f"unit{i}.c" for i in range(SOURCES)] + ["main.c"]
    )
    assert all(j["args"]["server_run_ms"] > 0 and j["args"]["exit_code"] == 0 for j in remote)
    (link,) = [j for j in jobs if j["args"]["outcome"] == "local"]
    names = {(e["pid"], e["args"]["name"]) for e in events if e["name"] == "process_name"}
    assert {name for _, name in names} == {
        f"unix:{root_server.socket_path}",
        "local (this machine)",
    }
    assert link["pid"] in {pid for pid, name in names if name.startswith("local")}
    phases = {e["name"] for e in complete if e["cat"] == "phase"}
    assert {"analysis", "queue", "remote", "result"} <= phases
    for job in jobs:  # every phase inside its job, on its lane: the viewers nest them
        for phase in complete:
            if phase["cat"] == "phase" and (phase["pid"], phase["tid"]) == (job["pid"], job["tid"]):
                inside = job["ts"] <= phase["ts"] <= job["ts"] + job["dur"]
                assert not inside or phase["ts"] + phase["dur"] <= job["ts"] + job["dur"] + 0.2

    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size[0] == 1200 and 80 < image.size[1] < 3000


# -- the last build, from spans made by hand ---------------------------------------------------


def spans(*intervals: tuple[float, float]) -> object:
    from jailcc.client.trace import Span, Spans

    ring = Spans()
    for start, end in sorted(intervals, key=lambda i: i[1]):  # the ring: in order of end
        span = Span(start)
        span.end = end
        span.source = f"{start}-{end}"
        ring.add(span)
    return ring


def test_the_last_build_starts_after_the_last_idle_gap():
    ring = spans((0, 5), (1, 3), (30, 32), (31, 40), (33, 35), (45, 46))
    assert [s.source for s in ring.last_build(10.0)] == ["30-32", "33-35", "31-40", "45-46"]
    assert [s.source for s in ring.last_build(4.0)] == ["45-46"]
    assert len(ring.last_build(100.0)) == 6
    # A job still running since 40 joins the last finished job to nothing older than it.
    assert [s.source for s in ring.last_build(10.0, running_since=70.0)] == []
    assert len(ring.last_build(10.0, running_since=50.0)) == 4


def test_a_long_job_bridges_what_would_be_a_gap():
    ring = spans((0, 100), (10, 11), (50, 51))
    assert len(ring.last_build(10.0)) == 3


def test_the_ring_keeps_the_newest():
    from jailcc.client.trace import Span, Spans

    ring = Spans(size=3)
    for i in range(5):
        span = Span(float(i))
        span.end = i + 0.5
        ring.add(span)
    assert [s.start for s in ring.last_build(100.0)] == [2.0, 3.0, 4.0]


def test_lanes_never_overlap_and_reuse_the_lowest_free():
    from jailcc.client.trace import assign_lanes

    jobs = [
        {"server": "a", "start": 0.0, "end": 2.0},
        {"server": "a", "start": 1.0, "end": 3.0},
        {"server": "a", "start": 2.0, "end": 4.0},
        {"server": "local", "start": 1.0, "end": 1.5},
    ]
    assert assign_lanes(jobs) == {"a": 2, "local": 1}
    assert [j["lane"] for j in jobs] == [0, 1, 0, 0]
