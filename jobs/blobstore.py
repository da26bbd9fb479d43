"""The blobs of tree jobs: content-addressed by "sha256:<hex>", the digest recomputed on the
way in, at most `cap` bytes, least recently used first out.

SharedBlobStore is the user's store on this server, a tmpfs the launcher hands to the init of
every jail of that user's (and of no other) as a descriptor on no path, which no job inherits:
a blob one connection sent serves the user's jobs on all their connections, for the next build
too. Every jail's init writes it (each as its own throwaway uid), so an init trusts no file
there: it checks a blob's digest when it first reads that file, and again whenever the file
changed since (its inode, ctime or size; only another of the user's inits, taken over, could
change one without all three moving).
BlobStore keeps the blobs in the init's memory instead, for a jail that was given no store.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
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

    def lookup(self, digest: str) -> bytes | None:
        """A blob held, now the most recently used, or None."""
        data = self._blobs.get(digest)
        if data is not None:
            self._blobs.move_to_end(digest)
        return data

    def end_job(self) -> None:
        """Nothing to let go of: the blobs are the store."""

    def memory(self) -> int:
        """The bytes this store keeps in memory between jobs."""
        return self.total

    def clear(self) -> None:
        self._blobs.clear()
        self.total = 0

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


class SharedBlobStore:
    """The user's blob store (a directory of files named by digest), with the blobs of the
    current job held in memory from the moment the job asks for them: another jail evicting a
    file cannot take a blob from a job that has started."""

    MAX_CHECKED = 200_000  # files whose digest this jail checked, remembered

    def __init__(self, store: int, cap: int = DEFAULT_CAP) -> None:
        self.cap = cap
        # The store's root, from the launcher's descriptor of it (a detached mount: ".." from
        # its root stays there), opened for listing.
        self._dir = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=store)
        # digest -> (inode, ctime, size) of the file checked: any change to it moves its ctime.
        self._checked: dict[str, tuple[int, int, int]] = {}
        self._current: dict[str, bytes] = {}

    def missing(self, digests: Iterable[str]) -> list[str]:
        """The digests the store lacks, each once, in the order given; the rest are read now
        and held for the job (get)."""
        self._current = {}
        wanted: list[str] = []
        for digest in dict.fromkeys(digests):
            data = self._read(digest)
            if data is None:
                wanted.append(digest)
            else:
                self._current[digest] = data
        return wanted

    def lookup(self, digest: str) -> bytes | None:
        """A blob of the store, its digest checked, or None."""
        return self._read(digest)

    def get(self, digest: str) -> bytes:
        """A blob of the current job (KeyError otherwise)."""
        return self._current[digest]

    def end_job(self) -> None:
        """Let go of the current job's blobs: a jail kept for later holds no job's files."""
        self._current = {}

    def memory(self) -> int:
        """Nothing in memory between jobs: the files are the tmpfs's (counted against the
        memory of the jail that wrote each, and --store-mb for the user's)."""
        return 0

    def clear(self) -> None:
        self._current = {}

    def add(self, digest: str, data: bytes, keep: Collection[str] = ()) -> None:
        """Hold data for the current job once it is checked to be its digest, and share it in
        the store, evicting the least recently read files that are not in keep to make room
        (a store that stays full only means the blob is not kept)."""
        if digest_of(data) != digest:
            raise BlobMismatch(f"a blob sent as {digest[:80]} has other content")
        if len(data) > self.cap:
            raise StoreFull(f"a blob of {len(data)} bytes is larger than the store")
        self._current[digest] = data
        for attempt in range(2):
            try:
                self._write(digest, data)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or attempt:
                    return
                self._evict(len(data) + self.cap // 8, keep)

    def _name(self, digest: str) -> str:
        name = digest.removeprefix(PREFIX)
        if len(name) != 64 or not name.isalnum() or not name.isascii():
            raise BlobMismatch(f"not a sha256 digest: {digest[:80]}")
        return name

    def _read(self, digest: str) -> bytes | None:
        name = self._name(digest)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=self._dir)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > self.cap:
                return None
            data = _read_all(fd, info.st_size)
        except OSError:
            return None
        finally:
            os.close(fd)
        identity = (info.st_ino, info.st_ctime_ns, info.st_size)
        if self._checked.get(digest) != identity:
            if len(data) != info.st_size or digest_of(data) != digest:
                return None  # spoilt, or being replaced: ask the client for it
            if len(self._checked) >= self.MAX_CHECKED:
                self._checked.clear()
            self._checked[digest] = identity
        return data

    def _write(self, digest: str, data: bytes) -> None:
        name = self._name(digest)
        temporary = f".{name}.{os.urandom(6).hex()}"
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444, dir_fd=self._dir
        )
        try:
            with open(fd, "wb", closefd=True) as out:
                out.write(data)
            os.rename(temporary, name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        except OSError:
            with contextlib.suppress(OSError):  # another init may have evicted it already
                os.unlink(temporary, dir_fd=self._dir)
            raise

    def _evict(self, wanted: int, keep: Collection[str]) -> None:
        """Remove the least recently read files (the launcher mounts the store with
        strictatime) until wanted bytes are free, never the current job's."""
        kept = {digest.removeprefix(PREFIX) for digest in keep}
        files: list[tuple[int, str]] = []
        for name in os.listdir(self._dir):
            if (name[1:65] if name.startswith(".") else name) in kept:  # ".": being written
                continue
            try:
                files.append(
                    (os.stat(name, dir_fd=self._dir, follow_symlinks=False).st_atime_ns, name)
                )
            except OSError:
                continue
        freed = 0
        for _, name in sorted(files):
            if freed >= wanted:
                break
            try:
                size = os.stat(name, dir_fd=self._dir, follow_symlinks=False).st_size
                os.unlink(name, dir_fd=self._dir)
            except OSError:
                continue  # gone already: another jail evicted it
            freed += size


def _read_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = os.read(fd, remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
