"""Authorization of Kerberos principals (monitor/authz.py, ldaphelper/) against a real slapd and
real KDCs (scripts/realm.py): LDAP group membership through simple and GSSAPI binds, names that
must not map (another realm, another case, filter syntax), failing closed when LDAP is down or
hung; the LDAP helper as root runs it (its own uid, a TGT but no key, started again when it dies
or hangs); the principal list file; and the realm helpers themselves."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gssapi
import ldap
import psutil
import pytest
from jailcc.ldaphelper.groups import LdapGroupAuthorizer
from jailcc.monitor.authz import LdapHelperAuthorizer, PrincipalListAuthorizer
from jailcc.monitor.kerberos import KerberosAcceptor
from jailcc.monitor.unprivileged import LDAP_UID
from jailcc.principals import AuthorizationConfigError, AuthorizationUnavailable, split_principal
from realm_fixtures import realm_module

REALM = realm_module.REALM
OTHER = realm_module.OTHER_REALM


@pytest.fixture(scope="module")
def realm() -> Iterator[Any]:
    """KRBTEST.COM and OTHER.TEST, with alice, bob, carol and alice@OTHER.TEST."""
    with realm_module.Realm() as r:
        yield r


@pytest.fixture(scope="module")
def directory(realm: Any) -> Iterator[Any]:
    """slapd: jailcc-users (alice), jailcc-devs (carol), simple and GSSAPI binds."""
    with realm_module.Directory(realm) as d:
        yield d


@pytest.fixture
def gssapi_env(realm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TGT for the service principal, in this process, with a ccache of this realm's own
    (a TGT from an earlier realm would not do): MIT gets it from the client keytab."""
    for key, value in realm.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KRB5_CLIENT_KTNAME", f"FILE:{realm.keytab}")
    monkeypatch.setenv("KRB5CCNAME", f"MEMORY:jailcc-test-{realm.dir.name}")


def make(directory: Any, bind: str = "simple", **kw: Any) -> LdapGroupAuthorizer:
    options: dict[str, Any] = {"realm": REALM, "bind": bind, "timeout": 2.0}
    if bind == "simple":
        options |= {"bind_dn": directory.bind_dn, "password_file": directory.password_file}
    options |= kw
    group = options.pop("group", directory.group)
    return LdapGroupAuthorizer(directory.url, directory.base, group, **options)


@pytest.fixture(params=["simple", "gssapi"])
def bind(request: pytest.FixtureRequest) -> str:
    if request.param == "gssapi":
        request.getfixturevalue("gssapi_env")
    return request.param


# -- LDAP: who is in ------------------------------------------------------------------------


def test_posix_group_member_allowed_and_others_refused(directory: Any, bind: str) -> None:
    authz = make(directory, bind)
    authz.check_config()
    assert authz.allowed(f"alice@{REALM}")
    assert not authz.allowed(f"bob@{REALM}")  # a user, not in the group
    assert not authz.allowed(f"carol@{REALM}")  # in the other group only
    assert not authz.allowed(f"dave@{REALM}")  # no such user
    assert "jailcc-users" in authz.describe() and bind in authz.describe()


def test_group_of_names_member_allowed(directory: Any, bind: str) -> None:
    authz = make(directory, bind, group=directory.devs_group)
    assert authz.allowed(f"carol@{REALM}")
    assert not authz.allowed(f"alice@{REALM}")


def test_group_by_dn_and_group_of_unique_names(directory: Any) -> None:
    directory.modify(
        f"dn: cn=jailcc-unique,{directory.groups}\nobjectClass: groupOfUniqueNames\n"
        f"cn: jailcc-unique\nuniqueMember: {directory.user_dn('bob')}\n"
    )
    by_dn = make(directory, group=f"cn=jailcc-unique,{directory.groups}")
    by_dn.check_config()
    assert by_dn.allowed(f"bob@{REALM}")
    assert not by_dn.allowed(f"alice@{REALM}")
    assert make(directory, group="jailcc-unique").allowed(f"bob@{REALM}")


@pytest.mark.parametrize(
    "principal",
    [
        f"alice@{OTHER}",  # the same name in a trusted realm: another person
        f"alice@{REALM.lower()}",
        f"ALICE@{REALM}",  # uid matches without case in LDAP; Kerberos names do not
        "alice",
        f"alice@{REALM}@{REALM}",
        f"alice\\@x@{REALM}",
        f"alice/admin@{REALM}",
        f"*@{REALM}",
        f"*)(uid=*@{REALM}",
        f"alice)(|(uid=*@{REALM}",
        f"*)(memberUid=*))(|(uid=*@{REALM}",
        f"alice\x00@{REALM}",
        f" alice@{REALM}",
        "",
    ],
)
def test_names_that_are_not_alice_are_refused(directory: Any, principal: str) -> None:
    assert not make(directory).allowed(principal)


def test_filter_injection_matches_nothing_even_in_an_open_group(directory: Any) -> None:
    # A posixGroup whose memberUid values would match an unescaped "*".
    directory.modify(
        f"dn: cn=jailcc-all,{directory.groups}\nobjectClass: posixGroup\ncn: jailcc-all\n"
        "gidNumber: 10001\nmemberUid: alice\nmemberUid: bob\nmemberUid: carol\n"
    )
    authz = make(directory, group="jailcc-all")
    assert authz.allowed(f"bob@{REALM}")
    for name in ("*", "*)(uid=*", "b*", "bob)(uid=*", "\\2a"):
        assert not authz.allowed(f"{name}@{REALM}"), name


def test_split_principal() -> None:
    assert split_principal("alice@KRBTEST.COM") == ("alice", "KRBTEST.COM")
    assert split_principal("host/build1@KRBTEST.COM") == ("host/build1", "KRBTEST.COM")
    for bad in ("alice", "@R", "a@", "a@b@c", "a b@R", "a\\@b@R"):
        assert split_principal(bad) is None, bad


# -- LDAP: configuration, checked at start-up ------------------------------------------------


def test_wrong_password_fails_check_config_clearly(directory: Any, tmp_path: Path) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    with pytest.raises(AuthorizationConfigError, match="wrong DN or password"):
        make(directory, password_file=wrong).check_config()


def test_password_file_ends_of_line_stripped(directory: Any, tmp_path: Path) -> None:
    crlf = tmp_path / "password"
    crlf.write_text(directory.password + "\r\n")
    make(directory, password_file=crlf).check_config()


@pytest.mark.parametrize(
    "change, words",
    [
        ({"group": "no-such-group"}, "no group 'no-such-group'"),
        ({"bind_dn": "cn=nobody,dc=example,dc=test"}, "wrong DN or password"),
        ({"password_file": "/nonexistent/password"}, "cannot read the LDAP password file"),
    ],
)
def test_bad_settings_fail_at_start(directory: Any, change: dict[str, Any], words: str) -> None:
    with pytest.raises(AuthorizationConfigError, match=words):
        make(directory, **change).check_config()


def test_unreachable_server_fails_check_config(directory: Any) -> None:
    port = realm_module._free_port()
    authz = LdapGroupAuthorizer(
        f"ldap://127.0.0.1:{port}",
        directory.base,
        directory.group,
        realm=REALM,
        bind="simple",
        bind_dn=directory.bind_dn,
        password_file=directory.password_file,
    )
    with pytest.raises(AuthorizationConfigError, match="cannot reach"):
        authz.check_config()


def test_gssapi_bind_without_the_keytab_fails_with_a_hint(
    directory: Any, realm: Any, gssapi_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KRB5_CLIENT_KTNAME", f"FILE:{tmp_path}/missing.keytab")
    monkeypatch.setenv("KRB5CCNAME", f"MEMORY:jailcc-test-empty-{time.monotonic_ns()}")
    with pytest.raises(AuthorizationConfigError, match="a TGT from --keytab"):
        make(directory, "gssapi").check_config()


def test_gssapi_bind_is_the_service_principal(directory: Any, gssapi_env: None) -> None:
    authz = make(directory, "gssapi")
    authz.check_config()
    assert authz._conn.whoami_s() == f"dn:{directory.gssapi_dn}"
    assert authz._conn.get_option(ldap.OPT_X_SASL_SSF) > 0  # integrity at least


@pytest.mark.parametrize(
    "args, kw, words",
    [
        (("http://x", "dc=x", "g"), {}, "not an LDAP URL"),
        (("ldap://x/dc=x", "dc=x", "g"), {}, "give the server only"),
        (("ldap://x", "not a dn", "g"), {}, "not a DN"),
        (("ldap://x", "dc=x", ""), {}, "no LDAP group"),
        (("ldap://x", "dc=x", "g"), {"realm": "a@B"}, "not a Kerberos realm"),
        (("ldap://x", "dc=x", "g"), {"bind": "kerberos"}, "unknown LDAP bind"),
        (("ldap://x", "dc=x", "g"), {"bind": "simple"}, "needs a bind DN"),
        (("ldap://x", "dc=x", "g"), {"bind_dn": "cn=a"}, "takes no bind DN"),
        (
            ("ldap://ldap.example.com", "dc=x", "g"),
            {"bind": "simple", "bind_dn": "cn=a", "password_file": __file__},
            "in clear",
        ),
    ],
)
def test_impossible_settings_refused_without_network(
    args: tuple[str, ...], kw: dict[str, Any], words: str
) -> None:
    with pytest.raises(AuthorizationConfigError, match=words):
        LdapGroupAuthorizer(*args, **{"realm": REALM, **kw})


def test_simple_bind_allowed_over_tls_or_loopback() -> None:
    for url, starttls in [
        ("ldaps://ldap.example.com", False),
        ("ldap://ldap.example.com", True),
        ("ldap://[::1]:389", False),
        ("ldapi://%2Frun%2Fslapd%2Fldapi", False),
    ]:
        LdapGroupAuthorizer(
            url,
            "dc=x",
            "g",
            realm=REALM,
            bind="simple",
            bind_dn="cn=a",
            password_file=__file__,
            starttls=starttls,
        )


# -- LDAP: failing closed --------------------------------------------------------------------


def test_ldap_down_fresh_answers_stand_expired_ones_are_unavailable(directory: Any) -> None:
    authz = make(directory, cache_ttl=1.0)
    assert authz.allowed(f"alice@{REALM}")
    assert not authz.allowed(f"bob@{REALM}")
    directory.stop()
    try:
        assert authz.allowed(f"alice@{REALM}")  # cached, yes and no alike
        assert not authz.allowed(f"bob@{REALM}")
        with pytest.raises(AuthorizationUnavailable, match="cannot reach"):
            authz.allowed(f"carol@{REALM}")  # never asked
        assert not authz.allowed(f"alice@{OTHER}")  # needs no LDAP to refuse
        time.sleep(1.1)
        start = time.monotonic()
        with pytest.raises(AuthorizationUnavailable):
            authz.allowed(f"alice@{REALM}")
        assert time.monotonic() - start < 0.5  # a refused connection is quick to tell
    finally:
        directory.start()
    assert authz.allowed(f"alice@{REALM}")  # back, on a new connection


def test_ldap_restart_behind_an_idle_connection_is_retried(directory: Any) -> None:
    authz = make(directory, cache_ttl=0)
    assert authz.allowed(f"alice@{REALM}")
    directory.stop()
    directory.start()
    assert authz.allowed(f"alice@{REALM}")  # the old connection is dead: one retry, new one
    assert not authz.allowed(f"bob@{REALM}")


def test_hung_ldap_is_unavailable_within_the_timeout(directory: Any, bind: str) -> None:
    authz = make(directory, bind, timeout=1.0, cache_ttl=0)
    assert authz.allowed(f"alice@{REALM}")
    directory.pause()
    try:
        # Several connections at once: each is refused after about `timeout`, not after the
        # others' turns on the shared connection.
        results: dict[str, float | bool] = {}

        def ask(user: str) -> None:
            start = time.monotonic()
            try:
                results[user] = authz.allowed(f"{user}@{REALM}")
            except AuthorizationUnavailable:
                results[user] = time.monotonic() - start

        threads = [threading.Thread(target=ask, args=(u,)) for u in ("alice", "bob", "carol")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert all(type(v) is float and 0.8 < v < 1.6 for v in results.values()), results
        start = time.monotonic()
        with pytest.raises(AuthorizationConfigError, match="within 1 s"):
            make(directory, bind, timeout=1.0).check_config()  # a new connection hangs too
        assert time.monotonic() - start < 1.6
    finally:
        directory.resume()
    assert authz.allowed(f"alice@{REALM}")


def test_many_threads_one_authorizer(directory: Any) -> None:
    authz = make(directory, cache_ttl=0)
    expected = {"alice": True, "bob": False, "carol": False, "dave": False}
    errors: list[str] = []

    def work() -> None:
        for _ in range(25):
            for user, answer in expected.items():
                if authz.allowed(f"{user}@{REALM}") != answer:
                    errors.append(user)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


# -- LDAP: the helper, as root runs it ------------------------------------------------------


def helper(
    directory: Any, realm: Any, bind: str, log_file: str | None = None, **kw: Any
) -> LdapHelperAuthorizer:
    """What jailccd makes of its --ldap-* options (monitor/daemon.py)."""
    settings = {
        "url": directory.url,
        "base": directory.base,
        "group": directory.group,
        "realm": REALM,
        "bind": bind,
        "bind_dn": directory.bind_dn if bind == "simple" else None,
        "cache_ttl": 60.0,
        "timeout": 2.0,
        "starttls": False,
    } | kw
    return LdapHelperAuthorizer(
        settings,
        (LDAP_UID, LDAP_UID),
        password_file=str(directory.password_file) if bind == "simple" else None,
        kerberos=KerberosAcceptor(str(realm.keytab), realm.service_principal)
        if bind == "gssapi"
        else None,
        log_file=log_file,
    )


@pytest.fixture
def realm_env(realm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in realm.env.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("how", ["simple", "gssapi"])
def test_the_directory_is_asked_by_a_helper_of_its_own_uid_with_no_key(
    directory: Any, realm: Any, realm_env: None, how: str
) -> None:
    authz = helper(directory, realm, how)
    try:
        authz.check_config()
        assert authz.allowed(f"alice@{REALM}")
        assert not authz.allowed(f"bob@{REALM}")
        assert not authz.allowed(f"alice@{OTHER}")  # refused by root without asking
        child = psutil.Process(authz._child.pid)
        assert set(child.uids()) == {LDAP_UID} and set(child.gids()) == {LDAP_UID}
        environ = child.environ()
        assert not {"KRB5_KTNAME", "KRB5_CLIENT_KTNAME"} & set(environ)
        if how == "gssapi":
            ccache = environ["KRB5CCNAME"].removeprefix("FILE:")
            st, parent = os.stat(ccache), os.stat(os.path.dirname(ccache))
            assert (st.st_uid, st.st_mode & 0o777) == (LDAP_UID, 0o600)
            assert (parent.st_uid, parent.st_mode & 0o777) == (0, 0o711)  # it can add nothing
            tickets = _klist({**realm.env, "KRB5CCNAME": f"FILE:{ccache}"})
            assert f"krbtgt/{REALM}@{REALM}" in tickets
            assert os.stat(realm.keytab).st_mode & 0o077 == 0  # the key: root's only
        else:
            assert "KRB5CCNAME" not in environ
    finally:
        authz.close()
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    if how == "gssapi":
        assert not os.path.exists(os.path.dirname(ccache))  # no TGT left behind


def test_a_helper_that_dies_or_hangs_is_replaced(
    directory: Any, realm: Any, realm_env: None
) -> None:
    authz = helper(directory, realm, "gssapi", timeout=1.0)
    try:
        authz.check_config()
        first = authz._child.pid
        os.kill(first, 9)
        assert authz.allowed(f"alice@{REALM}")  # a new one, started for the question
        second = authz._child.pid
        assert second != first
        os.kill(second, 19)  # SIGSTOP: it hangs
        began = time.monotonic()
        with pytest.raises(AuthorizationUnavailable, match="no answer within"):
            authz.allowed(f"carol@{REALM}")
        assert time.monotonic() - began < 10
        assert not psutil.pid_exists(second) or psutil.Process(second).status() == "zombie"
        assert authz.allowed(f"alice@{REALM}")
    finally:
        authz.close()


HOSTILE_HELPER = """
import json, sys
sys.stderr.write("the hostile helper says hello\\n")
print(json.dumps({"ready": True}), flush=True)
sys.stdin.readline()
for line in sys.stdin:
    name = json.loads(line).partition("@")[0]
    replies = {
        "garbage": "not json",
        "long": "{" + " " * 100_000 + "}",
        "string": json.dumps({"allowed": "yes"}),
        "list": json.dumps([True]),
        "neither": json.dumps({"ready": True}),
        "exit": None,
    }
    if name not in replies:
        print(json.dumps({"allowed": name == "alice"}), flush=True)
    elif replies[name] is None:
        sys.exit(0)
    else:
        print(replies[name], flush=True)
"""


def test_a_helper_that_answers_nonsense_lets_nobody_in(
    directory: Any, realm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper taken over through the directory's bytes can say yes or no, nothing else: any
    other answer is a refusal (unavailable) and a new helper; it is never asked about a
    principal of another realm."""
    place = Path(tempfile.mkdtemp(prefix="jailcc-hostile-"))  # the helper's uid must read it
    place.chmod(0o755)
    (place / "hostile_helper.py").write_text(HOSTILE_HELPER)
    monkeypatch.setenv("PYTHONPATH", str(place))
    authz = helper(directory, realm, "simple", log_file=str(place / "jailccd.log"))
    authz.module = "hostile_helper"  # with jailccd's --log-file: its lines go there
    try:
        authz.check_config()
        assert authz.allowed(f"alice@{REALM}") and not authz.allowed(f"bob@{REALM}")
        assert not authz.allowed("alice@OTHER.TEST")  # not asked: it would have said yes
        for name in ("garbage", "long", "string", "list", "neither", "exit"):
            before = authz._child.pid
            with pytest.raises(AuthorizationUnavailable):
                authz.allowed(f"{name}@{REALM}")
            assert authz._child is None or authz._child.pid != before, name
            assert authz.allowed(f"alice@{REALM}")  # a new one
        assert "the hostile helper says hello" in (place / "jailccd.log").read_text()
    finally:
        authz.close()
        shutil.rmtree(place)


def test_the_helpers_tgt_is_renewed_at_half_its_life(
    directory: Any, realm: Any, realm_env: None
) -> None:
    authz = helper(directory, realm, "gssapi")
    try:
        authz.check_config()
        ccache = psutil.Process(authz._child.pid).environ()["KRB5CCNAME"].removeprefix("FILE:")
        before = os.stat(ccache).st_ino
        assert authz._renew_at - time.monotonic() > 3600  # the realm's TGTs last a day
        authz._renew_at = 0.0  # as half a day later
        assert authz.allowed(f"alice@{REALM}")
        assert os.stat(ccache).st_ino != before
        assert authz._renew_at - time.monotonic() > 3600
    finally:
        authz.close()


def test_the_helpers_wrong_password_stops_the_start(
    directory: Any, realm: Any, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    wrong.chmod(0o600)  # root's to read: root opens it for the helper
    authz = helper(directory, realm, "simple")
    authz.password_file = str(wrong)
    try:
        with pytest.raises(AuthorizationConfigError, match="refused: wrong DN or password"):
            authz.check_config()
    finally:
        authz.close()


# -- the principal list file -----------------------------------------------------------------


def test_principal_list_comments_blank_lines_and_exact_names(tmp_path: Path) -> None:
    path = tmp_path / "principals"
    path.write_text(
        f"# who may compile\n\nalice@{REALM}\n   carol@{REALM}   # trailing comment\n"
        f"host/build1@{REALM}\n"
    )
    authz = PrincipalListAuthorizer(path)
    assert authz.allowed(f"alice@{REALM}")
    assert authz.allowed(f"carol@{REALM}")
    assert authz.allowed(f"host/build1@{REALM}")
    for refused in (f"alice@{OTHER}", "alice", f"ALICE@{REALM}", f"bob@{REALM}", "#", ""):
        assert not authz.allowed(refused), refused
    assert "3 principals" in authz.describe() and str(path) in authz.describe()


def test_principal_list_reloaded_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "principals"
    path.write_text(f"alice@{REALM}\n")
    authz = PrincipalListAuthorizer(path)
    assert authz.allowed(f"alice@{REALM}") and not authz.allowed(f"bob@{REALM}")
    path.write_text(f"bob@{REALM}\n")  # same size: the stamp has the mtime in ns too
    assert authz.allowed(f"bob@{REALM}") and not authz.allowed(f"alice@{REALM}")
    replacement = tmp_path / "new"
    replacement.write_text(f"carol@{REALM}\n")
    replacement.rename(path)  # as editors and config management do
    assert authz.allowed(f"carol@{REALM}") and not authz.allowed(f"bob@{REALM}")


@pytest.mark.parametrize(
    "line, words",
    [
        ("alice", "not one full principal"),
        (f"@{REALM}", "not one full principal"),
        (f"alice@{REALM} bob@{REALM}", "not one full principal"),
        (f"*@{REALM}", "wildcards"),
    ],
)
def test_principal_list_malformed_line_named_at_load(tmp_path: Path, line: str, words: str) -> None:
    path = tmp_path / "principals"
    path.write_text(f"# list\nbob@{REALM}\n{line}\n")
    with pytest.raises(AuthorizationConfigError, match=f"principals:3: {words}"):
        PrincipalListAuthorizer(path)


def test_principal_list_broken_by_an_edit_refuses_until_fixed(tmp_path: Path) -> None:
    path = tmp_path / "principals"
    path.write_text(f"alice@{REALM}\nbob@{REALM}\n")
    authz = PrincipalListAuthorizer(path)
    assert authz.allowed(f"bob@{REALM}")
    path.write_text(f"alice@{REALM}\nbob\n")  # removing bob's realm (or bob) went wrong
    with pytest.raises(AuthorizationUnavailable, match="principals:2"):
        authz.allowed(f"alice@{REALM}")
    path.unlink()
    with pytest.raises(AuthorizationUnavailable, match="cannot read"):
        authz.allowed(f"alice@{REALM}")
    path.write_text(f"alice@{REALM}\n")
    assert authz.allowed(f"alice@{REALM}") and not authz.allowed(f"bob@{REALM}")


def test_principal_list_missing_at_start(tmp_path: Path) -> None:
    with pytest.raises(AuthorizationConfigError, match="cannot read"):
        PrincipalListAuthorizer(tmp_path / "absent")


# -- the realm helpers -----------------------------------------------------------------------


def _klist(env: dict[str, str]) -> str:
    return subprocess.run(
        ["klist"], env={**os.environ, **env}, capture_output=True, text=True, check=True
    ).stdout


def _gss_login(realm: Any, ccache: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A GSSAPI handshake to the service with the tickets in `ccache`, in this process; the
    initiator's name as the acceptor sees it."""
    for key, value in realm.env.items():
        monkeypatch.setenv(key, value)
    service = gssapi.Name(realm.service_principal, gssapi.NameType.kerberos_principal)
    creds = gssapi.Credentials(usage="initiate", store={"ccache": f"FILE:{ccache}"})
    client = gssapi.SecurityContext(name=service, creds=creds, usage="initiate")
    server_creds = gssapi.Credentials(usage="accept", store={"keytab": f"FILE:{realm.keytab}"})
    server = gssapi.SecurityContext(creds=server_creds, usage="accept")
    token = client.step()
    while not (client.complete and server.complete):
        token = server.step(token)
        if not client.complete:
            token = client.step(token)
    return str(server.initiator_name)


def test_kinit_from_a_kdc_on_loopback_only(realm: Any, tmp_path: Path) -> None:
    env = realm.kinit("alice", tmp_path / "cc")
    assert env["KRB5CCNAME"] == f"FILE:{tmp_path / 'cc'}"
    assert f"Default principal: alice@{REALM}" in _klist(env)
    assert realm.has_valid_tickets(tmp_path / "cc")
    assert realm.addprinc("erin", "erins-password") == f"erin@{REALM}"
    env = realm.kinit("erin", tmp_path / "erin.cc", lifetime=600)
    assert f"Default principal: erin@{REALM}" in _klist(env)
    ports = {realm.kdc_port(REALM), realm.kdc_port(OTHER)}
    bound = [c for c in psutil.net_connections(kind="inet") if c.laddr and c.laddr.port in ports]
    assert bound and all(c.laddr.ip == "127.0.0.1" for c in bound), bound


def test_cross_realm_alice_gets_a_ticket_for_the_service(
    realm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ccache = tmp_path / "other.cc"
    env = realm.kinit(f"alice@{OTHER}", ccache)
    realm.kvno(ccache, realm.service_principal)
    listing = _klist(env)
    assert f"krbtgt/{REALM}@{OTHER}" in listing and realm.service_principal in listing
    # The server sees her with her own realm: that is what authorization must go by.
    assert _gss_login(realm, ccache, monkeypatch) == f"alice@{OTHER}"
    realm.kinit("alice", tmp_path / "home.cc")
    assert _gss_login(realm, tmp_path / "home.cc", monkeypatch) == f"alice@{REALM}"


def test_tickets_keep_working_while_the_kdc_is_down(
    realm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ccache = tmp_path / "cc"
    realm.kinit("bob", ccache)
    realm.kvno(ccache, realm.service_principal)
    realm.stop_kdc()
    try:
        assert not realm.kdc_running()
        assert _gss_login(realm, ccache, monkeypatch) == f"bob@{REALM}"
        with pytest.raises(RuntimeError, match="kinit"):
            realm.kinit("bob", tmp_path / "new.cc")
    finally:
        realm.start_kdc()
    realm.kinit("bob", tmp_path / "new.cc")


def test_expired_ccache_within_seconds(
    realm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ccache = tmp_path / "old.cc"
    start = time.monotonic()
    env = realm.expired_ccache("alice", ccache, services=[realm.service_principal])
    took = time.monotonic() - start
    assert took < realm.clockskew + 2.5, took
    assert env["KRB5CCNAME"] == f"FILE:{ccache}"
    assert not realm.has_valid_tickets(ccache)  # klist -s fails
    assert f"Default principal: alice@{REALM}" in _klist(env)  # the tickets are there
    with pytest.raises(RuntimeError, match="expired"):  # and the KDC will not renew them
        realm.kvno(ccache, f"ldap/localhost@{REALM}")
    with pytest.raises(gssapi.exceptions.GSSError, match="expired"):  # nor will a client
        _gss_login(realm, ccache, monkeypatch)


def test_directory_refuses_anonymous_reads_and_takes_both_binds(
    realm: Any, directory: Any, gssapi_env: None
) -> None:
    def whoami(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ldapwhoami", *args], env=dict(os.environ), capture_output=True, text=True
        )

    anonymous = subprocess.run(
        ["ldapsearch", "-x", "-H", directory.ip_url, "-b", directory.base, "(uid=alice)"],
        capture_output=True,
        text=True,
    )
    assert anonymous.returncode != 0
    assert "authentication required" in anonymous.stdout + anonymous.stderr
    simple = whoami(
        "-x", "-H", directory.url, "-D", directory.bind_dn, "-y", directory.password_file
    )
    assert simple.stdout.strip() == f"dn:{directory.bind_dn}", simple.stderr
    sasl = whoami("-N", "-Y", "GSSAPI", "-H", directory.url)
    assert sasl.stdout.strip() == f"dn:{directory.gssapi_dn}", sasl.stderr


def test_realm_and_directory_leave_nothing_behind() -> None:
    start = time.monotonic()
    with realm_module.Realm() as r, realm_module.Directory(r) as d:
        started = time.monotonic() - start
        kdc_dirs = [Path(k.tmpdir) for k in r._kdcs.values()]
        dirs = [r.dir, d.dir, *kdc_dirs]
        pids = [d._proc.pid] + [k._kdc_proc.pid for k in r._kdcs.values()]
        d.pause()  # closing must cope with a stopped slapd
    assert started < 5, started
    assert not [p for p in dirs if p.exists()]
    assert not [p for p in pids if psutil.pid_exists(p)]
