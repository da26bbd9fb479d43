"""The client side of `jailccd selftest`'s jobs_compile probe (selftest/jobs_probe.py): over
one end of a socket pair whose other end a jail's jobs handler holds, as a client's connection,
it plays the client over the wire protocol (READY, one JOB compiling a small preprocessed C
file, its RESULT) and says what came back. Run unprivileged, with the rest of the
selftest's probes: the frames a jail writes are never parsed by root.
"""

from __future__ import annotations

import hashlib
import socket
from typing import Any

from jailcc import SELFTEST_HELLO, SELFTEST_IDENTITY
from jailcc import protocol as proto

TIMEOUT = 60.0
ELF_MAGIC = b"\x7fELF"


def compile_once(sock: socket.socket, cwd: str, args: list[str], source: bytes) -> dict[str, Any]:
    """One JOB over sock: what its RESULT says, or raises on a broken protocol."""
    sock.settimeout(TIMEOUT)
    channel = proto.Channel(sock)
    ready, _ = channel.expect(proto.READY, proto.MAX_HELLO_FRAME)
    if ready != SELFTEST_HELLO:
        raise proto.ProtocolError(f"READY carried {str(ready)[:200]}, not the hello handed over")
    job = {
        "id": 1,
        "identity": SELFTEST_IDENTITY,
        "cwd": cwd,
        "input": "selftest.i",
        "mode": "c",
        "args": args,
        "env": {},
        "files": [],
        "source": "selftest.c",
    }
    channel.send(proto.JOB, job, [source], compress=[True])
    header, blobs = channel.expect(proto.RESULT, 64 << 20)
    obj = blobs[2] if header.get("has_output") and len(blobs) == 3 else b""
    exit_code = header.get("exit_code")
    return {
        "exit_code": exit_code if isinstance(exit_code, int) else None,
        "elf": obj.startswith(ELF_MAGIC),
        "object_sha256": hashlib.sha256(obj).hexdigest() if obj else None,
        "stderr": blobs[1].decode(errors="replace")[-300:] if len(blobs) > 1 else "",
    }
