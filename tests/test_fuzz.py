"""A bounded run of the coverage-guided fuzzer (tests/fuzz/fuzz_frames.py) over each parser a
peer's bytes reach, starting from the corpus in tests/fuzz/corpus. The run is short (set
JAILCC_FUZZ_SECONDS for a longer one); any exception a parser is not meant to raise fails it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent / "fuzz" / "fuzz_frames.py"
SECONDS = int(os.environ.get("JAILCC_FUZZ_SECONDS", "10"))


@pytest.mark.parametrize("target", ["preauth", "decode", "sealed", "job", "wire", "readlog"])
def test_fuzz_target_finds_no_crash(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = HARNESS.parent / "corpus" / target
    assert any(corpus.iterdir()), f"no seeds in {corpus}"
    found = tmp_path / "found"  # new inputs go here, not into the repository's corpus
    found.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            target,
            f"-max_total_time={SECONDS}",
            "-timeout=10",  # seconds for one input: a hang is a finding too
            "-rss_limit_mb=1024",
            f"-artifact_prefix={tmp_path}/",
            str(found),
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "DONE" in proc.stderr  # libFuzzer ran to its time limit
