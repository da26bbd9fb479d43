"""Argument analysis for ``jailcc COMPILER ARGS...``: may this compile run remotely, and how.

``analyse(args, cwd)`` (``args`` without the compiler name) returns ``Local(reason)`` when the
job must run on this machine, or a ``RemoteJob``: the single C/C++ source, where a local compile
would write its output, the arguments for the local preprocessing run
``COMPILER <preprocess_args> -E [-o TMP.i] SOURCE`` (which also writes the dependency file, if
any) and the arguments for the remote compile ``COMPILER <remote_args> -c|-S TMP.i -o OUT``
(the server adds the mode, the input and ``-o``).  Name TMP ``.i`` for language "c" and ``.ii``
for "c++": ``remote_args`` never holds ``-x``, the suffix gives the language.  ``@file``
arguments are expanded first, with gcc's rules (``expand_response_files``).  Pass
``compiler=`` (argv[0]) when known: g++/clang++ make .c and .i inputs C++.

The rule is distcc's: a job goes remote only when the remote result can be the local one, so
anything that would change the outcome keeps the job local.  Options come from
``jailcc.options``, the table the server's allowlist is made from, parsed as the drivers parse
them (joined and separate values, ``--long=value``, gcc's unique abbreviations of its long
options: ``--imac x.h`` is ``-imacros x.h``); an option the table does not know keeps the job
local, since the server would refuse it.  One pass, O(n).

Decisions ("cpp": preprocessing run only; "remote": remote compile only; "both"; "local"),
checked against gcc-12, g++-12 and clang-16 in tests/test_args.py:

=============================================  ======  ======================================
option                                         where   why
=============================================  ======  ======================================
-c / -S (both given: -S wins, as in gcc)       -       the server adds the mode
-o X, -oX                                      -       the server chooses -o; two -o (gcc
                                                       fails) or ``-o -``: local
-x c|c++|cpp-output|c++-cpp-output|none        cpp     re-added at the end of preprocess_args
                                                       (it only affects later inputs)
-x other languages; any -x after the input     local   not C/C++; gcc warns "no effect"
-D -U -I -include -imacros -isystem -iquote    cpp     joined and separate forms, and gcc's
-idirafter -iprefix -iwithprefix[before]               long spellings (--include=...); cc1
-imultilib -imultiarch -iframework -nostdinc           does not record them in DW_AT_producer,
-nostdinc++ -no-integrated-cpp -I- -stdlib=            and the driver drops them for .i input
                                                       (clang warns "unused" for -stdlib=)
-Wp,<-D/-U/-I/-MD/-MMD/-MF/-MT/-MQ/-MP only>   cpp     (anything else in -Wp,: local)
-MD -MMD -MF -MT -MQ -MP                       cpp     the .d comes from the local run; -MF
                                                       and -MQ are added (see below)
-MF - (deps to stdout, mixed into the .i)      local
-M -MM (even with -MD: no compile), -MG, -MJ   local   no object / needs -M / clang database
-Mmodules -Mno-modules
-H -C -CC -P -undef -A -remap                  local   cc1 records them in DW_AT_producer;
                                                       the .i compile cannot (-P also drops
                                                       the line markers)
-traditional -traditional-cpp                  local   rare
-dD -dM -dN -dI -dU -da, other -d<letters>     local   change the .i / RTL dump files
-dA -dp -dP                                    both    annotate the assembly only
-dumpbase -dumpbase-ext -dumpdir               local   name auxiliary outputs
-E -fsyntax-only -v -### --help* --version     local   no object, or print instead
-print-* -dumpspecs -dumpversion -dumpmachine
-dumpfullversion -Q -time
-march=native -mtune=native -mcpu=native       local   probe this host's CPU
-save-temps* -fdump-* -aux-info -fstack-usage  local   extra files beside the output
-fcallgraph-info* -gsplit-dwarf -ftime-trace
-fsave-optimization-record -fopt-info*=FILE
-fdiagnostics-format=json-file|sarif-file
-fcompare-debug* -fproc-stat-report ...
-fprofile* (all, also -fprofile-update)        local   profile/coverage data read or written
-fauto-profile* -fbranch-probabilities
-ftest-coverage --coverage -fcoverage*
-fcs-profile*
-fplugin* -fpass-plugin -specs* -wrapper -B*   local   the server refuses them (compiler
--prefix* --sysroot* -isysroot -iplugindir*            policy): host files, foreign code
-Xclang -Xanalyzer -gcc-toolchain -resource-dir
-fsanitize-*list= -fxray-*-list= -fself-test   local   read host files while compiling
-fbasic-block-sections=FILE
-include-pch -ivfsoverlay -fpch-preprocess     local   precompiled headers / overlays
-fmodules* -fmodule-* -fcxx-modules -gmodules  local   module caches, mappers, .gcm files
-fimplicit-module* -fprebuilt-module*
-fdirectives-only -fpreprocessed               local   change what the .i means
-g3 -ggdb3 -gdwarf3 ... (level 3)              local   separate cpp loses macro info (with
                                                       sources: shipped as sources only)
-fdebug-macro
-Wa,* (but --noexecstack and the like)        local   may write files (listings)
-Xassembler X -Xpreprocessor X                 local   may write files / pass -H, -P to cpp
-emit-llvm --analyze                           local   other outputs
-no-integrated-as -fno-integrated-as           local   clang images hold no assembler
-fno-<a local -f family> (-fno-plugin...)      local   judged as the family it negates
unknown options, unknown or ambiguous --long   local   the server refuses them (gcc turns an
                                                       unknown --X into -fX)
-g -gN -gdwarf-N -gz -O* -W* -f* -m* -std=     both    compile options that cpp also sees
-ansi -pedantic -trigraphs -w -pipe -pthread           (__OPTIMIZE__, __PIC__, _REENTRANT,
-p -pg -fPIC -flto -fsanitize=*                        __STRICT_ANSI__, __SANITIZE_*__ ...)
-frecord-gcc-switches -f*-prefix-map=                  (-finput-charset=: cc1 does not
-finput-charset= -fexec-charset= (UTF-8 only:          convert the .i a second time)
other charsets are local, images have no iconv)
-Qunused-arguments -no-canonical-prefixes
--param X --param=X -target X -arch X          both    separate arguments consumed
-mllvm X; the spellings that the drivers       local   the value would go unchecked
give a separate value where a family (-f,
-m, -g) sees a flag: -fnew-alignment N ...
-l -L -Wl,* -Xlinker X -T -u -z -e -shared     remote  link-only: no effect with -c (gcc-12
-static* -shared-* -pie -no-pie -rdynamic -s           is silent, clang warns "unused" once
-r -nostdlib -nostartfiles -nodefaultlibs              per run, so once, as locally)
-nolibc -symbolic -fuse-ld= -rtlib= -unwindlib=
-ftime-report* -fmem-report*                   remote  else cc1 -E prints a report of its own
=============================================  ======  ======================================

Precompiled headers found beside a header are a local compile's only: clang's driver takes
NAME.pch or NAME.gch beside a -include NAME (checked here); gcc reads NAME.gch where it looks
for NAME (the proxy's include analysis sends such a job preprocessed, and gcc -E
-fpch-preprocess, client/job.py, says when the compile would use one: then it is local).

Dependency files.  With -MD/-MMD gcc's driver passes cc1 ``-MD <dep>`` and, when -o is given
and neither -MT nor -MQ, ``-MQ <the -o argument>``; with no -o cc1's own default target is
basename(source) with its suffix replaced by ``.o`` (even for -S).  The preprocessing run
writes the .i elsewhere, so it gets ``-MF <dep>`` and ``-MQ <that target>`` (unless given):
<dep> is the last -MF, else the -o argument with the suffix of its last path component replaced
by ``.d``, else basename(source) minus its suffix plus ``.d``, in the current directory.  clang
derives both the same way (but its target under -E would be the .i: the -MQ fixes that).
``-Wp,-MD,F`` is cc1's own option: gcc's cc1 takes the default target in both runs (nothing
added), clang turns it into a driver -MD with the output as target, so with a clang
``compiler=`` a -MQ is added too.  A preprocessed input writes no .d (clang warns): local.

Known limits of compiling the preprocessed output (the distcc model; measured, and kept as
strict xfail tests in tests/test_args.py):

* Columns.  Macro expansion and comment removal move the tokens after them on their line, so
  with -g the DWARF columns (DW_AT_decl_column, DW_AT_call_column, .loc) differ from a local
  compile for most real code (``bool``, ``NULL``, ``true`` before a name on the same line), and
  so do -flto objects (their IR keeps locations; they are not reproducible locally either
  without -frandom-seed).  Diagnostics show other columns, lose "in expansion of macro" notes,
  and a ``/* fallthrough */`` comment no longer silences -Wimplicit-fallthrough.  Code and data
  are the same.  gcc's ``-fdirectives-only`` in both runs keeps columns and diagnostics; the
  only difference left is " -fdirectives-only" in DW_AT_producer (gcc records it).
* gcc -E ignores ``#pragma GCC diagnostic`` for preprocessor warnings in C (-Wcpp): a
  ``#warning`` that the pragma silences locally is printed (or fails with -Werror).
* gcc prints "command-line option '-std=c++17' is valid for C++..." once per run: twice.
* clang prints "N warnings generated." once per run, and clang's DWARF 5 line tables hold MD5
  sums of the source files, which a .i compile cannot know (-gdwarf-4 is identical).
"""

import os
import stat
from collections import namedtuple

from jailcc.options import BOTH, CPP, LOCAL, option_at


class Local(namedtuple("Local", "reason")):
    """The job must run locally.  ``reason``: short and human ("linking", "-E", ...)."""

    __slots__ = ()


class RemoteJob(
    namedtuple(
        "RemoteJob",
        "source language preprocessed output assembly preprocess_args remote_args dep_file"
        " sources_only dep_targets",
        defaults=(False, ()),
    )
):
    """A job that may run remotely.

    source: str               the input file as given on the command line
    language: str             "c" or "c++"
    preprocessed: bool        the input is already preprocessed (.i/.ii, -x cpp-output): the
                              caller sends it as is and skips the local preprocessing run
    output: str               where a local compile writes the object (-c) or assembly (-S)
    assembly: bool            -S rather than -c
    preprocess_args: list     for ``COMPILER <preprocess_args> -E -o TMP.i SOURCE``
    remote_args: list         for the remote compile, without input, -o, -c/-S and any -x
    dep_file: str | None      the dependency file the preprocessing run writes, if any
    sources_only: bool        only a tree job gives the local compile's result (debug info
                              that shipping preprocessed output would change): shipped as
                              sources or compiled locally, never preprocessed
    dep_targets: tuple        the -MT targets, which the compiler writes into the dependency
                              file as they are (make variables included)
    """

    __slots__ = ()


# ---------------------------------------------------------------------------------------------
# Response files (libiberty's expandargv/buildargv, as used by gcc's driver)

MAX_RESPONSE_DEPTH = 32  # nesting of @file inside @file
MAX_RESPONSE_FILES = 2000  # gcc's own limit on @file expansions
MAX_RESPONSE_BYTES = 8 << 20  # total bytes read from @files for one command line


def _split_response(data: bytes) -> list[str]:
    """Split an @file's contents like libiberty's buildargv (gcc's): ASCII whitespace separates
    words, single and double quotes group, and a backslash makes the next byte literal, inside
    quotes too (unlike the shell).  ``''`` is an empty word; an unterminated quote runs to the
    end; the contents end at the first NUL byte."""
    nul = data.find(b"\0")
    if nul >= 0:  # gcc reads the file as a C string
        data = data[:nul]
    if b"'" not in data and b'"' not in data and b"\\" not in data:
        return [os.fsdecode(w) for w in data.split()]  # bytes.split(): ASCII whitespace only
    words: list[str] = []
    cur = bytearray()
    in_word = squote = dquote = bsquote = False
    for c in data:
        if bsquote:
            bsquote = False
            cur.append(c)
        elif c == 0x5C:  # backslash
            bsquote = True
        elif squote:
            if c == 0x27:
                squote = False
            else:
                cur.append(c)
        elif dquote:
            if c == 0x22:
                dquote = False
            else:
                cur.append(c)
        elif c in b" \t\n\r\x0b\x0c":
            if in_word:
                words.append(os.fsdecode(bytes(cur)))
                cur.clear()
                in_word = False
            continue
        elif c == 0x27:
            squote = True
        elif c == 0x22:
            dquote = True
        else:
            cur.append(c)
        in_word = True
    if in_word:
        words.append(os.fsdecode(bytes(cur)))
    return words


def expand_response_files(args: list[str], cwd: str) -> list[str]:
    """Replace every ``@file`` argument by the words of that file, recursively, as gcc does.

    Paths are relative to ``cwd`` (nested ones too, like gcc).  An @file that cannot be opened
    stays literal (gcc then reports it as a missing input).  Raises ValueError for an @file
    that is a directory (gcc's error too), includes itself (gcc would loop until its limit),
    nests deeper than MAX_RESPONSE_DEPTH, is not a regular file (a FIFO, a device: left to the
    compiler), or when more than MAX_RESPONSE_FILES files or MAX_RESPONSE_BYTES bytes are read.
    The caller (analyse) turns these errors into Local, so the compiler reports them itself.
    """
    for a in args:
        if a[:1] == "@":
            break
    else:
        return list(args)
    out: list[str] = []
    stack = [(iter(args), None)]
    active: set[tuple[int, int]] = set()  # (st_dev, st_ino) of the files being expanded
    files = total = 0
    while stack:
        it, _ = stack[-1]
        for a in it:
            if a[:1] != "@":
                out.append(a)
                continue
            name = a[1:]
            if not name:  # gcc: stat("") fails, the argument stays
                out.append(a)
                continue
            try:
                # O_NONBLOCK: a FIFO must not hang the client (it is refused below)
                fd = os.open(os.path.join(cwd, name), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                out.append(a)  # like gcc: a file that cannot be opened stays literal
                continue
            try:
                st = os.fstat(fd)
                if (st.st_mode & 0o170000) == 0o040000:
                    raise ValueError(f"@-file {name!r} refers to a directory")
                if (st.st_mode & 0o170000) != 0o100000:
                    raise ValueError(f"@-file {name!r} is not a regular file")
                key = (st.st_dev, st.st_ino)
                if key in active:
                    raise ValueError(f"@-file {name!r} includes itself (a loop of @-files)")
                if len(stack) > MAX_RESPONSE_DEPTH:
                    raise ValueError(f"@-files nested deeper than {MAX_RESPONSE_DEPTH} at {name!r}")
                files += 1
                if files > MAX_RESPONSE_FILES:
                    raise ValueError(f"more than {MAX_RESPONSE_FILES} @-files")
                limit = MAX_RESPONSE_BYTES - total
                chunks = []
                while True:
                    chunk = os.read(fd, min(limit + 1, 1 << 20))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    limit -= len(chunk)
                    if limit < 0:
                        raise ValueError(
                            f"@-files larger than {MAX_RESPONSE_BYTES} bytes in all (at {name!r})"
                        )
                data = b"".join(chunks)
                total += len(data)
            finally:
                os.close(fd)
            active.add(key)
            stack.append((iter(_split_response(data)), key))
            break
        else:
            _, key = stack.pop()
            if key is not None:
                active.discard(key)
    return out


# ---------------------------------------------------------------------------------------------
# Inputs and -g (the options themselves are jailcc.options' table)

# Input suffixes (gcc's, case-sensitive) -> (language, preprocessed).
_SUFFIXES = {
    "c": ("c", False),
    "i": ("c", True),
    "ii": ("c++", True),
    **dict.fromkeys(("cc", "cp", "cxx", "cpp", "CPP", "c++", "C"), ("c++", False)),
}
_CXX_DRIVER_SUFFIXES = {**_SUFFIXES, "c": ("c++", False), "i": ("c++", True)}
_LANGUAGES = {
    "c": ("c", False),
    "c++": ("c++", False),
    "cpp-output": ("c", True),
    "c++-cpp-output": ("c++", True),
}
_OTHER_SUFFIXES = {
    **dict.fromkeys(("h", "hh", "H", "hp", "hxx", "hpp", "HPP", "h++", "tcc"), "a header (PCH)"),
    **dict.fromkeys(("s", "S", "sx"), "assembler input"),
    **dict.fromkeys(("m", "mi", "mm", "M", "mii"), "Objective-C input"),
}
# -g options that tune debug info without turning it on.
_DEBUG_NEUTRAL = frozenset(
    (
        "-gz",
        "-gstrict-dwarf",
        "-grecord-gcc-switches",
        "-gdescribe-dies",
        "-gpubnames",
        "-ggnu-pubnames",
        "-gsplit-dwarf",
        "-ginline-points",
        "-gstatement-frontiers",
        "-gvariable-location-views",
        "-ginternal-reset-location-views",
        "-gas-loc-support",
        "-gas-locview-support",
        "-gbtf",
        "-gctf",
    )
)


def _debug_after(a: str, debug: bool) -> bool:
    """Whether debug info is on after the -g option a, given whether it was before."""
    if a.startswith(("-gno-", "-gcolumn-info")) or a in _DEBUG_NEUTRAL:
        return debug
    return a not in ("-g0", "-ggdb0", "-gdwarf0")


def debug_info_on(remote_args: list[str]) -> bool:
    """Whether a job's compile arguments (RemoteJob.remote_args) produce debug info."""
    debug = False
    i = 0
    while i < len(remote_args):
        w, i = option_at(remote_args, i)
        if w.option is not None and w.option.handler == "debug":
            debug = _debug_after(w.canonical, debug)
    return debug


def _stem(path: str) -> str:
    """gcc's %b: the basename without its suffix (a leading dot is not a suffix)."""
    base = path[path.rfind("/") + 1 :]
    dot = base.rfind(".")
    return base[:dot] if dot > 0 else base


def _replace_suffix(path: str, suffix: str) -> str:
    """gcc's %.SUFFIX on a switch argument: replace from the last dot of the last component."""
    slash = path.rfind("/")
    dot = path.rfind(".")
    return (path[:dot] if dot > slash else path) + suffix


def _wp_deps(a: str) -> tuple[bool, str | None, bool, list[str]] | None:
    """Parse -Wp,...: (has -MD/-MMD, its dep file, has -MT/-MQ, the -MT targets), or None if
    not allowed."""
    words = a[4:].split(",")
    dep = False
    dep_file = None
    target = False
    targets: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if w in ("-MD", "-MMD", "-MF", "-MT", "-MQ"):
            if i >= len(words):
                return None
            if w in ("-MT", "-MQ"):
                target = True
                if w == "-MT":
                    targets.append(words[i])
            else:
                dep = dep or w != "-MF"
                dep_file = words[i]
            i += 1
        elif w == "-MP":
            pass
        elif w[:2] in ("-D", "-U", "-I"):
            if len(w) == 2:
                i += 1
        else:
            return None
    return dep, dep_file, target, targets


def _clang_precompiled(forced: list[str], cwd: str) -> str | None:
    """The precompiled header clang's driver takes for one of the -include files: NAME.pch or
    NAME.gch beside NAME as given (from cwd), a file or a directory of them."""
    for name in forced:
        for suffix in (".pch", ".gch"):
            if os.path.exists(os.path.join(cwd, name + suffix)):
                return name + suffix
    return None


def _regular_or_missing(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # the compile's own error says it


def same_file(cwd: str, a: str, b: str) -> bool:
    """Whether a and b name one file (through a symlink or a link, or spelled otherwise)."""
    try:
        one, two = os.stat(os.path.join(cwd, b)), os.stat(os.path.join(cwd, a))
    except OSError:
        return False  # (b first: an output that does not exist yet is the common case)
    return (one.st_dev, one.st_ino) == (two.st_dev, two.st_ino)


def analyse(
    args: list[str],
    cwd: str,
    compiler: str | None = None,
    debug_info_may_differ: bool = False,
    sources: bool = False,
    clang: bool | None = None,
) -> "RemoteJob | Local":
    """Decide whether ``COMPILER args`` (``args`` without the compiler) may run remotely.

    ``cwd`` is where the compile runs (for @files).  ``compiler``, if given, is the compiler
    as invoked: a name with "++" (g++, clang++) makes .c and .i inputs C++, as those drivers
    do; a name with "clang" selects clang's handling of -Wp,-MD and its -g rules, unless
    ``clang`` says whether the compiler is clang (`cc` may be).

    Debug info: compiling the preprocessed output elsewhere moves tokens: those after a macro
    or a comment on their line to other columns, and the arguments of a macro call that spans
    lines onto the call's line. Debug info records both, so a -g object would differ from a
    local one (-gno-column-info is not enough). Such jobs stay local unless the caller accepts
    the difference (``debug_info_may_differ``). With ``sources`` (the caller can ship the
    job as sources, which compiles the user's own files at their paths), such jobs are
    remote jobs marked ``sources_only``.
    """
    try:
        args = expand_response_files(args, cwd)
    except ValueError as e:
        return Local(str(e))
    cpp: list[str] = []
    remote: list[str] = []
    source = None
    inputs = 0
    x_lang = None  # the -x in force
    source_lang = None  # the -x in force for the source
    output = None
    outputs = 0
    mode = 0  # 1: -c, 2: -S
    dep = False
    dep_file = None  # last -MF
    target = False  # -MT/-MQ given
    dep_targets: list[str] = []  # -MT's
    wp_dep = False
    wp_dep_file = None
    debug = False  # a -g option that turns debug info on is in force
    dwarf5 = True  # the DWARF version in force is 5 (both compilers' default here)
    macro_debug = False
    forced: list[str] = []  # -include files
    n = len(args)
    i = 0
    while i < n:
        a = args[i]
        i += 1
        if a[:1] != "-" or a == "-":
            if a == "-":
                return Local("input from stdin")
            inputs += 1
            if source is None:
                source = a
                source_lang = x_lang
            continue
        try:
            w, i = option_at(args, i - 1)
        except ValueError as e:
            return Local(str(e))
        handler = w.option.handler if w.option is not None else None
        if w.decision == LOCAL:
            # Macro debug info (-g3): a separate preprocessor loses the definitions, the
            # user's own compile in the jail records them as a local one does.
            if not (sources and handler == "debug"):
                return Local(w.reason)
            macro_debug = True
        words = w.words
        if w.canonical == "-include":
            forced.append(w.value)
        if handler is None:
            if w.decision == BOTH:
                cpp += words
                remote += words
            elif w.decision == CPP:
                cpp += words
            else:  # REMOTE
                remote += words
        elif handler == "out":
            outputs += 1
            output = w.value
        elif handler == "lang":
            value = w.value
            if value != "none" and value not in _LANGUAGES:
                return Local(f"-x {value}")
            if inputs:
                return Local("-x after the input file")
            x_lang = None if value == "none" else value
        elif handler == "compile":
            mode = mode or 1
        elif handler == "assemble":
            mode = 2
        elif handler == "dep":
            dep = True
            cpp += words
        elif handler == "depfile":
            if w.value == "-":
                return Local("dependencies to stdout")
            dep_file = w.value
            cpp += words
        elif handler == "target":
            target = True
            if w.canonical.startswith("-MT"):  # (-MT X or -MTX)
                dep_targets.append(w.value)
            cpp += words
        elif handler == "wp":
            parsed = _wp_deps(a)
            if parsed is None or parsed[1] == "-":
                return Local(a)
            if parsed[0]:
                wp_dep = True
                wp_dep_file = parsed[1]
            target = target or parsed[2]
            dep_targets += parsed[3]
            cpp += words
        else:  # "debug"
            if w.canonical.startswith("-gdwarf-"):
                dwarf5 = w.canonical == "-gdwarf-5"
            debug = _debug_after(w.canonical, debug)
            cpp += words
            remote += words

    if not mode:
        return Local("linking" if inputs else "no input file")
    sources_only = macro_debug
    if debug and not debug_info_may_differ:
        if not sources:
            return Local("-g: debug info lines and columns would differ from a local compile's")
        sources_only = True
    if clang is None:
        clang = compiler is not None and "clang" in compiler.rsplit("/", 1)[-1]
    if debug and dwarf5 and clang:
        # clang's DWARF 5 line table holds MD5 sums of the original source files.
        if not sources:
            return Local("clang -g with DWARF 5: source checksums would differ (use -gdwarf-4)")
        sources_only = True
    if source is None:
        return Local("no input file")
    if clang and (pch := _clang_precompiled(forced, cwd)):
        return Local(f"clang would use the precompiled header {pch}, which only this machine has")
    if inputs > 1:
        return Local("more than one input file")
    if outputs > 1:
        return Local("more than one -o")
    if output == "-":
        return Local("output to stdout")

    cxx_driver = compiler is not None and "++" in compiler[compiler.rfind("/") + 1 :]
    if source_lang is not None:
        language, preprocessed = _LANGUAGES[source_lang]
        if cxx_driver and language == "c":
            return Local(f"-x {source_lang} with a C++ driver")
    else:
        base = source[source.rfind("/") + 1 :]
        dot = base.rfind(".")
        suffix = base[dot + 1 :] if dot > 0 else ""
        found = (_CXX_DRIVER_SUFFIXES if cxx_driver else _SUFFIXES).get(suffix)
        if found is None:
            return Local(_OTHER_SUFFIXES.get(suffix, f"input {source!r} is not C/C++"))
        language, preprocessed = found

    assembly = mode == 2
    given_output = output
    if output is None:
        output = _stem(source) + (".s" if assembly else ".o")
    if same_file(cwd, source, output):
        # gcc refuses it (clang overwrites its input): either way, what the compiler does.
        return Local("the output is the input file")
    if not _regular_or_missing(os.path.join(cwd, source)):
        # A FIFO or a device is read once, by whoever opens it first: the compiler, here.
        return Local("the input is not a regular file")

    result_dep_file = None
    if dep or wp_dep:
        if preprocessed:
            return Local("dependency file for a preprocessed input")
        if dep:
            if dep_file is None:
                dep_file = (
                    _replace_suffix(given_output, ".d")
                    if given_output is not None
                    else _stem(source) + ".d"
                )
                cpp += ("-MF", dep_file)
            result_dep_file = dep_file
        else:
            result_dep_file = wp_dep_file
        if not target and (dep or clang):
            if given_output is None:
                # cc1's default target: the source's basename with its suffix (strrchr: a
                # leading dot counts) replaced by .o, also for -S.
                base = source[source.rfind("/") + 1 :]
                dot = base.rfind(".")
                default_target = (base[:dot] if dot >= 0 else base) + ".o"
            else:
                default_target = given_output
            cpp += ("-MQ", default_target)
    if source_lang is not None:
        cpp += ("-x", source_lang)
    if sources_only and preprocessed:
        return Local("-g on a preprocessed input: debug info would differ")
    return RemoteJob(
        source,
        language,
        preprocessed,
        output,
        assembly,
        cpp,
        remote,
        result_dep_file,
        sources_only,
        tuple(dep_targets),
    )
