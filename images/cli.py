"""jailcc-image: build, show and verify toolchain images."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from jailcc import __version__
from jailcc.images import squashfs
from jailcc.images.directory import IMAGE_DIR, dir_images
from jailcc.images.errors import ImageError

PROG = "jailcc-image"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Build, show and verify jailcc toolchain images: read-only squashfs root "
        "filesystems holding what a gcc or clang needs to compile preprocessed C/C++ with "
        "-c/-S (driver, compiler proper, assembler, shared libraries, ELF loader) and a "
        "manifest at /.jailcc/manifest.json.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser(
        "build",
        help="build an image from installed compilers",
        description="Build an image from installed compilers. Progress goes to stderr; the "
        "image appears at OUTPUT only when complete.",
    )
    b.add_argument(
        "--compiler",
        action="append",
        required=True,
        metavar="PATH",
        help="a gcc, g++ or clang driver, e.g. /usr/bin/gcc-12 (repeat for several); its path "
        "inside the image is the path given, symlinks included",
    )
    b.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help="the image file to write, e.g. gcc-12.img (replaced atomically if it exists)",
    )
    b.add_argument(
        "--compression",
        choices=sorted(squashfs.COMPRESSORS),
        default=squashfs.DEFAULT_COMPRESSION,
        help="squashfs compression (default: %(default)s, level 1: fast to build, small, "
        "fast to read); lz4 builds a little faster but bigger, gzip is slowest",
    )
    b.add_argument(
        "--headers",
        action="store_true",
        help="also hold the compilers' system headers (every file of the directories that "
        "`COMPILER -E -v` searches for <...>; for clang, the crtbegin.o by which it finds "
        "libstdc++'s, and the names PATH gives its binary, such as /usr/bin/clang-16, since a "
        "tree job runs clang from the directory the user's was found in): tree jobs, which "
        "ship sources instead of preprocessed output, compile against them",
    )
    b.add_argument(
        "--no-read-log",
        dest="read_log",
        action="store_false",
        help="with --headers, leave out the read log (a small library built with the image's "
        "gcc that tells the jail every file a compile read): the jail then runs a second, "
        "preprocessing-only pass for gcc tree jobs with -MMD; for a C library too old to "
        "build it (before glibc 2.34), or to compare",
    )
    b.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")

    i = sub.add_parser(
        "info",
        help="print an image's manifest as JSON",
        description="Print an image's manifest as JSON (no root needed).",
    )
    i.add_argument("image", metavar="IMAGE", help="a toolchain image file")

    v = sub.add_parser(
        "verify",
        help="check every file of an image against its manifest",
        description="Check every file, symlink and mode in an image against its manifest. "
        "Exits non-zero naming the first mismatching, missing or extra file.",
    )
    v.add_argument("image", metavar="IMAGE", help="a toolchain image file")

    ls = sub.add_parser(
        "list",
        help="list the images in a directory",
        description="List the *.img files of a directory (default: jailccd's image directory):"
        " file, name, compilers with versions and short identities, size; with --verify,"
        " whether each verifies against its manifest.",
    )
    ls.add_argument("directory", nargs="?", metavar="DIR", help="default " + IMAGE_DIR)
    ls.add_argument("--verify", action="store_true", help="verify each image (slower)")
    return p


def _list(directory: str, verify: bool) -> bool:
    """One block per image; a bad one says why instead of its compilers. Whether every image
    is good (skipped or bad: False, the exit status says so)."""
    from jailcc.images.squashfs import read_manifest
    from jailcc.images.verify import verify_image

    if not os.path.isdir(directory):
        raise ImageError(f"no image directory {directory}: name the one to list")
    found, skipped = dir_images(directory)  # what jailccd would serve from it, and why not
    good = not skipped
    for reason in skipped:
        print(f"SKIPPED: {reason}")
    for name, path in found.items():
        entry = os.path.basename(path)
        size = os.path.getsize(path) / (1 << 20)
        try:
            manifest = verify_image(path) if verify else read_manifest(path)
        except ImageError as exc:
            print(f"{entry}  {size:.1f} MiB  BAD: {exc}")
            good = False
            continue
        verdict = "  verified" if verify else ""
        print(f"{entry}  name {name}  {size:.1f} MiB{verdict}")
        for c in manifest.compilers:
            print(f"    {c.name} {c.version} {c.target} {c.identity[:19]}")
    return good


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that clean up


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command == "build":
            from jailcc.images.build import build_image, progress

            log = (lambda _msg: None) if args.quiet else progress
            build_image(
                args.compiler,
                args.output,
                args.compression,
                log=log,
                headers=args.headers,
                read_log=args.read_log,
            )
        elif args.command == "list":
            if not _list(args.directory or IMAGE_DIR, args.verify):
                return 1
        elif args.command == "info":
            from jailcc.images.squashfs import read_manifest

            sys.stdout.write(read_manifest(args.image).to_json())
        else:
            from jailcc.images.verify import verify_image

            m = verify_image(args.image)
            print(f"{args.image}: ok ({len(m.files)} files, {len(m.symlinks)} symlinks)")
    except ImageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # anything the modules did not foresee, still on one line
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
