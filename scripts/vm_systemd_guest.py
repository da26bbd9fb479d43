#!/usr/bin/python3.11
"""The guest side of scripts/vm-systemd, run by systemd as jailcc-vmcheck.service in a VM booted
with only cgroup v2 whose root is the host's Debian 12 under a throwaway overlay.

    vm_systemd_guest.py WORK     (WORK holds jailcc.deb and gcc-12.img)

Does what README.md tells an admin and a developer to do with the package, through systemd, and
prints one PASS or FAIL line per check (INFO lines for figures), then DONE. The unit powers the
VM off when this exits. Only the standard library: this runs before the package is installed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time

WORK = sys.argv[1]
SOCKET = "/run/jailccd/jailccd.sock"
CGROUP = "/sys/fs/cgroup"
IMAGES = "/var/lib/jailcc/images"
BUILD = "/srv/build"  # the developer's tree
USER = "alice"
failed = 0


def say(ok: bool, name: str, detail: str = "") -> bool:
    global failed
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def info(text: str) -> None:
    print(f"INFO {text}", flush=True)


def run(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


def tail(proc: subprocess.CompletedProcess) -> str:
    said = (proc.stdout + proc.stderr).strip().replace("\n", " | ")
    return f"exit {proc.returncode}: {said[-600:]}"


def journal() -> str:
    return run("journalctl", "-u", "jailccd", "--no-pager", "-o", "cat").stdout


def unit_property(name: str) -> str:
    return run("systemctl", "show", "-p", name, "--value", "jailccd").stdout.strip()


def wait_served(deadline_s: float) -> bool:
    """Wait for jailccd's socket to accept, or for the unit to fail."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if unit_property("ActiveState") == "failed":
            return False
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(SOCKET)
            return "jailccd ready" in journal()
        except OSError:
            time.sleep(0.5)
    return False


def jail_groups(service_group: str) -> list[str]:
    parent = os.path.join(service_group, "jailcc")
    if not os.path.isdir(parent):
        return []
    return [
        os.path.join(parent, name)
        for name in os.listdir(parent)
        if os.path.isfile(os.path.join(parent, name, "memory.max"))
    ]


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def own_group() -> str:
    return CGROUP + read("/proc/self/cgroup").split("::", 1)[1]


def the_machine() -> None:
    say(os.readlink("/proc/1/exe").endswith("/systemd"), "PID 1 is systemd")
    with open("/proc/self/mountinfo") as f:
        kinds = [line.split(" - ")[1].split()[0] for line in f]
    say(
        "cgroup2" in kinds and "cgroup" not in kinds,
        "only cgroup v2 is mounted, as on a stock Debian 12",
    )
    info("kernel " + os.uname().release)


def install() -> bool:
    proc = run("dpkg", "-i", f"{WORK}/jailcc.deb")
    if not say(proc.returncode == 0, "dpkg -i jailcc.deb", tail(proc)):
        return False
    said = proc.stdout + proc.stderr
    say("jailcc-image build --headers" in said, "postinst says how to add an image", said[-300:])
    say(run("systemctl", "is-enabled", "jailccd").stdout.strip() == "enabled", "unit enabled")
    state = unit_property("ActiveState")
    say(state == "inactive", "not started without an image", state)
    shutil.copy(f"{WORK}/gcc-12.img", f"{IMAGES}/gcc-12.img")
    os.chmod(f"{IMAGES}/gcc-12.img", 0o644)
    return True


def start() -> str | None:
    began = time.monotonic()
    proc = run("systemctl", "start", "jailccd")
    if not say(proc.returncode == 0, "systemctl start jailccd", tail(proc)):
        return None
    if not say(wait_served(300), "jailccd serves its socket", journal()[-800:]):
        return None
    info(f"jailccd started in {time.monotonic() - began:.1f} s")
    deadline = time.monotonic() + 60
    while "network service ready" not in journal() and time.monotonic() < deadline:
        time.sleep(0.5)
    ready = [line for line in journal().splitlines() if "network service ready" in line]
    # (Landlock where the distribution's kernel enables it; the service says which.)
    say(bool(ready), "the network service started", ready[-1] if ready else journal()[-400:])
    group = CGROUP + unit_property("ControlGroup")
    say(group.endswith("/system.slice/jailccd.service"), "the unit's cgroup", group)
    main_pid = unit_property("MainPID")
    leaf = os.path.join(group, "service")
    say(
        os.path.isdir(leaf) and main_pid in read(os.path.join(leaf, "cgroup.procs")).split(),
        "jailccd moved itself into the leaf of its delegated subtree",
        leaf,
    )
    total = read(os.path.join(group, "memory.max"))
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    say(
        total != "max" and 0.7 * ram <= int(total) <= 0.8 * ram,
        "all jails together get at most 75% of the memory (MemoryMax=)",
        f"{total} of {ram}",
    )
    say(unit_property("OOMPolicy") == "continue", "an OOM kill stops a job, not the service")
    controllers = read(os.path.join(group, "jailcc", "cgroup.subtree_control")).split()
    say(
        {"memory", "pids"} <= set(controllers),
        "the jails' parent gives them memory and pids",
        " ".join(controllers),
    )
    return group


def developer() -> dict[str, str]:
    run("useradd", "--create-home", "--groups", "jailcc", USER)
    os.makedirs(BUILD, exist_ok=True)
    with open(f"{BUILD}/hello.c", "w") as f:
        f.write(
            '#include <stdio.h>\n#include "hello.h"\nint hello(void) { return puts(GREETING); }\n'
        )
    with open(f"{BUILD}/hello.h", "w") as f:
        f.write('#define GREETING "hello from a jail under systemd"\n')
    shutil.chown(BUILD, USER)
    for name in os.listdir(BUILD):
        shutil.chown(os.path.join(BUILD, name), USER)
    runtime = f"/run/user-{USER}"
    os.makedirs(runtime, mode=0o700, exist_ok=True)
    shutil.chown(runtime, USER)
    # As the farm guide says for one machine: the hosts file names the local socket.
    with open("/etc/jailcc/hosts", "w") as f:
        f.write(f"# this machine's jailccd\nunix:{SOCKET}\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": f"/home/{USER}",
        "XDG_RUNTIME_DIR": runtime,
        "JAILCC_VERBOSE": "1",
        "JAILCC_DISCOVER": "",
    }
    return env


def as_user(env: dict[str, str], *args: str, **kwargs) -> subprocess.CompletedProcess:
    """args run as the developer with exactly env."""
    return run("runuser", "-u", USER, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
               *args, **kwargs)  # fmt: skip


def compile_as_user(env: dict[str, str], output: str) -> tuple[int, str]:
    args = ["gcc-12", "-g", "-O2", "-c", "hello.c", "-o", output]
    proc = as_user(env, "/usr/bin/jailcc", *args, cwd=BUILD)
    return proc.returncode, proc.stdout + proc.stderr


def compiles(env: dict[str, str], name: str) -> bool:
    local = run("runuser", "-u", USER, "--", "gcc-12", "-g", "-O2", "-c", "hello.c",
                "-o", f"local-{name}.o", cwd=BUILD)  # fmt: skip
    code, said = compile_as_user(env, f"{name}.o")
    ok = say(code == 0 and "remote" in said, f"{name}: jailcc gcc-12 -g went remote", said[-600:])
    if ok and local.returncode == 0:
        with open(f"{BUILD}/{name}.o", "rb") as a, open(f"{BUILD}/local-{name}.o", "rb") as b:
            ok = say(a.read() == b.read(), f"{name}: the object equals a local gcc-12's")
    return ok


def jail_limits(group: str) -> None:
    jails = jail_groups(group)
    if not say(bool(jails), "a kept jail has its own cgroup under jailccd.service/jailcc"):
        return
    jail = jails[0]
    memory, swap, pids = (
        read(f"{jail}/{name}") for name in ("memory.max", "memory.swap.max", "pids.max")
    )
    say(memory != "max" and int(memory) > 0, "the jail's memory.max is set", memory)
    say(swap == "0", "the jail may not swap", swap)
    say(pids != "max" and int(pids) > 0, "the jail's pids.max is set", pids)
    info(f"jail group {jail.removeprefix(CGROUP)}: memory.max {memory}, pids.max {pids}")


def reload(env: dict[str, str]) -> None:
    pid = unit_property("MainPID")
    shutil.copy(f"{IMAGES}/gcc-12.img", f"{IMAGES}/gcc-12-copy.img")
    proc = run("systemctl", "reload", "jailccd")
    say(proc.returncode == 0, "systemctl reload jailccd", tail(proc))
    # The rescan verifies the new image as the start verifies all (75 s at start under load).
    deadline = time.monotonic() + 300
    while "gcc-12-copy" not in journal() and time.monotonic() < deadline:
        time.sleep(0.5)
    say("gcc-12-copy" in journal(), "the added image is served after the reload", journal()[-400:])
    say(unit_property("MainPID") == pid, "the reload kept the same jailccd", pid)
    compiles(env, "after-reload")


def user_proxy(env: dict[str, str]) -> None:
    """The packaged user unit, as README tells a developer: `systemctl --user enable --now
    jailcc-proxy`; the next compile uses that proxy instead of starting one."""
    uid = pwd.getpwnam(USER).pw_uid
    proc = run("systemctl", "start", f"user@{uid}.service")
    if not say(proc.returncode == 0, f"{USER}'s systemd user manager starts", tail(proc)):
        return
    env = {**env, "XDG_RUNTIME_DIR": f"/run/user/{uid}"}
    proc = as_user(env, "systemctl", "--user", "enable", "--now", "jailcc-proxy")
    say(proc.returncode == 0, "systemctl --user enable --now jailcc-proxy", tail(proc))
    deadline = time.monotonic() + 60
    main_pid = ""
    while time.monotonic() < deadline:
        shown = as_user(env, "systemctl", "--user", "show", "-p", "MainPID", "--value",
                        "jailcc-proxy").stdout.strip()  # fmt: skip
        sockets = (
            os.listdir(f"/run/user/{uid}/jailcc")
            if os.path.isdir(f"/run/user/{uid}/jailcc")
            else []
        )
        if shown not in ("", "0") and any(n.endswith(".sock") for n in sockets):
            main_pid = shown
            break
        time.sleep(0.5)
    if not say(bool(main_pid), "the user unit's proxy listens"):
        return
    code, said = compile_as_user(env, "user-unit.o")
    say(code == 0 and "remote (sources)" in said, "a compile through it", said[-400:])
    proxies = run("pgrep", "-u", USER, "-f", "jailcc.client.proxy").stdout.split()
    say(main_pid in proxies, "the proxy that served it is the unit's", f"{main_pid} in {proxies}")
    proc = as_user(env, "systemctl", "--user", "disable", "--now", "jailcc-proxy")
    say(proc.returncode == 0, "systemctl --user disable --now jailcc-proxy", tail(proc))
    run("systemctl", "stop", f"user@{uid}.service")


def stop(group: str) -> None:
    proc = run("systemctl", "stop", "jailccd")
    say(proc.returncode == 0, "systemctl stop jailccd", tail(proc))
    state = unit_property("ActiveState")
    say(state == "inactive", "the unit is inactive", state)
    say(not os.path.exists(group), "its cgroup subtree is gone", group)
    with open("/proc/self/mountinfo") as f:
        left = [line.split()[4] for line in f if "jailcc" in line]
    say(not left, "no jailcc mount is left", " ".join(left))
    loops = [
        name
        for name in os.listdir("/sys/block")
        if name.startswith("loop") and os.path.exists(f"/sys/block/{name}/loop/backing_file")
    ]
    say(not loops, "no loop device is left attached", " ".join(loops))
    result = unit_property("Result")
    if not say(result == "success", "jailccd exited cleanly", result):
        info("its last lines: " + journal()[-1200:].replace("\n", " | "))


def selftest() -> None:
    """`jailccd selftest` by hand, as README says to run jailccd outside its unit on a cgroup v2
    machine: in a scope of its own with Delegate=yes."""
    proc = run("systemd-run", "--scope", "--quiet", "-p", "Delegate=yes", "/usr/bin/jailccd",
               "selftest", "--toolchain-image", f"{IMAGES}/gcc-12.img", timeout=600)  # fmt: skip
    lines = proc.stdout.splitlines()
    passed = sum(line.startswith("PASS") for line in lines)
    failed_probes = [line for line in lines if line.startswith("FAIL")]
    say(
        proc.returncode == 0 and passed >= 20 and not failed_probes,
        "jailccd selftest in a delegated scope: every probe passes",
        f"{passed} passed; {' | '.join(failed_probes)[:400]}" + ("" if lines else tail(proc)),
    )
    summary = [line for line in lines if "median jail build" in line]
    if summary:
        info(summary[0])


def main() -> None:
    began = time.monotonic()
    print(flush=True)  # the console's last line (the firmware's) has no newline
    the_machine()
    if install():
        group = start()
        if group is not None:
            env = developer()
            compiles(env, "first")
            compiles(env, "second")  # through the proxy the first one started
            jail_limits(group)
            reload(env)
            user_proxy(env)
            proxy_stop = as_user(env, "/usr/bin/jailcc", "proxy", "stop")
            say(proxy_stop.returncode == 0, "jailcc proxy stop", tail(proxy_stop))
            selftest()
            stop(group)
            left = [p for p in read(own_group() + "/cgroup.procs").split() if p != str(os.getpid())]
            say(not left, "nothing the developer started is left running", " ".join(left))
    info(f"the checks took {time.monotonic() - began:.1f} s")
    print("DONE" if not failed else f"DONE with {failed} failed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # a check that crashed is a failure, said on the console
        say(False, "the checks crashed", repr(error))
        print("DONE", flush=True)
    # Power off at once: the overlay root is in memory and there is nothing to save.
    sys.stdout.flush()
    os.sync()
    subprocess.run(["systemctl", "poweroff", "--force", "--force"])
