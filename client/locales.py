"""The user's locale as the compiler takes it: whether its diagnostics quote with UTF-8 marks
(gcc does when the character set that LC_ALL, LC_CTYPE or LANG names loads and is UTF-8), and
whether gcc would print them translated (a message catalog of gcc's for the language). A name
this machine has no locale for counts as "C", as for the compiler (its setlocale fails).

The proxy serves many clients: locales are loaded with newlocale(3), which touches no
process-wide state, and each name's answer is kept (locales change with packages, rarely)."""

from __future__ import annotations

import os
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

LOCALE_DIR = "/usr/share/locale"  # where gcc's catalogs are (Debian's gcc-N-locales)
_CODESET = 14  # nl_item CODESET (langinfo.h), as Python's locale.CODESET
_MASKS = {"LC_CTYPE": 1 << 0, "LC_MESSAGES": 1 << 5}
_known: dict[tuple[str, str], str | None] = {}
_lock = threading.Lock()


def setting(env: Mapping[str, str], category: str) -> str:
    """The locale name a program's setlocale(category, "") takes from env."""
    for name in ("LC_ALL", category, "LANG"):
        value = env.get(name)
        if value:
            return value
    return "C"


def codeset(name: str, category: str = "LC_CTYPE") -> str | None:
    """The character set of locale `name` for category, or None if it does not load here."""
    if name in ("C", "POSIX"):
        return "ANSI_X3.4-1968"
    key = (name, category)
    with _lock:
        if key in _known:
            return _known[key]
    found = _load(name, _MASKS[category])
    with _lock:
        _known[key] = found
    return found


def _load(name: str, mask: int) -> str | None:
    import ctypes

    if "/" in name or len(name) > 255:
        return None  # (a path: glibc would read a file of the user's choosing; not ours to)
    libc = ctypes.CDLL(None)
    libc.newlocale.restype = ctypes.c_void_p
    libc.newlocale.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p]
    libc.nl_langinfo_l.restype = ctypes.c_char_p
    libc.nl_langinfo_l.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.freelocale.argtypes = [ctypes.c_void_p]
    handle = libc.newlocale(mask, os.fsencode(name), None)
    if not handle:
        return None
    try:
        value = libc.nl_langinfo_l(_CODESET, handle)
        return value.decode("ascii", "replace") if value else None
    finally:
        libc.freelocale(handle)


def quotes_in_utf8(env: Mapping[str, str]) -> bool:
    """Whether the compiler's diagnostics use UTF-8 quotation marks in this environment."""
    found = codeset(setting(env, "LC_CTYPE"))
    return found is not None and found.upper().replace("-", "") == "UTF8"


def translated_diagnostics(env: Mapping[str, str]) -> str | None:
    """Why gcc would print its diagnostics translated here (a catalog of gcc's for the
    language LC_MESSAGES or LANGUAGE asks for), or None. The servers print them in English."""
    import glob

    if "LOCPATH" in env:
        return "LOCPATH is set: the locales are the user's own"
    name = setting(env, "LC_MESSAGES")
    if name in ("C", "POSIX") or codeset(name, "LC_MESSAGES") is None:
        return None  # messages in English, whatever LANGUAGE says (gettext's rule)
    languages = [lang for lang in env.get("LANGUAGE", "").split(":") if lang] or [name]
    for language in languages:
        for variant in _variants(language):
            if variant.startswith(("C.", "en")) or variant in ("C", "POSIX"):
                continue
            directory = os.path.join(LOCALE_DIR, variant, "LC_MESSAGES")
            if glob.glob(os.path.join(glob.escape(directory), "gcc*.mo")) or glob.glob(
                os.path.join(glob.escape(directory), "cpplib*.mo")
            ):
                return f"gcc's diagnostics are translated for {variant}"
    return None


def _variants(name: str) -> list[str]:
    """gettext's candidates for a locale name ll_CC.codeset@modifier, most specific first."""
    if "/" in name or name.startswith("."):
        return []
    base, _, modifier = name.partition("@")
    base = base.split(".", 1)[0]
    language = base.split("_", 1)[0]
    found = [name]
    for stem in dict.fromkeys([base, language]):
        if modifier:
            found.append(f"{stem}@{modifier}")
        found.append(stem)
    return list(dict.fromkeys(found))
