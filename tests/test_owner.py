"""The desktop-owner monitor against real CPU-bound and memory-holding processes, and the
policy's hysteresis (pure).

The machine may be busy with other work while these run, so CPU checks compare what the
monitor says with what the burner process itself used over the same interval, or two monitors
that differ only in what they call their own, never with an idle baseline."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from jailcc.server.owner import (
    Decision,
    OwnerMonitor,
    OwnerState,
    PolicyConfig,
    Thresholds,
    cgroup_dir,
    cgroup_memory_bytes,
    desktop_policy,
    keep_recent,
    parse_logind,
)

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root")

# A CPU burner; with arguments: first joins the cgroups named, then holds MiB of memory.
BURN = """
import sys
for path in sys.argv[2:]:
    with open(path + "/cgroup.procs", "w") as f:
        f.write("0")
held = bytearray(int(sys.argv[1]) << 20)
for i in range(0, len(held), 4096):
    held[i] = 1
print("burning", flush=True)
while True:
    pass
"""
# "Our" daemon: an idle process that starts a burner as its child.
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
child.wait()
"""
NO_INPUT = {"input_dir": "/nonexistent", "loginctl": "/nonexistent/loginctl"}


@contextlib.contextmanager
def process(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A process in its own group, killed with everything it started."""
    proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def burner_of(proc: subprocess.Popen[str]) -> psutil.Process:
    """The burning process: proc itself, or its child once it says it burns."""
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "burning"
    root = psutil.Process(proc.pid)
    children = root.children()
    return children[0] if children else root


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def measure(monitors: list[OwnerMonitor], burner: psutil.Process, seconds: float = 1.5):
    """Sample every monitor before and after `seconds`, and the burner's share of the machine
    over the same interval."""
    for m in monitors:
        m.sample()
    start, used = time.monotonic(), cpu_seconds(burner)
    time.sleep(seconds)
    share = (cpu_seconds(burner) - used) / ((time.monotonic() - start) * psutil.cpu_count())
    return [m.sample() for m in monitors], share


def close_to(value: float, expected: float) -> bool:
    return abs(value - expected) <= 0.25 * expected + 0.03


def test_owner_load_is_seen_as_the_owners() -> None:
    with process(["sleep", "60"]) as ours, process([sys.executable, "-c", BURN, "0"]) as owner:
        burner = burner_of(owner)
        monitor = OwnerMonitor(lambda: {ours.pid}, jail_cgroups=[], **NO_INPUT)
        (state,), share = measure([monitor], burner)
    assert share > 0.05, "the burner did not get to run"
    assert state.owner_cpu >= share * 0.8, (state, share)
    assert state.own_cpu < 0.02
    assert state.busy == (state.owner_cpu >= Thresholds().cpu)


def test_our_children_are_not_the_owners() -> None:
    with process([sys.executable, "-c", PARENT, BURN, "0"]) as ours:
        burner = burner_of(ours)
        assert burner.pid != ours.pid
        mine = OwnerMonitor(lambda: {ours.pid}, jail_cgroups=[], **NO_INPUT)
        nobody = OwnerMonitor(lambda: (), jail_cgroups=[], **NO_INPUT)
        (with_tree, without), share = measure([mine, nobody], burner)
    assert share > 0.05, "the burner did not get to run"
    assert close_to(with_tree.own_cpu, share), (with_tree, share)
    assert close_to(without.owner_cpu - with_tree.owner_cpu, share), (with_tree, without, share)
    assert without.own_cpu == 0.0


@pytest.fixture
def jail_groups() -> Iterator[tuple[list[str], list[str]]]:
    """(parents, jail) groups in the cpuacct and memory hierarchies, as sandbox/cgroups.py
    lays them out (a parent under our own cgroup, a group per jail), under a test name."""
    parents, jails = [], []
    try:
        for controller in ("cpuacct", "memory"):
            own = cgroup_dir(controller)
            if own is None:
                pytest.skip(f"no cgroup v1 {controller} hierarchy")
            parent = os.path.join(own, f"jailcc-ownertest-{os.getpid()}")
            os.mkdir(parent)
            parents.append(parent)
            os.mkdir(os.path.join(parent, "jail-1"))
            jails.append(os.path.join(parent, "jail-1"))
        yield parents, jails
    finally:
        for path in jails + parents:  # children first; the burner is dead by now
            deadline = time.monotonic() + 5
            while os.path.isdir(path):
                try:
                    os.rmdir(path)
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)


@requires_root
def test_jail_cgroups_count_once_as_ours(jail_groups: tuple[list[str], list[str]]) -> None:
    parents, jails = jail_groups
    mib = 256
    # The burner is both in our process tree and in a jail group: it must count once.
    with process([sys.executable, "-c", PARENT, BURN, str(mib), *jails]) as ours:
        burner = burner_of(ours)
        # The kernel flushes a memory cgroup's statistics lazily (every 2 s, or past a number of
        # pages pending): wait until they show what the burner holds, as a monitor would.
        deadline = time.monotonic() + 10
        while (cgroup_memory_bytes(parents[1]) or 0) < mib << 20:
            assert time.monotonic() < deadline, "the jail group's memory.stat never showed it"
            time.sleep(0.1)
        mine = OwnerMonitor(lambda: {ours.pid}, jail_cgroups=parents, **NO_INPUT)
        groups_only = OwnerMonitor(lambda: (), jail_cgroups=parents, **NO_INPUT)
        nobody = OwnerMonitor(lambda: (), jail_cgroups=[], **NO_INPUT)
        by_group = OwnerMonitor(parents[0], jail_cgroups=[], **NO_INPUT)  # a cgroup is ours
        states, share = measure([mine, groups_only, nobody, by_group], burner)
        parent_rss = psutil.Process(ours.pid).memory_info().rss
        burner_rss = burner.memory_info().rss
    with_tree, with_groups, without, with_group = states
    assert share > 0.05, "the burner did not get to run"
    assert close_to(with_tree.own_cpu, share), (with_tree, share)
    assert close_to(with_groups.own_cpu, share), (with_groups, share)
    assert close_to(with_group.own_cpu, share), (with_group, share)
    # Ours: the parent's resident memory (tree) and the burner's (group), each counted once.
    # The machine's other memory moves with other work, so this compares what the monitor
    # counts as ours, not the owner's share derived from it.
    assert abs(with_tree.own_mem - (parent_rss + burner_rss)) < 0.15 * burner_rss, with_tree
    assert abs(with_groups.own_mem - burner_rss) < 0.15 * burner_rss, with_groups
    assert without.own_mem == 0, without
    assert burner_rss >= mib << 20


def test_input_events_reset_idle_time(tmp_path) -> None:
    fifo = tmp_path / "event0"
    os.mkfifo(fifo)
    monitor = OwnerMonitor(
        lambda: (),
        jail_cgroups=[],
        input_dir=str(tmp_path),
        loginctl="/nonexistent/loginctl",
        thresholds=Thresholds(cpu=2.0, mem=2.0, input_idle=0.5),
    )
    event = struct.Struct("llHHi")
    try:
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        time.sleep(0.7)
        first = monitor.sample()
        assert first.idle_seconds is not None and first.idle_seconds >= 0.7
        assert not first.busy
        with open(fifo, "wb", buffering=0) as device:
            device.write(event.pack(0, 0, 0, 0, 0))  # EV_SYN alone is no input
            assert monitor.sample().idle_seconds >= 0.7
            device.write(event.pack(0, 0, 1, 30, 1))  # EV_KEY: someone pressed "a"
            state = monitor.sample()
        assert state.idle_seconds is not None and state.idle_seconds < 0.1
        assert state.busy
        time.sleep(0.6)
        assert monitor.sample().idle_seconds >= 0.6
    finally:
        monitor.close()


def test_no_input_source_means_unknown_idle(tmp_path) -> None:
    quiet = OwnerMonitor(lambda: (), jail_cgroups=[], input_dir=str(tmp_path), loginctl="/no/such")
    assert quiet.sample().idle_seconds is None
    # This machine's own loginctl finds no logind: the same, without an error.
    default = OwnerMonitor(lambda: (), jail_cgroups=[], input_dir=str(tmp_path))
    state = default.sample()
    if not os.path.exists("/run/systemd/seats"):
        assert state.idle_seconds is None


def test_parse_logind() -> None:
    now = 1_000_000.0
    text = (
        "Remote=no\nClass=user\nIdleHint=yes\nIdleSinceHint=999700000000\n\n"
        "Remote=yes\nClass=user\nIdleHint=no\nIdleSinceHint=0\n\n"
        "Remote=no\nClass=greeter\nIdleHint=no\nIdleSinceHint=0\n"
    )
    assert parse_logind(text, now) == pytest.approx(300.0)
    assert parse_logind(text + "\nRemote=no\nClass=user\nIdleHint=no\n", now) == 0.0
    assert parse_logind("Remote=yes\nIdleHint=no\n", now) is None
    assert parse_logind("", now) is None


def test_monitor_thread_reports_and_stops() -> None:
    states: list[OwnerState] = []
    monitor = OwnerMonitor(lambda: (), interval=0.1, jail_cgroups=[], **NO_INPUT)
    monitor.start(states.append)
    time.sleep(0.55)
    monitor.close()
    count = len(states)
    assert count >= 3
    assert all(b.at > a.at for a, b in itertools.pairwise(states))
    time.sleep(0.25)
    assert len(states) == count


# The policy.

CONFIG = PolicyConfig(calm_seconds=60, busy_share=0.5, evict_after=15, evict_mem=0.9)


def calm(at: float, cpu: float = 0.0, mem: float = 0.2) -> OwnerState:
    return OwnerState(False, cpu, mem, 600.0, at=at)


def busy(at: float, cpu: float = 0.3, mem: float = 0.2, idle: float | None = 600.0) -> OwnerState:
    return OwnerState(True, cpu, mem, idle, at=at)


def run(samples: list[OwnerState], slots: int = 8) -> list[Decision]:
    """The decisions a daemon would take, sample by sample, keeping history as it would."""
    history: list[OwnerState] = []
    decisions = []
    for state in samples:
        decisions.append(desktop_policy(state, slots, history, CONFIG))
        history = keep_recent([*history, state], state.at, CONFIG)
    return decisions


def test_policy_calm_owner_gets_every_slot() -> None:
    decisions = run([calm(t) for t in range(0, 122, 2)])
    assert decisions[-1] == Decision(8, False, False)
    # Proof of calm takes calm_seconds: a monitor that just started yields meanwhile.
    assert decisions[0] == Decision(4, True, False)
    assert decisions[29] == Decision(4, True, False) and decisions[30] == Decision(8, False, False)


def test_policy_yields_at_once_and_returns_slowly() -> None:
    samples = [calm(t) for t in range(0, 100, 2)]
    samples.append(busy(100))
    samples += [calm(t) for t in range(102, 200, 2)]
    decisions = run(samples)
    assert decisions[49] == Decision(8, False, False)
    assert decisions[50] == Decision(4, True, False)  # the first busy sample
    back = [i for i, d in enumerate(decisions) if i > 50 and d.advertised_slots == 8]
    assert samples[back[0]].at == 162  # calm samples spanning calm_seconds after the busy one
    assert all(d == Decision(4, True, False) for d in decisions[51 : back[0]])


def test_policy_advertises_less_the_more_cpu_the_owner_uses() -> None:
    base = [calm(t) for t in range(0, 100, 2)]
    assert run([*base, busy(100, cpu=0.75)])[-1] == Decision(2, True, False)
    assert run([*base, busy(100, cpu=0.2, idle=5.0)])[-1] == Decision(4, True, False)
    # The peak of the calm window counts, not just the newest sample.
    decisions = run([*base, busy(100, cpu=0.75), busy(102, cpu=0.3)])
    assert decisions[-1] == Decision(2, True, False)


def test_policy_evicts_only_under_sustained_pressure() -> None:
    base = [calm(t) for t in range(0, 100, 2)]
    pressure = [busy(t, mem=0.95) for t in range(100, 114, 2)]  # 12 s: not yet
    decisions = run([*base, *pressure])
    assert not any(d.evict for d in decisions)
    decisions = run([*base, *pressure, busy(114, mem=0.95), busy(116, mem=0.95)])
    assert decisions[-2] == Decision(4, True, False)  # 14 s of pressure
    assert decisions[-1] == Decision(0, True, True)  # 16 s >= evict_after
    # One relieved sample inside the window resets the clock.
    broken = [*pressure[:3], busy(106, mem=0.5), *[busy(t, mem=0.95) for t in range(108, 118, 2)]]
    assert not any(d.evict for d in run([*base, *broken]))
    # CPU pressure counts too.
    hot = [busy(t, cpu=0.95) for t in range(100, 120, 2)]
    assert run([*base, *hot])[-1] == Decision(0, True, True)


def test_keep_recent_keeps_the_span_it_needs() -> None:
    history = [calm(t) for t in range(0, 100, 2)]
    kept = keep_recent(history, 100, CONFIG)
    assert kept[0].at == 40 and kept[-1].at == 98
    assert desktop_policy(calm(100), 8, kept, CONFIG) == desktop_policy(
        calm(100), 8, history, CONFIG
    )
