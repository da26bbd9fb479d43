"""`jailccd [options]`: start the job service."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from jailcc.images.errors import ImageError
from jailcc.sandbox.api import Sandbox, SandboxError
from jailcc.sandbox.spec import JailLimits, MiB, RunLimits

from . import protocol as proto
from .catalog import Catalog
from .local_auth import LocalAuthorizer
from .service import JobService, ServiceConfig

DEFAULT_SOCKET = "/run/jailccd/jailccd.sock"
log = logging.getLogger("jailccd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jailccd",
        description="The jailcc compile server: runs each connection's compile jobs in a fresh"
        " jail built from a read-only toolchain image. Local mode (the default) serves a Unix"
        " socket to the users and groups you allow. See also: jailccd selftest --help.",
    )
    p.add_argument(
        "--toolchain-image",
        action="append",
        required=True,
        metavar="IMAGE",
        help="a toolchain image built by jailcc-image (repeatable); clients whose"
        " compiler identity matches a compiler in it can use it",
    )
    p.add_argument(
        "--socket",
        default=DEFAULT_SOCKET,
        metavar="PATH",
        help=f"the Unix socket to serve (default {DEFAULT_SOCKET})",
    )
    p.add_argument(
        "--allow-user",
        action="append",
        default=[],
        metavar="NAME",
        help="a user allowed to compile over the Unix socket (repeatable)",
    )
    p.add_argument(
        "--allow-group",
        action="append",
        default=[],
        metavar="GROUP",
        help="a Unix group whose members may compile over the socket (repeatable)",
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="also serve TCP (only with --insecure until Kerberos support lands)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow --listen without authentication: anyone who can reach the port"
        " can compile here",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="compile jobs running at once over all connections (default: CPUs)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=256,
        metavar="N",
        help="connections served at once (default 256)",
    )
    p.add_argument(
        "--job-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="wall-clock limit of one compile (default 600)",
    )
    p.add_argument(
        "--job-memory",
        type=int,
        default=2048,
        metavar="MIB",
        help="memory limit of one connection's jail, in MiB (default 2048)",
    )
    p.add_argument(
        "--max-input",
        type=int,
        default=128,
        metavar="MIB",
        help="largest preprocessed input accepted, in MiB (default 128)",
    )
    p.add_argument("--log-file", metavar="PATH", help="log here instead of to stderr")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="(default info)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        filename=args.log_file,
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s jailccd[%(process)d] %(levelname)s %(message)s",
    )
    if os.geteuid() != 0:
        print("jailccd: error: must run as root (it builds jails)", file=sys.stderr)
        return 2
    tcp = None
    if args.listen:
        if not args.insecure:
            print(
                "jailccd: error: --listen needs Kerberos, which this version lacks; add"
                " --insecure to serve TCP without authentication (not on a shared"
                " network)",
                file=sys.stderr,
            )
            return 2
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit():
            print("jailccd: error: --listen takes HOST:PORT", file=sys.stderr)
            return 2
        tcp = (host.strip("[]"), int(port))
    if not args.allow_user and not args.allow_group and not args.insecure:
        print(
            "jailccd: error: nobody is allowed to compile: name users with --allow-user or"
            " groups with --allow-group",
            file=sys.stderr,
        )
        return 2
    if args.jobs < 1 or args.max_connections < 1 or args.job_timeout <= 0:
        print(
            "jailccd: error: --jobs, --max-connections and --job-timeout must be positive",
            file=sys.stderr,
        )
        return 2
    try:
        catalog = Catalog(args.toolchain_image)
        authorizer = LocalAuthorizer(args.allow_user, args.allow_group, allow_tcp=tcp is not None)
    except (ImageError, ValueError) as exc:
        print(f"jailccd: error: {exc}", file=sys.stderr)
        return 2
    import prctl

    prctl.set_child_subreaper(True)  # this machine's PID 1 does not reap orphans
    config = ServiceConfig(
        slots=args.jobs,
        max_connections=args.max_connections,
        max_input_bytes=args.max_input * MiB,
        jail_limits=JailLimits(memory_bytes=args.job_memory * MiB, pids_max=256),
        run_limits=RunLimits(cpu_seconds=int(args.job_timeout) + 1, wall_seconds=args.job_timeout),
    )
    try:
        sandbox = Sandbox(catalog.images)
    except SandboxError as exc:
        print(f"jailccd: error: {exc}", file=sys.stderr)
        return 2
    service = JobService(sandbox, catalog, authorizer, config)
    try:
        service.listen_unix(args.socket)
        if tcp:
            port = service.listen_tcp(*tcp)
            print(f"jailccd: listening on tcp:{tcp[0]}:{port} (insecure)", file=sys.stderr)
    except OSError as exc:
        sandbox.close()
        print(f"jailccd: error: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    images = ", ".join(
        f"{n} ({', '.join(c.name for c in m.compilers)})" for n, m in catalog.manifests.items()
    )
    log.info(
        "jailccd ready: protocol %d, %d slots, images %s",
        proto.PROTOCOL_VERSION,
        config.slots,
        images,
    )
    try:
        service.serve_forever()
    finally:
        service.stop()
        sandbox.close()
        log.info("jailccd stopped: %s", service.stats)
    return 1 if service.failed else 0
