"""The server's side of the Kerberos (GSSAPI) handshake, run by the root monitor one step at a
time on the tokens the network service relays (monitor/monitor.py).

The server's principal comes from configuration, never from reverse DNS; its key from a keytab
read once at start-up. A context is accepted only if the client asked for mutual
authentication, integrity, replay and sequence detection. The identity is the full principal
name with its realm, never stripped.
"""

from __future__ import annotations

import os

import gssapi
import gssapi.exceptions

REQUIRED_FLAGS = (
    gssapi.RequirementFlag.mutual_authentication,
    gssapi.RequirementFlag.integrity,
    gssapi.RequirementFlag.replay_detection,
    gssapi.RequirementFlag.out_of_sequence_detection,
)


class AuthenticationFailed(Exception):
    """The peer did not authenticate (bad or replayed token, wrong principal, weak flags)."""


class KerberosAcceptor:
    def __init__(self, keytab: str, principal: str) -> None:
        if "@" not in principal or "/" not in principal.partition("@")[0]:
            raise ValueError(f"--principal {principal!r}: expected service/host@REALM")
        if not os.access(keytab, os.R_OK):
            raise ValueError(f"--keytab {keytab}: cannot read it")
        self.principal = principal
        self.realm = principal.rpartition("@")[2]
        self.keytab = os.path.abspath(keytab)
        _profile_for_jails()
        name = gssapi.Name(principal, gssapi.NameType.kerberos_principal)
        try:
            self.creds = gssapi.Credentials(name=name, usage="accept", store={"keytab": keytab})
            # Acquiring accept credentials is lazy: ask for the key now, so a keytab without it
            # stops the server at start-up rather than failing every connection.
            self.creds.inquire_by_mech(gssapi.MechType.kerberos)
        except gssapi.exceptions.GSSError as exc:
            raise ValueError(f"no key for {principal} in {keytab}: {_short(exc)}") from None

    def tgt_into(self, path: str) -> int:
        """A TGT for our principal from the keytab, into a new ccache at path: what the LDAP
        helper binds with (monitor/authz.py). Its lifetime in seconds."""
        name = gssapi.Name(self.principal, gssapi.NameType.kerberos_principal)
        store = {"client_keytab": self.keytab, "ccache": f"FILE:{path}"}
        try:
            return int(gssapi.Credentials(name=name, usage="initiate", store=store).lifetime)
        except gssapi.exceptions.GSSError as exc:
            raise ValueError(
                f"no TGT for {self.principal} from {self.keytab}: {_short(exc)}"
            ) from None

    def new_context(self) -> gssapi.SecurityContext:
        return gssapi.SecurityContext(creds=self.creds, usage="accept")

    def step(self, context: gssapi.SecurityContext, token: bytes) -> tuple[bytes, bool]:
        """One accept step: our token for the client (empty when there is none), and whether
        the context is complete. (gssapi may raise a step's error only when asked whether the
        context is complete.)"""
        try:
            reply = context.step(token) or b""
            return reply, bool(context.complete)
        except gssapi.exceptions.GSSError as exc:
            raise AuthenticationFailed(_short(exc)) from None

    @staticmethod
    def established(context: gssapi.SecurityContext) -> str:
        """The client's principal, once the context is complete and as strong as we ask."""
        missing = [flag.name for flag in REQUIRED_FLAGS if flag not in context.actual_flags]
        if missing:
            raise AuthenticationFailed(f"the client did not ask for {', '.join(missing)}")
        principal = str(context.initiator_name)
        if "@" not in principal:
            raise AuthenticationFailed(f"a principal without a realm: {principal!r}")
        return principal


def _profile_for_jails() -> None:
    """An exported context carries the names of the krb5 profile files (krb5.conf) it was made
    with, and importing it fails unless one of them can be read. The jail that imports it has
    none of the host's files, but it has /dev/null: list that last (an empty profile adds
    nothing). Must run before this process makes its first Kerberos context."""
    files = os.environ.get("KRB5_CONFIG") or "/etc/krb5.conf"
    if "/dev/null" not in files.split(":"):
        os.environ["KRB5_CONFIG"] = f"{files}:/dev/null"


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
