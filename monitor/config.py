"""jailccd's configuration file (/etc/jailcc/jailccd.toml), read as the command line's twin.

Every key is a long option of jailccd's argparse parser, without its leading dashes and
spelled with dashes as on the command line (`toolchain-image`, `allow-user`); its value is what
the option takes: a string, an integer or a float as the option converts it, true/false for a
flag, a list for a repeatable option. The mapping is derived from the parser's own actions, so
every option, today's and tomorrow's, is a key with no second list to keep in sync.

The command line wins: an option given there replaces the file's value; for a repeatable
option, the command line's list replaces the file's list (they are not merged).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass
from typing import Any

DEFAULT_CONFIG = "/etc/jailcc/jailccd.toml"
# The options that choose or check the file itself: never keys in it.
META_DESTS = frozenset({"config", "check_config"})

DEFAULT, FILE, COMMAND_LINE = "default", "file", "command line"


class ConfigError(ValueError):
    """The file is unreadable, not TOML, or holds a key or value jailccd does not take."""


@dataclass(frozen=True)
class Key:
    """One option as a key of the file."""

    name: str  # e.g. "allow-user"
    action: argparse.Action

    @property
    def repeatable(self) -> bool:
        return isinstance(self.action, argparse._AppendAction)

    @property
    def flag(self) -> bool:
        return isinstance(self.action, argparse._StoreTrueAction | argparse._StoreFalseAction)


def keys(parser: argparse.ArgumentParser) -> dict[str, Key]:
    """The file's keys by name, walked from the parser's actions."""
    found: dict[str, Key] = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        if action.dest in META_DESTS or not action.option_strings:
            continue
        if not isinstance(
            action,
            argparse._StoreAction
            | argparse._StoreTrueAction
            | argparse._StoreFalseAction
            | argparse._AppendAction,
        ) or action.nargs not in (None, 0):
            # A new kind of option needs a rule here before the file can carry it.
            raise TypeError(f"{action.option_strings[0]}: no config file rule for {action}")
        long = next(o for o in action.option_strings if o.startswith("--"))
        found[long[2:]] = Key(long[2:], action)
    return found


def read(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's values by argparse dest, each converted and checked as the option would be.
    ConfigError names the file, the key and what is expected."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    known = keys(parser)
    values: dict[str, Any] = {}
    for name, raw in table.items():
        key = known.get(name)
        if key is None:
            hint = f"; did you mean {name.replace('_', '-')!r}?" if "_" in name else ""
            raise ConfigError(
                f"{path}: unknown key {name!r} (keys are jailccd's long options without the"
                f" dashes, see jailccd --help){hint}"
            )
        values[key.action.dest] = _value(path, key, raw)
    return values


def _value(path: str, key: Key, raw: object) -> object:
    where = f"{path}: {key.name}"
    if key.flag:
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}: expects true or false, got {raw!r}")
        return raw if isinstance(key.action, argparse._StoreTrueAction) else not raw
    if key.repeatable:
        if not isinstance(raw, list):
            raise ConfigError(f"{where}: expects a list, e.g. {key.name} = [...], got {raw!r}")
        return [_scalar(where, key.action, item) for item in raw]
    return _scalar(where, key.action, raw)


def _scalar(where: str, action: argparse.Action, raw: object) -> object:
    kind = action.type
    if kind is int:
        ok, expected = isinstance(raw, int) and not isinstance(raw, bool), "an integer"
    elif kind is float:
        ok, expected = isinstance(raw, int | float) and not isinstance(raw, bool), "a number"
    else:
        ok, expected = isinstance(raw, str), "a string"
    if not ok:
        raise ConfigError(f"{where}: expects {expected}, got {raw!r}")
    try:
        value = raw if kind is None else kind(raw)  # type: ignore[operator]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(repr, action.choices))
        raise ConfigError(f"{where}: expects one of {choices}, got {raw!r}")
    return value


def parse(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[argparse.Namespace, dict[str, str]]:
    """The command line over the config file over the defaults, and where each option's value
    came from (DEFAULT, FILE or COMMAND_LINE), by dest. The parser needs a --config option
    (dest "config"); ConfigError for a bad file."""
    args = parser.parse_args(argv)
    given = _given(parser, argv)
    path = config_path(args)
    from_file = read(path, parser) if path else {}
    sources: dict[str, str] = {}
    for key in keys(parser).values():
        dest = key.action.dest
        if dest in given:
            sources[dest] = COMMAND_LINE
        elif dest in from_file:
            setattr(args, dest, from_file[dest])
            sources[dest] = FILE
        else:
            sources.setdefault(dest, DEFAULT)
    return args, sources


def config_path(args: argparse.Namespace) -> str | None:
    """The file to read: the one named (which must then exist), or the default if it exists."""
    if args.config is None:
        return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None
    return args.config or None  # --config '' (or --no-config): none


def _given(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests the command line sets: parsed once more with every default suppressed."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in saved:
            action.default = default


def describe(
    args: argparse.Namespace, sources: dict[str, str], parser: argparse.ArgumentParser
) -> str:
    """Every option with its value and where it came from, one a line, as the file spells it."""
    lines = []
    for key in keys(parser).values():
        value, source = getattr(args, key.action.dest), sources[key.action.dest]
        if value is None:
            lines.append(f"# {key.name} is unset    # {source}")
        else:
            lines.append(f"{key.name} = {_toml(value)}    # {source}")
    return "\n".join(lines)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)
