"""What one `jailcc` invocation comes to: run the compiler locally (and what to say first), or
the finished result of a remote compile. Shared by jailcc itself and the per-user proxy, which
decides for many clients at once (their cwd, environment and terminal in an Invocation)."""

from __future__ import annotations

import os
import time
from collections import namedtuple

from .compiler import (
    clang_name_problem,
    find_compiler,
    is_clang,
    not_found,
    on_path,
    split_invocation,
)
from .hosts import HostsError
from .job import Invocation, Outcome
from .locales import translated_diagnostics
from .proxy_wire import text_bytes
from .remote import RemoteFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .args import RemoteJob

    Remote = Callable[[str, RemoteJob, Invocation], Outcome]


# Variables that make the compiler run other programs (cc1, as) than the image's: -B's kind.
PROGRAM_ENV = ("GCC_EXEC_PREFIX", "COMPILER_PATH")
# Programs that run the compiler themselves, whose masquerade directories (/usr/lib/ccache)
# may come first on PATH: taken for the compiler, every job would compile locally, told to
# build an image of ccache.
COMPILER_WRAPPERS = frozenset(("ccache", "sccache", "distcc", "icecc", "buildcache"))
CCACHE_HINT = ", or keep ccache and set CCACHE_PREFIX=jailcc"
# Variables that change the compile or make it write files besides its outputs, which a job
# does not carry: gcc's -fcompare-debug, clang's added options and its logs.
CHANGING_ENV = ("GCC_COMPARE_DEBUG", "CCC_OVERRIDE_OPTIONS", "CC_PRINT_", "CC_LOG_DIAGNOSTICS")


class RunLocally(namedtuple("RunLocally", "compiler args message")):
    """Exec compiler with args here; print message (if any) on stderr first."""

    __slots__ = ()


def decide(
    argv: list[str],
    exe: str,
    inv: Invocation,
    remote: Remote,
    tell: Callable[[RemoteFailure], bool] | None = None,
) -> RunLocally | Outcome:
    """argv as jailcc was called (argv[0] as typed: jailcc, or a masquerade name); exe: the
    jailcc executable itself, never taken for a compiler; remote: how to run a remote job;
    tell: whether a failure the user should hear about is to be said now (the proxy says each
    once per build; without it, every time)."""
    name, args, _ = split_invocation(argv)
    assert name is not None  # usage errors are answered before this
    compiler = find_compiler(name, exe, inv.env.get("PATH", ""), inv.cwd)
    if compiler is None:
        return Outcome(127, b"", text_bytes(not_found(name)), "")
    verbose = inv.env.get("JAILCC_VERBOSE", "") not in ("", "0")
    log_file = inv.env.get("JAILCC_LOG", "")

    def said(what: str) -> str:
        """A line for JAILCC_VERBOSE: to stderr, or appended to JAILCC_LOG (where configure
        scripts, which test that a compiler says nothing, cannot see it)."""
        if log_file:
            _append(os.path.join(inv.cwd, log_file), _note(True, args, what), inv.umask)
            return ""
        return _note(verbose, args, what)

    def told(what: str) -> str:
        """A line said even without JAILCC_VERBOSE: to stderr, or to JAILCC_LOG likewise."""
        return said(what) if log_file else _note(True, args, what)

    wrapper = os.path.basename(os.path.realpath(compiler))
    if wrapper in COMPILER_WRAPPERS:  # its masquerade directory is first on PATH
        hint = CCACHE_HINT if wrapper == "ccache" else ""
        why = f"{compiler} is {wrapper}: take its directory off PATH for jailcc{hint}"
        return RunLocally(compiler, args, said(f"local ({why})"))
    clang = is_clang(compiler)  # by the binary: `cc` may be clang
    why = clang_name_problem(name) if clang else None  # a name that sets its target or mode
    why = why or _program_env(inv.env)
    why = why or (None if clang else _other_assembler(inv.env.get("PATH", ""), inv.cwd))
    why = why or (None if clang else translated_diagnostics(inv.env))
    if why is not None:
        return RunLocally(compiler, args, said(f"local ({why})"))
    started = time.monotonic()
    from .args import Local, analyse

    # gcc's -g jobs go remote in the exact mode (see job.py); other compilers' only on request.
    try:
        job = analyse(
            args,
            inv.cwd,
            compiler=name,
            clang=clang,
            debug_info_may_differ=not clang or inv.env.get("JAILCC_DEBUG_REMOTE") == "1",
            sources=ships_sources(inv),
        )
        if isinstance(job, Local):
            return RunLocally(compiler, args, said(f"local ({job.reason})"))
        outcome = remote(compiler, job, inv)
    except RemoteFailure as exc:
        to_tell = exc.tell_user and (tell is None or tell(exc))
        what = f"compiling locally: {exc.reason}"
        return RunLocally(compiler, args, told(what) if to_tell else said(what))
    except HostsError as exc:  # the user's mistake, in their words: say so on every compile
        if log_file:
            return RunLocally(compiler, args, said(f"{exc}; compiling locally"))
        return RunLocally(compiler, args, f"jailcc: {exc}; compiling {source_of(args)} locally\n")
    except Exception as exc:  # a bug of ours must never cost the user the compile
        message = f"internal error ({type(exc).__name__}: {exc}); compiling locally"
        return RunLocally(compiler, args, told(message))
    if verbose or log_file:
        total = f"total {1000 * (time.monotonic() - started):.0f} ms"
        note = text_bytes(said(f"{outcome.note}, {total}"))
        outcome = outcome._replace(stderr=outcome.stderr + note)
    return outcome


def _program_env(env: Mapping[str, str]) -> str | None:
    """Why env makes the compiler run other programs (cc1, as) than the image's, or changes
    what it does, if it does."""
    for name in PROGRAM_ENV:
        if name in env:
            return f"{name} is set: it picks the compiler's programs"
    for name, value in env.items():
        if name.startswith(CHANGING_ENV) and value not in ("", "0"):  # (gcc's "off" values)
            return f"{name} is set, which a remote compile would not see"
    return None


def _other_assembler(path_env: str, cwd: str) -> str | None:
    """Why gcc would run another `as` than our compiler identity's: gcc runs the first on
    PATH, and the user's PATH (a wrapper in ~/bin, entries relative to cwd) may not be this
    process's, by which the identity was taken (the proxy's is that of whoever started it)."""
    ours = os.environ.get("PATH", "")
    absolute = all(d.startswith("/") for d in path_env.split(":"))
    if path_env == ours and (absolute or cwd == os.getcwd()):
        return None
    theirs = _first_on_path("as", path_env, cwd)
    if theirs != _first_on_path("as", ours, os.getcwd()):
        return f"the assembler your PATH finds, {theirs}, is not the one jailcc's is"
    return None


def _first_on_path(name: str, path_env: str, cwd: str) -> str | None:
    found = next(on_path(name, path_env, cwd), None)
    return None if found is None else os.path.realpath(found)


def _append(path: str, line: str, umask: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~umask)
    except OSError:
        return  # (a log that cannot be written costs no compile)
    try:
        os.write(fd, text_bytes(line))  # one write: lines of parallel jobs do not mix
    except OSError:
        pass
    finally:
        os.close(fd)


def _note(say: bool, args: list[str], what: str) -> str:
    if not say:
        return ""
    return f"jailcc: {source_of(args)}: {what}\n"


def source_of(args: list[str]) -> str:
    """The source file a compile names, for messages ("?" if none): the first word that is
    neither an option nor an option's value (-x c, -include h, -MT t), nor a response file
    (named only when nothing else is: the source may be in it)."""
    from jailcc.options import option_at

    i, response_file = 0, None
    while i < len(args):
        if args[i][:1] == "@" and len(args[i]) > 1:
            response_file = response_file or args[i]
            i += 1
            continue
        if args[i][:1] != "-" or args[i] == "-":
            return args[i]
        try:
            i = option_at(args, i)[1]
        except ValueError:
            break
    return response_file or "?"


def ships_sources(inv: Invocation) -> bool:
    """Whether this compile may go as a tree job (client/tree.py): unless JAILCC_SHIP says
    "preprocessed", through the proxy (which holds the include analysis; a process of its own
    never ships sources)."""
    return inv.env.get("JAILCC_SHIP", "sources") != "preprocessed" and inv.through_proxy
