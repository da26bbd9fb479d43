"""Writing a remote compile's output where, and as, the local compiler would have written it.

Runs in the per-user proxy (or the Python client) as the user. A build may name any file as
the output: `-o /dev/null` (git's Makefile, configure scripts, Kbuild), a FIFO, a symlink into
another tree, a hard-linked object. Replacing such a path with a regular file destroys it (as
root, `/dev/null` itself), so each kind of path is written the way gcc-12 and clang-16 write it
(measured; tests/test_outputs.py checks each row against the real compilers):

===========================  ======================  ======================  =================
the path is (stat follows)   gcc -c (as, BFD)        gcc -S (cc1)            clang -c / -S
===========================  ======================  ======================  =================
missing                      created                 created                 created
a symlink to nothing         its target created      its target created      replaced
a regular file, or a         replaced (a symlink     rewritten in place      replaced
symlink to one               itself is replaced);    (through the symlink)
                             an empty one rewritten
a character/block device     written in place        written in place        written in place
a FIFO                       as fails: local         written in place        written in place
a directory, socket, ...     the compiler fails: the job compiles locally, which says why
===========================  ======================  ======================  =================

A FIFO is written once a reader opens it, within FIFO_WAIT seconds; otherwise the job compiles
locally, so that the wait is the compiler's own and ends with the build that asked.

"replaced" and "created" are atomic here (a temporary file in the same directory, then a
rename), so a reader never sees half an object; the compilers' own writes are not, which no
build can tell apart. gcc -S truncates and rewrites an existing file (a hard link to it sees
the new text), and so do we. Writes to devices and FIFOs open the existing node without
O_CREAT and check, after opening, that it is still such a node, so a race cannot turn a device
write into a new regular file.

A failed compile (non-zero exit) leaves what a local one leaves: gcc's driver deletes the
output of the step that failed, which for -S is cc1's .s and for -c is the object only when
the assembler failed (then the proxy compiles locally: see job.finish); clang deletes its
output. Either deletes it only when stat calls it a regular file, unlinking the path given (a
symlink, not its target). cc1 has by then written part of the .s, which stays visible through
a symlink, a second hard link or a FIFO: those failures are compiled locally.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time

from jailcc.wire import write_all

# What to do with a path (see the table above).
_REPLACE = "replace"  # atomically, at the path itself
_REPLACE_TARGET = "replace-target"  # atomically, at the path with symlinks resolved
_REWRITE = "rewrite"  # open(O_CREAT|O_TRUNC) through symlinks, as cc1's fopen("w")
_IN_PLACE = "in-place"  # open the existing device or FIFO and write into it


FIFO_WAIT = 5.0  # seconds a FIFO output may wait for its reader (see _open_fifo)


class OutputError(Exception):
    """The output cannot be written as the compiler would write it here: compile locally."""


def names_descriptors(path: str) -> bool:
    """Whether path leads, by its name or its symlinks, through /proc or /dev/fd (as
    /dev/stdout does): a process's own descriptors, which only the compiler the user started
    can write. The proxy's, at that name, are other files (its stdout is /dev/null)."""
    parts, resolved, links = path.split("/"), "/", 0
    while parts:
        name = parts.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, name)
        if candidate in _DESCRIPTOR_NAMES:
            return True
        try:
            target = os.readlink(candidate)
        except OSError:  # not a symlink (or not there): a plain step
            resolved = candidate
            continue
        links += 1
        if links > 40:
            return True  # ELOOP: the local compile says so
        if target.startswith("/"):
            resolved = "/"
        parts[:0] = target.split("/")
    return False


_DESCRIPTOR_NAMES = frozenset(("/proc", "/dev/fd", "/dev/stdin", "/dev/stdout", "/dev/stderr"))


def plan(path: str, clang: bool, assembly: bool) -> str:
    """How to write a compile's output to ``path``; OutputError when only the local compiler
    can reproduce what happens (its own error, for a directory or a FIFO under gcc -c)."""
    gcc_asm = assembly and not clang
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if gcc_asm:
            return _REWRITE
        if clang or not os.path.islink(path):
            return _REPLACE
        return _REPLACE_TARGET  # as opens the dangling link, creating its target
    except OSError as exc:
        raise OutputError(f"cannot use {path} as the output: {exc.strerror}") from None
    mode = st.st_mode
    if stat.S_ISREG(mode):
        # BFD (gcc -c) unlinks only a non-empty file; an empty one it opens and writes.
        return _REWRITE if gcc_asm or (not clang and st.st_size == 0) else _REPLACE
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return _IN_PLACE
    if stat.S_ISFIFO(mode):
        if not clang and not assembly:
            raise OutputError(f"{path} is a FIFO, which the assembler cannot write")
        return _IN_PLACE
    raise OutputError(f"{path} is not a file the compiler can write")


def write(path: str, data: bytes, umask: int, how: str) -> None:
    """Write ``data`` to ``path`` as planned; OSError or OutputError on failure."""
    if how == _IN_PLACE:
        _write_in_place(path, data)
    elif how == _REWRITE:
        _rewrite(path, data, umask)
    elif how == _REPLACE_TARGET:
        _replace_atomically(os.path.realpath(path), data, umask)
    else:
        _replace_atomically(path, data, umask)


def plain_or_missing(path: str) -> bool:
    """Whether path is missing, or a regular file of that one name (no symlink, no other hard
    link): what a compiler's failed write there leaves is the same whether it wrote or not."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def writable(path: str) -> bool:
    """Whether gcc's cc1 could open path for writing (fopen "w", which it does for -S before it
    reads a line of the source): an existing file, node or symlink's target we may write, or a
    new one in a directory we may write in. Not a directory."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.realpath(path)) or "."
        return os.access(parent, os.W_OK | os.X_OK)
    except OSError:
        return False
    return not stat.S_ISDIR(st.st_mode) and os.access(path, os.W_OK)


def failure_shows_partial_text(path: str, clang: bool, assembly: bool) -> bool:
    """Whether a failed local compile would leave some of its text visible at ``path``:
    gcc's cc1 writes the .s as it goes and the driver then unlinks only the path given, so
    a symlink's target, another hard link or a FIFO's reader keeps what was written."""
    if clang or not assembly:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return True
    return stat.S_ISREG(st.st_mode) and st.st_nlink > 1


def remove_after_failure(path: str) -> None:
    """What the compiler's driver does to its output when the step writing it fails."""
    try:
        if stat.S_ISREG(os.stat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass  # missing, or not ours to remove: the compiler would not report it either


def _write_in_place(path: str, data: bytes) -> None:
    # No O_CREAT: if the node vanished since plan(), fail rather than create a regular file.
    flags = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC
    fd = _open_fifo(path, flags) if stat.S_ISFIFO(os.stat(path).st_mode) else os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)):
            raise OutputError(f"{path} changed while the job ran")
        write_all(fd, data)
    finally:
        os.close(fd)


def _open_fifo(path: str, flags: int) -> int:
    """A FIFO's write end once a reader has it open. The compiler's own open would wait for
    ever, and so would a proxy thread, long after the build that asked was interrupted: so
    wait FIFO_WAIT seconds at most, then let the compile run locally, where the wait is the
    compiler's own and dies with the build."""
    import fcntl

    deadline = time.monotonic() + FIFO_WAIT
    while True:
        try:
            fd = os.open(path, flags | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise OutputError(f"nobody reads the FIFO {path} yet: compiling locally") from None
            time.sleep(0.02)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def creation_mode(path: str) -> int:
    """The mode to create path with: the compiler's own 0666 where its directory has a
    default ACL (the kernel then ignores every umask, and the ACL decides, as for the local
    compile), else 0600, which give_mode() then makes the user's umask's (the proxy's own
    umask may differ)."""
    try:
        os.getxattr(os.path.dirname(path) or ".", "system.posix_acl_default")
        return 0o666
    except OSError:
        return 0o600


def give_mode(fd: int, created_with: int, umask: int) -> None:
    if created_with == 0o600:
        os.fchmod(fd, 0o666 & ~umask)


def _rewrite(path: str, data: bytes, umask: int) -> None:
    flags = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC
    created = mode = creation_mode(path)
    try:  # new: the user's umask, not the proxy's
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:  # an existing file, or a symlink (perhaps dangling) to follow
        try:
            fd = os.open(path, flags | os.O_TRUNC)
            created = 0
        except FileNotFoundError:  # a dangling symlink: cc1's fopen creates its target
            mode = created = creation_mode(os.path.realpath(path))
            fd = os.open(path, flags | os.O_CREAT | os.O_TRUNC, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OutputError(f"{path} changed while the job ran")
        give_mode(fd, created, umask)
        write_all(fd, data)
    finally:
        os.close(fd)


def _replace_atomically(path: str, data: bytes, umask: int) -> None:
    """Write path so that no reader ever sees a partial file (make -j, a killed build), with
    the permissions the user's umask gives (the proxy's own umask may differ)."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(
        directory, f".{os.path.basename(path)}.jailcc-{os.getpid()}-{threading.get_ident()}"
    )
    mode = creation_mode(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            give_mode(fd, mode, umask)
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:  # noqa: SIM105 - contextlib costs milliseconds of every compile's start
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
