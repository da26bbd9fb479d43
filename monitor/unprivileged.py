"""What root hands to processes of the network service's uid: the uid itself, starting such a
process, and the toolchain images' manifests, which that uid reads and checks so that neither
unsquashfs nor the image parser ever runs as root."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
from typing import Any

from jailcc.images.errors import ImageError
from jailcc.images.manifest import Manifest, parse_manifest
from jailcc.sandbox.uidpool import DEFAULT_BASE

DEFAULT_SERVICE_USER = "jailccd"
# The network service's uid where no jailccd user exists: its own, next to the jails' range.
SERVICE_UID_FALLBACK = DEFAULT_BASE - 1
MAX_MANIFEST = 64 << 20
INSPECT_TIMEOUT = 600.0  # a verify extracts the whole image


def service_user(name: str = DEFAULT_SERVICE_USER) -> tuple[int, int]:
    """The uid and gid the network service runs as: the named user's, or, for the default
    name when no such user exists, a uid of its own just below the jails' range."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if name != DEFAULT_SERVICE_USER:
            raise ValueError(f"--service-user {name}: no such user") from None
        return SERVICE_UID_FALLBACK, SERVICE_UID_FALLBACK
    if entry.pw_uid == 0:
        raise ValueError(f"--service-user {name}: must not be root")
    return entry.pw_uid, entry.pw_gid


def start_unprivileged(
    module: str, args: list[str], uid: int, gid: int, **popen: Any
) -> subprocess.Popen[bytes]:
    """Run `python -m module args` as uid:gid with no supplementary groups, no capabilities (a
    uid change from root clears them all), no_new_privs, and death with us. Not run as root
    (`jailccd --check-config` by a user), it stays our uid: as unprivileged as we are."""

    def unprivileged() -> None:  # runs in the child after the uid change, before exec
        import prctl

        prctl.set_no_new_privs(True)
        prctl.set_pdeathsig(signal.SIGKILL)

    switch = {"user": uid, "group": gid, "extra_groups": []} if os.geteuid() == 0 else {}
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        **switch,
        cwd="/",
        preexec_fn=unprivileged,
        **popen,
    )


def image_manifest(path: str, ids: tuple[int, int], verify: bool = False) -> Manifest:
    """An image's manifest as images/inspect.py, run as ids, reads it (and with verify,
    checks the whole image against it). The image is opened here and handed over open, so it
    need only be readable by others, wherever it lies."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"{path}: {exc.strerror}") from None
    try:
        args = ["--fd", str(fd), "--name", path, *(["--verify"] if verify else [])]
        child = start_unprivileged(
            "jailcc.images.inspect",
            args,
            *ids,
            pass_fds=[fd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(fd)
    try:
        out, err = child.communicate(timeout=INSPECT_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise ImageError(f"{path}: reading the image took over {INSPECT_TIMEOUT:.0f} s") from None
    if child.returncode != 0:
        reason = err.decode(errors="replace").strip()[-500:] or f"status {child.returncode}"
        raise ImageError(reason)
    if len(out) > MAX_MANIFEST:
        raise ImageError(f"{path}: a manifest of more than {MAX_MANIFEST} bytes")
    return parse_manifest(out, path)
