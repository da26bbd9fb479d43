"""What the server hands a jail's jobs handler with a client's connection: the handler's name,
the connection's parameters, and how long the handler waits between jobs.

Plain data, no compiler knowledge: the side that hands connections over (the server, its
privileged monitor, `jailccd selftest`) imports this module and nothing else of jobs/, so no
root process runs the compiler-aware code. jobs/session.py reads the parameters in the jail.
"""

from __future__ import annotations

from typing import Any

from jailcc.sandbox.spec import RunLimits

HANDLER = "jobs"  # the connection handler's name (jail_init.CONNECTION_HANDLERS)
IDLE_TIMEOUT = 600.0  # the jail ends a connection idle this long between jobs
STORE_BYTES = 128 * 1024 * 1024  # the tree jobs' blob store of a jail (jailccd --store-mb)


def session_params(
    *,
    auth: str,
    identity: str,
    compiler_path: str,
    compiler_kind: str,
    image: str,
    max_input_bytes: int,
    run_limits: RunLimits,
    hello: dict[str, Any],
    store_bytes: int = STORE_BYTES,
) -> dict[str, Any]:
    """What the server tells the jail about the connection it hands over."""
    return {
        "auth": auth,
        "identity": identity,
        "compiler_path": compiler_path,
        "compiler_kind": compiler_kind,
        "image": image,
        "max_input_bytes": max_input_bytes,
        "store_bytes": store_bytes,
        "run_limits": run_limits.to_dict(),
        "hello": hello,
    }
