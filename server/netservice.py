"""The network service's process: `python -m jailcc.server.netservice --monitor-fd N`, started
by jailccd's root monitor (monitor/daemon.py) as its own unprivileged uid, with no capabilities
and no_new_privs; it takes on a seccomp filter (jailcc.seccomp) and makes itself undumpable
before it reads a peer's byte, and confines its file system access with Landlock (landlock.py)
before it starts any thread. It gets its settings and listening sockets from the monitor's
first message, then serves (service.py): accepts and the handshakes, admission, status,
Prometheus metrics, the mDNS announcement and the desktop owner's monitor. It exits when the
monitor goes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from jailcc import protocol as proto
from jailcc import seccomp, wire

from . import landlock, metrics
from .monitor_link import MonitorLink
from .service import CatalogView, JobService, ServiceConfig

log = logging.getLogger("jailccd")
MAX_LISTENERS = 4


def main(argv: list[str] | None = None) -> int:
    import prctl

    # Not dumpable, first thing (the listeners, queued with our settings, are taken in only
    # after this): another process of this uid (say another jailccd's service, when both fall
    # back to the same uid) may neither trace us nor take our descriptors (pidfd_getfd).
    prctl.set_dumpable(False)
    parser = argparse.ArgumentParser(prog="jailccd-net", description=__doc__)
    parser.add_argument("--monitor-fd", type=int, required=True, help="the main channel")
    args = parser.parse_args(argv)
    main_channel = socket.socket(fileno=args.monitor_fd)
    try:
        setup, _, fds = wire.recv_message_with_fds(main_channel, 0, MAX_LISTENERS)
    except wire.WireError as exc:
        print(f"jailccd-net: no settings from the monitor: {exc}", file=sys.stderr)
        return 2
    try:
        # Before any peer's byte: the jobs' filter but for socket families (mDNS finds the
        # network's interfaces over netlink). No namespaces, mounts, keyrings, io_uring...
        seccomp.confine(str(setup["spawn_helper"]), seccomp.ANY_SOCKET_FAMILY)
    except seccomp.SeccompError as exc:
        print(f"jailccd-net: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, str(setup["log_level"]).upper()),
        format="%(asctime)s jailccd-net[%(process)d] %(levelname)s %(message)s",
    )
    try:
        metrics_server = _bind_metrics(str(setup["metrics"])) if setup.get("metrics") else None
    except (OSError, ValueError) as exc:
        log.error("the network service cannot start: %s", exc)
        return 2
    try:
        # Before any thread starts (Landlock covers the thread that asks, and the threads it
        # starts after) and any peer's byte is read.
        confined = f"Landlock ABI {landlock.confine_service()}"
    except landlock.LandlockUnavailable as exc:
        confined = "no Landlock"
        log.warning(
            "this kernel has no Landlock (%s): the network service may read what its uid may", exc
        )
    except OSError as exc:
        log.error("the network service cannot confine itself: %s", exc)
        return 2
    link = MonitorLink(main_channel)
    service = JobService(link, CatalogView(), ServiceConfig(**setup["config"]))
    service.catalog.refresh(link)
    for fd in fds:
        service.adopt_listener(socket.socket(fileno=fd))

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: the network service stops", signum)
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The monitor rescans the images (on its own SIGHUP), then sends us one to read them again.
    signal.signal(signal.SIGHUP, lambda _signum, _frame: service.rescanned.set())
    extras = []
    if metrics_server is not None:
        service.metrics.serve(metrics_server)
    try:
        desktop = setup.get("desktop")
        if desktop:
            extras.append(_watch_the_owner(service, desktop["calm"], desktop["evict_after"]))
        announce = setup.get("announce")
        if announce:
            extras.append(_announce(service, int(announce["port"]), announce["addresses"]))
    except (OSError, ValueError) as exc:
        log.error("the network service cannot start: %s", exc)
        return 2
    log.info(
        "network service ready: protocol %d, as uid %d, %s",
        proto.PROTOCOL_VERSION,
        os.getuid(),
        confined,
    )
    try:
        service.serve_forever()
    finally:
        for close in extras:
            close()
        service.stop()
        log.info("network service stopped: %s", service.metrics.totals())
    return 1 if service.failed else 0


def _bind_metrics(address: str) -> WSGIServer:
    """The Prometheus metrics' server, bound on the address given only."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError("--metrics takes HOST:PORT")
    server = metrics.bind(host.strip("[]"), int(port))
    log.warning(
        "serving metrics on http://%s:%d/metrics, unauthenticated", host, server.server_port
    )
    return server


def _watch_the_owner(service: JobService, calm: float, evict_after: float) -> Callable[[], None]:
    """The desktop policy: sample the owner's activity, yield slots, priority and, under
    sustained pressure, running jobs (server/owner.py)."""
    from .owner import (
        Decision,
        OwnerMonitor,
        OwnerState,
        PolicyConfig,
        desktop_policy,
        keep_recent,
    )

    config = PolicyConfig(calm_seconds=calm, evict_after=evict_after)

    history: list[OwnerState] = []
    last: list[Decision | None] = [None]

    def on_state(state: OwnerState) -> None:
        nonlocal history
        decision = desktop_policy(state, service.slots.configured, history, config)
        history = keep_recent([*history, state], state.at, config)
        if decision != last[0]:
            log.info(
                "desktop owner %s: %d slots, %s%s",
                "busy" if state.busy else "away",
                decision.advertised_slots,
                "SCHED_IDLE" if decision.sched_idle else "normal priority",
                ", evicting running jobs" if decision.evict else "",
            )
            last[0] = decision
        service.yield_to_owner(
            decision.advertised_slots, state.busy, decision.sched_idle, decision.evict
        )

    monitor = OwnerMonitor()
    monitor.start(on_state)
    return monitor.close


def _announce(service: JobService, port: int, addresses: list[str]) -> Callable[[], None]:
    """DNS-SD over mDNS, its free-slot count kept current every two seconds."""
    from .announce import Announcer

    identities = service.catalog.identities()
    # Several servers on one machine (or in its namespaces) need names of their own.
    label = (
        f"{socket.gethostname()}-jailccd-{addresses[0]}".replace(".", "-") if addresses else None
    )
    announcer = Announcer(
        port,
        service.config.principal,
        identities,
        service.slots.configured,
        host_name=label,
        addresses=addresses or None,
    )
    announcer.start()
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(2.0):
            load = service.load()
            announcer.update(
                free_slots=max(0, load["slots"] - load["running"]), slots=load["slots"]
            )

    threading.Thread(target=refresh, name="announce", daemon=True).start()
    log.info("announcing _jailcc._tcp on port %d (%s)", port, ", ".join(addresses) or "all")

    def close() -> None:
        stop.set()
        announcer.close()

    return close


if __name__ == "__main__":
    sys.exit(main())
