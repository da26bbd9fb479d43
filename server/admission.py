"""Admission: how many jobs run at once (the slots, which a desktop owner's activity may lower
at any time), how many may wait, and the load report the server pushes to clients with every
READY and RESULT so that they can send each job where it finishes soonest.

Many proxies cannot overbook a server: past `max_queue` waiting jobs, a job is refused with
"busy" and the proxy tries another server at once. The queue is fair between users (Slots).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

REFERENCE_MB_PER_SECOND = 500.0  # sha256 on the machine this was written on: speed 1.0


class Busy(Exception):
    """The queue is full: try another server."""


class Withdrawn(Exception):
    """The job left the queue: its connection ended while it waited."""


@dataclass(eq=False)
class _Ticket:
    number: int  # arrival order
    granted: bool = False
    turned_away: bool = False


class Slots:
    """The slots and the queue, fair between users (a user is whoever authenticated: a name,
    a principal, or an --insecure peer's address). A freed slot goes to the waiting job of
    the user who runs the fewest, the earliest of theirs first: one user's `make -j64` does
    not make another's single job wait behind sixty. A full queue makes room for a user with
    fewer waiting jobs than another by turning that other's newest job away ("busy", as a
    full queue does), so that one user cannot hold every place either."""

    def __init__(self, slots: int, max_queue: int) -> None:
        self.configured = slots
        self.limit = slots  # what the desktop policy allows now
        self.max_queue = max_queue
        self.running = 0
        self.waiting = 0
        self.owner_busy = False
        self._running_by: Counter[str] = Counter()
        self._served: dict[str, int] = {}  # the last slot each running or waiting user got
        self._grants = itertools.count()
        self._queues: dict[str, deque[_Ticket]] = {}  # per user, oldest first
        self._arrivals = itertools.count()
        self._cond = threading.Condition()

    def acquire(self, user: str = "", gone: Callable[[], bool] | None = None) -> None:
        """Take a slot for one of user's jobs, waiting in the queue if none is free; Busy if
        the queue has no place for it (now, or later to make room for another user), and
        Withdrawn once gone() says the job's connection ended (asked every second)."""
        with self._cond:
            if self.running < self.limit and not self.waiting:
                self._take(user)
                return
            if self.waiting >= self.max_queue:
                self._make_room(user)
            ticket = _Ticket(next(self._arrivals))
            self._queues.setdefault(user, deque()).append(ticket)
            self.waiting += 1
            try:
                while not ticket.granted:
                    if ticket.turned_away:
                        raise Busy("the queue made room for another user's job")
                    if gone is not None and gone():
                        raise Withdrawn("the job was withdrawn while it waited for a slot")
                    self._cond.wait(None if gone is None else 1.0)
            finally:
                if not ticket.granted and not ticket.turned_away:
                    self._leave(user, ticket)

    def release(self, user: str = "") -> None:
        with self._cond:
            self.running -= 1
            self._running_by[user] -= 1
            if self._running_by[user] <= 0:
                del self._running_by[user]
                self._forget_if_idle(user)
            self._grant()

    def set_limit(self, limit: int, owner_busy: bool) -> None:
        with self._cond:
            self.limit = max(0, min(limit, self.configured))
            self.owner_busy = owner_busy
            self._grant()

    def _take(self, user: str) -> None:
        self.running += 1
        self._running_by[user] += 1
        self._served[user] = next(self._grants)

    def _leave(self, user: str, ticket: _Ticket) -> None:
        queue = self._queues[user]
        queue.remove(ticket)
        self.waiting -= 1
        if not queue:
            del self._queues[user]
            self._forget_if_idle(user)

    def _forget_if_idle(self, user: str) -> None:
        """A user who neither runs nor waits any more is served "never" again (and their
        stamp goes, however they left: done, withdrawn, turned away)."""
        if user not in self._running_by and user not in self._queues:
            self._served.pop(user, None)

    def _grant(self) -> None:
        """Give the free slots to the waiting: the user running fewest first, then the one
        served longest ago (or never), then arrival."""
        granted = False
        while self.running < self.limit and self._queues:
            user = min(self._queues, key=self._turn)
            ticket = self._queues[user][0]
            self._leave(user, ticket)
            ticket.granted = granted = True
            self._take(user)
        if granted:
            self._cond.notify_all()

    def _turn(self, user: str) -> tuple[int, int, int]:
        return (self._running_by[user], self._served.get(user, -1), self._queues[user][0].number)

    def _make_room(self, user: str) -> None:
        """Turn away the newest job of the user with the most waiting if they wait for at
        least two more than `user` (fewer would only swap who is turned away); else Busy."""
        mine = len(self._queues.get(user, ()))
        most = max(self._queues, key=lambda u: len(self._queues[u]), default=None)
        if most is None or len(self._queues[most]) < mine + 2:
            raise Busy(f"{self.running} jobs running and {self.waiting} waiting")
        ticket = self._queues[most][-1]
        self._leave(most, ticket)
        ticket.turned_away = True
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
