"""`jailccd selftest`'s production-path probe: one real compile through a jail's jobs handler.

The escape probes (selftest/probes.py) run their programs through the jail's generic init.
This one takes the way a client's job takes: the jail's init imports the job code from memory
(sandbox/jail_code.py), the connection is handed to the jobs handler (jobs/session.py) exactly
as the server hands a client's, local authentication, and a client (selftest/client.py) plays
its part over the wire protocol: READY, one JOB compiling a tiny C file with the image's own
compiler, its RESULT. The server's two questions per job (a slot, the job's end) get the
answers the server would give. It runs, as all of the selftest's probes, unprivileged: root
never parses a frame a jail writes.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from jailcc import SELFTEST_HELLO, SELFTEST_IDENTITY, SELFTEST_PROBES
from jailcc import protocol as proto
from jailcc.jobs import handover
from jailcc.sandbox.api import Jail, SandboxError
from jailcc.sandbox.spec import RunLimits

from .client import compile_once

NAME = SELFTEST_PROBES[0]  # "jobs_compile"
WORKDIR = "/selftest/jobs"
# Already preprocessed: no header needed, and the image's compiler is the only one involved.
SOURCE = b"int jailcc_selftest_answer(void) { return 6 * 7; }\n"
RUN_LIMITS = RunLimits(cpu_seconds=10, wall_seconds=30.0)
TIMEOUT = 60.0


class ProbeFailed(Exception):
    pass


def compile_through_jobs(
    jail: Jail,
    compiler_path: str,
    compiler_kind: str,
    cwd: str,
    source: bytes,
    args: tuple[str, ...] = ("-O2",),
) -> dict[str, Any]:
    """Hand one end of a socketpair to the jail's jobs handler as the server hands a client's
    connection (auth "local"), and compile `source` (a preprocessed C file) with one JOB over
    the other end: the client's report, {"exit_code", "elf", "object_sha256", "stderr"}.
    Raises ProbeFailed on a broken protocol or connection."""
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

    server = threading.Thread(target=serve, name="selftest-jobs", daemon=True)
    server.start()
    try:
        with ours:  # its closing ends the connection cleanly
            report = compile_once(ours, cwd, list(args), source)
    except (proto.ProtocolError, proto.RemoteError, OSError) as exc:
        raise ProbeFailed(f"the selftest client: {type(exc).__name__}: {exc}"[:500]) from None
    finally:
        server.join(TIMEOUT)
    if ended != [None]:
        why = "it is still serving" if not ended else str(ended[0])[:300]
        raise ProbeFailed(f"the jobs handler ended the connection: {why}")
    return report


def probe(jail: Jail, compiler: tuple[str, str, str] | str) -> tuple[bool, str]:
    """PASS when the image's first compiler, (name, kind, path) as root read its manifest,
    builds an object through the jobs handler; a string says why root could not read it."""
    if isinstance(compiler, str):
        return False, f"cannot read the image's manifest: {compiler}"
    name, kind, path = compiler
    started = time.monotonic()
    try:
        report = compile_through_jobs(jail, path, kind, WORKDIR, SOURCE)
    except (ProbeFailed, OSError) as exc:
        return False, f"{name}: {exc}"
    ms = (time.monotonic() - started) * 1000
    if report.get("exit_code") != 0 or report.get("elf") is not True:
        stderr = str(report.get("stderr", "")).strip()[-300:]
        return False, f"{name}: exit {report.get('exit_code')}, no object: {stderr}"
    return True, f"{name} compiled a C file through the jobs handler ({ms:.0f} ms)"
