"""Finding the real compiler: `jailcc gcc-12 ...`, `jailcc /usr/bin/gcc ...`, or masquerade
mode (a symlink named gcc, g++, cc, c++, clang... pointing at jailcc, early on PATH), never
finding jailcc itself."""

from __future__ import annotations

import os


def _is_jailcc(path: str, ours: set[str]) -> bool:
    try:
        return os.path.realpath(path) in ours
    except OSError:
        return False


def find_compiler(name: str, self_path: str, path_env: str | None = None) -> str | None:
    """The compiler called `name` (a path, or a name looked up on PATH), skipping any entry
    that is jailcc itself (our masquerade symlinks), native or Python."""
    real = os.path.realpath(self_path)
    home = os.path.dirname(real)
    ours = {real, os.path.join(home, "jailcc"), os.path.join(home, "jailcc-py")}
    if "/" in name:
        return None if _is_jailcc(name, ours) else name
    for directory in (os.environ.get("PATH", "") if path_env is None else path_env).split(":"):
        candidate = os.path.join(directory or ".", name)
        usable = os.path.isfile(candidate) and os.access(candidate, os.X_OK)
        if usable and not _is_jailcc(candidate, ours):
            return candidate
    return None


def split_invocation(argv: list[str]) -> tuple[str | None, list[str], bool]:
    """(compiler name as given, its arguments, masquerading?) from jailcc's own argv."""
    invoked = os.path.basename(argv[0])
    if invoked.startswith("jailcc"):
        if len(argv) < 2:
            return None, [], False
        return argv[1], argv[2:], False
    return invoked, argv[1:], True
