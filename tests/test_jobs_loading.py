"""The jail-side job code (jailcc.jobs) reaches the jails without root ever running it: the
launcher reads its source, each jail's init imports it from memory once unprivileged
(sandbox/jail_code.py), and a real jail serves a compile through the jobs handler."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires_root
from jailcc import jobs
from jailcc.sandbox.jail_code import JailCode, JailCodeError, import_libraries
from jailcc.sandbox.launcher import JAIL_INIT_CODE

PRINT_MODULES = "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
# The launcher's start-up, as far as modules go: its own imports, then the jail libraries.
LAUNCHER_START = (
    "import sys\n"
    "from jailcc.sandbox import launcher\n"
    "from jailcc.sandbox.jail_code import import_libraries\n"
    "import_libraries([*launcher.INIT_STDLIB, *sys.argv[1:]])"
)
# Served to the jails, or never the launcher's: the client <-> server protocol parses what
# clients send, so root never runs it (the framing under it, jailcc.wire, is the launcher's own).
NOT_IN_THE_LAUNCHER = (
    "jailcc.sandbox.jail_init",  # the jail's init runs only in the jail, unprivileged
    "jailcc.jobs",
    "jailcc.options",
    "jailcc.protocol",
    "jailcc.server",
    "jailcc.client",
)


def modules_after(code: str, *args: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + PRINT_MODULES, *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(json.loads(out))


def is_forbidden(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in NOT_IN_THE_LAUNCHER)


def test_jail_modules_are_exactly_what_the_jobs_need_beyond_the_launcher() -> None:
    launcher = modules_after(LAUNCHER_START, *jobs.JAIL_LIBRARIES)
    assert not [m for m in launcher if is_forbidden(m)]
    jail = modules_after("import jailcc.jobs.session")
    # Anything else the jobs import must come from the launcher: nothing is loaded after chroot.
    assert jail - launcher == {*JAIL_INIT_CODE, *jobs.JAIL_MODULES}
    assert [m for m in jobs.JAIL_MODULES if m.startswith("jailcc.jobs")][
        -1
    ] == "jailcc.jobs.session"


def test_jail_code_serves_modules_from_memory(tmp_path: Path) -> None:
    package = tmp_path / "jailcc_test_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("LOADED = []\n")
    (package / "job.py").write_text(
        "from __future__ import annotations\nfrom . import LOADED\nLOADED.append(__name__)\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        code = JailCode.read(["jailcc_test_pkg", "jailcc_test_pkg.job"])
        assert "jailcc_test_pkg" not in sys.modules  # read, not run
        for path in package.iterdir():
            path.unlink()  # as after the jail's chroot: the files are out of reach
        package.rmdir()
        code.load()
        import jailcc_test_pkg  # type: ignore[import-not-found]

        assert jailcc_test_pkg.LOADED == ["jailcc_test_pkg.job"]
        assert sys.modules["jailcc_test_pkg.job"].__spec__.loader is code
    finally:
        sys.path.remove(str(tmp_path))
        if code in sys.meta_path:
            sys.meta_path.remove(code)
        for name in ("jailcc_test_pkg.job", "jailcc_test_pkg"):
            sys.modules.pop(name, None)


def test_jail_code_refuses_what_it_must_not_serve() -> None:
    with pytest.raises(JailCodeError, match="has imported it"):
        JailCode.read(["jailcc.sandbox.jail_code"])  # imported already: it would run it
    with pytest.raises(JailCodeError, match="no Python source"):
        JailCode.read(["jailcc.no_such_module"])
    with pytest.raises(JailCodeError, match="list its package"):
        JailCode.read(["jailcc_no_such_package.session"])
    with pytest.raises(JailCodeError, match="never imported by the launcher"):
        import_libraries(["jailcc.options"])


# -- a real launcher and jail ------------------------------------------------------------------

SOURCE = b"int answer(void) { return 6 * 7; }\n"


@requires_root
def test_launcher_never_imports_jobs_and_a_jail_compiles_through_them(
    gcc_image: Path, tmp_path: Path
) -> None:
    from jailcc.sandbox.api import Sandbox
    from jailcc.selftest.jobs_probe import compile_through_jobs

    # The launcher's interpreter reports every module it imports (-X importtime), to a file:
    # the jails' inits have /dev/null for stderr by the time they import anything.
    log = tmp_path / "launcher-imports.log"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -X importtime "$@" 2>>{log}\n')
    python.chmod(0o755)
    source = tmp_path / "answer.c"
    source.write_bytes(SOURCE)
    preprocessed = subprocess.run(
        ["gcc-12", "-E", str(source)], check=True, capture_output=True
    ).stdout
    (tmp_path / "answer.i").write_bytes(preprocessed)
    subprocess.run(["gcc-12", "-O2", "-c", "answer.i", "-o", "host.o"], cwd=tmp_path, check=True)
    with (
        Sandbox(
            {"gcc-12": str(gcc_image)},
            jail_modules=jobs.JAIL_MODULES,
            jail_libraries=jobs.JAIL_LIBRARIES,
            python=str(python),
        ) as sandbox,
        sandbox.create_jail("gcc-12") as jail,
    ):
        report = compile_through_jobs(jail, "/usr/bin/gcc-12", "gcc", str(tmp_path), preprocessed)
    assert report["exit_code"] == 0, report["stderr"]
    host_object = (tmp_path / "host.o").read_bytes()
    assert report["object_sha256"] == hashlib.sha256(host_object).hexdigest()
    imported = [
        line.rsplit("|", 1)[-1].strip()
        for line in log.read_text().splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert "jailcc.sandbox.jail_code" in imported and "gssapi.raw" in imported
    assert [m for m in imported if is_forbidden(m)] == []


@requires_root
def test_a_jail_without_its_libraries_fails_loudly(gcc_image: Path) -> None:
    """Job code that needs what the launcher did not load breaks the jail's set-up, with the
    reason, instead of a connection later."""
    from jailcc.sandbox.api import Sandbox, SandboxError

    with (
        Sandbox({"gcc-12": str(gcc_image)}, jail_modules=jobs.JAIL_MODULES, warm=0) as sandbox,
        # (the first of JAIL_LIBRARIES that the jobs import, in JAIL_MODULES' order)
        pytest.raises(SandboxError, match=r"No module named '(hashlib|gssapi)'"),
    ):
        sandbox.create_jail("gcc-12")


@requires_root
def test_the_launcher_does_not_start_without_a_jail_module_file(gcc_image: Path) -> None:
    from jailcc.sandbox.api import Sandbox, SandboxError

    modules = [*jobs.JAIL_MODULES, "jailcc.jobs.no_such_module"]
    with pytest.raises(SandboxError, match=r"jailcc\.jobs\.no_such_module: no Python source"):
        Sandbox({"gcc-12": str(gcc_image)}, jail_modules=modules)
