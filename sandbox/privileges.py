"""Dropping every privilege for good, in the order that makes each step stick."""

from __future__ import annotations

import os
import signal

import prctl

from . import syscalls as sc


def drop(uid: int, weaken: frozenset[str]) -> None:
    """Become the throwaway uid with no capabilities, no way back and no inherited keys."""
    if "root_uid" not in weaken:
        # The bounding set can only be changed with CAP_SETPCAP, so before giving up root.
        sc.drop_bounding_set()
        sc.clear_ambient_caps()
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        # From root to a non-zero uid without keep-caps clears the permitted and effective sets.
        os.setresuid(uid, uid, uid)
        if prctl.cap_permitted.sys_admin or prctl.cap_effective.sys_admin:
            raise OSError("capabilities survived the uid change")
    if "keep_session_keyring" not in weaken:
        sc.join_new_session_keyring()
    prctl.set_no_new_privs(1)
    # Non-dumpable: processes of the same uid (the jobs) cannot ptrace us or read /proc/1/*.
    prctl.set_dumpable("dumpable_init" in weaken)
    # A uid change clears the parent-death signal: set it again, now for good.
    prctl.set_pdeathsig(signal.SIGKILL)
