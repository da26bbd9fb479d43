"""The slots and the queue (server/admission.py Slots): fair between users, bounded, and
left by a job whose connection ended. Threads stand in for the connections' jails."""

from __future__ import annotations

import threading
import time

import pytest
from jailcc.server.admission import Busy, Slots, Withdrawn


class Waiter(threading.Thread):
    """One job asking for a slot: records when it got one, or what refused it."""

    def __init__(self, slots: Slots, user: str, order: list[str], gone=None) -> None:
        super().__init__(daemon=True)
        self.slots, self.user, self.order, self.gone = slots, user, order, gone
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.slots.acquire(self.user, self.gone)
        except (Busy, Withdrawn) as exc:
            self.error = exc
            return
        self.order.append(self.user)


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def queue_up(slots: Slots, users: list[str], order: list[str]) -> list[Waiter]:
    """Start a waiter per user, in this order, each queued before the next starts."""
    waiters = []
    for user in users:
        before = slots.waiting
        waiter = Waiter(slots, user, order)
        waiter.start()
        wait_until(lambda w=waiter, n=before + 1: slots.waiting == n or w.error is not None)
        waiters.append(waiter)
    return waiters


def test_a_freed_slot_goes_to_the_user_who_runs_fewest() -> None:
    slots, order = Slots(1, 100), []
    slots.acquire("alice")  # alice's build holds the only slot
    waiters = queue_up(slots, ["alice"] * 5 + ["bob"], order)
    slots.release("alice")
    wait_until(lambda: order == ["bob"])  # not behind alice's five
    for expected in range(1, 6):
        slots.release(order[-1])
        wait_until(lambda n=expected + 1: len(order) == n)
    assert order == ["bob"] + ["alice"] * 5
    for waiter in waiters:
        waiter.join(5)
    assert slots.waiting == 0 and slots.running == 1


def test_one_user_waits_in_arrival_order_and_ties_go_to_the_first_to_arrive() -> None:
    slots, order = Slots(2, 100), []
    slots.acquire("a")
    slots.acquire("b")
    queue_up(slots, ["c", "d", "c"], order)
    slots.release("a")  # c and d both run none: c came first
    wait_until(lambda: order == ["c"])
    slots.release("b")  # now d runs none, c one
    wait_until(lambda: order == ["c", "d"])


def test_a_full_queue_turns_away_the_newest_job_of_the_user_who_holds_most() -> None:
    slots, order = Slots(1, 4), []
    slots.acquire("alice")
    waiters = queue_up(slots, ["alice"] * 4, order)
    with_bob = Waiter(slots, "bob", order)
    with_bob.start()
    wait_until(lambda: waiters[-1].error is not None)
    assert isinstance(waiters[-1].error, Busy) and "another user" in str(waiters[-1].error)
    assert all(w.error is None for w in waiters[:-1]) and slots.waiting == 4
    # Three against one: bob's next job takes another of alice's places.
    again = Waiter(slots, "bob", order)
    again.start()
    wait_until(lambda: waiters[-2].error is not None)
    assert slots.waiting == 4 and again.error is None and with_bob.error is None
    # Two each: turning one away would only swap whose it is; a full queue refuses outright.
    with pytest.raises(Busy, match="waiting"):
        slots.acquire("bob")
    with pytest.raises(Busy, match="waiting"):
        slots.acquire("alice")


def test_a_user_alone_gets_busy_past_the_queue() -> None:
    slots, order = Slots(1, 2), []
    slots.acquire("alice")
    queue_up(slots, ["alice", "alice"], order)
    with pytest.raises(Busy):
        slots.acquire("alice")


def test_a_job_whose_connection_ended_leaves_the_queue() -> None:
    slots, order = Slots(1, 1), []
    slots.acquire("alice")
    ended = threading.Event()
    leaving = Waiter(slots, "bob", order, gone=ended.is_set)
    leaving.start()
    wait_until(lambda: slots.waiting == 1)
    ended.set()
    leaving.join(5)
    assert isinstance(leaving.error, Withdrawn) and slots.waiting == 0
    queue_up(slots, ["carol"], order)  # its place is free again
    slots.release("alice")
    wait_until(lambda: order == ["carol"])
    assert slots.running == 1


def test_a_lower_limit_holds_the_queue_and_a_higher_one_lets_it_in() -> None:
    slots, order = Slots(3, 10), []
    slots.set_limit(0, owner_busy=True)  # the desktop's owner is busy
    queue_up(slots, ["a", "b"], order)
    time.sleep(0.05)
    assert order == []
    slots.set_limit(3, owner_busy=False)
    wait_until(lambda: sorted(order) == ["a", "b"])
    assert slots.report(1.0)["running"] == 2


def test_users_who_left_the_queue_leave_no_state_behind() -> None:
    """Whatever way a user's jobs end (done, withdrawn, turned away), nothing of theirs stays:
    a server sees many users (or --insecure addresses) over its life."""
    slots, order = Slots(1, 4), []
    slots.acquire("alice")  # alice has been served...
    ended = threading.Event()
    second = Waiter(slots, "alice", order, gone=ended.is_set)
    second.start()
    wait_until(lambda: slots.waiting == 1)
    queue_up(slots, ["bob"], order)
    slots.release("alice")  # ...so bob, never served, goes first; alice still waits
    wait_until(lambda: order == ["bob"])
    ended.set()  # and then leaves
    second.join(5)
    assert isinstance(second.error, Withdrawn)
    slots.release("bob")
    assert slots._served == {} and slots._queues == {} and not slots._running_by
