"""The image manifest (/.jailcc/manifest.json), read_manifest() for the server, and the file
digest (sha256_file) the manifest, the compiler identity and verification all use.

Format 1:
    {"format": 1,
     "compilers": [{"name": "gcc-12", "kind": "gcc", "path": "/usr/bin/gcc-12",
                    "version": "12.2.0", "target": "x86_64-linux-gnu",
                    "identity": "sha256:..."}, ...],
     "files": {"/usr/lib/gcc/x86_64-linux-gnu/12/cc1": "<sha256 hex>", ...},
     "symlinks": {"/lib64": "usr/lib64", ...},
     "created_by": "jailcc-image 0.1.0"}
"files" lists every regular file but the manifest; "symlinks" every symlink with its target,
so that verify can check the whole tree. Serialized with sorted keys and no timestamps, so the
same compilers always give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from jailcc.images.compilers import CompilerEntry, ImageCompilers, compiler_entry
from jailcc.images.errors import ImageError

FORMAT = 1
MANIFEST_PATH = "/.jailcc/manifest.json"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

__all__ = [
    "MANIFEST_PATH",
    "CompilerEntry",
    "ImageError",
    "Manifest",
    "sha256_file",
]


def sha256_file(path: str) -> str:
    """The hex SHA-256 of a file's content, read in chunks (images hold files of 100+ MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class Manifest:
    compilers: tuple[CompilerEntry, ...]
    files: Mapping[str, str]  # image path -> sha256 hex (read-only mapping)
    symlinks: Mapping[str, str]  # image path -> target (read-only mapping)
    created_by: str

    @property
    def summary(self) -> ImageCompilers:
        """What jailccd's root keeps of it (images/compilers.py)."""
        return ImageCompilers(self.compilers)

    def compiler(self, name: str) -> CompilerEntry | None:
        return next((c for c in self.compilers if c.name == name), None)

    def to_json(self) -> str:
        doc = {
            "format": FORMAT,
            "compilers": [
                {k: getattr(c, k) for k in CompilerEntry.__dataclass_fields__}
                for c in self.compilers
            ],
            "files": dict(self.files),
            "symlinks": dict(self.symlinks),
            "created_by": self.created_by,
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def make_manifest(
    compilers: list[CompilerEntry], files: dict[str, str], symlinks: dict[str, str], created_by: str
) -> Manifest:
    return Manifest(
        compilers=tuple(compilers),
        files=MappingProxyType(dict(sorted(files.items()))),
        symlinks=MappingProxyType(dict(sorted(symlinks.items()))),
        created_by=created_by,
    )


def parse_manifest(text: str | bytes, origin: str) -> Manifest:
    """Parse and validate manifest JSON; `origin` names the image in error messages."""
    bad = f"{origin}: damaged manifest"
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ImageError(f"{bad} (not JSON); rebuild the image with jailcc-image build") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{bad} (not a JSON object); rebuild the image")
    if doc.get("format") != FORMAT:
        raise ImageError(
            f"{origin}: manifest format {doc.get('format')!r} is not {FORMAT}; "
            "rebuild the image with this version of jailcc-image"
        )
    try:
        compilers = tuple(compiler_entry(c) for c in doc["compilers"])
        files = doc["files"]
        symlinks = doc.get("symlinks", {})
        created_by = doc["created_by"]
        if not (
            isinstance(files, dict)
            and all(_abs(p) and isinstance(h, str) and _HEX64.match(h) for p, h in files.items())
            and isinstance(symlinks, dict)
            and all(_abs(p) and isinstance(t, str) and t for p, t in symlinks.items())
            and isinstance(created_by, str)
            and compilers
        ):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise ImageError(f"{bad} (missing or malformed fields); rebuild the image") from None
    return make_manifest(list(compilers), files, symlinks, created_by)


def _abs(p: object) -> bool:
    return isinstance(p, str) and p.startswith("/") and "\0" not in p
