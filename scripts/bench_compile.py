"""The compile benchmark behind scripts/bench: jailcc against distcc and a local compile, all
on loopback in the same run (server and client share this machine's cores, so the figures are
overheads, not speed-ups). Prints Markdown tables with ratios."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import projects

BIN = Path(sys.executable).parent
JAILCC = str(BIN / "jailcc")
TRIVIAL = "int answer(void) { return 42; }\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not start")
        time.sleep(0.05)


@contextmanager
def jailccd(image: Path, state: Path, *extra: str, name: str = "jailccd") -> Iterator[str]:
    """A local-mode jailccd for root, its socket and log named `name` in state, with extra
    options; yields its JAILCC_HOSTS entry."""
    sock = state / f"{name}.sock"
    proc = subprocess.Popen(
        [
            str(BIN / "jailccd"),
            "--toolchain-image",
            str(image),
            "--socket",
            str(sock),
            "--allow-user",
            "root",
            "--log-file",
            str(state / f"{name}.log"),
            *extra,
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(sock.exists, "jailccd")
        yield f"unix:{sock}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def distccd(state: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "distccd",
            "--no-detach",
            "--daemon",
            "--allow",
            "127.0.0.1",
            "--listen",
            "127.0.0.1",
            "--port",
            str(port),
            "--jobs",
            "2",
            "--user",
            "distccd",
            "--log-file",
            str(state / "distccd.log"),
        ]
    )
    try:

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(up, "distccd")
        yield f"127.0.0.1:{port}/2"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def proxy_cpu(env: dict[str, str]) -> float:
    """CPU seconds the jailcc proxy for env has used, its preprocessor children included."""
    out = subprocess.run(
        [JAILCC, "status", "--json"], env=env, capture_output=True, text=True
    ).stdout
    try:
        pid = json.loads(out)["pid"]
        t = psutil.Process(pid).cpu_times()
    except (ValueError, KeyError, psutil.Error):
        return 0.0
    return t.user + t.system + t.children_user + t.children_system


def sources_sent(env: dict[str, str]) -> int:
    """Bytes the proxy has sent for tree jobs (JOB and BLOBS frames, as on the wire)."""
    out = subprocess.run(
        [JAILCC, "status", "--json"], env=env, capture_output=True, text=True
    ).stdout
    try:
        return int(json.loads(out)["sources"]["bytes_sent"])
    except (ValueError, KeyError, TypeError):
        return 0


def client_cpu(env: dict[str, str]) -> float:
    """CPU seconds of this process's waited-for children, plus the proxy's (it is no child)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + proxy_cpu(env)


def median_ms(argv: list[str], cwd: Path, env: dict[str, str], rounds: int) -> tuple[float, float]:
    """(median wall ms, mean client-side CPU ms) of `rounds` sequential runs after 3 warm-ups.
    Client-side: everything on this side of the wire (jailcc or distcc, the preprocessor, the
    proxy), not the server's compile."""
    times = []
    cpu_start = 0.0
    for i in range(rounds + 3):
        if i == 3:  # warm-up: caches, the proxy's connections, the server's warm jail
            cpu_start = client_cpu(env)
        t0 = time.perf_counter()
        subprocess.run(
            argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if i >= 3:
            times.append(time.perf_counter() - t0)
    cpu = (client_cpu(env) - cpu_start) / rounds
    return statistics.median(times) * 1000, cpu * 1000


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"\n{title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def per_job(
    work: Path, env_j: dict[str, str], env_d: dict[str, str], rounds: int, mid_source: Path
) -> str:
    (work / "trivial.c").write_text(TRIVIAL)
    # The mid-size TU beside copies of its project's headers, as in a checkout: a tree job
    # needs the files it reads below one directory other than / (the proxy sends a job whose
    # files span the whole file system preprocessed).
    shutil.copy(mid_source, work / "mid.c")
    for header in mid_source.parent.glob("*.h"):
        shutil.copy(header, work / header.name)
    rows = []
    for name, src, extra in (
        ("trivial TU", "trivial.c", []),
        (f"mid-size TU ({mid_source.name})", "mid.c", ["-I", "."]),
    ):
        args = ["-O2", *extra, "-c", src, "-o", "out.o"]
        local, local_cpu = median_ms(["gcc-12", *args], work, env_j, rounds)
        ours, ours_cpu = median_ms([JAILCC, "gcc-12", *args], work, env_j, rounds)
        theirs, theirs_cpu = median_ms(["distcc", "gcc-12", *args], work, env_d, rounds)
        rows.append(
            [
                name,
                f"{local:.1f}",
                f"{ours:.1f} (+{ours - local:.1f})",
                f"{theirs:.1f} (+{theirs - local:.1f})",
                f"{(ours - local) / (theirs - local):.2f}",
                f"{local_cpu:.1f}",
                f"{ours_cpu:.1f}",
                f"{theirs_cpu:.1f}",
                f"{ours_cpu / theirs_cpu:.2f}",
            ]
        )
    return table(
        f"Per job, median of {rounds} sequential compiles (ms; overhead over local), and"
        " client-side CPU per job (ms: everything on the client's side of the wire, the"
        " proxy included; for local, the whole compile)",
        [
            "job",
            "local",
            "jailcc",
            "distcc",
            "overhead jailcc / distcc",
            "CPU local",
            "CPU jailcc",
            "CPU distcc",
            "CPU jailcc / distcc",
        ],
        rows,
    )


def full_builds(
    work: Path,
    env_j: dict[str, str],
    env_d: dict[str, str],
    names: list[str],
    jobs: int,
    debug: bool,
) -> str:
    rows = []
    for name in names:
        common = {
            "jobs": jobs,
            "extra_flags": [] if debug else ["-g0"],
            "configure_cc": "gcc-12",
            "configure_cxx": "g++-12",
        }
        results, cpu, make_cpu, sent = {}, {}, {}, {}
        env_p = dict(env_j, JAILCC_SHIP="preprocessed")
        sources_cc = (f"{JAILCC} gcc-12", f"{JAILCC} g++-12")  # the default: sources
        for label, cc, cxx, env in (
            ("local", "gcc-12", "g++-12", {}),
            ("preprocessed", f"{JAILCC} gcc-12", f"{JAILCC} g++-12", env_p),
            ("sources", *sources_cc, env_j),
            ("distcc", "distcc gcc-12", "distcc g++-12", env_d),
        ):
            tree = work / ("g" if debug else "nog") / label
            before, sent_before = client_cpu(env_j), sources_sent(env_j)
            proxy_before = proxy_cpu(env_j)
            result = projects.build(name, tree, cc, cxx, env=env, **common)
            cpu[label] = client_cpu(env_j) - before
            # The make step alone, as the build times are (configure probes with plain gcc).
            make_cpu[label] = result.make_cpu + proxy_cpu(env_j) - proxy_before
            sent[label] = sources_sent(env_j) - sent_before
            if result.returncode != 0:
                raise SystemExit(f"bench: {name} with {label} failed:\n{result.log[-2000:]}")
            results[label] = result
            print(f"bench: {name} {label}: {result.seconds:.1f} s", file=sys.stderr)
        # A second clean build of the unchanged tree: the servers' stores have its files.
        sent_before = sources_sent(env_j)
        again = projects.build(
            name, work / ("g" if debug else "nog") / "sources", *sources_cc, env=env_j, **common
        )
        sent["again"] = sources_sent(env_j) - sent_before
        results["again"] = again
        print(f"bench: {name} sources again: {again.seconds:.1f} s", file=sys.stderr)
        for label in ("preprocessed", "sources", "again"):
            diff = projects.compare(results["local"], results[label])
            if diff:
                raise SystemExit(f"bench: {name}: {label}'s objects differ from local: {diff[:5]}")
        t = {k: v.seconds for k, v in results.items()}
        rows.append(
            [
                name,
                str(len(results["local"].objects)),
                f"{t['local']:.1f}",
                f"{t['preprocessed']:.1f}",
                f"{t['sources']:.1f}",
                f"{t['distcc']:.1f}",
                f"{t['preprocessed'] / t['distcc']:.2f}",
                f"{t['sources'] / t['distcc']:.2f}",
                f"{t['sources'] / t['local']:.2f}",
                f"{cpu['sources'] / cpu['distcc']:.2f}" if cpu["distcc"] > 0 else "-",
                f"{make_cpu['sources'] / make_cpu['distcc']:.2f}" if make_cpu["distcc"] else "-",
                f"{sent['sources'] / 1e6:.1f}",
                f"{sent['again'] / sent['sources']:.3f}" if sent["sources"] else "-",
            ]
        )
    flags = "Debian's flags (git: its own), -g included" if debug else "the same, -g0"
    return table(
        f"Full builds, make -j{jobs}, seconds ({flags}; sources: jailcc's default, preprocessed:"
        " JAILCC_SHIP=preprocessed; objects of both checked identical to the local build; client"
        " CPU: everything on the client's side of the wire, the proxy included, over the whole"
        " build (configure too) and over the make step alone, which the times measure)",
        [
            "project",
            "objects",
            "local",
            "preprocessed",
            "sources",
            "distcc",
            "preprocessed / distcc",
            "sources / distcc",
            "sources / local",
            "client CPU sources / distcc",
            "the same, make step only",
            "sources MB sent",
            "second build's bytes / first's",
        ],
        rows,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30, help="compiles per per-job figure")
    parser.add_argument("--jobs", type=int, default=2, help="make -j for the full builds")
    parser.add_argument("--projects", nargs="*", default=["zlib", "lua5.4"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: must run as root (jailccd builds jails)", file=sys.stderr)
        return 2
    if projects.fetch(extra=args.projects).returncode != 0:
        print("bench: cannot fetch the project sources", file=sys.stderr)
        return 1
    state = Path(tempfile.mkdtemp(prefix="jailcc-bench-"))
    state.chmod(0o755)
    try:
        image = state / "gcc-12.img"
        subprocess.run(
            [
                str(BIN / "jailcc-image"),
                "build",
                "-q",
                "--compiler",
                "/usr/bin/gcc-12",
                "--compiler",
                "/usr/bin/g++-12",
                "--headers",  # tree jobs (jailcc's default) compile against them
                "-o",
                str(image),
            ],
            check=True,
        )
        with distccd(state) as dhost:
            base = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCC", "JAILCC"))}
            env_d = dict(base, DISTCC_HOSTS=dhost, DISTCC_FALLBACK="0")
            work = state / "work"
            work.mkdir()
            mid = projects.SRC_ROOT / "zlib" / "deflate.c"
            sections: list[Callable[[dict[str, str]], str]] = [
                lambda env_j: per_job(work, env_j, env_d, args.rounds, mid),
                lambda env_j: full_builds(work, env_j, env_d, args.projects, args.jobs, False),
                lambda env_j: full_builds(work, env_j, env_d, args.projects, args.jobs, True),
            ]
            # Each section with a jailccd of its own, so that its first sources build finds
            # the servers' stores empty (the "second build's bytes" column), and the per-user
            # proxy as a developer has it: started once, warm for the builds.
            for n, section in enumerate(sections):
                with jailccd(image, state, name=f"jailccd-{n}") as jhost:
                    env_j = dict(base, JAILCC_HOSTS=jhost)
                    subprocess.run([JAILCC, "proxy", "start"], env=env_j, check=True)
                    try:
                        print(section(env_j), flush=True)
                    finally:
                        subprocess.run([JAILCC, "proxy", "stop"], env=env_j)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
