"""What gcc's -fdirectives-only preprocessing (the exact -g mode of job.py) loses.

That mode sends the output of `gcc -E -fdirectives-only`, in which the server expands the
macros, so every token keeps its line and column. But the preprocessor runs some pragmas
itself there and leaves nothing in their place, so the compile of its output differs:
- `#pragma omp ...` and `#pragma acc ...` (with -fopenmp, -fopenacc: the loop then runs
  serially) and `redefine_extname` (the object calls the old name), pragmas registered with
  macro expansion: the line vanishes, and the lines after it are off by one;
- `pop_macro` becomes `#undef` (the macro's old value is lost);
- `GCC poison` (a poisoned name compiles) and `GCC system_header` in a file not already a
  system header (its warnings are no longer silenced) leave an empty line.
(`message`, `GCC warning` and `GCC error` make the preprocessor say something, and such a
job compiles locally anyway.) It also spells the pragmas it keeps again, token by token: a
pragma on the translation unit's last line moves the end-of-file location debug info gives
static initializers.

`lost_pragma` checks that every line of the output is the line of its file that its line
markers say it is (a directive: the same directive), which catches the first two, reads the
files for the last two, and looks at the last line, so that such a job compiles locally.
"""

from __future__ import annotations

import os
import re

# (indented as the #include it stands for was: _markers checks what stands before; a search
# from "# " runs ten times faster than one anchored at each line's start)
_LINE_MARKER = re.compile(rb'# (\d+) "((?:[^"\\\n]|\\.)*)"((?: \d)*)[ \t]*$', re.M)
_EDGE = 4096  # bytes looked at from each end of such a stretch
_CHECKED = 3  # lines at each end of a stretch between line markers that must be in place
# Pragmas the preprocessor runs and leaves a blank line for: looked for in the files.
_DROPPED = re.compile(
    rb"^[ \t\f\v]*(?:#|%:)[ \t\f\v]*pragma[ \t\f\v]+"
    rb"(GCC[ \t\f\v]+(?:poison|system_header))\b",
    re.M,
)
# The others it runs: looked for in the files whose output lines cannot be placed (those
# with #line directives, bison's and flex's output), where one in a skipped #if counts too.
_RUN_BY_CPP = re.compile(
    rb"^[ \t\f\v]*(?:#|%:)[ \t\f\v]*pragma[ \t\f\v]+"
    rb"(omp|acc|redefine_extname|push_macro|pop_macro)\b",
    re.M,
)
_LINE_DIRECTIVE = re.compile(rb"^[ \t\f\v]*(?:#|%:)[ \t\f\v]*(?:line\b|\d)", re.M)
_BOM = b"\xef\xbb\xbf"  # gcc drops it from a file's first line
_SYSTEM_HEADER = re.compile(rb"GCC[ \t\f\v]+system_header")
_MAX_CACHED = 20_000
_DIRECTIVE = re.compile(rb"[ \t\f\v]*(?:#|%:)[ \t\f\v]*([A-Za-z_]*)")


class _File:
    """What lost_pragma needs of a file: its lines, the first pragma of _DROPPED it holds
    (""), and, when it has #line directives, the first of _RUN_BY_CPP ("")."""

    __slots__ = ("dropped", "lines", "renumbered", "run_by_cpp")

    def __init__(self, data: bytes) -> None:
        self.lines = data.split(b"\n")
        self.dropped = _said(_DROPPED.search(data))
        self.renumbered = _LINE_DIRECTIVE.search(data) is not None
        self.run_by_cpp = _said(_RUN_BY_CPP.search(data)) if self.renumbered else ""


def _said(found: re.Match[bytes] | None) -> str:
    return re.sub(rb"[ \t\f\v]+", b" ", found.group(1)).decode() if found else ""


# (path, mtime_ns, size, inode) -> what lost_pragma needs of it
_seen: dict[tuple[str, int, int, int], _File] = {}


def lost_pragma(output: bytes, cwd: str) -> str | None:
    """The first pragma that `output` (of gcc -E -fdirectives-only run in cwd) lost or may
    have moved, said for the user; None when there is none. A file that cannot be read
    counts as holding one."""
    files: dict[str, bool] = {}  # name as gcc opened it -> a system header
    read: dict[str, _File | None] = {}  # each file once per job

    def _read_cached(cwd: str, name: str) -> _File | None:
        if name not in read:
            read[name] = _read(os.path.join(cwd, name))
        return read[name]

    markers = _markers(output)
    for at, marker in enumerate(markers):
        name = _unescape(marker.group(2))
        if (name.startswith("<") and name.endswith(">")) or name.endswith("//"):
            continue  # <built-in>, <command-line>; with -g, the working directory
        flags = marker.group(3).split()
        if name not in files and files and b"1" not in flags:
            continue  # a name only a #line directive gives: no file of it was read
        files[name] = files.get(name, False) or b"3" in flags
        source = _read_cached(cwd, name)
        if source is not None and source.renumbered:
            continue  # its lines cannot be placed: its pragmas are looked for below
        start = marker.end() + 1
        end = markers[at + 1].start() if at + 1 < len(markers) else len(output)
        moved = _out_of_place(output, start, end, int(marker.group(1)), source)
        if moved is not None:
            return f"a pragma run by the preprocessor in {name} (line {moved})"
    for name, system in files.items():
        found = _read_cached(cwd, name)
        if found is None:
            return f"{name} could not be read again"
        if found.dropped and not (system and found.dropped.startswith("GCC system")):
            return f"#pragma {found.dropped} in {name}"
        if found.run_by_cpp:
            return f"#pragma {found.run_by_cpp} in {name}"
    last = _last_line(output)
    if last.startswith((b"#pragma", b"%:pragma")):
        return "a #pragma on the last line"
    return None


def _out_of_place(
    output: bytes, start: int, end: int, first: int, source: _File | None
) -> int | None:
    """The line number of a line among the first and last few that hold something of a
    stretch of output (output[start:end], whose first line is line `first` of its file)
    that is not that line of the file: a line the preprocessor dropped (or replaced) moves
    the ones after it."""
    if source is None:
        return first
    lines = source.lines
    count = output.count(b"\n", start, end) + (end > start and output[end - 1 : end] != b"\n")
    head = output[start : min(end, start + _EDGE)].split(b"\n")
    if start + _EDGE < end:
        head.pop()  # (a line cut short)
    head = head[:count]
    tail_from = max(start, end - _EDGE)
    tail = output[tail_from:end].split(b"\n")
    if end > start and output[end - 1 : end] == b"\n":
        tail.pop()  # (after the last newline)
    if tail_from > start:
        tail = tail[1:]  # (a line cut short)
    ends = ((head, 0, 1), (tail[::-1], count - 1, -1))
    for texts, number_of_first, step in ends:
        checked = 0
        for index, text in enumerate(texts):
            text = text.rstrip(b"\r")
            if not text.strip():
                continue
            number = first + number_of_first + step * index
            original = lines[number - 1].rstrip(b"\r") if 0 < number <= len(lines) else None
            if number == 1 and original is not None:
                original = original.removeprefix(_BOM)
            if not _same_line(text, original):
                return number
            checked += 1
            if checked == _CHECKED:
                break
    return None


def _markers(output: bytes) -> list[re.Match[bytes]]:
    """The line markers of output: those that only blanks precede on their line."""
    found = []
    for match in _LINE_MARKER.finditer(output):
        line_start = output.rfind(b"\n", 0, match.start()) + 1
        if not output[line_start : match.start()].strip(b" \t"):
            found.append(match)
    return found


def _same_line(written: bytes, original: bytes | None) -> bool:
    """Whether an output line is its source line: the very text, or for a directive, the
    same directive (the preprocessor writes directives anew)."""
    if original is None:
        return False
    if written == original:
        return True
    ours = _DIRECTIVE.match(written)
    theirs = _DIRECTIVE.match(original)
    return ours is not None and theirs is not None and ours.group(1) == theirs.group(1)


def _read(path: str) -> _File | None:
    """What lost_pragma needs of the file at path, cached; None if it cannot be read."""
    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size, st.st_ino)
        known = _seen.get(key)  # (one lookup: another thread may empty the cache meanwhile)
        if known is not None:
            return known
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if len(_seen) >= _MAX_CACHED:
        _seen.clear()
    _seen[key] = found = _File(data)
    return found


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
    if b"\\" not in name:
        return name.decode("utf-8", "surrogateescape")
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
