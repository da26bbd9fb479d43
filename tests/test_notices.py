"""Why a build compiles locally is said once per build, without JAILCC_VERBOSE: a build whose
servers cannot be reached hears it on its first job and then compiles on in silence, with
results identical to local compiles."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from conftest import BIN, requires_root
from jailcc.client.proxy import Notices
from jailcc.client.remote import RemoteFailure

JAILCC = str(BIN / "jailcc")


def test_each_reason_is_told_once_per_build() -> None:
    notices = Notices()
    notices.BUILD_GAP = 0.2
    unreachable = RemoteFailure("no jailcc server could be reached", True, "unreachable")
    gcc_image = RemoteFailure("s1 has no toolchain image for gcc-12", True, "image")
    clang_image = RemoteFailure("s1 has no toolchain image for clang-16", True, "image")
    notices.job_started()
    assert notices.tell(unreachable) and notices.tell(gcc_image) and notices.tell(clang_image)
    notices.job_ended()
    notices.job_started()
    assert not notices.tell(unreachable) and not notices.tell(gcc_image)
    notices.job_ended()
    time.sleep(0.3)  # idle for longer than the gap: the next job starts a new build
    notices.job_started()
    assert notices.tell(unreachable)


@requires_root
def test_unreachable_servers_are_named_once_with_the_fix(tmp_path: Path) -> None:
    for n in range(3):
        (tmp_path / f"f{n}.c").write_text(f"int f{n}(void) {{ return {n}; }}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("JAILCC_VERBOSE", "JAILCC_PROXY")}
    env["JAILCC_HOSTS"] = f"unix:{tmp_path}/nobody-listens.sock"
    said = []
    try:
        # Started first: on a loaded machine a proxy started by the first compile could come
        # up only after all three had compiled on their own, and none would have been told.
        subprocess.run([JAILCC, "proxy", "start"], env=env, capture_output=True, check=True)
        for n in range(3):
            proc = subprocess.run(
                [JAILCC, "gcc-12", "-c", f"f{n}.c", "-o", f"f{n}.o"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
            )
            assert proc.returncode == 0, proc.stderr
            said.append(proc.stderr)
            local = subprocess.run(
                ["gcc-12", "-c", f"f{n}.c", "-o", f"local{n}.o"], cwd=tmp_path, check=True
            )
            assert local.returncode == 0
            assert (tmp_path / f"f{n}.o").read_bytes() == (tmp_path / f"local{n}.o").read_bytes()
    finally:
        subprocess.run([JAILCC, "proxy", "stop"], env=env, capture_output=True)
    # Once: by the proxy, on the first job it serves (the very first compile of a build may be
    # the client's own while the proxy starts, and that one keeps quiet).
    told = [s for s in said if "no jailcc server could be reached" in s]
    assert len(told) == 1 and said.count("") == 2, said
    assert "jailcc hosts" in told[0]  # what to check, not only what failed
