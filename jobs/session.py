"""One client connection's jobs, served from inside the connection's jail.

After the server has authenticated and authorized the peer and built its jail, it hands the
socket (and, with Kerberos, the exported GSSAPI security context) to the jail's init, which
runs `serve` below. So everything an authenticated client sends is unwrapped, decompressed,
parsed and checked here, by an unprivileged process in an empty jail: a bug in that code gives
an attacker nothing the jail does not already allow. The server is asked only two small things
per job: a slot to run in (with the job's working directory, and its source name for status
answers), and the end of the job (it frees the slot, reads the jail's cgroup counters, writes
the log line and counts the job's bytes).

Two kinds of job: a preprocessed input compiled in the jail (the default), and a tree job
(PROTOCOL.md, step 6; jobs/tree.py): the user's own compile of sources the client ships by
content digest, of which the jail asks (NEED) only for those its store lacks (BLOBS), laid
out at the user's own paths beneath the job's root, where the work dir is mounted.

Root never runs this module: the launcher only reads its source, and each jail's init imports
it from memory after dropping its privileges (jobs/__init__.py, sandbox/jail_code.py), which
registers the handler. gssapi and lz4 come from the launcher, loaded while the host's libraries
are still in reach (JAIL_LIBRARIES).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import gssapi
import gssapi.raw
from jailcc import READ_LOG_LIBRARY, wire
from jailcc import protocol as proto
from jailcc.sandbox.jail_init import CONNECTION_HANDLERS, JailInit, JobRefused
from jailcc.sandbox.spec import RunLimits

from . import compiler_policy as policy
from . import tree
from .blobstore import DEFAULT_CAP, BlobMismatch, BlobStore, SharedBlobStore, StoreFull
from .handover import HANDLER, IDLE_TIMEOUT, session_params

__all__ = ["HANDLER", "IDLE_TIMEOUT", "JobRejected", "serve", "session_params"]

SEND_TIMEOUT = 60.0
# The input's name in the jail: the client's source base name with .i/.ii (keeps diagnostics
# and any name-derived output the same as a local compile's).
_INPUT_NAME = re.compile(r"[A-Za-z0-9_+.,=@%-]{1,200}\.(i|ii)")  # fullmatch: "$" allows "\n"


# Memory for a job past this asks the server first (its user's --user-memory budget), and
# is held until the job ends: one user's connections could each hold three times --max-input
# while frames arrive and unpack, or a tree's files. Less asks nothing, so common jobs pay no
# round trip.
RESERVE_FROM = 8 << 20
TREE_ENTRY_BYTES = 400  # a tree's file kept for the next job's tree_delta: path, digest, size


class _Reservation:
    """The memory this connection holds, as the server's budget counts it: what the jail keeps
    between jobs (an in-memory blob store), the current job's tree files, and the largest
    frame of the job so far (proto.recv's `reserve`, which calls it with a frame's need)."""

    def __init__(self, init: JailInit) -> None:
        self.init, self.held = init, 0
        self.kept = self.tree = self.frame = 0

    def __call__(self, frame: int) -> bool:
        self.frame = max(self.frame, frame)
        return self._want(self.kept + self.tree + self.frame)

    def tree_files(self, size: int) -> bool:
        """The current tree job's files, held from the store's first look until the job ends."""
        self.tree = size
        return self._want(self.kept + self.tree + self.frame)

    def end_job(self, kept: int) -> bool:
        """The job's frames and files are let go of; `kept` bytes stay. False if the server
        will not count them (the caller then lets them go too)."""
        self.tree = self.frame = 0
        self.kept = kept
        target = kept if kept >= RESERVE_FROM else 0
        if target < self.held:
            self.held = target
            self.init.ask({"what": "reserve", "bytes": target})
        return self._want(target)

    def _want(self, total: int) -> bool:
        if total <= self.held or (total < RESERVE_FROM and not self.held):
            return True
        if self.init.ask({"what": "reserve", "bytes": total}).get("ok") is not True:
            return False
        self.held = total
        return True


class JobRejected(Exception):
    """A job the server will not run; the client is told why and compiles locally."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _BadBlobs(proto.ProtocolError):
    """A tree job's BLOBS broke the protocol: the job is refused and the connection ends."""

    def __init__(self, job_id: int, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


# For the jail's life, shared by the connections it serves (all its user's): the tree jobs'
# blobs, and the toolchain image's files as the jail sees them.
_JAIL_STATE: dict[str, Any] = {}


def _store(init: JailInit, params: dict[str, Any]) -> BlobStore | SharedBlobStore:
    """The user's store on this server if the launcher gave the jail one, else its own."""
    store = _JAIL_STATE.get("store")
    if store is None:
        store = BlobStore() if init.store is None else SharedBlobStore(init.store)
        _JAIL_STATE["store"] = store
    store.cap = int(params.get("store_bytes", DEFAULT_CAP))
    return store


def _image() -> tree.ImageFiles:
    image = _JAIL_STATE.get("image")
    if image is None:
        image = _JAIL_STATE["image"] = tree.ImageFiles()
    return image


def serve(init: JailInit, conn: socket.socket, params: dict[str, Any], token: bytes) -> str | None:
    channel = _channel(conn, params, token)
    max_input = int(params["max_input_bytes"])
    store = _store(init, params)
    base: tuple[str, list[Any]] | None = None  # (root, tree) of the last tree job answered
    reservation = _Reservation(init)
    header: Any = None
    blobs: Any = None
    job: Any = None
    original: Any = None

    def let_go(answering: int = 0) -> None:
        """The job's inputs are done with once it has run: let go of them, and of their share
        of the user's memory, before its answer goes out (a client may read that slowly, and
        send its next job at once); `answering`: the bytes still held until it has gone (a
        tree job's listing and its tree, kept for the next job). Nothing of a job is kept while
        the client is silent either: a connection that only waits must not hold its inputs for
        the idle time."""
        nonlocal header, blobs, job, original, base
        header = blobs = job = original = None
        store.end_job()
        kept = store.memory() + (len(base[1]) * TREE_ENTRY_BYTES if base else 0) + answering
        if not reservation.end_job(kept):
            store.clear()  # what the server will not count is not kept
            base = None
            reservation.end_job(0)

    init.client_fd = conn.fileno()  # a job stops when its client hangs up
    try:
        conn.settimeout(SEND_TIMEOUT)
        channel.send(proto.READY, params["hello"])
        while True:
            let_go()
            if not _speaks_within(conn, IDLE_TIMEOUT):
                return None  # idle this long between jobs: a clean end (the proxy opens anew)
            conn.settimeout(IDLE_TIMEOUT)
            try:
                # A preprocessed job's blobs: its input and its source (jobs/tree.py: a tree
                # job has none), each at most --max-input once decompressed.
                frame_type, header, blobs = channel.recv(
                    max_input + (1 << 20), 2 * max_input, reservation
                )
            except proto.ConnectionClosed:
                return None  # between jobs: a clean end
            if frame_type != proto.JOB:
                raise proto.ProtocolError(f"expected JOB, got {proto.FRAME_NAMES[frame_type]}")
            conn.settimeout(SEND_TIMEOUT)
            kind = header.get("kind", "preprocessed")
            try:
                init.keep_alive = _keep_alive(channel, header)
                if kind == "tree":
                    original, listed = header, "listing" in header
                    header = tree.with_base(
                        _with_listing(channel, store, header, reservation), base
                    )
                    job = tree.check_job(params, header, blobs, init.limits, store.cap, _image())
                    # Its files are held in memory from the store's first look to its end.
                    if not reservation.tree_files(sum(job.sizes.values())):
                        raise proto.OverBudget(f"a tree of {sum(job.sizes.values())} bytes")
                elif kind == "preprocessed":
                    job = _check_job(params, header, blobs)
                else:
                    raise JobRejected("protocol", f"unknown job kind {str(kind)[:40]!r}")
            except (JobRejected, tree.TreeRefused, policy.PolicyError) as exc:
                code = getattr(exc, "code", "policy")
                init.ask({"what": "refused", "code": code, "message": str(exc)[:300]})
                channel.send(
                    proto.ERROR, {"code": code, "message": str(exc), "id": header.get("id")}
                )
                continue
            if kind == "tree":
                received = _fetch_blobs(channel, store, job, reservation)
                conn.settimeout(SEND_TIMEOUT)
                # Kept with the answer, for the next job (of any connection) to name it by.
                listing = (original["listing"], None) if listed else proto.job_listing(header)
                answered_tree = (job.root, header["tree"])
                go_on, answered = _run_tree_job(
                    init, channel, params, job, store, received, listing, let_go
                )
                if answered:
                    base = answered_tree
                del answered_tree
            else:
                go_on = _run_job(init, channel, params, job, let_go)
            if not go_on:
                return "the jail can no longer be used; retired"
    except proto.OverBudget as exc:
        # Its bytes were read and dropped: the client hears "busy" and goes elsewhere. (A
        # sealed channel cannot go on past a frame it did not unwrap: the connection ends.)
        message = f"this user's jobs hold what this server gives one user ({exc})"
        with contextlib.suppress(OSError, proto.ProtocolError):
            channel.send(proto.ERROR, {"code": "busy", "message": message})
        return f"over the user's memory budget: {exc}"
    except proto.IntegrityError as exc:
        return f"integrity: {exc}"
    except proto.ProtocolError as exc:
        if not isinstance(exc, proto.ConnectionClosed):
            error = {"code": "protocol", "message": str(exc)}
            if isinstance(exc, _BadBlobs):
                error["id"] = exc.job_id
                with contextlib.suppress(OSError, wire.WireError):
                    init.ask({"what": "refused", "code": "protocol", "message": str(exc)[:300]})
            with contextlib.suppress(OSError, proto.ProtocolError):
                channel.send(proto.ERROR, error)
        return f"protocol error: {exc}"
    except OSError as exc:
        return f"connection: {exc}"
    finally:
        init.client_fd = None
        init.keep_alive = None


def _keep_alive(channel: proto.Channel, header: dict[str, Any]) -> tuple[float, Callable] | None:
    """For a job that asked ("alive": seconds): (how often, what to send) while it waits for
    a slot or runs; the sender says False once the client can no longer be told."""
    seconds = header.get("alive")
    if seconds is None:
        return None
    low, high = proto.ALIVE_RANGE
    if type(seconds) not in (int, float) or not low <= seconds <= high:
        raise JobRejected("protocol", f"alive: seconds from {low} to {high}")
    job_id = header.get("id")

    def send() -> bool:
        try:
            channel.send(proto.ALIVE, {"id": job_id})
        except (OSError, proto.ProtocolError):
            return False
        return True

    return float(seconds), send


def _channel(conn: socket.socket, params: dict[str, Any], token: bytes) -> proto.Channel:
    if params["auth"] != "gssapi":
        return proto.Channel(conn)
    context = gssapi.SecurityContext(base=gssapi.raw.import_sec_context(token))
    return proto.SealedChannel(conn, context)


def _plain_relative(name: str) -> bool:
    return not name.startswith("/") and all(p not in ("", ".", "..") for p in name.split("/"))


def _check_job(params: dict[str, Any], header: dict[str, Any], blobs: list[bytes]) -> dict:
    job_id = header.get("id")
    identity = header.get("identity")
    cwd = header.get("cwd")
    input_name = header.get("input")
    mode = header.get("mode")
    files = header.get("files", [])
    if type(job_id) is not int or not isinstance(identity, str):
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
    if not all(f and "\0" not in f and _plain_relative(f) for f in files):
        raise JobRejected("protocol", "extra files are named by normalized relative paths")
    if any(len(data) > params["max_input_bytes"] for data in blobs):
        raise JobRejected(
            "policy", f"an input past this server's --max-input of {params['max_input_bytes']}"
        )
    args = policy.check_args(header.get("args"))
    env = policy.job_env(header.get("env"))
    steps = header.get("steps")
    if steps not in (None, policy.DEBUG_EXACT) or (steps and params["compiler_kind"] != "gcc"):
        raise JobRejected("protocol", f"unknown job steps {steps!r}")
    stem = input_name.rsplit(".", 1)[0]
    output = f"{stem}.{'o' if mode == 'c' else 's'}"
    base = [params["compiler_path"], *args]
    # clang in its C mode, whatever the image's entry is named (clang++ would compile a .i as
    # C++): the input's extension, .i or .ii, says the language.
    clang = params["compiler_kind"] == "clang"
    return {
        **({"arg0": f"{os.path.dirname(params['compiler_path'])}/clang"} if clang else {}),
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


Execute = Callable[[RunLimits], tuple[dict[str, Any], list[bytes], dict[str, Any]]]


def _in_slot(
    init: JailInit,
    channel: proto.Channel,
    params: dict,
    job_id: int,
    question: dict[str, Any],
    bytes_in: int,
    execute: Execute,
) -> tuple[bool, tuple | None]:
    """Run a job in a server slot: ask for it ("start", with the work dir to mount), run
    execute(limits) -> (result, blobs to send, extra header fields), say when done. An ERROR
    already sent gives (go on?, None); else (go on?, (result, blobs, extra, done, times)) for
    the caller to answer."""
    queued = time.monotonic()
    slot = init.ask({"what": "start", **question}, for_slot=True)
    started = time.monotonic()
    if not slot.get("ok"):
        code = "busy" if slot.get("code") == "busy" else "jail"
        channel.send(proto.ERROR, {"code": code, "id": job_id, "message": str(slot.get("error"))})
        return not slot.get("end"), None
    limits = RunLimits.from_dict(params["run_limits"])
    result: dict[str, Any] | None = None
    try:
        result, blobs, extra = execute(limits)
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
                "bytes_in": bytes_in,
                "bytes_out": sum(len(b) for b in blobs) if result is not None else 0,
            }
        )
    if result is None:
        channel.send(proto.ERROR, {"code": "jail", "id": job_id, "message": error})
        return not init.dirty, None
    if done.get("evicted"):
        # The desktop's owner needed the machine back: the client runs the job elsewhere.
        message = "evicted: this server's owner needs it; run the job elsewhere"
        channel.send(
            proto.ERROR,
            {"code": "evicted", "id": job_id, "message": message, "load": done.get("load")},
        )
        return not init.dirty, None
    times = {"queue": started - queued, "run": finished - started}
    return not init.dirty, (result, blobs, extra, done, times)


def _result_header(
    job_id: int, result: dict[str, Any], done: dict[str, Any], times: dict[str, float]
) -> dict[str, Any]:
    usage = result["usage"]
    return {
        "id": job_id,
        "exit_code": result["exit_code"],
        "signal": result["signal"],
        "limit": result["limit"] or done.get("limit"),
        "usage": {
            "jail_cpu": done.get("jail_cpu"),
            "user": usage["user_seconds"],
            "sys": usage["system_seconds"],
            "max_rss": usage["max_rss_bytes"],
        },
        "times": times,
        "load": done.get("load"),
    }


def _run_job(
    init: JailInit, channel: proto.Channel, params: dict, job: dict, let_go: Callable[[], None]
) -> bool:
    """Run one job in a server slot and send its result, letting go of its inputs first (the
    caller's let_go drops the caller's). False if the jail cannot go on."""

    def execute(limits: RunLimits) -> tuple[dict[str, Any], list[bytes], dict[str, Any]]:
        if job["steps"] == policy.DEBUG_EXACT:
            result, blobs = _run_debug_exact(init, job, limits)
        else:
            result, blobs = _run(init, job, job["argv"], job["inputs"], job["output"], limits)
        return result, blobs, {}

    go_on, answer = _in_slot(
        init,
        channel,
        params,
        job["id"],
        {"cwd": job["cwd"], "source": job["source"]},
        sum(len(data) for data in job["inputs"].values()),
        execute,
    )
    if answer is None:
        return go_on
    job_id = job["id"]
    job = None  # (and so execute's)
    let_go()
    result, blobs, _, done, times = answer
    output = blobs[2] if len(blobs) > 2 else None
    channel.send(
        proto.RESULT,
        {**_result_header(job_id, result, done, times), "has_output": output is not None},
        [blobs[0], blobs[1], output or b""],
        compress=[False, False, True],
    )
    return go_on


# -- tree jobs (jobs/tree.py) ------------------------------------------------------------------


_BY_LISTING = frozenset({"id", "kind", "image", "listing", "alive"})


def _with_listing(
    channel: proto.Channel,
    store: BlobStore | SharedBlobStore,
    header: dict[str, Any],
    reservation: _Reservation,
) -> dict[str, Any]:
    """The whole header from the listing it names (PROTOCOL.md, "listing"): a blob of the
    store, or, when the store lacks it, asked for (NEED) like any other."""
    ref = header.get("listing")
    if ref is None:
        return header
    if not set(header) <= _BY_LISTING:
        raise tree.TreeRefused(
            "protocol", "a job by listing holds only id, kind, image, listing, alive"
        )
    job_id = header.get("id")
    if not isinstance(job_id, int):
        raise tree.TreeRefused("protocol", "a job needs an id")
    if not isinstance(ref, str) or not tree.DIGEST.fullmatch(ref):
        raise tree.TreeRefused("protocol", "a listing is named by its sha256 digest")
    data = store.lookup(ref)
    if data is not None and len(data) > proto.MAX_TREE_HEADER:
        data = None  # a file of some tree named as a listing: the client must send it
    if data is None:
        channel.send(proto.NEED, {"id": job_id, "missing": [ref]})
        channel.sock.settimeout(IDLE_TIMEOUT)
        cap = proto.MAX_TREE_HEADER
        frame_type, answer, blobs = channel.recv(cap + cap // 128 + 1024, cap, reservation)
        if (
            frame_type != proto.BLOBS
            or answer.get("id") != job_id
            or answer.get("digests") != [ref]
            or len(blobs) != 1
        ):
            raise _BadBlobs(job_id, "a BLOBS frame must bring the listing asked for")
        data = blobs[0]
        try:
            store.add(ref, data)
        except BlobMismatch as exc:
            raise _BadBlobs(job_id, str(exc)) from None
        except StoreFull:
            pass  # larger than this server's whole store: used for this job, not kept
    if not reservation(len(data) + wire.parsed_size(data)):
        raise proto.OverBudget(f"a listing of {len(data)} bytes")
    try:
        job = wire.json_object(data)
    except wire.WireError as exc:
        raise _BadBlobs(job_id, f"a listing is a JOB header: {exc}") from None
    if not proto.LISTING_OMITS.isdisjoint(job):
        raise _BadBlobs(job_id, "a listing holds no id, image, listing, tree_delta or alive")
    return {**job, "id": job_id, "image": header.get("image", [])}


def _fetch_blobs(
    channel: proto.Channel,
    store: BlobStore | SharedBlobStore,
    job: tree.TreeJob,
    reservation: _Reservation,
) -> int:
    """Ask for the blobs the store lacks (NEED) and take them in (BLOBS) until every one has
    come, each checked against its digest and size; the bytes received."""
    missing = store.missing(digest for _, digest in job.files)
    if not missing:
        return 0
    channel.send(proto.NEED, {"id": job.id, "missing": missing})
    outstanding = {digest: job.sizes[digest] for digest in missing}
    received = 0
    while outstanding:
        budget = sum(outstanding.values())
        channel.sock.settimeout(IDLE_TIMEOUT)
        # Never more than what is still due (LZ4 may grow incompressible data a little).
        # (The blobs it brings are the tree's files, counted already: only the rest counts.)
        frame_type, header, blobs = channel.recv(
            budget + budget // 128 + (1 << 20),
            budget,
            lambda need, due=budget: reservation(max(0, need - due)),
        )
        if frame_type != proto.BLOBS:
            raise _BadBlobs(job.id, f"expected BLOBS, got {proto.FRAME_NAMES[frame_type]}")
        digests = header.get("digests")
        if (
            header.get("id") != job.id
            or not isinstance(digests, list)
            or len(digests) != len(blobs)
            or not all(isinstance(d, str) for d in digests)
        ):
            raise _BadBlobs(job.id, "a BLOBS frame must name this job and a digest per blob")
        for digest, data in zip(digests, blobs, strict=True):
            size = outstanding.pop(digest, None)
            if size is None:
                raise _BadBlobs(job.id, f"a blob that was not asked for: {digest[:80]}")
            if len(data) != size:
                raise _BadBlobs(job.id, f"{digest}: {len(data)} bytes, the tree says {size}")
            try:
                store.add(digest, data, job.digests)
            except (BlobMismatch, StoreFull) as exc:
                raise _BadBlobs(job.id, str(exc)) from None
            received += size
    return received


def _run_tree_job(
    init: JailInit,
    channel: proto.Channel,
    params: dict,
    job: tree.TreeJob,
    store: BlobStore | SharedBlobStore,
    received: int,
    listing: tuple[str, bytes | None],
    let_go: Callable[[int], None],
) -> tuple[bool, bool]:
    """Run a tree job in a server slot, its work dir mounted at its root, and answer it:
    (whether the connection goes on, whether the answer was a RESULT), letting go of its
    files first (let_go). A RESULT names the job's listing (its digest) once the store keeps
    it (listing: its bytes to keep, or None when the job came by it)."""
    data = [store.get(digest) for _, digest in job.files]
    for (_, digest), blob in zip(job.files, data, strict=True):
        if len(blob) != job.sizes[digest]:  # the job's checks went by the sizes it gave
            store.end_job()
            raise _BadBlobs(
                job.id, f"{digest}: {len(blob)} bytes, the tree says {job.sizes[digest]}"
            )

    def execute(limits: RunLimits) -> tuple[dict[str, Any], list[bytes], dict[str, Any]]:
        return _compile_tree(init, params, job, data, limits)

    go_on, answer = _in_slot(
        init, channel, params, job.id, {"cwd": job.root, "source": job.source}, received, execute
    )
    if answer is None:
        return go_on, False
    job_id, driver = job.id, job.driver
    answering = len(listing[1] or b"") + len(job.files) * TREE_ENTRY_BYTES
    job = data = None  # (and so execute's)
    let_go(answering)
    result, blobs, extra, done, times = answer
    if extra["reads"] is None and result["exit_code"] == 0:
        message = "the jail could not tell which files the compile read"
        channel.send(proto.ERROR, {"code": "tree", "id": job_id, "message": message})
        return go_on, False
    listing_ref, listing_bytes = listing
    if listing_bytes is not None:
        try:
            store.add(listing_ref, listing_bytes)
        except StoreFull:
            listing_ref = ""
    channel.send(
        proto.RESULT,
        {
            **_result_header(job_id, result, done, times),
            **({"listing": listing_ref} if listing_ref else {}),
            **({"driver": driver} if driver else {}),
            "has_output": bool(extra["outputs"]),
            "outputs": extra["outputs"],
            "reads": extra["reads"] or [],
            # (None: the read log could not be trusted, and the client must not take the
            # failure of a compile that it did not check for the answer.)
            **({"misses": extra["misses"]} if extra.get("misses") is not None else {}),
        },
        blobs,
        compress=[False, False, *(True for _ in blobs[2:])],
    )
    return go_on, True


def _speaks_within(conn: socket.socket, seconds: float) -> bool:
    """Whether the client sends something (or hangs up) within seconds."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLRDHUP)
    return bool(poller.poll(int(seconds * 1000)))


_LISTING_IN_TMP = (policy.DEPS_SUNPRO, policy.DEPS_HEADERS, policy.DEPS_LOG)


def _compile_tree(
    init: JailInit, params: dict, job: tree.TreeJob, data: list[bytes], limits: RunLimits
) -> tuple[dict[str, Any], list[bytes], dict[str, Any]]:
    """Lay the tree out, run the user's compile once, and learn which files it read (see
    compiler_policy.tree_deps): (the run's result, [stdout, stderr, each output that exists,
    in request order], {"outputs": their paths, "reads": ...})."""
    how, dep_file = job.deps
    if params["compiler_kind"] == "gcc" and _image().read_log:
        how = policy.DEPS_LOG  # (cc1 and cc1plus write it; clang has no such program)
    compiler = params["compiler_path"]
    listing = f".jailcc-deps-{os.urandom(8).hex()}"  # in /tmp
    max_names = tree.MAX_TREE_FILES + tree.MAX_OUTPUTS + 1
    base = {
        # clang as the user's driver's path (tree.CLANG_DRIVERS): its directory and mode; clang
        # finds its own binary and resources by /proc/self/exe.
        **({"arg0": job.driver} if job.driver else {}),
        "cwd": job.cwd,
        "workdir": job.root,
        "executables": [],
        "limits": limits.to_dict(),
        "readonly_inputs": True,
        "dirs": job.dirs,  # the outputs' and the empty -I directories the tree does not make
    }
    names, listed_text = job.names(), None
    if how == policy.DEPS_PASS:
        # The preprocessing-only pass first, on the tree it leaves in place for the compile.
        argv = [compiler, *policy.deps_pass_args(job.args, f"/tmp/{listing}")]
        request = {**base, "argv": argv, "env": job.env, "inputs": names, "keep": True}
        first, first_blobs = _init_run(init, {**request, "tmp_outputs": [listing]}, data, max_names)
        listed_text = first_blobs[2] if first["tmp_outputs"] else None
        names, data = [], []
    env = dict(job.env)
    if how == policy.DEPS_SUNPRO:
        env["SUNPRO_DEPENDENCIES"] = f"/tmp/{listing} x"
    elif how == policy.DEPS_HEADERS:
        env["CC_PRINT_HEADERS"] = "1"
        env["CC_PRINT_HEADERS_FILE"] = f"/tmp/{listing}"
    elif how == policy.DEPS_LOG:
        env["LD_PRELOAD"] = READ_LOG_LIBRARY
        env["JAILCC_READ_LOG"] = f"/tmp/{listing}"
    wanted = job.output_names()
    dep_name = None
    if how == policy.DEPS_FILE:
        assert dep_file is not None
        dep_name = os.path.normpath(os.path.join(job.cwd, dep_file))[len(job.root) + 1 :]
    request = {
        **base,
        "argv": [compiler, *job.args.args],
        "env": env,
        "inputs": names,
        "outputs": [*wanted, *([dep_name] if dep_name and dep_name not in wanted else [])],
        "tmp_outputs": [listing] if how in _LISTING_IN_TMP else [],
    }
    result, blobs = _init_run(init, request, data, max_names)
    got = dict(zip(result["outputs"], blobs[2:], strict=False))
    if how == policy.DEPS_FILE:
        listed_text = got.get(dep_name)
    elif how != policy.DEPS_PASS and result["tmp_outputs"]:
        listed_text = blobs[2 + len(result["outputs"])]
    outputs = [path for path, name in zip(job.outputs, wanted, strict=True) if name in got]
    out_blobs = [got[path[len(job.root) + 1 :]] for path in outputs]
    if how == policy.DEPS_LOG:
        found, missed = tree.log_reads(job, listed_text, _image())
        extra = {"outputs": outputs, "reads": found, "misses": missed}
        return result, [blobs[0], blobs[1], *out_blobs], extra
    listed = None
    if listed_text is not None:
        with contextlib.suppress(UnicodeDecodeError):
            text = listed_text.decode()
            if how == policy.DEPS_HEADERS:
                listed = tree.parse_header_list(text)
            else:
                listed = tree.parse_make_rule(text)
    extra = {"outputs": outputs, "reads": tree.reads(job, listed, _image())}
    return result, [blobs[0], blobs[1], *out_blobs], extra


def _init_run(
    init: JailInit, request: dict[str, Any], data: list[bytes], max_names: int
) -> tuple[dict[str, Any], list[bytes]]:
    try:
        return init.run(request, data, max_names)
    except JobRefused as exc:
        raise _Refused(str(exc)) from None


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
        **({"arg0": job["arg0"]} if "arg0" in job else {}),
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


_FIRST_MARKER = re.compile(rb'# 0 "([^"\\\n]{1,1024})"\n')


def _main_file(data: bytes, cwd: str) -> tuple[str, str] | None:
    """(where to write it, relative to cwd; the name to give the compiler) for a file named
    as the preprocessed input's first line marker names its main file, when it can lie in the
    work dir: a relative name without "..", or an absolute one beneath cwd."""
    m = _FIRST_MARKER.match(data)
    if m is None:
        return None
    named = m.group(1).decode("utf-8", "surrogateescape")
    written = named[len(cwd) + 1 :] if named.startswith(cwd.rstrip("/") + "/") else named
    parts = written.split("/")
    if written.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    if written in ("a.s", "b.s", "merged.s"):
        return None
    return written, named


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
    # Compile B preprocesses again what A's -fdirectives-only kept, the predefined macros'
    # #defines too: its diagnostics (builtins "redefined", a GNU line marker) are nobody's, and
    # with -Werror or -pedantic-errors they would fail it. -w silences them; the debug info
    # does not record it (only the strings of B are used: compiler_policy).
    # And B reads a file of the main file's name (A takes it from the first line marker):
    # g++ -fPIC names a static initializer's function after it.
    data = job["inputs"][name]
    written, named = _main_file(data, job["cwd"]) or (name, name)
    second, second_blobs = _run(
        init,
        job,
        [*base, "-w", "-nostdinc", "-x", lang, "-S", named, "-o", "b.s"],
        {written: data},
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
