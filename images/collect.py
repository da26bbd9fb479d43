"""The file closure of a set of programs: the programs, their shared libraries, the ELF loader,
and every symlink met on the way to each of them.

Paths in an image are the host's paths, and every symlink on the host is reproduced as a
symlink with the same target text. So the ELF interpreter path, $ORIGIN runpaths and the gcc
driver's lookups of cc1/as resolve inside the image exactly as they do on the host.
"""

from __future__ import annotations

import os
import stat
import struct
import subprocess
from dataclasses import dataclass, field

from jailcc.images.errors import ImageError

_PT_INTERP = 3
_MAX_SYMLINKS = 40  # the kernel's limit (MAXSYMLINKS)


def elf_interp(path: str) -> str | None:
    """Return the ELF interpreter (PT_INTERP) of `path`, or None for a static executable.

    Parsed by hand (a few struct reads) so that identity computation needs no tool.
    Raises ImageError if `path` is not an ELF file.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or len(head) < 52:
                raise ImageError(
                    f"{path} is not an ELF executable (a wrapper script?); "
                    "give the real compiler driver"
                )
            end = "<" if head[5] == 1 else ">"
            if head[4] == 2:  # ELFCLASS64
                (phoff,) = struct.unpack_from(end + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
                ph_fmt, off_at, size_at = "QQ", 8, 32
            else:
                (phoff,) = struct.unpack_from(end + "I", head, 28)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 42)
                ph_fmt, off_at, size_at = "II", 4, 16
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                entry = table[i * phentsize : (i + 1) * phentsize]
                if len(entry) < size_at + 8:
                    break
                if struct.unpack_from(end + "I", entry)[0] != _PT_INTERP:
                    continue
                (offset,) = struct.unpack_from(end + ph_fmt[0], entry, off_at)
                (size,) = struct.unpack_from(end + ph_fmt[0], entry, size_at)
                f.seek(offset)
                return f.read(size).split(b"\0", 1)[0].decode()
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}") from None
    except (struct.error, UnicodeDecodeError):
        raise ImageError(f"{path} is not a valid ELF executable") from None
    return None


def shared_libraries(program: str) -> list[tuple[str, str]]:
    """Return (needed name, path as the loader finds it) for the whole dependency closure.

    Uses the program's own loader with --list: it applies the real search rules (RUNPATH,
    $ORIGIN, ld.so.cache, default dirs) without running the program. The environment is
    emptied so that LD_LIBRARY_PATH/LD_PRELOAD, absent in the jail, do not leak in.
    """
    interp = elf_interp(program)
    if interp is None:
        return []  # static executable
    try:
        out = subprocess.run(
            [interp, "--list", program],
            env={"LC_ALL": "C"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError as e:
        raise ImageError(f"cannot run the ELF loader {interp}: {e.strerror}") from None
    if out.returncode != 0:
        why = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ImageError(f"cannot list the libraries of {program}: {why[0]}")
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if " => " not in line:
            continue  # the vDSO, or the loader itself (added separately)
        name, where = line.split(" => ", 1)
        if where.startswith("not found"):
            raise ImageError(f"{program} needs {name}, which is not installed")
        path = where.rsplit(" (0x", 1)[0]
        libs.append((name, path))
    return libs


@dataclass
class Tree:
    """What goes into an image: host paths, which are also the paths inside the image."""

    files: set[str] = field(default_factory=set)  # regular files (physical paths)
    symlinks: dict[str, str] = field(default_factory=dict)  # link path -> target text
    dirs: set[str] = field(default_factory=set)  # physical directories

    def add(self, path: str) -> str:
        """Add the regular file `path` and every symlink on the way; return its physical path."""
        if not os.path.isabs(path):
            raise ImageError(f"internal error: relative path {path!r}")
        real = self._resolve([], path, [0])
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{path} is not a regular file")
        self.files.add(real)
        return real

    def _resolve(self, cur: list[str], path: str, hops: list[int]) -> str:
        # Component-by-component like the kernel's path walk, so ".." after a symlinked
        # directory goes to the parent of its target, as the loader's "$ORIGIN/../lib" does.
        parts = [] if path.startswith("/") else list(cur)
        for comp in path.split("/"):
            if comp in ("", "."):
                continue
            if comp == "..":
                if parts:
                    parts.pop()
                continue
            here = "/" + "/".join([*parts, comp])
            try:
                st = os.lstat(here)
            except OSError as e:
                raise ImageError(f"cannot find {here}: {e.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                hops[0] += 1
                if hops[0] > _MAX_SYMLINKS:
                    raise ImageError(f"too many levels of symlinks resolving {path}")
                target = os.readlink(here)
                self.symlinks[here] = target
                self._add_dirs(parts)  # the link's own directory must exist in the image
                parts = self._resolve(parts, target, hops).strip("/").split("/")
                parts = [p for p in parts if p]
            else:
                parts.append(comp)
        self._add_dirs(parts[:-1])
        return "/" + "/".join(parts)

    def _add_dirs(self, parts: list[str]) -> None:
        for i in range(1, len(parts) + 1):
            self.dirs.add("/" + "/".join(parts[:i]))


def collect(programs: list[str]) -> Tree:
    """Collect `programs` (absolute paths), their library closures and their loaders."""
    tree = Tree()
    for prog in programs:
        real = tree.add(prog)
        interp = elf_interp(real)
        if interp is not None:
            tree.add(interp)
        # A "$ORIGIN" runpath (clang's "$ORIGIN/../lib") expands to the executable's real
        # directory when /proc is mounted, as in the jail. Without /proc the loader cannot
        # expand it and searches its default directories instead; listing via the unresolved
        # path finds the libraries there (through ld.so.cache), so the image works either way.
        for run_as in dict.fromkeys([real, prog]):
            for _name, lib in shared_libraries(run_as):
                tree.add(lib)
    return tree


def add_directory(tree: Tree, top: str) -> int:
    """Add every regular file below `top` (symlinked directories followed, each once), with
    the symlinks on the way; the number of files."""
    count = 0
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.isfile(path):  # regular, or a symlink to one (dangling ones are skipped)
                tree.add(path)
                count += 1
    return count
