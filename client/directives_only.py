"""What gcc's -fdirectives-only preprocessing (the exact -g mode of job.py) loses.

That mode sends the output of `gcc -E -fdirectives-only`, in which the server expands the
macros, so every token keeps its line and column. But the preprocessor runs some pragmas
itself there and leaves nothing in their place, so the compile of its output differs:
- `#pragma omp ...` and `#pragma acc ...` (with -fopenmp, -fopenacc: the loop then runs
  serially), `redefine_extname` (the object calls the old name) and `message` (the note is
  not said): the pragmas registered with macro expansion;
- `push_macro` and `pop_macro` (a pop becomes `#undef`: the macro's old value is lost),
  `GCC poison` (a poisoned name compiles), `GCC warning` and `GCC error`, and
  `GCC system_header` in a file not already a system header (its warnings are no longer
  silenced).
And it spells the pragmas it keeps again, token by token: a pragma on the translation
unit's last line moves the end-of-file location debug info gives static initializers.

`lost_pragma` finds any of these in the files the output came from (named by its line
markers), so that such a job compiles locally instead.
"""

from __future__ import annotations

import os
import re

_LINE_MARKER = re.compile(rb'^# \d+ "((?:[^"\\\n]|\\.)*)"((?: \d)*)$', re.M)
_DROPPED = re.compile(
    rb"^[ \t\f\v]*(?:#|%:)[ \t\f\v]*pragma[ \t\f\v]+"
    rb"(push_macro|pop_macro|redefine_extname|message|omp|acc"
    rb"|GCC[ \t\f\v]+(?:poison|warning|error|system_header))\b",
    re.M,
)
_SYSTEM_HEADER = re.compile(rb"GCC[ \t\f\v]+system_header")
_MAX_CACHED = 20_000
# (path, mtime_ns, size, inode) -> the first dropped pragma it holds ("" for none)
_seen: dict[tuple[str, int, int, int], str] = {}


def lost_pragma(output: bytes, cwd: str) -> str | None:
    """The first pragma that `output` (of gcc -E -fdirectives-only run in cwd) lost or may
    have moved, as "#pragma NAME in FILE"; None when there is none. A file that cannot be
    read counts as holding one."""
    files: dict[str, bool] = {}  # name as gcc opened it -> a system header
    for match in _LINE_MARKER.finditer(output):
        name = _unescape(match.group(1))
        if (name.startswith("<") and name.endswith(">")) or name.endswith("//"):
            continue  # <built-in>, <command-line>; with -g, the working directory ("DIR//")
        files[name] = files.get(name, False) or b"3" in match.group(2).split()
    for name, system in files.items():
        found = _dropped_in(os.path.join(cwd, name))
        if found and not (system and _SYSTEM_HEADER.fullmatch(found.encode())):
            return f"#pragma {found} in {name}"
    last = _last_line(output)
    if last.startswith((b"#pragma", b"%:pragma")):
        return "a #pragma on the last line"
    return None


def _dropped_in(path: str) -> str:
    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size, st.st_ino)
        if key in _seen:
            return _seen[key]
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return "(unreadable)"
    found = _DROPPED.search(data)
    said = re.sub(rb"[ \t\f\v]+", b" ", found.group(1)).decode() if found else ""
    if len(_seen) >= _MAX_CACHED:
        _seen.clear()
    _seen[key] = said
    return said


def _last_line(output: bytes) -> bytes:
    """The output's last line that holds something other than a line marker."""
    end = len(output)
    while end > 0:
        start = output.rfind(b"\n", 0, end - 1) + 1
        line = output[start:end].strip()
        if line and not _LINE_MARKER.fullmatch(line):
            return line
        end = start
    return b""


def _unescape(name: bytes) -> str:
    """A line marker's file name: gcc escapes backslash, quote and unprintable bytes
    (as octal)."""
    out = bytearray()
    i = 0
    while i < len(name):
        c = name[i]
        if c == 0x5C and i + 1 < len(name):
            octal = re.match(rb"[0-7]{1,3}", name[i + 1 : i + 4])
            if octal:
                out.append(int(octal.group(), 8) & 0xFF)
                i += 1 + len(octal.group())
                continue
            out.append(name[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return out.decode("utf-8", "surrogateescape")
