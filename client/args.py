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
anything that would change the outcome keeps the job local.  Unknown single-dash options are
taken for plain compiler flags (kept in both runs; gcc ignores cpp-only flags for a .i input
anyway); unknown options in the families where one could take a separate argument or write a
file (``--*``, ``-i*``, ``-M*``, ``-X*``, ``-d*``) keep the job local.  One pass, O(n).

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
-D -U -I -include -imacros -isystem -iquote    cpp     joined and separate forms; cc1 does
-idirafter -iprefix -iwithprefix[before]               not record them in DW_AT_producer,
-imultilib -imultiarch -iframework -nostdinc           and the driver drops them for .i
-nostdinc++ -no-integrated-cpp -I-                     input anyway
-Wp,<-D/-U/-I/-MD/-MMD/-MF/-MT/-MQ/-MP only>   cpp     (anything else in -Wp,: local)
-MD -MMD -MF -MT -MQ -MP                       cpp     the .d comes from the local run; -MF
                                                       and -MQ are added (see below)
-MF - (deps to stdout, mixed into the .i)      local
-M -MM (even with -MD: no compile), -MG, -MJ   local   no object / needs -M / clang database
-Mmodules -Mno-modules                         local
-H -C -CC -P -undef -A -remap                  local   cc1 records them in DW_AT_producer;
                                                       the .i compile cannot (-P also drops
                                                       the line markers)
-traditional -traditional-cpp                  local   rare
-dD -dM -dN -dI -dU, other -d<letters>         local   change the .i / RTL dump files
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
-fprofile* (all, also -fprofile-update)        local   profile/coverage data read or written
-fauto-profile* -fbranch-probabilities
-ftest-coverage --coverage -fcoverage*
-fcs-profile*
-fplugin* -specs* -wrapper -B* --sysroot*      local   the server refuses them (compiler
-isysroot -iplugindir* -Xclang -Xanalyzer              policy): host files, foreign code
-gcc-toolchain -resource-dir
-fsanitize-*list= -fsanitize-coverage-*list=   local   read host files while compiling
-include-pch -ivfsoverlay -fpch-preprocess     local   precompiled headers / overlays
-fmodules* -fmodule-* -fcxx-modules -gmodules  local   module caches, mappers, .gcm files
-fimplicit-module* -fprebuilt-module*
-fdirectives-only -fpreprocessed               local   change what the .i means
-g3 -ggdb3 -gdwarf3 ... (level 3)              local   separate cpp loses macro info
-fdebug-macro
-Wa,* -Xassembler X -Xpreprocessor X           local   may write files / pass -H, -P to cpp
-emit-llvm --analyze -fcompare-debug*          local   other outputs / cc1 run twice
-g -gN -gdwarf-N -gz -O* -W* -f* -m* -std=     both    compile options that cpp also sees
-ansi -pedantic -trigraphs -w -pipe -pthread           (__OPTIMIZE__, __PIC__, _REENTRANT,
-fPIC -flto -fsanitize=*                               __STRICT_ANSI__, __SANITIZE_*__ ...)
-frecord-gcc-switches -f*-prefix-map=                  (-finput-charset=: cc1 does not
-finput-charset= and other single-dash options         convert the .i a second time)
--param X --param=X -mllvm X -target X -arch X both    separate arguments consumed
-l -L -Wl,* -Xlinker X -T -u -z -e -shared     remote  link-only: no effect with -c (gcc-12
-static* -shared-* -pie -no-pie -rdynamic -s           is silent, clang warns "unused" once
-r -nostdlib -nostartfiles -nodefaultlibs              per run, so once, as locally)
-nolibc -symbolic -fuse-ld=
-ftime-report* -fmem-report*                   remote  else cc1 -E prints a report of its own
=============================================  ======  ======================================

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
from collections import namedtuple


class Local(namedtuple("Local", "reason")):
    """The job must run locally.  ``reason``: short and human ("linking", "-E", ...)."""

    __slots__ = ()


class RemoteJob(
    namedtuple(
        "RemoteJob",
        "source language preprocessed output assembly preprocess_args remote_args dep_file",
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
# Option tables

_BOTH = 0  # preprocessing and remote compile
_CPP = 1  # preprocessing only
_LOCAL = 2  # the job runs locally
_OUT = 3  # -o
_LANG = 4  # -x
_COMPILE = 5  # -c
_ASSEMBLE = 6  # -S
_DEP = 7  # -MD / -MMD
_DEPFILE = 8  # -MF
_TARGET = 9  # -MT / -MQ
_WP = 10  # -Wp,...
_DEBUG = 11  # -g...: level 3 is local
_OPTINFO = 12  # -fopt-info...: local when it names a file
_REMOTE = 13  # remote compile only: link-only options, reports of the compile

# Exact spellings: option -> (kind, takes a separate argument, reason for Local or None).
_EXACT: dict[str, tuple[int, bool, str | None]] = {}


def _exact(kind: int, separate: bool, names: str, reason: str | None = None) -> None:
    for name in names.split():
        _EXACT[name] = (kind, separate, reason)


_exact(_COMPILE, False, "-c")
_exact(_ASSEMBLE, False, "-S")
_exact(_OUT, True, "-o")
_exact(_LANG, True, "-x")
_exact(_DEP, False, "-MD -MMD")
_exact(_DEPFILE, True, "-MF")
_exact(_TARGET, True, "-MT -MQ")
_exact(_CPP, False, "-MP -nostdinc -nostdinc++ -no-integrated-cpp -I-")
_exact(
    _CPP,
    True,
    "-D -U -I -include -imacros -isystem -iquote -idirafter -iprefix -iwithprefix"
    " -iwithprefixbefore -imultilib -imultiarch -iframework -cxx-isystem -iwithsysroot",
)
_exact(_BOTH, True, "--param -mllvm -target -arch")
_exact(_REMOTE, True, "-L -l -T -Tbss -Tdata -Ttext -u -z -e -Xlinker")
_exact(
    _REMOTE,
    False,
    "-shared -static -pie -no-pie -rdynamic -s -r -nostdlib -nostartfiles -nodefaultlibs"
    " -nolibc -symbolic",
)
_exact(_BOTH, False, "-dA -dp -dP -w -trigraphs")
_exact(_LOCAL, False, "-E")
_exact(_LOCAL, False, "-M", "-M (dependencies only)")
_exact(_LOCAL, False, "-MM", "-MM (dependencies only)")
_exact(
    _LOCAL,
    True,
    "-MJ -A -B -Xassembler -Xpreprocessor -Xclang -Xanalyzer -aux-info -dumpbase -dumpbase-ext"
    " -dumpdir -wrapper -specs --sysroot -isysroot -include-pch -ivfsoverlay -gcc-toolchain"
    " -resource-dir",
)
_exact(
    _LOCAL,
    False,
    "-MG -Mmodules -Mno-modules -H -C -CC -P -undef -remap -traditional -traditional-cpp"
    " -dD -dM -dN -dI -dU -v -### -Q -time -dumpspecs -dumpversion -dumpfullversion"
    " -dumpmachine --version --help --target-help --coverage --analyze -emit-llvm"
    " -gsplit-dwarf -gmodules -march=native -mtune=native -mcpu=native -fsyntax-only"
    " -fdiagnostics-format=json-file -fdiagnostics-format=sarif-file",
)

# Joined spellings: first two characters -> ((prefix, kind, reason), ...), longest first.
_PREFIX: dict[str, tuple[tuple[str, int, str | None], ...]] = {}
# Unknown options starting with these two characters keep the job local.
_UNKNOWN_LOCAL = frozenset(("--", "-i", "-M", "-X", "-d"))


def _prefixes(kind: int, prefixes: str) -> None:
    for p in prefixes.split():
        group = [*_PREFIX.get(p[:2], ()), (p, kind, None)]
        group.sort(key=lambda e: -len(e[0]))
        _PREFIX[p[:2]] = tuple(group)


_prefixes(_OUT, "-o")
_prefixes(_LANG, "-x")
_prefixes(_DEPFILE, "-MF")
_prefixes(_TARGET, "-MT -MQ")
_prefixes(_WP, "-Wp,")
_prefixes(_DEBUG, "-g")
_prefixes(_OPTINFO, "-fopt-info")
_prefixes(
    _CPP,
    "-D -U -I -include -imacros -isystem -iquote -idirafter -iprefix -iwithprefix"
    " -iwithprefixbefore -imultilib -imultiarch -iframework",
)
_prefixes(_BOTH, "--param= --target=")
_prefixes(_REMOTE, "-L -l -T -u -z -e -Wl, -static- -shared- -fuse-ld= -ftime-report -fmem-report")
_prefixes(
    _LOCAL,
    "-B -A -MJ -isysroot -iplugindir -specs -save-temps --save-temps --sysroot -print- --help"
    " -Wa, -fplugin -fdump- -fprofile -fauto-profile -fbranch-probabilities -ftest-coverage"
    " -fcoverage -fcs-profile -fstack-usage -fcallgraph-info -fmodules -fmodule- -fcxx-modules"
    " -fimplicit-module -fprebuilt-module -fsanitize-blacklist -fsanitize-ignorelist"
    " -fsanitize-coverage-allowlist -fsanitize-coverage-ignorelist"
    " -fsanitize-coverage-whitelist -fsanitize-coverage-blacklist -ftime-trace"
    " -fsave-optimization-record -fcompare-debug -fdebug-macro -fdirectives-only"
    " -fpch-preprocess -fpreprocessed -time=",
)

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
_DEBUG3 = frozenset(("-g3", "-ggdb3", "-gdwarf3", "-gstabs3", "-gstabs+3", "-gxcoff3", "-gvms3"))


def _debug_after(a: str, debug: bool) -> bool:
    """Whether debug info is on after the -g option a, given whether it was before."""
    if a.startswith(("-gno-", "-gcolumn-info")) or a in _DEBUG_NEUTRAL:
        return debug
    return a not in ("-g0", "-ggdb0", "-gdwarf0")


def debug_info_on(remote_args: list[str]) -> bool:
    """Whether a job's compile arguments (RemoteJob.remote_args) produce debug info."""
    debug = False
    for a in remote_args:
        if a.startswith("-g"):
            debug = _debug_after(a, debug)
    return debug


def _classify(a: str) -> tuple[int, bool, str | None, int]:
    """(kind, separate argument follows, Local reason, length of the prefix for joined)."""
    entry = _EXACT.get(a)
    if entry is not None:
        return (*entry, len(a))
    head = a[:2]
    for prefix, kind, reason in _PREFIX.get(head, ()):
        if a.startswith(prefix):
            return kind, False, reason, len(prefix)
    if head in _UNKNOWN_LOCAL:
        return _LOCAL, False, f"unknown option {a}", 0
    return _BOTH, False, None, 0


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


def _wp_deps(a: str) -> tuple[bool, str | None, bool] | None:
    """Parse -Wp,...: (has -MD/-MMD, its dep file, has -MT/-MQ), or None if not allowed."""
    words = a[4:].split(",")
    dep = False
    dep_file = None
    target = False
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if w in ("-MD", "-MMD", "-MF", "-MT", "-MQ"):
            if i >= len(words):
                return None
            if w in ("-MT", "-MQ"):
                target = True
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
    return dep, dep_file, target


def analyse(
    args: list[str], cwd: str, compiler: str | None = None, debug_info_may_differ: bool = False
) -> "RemoteJob | Local":
    """Decide whether ``COMPILER args`` (``args`` without the compiler) may run remotely.

    ``cwd`` is where the compile runs (for @files).  ``compiler``, if given, is the compiler
    as invoked: a name with "++" (g++, clang++) makes .c and .i inputs C++, as those drivers
    do; a name with "clang" selects clang's handling of -Wp,-MD.

    Debug info: compiling the preprocessed output elsewhere moves tokens: those after a macro
    or a comment on their line to other columns, and the arguments of a macro call that spans
    lines onto the call's line. Debug info records both, so a -g object would differ from a
    local one (-gno-column-info is not enough). Such jobs stay local unless the caller accepts
    the difference (``debug_info_may_differ``).
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
    wp_dep = False
    wp_dep_file = None
    debug = False  # a -g option that turns debug info on is in force
    dwarf5 = True  # the DWARF version in force is 5 (both compilers' default here)
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
        kind, separate, reason, plen = _classify(a)
        if separate:
            if i >= n:
                return Local(f"missing argument to {a}")
            value = args[i]
            i += 1
            words: tuple[str, ...] = (a, value)
        else:
            value = a[plen:]
            words = (a,)
        if kind == _BOTH:
            cpp += words
            remote += words
        elif kind == _CPP:
            cpp += words
        elif kind == _REMOTE:
            remote += words
        elif kind == _LOCAL:
            return Local(reason or a)
        elif kind == _OUT:
            outputs += 1
            output = value
        elif kind == _LANG:
            if value != "none" and value not in _LANGUAGES:
                return Local(f"-x {value}")
            if inputs:
                return Local("-x after the input file")
            x_lang = None if value == "none" else value
        elif kind == _COMPILE:
            mode = mode or 1
        elif kind == _ASSEMBLE:
            mode = 2
        elif kind == _DEP:
            dep = True
            cpp.append(a)
        elif kind == _DEPFILE:
            if value == "-":
                return Local("dependencies to stdout")
            dep_file = value
            cpp += words
        elif kind == _TARGET:
            target = True
            cpp += words
        elif kind == _WP:
            parsed = _wp_deps(a)
            if parsed is None or parsed[1] == "-":
                return Local(a)
            if parsed[0]:
                wp_dep = True
                wp_dep_file = parsed[1]
            target = target or parsed[2]
            cpp.append(a)
        elif kind == _DEBUG:
            if a in _DEBUG3:
                return Local(f"{a} (macro debug info)")
            if a.startswith("-gdwarf-"):
                dwarf5 = a == "-gdwarf-5"
            debug = _debug_after(a, debug)
            cpp.append(a)
            remote.append(a)
        else:  # _OPTINFO
            if "=" in a:
                return Local(a)
            cpp.append(a)
            remote.append(a)

    if not mode:
        return Local("linking" if inputs else "no input file")
    if debug and not debug_info_may_differ:
        return Local("-g: debug info lines and columns would differ from a local compile's")
    if debug and dwarf5 and compiler is not None and "clang" in compiler.rsplit("/", 1)[-1]:
        # clang's DWARF 5 line table holds MD5 sums of the original source files.
        return Local("clang -g with DWARF 5: source checksums would differ (use -gdwarf-4)")
    if source is None:
        return Local("no input file")
    if inputs > 1:
        return Local("more than one input file")
    if outputs > 1:
        return Local("more than one -o")
    if output == "-":
        return Local("output to stdout")

    cxx_driver = False
    clang = False
    if compiler is not None:
        name = compiler[compiler.rfind("/") + 1 :]
        cxx_driver = "++" in name
        clang = "clang" in name
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
    return RemoteJob(source, language, preprocessed, output, assembly, cpp, remote, result_dep_file)
