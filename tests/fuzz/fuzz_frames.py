"""Coverage-guided fuzzing (atheris, i.e. libFuzzer) of every parser a peer's bytes reach, before
and after authentication. Each target feeds the fuzzer's bytes to one parser; the errors that
parser is meant to raise are caught, and anything else is a crash.

    .venv/bin/python tests/fuzz/fuzz_frames.py TARGET [libFuzzer options] [CORPUS_DIR...]
    .venv/bin/python tests/fuzz/fuzz_frames.py --seed    # tests/fuzz/corpus from real frames

Targets:
  preauth  an unauthenticated connection's bytes: the hello under the pre-auth cap
           (protocol.recv through DeadlineSocket, service._client_hello), then AUTH frames
           (service._auth_token)
  decode   protocol.decode of one whole frame (a sealed frame's payload)
  sealed   SealedChannel.recv with a stand-in GSSAPI context: the length, unwrap and sequence
           checks, then the frame inside
  job      a JOB frame into session._check_job, the jail's check of a job header
  wire     core/wire.py: recv_message (a jail's stream channel) and recv_packet (SEQPACKET)
  readlog  jobs/tree.py log_reads: the read log a tree job's compile wrote (images/readlog.c),
           bytes the user's own compile controls
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import atheris

with atheris.instrument_imports(include=["jailcc"]):
    from jailcc import protocol as proto
    from jailcc import wire
    from jailcc.jobs import compiler_policy as policy
    from jailcc.jobs import session, tree
    from jailcc.sandbox.spec import RunLimits
    from jailcc.server import service

CORPUS = Path(__file__).resolve().parent / "corpus"
IDENTITY = "sha256:" + "ab" * 32
JOB_PARAMS = session.session_params(
    auth="local",
    identity=IDENTITY,
    compiler_path="/usr/bin/gcc-12",
    compiler_kind="gcc",
    image="gcc-12",
    max_input_bytes=1 << 20,
    run_limits=RunLimits(),
    hello={},
)


class _Bytes:
    """A socket that hands out the fuzzer's bytes a few at a time, as TCP may, then EOF."""

    family = socket.AF_INET

    def __init__(self, data: bytes, chunk: int = 7) -> None:
        self.data, self.offset, self.chunk = data, 0, chunk

    def recv(self, size: int, flags: int = 0) -> bytes:
        piece = self.data[self.offset : self.offset + min(size, self.chunk)]
        self.offset += len(piece)
        return piece

    def recv_into(self, buffer: memoryview, nbytes: int = 0) -> int:
        piece = self.recv(nbytes or len(buffer))
        buffer[: len(piece)] = piece
        return len(piece)

    def sendall(self, data: bytes) -> None:
        pass

    def settimeout(self, seconds: float | None) -> None:
        pass


class _Context:
    """A stand-in GSSAPI context: a token's first byte says whether unwrapping fails (bit 0)
    and whether the payload was encrypted (bit 1); the rest is the payload."""

    def unwrap(self, token: bytes) -> SimpleNamespace:
        if not token or token[0] & 1:
            raise ValueError("the token failed its check")
        return SimpleNamespace(message=token[1:], encrypted=bool(token[0] & 2))


def preauth(data: bytes) -> None:
    sock = proto.DeadlineSocket(_Bytes(data), time.monotonic() + 3600, 3600)  # type: ignore[arg-type]
    with contextlib.suppress(proto.ProtocolError, service.Refused):
        sock.next_frame()
        service._client_hello(proto.recv(sock, proto.MAX_HELLO_FRAME))
        for _ in range(proto.MAX_AUTH_ROUNDS):
            sock.next_frame()
            service._auth_token(proto.recv(sock, proto.MAX_AUTH_TOKEN + 4096))


def decode(data: bytes) -> None:
    with contextlib.suppress(proto.ProtocolError):
        proto.decode(data, 1 << 20)


def sealed(data: bytes) -> None:
    channel = proto.SealedChannel(_Bytes(data), _Context())  # type: ignore[arg-type]
    with contextlib.suppress(proto.ProtocolError):
        for _ in range(4):
            channel.recv(1 << 20)


def job(data: bytes) -> None:
    with contextlib.suppress(proto.ProtocolError, session.JobRejected, policy.PolicyError):
        frame_type, header, blobs = proto.decode(data, 1 << 20)
        if frame_type == proto.JOB:
            session._check_job(JOB_PARAMS, header, blobs)


_PACKETS = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def wire_channels(data: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        wire.recv_message(_Bytes(data), 1 << 20)  # type: ignore[arg-type]
    sender, receiver = _PACKETS
    sender.send(data[: wire.MAX_PACKET + 16])
    with contextlib.suppress(wire.WireError):
        wire.recv_packet(receiver)


class _NoImage:
    """The image as a jail with none of the logged names sees it."""

    def holds_top(self, name: str) -> bool:
        return False

    def digest(self, path: str) -> str | None:
        return None


_TREE_JOB = tree.TreeJob(
    args=policy.TreeArgs(["-c", "x.c"], "x.c", "/home/alice/proj/src/x.c", []),
    cwd="/home/alice/proj/src",
    root="/home/alice/proj",
    files=[("src/x.c", "sha256:" + "cd" * 32), ("src/inc/a.h", "sha256:" + "ef" * 32)],
    work_dirs=frozenset({"/home/alice/proj", "/home/alice/proj/src", "/home/alice/proj/src/inc"}),
)


def read_log(data: bytes) -> None:
    found, missed = tree.log_reads(_TREE_JOB, data, _NoImage())  # type: ignore[arg-type]
    assert (found is None) == (missed is None)


TARGETS = {
    "preauth": preauth,
    "decode": decode,
    "sealed": sealed,
    "job": job,
    "wire": wire_channels,
    "readlog": read_log,
}


def seeds() -> dict[str, dict[str, bytes]]:
    """Real frames for each target's corpus."""
    hello = proto.encode(
        proto.HELLO,
        proto.hello_header("client", client="jailcc 0.1.0", identity=IDENTITY, auth="gssapi"),
    )
    token = bytes(range(256)) * 3
    header = {
        "id": 1,
        "identity": IDENTITY,
        "args": ["-O2", "-g", "-Wall", "-DX=1", "-Iinclude"],
        "cwd": "/home/alice/src/proj",
        "input": "foo.i",
        "mode": "c",
        "env": {"LC_ALL": "C.UTF-8"},
        "files": ["foo.c"],
        "source": "foo.c",
        "steps": "debug-exact",
    }
    source = b'# 1 "foo.c"\nint twice(int a) { return 2 * a; }\n' * 4
    job_frame = proto.encode(proto.JOB, header, [source, b"int x;\n" * 20], compress=[True, True])

    def seal(frames: list[bytes]) -> bytes:
        tokens = [b"\x02" + n.to_bytes(8, "big") + f for n, f in enumerate(frames)]
        return b"".join(len(t).to_bytes(4, "big") + t for t in tokens)

    message = b'{"what":"start","cwd":"/home/alice","blobs":[3,2]}abcde'
    return {
        "preauth": {
            "hello": hello,
            "hello-auth": hello + proto.encode(proto.AUTH, {}, [token]),
            "old-version": proto.encode(proto.HELLO, {"protocol": 1, "role": "client"}),
        },
        "decode": {"hello": hello, "job": job_frame, "error": proto.encode(proto.ERROR, {})},
        "sealed": {"job": seal([job_frame]), "two": seal([hello, job_frame])},
        "job": {"job": job_frame, "plain": proto.encode(proto.JOB, dict(header, steps=None))},
        "wire": {
            "message": len(message[:-5]).to_bytes(4, "big") + message,
            "packet": b'{"op":"create","image":"gcc-12","limits":{}}',
        },
        "readlog": {
            "log": b"Rx.c\0M/usr/include/nothere.h\0Rinc/a.h\0Minc\0R/usr/include/stdio.h\0",
            "dir": b"Rx.c\0Rinc\0R../src/inc/a.h\0",
        },
    }


def main() -> None:
    if sys.argv[1:] == ["--seed"]:
        for target, files in seeds().items():
            (CORPUS / target).mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (CORPUS / target / name).write_bytes(data)
        return
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
