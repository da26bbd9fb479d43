"""docs/farm-guide.md, followed to the letter: three jailccd servers, a KDC and slapd, a client,
each in a network namespace of its own; the servers configured by the guide's jailccd.toml
alone, their keytabs made by the guide's kadmin queries, the client given the guide's
krb5.conf and hosts file and a ticket by kinit; then a real build (Debian's zlib) through
`jailcc gcc-12`, object for object equal to a local one, spread over the servers, with
`jailcc hosts`, `jailcc status` and `jailcc mon --once` showing all three.

The guide's blocks whose info string has `title="..."` are read from the guide itself, so the
guide cannot drift from what is tested; the only changes made to them are listed in its last
section ("How this guide is tested") and done by `substitute` here.

Each server and the client see the guide's paths (/etc/krb5.conf, /etc/hosts, /etc/jailcc,
/var/lib/jailcc/images) through overlays of /etc and /var/lib in a private mount namespace
(`View`; the client's is one for all its commands, which its proxy needs): the files are
written into the overlays' upper directories, and the real /etc and /var/lib are never
touched. Two things are set in the environment instead of on disk: the
servers' Kerberos replay cache directory and the client's ccache and runtime directory, which
would otherwise land in the host's /var/tmp, /tmp and /run/user.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from netns import NetLab
from realm_fixtures import realm_module

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import projects

TOP = Path(__file__).resolve().parent.parent
SCRIPTS = TOP / "scripts"
pytestmark = requires_root
GUIDE = TOP / "docs" / "farm-guide.md"
JAILCC = str(BIN / "jailcc")
JAILCCD = str(BIN / "jailccd")
SERVERS = ("build1", "build2", "build3")
INFRA = "infra"  # kdc.example.com and ldap.example.com
CLIENT = "client"
DOMAIN = "example.com"
GUIDE_SERVER = "build1.example.com"  # the server the guide's per-server blocks name
GUIDE_KEYTAB = "/etc/jailcc/jailccd.keytab"

# ```lang title="..."   ...   ``` : the guide's tested blocks.
_BLOCK = re.compile(r'^```[\w-]+ title="([^"]+)"\n(.*?)^```$', re.M | re.S)


def guide_blocks() -> dict[str, str]:
    blocks = dict(_BLOCK.findall(GUIDE.read_text()))
    wanted = {
        "every machine: /etc/krb5.conf",
        "each server: kadmin",
        "server: /etc/jailcc/jailccd.toml",
        "client: /etc/jailcc/hosts",
    }
    assert wanted <= set(blocks), f"the guide lacks blocks: {wanted - set(blocks)}"
    return blocks


def substitute(text: str, realm: str, base: str, server: str = GUIDE_SERVER) -> str:
    """The guide's placeholders: its realm and LDAP base for the test's, build1 for `server`."""
    text = text.replace("EXAMPLE.COM", realm).replace("dc=example,dc=com", base)
    return text.replace(GUIDE_SERVER, server)


class View:
    """A host's own /etc and /var/lib: overlays whose upper directories live in `root`, mounted
    in a private mount namespace around a command (unshare(1), then sh mounts and execs)."""

    _SCRIPT = (
        'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc\n'
        'mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$3,workdir=$4" /var/lib\n'
        "shift 4\n"
        'exec "$@"\n'
    )

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc, self.var_lib = root / "etc", root / "var-lib"
        for upper in (self.etc, self.var_lib):
            upper.mkdir(parents=True)
            upper.chmod(0o755)  # an overlay's root takes its upper directory's mode
            (root / f"{upper.name}.work").mkdir()

    def argv(self, command: list[str]) -> list[str]:
        dirs = [self.etc, self.root / "etc.work", self.var_lib, self.root / "var-lib.work"]
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-ec", self._SCRIPT, "view", *map(str, dirs), *command,
        ]  # fmt: skip

    def write(self, path: str, text: str, mode: int = 0o644) -> Path:
        """A file at `path` (under /etc or /var/lib) as this host will see it."""
        target = self.upper(path)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        target.write_text(text)
        target.chmod(mode)
        return target

    def upper(self, path: str) -> Path:
        for top, upper in (("/etc/", self.etc), ("/var/lib/", self.var_lib)):
            if path.startswith(top):
                return upper / path.removeprefix(top)
        raise ValueError(f"{path}: not under /etc or /var/lib")


class GuideFarm:
    def __init__(self, lab: NetLab, state: Path) -> None:
        self.lab, self.state = lab, state
        self.views = {host: View(state / "views" / host) for host in (*SERVERS, CLIENT)}
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        self.client_env: dict[str, str] = {}
        self.client_view: subprocess.Popen[bytes] | None = None  # holds the client's namespace

    def log(self, host: str) -> str:
        path = self.state / f"{host}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def jobs(self, host: str) -> int:
        return self.log(host).count("status=exit:0")

    def start(self, host: str) -> None:
        """jailccd as the packaged unit runs it: every option from jailccd.toml."""
        rcache = self.state / f"rcache-{host}"
        rcache.mkdir(mode=0o700)
        env = _clean(os.environ) | {"KRB5RCACHEDIR": str(rcache)}
        with open(self.state / f"{host}.log", "wb") as log, self.lab.inside(host):
            proc = subprocess.Popen(
                self.views[host].argv([JAILCCD, "--config", "/etc/jailcc/jailccd.toml"]),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.lab.procs.append(proc)  # killed with the lab, whatever happens
        self.servers[host] = proc

    def wait_ready(self, host: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "jailccd ready" not in self.log(host):
            proc = self.servers[host]
            assert proc.poll() is None, f"{host}'s jailccd exited:\n{self.log(host)}"
            assert time.monotonic() < deadline, f"{host}'s jailccd is not ready:\n{self.log(host)}"
            time.sleep(0.1)

    def stop(self, host: str) -> None:
        proc = self.servers.pop(host)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def run(
        self, host: str, argv: list[str], timeout: float = 60, check: bool = True, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """A command on `host`, in its view: the client's environment on the client."""
        if host == CLIENT:
            kwargs.setdefault("env", self.client_env)
        kwargs.setdefault("cwd", self.state)
        with self.lab.inside(host):
            proc = subprocess.run(
                self._in_view(host, argv, kwargs["cwd"]),
                timeout=timeout,
                capture_output=True,
                text=True,
                **kwargs,  # type: ignore[call-overload]
            )
        if check:
            assert proc.returncode == 0, f"{argv} on {host}: {proc.stdout}{proc.stderr}"
        return proc

    def _in_view(self, host: str, argv: list[str], cwd: object) -> list[str]:
        """The command in host's view. The client's is one mount namespace for all of its
        commands, as on a machine: its proxy outlives the command that starts it, and serves
        only clients that see the files it sees. A server's commands get one each."""
        if host != CLIENT:
            return self.views[host].argv(argv)
        if self.client_view is None:
            holder = subprocess.Popen(
                self.views[CLIENT].argv(["sleep", "infinity"]),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.lab.procs.append(holder)  # killed with the lab, whatever happens
            ours = os.stat("/proc/self/ns/mnt").st_ino
            deadline = time.monotonic() + 30
            while (
                os.stat(f"/proc/{holder.pid}/ns/mnt").st_ino == ours
                or " /var/lib overlay " not in Path(f"/proc/{holder.pid}/mounts").read_text()
            ):
                assert holder.poll() is None and time.monotonic() < deadline, "no client view"
                time.sleep(0.05)
            self.client_view = holder
        pid = self.client_view.pid
        return ["nsenter", f"--mount=/proc/{pid}/ns/mnt", f"--wd={cwd}", "--", *argv]


def _clean(env: os._Environ[str] | dict[str, str]) -> dict[str, str]:
    """The environment without jailcc's and Kerberos's variables: the guide sets none."""
    return {k: v for k, v in env.items() if not k.startswith(("JAILCC_", "KRB5"))}


@pytest.fixture
def guide_farm(tmp_path: Path) -> Iterator[tuple[GuideFarm, object, object]]:
    with NetLab([*SERVERS, INFRA, CLIENT], subnet="10.78.0") as lab:
        farm = GuideFarm(lab, tmp_path)
        infra = lab.address(INFRA)
        with contextlib.ExitStack() as stack:
            with lab.inside(INFRA):  # kdc.example.com:88 and ldap.example.com:389, there only
                realm = stack.enter_context(realm_module.Realm(address=infra, port=88))
                directory = stack.enter_context(
                    realm_module.Directory(
                        realm,
                        address=infra,
                        port=389,
                        host=f"ldap.{DOMAIN}",
                        services="jailcc/[^,]+",
                    )
                )
            try:
                yield farm, realm, directory
            finally:
                for host in list(farm.servers):
                    farm.stop(host)


def _etc_hosts(lab: NetLab) -> str:
    """Names as DNS would give them."""
    lines = ["127.0.0.1 localhost"]
    for host in (*SERVERS, CLIENT):
        lines.append(f"{lab.address(host)} {host}.{DOMAIN} {host}")
    lines.append(f"{lab.address(INFRA)} kdc.{DOMAIN} ldap.{DOMAIN}")
    return "\n".join(lines) + "\n"


def _build_in_view(farm: GuideFarm, tree: Path, out: Path) -> projects.BuildResult:
    """The guide's `make CC="jailcc gcc-12"` on the client, in its view (projects.build runs
    ./configure with plain gcc-12, as a developer's first ./configure would)."""
    code = (
        "import pickle, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        " import projects; r = projects.build('zlib', Path(sys.argv[2]), sys.argv[3] + ' gcc-12',"
        " sys.argv[3] + ' g++-12', jobs=6, configure_cc='gcc-12');"
        " Path(sys.argv[4]).write_bytes(pickle.dumps(r))"
    )
    farm.run(CLIENT, [sys.executable, "-c", code, str(SCRIPTS), str(tree), JAILCC, str(out)], 300)
    return pickle.loads(out.read_bytes())


def test_the_farm_guide_works_as_written(sources, gcc_image, guide_farm, tmp_path):
    started = time.monotonic()
    farm, realm, directory = guide_farm
    lab = farm.lab
    blocks = guide_blocks()
    sub = {"realm": realm.realm, "base": directory.base}  # type: ignore[attr-defined]

    # Every machine: /etc/krb5.conf and names.
    for view in farm.views.values():
        view.write("/etc/krb5.conf", substitute(blocks["every machine: /etc/krb5.conf"], **sub))
        view.write("/etc/hosts", _etc_hosts(lab))

    # Each server: its principal and keytab (the guide's kadmin queries), its jailccd.toml, the
    # image copied into /var/lib/jailcc/images.
    queries = re.findall(r'^kadmin .*-q "([^"]+)"$', blocks["each server: kadmin"], re.M)
    assert [q.split()[0] for q in queries] == ["addprinc", "ktadd"], queries
    for host in SERVERS:
        view = farm.views[host]
        keytab = view.upper(GUIDE_KEYTAB)
        keytab.parent.mkdir(mode=0o755)
        for query in queries:
            query = substitute(query, server=f"{host}.{DOMAIN}", **sub)
            realm.kadmin_local(query.replace(GUIDE_KEYTAB, str(keytab)))  # type: ignore[attr-defined]
        assert keytab.stat().st_mode & 0o077 == 0, "ktadd should write a root-only keytab"
        toml = substitute(
            blocks["server: /etc/jailcc/jailccd.toml"], server=f"{host}.{DOMAIN}", **sub
        )
        view.write("/etc/jailcc/jailccd.toml", toml)
        images = view.upper("/var/lib/jailcc/images")
        images.mkdir(parents=True, mode=0o755)
        images.parent.chmod(0o755)
        shutil.copyfile(gcc_image, images / "gcc-12.img.new")
        (images / "gcc-12.img.new").rename(images / "gcc-12.img")

    # jailccd --check-config on each, then start them all.
    for host in SERVERS:
        check = farm.run(host, [JAILCCD, "--check-config"])
        assert "# configuration ok" in check.stdout, check.stdout
        principal = f'principal = "jailcc/{host}.{DOMAIN}@{realm.realm}"    # file'  # type: ignore[attr-defined]
        assert principal in check.stdout, check.stdout
        assert "# image gcc-12: /var/lib/jailcc/images/gcc-12.img" in check.stdout, check.stdout
        listed = farm.run(host, [str(BIN / "jailcc-image"), "list"])
        assert "gcc-12" in listed.stdout, listed.stdout
    # The guide's "Prove the jail": images from jailccd.toml and the image directory.
    selftest = farm.run(SERVERS[0], [JAILCCD, "selftest", "--timing-rounds", "3"], timeout=120)
    assert re.search(r"selftest: \d+ passed, 0 failed", selftest.stdout), selftest.stdout
    for host in SERVERS:
        farm.start(host)
    for host in SERVERS:
        farm.wait_ready(host)
        assert f"as jailcc/{host}.{DOMAIN}@" in farm.log(host), farm.log(host)

    # The client: the hosts file, a ticket, the servers found.
    client = farm.views[CLIENT]
    client.write("/etc/jailcc/hosts", substitute(blocks["client: /etc/jailcc/hosts"], **sub))
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    farm.client_env = _clean(os.environ) | {
        "KRB5CCNAME": f"FILE:{tmp_path / 'alice.cc'}",
        "XDG_RUNTIME_DIR": str(runtime),
        "JAILCC_DISCOVER": "",  # the hosts file names the servers; no mDNS
        "JAILCC_PROXY_IDLE": "60",
    }
    alice = f"alice@{realm.realm}"  # type: ignore[attr-defined]
    farm.run(CLIENT, ["kinit", "alice"], input=realm.passwords[alice] + "\n")  # type: ignore[attr-defined]
    farm.run(CLIENT, [JAILCC, "proxy", "start"])
    try:
        hosts = json.loads(farm.run(CLIENT, [JAILCC, "hosts", "--json"]).stdout)
        assert sorted(h["server"] for h in hosts) == [
            f"tcp:{host}.{DOMAIN}:3633" for host in SERVERS
        ], hosts
        assert all(h["sources"] == ["static"] for h in hosts), hosts  # the hosts file

        # The first build, compared with a local one.
        local = projects.build("zlib", tmp_path / "local", "gcc-12", "g++-12", jobs=2)
        assert local.ok, local.log_tail()
        farm_build = _build_in_view(farm, tmp_path / "farm", tmp_path / "farm.pickle")
        assert farm_build.ok, farm_build.log_tail()
        assert projects.compare(local, farm_build) == []
        served = {host: farm.jobs(host) for host in SERVERS}
        assert sum(1 for n in served.values() if n) >= 2, served
        for host in SERVERS:
            if served[host]:
                assert f"authenticated {alice} from" in farm.log(host)

        status = json.loads(farm.run(CLIENT, [JAILCC, "status", "--json"]).stdout)
        # A server logs a job's line after its RESULT went out: on a loaded machine the last
        # few may come a moment after the build ended.
        deadline = time.monotonic() + 15
        while status["jobs"]["remote"] != sum(served.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
            served = {host: farm.jobs(host) for host in SERVERS}
        remote = {s["server"]: s for s in status["servers"]}
        assert set(remote) == {f"tcp:{host}.{DOMAIN}:3633" for host in SERVERS}, status
        assert status["hosts_from"] == "/etc/jailcc/hosts", status
        done = {host: remote[f"tcp:{host}.{DOMAIN}:3633"]["jobs"] for host in SERVERS}
        assert sum(1 for n in done.values() if n) >= 2, done
        assert status["jobs"]["remote"] == sum(served.values()), (status["jobs"], served)
        assert status["jobs"]["fallback"] == status["jobs"]["failed"] == 0, status["jobs"]
        mon = farm.run(CLIENT, [JAILCC, "mon", "--once"]).stdout
        assert "3 servers, 3 up" in mon, mon
        for host in SERVERS:
            assert f"tcp:{host}.{DOMAIN}:3633" in mon, mon

        # Two rows of the guide's "When something fails": no ticket, and a user not in the group.
        guide = GUIDE.read_text()
        bob = f"bob@{realm.realm}"  # type: ignore[attr-defined]
        no_ticket = farm.client_env | {"KRB5CCNAME": f"FILE:{tmp_path / 'nobody.cc'}"}
        farm.run(
            CLIENT,
            ["kinit", "bob"],
            input=realm.passwords[bob] + "\n",
            env=no_ticket | {"KRB5CCNAME": f"FILE:{tmp_path / 'bob.cc'}"},
        )  # type: ignore[attr-defined]
        for env, expected in (
            (no_ticket, "no Kerberos ticket: run kinit"),
            (
                farm.client_env | {"KRB5CCNAME": f"FILE:{tmp_path / 'bob.cc'}"},
                f"{bob} may not use this server: ask its admin to add you",
            ),
        ):
            assert expected.replace(realm.realm, "EXAMPLE.COM").replace("bob@", "alice@") in guide  # type: ignore[attr-defined]
            (tmp_path / "one").mkdir(exist_ok=True)
            (tmp_path / "one" / "one.c").write_text("int one(void) { return 1; }\n")
            one = farm.run(CLIENT, [JAILCC, "gcc-12", "-c", "one.c"], env=env, cwd=tmp_path / "one")
            assert expected in one.stderr, one.stderr
            farm.run(CLIENT, [JAILCC, "proxy", "stop"], env=env, check=False)
    finally:
        farm.run(CLIENT, [JAILCC, "proxy", "stop"], check=False)
    print(f"farm guide: {served} jobs, {time.monotonic() - started:.1f} s")
