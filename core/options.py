"""The compiler option table: one row per gcc/clang driver option jailcc knows, read by both
ends of a job.

* ``jailcc.client.args`` (the client, once per compile) classifies a command line with it:
  which options the local preprocessing run gets, which the remote compile gets, and which
  keep the job local.
* ``jailcc.jobs.compiler_policy`` (in the connection's jail) admits a job's arguments only if
  every one of them parses to a row whose decision sends it to the remote compile: an
  allowlist.  So whatever the client sends remote the server accepts, and whatever the server
  refuses the client keeps local (tests/test_options.py checks both over the whole table).

Words are parsed the way the gcc and clang drivers parse them (``option_at``):

* ``-Ifoo`` (joined), ``-I foo`` (separate), ``-fplugin=x`` (joined: the prefix ``-fplugin``);
  the longest known prefix wins, an exact spelling beats any prefix;
* ``--long=value`` and ``--long value``; a ``--long`` word with no ``=`` may be a unique
  abbreviation of one of gcc's long options, resolved with gcc's own rule (opts-common.cc
  find_opt: the abbreviation must match one option, or an option and the same name plus ``=``;
  an abbreviation never takes a joined value; ``--param`` is never abbreviable since every
  ``--param=NAME=`` is an option of its own).  clang does not abbreviate, it refuses them;
* gcc's driver turns any other ``--X`` into ``-fX`` (opts-common.cc option_map, so
  ``--plugin=p.so`` loads a plugin): unknown ``--`` words are refused, never guessed at;
* a ``-fno-X`` that only the generic ``-f`` row matches is also looked up as ``-fX``, so
  negated forms of the dangerous families stay out too;
* a separate value starting with ``@`` is a response file gcc would read: local.

Anything the table does not know is "local" (the client compiles it locally, the server
refuses it).  Generous families are admitted where the remote compile of a preprocessed file
cannot read or write anything but its input and output: ``-W*``, ``-f*``, ``-m*``, ``-O*``,
``-g*`` (each minus its dangerous members, listed below them), ``-std=``.

A row (``Option``) says, for one spelling:

  spelling   "-I", "-fplugin", "--include=" ...
  form       FLAG (alone), JOINED (a prefix: the value is glued on, or empty), SEPARATE (the
             next word is the value), JOINED_OR_SEPARATE (``-Ifoo`` or ``-I foo``)
  path       None, "read" or "write": what the value names (for shipping sources, issue 11)
  pp         the decision when jailcc ships preprocessed output: "both" (the preprocessing run
             and the remote compile), "cpp" (preprocessing only), "remote" (remote compile
             only), "local" (the job runs locally), "server" (the server supplies it: -c -S -o
             -x and the input)
  src        the decision when jailcc ships sources and runs the user's own command in the jail
             (issue 11): "run" (as given; a path value must be shipped, or for "write"
             fetched back), "local", "server"
  handler    what client/args.py does besides (-o, -x, -c, -S, -MD, -MF, -MT, -Wp, -g)
  check      a check of the value that can turn the decision to "local" (charsets, files)
  alias      the canonical spelling of a long option (``--include-directory`` -> ``-I``)
  why        a few words: the reason given when the option keeps a job local

Cheap to import (the client runs once per compile): no typing, re, dataclasses or enum.
"""

from __future__ import annotations

FLAG = 0
JOINED = 1
SEPARATE = 2
JOINED_OR_SEPARATE = 3

BOTH = "both"
CPP = "cpp"
REMOTE = "remote"
LOCAL = "local"
SERVER = "server"

# The decisions in the preprocessed mode that send an option to the remote compile: the
# server's allowlist.
SENT_REMOTE = frozenset((BOTH, REMOTE))

# The time zone a job carries (TZ, for __DATE__ and __TIME__): the client's as a fixed offset,
# NAME[+-]H[:MM[:SS]], which the jail reads no file for (a regular expression, fullmatch).
FIXED_TZ = r"[A-Za-z]{3,10}[+-]?\d{1,2}(:\d{2}){0,2}"


class Option:
    """One row of the table (see the module docstring)."""

    __slots__ = ("alias", "check", "form", "handler", "path", "pp", "spelling", "src", "why")

    def __init__(
        self,
        spelling: str,
        form: int,
        pp: str,
        src: str,
        path: str | None = None,
        handler: str | None = None,
        check: str | None = None,
        alias: str | None = None,
        why: str | None = None,
    ) -> None:
        self.spelling, self.form, self.pp, self.src = spelling, form, pp, src
        self.path, self.handler, self.check, self.alias, self.why = path, handler, check, alias, why

    def __repr__(self) -> str:
        return f"Option({self.spelling!r}, {self.pp})"


class Word:
    """One parsed option: the words it took from the command line (the option and, for a
    separate value, the next word), the row it matched (None: unknown), its value, its
    canonical spelling (long options and abbreviations written as the short option they stand
    for: ``--debug=3`` -> ``-g3``) and the preprocessed-mode decision after the row's check."""

    __slots__ = ("canonical", "decision", "option", "value", "words")

    def __init__(
        self,
        words: tuple[str, ...],
        option: Option | None,
        value: str,
        canonical: str,
        decision: str,
    ) -> None:
        self.words, self.option, self.value = words, option, value
        self.canonical, self.decision = canonical, decision

    @property
    def reason(self) -> str:
        """Why this word keeps a job local (for messages)."""
        if self.option is None:
            return f"unknown option {self.words[0]}"
        why = self.option.why
        return f"{self.words[0]} ({why})" if why else self.words[0]


# ---------------------------------------------------------------------------------------------
# The table.  Rows are added by family; ``_row`` takes several spellings at once.

_EXACT: dict[str, Option] = {}  # FLAG, SEPARATE and JOINED_OR_SEPARATE spellings
_PREFIX: dict[str, tuple[Option, ...]] = {}  # first two characters -> JOINED rows, longest first
_ALL: list[Option] = []


def _row(
    form: int,
    pp: str,
    spellings: str,
    src: str = "run",
    path: str | None = None,
    handler: str | None = None,
    check: str | None = None,
    alias: str | None = None,
    why: str | None = None,
) -> None:
    for s in spellings.split():
        option = Option(s, form, pp, src, path, handler, check, alias, why)
        _ALL.append(option)
        if form != JOINED:
            _EXACT[s] = option
        if form in (JOINED, JOINED_OR_SEPARATE):
            _PREFIX[s[:2]] = (option, *_PREFIX.get(s[:2], ()))


def _sort_prefixes() -> None:
    """Longest prefix first, so that the first match is the longest."""
    for head, group in _PREFIX.items():
        _PREFIX[head] = tuple(sorted(group, key=lambda o: -len(o.spelling)))


# -- what the server supplies -----------------------------------------------------------------
_row(FLAG, SERVER, "-c", handler="compile")
_row(FLAG, SERVER, "-S", handler="assemble")
_row(JOINED_OR_SEPARATE, SERVER, "-o", path="write", handler="out")
_row(JOINED_OR_SEPARATE, SERVER, "-x", handler="lang")

# -- the preprocessor's: the client's run only --------------------------------------------------
_row(JOINED_OR_SEPARATE, CPP, "-D -U")
_row(
    JOINED_OR_SEPARATE,
    CPP,
    "-I -include -imacros -isystem -iquote -idirafter -iprefix -iwithprefix -iwithprefixbefore"
    " -iframework -cxx-isystem -iwithsysroot",
    path="read",
)
_row(JOINED_OR_SEPARATE, CPP, "-imultilib -imultiarch")
_row(FLAG, CPP, "-nostdinc -nostdinc++ -nobuiltininc -nostdlibinc -no-integrated-cpp -I-")
_row(JOINED, CPP, "-stdlib=", why="header search; clang warns 'unused' compiling a .ii")
_row(FLAG, CPP, "-MD -MMD", handler="dep")
_row(FLAG, CPP, "-MP")
_row(JOINED_OR_SEPARATE, CPP, "-MF", path="write", handler="depfile")
_row(JOINED_OR_SEPARATE, CPP, "-MT -MQ", handler="target")
_row(JOINED, CPP, "-Wp,", handler="wp")

# -- compile options the preprocessor sees too (__OPTIMIZE__, __PIC__, ...) ----------------------
_row(JOINED, BOTH, "-W -f -m -O -std=")
_row(JOINED, BOTH, "-g", handler="debug", check="debug", why="macro debug info")
_row(
    FLAG,
    BOTH,
    "-w -ansi -pedantic -pedantic-errors -trigraphs -pipe -pthread -p -pg -dA -dp -dP"
    " -Qunused-arguments -Qn -Qy -no-canonical-prefixes -pass-exit-codes -integrated-as",
)
_row(SEPARATE, BOTH, "--param -target -arch")
# LLVM's own options, unchecked: some read profiles or write files (-info-output-file=).
_row(SEPARATE, LOCAL, "-mllvm", src="local", why="passes options unchecked")
# Spellings that gcc-12 or clang-16 give a separate value but that a family row above (-f, -m,
# -g, ...) would take for a flag: the value would go unchecked (an option smuggled past the
# allowlist, or the server's -c swallowed). tests/test_options.py finds them with `-###`.
_row(
    SEPARATE,
    LOCAL,
    "-fintrinsic-modules-path -gnatO -fdebug-compilation-dir -filelist -fnew-alignment"
    " -ftrapv-handler -gen-cdb-fragment-path -meabi -mmlir -module-dependency-dir"
    " -mthread-model -undefined",
    src="local",
    why="takes the next word as its value",
)
_row(JOINED, BOTH, "--param= --target=")
_row(JOINED, BOTH, "-fopt-info", check="nofile", why="writes a file")
_row(
    JOINED,
    BOTH,
    "-finput-charset= -fexec-charset= -fwide-exec-charset=",
    check="charset",
    why="a conversion the servers' images hold no iconv modules for",
)
_row(JOINED, BOTH, "-fbasic-block-sections=", check="bbsections", why="reads a list file")

# -- link-only: no effect with -c; the remote compile gets them (clang warns "unused" once) -----
_row(JOINED_OR_SEPARATE, REMOTE, "-l -L -T -u -z -e")
_row(SEPARATE, REMOTE, "-Tbss -Tdata -Ttext -Xlinker")
_row(JOINED, REMOTE, "-Wl, -static- -shared- -fuse-ld= -rtlib= -unwindlib=")
_row(
    FLAG,
    REMOTE,
    "-shared -static -pie -no-pie -rdynamic -s -r -nostdlib -nostdlib++ -nostartfiles"
    " -nodefaultlibs -nolibc -symbolic",
)
# Reports of the compile itself: cc1 -E would print one of its own.
_row(JOINED, REMOTE, "-ftime-report -fmem-report")

# -- local: no object, or print instead -----------------------------------------------------
_row(FLAG, LOCAL, "-E", src="local", why="preprocess only")
_row(FLAG, LOCAL, "-M -MM", src="local", why="dependencies only")
_row(
    FLAG,
    LOCAL,
    "-v -### -Q -time -fsyntax-only --analyze -emit-llvm --version --target-help",
    src="local",
    why="no object, or prints",
)
_row(JOINED, LOCAL, "-print- --print- --help -time=", src="local", why="prints")
# the -d family: dumps, and -dumpbase/-dumpdir, which name auxiliary outputs and would swallow
# the -c the server appends (the job would become a link)
_row(JOINED, LOCAL, "-d", why="dumps, or -dumpspecs/-dumpmachine/... prints")
_row(SEPARATE, LOCAL, "-dumpbase -dumpbase-ext -dumpdir", why="names auxiliary outputs")

# -- local: the preprocessor's, but cc1 records them in DW_AT_producer or they change the .i ----
_row(
    FLAG,
    LOCAL,
    "-MG -Mmodules -Mno-modules -H -C -CC -P -undef -remap -traditional -traditional-cpp",
    why="changes the preprocessed output",
)
_row(JOINED_OR_SEPARATE, LOCAL, "-A", why="changes the preprocessed output")
_row(JOINED_OR_SEPARATE, LOCAL, "-MJ", path="write", why="a compilation database")
_row(
    JOINED,
    LOCAL,
    "-fdirectives-only -fpreprocessed -fpch-preprocess",
    why="changes what the .i means",
)

# -- local: load code or read host files (the server refuses these outright) --------------------
_row(JOINED_OR_SEPARATE, LOCAL, "-B", src="local", path="read", why="another program directory")
_row(
    SEPARATE,
    LOCAL,
    "-wrapper -resource-dir --sysroot",
    src="local",
    path="read",
    why="host programs or files",
)
_row(
    JOINED_OR_SEPARATE,
    LOCAL,
    "-specs -isysroot -gcc-toolchain",
    src="local",
    path="read",
    why="host programs or files",
)
_row(
    JOINED,
    LOCAL,
    "--sysroot= -iplugindir -fplugin -fpass-plugin --gcc-toolchain= --config",
    src="local",
    path="read",
    why="host programs or files",
)
_row(
    SEPARATE,
    LOCAL,
    "-Xclang -Xanalyzer -Xassembler -Xpreprocessor",
    src="local",
    why="passes options unchecked",
)
_row(JOINED, REMOTE, "-Wa,", check="assembler", why="passes the assembler other options")
_row(JOINED, BOTH, "-march= -mtune= -mcpu=", check="native", why="probes this CPU")
_row(
    JOINED,
    LOCAL,
    "-fsanitize-blacklist -fsanitize-ignorelist -fsanitize-system-ignorelist"
    " -fsanitize-coverage-allowlist -fsanitize-coverage-ignorelist"
    " -fsanitize-coverage-whitelist -fsanitize-coverage-blacklist -fxray-always-instrument="
    " -fxray-never-instrument= -fxray-attr-list= -fprofile -fauto-profile"
    " -fbranch-probabilities -fcs-profile -fthinlto-index= -fresolution= -fself-test"
    " -fembed-offload-object -fapinotes -fbuild-session-file",
    path="read",
    why="reads files",
)
_row(
    JOINED,
    LOCAL,
    "-fdump- -save-temps --save-temps -fstack-usage -fcallgraph-info -ftest-coverage"
    " -fcoverage --coverage -ftime-trace -fsave-optimization-record -foptimization-record-"
    " -fproc-stat-report -fcrash-diagnostics -fmemory-profile -fcompare-debug -fltrans"
    " -flto-incremental -fthin-link-bitcode -fdiagnostics-format=json-file"
    " -fdiagnostics-format=sarif-file -fvtv-debug -fvtv-counts",
    path="write",
    why="writes files beside the output",
)
_row(JOINED_OR_SEPARATE, LOCAL, "-aux-info", path="write", why="writes files beside the output")
_row(JOINED, LOCAL, "-gsplit-dwarf -gmodules", path="write", why="writes files beside the output")
_row(
    JOINED,
    LOCAL,
    "-fmodules -fmodule- -fcxx-modules -fimplicit-module -fprebuilt- -fdebug-macro",
    why="module caches, mappers; macro debug info",
)
_row(
    SEPARATE,
    LOCAL,
    "-include-pch -ivfsoverlay",
    path="read",
    why="precompiled headers or overlays",
)
# clang runs an external assembler, which clang images do not hold
_row(FLAG, LOCAL, "-no-integrated-as -fno-integrated-as", why="runs an external assembler")


# -- gcc's long options: the option each stands for, and how it takes a value -----------------
# "" none, "s" the next word, "=" only joined after "=", "s=" either, "f=" none or joined after
# "=" (--debug, --debug=3).  Every long option of gcc-12's driver (`strings gcc-12`, checked
# with gcc-12 -###) is here, so that abbreviations resolve as gcc resolves them; None: an
# option jailcc has no use for.
_LONG = {
    "--all-warnings": ("-Wall", ""),
    "--ansi": ("-ansi", ""),
    "--assemble": ("-S", ""),
    "--assert": ("-A", "s="),
    "--comments": ("-C", ""),
    "--comments-in-macros": ("-CC", ""),
    "--compile": ("-c", ""),
    "--completion": (None, "="),
    "--coverage": ("--coverage", ""),
    "--debug": ("-g", "f="),
    "--define-macro": ("-D", "s="),
    "--dependencies": ("-M", ""),
    "--dump": ("-d", "s="),
    "--dumpbase": ("-dumpbase", "s"),
    "--dumpbase-ext": ("-dumpbase-ext", "s"),
    "--dumpdir": ("-dumpdir", "s"),
    "--entry": ("-e", "s="),
    "--extra-warnings": ("-Wextra", ""),
    "--for-assembler": ("-Wa,", "s="),
    "--for-linker": ("-Xlinker", "s="),
    "--force-link": ("-u", "s="),
    "--help": ("--help", "f="),
    "--imacros": ("-imacros", "s="),
    "--include": ("-include", "s="),
    "--include-barrier": ("-I-", ""),
    "--include-directory": ("-I", "s="),
    "--include-directory-after": ("-idirafter", "s="),
    "--include-prefix": ("-iprefix", "s="),
    "--include-with-prefix": ("-iwithprefix", "s="),
    "--include-with-prefix-after": ("-iwithprefix", "s="),
    "--include-with-prefix-before": ("-iwithprefixbefore", "s="),
    "--jobserver-auth": (None, "="),
    "--language": ("-x", "s="),
    "--library-directory": ("-L", "s="),
    "--no-canonical-prefixes": ("-no-canonical-prefixes", ""),
    "--no-integrated-cpp": ("-no-integrated-cpp", ""),
    "--no-line-commands": ("-P", ""),
    "--no-standard-includes": ("-nostdinc", ""),
    "--no-standard-libraries": ("-nostdlib", ""),
    "--no-sysroot-suffix": (None, ""),
    "--no-warnings": ("-w", ""),
    "--optimize": ("-O", "f="),
    "--output": ("-o", "s="),
    "--output-pch": (None, "="),
    "--param": ("--param", "s="),
    "--pass-exit-codes": ("-pass-exit-codes", ""),
    "--pedantic": ("-pedantic", ""),
    "--pedantic-errors": ("-pedantic-errors", ""),
    "--pie": ("-pie", ""),
    "--pipe": ("-pipe", ""),
    "--prefix": ("-B", "s="),
    "--preprocess": ("-E", ""),
    "--print-file-name": ("-print-", "s="),
    "--print-libgcc-file-name": ("-print-", ""),
    "--print-missing-file-dependencies": ("-MG", ""),
    "--print-multi-directory": ("-print-", ""),
    "--print-multi-lib": ("-print-", ""),
    "--print-multi-os-directory": ("-print-", ""),
    "--print-multiarch": ("-print-", ""),
    "--print-prog-name": ("-print-", "s="),
    "--print-search-dirs": ("-print-", ""),
    "--print-sysroot": ("-print-", ""),
    "--print-sysroot-headers-suffix": ("-print-", ""),
    "--profile": ("-p", ""),
    "--save-temps": ("-save-temps", ""),
    "--shared": ("-shared", ""),
    "--specs": ("-specs", "s="),
    "--static": ("-static", ""),
    "--static-pie": ("-static-", ""),
    "--std": ("-std=", "s="),
    "--symbolic": ("-symbolic", ""),
    "--sysroot": ("--sysroot", "s="),
    "--target-help": ("--target-help", ""),
    "--time": ("-time", ""),
    "--trace-includes": ("-H", ""),
    "--traditional": ("-traditional", ""),
    "--traditional-cpp": ("-traditional-cpp", ""),
    "--trigraphs": ("-trigraphs", ""),
    "--undefine-macro": ("-U", "s="),
    "--user-dependencies": ("-MM", ""),
    "--verbose": ("-v", ""),
    "--version": ("--version", ""),
    "--write-dependencies": ("-MD", ""),
    "--write-user-dependencies": ("-MMD", ""),
}
# gcc's own names, for abbreviations: every long option, and NAME= for those joined after "=".
_GCC_LONG = sorted([*_LONG, *(n + "=" for n, (_, how) in _LONG.items() if "=" in how)])


def _longest_prefix(a: str) -> Option | None:
    for option in _PREFIX.get(a[:2], ()):
        if a.startswith(option.spelling):
            return option
    return None


def _target(canonical: str | None) -> Option | None:
    if canonical is None:
        return None
    return _EXACT.get(canonical) or _longest_prefix(canonical)


def _long_rows() -> None:
    known = {o.spelling for o in _ALL}  # --param, --sysroot, --help, --version... have rows
    for name, (canonical, how) in _LONG.items():
        target = _target(canonical)
        if target is None:
            pp, src, path, handler, check, why = LOCAL, "local", None, None, None, "not supported"
        else:
            pp, src, path = target.pp, target.src, target.path
            handler, check, why = target.handler, target.check, target.why
        alias = None if canonical == name else canonical
        if how != "=" and name not in known:
            form = SEPARATE if "s" in how else FLAG
            _row(form, pp, name, src, path, handler, check, alias, why)
        if "=" in how and name + "=" not in known:
            _row(JOINED, pp, name + "=", src, path, handler, check, alias, why)


_sort_prefixes()
_long_rows()
_sort_prefixes()
ROWS: tuple[Option, ...] = tuple(_ALL)

# -g options that mean debug level 3 (macro definitions: a separate preprocessor loses them).
_DEBUG3 = frozenset(("-g3", "-ggdb3", "-gdwarf3", "-gstabs3", "-gstabs+3", "-gxcoff3", "-gvms3"))
# cc1 converts with iconv to and from any other charset (-finput-charset=latin1); a server's
# image holds no gconv modules, so its cc1 fails where the local one converts.
_CHARSETS_WITHOUT_ICONV = frozenset({"UTF-8", "UTF8"})
# What -Wa, may pass the assembler (comma-separated): options that read and write no file and
# change only the object, as projects use them (CMake's and Debian's --noexecstack; listings
# -a, -o, -I, @file and the rest keep a job local).
_ASSEMBLER_OPTIONS = frozenset(
    (
        "--noexecstack",
        "--execstack",
        "-mrelax-relocations=yes",
        "-mrelax-relocations=no",
        "--gdwarf-2",
        "--gdwarf-3",
        "--gdwarf-4",
        "--gdwarf-5",
        "--compress-debug-sections",
        "--compress-debug-sections=none",
        "--compress-debug-sections=zlib",
        "--compress-debug-sections=zlib-gnu",
        "--compress-debug-sections=zlib-gabi",
        "--nocompress-debug-sections",
        "-mx86-used-note=yes",
        "-mx86-used-note=no",
        "--generate-missing-build-notes=yes",
        "--generate-missing-build-notes=no",
        "--fatal-warnings",
        "--warn",
        "--no-warn",
        "-W",
    )
)


def _checked(option: Option, canonical: str, value: str) -> str:
    """The row's decision after its value check."""
    check = option.check
    if check is None:
        return option.pp
    if check == "debug":
        ok = canonical not in _DEBUG3
    elif check == "nofile":  # -fopt-info-vec=FILE writes FILE
        ok = "=" not in value
    elif check == "charset":  # images hold no gconv modules: only what needs no iconv
        ok = value.upper() in _CHARSETS_WITHOUT_ICONV
    elif check == "native":  # -march=native: this machine's CPU, not the client's
        ok = not value.startswith("native")
    elif check == "assembler":  # -Wa,A,B: each one the assembler takes without files
        ok = all(item in _ASSEMBLER_OPTIONS for item in value.split(","))
    else:  # "bbsections": all, labels, none, or a file listing functions
        ok = value in ("all", "labels", "none")
    return option.pp if ok else LOCAL


def _resolve_long(a: str) -> Option | None:
    """The row of a ``--name`` word without "=": exact, else gcc's unique abbreviation."""
    option = _EXACT.get(a)
    if option is not None:
        return option
    matches = [n for n in _GCC_LONG if n.startswith(a)]
    if len(matches) == 2 and matches[1] == matches[0] + "=":
        matches.pop()
    if len(matches) != 1 or matches[0] == "--param":
        return None  # ambiguous (gcc refuses it), or not gcc's (gcc would try -f<rest>)
    return _EXACT.get(matches[0]) or _longest_prefix(matches[0])


def _lookup(a: str) -> tuple[Option | None, bool]:
    """(row, whether the next word is its value) for the option word a."""
    if a[:2] == "--" and "=" not in a:
        option = _resolve_long(a)
        if option is not None:
            return option, option.form in (SEPARATE, JOINED_OR_SEPARATE)
        return _longest_prefix(a), False  # --help..., --print-...
    option = _EXACT.get(a)
    if option is not None:
        return option, option.form != FLAG
    option = _longest_prefix(a)
    if option is not None and option.spelling == "-f" and a[:5] == "-fno-":
        # -fno-plugin..., -fno-profile-...: judged as the family they negate.
        positive = _longest_prefix("-f" + a[5:])
        if positive is not None and positive.pp == LOCAL:
            return positive, False
    return option, False


def option_at(args: list[str], i: int) -> tuple[Word, int]:
    """Parse the option args[i] (a word starting with "-"): its Word and the index after it.
    ValueError when its separate value is missing, as the driver would fail."""
    a = args[i]
    option, separate = _lookup(a)
    if option is None:
        return Word((a,), None, "", a, LOCAL), i + 1
    if separate:
        if i + 1 >= len(args):
            raise ValueError(f"missing argument to {a}")
        value = args[i + 1]
        words: tuple[str, ...] = (a, value)
    else:
        # (an abbreviation, or a -fno- judged as its positive, has no joined value)
        joined = option.form != FLAG and a.startswith(option.spelling)
        value = a[len(option.spelling) :] if joined else ""
        words = (a,)
    alias = option.alias
    if alias is None:  # an abbreviation of a long option is written in full
        canonical = option.spelling if a[:2] == "--" and not a.startswith(option.spelling) else a
    else:
        target = _target(alias)
        canonical = alias + value if target is not None and target.form == JOINED else alias
    # (an @file value the client could not expand: the server refuses response files)
    decision = LOCAL if value[:1] == "@" and separate else _checked(option, canonical, value)
    return Word(words, option, value, canonical, decision), i + len(words)
