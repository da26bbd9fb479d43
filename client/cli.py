"""jailcc: compile remotely when it can, locally when it must, always with a local compile's
result. Usage: jailcc COMPILER ARGS... | a masquerade symlink named like the compiler |
jailcc proxy start|stop|status | jailcc status [--json] | jailcc hosts | jailcc mon |
jailcc trace.

Runs once per compile, so it imports little and does nothing before it knows the job. It asks
the per-user proxy first (starting it when there is none); the native client (jailcc.c) does
the same faster and comes here only when the proxy cannot answer."""

from __future__ import annotations

import os
import sys

USAGE = """usage: jailcc COMPILER [ARGS...]
       jailcc --help | --version           this text; jailcc's version
       jailcc proxy start|stop|status      the per-user proxy (started on demand anyway)
       jailcc status [--json]              servers, connections, jobs, overhead
       jailcc hosts [--json]               the servers found, and from where
       jailcc hosts scan PATTERN [PORT]    probe hosts like build[1-40].example.com:3633
       jailcc mon [--once] [--json] [--interval S]
                                           the farm, live: each server's slots and jobs, and
                                           your build (--once: one snapshot; --json: the raw
                                           data, one object per refresh; --interval: seconds
                                           between refreshes, default 1)
       jailcc trace [-o FILE.json] [--png FILE.png] [--gap SECONDS]
                                           your last build's timeline as Chrome trace-event
                                           JSON (-o, default jailcc-trace.json, - for stdout;
                                           opens in ui.perfetto.dev or chrome://tracing) and,
                                           with --png, as an image; the last build: the jobs
                                           since the last --gap seconds (default 10) in which
                                           none ran

Compiles like COMPILER would, on a jailcc server when the job can go remote (a single C or
C++ source compiled with -c or -S), locally otherwise or whenever the remote side fails.
Use it as CC="jailcc gcc", CCACHE_PREFIX=jailcc, CMAKE_C_COMPILER_LAUNCHER=jailcc, or through
a symlink named gcc, g++, cc, c++ or clang pointing at jailcc, placed early on PATH.

Compiles go through a per-user proxy that keeps authenticated connections to the servers open
ahead of time; jailcc starts it when it is not running, and it exits when idle.

environment:
  JAILCC_HOSTS    servers to use: unix:/path/to/socket, HOST:PORT or tcp:HOST:PORT, each
                  optionally followed by /SLOTS (unix:/run/jailccd/jailccd.sock/4), TCP
                  entries then by ;principal=SERVICE/HOST@REALM or ;auth=none; when unset,
                  the first hosts file found (below), else unix:/run/jailccd/jailccd.sock
                  when that socket exists
  JAILCC_VERBOSE  1: say on stderr where each job ran and why
  JAILCC_LOG      a file (relative: to the compile's directory) to append those lines to
                  instead of stderr, e.g. for configure scripts, whose compiler checks
                  fail when the compiler prints anything
  JAILCC_DEBUG_REMOTE
                  1: send clang's -g compiles too, accepting debug info whose line and
                  column numbers differ from a local compile's (gcc's -g compiles go remote
                  in an exact mode; clang's compile locally by default)
  JAILCC_SHIP     "sources" (the default): the proxy ships the source and the files it
                  reads (only those a server lacks) and the server runs your own command
                  once at your paths; jobs it cannot ship that way (a server image built
                  without --headers, system headers that differ from the image's...) go as
                  preprocessed output, and JAILCC_VERBOSE=1 says which mode ran and why.
                  "preprocessed": always ship preprocessed output, as distcc does.
                  Without the proxy (JAILCC_PROXY=0) jobs always go preprocessed
                  (docs/include-analysis.md)
  JAILCC_DISCOVER how the proxy finds servers beyond JAILCC_HOSTS: "mdns" (DNS-SD on the
                  local network) and/or "srv:DOMAIN" (DNS SRV _jailcc._tcp.DOMAIN);
                  default "mdns" when no hosts are configured (JAILCC_HOSTS or a
                  hosts file), nothing otherwise
  JAILCC_PROXY    0: no proxy; every jailcc connects to the servers itself
  JAILCC_PROXY_IDLE
                  seconds a proxy started now stays up without work (default 900)

files (read when JAILCC_HOSTS is unset, the first that exists; JAILCC_HOSTS's syntax,
entries separated by spaces or newlines, # to the end of a line a comment; the proxy
re-reads its file when it changes):
  $XDG_CONFIG_HOME/jailcc/hosts   (default ~/.config/jailcc/hosts)
  /etc/jailcc/hosts
"""


# jailcc's own commands; any other first word is a compiler. The native client (jailcc.c) hands
# these to this program: its SUBCOMMANDS must say the same (tests/test_hosts_files.py checks).
SUBCOMMANDS = ("proxy", "status", "hosts", "mon", "trace")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    # The native client passes the name it was called by (a masquerade name matters).
    argv[0] = os.environ.pop("JAILCC_ARGV0", None) or argv[0]
    from .compiler import split_invocation

    name, args, masquerading = split_invocation(argv)
    if (
        name is None
        or name in ("-h", "--help", "--version")
        or (not masquerading and name in SUBCOMMANDS)
    ):
        try:
            code = _own_command(name, args)
            sys.stdout.flush()
            return code
        except BrokenPipeError:  # `jailcc status | head -1`: quiet, as a C tool would be
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141  # 128 + SIGPIPE

    from .job import Invocation

    exe = os.path.realpath(sys.argv[0])
    if sys.stderr is None or sys.stdout is None:
        # Closed (2>&-): a compiler with something to say then fails, as it may: its business.
        return _here_unknown(name, exe, args)
    try:
        inv = Invocation.here()
    except OSError:  # the working directory was removed: the compiler says what it makes of it
        return _here_unknown(name, exe, args)
    # By the native client: "answerless" when a proxy runs that gave it no answer (stopped,
    # say): then neither ask it nor start another.
    tried = os.environ.pop("JAILCC_PROXY_TRIED", None)
    if os.environ.get("JAILCC_PROXY", "1") != "0" and tried != "answerless":
        from .proxy_client import ask_proxy

        answer = ask_proxy(argv, exe, inv, ask=tried is None)
        if answer is not None:
            return _act(answer, name, exe)
    from .decide import decide
    from .job import compile_remote

    return _act(decide(argv, exe, inv, compile_remote), name, exe)


def _own_command(name: str | None, args: list[str]) -> int:
    if name is None or name in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if name else 2
    if name == "--version":
        from jailcc import __version__

        print(f"jailcc {__version__}")
        return 0
    if name in ("mon", "trace"):
        from . import mon, trace

        return (mon if name == "mon" else trace).main(args)
    from .proxy_cli import command

    return command(name, args)


def _act(answer: object, typed: str, exe: str) -> int:
    from .decide import RunLocally

    if isinstance(answer, RunLocally):
        if answer.message:
            from .proxy_wire import text_bytes

            sys.stderr.buffer.write(text_bytes(answer.message))
            sys.stderr.flush()
        return _exec_local(answer.compiler, answer.args, typed, exe)
    exit_code, stdout, stderr = answer[0], answer[1], answer[2]  # an Outcome
    sys.stdout.buffer.write(stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(stderr)
    sys.stderr.flush()
    return exit_code


def _here_unknown(name: str, exe: str, args: list[str]) -> int:
    from .compiler import find_compiler, not_found

    compiler = find_compiler(name, exe)
    if compiler is None:
        if sys.stderr is not None:
            sys.stderr.write(not_found(name))
        return 127
    return _exec_local(compiler, args, name, exe)


def _exec_local(compiler: str, args: list[str], typed: str, exe: str) -> int:
    from .compiler import local_arg0

    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # (None: closed when we started)
            stream.flush()
    try:
        arg0, path = local_arg0(typed, compiler, exe)
        if path is not None:
            os.environ["PATH"] = path
        os.execv(compiler, [arg0, *args])
    except OSError as exc:
        print(f"jailcc: cannot run {compiler}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
