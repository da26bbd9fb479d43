"""jailcc.client.placement: the proxy's choice of server, and the farm simulator that replays
measured builds through it (scripts/simulate_farm.py). Pure logic: no root, no compilers."""

from __future__ import annotations

import random

import pytest
from jailcc.client.placement import (
    LOCAL,
    Estimator,
    LocalView,
    Placement,
    ServerView,
    choose,
)

KB = 1000
SPB = 2e-6  # the Estimator's default: 100 KB ~ 0.2 reference seconds


def placement(*servers: ServerView, **kw: object) -> Placement:
    p = Placement(Estimator(seconds_per_byte=SPB), **kw)  # type: ignore[arg-type]
    for s in servers:
        p.update(s)
    return p


def send(p: Placement, key: object, nbytes: int, now: float = 0.0, **kw: object) -> str | None:
    where = p.choose(nbytes, "cc", now, **kw)  # type: ignore[arg-type]
    if where is not None:
        p.on_dispatch(key, where, nbytes, "cc", now)
    return where


def test_prefers_a_faster_idle_server() -> None:
    p = placement(ServerView("slow", slots=4, speed=1.0), ServerView("fast", slots=4, speed=2.0))
    assert p.choose(100 * KB) == "fast"
    # The pure function agrees, whatever the order it sees the servers in.
    views = [ServerView("fast", slots=4, speed=2.0), ServerView("slow", slots=4, speed=1.0)]
    assert choose(views, 1.0, 100 * KB) == "fast"
    assert choose(views[::-1], 1.0, 100 * KB) == "fast"


def test_a_slow_link_outweighs_speed_for_big_inputs() -> None:
    far = ServerView("far", slots=4, speed=2.0, rtt=0.05, bandwidth=1e6)
    near = ServerView("near", slots=4, speed=1.5, rtt=0.0005, bandwidth=1e9)
    p = placement(far, near)
    assert p.choose(2000 * KB) == "near"  # 0.9 s on the wire outweighs the speed


def test_ties_go_to_fewer_running_then_name() -> None:
    p = placement(ServerView("b", slots=4), ServerView("a", slots=4))
    assert p.choose(100 * KB) == "a"
    # Equal finish times (both have a free slot): fewest of our jobs wins.
    p.on_dispatch("j", "a", 100 * KB, "cc", 0.0)
    assert p.choose(100 * KB) == "b"


def test_the_biggest_waiting_job_gets_the_fastest_slot() -> None:
    p = placement(ServerView("fast", slots=1, speed=3.0), ServerView("slow", slots=1, speed=1.0))
    got = p.plan([("small", 20 * KB, "cc"), ("big", 2000 * KB, "cc")], 0.0)
    assert sorted(got) == [("big", "fast"), ("small", "slow")]


def test_never_exceeds_admission() -> None:
    p = placement(ServerView("a", slots=2, speed=1.5), ServerView("b", slots=3, speed=1.0))
    sent = [send(p, k, 100 * KB) for k in range(8)]
    assert sent[:5].count("a") == 2 and sent[:5].count("b") == 3
    assert sent[5:] == [None, None, None]  # all full, nothing local: wait
    # A report that the owner is busy cuts the slots; no new job goes there until one ends.
    p.update(ServerView("a", slots=1, speed=1.5, owner_busy=True))
    p.on_finish(0, 1.0, 0.05)
    assert p.choose(100 * KB, now=1.0) is None
    p.on_finish(1, 1.1, 0.05)
    assert p.choose(100 * KB, now=1.1) == "a"


def test_plan_sends_no_more_than_free_slots() -> None:
    p = placement(*(ServerView(f"s{i}", slots=i + 1, speed=1 + i / 4) for i in range(4)))
    jobs = [(k, 50 * KB, "cc") for k in range(30)]
    got = p.plan(jobs, 0.0)
    counts = {name: sum(1 for _, w in got if w == name) for name in p.servers}
    assert counts == {"s0": 1, "s1": 2, "s2": 3, "s3": 4}
    assert [k for k, _ in got] == list(range(10))  # oldest first


def test_goes_local_when_all_are_full_and_local_is_free() -> None:
    p = placement(ServerView("a", slots=1, speed=2.0))
    assert send(p, 1, 100 * KB, local=LocalView(slots=4, running=4)) == "a"
    assert p.choose(100 * KB, local=LocalView(slots=4, running=4)) is None
    assert p.choose(100 * KB, local=LocalView(slots=4, running=3)) == LOCAL
    # A free, faster server beats a free local core; a free local core beats a far slow one.
    q = placement(ServerView("fast", slots=8, speed=3.0, rtt=0.001))
    assert q.choose(500 * KB, local=LocalView(slots=4)) == "fast"
    r = placement(ServerView("far", slots=8, speed=1.0, rtt=0.2, bandwidth=1e6))
    assert r.choose(500 * KB, local=LocalView(slots=4)) == LOCAL


def test_waits_for_a_fast_server_at_the_tail_but_not_in_a_backlog() -> None:
    # fast: 1 slot, its job ends at t=0.1; slow: free, 8x slower. A 1 s job finishes at about
    # 0.35 on fast after waiting, 4 on slow now: hold it. The second job finds fast's next slot
    # taken by the first, so it goes to the slow server rather than wait behind it.
    p = placement(ServerView("fast", slots=1, speed=4.0), ServerView("slow", slots=1, speed=0.5))
    p.on_dispatch("running", "fast", 20 * KB, "cc", 0.0)  # 0.04 s / 4 = ends at 0.01
    p.servers["fast"].ends = [0.1]
    assert p.choose(500 * KB) is None
    got = p.plan([("big", 500 * KB, "cc"), ("small", 20 * KB, "cc")], 0.0)
    assert got == [("small", "slow")]
    # Many jobs waiting: the slow server still gets work (it is the first whose turn beats
    # waiting for the fast one).
    got = p.plan([(k, 500 * KB, "cc") for k in range(20)], 0.0)
    assert [w for _, w in got] == ["slow"]


def test_learns_speed_and_cost_from_observations() -> None:
    est = Estimator(seconds_per_byte=SPB)
    assert est.work(500 * KB) == pytest.approx(1.0)
    # Both advertise 1.0; "a" is, "b" is really 4x faster, and this kind of job costs 1.5x the
    # guess. The guessed cost takes the common error, b's speed what is b's own.
    for _ in range(60):
        est.observe("a", 500 * KB, "cc", seconds=1.5, speed=1.0)
        est.observe("b", 500 * KB, "cc", seconds=1.5 / 4, speed=1.0)
    assert est.speed("b") / est.speed("a") == pytest.approx(4.0, rel=0.1)
    for server, seconds in (("a", 1.5), ("b", 1.5 / 4)):  # and it predicts what it saw
        predicted = est.work(500 * KB, "cc") / est.speed(server)
        assert predicted == pytest.approx(seconds, rel=0.1)
    # Local compiles (speed given) pin the scale: this kind of job costs 3x the guess.
    for _ in range(40):
        est.observe(None, 500 * KB, "c++", seconds=3.0, speed=1.0)
    assert est.work(500 * KB, "c++") == pytest.approx(3.0, rel=0.05)
    assert est.work(100 * KB, "c++") == pytest.approx(0.6, rel=0.05)
    # Observations while the owner was busy teach the busy factor, not the speed.
    before = est.speed("b")
    for _ in range(60):
        est.observe("b", 500 * KB, "cc", seconds=1.5 / 4 * 4, speed=1.0, busy=True)
    assert est.speed("b") == before
    assert est.busy_factor == pytest.approx(0.25, rel=0.15)


def test_placement_learns_which_server_is_really_fast() -> None:
    # Advertised the other way round: a claims 2.0 but compiles at 0.5, b claims 1.0 and is 2.0.
    p = placement(ServerView("a", slots=1, speed=2.0), ServerView("b", slots=1, speed=1.0))
    assert p.choose(500 * KB) == "a"
    now = 0.0
    for k in range(40):
        for name, true_speed in (("a", 0.5), ("b", 2.0)):
            p.on_dispatch((k, name), name, 500 * KB, "cc", now)
            now += 1
            p.on_finish((k, name), now, 1.0 / true_speed)
    assert p.choose(500 * KB, now=now) == "b"
    # Speeds and costs share a scale that only local compiles would pin: compare the two. From
    # 0.5 advertised to 4 true, most of the way in 40 jobs each (a benchmark is trusted some).
    assert 3.0 < p.servers["b"].speed / p.servers["a"].speed < 4.4


def test_backs_off_a_failing_server() -> None:
    p = placement(ServerView("bad", slots=8, speed=3.0), ServerView("ok", slots=8, speed=1.0))
    assert p.choose(100 * KB) == "bad"
    send(p, "j", 100 * KB)
    p.on_failure("bad", 10.0, key="j")  # job j is the caller's to re-plan
    assert p.servers["bad"].running == 0
    assert p.choose(100 * KB, now=10.5) == "ok"
    assert p.choose(100 * KB, now=11.0) == "bad"  # 1 s back-off
    p.on_failure("bad", 11.0)
    p.on_failure("bad", 11.0)
    assert p.choose(100 * KB, now=14.9) == "ok"  # doubled twice: 4 s
    assert p.choose(100 * KB, now=15.0) == "bad"
    send(p, "k", 100 * KB, now=15.0)
    p.on_finish("k", 15.1, 0.05)  # a success forgives
    p.on_failure("bad", 16.0)
    assert p.choose(100 * KB, now=17.0) == "bad"


def test_eviction_marks_the_server_busy_until_it_reports() -> None:
    p = placement(ServerView("desk", slots=4, speed=3.0), ServerView("srv", slots=4, speed=2.0))
    for k in range(3):
        assert send(p, k, 100 * KB) == "desk"
    p.on_evicted(2, 1.0)
    assert p.servers["desk"].owner_busy and p.servers["desk"].slots == 2
    assert p.choose(100 * KB, now=1.0) == "srv"  # the evicted job goes elsewhere
    p.update(ServerView("desk", slots=4, speed=3.0))  # the owner left
    assert p.choose(100 * KB, now=2.0) == "desk"


# --- the simulator ----------------------------------------------------------------------------


def synthetic_build(sim, n: int = 400):  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    jobs = []
    for i in range(n):
        nbytes = int(rng.lognormvariate(12.5, 0.7))  # ~270 KB
        work = nbytes * SPB * rng.lognormvariate(0, 0.3)
        jobs.append(sim.Job(i, f"j{i}", "cc", work, nbytes, nbytes // 3, 0.02))
    return jobs


def test_simulated_farm_ours_beats_distcc_and_loses_nothing(sim) -> None:  # type: ignore[no-untyped-def]
    jobs = synthetic_build(sim)
    hosts = sim.make_farm(10, seed=3, busy_share=0.3)
    assert len({round(h.speed, 1) for h in hosts}) > 5  # heterogeneous
    assert any(h.busy_changes for h in hosts)
    slots = sum(h.slots for h in hosts)
    got = {}
    for name in ("ours", "distcc"):
        out = sim.Sim(jobs, hosts, sim.POLICIES[name], 64, 2 * slots, seed=3).run()
        assert out.remote + out.local == len(jobs)
        got[name] = out
    assert got["ours"].makespan < got["distcc"].makespan
    bound = max(sim.lower_bound(jobs, hosts, 64).values())
    assert bound <= got["ours"].makespan


def test_a_tree_job_does_not_wait_where_a_server_refusing_tree_jobs_could_take_it():
    """A farm moving to --headers images: the server that takes tree jobs is full, the one
    whose image refused them is free. The tree job does not wait: it goes back to the proxy,
    which ships it preprocessed, and that finds the free server."""
    import time

    from jailcc.client.hosts import Host
    from jailcc.client.pool import Pool

    pool = Pool([Host("unix", "/nonexistent/plain.sock"), Host("unix", "/nonexistent/tree.sock")])
    try:
        plain, tree = pool.links
        now = time.monotonic()
        plain.refused_trees["id"] = (now, "/usr/include/stdio.h is not in the image")
        tree.load, tree.load_at = {"slots": 0}, now  # full
        started = time.monotonic()
        assert pool._place(object(), 100, "k", "id", set(), started + 30, trees="id") is None
        assert time.monotonic() - started < 1.0
        assert pool._tree_refusal("id") == "/usr/include/stdio.h is not in the image"
        assert pool.refuses_trees("id") is None  # the other server still takes them
        assert pool._place(object(), 100, "k", "id", set(), started + 30) is plain
        # With no refusing server there, a tree job waits for room as any job does.
        plain.refused_trees.clear()
        plain.load, plain.load_at = {"slots": 0}, now
        tree.load_at = plain.load_at = time.monotonic()
        started = time.monotonic()
        assert pool._place(object(), 100, "k", "id", set(), started + 1.5, trees="id") is None
        assert time.monotonic() - started >= 1.0
    finally:
        pool.close()


def test_an_unreachable_server_is_named_once_in_the_message() -> None:
    """The reason a job found no server names each server once: a connect failure's reason
    names its server already, and the server backing off after it is the same failure."""
    from jailcc.client.hosts import Host
    from jailcc.client.pool import Pool
    from jailcc.client.remote import RemoteFailure

    host = Host("unix", "/nonexistent/s.sock")
    pool = Pool([host])
    try:
        reason = f"cannot connect to {host}: Connection refused"
        pool._back_off(pool.links[0], RemoteFailure(reason))
        said = pool._nowhere([reason], False, "id", []).reason
        assert said.count(str(host)) == 1, said
        assert "Connection refused" in said and "check that jailccd runs there" in said
        # A reason that does not name its server gets the name, once.
        pool._back_off(pool.links[0], RemoteFailure("[Errno 32] Broken pipe"))
        said = pool._nowhere([], False, "id", []).reason
        assert f"{host}: [Errno 32] Broken pipe" in said and said.count(str(host)) == 1, said
        # A server that said it is full is not "unreachable" (and the user has nothing to do).
        full = pool._nowhere([], False, "id", [f"{host} refused the job: busy: 2 running"])
        assert "every server was full" in full.reason and not full.tell_user, full.reason
    finally:
        pool.close()
