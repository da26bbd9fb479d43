"""Attach an image file to a loop device read-only and mount it, with the kernel's autoclear.

The launcher mounts each image once, inside its own private mount namespace: when that
namespace and every jail copied from it are gone, the mount goes and autoclear frees the loop
device, so even a killed launcher leaves no loop device or mount behind.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat

from . import syscalls

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_char * 64),
        ("lo_crypt_name", ctypes.c_char * 64),
        ("lo_encrypt_key", ctypes.c_char * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", _LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


def _filesystem_type(image_fd: int) -> str:
    magic = os.pread(image_fd, 4, 0)
    if magic == b"hsqs":
        return "squashfs"
    if os.pread(image_fd, 2, 1024 + 0x38) == b"\x53\xef":
        return "ext4"
    raise ValueError("not a squashfs or ext4 image")


def mount_image(image_path: str, target: str, max_bytes: int) -> str:
    """Mount image_path read-only on target through a fresh autoclear loop device. The file
    (not a symlink) must be root's and writable by no one else: the device reads it live."""
    image_fd = os.open(image_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        info = os.fstat(image_fd)  # (this very file: no name to swap between check and use)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            raise ValueError(f"{image_path}: not a regular file of at most {max_bytes} bytes")
        if info.st_uid != 0 or info.st_mode & 0o022:
            raise ValueError(f"{image_path}: an image must be root's and writable by no one else")
        fstype = _filesystem_type(image_fd)
        config = _LoopConfig()
        config.fd = image_fd
        config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR
        config.info.lo_file_name = os.fsencode(image_path)[:63]
        device, loop_fd = _configure_free_device(config)
    finally:
        os.close(image_fd)
    # Autoclear frees the device at its last close: keep it open until the mount holds it.
    try:
        flags = syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV
        # Named through our descriptor, not /dev/loopN: the mount keeps the source string, and
        # every jail's /proc/self/mountinfo shows it. This one says nothing about the host.
        syscalls.mount(f"/proc/self/fd/{loop_fd}", target, fstype, flags)
    finally:
        os.close(loop_fd)
    return device


def _configure_free_device(config: _LoopConfig) -> tuple[str, int]:
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(64):  # another process may grab the free device first
            number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            device = f"/dev/loop{number}"
            loop_fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.ioctl(loop_fd, LOOP_CONFIGURE, config)
            except OSError as exc:
                os.close(loop_fd)
                if exc.errno == errno.EBUSY:
                    continue
                raise
            return device, loop_fd
        raise OSError(errno.EBUSY, "no free loop device")
    finally:
        os.close(ctl)
