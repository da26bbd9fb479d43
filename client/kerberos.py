"""The client's side of the Kerberos handshake, from the user's own ticket cache."""

from __future__ import annotations

import socket

import gssapi
import gssapi.exceptions
from jailcc import protocol as proto

from .hosts import Host
from .remote import RemoteFailure

FLAGS = [
    gssapi.RequirementFlag.mutual_authentication,
    gssapi.RequirementFlag.integrity,
    gssapi.RequirementFlag.confidentiality,
    gssapi.RequirementFlag.replay_detection,
    gssapi.RequirementFlag.out_of_sequence_detection,
]


def initiate(sock: socket.socket, host: Host) -> gssapi.SecurityContext:
    """Authenticate to the server as the user and the server to us (mutual authentication)."""
    target = gssapi.Name(host.service_principal, gssapi.NameType.kerberos_principal)
    context = gssapi.SecurityContext(name=target, usage="initiate", flags=FLAGS)
    try:
        token = context.step()
    except gssapi.exceptions.GSSError as exc:
        raise _ticket_failure(exc, host) from None
    for _ in range(proto.MAX_AUTH_ROUNDS):
        proto.send(sock, proto.AUTH, {}, [token or b""])
        _, blobs = proto.expect(sock, proto.AUTH, proto.MAX_AUTH_TOKEN + 4096)
        if len(blobs) != 1:
            raise proto.ProtocolError("an AUTH frame without its token")
        try:
            token = context.step(blobs[0])
        except gssapi.exceptions.GSSError as exc:
            raise RemoteFailure(
                f"{host}: the server failed to prove who it is: {_short(exc)}"
            ) from None
        if context.complete:
            break
    else:
        raise RemoteFailure(f"{host}: the Kerberos handshake took too many rounds")
    if gssapi.RequirementFlag.mutual_authentication not in context.actual_flags:
        raise RemoteFailure(f"{host}: the server did not authenticate itself")
    return context


def _ticket_failure(exc: gssapi.exceptions.GSSError, host: Host) -> RemoteFailure:
    text = _short(exc)
    if isinstance(exc, gssapi.exceptions.ExpiredCredentialsError) or "expired" in text.lower():
        return RemoteFailure("your Kerberos ticket has expired: run kinit", tell_user=True)
    if (
        isinstance(exc, gssapi.exceptions.MissingCredentialsError)
        or "No Kerberos" in text
        or ("not found" in text and "ccache" in text.lower())
    ):
        return RemoteFailure("no Kerberos ticket: run kinit", tell_user=True)
    if "not found in Kerberos database" in text:
        return RemoteFailure(
            f"{host}: the KDC knows no principal {host.service_principal}: check JAILCC_HOSTS"
            " or your hosts file (;principal=...)",
            tell_user=True,
        )
    return RemoteFailure(f"{host}: Kerberos: {text}")


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
