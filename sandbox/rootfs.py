"""The jail's file system: a fresh tmpfs root holding the read-only image, a minimal /dev, its
own /proc and a small /tmp, entered by pivot_root and then a nested chroot.

Layout inside the jail's mount namespace, after pivot_root:
    /            OUTER: an empty, tiny tmpfs (the mount namespace's root)
    /r           ROOT: the jail's root tmpfs, read-only; the jail's processes are chrooted here
    /r/usr ...   binds of the image's top-level entries, read-only
    /r/<cwd>     the writable work dir, mounted per job by the launcher (prepare_workdir)

The nested chroot matters: the kernel refuses to create a user namespace for a chrooted process,
which closes the user-namespace route to capabilities without a seccomp filter.

Nothing in the jail comes from the host's /dev, and its mount table names nothing of the host:
the device nodes are made from fixed numbers (a broken host node cannot break every jail), every
tmpfs has a "jailcc-..." source name, the image is mounted by a source that names no device or
file (loopdev.py), and the spawn helper is bound from the launcher's own copy of it, not from
the host path (a bind shows its source's file system, options and path in /proc/self/mountinfo).
"""

from __future__ import annotations

import contextlib
import os
import stat

from . import syscalls as sc
from .spec import JailLimits

# Where the launcher mounts images and builds jail roots, inside its private mount namespace.
MOUNT_BASE = "/run/jailcc/mnt"
JAIL_BUILD_DIR = os.path.join(MOUNT_BASE, "jail")
ROOT_IN_OUTER = "/r"
# The C helper that starts each job (spawn.c), bound read-only into every jail from the
# launcher's copy of it, in a tmpfs of its own (install_spawn_helper).
SPAWN_HELPER = "/.jailcc-spawn"
HELPER_DIR = os.path.join(MOUNT_BASE, "helpers")
SPAWN_HELPER_COPY = os.path.join(HELPER_DIR, "spawn")

# The harmless character devices, by their fixed numbers (Documentation/admin-guide/devices.txt).
DEVICES = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
}
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}
# Entries of the image that the jail provides itself, or does not need (the manifest).
RESERVED_TOP = frozenset({"dev", "proc", "tmp", ".jailcc"})
# Parts of /proc that expose or change host-wide state: read-only, as container runtimes do.
# (The rest of /proc that could change anything is root-only, and the jail is never root.)
PROC_READONLY = ("sys", "sysrq-trigger")

SECURE = sc.MS_NOSUID | sc.MS_NODEV


def _bind_readonly(source: str, target: str, flags: int) -> None:
    sc.mount(source, target, None, sc.MS_BIND | sc.MS_REC)
    sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | flags)


def install_spawn_helper(host_path: str) -> None:
    """Copy the spawn helper into a read-only tmpfs of the launcher's, once at start: jails bind
    it from there, so their mount table shows "jailcc-helpers /spawn", not the host's disk and
    the helper's path on it. Runs in the launcher's private mount namespace."""
    os.mkdir(HELPER_DIR, 0o755)
    sc.mount("jailcc-helpers", HELPER_DIR, "tmpfs", SECURE, "size=4m,nr_inodes=8,mode=0755")
    source = os.open(host_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        # Only a regular file: whatever else sits at the path is not the helper we built.
        if not stat.S_ISREG(os.fstat(source).st_mode):
            raise OSError(f"the spawn helper {host_path} is not a regular file")
        target = os.open(SPAWN_HELPER_COPY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
        try:
            os.fchmod(target, 0o755)  # whatever the server's umask (a unit's UMask=0077 too)
            while chunk := os.read(source, 1 << 20):
                os.write(target, chunk)
        finally:
            os.close(target)
    finally:
        os.close(source)
    sc.mount(None, HELPER_DIR, None, sc.MS_REMOUNT | sc.MS_RDONLY | SECURE)


def build(
    image_root: str, uid: int, limits: JailLimits, weaken: frozenset[str], spawn_helper: str
) -> None:
    """Build the jail's root and enter it. Runs in the jail's init, as root, in fresh mount and
    PID namespaces; the caller drops privileges afterwards."""
    secure = 0 if "suid_mounts" in weaken else SECURE
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    outer = JAIL_BUILD_DIR
    sc.mount(
        "jailcc-outer", outer, "tmpfs", SECURE | sc.MS_NOEXEC, "size=16k,nr_inodes=16,mode=0755"
    )
    root = outer + ROOT_IN_OUTER
    os.mkdir(root, 0o755)
    root_opts = "size=1m,nr_inodes=4096,mode=0755"
    if "writable_root" in weaken:
        root_opts += f",uid={uid},gid={uid}"
    sc.mount("jailcc-root", root, "tmpfs", secure, root_opts)

    image_flags = secure | (0 if "writable_image" in weaken else sc.MS_RDONLY)
    for name in sorted(os.listdir(image_root)):
        if name in RESERVED_TOP:
            continue
        source, target = os.path.join(image_root, name), os.path.join(root, name)
        st = os.lstat(source)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(source), target)
        elif stat.S_ISDIR(st.st_mode):
            os.mkdir(target, 0o755)
            _bind_readonly(source, target, image_flags)
        elif stat.S_ISREG(st.st_mode):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
            _bind_readonly(source, target, image_flags)

    if "share_host_paths" in weaken:
        for host_dir in ("/etc", "/hosttmp"):
            with contextlib.suppress(FileExistsError):
                os.mkdir(root + host_dir, 0o755)
        _bind_readonly("/etc", root + "/etc", sc.MS_RDONLY | secure)
        _bind_readonly("/tmp", root + "/hosttmp", sc.MS_RDONLY | secure)

    target = root + SPAWN_HELPER
    os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o755))
    # From the launcher's copy: a bind of the host's file shows the host's disk in mountinfo.
    helper = spawn_helper if "host_mount_sources" in weaken else SPAWN_HELPER_COPY
    _bind_readonly(helper, target, sc.MS_RDONLY | secure)

    _build_dev(root + "/dev", secure, "wrong_dev_nodes" in weaken)
    _build_proc(root + "/proc", weaken)

    os.mkdir(root + "/tmp", 0o755)
    tmp_size = "" if "no_disk_limit" in weaken else f"size={limits.tmp_bytes},"
    sc.mount(
        "jailcc-tmp",
        root + "/tmp",
        "tmpfs",
        secure | _noexec(weaken),
        f"{tmp_size}nr_inodes={limits.tmp_inodes},mode=0700,uid={uid},gid={uid}",
    )

    if "writable_root" not in weaken:
        sc.mount(None, root, None, sc.MS_REMOUNT | sc.MS_RDONLY | secure)

    os.chdir(outer)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)  # the old root, stacked on "." by pivot_root(".", ".")
    os.chdir("/")
    if "no_chroot_nesting" in weaken:
        # Make ROOT the namespace's root too, so the process is not "chrooted".
        os.chdir(ROOT_IN_OUTER)
        sc.pivot_root(".", ".")
        sc.umount2(".", sc.MNT_DETACH)
    else:
        os.chroot(ROOT_IN_OUTER)
    os.chdir("/")


def _build_dev(dev: str, secure: int, wrong_nodes: bool) -> None:
    """A read-only tmpfs holding the harmless device nodes, made while we still have CAP_MKNOD:
    one mount instead of a bind per device. The jail can never add a node (no CAP_MKNOD, the
    tmpfs is read-only, and every writable mount is nodev). The nodes are made from their fixed
    numbers, never copied from the host's /dev: a host node that a bug or an admin replaced
    (a regular /dev/null) would otherwise break every jail."""
    os.mkdir(dev, 0o755)
    sc.mount(
        "jailcc-dev", dev, "tmpfs", sc.MS_NOSUID | sc.MS_NOEXEC, "size=16k,nr_inodes=32,mode=0755"
    )
    numbers = list(DEVICES.values())
    if wrong_nodes:  # the wrong_dev_nodes weakening: each node gets the next one's numbers
        numbers = numbers[1:] + numbers[:1]
    for name, (major, minor) in zip(DEVICES, numbers, strict=True):
        path = os.path.join(dev, name)
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(path, 0o666)  # mknod applies the umask
    for name, link in DEV_LINKS.items():
        os.symlink(link, os.path.join(dev, name))
    flags = sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOEXEC | (secure & sc.MS_NOSUID)
    sc.mount(None, dev, None, flags)


def _build_proc(proc: str, weaken: frozenset[str]) -> None:
    os.mkdir(proc, 0o755)
    sc.mount("proc", proc, "proc", SECURE | sc.MS_NOEXEC)
    if "rw_proc_sys" in weaken:
        return
    for name in PROC_READONLY:
        path = os.path.join(proc, name)
        if os.path.exists(path):
            _bind_readonly(path, path, sc.MS_RDONLY | SECURE | sc.MS_NOEXEC)


class WorkdirError(Exception):
    pass


UMOUNT_NOFOLLOW = 8


def _unmount_workdir(root: str, path: str) -> None:
    """Detach the previous job's work tmpfs, walking to it without following any symlink:
    the job may have rearranged every directory it could write to on the way."""
    parts = path.split("/")[1:]
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        parent_dev = os.fstat(fd).st_dev
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode) or st.st_dev == parent_dev:
            raise OSError("not a mount point")
        os.fchdir(fd)
        sc.umount2(parts[-1], sc.MNT_DETACH | UMOUNT_NOFOLLOW)
    except OSError as exc:
        # The old work dir is out of reach: the jail cannot be trusted to start clean.
        raise WorkdirError(
            f"cannot unmount the previous work dir {path!r}: {exc}; the jail is retired"
        ) from None
    finally:
        os.close(fd)
        os.chdir("/")


def image_top(image_root: str) -> frozenset[str]:
    """The image's top-level entries as a jail built from it holds them (see build)."""
    return frozenset(os.listdir(image_root)) - RESERVED_TOP


def validate_workdir(path: str, image_entries: frozenset[str] = frozenset()) -> None:
    """Refuse, before anything is touched, a work dir the launcher cannot mount: not a
    normalized absolute path, in the jail's own /proc or /dev, or in the image (a top-level
    entry of image_entries, or the spawn helper)."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise WorkdirError("the working directory must be an absolute path")
    if len(os.fsencode(path)) > 1024:
        raise WorkdirError("the working directory path is too long")
    parts = path.split("/")[1:]
    if not parts or parts == [""] or any(p in ("", ".", "..") for p in parts):
        raise WorkdirError(f"the working directory {path!r} is not a normalized path below /")
    if parts[0] in ("proc", "dev", "etc"):
        # (/etc: the programs' loader would read a job's ld.so.preload and ld.so.cache)
        raise WorkdirError(f"the working directory {path!r} cannot lie in /{parts[0]}")
    if parts[0] in image_entries or "/" + parts[0] == SPAWN_HELPER:
        raise WorkdirError(
            f"the working directory {path!r} lies in the toolchain image (/{parts[0]})"
        )


def _noexec(weaken: frozenset[str]) -> int:
    """What the jail writes it cannot map executable: a job's own code (a library its
    compiler's loader is led to, a binary) never runs; only the image's does."""
    return 0 if "exec_mounts" in weaken else sc.MS_NOEXEC


def prepare_workdir(
    path: str,
    previous: str | None,
    uid: int,
    limits: JailLimits,
    weaken: frozenset[str],
    executable: bool = False,
) -> None:
    """Mount a fresh work tmpfs at path inside the jail. Runs in the launcher after setns()
    into the jail's mount namespace, whose root is OUTER. Its files cannot be executed or
    mapped executable unless `executable` (the selftest's probes run from it).

    Every directory on the way is opened without following symlinks, relative to its parent,
    and the mount is made on the final descriptor, so a jailed process that controls part of
    the path (in its /tmp) cannot redirect the mount elsewhere.
    """
    validate_workdir(path)
    root = "/" if "no_chroot_nesting" in weaken else ROOT_IN_OUTER
    if previous is not None:
        _unmount_workdir(root, previous)
    readonly_root = "writable_root" not in weaken
    secure = 0 if "suid_mounts" in weaken else SECURE
    if readonly_root:
        sc.mount(None, root, None, sc.MS_REMOUNT | secure)
    try:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for part in path.split("/")[1:]:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    raise WorkdirError(
                        f"cannot make the working directory {path!r} in the jail: {exc.strerror}"
                    ) from None
                os.close(fd)
                fd = nxt
            size = "" if "no_disk_limit" in weaken else f"size={limits.work_bytes},"
            # The namespace has no /proc of ours to name the descriptor by: mount on ".".
            os.fchdir(fd)
            sc.mount(
                "jailcc-work",
                ".",
                "tmpfs",
                secure | (0 if executable else _noexec(weaken)),
                f"{size}nr_inodes={limits.work_inodes},mode=0700,uid={uid},gid={uid}",
            )
        finally:
            os.close(fd)
    except PermissionError as exc:
        raise WorkdirError(f"cannot make the working directory {path!r}: {exc}") from None
    except OSError as exc:
        if isinstance(exc, WorkdirError):
            raise
        raise WorkdirError(
            f"cannot make the working directory {path!r} in the jail: {exc.strerror}"
            " (it may lie inside the toolchain image)"
        ) from None
    finally:
        if readonly_root:
            sc.mount(None, root, None, sc.MS_REMOUNT | sc.MS_RDONLY | secure)
