"""jailccd: the compile server's command line: `jailccd [options]` serves (see daemon.py),
`jailccd selftest` proves the jail."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..images.errors import ImageError
from ..sandbox.selftest import PROBE_NAMES, SelftestError, reports_to_json, run_selftest
from .catalog import name_images


def _selftest(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("jailccd selftest: error: must run as root (it builds jails)", file=sys.stderr)
        return 2
    # (Directories are accepted too: the sandbox can bind an unpacked image.)
    images = name_images(args.toolchain_image, usable=os.path.exists)

    def show(image: str, result) -> None:
        if not args.json:
            verdict = "PASS" if result.passed else "FAIL"
            print(f"{verdict}  {image:<12} {result.name:<22} {result.detail}", flush=True)

    reports = run_selftest(
        images, only=args.probe or None, timing_rounds=args.timing_rounds, progress=show
    )
    summary = reports_to_json(reports)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for report in reports:
            for leftover in report.leftovers:
                print(f"FAIL  {report.image:<12} {'teardown':<22} left behind: {leftover}")
            if report.jails_timed:
                print(
                    f"selftest: {report.image}: median jail build {report.build_ms_median:.1f} ms,"
                    f" teardown {report.teardown_ms_median:.1f} ms ({report.jails_timed} jails)"
                )
        print(f"selftest: {summary['passed']} passed, {summary['failed']} failed")
    return 1 if summary["failed"] else 0


def build_selftest_parser() -> argparse.ArgumentParser:
    st = argparse.ArgumentParser(
        prog="jailccd selftest",
        description="Build real jails from each toolchain image exactly as for jobs and try to"
        " escape from inside: read host files, write the image, reach the network, see host"
        " processes, regain privileges, exhaust memory, processes, disk and time, outlive the"
        " jail, see another jail. Prints PASS (blocked) or FAIL (escaped) per probe and exits"
        " non-zero on any FAIL. Needs root, and gcc with libc6-dev to build the probes.",
    )
    st.add_argument(
        "--toolchain-image",
        action="append",
        required=True,
        metavar="IMAGE",
        help="a toolchain image built by jailcc-image (repeatable)",
    )
    st.add_argument("--json", action="store_true", help="print one JSON report instead of lines")
    st.add_argument(
        "--probe",
        action="append",
        choices=PROBE_NAMES,
        metavar="NAME",
        help="run only this probe (repeatable); one of: " + ", ".join(PROBE_NAMES),
    )
    st.add_argument(
        "--timing-rounds",
        type=int,
        default=20,
        metavar="N",
        help="jails to build and tear down for the timing figures (default 20)",
    )
    st.set_defaults(func=_selftest)
    return st


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["selftest"]:
        args = build_selftest_parser().parse_args(argv[1:])
    else:
        from .daemon import build_parser

        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SelftestError, ImageError) as exc:
        print(f"jailccd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
