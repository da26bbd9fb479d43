"""The toolchain images a server offers, indexed by compiler identity, and kept in step with
the files: the --toolchain-image files and every *.img in the image directory, rescanned on
SIGHUP (added, replaced, retired) without dropping a running job or connection.

Each version of an image has a mount name of its own in the sandbox: the image's name for
those mounted at start-up, `NAME@N` for every later one. A connection's jail keeps the version
it was built from until it ends, and a jail kept for reuse (jail_cache) is never taken for a
newer version, since reuse goes by mount name.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from jailcc.images.compilers import CompilerEntry, ImageCompilers
from jailcc.images.directory import IMAGE_DIR, dir_images
from jailcc.images.errors import ImageError

log = logging.getLogger("jailccd")


@dataclass(frozen=True)
class Offer:
    image: str  # the mount name of the image version that serves it (see the docstring)
    compiler: CompilerEntry


@dataclass(frozen=True)
class Loaded:
    path: str
    mount: str
    stamp: tuple[int, ...]  # device, inode, size, mtime: a file replaced or rewritten differs
    manifest: ImageCompilers  # what we keep of its manifest


class Mounter(Protocol):
    """The sandbox's side of it (sandbox/api.py)."""

    def mount_image(self, name: str, path: str) -> None: ...
    def retire_image(self, name: str) -> None: ...


def name_images(paths: list[str], usable: Callable[[str], bool] = os.path.isfile) -> dict[str, str]:
    """Each image path by its name (the file name without .img), with clear errors for a
    missing image or two images of one name."""
    images: dict[str, str] = {}
    for path in paths:
        name = Path(path).name.removesuffix(".img")
        if name in images:
            raise ImageError(f"two toolchain images are named {name!r}: rename one")
        if not usable(path):
            raise ImageError(
                f"toolchain image {path} does not exist: build one with"
                " `jailcc-image build --headers --compiler /usr/bin/gcc-12 -o gcc-12.img`"
            )
        images[name] = path
    return images


def image_dir(given: str | None) -> str | None:
    """The image directory in use, resolved: the one given (which must exist), else the
    default if it exists."""
    if given is None and not os.path.isdir(IMAGE_DIR):
        return None
    given = given or IMAGE_DIR
    if not os.path.isdir(given):
        raise ImageError(f"--image-dir {given}: no such directory")
    info = os.stat(given)
    if info.st_uid != 0 or info.st_mode & 0o022:  # the launcher refuses it too, later
        raise ImageError(
            f"image directory {given}: must be owned by root and writable by no one else"
        )
    return os.path.realpath(given)


def _stamp(path: str) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


# An image's compilers, the whole image checked against its manifest when asked
# (monitor/unprivileged.py).
Inspect = Callable[[str, bool], ImageCompilers]


class Catalog:
    def __init__(self, paths: list[str], directory: str | None, inspect: Inspect) -> None:
        self.explicit = {n: os.path.realpath(p) for n, p in name_images(paths).items()}
        self.directory = directory
        self.images: dict[str, str] = {}  # mount name -> path: what the sandbox mounts at start
        self.manifests: dict[str, ImageCompilers] = {}  # by image name
        self.by_identity: dict[str, Offer] = {}
        self._loaded: dict[str, Loaded] = {}
        self._mounts = 0
        self._lock = threading.Lock()
        self._inspect = inspect
        for name, path in self.explicit.items():
            self._loaded[name] = Loaded(path, name, _stamp(path), inspect(path, False))
        self.images = {v.mount: v.path for v in self._loaded.values()}
        self._publish()

    def wanted(self) -> tuple[dict[str, str], list[str]]:
        """The image files to serve now by name, and the reasons any were left out."""
        found, skipped = dir_images(self.directory)
        wanted = {n: p for n, p in self.explicit.items() if os.path.isfile(p)}
        skipped += [f"{p}: gone" for n, p in self.explicit.items() if n not in wanted]
        for name, path in found.items():
            if name in self.explicit:
                skipped.append(f"{path}: --toolchain-image {self.explicit[name]} has its name")
            else:
                wanted[name] = path
        return wanted, skipped

    def sync(self, mounter: Mounter) -> None:
        """Serve what the files say now: add new images, replace changed ones, retire those
        gone. A bad image is logged with the reason and skipped (a changed one keeps its last
        good version); nothing here stops the server."""
        from jailcc.sandbox.api import SandboxError

        with self._lock:
            wanted, skipped = self.wanted()
            for reason in skipped:
                log.warning("image skipped: %s", reason)
            for name in [n for n in self._loaded if n not in wanted]:
                old = self._loaded.pop(name)
                self._publish()  # no new connection gets it; running ones keep their jail
                self._retire(mounter, old)
                log.info("image retired: %s (%s)", name, old.path)
            for name, path in wanted.items():
                try:
                    self._load(mounter, name, path)
                except (ImageError, SandboxError, OSError) as exc:
                    log.error("image skipped: %s: %s", path, exc)

    def _load(self, mounter: Mounter, name: str, path: str) -> None:
        old = self._loaded.get(name)
        stamp = _stamp(path)
        if old is not None and (old.path, old.stamp) == (path, stamp):
            return
        manifest = self._inspect(path, True)  # a file still being copied in fails here
        self._mounts += 1
        mount = f"{name}@{self._mounts}"
        mounter.mount_image(mount, path)
        self._loaded[name] = Loaded(path, mount, stamp, manifest)
        self._publish()
        compilers = ", ".join(c.name for c in manifest.compilers)
        if old is None:
            log.info("image added: %s (%s) from %s", name, compilers, path)
        else:
            self._retire(mounter, old)
            log.info("image replaced: %s (%s) from %s", name, compilers, path)

    @staticmethod
    def _retire(mounter: Mounter, old: Loaded) -> None:
        from jailcc.sandbox.api import SandboxError

        try:
            mounter.retire_image(old.mount)
        except SandboxError as exc:
            log.error("image %s: retiring %s: %s", old.path, old.mount, exc)

    def _publish(self) -> None:
        """Swap in new tables whole: server threads read them without a lock."""
        by_identity: dict[str, Offer] = {}
        for loaded in self._loaded.values():
            for compiler in loaded.manifest.compilers:
                # The first image offering an identity wins; identical compilers are identical.
                by_identity.setdefault(compiler.identity, Offer(loaded.mount, compiler))
        self.manifests = {n: v.manifest for n, v in self._loaded.items()}
        self.by_identity = by_identity

    def describe(self) -> list[dict[str, object]]:
        """What the hello frame tells clients."""
        return [
            {
                "name": name,
                "compilers": [
                    {
                        "name": c.name,
                        "identity": c.identity,
                        "version": c.version,
                        "target": c.target,
                    }
                    for c in manifest.compilers
                ],
            }
            for name, manifest in self.manifests.items()
        ]
