"""Shut-off domains (issue #8 item 5): backed up from their images and
persistent bitmaps, without starting them; the chain continues across
shutdowns and starts, and a domain started meanwhile cannot change what is
read."""

from __future__ import annotations

import json

import libvirt
import pytest
from borgvm import (
    archive_names,
    backup,
    restore_and_compare,
    restore_every_mode,
    run,
    start,
    wrapper_env,
)
from guest import MIB, poll

KIB = 1024


def own_checkpoints(d) -> list[str]:
    return [c.getName() for c in d.dom.listAllCheckpoints()]


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_full_running_then_incrementals_while_off_and_on(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 64 * MIB, "qcow2"), ("vdb", 32 * MIB, "qcow2")])
    d.write("vda", 0, 4 * MIB, 0xA1)
    d.write("vdb", 1 * MIB, 2 * MIB, 0xB1)
    results = [backup(d.name, repo)]
    views = [d.views()]

    d.write("vda", 2 * MIB, 1 * MIB, 0xA2)
    d.write_zeroes("vdb", 1 * MIB, 512 * KIB)
    d.shut_off()
    d.write_offline("vda", 30 * MIB, 64 * KIB, 0xA3)   # a host tool, while off
    off = backup(d.name, repo)
    assert off["level"] == "inc", off["reason"]
    assert off["disks"]["vda"]["data"] <= 1 * MIB + 64 * KIB
    assert off["disks"]["vdb"]["zero"] >= 512 * KIB
    assert not d.dom.isActive(), "the backup must not start the domain"
    assert own_checkpoints(d) == [off["checkpoint"]]
    results.append(off)
    views.append(d.views())

    # A second offline incremental on top of the first, still without starting.
    d.write_offline("vdb", 20 * MIB, 128 * KIB, 0xB2)
    results.append(backup(d.name, repo))
    views.append(d.views())
    assert results[-1]["level"] == "inc"

    # Started again, libvirt takes the offline checkpoint as its own.
    d.start_paused()
    d.write("vda", 40 * MIB, 1 * MIB, 0xA4)
    on = backup(d.name, repo)
    assert on["level"] == "inc", on["reason"]
    assert on["disks"]["vda"]["data"] <= 1 * MIB and on["disks"]["vdb"]["data"] == 0
    results.append(on)
    views.append(d.views())
    assert own_checkpoints(d) == [on["checkpoint"]]
    restore_every_mode(d.name, repo, results, views, tmp_path)


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_offline_incremental_across_a_snapshot(make_domain, repo, tmp_path):
    # The checkpoint's bitmap is split: writes before the snapshot in the base's
    # copy, after it in the overlay's. Offline, both are merged.
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 2 * MIB, 0xA1)
    results = [backup(d.name, repo)]
    views = [d.views()]
    d.write("vda", 4 * MIB, 1 * MIB, 0xA2)           # lands in the base
    d.snapshot("S2")
    d.write("vda", 8 * MIB, 1 * MIB, 0xA3)           # lands in the overlay
    d.shut_off()
    off = backup(d.name, repo)
    assert off["level"] == "inc", off["reason"]
    assert 2 * MIB <= off["disks"]["vda"]["data"] <= 2 * MIB + 128 * KIB
    results.append(off)
    views.append(d.views())
    d.start_paused()
    d.write("vda", 12 * MIB, 64 * KIB, 0xA4)
    results.append(backup(d.name, repo))
    views.append(d.views())
    assert results[-1]["level"] == "inc"
    restore_every_mode(d.name, repo, results, views, tmp_path)


def test_starting_the_domain_during_an_offline_backup_fails_cleanly(make_domain, repo,
                                                                     tmp_path):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 4 * MIB, 0xA1)
    backup(d.name, repo)
    d.write("vda", 1 * MIB, 1 * MIB, 0xA2)
    d.shut_off()
    view = d.views()
    work = tmp_path / "wrap"
    work.mkdir()
    proc = start("backup", d.name, "--repo", repo, "--json",
                                      env=wrapper_env(work, "pause"))
    try:
        poll(lambda: (work / "started").exists() or proc.poll() is not None, 60,
             "borg import-tar to start")
        assert proc.poll() is None, proc.communicate()
        try:
            d.start_paused()
        except libvirt.libvirtError as e:
            assert "lock" in str(e), e
        else:
            raise AssertionError("the domain started while its images were being read")
    finally:
        (work / "go").touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["level"] == "inc"
    restore_and_compare(d.name, repo, result["checkpoint"], view, tmp_path, "during")
    d.start_paused()   # and afterwards it starts as usual
    assert d.dom.isActive()


def test_crashed_domain_gets_a_full_with_the_reason(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 1 * MIB, 0xA1)
    first = backup(d.name, repo)
    d.write("vda", 2 * MIB, 1 * MIB, 0xA2)
    d.kill_qemu(flush_first=True)                     # bitmaps stay flagged in use
    ran = run("backup", d.name, "--repo", repo, "--json", code=1)   # a warning: exit 1
    second = ran.json()
    assert second["level"] == "full"
    assert f"checkpoint {first['checkpoint']} is inconsistent" in second["reason"]
    # The log reads straight: the full backup and why, then what is cleaned up.
    log = [line.removeprefix("borg-vm: ") for line in ran.stderr.splitlines()]
    assert log[0] == f"{d.name}: full backup: {second['reason']}", ran.stderr
    assert "incremental" not in ran.stderr and "Operation not supported" not in ran.stderr
    restore_and_compare(d.name, repo, second["checkpoint"], d.views(), tmp_path, "full")
    d.write_offline("vda", 4 * MIB, 64 * KIB, 0xA3)
    third = backup(d.name, repo)                      # the chain goes on from the full
    assert third["level"] == "inc", third["reason"]
    restore_and_compare(d.name, repo, third["checkpoint"], d.views(), tmp_path, "inc")
    assert len(archive_names(repo)) == 3
    run("list", d.name, "--repo", repo)
