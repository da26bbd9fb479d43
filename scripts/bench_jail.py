"""The jail benchmark behind scripts/bench-jail (see there)."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from jailcc.sandbox.api import Sandbox

# A `true` with no libc at all, so every contender runs the very same tiny static program.
TRUE_C = 'void _start(void) { __asm__ volatile("mov $60, %eax\\n xor %edi, %edi\\n syscall"); }\n'
UID = "1999999999"
PACE = 0.02


def build_true(directory: Path) -> Path:
    src, out = directory / "true.c", directory / "true"
    src.write_text(TRUE_C)
    subprocess.run(["gcc", "-static", "-nostdlib", "-O1", "-o", str(out), str(src)], check=True)
    return out


def build_image(directory: Path) -> Path:
    image = directory / "gcc-12.img"
    jailcc_image = Path(sys.executable).with_name("jailcc-image")
    subprocess.run(
        [str(jailcc_image), "build", "--compiler", "/usr/bin/gcc-12", "-o", str(image)],
        check=True,
        capture_output=True,
    )
    return image


@contextlib.contextmanager
def mounted(image: Path, directory: Path) -> Iterator[Path]:
    target = directory / "mnt"
    target.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", str(image), str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def measure(
    contenders: dict[str, Callable[[], None]], rounds: int, block: int = 25, gap: float = 0.0
) -> dict[str, float]:
    """Median cycle time of each contender, run in alternating blocks of back-to-back cycles so
    that the machine's noise falls on all of them alike."""
    for cycle in contenders.values():  # warm-up
        for _ in range(5):
            cycle()
    times: dict[str, list[float]] = {label: [] for label in contenders}
    while len(next(iter(times.values()))) < rounds:
        for label, cycle in contenders.items():
            for _ in range(block):
                time.sleep(gap)
                t0 = time.perf_counter()
                cycle()
                times[label].append(time.perf_counter() - t0)
    medians = {}
    for label, values in times.items():
        medians[label] = statistics.median(values) * 1000
        p90 = sorted(values)[int(len(values) * 0.9)] * 1000
        print(f"  {label:<34} median {medians[label]:6.2f} ms  (p90 {p90:.2f})", file=sys.stderr)
    return medians


def bwrap_cmd(root: Path, true: Path) -> list[str]:
    cmd = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--uid",
        UID,
        "--gid",
        UID,
        "--tmpfs",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/w",
        "--ro-bind",
        str(true),
        "/w/true",
        "--chdir",
        "/w",
    ]
    for entry in sorted(os.listdir(root)):
        path = root / entry
        if entry in ("dev", "proc", "tmp"):
            continue
        if path.is_symlink():
            cmd += ["--symlink", os.readlink(path), "/" + entry]
        elif path.is_dir():
            cmd += ["--ro-bind", str(path), "/" + entry]
    return [*cmd, "/w/true"]


def unshare_cmd(root: Path, true: Path, scratch: Path) -> list[str]:
    script = f"""set -e
r={scratch}
mount -t tmpfs -o size=1m jail $r
for e in {root}/*; do n=$(basename $e)
  case $n in dev|proc|tmp) continue;; esac
  if [ -L $e ]; then ln -s $(readlink $e) $r/$n
  else mkdir $r/$n; mount --bind -o ro $e $r/$n; fi
done
mkdir $r/dev $r/proc $r/tmp $r/w
mount -t proc proc $r/proc
mount -t tmpfs -o size=1m tmp $r/tmp
mount -t tmpfs -o size=1m,uid={UID} w $r/w
cp {true} $r/w/true
exec chroot --userspec={UID}:{UID} $r /w/true
"""
    return [
        "unshare",
        "--mount",
        "--pid",
        "--net",
        "--ipc",
        "--uts",
        "--fork",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description="jail build+run+teardown benchmark")
    parser.add_argument("rounds", nargs="?", type=int, default=200)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench-jail: must run as root", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="jailcc-bench-") as tmp:
        work = Path(tmp)
        true = build_true(work)
        image = build_image(work)
        program = true.read_bytes()
        print(
            f"bench-jail: {args.rounds} rounds each; build a jail, run `true`, tear it down",
            file=sys.stderr,
        )
        with Sandbox({"gcc-12": str(image)}) as sandbox, mounted(image, work) as root:

            def jailcc_cycle() -> None:
                jail = sandbox.create_jail("gcc-12")
                result = jail.run(
                    ["/w/true"], cwd="/w", inputs={"true": program}, executables=["true"]
                )
                jail.close()
                assert result.exit_code == 0, result.stderr

            bw = bwrap_cmd(root, true)
            scratch = work / "scratch"
            scratch.mkdir()
            un = unshare_cmd(root, true, scratch)
            contenders = {
                "jailcc sandbox": jailcc_cycle,
                "bubblewrap": lambda: subprocess.run(bw, check=True),
                "unshare(1) + mount(8) + chroot": lambda: subprocess.run(un, check=True),
            }
            print("back to back (every jail built on demand):", file=sys.stderr)
            tight = measure(contenders, args.rounds)
            print(
                f"paced, {PACE * 1000:.0f} ms apart (jailcc hands out a warm jail):",
                file=sys.stderr,
            )
            paced = measure(contenders, args.rounds // 2, gap=PACE)
    report("back to back: every jail built on demand", tight)
    report(f"paced {PACE * 1000:.0f} ms apart: jailcc hands out a jail built ahead", paced)
    return 0


def report(title: str, medians: dict[str, float]) -> None:
    ours = medians["jailcc sandbox"]
    print(f"\n{title}\n")
    print("| jail cycle (build, run `true`, tear down) | median ms | jailcc / this |")
    print("|---|---|---|")
    for label, median in medians.items():
        print(f"| {label} | {median:.2f} | {ours / median:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
