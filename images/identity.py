"""Compiler identity: a content hash of the binaries that decide a compiler's output.

The client calls compiler_identity() for its local compiler on every compile, so a repeated
call costs a few stat() calls: the result is cached in $XDG_CACHE_HOME/jailcc/identity.v1,
keyed by (resolved path, mtime_ns, ctime_ns, size, inode) of every binary that went into it.
This module imports only `os` up front; probing and hashing are imported on a cache miss.

What the identity covers (roles are hashed, not paths, so a relocated copy of the same
compiler has the same identity):
- gcc/g++: the driver, cc1 (and cc1plus for a C++ driver), and the assembler gcc runs;
- clang: the clang binary (one binary for clang and clang++, -cc1 runs in-process, the
  assembler is integrated);
- plus, for both, the shared libraries that hold the toolchain's own code: libLLVM and
  libclang-cpp (nearly all of clang lives there; Debian's clang binary is 145 KB), and
  binutils' libbfd/libopcodes/libctf/libsframe (gas writes its ELF output through libbfd).
General-purpose libraries (glibc, libstdc++, zlib, zstd, gmp/mpfr/mpc, isl, icu...) are left
out: they are ABI-stable and security updates to them would otherwise split the farm into
mismatching identities for no change in output.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs ~8 ms to import; type checkers treat this name specially
if TYPE_CHECKING:
    from jailcc.images.probe import CompilerInfo

FORMAT = "jailcc-identity-1"
TOOLCHAIN_LIB_PREFIXES = ("libLLVM", "libclang", "libbfd", "libopcodes", "libctf", "libsframe")
_CACHE_NAME = "identity.v1"
_CACHE_MAX_ENTRIES = 64
_FS = "\x1f"  # field separator inside a part; tab separates parts, newline separates entries


def compiler_identity(path: str) -> str:
    """Return "sha256:<hex>" identifying the compiler driver at `path` (path or PATH name).

    Raises jailcc.images.errors.ImageError if `path` is not a usable gcc or clang.
    """
    found = _which(path)
    driver = os.path.realpath(found) if found else None
    cache = _cache_file()
    if driver is not None:
        entries = _read_cache(cache)
        hit = entries.get(driver)
        if hit is not None and _still_valid(hit[1]):
            return hit[0]
    # Cache miss: this is the slow path (a few compiler runs, hashing ~10-200 MB).
    from jailcc.images import probe
    from jailcc.images.manifest import sha256_file

    info = probe.probe_compiler(path)
    parts = identity_parts(info)
    ident = identity_from_digests({role: sha256_file(real) for role, _lookup, real in parts})
    driver = os.path.realpath(info.path)
    _store(cache, driver, ident, parts)
    return ident


def compiler_of(identity: str) -> str | None:
    """The compiler (its resolved path) this machine last identified as ``identity``, from the
    cache compiler_identity keeps; None if there is none."""
    for driver, (ident, _) in _read_cache(_cache_file()).items():
        if ident == identity:
            return driver
    return None


def identity_parts(info: CompilerInfo) -> list[tuple[str, str, str]]:
    """(role, lookup, resolved path) of every file the identity covers, for a probed compiler.

    `lookup` is how the file is found again (absolute path, or a bare name searched on PATH)
    so that a cached identity can be revalidated with a few stat() calls.
    """
    from jailcc.images import collect

    parts: list[tuple[str, str, str]] = []
    libs: dict[str, str] = {}
    for prog in info.programs:
        real = os.path.realpath(prog.path)
        parts.append((prog.role, prog.lookup, real))
        for name, lib in collect.shared_libraries(real):
            if name.startswith(TOOLCHAIN_LIB_PREFIXES):
                libs.setdefault(name, lib)
    parts.extend((f"lib:{name}", lib, os.path.realpath(lib)) for name, lib in sorted(libs.items()))
    return parts


def identity_from_digests(digests: dict[str, str]) -> str:
    """Combine {role: sha256 hex} into the identity string. Build and client both use this."""
    import hashlib

    text = FORMAT + "\n" + "".join(f"{role} {digests[role]}\n" for role in sorted(digests))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _which(name: str) -> str | None:
    # Same rule as probe.which, repeated here to keep the hit path free of imports. An
    # absolute path stays as it is: realpath() then resolves ".." after symlinks correctly.
    if "/" in name:
        return name if os.path.isabs(name) else os.path.abspath(name)
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return os.path.abspath(cand)
    return None


def _cache_file() -> str:
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec says to ignore relative values
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jailcc", _CACHE_NAME)


def _stat_key(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_mtime_ns}{_FS}{st.st_ctime_ns}{_FS}{st.st_size}{_FS}{st.st_ino}"


def _still_valid(parts: list[str]) -> bool:
    """Each part is "role FS lookup FS real FS stat-key": re-find, re-resolve and re-stat."""
    try:
        for part in parts:
            _role, lookup, real, key = part.split(_FS, 3)
            found = _which(lookup)
            if found is None or os.path.realpath(found) != real or _stat_key(real) != key:
                return False
    except (OSError, ValueError):
        return False
    return True


def _read_cache(cache: str) -> dict[str, tuple[str, list[str]]]:
    """{driver real path: (identity, parts)}; a missing or damaged cache is just empty."""
    entries: dict[str, tuple[str, list[str]]] = {}
    try:
        with open(cache, encoding="utf-8") as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                if len(fields) >= 3 and fields[1].startswith("sha256:"):
                    entries[fields[0]] = (fields[1], fields[2:])
    except (OSError, UnicodeDecodeError):
        pass
    return entries


def _store(cache: str, driver: str, ident: str, parts: list[tuple[str, str, str]]) -> None:
    """Add an entry, atomically (parallel compiles race here; the last writer wins)."""
    try:
        fields = [
            f"{role}{_FS}{lookup}{_FS}{real}{_FS}{_stat_key(real)}" for role, lookup, real in parts
        ]
    except OSError:
        return
    if any(c in s for s in [driver, *fields] for c in "\t\n") or _FS in driver:
        return  # not representable in the cache format; stay uncached
    entries = _read_cache(cache)
    entries.pop(driver, None)
    entries[driver] = (ident, fields)  # newest last; the oldest are dropped first
    keep = list(entries.items())[-_CACHE_MAX_ENTRIES:]
    tmp = f"{cache}.{os.getpid()}.{os.urandom(4).hex()}.tmp"  # threads and processes race
    try:
        os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines("\t".join([d, i, *p]) + "\n" for d, (i, p) in keep)
        os.replace(tmp, cache)
    except OSError:
        try:  # noqa: SIM105 (contextlib would cost an import on the client's path)
            os.unlink(tmp)
        except OSError:
            pass
