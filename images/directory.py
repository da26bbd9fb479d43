"""An image directory (jailccd's /var/lib/jailcc/images): which of its files are images that a
server serves, and why the others are not. jailccd's catalog and `jailcc-image list` read it
the same way; the privileged launcher checks names against the same pattern."""

from __future__ import annotations

import os
import re
import stat

from jailcc import IMAGE_NAME_PATTERN

IMAGE_DIR = "/var/lib/jailcc/images"  # jailccd's default image directory
IMAGE_NAME = re.compile(IMAGE_NAME_PATTERN)


def dir_images(directory: str | None) -> tuple[dict[str, str], list[str]]:
    """The *.img files in directory by name, and why any others named *.img are skipped."""
    found: dict[str, str] = {}
    skipped: list[str] = []
    if directory is None:
        return found, skipped
    for entry in sorted(os.listdir(directory)):
        if not entry.endswith(".img"):
            continue
        path = os.path.join(directory, entry)
        name = entry.removesuffix(".img")
        if not IMAGE_NAME.fullmatch(name):
            skipped.append(f"{path}: the name must be letters, digits and ._+- (at most 64)")
        elif not stat.S_ISREG(os.lstat(path).st_mode):
            skipped.append(f"{path}: not a regular file (symbolic links are not followed)")
        else:
            found[name] = path
    return found, skipped
