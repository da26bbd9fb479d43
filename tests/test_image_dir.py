"""An image directory as a managed set: images added, replaced and retired on SIGHUP with a real
jailccd and real clients, bad files skipped, `jailcc-image list`, and the client's message
when no image matches its compiler."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, requires_root
from jailcc import protocol as proto
from jailcc.images.identity import compiler_identity
from serverutil import Server, start_server, stop_server
from test_server import hello, job, preprocess

pytestmark = requires_root


@pytest.fixture
def image_dir(tmp_path: Path, gcc_image: Path) -> Path:
    directory = tmp_path / "images"
    directory.mkdir(mode=0o755)
    shutil.copy(gcc_image, directory / "gcc-12.img")
    (directory / "junk.img").write_bytes(b"not an image\n" * 100)
    return directory


def put(source: Path, directory: Path) -> None:
    """Install an image as an admin should: copy beside it, then rename into place."""
    shutil.copy(source, directory / ".incoming")
    os.rename(directory / ".incoming", directory / source.name)


def rescan(server: Server, expect: str) -> None:
    """SIGHUP, then wait for the monitor to log expect and for the network service to have
    read the images again (its "images now:"), from when on new jobs see them."""
    served = server.log_text().count("images now:")
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while True:
        log = server.log_text()
        if expect in log and log.count("images now:") > served:
            return
        assert time.monotonic() < deadline, log
        time.sleep(0.1)


def compile_with(compiler: str, server: Server, cwd: Path) -> str:
    (cwd / "unit.c").write_text("int twice(int a) { return 2 * a; }\n")
    env = dict(
        os.environ,
        JAILCC_HOSTS=f"unix:{server.socket_path}",
        JAILCC_PROXY="0",
        JAILCC_VERBOSE="1",
        LC_ALL="C",
    )
    done = subprocess.run(
        [str(BIN / "jailcc"), compiler, "-c", "unit.c", "-o", "unit.o"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and (cwd / "unit.o").exists(), done.stderr
    return done.stderr


def test_images_come_and_go_on_sighup(image_dir, clang_image, tmp_path):
    server = start_server(
        tmp_path / "srv", None, "--image-dir", str(image_dir), "--allow-user", "root"
    )
    try:
        log = server.log_text()
        assert "image added: gcc-12" in log
        assert f"image skipped: {image_dir / 'junk.img'}" in log  # and the server runs on
        assert "remote on" in compile_with("gcc-12", server, tmp_path)
        clang = os.path.realpath("/usr/bin/clang-16")
        said = compile_with("clang-16", server, tmp_path)
        assert "compiling locally" in said
        identity = compiler_identity("/usr/bin/clang-16")
        assert f"identity {identity[:19]}" in said
        assert f"jailcc-image build --headers --compiler {clang} -o clang.img" in said

        put(clang_image, image_dir)
        rescan(server, "image added: clang-16")
        assert "remote on" in compile_with("clang-16", server, tmp_path)

        os.unlink(image_dir / "clang-16.img")
        rescan(server, "image retired: clang-16")
        said = compile_with("clang-16", server, tmp_path)
        assert "compiling locally" in said and "jailcc-image build --headers --compiler" in said
        assert "remote on" in compile_with("gcc-12", server, tmp_path)
    finally:
        stop_server(server)


def test_a_replaced_image_serves_new_connections_and_running_ones_finish(
    image_dir, gcc_image, tmp_path
):
    server = start_server(
        tmp_path / "srv", None, "--image-dir", str(image_dir), "--allow-user", "root"
    )
    identity = compiler_identity("/usr/bin/gcc-12")
    pre = preprocess(tmp_path)
    try:
        with server.connect() as old:
            hello(old)  # its jail is built from the image as it was
            put(gcc_image, image_dir)  # a new file (inode) under the same name
            rescan(server, "image replaced: gcc-12")
            for sock in (old, server.connect()):
                if sock is not old:
                    hello(sock)
                proto.send(sock, proto.JOB, job(identity, tmp_path), [pre], [True])
                header, (_, err, obj) = proto.expect(sock, proto.RESULT)
                assert header["exit_code"] == 0 and obj.startswith(b"\x7fELF"), err
                sock.close()
    finally:
        stop_server(server)


def test_jailcc_image_list(image_dir):
    done = subprocess.run(
        [str(BIN / "jailcc-image"), "list", str(image_dir), "--verify"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1, done.stderr  # junk.img is bad: a script checking it learns so
    lines = done.stdout.splitlines()
    assert lines[0].startswith("gcc-12.img  name gcc-12  ") and lines[0].endswith("verified")
    identity = compiler_identity("/usr/bin/gcc-12")
    assert f"    gcc-12 12.2.0 x86_64-linux-gnu {identity[:19]}" in lines
    assert any(line.startswith("junk.img") and "BAD:" in line for line in lines)
    missing = subprocess.run(
        [str(BIN / "jailcc-image"), "list", str(image_dir / "nowhere")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "no image directory" in missing.stderr, missing.stderr
