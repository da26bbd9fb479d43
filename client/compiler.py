"""Finding the real compiler: `jailcc gcc-12 ...`, `jailcc /usr/bin/gcc ...`, or masquerade
mode (a symlink named gcc, g++, cc, c++, clang... pointing at jailcc, early on PATH), never
finding jailcc itself."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator


def _is_jailcc(path: str, ours: set[str]) -> bool:
    try:
        return os.path.realpath(path) in ours
    except OSError:
        return False


def find_compiler(
    name: str, self_path: str, path_env: str | None = None, cwd: str = ""
) -> str | None:
    """The compiler called `name` (a path, or a name looked up on PATH), skipping any entry
    that is jailcc itself (our masquerade symlinks), native or Python. Relative paths are
    the caller's, from cwd (the proxy's own working directory is another)."""
    real = os.path.realpath(self_path)
    home = os.path.dirname(real)
    ours = {real, os.path.join(home, "jailcc"), os.path.join(home, "jailcc-py")}
    if "/" in name:
        name = os.path.join(cwd, name)
        return None if _is_jailcc(name, ours) else name
    path = os.environ.get("PATH", "") if path_env is None else path_env
    return next((c for c in on_path(name, path, cwd) if not _is_jailcc(c, ours)), None)


def on_path(name: str, path_env: str, cwd: str) -> Iterator[str]:
    """The executable files called `name` in path_env's directories, in order, as execvp
    would try them; an empty or relative entry is relative to cwd."""
    for directory in path_env.split(":"):
        candidate = os.path.join(cwd, directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            yield candidate


def local_arg0(typed: str | None, compiler: str, self_path: str) -> tuple[str, str | None]:
    """(argv[0], PATH) for running the compiler here: the name the user typed when looking it
    up on PATH finds this very file, as the compiler itself will (gcc finds its own directory
    so, and -v shows the name as COLLECT_GCC): then the run is the plain compile's exactly.
    Directories on the way whose entry of that name is jailcc (masquerade links) leave PATH
    first, as distcc does: nothing the compiler runs by name finds jailcc again (PATH: the new
    value, None to keep it). Any other file found first: the path, PATH as it is.
    client/jailcc.c local_arg0 does the same."""
    path = os.environ.get("PATH")
    if not typed or "/" in typed or path is None:
        return compiler, None
    real = os.path.realpath(self_path)
    home = os.path.dirname(real)
    ours = {real, os.path.join(home, "jailcc"), os.path.join(home, "jailcc-py")}
    kept: list[str] = []
    try:
        wanted = os.stat(compiler)
        dirs = path.split(":")
        for at, directory in enumerate(dirs):
            candidate = os.path.join(directory or ".", typed)
            if not os.access(candidate, os.X_OK):
                kept.append(directory)
            elif _is_jailcc(candidate, ours):
                continue  # a masquerade link: not on the compiler's PATH
            else:
                found = os.stat(candidate)
                if (found.st_dev, found.st_ino) != (wanted.st_dev, wanted.st_ino):
                    return compiler, None
                trimmed = ":".join(kept + dirs[at:])
                return typed, (None if trimmed == path else trimmed)
    except OSError:
        pass
    return compiler, None


def not_found(name: str) -> str:
    """What jailcc says when find_compiler finds no compiler called name."""
    return f"jailcc: cannot find the compiler {name!r} on PATH (jailcc itself skipped)\n"


def split_invocation(argv: list[str]) -> tuple[str | None, list[str], bool]:
    """(compiler name as given, its arguments, masquerading?) from jailcc's own argv."""
    invoked = os.path.basename(argv[0])
    if invoked.startswith("jailcc"):
        if len(argv) < 2:
            return None, [], False
        return argv[1], argv[2:], False
    return invoked, argv[1:], True


# What clang makes of the name it runs under (clang/lib/Driver/ToolChain.cpp, DriverSuffixes):
# the first suffix the name ends with sets the mode; whatever stands before the last "-" ahead
# of that suffix names the target ("aarch64-linux-gnu-clang" compiles for aarch64).
_CLANG_SUFFIXES = (
    ("clang", "gcc"),
    ("clang++", "g++"),
    ("clang-c++", "g++"),
    ("clang-cc", "gcc"),
    ("clang-cpp", "cpp"),
    ("clang-g++", "g++"),
    ("clang-gcc", "gcc"),
    ("clang-cl", "cl"),
    ("cc", "gcc"),
    ("cpp", "cpp"),
    ("cl", "cl"),
    ("++", "g++"),
    ("flang", "flang"),
    ("clang-dxc", "dxc"),
)


def _clang_suffix(name: str) -> tuple[int, str] | None:
    for suffix, mode in _CLANG_SUFFIXES:
        if name.endswith(suffix):
            return len(name) - len(suffix), mode
    return None


def clang_mode(name: str) -> tuple[str, str]:
    """(target prefix, mode) that clang takes from the name it is run under, as its driver
    does: the mode "gcc", "g++", "cpp", "cl", "flang" or "dxc"; the prefix "" when the name
    names no target. A version after the name is ignored, as clang does ("clang++-16")."""
    name = os.path.basename(name).lower()
    found = _clang_suffix(name)
    if found is None:  # "clang++3.5"
        name = name.rstrip("0123456789.")
        found = _clang_suffix(name)
    if found is None and "-" in name:  # "clang++-tot", "clang-16"
        name = name[: name.rfind("-")]
        found = _clang_suffix(name)
    if found is None:
        return "", "gcc"
    position, mode = found
    dash = name.rfind("-", 0, position + 1)
    return ("" if dash < 0 else name[:dash]), mode


def is_clang(compiler: str) -> bool:
    """Whether the compiler at this path (symlinks followed) is a clang binary."""
    return os.path.basename(os.path.realpath(compiler)).startswith("clang")


def clang_name_problem(name: str) -> str | None:
    """Why clang (is_clang), run under this name, cannot go remote (None: it can). The jail
    runs the image's clang as "clang" or "clang++" (jobs/tree.py, CLANG_DRIVERS): a name
    that also sets a target, or a mode other than those two, would compile otherwise."""
    target, mode = clang_mode(name)
    if target:
        return f"{os.path.basename(name)} compiles for {target}, by its name"
    if mode not in ("gcc", "g++"):
        return f"{os.path.basename(name)} runs clang in its {mode} mode"
    return None
