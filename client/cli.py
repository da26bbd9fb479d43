"""jailcc: compile remotely when it can, locally when it must, always with a local compile's
result. Usage: jailcc COMPILER ARGS... | a masquerade symlink named like the compiler.

Runs once per compile, so it imports little and does nothing before it knows the job."""

from __future__ import annotations

import os
import sys

USAGE = """usage: jailcc COMPILER [ARGS...]

Compiles like COMPILER would, on a jailcc server when the job can go remote (a single C or
C++ source compiled with -c or -S), locally otherwise or whenever the remote side fails.
Use it as CC="jailcc gcc", CCACHE_PREFIX=jailcc, CMAKE_C_COMPILER_LAUNCHER=jailcc, or through
a symlink named gcc, g++, cc, c++ or clang pointing at jailcc, placed early on PATH.

environment:
  JAILCC_HOSTS    servers to use, in order: unix:/path/to/socket, HOST:PORT or tcp:HOST:PORT
                  (default: unix:/run/jailccd/jailccd.sock when that socket exists)
  JAILCC_VERBOSE  1: say on stderr where each job ran and why
  JAILCC_DEBUG_REMOTE
                  1: send clang's -g compiles too, accepting debug info whose line and
                  column numbers differ from a local compile's (gcc's -g compiles go remote
                  in an exact mode; clang's compile locally by default)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    from .compiler import find_compiler, split_invocation

    name, args, _masquerading = split_invocation(argv)
    if name is None or name in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if name else 2
    if name == "--version":
        from jailcc import __version__

        print(f"jailcc {__version__}")
        return 0
    compiler = find_compiler(name, argv[0])
    if compiler is None:
        print(
            f"jailcc: cannot find the compiler {name!r} on PATH (jailcc itself skipped)",
            file=sys.stderr,
        )
        return 127
    verbose = os.environ.get("JAILCC_VERBOSE", "") not in ("", "0")
    try:
        return _compile(compiler, name, args, verbose)
    except Exception as exc:
        print(
            f"jailcc: internal error ({type(exc).__name__}: {exc}); compiling locally",
            file=sys.stderr,
        )
        return _exec_local(compiler, args)


def _compile(compiler: str, name: str, args: list[str], verbose: bool) -> int:
    from .args import Local, analyse

    cwd = os.getcwd()
    # gcc's -g jobs go remote in the exact mode (see job.py); other compilers' only on request.
    exact_debug = "clang" not in os.path.basename(name)
    job = analyse(
        args,
        cwd,
        compiler=name,
        debug_info_may_differ=exact_debug or os.environ.get("JAILCC_DEBUG_REMOTE") == "1",
    )
    if isinstance(job, Local):
        _note(verbose, args, f"local ({job.reason})")
        return _exec_local(compiler, args)

    from .job import compile_remote
    from .remote import RemoteFailure

    try:
        return compile_remote(compiler, job, cwd, verbose)
    except RemoteFailure as exc:
        _note(verbose or exc.tell_user, args, f"compiling locally: {exc.reason}")
        return _exec_local(compiler, args)


def _note(verbose: bool, args: list[str], what: str) -> None:
    if verbose:
        source = next((a for a in args if not a.startswith("-")), "?")
        print(f"jailcc: {source}: {what}", file=sys.stderr)


def _exec_local(compiler: str, args: list[str]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(compiler, [compiler, *args])
    except OSError as exc:
        print(f"jailcc: cannot run {compiler}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
