"""The blobs of tree jobs, kept in the jail's init for the jail's life: content-addressed by
"sha256:<hex>", the digest recomputed on the way in, at most `cap` bytes, least recently used
first out.

A jail is kept for its user's next connection (monitor/jail_cache.py) and never given to
anyone else, so a user's second build finds the sources and headers of the first one here,
and the blobs one user sent are only ever seen by that user's jobs.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Collection, Iterable

DEFAULT_CAP = 128 * 1024 * 1024
PREFIX = "sha256:"


def digest_of(data: bytes) -> str:
    return PREFIX + hashlib.sha256(data).hexdigest()


class BlobMismatch(Exception):
    """A blob's bytes do not have the digest it was sent under."""


class StoreFull(Exception):
    """No room for a blob even after evicting everything the current job does not need."""


class BlobStore:
    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = cap
        self.total = 0
        self._blobs: OrderedDict[str, bytes] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, digest: object) -> bool:
        return digest in self._blobs

    def missing(self, digests: Iterable[str]) -> list[str]:
        """The digests not held, each once, in the order given; those held count as used."""
        wanted: list[str] = []
        seen: set[str] = set()
        for digest in digests:
            if digest in seen:
                continue
            seen.add(digest)
            if digest in self._blobs:
                self._blobs.move_to_end(digest)
            else:
                wanted.append(digest)
        return wanted

    def get(self, digest: str) -> bytes:
        """A blob held (KeyError otherwise), now the most recently used."""
        self._blobs.move_to_end(digest)
        return self._blobs[digest]

    def add(self, digest: str, data: bytes, keep: Collection[str] = ()) -> None:
        """Hold data under digest once it is checked to be its digest, evicting the least
        recently used blobs that are not in keep (the current job's) to make room."""
        if digest_of(data) != digest:
            raise BlobMismatch(f"a blob sent as {digest[:80]} has other content")
        if digest in self._blobs:
            self._blobs.move_to_end(digest)
            return
        if len(data) > self.cap:
            raise StoreFull(f"a blob of {len(data)} bytes is larger than the store")
        if self.total + len(data) > self.cap:
            for old in [d for d in self._blobs if d not in keep]:
                self.total -= len(self._blobs.pop(old))
                if self.total + len(data) <= self.cap:
                    break
            if self.total + len(data) > self.cap:
                raise StoreFull("the current job's blobs fill the store")
        self._blobs[digest] = data
        self.total += len(data)
