"""jailccd's config file: every option as a key (walked from the parser), the command line over
the file, errors naming file and key, --check-config, --version, and selftest's images."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BIN
from jailcc.monitor import config
from jailcc.monitor.cli import _configured_images
from jailcc.monitor.daemon import build_parser

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "jailccd.toml.example"


def sample(action: argparse.Action) -> tuple[object, list[str]]:
    """A value for the option as TOML would hold it, and the same as command-line words."""
    opt = action.option_strings[-1]
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return True, [opt]
    if action.choices is not None:
        one = list(action.choices)[-1]
    else:
        one = {int: 7, float: 2.5, None: "some/value"}[action.type]
    if isinstance(action, argparse._AppendAction):
        two = next(iter(action.choices)) if action.choices is not None else "other"
        return [one, two], [opt, str(one), opt, str(two)]
    return one, [opt, str(one)]


def toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return f'"{value}"' if isinstance(value, str) else repr(value)


def parse(tmp: Path, text: str, *argv: str) -> tuple[argparse.Namespace, dict[str, str]]:
    path = tmp / "jailccd.toml"
    path.write_text(text)
    return config.parse(build_parser(), ["--config", str(path), *argv])


def test_every_option_is_a_key_and_reads_as_its_flag(tmp_path):
    parser = build_parser()
    keys = config.keys(parser)
    options = {
        o[2:]
        for a in parser._actions
        if a.dest not in config.META_DESTS and a.dest not in ("help", "version")
        for o in a.option_strings
        if o.startswith("--")
    }
    assert set(keys) == options
    for name, key in keys.items():
        value, words = sample(key.action)
        from_file, sources = parse(tmp_path, f"{name} = {toml(value)}\n")
        from_flags, flag_sources = config.parse(build_parser(), ["--config", "", *words])
        from_file.config = from_flags.config = None
        assert vars(from_file) == vars(from_flags), name
        assert sources[key.action.dest] == config.FILE
        assert flag_sources[key.action.dest] == config.COMMAND_LINE


def test_the_command_line_overrides_the_file_and_replaces_its_lists(tmp_path):
    args, sources = parse(
        tmp_path,
        'jobs = 3\nallow-user = ["a", "b"]\nlisten = "0.0.0.0:3633"\ninsecure = true\n',
        "--jobs",
        "5",
        "--allow-user",
        "c",
    )
    assert (args.jobs, args.allow_user, args.listen, args.insecure) == (
        5,
        ["c"],
        "0.0.0.0:3633",
        True,
    )
    assert sources["jobs"] == sources["allow_user"] == config.COMMAND_LINE
    assert sources["listen"] == config.FILE and sources["socket"] == config.DEFAULT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bogus = 1\n", "unknown key 'bogus'"),
        ("allow_user = ['x']\n", "did you mean 'allow-user'"),
        ('jobs = "4"\n', "jobs: expects an integer"),
        ("jobs = true\n", "jobs: expects an integer"),
        ("ldap-cache-ttl = 'soon'\n", "ldap-cache-ttl: expects a number"),
        ("insecure = 1\n", "insecure: expects true or false"),
        ('allow-user = "root"\n', "allow-user: expects a list"),
        ("allow-user = [1]\n", "allow-user: expects a string"),
        ('log-level = "loud"\n', "log-level: expects one of"),
        ("jobs = \n", "not valid TOML"),
    ],
)
def test_errors_name_the_file_the_key_and_what_is_expected(tmp_path, text, expected):
    with pytest.raises(config.ConfigError) as err:
        parse(tmp_path, text)
    assert str(err.value).startswith(str(tmp_path / "jailccd.toml"))
    assert expected in str(err.value)


def test_a_named_file_must_exist_and_none_means_none(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read it"):
        config.parse(build_parser(), ["--config", str(tmp_path / "missing.toml")])
    for off in (["--config", ""], ["--no-config"]):
        args, sources = config.parse(build_parser(), off)
        assert config.config_path(args) is None and set(sources.values()) == {config.DEFAULT}


def test_the_example_file_covers_every_option_and_reads_uncommented(tmp_path):
    text = EXAMPLE.read_text()
    lines = [line[2:] for line in text.splitlines() if line.startswith("# ") and " = " in line]
    assert {line.split(" = ")[0] for line in lines} == set(config.keys(build_parser()))
    (tmp_path / "all.toml").write_text("\n".join(lines) + "\n")
    assert config.read(str(tmp_path / "all.toml"), build_parser())


def test_check_config_prints_every_option_and_where_it_came_from(tmp_path, gcc_image):
    path = tmp_path / "jailccd.toml"
    path.write_text(f'toolchain-image = ["{gcc_image}"]\nallow-user = ["root"]\njobs = 3\n')
    jailccd = str(BIN / "jailccd")
    done = subprocess.run(
        [jailccd, "--config", str(path), "--check-config", "--max-input", "64"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "jobs = 3    # file" in done.stdout
    assert "max-input = 64    # command line" in done.stdout
    assert 'log-level = "info"    # default' in done.stdout
    assert "# image gcc-12:" in done.stdout and "configuration ok" in done.stdout
    path.write_text('allow-user = ["root"]\ntoolchain-image = ["/nonexistent.img"]\n')
    bad = subprocess.run(
        [jailccd, "--config", str(path), "--check-config"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "/nonexistent.img does not exist" in bad.stderr
    path.write_text("jobs = 'many'\n")
    bad = subprocess.run(
        [jailccd, "--config", str(path), "--check-config"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and f"{path}: jobs: expects an integer" in bad.stderr


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--job-memory", "-5"], "--job-memory"),  # every connection then logged a traceback
        (["--max-input", "0"], "--max-input"),  # every job then refused
        (["--speed", "0"], "--speed"),
        (["--max-queue", "-1"], "--max-queue"),
        (["--metrics", "bogus"], "--metrics takes HOST:PORT"),
        (["--announce"], "--announce needs --listen"),
        (["--log-file", "/nonexistent/dir/x.log"], "--log-file"),
    ],
)
def test_check_config_finds_what_would_stop_or_break_the_server(tmp_path, gcc_image, option, words):
    """--check-config says "configuration ok" only for what jailccd then runs with: each of
    these passed the check, then stopped the start (a traceback, for the log file) or broke
    every connection."""
    base = ["--no-config", "--toolchain-image", str(gcc_image), "--allow-user", "root"]
    socket_path = str(tmp_path / "s.sock")
    for check in (["--check-config"], []):
        done = subprocess.run(
            [str(BIN / "jailccd"), *base, "--socket", socket_path, *option, *check],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode in (1, 2) and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_jailccd_refuses_an_image_dir_others_may_write_and_a_socket_path_that_is_a_file(
    tmp_path, gcc_image
):
    """The check used to pass an image directory that the launcher then refused, and a
    --socket naming a regular file had that file deleted (root unlinked it as a stale socket)."""
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(gcc_image, images / "gcc-12.img")
    images.chmod(0o777)
    jailccd = str(BIN / "jailccd")
    base = [jailccd, "--no-config", "--allow-user", "root", "--socket", str(tmp_path / "s.sock")]
    for check in (["--check-config"], []):
        done = subprocess.run(
            [*base, "--image-dir", str(images), *check], capture_output=True, text=True, timeout=60
        )
        assert done.returncode in (1, 2) and "writable by no one else" in done.stderr, done.stderr
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    done = subprocess.run(
        [jailccd, "--no-config", "--allow-user", "root", "--toolchain-image", str(gcc_image),
         "--socket", str(precious)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode in (1, 2) and "is not a socket" in done.stderr, done.stderr
    assert precious.read_text() == "keep me\n"


def test_selftest_and_mon_refuse_numbers_they_cannot_use():
    rounds = subprocess.run(
        [str(BIN / "jailccd"), "selftest", "--timing-rounds", "-1"], capture_output=True, text=True
    )
    assert rounds.returncode == 2 and "--timing-rounds must be at least 1" in rounds.stderr
    assert "Traceback" not in rounds.stderr
    interval = subprocess.run([str(BIN / "jailcc"), "mon", "--interval", "0"], capture_output=True)
    assert interval.returncode == 2 and b"seconds from 0.1" in interval.stderr


def test_versions():
    from jailcc import __version__

    for prog in ("jailccd", "jailcc-image", "jailcc"):
        done = subprocess.run([str(BIN / prog), "--version"], capture_output=True, text=True)
        assert done.stdout.strip() == f"{prog} {__version__}"
        # ...and each says so in its --help.
        helped = subprocess.run([str(BIN / prog), "--help"], capture_output=True, text=True)
        assert "--version" in helped.stdout, prog


def test_selftest_takes_its_images_from_the_config_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "b.img").write_bytes(b"")
    path = tmp_path / "jailccd.toml"
    path.write_text(f'toolchain-image = ["/x/a.img"]\nimage-dir = "{images}"\n')
    args = argparse.Namespace(config=str(path))
    assert _configured_images(args) == ["/x/a.img", str(images / "b.img")]
