"""The tree job's soundness check (client/tree.py check_reads, check_misses) against its plain
definition, one file and one place at a time, on random trees: the check asks the file system
per directory with set operations, and must say exactly what the definition says."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from jailcc.client import includes
from jailcc.client.includes import COMPUTED, IncludeAnalyzer
from jailcc.client.remote import RemoteFailure
from jailcc.client.tree import check_misses, check_reads

NAMES = ["a.h", "b.h", "limits.h", "sys/t.h", "sys/u.h", "x/y.h", "c.h"]


def defined_reads(tree_job, cwd: str, reads, analyzer: IncludeAnalyzer) -> None:
    """Each file read is this machine's, and for each, no earlier place of this machine's
    search (an earlier search directory, or the directory of a project file read that
    quote-includes its name) holds a file of that name the jail did not read too, nor had
    there (shipped in the tree, or in the job's image list by the path looked up)."""
    for name, digest in reads:
        ours = analyzer.digests([os.path.join(cwd, name)])[0]
        if not digest.startswith("sha256:") or ours != digest[7:]:
            raise RemoteFailure("differs")
    read = {os.path.normpath(os.path.join(cwd, name)) for name, _ in reads}
    images = {path for path, _ in tree_job.header["image"]}
    search = [d.rstrip("/") for d in tree_job.analysis.search]
    quoting = [
        (os.path.dirname(p), analyzer.quote_includes(p)) for p in read if p in tree_job.shipped
    ]
    for path in read:
        for i, d in enumerate(search):
            if not path.startswith(d + "/"):
                continue
            rel = path[len(d) + 1 :]
            includers = {e for e, names in quoting if names is None or rel in names}
            forced = "-include" in tree_job.header["args"]
            first = 0 if forced else first_place_looked(rel, read, search, analyzer)
            for e in (*includers, *search[first:i]):
                candidate = os.path.normpath(os.path.join(e, rel))
                had = candidate in tree_job.shipped or os.path.join(e, rel) in images
                if e != d and candidate not in read and not had and os.path.isfile(candidate):
                    raise RemoteFailure("shadowed")


def first_place_looked(rel: str, read, search, analyzer: IncludeAnalyzer) -> int:
    """Where in the search the lookups of rel began: after the first search directory that
    holds the file asking, when every file read names rel only in an #include_next from a
    file in the search; else at the start."""
    first = None
    for path in read:
        for include in analyzer.includes_of(path):
            if include.kind == COMPUTED:
                return 0
            if os.path.normpath(include.text) != rel:
                continue
            holding = [j for j, d in enumerate(search) if path.startswith(d + "/")]
            if not include.next or not holding:
                return 0
            first = holding[0] + 1 if first is None else min(first, holding[0] + 1)
    return first or 0


def defined_misses(cwd: str, misses, analyzer: IncludeAnalyzer) -> None:
    for name in misses:
        if os.path.isfile(os.path.normpath(os.path.join(cwd, name))):
            raise RemoteFailure("found here")


def verdict(check, *args) -> str:
    try:
        check(*args)
    except RemoteFailure:
        return "local"
    return "remote"


def random_case(rnd: random.Random, root: Path):
    """A project, search directories and a jail's answer: files read (their names spelt
    relative or absolute), which of them were shipped, names looked for in vain."""
    dirs = [root / f"d{k}" for k in range(rnd.randint(1, 5))]
    project = root / "proj"
    contents: dict[Path, str] = {}
    for d in (*dirs, project, project / "sub"):
        d.mkdir(parents=True, exist_ok=True)
        for name in NAMES:
            if rnd.random() < 0.3:
                path = d / name
                path.parent.mkdir(exist_ok=True)
                text = "".join(
                    f'#include{rnd.choice(("", "", "_next"))} "{q}"\n'
                    for q in rnd.sample(NAMES, rnd.randint(0, 3))
                )
                if rnd.random() < 0.05:
                    text += "#include COMPUTED\n"
                path.write_text(text)
                contents[path] = text
    search = [str(d) for d in dirs]
    read = rnd.sample(sorted(contents), rnd.randint(0, len(contents)))
    reads = [
        [
            os.path.relpath(p, project) if rnd.random() < 0.5 else str(p),
            "sha256:" + hashlib.sha256(contents[p].encode()).hexdigest(),
        ]
        for p in read
    ]
    # Shipped: most project files read, some not read; the image list: some of the search
    # directories' files the jail did not read, by the path a lookup there opens.
    shipped = frozenset(str(p) for p in contents if rnd.random() < (0.6 if p in read else 0.2))
    image = [
        [str(p), "sha256:" + hashlib.sha256(contents[p].encode()).hexdigest()]
        for p in contents
        if str(p) not in shipped and p.parent.name != "proj" and rnd.random() < 0.2
    ]

    def spelt(path: str) -> str:
        way = rnd.randrange(5)
        if way == 0:
            return os.path.relpath(path, project)
        if way == 1:
            return "./" + os.path.relpath(path, project)
        if way == 2:
            return path.replace(str(root), f"{root}/./proj/..")
        if way == 3:
            return os.path.dirname(path) + "/."
        return path.replace("/", "//")

    places = [*dirs, project, project / "sub"]
    misses = [spelt(f"{rnd.choice(places)}/{rnd.choice(NAMES)}") for _ in range(rnd.randint(0, 4))]
    args = ["-include", "b.h"] if rnd.random() < 0.1 else []
    tree_job = SimpleNamespace(
        analysis=SimpleNamespace(search=tuple(search)),
        shipped=shipped,
        header={"args": args, "image": image},
    )
    return tree_job, str(project), reads, tuple(misses)


@pytest.mark.parametrize("seed", range(0, 400, 50))
def test_the_check_says_what_its_definition_says(tmp_path: Path, seed: int) -> None:
    said = {"remote": 0, "local": 0}
    for n in range(seed, seed + 50):
        root = tmp_path / str(n)
        tree_job, cwd, reads, misses = random_case(random.Random(n), root)
        analyzer = IncludeAnalyzer()
        expected = verdict(defined_reads, tree_job, cwd, reads, analyzer)
        assert verdict(check_reads, tree_job, cwd, reads, analyzer) == expected, n
        assert verdict(check_misses, cwd, misses, analyzer) == verdict(
            defined_misses, cwd, misses, analyzer
        ), n
        said[expected] += 1
    assert said["remote"] and said["local"]  # the cases reach both verdicts


def test_a_file_larger_than_a_tree_job_ships_is_never_read_for_a_server(tmp_path, monkeypatch):
    """A server's `reads` names the file at each path it likes, and the check hashes this
    machine's file there: a 3 GB one took the proxy to 3.1 GB and held the analysis lock for
    12 s. Past the cap a file has no digest here, and the job compiles locally."""
    monkeypatch.setattr(includes, "MAX_FILE_BYTES", 1000)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 1001)
    small = tmp_path / "small.h"
    small.write_bytes(b"x" * 1000)
    analyzer = IncludeAnalyzer()
    assert analyzer.digests([str(big), str(small)]) == [
        None,
        hashlib.sha256(b"x" * 1000).hexdigest(),
    ]
