"""Check an image's whole tree against its manifest: contents, symlinks, nothing extra."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

from jailcc.images import squashfs
from jailcc.images.errors import ImageError
from jailcc.images.manifest import MANIFEST_PATH, Manifest, sha256_file
from jailcc.images.squashfs import read_manifest


class VerifyError(ImageError):
    """The image does not match its manifest."""


def verify_image(image: str) -> Manifest:
    """Return the manifest if every file matches it; raise VerifyError naming the first problem.

    The image is extracted into a temporary directory (removed afterwards) rather than
    mounted, so no root is needed.
    """
    manifest = read_manifest(image)
    tmp = tempfile.mkdtemp(prefix="jailcc-verify-")
    try:
        dest = os.path.join(tmp, "root")
        squashfs.extract(image, dest)
        problem = first_problem(dest, manifest)
        if problem is None and os.geteuid() != 0:
            problem = squashfs.first_not_root_owned(image)  # unsquashfs kept no owners
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if problem is not None:
        raise VerifyError(f"{image}: {problem}; rebuild the image with jailcc-image build")
    return manifest


def first_problem(root: str, manifest: Manifest) -> str | None:
    """The first (in path order) difference between the tree at `root` and `manifest`."""
    found = _scan(root)
    expected = {**dict.fromkeys(manifest.files, "file"), **dict.fromkeys(manifest.symlinks, "link")}
    expected[MANIFEST_PATH] = "file"
    for path in sorted(found.keys() | expected.keys()):
        st = found.get(path)
        want = expected.get(path)
        if st is None:
            return f"{path} is missing"
        mode = st.st_mode
        if mode & (stat.S_ISUID | stat.S_ISGID):
            return f"{path} has a setuid/setgid bit"
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
            return f"{path} is not owned by root"  # unsquashfs keeps owners only as root
        kind = _kind(mode)
        if want is None:
            if kind == "directory":
                continue  # directories are implied by the paths they hold
            return f"{path} ({kind}) is not in the manifest"
        if want == "file" and kind != "regular file":
            return f"{path} is a {kind}, the manifest lists a regular file"
        if want == "link" and kind != "symlink":
            return f"{path} is a {kind}, the manifest lists a symlink"
        if want == "link":
            target = os.readlink(root + path)
            if target != manifest.symlinks[path]:
                return f"{path} points to {target}, the manifest says {manifest.symlinks[path]}"
        elif path != MANIFEST_PATH and sha256_file(root + path) != manifest.files[path]:
            return f"{path}: content differs from the manifest"
    return None


def _scan(root: str) -> dict[str, os.stat_result]:
    """{image path: lstat} of everything under root (symlinks are not followed)."""
    out: dict[str, os.stat_result] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root + rel if rel else root) as it:
            for entry in it:
                path = f"{rel}/{entry.name}"
                out[path] = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(path)
    return out


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    return "special file"
