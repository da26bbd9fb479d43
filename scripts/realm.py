"""Throwaway Kerberos realms and an LDAP directory, for tests and for trying jailccd by hand:
real MIT KDCs (through the k5test package) and a real slapd, listening on 127.0.0.1 only, on
random ports, and gone without a trace when closed.

    with Realm() as realm, Directory(realm) as directory:
        env = realm.kinit("alice", tmp / "alice.cc")   # {**os.environ, **env} for a client
        server_env = realm.env                          # KRB5_CONFIG, KRB5_KTNAME, ...

Realm: KRBTEST.COM holds the service principal jailcc/localhost (key in `realm.keytab`),
ldap/localhost (key in `realm.ldap_keytab`, for slapd) and the users alice, bob and carol
(passwords in `realm.passwords`). OTHER.TEST trusts KRBTEST.COM both ways and holds another
alice, so alice@OTHER.TEST can get a ticket for jailcc/localhost@KRBTEST.COM: the server must
tell her from alice@KRBTEST.COM. One krb5.conf (`realm.krb5_conf`) names both realms; it turns
off DNS and reverse DNS and shortens the clock skew to `clockskew` seconds (2: krb5 wants
|difference| < clockskew in whole seconds, so 1 would fail whenever a second boundary falls
between making an authenticator and checking it), so that a ticket past its end time is
refused by KDCs and servers within seconds (see expired_ccache()).

Directory: slapd with base dc=example,dc=test: people uid=alice, uid=bob, uid=carol
(inetOrgPerson + posixAccount), the posixGroup cn=jailcc-users (memberUid alice), the
groupOfNames cn=jailcc-devs (member carol), and cn=jailccd, a service entry with a password for
simple binds. Anonymous users may do nothing but bind. With a Realm, SASL/GSSAPI binds work as
well: jailcc/localhost@KRBTEST.COM (with the service keytab) is mapped to `gssapi_dn`, which may
read everything. Its `url` names "localhost", not 127.0.0.1, because a GSSAPI client asks for
the service ticket ldap/<host in the URL>; localhost must resolve to 127.0.0.1.

Elsewhere than loopback (a farm of network namespaces, tests/test_farm_guide.py): Realm(address=
ADDR, port=88) listens on ADDR (REALM's KDC on `port`); Directory(realm, address=ADDR, port=389,
host="ldap.example.com", services=r"jailcc/[^,]+") listens on ADDR, accepts GSSAPI binds for
ldap/<host> and maps every service principal matching `services` to `gssapi_dn`. Neither changes
anything when left out. Realm.kadmin_local(query) runs a kadmin query on a KDC's database.

As a command (scripts/dev-realm): start both, print how to use them, wait for Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

REALM = "KRBTEST.COM"
OTHER_REALM = "OTHER.TEST"
SERVICE = "jailcc/localhost"
USERS = ("alice", "bob", "carol")  # in REALM
OTHER_USERS = ("alice",)  # in OTHER_REALM: the same name, another person
BASE = "dc=example,dc=test"
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")
LDAP_MODULES = "/usr/lib/ldap"


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (a KDC serves both), low enough that
    k5test's port0..port9 all stay valid."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            if port > 65000:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float, log: Path) -> None:
    """Until `proc` itself listens on `port`: a connect() could reach someone else's socket."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(psutil.Error):
            for c in psutil.Process(proc.pid).net_connections("tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port:
                    return
        time.sleep(0.02)
    raise RuntimeError(f"{proc.args[0]} did not listen on 127.0.0.1:{port}:\n{_tail(log)}")


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run(args: list[str], env: Mapping[str, str], input: str | None = None) -> str:
    p = subprocess.run(
        args,
        env={**os.environ, **env},
        input=input,
        capture_output=True,
        text=True,
        check=False,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout


def _kdc_class() -> Any:
    from k5test.realm import MITRealm  # a test dependency: imported only when a realm is made

    class LocalKDC(MITRealm):
        # k5test uses socket.getfqdn() here (a DNS lookup) and puts it in its configuration.
        @property
        def hostname(self) -> str:
            return "localhost"

    return LocalKDC


class Realm:
    """Two MIT KDCs (REALM, OTHER_REALM with cross-realm trust), their principals and keytabs.
    Everything lives in `dir` (a new temporary directory unless given; a given one is kept) and
    in k5test's own temporary directories (the KDC databases), which close() removes."""

    def __init__(
        self,
        dir: str | Path | None = None,
        *,
        clockskew: int = 2,
        password: str | None = None,
        address: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        self.address = address  # where the KDCs listen
        self._port = port  # REALM's KDC port (default: a free one)
        self.realm = REALM
        self.other_realm = OTHER_REALM
        self.clockskew = clockskew
        self._owns_dir = dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="jailcc-realm-") if dir is None else dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # As /etc/krb5.conf is, krb5.conf is everyone's to read (jailccd's LDAP helper has its
        # own uid); the keytabs are kadmin's 0600.
        self.dir.chmod(0o711)
        self.krb5_conf = self.dir / "krb5.conf"
        self.keytab = self.dir / "jailcc.keytab"
        self.ldap_keytab = self.dir / "ldap.keytab"
        self.service_principal = f"{SERVICE}@{REALM}"
        self.ldap_principal = f"ldap/localhost@{REALM}"
        self.passwords: dict[str, str] = {}
        self._kdcs: dict[str, Any] = {}  # k5test realms
        self._default_password = password
        try:
            for name in (REALM, OTHER_REALM):
                self._make_kdc(name)
            self._write_krb5_conf()
            # Cross-realm trust: the same krbtgt/X@Y key in both databases (the same password
            # and principal name give the same salt, hence the same keys and kvno).
            for a, b in ((REALM, OTHER_REALM), (OTHER_REALM, REALM)):
                trust, pw = f"krbtgt/{a}@{b}", secrets.token_urlsafe(24)
                for name in (a, b):
                    self._kdc(name).addprinc(trust, pw)
            self.addprinc(self.service_principal, keytab=self.keytab)
            self.addprinc(self.ldap_principal, keytab=self.ldap_keytab)
            for user in USERS:
                self.addprinc(f"{user}@{REALM}", password)
            for user in OTHER_USERS:
                self.addprinc(f"{user}@{OTHER_REALM}", password)
            self.start_kdc()
        except BaseException:
            self.close()
            raise

    # -- set-up -------------------------------------------------------------------------------

    def _make_kdc(self, name: str) -> None:
        settings = {
            "rdns": "false",
            "dns_canonicalize_hostname": "false",
            "dns_lookup_realm": "false",
            "qualify_shortname": '""',
            "clockskew": str(self.clockskew),
        }
        kdc = _kdc_class()(
            realm=name,
            portbase=(self._port if name == REALM else None) or _free_port(),
            create_kdb=False,
            create_user=False,
            create_host=False,
            start_kdc=False,
            get_creds=False,
            krb5_conf={
                "libdefaults": settings,
                "realms": {
                    "$realm": {
                        "kdc": f"{self.address}:$port0",
                        "admin_server": None,
                        "kpasswd_server": None,
                    }
                },
            },
            kdc_conf={
                "realms": {
                    "$realm": {
                        # k5test's kdc_ports listen on every address; these on loopback only.
                        "kdc_ports": None,
                        "kdc_tcp_ports": None,
                        "kdc_listen": f"{self.address}:$port0",
                        "kdc_tcp_listen": f"{self.address}:$port0",
                    }
                }
            },
        )
        self._kdcs[name] = kdc
        kdc.create_kdb()

    def _kdc(self, realm: str) -> Any:
        try:
            return self._kdcs[realm]
        except KeyError:
            raise ValueError(f"no KDC for realm {realm!r}") from None

    def kdc_port(self, realm: str = REALM) -> int:
        return int(self._kdc(realm).portbase)

    def _write_krb5_conf(self) -> None:
        realms = "".join(
            f"\t{name} = {{\n\t\tkdc = {self.address}:{self.kdc_port(name)}\n\t}}\n"
            for name in self._kdcs
        )
        # qualify_shortname = "": "localhost" must not grow the resolver's search domain.
        self.krb5_conf.write_text(
            textwrap.dedent(f"""\
                [libdefaults]
                \tdefault_realm = {REALM}
                \tdns_lookup_kdc = false
                \tdns_lookup_realm = false
                \trdns = false
                \tdns_canonicalize_hostname = false
                \tqualify_shortname = ""
                \tclockskew = {self.clockskew}
                [realms]
                """)
            + realms
            + textwrap.dedent(f"""\
                [domain_realm]
                \tlocalhost = {REALM}
                [capaths]
                \t{OTHER_REALM} = {{
                \t\t{REALM} = .
                \t}}
                \t{REALM} = {{
                \t\t{OTHER_REALM} = .
                \t}}
                """)
        )

    def full_name(self, principal: str) -> str:
        return principal if "@" in principal else f"{principal}@{REALM}"

    def addprinc(
        self, principal: str, password: str | None = None, *, keytab: str | Path | None = None
    ) -> str:
        """Create a principal (in the realm after its "@", REALM by default). With `keytab`, it
        gets a random key, appended to that keytab; otherwise `password`, or a random one
        (see `passwords`). Returns the full name."""
        principal = self.full_name(principal)
        kdc = self._kdc(principal.rpartition("@")[2])
        if keytab is not None:
            kdc.addprinc(principal)
            kdc.extract_keytab(principal, str(keytab))
        else:
            password = password or self._default_password or secrets.token_urlsafe(12)
            kdc.addprinc(principal, password)
            self.passwords[principal] = password
        return principal

    def kadmin_local(self, query: str, realm: str = REALM) -> str:
        """A kadmin query (e.g. "addprinc -randkey jailcc/h", "ktadd -k FILE jailcc/h") run by
        kadmin.local on `realm`'s database: what an admin runs with kadmin."""
        return str(self._kdc(realm).run_kadminl(query))

    # -- use ----------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Kerberos variables for servers and clients (merge into os.environ): the shared
        krb5.conf, REALM's kdc.conf, the service keytab as default keytab, and a replay cache
        and a default ccache of this realm's own, so that nothing touches /tmp or /var/tmp."""
        kdc = self._kdcs[REALM]
        return {
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5_KDC_PROFILE": kdc.env["KRB5_KDC_PROFILE"],
            "KRB5_KTNAME": f"FILE:{self.keytab}",
            "KRB5CCNAME": f"FILE:{self.dir / 'ccache'}",
            "KRB5RCACHEDIR": str(self.dir),
        }

    def kinit(
        self, principal: str, ccache_path: str | Path, lifetime: float | str | None = None
    ) -> dict[str, str]:
        """Get a TGT for `principal` with its password into a FILE ccache; `lifetime` in
        seconds or kinit's syntax ("10m"). Returns `env` with KRB5CCNAME set to that ccache."""
        principal = self.full_name(principal)
        env = {**self.env, "KRB5CCNAME": f"FILE:{ccache_path}"}
        args = ["kinit"]
        if lifetime is not None:
            args += ["-l", f"{int(lifetime)}s" if isinstance(lifetime, int | float) else lifetime]
        if principal not in self.passwords:
            raise ValueError(f"no password for {principal} (made with a keytab, or not at all)")
        _run([*args, principal], env, input=self.passwords[principal] + "\n")
        return env

    def kvno(self, ccache_path: str | Path, service: str) -> str:
        """Get (and cache) a service ticket, e.g. for SERVICE@REALM, with a ccache's TGT."""
        env = {**self.env, "KRB5CCNAME": f"FILE:{ccache_path}"}
        return _run(["kvno", service], env)

    def has_valid_tickets(self, ccache_path: str | Path) -> bool:
        """`klist -s`: does the ccache hold a ticket that has not expired?"""
        p = subprocess.run(
            ["klist", "-s", f"FILE:{ccache_path}"],
            env={**os.environ, **self.env},
            check=False,
        )
        return p.returncode == 0

    def expired_ccache(
        self, principal: str, ccache_path: str | Path, services: Iterable[str] = ()
    ) -> dict[str, str]:
        """A ccache whose TGT (and service tickets for `services`) have expired for clients,
        KDCs and servers alike, and its env (as kinit()). Blocks 3-4 s (clockskew + 1-2 s).

        Client libraries stop using a ticket at its end time (klist -s fails), but KDCs and
        servers accept it for `clockskew` seconds more, comparing whole seconds: until then a
        client still gets service tickets with it (measured: kvno and gss_init_sec_context
        succeed), so this waits for that too."""
        env = self.kinit(principal, ccache_path, lifetime=1)
        # The KDC's auth time is in whole seconds, at most now: the end, at most this + 1.
        end = int(time.time()) + 1
        for service in services:
            self.kvno(ccache_path, service)  # the KDC still honours the TGT: within clockskew
        # Refused once now (whole seconds) > end + clockskew.
        time.sleep(max(0.0, end + self.clockskew + 1.02 - time.time()))
        if self.has_valid_tickets(ccache_path):
            raise RuntimeError(f"tickets in {ccache_path} did not expire")
        return env

    def kdc_running(self, realm: str = REALM) -> bool:
        return self._kdc(realm)._kdc_proc is not None

    def stop_kdc(self) -> None:
        """Stop both KDCs (tickets already obtained keep working)."""
        for kdc in self._kdcs.values():
            if kdc._kdc_proc is not None:
                kdc.stop_kdc()

    def start_kdc(self) -> None:
        for kdc in self._kdcs.values():
            if kdc._kdc_proc is None:
                kdc.start_kdc()

    def pause_kdc(self) -> None:
        """Stop both KDCs answering while they keep their ports (SIGSTOP): a KDC that hangs,
        as behind a firewall that drops its packets, not one that refuses."""
        for kdc in self._kdcs.values():
            if kdc._kdc_proc is not None:
                kdc._kdc_proc.send_signal(signal.SIGSTOP)

    def resume_kdc(self) -> None:
        for kdc in self._kdcs.values():
            if kdc._kdc_proc is not None:
                kdc._kdc_proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.resume_kdc()  # (a stopped process would never take its SIGTERM)
        for kdc in self._kdcs.values():
            proc = kdc._kdc_proc
            with contextlib.suppress(Exception):
                kdc.stop()  # stops the KDC, removes its dir
            _stop(proc)  # in case k5test could not
            shutil.rmtree(kdc.tmpdir, ignore_errors=True)
        self._kdcs.clear()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _ssha(password: str) -> str:
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


class Directory:
    """A slapd (mdb) serving BASE on 127.0.0.1:`port`; see the module's docstring for its
    entries. stop()/start() take it down and up again (same port, same data); pause()/resume()
    freeze it with SIGSTOP/SIGCONT: connections are still accepted by the kernel but never
    answered, as with a hung server."""

    base = BASE
    people = f"ou=people,{BASE}"
    groups = f"ou=groups,{BASE}"
    bind_dn = f"cn=jailccd,{BASE}"
    gssapi_dn = f"cn=jailccd-gssapi,{BASE}"  # what jailcc/localhost@REALM binds as
    admin_dn = f"cn=admin,{BASE}"
    group = "jailcc-users"  # posixGroup, memberUid: alice
    devs_group = "jailcc-devs"  # groupOfNames, member: carol

    def __init__(
        self,
        realm: Realm | None = None,
        dir: str | Path | None = None,
        *,
        port: int | None = None,
        password: str | None = None,
        address: str = "127.0.0.1",
        host: str = "localhost",
        services: str = SERVICE,
    ) -> None:
        self.realm = realm
        self.address = address  # where slapd listens
        self.host = host  # the name in `url`: GSSAPI binds ask for ldap/<host>
        self.services = services  # a regex: GSSAPI service principals mapped to gssapi_dn
        self._owns_dir = dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="jailcc-ldap-") if dir is None else dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.url = f"ldap://{host}" + ("" if self.port == 389 else f":{self.port}")
        self.ip_url = f"ldap://{address}:{self.port}"
        self.keytab = realm.ldap_keytab if realm is not None else None
        self.password = password or secrets.token_urlsafe(16)
        self.password_file = self.dir / "jailccd.password"
        self.admin_password = secrets.token_urlsafe(16)
        self.admin_password_file = self.dir / "admin.password"
        self.conf = self.dir / "slapd.conf"
        self.log = self.dir / "slapd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        try:
            for path, secret in (
                (self.password_file, self.password),
                (self.admin_password_file, self.admin_password),
            ):
                path.touch(mode=0o600)
                path.write_text(secret)  # no newline: ldapwhoami -y takes the file verbatim
            if realm is not None and host != "localhost":
                self.keytab = self.dir / "ldap.keytab"
                realm.addprinc(f"ldap/{host}", keytab=self.keytab)
            self._write_conf()
            data = self.dir / "data.ldif"
            data.write_text(self._ldif())
            db = self.dir / "db"
            shutil.rmtree(db, ignore_errors=True)
            db.mkdir()
            _run(["slapadd", "-q", "-f", str(self.conf), "-l", str(data)], self._env())
            self.start()
        except BaseException:
            self.close()
            raise

    def _env(self) -> dict[str, str]:
        if self.realm is None:
            return {}
        return {
            **self.realm.env,
            "KRB5_KTNAME": f"FILE:{self.keytab}",  # slapd accepts ldap/<host>
        }

    def _write_conf(self) -> None:
        schemas = "".join(f"include /etc/ldap/schema/{s}.schema\n" for s in SCHEMAS)
        sasl = ""
        if self.realm is not None:
            # Cyrus SASL names a GSSAPI identity uid=<name>[,cn=<realm>],cn=gssapi,cn=auth;
            # the realm part is left out when it is sasl-realm's, so match both forms.
            realm = self.realm.realm.lower().replace(".", r"\.")
            identity = f"^uid={self.services}(,cn={realm})?,cn=gssapi,cn=auth$"
            sasl = textwrap.dedent(f"""\
                sasl-host {self.host}
                sasl-realm {self.realm.realm}
                authz-regexp "{identity}" "{self.gssapi_dn}"
                """)
        self.conf.write_text(
            schemas
            + textwrap.dedent(f"""\
                modulepath {LDAP_MODULES}
                moduleload back_mdb
                pidfile {self.dir}/slapd.pid
                argsfile {self.dir}/slapd.args
                """)
            + sasl
            + textwrap.dedent(f"""\
                require authc
                database mdb
                maxsize 16777216
                suffix "{BASE}"
                rootdn "{self.admin_dn}"
                rootpw {_ssha(self.admin_password)}
                directory {self.dir}/db
                index objectClass,uid,cn,memberUid,member eq
                access to attrs=userPassword
                \tby anonymous auth
                \tby * none
                access to *
                \tby dn.exact="{self.bind_dn}" read
                \tby dn.exact="{self.gssapi_dn}" read
                \tby * none
                """)
        )

    def _ldif(self) -> str:
        entries = [
            f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
            "o: example\n",
            f"dn: {self.people}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: {self.groups}\nobjectClass: organizationalUnit\nou: groups\n",
        ]
        for number, user in enumerate(USERS, 10001):
            entries.append(
                f"dn: uid={user},{self.people}\nobjectClass: inetOrgPerson\n"
                f"objectClass: posixAccount\nuid: {user}\ncn: {user.title()}\n"
                f"sn: {user.title()}\nuidNumber: {number}\ngidNumber: 10000\n"
                f"homeDirectory: /home/{user}\n"
            )
        entries += [
            f"dn: cn={self.group},{self.groups}\nobjectClass: posixGroup\ncn: {self.group}\n"
            "gidNumber: 10000\nmemberUid: alice\n",
            f"dn: cn={self.devs_group},{self.groups}\nobjectClass: groupOfNames\n"
            f"cn: {self.devs_group}\nmember: uid=carol,{self.people}\n",
            f"dn: {self.bind_dn}\nobjectClass: applicationProcess\n"
            f"objectClass: simpleSecurityObject\ncn: jailccd\n"
            f"userPassword: {_ssha(self.password)}\n",
        ]
        return "\n".join(entries)

    def user_dn(self, user: str) -> str:
        return f"uid={user},{self.people}"

    def group_dn(self, group: str) -> str:
        return f"cn={group},{self.groups}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        with open(self.log, "ab") as log:
            # -d keeps slapd in the foreground (our child, to signal and reap), logging to
            # slapd.log (level stats: connections, operations, errors; 0 hides even errors);
            # its own session, so that a Ctrl-C meant for dev-realm reaches it only through us.
            self._proc = subprocess.Popen(
                ["slapd", "-f", str(self.conf), "-h", self.ip_url, "-d", "stats"],
                env={**os.environ, **self._env()},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._paused = False
        _wait_listening(self._proc, self.port, 10.0, self.log)

    def stop(self) -> None:
        _stop(self._proc)
        self._proc = None
        self._paused = False

    def pause(self) -> None:
        assert self._proc is not None and self.running, "slapd is not running"
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._proc is not None and self._paused:
            self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def modify(self, ldif: str) -> None:
        """Apply LDIF change records (ldapmodify syntax; plain entries are added) as rootdn."""
        path = self.dir / "change.ldif"
        path.write_text(ldif)
        _run(
            [
                "ldapmodify", "-a", "-x", "-H", self.ip_url, "-D", self.admin_dn,
                "-y", str(self.admin_password_file), "-f", str(path),
            ],
            {},
        )  # fmt: skip

    def close(self) -> None:
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# -- scripts/dev-realm --------------------------------------------------------------------------


def _exports(env: Mapping[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def _usage(realm: Realm, directory: Directory, port: int, images: list[str]) -> str:
    users = "".join(f"  {p:24} password {pw}\n" for p, pw in realm.passwords.items())
    jailccd = ["jailccd"]
    for image in images:
        jailccd += ["--toolchain-image", image]
    jailccd += [
        "--listen", f"127.0.0.1:{port}",
        "--keytab", str(realm.keytab), "--principal", realm.service_principal,
        "--ldap-url", directory.url, "--ldap-base", directory.base,
        "--ldap-group", directory.group,
    ]  # fmt: skip
    hosts = f"tcp:127.0.0.1:{port};principal={realm.service_principal}"
    return (
        f"KDCs: {REALM} on 127.0.0.1:{realm.kdc_port(REALM)}, "
        f"{OTHER_REALM} on 127.0.0.1:{realm.kdc_port(OTHER_REALM)} (trusting each other)\n"
        f"LDAP: {directory.url} (slapd on {directory.ip_url}), base {directory.base}\n"
        f"  simple bind as {directory.bind_dn}, password in {directory.password_file}\n"
        f"  GSSAPI bind as {realm.service_principal} (keytab {realm.keytab})\n"
        f"Users:\n{users}"
        f"  alice is in {directory.group} (posixGroup), carol in {directory.devs_group} "
        "(groupOfNames), bob in neither; alice@OTHER.TEST is someone else\n"
        f"\n# The environment, for jailccd and clients alike:\n{_exports(realm.env)}"
        f"\n# The server (its LDAP helper binds with a TGT it makes from its keytab):\n"
        f"{shlex.join(jailccd)}\n"
        f"\n# A client:\nkinit alice    # password {realm.passwords[realm.full_name('alice')]}\n"
        f"export JAILCC_HOSTS={shlex.quote(hosts)}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dev-realm",
        description="Start a throwaway Kerberos realm (MIT KDCs for KRBTEST.COM and OTHER.TEST) "
        "and an LDAP directory (slapd) on 127.0.0.1, print the environment and the jailccd and "
        "kinit commands to use them, and wait for Ctrl-C; then stop both and remove their "
        "files (but not --dir).",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="keep the generated files (krb5.conf, keytabs, slapd.conf, logs, password files) "
        "in DIR, which is kept on exit (default: a temporary directory, removed); the KDC "
        "databases always live in temporary directories of their own",
    )
    parser.add_argument(
        "--port", type=int, default=3633, help="port for jailccd --listen (default: %(default)s)"
    )
    parser.add_argument(
        "--ldap-port", type=int, help="port for slapd on 127.0.0.1 (default: a free one)"
    )
    parser.add_argument(
        "--password",
        help="password for the users alice, bob, carol and alice@OTHER.TEST (default: random)",
    )
    parser.add_argument(
        "--toolchain-image",
        action="append",
        metavar="IMAGE",
        help="for the jailccd command line (repeatable; default: gcc-12.img)",
    )
    args = parser.parse_args(argv)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # kill cleans up like Ctrl-C; and Ctrl-C works even where SIGINT came in ignored (a
    # shell's background job), which Python would otherwise leave so.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        with contextlib.ExitStack() as stack:
            realm_dir = directory_dir = None
            if args.dir is not None:
                realm_dir, directory_dir = args.dir / "krb5", args.dir / "ldap"
            realm = stack.enter_context(Realm(realm_dir, password=args.password))
            directory = stack.enter_context(Directory(realm, directory_dir, port=args.ldap_port))
            print(_usage(realm, directory, args.port, args.toolchain_image or ["gcc-12.img"]))
            print("Ctrl-C stops the KDCs and slapd.", flush=True)
            signal.pause()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
