"""The LDAP helper's process: `python -m jailcc.ldaphelper.serve`, started by jailccd's root
monitor (monitor/authz.py LdapHelperAuthorizer) as a uid of its own, with no capabilities and
no_new_privs. It talks to the directory; root only asks it questions. With --check it first
connects, binds and finds the group, and says the error if any of that fails.

On stdin, one JSON object a line: first the settings (LdapGroupAuthorizer's arguments, with
`password_fd` the password file root opened for us), then each question, a principal as a JSON
string. On stdout, one JSON object a line: {"ready": true} or {"error": why} for the settings
(then it exits), then {"allowed": bool} or {"unavailable": why} for each question. It exits
at the end of stdin.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from jailcc.principals import AuthorizationConfigError, AuthorizationUnavailable

from .groups import LdapGroupAuthorizer

MAX_LINE = 64 * 1024
SETTINGS = {
    "url", "base", "group", "realm", "bind", "bind_dn", "password_file", "password_fd",
    "cache_ttl", "timeout", "starttls",
}  # fmt: skip


def _say(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


def _read() -> Any:
    line = sys.stdin.readline(MAX_LINE)
    if not line:
        raise EOFError
    if not line.endswith("\n"):
        raise ValueError(f"a line longer than {MAX_LINE} bytes")
    return json.loads(line)


def main(argv: list[str]) -> int:
    logging.basicConfig(
        stream=sys.stderr, format="%(asctime)s jailccd-ldap %(levelname)s %(message)s"
    )
    try:
        settings = _read()
        if not isinstance(settings, dict) or not set(settings) <= SETTINGS:
            raise ValueError("settings must be an object of LdapGroupAuthorizer's arguments")
        authz = LdapGroupAuthorizer(**settings)
        if argv == ["--check"]:
            authz.check_config()
    except (EOFError, ValueError, TypeError) as exc:  # AuthorizationConfigError is a ValueError
        _say({"error": str(exc) if isinstance(exc, AuthorizationConfigError) else repr(exc)})
        return 2
    _say({"ready": True})
    while True:
        try:
            principal = _read()
        except EOFError:
            return 0
        except ValueError as exc:
            _say({"unavailable": f"a question that is not JSON: {exc}"})
            continue
        if not isinstance(principal, str):
            _say({"unavailable": "a question that is not a principal name"})
            continue
        try:
            _say({"allowed": authz.allowed(principal)})
        except AuthorizationUnavailable as exc:
            _say({"unavailable": str(exc)})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
