"""A bound on how long a job waits for a connection's set-up.

A KDC or server that hangs, rather than refuses, holds a Kerberos handshake for half a minute
or more (libkrb5 retries each KDC before it gives up), and the build with it. The set-up runs
in a thread of its own (python-gssapi lets go of the GIL while libkrb5 waits); the job waits
for it at most SETUP_DEADLINE seconds and then goes elsewhere or compiles locally, while the
set-up goes on and hands what it made, late, to whoever can still use it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# Set-up takes milliseconds (a few seconds for a jail on a loaded server); libkrb5 gives up
# on a silent KDC after about 30 s.
SETUP_DEADLINE = 10.0
NO_ANSWER = (
    f"no connection after {SETUP_DEADLINE:g} s: the server, or its Kerberos KDC, does not answer"
)


class _Handoff(Generic[T]):
    """One outcome of `work`: the waiter's if it comes in time, else a result goes to `late`
    (and an exception nowhere: nobody is left to tell)."""

    def __init__(self, work: Callable[[], T], late: Callable[[T], None]) -> None:
        self._work = work
        self._late = late
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._outcome: list[tuple[T | None, BaseException | None]] = []
        self._waited_out = False

    def run(self) -> None:
        try:
            outcome: tuple[T | None, BaseException | None] = (self._work(), None)
        except BaseException as exc:  # the waiter's to raise, as if it had called work()
            outcome = (None, exc)
        with self._lock:
            if not self._waited_out:
                self._outcome.append(outcome)
                self._done.set()
                return
        result, error = outcome
        if error is None:
            self._late(result)  # type: ignore[arg-type]

    def take(self, seconds: float) -> list[T]:
        self._done.wait(seconds)
        with self._lock:
            if not self._outcome:
                self._waited_out = True
                return []
        result, error = self._outcome[0]
        if error is not None:
            raise error
        return [result]  # type: ignore[list-item]


def within(seconds: float, work: Callable[[], T], late: Callable[[T], None], name: str) -> list[T]:
    """Run `work` in a daemon thread: [its result] if it returns within `seconds` (its
    exception, raised here, if it raises), else [] and `late` gets its result whenever it
    comes."""
    handoff: _Handoff[T] = _Handoff(work, late)
    threading.Thread(target=handoff.run, name=name, daemon=True).start()
    return handoff.take(seconds)
