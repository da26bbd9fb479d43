"""Idle jails kept for the next connection of the same user and image.

Without a per-user proxy, every `jailcc` run opens its own connection, and building and
tearing down a jail per compile costs more CPU than a small compile. A jail whose connection
ended cleanly is kept, wiped as after every job, for a later connection of the same peer
identity (never another user's) and the same image, for a short time. This is the reuse a
persistent connection gives anyway (one connection runs many jobs in one jail), so the trust
boundary stays the user: one user's jobs never share a jail with another user's.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from jailcc.sandbox.api import Jail, SandboxError

IDLE_SECONDS = 20.0


class JailCache:
    def __init__(
        self,
        per_key: int,
        on_leak: Callable[[str], None],
        on_teardown: Callable[[float], None] = lambda seconds: None,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.per_key = per_key
        self.idle_seconds = idle_seconds
        self.on_leak = on_leak
        self.on_teardown = on_teardown  # told how long each teardown took (metrics)
        self._idle: dict[tuple[str, str], list[tuple[float, Jail]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_forever, daemon=True)
        self._reaper.start()

    def take(self, owner: str, image: str) -> Jail | None:
        with self._lock:
            entries = self._idle.get((owner, image), [])
            while entries:
                _, jail = entries.pop()
                if jail.usable:
                    return jail
                self._close(jail)
        return None

    def give_back(self, owner: str, image: str, jail: Jail) -> None:
        """Keep a usable jail for later, or close it when there are enough already."""
        with self._lock:
            entries = self._idle.setdefault((owner, image), [])
            if jail.usable and len(entries) < self.per_key and not self._stop.is_set():
                entries.append((time.monotonic(), jail))
                return
        self._close(jail)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            jails = [j for entries in self._idle.values() for _, j in entries]
            self._idle.clear()
        for jail in jails:
            self._close(jail)

    def _reap_forever(self) -> None:
        while not self._stop.wait(1.0):
            cutoff = time.monotonic() - self.idle_seconds
            expired = []
            with self._lock:
                for entries in self._idle.values():
                    expired += [j for t, j in entries if t < cutoff]
                    entries[:] = [(t, j) for t, j in entries if t >= cutoff]
            for jail in expired:
                self._close(jail)

    def discard(self, jail: Jail) -> None:
        """Tear a jail down now (its connection ended badly: it serves no one again)."""
        self._close(jail)

    def _close(self, jail: Jail) -> None:
        with contextlib.suppress(SandboxError):
            started = time.monotonic()
            report = jail.close()
            self.on_teardown(time.monotonic() - started)
            if report.leaks:
                self.on_leak("; ".join(report.leaks))
