"""One client connection's jobs, served from inside the connection's jail.

After the server has authenticated and authorized the peer and built its jail, it hands the
socket (and, with Kerberos, the exported GSSAPI security context) to the jail's init, which
runs `serve` below. So everything an authenticated client sends is unwrapped, decompressed,
parsed and checked here, by an unprivileged process in an empty jail: a bug in that code gives
an attacker nothing the jail does not already allow. The server is asked only two small things
per job: a slot to run in (with the job's working directory, and its source name for status
answers), and the end of the job (it frees the slot, reads the jail's cgroup counters, writes
the log line and counts the job's bytes).

Root never runs this module: the launcher only reads its source, and each jail's init imports
it from memory after dropping its privileges (jobs/__init__.py, sandbox/jail_code.py), which
registers the handler. gssapi and lz4 come from the launcher, loaded while the host's libraries
are still in reach (JAIL_LIBRARIES).
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from typing import Any

import gssapi
import gssapi.raw
from jailcc import protocol as proto
from jailcc.sandbox.jail_init import CONNECTION_HANDLERS, JailInit, JobRefused
from jailcc.sandbox.spec import RunLimits

from . import compiler_policy as policy
from .handover import HANDLER, IDLE_TIMEOUT, session_params

__all__ = ["HANDLER", "IDLE_TIMEOUT", "JobRejected", "serve", "session_params"]

SEND_TIMEOUT = 60.0
# The input's name in the jail: the client's source base name with .i/.ii (keeps diagnostics
# and any name-derived output the same as a local compile's).
_INPUT_NAME = re.compile(r"[A-Za-z0-9_+.,=@%-]{1,200}\.(i|ii)")  # fullmatch: "$" allows "\n"


class JobRejected(Exception):
    """A job the server will not run; the client is told why and compiles locally."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def serve(init: JailInit, conn: socket.socket, params: dict[str, Any], token: bytes) -> str | None:
    channel = _channel(conn, params, token)
    max_input = int(params["max_input_bytes"])
    try:
        conn.settimeout(SEND_TIMEOUT)
        channel.send(proto.READY, params["hello"])
        while True:
            conn.settimeout(IDLE_TIMEOUT)
            try:
                frame_type, header, blobs = channel.recv(max_input + 1024 * 1024, 4 * max_input)
            except proto.ConnectionClosed:
                return None  # between jobs: a clean end
            if frame_type != proto.JOB:
                raise proto.ProtocolError(f"expected JOB, got {proto.FRAME_NAMES[frame_type]}")
            conn.settimeout(SEND_TIMEOUT)
            try:
                job = _check_job(params, header, blobs)
            except (JobRejected, policy.PolicyError) as exc:
                code = exc.code if isinstance(exc, JobRejected) else "policy"
                init.ask({"what": "refused", "code": code, "message": str(exc)[:300]})
                channel.send(
                    proto.ERROR, {"code": code, "message": str(exc), "id": header.get("id")}
                )
                continue
            if not _run_job(init, channel, params, job):
                return "the jail can no longer be used; retired"
    except proto.IntegrityError as exc:
        return f"integrity: {exc}"
    except proto.ProtocolError as exc:
        if not isinstance(exc, proto.ConnectionClosed):
            with contextlib.suppress(OSError, proto.ProtocolError):
                channel.send(proto.ERROR, {"code": "protocol", "message": str(exc)})
        return f"protocol error: {exc}"
    except OSError as exc:
        return f"connection: {exc}"


def _channel(conn: socket.socket, params: dict[str, Any], token: bytes) -> proto.Channel:
    if params["auth"] != "gssapi":
        return proto.Channel(conn)
    context = gssapi.SecurityContext(base=gssapi.raw.import_sec_context(token))
    return proto.SealedChannel(conn, context)


def _check_job(params: dict[str, Any], header: dict[str, Any], blobs: list[bytes]) -> dict:
    job_id = header.get("id")
    identity = header.get("identity")
    cwd = header.get("cwd")
    input_name = header.get("input")
    mode = header.get("mode")
    files = header.get("files", [])
    if not isinstance(job_id, int) or not isinstance(identity, str):
        raise JobRejected("protocol", "a job needs an id and a compiler identity")
    if identity != params["identity"]:
        raise JobRejected("image", "this connection serves another compiler: open another one")
    if not isinstance(cwd, str) or not cwd.startswith("/") or len(cwd) > 1024 or "\0" in cwd:
        raise JobRejected("protocol", "a job needs an absolute working directory")
    if not isinstance(input_name, str) or not _INPUT_NAME.fullmatch(input_name):
        raise JobRejected("protocol", "bad input file name")
    if mode not in ("c", "S"):
        raise JobRejected("protocol", "mode must be c or S")
    if (
        not isinstance(files, list)
        or len(files) != len(blobs) - 1
        or not all(isinstance(f, str) for f in files)
    ):
        raise JobRejected("protocol", "extra files do not match the data sent")
    args = policy.check_args(header.get("args"))
    env = policy.job_env(header.get("env"))
    steps = header.get("steps")
    if steps not in (None, policy.DEBUG_EXACT) or (steps and params["compiler_kind"] != "gcc"):
        raise JobRejected("protocol", f"unknown job steps {steps!r}")
    stem = input_name.rsplit(".", 1)[0]
    output = f"{stem}.{'o' if mode == 'c' else 's'}"
    base = [params["compiler_path"], *args]
    return {
        "id": job_id,
        "cwd": cwd,
        "inputs": {input_name: blobs[0], **dict(zip(files, blobs[1:], strict=True))},
        "output": output,
        "env": env,
        "source": str(header.get("source", input_name))[:200],
        "steps": steps,
        "base": base,
        "argv": [*base, f"-{mode}", input_name, "-o", output],
        "input": input_name,
        "mode": mode,
    }


class _Refused(Exception):
    """The jail refused a job's request (a bad file name, say): the client compiles locally."""


def _run_job(init: JailInit, channel: proto.Channel, params: dict, job: dict) -> bool:
    """Run one job in a server slot and send its result. False if the jail cannot go on."""
    queued = time.monotonic()
    slot = init.ask({"what": "start", "cwd": job["cwd"], "source": job["source"]})
    started = time.monotonic()
    if not slot.get("ok"):
        code = "busy" if slot.get("code") == "busy" else "jail"
        channel.send(
            proto.ERROR, {"code": code, "id": job["id"], "message": str(slot.get("error"))}
        )
        return not slot.get("end")
    limits = RunLimits.from_dict(params["run_limits"])
    result: dict[str, Any] | None = None
    try:
        if job["steps"] == policy.DEBUG_EXACT:
            result, blobs = _run_debug_exact(init, job, limits)
        else:
            result, blobs = _run(init, job, job["argv"], job["inputs"], job["output"], limits)
    except _Refused as exc:
        error = str(exc)
    finally:
        finished = time.monotonic()
        status = _status(result) if result is not None else "refused"
        done = init.ask(
            {
                "what": "done",
                "status": status,
                "failed": result is None or result["exit_code"] != 0,
                "queue": started - queued,
                "run": finished - started,
                # What crossed the wire, uncompressed: the job's files and the result's.
                "bytes_in": sum(len(data) for data in job["inputs"].values()),
                "bytes_out": sum(len(b) for b in blobs[:3]) if result is not None else 0,
            }
        )
    if result is None:
        channel.send(proto.ERROR, {"code": "jail", "id": job["id"], "message": error})
        return not init.dirty
    if done.get("evicted"):
        # The desktop's owner needed the machine back: the client runs the job elsewhere.
        message = "evicted: this server's owner needs it; run the job elsewhere"
        channel.send(
            proto.ERROR,
            {"code": "evicted", "id": job["id"], "message": message, "load": done.get("load")},
        )
        return not init.dirty
    output = blobs[2] if len(blobs) > 2 else None
    usage = result["usage"]
    channel.send(
        proto.RESULT,
        {
            "id": job["id"],
            "exit_code": result["exit_code"],
            "signal": result["signal"],
            "limit": result["limit"] or done.get("limit"),
            "has_output": output is not None,
            "usage": {
                "jail_cpu": done.get("jail_cpu"),
                "user": usage["user_seconds"],
                "sys": usage["system_seconds"],
                "max_rss": usage["max_rss_bytes"],
            },
            "times": {"queue": started - queued, "run": finished - started},
            "load": done.get("load"),
        },
        [blobs[0], blobs[1], output or b""],
        compress=[False, False, True],
    )
    return not init.dirty


def _status(result: dict[str, Any]) -> str:
    if result["limit"]:
        return f"limit:{result['limit']}"
    if result["signal"]:
        return f"signal:{result['signal']}"
    return f"exit:{result['exit_code']}"


def _run(
    init: JailInit,
    job: dict,
    argv: list[str],
    inputs: dict[str, bytes],
    output: str,
    limits: RunLimits,
) -> tuple[dict[str, Any], list[bytes]]:
    request = {
        "argv": argv,
        "env": job["env"],
        "cwd": job["cwd"],
        "inputs": list(inputs),
        "outputs": [output],
        "executables": [],
        "limits": limits.to_dict(),
    }
    try:
        result, blobs = init.run(request, list(inputs.values()))
    except JobRefused as exc:
        raise _Refused(str(exc)) from None
    if output not in result["outputs"]:
        blobs = blobs[:2]
    return result, blobs


def _ok(result: dict[str, Any]) -> bool:
    return result["exit_code"] == 0 and not result["limit"] and result["signal"] is None


def _run_debug_exact(
    init: JailInit, job: dict, limits: RunLimits
) -> tuple[dict[str, Any], list[bytes]]:
    """gcc -g with debug info exactly a local compile's (see compiler_policy)."""
    base, name = job["base"], job["input"]
    first, first_blobs = _run(
        init,
        job,
        [*base, "-fdirectives-only", "-S", name, "-o", "a.s"],
        job["inputs"],
        "a.s",
        limits,
    )
    if not _ok(first) or len(first_blobs) < 3:
        return first, first_blobs[:2]  # a compile error or a limit: the answer as it stands
    lang = "c++" if name.endswith(".ii") else "c"
    second, second_blobs = _run(
        init,
        job,
        [*base, "-nostdinc", "-x", lang, "-S", name, "-o", "b.s"],
        {name: job["inputs"][name]},
        "b.s",
        limits,
    )
    if not _ok(second) or len(second_blobs) < 3:
        raise _Refused("the second compile for exact debug info failed")
    try:
        merged = policy.transplant_debug_strings(
            first_blobs[2].decode("utf-8", "surrogateescape"),
            second_blobs[2].decode("utf-8", "surrogateescape"),
        ).encode("utf-8", "surrogateescape")
    except policy.TransplantError as exc:
        raise _Refused(f"exact debug info: {exc}") from None
    if job["mode"] == "S":
        return first, [first_blobs[0], first_blobs[1], merged]
    assembled, assembled_blobs = _run(
        init,
        job,
        [*base, "-c", "merged.s", "-o", job["output"]],
        {"merged.s": merged},
        job["output"],
        limits,
    )
    if not _ok(assembled) or len(assembled_blobs) < 3:
        raise _Refused("assembling the exact-debug-info assembly failed")
    return first, [first_blobs[0], first_blobs[1], assembled_blobs[2]]


CONNECTION_HANDLERS[HANDLER] = serve
