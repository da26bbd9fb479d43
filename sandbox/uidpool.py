"""Throwaway uids for jails, from a reserved range, never two live jails on one uid.

A uid is held by an flock on a file named after it in a shared directory, so separate launchers
on one machine (several jailccd, tests running side by side) never hand out the same uid, and a
launcher that dies releases its uids with its file descriptors.
"""

from __future__ import annotations

import fcntl
import os
import random

DEFAULT_BASE = 1_500_000_000  # far above any real account and the systemd dynamic ranges
DEFAULT_COUNT = 65536
LOCK_DIR = "/run/jailcc/uids"


class UidPoolExhausted(Exception):
    pass


class UidPool:
    def __init__(
        self, base: int = DEFAULT_BASE, count: int = DEFAULT_COUNT, lock_dir: str = LOCK_DIR
    ) -> None:
        if base < 65536 or count < 1 or base + count > 2**32 - 2:
            raise ValueError("jail uid range must lie within 65536 .. 2^32-2")
        self.base, self.count, self.lock_dir = base, count, lock_dir
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        self._held: dict[int, int] = {}  # uid -> lock fd

    def acquire(self) -> int:
        start = random.randrange(self.count)  # spread launchers over the range
        for i in range(self.count):
            uid = self.base + (start + i) % self.count
            if uid in self._held:
                continue
            path = os.path.join(self.lock_dir, str(uid))
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # The holder unlinks the file on release: a lock on an unlinked inode is void.
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    raise BlockingIOError
            except (BlockingIOError, FileNotFoundError):
                os.close(fd)
                continue
            self._held[uid] = fd
            return uid
        raise UidPoolExhausted(f"all {self.count} jail uids from {self.base} are in use")

    def release(self, uid: int) -> None:
        fd = self._held.pop(uid, None)
        if fd is not None:
            # Unlink before unlocking so the directory does not grow; acquire() re-checks the
            # inode after locking, so a racer that opened the old file retries.
            os.unlink(os.path.join(self.lock_dir, str(uid)))
            os.close(fd)

    def held(self) -> list[int]:
        return sorted(self._held)
