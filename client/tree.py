"""Source-shipping ("tree") jobs: the user's own compile, run once in the jail at the user's
paths, on the files the include analysis found (issue 11; PROTOCOL.md, "Tree jobs").

The per-user proxy builds the job from an ``IncludeAnalyzer`` it keeps for its whole life:
the source and project headers go as a tree of content digests below one root directory (the
server asks for the blobs it lacks, NEED/BLOBS), the compiler's own headers as digests the jail
checks against its image. Soundness does not rest on the analysis. The jail reports every file
the compile read, with the digest of what it read, and the answer is used only if

* each of those files is, on this machine, at that path, the same bytes (an image header that
  differs from ours, or a file the analysis missed and the image happened to hold);
* none of them was found by a lookup that would have stopped earlier here: for a file the jail
  found in a search directory, no earlier directory of the search (nor the directory of a read
  project file that quote-includes that name, where such a lookup looks first) holds a file of
  that name on this machine that the compile did not also read;
* the compile succeeded: a failed one is compiled here, whose diagnostics are exact even when
  a header the jail lacked is the cause.

Anything else raises ``RemoteFailure`` (compile locally) or ``TreeUnsupported`` (ship
preprocessed output instead), and JAILCC_VERBOSE says which and why.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Sequence

from .args import RemoteJob, expand_response_files, same_file
from .compiler import clang_mode, is_clang
from .includes import COMPUTED, Analysis, FileRead, IncludeAnalyzer, Unsupported
from .job import Invocation, Outcome, job_env, terminal_links_left_out, with_color
from .job import finish as write_back
from .outputs import remove_after_failure
from .remote import RemoteFailure, RemoteResult

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

# Where a project cannot live for the jail: the image's own top-level directories.
IMAGE_TOP = frozenset(
    ("usr", "lib", "lib32", "lib64", "libx32", "bin", "sbin", "etc", "proc", "dev")
)
# A server's refusals of a tree job after which the job ships preprocessed output instead:
# an image header that differs from ours, a tree it cannot lay out (in its jail), arguments
# its tree-job allowlist refuses, or a server that does not know tree jobs.
TREE_REFUSALS = frozenset(("tree", "policy", "protocol", "jail"))
MAX_TREE_FILES = 20_000


class TreeUnsupported(Exception):
    """This job cannot be shipped as a tree (the message says why): ship preprocessed output."""


class TreeJob:
    """A tree job ready to send: its JOB header, where each blob's bytes are, and what the
    soundness check needs."""

    def __init__(
        self,
        header: dict[str, Any],
        paths: dict[str, str],
        analysis: Analysis,
        shipped: frozenset[str],
        counters: Counters | None = None,
    ) -> None:
        self.header, self.paths, self.analysis, self.shipped = header, paths, analysis, shipped
        self.counters = counters or Counters()
        # What the placement policy weighs a job by: about the size of its preprocessed output.
        self.size = sum(f.size for f in analysis.files)

    def blobs(self, digests: list[str]) -> list[bytes]:
        """The bytes of the digests the server asked for, read now and checked: a file that
        changed since the analysis makes the job local (RemoteFailure)."""
        out = []
        for digest in digests:
            path = self.paths.get(digest)
            if path is None:
                raise RemoteFailure(f"the server asked for a blob this job does not have: {digest}")
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise RemoteFailure(f"cannot read {path}: {exc.strerror}") from None
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                raise RemoteFailure(f"{path} changed during the compile")
            out.append(data)
        self.counters.add(blobs_sent=len(out), blob_bytes_sent=sum(len(d) for d in out))
        return out


class Counters:
    """What the proxy's tree jobs did, for `jailcc status --json` ("sources") and the
    benchmarks (bytes a second build sends)."""

    NAMES = (
        "analysed",
        "shipped",
        "preprocessed_instead",
        "local_after_check",
        "blobs_sent",
        "blob_bytes_sent",
        "bytes_sent",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)
        self.analysis_seconds = 0.0

    def add(self, analysis_seconds: float = 0.0, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._values[name] += n
            self.analysis_seconds += analysis_seconds

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            jobs = self._values["analysed"]
            mean = self.analysis_seconds / jobs if jobs else None
            return {
                **self._values,
                "mean_analysis_ms": None if mean is None else round(1000 * mean, 2),
            }


class TreeBuilder:
    """Builds tree jobs and checks their answers; one per proxy."""

    def __init__(self, analyzer: IncludeAnalyzer | None = None) -> None:
        self.analyzer = analyzer or IncludeAnalyzer()
        self.counters = Counters()

    def prepare(
        self,
        compiler: str,
        args: list[str],
        job: RemoteJob,
        inv: Invocation,
        identity: str,
        refused: Callable[[str | None], str | None] | None = None,
    ) -> TreeJob:
        """The tree job for ``compiler args`` (the user's words, compiler first excluded), or
        TreeUnsupported. ``refused``: why no server would take it, given clang's driver (or
        None for gcc), asked before the analysis so that such a job costs none."""
        if job.preprocessed:
            raise TreeUnsupported("the input is already preprocessed")
        cwd = working_directory(inv)
        driver = clang_driver(compiler, cwd)
        why = refused(driver) if refused is not None else None
        if why is not None:
            raise TreeUnsupported(f"every server's image refuses its tree jobs: {why}")
        try:
            words = expand_response_files(args, cwd)
        except ValueError as exc:
            raise TreeUnsupported(str(exc)) from None
        started = time.thread_time()
        analysis = self.analyzer.files_read([compiler, *words], cwd, inv.env)
        self.counters.add(analysis_seconds=time.thread_time() - started, analysed=1)
        if not analysis.ok:
            raise TreeUnsupported(f"include analysis: {analysis.unsupported}")
        if not analysis.files:
            raise TreeUnsupported("include analysis found no source")
        if len(analysis.files) > MAX_TREE_FILES:
            raise TreeUnsupported(f"{len(analysis.files)} files: more than a tree job takes")
        copies = _copies_included_once(analysis.files, self.analyzer)
        if copies is not None:
            raise TreeUnsupported(
                f"{copies[0]} and {copies[1]} say #pragma once and hold one content: the"
                " compiler tells them apart by inode or mtime, which the jail's copies do not"
                " keep"
            )
        system = tuple(d.rstrip("/") + "/" for d in analysis.system)
        tree: list[tuple[str, str, int]] = []
        image: list[list[str]] = []
        paths: dict[str, str] = {}
        placed: dict[str, str] = {}
        for f in analysis.files:
            digest = "sha256:" + f.digest
            if f.path.startswith(system):
                image.append([f.path, digest])
                continue
            if self.analyzer.uses_timestamp(f.path):
                raise TreeUnsupported(
                    f"{f.path} compares mtimes (__TIMESTAMP__ or #pragma GCC dependency),"
                    " which the jail's copies do not keep"
                )
            # Laid out where ".." names it lexically: the jail has no symlinks to make the
            # kernel's answer differ; where this machine's does, the soundness check sees it.
            where = os.path.normpath(f.path)
            if where in placed:
                if placed[where] != digest:
                    raise TreeUnsupported(f"{where} is reached by paths with different contents")
                continue
            placed[where] = digest
            tree.append((where, digest, f.size))
            paths[digest] = f.path
        for name in (job.output, job.dep_file):
            if name is not None and _lexical_parent_differs(cwd, name):
                raise TreeUnsupported(
                    f"{name} names its directory through a symlink and '..', which the jail's"
                    " directories, laid out as the names read, do not follow"
                )
        outputs = [_absolute(cwd, job.output)]
        if job.dep_file is not None:
            outputs.append(_absolute(cwd, job.dep_file))
        root = _common_root([cwd, *(p for p, _, _ in tree), *outputs])
        empty = _search_dirs_to_make(analysis.search, system, root, words)
        words = with_color(words, inv, clang=driver is not None)
        header = {
            "id": 1,
            "identity": identity,
            "kind": "tree",
            "args": words,
            "cwd": cwd,
            "root": root,
            "tree": [[os.path.relpath(p, root), d, size] for p, d, size in tree],
            "image": image,
            "outputs": outputs,
            "env": job_env(inv),
            "source": os.path.basename(job.source),
        }
        if driver is not None:
            header["driver"] = driver
        if empty:
            header["dirs"] = empty
        return TreeJob(header, paths, analysis, frozenset(p for p, _, _ in tree), self.counters)

    def finish(
        self,
        compiler: str,
        tree_job: TreeJob,
        job: RemoteJob,
        inv: Invocation,
        host: object,
        result: RemoteResult,
    ) -> Outcome:
        """Check the answer and write back what a local compile would have written;
        RemoteFailure (compile locally) whenever it cannot be trusted to be that."""
        inv.check_client()
        try:
            if result.limit:
                raise RemoteFailure(
                    f"{host}: the job hit the server's {result.limit} limit",
                    code=f"limit:{result.limit}",
                )
            if result.exit_code != 0 and (result.misses is None or not result.reads):
                # Without the read log's names looked for in vain, the jail may have lacked a
                # header this machine has: the local compile's diagnostics are the exact ones.
                raise RemoteFailure(f"{host}: the compile failed remotely; compiling locally")
            cwd = tree_job.header["cwd"]  # where the jail compiled: the user's name for it
            try:
                check_reads(tree_job, cwd, result.reads, self.analyzer)
                check_misses(cwd, result.misses or (), self.analyzer)
            except Unsupported as exc:  # a file here the compiler would fail on: its words
                raise RemoteFailure(f"cannot check what the jail read: {exc}") from None
        except RemoteFailure:
            self.counters.add(local_after_check=1)
            raise
        self.counters.add(shipped=1, bytes_sent=result.sent)
        got = dict(zip(result.output_names, result.outputs, strict=True))
        obj_path, dep_path = (tree_job.header["outputs"] + [None])[:2]
        if result.exit_code != 0:
            if obj_path in got:  # neither compiler leaves one: something else failed
                raise RemoteFailure(f"{host}: the compile failed but sent its output")
            return self._failed(compiler, job, inv, host, result, got.get(dep_path))
        if obj_path not in got:
            raise RemoteFailure(f"{host}: the compile succeeded but sent no output")
        if dep_path is not None:
            if dep_path not in got or job.dep_file is None:
                raise RemoteFailure(f"{host}: the compile sent no dependency file")
            if not plain_rules(got[dep_path], job.dep_targets):
                raise RemoteFailure(f"{host}: the dependency file holds more than rules")
            # Where the user's compiler writes it: from the real working directory, as the
            # kernel resolves ".." (the jail's name for it is $PWD's, taken lexically).
            _write_dependencies(inv.path(job.dep_file), got[dep_path], inv.umask)
        plain = RemoteResult(
            result.exit_code,
            result.signal,
            result.limit,
            result.stdout,
            result.stderr,
            got[obj_path],
            result.times,
            result.load,
        )
        return _sources_note(write_back(compiler, job, inv, host, plain, headers_shipped=True))

    def _failed(
        self,
        compiler: str,
        job: RemoteJob,
        inv: Invocation,
        host: object,
        result: RemoteResult,
        dependencies: bytes | None,
    ) -> Outcome:
        """A failed compile whose reads and misses were checked: its diagnostics and status are
        the local compile's, and so is what it leaves behind (measured with gcc-12 and
        clang-16): a dependency file where the compiler wrote one (gcc and clang do after an
        error, not after a missing header), else gcc leaves the old one and clang deletes it;
        the object as write_back says. The jail made the outputs' directories: where one is
        missing here, the local compile fails otherwise."""
        for name in (job.output, job.dep_file):
            if name is not None and not os.path.isdir(os.path.dirname(inv.path(name)) or "."):
                raise RemoteFailure(f"{name}: its directory is missing here")
        if any(words in result.stderr for words in _OUTPUT_TROUBLE):
            raise RemoteFailure("the compile could not write an output: the local one says why")
        if dependencies is not None and job.dep_file is None:
            raise RemoteFailure(f"{host}: the compile sent a dependency file not asked for")
        if (
            dependencies is None
            and job.dep_file is not None
            and not is_clang(compiler)
            and b"compilation terminated." not in result.stderr
        ):
            # gcc writes its dependency file after any error but a fatal one: another name
            # than the one expected (a second -MD by -Wp,), which only the local compile tells.
            raise RemoteFailure(f"{host}: the failed compile sent no dependency file")
        if terminal_links_left_out(job.remote_args, inv, is_clang(compiler), result.stderr):
            raise RemoteFailure("the terminal would show links the remote compile left out")
        if dependencies is not None and not plain_rules(dependencies, job.dep_targets):
            raise RemoteFailure(f"{host}: the dependency file holds more than rules")
        plain = result._replace(output=None)
        outcome = _sources_note(write_back(compiler, job, inv, host, plain, headers_shipped=True))
        if job.dep_file is not None:
            if dependencies is not None:
                _write_dependencies(inv.path(job.dep_file), dependencies, inv.umask)
            elif is_clang(compiler):
                remove_after_failure(inv.path(job.dep_file))
        return outcome


# cc1 or the driver could not open an output (a name the jail laid out otherwise, a directory
# where the output goes): the local compile's own failure is another.
_OUTPUT_TROUBLE = (
    b"fatal error: opening dependency file",
    b"' for writing: ",
    b"fatal error: opening output file",
)


def _sources_note(outcome: Outcome) -> Outcome:
    return outcome._replace(note=outcome.note.replace("remote on", "remote (sources) on", 1))


def _copies_included_once(
    files: tuple[FileRead, ...], analyzer: IncludeAnalyzer
) -> tuple[str, str] | None:
    """Two names of one content that say #pragma once, if the compile may read both: copies
    in two places (gcc reads the second unless their mtimes agree too), or one file under two
    names (a symlink: clang reads it once by its inode, and the jail lays out two files)."""
    first: dict[str, FileRead] = {}
    for f in files:
        seen = first.setdefault(f.digest, f)
        # (Names the jail lays out at one place, as ".." names it lexically, are one file.)
        if os.path.normpath(seen.path) != os.path.normpath(f.path) and analyzer.included_once(
            f.path
        ):
            return seen.path, f.path
    return None


def working_directory(inv: Invocation) -> str:
    """The working directory as the compiler names it (DW_AT_comp_dir, and where it makes a
    relative path absolute): $PWD as written when it is absolute and the same directory
    (libiberty's getpwd, LLVM's current_path), else the real one. The jail compiles in a
    directory of that name; TreeUnsupported when no directory's name is written so (a
    trailing slash, "//", ".", ".."): the jail's getcwd would say it otherwise."""
    pwd = inv.env.get("PWD", "")
    if not pwd.startswith("/") or pwd == inv.cwd:
        return os.path.normpath(inv.cwd)
    if not same_file(inv.cwd, pwd, "."):
        return os.path.normpath(inv.cwd)  # a $PWD left from another directory (make -C)
    if os.path.normpath(pwd) != pwd or pwd.startswith("//"):
        raise TreeUnsupported(f"$PWD names the working directory as {pwd!r}")
    return pwd


def clang_driver(compiler: str, cwd: str) -> str | None:
    """The path a jail runs clang as for this user's driver, or None for gcc: the directory
    the driver was found in, as clang makes it absolute (it looks for its GCC installation
    from there, and debug info names what it finds), and "clang++" or "clang", the driver's
    mode. clang is one binary whose name sets its mode (as clang++ it compiles a .c file as
    C++), and the image names it once for all its names. Names with other modes or a target
    never get here (decide.py, clang_name_problem)."""
    if not is_clang(compiler):
        return None
    directory = os.path.dirname(os.path.join(cwd, compiler))
    return f"{directory}/{'clang++' if clang_mode(compiler)[1] == 'g++' else 'clang'}"


RANDOM_DEVICES = frozenset({"/dev/urandom", "/dev/random"})


def check_reads(
    tree_job: TreeJob, cwd: str, reads: list[tuple[str, str]], analyzer: IncludeAnalyzer
) -> None:
    """The soundness check (the module's docstring): RemoteFailure on any doubt."""
    # Randomness (gcc -flto without -frandom-seed names its sections by it) is no input: two
    # local compiles differ as much.
    reads = [(name, digest) for name, digest in reads if name not in RANDOM_DEVICES]
    # This machine's file at each name, resolved as the local compile would (symlinks).
    here_now = analyzer.digests([os.path.join(cwd, name) for name, _ in reads])
    for (name, digest), ours in zip(reads, here_now, strict=True):
        if digest[:7] != "sha256:" or ours != digest[7:]:
            raise RemoteFailure(f"the jail read {name}, which differs from this machine's")
    checked = {_absolute(cwd, name): digest[7:] for name, digest in reads}
    read = frozenset(checked)
    search = [d.rstrip("/") for d in tree_job.analysis.search]
    # Each read file under a search directory: by its place in the search, the directory
    # below that one and its name (a file under nested search directories is under each).
    found: dict[tuple[int, str], set[str]] = {}
    places_of: dict[str, list[tuple[int, str, str]]] = {}  # its name below it -> the same
    prefixes = [d + "/" for d in search]
    for path in read:
        for i, prefix in enumerate(prefixes):
            if path.startswith(prefix):
                rel = path[len(prefix) :]
                sub, _, base = rel.rpartition("/")
                found.setdefault((i, sub), set()).add(base)
                places_of.setdefault(rel, []).append((i, sub, base))
    here = _Listings(analyzer)
    # Files the jail had at these very paths: the tree's, and the image's that the server
    # checked against the job's list (by the path the compiler opens, ".." and all). A lookup
    # that got to one of them in the jail would have read it.
    in_image = {path for path, _ in tree_job.header["image"]}

    def shadowed(i: int, earlier: str, sub: str, names: Iterable[str]) -> None:
        """RemoteFailure if `earlier`/sub holds one of names (found in search[i]/sub) that
        the jail neither read nor had there (#include_next went past it, or a lookup that
        did not look there; else the analysis missed it, and the jail found another)."""
        if earlier == search[i]:
            return
        where = os.path.normpath(os.path.join(earlier or "/", sub))
        for name in here.names(where).intersection(names):
            candidate = os.path.join(where, name)
            if candidate in read or candidate in tree_job.shipped:
                continue
            if os.path.join(earlier or "/", sub, name) in in_image:
                continue
            path = os.path.join(search[i] or "/", sub, name)
            raise RemoteFailure(f"the jail found {path} where this machine has {candidate}")

    # Nothing of that name may come before it in this machine's search: else the analysis
    # missed a file here and the jail found another one later. Asked per directory, not per
    # file: the file system's listings are sets. A name only an #include_next looks up is
    # looked for after the directory of the file that asks (libstdc++'s <cstdlib> goes on
    # to the C library's <stdlib.h>, past its own stdlib.h).
    forced = any(w.startswith(_FORCED_INCLUDES) for w in tree_job.header["args"])
    starts = {} if forced else _first_places_looked(checked, prefixes, analyzer)
    for (i, sub), names in found.items():
        by_start: dict[int, set[str]] = {}
        for name in names:
            by_start.setdefault(starts.get(f"{sub}/{name}" if sub else name, 0), set()).add(name)
        for start, some in by_start.items():
            for earlier in search[start:i]:
                shadowed(i, earlier, sub, some)
    # Nor where a quote include looks first: the directory of the file that includes it, one
    # of the files read. Those of the project's files (the image's own headers include each
    # other from the image, which has no file the analysis could have missed), by the names
    # they include with quotes (all names, for a computed include).
    quoting: dict[str, set[str]] = {}  # an includer's directory -> names quoted there
    for path in read & tree_job.shipped:
        quoted = analyzer.quote_includes(path, checked[path])
        names = quoting.setdefault(os.path.dirname(path), set())
        names.update(places_of if quoted is None else places_of.keys() & quoted)
    for includer, names in quoting.items():
        places: dict[tuple[int, str], set[str]] = {}
        for rel in names:
            for i, sub, base in places_of[rel]:
                places.setdefault((i, sub), set()).add(base)
        for (i, sub), bases in places.items():
            shadowed(i, includer, sub, bases)


# Files the command line includes by name, looked for from the start of the search.
_FORCED_INCLUDES = ("-include", "--include", "-imacros", "--imacros")


def _first_places_looked(
    read: dict[str, str], prefixes: list[str], analyzer: IncludeAnalyzer
) -> dict[str, int]:
    """The names (below a search directory) that the files read name only in an
    #include_next from a file in the search, each with the first place in the search such a
    lookup tries: after the directory of the file that asks (the first holding it, where
    directories nest). Any other name, or every name when a file read cannot be read or has
    a computed inclusion, may have been looked for from the start, and is not in it. read:
    each file's path and the digest (hex) of its contents, as checked."""
    nexts: dict[str, int] = {}
    plain: set[str] = set()
    for path, digest in read.items():
        includes = analyzer.includes_of(path, digest)
        if includes is None:
            return {}
        after = next((i + 1 for i, prefix in enumerate(prefixes) if path.startswith(prefix)), 0)
        for include in includes:
            if include.kind == COMPUTED:
                return {}
            name = os.path.normpath(include.text)
            if include.next and after:
                nexts[name] = min(nexts.get(name, after), after)
            else:
                plain.add(name)
    return {name: start for name, start in nexts.items() if name not in plain}


def check_misses(cwd: str, misses: tuple[str, ...], analyzer: IncludeAnalyzer) -> None:
    """Every name the jail's compile looked for in vain (a header search going on to the next
    directory, a __has_include that said no) must find nothing here either: RemoteFailure if
    this machine has a file there, which the local compile would have read."""
    wanted: dict[str, dict[str, str]] = {}  # directory -> {name in it: name as the jail said}
    for name in misses:
        head, slash, base = name.rpartition("/")
        if base in ("", ".", ".."):
            head, base = os.path.split(os.path.realpath(os.path.join(cwd, name)))
        wanted.setdefault(head or slash or ".", {})[base] = name
    # Many names in few directories: each directory's spelling resolved once, as this
    # machine's kernel resolves it (the jail had no symlink to take "lnk/.." elsewhere).
    by_directory: dict[str, dict[str, str]] = {}
    for head, names in wanted.items():
        by_directory.setdefault(_as_the_kernel_names(cwd, head), {}).update(names)
    here = _Listings(analyzer)
    for directory, names in by_directory.items():
        there = sorted(here.names(directory).intersection(names))
        if there:
            raise RemoteFailure(f"the jail found no {names[there[0]]}, which this machine has")


class _Listings:
    """This machine's directories for one check: each listed once (the analyzer's kept
    listing, one stat): the names in it that are not directories."""

    def __init__(self, analyzer: IncludeAnalyzer) -> None:
        self._analyzer = analyzer
        self._names: dict[str, frozenset[str]] = {}

    def names(self, directory: str) -> frozenset[str]:
        if directory not in self._names:
            self._names[directory] = self._analyzer.names_in(directory)
        return self._names[directory]


def _search_dirs_to_make(
    search: tuple[str, ...], system: tuple[str, ...], root: str, words: list[str]
) -> list[str]:
    """The user's include directories (that exist here: the probe lists no other) as the
    jail must have them, beneath root: it makes those no file of the tree lies in, which
    gcc's -Wmissing-include-dirs would otherwise call missing there. One outside the tree
    cannot be made: with that warning asked for, TreeUnsupported."""
    made: list[str] = []
    for d in search:
        if d.startswith(system) or d.rstrip("/") + "/" in system:
            continue  # the image's
        where = os.path.normpath(d)
        if where == root or where.startswith(root + "/"):
            if where != root:
                made.append(os.path.relpath(where, root))
        elif any("missing-include-dirs" in w for w in words):
            raise TreeUnsupported(
                f"the include directory {d} lies outside the tree, and the jail would warn"
                " that it is missing (-Wmissing-include-dirs)"
            )
    return made


def _absolute(cwd: str, name: str) -> str:
    return os.path.normpath(os.path.join(cwd, name))


def _lexical_parent_differs(cwd: str, name: str) -> bool:
    """Whether the directory of name, with its ".." taken lexically, is another than the one
    this machine's kernel finds."""
    parent = os.path.dirname(os.path.join(cwd, name))
    if ".." not in parent.split("/"):
        return False
    return os.path.realpath(parent) != os.path.realpath(os.path.normpath(parent))


def _as_the_kernel_names(cwd: str, name: str) -> str:
    """name from cwd, normalized only where that cannot change what the kernel finds: a ".."
    after a symlink leads from the link's target, not back to where the link is."""
    joined = os.path.join(cwd, name)
    return joined if ".." in joined.split("/") else os.path.normpath(joined)


def _common_root(paths: list[str]) -> str:
    """The deepest directory holding every path (files by their directory); TreeUnsupported if
    it is / or lies in the image's own directories."""
    dirs = [paths[0], *(os.path.dirname(p) for p in paths[1:])]
    root = os.path.commonpath(dirs)
    top = root.strip("/").split("/", 1)[0]
    if root == "/" or top in IMAGE_TOP:
        raise TreeUnsupported(f"the files lie under {root}, where the jail cannot lay them out")
    return root


# What make takes for a directive at a line's start, not a rule.
_MAKE_DIRECTIVES = frozenset(
    b"include -include sinclude override export unexport define endef undefine vpath ifeq"
    b" ifneq ifdef ifndef else endif private load -load".split()
)


_SPECIAL_TARGET = re.compile(rb"\.[A-Z_]+")


def plain_rules(data: bytes, own_targets: Sequence[str] = ()) -> bool:
    """Whether a dependency file holds only what gcc and clang write there: rules `targets:
    prerequisites` (lines continued by a backslash) and blank lines. make reads it: a
    server's recipe (a line after a tab, or after ';'), variable, function call ("$(shell
    ...)"), comment, special target (.SECONDEXPANSION expands "$$" again) or directive would
    act on this machine. Lines are joined as make joins them: a newline after an odd number
    of backslashes. The user's own -MT targets (`own_targets`, '$(obj)/x.o' say), which the
    compiler writes as they are, in order, at the start of the first rule, may hold anything
    there: a local compile would write the same. (A -MQ before them: compiled locally.)"""
    for number, line in enumerate(_make_lines(data)):
        if line.startswith(b"\t"):
            return False
        if number == 0:
            line = _without_own_targets(line, [os.fsencode(t) for t in own_targets])
        words = line.replace(b"$$", b"").replace(b"\\\\", b"").replace(b"\\#", b"").strip()
        if not words:
            continue
        if b":" not in words or any(c in words for c in (b"$", b";", b"=", b"#")):
            return False
        if words.split(None, 1)[0] in _MAKE_DIRECTIVES:
            return False
        targets = words.split(b":", 1)[0].split()
        if any(_SPECIAL_TARGET.fullmatch(target) for target in targets):
            return False  # .SECONDEXPANSION, .ONESHELL...: ("../inc/x.h:" is a plain one)
    return True


def _without_own_targets(line: bytes, own: list[bytes]) -> bytes:
    """The first rule's line with the user's -MT targets made plain words, when it starts
    with them, in their order (as the compiler writes them first): nothing of the server's
    may stand between them."""
    rest = line
    for target in own:
        if not target or not _starts_with_word(rest, target):
            return line
        rest = rest[len(target) :].lstrip(b" ")
    return b"target " * len(own) + rest


def _starts_with_word(line: bytes, word: bytes) -> bool:
    return line.startswith(word) and line[len(word) : len(word) + 1] in (b" ", b":")


def _make_lines(data: bytes) -> list[bytes]:
    """data's logical lines as make reads them: a backslash-newline continues a line only
    after an odd number of backslashes."""
    lines: list[bytes] = []
    pending = b""
    for physical in data.split(b"\n"):
        backslashes = len(physical) - len(physical.rstrip(b"\\"))
        if backslashes % 2:
            pending += physical[:-1] + b" "
            continue
        lines.append(pending + physical)
        pending = b""
    if pending:
        lines.append(pending)
    return lines


def _write_dependencies(path: str, data: bytes, umask: int) -> None:
    """As cpp writes it: fopen("w"), through a symlink, with the user's umask (the proxy's
    own umask must not narrow it: the file is made 0600, then given the user's mode)."""
    from .outputs import creation_mode, give_mode

    flags = os.O_WRONLY | os.O_CLOEXEC
    try:
        try:
            mode = creation_mode(path)
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:  # (or a symlink, perhaps dangling, which fopen follows)
            try:
                fd, mode = os.open(path, flags | os.O_TRUNC), 0
            except FileNotFoundError:  # dangling: its target is made
                mode = creation_mode(os.path.realpath(path))
                fd = os.open(path, flags | os.O_CREAT | os.O_TRUNC, mode)
    except OSError as exc:
        raise RemoteFailure(f"cannot write {path}: {exc.strerror}") from None
    try:
        from jailcc.wire import write_all

        give_mode(fd, mode, umask)
        write_all(fd, data)
    except OSError as exc:  # a full disk: the local compile says it as it would
        raise RemoteFailure(f"cannot write {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
