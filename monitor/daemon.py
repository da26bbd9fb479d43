"""`jailccd [options]`: start the job service."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import resource
import signal
import socket
import stat
import subprocess
import sys
import threading
from typing import NamedTuple

from jailcc import __version__, jobs, wire
from jailcc.images.errors import ImageError
from jailcc.peer import LocalAuthorizer
from jailcc.sandbox.api import Sandbox, SandboxError
from jailcc.sandbox.spec import JailLimits, MiB, RunLimits

from .catalog import IMAGE_DIR, Catalog, image_dir
from .config import DEFAULT_CONFIG
from .jail_cache import JailCache
from .monitor import Monitor, MonitorConfig
from .unprivileged import (
    DEFAULT_SERVICE_USER,
    SERVICE_UID_FALLBACK,
    image_compilers,
    service_user,
    start_unprivileged,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .authz import Authorizer
    from .kerberos import KerberosAcceptor

DEFAULT_SOCKET = "/run/jailccd/jailccd.sock"
# How long a child's end waits for our own stop signal before it counts as a failure.
STOP_SIGNAL_GRACE = 2.0
log = logging.getLogger("jailccd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jailccd",
        description="The jailcc compile server: runs each connection's compile jobs in a fresh"
        " jail built from a read-only toolchain image. Local mode (the default) serves a Unix"
        " socket to the users and groups you allow. See also: jailccd selftest --help.",
    )
    p.add_argument("--version", action="version", version=f"jailccd {__version__}")
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"read options from this TOML file (default {DEFAULT_CONFIG}, if it exists; ''"
        ' for none): keys are the long options without dashes, e.g. allow-user = ["root"];'
        " options on the command line replace the file's (a repeatable one, its whole list)",
    )
    p.add_argument(
        "--no-config", dest="config", action="store_const", const="", help="read no config file"
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        help="check the configuration as jailccd would before serving, print every option"
        " with its value and where it came from, and exit (0: good)",
    )
    p.add_argument(
        "--toolchain-image",
        action="append",
        default=[],
        metavar="IMAGE",
        help="a toolchain image built by jailcc-image (repeatable); clients whose"
        " compiler identity matches a compiler in it can use it",
    )
    p.add_argument(
        "--image-dir",
        metavar="DIR",
        help=f"serve every *.img in DIR too (default {IMAGE_DIR}, if it exists), rescanned on"
        " SIGHUP: new images are added, changed ones replaced, removed ones retired, without"
        " dropping running jobs; a bad image is logged and skipped. Root's only: owned by root"
        " and writable by no one else",
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
        help="serve TCP, with Kerberos (--keytab, --principal and an authorization source);"
        " the Unix socket is then served only if --allow-user/--allow-group name someone",
    )
    p.add_argument(
        "--keytab",
        metavar="FILE",
        help="the keytab holding the service principal's key (Kerberos on --listen)",
    )
    p.add_argument(
        "--principal",
        metavar="SERVICE/HOST@REALM",
        help="this server's Kerberos principal, e.g. jailcc/build1.example.com@EXAMPLE.COM;"
        " taken as given, never from reverse DNS",
    )
    p.add_argument(
        "--allow-principals",
        metavar="FILE",
        help="who may compile over Kerberos: full principal names (user@REALM), one a line;"
        " re-read when it changes",
    )
    p.add_argument(
        "--ldap-url",
        metavar="URL",
        help="who may compile over Kerberos: members of --ldap-group in this directory",
    )
    p.add_argument("--ldap-base", metavar="DN", help="the directory's search base")
    p.add_argument(
        "--ldap-group",
        metavar="CN",
        help="the group (posixGroup memberUid, or groupOfNames member) of allowed users",
    )
    p.add_argument(
        "--ldap-bind",
        choices=["gssapi", "simple"],
        default="gssapi",
        help="bind with SASL/GSSAPI as --principal from --keytab (default), or simple bind"
        " with --ldap-bind-dn and --ldap-password-file",
    )
    p.add_argument("--ldap-bind-dn", metavar="DN", help="the DN for --ldap-bind simple")
    p.add_argument(
        "--ldap-password-file", metavar="FILE", help="the password for --ldap-bind simple"
    )
    p.add_argument(
        "--ldap-starttls",
        action="store_true",
        help="protect an ldap:// connection with StartTLS (needed for a simple bind to a"
        " server that is not on loopback, unless the URL is ldaps://)",
    )
    p.add_argument(
        "--ldap-cache-ttl",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long an LDAP answer is reused before asking again (default 60)",
    )
    p.add_argument(
        "--ldap-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="longest wait for the directory; past it the connection is refused (default 5)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="serve --listen WITHOUT authentication: anyone who can reach the port"
        " can compile here (never on a shared network)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="compile jobs running at once over all connections (default: CPUs)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=0,
        metavar="N",
        help="jobs that may wait for a slot, shared fairly by users; past that a job is refused"
        " as busy and sent elsewhere (default: four times --jobs, at least 8)",
    )
    p.add_argument(
        "--speed",
        type=float,
        metavar="X",
        help="this server's speed relative to others, reported to clients (default: measured"
        " at start-up with a short CPU-bound loop)",
    )
    p.add_argument(
        "--announce",
        action="store_true",
        help="announce the --listen service with DNS-SD over mDNS (_jailcc._tcp) so that"
        " clients find it without host lists",
    )
    p.add_argument(
        "--announce-address",
        action="append",
        default=[],
        metavar="ADDR",
        help="announce on (and as) this address only (repeatable; default: every interface)",
    )
    p.add_argument(
        "--desktop",
        action="store_true",
        help="this machine is someone's desktop: watch the CPU, memory and input activity"
        " that is not ours, and while its owner works advertise fewer slots, run jobs at"
        " SCHED_IDLE, and under sustained pressure evict running jobs (clients re-run them"
        " elsewhere)",
    )
    p.add_argument(
        "--desktop-calm",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --desktop: how long the owner must have been away before every slot comes"
        " back (default 60)",
    )
    p.add_argument(
        "--desktop-evict-after",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="with --desktop: how long the owner's CPU or memory pressure lasts before running"
        " jobs are evicted (default 15)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=256,
        metavar="N",
        help="connections served at once (default 256)",
    )
    p.add_argument(
        "--max-unauthenticated",
        type=int,
        default=0,
        metavar="N",
        help="of --max-connections, how many may be peers that have not authenticated yet;"
        " the rest stays for authenticated users (default: half of --max-connections)",
    )
    p.add_argument(
        "--max-unauthenticated-per-peer",
        type=int,
        default=16,
        metavar="N",
        help="connections not yet authenticated from one peer: a uid on the Unix socket, an"
        " IPv4 address or an IPv6 /64 on TCP; past it the peer is refused as busy (default 16)",
    )
    p.add_argument(
        "--max-connections-per-user",
        type=int,
        default=0,
        metavar="N",
        help="connections (each with its jail) one user may hold at once; past it the user"
        " is refused as busy (default: a quarter of --max-connections, 8 at least)",
    )
    p.add_argument(
        "--handshake-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="longest time from accepting a connection to handing it to its jail (hello,"
        " Kerberos, authorization); a peer that takes longer is dropped (default 10)",
    )
    p.add_argument(
        "--frame-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="before authorization, longest time from a frame's first byte to its last, so a"
        " peer trickling bytes is dropped early (default 5)",
    )
    p.add_argument(
        "--log-peer-lines",
        type=int,
        default=20,
        metavar="N",
        help="log lines a minute about one peer that has not authenticated (a uid, an IPv4"
        " address or an IPv6 /64), ten times as many once it has; past it, one line says the"
        " rest are suppressed (default 20)",
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
        "--jails-memory",
        type=int,
        metavar="MIB",
        help="memory of all jails together, in MiB: slots and waiting jobs times --job-memory"
        " may pass the machine's; past it the kernel ends a job, which its client redoes"
        " elsewhere or locally (default: three quarters of this machine's memory)",
    )
    p.add_argument(
        "--user-memory",
        type=int,
        metavar="MIB",
        help="memory one user's jobs may hold in their jails while their inputs arrive, unpack"
        " and compile (each input past 8 MiB asks for its share before it is read); past it"
        " a job is refused as busy and its client goes elsewhere, in MiB (default: a quarter"
        " of --jails-memory)",
    )
    p.add_argument(
        "--max-input",
        type=int,
        default=128,
        metavar="MIB",
        help="largest preprocessed input accepted, in MiB (default 128)",
    )
    p.add_argument(
        "--store-mb",
        type=int,
        default=128,
        metavar="MIB",
        help="size of the store each user gets for the sources and headers of their tree jobs:"
        " a tmpfs shared by that user's jails only, content-addressed, least recently read"
        " first out, kept an hour after the user's last jail (at most 16 users' at once; its"
        " pages count against the memory of the jail that wrote them), in MiB; also the most"
        " one tree job may ship (default 128)",
    )
    p.add_argument(
        "--status-show-sources",
        choices=["own", "all"],
        default="own",
        help="whose running jobs a status request (jailcc mon) shows with their source file"
        " names: the requester's own (default; others' show only the user) or everyone's",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics. Plain HTTP with no"
        " authentication: bind it to loopback or a management network only",
    )
    p.add_argument(
        "--service-user",
        default=DEFAULT_SERVICE_USER,
        metavar="USER",
        help="the user the network service runs as (it parses what peers send before they"
        f" authenticate; never root). Default {DEFAULT_SERVICE_USER}; when no such user"
        f" exists, uid {SERVICE_UID_FALLBACK}",
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
    try:
        logging.basicConfig(
            filename=args.log_file,
            level=getattr(logging, args.log_level.upper()),
            format="%(asctime)s jailccd[%(process)d] %(levelname)s %(message)s",
        )
    except OSError as exc:
        print(f"jailccd: error: --log-file {args.log_file}: {exc.strerror}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("jailccd: error: must run as root (it builds jails)", file=sys.stderr)
        return 2
    try:
        tcp, kerberos, principals, serve_unix, catalog, authorizer = check(args)
        service_uid, service_gid = service_user(args.service_user)
    except (ImageError, ValueError) as exc:
        print(f"jailccd: error: {exc}", file=sys.stderr)
        return 2
    import prctl

    prctl.set_child_subreaper(True)  # this machine's PID 1 does not reap orphans
    try:
        sandbox = Sandbox(
            catalog.images,
            jail_modules=jobs.JAIL_MODULES,
            jail_libraries=jobs.JAIL_LIBRARIES,
            image_dir=catalog.directory,
            all_jails_memory=args.jails_memory * MiB,
        )
    except SandboxError as exc:
        print(f"jailccd: error: {exc}", file=sys.stderr)
        return 2
    catalog.sync(sandbox)  # the image directory's images (a bad one is logged and skipped)
    # Past the launcher's start, which waits with select() and keeps 1024: the monitor holds
    # two descriptors a connection, the network service one and a thread (systemd's soft limit
    # of 1024 ran out first, and that stopped jailccd).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not catalog.manifests:
        sandbox.close()
        print("jailccd: error: no usable toolchain image (see the log)", file=sys.stderr)
        return 2
    listeners: list[socket.socket] = []
    try:
        if serve_unix:
            listeners.append(listen_unix(args.socket, authorizer.describe()))
        if tcp:
            sock, port = listen_tcp(*tcp, kerberos, principals)
            listeners.append(sock)
            how = "insecure" if kerberos is None else f"Kerberos, as {kerberos.principal}"
            print(f"jailccd: listening on tcp:{tcp[0]}:{port} ({how})", file=sys.stderr)
    except (OSError, ValueError) as exc:
        _close_listeners(listeners)
        sandbox.close()
        print(f"jailccd: error: {exc}", file=sys.stderr)
        return 2
    jail_cache = JailCache(args.jobs, lambda leaks: log.error("jail teardown left: %s", leaks))
    monitor = Monitor(
        sandbox,
        catalog,
        jail_cache,
        authorizer,
        MonitorConfig(
            jail_limits=JailLimits(memory_bytes=args.job_memory * MiB, pids_max=256),
            run_limits=RunLimits(
                cpu_seconds=int(args.job_timeout) + 1, wall_seconds=args.job_timeout
            ),
            max_input_bytes=args.max_input * MiB,
            max_connections=args.max_connections,
            store_bytes=args.store_mb * MiB,
            unix_socket=args.socket if serve_unix else None,
        ),
        kerberos,
        principals,
    )
    jail_cache.on_teardown = monitor.torn_down
    setup = {
        "log_level": args.log_level,
        "spawn_helper": sandbox.spawn_helper,  # whose seccomp filter the service takes on
        # The network service's ServiceConfig (server/service.py), whose fields these must be.
        "config": {
            "slots": args.jobs,
            "max_connections": args.max_connections,
            "tcp_auth": None if not tcp else ("insecure" if kerberos is None else "gssapi"),
            "principal": kerberos.principal if kerberos else "",
            "allow_users": args.allow_user,
            "allow_groups": args.allow_group,
            "max_queue": args.max_queue,
            "speed": args.speed,
            "handshake_timeout": args.handshake_timeout,
            "frame_timeout": args.frame_timeout,
            "max_unauthenticated": args.max_unauthenticated,
            "max_unauthenticated_per_peer": args.max_unauthenticated_per_peer,
            "max_connections_per_user": args.max_connections_per_user,
            "user_memory": args.user_memory * MiB,
            "peer_log_lines": args.log_peer_lines,
            "status_show_sources": args.status_show_sources,
        },
        "metrics": args.metrics,
        "desktop": (
            {"calm": args.desktop_calm, "evict_after": args.desktop_evict_after}
            if args.desktop
            else None
        ),
        "announce": (
            {"port": listeners[-1].getsockname()[1], "addresses": args.announce_address}
            if args.announce
            else None
        ),
    }
    service, main_channel = start_network_service(
        setup, listeners, service_uid, service_gid, args.log_file
    )
    _close_listeners(listeners, unlink=False)  # the service has them now
    serving = threading.Thread(target=monitor.serve, args=(main_channel,), name="monitor")
    serving.daemon = True
    serving.start()
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stopping.set()

    def on_hangup(_signum: int, _frame: object) -> None:
        # Not in the handler: a rescan verifies images and waits for the launcher.
        log.info("SIGHUP: rescanning the toolchain images")

        def rescan() -> None:
            catalog.sync(sandbox)
            with contextlib.suppress(ProcessLookupError):
                service.send_signal(signal.SIGHUP)  # it reads the images again from us

        threading.Thread(target=rescan, name="rescan").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    images = ", ".join(
        f"{n} ({', '.join(c.name for c in m.compilers)})" for n, m in catalog.manifests.items()
    )
    log.info(
        "jailccd ready: %d slots, images %s; network service pid %d as uid %d",
        args.jobs,
        images,
        service.pid,
        service_uid,
    )
    failed = False
    try:
        while not stopping.wait(0.2):
            if service.poll() is None and sandbox.launcher_exit is None:
                continue
            # A stop signalled to the whole group (systemd's KillMode=control-group) may reach
            # our children first: not a failure. Otherwise stop, for a supervisor to restart us.
            failed = not stopping.wait(STOP_SIGNAL_GRACE)
            code = service.returncode
            if failed and code is not None:
                log.critical(
                    "the network service (uid %d) exited (%s): stopping; its own lines above say"
                    " why%s",
                    service_uid,
                    f"status {code}" if code >= 0 else f"killed by signal {-code}",
                    " (it must be able to read jailcc's installation as that user: see"
                    " --service-user)" * (code > 0),
                )
            elif failed:  # without it no jail can be built, whatever we look like
                log.critical("the jail launcher died (status %s): stopping", sandbox.launcher_exit)
            break
    finally:
        monitor.stopping = True
        _stop_process(service)
        main_channel.close()
        jail_cache.close()
        sandbox.close()
        if principals is not None:
            principals.close()
        if serve_unix:
            with contextlib.suppress(OSError):
                os.unlink(args.socket)
        log.info("jailccd stopped")
    return 1 if failed else 0


def start_network_service(
    setup: dict[str, object],
    listeners: list[socket.socket],
    uid: int,
    gid: int,
    log_file: str | None,
) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start server/netservice.py as uid:gid with no supplementary groups, no capabilities
    (a uid change from root clears them all) and no_new_privs; hand it its settings and the
    listening sockets. It logs to our log file (opened here: it may not open it itself) or
    our stderr. Returns the process and the monitor's end of the main channel."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fds = [theirs.fileno(), *(sock.fileno() for sock in listeners)]
    log_stream = open(log_file, "ab") if log_file else None  # noqa: SIM115 - the child's
    proc = start_unprivileged(
        "jailcc.server.netservice",
        ["--monitor-fd", str(theirs.fileno())],
        uid,
        gid,
        pass_fds=fds,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log_stream,
    )
    theirs.close()
    if log_stream is not None:
        log_stream.close()
    wire.send_message(ours, setup, fds=[sock.fileno() for sock in listeners])
    return proc, ours


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def listen_unix(path: str, allowing: str) -> socket.socket:
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise OSError(f"{path} exists and is not a socket: name another --socket")
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket from a server that is gone
        else:
            raise OSError(f"another jailccd is serving {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Anyone may connect; who may compile is decided from the peer's credentials. (Made so by
    # the umask, not a chmod by name, which would follow a link put in its place.)
    umask = os.umask(0o111)
    try:
        sock.bind(path)
    finally:
        os.umask(umask)
    sock.listen(128)
    log.info("listening on unix:%s, allowing %s", path, allowing)
    return sock


def listen_tcp(
    host: str, port: int, kerberos: KerberosAcceptor | None, principals: Authorizer | None
) -> tuple[socket.socket, int]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound = sock.getsockname()[1]
    if kerberos is not None:
        assert principals is not None
        log.info(
            "listening on tcp:%s:%d as %s, allowing %s",
            host,
            bound,
            kerberos.principal,
            principals.describe(),
        )
    else:
        log.warning(
            "listening on tcp:%s:%d WITHOUT AUTHENTICATION (--insecure): anyone who can"
            " reach this port can run compiles here",
            host,
            bound,
        )
    return sock, bound


def _close_listeners(listeners: list[socket.socket], unlink: bool = True) -> None:
    for sock in listeners:
        if unlink and sock.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):
                os.unlink(sock.getsockname())
        sock.close()


class Checked(NamedTuple):
    tcp: tuple[str, int] | None
    kerberos: KerberosAcceptor | None
    principals: Authorizer | None
    serve_unix: bool
    catalog: Catalog
    authorizer: LocalAuthorizer


def check(args: argparse.Namespace) -> Checked:
    """What jailccd checks before it starts anything (jailccd --check-config runs just this):
    the options agree, the keytab holds the principal, the directory settings hold, the users
    and groups exist, the images have manifests. ValueError or ImageError says what is wrong."""
    tcp = None
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("--listen takes HOST:PORT")
        tcp = (host.strip("[]"), int(port))
    kerberos, principals = _kerberos(args, tcp is not None)
    args.socket = os.path.abspath(args.socket)  # (the monitor knows its connections by it)
    serve_unix = bool(args.allow_user or args.allow_group)
    if not serve_unix and tcp is None:
        raise ValueError(
            "nobody is allowed to compile: name users with --allow-user or groups with"
            " --allow-group"
        )
    if (
        min(args.jobs, args.max_connections, args.max_unauthenticated_per_peer) < 1
        or min(args.job_timeout, args.handshake_timeout, args.frame_timeout) <= 0
        or min(args.max_unauthenticated, args.max_connections_per_user) < 0
        or min(args.log_peer_lines, args.job_memory, args.max_input) < 1
        or min(args.max_queue, args.ldap_cache_ttl, args.desktop_calm, args.desktop_evict_after) < 0
        or args.ldap_timeout <= 0
        or (args.speed is not None and not args.speed > 0)
    ):
        raise ValueError(
            "--jobs, --max-connections, --max-unauthenticated-per-peer, --log-peer-lines,"
            " --job-memory, --max-input, --speed and the timeouts must be positive; --max-queue"
            " and the other times not negative"
        )
    if args.jails_memory is None:
        args.jails_memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 3 // 4 // MiB
    if args.jails_memory < args.job_memory:
        raise ValueError("--jails-memory must be at least --job-memory (one jail's)")
    if args.user_memory is None:
        args.user_memory = max(1, args.jails_memory // 4)
    if args.user_memory < 1:
        raise ValueError("--user-memory must be positive")
    if args.announce and tcp is None:
        raise ValueError("--announce needs --listen")
    if args.metrics and not re.fullmatch(r"\[?[\w.:-]+\]?:\d{1,5}", args.metrics):
        raise ValueError("--metrics takes HOST:PORT")
    if args.log_file and not os.path.isdir(os.path.dirname(os.path.abspath(args.log_file))):
        raise ValueError(f"--log-file {args.log_file}: no such directory")
    if not 1 <= args.store_mb <= 65536:
        raise ValueError("--store-mb must be 1 to 65536 (MiB)")
    ids = service_user(args.service_user)  # reads the images for us (monitor/unprivileged.py)
    catalog = Catalog(
        args.toolchain_image,
        image_dir(args.image_dir),
        lambda path, verify: image_compilers(path, ids, verify),
    )
    if not catalog.wanted()[0]:
        raise ImageError(
            "no toolchain image: name one with --toolchain-image IMAGE, or put IMAGE.img files"
            f" in the image directory (--image-dir, default {IMAGE_DIR})"
        )
    authorizer = LocalAuthorizer(args.allow_user, args.allow_group, allow_tcp=tcp is not None)
    return Checked(tcp, kerberos, principals, serve_unix, catalog, authorizer)


def _kerberos(
    args: argparse.Namespace, tcp: bool
) -> tuple[KerberosAcceptor | None, Authorizer | None]:
    """The Kerberos acceptor and the authorization source from the options, or (None, None)
    for no Kerberos. Fails closed: TCP without both only with --insecure."""
    kerberos_options = [args.keytab, args.principal, args.allow_principals, args.ldap_url]
    if not tcp:
        if any(kerberos_options):
            raise ValueError("--keytab, --principal and authorization sources need --listen")
        return None, None
    if args.insecure:
        if any(kerberos_options):
            raise ValueError("--insecure turns authentication off: drop the Kerberos options")
        return None, None
    if not args.keytab or not args.principal:
        raise ValueError(
            "--listen needs Kerberos: --keytab FILE --principal jailcc/HOST@REALM (or"
            " --insecure to serve TCP without authentication, never on a shared network)"
        )
    if bool(args.allow_principals) == bool(args.ldap_url):
        raise ValueError(
            "say who may compile: --allow-principals FILE, or --ldap-url with --ldap-base and"
            " --ldap-group (one of the two)"
        )
    from .authz import LdapHelperAuthorizer, PrincipalListAuthorizer
    from .kerberos import KerberosAcceptor
    from .unprivileged import LDAP_UID

    kerberos = KerberosAcceptor(args.keytab, args.principal)
    if args.allow_principals:
        return kerberos, PrincipalListAuthorizer(args.allow_principals)
    if not args.ldap_base or not args.ldap_group:
        raise ValueError("--ldap-url needs --ldap-base and --ldap-group")
    if args.ldap_bind == "simple" and (not args.ldap_bind_dn or not args.ldap_password_file):
        raise ValueError("--ldap-bind simple needs --ldap-bind-dn and --ldap-password-file")
    if not args.ldap_timeout > 0:
        raise ValueError("--ldap-timeout must be positive")
    settings = {
        "url": args.ldap_url,
        "base": args.ldap_base,
        "group": args.ldap_group,
        "realm": kerberos.realm,
        "bind": args.ldap_bind,
        "bind_dn": args.ldap_bind_dn,
        "cache_ttl": args.ldap_cache_ttl,
        "timeout": args.ldap_timeout,
        "starttls": args.ldap_starttls,
    }
    gssapi = args.ldap_bind == "gssapi"
    authorizer = LdapHelperAuthorizer(
        settings,
        (LDAP_UID, LDAP_UID),
        password_file=args.ldap_password_file,
        kerberos=kerberos if gssapi else None,  # the helper binds with a TGT of ours
        log_file=args.log_file,
    )
    authorizer.check_config()  # AuthorizationConfigError, a ValueError, says what is wrong
    return kerberos, authorizer
