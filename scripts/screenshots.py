"""scripts/screenshots: README's pictures from a real build (see the shell wrapper)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import projects

TOP = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
IMAGES = TOP / "docs" / "images"
HOME_CLEAR = "\x1b[H\x1b[2J"
MONO = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"


def main() -> int:
    if projects.fetch().returncode:
        print("screenshots: cannot fetch zlib (scripts/fetch-sources)", file=sys.stderr)
        return 1
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jailcc-shots-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # jailccd's socket must be reachable
        image = work / "gcc-12.img"
        subprocess.run(
            [BIN / "jailcc-image", "build", "--compiler", "/usr/bin/gcc-12", "-o", image],
            check=True,
            capture_output=True,
        )
        sock = work / "jailccd.sock"
        server = subprocess.Popen(
            [
                BIN / "jailccd",
                "--toolchain-image",
                image,
                "--socket",
                sock,
                "--jobs",
                "2",
                "--allow-user",
                "root",
                "--log-file",
                work / "jailccd.log",
            ]
        )
        env = {
            **os.environ,
            "JAILCC_HOSTS": f"unix:{sock}",
            "JAILCC_DISCOVER": "",
            "XDG_CONFIG_HOME": str(work / "config"),
            "JAILCC_PROXY_IDLE": "60",
        }
        try:
            while not sock.exists():
                time.sleep(0.1)
            subprocess.run([BIN / "jailcc-py", "proxy", "start"], env=env, check=True)
            frame = build_and_watch(work, env)
            subprocess.run(
                [
                    BIN / "jailcc-py",
                    "trace",
                    "-o",
                    work / "trace.json",
                    "--png",
                    IMAGES / "trace.png",
                ],
                env=env,
                check=True,
            )
        finally:
            subprocess.run([BIN / "jailcc-py", "proxy", "stop"], env=env, capture_output=True)
            server.terminate()
            server.wait()
    text_png(frame, IMAGES / "mon.png")
    for name in ("mon.png", "trace.png"):
        print(f"{IMAGES / name}: {(IMAGES / name).stat().st_size // 1024} KB")
    return 0


def build_and_watch(work: Path, env: dict[str, str]) -> str:
    """Build zlib through jailcc (configure probes with plain gcc-12: only the build is
    traced) while `jailcc mon` runs in an 80x24 pty; the busiest screen it drew."""
    done = threading.Event()

    def build() -> None:
        result = projects.build(
            "zlib",
            work / "build",
            f"{BIN / 'jailcc'} gcc-12",
            jobs=4,
            env=env,
            configure_cc="gcc-12",
        )
        print(f"zlib: {'ok' if result.ok else result.log_tail()} in {result.seconds:.1f} s")
        done.set()

    builder = threading.Thread(target=build)
    builder.start()
    pid, master = pty.fork()
    if pid == 0:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        os.execve(BIN / "jailcc-py", ["jailcc-py", "mon", "--interval", "0.5"], env)
    output = b""
    while not done.is_set():
        if select.select([master], [], [], 0.5)[0]:
            output += os.read(master, 65536)
    os.write(master, b"\x03")
    os.waitpid(pid, 0)
    os.close(master)
    builder.join()
    frames = output.decode(errors="replace").split(HOME_CLEAR)[1:-1]  # whole frames only
    return max(frames, key=lambda f: (f.count("\n"), f.count("#")))


def text_png(text: str, path: Path, columns: int = 80, rows: int = 24) -> None:
    """A terminal's text drawn in a monospace font, light on dark."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(MONO, 14)
    cell_w, cell_h = font.getlength("M"), 18
    size = (int(columns * cell_w) + 24, rows * cell_h + 20)
    image = Image.new("RGB", size, (30, 30, 30))
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(text.replace("\r", "").split("\n")[:rows]):
        draw.text((12, 10 + row * cell_h), line, fill=(220, 220, 220), font=font)
    image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(path, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
