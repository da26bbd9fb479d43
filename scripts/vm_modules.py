#!/usr/bin/python3.11
"""Copy kernel modules and what they depend on into an initramfs directory, for scripts/vm-systemd.

    vm_modules.py MODULES_TREE OUT NAME...

Finds each NAME.ko under MODULES_TREE (a /lib/modules/VERSION tree; '-' and '_' alike, as
modprobe treats them), follows the "depends=" of each module's .modinfo ELF section, copies
every module needed to OUT/NAME.ko and writes OUT/order: one name a line, dependencies first,
the order in which vm_init.c loads them. No kmod is needed (this machine has none).
"""

from __future__ import annotations

import os
import shutil
import struct
import sys


def _modinfo(path: str) -> dict[str, str]:
    """The key=value pairs of a module's .modinfo section (ELF64, little-endian)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SystemExit(f"vm_modules: {path} is not a little-endian ELF64 module")
    (section_offset,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, section_offset + i * entry_size)
        for i in range(count)
    ]
    names_at = sections[names_index][4]
    for name_offset, _type, _flags, _addr, offset, size, *_ in sections:
        start = names_at + name_offset
        if data[start : data.index(b"\0", start)] == b".modinfo":
            body = data[offset : offset + size].decode(errors="replace")
            return dict(item.split("=", 1) for item in body.split("\0") if "=" in item)
    return {}


def _index(tree: str) -> dict[str, str]:
    found = {}
    for top, _, files in os.walk(tree):
        for name in files:
            if name.endswith(".ko"):
                found[name[:-3].replace("-", "_")] = os.path.join(top, name)
    return found


def main(tree: str, out: str, wanted: list[str]) -> None:
    modules = _index(tree)
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key in order:
            return
        if key in path:
            raise SystemExit(f"vm_modules: dependency loop: {' -> '.join((*path, key))}")
        if key not in modules:
            raise SystemExit(f"vm_modules: no module {name} under {tree}")
        depends = _modinfo(modules[key]).get("depends", "")
        for dependency in filter(None, depends.split(",")):
            visit(dependency, (*path, key))
        order.append(key)

    for name in wanted:
        visit(name, ())
    os.makedirs(out, exist_ok=True)
    for key in order:
        shutil.copy(modules[key], os.path.join(out, key + ".ko"))
    with open(os.path.join(out, "order"), "w") as f:
        f.write("".join(key + "\n" for key in order))


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
