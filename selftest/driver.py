"""The unprivileged half of `jailccd selftest`: runs every probe and prints the report.

monitor/cli.py (root) reads each image's manifest, plants the canary key, starts the jail
launcher, looks at one jail's init from the host, and then starts this as a uid of its own
(monitor/unprivileged.py SELFTEST_UID, which no other process has) with the launcher's control
channel and a plan (JSON):

    {"images": {NAME: PATH}, "compilers": {NAME: [name, kind, path] or why not},
     "init": {NAME: [problems]}, "canary": DESCRIPTION, "launcher_pid": PID,
     "only": [PROBE, ...] or null, "timing_rounds": N, "json": false}

So the probes' programs are built, their jails driven and their output parsed by a process
with no privilege, which holds only the launcher's channel (and makes itself non-dumpable at
once, besides).

Run as: python -m jailcc.selftest.driver --control-fd N --plan JSON
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

from jailcc.sandbox.api import Sandbox, SandboxError

from . import jobs_probe
from .probes import FromRoot, ImageReport, ProbeResult, SelftestError, reports_to_json, run_selftest


def run(plan: dict[str, Any], control: socket.socket) -> int:
    images: dict[str, str] = plan["images"]
    compilers: dict[str, Any] = plan["compilers"]
    sandbox = Sandbox.attach(control, list(images), int(plan["launcher_pid"]))
    quiet = bool(plan["json"])

    def show(image: str, result: ProbeResult) -> None:
        if not quiet:
            verdict = "PASS" if result.passed else "FAIL"
            print(f"{verdict}  {image:<12} {result.name:<22} {result.detail}", flush=True)

    reports = run_selftest(
        images,
        only=plan["only"],
        timing_rounds=int(plan["timing_rounds"]),
        progress=show,
        jobs_check=(
            jobs_probe.NAME,
            lambda jail, image: jobs_probe.probe(jail, compilers.get(image, "not read")),
        ),
        from_root=FromRoot(sandbox, str(plan["canary"]), dict(plan["init"])),
    )
    summary = reports_to_json(reports) | {"probes_uid": os.geteuid()}
    if quiet:
        print(json.dumps(summary, indent=2))
    else:
        _print_lines(reports, summary)
    return 1 if summary["failed"] else 0


def _print_lines(reports: list[ImageReport], summary: dict[str, Any]) -> None:
    for report in reports:
        for leftover in report.leftovers:
            print(f"FAIL  {report.image:<12} {'teardown':<22} left behind: {leftover}")
        if report.jails_timed:
            print(
                f"selftest: {report.image}: median jail build {report.build_ms_median:.1f} ms,"
                f" teardown {report.teardown_ms_median:.1f} ms ({report.jails_timed} jails)"
            )
    print(f"selftest: {summary['passed']} passed, {summary['failed']} failed")


def main(argv: list[str] | None = None) -> int:
    import prctl

    prctl.set_dumpable(False)  # before anything else: the launcher's channel is root's
    parser = argparse.ArgumentParser(
        prog="jailcc.selftest.driver",
        description="jailccd selftest's probes, run unprivileged (started by jailccd selftest)",
    )
    parser.add_argument("--control-fd", type=int, required=True, help="the launcher's channel")
    parser.add_argument("--plan", required=True, help="what root prepared, as JSON (above)")
    args = parser.parse_args(argv)
    try:
        return run(json.loads(args.plan), socket.socket(fileno=args.control_fd))
    except (SelftestError, SandboxError) as exc:
        print(f"jailccd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
