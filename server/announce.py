"""Announce this jailccd on the local link as a DNS-SD service `_jailcc._tcp.local.` (mDNS).

The TXT record carries what a proxy needs to choose a server before it connects: protocol
version, service principal, slots, free slots and the compiler identities served. Its format
is jailcc.dnssd's (core/dnssd.py), which the client's discovery reads with.

Updates of `free` and `slots` go out as one unsolicited TXT-only answer (plus one repeat a
second later, as RFC 6762 8.4 asks), not as a full re-registration, and at most one per
`min_interval`: receivers flush a unique record only when their cached copy is over a second
old, so faster updates could leave two TXT records side by side in their caches.

    a = Announcer(3633, "jailcc/build1.example.com@EXAMPLE.COM", ids, slots=8,
                  host_name="build1", addresses=["10.0.0.5"])
    a.start(); a.update(free_slots=3); ...; a.close()
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Sequence

from jailcc.dnssd import SERVICE_TYPE, txt_properties

TYPE_CHECKING = False
if TYPE_CHECKING:
    from zeroconf import ServiceInfo, Zeroconf

_FLAGS_RESPONSE_AA = 0x8400  # QR (response) | AA (authoritative), RFC 1035 4.1.1


def _local_addresses() -> list[str]:
    from zeroconf import get_all_addresses

    return [a for a in get_all_addresses() if not a.startswith("127.")]


class Announcer:
    """One jailccd's DNS-SD registration. Thread-safe; update() never blocks on the network."""

    def __init__(
        self,
        port: int,
        principal: str,
        images: Sequence[str],
        slots: int,
        host_name: str | None = None,
        addresses: Sequence[str] | None = None,
        *,
        instance: str | None = None,
        min_interval: float = 2.0,
    ) -> None:
        label = (host_name or "").removesuffix(".").removesuffix(".local").split(".")[0]
        machine = socket.gethostname().split(".")[0]
        # By default not the machine's own NAME.local.: an avahi-daemon there owns that name,
        # and would take our A records for it, listing other addresses, as a conflict.
        self.host_name = f"{label or machine + '-jailccd'}.local."
        self.instance = instance or f"jailccd on {label or machine}"
        self.port = port
        self.principal = principal
        self.identities = list(images)
        self.slots = slots
        self.free = slots
        self.addresses = list(addresses) if addresses else None
        self.min_interval = min_interval
        txt_properties(principal, self.identities, slots, slots)  # fail early on a bad record
        self._zc: Zeroconf | None = None
        self._info: ServiceInfo | None = None
        self._lock = threading.Lock()
        self._last_sent = 0.0
        self._timer: threading.Timer | None = None
        self._pending = False

    @property
    def name(self) -> str:
        """The registered service name (may differ from the instance asked for after a
        conflict: zeroconf then appends a number)."""
        return self._info.name if self._info else f"{self.instance}.{SERVICE_TYPE}"

    def _make_info(self, name: str) -> ServiceInfo:
        from zeroconf import ServiceInfo

        assert self.addresses is not None
        return ServiceInfo(
            SERVICE_TYPE,
            name,
            port=self.port,
            properties=txt_properties(self.principal, self.identities, self.slots, self.free),
            server=self.host_name,
            parsed_addresses=self.addresses,
        )

    def start(self) -> None:
        """Probe for the name and announce (about 1.5 s: RFC 6762 probing and announcing)."""
        from zeroconf import InterfaceChoice, IPVersion, Zeroconf

        if self.addresses is None:
            self.addresses = _local_addresses()
            interfaces = InterfaceChoice.All
        else:
            interfaces = self.addresses  # bound: only these interfaces hear and speak for us
        if not self.addresses:
            raise OSError("no address to announce")
        v6 = any(":" in a for a in self.addresses)
        v4 = any(":" not in a for a in self.addresses)
        version = IPVersion.All if v4 and v6 else IPVersion.V6Only if v6 else IPVersion.V4Only
        zc = Zeroconf(interfaces=interfaces, ip_version=version)
        try:
            info = self._make_info(f"{self.instance}.{SERVICE_TYPE}")
            zc.register_service(info, allow_name_change=True)
        except BaseException:
            zc.close()
            raise
        with self._lock:
            self._zc, self._info = zc, info
            self._last_sent = time.monotonic()

    def update(self, free_slots: int | None = None, slots: int | None = None) -> None:
        """New load figures; announced at once, or when min_interval has passed since the last
        announcement (only the latest figures are sent)."""
        with self._lock:
            changed = False
            if free_slots is not None and free_slots != self.free:
                self.free, changed = max(0, free_slots), True
            if slots is not None and slots != self.slots:
                self.slots, changed = max(0, slots), True
            if not changed or self._zc is None:
                return
            self._pending = True
            wait = self._last_sent + self.min_interval - time.monotonic()
            if wait <= 0:
                self._send_locked()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self._deferred)
                self._timer.daemon = True
                self._timer.start()

    def _deferred(self) -> None:
        with self._lock:
            self._timer = None
            if self._pending and self._zc is not None:
                self._send_locked()

    def _send_locked(self) -> None:
        zc, old = self._zc, self._info
        assert zc is not None and old is not None and zc.loop is not None
        info = self._make_info(old.name)
        self._info, self._pending, self._last_sent = info, False, time.monotonic()

        async def announce() -> None:
            from zeroconf import DNSOutgoing

            zc.registry.async_update(info)  # what we answer queries with from now on
            for attempt in range(2):
                if attempt:
                    await asyncio.sleep(1.0)
                    if self._info is not info:  # superseded: the newer one goes out instead
                        return
                out = DNSOutgoing(_FLAGS_RESPONSE_AA)
                out.add_answer_at_time(info.dns_text(), 0)
                zc.async_send(out)

        asyncio.run_coroutine_threadsafe(announce(), zc.loop)

    def close(self) -> None:
        """Say goodbye (TTL 0 records: browsers drop us at once) and stop."""
        with self._lock:
            zc, info, timer = self._zc, self._info, self._timer
            self._zc = self._info = self._timer = None
        if timer is not None:
            timer.cancel()
        if zc is None:
            return
        try:
            if info is not None:
                zc.unregister_service(info)
        finally:
            zc.close()

    def __enter__(self) -> Announcer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
