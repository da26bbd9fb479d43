"""The farm simulator's job models (scripts/simulate_farm.py): tree jobs built from the traces,
blobs a host already holds not sent again, lower bounds under both models. Pure logic."""

from __future__ import annotations

import pytest


def test_sources_model_from_the_traces(sim) -> None:  # type: ignore[no-untyped-def]
    traces = sim.load_traces()
    pre, copies = sim.make_build(traces, 600, "preprocessed")
    src, copies2 = sim.make_build(traces, 600, "sources")
    assert copies == copies2 >= 2 and len(pre) == len(src)
    one = len(src) // copies
    for p, s, raw in zip(pre, src, [j for t in traces for j in t["jobs"]] * copies, strict=True):
        assert p.blobs is None and p.work == raw["remote_cpu_seconds"]
        assert s.blobs and s.work == raw["cpu_seconds"] and s.header_bytes > 0
        assert p.compile_cost == s.compile_cost == raw["cpu_seconds"]
    # The analysis costs the client less than -E; each copy is a project of its own.
    assert sum(j.client_cost for j in src) < sum(j.client_cost for j in pre)
    first = {b for j in src[:one] for b, _ in j.blobs}
    second = {b for j in src[one : 2 * one] for b, _ in j.blobs}
    assert first and not first & second


def test_a_host_is_sent_each_blob_once(sim) -> None:  # type: ignore[no-untyped-def]
    job = sim.Job(0, "a", "cc", 1.0, 1000, 100, 0.02, ((1, 4000), (2, 6000)), 500)
    h = sim.make_farm(10, seed=1, busy_share=0.0)[0]
    stored: set[int] = set()
    t1, n1 = sim.send_seconds(job, h, stored)
    assert stored == {1, 2} and n1 == 500 + 10000 + 2 * sim.NEED_BYTES
    assert t1 == pytest.approx(1.5 * h.rtt + n1 / h.bandwidth)
    t2, n2 = sim.send_seconds(job, h, stored)  # NEED-less: the header alone
    assert n2 == 500 and t2 == pytest.approx(h.rtt / 2 + 500 / h.bandwidth)


@pytest.mark.parametrize("store", ["host", "connection"])
def test_both_models_run_and_respect_the_bound(sim, store: str) -> None:  # type: ignore[no-untyped-def]
    traces = sim.load_traces(["zlib"])
    hosts = sim.make_farm(10, seed=2, busy_share=0.3)
    slots = sum(h.slots for h in hosts)
    for model in sim.MODELS:
        jobs, _ = sim.make_build(traces, 300, model)
        bound = max(sim.lower_bound(jobs, hosts, 8).values())
        local = sim.local_build(jobs, 8)
        assert local >= sum(j.compile_cost for j in jobs) / 8
        for name in ("ours", "distcc"):
            out = sim.Sim(jobs, hosts, sim.POLICIES[name], 8, 2 * slots, 2, store).run()
            assert out.remote + out.local == len(jobs)
            assert bound <= out.makespan
            if model == "sources":
                distinct = len({b for j in jobs for b, _ in j.blobs})
                assert out.blobs_sent > 0
                if store == "host":
                    assert out.blobs_sent <= distinct * len(hosts)
            else:
                assert out.blobs_sent == 0
