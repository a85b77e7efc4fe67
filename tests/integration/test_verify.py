"""borg-vm verify against real repositories: clean archives pass, damage is named
(issue #9): tampered data, a manifest that disagrees with the comment, a missing
parent. Nothing is written."""

import json
import os
import subprocess
from dataclasses import replace

import handmade
import pytest
from handmade import borg_vm

from borg_vm.adapters.borg import find_borg
from borg_vm.format import names as fmt


def test_clean_archives_verify(v1_repo):
    out = borg_vm("verify", "--all", "--json", env=dict(os.environ))
    doc = json.loads(out.stdout)
    assert doc["ok"] and len(doc["archives"]) == 2
    text = borg_vm("verify", env=dict(os.environ)).stdout.splitlines()
    assert all(line.startswith("ok ") for line in text) and len(text) == 2


def test_a_missing_parent_is_reported(v1_repo):
    names = json.loads(subprocess.run([find_borg(), "list", "--json", str(v1_repo)],
                                      capture_output=True, check=True).stdout)["archives"]
    full = sorted(a["name"] for a in names)[0]
    subprocess.run([find_borg(), "delete", f"{v1_repo}::{full}"], check=True,
                   capture_output=True)
    out = borg_vm("verify", "--all", code=2, env=dict(os.environ))
    assert out.stdout.startswith("DAMAGED ") and f"{full} is missing" in out.stdout


@pytest.fixture
def repo(make_repo, monkeypatch):
    borg = make_repo()
    monkeypatch.setenv("BORG_REPO", borg.repo)
    return borg


def test_tampered_data_is_reported(repo):
    name = handmade.write_archive(repo, {"vda": b"\x11" * 65536}, data_members=[
        (fmt.member_name("vda", 0), b"\x12" * 65536)])
    out = borg_vm("verify", handmade.DOMAIN, code=2, env=dict(os.environ))
    assert out.stdout.strip() == (f"DAMAGED  {name}: Data of disk vda in archive {name} does "
                                  "not match its manifest (sha256 differs): the archive is "
                                  "damaged.")


def test_manifest_disagreeing_with_comment_is_reported(repo):
    good = handmade.manifest({"vda": b"\x11" * 65536})
    other = replace(good, disks={"vda": replace(good.disks["vda"], source="/elsewhere.qcow2")})
    name = handmade.write_archive(repo, {"vda": b"\x11" * 65536},
                                  manifest_json=other.to_json())
    out = borg_vm("verify", handmade.DOMAIN, "--json", code=2, env=dict(os.environ))
    doc = json.loads(out.stdout)
    # the words restore and mount refuse it with (reader.check_archive)
    assert doc == {"ok": False, "archives": [
        {"name": name, "ok": False, "authenticated": True,
         "problem": f"Archive {name} is not a borg-vm archive this version can read: "
                    "its manifest disagrees with its comment"}]}


def test_a_valid_handmade_archive_verifies(repo):
    handmade.write_archive(repo, {"vda": b"\x11" * 65536, "vdb": b""})
    assert borg_vm("verify", env=dict(os.environ)).stdout.startswith("ok ")
