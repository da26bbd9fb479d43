"""The small static C programs the sandbox ships into jails, built from their source in this
package with the host's C compiler and cached by content hash (the package carries no binary).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE_DIR = "/var/cache/jailcc"
SOURCES = Path(__file__).parent


class HelperUnavailable(Exception):
    pass


def build_static(source_name: str, cache_dir: str = CACHE_DIR) -> str:
    """Path of the static binary built from SOURCES/source_name, building it if needed."""
    source = SOURCES / source_name
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    target = os.path.join(cache_dir, f"{source.stem}-{digest}")
    if os.path.exists(target):
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise HelperUnavailable(f"no C compiler to build {source_name}: install gcc and libc6-dev")
    os.makedirs(cache_dir, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{source.stem}-")
    os.close(fd)
    try:
        proc = subprocess.run(
            [compiler, "-static", "-O2", "-o", tmp, str(source)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise HelperUnavailable(
                f"building {source_name} failed (is libc6-dev installed?):"
                f" {proc.stderr.strip()[:300]}"
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # atomic: concurrent builders each install a whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
