"""Build a toolchain image: probe, collect, stage, write the manifest, compress, rename.

Everything is staged in a hidden directory next to the output and compressed into a hidden
temporary file there, which is renamed over the output only when complete: a failure leaves
neither a partial image nor the staging directory behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

from jailcc import __version__
from jailcc.images import squashfs
from jailcc.images.collect import Tree, add_directory, collect
from jailcc.images.errors import ImageError
from jailcc.images.identity import identity_from_digests, identity_parts
from jailcc.images.manifest import (
    MANIFEST_PATH,
    CompilerEntry,
    Manifest,
    make_manifest,
    sha256_file,
)
from jailcc.images.probe import (
    CompilerInfo,
    clang_names_on_path,
    gcc_installation_markers,
    probe_compiler,
    system_include_dirs,
)
from jailcc.images.readlog import add_read_log

# Mountpoints the jail puts its own filesystems on: created empty, never filled from the host.
MOUNTPOINTS = {"/tmp": 0o1777, "/proc": 0o755, "/dev": 0o755}
_RESERVED = (*MOUNTPOINTS, os.path.dirname(MANIFEST_PATH))


def progress(msg: str) -> None:
    print(f"jailcc-image: {msg}", file=sys.stderr, flush=True)


def build_image(
    compilers: list[str],
    output: str,
    compression: str = squashfs.DEFAULT_COMPRESSION,
    log: Callable[[str], None] = progress,
    headers: bool = False,
    read_log: bool = True,
) -> Manifest:
    """Build the image `output` holding `compilers` (and, with `headers`, their system
    headers and, unless not `read_log`, the read log for tree jobs); return its manifest."""
    started = time.monotonic()
    out = os.path.abspath(output)
    outdir = _check_output(out)

    infos = _probe_all(compilers)
    for info in infos:
        log(f"found {info.name}: {info.kind} {info.version} for {info.target}")
    tree = collect([p.path for info in infos for p in info.programs])
    # The C.UTF-8 locale (not built into glibc): with it, diagnostics use typographic quotes in a
    # UTF-8 session exactly as a local compile does.
    for locale_file in _locale_files(LOCALE_DIR):
        tree.add(locale_file)
    if headers:
        # For tree jobs: the jail compiles the user's sources, and the client checks that each
        # system header it reads there is the same file as its own (PROTOCOL.md, tree jobs).
        for directory in dict.fromkeys(d for info in infos for d in system_include_dirs(info)):
            log(f"headers: {add_directory(tree, directory)} files in {directory}")
        for marker in dict.fromkeys(m for info in infos for m in gcc_installation_markers(info)):
            tree.add(marker)
            log(f"clang's GCC installation: {os.path.dirname(marker)}")
        names = [n for info in infos for n in clang_names_on_path(info) if _reserved(n) is None]
        for name in dict.fromkeys(names):
            tree.add(name)
        if names:
            log(f"clang's names on PATH (a tree job runs it from there): {', '.join(names)}")
    else:
        log(
            "no system headers (--headers): clients ship sources by default, and their jobs"
            " will come to this image as preprocessed output instead"
        )
    _check_reserved(tree)
    size = sum(os.stat(f).st_size for f in tree.files)
    log(f"collecting {len(tree.files)} files, {len(tree.symlinks)} symlinks ({size / 1e6:.0f} MB)")

    try:
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.staging-", dir=outdir)
    except OSError as e:
        raise ImageError(f"cannot write to {outdir}: {e.strerror}; choose another -o") from None
    tmp_out = None
    try:
        root = os.path.join(staging, "root")
        os.mkdir(root, 0o755)
        digests = _stage(tree, root)
        gcc = next((info.path for info in infos if info.kind == "gcc"), None)
        if headers and read_log and gcc is not None:
            digests.update(add_read_log(root, gcc, log))
        manifest = make_manifest(
            [_entry(info, digests) for info in infos],
            files=digests,
            symlinks=tree.symlinks,
            created_by=f"jailcc-image {__version__}",
        )
        _write_manifest(root, manifest)
        for mnt, mode in MOUNTPOINTS.items():
            os.mkdir(root + mnt)
            os.chmod(root + mnt, mode)  # mkdir's mode is masked by the umask

        log(f"compressing with {compression}")
        fd, tmp_out = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.tmp-", dir=outdir)
        os.close(fd)
        squashfs.make_image(root, tmp_out, compression)
        os.chmod(tmp_out, 0o644)
        os.replace(tmp_out, out)
        tmp_out = None
    except OSError as e:
        raise ImageError(f"cannot build {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if tmp_out is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_out)
    took = time.monotonic() - started
    log(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB) in {took:.1f} s")
    return manifest


LOCALE_DIR = "/usr/lib/locale/C.utf8"


def _locale_files(directory: str) -> list[str]:
    found = []
    for dirpath, _, filenames in os.walk(directory):
        found += [os.path.join(dirpath, name) for name in filenames]
    return sorted(found)


def _check_output(out: str) -> str:
    """Fail early, before the slow part, when the output cannot be written."""
    outdir = os.path.dirname(out)
    if os.path.isdir(out):
        raise ImageError(f"output {out} is a directory; give a file name such as gcc-12.img")
    if not os.path.isdir(outdir):
        raise ImageError(
            f"output directory {outdir} does not exist; create it or choose another -o"
        )
    if not os.access(outdir, os.W_OK | os.X_OK):  # also catches read-only filesystems for root
        raise ImageError(f"output directory {outdir} is not writable; choose another -o")
    return outdir


def _probe_all(compilers: list[str]) -> list[CompilerInfo]:
    if not compilers:
        raise ImageError("no compiler given; use --compiler PATH, e.g. --compiler /usr/bin/gcc-12")
    infos: list[CompilerInfo] = []
    for c in compilers:
        info = probe_compiler(c)
        if any(i.path == info.path for i in infos):
            continue  # the same compiler twice: harmless
        clash = next((i for i in infos if i.name == info.name), None)
        if clash is not None:
            raise ImageError(
                f"two compilers named {info.name} ({clash.path} and {info.path}); "
                "put them in separate images"
            )
        infos.append(info)
    return infos


def _reserved(path: str) -> str | None:
    """The top directory the image reserves for the jail that path lies under, if any."""
    return next((top for top in _RESERVED if path == top or path.startswith(top + "/")), None)


def _check_reserved(tree: Tree) -> None:
    for path in [*tree.files, *tree.symlinks, *tree.dirs]:
        top = _reserved(path)
        if top is not None:
            raise ImageError(
                f"{path} is under {top}, which the image reserves for the jail; "
                "use a compiler installed elsewhere"
            )


def _stage(tree: Tree, root: str) -> dict[str, str]:
    """Materialize `tree` under `root`; return {image path: sha256 hex} of its files."""
    for d in sorted(tree.dirs):
        os.mkdir(root + d, 0o755)
        os.chmod(root + d, 0o755)
    for link, target in sorted(tree.symlinks.items()):
        os.symlink(target, root + link)
    return {f: _copy(f, root + f) for f in sorted(tree.files)}


def _copy(src: str, dst: str) -> str:
    """Copy and hash in one pass. Only 0755/0644 survive: no setuid/setgid, no odd modes."""
    h = hashlib.sha256()
    mode = 0o755 if os.stat(src).st_mode & 0o111 else 0o644
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(1 << 20):
            h.update(chunk)
            fout.write(chunk)
    os.chmod(dst, mode)
    return h.hexdigest()


def _entry(info: CompilerInfo, digests: dict[str, str]) -> CompilerEntry:
    # The same parts and the same combination as compiler_identity(), with the digests of the
    # very bytes that went into the image.
    parts = identity_parts(info)
    ident = identity_from_digests(
        {role: digests.get(real) or sha256_file(real) for role, _lookup, real in parts}
    )
    return CompilerEntry(
        name=info.name,
        kind=info.kind,
        path=info.path,
        version=info.version,
        target=info.target,
        identity=ident,
    )


def _write_manifest(root: str, manifest: Manifest) -> None:
    path = root + MANIFEST_PATH
    os.mkdir(os.path.dirname(path), 0o755)
    os.chmod(os.path.dirname(path), 0o755)
    with open(path, "x", encoding="utf-8") as f:
        f.write(manifest.to_json())
    os.chmod(path, 0o644)
