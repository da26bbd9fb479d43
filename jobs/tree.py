"""Tree jobs: the user's own compile, run once in the jail at the user's own paths, on files the
client ships by content (PROTOCOL.md, "Tree jobs"). Here: what a tree JOB may ask for
(``check_job``), the toolchain image as the jail sees it (``ImageFiles``: which paths are the
image's files, and their digests), and which files the compile read and which names it looked
for in vain (``parse_make_rule``, ``parse_header_list``, ``log_reads``, ``reads``). The
conversation itself (NEED, BLOBS, RESULT) is in session.py, the arguments' allowlist in
compiler_policy.py.

Every check here runs in the jail, unprivileged: the jail is the boundary, these checks keep
jobs to what the client's soundness check can vouch for and turn what would be a surprise in
the middle of a job (a full work dir, a root the jail cannot lay out) into a clear refusal.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from typing import Any

from jailcc import READ_LOG_LIBRARY
from jailcc.sandbox.spec import JailLimits

from . import compiler_policy as policy
from .blobstore import PREFIX

MAX_TREE_FILES = 20000
MAX_IMAGE_FILES = 20000
MAX_TREE_DIRS = 4096  # empty directories a tree job asks for (its -I directories)
MAX_OUTPUTS = 32  # a RESULT carries at most 64 blobs: stdout, stderr, the outputs
MAX_PATH_BYTES = 4096  # a tree file's relative path; with the root, below PATH_MAX
MAX_NAME_BYTES = 255  # one component (NAME_MAX)
MAX_ROOT_BYTES = 1024  # as any work dir (sandbox/rootfs.py validate_workdir)
MAX_READS = 50000
MAX_READS_BYTES = 6 * 1024 * 1024  # of the RESULT's header (protocol.MAX_TREE_HEADER)
MAX_MISSES = 100000
MAX_MISSES_BYTES = 8 * 1024 * 1024  # the rest of it
# A clang job's "driver" (required: the image names the binary once for all its names) is the
# path the jail runs clang as: the directory the user's driver was found in (clang looks for
# its GCC installation from there, and debug info names what it finds) and one of these
# names, each one of the two modes of a gcc-style compile, C (clang) or C++ (clang++). No
# other: a name also sets a target or another language of options (clang-cl), which the
# compiler policy does not know.
CLANG_DRIVERS = frozenset({"clang", "clang++"})
INODE_MARGIN = 64  # beyond the tree's files and directories: outputs, the compile's own files
PAGE = 4096  # a tmpfs file takes whole pages of the work dir's size
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
JAIL_OWN = frozenset(("dev", "proc", "tmp"))  # top-level directories the jail makes itself


class TreeRefused(Exception):
    """A tree job the jail will not run: code "protocol" (malformed), "tree" (cannot be laid
    out here: the client ships preprocessed output instead) or "image"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def with_base(header: dict[str, Any], base: tuple[str, list[Any]] | None) -> dict[str, Any]:
    """The header with its "tree" whole: a job may send, instead, "tree_delta" {"remove":
    [paths], "add": [entries]} against the tree of the connection's last tree job answered
    with a RESULT (base: its root and tree), under the same root. Checked as a whole after."""
    delta = header.get("tree_delta")
    if delta is None:
        return header
    if "tree" in header or not isinstance(delta, dict):
        raise TreeRefused("protocol", "a tree job sends either tree or tree_delta")
    if base is None or base[0] != header.get("root"):
        raise TreeRefused("protocol", "tree_delta without a previous tree under that root")
    remove, add = delta.get("remove", []), delta.get("add", [])
    if (
        not isinstance(remove, list)
        or not isinstance(add, list)
        or len(remove) > MAX_TREE_FILES
        or len(add) > MAX_TREE_FILES
        or not all(isinstance(r, str) for r in remove)
        or not all(isinstance(e, list) and e and isinstance(e[0], str) for e in add)
    ):
        raise TreeRefused("protocol", "tree_delta holds remove: [paths], add: [entries]")
    files = {entry[0]: entry for entry in base[1]}
    for rel in remove:
        files.pop(rel, None)
    for entry in add:
        files[entry[0]] = entry
    rest = {k: v for k, v in header.items() if k != "tree_delta"}
    return {**rest, "tree": list(files.values())}


class TreeJob:
    """A checked tree job."""

    __slots__ = (
        "args",
        "cwd",
        "deps",
        "digests",
        "dirs",
        "driver",
        "env",
        "files",
        "id",
        "outputs",
        "root",
        "sizes",
        "source",
        "work_dirs",
    )

    def __init__(self, **fields: Any) -> None:
        for name, value in fields.items():
            setattr(self, name, value)

    def names(self) -> list[str]:
        """The tree's files, relative to the root."""
        return [rel for rel, _ in self.files]

    def output_names(self) -> list[str]:
        return [path[len(self.root) + 1 :] for path in self.outputs]

    def tree_digests(self) -> dict[str, str]:
        """Each tree file's digest by its absolute path."""
        return {f"{self.root}/{rel}": digest for rel, digest in self.files}

    def total_bytes(self) -> int:
        return sum(self.sizes.values())


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _absolute(
    value: object, what: str, max_bytes: int = MAX_PATH_BYTES, normalized: bool = True
) -> str:
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or "\0" in value
        or (normalized and (os.path.normpath(value) != value or value.startswith("//")))
    ):
        adjective = "absolute, normalized" if normalized else "absolute"
        raise TreeRefused("protocol", f"{what} must be an {adjective} path")
    if len(os.fsencode(value)) > max_bytes:
        raise TreeRefused("protocol", f"{what} is longer than {max_bytes} bytes")
    return value


def _relative(value: object, root: str) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise TreeRefused("protocol", f"bad tree path {str(value)[:200]!r}")
    if value.startswith("/"):
        raise TreeRefused("protocol", f"the tree path {value[:200]!r} is absolute")
    parts = value.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise TreeRefused("protocol", f"the tree path {value[:200]!r} is not normalized")
    if len(os.fsencode(value)) > MAX_PATH_BYTES or len(os.fsencode(f"{root}/{value}")) >= 4096:
        raise TreeRefused("protocol", f"the tree path {value[:200]}... is too long")
    if any(len(os.fsencode(p)) > MAX_NAME_BYTES for p in parts):
        raise TreeRefused("protocol", f"a component of {value[:200]!r} is too long")
    return value


def _check_root(root: str, image: ImageFiles) -> None:
    """Where the work tmpfs can be mounted (sandbox/rootfs.py validate_workdir's rules, and
    nowhere in the image)."""
    if root == "/":
        raise TreeRefused("tree", "the root / cannot be a work dir: a tree needs a root below /")
    top = root.split("/")[1]
    if top in JAIL_OWN - {"tmp"} or top.startswith(".jailcc"):
        raise TreeRefused("tree", f"the root {root} lies in the jail's own /{top}")
    if top == "etc":  # (the programs' loader would read a job's ld.so.preload)
        raise TreeRefused("tree", f"the root {root} cannot lie in /etc")
    if image.holds_top(top):
        raise TreeRefused(
            "tree",
            f"the root {root} lies in the toolchain image's /{top}: the jail cannot lay files"
            " out there",
        )


def _driver(driver: object, compiler_kind: str, root: str) -> str | None:
    """A job's "driver" (CLANG_DRIVERS), checked; the jail's view of the file system is the
    image's, where its directory must be: outside it clang would find another installation."""
    if compiler_kind != "clang":
        if driver is not None:
            raise TreeRefused("protocol", "driver is clang's path and mode: for clang only")
        return None
    # As the user's clang made it absolute (not normalized: debug info may name it so).
    driver = _absolute(driver, "a clang job's driver", normalized=False)
    directory, name = driver.rsplit("/", 1)
    if name not in CLANG_DRIVERS:
        names = " or ".join(sorted(CLANG_DRIVERS))
        raise TreeRefused("protocol", f"a clang job's driver is named {names}")
    plain = os.path.normpath(directory or "/")
    if plain == root or policy.beneath(plain, root) or not os.path.isdir(plain):
        raise TreeRefused("tree", f"clang's directory {directory[:200]} is not in the image")
    return driver


def check_job(
    params: dict[str, Any],
    header: dict[str, Any],
    blobs: list[bytes],
    limits: JailLimits,
    store_cap: int,
    image: ImageFiles,
) -> TreeJob:
    """A tree JOB's header, checked (TreeRefused, or policy.PolicyError for its arguments),
    its image files compared with the jail's image: all before any blob is asked for."""
    job_id = header.get("id")
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise TreeRefused("protocol", "a job needs an id")
    if header.get("identity") != params["identity"]:
        raise TreeRefused("image", "this connection serves another compiler: open another one")
    if blobs:
        raise TreeRefused("protocol", "a tree JOB carries no blobs: the jail asks for them")
    root = _absolute(header.get("root"), "the job's root", MAX_ROOT_BYTES)
    cwd = _absolute(header.get("cwd"), "the working directory")
    if not policy.beneath(cwd, root):
        raise TreeRefused("protocol", f"the working directory {cwd} is not beneath the root")
    _check_root(root, image)

    tree = header.get("tree")
    if not isinstance(tree, list):
        raise TreeRefused("protocol", "tree must be a list of [path, digest, size]")
    if len(tree) > MAX_TREE_FILES:
        raise TreeRefused(
            "tree", f"{len(tree)} files: a tree job takes at most {MAX_TREE_FILES} files"
        )
    max_blob = int(params["max_input_bytes"])
    files: list[tuple[str, str]] = []
    sizes: dict[str, int] = {}
    seen: set[str] = set()
    pages = 0
    for entry in tree:
        if not isinstance(entry, list) or len(entry) != 3:
            raise TreeRefused("protocol", "each tree entry is [path, digest, size]")
        rel, digest, size = entry
        rel = _relative(rel, root)
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest) or not _is_size(size):
            raise TreeRefused("protocol", f"{rel[:200]}: a digest is sha256:<64 hex>, a size >= 0")
        if rel in seen:
            raise TreeRefused("protocol", f"{rel[:200]} is listed twice")
        seen.add(rel)
        if sizes.setdefault(digest, size) != size:
            raise TreeRefused("protocol", f"{digest} is listed with two sizes")
        if size > max_blob:
            raise TreeRefused(
                "tree", f"too large: {rel[:200]} has {size} bytes, a file at most {max_blob}"
            )
        files.append((rel, digest))
        pages += -(-size // PAGE)

    # Directories: every parent of a file, and the working directory's, none of them a file.
    dirs = {rel.rsplit("/", 1)[0] for rel in seen if "/" in rel}
    for d in list(dirs):
        while "/" in d:
            d = d.rsplit("/", 1)[0]
            dirs.add(d)
    below = cwd[len(root) + 1 :]
    while below:
        dirs.add(below)
        below = below.rsplit("/", 1)[0] if "/" in below else ""
    clash = dirs & seen
    if clash:
        name = min(clash)[:200]
        raise TreeRefused("protocol", f"{name} is both a file and a directory of the tree")

    image_files = header.get("image", [])
    if not isinstance(image_files, list):
        raise TreeRefused("protocol", "image must be a list of [path, digest]")
    if len(image_files) > MAX_IMAGE_FILES:
        raise TreeRefused(
            "tree", f"{len(image_files)} image files: a tree job names at most {MAX_IMAGE_FILES}"
        )
    for entry in image_files:
        if not isinstance(entry, list) or len(entry) != 2:
            raise TreeRefused("protocol", "each image entry is [path, digest]")
        # As the compiler opens it ("/usr/lib/gcc/.../12/../../../../include/c++/12/x"):
        # resolved in the jail, it must land on a file of the image (ImageFiles).
        path = _absolute(entry[0], "an image file", normalized=False)
        if not isinstance(entry[1], str) or not DIGEST.fullmatch(entry[1]):
            raise TreeRefused("protocol", f"{path[:200]}: a digest is sha256:<64 hex>")

    outputs = header.get("outputs", [])
    if not isinstance(outputs, list) or len(outputs) > MAX_OUTPUTS:
        raise TreeRefused("protocol", f"outputs must be a list of at most {MAX_OUTPUTS} paths")
    for path in outputs:
        _absolute(path, "an output")
        if path == root or not policy.beneath(path, root):
            raise TreeRefused("protocol", f"the output {path[:200]} is not beneath the root")
        if path[len(root) + 1 :] in seen or path[len(root) + 1 :] in dirs:
            raise TreeRefused("protocol", f"the output {path[:200]} is a file of the tree")
    if len(set(outputs)) != len(outputs):
        raise TreeRefused("protocol", "an output is listed twice")
    # The outputs' directories too (a build directory the tree has no file in: CMake's).
    out_dirs: set[str] = set()
    for path in outputs:
        parent = os.path.dirname(path)[len(root) + 1 :]
        while parent and parent not in dirs:
            if parent in seen:
                raise TreeRefused("protocol", f"the output {path[:200]} is below a tree file")
            out_dirs.add(parent)
            parent = parent.rsplit("/", 1)[0] if "/" in parent else ""
    dirs |= out_dirs
    # Empty directories the compile looks in (an -I directory that gives no file: gcc warns
    # of it with -Wmissing-include-dirs when it is missing, so the jail has it as the user has).
    asked = header.get("dirs", [])
    if not isinstance(asked, list) or len(asked) > MAX_TREE_DIRS:
        raise TreeRefused("protocol", f"dirs must be a list of at most {MAX_TREE_DIRS} paths")
    for rel in asked:
        rel = _relative(rel, root)
        while rel and rel not in dirs:
            if rel in seen:
                raise TreeRefused("protocol", f"{rel[:200]} is both a file and a directory")
            out_dirs.add(rel)
            dirs.add(rel)
            rel = rel.rsplit("/", 1)[0] if "/" in rel else ""
    if len(out_dirs) > MAX_TREE_DIRS:
        raise TreeRefused("tree", f"more than {MAX_TREE_DIRS} directories to make")

    # What the jail can hold: the store, the work dir's size and inodes.
    total = sum(sizes.values())
    if total > store_cap:
        raise TreeRefused(
            "tree",
            f"too large: the tree's files take {total} bytes, this server's store holds"
            f" {store_cap} (--store-mb)",
        )
    if pages * PAGE > limits.work_bytes * 3 // 4:
        raise TreeRefused(
            "tree",
            f"too large: the tree takes {pages * PAGE} bytes in the jail's work dir, which"
            f" holds {limits.work_bytes}",
        )
    inodes = len(seen) + len(dirs) + len(outputs) + INODE_MARGIN
    if inodes > limits.work_inodes:
        raise TreeRefused(
            "tree",
            f"too many files: the tree needs {len(seen)} files and {len(dirs)} directories;"
            f" the jail's work dir holds {limits.work_inodes - INODE_MARGIN} in all",
        )

    env = policy.job_env(header.get("env"))
    driver = _driver(header.get("driver"), params["compiler_kind"], root)
    tree_args = policy.check_tree_args(
        header.get("args"), cwd, root, {f"{root}/{rel}" for rel in seen}
    )
    for path, digest in image_files:
        if not image.holds_top(path.split("/")[1]):
            raise TreeRefused("tree", f"{path} is not in the image")
        found = image.digest(path)
        if found is None:
            raise TreeRefused("tree", f"{path} is not in the image")
        if found != digest:
            raise TreeRefused("tree", f"{path} differs from the image's copy")

    return TreeJob(
        id=job_id,
        cwd=cwd,
        root=root,
        files=files,
        sizes=sizes,
        digests=frozenset(sizes),
        dirs=sorted(out_dirs),
        outputs=list(outputs),
        env=env,
        driver=driver,
        args=tree_args,
        deps=policy.tree_deps(tree_args, params["compiler_kind"]),
        source=str(header.get("source", os.path.basename(tree_args.input)))[:200],
        work_dirs=frozenset(f"{root}/{d}" for d in dirs) | {root},
    )


class ImageFiles:
    """The toolchain image as the jail sees it: its top-level entries (read-only binds of its
    directories and files, and its symlinks, beside the jail's own /dev, /proc and /tmp), and
    the digests of its files, kept for the jail's life since the image never changes under a
    jail. A path is the image's file only if it resolves, symlinks and all, to a regular file
    on one of the image's read-only mounts: never the work dir, /tmp, /proc or /dev."""

    MAX_CACHED = 200_000

    def __init__(self) -> None:
        root_dev = os.lstat("/").st_dev
        self.tops: set[str] = set()  # every top-level entry of the image
        self.dirs: set[str] = set()  # those that are its directories
        self.devices: set[int] = set()
        for name in os.listdir("/"):
            if name in JAIL_OWN or name.startswith(".jailcc"):
                continue
            path = "/" + name
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                self.tops.add(name)  # the launcher makes a top-level symlink for no one else
            elif st.st_dev != root_dev and os.statvfs(path).f_flag & os.ST_RDONLY:
                self.tops.add(name)
                if stat.S_ISDIR(st.st_mode):
                    self.dirs.add(name)
                    self.devices.add(st.st_dev)
        self._by_path: dict[str, str | None] = {}
        self._by_inode: dict[tuple[int, int], str] = {}
        # The image's read log (images/readlog.c), which makes one compile tell all it read.
        self.read_log = self.digest(READ_LOG_LIBRARY) is not None

    def holds_top(self, name: str) -> bool:
        return name in self.tops

    def digest(self, path: str) -> str | None:
        """The digest of the image's file at path (absolute), or None if no file of the
        image is there."""
        if path in self._by_path:
            return self._by_path[path]
        found = self._digest(path)
        if len(self._by_path) >= self.MAX_CACHED:
            self._by_path.clear()
        self._by_path[path] = found
        return found

    def _digest(self, path: str) -> str | None:
        try:
            real = os.path.realpath(path, strict=True)
        except (OSError, ValueError):
            return None
        if real.split("/")[1] not in self.dirs:
            return None
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_dev not in self.devices:
                return None
            key = (st.st_dev, st.st_ino)
            known = self._by_inode.get(key)
            if known is not None:
                return known
            sha = hashlib.sha256()
            while chunk := os.read(fd, 1 << 20):
                sha.update(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(self._by_inode) >= self.MAX_CACHED:
            self._by_inode.clear()
        digest = self._by_inode[key] = PREFIX + sha.hexdigest()
        return digest


# -- which files the compile read --------------------------------------------------------------


def _make_words(line: str) -> list[str]:
    """The words of one logical line of a make rule, unescaped as gcc and clang escape names
    (mkdeps.cc munge, DependencyFile.cpp): a space or tab after 2N+1 backslashes is N
    backslashes and a space in the name (after 2N, N backslashes and the name's end); "\\#" is
    "#"; "$$" is "$"."""
    words: list[str] = []
    cur: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c == "\\":
            j = i
            while j < n and line[j] == "\\":
                j += 1
            count = j - i
            after = line[j] if j < n else ""
            if after in (" ", "\t"):
                cur.append("\\" * (count // 2))
                if count % 2:
                    cur.append(after)
                    j += 1
            elif after == "#":
                cur.append("\\" * (count - 1) + "#")
                j += 1
            else:
                cur.append(line[i:j])
            i = j
        elif c == "$" and line[i + 1 : i + 2] == "$":
            cur.append("$")
            i += 2
        elif c in " \t":
            if cur:
                words.append("".join(cur))
                cur = []
            i += 1
        else:
            cur.append(c)
            i += 1
    if cur:
        words.append("".join(cur))
    return words


def parse_make_rule(text: str) -> list[str]:
    """The prerequisites of the rules in a dependency file (as the compiler wrote each name),
    in order, each once. A rule's targets end at the first word ending in ":"; -MP's phony
    rules ("header.h:") have none."""
    found: dict[str, None] = {}
    for line in text.replace("\\\r\n", " ").replace("\\\n", " ").splitlines():
        words = _make_words(line)
        for k, word in enumerate(words):
            if word.endswith(":"):
                found.update(dict.fromkeys(w for w in words[k + 1 :] if w))
                break
    return list(found)


_DEPTH = re.compile(r"\.+ ")


def parse_header_list(text: str) -> list[str]:
    """The headers in a CC_PRINT_HEADERS file (clang): one a line, possibly after -H's depth
    dots and a space; each once."""
    found: dict[str, None] = {}
    for line in text.split("\n"):
        match = _DEPTH.match(line)
        name = line[match.end() :] if match else line
        if name:
            found[name] = None
    return list(found)


def reads(job: TreeJob, listed: list[str] | None, image: ImageFiles) -> list[list[str]] | None:
    """[name as the compiler wrote it, digest of the file the jail read] for the input and
    every file listed: a tree file's digest (the work dir holds exactly the tree), an image
    file's, "" for anything else (the client then compiles locally). None when the list is
    missing or too large to report."""
    if listed is None:
        return None
    tree_digests = job.tree_digests()
    out: list[list[str]] = []
    size = 0
    seen: set[str] = set()
    for name in [job.args.input, *listed]:
        if name in seen:
            continue
        seen.add(name)
        path = name if name.startswith("/") else os.path.join(job.cwd, name)
        norm = os.path.normpath(path)
        digest = tree_digests.get(norm)
        if digest is None and not policy.beneath(norm, job.root):
            # A name through the work dir (../ out of it) resolves as normalized there: it
            # holds no symlinks, and it is wiped by now.
            digest = image.digest(norm if policy.beneath(path, job.root) else path)
        out.append([name, digest or ""])
        size += len(name) + 80
        if len(out) > MAX_READS or size > MAX_READS_BYTES:
            return None
    return out


def parse_read_log(data: bytes) -> tuple[list[str], list[str]] | None:
    """(names opened for reading, names looked for in vain), each once, in order, from a read
    log (images/readlog.c: "R" or "M" and a name, NUL-terminated); None when a record cannot be
    trusted (a relative name we cannot place, a cut-off record, a name that is not UTF-8)."""
    if data and not data.endswith(b"\0"):
        return None
    opened: dict[str, None] = {}
    missed: dict[str, None] = {}
    for record in data.split(b"\0")[:-1]:
        kind, name = record[:1], record[1:]
        if kind not in (b"R", b"M") or not name:
            return None
        try:
            text = name.decode()
        except UnicodeDecodeError:
            return None
        (opened if kind == b"R" else missed)[text] = None
    return list(opened), list(missed)


def log_reads(
    job: TreeJob, data: bytes | None, image: ImageFiles
) -> tuple[list[list[str]] | None, list[str] | None]:
    """(reads as ``reads`` gives them, names looked for in vain) from the compile's read log;
    (None, None) when it is missing, cannot be trusted, or is too large to report: the client
    then compiles locally. A directory the log saw opened counts as looked for in vain: gcc
    opens a name found on the include path, and goes on searching when it is a directory
    (libcpp open_file)."""
    parsed = parse_read_log(data) if data is not None else None
    # cc1 opens the main file by its name as given: no such record, no working log.
    if parsed is None or job.args.input not in parsed[0]:
        return None, None
    opened, missed = parsed
    files = []
    for name in opened:
        path = os.path.normpath(os.path.join(job.cwd, name))
        if policy.beneath(path, job.root):
            is_dir = path in job.work_dirs
        else:
            is_dir = image.holds_top(path.split("/")[1]) and os.path.isdir(path)
        (missed if is_dir else files).append(name)
    size = sum(len(name) + 4 for name in missed)
    if len(missed) > MAX_MISSES or size > MAX_MISSES_BYTES:
        return None, None
    found = reads(job, files, image)
    return (found, missed) if found is not None else (None, None)
