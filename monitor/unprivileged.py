"""What root hands to processes of the network service's uid: the uid itself, starting such a
process, and the toolchain images, which that uid reads and checks against their manifests so
that neither unsquashfs nor the manifest's parser ever runs as root."""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

from jailcc.images.compilers import ImageCompilers, parse_image_compilers
from jailcc.images.errors import ImageError
from jailcc.sandbox.uidpool import DEFAULT_BASE

DEFAULT_SERVICE_USER = "jailccd"
# The network service's uid where no jailccd user exists: its own, next to the jails' range.
SERVICE_UID_FALLBACK = DEFAULT_BASE - 1
# `jailccd selftest`'s probes (selftest/driver.py), which hold the launcher's channel: a uid no
# other process has, not even the network service, whose peers may have taken it over.
SELFTEST_UID = DEFAULT_BASE - 2
# The LDAP helper (ldaphelper/), which parses the directory's answers and holds a TGT of ours.
LDAP_UID = DEFAULT_BASE - 3
MAX_SUMMARY = 1 << 20
INSPECT_TIMEOUT = 1800.0  # a verify extracts and hashes the whole image


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


class StartError(OSError):
    """A process could not be started as the unprivileged uid (most often: that uid cannot
    read jailcc's installation)."""


def start_unprivileged(
    module: str, args: list[str], uid: int, gid: int, pdeathsig: bool = True, **popen: Any
) -> subprocess.Popen[bytes]:
    """Run `python -m module args` as uid:gid with no supplementary groups, no capabilities (a
    uid change from root clears them all), no_new_privs, and death with the calling thread
    (without pdeathsig, the child must end by itself). Not run as root (`jailccd
    --check-config` by a user), it stays our uid: as unprivileged as we are."""

    def unprivileged() -> None:  # runs in the child after the uid change, before exec
        import prctl

        prctl.set_no_new_privs(True)
        if pdeathsig:
            prctl.set_pdeathsig(signal.SIGKILL)

    switch = {"user": uid, "group": gid, "extra_groups": []} if os.geteuid() == 0 else {}
    try:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            **switch,
            cwd="/",
            preexec_fn=unprivileged,
            **popen,
        )
    except (OSError, subprocess.SubprocessError) as exc:  # prctl or python not loadable
        raise StartError(
            f"cannot start {module} as uid {uid} ({exc}): that uid must be able to read"
            f" jailcc's installation, {sys.prefix}"
        ) from None


def communicate(
    child: subprocess.Popen[bytes], given: bytes, cap: int, timeout: float
) -> tuple[bytes, bytes]:
    """Give a child started with start_unprivileged(..., start_new_session=True) its stdin,
    and take its stdout (at most cap bytes) and the tail of its stderr until it exits. Past the
    deadline or the cap its whole process group is killed and TimeoutError or ValueError
    raised: an unprivileged process never makes root wait or hold more than that."""
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    deadline = time.monotonic() + timeout
    try:
        with contextlib.suppress(BrokenPipeError):  # it may have died: its stderr says why
            child.stdin.write(given)
        child.stdin.close()
        out, err = bytearray(), bytearray()
        with selectors.DefaultSelector() as streams:
            streams.register(child.stdout, selectors.EVENT_READ, out)
            streams.register(child.stderr, selectors.EVENT_READ, err)
            while streams.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer within {timeout:.0f} s")
                for key, _ in streams.select(left):
                    data = os.read(key.fd, 65536)
                    if not data:
                        streams.unregister(key.fileobj)
                    key.data.extend(data)
                del err[:-4096]
                if len(out) > cap:
                    raise ValueError(f"more than {cap} bytes of output")
        child.wait(max(deadline - time.monotonic(), 0.1))
        return bytes(out), bytes(err)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        raise
    finally:
        child.stdout.close()
        child.stderr.close()


def image_compilers(path: str, ids: tuple[int, int], verify: bool = False) -> ImageCompilers:
    """The compilers of an image's manifest as images/inspect.py, run as ids, reads them (and
    with verify, checks the whole image against the manifest). The image is opened here and
    handed over open, so it need only be readable by others, wherever it lies."""
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
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # unsquashfs too goes when we kill it
        )
    finally:
        os.close(fd)
    try:
        out, err = communicate(child, b"", MAX_SUMMARY, INSPECT_TIMEOUT)
    except (TimeoutError, ValueError) as exc:
        raise ImageError(f"{path}: reading the image: {exc}") from None
    if child.returncode != 0:
        reason = err.decode(errors="replace").strip() or f"status {child.returncode}"
        if "ermission denied" in reason:
            reason += f" (jailccd reads images as uid {ids[0]}: make the file readable by others)"
        raise ImageError(reason)
    return parse_image_compilers(out, path)
