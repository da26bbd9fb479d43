"""The Debian package (scripts/package) and its systemd units (packaging/systemd/).

The .deb is built once for the module (its dependency wheels are cached in .cache/package, keyed
by the pins), its metadata and contents checked, and then it is used as installed without
installing it: in a private mount namespace, overlays put the extracted /opt/jailcc, /usr/bin
links, /etc/jailcc and /var/lib/jailcc over the real paths (nothing on the host changes), the
packaged jailcc-image builds a gcc-12 image into the packaged image directory, and jailccd.service's
own ExecStart runs there in a nested namespace set up as systemd would set up the unit: its
Runtime/State/Cache/LogsDirectory=, ProtectSystem=strict, ProtectHome=, PrivateTmp=, UMask=,
NoNewPrivileges=, CapabilityBoundingSet= and (where a cgroup v1 devices hierarchy exists) its
DevicePolicy=/DeviceAllow= as a devices cgroup. The packaged /usr/bin/jailcc then compiles through
it, directly and through its proxy, and the objects must equal a local gcc-12's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import jailcc
import pytest
from conftest import build_image

TOP = Path(__file__).resolve().parent.parent
UNITS = TOP / "packaging" / "systemd"
PYTHON = "/usr/bin/python3.11"
DEVICES_CGROUP = Path("/sys/fs/cgroup/devices")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces and jails need root"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is missing"),
]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run(
        [str(TOP / "scripts/package"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.parent == out and path.is_file()
    return path


@pytest.fixture(scope="module")
def extracted(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("extracted")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def _unit(path: Path) -> dict[str, list[str]]:
    """The [Service] (and [Unit]) settings of a unit file, each key's values in order."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


# -- metadata -------------------------------------------------------------------------------


def test_the_package_says_what_it_is_and_needs_no_kdc_or_directory_server(deb):
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"^ (\S+): (.*)$", info, re.M))
    assert fields["Package"] == "jailcc"
    assert fields["Version"] == jailcc.__version__
    depends = [d.split()[0] for d in fields["Depends"].split(", ")]
    for needed in (
        "python3.11",
        "libgssapi-krb5-2",
        "libldap-2.5-0",
        "libcap2",
        "gcc",
        "libc6-dev",
        "squashfs-tools",  # jailccd reads images' manifests with unsquashfs
    ):
        assert needed in depends
    related = " ".join(fields.get(k, "") for k in ("Depends", "Recommends", "Suggests"))
    for server_side in ("krb5-kdc", "krb5-admin-server", "slapd"):
        assert server_side not in related
    control = subprocess.run(
        ["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    listed = subprocess.run(
        ["tar", "-xO", "./conffiles"], input=control, capture_output=True, check=True
    ).stdout.decode()
    assert listed.split() == ["/etc/jailcc/jailccd.toml"]


def test_the_package_holds_the_commands_units_config_and_no_test_tools(deb):
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    entries = {}
    for line in listing.splitlines():
        perms, owner, _size, _date, _time, name, *rest = line.split()
        assert owner == "root/root", line
        entries[name.removeprefix(".")] = (perms, rest[1] if rest else None)
    for command in ("jailcc", "jailcc-py", "jailccd", "jailcc-image"):
        assert entries[f"/usr/bin/{command}"] == ("lrwxrwxrwx", f"/opt/jailcc/bin/{command}")
    for path in (
        "/lib/systemd/system/jailccd.service",
        "/usr/lib/systemd/user/jailcc-proxy.service",
        "/etc/jailcc/jailccd.toml",
        "/var/lib/jailcc/images/",
        "/opt/jailcc/pyvenv.cfg",
        "/opt/jailcc/bin/jailcc",
        "/usr/share/doc/jailcc/farm-guide.md",  # README sends a new admin there
        "/usr/share/doc/jailcc/architecture.md",
    ):
        assert path in entries, path
    site = "/opt/jailcc/lib/python3.11/site-packages/"
    top_level = {
        name[len(site) :].split("/")[0].lower() for name in entries if name.startswith(site)
    }
    for test_only in ("pytest", "_pytest", "k5test", "atheris", "ruff", "pip", "setuptools"):
        assert not [t for t in top_level if t == test_only or t.startswith(f"{test_only}-")]
    for runtime in ("jailcc", "gssapi", "ldap", "zeroconf", "lz4", "prctl.py", "psutil"):
        assert runtime in top_level


def test_the_packaged_venv_is_at_home_in_opt_jailcc(extracted):
    venv = extracted / "opt/jailcc"
    assert (venv / "bin/python3.11").readlink() == Path(PYTHON)
    with open(venv / "bin/jailcc", "rb") as f:
        assert f.read(4) == b"\x7fELF"  # the native client, not the console script
    assert (venv / "bin/jailcc-py").read_text().startswith("#!/opt/jailcc/bin/python")
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin\n" in cfg and cfg.endswith("--without-pip /opt/jailcc\n")
    config = (extracted / "etc/jailcc/jailccd.toml").read_text()
    assert re.search(r'^allow-group = \["jailcc"\]$', config, re.M)
    assert _unit(extracted / "lib/systemd/system/jailccd.service") == _unit(
        UNITS / "jailccd.service"
    )


# -- the units ------------------------------------------------------------------------------


def _in_package_namespace(extracted: Path, command: str, **env: str) -> subprocess.CompletedProcess:
    """Run a shell command where the package's /opt and /usr/bin lie over the host's."""
    overlays = (
        f"mount -t overlay jailcc-opt -o lowerdir={extracted}/opt:/opt /opt && "
        f"mount -t overlay jailcc-bin -o lowerdir={extracted}/usr/bin:/usr/bin /usr/bin && "
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", overlays + command],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing"
)


@needs_systemd_analyze
def test_systemd_analyze_verifies_the_system_unit(extracted):
    unit = extracted / "lib/systemd/system/jailccd.service"
    proc = _in_package_namespace(extracted, f"exec systemd-analyze verify {unit}")
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


@needs_systemd_analyze
def test_systemd_analyze_verifies_the_user_unit(extracted, tmp_path):
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    unit = extracted / "usr/lib/systemd/user/jailcc-proxy.service"
    proc = _in_package_namespace(
        extracted, f"exec systemd-analyze --user verify {unit}", XDG_RUNTIME_DIR=str(runtime)
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


@needs_systemd_analyze
def test_the_system_units_exposure_is_reviewed(extracted):
    """systemd's own review of the sandboxing: the options the unit sets are seen as set, and
    the overall exposure stays where the review in the unit's comments left it."""
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={extracted}", "jailccd.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = proc.stdout
    for setting in (
        "NoNewPrivileges=",
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "ProtectKernelModules=",
        "ProtectKernelLogs=",
        "ProtectClock=",
        "RestrictRealtime=",
        "LockPersonality=",
        "SystemCallArchitectures=",
        "RestrictSUIDSGID=",
    ):
        (line,) = [x for x in report.splitlines() if x.split()[1:2] == [setting]]
        assert line.startswith("✓"), line
    exposure = float(re.search(r"Overall exposure level for jailccd.service: ([\d.]+)", report)[1])
    assert exposure <= 5.0, report


# -- serving a compile as the unit would run -------------------------------------------------

# Run as root by PYTHON in a private mount namespace: "outer" sets up the installed package and
# the client side, "inner" (in a nested namespace) is jailccd.service's sandbox around ExecStart.
NAMESPACE_SCRIPT = r"""
import json, os, shlex, shutil, signal, socket, subprocess, sys, time

mode, cfg_path = sys.argv[1], sys.argv[2]
cfg = json.load(open(cfg_path))
pkg, work, unit = cfg["package"], cfg["work"], cfg["unit"]

def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)

def overlay(target, lower, upper=None):
    opts = f"lowerdir={lower}"
    if upper:
        os.makedirs(upper + "-work", exist_ok=True)
        opts += f",upperdir={upper},workdir={upper}-work"
    sh("mount", "-t", "overlay", "jailcc-test", "-o", opts, target)

def outer():
    # The package as installed: overlays over the real paths, nothing on the host written.
    overlay("/opt", f"{pkg}/opt:/opt")
    overlay("/usr/bin", f"{pkg}/usr/bin:/usr/bin")
    os.makedirs(f"{work}/etc/jailcc")
    shutil.copy(f"{pkg}/etc/jailcc/jailccd.toml", f"{work}/etc/jailcc/jailccd.toml")
    with open("/etc/group") as f:
        group = f.read()
    with open("/etc/passwd") as f:
        passwd = f.read()
    with open(f"{work}/etc/group", "w") as f:  # what postinst does, root made a member
        f.write(group + f"jailcc:x:{cfg['gid']}:root\njailccd:x:{cfg['gid'] - 1}:\n")
    with open(f"{work}/etc/passwd", "w") as f:  # and the network service's user
        f.write(passwd + f"jailccd:x:{cfg['gid'] - 1}:{cfg['gid'] - 1}::/nonexistent:/bin/false\n")
    overlay("/etc", "/etc", f"{work}/etc")
    os.makedirs(f"{work}/varlib/jailcc")
    shutil.copytree(f"{pkg}/var/lib/jailcc/images", f"{work}/varlib/jailcc/images")
    overlay("/var/lib", "/var/lib", f"{work}/varlib")
    # The unit's directories, as systemd makes them: /run (a tmpfs here, keeping the host's
    # /run/jailcc, which every launcher on the machine shares for its uid locks), a fresh
    # cache (the spawn helper is built at first start), a log directory.
    sh("mount", "--bind", "/run/jailcc", f"{work}/hold")
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "jailcc-run", "/run")
    for d in cfg["runtime"]:
        os.makedirs(f"/run/{d}", mode=0o755)
    sh("mount", "--move", f"{work}/hold", "/run/jailcc")
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "jailcc-cache", "/var/cache/jailcc")
    os.makedirs(f"{work}/varlog/jailcc")
    overlay("/var/log", "/var/log", f"{work}/varlog")

    result = {}
    image = "/var/lib/jailcc/images/gcc-12.img"
    started = time.monotonic()
    sh("/usr/bin/jailcc-image", "build", "--compiler", "/usr/bin/gcc-12", "-o", image,
       stdout=subprocess.DEVNULL)
    result["image_seconds"] = time.monotonic() - started
    check = subprocess.run(["/usr/bin/jailccd", "--config", "/etc/jailcc/jailccd.toml",
                            "--check-config"], capture_output=True, text=True)
    result["check_config"] = [check.returncode, check.stdout + check.stderr]

    log = open(f"{work}/jailccd.log", "w")
    server = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", sys.executable, __file__, "inner",
         cfg_path], stdout=log, stderr=subprocess.STDOUT)
    try:
        result.update(serve(server))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            result["server_exit"] = server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            result["server_exit"] = server.wait()
        json.dump(result, open(f"{work}/result.json", "w"))

def serve(server):
    sock_path = "/run/jailccd/jailccd.sock"
    deadline = time.monotonic() + 90
    while True:
        if server.poll() is not None:
            return {"started": False}
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock_path)
            break
        except OSError:
            if time.monotonic() > deadline:
                return {"started": False}
            time.sleep(0.2)
    # What the kernel says of the server process: the sandbox was applied.
    with open(f"/proc/{server.pid}/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    with open(f"/proc/{server.pid}/mountinfo") as f:
        root_options = next(x.split()[5] for x in f if x.split()[4] == "/")
    out = {"started": True, "compiles": [], "no_new_privs": status["NoNewPrivs"],
           "cap_bounding": status["CapBnd"], "umask": status["Umask"], "root": root_options}
    src = f"{work}/src"
    os.makedirs(src)
    with open(f"{src}/hello.c", "w") as f:
        f.write('#include <stdio.h>\nint hello(void) { return puts("hello from a jail"); }\n')
    os.makedirs(f"{work}/xdg", mode=0o700)
    env = {"PATH": "/usr/bin:/bin", "HOME": f"{work}/home", "XDG_RUNTIME_DIR": f"{work}/xdg",
           "JAILCC_HOSTS": f"unix:{sock_path}", "JAILCC_VERBOSE": "1",
           "JAILCC_PROXY_IDLE": "20"}
    def jailcc(*args):
        proc = subprocess.run(["/usr/bin/jailcc", *args], cwd=src, env=env,
                              capture_output=True, text=True, timeout=120)
        return [proc.returncode, proc.stdout + proc.stderr]
    sh("gcc-12", "-c", "hello.c", "-o", "local.o", cwd=src)
    # First the native client finds no proxy and execs jailcc-py, which compiles and starts
    # one; then the native client's compile goes through that proxy.
    out["compiles"].append(jailcc("gcc-12", "-c", "hello.c", "-o", "first.o"))
    deadline = time.monotonic() + 30
    while not any(n.endswith(".sock") for n in os.listdir(f"{work}/xdg/jailcc")
                  if os.path.isdir(f"{work}/xdg/jailcc")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    out["compiles"].append(jailcc("gcc-12", "-c", "hello.c", "-o", "second.o"))
    status = subprocess.run(["/usr/bin/jailcc", "status", "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    out["status"] = [status.returncode, status.stdout]
    out["proxy_stop"] = jailcc("proxy", "stop")
    local = open(f"{src}/local.o", "rb").read()
    out["same"] = [open(f"{src}/{n}.o", "rb").read() == local for n in ("first", "second")]
    return out

def inner():
    # jailccd.service's sandbox, emulated: devices cgroup, directories, read-only system,
    # no homes, private /tmp, umask, then no_new_privs and the bounding set through setpriv.
    if cfg["devices_cgroup"]:
        with open(f"{cfg['devices_cgroup']}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
    writable = cfg["writable"]
    for d in writable:
        sh("mount", "--bind", d, d)
    mounts = []
    for line in open("/proc/self/mountinfo"):
        point = line.split()[4].replace("\\040", " ")
        if point in writable or any(point == a or point.startswith(a + "/")
                                    for a in ("/dev", "/proc", "/sys")):
            continue
        mounts.append(point)
    for point in mounts:
        if os.path.ismount(point):  # (else it lies under a later mount: out of reach)
            sh("mount", "-o", "remount,bind,ro", point)
    for tmp in ("/tmp", "/var/tmp"):
        sh("mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "private-tmp", tmp)
    for home in ("/home", "/root", "/run/user"):
        if os.path.isdir(home):
            sh("mount", "-t", "tmpfs", "-o", "ro,mode=000", "protect-home", home)
    os.umask(cfg["umask"])
    setpriv = ["setpriv", "--pdeathsig", "KILL"]
    if cfg["no_new_privs"]:
        setpriv.append("--no-new-privs")
    if cfg["bounding_drop"]:
        setpriv += ["--bounding-set", ",".join("-" + c for c in cfg["bounding_drop"])]
    os.execvp("setpriv", [*setpriv, "--", *cfg["exec_start"]])

outer() if mode == "outer" else inner()
"""


def _closed_policy(unit: dict[str, list[str]]) -> list[str]:
    """DevicePolicy=closed plus DeviceAllow= (and ProtectClock='s char-rtc) as devices.allow
    lines of a cgroup v1 devices group: what systemd writes for the unit."""
    assert unit["DevicePolicy"] == ["closed"]
    # The pseudo devices DevicePolicy=closed always allows, with mknod.
    lines = [f"c {n} rwm" for n in ("1:3", "1:5", "1:7", "1:8", "1:9", "5:0", "5:2")]
    majors: dict[tuple[str, str], str] = {}
    kind = None
    for line in Path("/proc/devices").read_text().splitlines():
        if line.endswith(":"):
            kind = "char" if line.startswith("Character") else "block"
        elif line.strip():
            number, name = line.split()
            majors[(kind, name)] = number
    allows = list(unit.get("DeviceAllow", []))
    if unit.get("ProtectClock") == ["yes"]:
        allows.append("char-rtc r")
    for allow in allows:
        what, access = allow.split()
        if what.startswith("/dev/"):
            st = os.stat(what)
            letter = "c" if stat.S_ISCHR(st.st_mode) else "b"
            lines.append(f"{letter} {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} {access}")
        else:
            kind_, _, name = what.partition("-")
            major = majors.get((kind_, name))
            if major is not None:  # (no rtc driver here, say)
                lines.append(f"{kind_[0]} {major}:* {access}")
    return lines


@contextlib.contextmanager
def _devices_cgroup(unit: dict[str, list[str]]) -> Iterator[str]:
    """A cgroup v1 devices group with the unit's device policy, or "" where there is no v1
    devices hierarchy (cgroup v2 only: systemd would use a BPF program; not emulated here)."""
    if not (DEVICES_CGROUP / "devices.allow").exists():
        yield ""
        return
    group = DEVICES_CGROUP / f"jailcc-test-package-{os.getpid()}"
    group.mkdir()
    try:
        (group / "devices.deny").write_text("a")
        for line in _closed_policy(unit):
            (group / "devices.allow").write_text(line)
        yield str(group)
    finally:
        deadline = time.monotonic() + 30
        while True:
            try:
                group.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                time.sleep(0.2)


def _cap_number(name: str) -> int | None:
    """A capability's number (linux/capability.h)."""
    return _CAPS.get(name.upper())


_CAPS = {
    name: number
    for number, name in enumerate(
        [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_DAC_READ_SEARCH",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETPCAP",
            "CAP_LINUX_IMMUTABLE",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_BROADCAST",
            "CAP_NET_ADMIN",
            "CAP_NET_RAW",
            "CAP_IPC_LOCK",
            "CAP_IPC_OWNER",
            "CAP_SYS_MODULE",
            "CAP_SYS_RAWIO",
            "CAP_SYS_CHROOT",
            "CAP_SYS_PTRACE",
            "CAP_SYS_PACCT",
            "CAP_SYS_ADMIN",
            "CAP_SYS_BOOT",
            "CAP_SYS_NICE",
            "CAP_SYS_RESOURCE",
            "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG",
            "CAP_MKNOD",
            "CAP_LEASE",
            "CAP_AUDIT_WRITE",
            "CAP_AUDIT_CONTROL",
            "CAP_SETFCAP",
            "CAP_MAC_OVERRIDE",
            "CAP_MAC_ADMIN",
            "CAP_SYSLOG",
            "CAP_WAKE_ALARM",
            "CAP_BLOCK_SUSPEND",
            "CAP_AUDIT_READ",
            "CAP_PERFMON",
            "CAP_BPF",
            "CAP_CHECKPOINT_RESTORE",
        ]
    )
}


def _free_gid() -> int:
    import grp
    import pwd

    # gid and gid - 1 (the jailccd user's uid and gid) both free.
    used = {g.gr_gid for g in grp.getgrall()} | {p.pw_uid for p in pwd.getpwall()}
    return next(gid for gid in range(990, 100, -1) if not {gid, gid - 1} & used)


def test_the_packaged_jailccd_serves_a_compile_in_its_units_sandbox(extracted, tmp_path):
    unit_file = extracted / "lib/systemd/system/jailccd.service"
    unit = _unit(unit_file)
    (exec_start,) = unit["ExecStart"]
    runtime = [d for v in unit["RuntimeDirectory"] for d in v.split()]
    writable = [f"/run/{d}" for d in runtime]
    for key, base in (("StateDirectory", "/var/lib"), ("CacheDirectory", "/var/cache"),
                      ("LogsDirectory", "/var/log")):  # fmt: skip
        writable += [f"{base}/{d}" for v in unit[key] for d in v.split()]
    assert unit["ProtectSystem"] == ["strict"] and unit["ProtectHome"] == ["yes"]
    assert unit["PrivateTmp"] == ["yes"]
    (bounding,) = unit["CapabilityBoundingSet"]
    assert bounding.startswith("~")
    work = tmp_path / "ns"
    (work / "hold").mkdir(parents=True)
    script = tmp_path / "namespace.py"
    script.write_text(NAMESPACE_SCRIPT)
    with _devices_cgroup(unit) as devices:
        cfg = {
            "package": str(extracted),
            "work": str(work),
            "unit": str(unit_file),
            "gid": _free_gid(),
            "runtime": runtime,
            "writable": writable,
            "umask": int(unit["UMask"][0], 8),
            "no_new_privs": unit["NoNewPrivileges"] == ["yes"],
            "bounding_drop": [c.lower().removeprefix("cap_") for c in bounding[1:].split()],
            "exec_start": shlex.split(exec_start),
            "devices_cgroup": devices,
        }
        (tmp_path / "cfg.json").write_text(json.dumps(cfg))
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", PYTHON, str(script), "outer",
             str(tmp_path / "cfg.json")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    server_log = (work / "jailccd.log").read_text() if (work / "jailccd.log").exists() else ""
    assert proc.returncode == 0, output[-3000:] + server_log[-3000:]
    result = json.loads((work / "result.json").read_text())
    print(f"image built in {result['image_seconds']:.1f} s; devices cgroup: {devices or 'none'}")
    assert result["check_config"][0] == 0, result["check_config"][1]
    assert "groups jailcc" in result["check_config"][1] or "jailcc" in result["check_config"][1]
    assert result["started"], server_log[-3000:]
    for code, said in result["compiles"]:
        assert code == 0, said
        assert "remote on" in said and "/run/jailccd/jailccd.sock" in said, said
    assert result["same"] == [True, True]
    assert result["no_new_privs"] == "1" and result["root"].startswith("ro")
    assert int(result["umask"], 8) == cfg["umask"]
    dropped = [c for c in bounding[1:].split() if _cap_number(c) is not None]
    assert dropped and not [
        c for c in dropped if int(result["cap_bounding"], 16) >> _cap_number(c) & 1
    ]
    code, status = result["status"]
    assert code == 0 and json.loads(status), status
    assert result["proxy_stop"][0] == 0, result["proxy_stop"]
    assert "jailccd ready" in server_log, server_log
    # Its network service runs as the packaged jailccd user.
    assert "network service pid" in server_log and f"as uid {cfg['gid'] - 1}\n" in server_log
    assert result["server_exit"] == 0, server_log[-3000:]


# -- dpkg -i into a throwaway root ----------------------------------------------------------

# In a private mount namespace: a root whose /usr and /etc are the host's under writable
# overlays (so the maintainer scripts' groupadd and deb-systemd-helper have their programs and
# databases, and write only the overlays), an empty dpkg database, an empty /run (systemd is
# not running there: the scripts must cope). dpkg chroots into it for the maintainer scripts.
DPKG_ROOT_SCRIPT = r"""
set -euo pipefail
deb=$1 work=$2 root=$2/root
mkdir -p "$root" "$work"/usr-upper "$work"/usr-work "$work"/etc-upper "$work"/etc-work
mount -t tmpfs throwaway-root "$root"
mkdir -p "$root"/usr "$root"/etc "$root"/var/lib/dpkg/info "$root"/var/lib/dpkg/updates \
    "$root"/var/lib/dpkg/triggers "$root"/run "$root"/tmp "$root"/opt "$root"/dev "$root"/proc
for link in bin sbin lib lib64; do ln -s usr/$link "$root/$link"; done
: >"$root"/var/lib/dpkg/status
: >"$root"/var/lib/dpkg/available
mount -t overlay throwaway-usr "$root"/usr \
    -o lowerdir=/usr,upperdir="$work"/usr-upper,workdir="$work"/usr-work
mount -t overlay throwaway-etc "$root"/etc \
    -o lowerdir=/etc,upperdir="$work"/etc-upper,workdir="$work"/etc-work
mount --rbind /dev "$root"/dev
mount -t proc proc "$root"/proc
# the jailcc group must be the package's doing, whatever the host has
sed -i '/^jailcc:/d' "$root"/etc/group "$root"/etc/gshadow
sed -i '/^jailccd:/d' "$root"/etc/passwd "$root"/etc/shadow "$root"/etc/group "$root"/etc/gshadow
dpkg --root="$root" --force-depends -i "$deb"
echo "== status"; dpkg --root="$root" -s jailcc | grep -E '^(Status|Conffiles|Version):' -A1
echo "== group"; grep '^jailcc:' "$root"/etc/group
echo "== user"; grep '^jailccd:' "$root"/etc/passwd
echo "== enabled"; readlink "$root"/etc/systemd/system/multi-user.target.wants/jailccd.service
echo "== files"; ls -l "$root"/usr/bin/jailccd "$root"/lib/systemd/system/jailccd.service \
    "$root"/etc/jailcc/jailccd.toml; ls -ld "$root"/var/lib/jailcc/images
chroot "$root" /usr/bin/jailccd --version
dpkg --root="$root" -r jailcc
echo "== removed"; dpkg --root="$root" -s jailcc | grep '^Status:'
dpkg --root="$root" -P jailcc
echo "== purged"; ls "$root"/opt "$root"/etc/jailcc 2>&1 || true
"""


def test_dpkg_installs_and_purges_it_in_a_throwaway_root(deb, tmp_path):
    script = tmp_path / "dpkg-root.sh"
    script.write_text(DPKG_ROOT_SCRIPT)
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", str(script), str(deb),
         str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said
    assert "Status: install ok installed" in said
    assert "/etc/jailcc/jailccd.toml" in said.split("== status")[1].split("== group")[0]
    assert re.search(r"^jailcc:x:\d+:", said, re.M)
    # The network service's own user: a system one, no home, no login.
    user = re.search(r"^jailccd:x:(\d+):\d+:[^:]*:/nonexistent:/usr/sbin/nologin$", said, re.M)
    assert user and 0 < int(user.group(1)) < 1000, said
    assert "/lib/systemd/system/jailccd.service" in said.split("== enabled")[1]
    assert f"jailccd {jailcc.__version__}" in said
    assert "Status: deinstall ok config-files" in said
    purged = said.split("== purged")[1]
    assert "No such file" in purged  # /etc/jailcc went with the conffile


# -- a real systemd on cgroup v2 --------------------------------------------------------------


@pytest.mark.timeout(1200)  # a booted VM: about 135 s on a quiet machine, over 300 s on a busy one
def test_the_package_installs_and_serves_under_systemd_on_cgroup_v2(deb, tmp_path):
    """scripts/vm-systemd: a VM booted by Debian 12's kernel and this machine's own Debian 12
    under a throwaway overlay, with systemd as PID 1 and only cgroup v2 mounted. dpkg -i, an
    image, `systemctl start jailccd`, compiles by a member of the group jailcc identical to
    local ones, the jails' groups in the unit's delegated subtree with their limits, `systemctl
    reload` serving an added image from the same process, the user unit of the proxy serving a
    compile from a user's systemd, `jailccd selftest` by hand in a delegated scope (README's way
    outside the unit), `systemctl stop` leaving nothing."""
    image = build_image(tmp_path / "gcc-12.img", "/usr/bin/gcc-12", headers=True)
    proc = subprocess.run(
        [str(TOP / "scripts/vm-systemd"), str(deb), str(image)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    said = proc.stdout + proc.stderr
    if proc.returncode == 2:  # no kernel (no mirror), no systemd, cc or python3.11 here
        pytest.skip(said.strip().splitlines()[-1])
    assert proc.returncode == 0, said
    passed = [line for line in proc.stdout.splitlines() if line.startswith("PASS")]
    assert "FAIL" not in proc.stdout, said
    for check in (
        "PID 1 is systemd",
        "only cgroup v2 is mounted",
        "dpkg -i jailcc.deb",
        "not started without an image",
        "jailccd serves its socket",
        "jailccd moved itself into the leaf of its delegated subtree",
        "the jails' parent gives them memory and pids",
        "all jails together get at most 75% of the memory",
        "an OOM kill stops a job, not the service",
        "first: the object equals a local gcc-12's",
        "second: jailcc gcc-12 -g went remote",
        "second: the object equals a local gcc-12's",
        "the jail's memory.max is set",
        "the jail may not swap",
        "the jail's pids.max is set",
        "the added image is served after the reload",
        "the reload kept the same jailccd",
        "after-reload: the object equals a local gcc-12's",
        "systemctl --user enable --now jailcc-proxy",
        "a compile through it",
        "the proxy that served it is the unit's",
        "jailccd selftest in a delegated scope: every probe passes",
        "its cgroup subtree is gone",
        "no loop device is left attached",
        "jailccd exited cleanly",
        "nothing the developer started is left running",
    ):
        assert any(check in line for line in passed), (check, said)
    # The second compile went through the proxy the first one started, shipping sources.
    assert any("second: jailcc gcc-12 -g went remote" in p and "(sources)" in p for p in passed)
