"""Include analysis: the files a compile reads, found without running the preprocessor per job.

Where it sits.  Issue 11 ("ship sources, not preprocessed output"): the per-user proxy
(``client/proxy.py``) will hold one ``IncludeAnalyzer`` for its whole life and ask it, for each
job, ``files_read(argv, cwd, env)``: the source, every header the compile may read, and the
``-include``/``-imacros`` files, as the paths the compiler opens and their resolved real paths,
with a content digest each.  Those are what the client offers the server's content-addressed
store and what the jail materializes at the client's paths.  When it cannot bound the set
(a computed include it cannot evaluate, an option it does not follow, ``CPATH`` set...) it says
so (``Analysis.unsupported``), and the job ships preprocessed output instead.

Soundness does not rest on this module: the compile in the jail reports the files it really
read and the client compiles locally on any difference.  So, like distcc pump's include server
(whose design this follows; docs/include-analysis.md has the study and the measurements), it
errs towards more files:

* each file is scanned for directives only (line splices, comments and literals handled), once
  per content: results are kept by SHA-256 of the bytes, and a path's bytes are re-read only
  when its stat signature (device, inode, size, mtime, ctime) changes, or while the file is
  younger than ``RACY_SECONDS`` (a write within one timestamp tick would go unseen);
* conditionals are not evaluated and include guards and ``#pragma once`` do not matter: every
  ``#include``, ``#include_next`` and ``#import`` of every file reached counts, so the set is a
  superset of what any configuration of the macros would read;
* names resolve as gcc resolves them: the including file's directory (not with ``-I-``), the
  quote chain (``-iquote``, and ``-I`` before ``-I-``), the bracket chain (``-I``), the system
  chain (``-isystem``, the compiler's own directories from ``CC -E -v``, ``-idirafter``), with
  gcc's removal of missing and duplicate directories; ``-include``/``-imacros`` files are
  looked for in the working directory first; the files the compiler reads before the source
  (gcc's implicit ``stdc-predef.h``) come from the line markers of the same probe, which runs
  once per compiler and configuration (``CC FLAGS -x LANG -E -dD -v /dev/null``);
* ``#include_next`` (and ``__has_include_next``) takes every match in the whole chain;
* ``__has_include(...)`` and ``#pragma GCC dependency``: a file found is shipped (so that the
  probe gives the same answer in the jail) but not scanned;
* computed includes (``#include MACRO``) are evaluated over every definition of the macros
  found in the files reached, on the command line and among the compiler's predefined macros
  (multi-valued, as pump does), to a fixpoint; values that are not a header name are dropped
  (they could only be an error), a directive whose macros have no definition anywhere is
  inactive, and one that has definitions but yields no header name makes the analysis give up;
* directories are listed with ``scandir`` and the listing is kept while the directory's mtime
  stays the same (and it is not racy), so a header generated during the build is seen as soon
  as it exists: a miss is never cached beyond the directory's current state;
* symlinks: ``FileRead.path`` is the path as the compiler opens it (quote includes of that file
  resolve from its directory), ``FileRead.real`` the resolved one;
* what a file's includes resolve to is kept per configuration of the search chains (pump's
  "node"), checked on reuse against the file's entry and the presence of each name it looked
  up, so a build that adds objects to a directory does not undo it; a compile then costs a
  stat per file it reaches and a few dictionary look-ups.

Not handled (the analysis says "unsupported" or the set may be short; the soundness check
catches the rest): ``CPATH`` and friends in the environment, ``--sysroot``/``-isysroot`` and
other options that read files (the option table's ``path="read"`` rows not listed here),
``-iframework``, header maps, modules, ``#embed``, trigraphs (``??=include``), and macros
whose expansion the small multi-valued expander below cannot follow (it gives up).

Thread-safe (one lock: the work is CPU-bound Python anyway).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from jailcc.options import option_at

from .args import _CXX_DRIVER_SUFFIXES, _LANGUAGES, _SUFFIXES, expand_response_files

RACY_SECONDS = 2.0  # a file or directory changed this recently is checked again next time
MAX_FILES = 200_000  # parsed contents kept (the oldest quarter goes when it is exceeded)
MAX_FILE_BYTES = 256 << 20  # a file read and hashed, at most (a header, a source, a listing)
MAX_VALUES = 64  # values a computed include may take before the analysis gives up
MAX_EXPANSIONS = 20_000  # macro expansion steps per computed include
PROBE_TIMEOUT = 60.0
# The environment changes the compiler's search path: such jobs are not analysed.
SEARCH_ENV = ("CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "OBJC_INCLUDE_PATH", "SDKROOT")
# The compile writes a dependency file these name (the jail's would not): such jobs are not
# analysed (preprocessed, the local -E writes it); nor does the compiler probe write one.
DEPS_ENV = ("DEPENDENCIES_OUTPUT", "SUNPRO_DEPENDENCIES")
# Options that change neither the search path nor the predefined macros: left out of the
# compiler probe's key (fewer probes).  Everything else the command line holds goes to it.
_NOT_PROBED_PREFIXES = ("-W", "-g", "-ffile-prefix-map=", "-fdebug-prefix-map=", "-fmacro-pre")
# Modes that would make the probe print something else (the job is not a compile anyway).
_NOT_PROBED = frozenset(
    [
        "-E",
        "-M",
        "-MM",
        "-MG",
        "-H",
        "-P",
        "-C",
        "-CC",
        "-v",
        "-###",
        "-fsyntax-only",
        "-save-temps",
    ]
)


# ---------------------------------------------------------------------------------------------
# Results


class FileRead(NamedTuple):
    """One file the compile may read.

    path    absolute, as the compiler opens it (search directory + name, "." removed; ".."
            kept, since the kernel resolves it after symlinks)
    real    os.path.realpath(path)
    digest  SHA-256 of the contents, hex
    size    bytes
    """

    path: str
    real: str
    digest: str
    size: int


@dataclass(frozen=True)
class Analysis:
    """What ``IncludeAnalyzer.files_read`` found.

    files        the source first, then every file the compile may read (no duplicates by
                 path); empty when unsupported
    missing      include names found nowhere ('"x.h"', '<x.h>'): directives in branches the
                 compile does not take, or a compile that will fail; or the source's path,
                 when the source itself does not exist
    unsupported  None, or why the set cannot be bounded: ship preprocessed output instead
    notes        what was assumed (a computed include taken as inactive, ...)
    search       the directories a lookup tries, in order: the quote-only chain, then the
                 bracket chain (-I, -isystem, the compiler's own, -idirafter)
    system       the compiler's own directories (from its probe, not -isystem): the files
                 below them are the toolchain image's to provide
    """

    files: tuple[FileRead, ...] = ()
    missing: tuple[str, ...] = ()
    unsupported: str | None = None
    notes: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    system: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.unsupported is None

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(f.path for f in self.files)

    @property
    def real_paths(self) -> frozenset[str]:
        return frozenset(f.real for f in self.files)


class Unsupported(Exception):
    """The analysis cannot bound the set of files (the message says why)."""


class ProbeFailed(Unsupported):
    """The compiler refused the probe with these flags: so it will again, for this compiler
    file and these flags (kept, and raised again, rather than run again for every job)."""


def _missing(path: str, exc: OSError, searched: bool = False) -> None:
    """None for a file or directory that is not there, which the compiler passes over too (a
    header's name through a file, ENOTDIR, as well: libcpp and clang search on); Unsupported
    for one it would fail on (no permission, a symbolic link loop; a search directory, given
    by the user, under a file): the compiler says so, and the analysis cannot."""
    if exc.errno == errno.ENOENT or (exc.errno == errno.ENOTDIR and not searched):
        return None
    raise Unsupported(f"{path}: {exc.strerror}") from None


# ---------------------------------------------------------------------------------------------
# Directive scanning: one pass per distinct content

QUOTE, ANGLE, COMPUTED = 0, 1, 2


class Include(NamedTuple):
    """One inclusion a file may perform.

    kind    QUOTE ("x.h"), ANGLE (<x.h>) or COMPUTED (``text`` is the macro expression)
    text    the name between the delimiters, or the expression
    next    #include_next / __has_include_next: every match in the chain
    probe   __has_include / #pragma GCC dependency: ship the file found, do not scan it, and
            do not report it missing
    """

    kind: int
    text: str
    next: bool = False
    probe: bool = False


class Macro(NamedTuple):
    """A #define (or -D): params is None for an object-like macro."""

    params: tuple[str, ...] | None
    body: str


@dataclass(frozen=True)
class Directives:
    includes: tuple[Include, ...]
    defines: Mapping[str, tuple[Macro, ...]]
    # compares mtimes, which a copy lacks: __TIMESTAMP__ (the file's own), #pragma GCC
    # dependency (the file's against another's)
    timestamp: bool = False
    # #pragma once: gcc takes two such files for one when their size, contents and mtime agree
    # (libcpp's should_stack_file), and the jail's copies have mtimes of their own
    once: bool = False


_NO_DIRECTIVES = Directives((), {})
_SPLICE = re.compile(rb"\\[ \t\f\v]*\r?\n")
# Literals and header names are kept, comments go: a block comment becomes one space (it may
# join the lines of a directive, as in translation phase 3), a line comment nothing.
_LEXEMES = re.compile(
    rb"""
      (?P<keep> \#[ \t]*(?:include_next|include|import)[ \t]*<[^>\n]*>
              | "(?:\\.|[^"\\\n])*"
              | '(?:\\.|[^'\\\n])*' )
    | (?P<block> /\*.*?(?:\*/|\Z) )
    | //[^\n]*
    """,
    re.S | re.X,
)
_DIRECTIVE = re.compile(
    rb"^[ \t\f\v]*(?:\#|%:)[ \t\f\v]*"
    rb"(include_next|include|import|define|if|elif|pragma)\b([^\n]*)",
    re.M,
)
_DEFINE = re.compile(r"[ \t\f\v]*([A-Za-z_$][\w$]*)(\([^)]*\))?(.*)", re.S)
_HAS_INCLUDE = re.compile(r"__has_include(_next)?\s*\(\s*(\"[^\"]*\"|<[^>]*>|[^)]*?)\s*\)")
_PRAGMA_DEPENDENCY = re.compile(r"\s*GCC\s+dependency\s+(\"[^\"]*\"|<[^>]*>)")
_PRAGMA_ONCE = re.compile(r"\s*once\b")
_STRING = re.compile(rb'(?:u8|[LuU])?"((?:\\.|[^"\\\n])*)"')
_PRAGMA_ONCE_BYTES = re.compile(rb"\s*once\b")
_PRAGMA_DEPENDENCY_BYTES = re.compile(rb"\s*GCC\s+dependency\b")


def _operator_pragmas(code: bytes) -> tuple[bool, bool]:
    """Whether code (without comments) may say #pragma once, and #pragma GCC dependency,
    through the _Pragma operator: in the string it is given, or, since a macro may make that
    string (_Pragma(STR(once))), as a word anywhere outside string literals."""
    once = dependency = False
    for m in _STRING.finditer(code):
        before = code[max(0, m.start() - 4096) : m.start()].rstrip()
        if before.endswith(b"(") and before[:-1].rstrip().endswith(b"_Pragma"):
            text = m.group(1)
            once = once or _PRAGMA_ONCE_BYTES.match(text) is not None
            dependency = dependency or _PRAGMA_DEPENDENCY_BYTES.match(text) is not None
    words = _STRING.sub(b" ", code)
    once = once or re.search(rb"\bonce\b", words) is not None
    dependency = dependency or re.search(rb"\bdependency\b", words) is not None
    return once, dependency


def _strip_comments(data: bytes) -> bytes:
    def replace(m: re.Match[bytes]) -> bytes:
        if m.lastgroup == "keep":
            return m.group(0)
        return b" " if m.lastgroup == "block" else b""

    return _LEXEMES.sub(replace, _SPLICE.sub(b"", data))


def _operand(text: str, next_: bool, probe: bool) -> Include | None:
    """The Include for the operand of #include or __has_include (None: empty)."""
    text = text.strip()
    if not text:
        return None
    if text[0] == '"':
        end = text.find('"', 1)
        if end > 0:
            return Include(QUOTE, text[1:end], next_, probe)
    elif text[0] == "<":
        end = text.find(">", 1)
        if end > 0:
            return Include(ANGLE, text[1:end], next_, probe)
    return Include(COMPUTED, text, next_, probe)


def _has_includes(text: str) -> Iterator[Include]:
    for m in _HAS_INCLUDE.finditer(text):
        found = _operand(m.group(2), bool(m.group(1)), True)
        if found is not None:
            yield found


def _add_define(defines: dict[str, list[Macro]], rest: str) -> None:
    m = _DEFINE.match(rest)
    if m is None:
        return
    params = m.group(2)
    macro = Macro(
        None if params is None else tuple(p.strip() for p in params[1:-1].split(",") if p.strip()),
        m.group(3).strip(),
    )
    defines.setdefault(m.group(1), []).append(macro)


def parse_directives(data: bytes) -> Directives:
    """The inclusions and macro definitions of one file's contents (all branches)."""
    timestamp = b"__TIMESTAMP__" in data
    once = False
    code = None
    if b"_Pragma" in data:
        code = _strip_comments(data)
        once, dependency = _operator_pragmas(code)
        timestamp = timestamp or dependency
    if b"#" not in data and b"%:" not in data:
        return Directives((), {}, timestamp, once) if timestamp or once else _NO_DIRECTIVES
    includes: list[Include] = []
    defines: dict[str, list[Macro]] = {}
    for m in _DIRECTIVE.finditer(_strip_comments(data) if code is None else code):
        keyword = m.group(1)
        rest = m.group(2).decode("utf-8", "surrogateescape")
        if keyword in (b"include", b"import", b"include_next"):
            found = _operand(rest, keyword == b"include_next", False)
            if found is not None:
                includes.append(found)
        elif keyword == b"define":
            _add_define(defines, rest)
            includes.extend(_has_includes(rest))
        elif keyword == b"pragma":
            once = once or _PRAGMA_ONCE.match(rest) is not None
            dep = _PRAGMA_DEPENDENCY.match(rest)
            timestamp = timestamp or dep is not None
            if dep is not None:
                found = _operand(dep.group(1), False, True)
                if found is not None:
                    includes.append(found)
        else:  # if, elif
            includes.extend(_has_includes(rest))
    defined = {k: tuple(v) for k, v in defines.items()}
    return Directives(tuple(includes), defined, timestamp, once)


# ---------------------------------------------------------------------------------------------
# Computed includes: a small multi-valued macro expander (every definition may be in force)

_TOKEN = re.compile(
    r"""\s+|[A-Za-z_$][\w$]*|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|\.?\d(?:[eEpP][+-]|[\w.])*"""
    r"""|\#\#|\.\.\.|[^\s]""",
    re.S,
)
_IDENT = re.compile(r"[A-Za-z_$][\w$]*\Z")


class _Tok(NamedTuple):
    text: str
    space: bool  # white space before it
    hide: frozenset[str] = frozenset()


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    space = False
    for m in _TOKEN.finditer(text):
        t = m.group(0)
        if t.isspace():
            space = True
            continue
        out.append(_Tok(t, space))
        space = False
    return out


class _TooComplex(Exception):
    pass


class _Expander:
    """Expands a token list to every value it may take, given ``lookup(name)`` -> definitions.

    Prosser's algorithm with hide sets, made multi-valued: a macro with several definitions
    yields one value per definition and one where it stays unexpanded (it may be undefined
    at that point)."""

    def __init__(self, lookup: Callable[[str], tuple[Macro, ...]]) -> None:
        self.lookup = lookup
        self.steps = 0
        self.defined_seen = False

    def expand(self, ts: list[_Tok]) -> list[list[_Tok]]:
        self.steps += 1
        if self.steps > MAX_EXPANSIONS:
            raise _TooComplex("macro expansion too long")
        for i, t in enumerate(ts):
            defs = () if t.text in t.hide or not _IDENT.match(t.text) else self.lookup(t.text)
            if defs:
                self.defined_seen = True
                head = ts[:i]
                return self._cap([head + v for v in self._expand_at(ts, i, defs)])
        return [ts]

    def _expand_at(self, ts: list[_Tok], i: int, defs: tuple[Macro, ...]) -> list[list[_Tok]]:
        t = ts[i]
        values = [[t, *v] for v in self.expand(ts[i + 1 :])]  # left unexpanded
        for macro in defs:
            if macro.params is None:
                body = self._body(macro, t, t.hide | {t.text})
                values += self.expand(body + ts[i + 1 :])
                continue
            call = _call_args(ts, i + 1)
            if call is None:
                continue  # a function-like macro without arguments is not expanded
            args, end = call
            hide = (t.hide & ts[end - 1].hide) | {t.text}
            for body in self._substitute(macro, args, t, hide):
                values += self.expand(body + ts[end:])
        return self._cap(values)

    def _cap(self, values: list[list[_Tok]]) -> list[list[_Tok]]:
        seen: dict[tuple[str, ...], list[_Tok]] = {}
        for v in values:
            seen.setdefault(tuple(x.text for x in v), v)
        if len(seen) > MAX_VALUES:
            raise _TooComplex(f"more than {MAX_VALUES} values")
        return list(seen.values())

    @staticmethod
    def _body(macro: Macro, t: _Tok, hide: frozenset[str]) -> list[_Tok]:
        body = [tok._replace(hide=hide) for tok in _tokens(macro.body)]
        if body:
            body[0] = body[0]._replace(space=t.space)
        return body

    def _substitute(
        self, macro: Macro, args: list[list[_Tok]], t: _Tok, hide: frozenset[str]
    ) -> list[list[_Tok]]:
        params = list(macro.params or ())
        variadic = bool(params) and params[-1].endswith("...")
        if variadic:
            name = params[-1][:-3] or "__VA_ARGS__"
            params[-1] = name
            if len(args) >= len(params):
                rest = args[len(params) - 1 :]
                joined: list[_Tok] = []
                for k, a in enumerate(rest):
                    joined += ([_Tok(",", False)] if k else []) + a
                args = [*args[: len(params) - 1], joined]
        if len(args) != len(params) and not (not params and args == [[]]):
            return []
        actual = dict(zip(params, args, strict=False))
        body = _tokens(macro.body)
        variants: list[list[_Tok]] = [[]]
        k = 0
        while k < len(body):
            tok = body[k]
            pasted = (k > 0 and body[k - 1].text == "##") or (
                k + 1 < len(body) and body[k + 1].text == "##"
            )
            if tok.text == "#" and k + 1 < len(body) and body[k + 1].text in actual:
                piece = [[_Tok(_stringify(actual[body[k + 1].text]), tok.space)]]
                k += 2
            elif tok.text in actual:
                arg = actual[tok.text]
                piece = [arg] if pasted else self.expand(arg)
                piece = [
                    [x._replace(space=tok.space) if j == 0 else x for j, x in enumerate(p)]
                    for p in piece
                ]
                k += 1
            else:
                piece = [[tok]]
                k += 1
            variants = self._cap([v + p for v in variants for p in piece])
        return [_paste(v, hide) for v in variants]


def _call_args(ts: list[_Tok], i: int) -> tuple[list[list[_Tok]], int] | None:
    """The arguments of a macro call whose "(" is ts[i], and the index after ")"."""
    if i >= len(ts) or ts[i].text != "(":
        return None
    depth = 0
    args: list[list[_Tok]] = [[]]
    for j in range(i, len(ts)):
        text = ts[j].text
        if text == "(":
            depth += 1
            if depth == 1:
                continue
        elif text == ")":
            depth -= 1
            if depth == 0:
                return args, j + 1
        elif text == "," and depth == 1:
            args.append([])
            continue
        args[-1].append(ts[j])
    return None


def _stringify(arg: list[_Tok]) -> str:
    text = "".join((" " if t.space and k else "") + t.text for k, t in enumerate(arg))
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _paste(ts: list[_Tok], hide: frozenset[str]) -> list[_Tok]:
    out: list[_Tok] = []
    k = 0
    while k < len(ts):
        t = ts[k]
        if t.text == "##" and out and k + 1 < len(ts):
            left = out.pop()
            out.append(_Tok(left.text + ts[k + 1].text, left.space, hide))
            k += 2
            continue
        out.append(t._replace(hide=t.hide | hide))
        k += 1
    return out


def _header_name(value: list[_Tok]) -> Include | None:
    """The Include a macro-expanded operand names, or None if it is no header name."""
    if len(value) == 1 and value[0].text[:1] == '"' and len(value[0].text) >= 2:
        return Include(QUOTE, value[0].text[1:-1])
    if len(value) >= 2 and value[0].text == "<" and value[-1].text == ">":
        inner = "".join((" " if t.space and k else "") + t.text for k, t in enumerate(value[1:-1]))
        return Include(ANGLE, inner)
    return None


# ---------------------------------------------------------------------------------------------
# The file system, cached: directory listings and file contents


def _clean(path: str) -> str:
    """Remove "." components and doubled slashes; ".." stays (symlinks)."""
    if "/." not in path and "//" not in path and not path.startswith("./"):
        return path
    absolute = path.startswith("/")
    parts = [p for p in path.split("/") if p and p != "."]
    return ("/" if absolute else "") + "/".join(parts)


def _join(directory: str, name: str) -> str:
    if name.startswith("/"):
        return _clean(name)
    return _clean(f"{directory}/{name}" if directory != "/" else f"/{name}")


class _Listing(NamedTuple):
    signature: tuple[int, int, int]  # st_dev, st_ino, st_mtime_ns
    files: frozenset[str]  # entries that are not directories (symlinks followed)
    real: str
    trusted: bool  # old enough that a later change must change the mtime
    gch: frozenset[str] = frozenset()  # gcc's precompiled headers: NAME.gch, file or directory


class _Entry(NamedTuple):
    signature: tuple[int, int, int, int, int]  # dev, ino, size, mtime_ns, ctime_ns
    digest: str
    real: str
    trusted: bool


def _is_racy(ns: int) -> bool:
    return time.time_ns() - ns < RACY_SECONDS * 1e9


class _FileSystem:
    """Listings and contents kept across analyses, checked against stat once per analysis."""

    def __init__(self, max_files: int) -> None:
        self.listings: dict[str, _Listing] = {}
        self.entries: dict[str, _Entry] = {}
        self.parsed: dict[str, Directives] = {}
        self.max_files = max_files
        self.reads = 0  # files read (hashed) since the start: for measurements
        self.scans = 0  # directories listed

    def listing(self, d: str, searched: bool = False) -> _Listing | None:
        """The directory's listing; None if there is none. `searched`: a search directory
        the user named, which gcc warns of (a file) or fails on (a path through a file)."""
        try:
            st = os.stat(d)
        except OSError as exc:
            return _missing(d, exc, searched)
        if not stat.S_ISDIR(st.st_mode):
            if searched:
                raise Unsupported(f"{d} is not a directory")
            return None
        sig = (st.st_dev, st.st_ino, st.st_mtime_ns)
        old = self.listings.get(d)
        if old is not None and old.signature == sig and old.trusted:
            return old
        try:
            with os.scandir(d) as it:
                names = [(e.name, _entry_is_dir(e)) for e in it]
        except OSError as exc:  # (one we may search but not list: its files still open)
            raise Unsupported(f"{d}: cannot list it: {exc.strerror}") from None
        files = frozenset(name for name, is_dir in names if not is_dir)
        gch = frozenset(name for name, _ in names if name.endswith(".gch"))
        self.scans += 1
        same_dir = old is not None and old.signature[:2] == sig[:2]
        if same_dir and old is not None and old.files == files:
            files = old.files  # the same object: nodes that consulted it stay valid cheaply
        real = old.real if same_dir and old is not None else os.path.realpath(d)
        new = _Listing(sig, files, real, not _is_racy(st.st_mtime_ns), gch)
        self.listings[d] = new
        return new

    def entry(self, path: str) -> _Entry | None:
        try:
            st = os.stat(path)
        except OSError as exc:
            return _missing(path, exc)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            return None  # (larger than a tree job may ship: a server naming one gets no digest)
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        old = self.entries.get(path)
        if old is not None and old.signature == sig and old.trusted:
            return old
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            return _missing(path, exc)
        self.reads += 1
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self.parsed:
            self.parsed[digest] = parse_directives(data)
        same_file = old is not None and old.signature[:2] == sig[:2]
        real = old.real if same_file and old is not None else os.path.realpath(path)
        new = _Entry(sig, digest, real, not _is_racy(max(st.st_mtime_ns, st.st_ctime_ns)))
        self.entries[path] = new
        return new

    def make_room(self) -> None:
        """Drop the oldest quarter of the parsed contents when there are too many (between
        analyses: a walk holds digests)."""
        if len(self.parsed) < self.max_files:
            return
        for key in list(self.parsed)[: self.max_files // 4]:
            del self.parsed[key]
        self.entries.clear()  # (they would point at dropped parses: rebuilt from stat)


def _entry_is_dir(e: os.DirEntry[str]) -> bool:
    try:
        return e.is_dir()
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# The command line


@dataclass
class _Command:
    compiler: str
    source: str  # absolute
    language: str  # "c" or "c++"
    preprocessed: bool
    quote: list[str] = field(default_factory=list)  # -iquote, and -I before -I-
    bracket: list[str] = field(default_factory=list)  # -I
    system: list[str] = field(default_factory=list)  # -isystem (before the compiler's own)
    after: list[str] = field(default_factory=list)  # -idirafter
    current_dir: bool = True  # quote includes look in the includer's directory (no -I-)
    forced: list[str] = field(default_factory=list)  # -imacros and -include, in order
    defines: list[str] = field(default_factory=list)  # -D values
    probe_flags: list[str] = field(default_factory=list)


# Options handled below; any other row that reads a path makes the analysis give up.
_PATH_OPTIONS = frozenset(
    [
        "-I",
        "-iquote",
        "-isystem",
        "-idirafter",
        "-include",
        "-imacros",
        "-iprefix",
        "-iwithprefix",
        "-iwithprefixbefore",
        "-cxx-isystem",
        "-iwithsysroot",
        "-MF",
        "-o",
    ]
)
_DEP_HANDLERS = frozenset(("dep", "depfile", "target", "out", "compile", "assemble"))


def _wp_words(value: str) -> Iterator[tuple[str, str]]:
    """(-I|-D|-U, value) from a -Wp,... argument; raises Unsupported for anything else."""
    words = value.split(",")
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if w in ("-MD", "-MMD", "-MF", "-MT", "-MQ"):
            i += 1
        elif w == "-MP":
            pass
        elif w[:2] in ("-I", "-D", "-U"):
            if len(w) == 2:
                if i >= len(words):
                    raise Unsupported(f"-Wp,{value}")
                w, i = w + words[i], i + 1
            yield w[:2], w[2:]
        else:
            raise Unsupported(f"-Wp,{value}: {w}")


class _CommandParser:
    """One pass over the arguments with the option table (jailcc.options)."""

    def __init__(self, compiler: str, cwd: str) -> None:
        self.compiler, self.cwd = compiler, cwd
        self.inputs: list[tuple[str, str | None]] = []
        self.x_lang: str | None = None
        self.prefix = ""
        self.before_minus: list[str] = []  # -I dirs, moved to quote if -I- follows
        self.cmd = _Command(compiler, "", "c", False)

    def absolute(self, d: str) -> str:
        return _join(self.cwd, d)

    def parse(self, args: list[str]) -> _Command:
        i = 0
        while i < len(args):
            a = args[i]
            if a[:1] != "-" or a == "-":
                if a == "-":
                    raise Unsupported("input from stdin")
                self.inputs.append((a, self.x_lang))
                i += 1
                continue
            try:
                w, i = option_at(args, i)
            except ValueError as e:
                raise Unsupported(str(e)) from None
            if w.option is None:
                raise Unsupported(f"unknown option {a}")
            name = w.option.alias or w.option.spelling
            self.option(name, w.value, w.words, w.option.handler, w.option.path)
        return self.finish()

    def option(
        self, name: str, value: str, words: tuple[str, ...], handler: str | None, path: str | None
    ) -> None:
        cmd = self.cmd
        if name == "-I":
            self.before_minus.append(self.absolute(value))
        elif name == "-I-":
            cmd.quote += self.before_minus
            self.before_minus = []
            cmd.current_dir = False
        elif name == "-iquote":
            cmd.quote.append(self.absolute(value))
        elif name in ("-isystem", "-iwithsysroot") or (
            name == "-cxx-isystem" and self.language_guess() == "c++"
        ):
            cmd.system.append(self.absolute(value))
        elif name == "-idirafter":
            cmd.after.append(self.absolute(value))
        elif name == "-iprefix":
            self.prefix = value
        elif name == "-iwithprefix":
            cmd.after.append(self.absolute(self.prefix + value))
        elif name == "-iwithprefixbefore":
            self.before_minus.append(self.absolute(self.prefix + value))
        elif name in ("-include", "-imacros"):
            cmd.forced.append(value)
        elif name == "-D":
            cmd.defines.append(value)
        elif name == "-U" or name == "-cxx-isystem":
            pass
        elif handler == "lang":
            self.x_lang = None if value == "none" else value
        elif handler == "wp":
            for option, v in _wp_words(words[0][4:]):
                self.option(option, v, (option + v,), None, None)
        elif handler in _DEP_HANDLERS or name == "-MP":
            pass
        elif path == "read" and name not in _PATH_OPTIONS:
            raise Unsupported(f"{name} reads files the include analysis does not follow")
        elif name in ("-Xpreprocessor", "-Xclang", "-iframework"):
            raise Unsupported(f"{name}")
        else:
            self.probe_option(name, words)

    def probe_option(self, name: str, words: tuple[str, ...]) -> None:
        if name not in _NOT_PROBED and not words[0].startswith(_NOT_PROBED_PREFIXES):
            self.cmd.probe_flags += words

    def language_guess(self) -> str:
        return "c++" if "++" in os.path.basename(self.compiler) else "c"

    def finish(self) -> _Command:
        cmd = self.cmd
        cmd.bracket = self.before_minus
        if len(self.inputs) != 1:
            raise Unsupported("no input file" if not self.inputs else "more than one input file")
        source, x_lang = self.inputs[0]
        cmd.source = self.absolute(source)
        cmd.language, cmd.preprocessed = _language(source, x_lang, self.compiler)
        return cmd


def _language(source: str, x_lang: str | None, compiler: str) -> tuple[str, bool]:
    """(language, preprocessed) as the driver would take the input."""
    if x_lang is not None:
        if x_lang not in _LANGUAGES:
            raise Unsupported(f"-x {x_lang}")
        return _LANGUAGES[x_lang]
    base = os.path.basename(source)
    dot = base.rfind(".")
    suffix = base[dot + 1 :] if dot > 0 else ""
    table = _CXX_DRIVER_SUFFIXES if "++" in os.path.basename(compiler) else _SUFFIXES
    if suffix not in table:
        raise Unsupported(f"input {source!r} is not C/C++")
    return table[suffix]


# ---------------------------------------------------------------------------------------------
# The compiler's own search directories and predefined macros (one run per configuration)


class _Probe(NamedTuple):
    system: tuple[str, ...]  # the compiler's <...> directories, in order
    macros: Mapping[str, tuple[Macro, ...]]
    preincluded: tuple[str, ...]  # files the compiler reads before the source (stdc-predef.h)


_LINE_MARKER_ENTER = re.compile(r'# \d+ "(/[^"]*)" 1')


def _parse_search_list(stderr: str) -> tuple[str, ...]:
    dirs: list[str] = []
    inside = False
    for line in stderr.splitlines():
        if line.startswith("#include <...> search starts here:"):
            inside = True
        elif line.startswith("End of search list."):
            break
        elif inside and line.startswith(" "):
            d = line.strip()
            if d.endswith(" (framework directory)"):
                continue
            dirs.append(d)
    return tuple(dirs)


def _run_probe(compiler: str, language: str, flags: Iterable[str], cwd: str, env: dict) -> _Probe:
    """``CC FLAGS -x LANG -E -dD -v /dev/null``: the search list (stderr), the predefined
    macros (the #define lines) and the files read before the input (line markers entering a
    file: gcc's implicit stdc-predef.h; clang-16 reads none)."""
    argv = [compiler, *flags, "-x", language, "-E", "-dD", "-v", "/dev/null"]
    try:
        # Bytes as file names are (clang -v names the working directory, in any encoding).
        p = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="surrogateescape",
            timeout=PROBE_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise Unsupported(f"cannot run {compiler} -E -v: {e}") from None
    if p.returncode != 0:  # -v's banner ends stderr: the error lines say why
        errors = [line for line in p.stderr.splitlines() if re.search(r": (fatal )?error: ", line)]
        why = "; ".join(errors) if errors else p.stderr.strip()
        raise ProbeFailed(f"{compiler} -E -v failed: {why[-300:]}")
    macros: dict[str, list[Macro]] = {}
    entered: dict[str, None] = {}
    for line in p.stdout.splitlines():
        if line.startswith("#define "):
            _add_define(macros, line[len("#define") :])
        elif line.startswith("# "):
            m = _LINE_MARKER_ENTER.match(line)
            if m is not None:
                entered[m.group(1)] = None
    return _Probe(
        _parse_search_list(p.stderr),
        {k: tuple(v) for k, v in macros.items()},
        tuple(entered),
    )


# ---------------------------------------------------------------------------------------------
# The analyzer


@dataclass
class _Chains:
    """The search chains of one compile, after gcc's removal of missing and duplicate dirs."""

    quote: list[str]  # the quote-only part (-iquote, -I before -I-)
    bracket: list[str]  # -I, -isystem, the compiler's, -idirafter
    current_dir: bool
    config: int = 0  # the same number for the same chains: the key of the node cache


class _Node(NamedTuple):
    """What one file's includes resolve to under one configuration of the search chains
    (pump's node).  Valid while the file's entry is the one the file system cache returns now,
    every name looked up is present or absent as it was (a build adding objects to a directory
    does not invalidate it), and every file found is still there."""

    entry: _Entry
    visit: tuple[str, str]  # (real file, real directory): same pair, same includes
    follow: tuple[str, ...]  # files its includes found: scanned in turn
    probed: tuple[str, ...]  # files __has_include / #pragma GCC dependency found
    missing: tuple[str, ...]
    computed: tuple[Include, ...]
    # the directories consulted: (directory, its files then, the names looked up in it)
    listings: tuple[tuple[str, frozenset[str] | None, tuple[str, ...]], ...]


class _Walk:
    """The state of one analysis: files found, pending computed includes, missing names, and
    the file system as seen in this analysis (each directory and file checked once)."""

    def __init__(self) -> None:
        self.files: dict[str, FileRead] = {}
        self.seen: set[str] = set()  # paths taken from `scanned`
        self.visited: set[tuple[str, str]] = set()  # _Node.visit of the files followed
        self.scanned: list[str] = []  # paths whose includes are to be followed
        self.computed: list[tuple[Include, str]] = []  # (include, path of the includer)
        self.done_values: set[tuple[str, int, str, bool]] = set()
        self.missing: dict[str, None] = {}
        self.notes: dict[str, None] = {}
        self.dirs: dict[str, _Listing | None] = {}
        self.entries: dict[str, _Entry | None] = {}
        self.main = ""  # the source
        # the lookups of -include files and of the source's computed includes (the source's
        # own are its node's), where gcc may find a precompiled header instead
        self.top: dict[str, tuple[frozenset[str] | None, list[str]]] = {}


class IncludeAnalyzer:
    """Finds the files compiles read; keeps what it learns for the life of the proxy."""

    def __init__(self, max_files: int = MAX_FILES) -> None:
        self._fs = _FileSystem(max_files)
        self._probes: dict[tuple, _Probe | str] = {}  # a probe, or why it failed
        self._configs: dict[tuple, int] = {}
        self._nodes: dict[tuple[int, str], _Node] = {}
        self._lock = threading.Lock()

    # -- public ------------------------------------------------------------------------------

    def files_read(
        self, argv: list[str], cwd: str, env: Mapping[str, str] | None = None
    ) -> Analysis:
        """The files ``argv`` (the compiler first, as the user typed it) reads when run in
        ``cwd`` with ``env`` (default: this process's environment), or why it cannot tell."""
        env = os.environ if env is None else env
        with self._lock:
            self._make_room()
            try:
                return self._analyse(argv, os.path.abspath(cwd), env)
            except Unsupported as e:
                return Analysis(unsupported=str(e))

    def digests(self, paths: Iterable[str]) -> list[str | None]:
        """SHA-256 (hex) of the regular file at each path now, None where there is none: from
        what the analyses keep when its stat signature is unchanged (one stat), else read
        again. One taking of the lock for them all: an analysis holds it for milliseconds."""
        with self._lock:
            entries = [self._fs.entry(path) for path in paths]
        return [None if entry is None else entry.digest for entry in entries]

    def uses_timestamp(self, path: str) -> bool:
        """Whether the file at path compares mtimes (__TIMESTAMP__, #pragma GCC dependency;
        True when it cannot be told): a copy of it would then not compile the same."""
        directives = self._directives(path)
        return directives is None or directives.timestamp

    def included_once(self, path: str) -> bool:
        """Whether the file at path says #pragma once (True when it cannot be told)."""
        directives = self._directives(path)
        return directives is None or directives.once

    def _directives(self, path: str) -> Directives | None:
        with self._lock:
            entry = self._fs.entry(path)
            return None if entry is None else self._fs.parsed.get(entry.digest)

    def includes_of(self, path: str, digest: str | None = None) -> tuple[Include, ...] | None:
        """Every inclusion the file at path may perform (all branches), None when it cannot
        be read. With the digest (hex) of its contents as already checked, from the parse
        kept for those contents when there is one (no stat)."""
        if digest is not None:
            with self._lock:
                kept = self._fs.parsed.get(digest)
            if kept is not None:
                return kept.includes
        directives = self._directives(path)
        return None if directives is None else directives.includes

    def quote_includes(self, path: str, digest: str | None = None) -> frozenset[str] | None:
        """The names the file at path includes with quotes (which look in its own directory
        first); None when it has a computed include (any name) or cannot be read. The
        digest: as for includes_of."""
        includes = self.includes_of(path, digest)
        if includes is None or any(include.kind == COMPUTED for include in includes):
            return None
        return frozenset(os.path.normpath(i.text) for i in includes if i.kind == QUOTE)

    def names_in(self, directory: str) -> frozenset[str]:
        """The names of the entries in directory that are not directories (one stat when the
        listing kept is still that directory's)."""
        with self._lock:
            listing = self._fs.listing(directory)
        return frozenset() if listing is None else listing.files

    @property
    def counters(self) -> dict[str, int]:
        """Files read (hashed) and directories listed so far; contents parsed and nodes kept
        (for measurements)."""
        fs = self._fs
        return {
            "reads": fs.reads,
            "scans": fs.scans,
            "parsed": len(fs.parsed),
            "nodes": len(self._nodes),
        }

    def _make_room(self) -> None:
        if len(self._nodes) > 4 * self._fs.max_files:
            self._nodes.clear()
        self._fs.make_room()

    # -- one analysis ------------------------------------------------------------------------

    def _analyse(self, argv: list[str], cwd: str, env: Mapping[str, str]) -> Analysis:
        if not argv:
            raise Unsupported("no compiler")
        for name in SEARCH_ENV:
            if env.get(name):
                raise Unsupported(f"{name} is set: the search path differs from the jail's")
        for name in DEPS_ENV:
            if name in env:
                raise Unsupported(f"{name} is set: the compile writes the dependency file it names")
        try:
            args = expand_response_files(argv[1:], cwd)
        except ValueError as e:
            raise Unsupported(str(e)) from None
        cmd = _CommandParser(argv[0], cwd).parse(args)
        walk = _Walk()
        walk.main = cmd.source
        if self._add_file(walk, cmd.source) is None:
            walk.missing[cmd.source] = None
            return self._result(walk)
        if cmd.preprocessed:
            return self._result(walk)
        probe = self._probe(cmd, cwd, env)
        chains = self._chains(walk, cmd, probe)
        self._roots(walk, cmd, chains, probe, cwd)
        self._scan(walk, chains)
        self._computed_fixpoint(walk, cmd, chains, probe)
        precompiled = self._precompiled(walk, chains)
        if precompiled is not None:
            raise Unsupported(f"gcc may use the precompiled header {precompiled} instead")
        return self._result(walk, chains, probe)

    def _result(
        self, walk: _Walk, chains: _Chains | None = None, probe: _Probe | None = None
    ) -> Analysis:
        search = () if chains is None else (*chains.quote, *chains.bracket)
        system = () if probe is None else probe.system
        return Analysis(
            tuple(walk.files.values()),
            tuple(walk.missing),
            None,
            tuple(walk.notes),
            search,
            system,
        )

    def _roots(self, walk: _Walk, cmd: _Command, chains: _Chains, probe: _Probe, cwd: str) -> None:
        """The source, the compiler's own preincluded files, then -imacros/-include files."""
        walk.scanned.append(cmd.source)
        for path in probe.preincluded:
            walk.scanned += self._preincluded(walk, chains, probe, path)
        for name in cmd.forced:
            dirs = [cwd, *chains.quote, *chains.bracket]
            hits = self._resolve(walk, dirs, name, first=True, consulted=walk.top)
            if not hits:
                walk.missing[f'"{name}"'] = None
            walk.scanned += hits

    def _preincluded(self, walk: _Walk, chains: _Chains, probe: _Probe, path: str) -> list[str]:
        """A file the compiler read before the probe's input: gcc looks stdc-predef.h up in
        the bracket chain, where a -I directory may hold another one."""
        for d in probe.system:
            if path.startswith(d.rstrip("/") + "/"):
                name = path[len(d.rstrip("/")) + 1 :]
                return self._resolve(walk, chains.bracket, name, first=True)
        return self._resolve(walk, ("/",), path, first=True)

    def _precompiled(self, walk: _Walk, chains: _Chains) -> str | None:
        """A NAME.gch where gcc looked for a NAME the source or a -include file includes (only
        those may use one, and only before the first token, which the walk does not tell): gcc
        would read it instead of NAME, and the jail has none."""
        node = self._nodes.get((chains.config, walk.main))
        lookups = [(d, names) for d, (_, names) in walk.top.items()]
        lookups += [(d, names) for d, _, names in (node.listings if node is not None else ())]
        for d, names in lookups:
            listing = self._listing(walk, d)
            if listing is not None and listing.gch:
                for name in names:
                    if name + ".gch" in listing.gch:
                        return _join(d, name + ".gch")
        return None

    # -- search chains -----------------------------------------------------------------------

    def _probe(self, cmd: _Command, cwd: str, env: Mapping[str, str]) -> _Probe:
        path_env = env.get("PATH", os.defpath)
        exe = cmd.compiler if "/" in cmd.compiler else shutil.which(cmd.compiler, path=path_env)
        if exe is None:
            raise Unsupported(f"compiler {cmd.compiler!r} not found")
        exe = _join(cwd, exe)
        try:
            st = os.stat(exe)
        except OSError as e:
            raise Unsupported(f"compiler {exe}: {e.strerror}") from None
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        key = (cmd.compiler, exe, identity, cmd.language, tuple(cmd.probe_flags), path_env)
        probe = self._probes.get(key)
        if probe is None:
            probe_env = {k: v for k, v in env.items() if k not in SEARCH_ENV + DEPS_ENV}
            probe_env["LC_ALL"] = "C"
            try:
                probe = _run_probe(cmd.compiler, cmd.language, cmd.probe_flags, cwd, probe_env)
            except ProbeFailed as failed:  # (not one that could not run: a timeout may pass)
                probe = str(failed)
            self._probes[key] = probe
        if isinstance(probe, str):
            raise ProbeFailed(probe)
        return probe

    def _chains(self, walk: _Walk, cmd: _Command, probe: _Probe) -> _Chains:
        """gcc's merge_include_chains: missing directories go; the system chain (-isystem,
        the compiler's, -idirafter) loses its duplicates; -I and -iquote lose theirs and any
        directory that is also a system one."""
        system = self._dedup(walk, [*cmd.system, *probe.system, *cmd.after], ())
        system_ids = {self._dir_id(walk, d) for d in system}
        bracket = self._dedup(walk, cmd.bracket, system_ids) + system
        quote = self._dedup(walk, cmd.quote, system_ids)
        key = (tuple(quote), tuple(bracket), cmd.current_dir)
        config = self._configs.setdefault(key, len(self._configs))
        return _Chains(quote, bracket, cmd.current_dir, config)

    def _dir_id(self, walk: _Walk, d: str) -> tuple[int, int] | None:
        listing = self._listing(walk, d, searched=True)
        return None if listing is None else listing.signature[:2]

    def _dedup(self, walk: _Walk, dirs: list[str], exclude: Iterable) -> list[str]:
        seen = set(exclude)
        out = []
        for d in dirs:
            ident = self._dir_id(walk, d)
            if ident is None or ident in seen:
                continue
            seen.add(ident)
            out.append(d)
        return out

    # -- the file system, once per analysis --------------------------------------------------

    def _listing(self, walk: _Walk, d: str, searched: bool = False) -> _Listing | None:
        try:
            return walk.dirs[d]
        except KeyError:
            listing = walk.dirs[d] = self._fs.listing(d, searched)
            return listing

    def _entry(self, walk: _Walk, path: str) -> _Entry | None:
        try:
            return walk.entries[path]
        except KeyError:
            entry = walk.entries[path] = self._fs.entry(path)
            return entry

    def _add_file(self, walk: _Walk, path: str) -> _Entry | None:
        entry = self._entry(walk, path)
        if entry is not None and path not in walk.files:
            walk.files[path] = FileRead(path, entry.real, entry.digest, entry.signature[2])
        return entry

    # -- resolution and the walk -------------------------------------------------------------

    def _resolve(
        self,
        walk: _Walk,
        dirs: Iterable[str],
        name: str,
        first: bool,
        consulted: dict[str, tuple[frozenset[str] | None, list[str]]] | None = None,
    ) -> list[str]:
        """The paths ``name`` resolves to in ``dirs``: the first match, or (for
        #include_next) every match.  ``consulted`` collects the listings looked at."""
        if name.startswith("/"):
            dirs = ("/",)
        hits: list[str] = []
        for d in dirs:
            path = _join(d, name)
            slash = path.rfind("/")
            parent = path[:slash] or "/"
            listing = self._listing(walk, parent)
            base = path[slash + 1 :]
            if consulted is not None:
                _consult(consulted, parent, listing, base)
            if listing is None or base not in listing.files:
                continue
            if self._entry(walk, path) is None:
                continue  # a dangling symlink, or gone: the compiler searches on
            hits.append(path)
            if first:
                break
        return hits

    def _chain_for(self, chains: _Chains, inc: Include, includer: str) -> list[str]:
        if inc.next:
            return [*chains.quote, *chains.bracket]
        if inc.kind == ANGLE:
            return chains.bracket
        here = [os.path.dirname(includer)] if chains.current_dir else []
        return [*here, *chains.quote, *chains.bracket]

    def _scan(self, walk: _Walk, chains: _Chains) -> None:
        """Follow the includes of every file in walk.scanned (which grows), each file once
        per (real file, real directory): under another name in the same directory it reads
        the same files; and a cycle through "../d/x.h" ends."""
        k = 0
        while k < len(walk.scanned):
            path = walk.scanned[k]
            k += 1
            if path in walk.seen:
                continue
            walk.seen.add(path)
            node = self._node(walk, chains, path)
            if node is None:
                continue
            self._add_file(walk, path)
            if node.visit in walk.visited:
                continue
            walk.visited.add(node.visit)
            walk.scanned += node.follow
            for probed in node.probed:
                self._add_file(walk, probed)
            walk.missing.update(dict.fromkeys(node.missing))
            walk.computed += [(inc, path) for inc in node.computed]

    def _node(self, walk: _Walk, chains: _Chains, path: str) -> _Node | None:
        entry = self._entry(walk, path)
        if entry is None:
            return None
        key = (chains.config, path)
        node = self._nodes.get(key)
        if node is not None and node.entry is entry:
            listings = self._listings_now(walk, node)
            if listings is not None and self._found_still_there(walk, node):
                if listings is not node.listings:
                    node = self._nodes[key] = node._replace(listings=listings)
                return node
        node = self._nodes[key] = self._make_node(walk, chains, path, entry)
        return node

    def _listings_now(
        self, walk: _Walk, node: _Node
    ) -> tuple[tuple[str, frozenset[str] | None, tuple[str, ...]], ...] | None:
        """node.listings if every directory is as it was, updated ones if only names the node
        did not look up changed, None if a lookup would now answer otherwise."""
        changed = False
        for d, files, names in node.listings:
            listing = self._listing(walk, d)
            now = None if listing is None else listing.files
            if now is files:
                continue
            if now is None or files is None:
                return None
            for name in names:
                if (name in now) != (name in files):
                    return None
            changed = True
        if not changed:
            return node.listings
        return tuple((d, _files_of(self._listing(walk, d)), n) for d, _, n in node.listings)

    def _found_still_there(self, walk: _Walk, node: _Node) -> bool:
        for p in node.follow:
            if self._entry(walk, p) is None:
                return False
        return all(self._entry(walk, p) is not None for p in node.probed)

    def _make_node(self, walk: _Walk, chains: _Chains, path: str, entry: _Entry) -> _Node:
        consulted: dict[str, tuple[frozenset[str] | None, list[str]]] = {}
        follow: list[str] = []
        probed: list[str] = []
        missing: list[str] = []
        computed: list[Include] = []
        for inc in self._fs.parsed[entry.digest].includes:
            if inc.kind == COMPUTED:
                computed.append(inc)
                continue
            chain = self._chain_for(chains, inc, path)
            hits = self._resolve(walk, chain, inc.text, not inc.next, consulted)
            if inc.probe:
                probed += hits
            elif hits:
                follow += hits
            else:
                missing.append(_spelled(inc))
        directory = os.path.dirname(path)
        listing = self._listing(walk, directory)
        real_dir = listing.real if listing is not None else os.path.dirname(entry.real)
        return _Node(
            entry,
            (entry.real, real_dir),
            tuple(dict.fromkeys(follow)),
            tuple(dict.fromkeys(probed)),
            tuple(missing),
            tuple(computed),
            tuple((d, files, tuple(names)) for d, (files, names) in consulted.items()),
        )

    def _follow(self, walk: _Walk, chains: _Chains, inc: Include, includer: str) -> None:
        """Resolve one value of a computed include."""
        chain = self._chain_for(chains, inc, includer)
        top = walk.top if includer == walk.main else None
        hits = self._resolve(walk, chain, inc.text, not inc.next, top)
        if inc.probe:
            for hit in hits:
                self._add_file(walk, hit)
        elif hits:
            walk.scanned += hits
        else:
            walk.missing[_spelled(inc)] = None

    # -- computed includes -------------------------------------------------------------------

    def _computed_fixpoint(
        self, walk: _Walk, cmd: _Command, chains: _Chains, probe: _Probe
    ) -> None:
        """Evaluate the computed includes over the definitions in the files found so far;
        new files may bring new definitions and new computed includes: repeat until none."""
        while walk.computed:
            before = len(walk.files)
            lookup = self._macro_lookup(walk, cmd, probe)
            for inc, includer in list(walk.computed):
                for value in self._values(inc, includer, lookup, walk, cmd):
                    key = (value.text, value.kind, includer, inc.next)
                    if key in walk.done_values:
                        continue
                    walk.done_values.add(key)
                    self._follow(walk, chains, value, includer)
            pending = len(walk.computed)
            self._scan(walk, chains)
            if len(walk.files) == before and len(walk.computed) == pending:
                return

    def _macro_lookup(
        self, walk: _Walk, cmd: _Command, probe: _Probe
    ) -> Callable[[str], tuple[Macro, ...]]:
        tables = [self._fs.parsed[f.digest].defines for f in walk.files.values()]
        command_line: dict[str, list[Macro]] = {}
        for d in cmd.defines:
            name, eq, value = d.partition("=")
            _add_define(command_line, f"{name} {value if eq else '1'}")
        tables += [probe.macros, {k: tuple(v) for k, v in command_line.items()}]

        def lookup(name: str) -> tuple[Macro, ...]:
            found: list[Macro] = []
            for table in tables:
                found += table.get(name, ())
            return tuple(found)

        return lookup

    def _values(
        self,
        inc: Include,
        includer: str,
        lookup: Callable[[str], tuple[Macro, ...]],
        walk: _Walk,
        cmd: _Command,
    ) -> list[Include]:
        def with_builtins(name: str) -> tuple[Macro, ...]:
            if name == "__FILE__":
                return (Macro(None, _stringify([_Tok(includer, False)])),)
            if name == "__BASE_FILE__":
                return (Macro(None, _stringify([_Tok(cmd.source, False)])),)
            return lookup(name)

        expander = _Expander(with_builtins)
        try:
            values = expander.expand(_tokens(inc.text))
        except _TooComplex as e:
            raise Unsupported(f"computed include {inc.text!r} in {includer}: {e}") from None
        found = [v for v in map(_header_name, values) if v is not None]
        if found:
            return [v._replace(next=inc.next, probe=inc.probe) for v in found]
        if expander.defined_seen:
            raise Unsupported(f"computed include {inc.text!r} in {includer}: no header name")
        walk.notes[f"{includer}: {inc.text!r} has no definition: taken as inactive"] = None
        return []


def _files_of(listing: _Listing | None) -> frozenset[str] | None:
    return None if listing is None else listing.files


def _consult(
    consulted: dict[str, tuple[frozenset[str] | None, list[str]]],
    directory: str,
    listing: _Listing | None,
    name: str,
) -> None:
    seen = consulted.get(directory)
    if seen is None:
        consulted[directory] = (_files_of(listing), [name])
    else:
        seen[1].append(name)


def _spelled(inc: Include) -> str:
    return f'"{inc.text}"' if inc.kind == QUOTE else f"<{inc.text}>"
