"""Ask a compiler driver what it is and which programs it runs for `-c`/`-S`."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from jailcc.images.collect import elf_interp
from jailcc.images.errors import ImageError

# Variables that change where a driver looks for its programs; the jail scrubs them too.
_SCRUB = ("GCC_EXEC_PREFIX", "COMPILER_PATH", "LIBRARY_PATH", "CCC_OVERRIDE_OPTIONS")
_TARGET_RE = re.compile(r"^[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)+$")
_VERSION_RE = re.compile(r"^\d+(\.\d+)*$")


@dataclass(frozen=True)
class Program:
    role: str  # "driver", "cc1", "cc1plus" or "as": stable names for the identity
    lookup: str  # how it is found: an absolute path, or a bare name searched on PATH
    path: str  # the absolute path found (symlinks not resolved)


@dataclass(frozen=True)
class CompilerInfo:
    name: str  # basename of the path given, e.g. "gcc-12"
    path: str  # absolute path given, symlinks kept: also its path inside the image
    kind: str  # "gcc" or "clang"
    version: str
    target: str
    programs: tuple[Program, ...]  # the driver first


def which(name: str, path_env: str | None = None) -> str | None:
    """shutil.which without importing shutil (this runs on the client's per-compile path)."""
    if "/" in name:
        return os.path.abspath(name)
    if path_env is None:
        path_env = os.environ.get("PATH", os.defpath)
    for d in path_env.split(os.pathsep):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return os.path.abspath(cand)
    return None


def is_cxx_driver(path: str) -> bool:
    """g++, c++, x86_64-linux-gnu-g++-12: a gcc driver that compiles C++ (needs cc1plus)."""
    return "++" in os.path.basename(os.path.realpath(path))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB and not k.startswith("LD_")}
    env["LC_ALL"] = "C"
    return env


def _run(path: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The compiler run with args in a scrubbed environment, in the C locale."""
    try:
        return subprocess.run(
            [path, *args],
            env=_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError as e:
        raise ImageError(f"cannot run {path}: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"{path} {' '.join(args)} did not finish in 60 s") from None


def _ask(path: str, *args: str) -> str:
    out = _run(path, *args)
    if out.returncode != 0:
        raise ImageError(
            f"{path} does not look like gcc or clang ({' '.join(args)} failed); "
            "give a gcc or clang driver"
        )
    return out.stdout.strip()


def _program(driver: str, role: str, major: str) -> Program:
    """Where the gcc driver finds `role` (cc1, cc1plus, as), as the driver itself decides."""
    lookup = _ask(driver, f"-print-prog-name={role}")
    if role.startswith("cc1"):
        # Only an absolute answer means found: gcc echoes the bare name when it has none.
        found = lookup if os.path.isabs(lookup) else None
        where = "in gcc's program directory"
        package = f"cpp-{major}" if role == "cc1" else f"g++-{major}"
    else:
        # A bare "as" is run from PATH (so the jail's PATH must hold the same directory).
        found = which(lookup) if lookup else None
        where, package = "on PATH", "binutils"
    if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise ImageError(
            f"{driver} cannot find its {role} {where}; install the package that provides it "
            f"(on Debian: {package})"
        )
    return Program(role, lookup, found)


def probe_compiler(path: str) -> CompilerInfo:
    """Identify the compiler driver at `path` (absolute, relative, or a name on PATH)."""
    found = which(path)
    if found is None or not os.path.exists(found):
        raise ImageError(
            f"compiler {path} not found; give the path of an installed gcc or clang driver, "
            "e.g. /usr/bin/gcc-12"
        )
    if not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise ImageError(f"compiler {found} is not an executable file")
    elf_interp(os.path.realpath(found))  # raises for scripts and other non-ELF files
    banner = _ask(found, "--version")
    kind = "clang" if "clang version" in banner else "gcc"
    target = _ask(found, "-dumpmachine")
    if not _TARGET_RE.match(target):
        raise ImageError(
            f"{found} does not look like gcc or clang (-dumpmachine gave {target[:40]!r}); "
            "give a gcc or clang driver"
        )
    version = _ask(found, "-dumpversion" if kind == "clang" else "-dumpfullversion")
    if not _VERSION_RE.match(version):
        raise ImageError(
            f"{found} does not look like gcc or clang (version {version[:40]!r}); "
            "give a gcc or clang driver"
        )
    programs = [Program("driver", found, found)]
    if kind == "gcc":
        major = version.split(".")[0]
        programs.append(_program(found, "cc1", major))
        if is_cxx_driver(found):
            programs.append(_program(found, "cc1plus", major))
        programs.append(_program(found, "as", major))
    # clang: -cc1 runs inside the driver binary and the assembler is integrated, so the
    # driver (plus its libraries) is everything. -fno-integrated-as is not supported.
    return CompilerInfo(
        name=os.path.basename(found),
        path=found,
        kind=kind,
        version=version,
        target=target,
        programs=tuple(programs),
    )


def system_include_dirs(info: CompilerInfo) -> list[str]:
    """The directories the compiler searches for <...> headers by default, as ``CC -E -v``
    lists them, for C and (for a C++ driver or clang) C++; those that exist, each once."""
    langs = ["c"]
    if info.kind == "clang" or is_cxx_driver(info.path):
        langs.append("c++")
    found: dict[str, None] = {}
    for lang in langs:
        out = _run(info.path, "-E", "-v", "-x", lang, "/dev/null")
        listing = False
        for line in out.stderr.splitlines():
            if line.startswith("#include <...> search starts here:"):
                listing = True
            elif line.startswith("End of search list."):
                listing = False
            elif listing and line.startswith(" ") and not line.endswith("(framework directory)"):
                path = os.path.normpath(line.strip())
                if os.path.isdir(path):
                    found[path] = None
    return list(found)


# The multilib directories below a GCC installation where clang looks for crtbegin.o.
_MULTILIB_DIRS = ("", "32", "x32", "64")


def gcc_installation_markers(info: CompilerInfo) -> list[str]:
    """For clang: the files by which its driver recognises the GCC installation it takes the
    C++ library's headers from (``clang -v``: "Selected GCC installation"), crtbegin.o in
    each of its multilib directories. Without them in the image, clang++ in the jail finds
    no <limits> at all, and every C++ tree job fails there."""
    if info.kind != "clang":
        return []
    selected = "Selected GCC installation: "
    for line in _run(info.path, "-v").stderr.splitlines():
        if line.startswith(selected):
            base = os.path.normpath(line[len(selected) :].strip())
            break
    else:
        return []
    found = (os.path.join(base, sub, "crtbegin.o") for sub in _MULTILIB_DIRS)
    return [path for path in found if os.path.isfile(path)]


# Where users' shells find compilers, besides the builder's own PATH.
_USUAL_PATH = ("/usr/local/bin", "/usr/bin", "/bin")


def clang_names_on_path(info: CompilerInfo, path_env: str | None = None) -> list[str]:
    """For clang: every name on PATH (and the usual bin directories) that runs this very
    binary (clang-16, clang++-16, cc where an alternative points there...). A tree job runs
    clang from the directory the user's was found in (clang looks for its GCC installation
    from there), which the image must hold: built from /usr/lib/llvm-16/bin/clang alone, it
    would have no /usr/bin."""
    if info.kind != "clang":
        return []
    binary = os.stat(info.path)
    path_env = os.environ.get("PATH", "") if path_env is None else path_env
    found = []
    for directory in dict.fromkeys([*path_env.split(os.pathsep), *_USUAL_PATH]):
        if not os.path.isabs(directory):
            continue
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat()  # the file it names, symlinks followed
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (binary.st_dev, binary.st_ino):
                found.append(entry.path)
    return sorted(found)
