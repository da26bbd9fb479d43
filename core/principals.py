"""What the root monitor and the LDAP helper share about who may compile over Kerberos: the
form of a principal name, and the two ways an authorization source can fail."""

from __future__ import annotations

import re

# "name@REALM": no whitespace, no second "@", no backslash escapes (MIT's way of putting odd
# characters into names): such principals are never allowed, rather than parsed cleverly.
_PRINCIPAL = re.compile(r"([^\s@\\\x00-\x1f\x7f]+)@([^\s@\\\x00-\x1f\x7f]+)")


class AuthorizationUnavailable(Exception):
    """The source cannot answer now (down, hung, broken): refuse the new connection."""


class AuthorizationConfigError(ValueError):
    """The configuration cannot work (bad file, URL, credentials, group): refuse to start."""


def split_principal(principal: str) -> tuple[str, str] | None:
    """(name, realm) of "name@REALM", or None for anything else."""
    m = _PRINCIPAL.fullmatch(principal)
    return (m.group(1), m.group(2)) if m else None
