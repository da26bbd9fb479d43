"""The per-user proxy's socket and its small protocol with `jailcc` (the Python client here, and
the native client, client/jailcc.c, which speaks the same bytes).

Where: a Unix socket in a 0700 directory of the user's own ($XDG_RUNTIME_DIR/jailcc, else
/run/user/UID/jailcc, else /tmp/jailcc-UID), named after the settings a proxy cannot change
once started (key_settings: JAILCC_HOSTS, or when it is unset the user's hosts file's path,
and KRB5CCNAME), so that builds with other settings get a proxy of their own. Both ends check
the other's uid (SO_PEERCRED).

Request (client to proxy), integers big-endian:
    "JCP1"  u32 N  then N bytes: u32 flags (1: stderr is a terminal), u32 umask,
            u32 argc, argv (NUL-terminated each; argv[0] as the user typed it),
            exe (NUL-terminated: the client's own executable, so the proxy skips it on PATH),
            cwd (NUL-terminated), u32 envc, "NAME=value" strings (NUL-terminated each)
    "JCPS"  u32 0: status, answered with u32 N and N bytes of JSON
    "JCPQ"  u32 0: stop, answered with u32 0
    "JCPT"  u32 N, N bytes of JSON {"gap": seconds} (or none: 10): the last build's jobs (those
            since the last gap seconds in which none ran), answered with u32 N and N bytes of
            JSON {"jobs": [...]} (client/trace.py: Span.as_dict)
    "JCPM"  u32 0: for `jailcc mon`, answered with u32 N and N bytes of JSON: every server's
            status (asked now, in parallel), the proxy's view of it, this user's build
Reply to JCP1:
    u8 0 (done)   i32 exit status, u32 N + stdout, u32 M + stderr: write them, exit
    u8 1 (local)  u32 N + the compiler's path, u32 argc + its arguments (NUL-terminated
                  each), u32 M + a message for stderr (may be empty): print it, exec the
                  compiler with those arguments
A client that gets no whole reply (no proxy, a proxy that died) compiles on its own.

Both ends of every message are here (encode_* and read_*, decode_request), on jailcc.wire's
primitives; every read is capped. A malformed or oversized message raises ValueError.
"""

from __future__ import annotations

import os
import struct
import time

from jailcc.wire import U32, recv_exact

from .hosts import user_hosts_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Mapping

MAGIC_JOB = b"JCP1"
MAGIC_STATUS = b"JCPS"
MAGIC_STOP = b"JCPQ"
MAGIC_TRACE = b"JCPT"
MAGIC_MON = b"JCPM"
DONE = 0
LOCAL = 1
MAX_REQUEST = 4 << 20  # argv + environment
MAX_OUTPUT = 64 << 20  # stdout or stderr of one compile
MAX_REPLY = 256 << 20  # a JSON answer (a trace of MAX_SPANS jobs is about 40 MiB)
MAX_PATH = 4096  # the compiler's path in a LOCAL reply
MAX_ARGS = 100_000  # arguments in a request or a LOCAL reply, and environment strings
MAX_STRING = 1 << 20  # one argument, or the message, of a LOCAL reply
# A JCP1 request's first environment string: the client's UTC offset now, in seconds east, as
# its own localtime() has it (its TZ, whatever its form; else the system's zone as it is now).
UTC_OFFSET = "JAILCC_UTC_OFFSET"

_I32 = struct.Struct(">i")


def runtime_dir(uid: int | None = None, env: Mapping[str, str] = os.environ) -> str:
    """The user's private directory for the proxy's socket (not created here)."""
    uid = os.getuid() if uid is None else uid
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and _owned_dir(xdg, uid):
        return os.path.join(xdg, "jailcc")
    run_user = f"/run/user/{uid}"
    if _owned_dir(run_user, uid):
        return os.path.join(run_user, "jailcc")
    tmp = f"/tmp/jailcc-{uid}"
    home = env.get("HOME", "")
    if os.path.lexists(tmp) and not _owned_dir(tmp, uid) and home.startswith("/"):
        return os.path.join(home, ".jailcc-proxy")  # anyone may take a name in /tmp first
    return tmp


def _owned_dir(path: str, uid: int) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_uid == uid and (st.st_mode & 0o170000) == 0o040000


def ensure_private_dir(path: str, ours: bool = True) -> None:
    """Create path 0700, or check that it is ours, a real directory, and private: in /tmp,
    someone else could have made it first. Unless `ours` (the runtime dir's jailcc/, which
    only jailcc makes), a directory that exists is left as it is: it must then be private
    already (JAILCC_PROXY_SOCKET may name any directory: never loosen or tighten /tmp)."""
    try:  # noqa: SIM105 - contextlib costs milliseconds of a compile's start
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if st.st_uid != os.getuid() or (st.st_mode & 0o170000) != 0o040000:
        raise PermissionError(f"{path} is not a directory of ours: remove it")
    if st.st_mode & 0o022 and not ours:
        raise PermissionError(f"{path} is writable by others: name a directory of your own")
    if st.st_mode & 0o077 and ours:
        os.chmod(path, 0o700)


def key_settings(env: Mapping[str, str]) -> list[str]:
    """The settings a proxy keeps for its life, as its key's lines. JAILCC_HOSTS when set (even
    empty: no servers); when unset, the hosts come from a file the proxy re-reads as it
    changes, so the key holds which user file that is (HOME and XDG_CONFIG_HOME decide), not
    its contents; the system file is the same for every user. The native client (jailcc.c)
    builds the same lines; tests/test_hosts_files.py checks that both agree."""
    hosts = env.get("JAILCC_HOSTS")
    first = f"JAILCC_HOSTS={hosts}" if hosts is not None else f"hosts file={user_hosts_file(env)}"
    return [first, f"KRB5CCNAME={env.get('KRB5CCNAME', '')}", groups_line()]


def groups_line() -> str:
    """The groups this process has, which decide what the proxy may read and write for it:
    after `newgrp` or a change of groups a client gets a proxy of its own. (Not its mount
    namespace: sandboxes such as Bazel's make one per compile, and would make a proxy each;
    a client in another one is left to the Python client, proxy.other_view.)"""
    return "groups=" + ",".join(str(g) for g in sorted(set(os.getgroups()) | {os.getegid()}))


def settings_key(env: Mapping[str, str]) -> str:
    """FNV-1a 64 of key_settings, a line each (the native client computes it the same way)."""
    data = "".join(f"{line}\n" for line in key_settings(env)).encode("utf-8", "surrogateescape")
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def socket_path(env: Mapping[str, str] = os.environ) -> str:
    override = env.get("JAILCC_PROXY_SOCKET")
    if override:
        return override
    return os.path.join(runtime_dir(env=env), f"proxy-{settings_key(env)}.sock")


def encode_request(
    argv: list[str], exe: str, cwd: str, env: Mapping[str, str], stderr_tty: bool, umask: int
) -> bytes:
    def z(text: str) -> bytes:
        return os.fsencode(text) + b"\0"

    parts = [U32.pack(1 if stderr_tty else 0), U32.pack(umask), U32.pack(len(argv))]
    parts += [z(a) for a in argv]
    # First, so that it wins over a variable of that name: the client's UTC offset now.
    strings = [f"{UTC_OFFSET}={time.localtime().tm_gmtoff}"]
    strings += [f"{k}={v}" for k, v in env.items() if k != UTC_OFFSET]
    parts += [z(exe), z(cwd), U32.pack(len(strings))]
    parts += [z(text) for text in strings]
    return encode_message(MAGIC_JOB, b"".join(parts))


def encode_message(magic: bytes, body: bytes = b"") -> bytes:
    """A request: its magic, u32 N, N bytes."""
    return magic + U32.pack(len(body)) + body


def read_request(sock: socket.socket) -> tuple[bytes, bytes]:
    """(magic, body) of a request; the body at most MAX_REQUEST bytes."""
    head = recv_exact(sock, 4 + U32.size, ValueError)
    (size,) = U32.unpack_from(head, 4)
    if size > MAX_REQUEST:
        raise ValueError(f"request of {size} bytes exceeds {MAX_REQUEST}")
    return head[:4], recv_exact(sock, size, ValueError)


class Request:
    __slots__ = ("argv", "cwd", "env", "exe", "stderr_tty", "umask")

    def __init__(
        self,
        argv: list[str],
        exe: str,
        cwd: str,
        env: dict[str, str],
        stderr_tty: bool,
        umask: int,
    ) -> None:
        self.argv, self.exe, self.cwd, self.env = argv, exe, cwd, env
        self.stderr_tty, self.umask = stderr_tty, umask


def decode_request(body: bytes) -> Request:
    """A JCP1 body; ValueError if malformed."""
    view, pos = memoryview(body), 0

    def u32() -> int:
        nonlocal pos
        if pos + 4 > len(view):
            raise ValueError("request too short")
        (value,) = U32.unpack_from(view, pos)
        pos += 4
        return value

    def string() -> str:
        nonlocal pos
        end = body.find(b"\0", pos)
        if end < 0:
            raise ValueError("unterminated string")
        text = os.fsdecode(body[pos:end])
        pos = end + 1
        return text

    flags, umask, argc = u32(), u32(), u32()
    if argc < 1 or argc > MAX_ARGS or umask > 0o777:
        raise ValueError("bad argument count or umask")
    argv = [string() for _ in range(argc)]
    exe, cwd = string(), string()
    envc = u32()
    if envc > MAX_ARGS:
        raise ValueError("bad environment count")
    env = {}
    for _ in range(envc):
        name, sep, value = string().partition("=")
        if sep:
            env.setdefault(name, value)  # the first of a name, as getenv() finds it
    if pos != len(body) or not cwd.startswith("/"):
        raise ValueError("malformed request")
    return Request(argv, exe, cwd, env, bool(flags & 1), umask)


def encode_reply(body: bytes = b"") -> bytes:
    """The reply to JCPS, JCPT, JCPM (N bytes of JSON) or JCPQ (none): u32 N, N bytes."""
    return U32.pack(len(body)) + body


def read_reply(sock: socket.socket) -> bytes:
    """The body of an encode_reply reply, at most MAX_REPLY bytes."""
    (size,) = U32.unpack(recv_exact(sock, U32.size, ValueError))
    if size > MAX_REPLY:
        raise ValueError(f"reply of {size} bytes exceeds {MAX_REPLY}")
    return recv_exact(sock, size, ValueError)


class Done:
    """A JCP1 reply: the compile ran; write its output, exit with its status."""

    __slots__ = ("exit_code", "stderr", "stdout")

    def __init__(self, exit_code: int, stdout: bytes, stderr: bytes) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr


class Local:
    """A JCP1 reply: print the message, exec the compiler with these arguments."""

    __slots__ = ("args", "compiler", "message")

    def __init__(self, compiler: str, args: list[str], message: str) -> None:
        self.compiler, self.args, self.message = compiler, args, message


def encode_done(exit_code: int, stdout: bytes, stderr: bytes) -> bytes:
    return b"".join(
        [
            bytes([DONE]),
            _I32.pack(exit_code),
            U32.pack(len(stdout)),
            stdout,
            U32.pack(len(stderr)),
            stderr,
        ]
    )


def text_bytes(text: str) -> bytes:
    """A message for stderr as bytes: the file names in it as they are on disk (argv and
    paths come in with surrogateescape), anything else unencodable replaced."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def encode_local(compiler: str, args: list[str], message: str) -> bytes:
    msg = text_bytes(message)
    parts = [bytes([LOCAL]), U32.pack(len(os.fsencode(compiler))), os.fsencode(compiler)]
    parts.append(U32.pack(len(args)))
    parts += [os.fsencode(a) + b"\0" for a in args]
    parts += [U32.pack(len(msg)), msg]
    return b"".join(parts)


def read_job_reply(sock: socket.socket) -> Done | Local:
    """The proxy's reply to a JCP1 request, read as it comes (its length is not sent first),
    ahead in blocks: the last thing on the connection."""
    ahead = bytearray()

    def fill() -> None:
        data = sock.recv(1 << 16)
        if not data:
            raise ValueError("the reply was cut short")
        ahead.extend(data)

    def read(n: int) -> bytes:
        if len(ahead) < n:
            ahead.extend(recv_exact(sock, n - len(ahead), ValueError))
        data = bytes(ahead[:n])
        del ahead[:n]
        return data

    def string() -> bytes:
        while (end := ahead.find(0)) < 0:
            if len(ahead) > MAX_STRING:
                raise ValueError("oversized argument")
            fill()
        data = bytes(ahead[:end])
        del ahead[: end + 1]
        return data

    def u32(cap: int) -> int:
        (value,) = U32.unpack(read(U32.size))
        if value > cap:
            raise ValueError("oversized reply")
        return value

    kind = read(1)[0]
    if kind == DONE:
        (exit_code,) = _I32.unpack(read(_I32.size))
        stdout = read(u32(MAX_OUTPUT))
        stderr = read(u32(MAX_OUTPUT))
        return Done(exit_code, stdout, stderr)
    if kind == LOCAL:
        compiler = os.fsdecode(read(u32(MAX_PATH)))
        argc = u32(MAX_ARGS)
        args = [os.fsdecode(string()) for _ in range(argc)]
        message = read(u32(MAX_STRING)).decode("utf-8", "replace")
        return Local(compiler, args, message)
    raise ValueError("unknown reply")
