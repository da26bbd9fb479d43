"""scripts/root-loc: the lines of code that can run as root (issue 12: shrink what runs as root),
checked against a ceiling, and its closure rules checked on a small package of its own."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent
SCRIPT = TOP / "scripts" / "root-loc"

# The root figure (the union over every root process) must only go down: lower this ceiling when
# code leaves root, never raise it. 6924 before the privilege split (issue 12); 4994 once the
# selftest's client left root (the per-user blob stores had added 129 lines to the launcher),
# 4869 once the images were read as the service's uid (root keeps only their compilers), 4437
# once the selftest's probes left, 4373 once the LDAP lookups went to a helper of their own
# (4379 with its lines in jailccd's --log-file); 4390 with noexec work dirs and /tmp (what a
# job writes never runs: the selftest's probes get an executable work dir by name), 4397 with
# frames read as their bytes come (not allocated at their declared size), 4406 with the
# --max-connections-per-user option, 4405 once kept jails were filed by how their user was
# identified, 4406 with --log-peer-lines' help saying what an authenticated peer gets, 4409
# once a stop (SIGTERM) with connections open was told apart from jails that broke, 4423
# once --check-config caught the numbers, --metrics, --announce and --log-file that stopped
# the start or broke every connection, 4429 once it also refused an image directory others may
# write and a --socket that names something other than a socket (root deleted it), 4432 with
# the default image directory checked as well, 4437 once the monitor watched a jail whose job
# waits for a slot (a client gone meanwhile frees its place in the queue), 4463 once root
# sealed a status answer or refusal itself (the context left root only for a jail), took
# only connections its own Unix socket accepted, checked an image's owner and mode, and
# failed closed on a main-channel request it could not handle or a launcher reply out of
# step, 4466 once the selftest checked that the jail's init runs under its seccomp filter,
# 4468 once root told the network service its spawn helper (whose filter it takes on), 4479
# once the monitor withdrew a queued job's question when its jail gave the job up, and the
# image file's checks moved onto the descriptor the loop device reads (start images too),
# 4481 once a killed network service was told from one that could not start, 4479 once a
# stop that reached the children first (systemd signals the whole unit) counted as a stop,
# 4480 with a job's idle limit among the run limits, 4507 with a memory limit for all jails
# together (--jails-memory: outside systemd nothing else bounded them), 4518 once jailccd
# raised its descriptor limit and a monitor out of descriptors failed one connection, not all,
# 4535 with --user-memory (its option, and the jail's "reserve" question relayed), 4543 once
# a JSON header's values were counted before it was parsed (wire.py, which root uses too).
ROOT_LOC_CEILING = 4543


def _load_root_loc():
    spec = importlib.util.spec_from_file_location("root_loc", TOP / "scripts" / "root_loc.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["root_loc"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


root_loc = _load_root_loc()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def report() -> dict:
    proc = _run("--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_root_figure_stays_under_its_ceiling(report: dict) -> None:
    figure = report["union"]["lines"]
    assert 1000 < figure <= ROOT_LOC_CEILING, (
        f"the root figure is {figure}, over the ceiling {ROOT_LOC_CEILING}: move code out of root"
        " (scripts/root-loc shows which modules) rather than raising the ceiling"
    )


def test_max_fails_only_over_the_figure(report: dict) -> None:
    figure = report["union"]["lines"]
    ok = _run("--max", str(figure))
    assert ok.returncode == 0, ok.stderr
    assert f"root figure (union): {figure} lines" in ok.stdout
    over = _run("--max", str(figure - 1))
    assert over.returncode == 1
    assert "exceeds" in over.stderr


def test_known_modules_in_the_closures(report: dict) -> None:
    processes = {p["name"]: p for p in report["processes"]}
    launcher = processes["launcher"]["modules"]
    for module in ("jailcc.sandbox.launcher", "jailcc.sandbox.privileges"):
        assert module in launcher
    jailccd = processes["jailccd"]["modules"]
    assert "jailcc.monitor.daemon" in jailccd  # imported only inside cli.py's functions
    assert "jailcc.monitor.kerberos" in jailccd  # imported only inside daemon.py's functions
    # Never as root: the client, the compiler-aware job code (jails load it from memory after
    # dropping privileges), and the network service, which parses what peers send.
    never = {
        "jailcc.client",
        "jailcc.options",
        "jailcc.jobs.session",
        "jailcc.jobs.compiler_policy",
    }
    never |= {"jailcc.server", "jailcc.selftest"}  # the selftest's probes: a uid of their own
    never |= {"jailcc.ldaphelper"}  # the directory's answers are parsed by a uid of their own
    for process in report["processes"]:
        found = [
            m for m in process["modules"] if any(m == n or m.startswith(n + ".") for n in never)
        ]
        assert not found, (process["name"], found)
    assert "sandbox/spawn.c" in report["union"]["c_not_counted"]
    assert {"gssapi", "prctl"} <= set(report["union"]["third_party"])
    assert not {"os", "ast", "jailcc"} & set(report["union"]["third_party"])
    assert not {"ldap", "ldapurl"} & set(report["union"]["third_party"])  # libldap, SASL, TLS


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_closure_rules_on_a_package_of_its_own(tmp_path: Path) -> None:
    # demo -> src/, demo.sub -> elsewhere/: package-dir folders that are not named as packages.
    dirs = {"demo": tmp_path / "src", "demo.sub": tmp_path / "elsewhere"}
    _write(tmp_path / "src" / "__init__.py", "")
    _write(
        tmp_path / "src" / "main.py",
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from . import near\n"
        "from .sub import leaf as _leaf\n"
        "if TYPE_CHECKING:\n"
        "    from . import typeonly\n"
        "    import notinstalled\n"
        "else:\n"
        "    import json\n"
        "def later():\n"
        "    from .lazy import thing\n"
        "    import requests.adapters\n",
    )
    _write(tmp_path / "src" / "near.py", "X = 1\n")
    _write(tmp_path / "src" / "lazy.py", "thing = build('tool.c')\n")
    _write(tmp_path / "src" / "tool.c", "int main(void) { return 0; }\n")
    _write(tmp_path / "src" / "typeonly.py", "Y = 2\n")
    _write(tmp_path / "src" / "unused.py", "Z = 3\n")
    _write(tmp_path / "elsewhere" / "__init__.py", "")
    _write(tmp_path / "elsewhere" / "leaf.py", "from ..deep.bottom import W\n")
    _write(tmp_path / "src" / "deep" / "__init__.py", "")
    _write(tmp_path / "src" / "deep" / "bottom.py", "W = 4\n")

    found = root_loc.closure(["demo.main"], dirs)
    assert set(found.modules) == {
        "demo",
        "demo.main",
        "demo.near",
        "demo.lazy",  # imported inside a function: still runs when called
        "demo.sub",  # a parent package's __init__ runs too
        "demo.sub.leaf",
        "demo.deep",
        "demo.deep.bottom",  # `..` from demo.sub.leaf is demo
    }
    assert found.third_party == {"requests"}  # not os, json, typing; not the TYPE_CHECKING one
    assert found.c_sources == {tmp_path / "src" / "tool.c"}
    with pytest.raises(SystemExit):
        root_loc.closure(["demo.missing"], dirs)

    process = root_loc.RootProcess("demo", ("demo.main",), "test")
    measured = root_loc.measure(process, dirs, top=tmp_path)
    assert measured["c_counted"] == {"src/tool.c": 1}  # not in C_NOT_ROOT: counted
    assert measured["lines"] == sum(measured["modules"].values()) + 1


def test_lines_counted() -> None:
    source = (
        '"""Module docstring,\n\non three lines."""\n'
        "\n"
        "# a comment\n"
        "import os  # code with a comment\n"
        "\n"
        "def f():\n"
        '    """Function docstring."""\n'
        "    text = '''a string\n"
        "\n"
        "    that is code'''\n"
        "    return text\n"
    )
    # import, def, and the string's two non-blank lines, return
    assert root_loc.python_lines(source) == 5
    assert root_loc.c_lines("/* a\n * comment */\nint x;  // y\n\n// z\nint main(void);\n") == 2
