"""An NBD export as a file (adapters/nbdfuse.py), and Borg 2 archiving a disk
through it from the export's own block status: qemu-nbd, nbdfuse, libnbd and
the Borg 2 beta set-up installs, all real."""

import os
import subprocess
import time

import pytest
from realstack import MiB, listening, qemu_io

from borg_vm.adapters import libnbd, nbdfuse
from borg_vm.core.disk_source import Endpoint
from borg_vm.core.extent import DATA, STATE_DIRTY, Run, input_map, plan_full, plan_incremental
from borg_vm.errors import BorgError, NbdError

BLOCK = 64 * 1024


def uri(sock):
    return Endpoint(uri=f"nbd+unix:///vda?socket={sock}")


def make_disk(tmp_path, size=16 * MiB):
    image = str(tmp_path / "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, str(size)], check=True)
    qemu_io(image, "qcow2", "write -P 0x5a 1M 3M", "write -P 0x11 9M 64k")
    return image


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def test_an_export_reads_as_a_file(tmp_path, qemu_nbd_socket):
    image = make_disk(tmp_path)
    sock = qemu_nbd_socket(image, "-r", "-f", "qcow2")
    path = str(tmp_path / "vda")
    want = read_all_raw(tmp_path, image)
    with nbdfuse.exposed(uri(sock), path) as shown:
        assert shown == path and os.stat(path).st_size == 16 * MiB
        assert read_all(path) == want
        with pytest.raises(OSError):
            open(path, "r+b").close()        # read-only
    assert not os.path.exists(path)


def read_all_raw(tmp_path, image):
    out = str(tmp_path / "want.raw")
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", image, out], check=True)
    return read_all(out)


def test_an_export_that_is_not_there_is_an_nbd_error(tmp_path):
    path = str(tmp_path / "vda")
    with pytest.raises(NbdError, match="show as a file"):
        with nbdfuse.exposed(uri(str(tmp_path / "nothing.sock")), path):
            pass
    assert not os.path.exists(path)


def allocation(sock):
    with libnbd.open_unix(sock, "vda", ["base:allocation"]) as export:
        return export.size, export.block_status("base:allocation")


def test_borg2_archives_the_export_from_its_block_status(tmp_path, qemu_nbd_socket, repo2):
    """A full from base:allocation, then an incremental of what was written since,
    both complete images, bit for bit the disk at each point."""
    image = make_disk(tmp_path)
    sock = qemu_nbd_socket(image, "-r", "-f", "qcow2")
    size, runs = allocation(sock)
    full = plan_full(runs)
    with nbdfuse.exposed(uri(sock), str(tmp_path / "vda")) as path:
        first = repo2.create_image("web.base.c1~vda", path, input_map(size, full, False),
                                   reuse_from=None, comment="", compression="lz4",
                                   timestamp="2026-12-06T02:00:00+00:00", block_size=BLOCK)
    want1 = read_all_raw(tmp_path, image)

    image2 = str(tmp_path / "disk2.qcow2")
    subprocess.run(["cp", image, image2], check=True)
    qemu_io(image2, "qcow2", "write -P 0x77 2M 128k", "write -z 9M 64k")
    sock2 = qemu_nbd_socket(image2, "-r", "-f", "qcow2")
    size2, runs2 = allocation(sock2)
    dirty = [Run(2 * MiB, 128 * 1024, STATE_DIRTY), Run(9 * MiB, BLOCK, STATE_DIRTY)]
    inc = plan_incremental(runs2, dirty)
    with nbdfuse.exposed(uri(sock2), str(tmp_path / "vda2")) as path:
        second = repo2.create_image("web.base.c2~vda", path, input_map(size2, inc, True),
                                    reuse_from=first.id, comment="", compression="lz4",
                                    timestamp="2026-12-06T03:00:00+00:00", block_size=BLOCK)
    want2 = read_all_raw(tmp_path, image2)
    assert want1 != want2
    for created, want in ((first, want1), (second, want2)):
        with repo2.extract_stdout(repo2.ref(created.id), []) as proc:
            got = proc.stdout.read()
            repo2.finish("extract", proc)
        assert got == want
    assert sum(e.length for e in inc if e.kind == DATA) == 128 * 1024


def test_a_server_that_dies_mid_read_leaves_no_image(tmp_path, qemu_nbd_socket, repo2):
    """Borg 2 commits an archive without a file it could not read: create_image
    fails and leaves no archive."""
    image = make_disk(tmp_path, size=64 * MiB)
    qemu_io(image, "qcow2", "write -P 0x33 0 64M")
    proc = subprocess.Popen(["qemu-nbd", "-r", "--persistent", "--socket",
                             str(tmp_path / "die.sock"), "-x", "vda", "-f", "qcow2", image])
    try:
        while not listening(str(tmp_path / "die.sock")):
            time.sleep(0.02)
        with nbdfuse.exposed(uri(str(tmp_path / "die.sock")), str(tmp_path / "vda")) as path:
            with open(path, "rb") as f:
                f.read(MiB)                  # connected and serving
            proc.kill()
            proc.wait()
            with pytest.raises(BorgError):
                repo2.create_image("web.base.c1~vda", path,
                                   input_map(64 * MiB, plan_full([Run(0, 64 * MiB, 0)]), False),
                                   reuse_from=None, comment="", compression="lz4",
                                   timestamp="2026-12-06T02:00:00+00:00", block_size=BLOCK)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert repo2.list_archives() == []
