"""A client against a server that goes silent mid-job (stopped, cut off, wedged): with ALIVE
frames (PROTOCOL.md, step 5) it gives up after missing a few of them, not after the 900 s a
silent server without them is given. A fake server on a socket pair plays each part."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

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
