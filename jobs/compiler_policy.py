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

Tree jobs (``check_tree_args``) run the user's own command line on the user's own files, laid
out in the jail at the user's paths: there the table's ``src`` decision admits a word ("run"
or "server") that a client would ship (none it compiles locally, but -g3's macro debug info),
the command names one input (a file of the tree) and -c or -S, and the values
that name files the compile writes (``path == "write"``: -o, -MF...) lie beneath the job's
root. ``tree_deps`` says how the jail learns which files such a compile read.
"""

from __future__ import annotations

import itertools
import os
import re

from jailcc import options
from jailcc.options import LOCAL, SENT_REMOTE, Word, option_at

MAX_ARGS = 4096
MAX_ARG_BYTES = 64 * 1024
MAX_TOTAL_ARG_BYTES = 512 * 1024

# Environment variables a job may carry (everything else is dropped: GCC_EXEC_PREFIX,
# COMPILER_PATH, LD_*, CPATH*, DEPENDENCIES_OUTPUT, TMPDIR, ... never reach the compiler).
ALLOWED_ENV = frozenset(
    {"LC_ALL", "GCC_COLORS", "GCC_URLS", "TERM_URLS", "GCC_EXTRA_DIAGNOSTIC_OUTPUT"}
    | {"SOURCE_DATE_EPOCH", "TZ"}
)
FIXED_TZ = re.compile(options.FIXED_TZ)
ALLOWED_LOCALES = frozenset({"C", "POSIX", "C.UTF-8", "C.utf8"})
BASE_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TMPDIR": "/tmp"}


class PolicyError(Exception):
    """The job asks for something the server does not do; the message names the option."""


def _check_words(args: object) -> list[str]:
    """The caps every job's arguments keep: a list of strings, no response files."""
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise PolicyError("compiler arguments must be a list of strings")
    if len(args) > MAX_ARGS or sum(len(a) for a in args) > MAX_TOTAL_ARG_BYTES:
        raise PolicyError("too many compiler arguments")
    for arg in args:
        if "\0" in arg or len(arg) > MAX_ARG_BYTES:
            raise PolicyError("a compiler argument is malformed or too long")
        if arg.startswith("@"):  # gcc expands them anywhere, separate values too
            raise PolicyError(f"response files are not accepted ({arg!r})")
    return args


def _shown(word: Word, arg: str) -> str:
    shown = " ".join(word.words)
    if word.canonical != arg:  # a long option or an abbreviation: say what it means
        shown += f" (that is {word.canonical})"
    return shown


def check_args(args: object) -> list[str]:
    """Validate the compiler arguments of a job; return them as a list of str."""
    args = _check_words(args)
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
            raise PolicyError(f"the option {_shown(word, arg)} is not allowed on a compile server")
    return list(args)


# -- Tree jobs: the user's own command line ---------------------------------------------------

TREE_DECISIONS = frozenset(("run", "server"))
# What -Wp, may pass to cc1 in a tree job (it passes anything unchecked, -fplugin= too): the
# preprocessor's macros and directories, and the dependency options.
_WP_VALUE = frozenset(("-MD", "-MMD", "-MF", "-MT", "-MQ"))  # each takes the next sub-word
_WP_PATH = frozenset(("-MD", "-MMD", "-MF"))  # ... which names a file cc1 writes
_WP_DIRECT = frozenset(("-D", "-U", "-I"))  # joined, or the next sub-word


class TreeArgs:
    """A tree job's arguments once admitted: the words, the one input as written and as an
    absolute path, and each parsed option (with its row) in order."""

    __slots__ = ("args", "input", "input_path", "words")

    def __init__(self, args: list[str], input_word: str, input_path: str, words: list) -> None:
        self.args, self.input, self.input_path, self.words = args, input_word, input_path, words


def beneath(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def _check_written(value: str, what: str, cwd: str, root: str) -> None:
    if not beneath(os.path.normpath(os.path.join(cwd, value)), root):
        raise PolicyError(f"{what} writes {value!r}, outside the job's root {root}")


def _wp_words(word: Word) -> list[str]:
    """The sub-words of a -Wp, option (cc1's own options)."""
    return word.value.split(",")


def _check_wp(word: Word, cwd: str, root: str) -> None:
    subs = _wp_words(word)
    i = 0
    while i < len(subs):
        sub = subs[i]
        i += 1
        if sub in _WP_VALUE or sub in _WP_DIRECT:
            if i >= len(subs):
                raise PolicyError(f"{word.words[0]}: {sub} needs a value")
            if sub in _WP_PATH:
                _check_written(subs[i], word.words[0], cwd, root)
            i += 1
        elif sub != "-MP" and sub[:2] not in _WP_DIRECT:
            raise PolicyError(
                f"the option {word.words[0]} is not allowed in a tree job (-Wp, may pass only"
                " -D, -U, -I and the -M dependency options)"
            )


def check_tree_args(args: object, cwd: str, root: str, files: set[str]) -> TreeArgs:
    """Admit the user's arguments (after argv[0]) for a tree job run in cwd, whose files (as
    absolute paths) lie beneath root; PolicyError names what is refused."""
    args = _check_words(args)
    inputs: list[str] = []
    words: list[Word] = []
    compiles = False
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            inputs.append(arg)
            i += 1
            continue
        try:
            word, i = option_at(args, i)
        except ValueError as exc:
            raise PolicyError(f"{exc}: a value must follow it") from None
        row = word.option
        if (
            row is None
            or row.src not in TREE_DECISIONS
            # What a client compiles locally it never ships: such a word in a tree job is
            # refused (files it would write or read at a path of its own: dumps, -dumpdir,
            # profiles, -fopt-info-all=FILE), but for macro debug info, which only a tree job
            # gives exactly.
            or (word.decision == LOCAL and row.handler != "debug")
        ):
            raise PolicyError(f"the option {_shown(word, arg)} is not allowed in a tree job")
        if row.handler in ("compile", "assemble"):
            compiles = True
        if row.handler == "wp":
            _check_wp(word, cwd, root)
        elif row.path == "write":
            _check_written(word.value, _shown(word, arg), cwd, root)
        words.append(word)
    if len(inputs) != 1:
        listed = ", ".join(repr(a) for a in inputs[:4])
        raise PolicyError(
            f"a tree job compiles exactly one input file, not {len(inputs)} ({listed})"
        )
    path = os.path.normpath(os.path.join(cwd, inputs[0]))
    if path not in files:
        raise PolicyError(f"the input {inputs[0]!r} is not a file of the job's tree")
    if not compiles:
        raise PolicyError("a tree job compiles with -c or -S")
    return TreeArgs(list(args), inputs[0], path, words)


# How the jail learns which files a tree job's compile read (the soundness data): from the
# compiler's own dependency output, checked with gcc-12 and clang-16 (tests/test_tree_jobs.py).
DEPS_SUNPRO = "sunpro"  # gcc, no -M option: SUNPRO_DEPENDENCIES="FILE x" in the environment
# makes cc1 write a make rule of every file read, system headers included, the main file not
# (clang-16 ignores the variable)
DEPS_HEADERS = "headers"  # clang: CC_PRINT_HEADERS=1 CC_PRINT_HEADERS_FILE=FILE (its driver
# adds -header-include-file to cc1, which -grecord-command-line does not record): one header
# a line, system headers included, the main file not, whatever the -M options
DEPS_FILE = "file"  # gcc -MD -MF FILE: read FILE, the compile's own make rule (main file too)
DEPS_LOG = "log"  # gcc, the image has the read log (images/readlog.c): LD_PRELOADed into the
# user's compile, it records every file cc1 opens and every name it looks for in vain, whatever
# the -M options; the jail chooses it over the three below when the image holds the log
DEPS_PASS = "pass"  # anything else (-MMD omits system headers): a preprocessing-only pass
# first, the same words without -c/-S, -o and the -M options, plus -M -MF FILE -MT x -o
# /dev/null (it then writes nothing but FILE)


def tree_deps(tree_args: TreeArgs, compiler_kind: str) -> tuple[str, str | None]:
    """(how, the -MF file as written for DEPS_FILE)."""
    if compiler_kind == "clang":
        # CC_PRINT_HEADERS also makes clang's driver add -sys-header-deps, which puts the
        # system headers into an -MMD rule: those jobs learn their files from a pass of
        # their own instead.
        if any(_is_mmd(word) for word in tree_args.words):
            return DEPS_PASS, None
        return DEPS_HEADERS, None
    deps = md = other = False  # any -M option; -MD; one that rules out reading the -MF file
    dep_file = None
    for word in tree_args.words:
        handler = word.option.handler
        if handler == "dep":
            deps = True
            md = md or word.canonical == "-MD"
            other = other or word.canonical != "-MD"  # -MMD: system headers left out
        elif handler == "depfile":
            deps, dep_file = True, word.value
        elif handler == "target" or word.option.spelling == "-MP":
            deps = True
        elif handler == "wp" and any(s.startswith("-M") for s in _wp_words(word)):
            deps = other = True
    if not deps:
        return DEPS_SUNPRO, None
    if md and not other and dep_file not in (None, "-"):
        return DEPS_FILE, dep_file
    return DEPS_PASS, None


def _is_mmd(word: Word) -> bool:
    if word.option.handler == "wp":
        return any(s.startswith("-MMD") for s in _wp_words(word))
    return word.option.handler == "dep" and word.canonical == "-MMD"


_PASS_DROPS = frozenset(("compile", "assemble", "out", "dep", "depfile", "target"))


def deps_pass_args(tree_args: TreeArgs, dep_path: str) -> list[str]:
    """The arguments of DEPS_PASS's preprocessing-only run, writing its rule to dep_path."""
    args, out = tree_args.args, []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            out.append(arg)  # the input
            i += 1
            continue
        word, i = option_at(args, i)
        handler = word.option.handler if word.option is not None else None
        if handler in _PASS_DROPS or word.canonical == "-MP":
            continue
        if handler == "wp":
            kept = _wp_without_deps(_wp_words(word))
            if kept:
                out.append("-Wp," + ",".join(kept))
            continue
        out.extend(word.words)
    return [*out, "-M", "-MF", dep_path, "-MT", "x", "-o", "/dev/null"]


def _wp_without_deps(subs: list[str]) -> list[str]:
    kept: list[str] = []
    i = 0
    while i < len(subs):
        sub = subs[i]
        if sub in _WP_VALUE:
            i += 2
        elif sub == "-MP":
            i += 1
        elif sub in _WP_DIRECT:
            kept += subs[i : i + 2]
            i += 2
        else:
            kept.append(sub)
            i += 1
    return kept


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
        if key == "TZ" and not FIXED_TZ.fullmatch(value):
            raise PolicyError("TZ must be a fixed offset (NAME[+-]H[:MM[:SS]])")
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
