"""Members of an LDAP group: the questions the LDAP helper (serve.py) asks the directory, as a
uid of its own. The root monitor asks the helper (monitor/authz.py LdapHelperAuthorizer).

LDAP bind with GSSAPI: libldap's SASL mechanism takes the process's default Kerberos initiator
credentials; nothing can be handed to it. The helper's KRB5CCNAME names a ccache root filled
with a TGT for the service principal from its keytab (monitor/kerberos.py): the helper binds
as the service but never holds its key. The LDAP server's principal is ldap/<host in the URL>:
the name is never canonicalized through (reverse) DNS.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

from jailcc.principals import AuthorizationConfigError, AuthorizationUnavailable, split_principal

log = logging.getLogger("jailccd")

_GROUP_CLASSES = (
    "(|(objectClass=posixGroup)(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"
)
_CACHE_MAX = 10_000  # principals; expired answers are purged beyond this
MAX_PASSWORD = 4096


def _ldap_error(exc: Exception) -> str:
    """python-ldap puts a dict in args[0]: its description, and the server's or SASL's info."""
    detail = exc.args[0] if exc.args else None
    if isinstance(detail, dict):
        desc, info = detail.get("desc", type(exc).__name__), detail.get("info")
        return f"{desc}: {info}" if info else str(desc)
    return f"{type(exc).__name__}: {exc}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LdapGroupAuthorizer:
    """Principals of `realm` (the server's own; any other is refused) whose name is the uid of
    exactly one entry under `base` (compared case-sensitively, as Kerberos does) that is a
    member of the group `group`: a cn under `base` (or a full DN) that is a posixGroup with
    memberUid=<uid>, or a groupOfNames/groupOfUniqueNames with member/uniqueMember=<the user's
    DN>. Nested groups are not followed.

    Answers, yes and no, are cached per principal for `cache_ttl` seconds. Past that, an LDAP
    server that does not answer within `timeout` seconds (down, hung, or busy with another
    thread's question) makes allowed() raise AuthorizationUnavailable. One connection, shared
    under a lock (python-ldap objects are not for concurrent use), made again after any error.

    Bind: "gssapi" (SASL GSSAPI with the default ccache's TGT, see the module's docstring; the
    SASL layer must protect the session's integrity at least) or "simple" (`bind_dn`, with the
    password in `password_file`, read at each connection; from `password_fd` instead when
    given, the file root opened for us). A simple bind needs ldaps://,
    `starttls` or a loopback server: anything else would send the password in clear and
    trust answers anyone on the path could forge.
    """

    def __init__(
        self,
        url: str,
        base: str,
        group: str,
        *,
        realm: str,
        bind: Literal["gssapi", "simple"] = "gssapi",
        bind_dn: str | None = None,
        password_file: str | os.PathLike[str] | None = None,
        password_fd: int | None = None,
        cache_ttl: float = 60.0,
        timeout: float = 5.0,
        starttls: bool = False,
    ) -> None:
        import ldap.dn
        import ldapurl

        if not ldapurl.isLDAPUrl(url):
            raise AuthorizationConfigError(f"not an LDAP URL: {url!r}")
        parsed = ldapurl.LDAPUrl(url)
        if parsed.dn or parsed.attrs or parsed.filterstr or parsed.extensions:
            raise AuthorizationConfigError(
                f"{url}: give the server only (ldap[s]://host[:port]); the base and group apart"
            )
        if not ldap.dn.is_dn(base) or not base:
            raise AuthorizationConfigError(f"not a DN: LDAP base {base!r}")
        if not group:
            raise AuthorizationConfigError("no LDAP group named")
        if not realm or "@" in realm:
            raise AuthorizationConfigError(f"not a Kerberos realm: {realm!r}")
        if cache_ttl < 0 or timeout <= 0:
            raise AuthorizationConfigError("the LDAP cache TTL and timeout must be positive")
        host = parsed.hostport or "localhost"
        host = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        if bind == "simple":
            if not bind_dn or password_file is None:
                raise AuthorizationConfigError(
                    "a simple LDAP bind needs a bind DN and a password file"
                )
            if parsed.urlscheme == "ldap" and not starttls and not _is_loopback(host):
                raise AuthorizationConfigError(
                    f"a simple bind to {url} would send the password in clear and trust "
                    "answers anyone on the way could forge: use ldaps://, StartTLS or GSSAPI"
                )
        elif bind == "gssapi":
            if bind_dn or password_file is not None:
                raise AuthorizationConfigError("a GSSAPI LDAP bind takes no bind DN or password")
        else:
            raise AuthorizationConfigError(f"unknown LDAP bind {bind!r}: gssapi or simple")
        self.url = url
        self.base = base
        self.group = group
        self.realm = realm
        self.bind = bind
        self.bind_dn = bind_dn
        self.password_file = Path(password_file) if password_file is not None else None
        self.password_fd = password_fd
        self.cache_ttl = cache_ttl
        self.timeout = timeout
        self.starttls = starttls
        if self.password_file is not None:
            self._password()  # unreadable: fail now, not at the first connection
        self._conn: Any = None  # ldap.ldapobject.LDAPObject, with _group_dn, under _conn_lock
        self._group_dn: str | None = None
        self._conn_lock = threading.Lock()
        self._cache: dict[str, tuple[float, bool]] = {}
        self._cache_lock = threading.Lock()

    def describe(self) -> str:
        return (
            f"principals of {self.realm} in LDAP group {self.group} under {self.base} at "
            f"{self.url} ({self.bind} bind)"
        )

    def _password(self) -> str:
        assert self.password_file is not None
        try:
            if self.password_fd is not None:
                data = os.pread(self.password_fd, MAX_PASSWORD, 0)
            else:
                data = self.password_file.read_bytes()[:MAX_PASSWORD]
            # Only line ends are stripped: spaces may belong to the password.
            return data.decode("utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthorizationConfigError(
                f"cannot read the LDAP password file {self.password_file}: {exc}"
            ) from None

    # -- start-up -----------------------------------------------------------------------------

    def check_config(self) -> None:
        """Connect, bind and find the group now, so that a wrong URL, credential, base or group
        stops the daemon at start-up with a clear message (AuthorizationConfigError)."""
        import ldap

        deadline = time.monotonic() + self.timeout
        if not self._conn_lock.acquire(timeout=self.timeout):
            raise AuthorizationConfigError(f"LDAP {self.url}: busy for {self.timeout:g} s")
        try:
            self._drop()
            self._connect(deadline)
        except AuthorizationUnavailable as exc:
            raise AuthorizationConfigError(str(exc)) from None
        except ldap.LDAPError as exc:
            self._drop()
            raise AuthorizationConfigError(self._explain(exc)) from None
        finally:
            self._conn_lock.release()

    def _explain(self, exc: Exception) -> str:
        import ldap

        what = f"LDAP {self.url}"
        if isinstance(exc, ldap.SERVER_DOWN | ldap.CONNECT_ERROR):
            return f"{what}: cannot reach the server: {_ldap_error(exc)}"
        if isinstance(exc, ldap.TIMEOUT):
            return f"{what}: no answer within {self.timeout:g} s"
        if self.bind == "simple" and isinstance(exc, ldap.INVALID_CREDENTIALS):
            return (
                f"{what}: simple bind as {self.bind_dn} refused: wrong DN or password "
                f"(in {self.password_file})"
            )
        if self.bind == "gssapi" and isinstance(
            exc, ldap.LOCAL_ERROR | ldap.AUTH_UNKNOWN | ldap.INVALID_CREDENTIALS
        ):
            return (
                f"{what}: SASL GSSAPI bind failed: {_ldap_error(exc)} (jailccd binds as its"
                " --principal with a TGT from --keytab: that needs a KDC, and the principal"
                " ldap/<URL's host> on the LDAP server)"
            )
        return f"{what}: {_ldap_error(exc)}"

    # -- questions ----------------------------------------------------------------------------

    def allowed(self, principal: str) -> bool:
        parts = split_principal(principal)
        if parts is None or parts[1] != self.realm:
            return False  # not a name we could map to a user of this directory
        now = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(principal)
        if hit is not None and hit[0] > now:
            return hit[1]
        answer = self._ask(parts[0])
        with self._cache_lock:
            if len(self._cache) >= _CACHE_MAX:
                now = time.monotonic()
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[principal] = (time.monotonic() + self.cache_ttl, answer)
        return answer

    def _ask(self, user: str) -> bool:
        import ldap

        deadline = time.monotonic() + self.timeout
        # Waiting for another thread's question counts against this one's timeout: with a
        # hung server, each new connection is refused after `timeout`, not after a queue.
        if not self._conn_lock.acquire(timeout=self.timeout):
            raise AuthorizationUnavailable(
                f"LDAP {self.url}: no answer within {self.timeout:g} s (server busy or hung)"
            )
        try:
            for _ in range(2):
                reused = self._conn is not None
                try:
                    return self._member(self._connect(deadline), user, deadline)
                except ldap.SERVER_DOWN as exc:
                    self._drop()
                    if not reused:
                        raise AuthorizationUnavailable(self._explain(exc)) from None
                    # The server closed an idle connection: once more, on a new one.
                except ldap.LDAPError as exc:
                    self._drop()
                    raise AuthorizationUnavailable(self._explain(exc)) from None
            raise AssertionError("unreachable: a fresh connection raises or answers")
        finally:
            self._conn_lock.release()

    def _remaining(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0.01:
            raise AuthorizationUnavailable(f"LDAP {self.url}: no answer within {self.timeout:g} s")
        return left

    def _drop(self) -> None:
        conn, self._conn, self._group_dn = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: only the socket matters
                conn.unbind_ext_s()

    def _connect(self, deadline: float) -> Any:
        """The shared connection (caller holds _conn_lock), made, bound and with the group's
        DN found if there is none."""
        if self._conn is not None:
            return self._conn
        import ldap
        import ldap.sasl

        conn = ldap.initialize(self.url)
        try:
            left = self._remaining(deadline)
            conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
            conn.set_option(ldap.OPT_REFERRALS, 0)  # never chase a referral to another server
            conn.set_option(ldap.OPT_NETWORK_TIMEOUT, left)
            conn.set_option(ldap.OPT_TIMEOUT, left)
            conn.timeout = left
            if self.starttls:
                conn.start_tls_s()
            if self.bind == "gssapi":
                conn.set_option(ldap.OPT_X_SASL_NOCANON, 1)  # ldap/<URL's host>, no DNS games
                conn.set_option(ldap.OPT_X_SASL_SSF_MIN, 1)  # integrity, at least
                conn.sasl_interactive_bind_s("", ldap.sasl.gssapi())
            else:
                try:
                    password = self._password()
                except AuthorizationConfigError as exc:
                    raise AuthorizationUnavailable(str(exc)) from None
                conn.simple_bind_s(self.bind_dn, password)
            self._group_dn = self._find_group(conn, deadline)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.unbind_ext_s()
            raise
        self._conn = conn
        return conn

    def _search(
        self, conn: Any, base: str, scope: int, filterstr: str, attrs: list[str], deadline: float
    ) -> list[tuple[str, dict[str, list[bytes]]]]:
        import ldap

        left = self._remaining(deadline)
        conn.set_option(ldap.OPT_TIMEOUT, left)
        # Referrals come back as entries without a DN: not ours to follow.
        results = conn.search_ext_s(base, scope, filterstr, attrs, timeout=left)
        return [(dn, entry) for dn, entry in results if dn]

    def _find_group(self, conn: Any, deadline: float) -> str:
        import ldap
        import ldap.dn
        from ldap.filter import escape_filter_chars

        if ldap.dn.is_dn(self.group) and "=" in self.group:
            base, scope, filterstr = self.group, ldap.SCOPE_BASE, _GROUP_CLASSES
        else:
            base, scope = self.base, ldap.SCOPE_SUBTREE
            filterstr = f"(&(cn={escape_filter_chars(self.group)}){_GROUP_CLASSES})"
        try:
            found = self._search(conn, base, scope, filterstr, ["1.1"], deadline)
        except ldap.NO_SUCH_OBJECT:
            found = []
        if len(found) != 1:
            problem = "no group" if not found else f"{len(found)} groups"
            raise AuthorizationUnavailable(
                f"LDAP {self.url}: {problem} {self.group!r} (posixGroup, groupOfNames or "
                f"groupOfUniqueNames) under {self.base}"
            )
        return found[0][0]

    def _member(self, conn: Any, user: str, deadline: float) -> bool:
        import ldap
        from ldap.filter import escape_filter_chars

        esc = escape_filter_chars(user)
        people = self._search(
            conn, self.base, ldap.SCOPE_SUBTREE, f"(uid={esc})", ["uid"], deadline
        )
        # uid matches without regard to case; Kerberos names do not: ALICE is not alice.
        exact = [dn for dn, entry in people if user.encode() in entry.get("uid", [])]
        if len(exact) != 1:
            if len(exact) > 1:
                log.warning("LDAP: %d entries with uid=%s under %s", len(exact), user, self.base)
            return False
        dn = escape_filter_chars(exact[0])
        assert self._group_dn is not None
        try:
            found = self._search(
                conn,
                self._group_dn,
                ldap.SCOPE_BASE,
                f"(|(memberUid={esc})(member={dn})(uniqueMember={dn}))",
                ["1.1"],
                deadline,
            )
        except ldap.NO_SUCH_OBJECT:
            self._drop()  # find it again next time (renamed?); until then nobody is let in
            raise AuthorizationUnavailable(
                f"LDAP {self.url}: the group {self.group!r} has gone"
            ) from None
        return bool(found)
