"""mksquashfs/unsquashfs calls, with their failures turned into one-line ImageErrors, and an
image's manifest read with them (never by root: jailccd has monitor/unprivileged.py do it)."""

from __future__ import annotations

import os
import subprocess

from jailcc.images.errors import ImageError
from jailcc.images.manifest import MANIFEST_PATH, Manifest, parse_manifest

# Measured on this project's 2-core machine, whole build / image size / cold read of every file:
# clang-16 (252 MB of files): zstd-1 0.9 s / 89 MB / 0.5 s, lz4 0.8 s / 119 MB / 0.4 s,
# gzip-1 2.2 s / 90 MB / 1.3 s. zstd at level 1 builds nearly as fast as lz4, 26% smaller.
COMPRESSORS: dict[str, list[str]] = {
    "zstd": ["-comp", "zstd", "-Xcompression-level", "1"],
    "lz4": ["-comp", "lz4"],
    "gzip": ["-comp", "gzip", "-Xcompression-level", "1"],
}
DEFAULT_COMPRESSION = "zstd"
FIXED_TIME = "0"  # every mtime and the superblock time: images depend only on their content


def _run(argv: list[str], what: str, timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    # mksquashfs refuses SOURCE_DATE_EPOCH together with -all-time/-mkfs-time.
    env.pop("SOURCE_DATE_EPOCH", None)
    env["LC_ALL"] = "C"
    try:
        return subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise ImageError(f"{argv[0]} not found; install squashfs-tools") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what} took longer than {timeout:.0f} s") from None


def _why(out: subprocess.CompletedProcess[bytes]) -> str:
    lines = (out.stderr or out.stdout).decode(errors="replace").strip().splitlines()
    why = lines[-1].strip() if lines else f"exit status {out.returncode}"
    return why.removeprefix("FATAL ERROR:").strip()


def _unreadable(image: str, why: str) -> str:
    return f"{image} is not a readable squashfs image ({why}); check the path, or rebuild it"


def make_image(root: str, out: str, compression: str = DEFAULT_COMPRESSION) -> None:
    """Pack the directory `root` into a new squashfs file `out` (which must not exist)."""
    argv = [
        "mksquashfs", root, out, "-noappend", "-quiet", "-no-progress",
        *COMPRESSORS[compression],
        "-all-root", "-no-xattrs",  # root-owned, nothing but plain files, links and dirs
        "-all-time", FIXED_TIME, "-mkfs-time", FIXED_TIME,
        "-reproducible",  # the default in 4.5, but say so: directory entries come out sorted
    ]  # fmt: skip
    result = _run(argv, "mksquashfs")
    if result.returncode != 0:
        raise ImageError(f"mksquashfs failed: {_why(result)}")


def _check_readable(image: str) -> None:
    if not os.path.exists(image):
        raise ImageError(f"image {image} not found; check the path")
    if not os.path.isfile(image):
        raise ImageError(f"image {image} is not a file")


def cat(image: str, inner: str) -> bytes | None:
    """Contents of the file `inner` in `image`, or None if the image has no such file."""
    _check_readable(image)
    result = _run(["unsquashfs", "-no-wildcards", "-cat", image, inner], "unsquashfs")
    if result.returncode == 0:
        return result.stdout
    why = _why(result)
    if "no matches for" in why:
        return None
    raise ImageError(_unreadable(image, why))


def extract(image: str, dest: str) -> None:
    """Extract the whole image into the new directory `dest` (it must not exist yet)."""
    _check_readable(image)
    argv = ["unsquashfs", "-no-xattrs", "-quiet", "-no-progress", "-strict-errors", "-d", dest,
            image]  # fmt: skip
    result = _run(argv, "unsquashfs")
    if result.returncode != 0:
        raise ImageError(_unreadable(image, _why(result)))


def first_not_root_owned(image: str) -> str | None:
    """The first entry of image not owned by root (uid and gid 0), from unsquashfs's numeric
    listing, which needs no root, or None."""
    result = _run(["unsquashfs", "-lln", image], "unsquashfs")
    if result.returncode != 0:
        raise ImageError(_unreadable(image, _why(result)))
    for line in result.stdout.decode(errors="replace").splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[1] != "0/0":
            path = fields[5].split(" -> ")[0].removeprefix("squashfs-root")
            return f"{path or '/'} is not owned by root"
    return None


def read_manifest(image_path: str) -> Manifest:
    """Read the manifest of a toolchain image without mounting it (no root needed).

    Raises ImageError for a missing, unreadable, non-squashfs, corrupt or manifest-less image.
    """
    data = cat(image_path, MANIFEST_PATH)
    if data is None:
        raise ImageError(
            f"{image_path} has no {MANIFEST_PATH}: not a jailcc toolchain image; "
            "build one with jailcc-image build"
        )
    return parse_manifest(data, image_path)
