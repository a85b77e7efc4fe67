"""Checkpoints come back from the repository (issue #8 item 6): when libvirt
lost borg-vm's checkpoint metadata but the images still hold the bitmaps, the
next backup redefines the checkpoint from the newest archive and stays
incremental; when the bitmaps are gone too, a full with the reason."""

from __future__ import annotations

import subprocess

import libvirt
from borgvm import backup, restore_and_compare
from guest import MIB

KIB = 1024


def forget_domain(d) -> None:
    """`virsh undefine --checkpoints-metadata` + `virsh define` of the shut-off domain."""
    xml = d.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    conn = d.dom.connect()
    d.dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    d.dom = conn.defineXML(xml)
    assert d.dom.listAllCheckpoints() == []


def test_metadata_deleted_on_a_running_domain(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 2 * MIB, 0xA1)
    first = backup(d.name, repo)
    d.write("vda", 4 * MIB, 64 * KIB, 0xA2)
    # virsh checkpoint-delete --metadata: libvirt forgets, QEMU keeps the bitmap
    d.dom.checkpointLookupByName(first["checkpoint"]).delete(
        libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    second = backup(d.name, repo)
    assert second["level"] == "inc", second["reason"]
    assert second["disks"]["vda"]["data"] <= 64 * KIB
    restore_and_compare(d.name, repo, second["checkpoint"], d.views(), tmp_path, "running")


def test_domain_undefined_and_defined_again_while_shut_off(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2"), ("vdb", 16 * MIB, "qcow2")])
    d.write("vda", 0, 2 * MIB, 0xA1)
    d.write("vdb", 1 * MIB, 1 * MIB, 0xB1)
    backup(d.name, repo)
    d.write("vda", 8 * MIB, 128 * KIB, 0xA2)
    d.shut_off()
    forget_domain(d)
    off = backup(d.name, repo)
    assert off["level"] == "inc", off["reason"]
    assert off["disks"]["vda"]["data"] <= 128 * KIB and off["disks"]["vdb"]["data"] == 0
    restore_and_compare(d.name, repo, off["checkpoint"], d.views(), tmp_path, "off")
    # and libvirt uses it once the domain runs again
    d.start_paused()
    d.write("vdb", 4 * MIB, 64 * KIB, 0xB2)
    on = backup(d.name, repo)
    assert on["level"] == "inc", on["reason"]
    restore_and_compare(d.name, repo, on["checkpoint"], d.views(), tmp_path, "on")


def test_bitmap_gone_too_means_a_full_with_the_reason(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 2 * MIB, 0xA1)
    first = backup(d.name, repo)
    d.shut_off()
    forget_domain(d)
    subprocess.run(["qemu-img", "bitmap", "--remove", str(d.disks["vda"]), first["checkpoint"]],
                   check=True)
    second = backup(d.name, repo, code=1)   # a full where it planned an incremental warns
    assert second["level"] == "full"
    assert first["checkpoint"] in second["reason"] and "has no bitmap" in second["reason"]
    restore_and_compare(d.name, repo, second["checkpoint"], d.views(), tmp_path, "full")
    d.write_offline("vda", 4 * MIB, 64 * KIB, 0xA3)
    third = backup(d.name, repo)
    assert third["level"] == "inc", third["reason"]
