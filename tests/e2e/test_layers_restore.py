"""The seed's model end to end (issue #8): a snapshot between backups, and a
restore by layers that rebuilds the sealed layer complete and the top one
partial over it.

    T1  base; backup B1 (full)            writes, then more writes after B1
    T2  snapshot S2 (both disks)          base frozen with B1's final changes
    T3  backup B2 (incremental)           S2's writes (over, beside, zeroing base's)
    T4  backup B3 (incremental)
    T5  restore --layers at B2 and at B3: base == the frozen base image,
        base <- S2 == what the guest saw

Under both generations: in a Borg 2 repository B2 also stores an image of base
as it was sealed (B1's image and base's final changes), which B3 names again.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from borgvm import backup, read_image, restore_and_compare, run
from guest import MIB

KIB = 1024
DISKS = ("vda", "vdb")


def same_image(a: str | Path, b: str | Path) -> bool:
    """qemu-img compare of two images, each with its own backing chain."""
    proc = subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True,
                          text=True)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0


def backing_of(image: str) -> str | None:
    out = subprocess.run(["qemu-img", "info", "-U", image], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        if line.startswith("backing file:"):
            return line.split(":", 1)[1].strip().split(" (actual path")[0]
    return None


def restore_layers(d, repo, checkpoint, tmp_path, tag):
    to = tmp_path / f"layers-{tag}"
    return run("restore", d.name, "--repo", repo, "--checkpoint", checkpoint, "--to", str(to),
               "--layers", "--json").json()


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_t1_to_t5_restore_by_layers(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 64 * MIB, "qcow2"), ("vdb", 32 * MIB, "qcow2")])
    d.write("vda", 0, 8 * MIB, 0xA1)
    d.write("vda", 4 * MIB + 100, 1 * MIB, 0xA2)        # overlapping, unaligned
    d.write("vdb", 2 * MIB, 4 * MIB, 0xB1)
    b1 = backup(d.name, repo)
    v1 = d.views()
    # base's final changes: after B1, before the snapshot
    d.write("vda", 20 * MIB, 2 * MIB, 0xA3)
    d.write_zeroes("vda", 1 * MIB, 256 * KIB)
    d.discard("vdb", 2 * MIB, 1 * MIB)
    d.write("vdb", 10 * MIB, 64 * KIB, 0xB2)
    d.snapshot("S2")
    base = {t: d.layers[t][0] for t in DISKS}
    # on S2: over base's data, beside it, zeroing and discarding some of it
    d.write("vda", 21 * MIB, 4 * MIB, 0xA4)
    d.write_zeroes("vda", 0, 128 * KIB)
    d.discard("vdb", 4 * MIB, 1 * MIB)
    d.write("vdb", 30 * MIB, 2 * MIB, 0xB3)
    b2 = backup(d.name, repo)
    v2 = d.views()
    d.write("vda", 40 * MIB, 1 * MIB, 0xA5)
    d.write_zeroes("vdb", 30 * MIB, 64 * KIB, unmap=True)
    b3 = backup(d.name, repo)
    v3 = d.views()

    assert [b["level"] for b in (b1, b2, b3)] == ["full", "inc", "inc"]
    assert [b["snapshot"] for b in (b1, b2, b3)] == ["base", "S2", "S2"]
    assert b2["disks"]["vda"]["frozen"] >= 2 * MIB      # base's final changes were read
    assert b3["disks"]["vda"]["frozen"] == 0

    for tag, result, view in (("t3", b2, v2), ("t4", b3, v3)):
        doc = restore_layers(d, repo, result["checkpoint"], tmp_path, tag)
        for t in DISKS:
            images = doc["disks"][t]["chain"]               # bottom first
            assert [Path(p).name for p in images] == [
                f"{d.name}.{t}.base.qcow2", f"{d.name}.{t}.S2.qcow2"]
            # the bottom layer, on its own, is the frozen base image
            assert same_image(images[0], base[t]), f"{tag} {t}: base layer differs"
            # the top, backed by it (relative path), is what the guest saw
            assert backing_of(images[1]) == f"{d.name}.{t}.base.qcow2"
            assert doc["disks"][t]["image"] == images[1]
            assert read_image(images[1], tmp_path) == view[t], f"{tag} {t}: top differs"
        xml = Path(doc["domain_xml"]).read_text()
        assert all(f"{d.name}.{t}.S2.qcow2" in xml for t in DISKS)
    # before the snapshot there is one layer, complete
    doc = restore_layers(d, repo, b1["checkpoint"], tmp_path, "t1")
    for t in DISKS:
        assert [Path(p).name for p in doc["disks"][t]["chain"]] == [f"{d.name}.{t}.base.qcow2"]
        assert read_image(doc["disks"][t]["image"], tmp_path) == v1[t]
    # the other modes at the same checkpoints
    for i, (result, view) in enumerate(((b2, v2), (b3, v3))):
        restore_and_compare(d.name, repo, result["checkpoint"], view, tmp_path, f"chain{i}")
        restore_and_compare(d.name, repo, result["checkpoint"], view, tmp_path, f"flat{i}",
                            "--flatten")

    listing = run("list", d.name, "--repo", repo).stdout
    assert "  snapshot base\n" in listing and "  snapshot S2\n" in listing
