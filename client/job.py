"""One remote compile: preprocess locally, send, write back what a local compile would have
written (object, stdout, stderr, exit status). Raises RemoteFailure whenever the result cannot
be trusted to equal a local compile's, so the caller compiles locally instead."""

from __future__ import annotations

import os
import re
import select
import socket
import sys
import time
from collections import namedtuple

from jailcc.protocol import Channel

from . import outputs
from .args import RemoteJob, debug_info_on
from .compiler import is_clang
from .deadline import NO_ANSWER, SETUP_DEADLINE, within
from .hosts import Host, candidates
from .locales import quotes_in_utf8
from .remote import MAX_RESULT, RemoteFailure, RemoteResult, connect, open_session, run_job
from .spawn import ClientGone, run_capture

TYPE_CHECKING = False  # typing costs milliseconds to import, on every compile; type checkers know
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

MAX_EXTRA_SOURCE = 1 << 20
PCH_PRAGMA = b"#pragma GCC pch_preprocess"  # what gcc -E -fpch-preprocess writes for a .gch
# Options that put the command line into the object (gcc's and clang's spellings).
_RECORDING = frozenset(
    (
        "-frecord-gcc-switches",
        "-grecord-gcc-switches",
        "-frecord-command-line",
        "-grecord-command-line",
    )
)
# What a compiler that crashed says (gcc's ICE, clang's crash report).
# Macros -fdirectives-only leaves unexpanded whose value depends on where they expand: the
# main file's name (the server's is the .i) and its mtime.
_UNEXPANDED = (b"__BASE_FILE__", b"__TIMESTAMP__")
# The compiler past the jail's address-space limit: locally, maybe not.
_OUT_OF_MEMORY = (
    b"virtual memory exhausted",
    b"out of memory allocating",
    b"LLVM ERROR: out of memory",
)
# A compiler proper killed under the driver, which then fails as for any error (gcc: "Killed
# signal terminated program cc1"; clang with an external cc1: "failed due to signal"): a limit
# of the jail's that the server could not name, or a crash the local compile tells truly.
_KILLED = (b"signal terminated program", b"failed due to signal")
# The driver could not run a program of its own (an image without the assembler, say): every
# compile there would fail so.
_CANNOT_RUN = (b"cannot execute '", b"error trying to exec '", b"unable to execute command")
_PIPE = frozenset(("-pipe", "--pipe"))
_CRASHES = (
    b"internal compiler error",
    b"PLEASE submit a bug report",
    *_KILLED,
    *_CANNOT_RUN,
    *_OUT_OF_MEMORY,
)
# Options that decide gcc's links themselves (the plain output turns them off).
_URL_OPTIONS = ("-fdiagnostics-urls", "-fno-diagnostics-urls", "-fdiagnostics-plain-output")
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+.,=@%-")


class Invocation:
    """Where and how one compile was asked for: this process's own (jailcc run directly), or a
    client's that the per-user proxy serves (its cwd, environment, stderr and umask)."""

    __slots__ = ("client", "cwd", "env", "stderr_tty", "umask")

    def __init__(
        self,
        cwd: str,
        env: Mapping[str, str],
        stderr_tty: bool,
        umask: int,
        client: socket.socket | None = None,
    ) -> None:
        self.cwd, self.env, self.stderr_tty, self.umask = cwd, env, stderr_tty, umask
        self.client = client  # the proxy's connection to the jailcc that asked

    @property
    def through_proxy(self) -> bool:
        return self.client is not None

    def client_gone(self) -> bool:
        """Whether the jailcc that asked the proxy has gone (killed, or make interrupted):
        it sends nothing after its request, so its connection reads only at its end."""
        if self.client is None:
            return False
        poller = select.poll()
        poller.register(self.client.fileno(), select.POLLIN)
        if not poller.poll(0):
            return False  # (the socket's own recv would wait for its timeout)
        try:
            return self.client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def check_client(self) -> None:
        """RemoteFailure, before anything is written, when nobody waits for the outputs: a
        build interrupted meanwhile (make removed the target) must not find them later."""
        if self.client_gone():
            raise RemoteFailure("the jailcc that asked is gone: nothing written")

    @classmethod
    def here(cls) -> Invocation:
        mask = os.umask(0o22)
        os.umask(mask)
        return cls(os.getcwd(), os.environ, sys.stderr.isatty(), mask)

    def path(self, name: str) -> str:
        return os.path.join(self.cwd, name)


class Prepared(namedtuple("Prepared", "header blobs identity")):
    """A job ready to send: its JOB header, its blobs, the compiler's identity."""

    __slots__ = ()


class Outcome(namedtuple("Outcome", "exit_code stdout stderr note")):
    """What the compile says back to the user: exit status, stdout, stderr; note: a line for
    JAILCC_VERBOSE (where it ran)."""

    __slots__ = ()


def prepare(compiler: str, job: RemoteJob, inv: Invocation) -> Prepared:
    """Preprocess locally and build the job. RemoteFailure if it cannot go remote."""
    if job.sources_only:
        raise RemoteFailure("only shipping the sources gives this job's debug info exactly")
    from jailcc.images.errors import ImageError
    from jailcc.images.identity import compiler_identity

    try:
        identity = compiler_identity(compiler)
    except ImageError as exc:
        raise RemoteFailure(f"cannot identify the compiler: {exc}") from None
    clang = is_clang(compiler)
    if clang and any(word in _RECORDING for word in job.remote_args):
        raise RemoteFailure("clang records its command line, which names the preprocessed file")
    try:  # a directory, or a FIFO gcc -c cannot write: the local compile gives the error
        outputs.plan(inv.path(job.output), clang, job.assembly)
    except outputs.OutputError as exc:
        raise RemoteFailure(str(exc)) from None
    exact_debug = False
    if job.preprocessed:
        if _input_name(job) != job.source:
            # Its name is the compile's own (the object's FILE symbol, DW_AT_name, JSON
            # diagnostics) where no line marker names another: the server's would differ.
            raise RemoteFailure(f"a preprocessed input goes by its own name, {job.source}")
        try:
            with open(inv.path(job.source), "rb") as f:
                source = f.read()
        except OSError as exc:
            raise RemoteFailure(f"cannot read {job.source}: {exc.strerror}") from None
    else:
        # With debug info, gcc's exact mode: preprocess directives only (every token keeps
        # its line and column); the server expands macros itself (see compiler_policy).
        exact_debug = debug_info_on(job.remote_args) and not clang
        if exact_debug and _records_options(job):
            raise RemoteFailure(
                "the output records the compile's options, and gcc's exact -g mode adds one"
            )
        extra = ["-fdirectives-only"] if exact_debug else []
        # gcc -E ignores a precompiled header that the compile would use (and the object
        # differs); -fpch-preprocess makes it say so with a pragma, and changes nothing else.
        extra += [] if clang else ["-fpch-preprocess"]
        try:
            code, source, cpp_stderr = run_capture(
                [compiler, *job.preprocess_args, *extra, "-E", job.source], inv
            )
        except ClientGone as exc:
            raise RemoteFailure(str(exc)) from None
        except OSError as exc:  # E2BIG (a response file's words, expanded), ENOMEM...
            raise RemoteFailure(f"cannot run the preprocessor: {exc.strerror}") from None
        if code != 0 or cpp_stderr:
            # Errors or warnings of the preprocessor: a local compile reports them exactly (a
            # separate -E run sees some differently, e.g. a #warning silenced by a pragma).
            raise RemoteFailure("the preprocessor had something to say")
        if not clang and PCH_PRAGMA in source:
            raise RemoteFailure("a precompiled header (.gch) is used, which only this machine has")
        if (
            not (exact_debug or clang)  # (-fdirectives-only keeps the comments)
            and b"case" in source
            and _warns_of_fallthrough(job.remote_args)
        ):
            raise RemoteFailure(
                "gcc's fallthrough warning reads comments, which preprocessed output lacks"
            )
        if exact_debug:
            from .directives_only import lost_pragma

            lost = lost_pragma(source, inv.cwd)
            if lost is not None:
                raise RemoteFailure(f"{lost}, which gcc's exact -g mode cannot keep")
            for word in _UNEXPANDED:  # the server would expand them: its file's, its clock's
                if word in source:
                    raise RemoteFailure(
                        f"{word.decode()} would be the server's in the exact -g mode"
                    )
    header, blobs = _job_frame(job, identity, inv, source, clang)
    if exact_debug:
        header["steps"] = "debug-exact"
    return Prepared(header, blobs, identity)


def finish(
    compiler: str,
    job: RemoteJob,
    inv: Invocation,
    host: object,
    result: RemoteResult,
    headers_shipped: bool = False,
) -> Outcome:
    """Write back what a local compile would have written; RemoteFailure if the result cannot
    be trusted to equal a local compile's. `headers_shipped`: the compile had the headers (a
    tree job), so its diagnostics quote them as a local compile's would."""
    inv.check_client()
    if result.limit:
        raise RemoteFailure(
            f"{host}: the job hit the server's {result.limit} limit", code=f"limit:{result.limit}"
        )
    if result.exit_code is None:
        raise RemoteFailure(f"{host}: the compiler was killed by signal {result.signal}")
    if result.exit_code == 127 or result.stderr.startswith(b"jail: "):
        raise RemoteFailure(f"{host}: the compiler could not run: {result.stderr[:200]!r}")
    if result.exit_code != 0 and any(crash in result.stderr for crash in _CRASHES):
        # The local compile crashes the same way, or not (a server's limits): its words then,
        # naming the driver as the user did, and what it leaves behind.
        if any(words in result.stderr for words in _OUT_OF_MEMORY):  # the jail's address space
            raise RemoteFailure(f"{host}: the compiler ran out of memory", code="limit:memory")
        raise RemoteFailure(f"{host}: the compiler crashed")
    if (
        not headers_shipped
        and result.stderr
        and _names_unshipped_files(
            result.stderr, job.source if _shippable_source(job, inv.cwd) else None
        )
    ):
        # A diagnostic in a header: locally it would quote the header's line, which the
        # server did not have. The local compile gives the exact text.
        raise RemoteFailure("diagnostics point into files the server did not have")
    clang = is_clang(compiler)
    if (
        not (headers_shipped or clang)
        and b"pragma" in result.stderr
        and debug_info_on(job.remote_args)
    ):
        # gcc's exact -g mode spelled the pragma lines again: a diagnostic about one would
        # name another column than the local compile's.
        raise RemoteFailure("diagnostics about a #pragma, which gcc's exact -g mode respells")
    path = inv.path(job.output)
    if result.exit_code == 0:
        if result.output is None:
            raise RemoteFailure(f"{host}: the compile succeeded but sent no output")
        try:
            outputs.write(path, result.output, inv.umask, outputs.plan(path, clang, job.assembly))
        except outputs.OutputError as exc:
            raise RemoteFailure(str(exc)) from None
        except OSError as exc:  # e.g. a missing directory: the local compile says it properly
            raise RemoteFailure(f"cannot write {job.output}: {exc.strerror}") from None
    elif not clang and not job.assembly and _PIPE.intersection(job.remote_args):
        # as ran beside cc1 on a pipe, and the driver deletes its output: a file of one name
        # goes (measured); what as wrote first through a symlink or to a FIFO or another hard
        # link of it is the local compile's to say.
        if not outputs.plain_or_missing(path):
            raise RemoteFailure("a failed gcc -pipe: compiling locally")
        outputs.remove_after_failure(path)
    elif not clang and job.assembly and not outputs.writable(path):
        raise RemoteFailure(f"cc1 could not open {job.output}: the local compile says so")
    elif outputs.failure_shows_partial_text(path, clang, job.assembly):
        raise RemoteFailure("a failed gcc -S leaves part of its output: compiling locally")
    elif clang or job.assembly:
        outputs.remove_after_failure(path)
    elif b"Assembler messages:" in result.stderr:
        # gcc -c deletes the object only when the assembler was the step that failed, and
        # the assembler's messages name its temporary files: the local compile is exact.
        raise RemoteFailure("the assembler failed")
    run_ms = 1000 * float(result.times.get("run", 0.0))
    note = f"remote on {host} (compile {run_ms:.0f} ms, exit {result.exit_code})"
    return Outcome(result.exit_code, result.stdout, result.stderr, note)


def compile_remote(compiler: str, job: RemoteJob, inv: Invocation) -> Outcome:
    """One remote compile over direct connections to the servers in JAILCC_HOSTS, in order."""
    hosts = candidates(inv.env)
    if not hosts:
        raise RemoteFailure("no server: set JAILCC_HOSTS or start a local jailccd")
    prepared = prepare(compiler, job, inv)
    reasons, tell_user = [], False
    for host in hosts:
        opened = within(
            SETUP_DEADLINE,
            lambda host=host: _session(host, prepared.identity),
            _close_late_session,
            f"open {host}",
        )
        session = opened[0] if opened else RemoteFailure(f"{host}: {NO_ANSWER}")
        if isinstance(session, RemoteFailure):
            reasons.append(session.reason)
            tell_user = tell_user or session.tell_user
            continue
        sock, channel = session
        try:
            result = run_job(channel, host, prepared.header, prepared.blobs, MAX_RESULT)
        except RemoteFailure as exc:
            reasons.append(exc.reason)
            tell_user = tell_user or exc.tell_user
            continue
        finally:
            sock.close()
        outcome = finish(compiler, job, inv, host, result)
        if inv.env.get("JAILCC_SHIP", "sources") != "preprocessed":
            # (the first compiles of a build, before the proxy is up, and JAILCC_PROXY=0)
            outcome = outcome._replace(note=f"{outcome.note}; preprocessed: no proxy")
        return outcome
    raise RemoteFailure("; ".join(reasons), tell_user)


def _session(host: Host, identity: str) -> tuple[socket.socket, Channel] | RemoteFailure:
    """A connection to host, through its hello and authentication, or why not."""
    try:
        sock = connect(host)
    except RemoteFailure as exc:
        return exc
    try:
        channel, _ = open_session(sock, host, identity)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, RemoteFailure):
            return exc
        raise
    return sock, channel


def _close_late_session(session: tuple[socket.socket, Channel] | RemoteFailure) -> None:
    if not isinstance(session, RemoteFailure):
        session[0].close()


def _warns_of_fallthrough(args: list[str]) -> bool:
    """Whether gcc warns of implicit fallthrough, which takes a /* fallthrough */ comment for
    an attribute: -Wextra (or -W) turns it on unless the warning itself is set, last word
    winning (-Wimplicit-fallthrough=0 and -Wno-... turn it off)."""
    extra, explicit = False, None
    for a in args:
        if a in ("-Wextra", "-W", "-Wno-extra"):
            extra = a != "-Wno-extra"
        elif a.startswith(("-Wimplicit-fallthrough", "-Werror=implicit-fallthrough")):
            explicit = not a.endswith("=0")
        elif a == "-Wno-implicit-fallthrough":
            explicit = False
    return extra if explicit is None else explicit


def _input_name(job: RemoteJob) -> str:
    """The name the server compiles the preprocessed input by: the source's own base name
    with the suffix of its language, when it is one the server takes."""
    suffix = "ii" if job.language == "c++" else "i"
    stem = os.path.basename(job.source).rsplit(".", 1)[0]
    safe = 0 < len(stem) <= 200 and set(stem) <= _SAFE_CHARS
    return f"{stem}.{suffix}" if safe else f"input.{suffix}"


def _job_frame(
    job: RemoteJob, identity: str, inv: Invocation, source: bytes, clang: bool
) -> tuple[dict[str, Any], list[bytes]]:
    input_name = _input_name(job)
    args = with_color(list(job.remote_args), inv, clang)
    env = job_env(inv)
    files, blobs = [], [source]
    extra = _source_for_diagnostics(job, inv.cwd)
    if extra is not None:
        files.append(extra[0])
        blobs.append(extra[1])
    header = {
        "id": 1,
        "identity": identity,
        "args": args,
        "cwd": inv.cwd,
        "input": input_name,
        "mode": "S" if job.assembly else "c",
        "env": env,
        "files": files,
        "source": os.path.basename(job.source),
    }
    return header, blobs


def _records_options(job: RemoteJob) -> bool:
    """Whether the output lists the options cc1 ran with (beyond DW_AT_producer, which the
    server mends): .GCC.command.line, or the assembly's comments."""
    record = False
    for word in job.remote_args:
        if word in ("-frecord-gcc-switches", "-fno-record-gcc-switches"):
            record = word == "-frecord-gcc-switches"
    annotated = any(word in ("-fverbose-asm", "-dA") for word in job.remote_args)
    return record or (job.assembly and annotated)


def _names_unshipped_files(stderr: bytes, shipped: str | None) -> bool:
    """Whether a diagnostic names a place in a file other than `shipped` (the one file the
    server had, if any): locally its line would be quoted."""
    import re  # only when there are diagnostics: re costs milliseconds to import

    # "file:line:col: " or, with -fno-show-column, "file:line: " at the start of a diagnostic
    # line (after gcc's colour codes, if any).
    location = re.compile(rb"^(?:\x1b\[[0-9;]*m(?:\x1b\[K)?)*([^:\n\x1b]+):\d+(?::\d+)?: ", re.M)
    name = None if shipped is None else os.fsencode(shipped)
    return any(m.group(1) != name for m in location.finditer(stderr))


def _shippable_source(job: RemoteJob, cwd: str) -> tuple[str, str] | None:
    """(path, name under cwd) of the source when the server gets it for its diagnostics."""
    if job.preprocessed:
        return None
    path = os.path.normpath(os.path.join(cwd, job.source))
    rel = os.path.relpath(path, cwd)
    if rel.startswith("..") or os.path.isabs(rel):
        return None
    try:
        return (path, rel) if os.path.getsize(path) <= MAX_EXTRA_SOURCE else None
    except OSError:
        return None


def _source_for_diagnostics(job: RemoteJob, cwd: str) -> tuple[str, bytes] | None:
    """The source file itself, at its place under the working directory, so that the
    compiler's diagnostics quote its lines as a local compile's would."""
    found = _shippable_source(job, cwd)
    if found is None:
        return None
    try:
        with open(found[0], "rb") as f:
            return found[1], f.read()
    except OSError:
        return None


def with_color(args: list[str], inv: Invocation, clang: bool) -> list[str]:
    """args, asking for what the local compile would print on its terminal (the jail's stderr
    is none): colours, and gcc's links from a warning to its option's documentation (in the
    form GCC_URLS or TERM_URLS ask for, which the jail gets)."""
    # Neither may change the object: gcc leaves its colour option out of the command line it
    # records (debug info's producer, -frecord-gcc-switches), clang does not, and gcc keeps
    # -fdiagnostics-urls in it.
    extra = []
    if _wants_color(args, inv) and not (clang and _records_command_line(args, clang)):
        extra.append("-fdiagnostics-color=always")
    if _wants_links(args, inv, clang) and not _records_command_line(args, clang):
        extra.append("-fdiagnostics-urls=always")
    return [*args, *extra] if extra else args


# A warning's "[-Wname]" (its bracket coloured apart, on a terminal): where gcc links.
_OPTION_TAG = re.compile(rb"\[(?:\x1b\[[0-9;]*m\x1b\[K)?-W")


def terminal_links_left_out(args: list[str], inv: Invocation, clang: bool, stderr: bytes) -> bool:
    """Whether the local compile would have printed links from its warnings to their options'
    documentation that the remote one could not be asked for (gcc keeps the option in the
    debug info's record of the command line)."""
    return (
        _OPTION_TAG.search(stderr) is not None
        and _wants_links(args, inv, clang)
        and _records_command_line(args, clang)
    )


def _wants_links(args: list[str], inv: Invocation, clang: bool) -> bool:
    """gcc, on a terminal it prints links on, told nothing of them or "auto" last."""
    said = [a for a in args if a.startswith(_URL_OPTIONS)]
    return (
        not clang
        and _links_on_terminal(inv)
        and (not said or said[-1] == "-fdiagnostics-urls=auto")
    )


def _records_command_line(args: list[str], clang: bool) -> bool:
    """Whether the output may hold the compile's options: gcc's debug info does unless told
    not to (taken as it does), gcc's annotated assembly (-fverbose-asm) lists them, and
    either compiler's object does when asked."""
    if any(a in _RECORDING for a in args):
        return True
    return not clang and (debug_info_on(args) or "-fverbose-asm" in args)


# What the user's environment may say to a remote compiler (the server's own allowlist,
# jobs/compiler_policy.py ALLOWED_ENV, drops what it does not know).
PASSED_ENV = (
    "GCC_COLORS",
    "GCC_URLS",
    "TERM_URLS",
    "GCC_EXTRA_DIAGNOSTIC_OUTPUT",  # fixits-v1/v2: machine-readable fix-it lines on stderr
    "SOURCE_DATE_EPOCH",
)


def job_env(inv: Invocation) -> dict[str, str]:
    """The few variables a remote compile gets from the user's environment, and the user's
    time zone now (__DATE__ and __TIME__ are local times) as a fixed offset, which needs no
    zoneinfo in the jail."""
    env = {"LC_ALL": "C.UTF-8" if quotes_in_utf8(inv.env) else "C"}
    for name in PASSED_ENV:
        if name in inv.env:
            env[name] = inv.env[name]
    env["TZ"] = fixed_time_zone(client_utc_offset(inv.env))
    return env


MAX_UTC_OFFSET = 26 * 3600


def client_utc_offset(env: Mapping[str, str]) -> int:
    """The UTC offset the client stated (proxy_wire.UTC_OFFSET: the proxy's own zone is that
    of whoever started it, and may be stale), else (a process of the client's own, or an
    older client) this process's."""
    from .proxy_wire import UTC_OFFSET

    stated = env.get(UTC_OFFSET, "")
    if stated.lstrip("-").isdigit() and abs(int(stated)) <= MAX_UTC_OFFSET:
        return int(stated)
    return time.localtime().tm_gmtoff


def fixed_time_zone(east: int) -> str:
    """A POSIX TZ for this many seconds east of UTC (POSIX counts west)."""
    hours, rest = divmod(abs(east), 3600)
    return f"LOC{'-' if east > 0 else '+'}{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _wants_color(args: list[str], inv: Invocation) -> bool:
    """On a terminal, told nothing of colours or "auto" last (GCC_COLORS="" turns them off)."""
    said = [a for a in args if a.startswith(("-fdiagnostics-color", "-fno-diagnostics-color"))]
    if said and said[-1] != "-fdiagnostics-color=auto":
        return False
    return inv.env.get("GCC_COLORS") != "" and _on_terminal(inv)


def _on_terminal(inv: Invocation) -> bool:
    """What the compilers' "auto" asks: stderr a terminal, TERM set and not "dumb"."""
    return inv.stderr_tty and inv.env.get("TERM", "dumb") != "dumb"


def _links_on_terminal(inv: Invocation) -> bool:
    """Whether gcc's "auto" prints links on this terminal (gcc/diagnostic-color.cc,
    auto_enable_urls): GCC_URLS or TERM_URLS set says so, else any terminal but those known
    to garble them: TERM "xterm" (old gnome-terminal), "linux", and xfce4-terminal."""
    if not _on_terminal(inv):
        return False
    if "GCC_URLS" in inv.env or "TERM_URLS" in inv.env:
        return True
    if inv.env.get("TERM") in ("xterm", "linux"):
        return False
    return inv.env.get("COLORTERM") != "xfce4-terminal"
