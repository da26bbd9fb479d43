"""Admission: how many jobs run at once (the slots, which a desktop owner's activity may lower
at any time), how many may wait, and the load report the server pushes to clients with every
READY and RESULT so that they can send each job where it finishes soonest.

Many proxies cannot overbook a server: past `max_queue` waiting jobs, a job is refused with
"busy" and the proxy tries another server at once.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

REFERENCE_MB_PER_SECOND = 500.0  # sha256 on the machine this was written on: speed 1.0


class Busy(Exception):
    """The queue is full: try another server."""


class Slots:
    def __init__(self, slots: int, max_queue: int) -> None:
        self.configured = slots
        self.limit = slots  # what the desktop policy allows now
        self.max_queue = max_queue
        self.running = 0
        self.waiting = 0
        self.owner_busy = False
        self._cond = threading.Condition()

    def acquire(self) -> None:
        with self._cond:
            if self.running >= self.limit and self.waiting >= self.max_queue:
                raise Busy(f"{self.running} jobs running and {self.waiting} waiting")
            self.waiting += 1
            try:
                while self.running >= self.limit:
                    self._cond.wait()
            finally:
                self.waiting -= 1
            self.running += 1

    def release(self) -> None:
        with self._cond:
            self.running -= 1
            self._cond.notify()

    def set_limit(self, limit: int, owner_busy: bool) -> None:
        with self._cond:
            self.limit = max(0, min(limit, self.configured))
            self.owner_busy = owner_busy
            self._cond.notify_all()

    def report(self, speed: float) -> dict[str, Any]:
        with self._cond:
            return {
                "slots": self.limit,
                "running": self.running,
                "queued": self.waiting,
                "owner_busy": self.owner_busy,
                "speed": round(speed, 3),
            }


def measure_speed(seconds: float = 0.2) -> float:
    """This machine's single-core speed relative to the reference: a short, fixed CPU-bound
    loop (the compiler's work is single-threaded too). Best of a few rounds, so a moment's
    contention does not make a fast machine look slow for its whole life."""
    block = bytes(1 << 20)
    best = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or best == 0.0:
        started = time.perf_counter()
        digest = hashlib.sha256()
        for _ in range(8):
            digest.update(block)
        best = max(best, 8 / (time.perf_counter() - started))
    return best / REFERENCE_MB_PER_SECOND
