"""Who may compile over TCP: an authenticated Kerberos principal, the full "user@REALM" that
GSSAPI gives, allowed by a principal list file or by membership of an LDAP group.

Fail closed. The realm is part of the identity: alice@OTHER.TEST is not alice@KRBTEST.COM, even
when the KDCs trust each other. Anything odd (a malformed name, an ambiguous directory entry) is
a refusal; a source that cannot answer now (LDAP down or hung, a list file broken by an edit)
raises AuthorizationUnavailable, and the server refuses the new connection with that reason.

The directory is asked by a helper of a uid of its own (ldaphelper/), never by root: libldap,
SASL and TLS parse bytes from the network. Root keeps the decision: it asks only about the
principal it authenticated itself, refuses other realms without asking, and takes nothing but
a yes or a no back, within the timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from jailcc.principals import AuthorizationConfigError, AuthorizationUnavailable, split_principal

from .unprivileged import start_unprivileged

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .kerberos import KerberosAcceptor

log = logging.getLogger("jailccd")
MAX_ANSWER = 4096
RUN_DIRS = ("/run/jailccd", "/run")
TGT_RETRY = 60.0  # seconds before another try when the KDC would not renew the helper's TGT
__all__ = ["AuthorizationConfigError", "AuthorizationUnavailable", "split_principal"]


class Authorizer(Protocol):
    def allowed(self, principal: str) -> bool: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class PrincipalListAuthorizer:
    """Principals listed in a file, one full "name@REALM" per line; "#" starts a comment. The
    file is read again whenever it changes (checked on every call: an open and an fstat); an
    edit that breaks it makes every call raise AuthorizationUnavailable until it is fixed, so
    that a typo never leaves someone allowed who was being removed."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._principals: frozenset[str] = frozenset()
        self._error: str | None = None
        try:
            self._refresh()
        except AuthorizationUnavailable as exc:
            raise AuthorizationConfigError(str(exc)) from None

    def describe(self) -> str:
        with self._lock:
            return f"the {len(self._principals)} principals listed in {self.path}"

    def close(self) -> None:
        pass

    def allowed(self, principal: str) -> bool:
        return principal in self._refresh()

    def _refresh(self) -> frozenset[str]:
        with self._lock:
            try:
                with open(self.path, encoding="utf-8") as f:
                    st = os.fstat(f.fileno())
                    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    if stamp != self._stamp:
                        self._stamp = stamp
                        self._error = None
                        try:
                            self._principals = self._parse(f.read())
                        except (ValueError, UnicodeDecodeError) as exc:
                            self._error = str(exc)
                            self._principals = frozenset()
                            log.error("principal list: %s", exc)
            except OSError as exc:
                self._stamp = None
                self._principals = frozenset()
                raise AuthorizationUnavailable(
                    f"cannot read principal list {self.path}: {exc.strerror}"
                ) from None
            if self._error is not None:
                raise AuthorizationUnavailable(self._error)
            return self._principals

    def _parse(self, text: str) -> frozenset[str]:
        principals = set()
        for number, line in enumerate(text.splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            if "*" in entry:
                problem = "wildcards are not supported"
            elif split_principal(entry) is None:
                problem = "not one full principal name (name@REALM)"
            else:
                principals.add(entry)
                continue
            raise ValueError(f"{self.path}:{number}: {problem}: {line.strip()!r}")
        return frozenset(principals)


class LdapHelperAuthorizer:
    """Members of an LDAP group (ldaphelper/groups.py has the rules), asked of the LDAP helper
    (ldaphelper/serve.py) running as `ids`, one question at a time; a helper that dies, or
    does not answer within the timeout, is killed and started again at the next question.
    For a GSSAPI bind the helper gets a ccache with a TGT for our service principal, made here
    from the keytab and made anew at half its life: the key itself never leaves root."""

    module = "jailcc.ldaphelper.serve"

    def __init__(
        self,
        settings: dict[str, Any],
        ids: tuple[int, int],
        *,
        password_file: str | None = None,
        kerberos: KerberosAcceptor | None = None,
        log_file: str | None = None,
    ) -> None:
        self.settings = settings  # LdapGroupAuthorizer's arguments, but the password's fd
        self.realm = str(settings["realm"])
        self.timeout = float(settings["timeout"])
        self.ids = ids
        self.password_file = password_file
        self.kerberos = kerberos
        # The helper's stderr: jailccd's log file (open for our life), else jailccd's stderr.
        self.log = open(log_file, "ab") if log_file else None  # noqa: SIM115
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._pending = b""
        self._ccache_dir: str | None = None
        self._renew_at = 0.0

    def describe(self) -> str:
        s = self.settings
        return (
            f"principals of {self.realm} in LDAP group {s['group']} under {s['base']} at"
            f" {s['url']} ({s['bind']} bind, asked as uid {self.ids[0]})"
        )

    def check_config(self) -> None:
        """Start the helper, which connects, binds and finds the group before it says it is
        ready: a wrong URL, credential, base or group stops jailccd at start-up."""
        with self._lock:
            try:
                self._start(check=True)
            except AuthorizationUnavailable as exc:
                raise AuthorizationConfigError(str(exc)) from None

    def allowed(self, principal: str) -> bool:
        parts = split_principal(principal)
        if parts is None or parts[1] != self.realm:
            return False  # not a name of this directory's users: no need to ask
        # Waiting for another thread's question counts against this one's timeout.
        if not self._lock.acquire(timeout=self.timeout):
            raise AuthorizationUnavailable(
                f"LDAP {self.settings['url']}: no answer within {self.timeout:g} s (server busy"
                " or hung)"
            )
        try:
            for _ in range(2):
                reused = self._child is not None and self._child.poll() is None
                if not reused:
                    self._start(check=False)
                elif self.kerberos is not None:
                    self._ccache()
                try:
                    answer = self._exchange(principal, self.timeout + 2)
                    break
                except ConnectionError as exc:  # it had died: once more, with a new one
                    if not reused:
                        raise AuthorizationUnavailable(f"LDAP helper: {exc}") from None
                except (OSError, ValueError) as exc:
                    raise AuthorizationUnavailable(f"LDAP helper: {exc}") from None
            if isinstance(answer.get("allowed"), bool):
                return answer["allowed"]
            if isinstance(answer.get("unavailable"), str):
                raise AuthorizationUnavailable(answer["unavailable"][:300])
            self._stop()
            raise AuthorizationUnavailable("the LDAP helper answered neither yes nor no")
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the helper and remove its ccache (also at exit: never a TGT left behind)."""
        locked = self._lock.acquire(timeout=self.timeout)
        try:
            self._stop()
            if self._ccache_dir is not None:
                shutil.rmtree(self._ccache_dir, ignore_errors=True)
                self._ccache_dir = None
            if self.log is not None:
                self.log.close()
        finally:
            if locked:
                self._lock.release()

    def _start(self, check: bool) -> None:
        """A new helper (caller holds _lock), given its settings; with check, it first makes
        sure the directory answers as configured."""
        self._stop()
        # Not our keytab's name, nor our ccache's: the helper gets a ccache of its own.
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("KRB5") or k == "KRB5_CONFIG"
        }
        if self.kerberos is not None:
            env["KRB5CCNAME"] = f"FILE:{self._ccache()}"
        settings, fds = dict(self.settings), []
        if self.password_file is not None:
            try:
                fds.append(os.open(self.password_file, os.O_RDONLY | os.O_CLOEXEC))
            except OSError as exc:
                raise AuthorizationUnavailable(
                    f"cannot read the LDAP password file {self.password_file}: {exc.strerror}"
                ) from None
            settings |= {"password_file": self.password_file, "password_fd": fds[0]}
        try:
            self._child = start_unprivileged(
                self.module,
                ["--check"] if check else [],
                *self.ids,
                pdeathsig=False,  # it may be started in a connection's thread: it goes at EOF
                pass_fds=fds,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.log,
                start_new_session=True,
            )
        except OSError as exc:
            raise AuthorizationUnavailable(str(exc)) from None
        finally:
            for fd in fds:
                os.close(fd)
        self._pending = b""
        try:  # Python's start-up, then (with check) connecting, binding, finding the group
            answer = self._exchange(settings, 2 * self.timeout + 10)
        except (OSError, ValueError) as exc:
            raise AuthorizationUnavailable(f"LDAP helper: {exc}") from None
        if answer.get("ready") is not True:
            self._stop()
            raise AuthorizationUnavailable(str(answer.get("error", "the LDAP helper failed"))[:500])

    def _exchange(self, message: object, wait: float) -> dict[str, Any]:
        """One line to the helper and one back within `wait` seconds; on anything else the
        helper goes (its own lines in our stderr say why) and the error is raised."""
        child = self._child
        assert child is not None and child.stdin is not None and child.stdout is not None
        try:
            child.stdin.write(json.dumps(message).encode() + b"\n")
            child.stdin.flush()
            answer = json.loads(self._read_line(child.stdout.fileno(), wait))
            if not isinstance(answer, dict):
                raise ValueError("an answer that is not an object")
            return answer
        except (OSError, ValueError):
            self._stop()
            raise

    def _read_line(self, fd: int, wait: float) -> bytes:
        deadline = time.monotonic() + wait
        with selectors.DefaultSelector() as ready:
            ready.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or not ready.select(left):
                    raise TimeoutError(f"no answer within {wait:g} s")
                data = os.read(fd, MAX_ANSWER)
                if not data:
                    raise ConnectionError("it exited")
                self._pending += data
                if len(self._pending) > MAX_ANSWER:
                    raise ValueError(f"an answer of more than {MAX_ANSWER} bytes")
        line, _, self._pending = self._pending.partition(b"\n")
        return line

    def _stop(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        for stream in (child.stdin, child.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]

    def _ccache(self) -> str:
        """The helper's ccache: a TGT from our keytab, made anew at half its life. Root writes
        it in a directory of root's, where the helper may open its file but add none (no
        symlink for root to follow). A KDC that does not answer leaves the old TGT while one
        exists (and is tried again a minute later)."""
        assert self.kerberos is not None
        if self._ccache_dir is None:
            # jailccd's runtime directory (systemd's RuntimeDirectory=), else a tmpfs anyway.
            run = next((d for d in RUN_DIRS if os.access(d, os.W_OK)), None)
            self._ccache_dir = tempfile.mkdtemp(prefix="jailccd-ldap-", dir=run)
            os.chmod(self._ccache_dir, 0o711)
            atexit.register(self.close)
        path = os.path.join(self._ccache_dir, "ccache")
        if os.path.exists(path) and time.monotonic() < self._renew_at:
            return path
        new = path + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(new)
        try:
            lifetime = self.kerberos.tgt_into(new)
            if os.geteuid() == 0:
                os.chown(new, *self.ids)
            os.replace(new, path)
            self._renew_at = time.monotonic() + lifetime / 2
        except (OSError, ValueError) as exc:
            if not os.path.exists(path):
                raise AuthorizationUnavailable(f"no TGT for the LDAP bind: {exc}") from None
            log.warning("the LDAP helper's TGT was not renewed: %s (again in a minute)", exc)
            self._renew_at = time.monotonic() + TGT_RETRY
        return path
