"""A client against a server that answers badly: one that goes silent mid-job (stopped, cut
off, wedged: with ALIVE frames, PROTOCOL.md step 5, the client gives up after missing a few
of them, not after 900 s), trickles, or sends results no jailccd would (out-of-range
statuses, outsized outputs, a NEED naming a blob a thousand times, escape sequences). A fake
server on a socket pair plays each part."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from jailcc import protocol as proto
from jailcc.client import remote
from jailcc.client.hosts import parse_hosts

HOST = parse_hosts("unix:/nonexistent/jailccd.sock")[0]
JOB = {"id": 4, "identity": "sha256:" + "0" * 64, "args": [], "cwd": "/x", "input": "x.i"}
INTERVAL = 0.05  # what the client asks for here: it gives up after ALIVE_MISSED of them


@pytest.fixture
def fake_server(monkeypatch) -> Iterator[Callable]:
    """start(play) -> the client's channel, its server's `play(sock, job header)` running in
    a thread; what the fake server saw of the job comes back in `seen`."""
    monkeypatch.setattr(remote, "ALIVE_SECONDS", INTERVAL)
    pairs, threads, done = [], [], threading.Event()

    def start(play: Callable[[socket.socket, dict], None], alive: bool = True) -> proto.Channel:
        ours, theirs = socket.socketpair()
        pairs.append((ours, theirs))

        def serve() -> None:
            _, header, _ = proto.recv(theirs)
            start.seen = header
            with contextlib.suppress(OSError):  # the client may have hung up: as it should
                play(theirs, header)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        channel = proto.Channel(ours)
        channel.alive = alive
        return channel

    start.done = done
    yield start
    done.set()
    for ours, theirs in pairs:
        ours.close()
        theirs.close()
    for thread in threads:
        thread.join(5)


def _result(sock: socket.socket, job_id: int) -> None:
    header = {"id": job_id, "exit_code": 0, "signal": None, "has_output": True}
    proto.send(sock, proto.RESULT, header, [b"", b"", b"\x7fELF..."])


def test_a_long_job_that_keeps_saying_it_is_alive_is_waited_for(fake_server):
    def play(sock: socket.socket, header: dict) -> None:
        # Ten intervals and more in all, never more than one without a word.
        for _ in range(3 * remote.ALIVE_MISSED):
            time.sleep(INTERVAL)
            proto.send(sock, proto.ALIVE, {"id": header["id"]})
        _result(sock, header["id"])

    channel = fake_server(play)
    result = remote.run_job(channel, HOST, JOB, [b"int x;"], 1 << 20, ready=True)
    assert result.exit_code == 0 and result.output == b"\x7fELF..."
    assert fake_server.seen["alive"] == INTERVAL


def test_a_server_that_falls_silent_is_given_up_on_after_a_few_missed_intervals(fake_server):
    def play(sock: socket.socket, header: dict) -> None:
        proto.send(sock, proto.ALIVE, {"id": header["id"]})
        fake_server.done.wait(10)  # stopped (SIGSTOP), or the network cut: nothing comes

    channel = fake_server(play)
    began = time.monotonic()
    with pytest.raises(remote.RemoteFailure) as failed:
        remote.run_job(channel, HOST, JOB, [b"int x;"], 1 << 20, ready=True)
    waited = time.monotonic() - began
    assert failed.value.code == "silent" and "no word from the server" in failed.value.reason
    assert INTERVAL * remote.ALIVE_MISSED <= waited < 2.0


def test_an_alive_frame_for_another_job_ends_the_job(fake_server):
    def play(sock: socket.socket, header: dict) -> None:
        proto.send(sock, proto.ALIVE, {"id": header["id"] + 1})
        _result(sock, header["id"])

    with pytest.raises(remote.RemoteFailure, match="ALIVE for another job"):
        remote.run_job(fake_server(play), HOST, JOB, [b"int x;"], 1 << 20, ready=True)


def test_a_server_that_does_not_offer_alive_frames_is_neither_asked_nor_hurried(fake_server):
    """An older server (no "alive" in its READY) ignores the field, and its jobs may take as
    long as they take: the client neither asks nor times it out on ALIVE's account."""

    def play(sock: socket.socket, header: dict) -> None:
        time.sleep(INTERVAL * (remote.ALIVE_MISSED + 4))
        _result(sock, header["id"])

    channel = fake_server(play, alive=False)
    result = remote.run_job(channel, HOST, JOB, [b"int x;"], 1 << 20, ready=True)
    assert result.exit_code == 0 and "alive" not in fake_server.seen


def test_what_a_server_says_of_alive_frames_is_believed_only_when_it_says_true():
    assert remote.sends_alive({"alive": True})
    for said in ({}, {"alive": 1}, {"alive": "true"}, {"alive": None}):
        assert not remote.sends_alive(said)


def _answer(header: dict, blobs: list[bytes]) -> Callable[[socket.socket, dict], None]:
    def play(sock: socket.socket, job: dict) -> None:
        proto.send(sock, proto.RESULT, {"id": job["id"], **header}, blobs)

    return play


@pytest.mark.parametrize(
    "status",
    [
        {"exit_code": 256, "signal": None},  # a wait status: exit(256) would read as success
        {"exit_code": -1, "signal": None},
        {"exit_code": 1 << 32, "signal": None},
        {"exit_code": True, "signal": None},
        {"exit_code": None, "signal": None},
        {"exit_code": None, "signal": 0},
        {"exit_code": 0, "signal": 9},
    ],
)
def test_a_status_no_compile_could_end_with_is_malformed(fake_server, status):
    play = _answer({**status, "has_output": True}, [b"", b"", b"obj"])
    with pytest.raises(remote.RemoteFailure, match="malformed result"):
        remote.run_job(fake_server(play), HOST, JOB, [b"int x;"], 1 << 20, ready=True)


def test_outputs_larger_than_a_client_passes_on_are_refused(fake_server, monkeypatch):
    monkeypatch.setattr(remote, "MAX_OUTPUT", 1000)
    play = _answer({"exit_code": 0, "signal": None, "has_output": True}, [b"x" * 1001, b"", b""])
    with pytest.raises(remote.RemoteFailure, match="malformed result"):
        remote.run_job(fake_server(play), HOST, JOB, [b"int x;"], 1 << 20, ready=True)


def test_a_result_that_decompresses_past_the_cap_is_refused_before_it_is_made(fake_server):
    """16 KiB on the wire that would be 16 MiB once decompressed, against a 1 MiB cap."""

    def play(sock: socket.socket, job: dict) -> None:
        bomb = b"\0" * (16 << 20)
        header = {"id": job["id"], "exit_code": 0, "signal": None, "has_output": True}
        proto.send(sock, proto.RESULT, header, [b"", b"", bomb], [False, False, True])

    with pytest.raises(remote.RemoteFailure):
        remote.run_job(fake_server(play), HOST, JOB, [b"int x;"], 1 << 20, ready=True)


def test_a_server_that_trickles_its_answer_gets_no_more_time_than_a_silent_one(
    fake_server, monkeypatch
):
    monkeypatch.setattr(remote, "RESULT_TIMEOUT", 1.0)

    def play(sock: socket.socket, job: dict) -> None:
        frame = proto.encode(proto.RESULT, {"id": job["id"], "exit_code": 0}, [b"", b"", b""])
        for byte in frame:  # each byte well within the silence allowed, all far too slow
            sock.sendall(bytes([byte]))
            if fake_server.done.wait(0.05):
                return

    began = time.monotonic()
    with pytest.raises(remote.RemoteFailure):
        remote.run_job(fake_server(play), HOST, JOB, [b"int x;"], 1 << 20, ready=True)
    assert time.monotonic() - began < 2.0


def test_a_job_whose_asker_went_is_abandoned_within_a_second(fake_server):
    gone = threading.Event()

    def play(sock: socket.socket, job: dict) -> None:
        for _ in range(100):  # a server that keeps compiling, and says so
            if fake_server.done.wait(0.2):
                return
            proto.send(sock, proto.ALIVE, {"id": job["id"]})

    channel = fake_server(play)
    threading.Timer(0.5, gone.set).start()
    began = time.monotonic()
    with pytest.raises(remote.RemoteFailure) as failed:
        remote.run_job(channel, HOST, JOB, [b"int x;"], 1 << 20, True, None, gone.is_set)
    assert failed.value.code == "gone" and time.monotonic() - began < 2.0


def test_a_need_that_names_a_blob_twice_is_refused(fake_server):
    tree_job = {**JOB, "kind": "tree", "root": "/x", "tree": [], "image": [], "outputs": []}

    def play(sock: socket.socket, job: dict) -> None:
        proto.send(sock, proto.NEED, {"id": job["id"], "missing": ["sha256:" + "a" * 64] * 2})

    provided = []
    with pytest.raises(remote.RemoteFailure, match="each blob once"):
        remote.run_job(fake_server(play), HOST, tree_job, [], 1 << 20, True, provided.extend)
    assert provided == []


def test_a_tree_result_that_names_an_output_twice_is_refused(fake_server):
    out = "/x/a.o"
    tree_job = {**JOB, "kind": "tree", "root": "/x", "tree": [], "image": [], "outputs": [out]}
    header = {"exit_code": 0, "signal": None, "outputs": [out, out], "reads": []}
    play = _answer(header, [b"", b"", b"first", b"second"])
    with pytest.raises(remote.RemoteFailure, match="malformed result"):
        remote.run_job(fake_server(play), HOST, tree_job, [], 1 << 20, True, lambda d: [])


def test_a_servers_own_words_reach_the_terminal_without_escapes_and_cut_short():
    message = "\x1b]52;c;ZXZpbA==\x07not allowed\x1b[2J" + "x" * 100_000
    failure = remote.handshake_failure(HOST, proto.RemoteError("unauthorized", message))
    assert "\x1b" not in failure.reason and "\x07" not in failure.reason
    assert "not allowed" in failure.reason and len(failure.reason) < remote.MAX_SAID + 100


def test_a_refusal_sent_before_the_server_closed_is_read_after_a_broken_pipe():
    """A busy server answers ERROR and closes without reading the hello, so sending it can
    fail with EPIPE: the refusal is then still there to read, and is what the user hears."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        proto.send(theirs, proto.ERROR, {"code": "busy", "message": "too many connections"})
        theirs.close()
        with pytest.raises(remote.RemoteFailure, match="refused: too many connections") as got:
            remote.open_session(ours, HOST, JOB["identity"])
        assert got.value.code == "busy"


@pytest.mark.parametrize(
    "hello",
    [
        {"protocol": 1, "role": "server", "auth": "local"},
        {"protocol": 99, "role": "server", "auth": "local"},
        {"protocol": 2.0, "role": "server", "auth": "local"},
        {"protocol": 2, "role": "client", "auth": "local"},
    ],
)
def test_a_server_speaking_another_protocol_or_role_is_not_used(hello):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        proto.send(theirs, proto.HELLO, hello)
        with pytest.raises(remote.RemoteFailure, match="handshake failed"):
            remote.open_session(ours, HOST, JOB["identity"])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to listen as another user")
def test_a_unix_socket_someone_else_listens_on_is_no_server():
    """JAILCC_HOSTS names a socket in a directory others may write: whoever listens there
    gets neither the job nor trust. jailccd listens as root; the kernel says who does."""
    public = Path(tempfile.mkdtemp(prefix="jailcc-public-"))  # (pytest's are root's alone)
    public.chmod(0o1777)
    path = public / "jailccd.sock"
    squatter = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         "import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]);"
         " s.listen(); time.sleep(30)", str(path)],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert time.monotonic() < deadline and squatter.poll() is None
            time.sleep(0.05)
        with pytest.raises(remote.RemoteFailure, match="served by uid 65534, not root"):
            remote.connect(parse_hosts(f"unix:{path}")[0])
    finally:
        squatter.kill()
        squatter.wait()
        shutil.rmtree(public)


@pytest.mark.parametrize(
    "rules",
    [
        b"x.o: x.c\n\techo pwned\n",  # a recipe
        b"x.o: x.c ; touch /tmp/pwned\n",  # a recipe on the rule's line
        b"x.o: $(shell touch /tmp/pwned)\n",  # make expands prerequisites as it reads them
        b"x.o: ${HOME}\n",
        b"CFLAGS = -DPWNED\n",
        b"x.o: CFLAGS = -DPWNED\n",  # a target-specific variable
        b"include /etc/evil.mk\n",
        b"-include x.d:\n",
        b"vpath %.h /tmp/evil:\n",
        b"plain words\n",
        # An even number of backslashes ends the line for make: the tab starts a recipe.
        b"a.o: a.c a.h #\\\\\n\ttouch /tmp/pwned\n",
        b"a.o: a.c \\\\\n\ttouch /tmp/pwned\n",
        # A special target makes make expand "$$" a second time.
        b".SECONDEXPANSION:\na.o: a.c $$(shell touch /tmp/pwned)\n",
        b"a.o: a.c # a comment\n",
    ],
)
def test_a_dependency_file_from_a_server_is_rules_and_nothing_make_would_run(rules):
    from jailcc.client.tree import plain_rules

    assert not plain_rules(rules)


@pytest.mark.parametrize(
    ("rules", "plain"),
    [
        (b"$(OBJ)/x.o: x.c a.h\n", True),  # the user's own words, where the compiler puts them
        (b"$(OBJ)/x.o other.o: x.c\na.h:\n", True),
        (b"other.o $(OBJ)/x.o: x.c\n", False),  # first, as the compiler writes them
        (b"$(OBJ)/x.o: x.c $(shell touch /tmp/pwned)\n", False),  # never as prerequisites
        (b"$(OBJ)/x.o ; touch /tmp/pwned\n", False),
        (b"$(OBJ)/x.o;x: x.c\n", False),  # only the whole word the user gave
        (b"x.o: x.c\n$(OBJ)/x.o: $(shell touch /tmp/pwned)\n", False),  # in the first rule only
        (b"$(OBJ)/x.o: x.c\n\ttouch /tmp/pwned\n", False),
        (b"$(OTHER)/x.o: x.c\n", False),
    ],
)
def test_the_users_own_targets_are_taken_in_the_first_rule_only(rules, plain):
    from jailcc.client.tree import plain_rules

    assert plain_rules(rules, ["$(OBJ)/x.o"]) is plain
    assert plain_rules(rules) is (plain and b"$(OBJ)" not in rules)


def test_nothing_of_the_servers_may_stand_between_the_users_targets():
    from jailcc.client.tree import plain_rules

    own = ["$(shell", "echo)"]  # one make call the user split over two -MT words
    assert plain_rules(b"$(shell echo): x.c\n", own)
    assert not plain_rules(b"$(shell touch /tmp/pwned echo): x.c\n", own)
    assert not plain_rules(b"$(shell echo)\\\n $(X): x.c\n", own)


@pytest.mark.parametrize("compiler", ["gcc-12", "clang-16"])
def test_the_dependency_files_compilers_write_are_plain_rules(compiler, tmp_path):
    from jailcc.client.tree import plain_rules

    (tmp_path / "odd dir#1").mkdir()
    (tmp_path / "odd dir#1" / "a$b.h").write_text("int a;\n")
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "up.h").write_text("int up;\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "s.h").write_text('#include "../inc/up.h"\n')
    (tmp_path / "m.c").write_text(
        '#include <stdio.h>\n#include "odd dir#1/a$b.h"\n#include "sub/s.h"\n'
    )
    subprocess.run(
        [compiler, "-c", "m.c", "-MD", "-MP", "-MQ", "$(obj)/m.o", "-o", "m.o"],
        cwd=tmp_path, check=True,
    )  # fmt: skip
    written = (tmp_path / "m.d").read_bytes()
    assert b"\\ " in written and b"$$" in written  # escaped as make needs
    assert b"sub/../inc/up.h:" in written or b"inc/up.h:" in written  # -MP's phony targets
    assert plain_rules(written)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to be refused as another user")
def test_a_socket_the_user_may_not_reach_says_so_and_what_to_look_at():
    """Permission denied on jailccd's socket (a 0700 directory, a group the user is not in)
    read "no jailcc server could be reached: check that jailccd runs there": it does."""
    from serverutil import as_nobody

    private = Path(tempfile.mkdtemp(prefix="jailcc-private-"))  # 0700, root's
    try:
        with socket.socket(socket.AF_UNIX) as listening:
            listening.bind(str(private / "jailccd.sock"))
            listening.listen()
            host = parse_hosts(f"unix:{private / 'jailccd.sock'}")[0]

            def attempt() -> bytes:
                try:
                    remote.connect(host)
                except remote.RemoteFailure as exc:
                    return f"{exc.tell_user} {exc.reason}".encode()
                return b"connected"

            said = as_nobody(attempt).decode()
    finally:
        shutil.rmtree(private)
    assert said.startswith("True ") and "permission denied (the socket" in said, said
