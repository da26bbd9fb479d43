"""The toolchain images a server offers, indexed by compiler identity."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jailcc.images.errors import ImageError
from jailcc.images.manifest import CompilerEntry, Manifest, read_manifest


@dataclass(frozen=True)
class Offer:
    image: str  # the image's name (its file name without .img)
    compiler: CompilerEntry


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
                " `jailcc-image build --compiler /usr/bin/gcc-12 -o gcc-12.img`"
            )
        images[name] = path
    return images


class Catalog:
    def __init__(self, paths: list[str]) -> None:
        self.images: dict[str, str] = {}
        self.manifests: dict[str, Manifest] = {}
        self.by_identity: dict[str, Offer] = {}
        for name, path in name_images(paths).items():
            manifest = read_manifest(path)
            self.images[name] = os.path.abspath(path)
            self.manifests[name] = manifest
            for compiler in manifest.compilers:
                # The first image offering an identity wins; identical compilers are identical.
                self.by_identity.setdefault(compiler.identity, Offer(name, compiler))
        if not self.images:
            raise ImageError("no toolchain image given: use --toolchain-image IMAGE")

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
