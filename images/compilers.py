"""The compilers an image's manifest names: all of a manifest that jailccd's root process keeps
(monitor/catalog.py), read from the summary images/inspect.py prints for it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from jailcc.images.errors import ImageError

KINDS = ("gcc", "clang")


@dataclass(frozen=True)
class CompilerEntry:
    name: str  # e.g. "gcc-12"
    kind: str  # "gcc" or "clang"
    path: str  # the driver's path inside the image, e.g. "/usr/bin/gcc-12"
    version: str  # e.g. "12.2.0"
    target: str  # e.g. "x86_64-linux-gnu"
    identity: str  # "sha256:...", as compiler_identity() computes it on the host


@dataclass(frozen=True)
class ImageCompilers:
    compilers: tuple[CompilerEntry, ...]

    def to_json(self) -> str:
        return json.dumps({"compilers": [asdict(c) for c in self.compilers]})


def compiler_entry(c: object) -> CompilerEntry:
    """One manifest entry, checked (ValueError otherwise)."""
    if not isinstance(c, dict):
        raise ValueError
    fields = {k: c[k] for k in CompilerEntry.__dataclass_fields__}
    if not all(isinstance(v, str) and v and "\0" not in v for v in fields.values()):
        raise ValueError
    if fields["kind"] not in KINDS or not fields["path"].startswith("/"):
        raise ValueError
    if not fields["identity"].startswith("sha256:"):
        raise ValueError
    return CompilerEntry(**fields)


def parse_image_compilers(text: bytes, origin: str) -> ImageCompilers:
    """ImageCompilers.to_json's output, checked; ImageError names origin otherwise."""
    try:
        compilers = tuple(compiler_entry(c) for c in json.loads(text)["compilers"])
        if not compilers:
            raise ValueError
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError):
        raise ImageError(f"{origin}: a malformed list of compilers; rebuild the image") from None
    return ImageCompilers(compilers)
