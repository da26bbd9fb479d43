"""Hand a cgroup v1 controller to cgroup v2 for the cgroup_v2 tests, and give it back.

A hybrid machine (v1 hierarchies under /sys/fs/cgroup/<controller>, cgroup2 at
/sys/fs/cgroup/unified) moves a controller to the cgroup2 hierarchy once its v1 hierarchy is
unmounted with no child groups left and nothing else holding the mount, and back when it is
mounted again while no cgroup2 group has it enabled. Only the tests of the cgroup_v2 marker do
it (scripts/test's second phase), with no jail launcher alive.

Before unmounting, release() records the mount in MARKER; restore() removes the record once the
hierarchy is mounted again. If a run dies in between (SIGKILL, a crash), repair() (called by
tests/conftest.py at every pytest start) mounts what the marker lists: the machine never stays
without its v1 hierarchy for longer than one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time

from jailcc.sandbox import cgroups

MARKER = "/run/jailcc-test-cgroup-v1-released.json"
MOVE_TIMEOUT = 2.0  # a controller moves within milliseconds when it can
REMOUNT_TIMEOUT = 20.0


class NotReleased(Exception):
    """The controller stays in v1 (the reason says why); nothing was changed."""


def _v1_mount(controller: str) -> dict[str, str] | None:
    """The mount of the v1 hierarchy holding controller: point, mount options, controllers."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            separator = fields.index("-")
            if fields[separator + 1] != "cgroup":
                continue
            supers = [o for o in fields[separator + 3].split(",") if o not in ("rw", "ro")]
            if controller in supers:
                return {"point": fields[4], "options": fields[5], "controllers": ",".join(supers)}
    return None


def _unified() -> str:
    mount = cgroups._mounts()[1]
    if mount is None:
        raise NotReleased("no cgroup2 hierarchy is mounted")
    return mount.point


def _in_v2(controller: str) -> bool:
    with open(os.path.join(_unified(), "cgroup.controllers")) as f:
        return controller in f.read().split()


def live_launchers() -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and cgroups._live_launcher(name):
            found.append(int(name))
    return found


def _read_marker() -> list[dict[str, str]]:
    try:
        with open(MARKER) as f:
            return list(json.load(f))
    except FileNotFoundError:
        return []
    except ValueError:
        return []


def _write_marker(entries: list[dict[str, str]]) -> None:
    if not entries:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(MARKER)
        return
    tmp = MARKER + ".tmp"
    with open(tmp, "w") as f:
        json.dump(entries, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, MARKER)


def _remove_jailcc_leftovers(point: str) -> list[str]:
    """Remove the empty jail groups of launchers that are gone, and then their jailcc parents
    if empty, from a v1 hierarchy; return the child groups that remain."""
    for top, dirs, _ in os.walk(point, topdown=False):
        for name in dirs:
            if name == cgroups.PARENT_NAME:
                path = os.path.join(top, name)
                cgroups.remove_stale({"": path})
                with contextlib.suppress(OSError):
                    os.rmdir(path)
    return [os.path.join(top, d) for top, dirs, _ in os.walk(point) for d in dirs]


def release(controller: str) -> dict[str, str]:
    """Move controller from its v1 hierarchy to cgroup v2; return the marker entry."""
    if _in_v2(controller):
        raise NotReleased(f"{controller} is in cgroup v2 already")
    mount = _v1_mount(controller)
    if mount is None:
        raise NotReleased(f"no cgroup v1 {controller} hierarchy is mounted")
    if mount["controllers"] != controller:
        raise NotReleased(f"{controller} shares its v1 hierarchy ({mount['controllers']})")
    children = _remove_jailcc_leftovers(mount["point"])
    if children:
        raise NotReleased(f"the v1 {controller} hierarchy has child groups: {children[:3]}")
    entry = {"controller": controller, **mount}
    _write_marker([*_read_marker(), entry])
    done = subprocess.run(["umount", mount["point"]], capture_output=True, text=True)
    if done.returncode != 0:
        _write_marker([e for e in _read_marker() if e != entry])
        raise NotReleased(
            f"umount {mount['point']}: {done.stderr.strip()} (something holds the mount, "
            "e.g. an open file in it)"
        )
    deadline = time.monotonic() + MOVE_TIMEOUT
    while not _in_v2(controller):
        if time.monotonic() > deadline:
            restore(entry)
            raise NotReleased(f"{controller} did not move to cgroup v2 after the unmount")
        time.sleep(0.05)
    return entry


def _disable_in_v2(controller: str) -> None:
    """Turn controller off in every cgroup2 group's subtree_control, deepest first."""
    for top, _, _ in sorted(os.walk(_unified()), key=lambda w: -w[0].count(os.sep)):
        control = os.path.join(top, "cgroup.subtree_control")
        with contextlib.suppress(OSError):
            with open(control) as f:
                enabled = f.read().split()
            if controller in enabled:
                with open(control, "w") as f:
                    f.write(f"-{controller}")


def _mounted(entry: dict[str, str]) -> bool:
    mount = _v1_mount(entry["controller"])
    return mount is not None and mount["point"] == entry["point"]


def restore(entry: dict[str, str]) -> None:
    """Mount the v1 hierarchy of a marker entry again (retrying while cgroup2 still holds
    groups with the controller: they go away asynchronously)."""
    deadline = time.monotonic() + REMOUNT_TIMEOUT
    while not _mounted(entry):
        _disable_in_v2(entry["controller"])
        options = f"{entry['options']},{entry['controllers']}"
        done = subprocess.run(
            ["mount", "-t", "cgroup", "-o", options, "cgroup", entry["point"]],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"cannot mount the v1 {entry['controller']} hierarchy again at "
                f"{entry['point']}: {done.stderr.strip()} (the next pytest run retries; by "
                f"hand: mount -t cgroup -o {entry['controllers']} cgroup {entry['point']})"
            )
        time.sleep(0.2)
    _write_marker([e for e in _read_marker() if e != entry])


def repair() -> list[str]:
    """Mount again what an interrupted run left released; say what was done."""
    done = []
    for entry in _read_marker():
        restore(entry)
        done.append(f"mounted the cgroup v1 {entry['controller']} hierarchy again")
    return done
