"""The desktop owner's slowdown behind scripts/bench-desktop: a CPU-bound "owner" workload (one
process per core, a fixed amount of hashing each) timed alone, then while a local jailccd is
kept busy with compiles, first without and then with the desktop policy (--desktop: fewer
slots, SCHED_IDLE, eviction under sustained pressure). The compiles come from raw protocol
clients sending an already-preprocessed source again and again, so the client side costs the
machine next to nothing and the figures show what the farm takes from the owner. Also prints
how many compiles the farm finished meanwhile. All in one run; ratios against the owner
alone."""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compile import jailccd
from jailcc import protocol as proto
from jailcc.images.identity import compiler_identity

BIN = Path(sys.executable).parent
COMPILER = "/usr/bin/gcc-12"


def owner_work(megabytes: int) -> None:
    block = bytes(1 << 20)
    digest = hashlib.sha256()
    for _ in range(megabytes):
        digest.update(block)


def owner_seconds(megabytes: int) -> float:
    """Wall time of the owner's workload: one process per core, each hashing `megabytes`."""
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    procs = [multiprocessing.Process(target=owner_work, args=(megabytes,)) for _ in range(cores)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.perf_counter() - started


class Feeder:
    """Clients that keep the server busy with the same compile, as a build would."""

    def __init__(self, socket_path: Path, source: bytes, workdir: Path, clients: int) -> None:
        self.socket_path, self.source, self.workdir = socket_path, source, workdir
        self.done = 0
        self.refused = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]
        self.identity = compiler_identity(COMPILER)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(120)
                    sock.connect(str(self.socket_path))
                    hello = proto.hello_header("client", identity=self.identity, auth="local")
                    proto.send(sock, proto.HELLO, hello)
                    proto.expect(sock, proto.HELLO)
                    channel = proto.Channel(sock)
                    channel.expect(proto.READY)
                    while not self._stop.is_set():
                        job = {
                            "id": 1,
                            "identity": self.identity,
                            "args": ["-O2"],
                            "cwd": str(self.workdir),
                            "input": "work.i",
                            "mode": "c",
                            "env": {},
                            "files": [],
                            "source": "work.c",
                        }
                        channel.send(proto.JOB, job, [self.source], [True])
                        try:
                            channel.expect(proto.RESULT)
                            self.done += 1
                        except proto.RemoteError:
                            self.refused += 1  # busy or evicted: a proxy would go elsewhere
                            time.sleep(0.2)
            except (OSError, proto.ProtocolError):
                time.sleep(0.2)


def run_case(
    image: Path, state: Path, source: bytes, desktop: bool, megabytes: int, settle: float
) -> tuple[float, int, int]:
    name = "desktop" if desktop else "plain"
    options = ["--jobs", str(os.cpu_count() or 1), *(["--desktop"] if desktop else [])]
    with jailccd(image, state, *options, name=name) as host:
        feeder = Feeder(Path(host.removeprefix("unix:")), source, state, clients=4)
        feeder.start()
        time.sleep(settle)  # the farm at full speed (and the policy's first samples)
        seconds = owner_seconds(megabytes)
        feeder.stop()
        return seconds, feeder.done, feeder.refused


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench-desktop", description=__doc__)
    parser.add_argument("--megabytes", type=int, default=1500, help="owner work per core")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of farm load first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jailcc-bench-desktop-") as tmp_name:
        state = Path(tmp_name)
        state.chmod(0o755)
        image = state / "gcc-12.img"
        subprocess.run(
            [str(BIN / "jailcc-image"), "build", "-q", "--compiler", COMPILER, "-o", str(image)],
            check=True,
        )
        (state / "work.c").write_text(
            "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n"
            + "".join(
                f"int f{i}(const char *s) {{ return (int)strlen(s) * {i} + atoi(s); }}\n"
                for i in range(2000)
            )
        )
        source = subprocess.run(
            [COMPILER, "-E", "work.c"], cwd=state, capture_output=True, check=True
        ).stdout
        alone = owner_seconds(args.megabytes)
        plain, plain_jobs, _ = run_case(image, state, source, False, args.megabytes, args.settle)
        # The policy's monitor starts cautious: let it see the owner first, as on a desktop.
        kind, kind_jobs, kind_refused = run_case(
            image, state, source, True, args.megabytes, args.settle
        )
    print("\n| owner workload (CPU-bound, every core) | seconds | slowdown | farm compiles |")
    print("|---|---:|---:|---:|")
    print(f"| alone | {alone:.2f} | 1.00 | - |")
    print(f"| farm busy, no policy | {plain:.2f} | {plain / alone:.2f} | {plain_jobs} |")
    print(
        f"| farm busy, --desktop | {kind:.2f} | {kind / alone:.2f} | {kind_jobs}"
        f" ({kind_refused} refused or evicted) |"
    )


if __name__ == "__main__":
    main()
