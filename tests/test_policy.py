"""The compiler policy's exact-debug-info transplant, on real gcc output and on forgeries."""

from __future__ import annotations

import re
import subprocess

import pytest
from jailcc.server.compiler_policy import TransplantError, transplant_debug_strings

SOURCE = b"""#include <stdio.h>
#define TWICE(x) ((x) * 2)
/* c */ static int f(int a) { return TWICE(a); }
int main(void) { printf("%d\\n", f(
    3)); return 0; }
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("policy")
    (tmp / "m.c").write_bytes(SOURCE)
    flags = ["-g", "-O2"]

    def gcc(*args: str) -> None:
        subprocess.run(["gcc-12", *flags, *args], cwd=tmp, check=True, capture_output=True)

    gcc("-S", "m.c", "-o", "local.s")
    gcc("-E", "-fdirectives-only", "m.c", "-o", "m.i")
    gcc("-fdirectives-only", "-S", "m.i", "-o", "a.s")
    gcc("-nostdinc", "-x", "c", "-S", "m.i", "-o", "b.s")
    return {n: (tmp / f"{n}.s").read_text() for n in ("local", "a", "b")}


def test_the_transplant_gives_the_local_assembly(compiled: dict[str, str]) -> None:
    assert compiled["a"] != compiled["local"]  # the producer records -fdirectives-only
    assert transplant_debug_strings(compiled["a"], compiled["b"]) == compiled["local"]


def test_a_second_differing_string_is_refused(compiled: dict[str, str]) -> None:
    forged = compiled["b"].replace('.string\t"main"', '.string\t"evil"', 1)
    assert forged != compiled["b"]
    with pytest.raises(TransplantError, match="2 debug strings differ"):
        transplant_debug_strings(compiled["a"], forged)


def test_a_producer_differing_otherwise_is_refused(compiled: dict[str, str]) -> None:
    forged = compiled["b"].replace(" -O2", " -O3", 1)
    with pytest.raises(TransplantError, match="more than -fdirectives-only"):
        transplant_debug_strings(compiled["a"], forged)


def test_missing_or_relabelled_strings_are_refused(compiled: dict[str, str]) -> None:
    with pytest.raises(TransplantError, match=r"exactly one \.debug_str"):
        transplant_debug_strings(compiled["a"], "\t.text\n")
    label = re.search(r"^(\.LASF\d+):$", compiled["b"], re.M).group(1)
    relabelled = compiled["b"].replace(f"{label}:", ".LASF99999:", 1)
    assert relabelled != compiled["b"]
    with pytest.raises(TransplantError, match="label"):
        transplant_debug_strings(compiled["a"], relabelled)
