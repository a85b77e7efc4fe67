"""One backup run over several hypervisors (backup -c URI -c URI ...): each domain
backed up from the one that has it, one that cannot be reached failing only its
own, a name found twice never backed up. The other hypervisors here are real
libvirt connections: libvirt's test driver (test:///default, a hypervisor of
its own with one domain, "test", and no backup job), this machine's daemon
through another transport (qemu+unix://), and an ssh URI nothing answers."""

from __future__ import annotations

import os

import pytest
from borgvm import archive_names, restore_and_compare, run
from guest import MIB

HERE = "qemu:///system"
OTHER = "test:///default"                 # libvirt's test driver: its own domains
SAME = "qemu+unix:///system"              # this machine's daemon again
GONE = "qemu+ssh://root@127.0.0.1:1/system?no_tty=1"   # port 1: nothing answers


def _lines(result) -> dict:
    """A --json run's lines by what each is about (its domain, else its hypervisor)."""
    return {doc.get("domain", doc.get("hypervisor")): doc for doc in result.json_lines()}


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_domains_of_several_hypervisors_are_each_backed_up_from_theirs(make_domain, repo,
                                                                        tmp_path):
    tag = "fleet" + os.urandom(3).hex()
    a = make_domain(disks=[("vda", 16 * MIB, "qcow2")], name_suffix=tag)
    b = make_domain(disks=[("vda", 16 * MIB, "qcow2")], name_suffix=tag)
    a.write("vda", 0, 1 * MIB, 0xA1)
    b.write("vda", 0, 1 * MIB, 0xB1)
    jobs = ("--jobs", "2") if os.environ.get("BORG_VM_BORG") else ()
    first = _lines(run("backup", "--all", "--match", f"borgvm-test-*-{tag}", "-c", OTHER,
                       "-c", HERE, "--repo", repo, "--json", *jobs))
    assert set(first) == {a.name, b.name}
    assert all(doc["level"] == "full" and doc["hypervisor"] == HERE for doc in first.values())

    a.write("vda", 4 * MIB, 1 * MIB, 0xA2)
    view = a.read_disk("vda")
    again = _lines(run("backup", a.name, "-c", OTHER, "-c", HERE, "--repo", repo, "--json"))
    assert again[a.name]["level"] == "inc" and again[a.name]["hypervisor"] == HERE
    restore_and_compare(a.name, repo, again[a.name]["checkpoint"], {"vda": view}, tmp_path,
                        "fleet")

    # One hypervisor's domain that cannot be backed up fails alone
    test_domain = _lines(run("backup", "test", a.name, "-c", OTHER, "-c", HERE, "--repo",
                             repo, "--json", code=2))
    assert test_domain["test"]["hypervisor"] == OTHER and test_domain["test"]["exit_code"] == 2
    assert test_domain[a.name]["level"] == "inc"


def test_a_hypervisor_that_cannot_be_reached_fails_only_its_own(make_domain, repo):
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    d.write("vda", 0, 1 * MIB, 0xC1)
    result = run("backup", "--all", "--match", d.name, "-c", GONE, "-c", HERE, "--repo", repo,
                 "--json", code=2)
    lines = _lines(result)
    assert lines[d.name]["level"] == "full" and lines[d.name]["hypervisor"] == HERE
    assert lines[GONE]["exit_code"] == 2 and "domain" not in lines[GONE]
    assert f"{GONE}: Cannot connect to libvirt at {GONE}" in result.stderr
    assert len(archive_names(repo)) == 1

    # A domain named is looked for where it can be
    missing = run("backup", "borgvm-test-nowhere", "-c", GONE, "-c", HERE, "--repo", repo,
                  code=2)
    assert (f"borgvm-test-nowhere: domain 'borgvm-test-nowhere' is on none of {HERE} "
            f"({GONE} could not be reached)") in missing.stderr


def test_one_hypervisor_given_twice_backs_up_nothing(make_domain, repo):
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    result = run("backup", d.name, "-c", HERE, "-c", SAME, "--repo", repo, code=2)
    assert (f"{d.name}: domain {d.name!r} (UUID {d.dom.UUIDString()}) is reached through "
            f"{HERE}, {SAME}: the same hypervisor given twice") in result.stderr
    assert archive_names(repo) == []
    assert d.dom.listAllCheckpoints() == []
