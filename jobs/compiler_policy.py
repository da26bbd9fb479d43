"""The one place where the job service knows about compilers: which compiler arguments a job
may carry, and the environment it runs with.

The jail is the security boundary; this is defence in depth and a guard against surprises.
The arguments are checked against an allowlist: ``jailcc.options``' table, the one the client
classifies with, parsed as the gcc and clang drivers parse them (joined and separate values,
``--long=value``, gcc's abbreviations of long options).  An argument is admitted only if its
row sends it to the remote compile of a preprocessed file ("both" or "remote"); everything
else is refused with an error naming the option: unknown options, options that load code
(plugins, specs, wrappers, other program directories), write files besides the one output
(dumps, temps, profiles, dependency files), read files other than the input (profile data,
response files, sysroots, include directories), or make the job something other than "compile
this one preprocessed file" (-E, -x, -dumpdir...).  The server supplies the input file name,
-c or -S, and -o itself; a separate value may not be missing (it would swallow the -c).
"""

from __future__ import annotations

import itertools

from jailcc.options import SENT_REMOTE, option_at

MAX_ARGS = 4096
MAX_ARG_BYTES = 64 * 1024
MAX_TOTAL_ARG_BYTES = 512 * 1024

# Environment variables a job may carry (everything else is dropped: GCC_EXEC_PREFIX,
# COMPILER_PATH, LD_*, CPATH*, DEPENDENCIES_OUTPUT, TMPDIR, ... never reach the compiler).
ALLOWED_ENV = frozenset({"LC_ALL", "GCC_COLORS", "SOURCE_DATE_EPOCH"})
ALLOWED_LOCALES = frozenset({"C", "POSIX", "C.UTF-8", "C.utf8"})
BASE_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TMPDIR": "/tmp"}


class PolicyError(Exception):
    """The job asks for something the server does not do; the message names the option."""


def check_args(args: object) -> list[str]:
    """Validate the compiler arguments of a job; return them as a list of str."""
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise PolicyError("compiler arguments must be a list of strings")
    if len(args) > MAX_ARGS or sum(len(a) for a in args) > MAX_TOTAL_ARG_BYTES:
        raise PolicyError("too many compiler arguments")
    for arg in args:
        if "\0" in arg or len(arg) > MAX_ARG_BYTES:
            raise PolicyError("a compiler argument is malformed or too long")
        if arg.startswith("@"):  # gcc expands them anywhere, separate values too
            raise PolicyError(f"response files are not accepted ({arg!r})")
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            raise PolicyError(f"unexpected file argument {arg!r}: the server supplies the input")
        try:
            word, i = option_at(args, i)
        except ValueError as exc:
            raise PolicyError(f"{exc}: a value must follow it") from None
        if word.decision not in SENT_REMOTE:
            shown = " ".join(word.words)
            if word.canonical != arg:  # a long option or an abbreviation: say what it means
                shown += f" (that is {word.canonical})"
            raise PolicyError(f"the option {shown} is not allowed on a compile server")
    return list(args)


def job_env(requested: object) -> dict[str, str]:
    """The job's environment: a fixed base plus the few allowed variables, validated."""
    env = dict(BASE_ENV)
    if requested is None:
        return env
    if not isinstance(requested, dict):
        raise PolicyError("env must be an object")
    for key, value in requested.items():
        if key not in ALLOWED_ENV:
            continue  # dropped silently: clients may send what they have
        if not isinstance(value, str) or "\0" in value or len(value) > 4096:
            raise PolicyError(f"environment variable {key} is malformed")
        if key == "LC_ALL" and value not in ALLOWED_LOCALES:
            continue
        env[key] = value
    return env


# -- Debug info that matches a local compile exactly (gcc) -----------------------------------
#
# Compiling a fully preprocessed file elsewhere moves tokens to other lines and columns (after
# a macro or comment, or inside a macro call spanning lines), and DWARF records both. So with
# -g the client preprocesses directives only (-fdirectives-only: includes and conditionals are
# done, macros are not expanded, every token keeps its place), and the server runs:
#   A  gcc ARGS -fdirectives-only -S INPUT      the real compile: code and debug info exact,
#                                               except that gcc records -fdirectives-only in
#                                               DW_AT_producer, which also moves that string
#                                               within .debug_str (gcc emits it in hash order);
#   B  gcc ARGS -nostdinc -x LANG -S INPUT      the same, macros expanded as a normal source
#                                               (-nostdinc: the image has no headers, and gcc
#                                               records no -nostdinc): its .debug_str is a local
#                                               compile's, in order;
# then puts B's .debug_str (same strings under the same .LASF labels) into A's assembly,
# checking that only the producer differs, and assembles the result (or returns it for -S).
# The price is a second compile on the server; the client's work is unchanged.

DEBUG_EXACT = "debug-exact"
_DIRECTIVES_ONLY = " -fdirectives-only"


class TransplantError(Exception):
    """A and B disagree on more than the producer: the result cannot be trusted."""


def _debug_str_block(asm: str) -> tuple[int, int]:
    """(start, end) of the body of the .debug_str section in gcc's assembly."""
    marker = "\t.section\t.debug_str,"
    start = asm.find(marker)
    if start < 0 or asm.find(marker, start + 1) >= 0:
        raise TransplantError("expected exactly one .debug_str section")
    body = asm.index("\n", start) + 1
    end = asm.find("\t.section\t", body)
    if end < 0:
        end = asm.find("\t.ident\t", body)
    if end < 0:
        raise TransplantError("cannot find the end of .debug_str")
    return body, end


def _labelled_strings(block: str) -> dict[str, str]:
    lines = block.splitlines()
    strings: dict[str, str] = {}
    for label, value in itertools.pairwise(lines):
        if label.startswith(".LASF") and label.endswith(":"):
            strings[label[:-1]] = value
    return strings


def transplant_debug_strings(a_asm: str, b_asm: str) -> str:
    """A's assembly with B's .debug_str section (see above)."""
    a_start, a_end = _debug_str_block(a_asm)
    b_start, b_end = _debug_str_block(b_asm)
    a_strings = _labelled_strings(a_asm[a_start:a_end])
    b_strings = _labelled_strings(b_asm[b_start:b_end])
    if a_strings.keys() != b_strings.keys():
        raise TransplantError("the two compiles label their debug strings differently")
    differing = [k for k in a_strings if a_strings[k] != b_strings[k]]
    if len(differing) != 1:
        raise TransplantError(f"{len(differing)} debug strings differ, expected the producer")
    a_producer, b_producer = a_strings[differing[0]], b_strings[differing[0]]
    if a_producer.replace(_DIRECTIVES_ONLY, "", 1) != b_producer:
        raise TransplantError("the debug strings differ in more than -fdirectives-only")
    return a_asm[:a_start] + b_asm[b_start:b_end] + a_asm[a_end:]
