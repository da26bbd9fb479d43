"""jailccd: the compile server's command line: `jailccd [options]` serves (see daemon.py),
`jailccd --check-config` checks and shows the configuration (options over config.py's file),
`jailccd selftest` proves the jail."""

from __future__ import annotations

import argparse
import json
import os
import sys

from jailcc import jobs
from jailcc.images.directory import dir_images
from jailcc.images.errors import ImageError
from jailcc.sandbox.selftest import PROBE_NAMES, SelftestError, reports_to_json, run_selftest

from . import config, jobs_probe
from .catalog import image_dir, name_images
from .unprivileged import image_compilers, service_user


def _selftest(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("jailccd selftest: error: must run as root (it builds jails)", file=sys.stderr)
        return 2
    # (Directories are accepted too: the sandbox can bind an unpacked image.)
    images = name_images(args.toolchain_image or _configured_images(args), usable=os.path.exists)
    if not images:
        raise ImageError("no toolchain image: name one with --toolchain-image IMAGE")

    def show(image: str, result) -> None:
        if not args.json:
            verdict = "PASS" if result.passed else "FAIL"
            print(f"{verdict}  {image:<12} {result.name:<22} {result.detail}", flush=True)

    reports = run_selftest(
        images,
        only=args.probe or None,
        timing_rounds=args.timing_rounds,
        progress=show,
        # The production job path too: jails that load the job code as jailccd's do, and one
        # compile through the jobs handler.
        jobs_check=(jobs_probe.NAME, jobs_probe.probe),
        jail_modules=jobs.JAIL_MODULES,
        jail_libraries=jobs.JAIL_LIBRARIES,
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


def _configured_images(args: argparse.Namespace) -> list[str]:
    """The images jailccd would serve, from its config file and image directory."""
    from .daemon import build_parser

    path = config.config_path(args)
    values = config.read(path, build_parser()) if path else {}
    found, _ = dir_images(image_dir(values.get("image_dir")))
    return [*values.get("toolchain_image", []), *found.values()]


def _check_config(
    args: argparse.Namespace, sources: dict[str, str], parser: argparse.ArgumentParser
) -> int:
    from .daemon import check

    print(f"# config file: {config.config_path(args) or 'none'}")
    print(config.describe(args, sources, parser))
    try:
        catalog = check(args).catalog
        wanted, skipped = catalog.wanted()
    except (ImageError, ValueError) as exc:
        print(f"jailccd: error: {exc}", file=sys.stderr)
        return 1
    for name, path in wanted.items():
        try:
            manifest = image_compilers(path, service_user(args.service_user))
            compilers = ", ".join(c.name for c in manifest.compilers)
            print(f"# image {name}: {path} ({compilers})")
        except ImageError as exc:
            skipped.append(f"{path}: {exc}")
    for reason in skipped:
        print(f"# image skipped: {reason}")
    print("# configuration ok")
    return 0


def build_selftest_parser() -> argparse.ArgumentParser:
    st = argparse.ArgumentParser(
        prog="jailccd selftest",
        description="Build real jails from each toolchain image exactly as for jobs and try to"
        " escape from inside: read host files, write the image, reach the network, see host"
        " processes, regain privileges, exhaust memory, processes, disk and time, outlive the"
        " jail, see another jail. Prints PASS (blocked) or FAIL (escaped) per probe and exits"
        " non-zero on any FAIL; first, jobs_compile compiles a C file through a jail's jobs"
        " handler as a client's job would. Needs root, and gcc with libc6-dev to build the"
        " probes.",
    )
    st.add_argument(
        "--toolchain-image",
        action="append",
        metavar="IMAGE",
        help="a toolchain image built by jailcc-image (repeatable; default: the images jailccd"
        " would serve, from its --config file and image directory)",
    )
    st.add_argument(
        "--config",
        metavar="FILE",
        help=f"jailccd's config file to take the images from (default {config.DEFAULT_CONFIG},"
        " if it exists; '' for none)",
    )
    st.add_argument("--json", action="store_true", help="print one JSON report instead of lines")
    st.add_argument(
        "--probe",
        action="append",
        choices=(jobs_probe.NAME, *PROBE_NAMES),
        metavar="NAME",
        help="run only this probe (repeatable); one of: "
        + ", ".join((jobs_probe.NAME, *PROBE_NAMES)),
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
    try:
        if argv[:1] == ["selftest"]:
            args = build_selftest_parser().parse_args(argv[1:])
        else:
            from .daemon import build_parser

            parser = build_parser()
            args, sources = config.parse(parser, argv)
            if args.check_config:
                return _check_config(args, sources, parser)
        return args.func(args)
    except (SelftestError, ImageError, config.ConfigError) as exc:
        print(f"jailccd: error: {exc}", file=sys.stderr)
        return 1 if "--check-config" in argv else 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
