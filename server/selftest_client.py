"""The client side of `jailccd selftest`'s jobs_compile probe, run as the network service's uid.

monitor/jobs_probe.py (root) hands one end of a socket pair to a jail's jobs handler, as the
server hands a client's connection, and starts this program with the other end: it plays the
client over the wire protocol (READY, one JOB compiling a small preprocessed C file read from
stdin, its RESULT) and prints what came back as one JSON line. So the frames a jail writes are
parsed here, by an unprivileged process, and never by root.

Run as: python -m jailcc.server.selftest_client --fd N --cwd DIR [--arg ARG ...] < FILE.i
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
from typing import Any

from jailcc import SELFTEST_HELLO, SELFTEST_IDENTITY
from jailcc import protocol as proto

TIMEOUT = 60.0
MAX_SOURCE = 1 << 20
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jailcc-selftest-client", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="our end of the connection")
    parser.add_argument("--cwd", required=True, help="the job's working directory")
    parser.add_argument("--arg", action="append", default=[], help="a compiler argument")
    args = parser.parse_args(argv)
    source = sys.stdin.buffer.read(MAX_SOURCE)
    with socket.socket(fileno=args.fd) as sock:
        try:
            report = compile_once(sock, args.cwd, args.arg, source)
        except (proto.ProtocolError, proto.RemoteError, OSError) as exc:
            report = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
