"""`jailcc mon`: a real proxy asking a real jailccd for its status while a slow compile runs
there, shown once, as JSON, and live in an 80x24 pseudo-terminal; and its screen at 80
columns from data of the status request's shape."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from serverutil import Server, stop_server

JAILCC = str(BIN / "jailcc")


def slow_source(path: Path, statements: int = 6000) -> None:
    """A C file gcc -O2 takes seconds over."""
    body = [f"  x += a[{i}] * {i} ^ (x >> {i % 7});" for i in range(statements)]
    path.write_text("\n".join(["int f(int *a) { int x = 0;", *body, "  return x; }"]))


@pytest.fixture
def env(root_server: Server) -> Iterator[dict[str, str]]:
    env = {**os.environ, "JAILCC_HOSTS": f"unix:{root_server.socket_path}"}
    started = subprocess.run([JAILCC, "proxy", "start"], env=env, capture_output=True)
    assert started.returncode == 0, started.stderr
    yield env
    subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True)


@pytest.fixture
def slow_compile(env: dict[str, str], tmp_path: Path) -> Iterator[threading.Thread]:
    """A compile that runs on the server for seconds, through the proxy."""
    slow_source(tmp_path / "slow.c")
    done: list[subprocess.CompletedProcess] = []
    thread = threading.Thread(
        target=lambda: done.append(
            subprocess.run(
                [JAILCC, "gcc-12", "-O2", "-c", "slow.c"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                timeout=300,
            )
        )
    )
    thread.start()
    yield thread
    thread.join()
    assert done[0].returncode == 0, done[0].stderr


def mon_json(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [JAILCC, "mon", "--once", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for_job(env: dict[str, str], source: str) -> dict:
    """mon's data once the server reports `source` running."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        data = mon_json(env)
        status = data["servers"][0]["status"]
        if status and any(j["source"] == source for j in status["jobs"]):
            return data
        time.sleep(0.2)
    raise AssertionError(f"{source} never showed as running: {data}")


@requires_root
def test_once_and_json_show_the_server_and_the_job_running_there(env, root_server, slow_compile):
    data = wait_for_job(env, "slow.c")
    (entry,) = data["servers"]
    assert entry["server"] == f"unix:{root_server.socket_path}" and entry["error"] == ""
    assert entry["status"]["running"] >= 1 and entry["status"]["slots"] == 2
    assert data["build"]["current"]["running"] >= 1
    assert any(job["source"] == "slow.c" for job in data["build"]["running"])

    text = subprocess.run(
        [JAILCC, "mon", "--once"], env=env, capture_output=True, text=True, timeout=60
    )
    assert text.returncode == 0, text.stderr
    assert "\x1b" not in text.stdout  # not a terminal: plain lines
    row = next(line for line in text.stdout.splitlines() if line.startswith("unix:"))
    assert "[#" in row and "/2" in row
    assert re.search(r"^\s+root\s+slow\.c\s+\d+\.\ds$", text.stdout, re.M), text.stdout
    assert "your build: 1 running" in text.stdout


@requires_root
def test_a_server_that_does_not_answer_shows_as_down(env, root_server):
    stop_server(root_server)
    data = mon_json(env)
    (entry,) = data["servers"]
    assert entry["status"] is None and entry["error"]
    text = subprocess.run([JAILCC, "mon", "--once"], env=env, capture_output=True, text=True)
    lines = text.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("unix:/tmp/"))
    assert lines[at].endswith("jailccd.sock down")  # a long name loses its middle
    assert lines[at + 1].startswith("    cannot connect")  # the whole reason, below


@requires_root
def test_live_in_an_80x24_terminal_then_ctrl_c(env, slow_compile):
    wait_for_job(env, "slow.c")
    pid, master = pty.fork()
    if pid == 0:  # the child: a terminal of 24 rows and 80 columns, then mon
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        os.execve(JAILCC, [JAILCC, "mon", "--interval", "0.3"], env)
    output = read_for(master, 3.0)
    os.write(master, b"\x03")  # Ctrl-C: SIGINT from the terminal
    output += read_for(master, 2.0)
    _, status = os.waitpid(pid, 0)
    os.close(master)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    text = output.decode()
    frames = text.split("\x1b[H\x1b[2J")
    assert len(frames) >= 3, text  # redrawn in place, more than once
    assert "Traceback" not in text
    for frame in frames[1:]:
        lines = frame.replace("\r", "").replace("^C", "").split("\n")
        assert len(lines) <= 23
        assert all(len(line) <= 80 for line in lines), frame
    # The job shows in the live view (it may have ended before the last frames).
    assert any("slow.c" in frame for frame in frames[1:]), text


def read_for(fd: int, seconds: float) -> bytes:
    out = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child exited: the pty is closed
                break
            if not chunk:
                break
            out += chunk
    return out


# -- the screen, from data of the status request's shape ---------------------------------------


def status(jobs: list[dict], **fields: object) -> dict:
    return {
        "server": "jailccd 0.1.0",
        "protocol": 2,
        "host": "build1",
        "uptime": 100.0,
        "slots": 4,
        "slots_now": 4,
        "running": len(jobs),
        "queued": 0,
        "owner_busy": False,
        "speed": 1.3,
        "images": [],
        "jobs": jobs,
        "totals": {},
        **fields,
    }


def screen(servers: list[dict], running: list[dict] | None = None) -> dict:
    current = {"done": 40, "remote": 35, "local": 3, "fallback": 2, "failed": 1}
    current.update(running=len(running or []), elapsed=61.2)
    return {
        "time": time.time(),
        "servers": servers,
        "build": {"totals": {}, "current": current, "running": running or []},
    }


def test_the_screen_fits_80_columns_however_long_the_names():
    from jailcc.client.mon import render

    long_source = "src/" + "very/deep/" * 20 + "module_with_a_long_name.cc"
    data = screen(
        [
            {
                "server": "tcp:" + "build-machine-" * 8 + ".example.com:3633",
                "status": status(
                    [
                        {"user": "alice@EXAMPLE.COM" * 3, "source": long_source, "elapsed": 12.3},
                        {"user": "bob", "source": None, "elapsed": 1.0, "jail": 2},
                    ],
                    slots=32,
                    slots_now=16,
                    owner_busy=True,
                ),
                "error": "",
            },
            {
                "server": "build2:3633",
                "status": None,
                "error": "cannot connect: \x1b]0;pwned\x07refused " + "x" * 60 + " END",
            },
        ],
        running=[{"source": long_source, "phase": "queue", "server": "", "elapsed": 3.0}],
    )
    lines = render(data, 80)
    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    assert "module_with_a_long_name.cc" in text  # elided at the start: the name stays
    assert "...e.com:3633" in text or ".example.com:3633" in text
    assert "build2:3633" in text and "    cannot connect: ?]0;pwned?refused" in text
    assert "x END" in text  # the reason whole, past what the row leaves it
    assert "\x1b]" not in text  # a server's escape sequences never reach the terminal
    assert "busy" in text and "2/32" in text
    assert "your build: 1 running, 40 done" in text


def test_the_slot_bar():
    from jailcc.client.mon import slot_bar

    assert slot_bar(1, 4, 4) == "[#...]"
    assert slot_bar(2, 2, 4) == "[##xx]"  # the owner holds two back
    assert slot_bar(0, 0, 0) == "[]"
    assert len(slot_bar(40, 64, 64)) == 12  # scaled to ten characters
