"""The security benchmark behind scripts/bench-auth, all on loopback in one run:

1. Connection cost: from connect() to the jail's READY, median over N connections, for a local
   Unix-socket connection (the baseline: peer credentials, no Kerberos) and for Kerberos TCP
   connections authorized by a principal list, by LDAP with its cache, and by LDAP asked
   afresh each time (--ldap-cache-ttl 0). A real KDC and slapd (scripts/realm.py).
2. Sealed throughput: a JOB frame carrying a 1 MiB preprocessed source sent and received over a
   socketpair, plain, integrity only, and with confidentiality (MB/s of source).
Prints Markdown tables with ratios against the baselines."""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realm as realms
from jailcc import protocol as proto
from jailcc.client.hosts import parse_hosts
from jailcc.client.remote import connect, open_session
from jailcc.images.identity import compiler_identity

BIN = Path(sys.executable).parent
COMPILER = "/usr/bin/gcc-12"


def start_jailccd(image: Path, state: Path, env: dict[str, str], *options: str) -> subprocess.Popen:
    log = state / "jailccd.log"
    proc = subprocess.Popen(
        [str(BIN / "jailccd"), "--toolchain-image", str(image), "--log-file", str(log), *options],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (log.exists() and "jailccd ready" in log.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench-auth: jailccd did not start (see {log})")
        time.sleep(0.05)
    return proc


def port_of(state: Path) -> int:
    text = (state / "jailccd.log").read_text()
    return int(text.split("listening on tcp:127.0.0.1:")[1].split()[0].rstrip(","))


def connection_ms(hosts: str, identity: str, rounds: int) -> float:
    host = parse_hosts(hosts)[0]
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        sock = connect(host)
        try:
            channel, _ = open_session(sock, host, identity)
            channel.expect(proto.READY, proto.MAX_HELLO_FRAME)
            times.append(time.perf_counter() - started)
        finally:
            sock.close()
        time.sleep(0.02)  # let the server put the jail back for the next connection
    return statistics.median(times) * 1000


def sealed_throughput(env: dict[str, str], size: int, rounds: int) -> dict[str, float]:
    """MB/s of a `size`-byte preprocessed source through a JOB frame, by protection."""
    import gssapi

    os.environ.update(env)
    target = gssapi.Name(realms.SERVICE + "@" + realms.REALM, gssapi.NameType.kerberos_principal)
    initiator = gssapi.SecurityContext(name=target, usage="initiate")
    creds = gssapi.Credentials(usage="accept", name=target)
    acceptor = gssapi.SecurityContext(creds=creds, usage="accept")
    initiator.step(acceptor.step(initiator.step()))
    source = _preprocessed_source(size)
    results = {}
    for label, encrypt in (("plain", None), ("integrity", False), ("confidentiality", True)):
        ours, theirs = socket.socketpair()
        if encrypt is None:
            sender, receiver = proto.Channel(ours), proto.Channel(theirs)
        else:
            sender = proto.SealedChannel(ours, initiator)
            receiver = proto.SealedChannel(theirs, acceptor)
            sender.confidential = receiver.confidential = encrypt
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            thread = threading.Thread(target=receiver.recv)
            thread.start()
            sender.send(proto.JOB, {"id": 1}, [source], [True])
            thread.join()
            times.append(time.perf_counter() - started)
        ours.close()
        theirs.close()
        # The best round: what the code costs, with the least of the shared machine's noise.
        results[label] = size / min(times) / 1e6
    return results


def _preprocessed_source(size: int) -> bytes:
    """Real preprocessed C (the standard headers, again and again) up to `size` bytes."""
    text = subprocess.run(
        [COMPILER, "-E", "-x", "c", "-"],
        input=b"#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n",
        capture_output=True,
        check=True,
    ).stdout
    return (text * (size // len(text) + 1))[:size]


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench-auth", description=__doc__)
    parser.add_argument("--rounds", type=int, default=40, help="connections per case")
    args = parser.parse_args()
    identity = compiler_identity(COMPILER)
    with tempfile.TemporaryDirectory(prefix="jailcc-bench-auth-") as tmp_name:
        tmp = Path(tmp_name)
        image = tmp / "gcc-12.img"
        subprocess.run(
            [str(BIN / "jailcc-image"), "build", "-q", "--compiler", COMPILER, "-o", str(image)],
            check=True,
        )
        with realms.Realm() as realm, realms.Directory(realm) as directory:
            env = {**os.environ, **realm.env}
            client = realm.kinit("alice", tmp / "alice.cc")
            allowed = tmp / "principals"
            allowed.write_text("alice@KRBTEST.COM\n")
            kerberos = [
                "--listen",
                "127.0.0.1:0",
                "--keytab",
                str(realm.keytab),
                "--principal",
                realm.service_principal,
            ]
            ldap = ["--ldap-url", directory.url, "--ldap-base", directory.base]
            ldap += ["--ldap-group", directory.group]
            cases = [
                ("local Unix socket (baseline)", ["--socket", str(tmp / "s.sock")]),
                ("Kerberos + principal list", [*kerberos, "--allow-principals", str(allowed)]),
                ("Kerberos + LDAP, cached", [*kerberos, *ldap]),
                ("Kerberos + LDAP, every time", [*kerberos, *ldap, "--ldap-cache-ttl", "0"]),
            ]
            rows = []
            os.environ.update(client)
            for label, options in cases:
                state = tmp / f"state{len(rows)}"
                state.mkdir()
                unix = "--socket" in options
                proc = start_jailccd(
                    image, state, env, *options, *(["--allow-user", "root"] if unix else [])
                )
                try:
                    hosts = (
                        f"unix:{tmp / 's.sock'}"
                        if unix
                        else f"tcp:127.0.0.1:{port_of(state)};principal={realm.service_principal}"
                    )
                    connection_ms(hosts, identity, 3)  # warm up: tickets, caches, jails
                    rows.append((label, connection_ms(hosts, identity, args.rounds)))
                finally:
                    proc.terminate()
                    proc.wait()
            throughput = sealed_throughput(client, 1 << 20, 100)
    base = rows[0][1]
    print(f"\n### Connection: connect to READY (median of {args.rounds})\n")
    print("| authentication and authorization | ms | ratio to local |")
    print("|---|---:|---:|")
    for label, ms in rows:
        print(f"| {label} | {ms:.2f} | {ms / base:.2f} |")
    print("\n### A JOB frame with 1 MiB of preprocessed source (LZ4, then sealed; best of 100)\n")
    print("| protection | MB/s | ratio to plain |")
    print("|---|---:|---:|")
    for label, rate in throughput.items():
        print(f"| {label} | {rate:.0f} | {rate / throughput['plain']:.2f} |")


if __name__ == "__main__":
    main()
