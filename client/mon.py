"""`jailcc mon`: the farm, live, in a terminal (as distccmon-text and icemon show theirs).

Every refresh asks the per-user proxy (proxy.py `mon`), which knows the servers (hosts,
discovery) and holds the Kerberos ticket, and asks each server for its status in parallel.
Shown: one row per server with its slots as a bar, what runs there (anyone's jobs), then this
user's build. On a terminal the screen is redrawn in place with plain ANSI codes and fits its
size; otherwise each refresh is a block of plain lines.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import Any

from . import proxy_wire as pw
from .proxy_cli import ask_json
from .remote import printable

HOME_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen
MIN_WIDTH = 40
BAR = 10  # characters for a server's slots


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("seconds from 0.1 to 3600")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="jailcc mon", description="The farm, live.")
    parser.add_argument("--once", action="store_true", help="one snapshot, then exit")
    parser.add_argument("--json", action="store_true", help="the raw data as JSON")
    parser.add_argument(
        "--interval", type=_seconds, default=1.0, help="seconds between refreshes (default 1)"
    )
    args = parser.parse_args(argv)
    tty = sys.stdout.isatty() and not args.json
    try:
        while True:
            data = ask_json(pw.MAGIC_MON)
            if data is None:
                return 1
            if args.json:
                print(json.dumps(data, indent=2 if args.once else None), flush=True)
            else:
                _show(data, tty)
            if args.once:
                return 0
            time.sleep(max(args.interval, 0.1))
    except KeyboardInterrupt:
        if tty:
            sys.stdout.write("\n")
        return 0
    except BrokenPipeError:  # e.g. | head
        return 0


def _show(data: dict[str, Any], tty: bool) -> None:
    size = shutil.get_terminal_size()
    lines = render(data, max(size.columns, MIN_WIDTH))
    if tty:
        if len(lines) > size.lines - 1:  # the last row stays free: no scrolling
            hidden = len(lines) - (size.lines - 2)
            lines = [*lines[: size.lines - 2], f"... {hidden} more lines"]
        sys.stdout.write(HOME_CLEAR + "\n".join(lines))
    else:
        sys.stdout.write("\n".join(lines) + "\n\n")
    sys.stdout.flush()


def render(data: dict[str, Any], width: int) -> list[str]:
    """The screen as lines of at most width characters."""
    servers = data.get("servers", [])
    up = sum(1 for s in servers if s.get("status"))
    clock = time.strftime("%H:%M:%S", time.localtime(data.get("time", time.time())))
    lines = [f"jailcc mon  {clock}  {len(servers)} servers, {up} up", _build_line(data["build"])]
    lines.append("")
    name_width = max(12, width - 41)
    lines.append(
        f"{'SERVER':<{name_width}} {'SLOTS':<{BAR + 2}} {'RUN':>7} {'QUEUE':>5} {'SPEED':>6} OWNER"
    )
    for server in servers:
        lines += _server_lines(server, name_width, width)
    if not servers:
        lines.append("(no servers: see `jailcc hosts`)")
    lines += _own_jobs(data["build"].get("running", []), width)
    # Servers name the users and sources: no escape sequences of theirs reach the terminal.
    return [printable(line)[:width] for line in lines]


def _build_line(build: dict[str, Any]) -> str:
    now = build["current"]
    return (
        f"your build: {now['running']} running, {now['done']} done ({now['remote']} remote,"
        f" {now['local']} local, {now['fallback']} fell back), {now['failed']} failed,"
        f" {now['elapsed']:.0f} s"
    )


def _server_lines(server: dict[str, Any], name_width: int, width: int) -> list[str]:
    name = elide_middle(server["server"], name_width)
    status = server.get("status")
    if not status:
        why = str(server.get("error") or "no answer")
        return [f"{name:<{name_width}} down", *_wrapped(why, width - 4, "    ")]
    slots, now, running = status["slots"], status["slots_now"], status["running"]
    owner = "busy" if status["owner_busy"] else "-"
    row = (
        f"{name:<{name_width}} {slot_bar(running, now, slots):<{BAR + 2}}"
        f" {f'{running}/{slots}':>7} {status['queued']:>5} {status['speed']:>5.1f}x {owner}"
    )
    lines = [row]
    source_width = max(8, width - 25)
    for job in sorted(status.get("jobs", []), key=lambda j: -j["elapsed"]):
        source = elide_left(job.get("source") or "?", source_width)
        user = elide_left(job["user"], 10)
        lines.append(f"    {user:<10} {source:<{source_width}} {job['elapsed']:>6.1f}s")
    return lines


def _own_jobs(running: list[dict[str, Any]], width: int) -> list[str]:
    if not running:
        return []
    server_width = max(10, width // 3)
    source_width = max(8, width - server_width - 22)
    lines = ["", "your jobs in progress:"]
    for job in running:
        source = elide_left(job["source"] or "?", source_width)
        where = elide_middle(job["server"] or "-", server_width)
        lines.append(
            f"    {source:<{source_width}} {job['phase']:<8} {where:<{server_width}}"
            f" {job['elapsed']:>5.1f}s"
        )
    return lines


def _wrapped(text: str, width: int, indent: str) -> list[str]:
    """text in lines of at most width characters, each after indent (three at most)."""
    width = max(width, 20)
    parts = [text[i : i + width] for i in range(0, len(text), width)][:3]
    return [indent + part for part in parts]


def slot_bar(running: int, slots_now: int, slots: int) -> str:
    """[##..x]: '#' a running job, '.' a free slot, 'x' a slot the owner's work holds back;
    one character a slot up to BAR, scaled beyond."""
    scale = min(1.0, BAR / slots) if slots else 1.0
    busy, offered, total = (round(n * scale) for n in (running, slots_now, slots))
    return "[" + "".join(_slot(i, busy, offered) for i in range(total)) + "]"


def _slot(i: int, busy: int, offered: int) -> str:
    if i < busy:
        return "#"
    return "." if i < offered else "x"


def elide_left(text: str, width: int) -> str:
    """text, its start replaced by "..." to fit width (a path's end says most)."""
    return text if len(text) <= width else "..." + text[len(text) - width + 3 :]


def elide_middle(text: str, width: int) -> str:
    """text, its middle replaced by "..." to fit width (a server's name and port matter)."""
    if len(text) <= width:
        return text
    head = (width - 3) // 2
    return text[:head] + "..." + text[len(text) - (width - 3 - head) :]
