"""Build the read log (readlog.c, PROTOCOL.md "tree jobs") into an image being staged.

It is compiled with the image's own gcc, so it links against the very C library the image
carries. Without a gcc in the image, or when that gcc cannot build a shared library here, the
image simply has no read log: the jail then learns a -MMD job's reads from a second,
preprocessing-only pass, as before.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable

from jailcc import READ_LOG_LIBRARY

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "readlog.c")


def add_read_log(root: str, gcc: str, log: Callable[[str], None]) -> dict[str, str]:
    """Compile readlog.c with gcc into root + READ_LOG_LIBRARY: {image path: sha256 hex} of
    what it added (nothing when it cannot be built)."""
    target = root + READ_LOG_LIBRARY
    parent = os.path.dirname(target)
    os.makedirs(parent, 0o755, exist_ok=True)
    # -z defs: every symbol from the C library itself (dlsym is in libc.so.6 since glibc 2.34),
    # so that the image, which holds cc1's libraries, holds all the log needs.
    argv = [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Wl,-z,defs", "-o", target, SOURCE]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"read log: not built ({exc}); -MMD tree jobs will need a second pass")
        return {}
    if run.returncode != 0:
        first = (run.stderr.strip().splitlines() or ["no message"])[0]
        log(f"read log: {gcc} could not build it ({first}); -MMD tree jobs need a second pass")
        if os.path.exists(target):
            os.unlink(target)
        return {}
    os.chmod(target, 0o644)
    for d in _created_dirs(root, parent):
        os.chmod(d, 0o755)
    with open(target, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    log(f"read log: {READ_LOG_LIBRARY} built with {gcc}")
    return {READ_LOG_LIBRARY: digest}


def _created_dirs(root: str, directory: str) -> list[str]:
    found = []
    while directory != root and directory.startswith(root):
        found.append(directory)
        directory = os.path.dirname(directory)
    return found
