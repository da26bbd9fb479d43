"""Read, and with --verify check, a toolchain image for jailccd, as the network service's uid.

jailccd runs as root. It opens an image and starts this program with the open file
(monitor/unprivileged.py), so that unsquashfs and the manifest's parser work on an image's
bytes as an unprivileged user, never as root. Prints the compilers the manifest names (all root
keeps of it: images/compilers.py) as JSON; on failure, the reason on stderr and exit status 1.

Run as: python -m jailcc.images.inspect --fd N --name PATH [--verify]
"""

from __future__ import annotations

import argparse
import os
import sys

from jailcc.images.errors import ImageError
from jailcc.images.squashfs import read_manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jailcc-image-inspect", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the image, open for reading")
    parser.add_argument("--name", required=True, help="the image's path, for messages")
    parser.add_argument("--verify", action="store_true", help="check every file first")
    args = parser.parse_args(argv)
    # Our own descriptor by a name unsquashfs (a child of ours, of our uid) can open.
    path = f"/proc/{os.getpid()}/fd/{args.fd}"
    try:
        if args.verify:
            from jailcc.images.verify import verify_image

            manifest = verify_image(path)
        else:
            manifest = read_manifest(path)
    except ImageError as exc:
        print(str(exc).replace(path, args.name), file=sys.stderr)
        return 1
    sys.stdout.write(manifest.summary.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
