"""A user's memory budget on a server (--user-memory): the frame reader asks before it holds a
large frame, drops the frame's bytes when refused, and the network service's ledger counts
each user's connections together (the real server: tests/test_server.py)."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

import pytest
from jailcc import protocol as proto
from jailcc import wire
from jailcc.server.service import QUESTIONS, _Questions

MiB = 1 << 20


def _send_in_thread(sock: socket.socket, data: bytes) -> threading.Thread:
    sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    sender.start()
    return sender


def test_a_large_frame_is_read_only_once_reserved_and_dropped_when_not() -> None:
    big = bytes(range(256)) * (4 * MiB // 256)  # 4 MiB, barely compressible
    zeros = b"\0" * (6 * MiB)  # LZ4 makes a few KiB of it
    pad = {"pad": [{}] * 200_000}  # 600 KB of JSON, some 20 MB once parsed
    asked: list[int] = []
    limit = [0]

    def reserve(nbytes: int) -> bool:
        asked.append(nbytes)
        return nbytes <= limit[0]

    def recv() -> tuple[int, dict, list]:
        asked.clear()
        return proto.recv(ours, 8 * MiB, 8 * MiB, reserve=reserve)

    ours, theirs = socket.socketpair()
    with ours, theirs:
        frames = [
            proto.encode(proto.JOB, {"n": 1}, [big]),  # refused before it is read
            proto.encode(proto.JOB, {"n": 2}, [big]),  # granted
            proto.encode(proto.JOB, {"n": 3}, [zeros], [True]),  # its unpacking refused
            proto.encode(proto.JOB, {"n": 4, **pad}),  # its parsing refused
            proto.encode(proto.JOB, {"n": 5}, [b"small"]),
        ]
        sender = _send_in_thread(theirs, b"".join(frames))
        limit[0] = MiB
        with pytest.raises(proto.OverBudget):
            recv()
        assert asked == [len(frames[0]) - 4]  # its length, asked for before the rest is read
        limit[0] = 16 * MiB
        _, header, blobs = recv()
        assert header["n"] == 2 and blobs == [big] and asked[0] == len(frames[1]) - 4
        limit[0] = len(frames[2]) + 1000
        with pytest.raises(proto.OverBudget, match="unpacks"):
            recv()
        assert asked[-1] >= len(zeros)  # the wire bytes, the header's, and what it unpacks to
        limit[0] = len(frames[3]) * 4
        with pytest.raises(proto.OverBudget, match="parses to"):
            recv()
        assert asked[-1] > 200_000 * 100
        # Each refused frame was read through to its end: the stream is whole.
        _, header, blobs = recv()
        assert header["n"] == 5 and blobs == [b"small"]
        sender.join(5)


def test_a_header_of_too_many_values_is_refused_unparsed() -> None:
    with pytest.raises(proto.ProtocolError, match="values"):
        proto.decode(proto.encode(proto.JOB, {"pad": [{}] * (wire.MAX_JSON_VALUES + 1)}), 8 * MiB)
    header = {"tree": [["a/b.h", "sha256:" + "0" * 64, 100]] * 20000}
    assert proto.decode(proto.encode(proto.JOB, header), 8 * MiB)[1] == header  # a tree's


def _service(budget: int) -> SimpleNamespace:
    logged: list[str] = []
    return SimpleNamespace(
        config=SimpleNamespace(user_memory=budget),
        reserved={},
        active={},
        active_lock=threading.Lock(),
        metrics=SimpleNamespace(job_refused=lambda code: logged.append(code)),
        user_log=SimpleNamespace(log=lambda *args: logged.append(args[0])),
        logged=logged,
    )


def _connection(service: SimpleNamespace, number: int, share: str) -> _Questions:
    link = SimpleNamespace(id=number)
    return _Questions(service, link, share, share, "gcc-12", share)  # type: ignore[arg-type]


def test_one_users_connections_share_one_budget() -> None:
    service = _service(100 * MiB)
    alice1, alice2 = _connection(service, 1, "alice"), _connection(service, 2, "alice")
    bob = _connection(service, 3, "bob")
    assert alice1.answer(1, {"what": "reserve", "bytes": 60 * MiB})["ok"] is True
    assert alice2.answer(2, {"what": "reserve", "bytes": 50 * MiB})["ok"] is False
    assert service.logged[0] == "busy"
    assert bob.answer(3, {"what": "reserve", "bytes": 90 * MiB})["ok"] is True  # his own
    assert alice2.answer(2, {"what": "reserve", "bytes": 40 * MiB})["ok"] is True
    assert service.reserved == {"alice": 100 * MiB, "bob": 90 * MiB}
    # Growing past the budget is refused; shrinking, or asking no more than held, never is.
    assert alice1.answer(1, {"what": "reserve", "bytes": 61 * MiB})["ok"] is False
    assert alice1.answer(1, {"what": "reserve", "bytes": 60 * MiB})["ok"] is True
    assert alice1.answer(1, {"what": "reserve", "bytes": 0})["ok"] is True
    assert service.reserved["alice"] == 40 * MiB
    # Nonsense is refused and changes nothing; a connection that ends gives back what it held.
    for nonsense in ("lots", True, -1, 1.5, None, 1 << 200):
        assert alice2.answer(2, {"what": "reserve", "bytes": nonsense})["ok"] is False
    assert service.reserved["alice"] == 40 * MiB
    assert alice2.answer(2, {"what": "reserve", "bytes": 0})["ok"] is True
    assert "alice" not in service.reserved
    bob.forget()
    assert service.reserved == {}


def test_reserve_is_in_the_jails_table_in_any_state() -> None:
    assert QUESTIONS["reserve"][0] is None
    service = _service(0)  # no budget: every reservation is granted
    conn = _connection(service, 1, "alice")
    conn.holding = True
    assert conn.answer(1, {"what": "reserve", "bytes": 1 << 34})["ok"] is True
    assert service.reserved == {"alice": 1 << 34}


class _PlainContext:
    """A GSSAPI context's wrap and unwrap, without the cryptography."""

    def wrap(self, message: bytes, encrypt: bool) -> SimpleNamespace:
        return SimpleNamespace(message=message)

    def unwrap(self, token: bytes) -> SimpleNamespace:
        return SimpleNamespace(message=token, encrypted=True)


def test_a_sealed_frame_counts_three_times_its_token() -> None:
    zeros = b"\0" * (6 * MiB)
    asked: list[int] = []
    limit = [MiB]

    def reserve(nbytes: int) -> bool:
        asked.append(nbytes)
        return nbytes <= limit[0]

    ours, theirs = socket.socketpair()
    with ours, theirs:
        sender = proto.SealedChannel(theirs, _PlainContext())
        sizes = [sender.send(proto.JOB, {"n": n}, [zeros], [True]) for n in (1, 2)]
        reader = proto.SealedChannel(ours, _PlainContext())
        with pytest.raises(proto.OverBudget, match="unpacks"):
            reader.recv(8 * MiB, 8 * MiB, reserve)
        token = sizes[0] - 4
        assert asked[0] == 3 * token and asked[-1] >= 3 * token + len(zeros), asked
        limit[0] = 3 * token - 1
        asked.clear()
        with pytest.raises(proto.OverBudget, match="sealed frame"):
            reader.recv(8 * MiB, 8 * MiB, reserve)
        assert asked == [3 * token]
        ours.setblocking(False)
        with pytest.raises(BlockingIOError):  # the refused token was read through
            ours.recv(1)


class _Init:
    """A jail init's questions to the server, answered from a budget."""

    def __init__(self, budget: int) -> None:
        self.budget, self.asked = budget, []

    def ask(self, question: dict) -> dict:
        assert question["what"] == "reserve"
        self.asked.append(question["bytes"])
        return {"ok": question["bytes"] <= self.budget}


def test_a_connection_reserves_its_frames_its_tree_and_what_it_keeps() -> None:
    from jailcc.jobs.session import RESERVE_FROM, _Reservation

    init = _Init(64 * MiB)
    reservation = _Reservation(init)  # type: ignore[arg-type]
    assert reservation(RESERVE_FROM - 1) and init.asked == []  # small: nothing asked
    assert reservation.tree_files(20 * MiB) and init.asked == [20 * MiB + RESERVE_FROM - 1]
    assert reservation(MiB) and len(init.asked) == 1  # within what is held
    assert not reservation.tree_files(64 * MiB)  # the tree and the frame: past the budget
    # The job ends: what the jail keeps (an in-memory store) stays counted, the rest goes.
    assert reservation.end_job(10 * MiB) and init.asked[-1] == 10 * MiB
    assert reservation(20 * MiB) and init.asked[-1] == 30 * MiB
    assert reservation.end_job(0) and init.asked[-1] == 0
    # Keeping more than the server will count is refused: the caller lets it go.
    assert not reservation.end_job(80 * MiB)
    assert reservation.end_job(0) and reservation.held == 0
