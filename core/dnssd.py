"""What a jailccd's DNS-SD announcement says: the service type `_jailcc._tcp.local.` and the TXT
record's format, written by the server (server/announce.py) and read by the client
(client/discovery.py), so that the two cannot disagree.

The TXT record carries what a proxy needs to choose a server before it connects:

    pv=2                        protocol version (jailcc.protocol's PROTOCOL_VERSION)
    principal=jailcc/h@REALM    the Kerberos service principal (empty: --insecure)
    slots=8                     slots configured now (lowered while the desktop owner is busy)
    free=5                      slots free now (updated as jobs start and end)
    id0=... id1=...             the compiler identities served, one key each (see encode_identity)

A TXT string is at most 255 bytes, so identities cannot share one value; one key per identity
also keeps each of them whole, which matching needs. The whole record is kept under
MAX_TXT_BYTES so that an announcement fits one packet on an Ethernet link.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jailcc.protocol import PROTOCOL_VERSION

SERVICE_TYPE = "_jailcc._tcp.local."
TXT_PROTOCOL = str(PROTOCOL_VERSION)  # "pv", the protocol version as the TXT record says it
# RFC 6763 6.2: keep the TXT record small enough for one packet with the other records.
MAX_TXT_BYTES = 1300
_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")


def encode_identity(identity: str) -> str:
    """A compiler identity as one TXT value, losslessly: "sha256:<64 hex>" becomes the 43
    characters of its digest in unpadded base64url (75 bytes down to 43); anything else is
    kept as is (it contains a ":", which base64url never does)."""
    match = _SHA256.fullmatch(identity)
    if match is None:
        if ":" not in identity:
            raise ValueError(f"not a compiler identity: {identity!r}")
        return identity
    return base64.urlsafe_b64encode(bytes.fromhex(match.group(1))).rstrip(b"=").decode()


def decode_identity(value: str) -> str:
    if ":" in value:
        return value
    try:
        digest = base64.urlsafe_b64decode(value + "=")
    except (binascii.Error, ValueError):
        raise ValueError(f"bad identity in TXT record: {value!r}") from None
    if len(digest) != 32:
        raise ValueError(f"bad identity in TXT record: {value!r}")
    return "sha256:" + digest.hex()


def txt_properties(
    principal: str, identities: Sequence[str], slots: int, free: int
) -> dict[str, str]:
    props = {"pv": TXT_PROTOCOL, "principal": principal, "slots": str(slots), "free": str(free)}
    for i, identity in enumerate(identities):
        props[f"id{i}"] = encode_identity(identity)
    size = sum(1 + len(k) + 1 + len(v.encode()) for k, v in props.items())
    if size > MAX_TXT_BYTES:
        raise ValueError(f"TXT record of {size} bytes exceeds {MAX_TXT_BYTES}: too many images")
    if any(len(k) + 1 + len(v.encode()) > 255 for k, v in props.items()):
        raise ValueError("a TXT string exceeds 255 bytes (principal too long?)")
    return props


@dataclass(frozen=True)
class TxtRecord:
    protocol: int | None  # None: missing or malformed, as for the numbers below
    principal: str
    identities: tuple[str, ...]
    slots: int | None
    free: int | None


def parse_txt(props: Mapping[str, str | None]) -> TxtRecord:
    """A received TXT record (keys lower-cased); identities that do not decode are skipped."""

    def number(key: str) -> int | None:
        value = props.get(key)
        return int(value) if value is not None and value.isdigit() else None

    ids = []
    for key in sorted((k for k in props if re.fullmatch(r"id\d+", k)), key=lambda k: int(k[2:])):
        value = props[key]
        if value:
            try:
                ids.append(decode_identity(value))
            except ValueError:
                continue
    principal = props.get("principal") or ""
    return TxtRecord(number("pv"), principal, tuple(ids), number("slots"), number("free"))
