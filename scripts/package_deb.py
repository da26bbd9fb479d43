"""Build the jailcc Debian package (scripts/package runs this with the project's venv).

What goes in, and where:
    /opt/jailcc/                 a self-contained virtualenv on Debian's /usr/bin/python3.11:
                                 jailcc and the pinned runtime dependencies of pyproject.toml
                                 (never its test extra), bin/jailcc the native client
                                 (client/jailcc.c) beside bin/jailcc-py, which it execs
    /usr/bin/jailcc, jailcc-py, jailccd, jailcc-image     symlinks into /opt/jailcc/bin
    /lib/systemd/system/jailccd.service                   packaging/systemd/
    /usr/lib/systemd/user/jailcc-proxy.service
    /etc/jailcc/jailccd.toml     a conffile: docs/jailccd.toml.example with the group jailcc
                                 allowed on the local socket (postinst creates the group)
    /var/lib/jailcc/images/      jailccd's default image directory
    /usr/share/doc/jailcc/       README.md, architecture.md, farm-guide.md,
                                 include-analysis.md, jailccd.toml.example

The venv is built in a staging directory and moved into place by rewriting the staging path
where it lands (script shebangs, pyvenv.cfg) and compiling the bytecode for /opt/jailcc; the
build fails if the staging path is left anywhere. Wheels of the dependencies (gssapi and
python-ldap build from source, about a minute) are kept in a cache keyed by the pinned
requirements, the interpreter and pip, so a rebuild takes seconds and needs no network.
Depends: comes from dpkg-shlibdeps over every ELF file in the venv, plus the interpreter, the
C compiler and static libc that jailccd builds its spawn helper with, and groupadd.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3.11"  # Debian's, as scripts/setup: never a pyenv shim
PREFIX = "/opt/jailcc"
COMMANDS = ("jailcc", "jailcc-py", "jailccd", "jailcc-image")
# Needed at run time beyond the libraries dpkg-shlibdeps finds: the interpreter, cc and static
# libc for the spawn helper (sandbox/helpers.py builds it at jailccd's first start), groupadd,
# and squashfs-tools: jailcc-image build makes squashfs images, and jailccd reads their
# manifests with unsquashfs (no service comes with it).
EXTRA_DEPENDS = ("python3.11", "gcc", "libc6-dev", "passwd", "squashfs-tools")
# LDAP's default bind (SASL GSSAPI) needs the module.
RECOMMENDS = ("libsasl2-modules-gssapi-mit",)
SUGGESTS = ("krb5-user",)
CONFIG_SUBSTITUTIONS = (('# allow-group = ["jailcc-users"]', 'allow-group = ["jailcc"]'),)
CONFIG_HEADER = """\
# As the jailcc package installs it: jailccd serves its Unix socket /run/jailccd/jailccd.sock
# to members of the Unix group jailcc (`adduser NAME jailcc`), with the toolchain images in
# /var/lib/jailcc/images/ (none at first: build one with jailcc-image, then `systemctl start
# jailccd`). No Kerberos, no TCP until you configure them below.
#
"""
DESCRIPTION = """\
Description: distributed C/C++ compile farm that jails every connection
 jailcc sends C and C++ compiles to jailccd servers, which run each connection's
 jobs in a fresh, throwaway jail made from a read-only toolchain image, and
 returns results byte-identical to a local compile. Kerberos authentication,
 LDAP authorization, mDNS discovery and a per-user proxy on the client side.
 .
 This package holds the client (jailcc), the server (jailccd, as a systemd
 service) and the image builder (jailcc-image), in a virtualenv under
 /opt/jailcc."""


def run(*cmd: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def say(message: str) -> None:
    print(f"package: {message}", file=sys.stderr, flush=True)


def project() -> dict:
    with open(TOP / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def version() -> str:
    text = (TOP / "core" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def wheels(cache: Path) -> Path:
    """A directory of wheels for the runtime dependencies and the build backend, built once
    per set of pins, interpreter and pip."""
    meta = project()
    # (setuptools of this age asks for wheel too, when it builds jailcc's own wheel)
    build = [*meta["build-system"]["requires"], "wheel"]
    pins = sorted(meta["project"]["dependencies"]) + sorted(build)
    interpreter = run(
        PYTHON, "-c", "import sys; print(sys.version)", capture_output=True, text=True
    )
    pip = run(sys.executable, "-m", "pip", "--version", capture_output=True, text=True)
    key = hashlib.sha256(
        json.dumps([pins, interpreter.stdout, pip.stdout.split()[1], os.uname().machine]).encode()
    ).hexdigest()[:16]
    target = cache / f"wheels-{key}"
    if target.is_dir():
        say(f"dependency wheels from {target}")
        return target
    say(f"building wheels of {len(pins)} pinned requirements into {target} (gssapi: ~1 min)")
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".wheels-", dir=cache))
    try:
        run(sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", partial, *pins)
        try:
            partial.rename(target)  # whole or not at all
        except OSError:
            if not target.is_dir():  # (else another build made it meanwhile: use theirs)
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def build_venv(root: Path, wheel_dir: Path, work: Path) -> Path:
    """The virtualenv at root/opt/jailcc, holding jailcc and its dependencies, no pip."""
    venv = root / PREFIX.lstrip("/")
    run(PYTHON, "-m", "venv", "--without-pip", venv)
    # Build jailcc's own wheel from a copy: the checkout gets no build/ or egg-info from us.
    source = work / "src"
    package_dirs = project()["tool"]["setuptools"]["package-dir"].values()
    for name in (*package_dirs, "pyproject.toml", "README.md"):
        src = TOP / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, source / name)
    offline = ("--no-index", "--find-links", wheel_dir)
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        *offline,
        "-w",
        work / "dist",
        source,
    )
    (wheel,) = (work / "dist").glob("jailcc-*.whl")
    run(
        sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
        "--no-compile", "--no-warn-script-location", *offline, wheel,
    )  # fmt: skip
    # The native front end replaces the console script; it execs jailcc-py, beside it.
    run(
        "cc",
        "-O2",
        "-Wall",
        "-Werror",
        "-s",
        "-o",
        venv / "bin" / "jailcc",
        TOP / "client/jailcc.c",
    )
    return venv


def relocate(root: Path, venv: Path) -> None:
    """Make the staged venv the one at PREFIX: rewrite the staging path, compile bytecode."""
    staged = str(venv).encode()
    for script in venv.glob("bin/[aA]ctivate*"):  # an application's venv is never activated
        script.unlink()
    for path in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if staged in data and not data.startswith(b"\x7fELF"):
            path.write_bytes(data.replace(staged, PREFIX.encode()))
    # A wheel installed from a file records where the file was: not ours to ship.
    for direct in venv.glob("lib/python3.*/site-packages/jailcc-*.dist-info/direct_url.json"):
        direct.unlink()
        record = direct.parent / "RECORD"
        lines = record.read_text().splitlines(keepends=True)
        record.write_text(
            "".join(x for x in lines if not x.startswith(f"{direct.parent.name}/direct_url.json"))
        )
    run(PYTHON, "-m", "compileall", "-q", "-j0", "-s", root, "-p", "/", venv / "lib")
    leftovers = [
        str(p) for p in venv.rglob("*") if p.is_file() and not p.is_symlink()
        and str(root).encode() in p.read_bytes()
    ]  # fmt: skip
    if leftovers:
        raise SystemExit(f"package: the staging path is left in {leftovers[:5]}")


def lay_out(root: Path) -> None:
    def install(src: Path, dest: str, mode: int = 0o644) -> None:
        target = root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        target.chmod(mode)

    (root / "usr/bin").mkdir(parents=True)
    for command in COMMANDS:
        (root / "usr/bin" / command).symlink_to(f"{PREFIX}/bin/{command}")
    install(TOP / "packaging/systemd/jailccd.service", "/lib/systemd/system/jailccd.service")
    install(
        TOP / "packaging/systemd/jailcc-proxy.service", "/usr/lib/systemd/user/jailcc-proxy.service"
    )
    config = (TOP / "docs/jailccd.toml.example").read_text()
    for old, new in CONFIG_SUBSTITUTIONS:
        if old not in config:
            raise SystemExit(f"package: docs/jailccd.toml.example has no line {old!r} any more")
        config = config.replace(old, new)
    (root / "etc/jailcc").mkdir(parents=True)
    (root / "etc/jailcc/jailccd.toml").write_text(CONFIG_HEADER + config)
    (root / "var/lib/jailcc/images").mkdir(parents=True)
    docs = ("architecture.md", "farm-guide.md", "include-analysis.md", "jailccd.toml.example")
    for doc in ("README.md", *(f"docs/{name}" for name in docs)):
        install(TOP / doc, f"/usr/share/doc/jailcc/{Path(doc).name}")
    license_ = project()["project"]["license"]["text"]
    (root / "usr/share/doc/jailcc/copyright").write_text(f"jailcc\nLicense: {license_}\n")
    for path in root.rglob("*"):  # whatever umask the build ran under
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)


def depends(root: Path, work: Path) -> str:
    """dpkg-shlibdeps over every ELF file in the tree (manylinux wheels' bundled libraries in
    their *.libs directories are searched, and have no package: ignored), plus EXTRA_DEPENDS."""
    elves, bundled = [], set()
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    elves.append(path)
                    if path.parent.name.endswith(".libs"):
                        bundled.add(path.parent)
    (work / "debian").mkdir()
    (work / "debian/control").write_text("Source: jailcc\n\nPackage: jailcc\nArchitecture: any\n")
    out = run(
        "dpkg-shlibdeps", "-O", "--ignore-missing-info", "--warnings=0",
        *(f"-l{d}" for d in sorted(bundled)), *elves,
        cwd=work, capture_output=True, text=True,
    )  # fmt: skip
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("shlibs:Depends=")]
    return ", ".join([*EXTRA_DEPENDS, line.partition("=")[2]])


def control(root: Path, work: Path) -> None:
    debian = root / "DEBIAN"
    debian.mkdir()
    arch = run("dpkg", "--print-architecture", capture_output=True, text=True).stdout.strip()
    size = run("du", "-sk", "--apparent-size", root, capture_output=True, text=True)
    fields = {
        "Package": "jailcc",
        "Version": version(),
        "Architecture": arch,
        "Maintainer": "jailcc maintainers <root@localhost>",
        "Installed-Size": size.stdout.split()[0],
        "Depends": depends(root, work),
        "Recommends": ", ".join(RECOMMENDS),
        "Suggests": ", ".join(SUGGESTS),
        "Section": "devel",
        "Priority": "optional",
    }
    text = "".join(f"{k}: {v}\n" for k, v in fields.items()) + DESCRIPTION + "\n"
    (debian / "control").write_text(text)
    (debian / "conffiles").write_text("/etc/jailcc/jailccd.toml\n")
    for script in ("postinst", "prerm", "postrm"):
        shutil.copyfile(TOP / "packaging/debian" / script, debian / script)
        (debian / script).chmod(0o755)
    sums = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and debian not in path.parents:
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            sums.append(f"{digest}  {path.relative_to(root)}\n")
    (debian / "md5sums").write_text("".join(sums))


def main(argv: list[str] | None = None) -> int:
    # Every file packaged is written by this process: root-owned, and never group- or
    # world-writable whatever the builder's umask (the conffile and the code root runs).
    os.umask(0o022)
    parser = argparse.ArgumentParser(
        prog="scripts/package",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build the jailcc Debian package and print its path.\n\n"
        + __doc__.split("\n", 1)[1],
        epilog="Install it with `apt install ./build/jailcc_VERSION_ARCH.deb` (apt pulls the"
        " Depends:),\nthen build an image into /var/lib/jailcc/images and `systemctl start"
        " jailccd`.",
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=TOP / "build", help="where the .deb goes (build/)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=TOP / ".cache/package",
        help="where dependency wheels are kept between builds (.cache/package)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jailcc-package-") as tmp:
        work = Path(tmp)
        root = work / "root"
        wheel_dir = wheels(args.cache.resolve())
        say("building the virtualenv for /opt/jailcc")
        venv = build_venv(root, wheel_dir, work)
        relocate(root, venv)
        lay_out(root)
        control(root, work)
        args.output.mkdir(parents=True, exist_ok=True)
        deb = args.output.resolve() / f"jailcc_{version()}_{root_arch(root)}.deb"
        say(f"building {deb}")
        run("dpkg-deb", "--build", "--root-owner-group", root, deb, stdout=subprocess.DEVNULL)
    print(deb)
    return 0


def root_arch(root: Path) -> str:
    text = (root / "DEBIAN/control").read_text()
    return re.search(r"^Architecture: (\S+)", text, re.M).group(1)


if __name__ == "__main__":
    sys.exit(main())
