"""jailccd: the compile server's command line: `jailccd [options]` serves (see daemon.py),
`jailccd --check-config` checks and shows the configuration (options over config.py's file),
`jailccd selftest` proves the jail."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys

from jailcc import SELFTEST_PROBES, jobs
from jailcc.images.directory import dir_images
from jailcc.images.errors import ImageError
from jailcc.sandbox import syscalls
from jailcc.sandbox.api import Sandbox, SandboxError

from . import config
from .catalog import image_dir, name_images
from .unprivileged import (
    SELFTEST_UID,
    StartError,
    image_compilers,
    service_user,
    start_unprivileged,
)


def _selftest(args: argparse.Namespace) -> int:
    """Root's part: what only root can do, then the probes as a uid of their own
    (selftest/driver.py), driving the launcher started here; its exit status is ours."""
    if os.geteuid() != 0 or args.timing_rounds < 1:
        why = "--timing-rounds must be at least 1" if args.timing_rounds < 1 else "must run as root"
        print(f"jailccd selftest: error: {why}", file=sys.stderr)
        return 2
    # (Directories are accepted too: the sandbox can bind an unpacked image.)
    images = name_images(args.toolchain_image or _configured_images(args), usable=os.path.exists)
    if not images:
        raise ImageError("no toolchain image: name one with --toolchain-image IMAGE")
    wanted = args.probe or SELFTEST_PROBES
    ids = service_user()
    compilers: dict[str, list[str] | str] = {}
    for name, path in images.items() if SELFTEST_PROBES[0] in wanted else ():
        try:  # read as the service's uid, as jailccd reads them (unprivileged.py)
            first = image_compilers(path, ids).compilers[0]
            compilers[name] = [first.name, first.kind, first.path]
        except ImageError as exc:
            compilers[name] = str(exc)
    # A key in a keyring of our own, which the launcher (started next) inherits: a jail that
    # kept the keyring would find it (the keyctl probe).
    canary = f"jailcc-canary-{secrets.token_hex(6)}"
    with contextlib.suppress(OSError):
        syscalls.join_new_session_keyring()
    with contextlib.suppress(OSError):  # no canary: the keyctl probe then proves less
        syscalls.add_key("user", canary, b"canary")
    try:
        with Sandbox(
            images, warm=0, jail_modules=jobs.JAIL_MODULES, jail_libraries=jobs.JAIL_LIBRARIES
        ) as sandbox:
            init: dict[str, list[str]] = {}
            for name in images if "init_isolation" in wanted else ():
                with sandbox.create_jail(name) as jail:
                    init[name] = jail.init_isolation_problems()
            plan = {
                "images": images,
                "compilers": compilers,
                "init": init,
                "canary": canary,
                "launcher_pid": sandbox.launcher_pid,
                "only": args.probe,
                "timing_rounds": args.timing_rounds,
                "json": args.json,
            }
            fd = sandbox.control_fd
            options = ["--control-fd", str(fd), "--plan", json.dumps(plan)]
            probes = start_unprivileged(
                "jailcc.selftest.driver", options, SELFTEST_UID, SELFTEST_UID, pass_fds=[fd]
            )
            status = probes.wait()
            return status if status >= 0 else 128 - status  # killed: as a shell says it
    except SandboxError as exc:
        print(f"jailccd selftest: error: {exc}", file=sys.stderr)
        return 2


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
        " probes; root only starts the jail launcher (and plants what the probes aim at): the"
        f" probes run as uid {SELFTEST_UID}, which no other process has.",
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
        choices=SELFTEST_PROBES,
        metavar="NAME",
        help="run only this probe (repeatable); one of: " + ", ".join(SELFTEST_PROBES),
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
    except (ImageError, config.ConfigError, StartError) as exc:
        print(f"jailccd: error: {exc}", file=sys.stderr)
        return 1 if "--check-config" in argv else 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
