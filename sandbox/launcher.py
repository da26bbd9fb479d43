"""The launcher: a small, single-threaded, privileged process that makes and unmakes jails.

The server is multi-threaded, and forking a multi-threaded Python process is unsafe, so the
server starts this process once (a fresh interpreter, by exec) and asks it, over a
SOCK_SEQPACKET socket, to create a jail (it answers with a socket to the jail's init), to mount
a job's work dir inside a jail, or to destroy one. It mounts the toolchain images once, in its
own private mount namespace, is a child subreaper, and dies with the server (parent-death
signal); its jails die with it.

Images can also come and go while it runs: "mount_image" mounts a file as a new name, and
"retire_image" takes a name away (jails built from it keep their own mount until they end).
Only the files given at start and *.img files directly in the --image-dir are mounted.

It never runs the code of a jail's init (jail_init.py) nor the compiler-aware job code
(jailcc.jobs) itself: it reads their source at start-up (jail_init.py and the --jail-module
modules), and each jail's init imports them from memory after dropping its privileges
(jail_code.py). The only code it imports for the jails is a short list of libraries
(--jail-library: gssapi, lz4) and the standard modules the init uses, never the project's.

Run as: python -m jailcc.sandbox.launcher --control-fd N --parent-pid P --image NAME=PATH ...
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import select
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass, field

import prctl
from jailcc import IMAGE_NAME_PATTERN, wire

from . import cgroups, loopdev, privileges, rootfs
from . import syscalls as sc
from .jail_code import JailCode, JailCodeError, import_libraries
from .spec import WEAKENINGS, JailLimits
from .uidpool import DEFAULT_BASE, DEFAULT_COUNT, UidPool

# The jail's init (its PID 1), run only in the jail once unprivileged: served from memory like
# the job code, first, since the job code imports it; with the one project module it imports
# that the launcher does not hold.
JAIL_INIT = "jailcc.sandbox.jail_init"
JAIL_INIT_CODE = ("jailcc.seccomp", JAIL_INIT)
# Standard modules jail_init.py imports that nothing here does: a jail cannot load them after
# its chroot (tests/test_jobs_loading.py checks the init loads in a jail).
INIT_STDLIB = ("resource",)
READY_TIMEOUT = 10.0
REFILL_IDLE_SECONDS = 0.0005
MAX_WARM_KEYS = 4  # distinct (image, limits) pairs kept warm; the least recent is drained
MAX_IMAGES = 64
MAX_IMAGE_BYTES = 16 << 30
# Users' blob stores (tmpfs, one per user, shared by that user's jails): how many are kept, and
# for how long one no jail holds outlives its last jail.
MAX_STORES = 16
STORE_IDLE_SECONDS = 3600.0
MIN_STORE_BYTES, MAX_STORE_BYTES = 1 << 20, 64 << 30
MAX_USER_NAME = 1024
MS_STRICTATIME = 1 << 24  # atime on every read: the jails evict the least recently read
# An image's name, and after "@" the version the server counts (monitor/catalog.py).
IMAGE_NAME = re.compile(IMAGE_NAME_PATTERN + r"(@[0-9]{1,9})?")


@dataclass
class LiveJail:
    pid: int
    uid: int  # the uid the jail runs as (0 only when weakened with root_uid)
    pool_uid: int
    cgroup: cgroups.JailCgroup
    pidfd: int  # the init's pidfd: setns() through it cannot hit a recycled pid
    limits: JailLimits
    weaken: frozenset[str]
    image_top: frozenset[str] = frozenset()  # the image's top-level entries: no work dir there
    workdir: str | None = None
    store_owner: str | None = None  # whose blob store it holds (see Launcher._give_store)
    exited: bool = False
    leaks: list[str] = field(default_factory=list)


@dataclass
class UserStore:
    path: str  # its tmpfs, in our mount namespace
    jails: int = 0  # the live jails it is attached to
    used: float = 0.0  # when a jail last got it or let it go


@dataclass
class PendingJail:
    """A jail whose init was forked and may still be building it."""

    jail_id: int
    server_end: socket.socket
    ready_r: int


class Launcher:
    def __init__(
        self,
        control: socket.socket,
        images: dict[str, str],
        pool: UidPool,
        spawn_helper: str,
        jail_code: JailCode,  # the init's and the jobs' code (JAIL_INIT first)
        warm_per_key: int = 1,
        allow_weaken: bool = False,
        image_dir: str | None = None,
        all_jails_memory: int | None = None,
    ) -> None:
        self.control = control
        self.all_jails_memory = all_jails_memory
        self.jail_code = jail_code
        if image_dir is not None:
            _check_image_dir(image_dir)
        self.image_dir = image_dir
        self.start_images = frozenset(p for p in images.values() if not os.path.isdir(p))
        self.pool = pool
        self.jails: dict[int, LiveJail] = {}
        self.counter = 0
        # Jails built ahead of demand, per (image, limits) recently asked for: a connection
        # then gets a ready jail, and the building happens while the launcher is idle.
        self.warm_per_key = warm_per_key
        self.allow_weaken = allow_weaken
        self.quarantined: list[int] = []
        self.warm: dict[tuple[str, JailLimits], list[PendingJail]] = {}
        self.stores: dict[str, UserStore] = {}
        self.store_mounts = 0
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        self.own_mntns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        os.makedirs(rootfs.MOUNT_BASE, exist_ok=True)
        sc.mount(
            "jailcc-launcher",
            rootfs.MOUNT_BASE,
            "tmpfs",
            rootfs.SECURE | sc.MS_NOEXEC,
            "size=64k,mode=0700",
        )
        os.mkdir(rootfs.JAIL_BUILD_DIR, 0o755)
        self.images: dict[str, str] = {}
        for index, (name, path) in enumerate(sorted(images.items())):
            target = os.path.join(rootfs.MOUNT_BASE, f"image{index}")
            os.mkdir(target, 0o755)
            if os.path.isdir(path):
                sc.mount(path, target, None, sc.MS_BIND | sc.MS_REC)
                sc.mount(
                    None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | rootfs.SECURE
                )
            else:
                loopdev.mount_image(path, target, MAX_IMAGE_BYTES)
            self.images[name] = target
        self.targets = len(self.images)
        rootfs.install_spawn_helper(spawn_helper)
        self.spawn_helper = spawn_helper  # the host path: only the host_mount_sources weakening
        self.cgroup_parents = cgroups.parent_dirs(self.all_jails_memory)
        cgroups.remove_stale(self.cgroup_parents)

    # -- request loop ------------------------------------------------------------------------

    def serve(self) -> None:
        # Every jail's init is a fork of this process: keep the collector off the inherited
        # heap, or its first collection in each init copies every page (copy-on-write).
        gc.collect()
        gc.freeze()
        wire.send_packet(self.control, {"ok": True, "images": sorted(self.images)})
        while True:
            self._reap_orphans()
            try:
                message, _ = wire.recv_packet(self.control)
            except wire.PeerClosed:
                break
            except wire.WireError as exc:
                wire.send_packet(self.control, {"ok": False, "error": str(exc)})
                continue
            op = message.get("op")
            try:
                if op == "create":
                    reply, out_fds = self._create(message)
                elif op == "workdir":
                    reply, out_fds = self._workdir(message), []
                elif op == "destroy":
                    reply, out_fds = self._destroy(int(message["jail"])), []
                elif op == "mount_image":
                    reply, out_fds = self._mount_image(message), []
                elif op == "retire_image":
                    reply, out_fds = self._retire_image(message), []
                elif op == "shutdown":
                    break
                else:
                    reply, out_fds = {"ok": False, "error": f"unknown operation {op!r}"}, []
            except Exception as exc:
                reply, out_fds = {"ok": False, "error": f"{str(op)[:40]}: {exc}"[:2000]}, []
            wire.send_packet(self.control, reply, out_fds)
            for fd in out_fds:
                os.close(fd)
            try:
                self._expire_stores()
            except OSError as exc:  # it stays mounted, unused, until we stop
                print(f"jailcc-launcher: warning: dropping a store: {exc}", file=sys.stderr)
            self._refill_while_idle()
        self.shutdown()

    def shutdown(self) -> None:
        for key in list(self.warm):
            self._drain(key)
        for jail_id in list(self.jails):
            self._destroy(jail_id)
        for path in self.cgroup_parents.values():
            with contextlib.suppress(OSError):
                os.rmdir(path)  # shared with other launchers: only if empty

    def _reap_orphans(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for jail in self.jails.values():
                if jail.pid == pid:
                    jail.exited = True

    # -- operations -----------------------------------------------------------------------

    def _create(self, message: dict) -> tuple[dict, list[int]]:
        store = _store_request(message.get("store"))
        reply, fds = self._take_jail(message)
        if store is None:
            return reply, fds
        try:
            self._give_store(self.jails[reply["jail"]], fds[0], *store)
        except OSError as exc:  # the jail works without: its own store, in memory
            reply["store_error"] = str(exc)[:300]
        except BaseException:
            os.close(fds[0])
            self._destroy(reply["jail"])
            raise
        return reply, fds

    def _take_jail(self, message: dict) -> tuple[dict, list[int]]:
        limits = JailLimits.from_dict(message.get("limits") or {})
        weaken = frozenset(message.get("weaken") or ())
        if weaken and not self.allow_weaken:
            raise ValueError("weakened jails are for tests: start the launcher with --allow-weaken")
        if not weaken <= WEAKENINGS:
            raise ValueError(f"unknown weakenings {sorted(weaken - WEAKENINGS)}")
        image = message["image"]
        if image not in self.images:
            raise ValueError(f"no image named {image!r}")
        if weaken or not self.warm_per_key:
            return self._finish(self._start(image, limits, weaken))
        key = (image, limits)
        ready = self.warm.pop(key, [])
        self.warm[key] = ready  # most recently asked-for key last
        while len(self.warm) > MAX_WARM_KEYS:
            self._drain(next(iter(self.warm)))
        while ready:
            try:
                return self._finish(ready.pop(0))
            except OSError as exc:  # a warm jail that failed: say so, try the next or build
                print(f"jailcc-launcher: warning: {exc}", file=sys.stderr)
        return self._finish(self._start(image, limits, weaken))

    def _refill_while_idle(self) -> None:
        """Start building warm jails; their set-up runs on while we serve requests."""
        for key, ready in list(self.warm.items()):
            while len(ready) < self.warm_per_key:
                # A jail's first requests (work dir, teardown) tend to follow each other
                # closely: give them the launcher first, and build in the gaps.
                if select.select([self.control], [], [], REFILL_IDLE_SECONDS)[0]:
                    return
                try:
                    ready.append(self._start(*key, frozenset()))
                except (OSError, ValueError) as exc:
                    print(f"jailcc-launcher: warning: building a warm jail: {exc}", file=sys.stderr)
                    return

    def _drain(self, key: tuple[str, JailLimits]) -> None:
        for pending in self.warm.pop(key, []):
            pending.server_end.close()
            os.close(pending.ready_r)
            self._destroy(pending.jail_id)

    def _start(self, image: str, limits: JailLimits, weaken: frozenset[str]) -> PendingJail:
        """Fork a jail's init; it builds the jail and says so on a pipe."""
        image_root = self.images[image]
        pool_uid = self.pool.acquire()
        jail_uid = 0 if "root_uid" in weaken else pool_uid
        self.counter += 1
        jail_id = self.counter
        try:
            group = self._jail_cgroup(f"{os.getpid()}-{jail_id}", limits, weaken)
        except BaseException:
            self.pool.release(pool_uid)
            raise
        server_end, jail_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        new_pidns = "no_pidns" not in weaken
        if new_pidns:
            sc.unshare(sc.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the jail's init
            _jail_main(
                jail_end,
                ready_w,
                image_root,
                pool_uid,
                jail_uid,
                group,
                limits,
                weaken,
                self.spawn_helper,
                self.jail_code,
            )
        if new_pidns:
            sc.setns(self.own_pidns, sc.CLONE_NEWPID)  # later forks stay in our namespace
        jail_end.close()
        os.close(ready_w)
        pidfd = os.pidfd_open(pid)
        self.jails[jail_id] = LiveJail(
            pid, jail_uid, pool_uid, group, pidfd, limits, weaken, rootfs.image_top(image_root)
        )
        return PendingJail(jail_id, server_end, ready_r)

    def _jail_cgroup(
        self, name: str, limits: JailLimits, weaken: frozenset[str]
    ) -> cgroups.JailCgroup:
        memory = None if "no_memory_limit" in weaken else limits.memory_bytes
        pids = None if "no_pids_limit" in weaken else limits.pids_max
        try:
            return cgroups.JailCgroup.create(self.cgroup_parents, name, memory, pids)
        except FileNotFoundError:
            # The "jailcc" parents are shared with this machine's other launchers, and one that
            # stopped while we had no jail removed them (it removes them when empty): again.
            self.cgroup_parents = cgroups.parent_dirs(self.all_jails_memory)
            return cgroups.JailCgroup.create(self.cgroup_parents, name, memory, pids)

    def _finish(self, pending: PendingJail) -> tuple[dict, list[int]]:
        """Wait for a started jail to be ready; the reply and the channel to its init."""
        status = _read_ready(pending.ready_r)
        os.close(pending.ready_r)
        jail = self.jails[pending.jail_id]
        if status != "ok":
            pending.server_end.close()
            report = self._destroy(pending.jail_id)
            raise OSError("; ".join([f"jail set-up failed: {status}", *report["leaks"]]))
        reply = {
            "ok": True,
            "jail": pending.jail_id,
            "pid": jail.pid,
            "uid": jail.uid,
            "cgroups": jail.cgroup.paths,
        }
        fd = os.dup(pending.server_end.fileno())
        pending.server_end.close()
        return reply, [fd]

    def _workdir(self, message: dict) -> dict:
        jail = self.jails[int(message["jail"])]
        path = message["path"]
        try:
            rootfs.validate_workdir(path, jail.image_top)
        except rootfs.WorkdirError as exc:  # nothing touched: the jail goes on as it was
            return {"ok": False, "error": f"workdir: {exc}", "untouched": True}
        executable = message.get("executable") is True
        sc.setns(jail.pidfd, sc.CLONE_NEWNS)
        try:
            previous, jail.workdir = jail.workdir, None
            rootfs.prepare_workdir(path, previous, jail.uid, jail.limits, jail.weaken, executable)
        finally:
            sc.setns(self.own_mntns, sc.CLONE_NEWNS)
            os.chdir("/")
        jail.workdir = path
        return {"ok": True}

    def _give_store(self, jail: LiveJail, channel_fd: int, user: str, size: int) -> None:
        """Hand a new jail's init its user's blob store, made on the user's first jail: a
        descriptor of a detached copy of the store's mount, on no path, so that only the
        inits of the user's jails reach the files (never a job, which starts with no inherited
        descriptor, nor another user's jail). The inits check each blob's digest when they
        read it (jobs/blobstore.py)."""
        store = self.stores.get(user) or self._new_store(user, size)
        clone = sc.clone_mount(store.path)
        channel = socket.socket(fileno=os.dup(channel_fd))
        try:
            channel.settimeout(READY_TIMEOUT)
            wire.send_message(channel, {"op": "store"}, fds=[clone])
            reply, _ = wire.recv_message(channel, 0)
        except (OSError, wire.WireError) as exc:
            raise OSError(f"the jail's init did not take its store: {exc}") from None
        finally:
            channel.close()
            os.close(clone)
        if reply.get("ok") is not True:
            raise OSError(f"the jail's init refused its store: {str(reply.get('error'))[:200]}")
        store.jails += 1
        store.used = time.monotonic()
        jail.store_owner = user

    def _new_store(self, user: str, size: int) -> UserStore:
        if len(self.stores) >= MAX_STORES:
            idle = [(store.used, owner) for owner, store in self.stores.items() if not store.jails]
            if not idle:
                raise OSError(f"all {MAX_STORES} users' blob stores are held by live jails")
            self._drop_store(min(idle)[1])
        self.store_mounts += 1
        path = os.path.join(rootfs.MOUNT_BASE, f"store{self.store_mounts}")
        os.mkdir(path, 0o700)
        try:
            # 0777: the user's jails run as different throwaway uids, and each may evict.
            sc.mount(
                "jailcc-store",
                path,
                "tmpfs",
                rootfs.SECURE | sc.MS_NOEXEC | MS_STRICTATIME,
                f"size={size},nr_inodes={max(4096, size // 4096)},mode=0777",
            )
        except BaseException:
            os.rmdir(path)
            raise
        store = self.stores[user] = UserStore(path)
        return store

    def _drop_store(self, user: str) -> None:
        store = self.stores.pop(user)
        # Jails that still hold a clone keep it until they end.
        sc.umount2(store.path, sc.MNT_DETACH)
        os.rmdir(store.path)

    def _expire_stores(self) -> None:
        now = time.monotonic()
        for user, store in list(self.stores.items()):
            if not store.jails and now - store.used > STORE_IDLE_SECONDS:
                self._drop_store(user)

    def _mount_image(self, message: dict) -> dict:
        """Mount an image file as a new name: a file given at start, or a *.img file right in
        the image directory, nothing else."""
        name, path = message.get("name"), message.get("path")
        if not isinstance(name, str) or not IMAGE_NAME.fullmatch(name):
            raise ValueError("an image name is letters, digits and ._+- (then @N)")
        if name in self.images:
            raise ValueError(f"image {name!r} is mounted already")
        if len(self.images) >= MAX_IMAGES:
            raise ValueError(f"{MAX_IMAGES} images are mounted already")
        if not isinstance(path, str) or not self._may_mount(path):
            raise ValueError("only images given at start or *.img files in the image directory")
        target = os.path.join(rootfs.MOUNT_BASE, f"image{self.targets}")
        self.targets += 1
        os.mkdir(target, 0o755)
        try:
            loopdev.mount_image(path, target, MAX_IMAGE_BYTES)
        except BaseException:
            os.rmdir(target)
            raise
        self.images[name] = target
        return {"ok": True}

    def _may_mount(self, path: str) -> bool:
        if path in self.start_images:
            return True
        directory, file = os.path.split(path)
        return (
            self.image_dir is not None
            and directory == self.image_dir
            and os.path.normpath(path) == path
            and IMAGE_NAME.fullmatch(file.removesuffix(".img")) is not None
            and file.endswith(".img")
        )

    def _retire_image(self, message: dict) -> dict:
        name = message.get("name")
        if not isinstance(name, str) or name not in self.images:
            raise ValueError(f"no image named {str(name)[:80]!r}")
        target = self.images.pop(name)
        for key in [k for k in self.warm if k[0] == name]:
            self._drain(key)
        # Each jail built from it holds its own copy of the mount and keeps it until it ends;
        # the loop device is freed (autoclear) with the last one.
        sc.umount2(target, sc.MNT_DETACH)
        os.rmdir(target)
        return {"ok": True}

    def _destroy(self, jail_id: int) -> dict:
        started = time.monotonic()
        jail = self.jails.pop(jail_id)
        store = self.stores.get(jail.store_owner or "")
        if store is not None:
            store.jails -= 1
            store.used = started
        leaks: list[str] = []
        if not jail.exited:
            # Through the pidfd: it names this init, whatever the kernel does with its pid.
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(jail.pidfd, signal.SIGKILL)
            # The init's exit kills and waits for every process in its PID namespace.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(jail.pid, 0)
        os.close(jail.pidfd)
        survivors = jail.cgroup.pids()
        if survivors:
            leaks.append(f"{len(survivors)} process(es) outlived the jail's init: {survivors}")
        leaks += jail.cgroup.remove()
        self._reap_orphans()
        if leaks:
            # Something of this uid may still exist: never hand the uid to another jail.
            self.quarantined.append(jail.pool_uid)
        else:
            self.pool.release(jail.pool_uid)
        return {"ok": True, "seconds": time.monotonic() - started, "leaks": leaks}


def _store_request(request: object) -> tuple[str, int] | None:
    """(user, size in bytes) from a create request's "store", checked before any jail is made."""
    if request is None:
        return None
    if not isinstance(request, dict) or set(request) != {"user", "bytes"}:
        raise ValueError('"store" is {"user": NAME, "bytes": SIZE}')
    user, size = request["user"], request["bytes"]
    if not isinstance(user, str) or not 0 < len(user) <= MAX_USER_NAME or "\0" in user:
        raise ValueError("a store's user is a name of 1 to 1024 characters")
    if type(size) is not int or not MIN_STORE_BYTES <= size <= MAX_STORE_BYTES:
        raise ValueError(f"a store's size is {MIN_STORE_BYTES} to {MAX_STORE_BYTES} bytes")
    return user, size


def _check_image_dir(path: str) -> None:
    """We mount, as root, what is in it: only root may put files there."""
    info = os.stat(path)
    if path != os.path.realpath(path) or not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"image directory {path}: not a directory named by its real path")
    if info.st_uid != 0 or info.st_mode & 0o022:
        raise ValueError(
            f"image directory {path}: must be owned by root and writable by no one else"
        )


def _read_ready(fd: int) -> str:
    ready, _, _ = select.select([fd], [], [], READY_TIMEOUT)
    if not ready:
        return "timed out"
    data = os.read(fd, 4096)
    return data.decode(errors="replace") if data else "the jail's init died during set-up"


def _jail_main(
    sock: socket.socket,
    ready_w: int,
    image_root: str,
    pool_uid: int,
    jail_uid: int,
    group: cgroups.JailCgroup,
    limits: JailLimits,
    weaken: frozenset[str],
    spawn_helper: str,
    jail_code: JailCode,
) -> None:  # pragma: no cover - runs in the jail
    try:
        sc.close_fds_except({sock.fileno(), ready_w})
        os.set_inheritable(sock.fileno(), False)
        if "init_keeps_stdio" not in weaken:
            # Not the server's terminal or log, not its session: a compromised init could
            # otherwise type into the admin's shell (TIOCSTI) or forge log lines. Its stdio
            # becomes the jail's own /dev/null once the jail is built (the host's is not used).
            for fd in (0, 1, 2):
                os.close(fd)
            os.setsid()
        prctl.set_pdeathsig(signal.SIGKILL)
        prctl.set_proctitle("jailcc-init")
        group.join_self()
        # A cgroup namespace too, once inside the jail's group: /proc shows no host paths.
        flags = sc.CLONE_NEWNS | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS | sc.CLONE_NEWCGROUP
        if "no_netns" not in weaken:
            flags |= sc.CLONE_NEWNET
        sc.unshare(flags)
        socket.sethostname("jailcc")
        rootfs.build(image_root, jail_uid, limits, weaken, spawn_helper)
        if "init_keeps_stdio" not in weaken:
            _stdio_to_null()
        # As PID 1 an init ignores signals it has no handler for: drop Python's SIGINT handler.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # Opened while root: once non-dumpable, the init's own /proc files belong to root.
        io_counters = os.open("/proc/self/io", os.O_RDONLY | os.O_CLOEXEC)
        privileges.drop(pool_uid, weaken)
        # Only now, chrooted and unprivileged, does the job code run: the launcher only read
        # it. Done while the jail waits in the warm pool, so no connection waits for it.
        jail_code.load()
        init_class = sys.modules[JAIL_INIT].JailInit
        jail_init = init_class(sock, limits, weaken, rootfs.SPAWN_HELPER, io_counters)
        jail_init.warm_up()
        os.write(ready_w, b"ok")
        os.close(ready_w)
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(ready_w, f"{type(exc).__name__}: {exc}".encode()[:4000])
        os._exit(1)
    try:
        jail_init.serve()
    finally:
        os._exit(0)


def _stdio_to_null() -> None:  # pragma: no cover - runs in the jail
    """Make 0, 1 and 2 the jail's /dev/null, a node made from its fixed numbers (rootfs)."""
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    if null > 2:
        os.close(null)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jailcc-launcher", description=__doc__)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--image", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--image-dir", metavar="DIR", help="where mount_image may take *.img")
    parser.add_argument("--uid-base", type=int, default=DEFAULT_BASE)
    parser.add_argument("--uid-count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--warm", type=int, default=1, help="jails kept ready per image/limits")
    parser.add_argument("--allow-weaken", action="store_true", help="accept test weakenings")
    parser.add_argument("--jails-memory", type=int, metavar="BYTES", help="all jails' memory")
    parser.add_argument("--spawn-helper", required=True, help="the static jailcc-spawn binary")
    parser.add_argument(
        "--jail-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="project code each jail imports from memory once unprivileged (it may register"
        " connection handlers); read as source here, never run",
    )
    parser.add_argument(
        "--jail-library",
        action="append",
        default=[],
        metavar="MODULE",
        help="a library (not project code) that jail code needs, imported before any jail forks",
    )
    args = parser.parse_args(argv)
    control = socket.socket(fileno=args.control_fd)
    try:
        # Now, while the host's files are in reach: a jail cannot load code after chroot.
        import_libraries([*INIT_STDLIB, *args.jail_library])
        jail_code = JailCode.read([*JAIL_INIT_CODE, *args.jail_module])
    except (OSError, ImportError, SyntaxError, ValueError, JailCodeError) as exc:
        wire.send_packet(control, {"ok": False, "error": f"launcher start-up failed: {exc}"})
        sys.exit(1)
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != args.parent_pid:
        sys.exit(1)  # the server died before we set the parent-death signal
    prctl.set_child_subreaper(True)
    try:
        images = dict(item.split("=", 1) for item in args.image)
        launcher = Launcher(
            control,
            images,
            UidPool(args.uid_base, args.uid_count),
            args.spawn_helper,
            jail_code,
            args.warm,
            args.allow_weaken,
            args.image_dir,
            args.jails_memory,
        )
    except (OSError, ValueError, cgroups.CgroupError) as exc:
        wire.send_packet(control, {"ok": False, "error": f"launcher start-up failed: {exc}"})
        sys.exit(1)
    launcher.serve()


if __name__ == "__main__":
    main()
