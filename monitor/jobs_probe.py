"""`jailccd selftest`'s production-path probe: one real compile through a jail's jobs handler.

The escape probes (sandbox/selftest.py) run their programs through the jail's generic init.
This one takes the way a client's job takes: the jail's init imports the job code from memory
(sandbox/jail_code.py), the connection is handed to the jobs handler (jobs/session.py) exactly
as the server hands a client's, local authentication, and we play the client over the wire
protocol: READY, one JOB compiling a tiny C file with the image's own compiler, its RESULT. The
server's two questions per job (a slot, the job's end) get the answers the server would give.

Root runs this side only: it builds the parameters with jobs/handover.py (plain data) and never
imports the compiler-aware code.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from jailcc import protocol as proto
from jailcc.images.errors import ImageError
from jailcc.images.manifest import read_manifest
from jailcc.jobs import handover
from jailcc.sandbox.api import Jail, SandboxError
from jailcc.sandbox.spec import RunLimits

NAME = "jobs_compile"
WORKDIR = "/selftest/jobs"
# Already preprocessed: no header needed, and the image's compiler is the only one involved.
SOURCE = b"int jailcc_selftest_answer(void) { return 6 * 7; }\n"
RUN_LIMITS = RunLimits(cpu_seconds=10, wall_seconds=30.0)
TIMEOUT = 60.0
ELF_MAGIC = b"\x7fELF"


def compile_through_jobs(
    jail: Jail,
    compiler_path: str,
    compiler_kind: str,
    cwd: str,
    source: bytes,
    args: tuple[str, ...] = ("-O2",),
) -> tuple[dict[str, Any], list[bytes]]:
    """Hand one end of a socketpair to the jail's jobs handler as the server hands a client's
    connection (auth "local"), and compile `source` (a preprocessed C file) with one JOB: the
    RESULT's header and its blobs (stdout, stderr, the object). Raises on a broken protocol."""
    identity = "selftest"  # the job's and the connection's: they need only agree
    hello = {"selftest": True}
    params = handover.session_params(
        auth="local",
        identity=identity,
        compiler_path=compiler_path,
        compiler_kind=compiler_kind,
        image="selftest",
        max_input_bytes=1 << 20,
        run_limits=RUN_LIMITS,
        hello=hello,
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
        ours.settimeout(TIMEOUT)
        channel = proto.Channel(ours)
        ready, _ = channel.expect(proto.READY, proto.MAX_HELLO_FRAME)
        if ready != hello:
            raise proto.ProtocolError(f"READY carried {ready!r}, not the hello handed over")
        job = {
            "id": 1,
            "identity": identity,
            "cwd": cwd,
            "input": "selftest.i",
            "mode": "c",
            "args": list(args),
            "env": {},
            "files": [],
            "source": "selftest.c",
        }
        channel.send(proto.JOB, job, [source], compress=[True])
        header, blobs = channel.expect(proto.RESULT, 64 << 20)
    finally:
        ours.close()  # between jobs: the handler ends the connection cleanly
        server.join(TIMEOUT)
    if ended != [None]:
        raise proto.ProtocolError(f"the jobs handler ended the connection: {ended[:1]}")
    return header, blobs


def probe(jail: Jail, image_path: str) -> tuple[bool, str]:
    """PASS when the image's first compiler builds an object through the jobs handler."""
    try:
        compilers = read_manifest(image_path).compilers
    except ImageError as exc:
        return False, f"cannot read the image's manifest: {exc}"
    if not compilers:
        return False, "the image names no compiler"
    compiler = compilers[0]
    started = time.monotonic()
    try:
        header, blobs = compile_through_jobs(jail, compiler.path, compiler.kind, WORKDIR, SOURCE)
    except (proto.ProtocolError, proto.RemoteError, OSError) as exc:
        return False, f"{compiler.name}: {type(exc).__name__}: {exc}"
    ms = (time.monotonic() - started) * 1000
    obj = blobs[2] if header.get("has_output") and len(blobs) == 3 else b""
    if header.get("exit_code") != 0 or not obj.startswith(ELF_MAGIC):
        stderr = blobs[1].decode(errors="replace").strip()[-300:] if len(blobs) > 1 else ""
        return False, f"{compiler.name}: exit {header.get('exit_code')}, no object: {stderr}"
    return True, f"{compiler.name} compiled a C file through the jobs handler ({ms:.0f} ms)"
