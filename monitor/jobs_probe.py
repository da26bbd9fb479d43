"""`jailccd selftest`'s production-path probe: one real compile through a jail's jobs handler.

The escape probes (sandbox/selftest.py) run their programs through the jail's generic init.
This one takes the way a client's job takes: the jail's init imports the job code from memory
(sandbox/jail_code.py), the connection is handed to the jobs handler (jobs/session.py) exactly
as the server hands a client's, local authentication, and a client plays its part over the wire
protocol: READY, one JOB compiling a tiny C file with the image's own compiler, its RESULT. The
server's two questions per job (a slot, the job's end) get the answers the server would give.

Root runs this side only: it builds the parameters with jobs/handover.py (plain data) and never
imports the compiler-aware code, and the client is server/selftest_client.py, run as the network
service's uid: root parses no frame a jail writes, only the client's one-line JSON report.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from typing import Any

from jailcc import SELFTEST_HELLO, SELFTEST_IDENTITY
from jailcc.images.errors import ImageError
from jailcc.jobs import handover
from jailcc.sandbox.api import Jail, SandboxError
from jailcc.sandbox.spec import RunLimits

from .unprivileged import (
    DEFAULT_SERVICE_USER,
    communicate,
    image_compilers,
    service_user,
    start_unprivileged,
)

NAME = "jobs_compile"
WORKDIR = "/selftest/jobs"
# Already preprocessed: no header needed, and the image's compiler is the only one involved.
SOURCE = b"int jailcc_selftest_answer(void) { return 6 * 7; }\n"
RUN_LIMITS = RunLimits(cpu_seconds=10, wall_seconds=30.0)
TIMEOUT = 60.0
MAX_REPORT = 64 * 1024
CLIENT = "jailcc.server.selftest_client"


class ProbeFailed(Exception):
    pass


def compile_through_jobs(
    jail: Jail,
    compiler_path: str,
    compiler_kind: str,
    cwd: str,
    source: bytes,
    args: tuple[str, ...] = ("-O2",),
    service_user_name: str = DEFAULT_SERVICE_USER,
) -> dict[str, Any]:
    """Hand one end of a socketpair to the jail's jobs handler as the server hands a client's
    connection (auth "local"), and have the unprivileged client compile `source` (a
    preprocessed C file) with one JOB over the other end: its report, {"exit_code", "elf",
    "object_sha256", "stderr"}. Raises ProbeFailed on a broken protocol or client."""
    params = handover.session_params(
        auth="local",
        identity=SELFTEST_IDENTITY,
        compiler_path=compiler_path,
        compiler_kind=compiler_kind,
        image="selftest",
        max_input_bytes=1 << 20,
        run_limits=RUN_LIMITS,
        hello=SELFTEST_HELLO,
    )

    def answer(question: dict[str, Any]) -> dict[str, Any]:
        # What the server answers: a slot and the work dir, then the job's end.
        if question.get("what") == "start":
            jail.enter_workdir(str(question.get("cwd")))
            return {"ok": True}
        return {"limit": None, "jail_cpu": None, "evicted": False, "load": None}

    ours, theirs = socket.socketpair()
    ended: list[str | Exception | None] = []

    def serve() -> None:
        try:
            ended.append(
                jail.serve_connection(theirs, handover.HANDLER, params, b"", answer, TIMEOUT)
            )
        except (SandboxError, OSError) as exc:
            ended.append(exc)

    options = ["--fd", str(ours.fileno()), "--cwd", cwd, *(f"--arg={a}" for a in args)]
    try:
        client = start_unprivileged(
            CLIENT,
            options,
            *service_user(service_user_name),
            pass_fds=[ours.fileno()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except BaseException:
        theirs.close()
        raise
    finally:
        ours.close()  # the client's now: its end closing ends the connection cleanly
    server = threading.Thread(target=serve, name="selftest-jobs", daemon=True)
    server.start()
    try:
        raw, err = communicate(client, source, MAX_REPORT, TIMEOUT)
    except (TimeoutError, ValueError) as exc:
        raise ProbeFailed(f"the selftest client: {exc}") from None
    finally:
        server.join(TIMEOUT)
    report = _report(raw, err)
    if ended != [None]:
        why = "it is still serving" if not ended else str(ended[0])[:300]
        raise ProbeFailed(f"the jobs handler ended the connection: {why}")
    return report


def _report(raw: bytes, err: bytes) -> dict[str, Any]:
    try:
        report = json.loads(raw)
    except (ValueError, RecursionError):
        said = err.decode(errors="replace").strip()[-300:] or repr(raw[:300])
        raise ProbeFailed(f"the selftest client failed: {said}") from None
    if not isinstance(report, dict):
        raise ProbeFailed("the selftest client's report is not an object")
    if "error" in report:
        raise ProbeFailed(str(report["error"])[:500])
    return report


def probe(jail: Jail, image_path: str) -> tuple[bool, str]:
    """PASS when the image's first compiler builds an object through the jobs handler."""
    try:
        compilers = image_compilers(image_path, service_user()).compilers
    except ImageError as exc:
        return False, f"cannot read the image's manifest: {exc}"
    if not compilers:
        return False, "the image names no compiler"
    compiler = compilers[0]
    started = time.monotonic()
    try:
        report = compile_through_jobs(jail, compiler.path, compiler.kind, WORKDIR, SOURCE)
    except (ProbeFailed, OSError) as exc:
        return False, f"{compiler.name}: {exc}"
    ms = (time.monotonic() - started) * 1000
    if report.get("exit_code") != 0 or report.get("elf") is not True:
        stderr = str(report.get("stderr", "")).strip()[-300:]
        return False, f"{compiler.name}: exit {report.get('exit_code')}, no object: {stderr}"
    return True, f"{compiler.name} compiled a C file through the jobs handler ({ms:.0f} ms)"
