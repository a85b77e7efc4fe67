"""Repositories written by earlier archive formats keep listing, restoring and verifying.

Each tests/fixtures/vN-repo is a real Borg repository the borg-vm of that
format made of a small domain, frozen before the format changed;
vN-repo.json holds the SHA-256 of each disk as the guest saw it at each
checkpoint. Every later format must still restore them bit for bit.

- v1-repo (format 1, commit 9a84b9c): a qcow2 and a raw disk; a full and an
  incremental with a zeroed range.
- v2-repo (format 2, commit 24523bd): two qcow2 disks; a full, an incremental
  with zeroed and discarded ranges, and after an external snapshot S2 an
  incremental holding the base layer's final changes (``frozen``), so
  ``--layers`` rebuilds the base image (``layers.base`` holds its SHA-256).
- v3-repo (format 3, commit 7188b98): two qcow2 disks; a full, an incremental
  of scattered small writes (packs: a map member and its pack) with zeroed and
  discarded ranges, and after an external snapshot S2 an incremental whose top
  data and frozen base changes both travel in packs.
- v4-repo (format 4, commit c8d95c7): v3-repo's scenario (its zeroed range
  over the full's data), its archives signed (format/auth.py); made by
  tests/fixtures/make_fixture.py, which makes the next format's fixture the
  same way.
- v5-repo (format 5, commit 4f8057a): v4-repo's scenario, the last format of
  Borg 1.4 repositories before the Borg 2 records changed.
- v6-repo (format 6, commit 4f8057a): the same scenario in a Borg 2
  repository (encrypted; the passphrase is in v6-repo.json): a record and a
  complete image archive per disk at each checkpoint, the disks' snapshot
  layers named but without images of their own, so ``--layers`` is refused.

Formats 1 to 3 carry no authentication code: a host's keyring adopts the ones
a repository holds when the keyring is made (services/keyring.py), as these
tests' first use of each copy does. From format 4 on, a fixture is
authenticated by the keyring that signed it, vN-keys beside it, which tests
copy into their keys directory, as a host that imported its key with
``borg-vm key import`` would; without it, its archives are refused.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from realstack import FIXTURES, copy_fixture_repo

from borg_vm.format.names import AUTHENTICATED_FROM
from borg_vm.services.keyring import Keyring

VERSIONS = ("v1", "v2", "v3", "v4", "v5", "v6")
ADOPTED = tuple(v for v in VERSIONS if int(v[1:]) < AUTHENTICATED_FROM)
SIGNED = tuple(v for v in VERSIONS if int(v[1:]) >= AUTHENTICATED_FROM)
# From format 2 on, an external snapshot between backups; format 6 records
# complete images without images of the layers below the top.
LAYERED = tuple(v for v in VERSIONS[1:] if v != "v6")


def borg_vm(*args, code=0):
    """Run borg-vm ARGS; assert it exits code; return its stdout (0) or the process."""
    proc = subprocess.run([sys.executable, "-m", "borg_vm", *args], capture_output=True,
                          text=True, env=dict(os.environ), timeout=300)
    assert proc.returncode == code, proc.stderr
    return proc.stdout if code == 0 else proc


def sha256_of_image(path: str, tmp_path: Path) -> str:
    raw = tmp_path / "flat.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", path, str(raw)], check=True)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    raw.unlink()
    return digest


def copy_old(version: str, tmp_path: Path, monkeypatch, request) -> dict:
    """Copy fixture repository version and set it as BORG_REPO (a Borg 2 one with
    borg-vm pointed at Borg 2 and given its passphrase); return what it expects."""
    expected = json.loads((FIXTURES / f"{version}-repo.json").read_text())
    if expected.get("borg") == "2":
        monkeypatch.setenv("BORG_VM_BORG", request.getfixturevalue("borg2_executable"))
        monkeypatch.setenv("BORG_PASSPHRASE", expected["passphrase"])
    copy_fixture_repo(f"{version}-repo", tmp_path, monkeypatch)
    return expected


@pytest.fixture(params=VERSIONS)
def old_repo(request, tmp_path, monkeypatch):
    """(version, expected digests) of a fixture repository, copied and set as BORG_REPO."""
    return request.param, copy_old(request.param, tmp_path, monkeypatch, request)


def test_old_archives_are_listed(old_repo):
    _version, expected = old_repo
    listed = json.loads(borg_vm("list", "--json"))["archives"]
    assert [a["checkpoint"] for a in listed] == sorted(expected["checkpoints"])
    assert [a["level"] for a in listed] == ["full"] + ["inc"] * (len(listed) - 1)


@pytest.mark.parametrize("mode", [(), ("--flatten",), ("--flatten", "--format", "raw")],
                         ids=["chain", "flatten", "raw"])
def test_old_archives_restore_bit_for_bit(old_repo, tmp_path, mode):
    _version, expected = old_repo
    for i, (checkpoint, disks) in enumerate(sorted(expected["checkpoints"].items())):
        to = tmp_path / f"to{i}"
        doc = json.loads(borg_vm("restore", expected["domain"], "--checkpoint", checkpoint,
                                 "--to", str(to), "--json", *mode))
        for target, digest in disks.items():
            assert sha256_of_image(doc["disks"][target]["image"], tmp_path) == digest, \
                (checkpoint, target, mode)


def test_old_archives_verify(old_repo):
    doc = json.loads(borg_vm("verify", "--all", "--json"))
    assert doc["ok"] and len(doc["archives"]) == len(old_repo[1]["checkpoints"])
    assert all(a["authenticated"] for a in doc["archives"])


@pytest.mark.parametrize("version", ADOPTED)
def test_unsigned_formats_are_adopted_when_the_keyring_is_made(tmp_path, monkeypatch,
                                                               version, request):
    expected = copy_old(version, tmp_path, monkeypatch, request)
    borg_vm("list")     # the first use: the keyring is made
    shown = json.loads(borg_vm("key", "show", "--json"))
    assert shown["adopted_archives"] == len(expected["checkpoints"])


@pytest.mark.parametrize("version", SIGNED)
def test_signed_formats_are_authenticated_by_their_keyring(tmp_path, monkeypatch, version,
                                                           request):
    copy_old(version, tmp_path, monkeypatch, request)
    (shipped,) = (FIXTURES / f"{version}-keys").iterdir()
    keyring = Keyring.from_json(shipped.read_bytes(), str(shipped))
    borg_vm("list")
    shown = json.loads(borg_vm("key", "show", "--json"))
    assert (shown["keys"], shown["adopted_archives"]) == (keyring.key_ids(), 0)
    assert (tmp_path / "keys" / shipped.name).read_bytes() == shipped.read_bytes()


@pytest.mark.parametrize("version", SIGNED)
def test_signed_formats_are_refused_without_their_keyring(tmp_path, monkeypatch, version,
                                                          request):
    expected = copy_old(version, tmp_path, monkeypatch, request)
    monkeypatch.setenv("BORG_VM_KEYS_DIR", str(tmp_path / "other-host-keys"))
    (shipped,) = (FIXTURES / f"{version}-keys").iterdir()
    (key_id,) = Keyring.from_json(shipped.read_bytes(), str(shipped)).key_ids()
    proc = borg_vm("list", expected["domain"], code=2)
    assert "none of which this host can authenticate" in proc.stderr.splitlines()[-1]
    assert f"signed with key {key_id}, which this host does not hold" in proc.stderr


@pytest.mark.parametrize("version", LAYERED)
def test_layers_restore_the_frozen_base(tmp_path, monkeypatch, version, request):
    expected = copy_old(version, tmp_path, monkeypatch, request)
    layers = expected["layers"]
    doc = json.loads(borg_vm("restore", expected["domain"], "--checkpoint",
                             layers["checkpoint"], "--to", str(tmp_path / "to"), "--layers",
                             "--json"))
    for target, digest in layers["base"].items():
        base, top = doc["disks"][target]["chain"]
        assert sha256_of_image(base, tmp_path) == digest, target
        assert sha256_of_image(top, tmp_path) == \
            expected["checkpoints"][layers["checkpoint"]][target], target


def test_images_without_layer_images_refuse_layers(tmp_path, monkeypatch, request):
    expected = copy_old("v6", tmp_path, monkeypatch, request)
    proc = borg_vm("restore", expected["domain"], "--checkpoint",
                   expected["layers"]["checkpoint"], "--to", str(tmp_path / "to"), "--layers",
                   code=2)
    assert "holds no images of its disks' snapshot layers" in proc.stderr
    assert "format version 6" in proc.stderr and "without --layers" in proc.stderr
    assert not (tmp_path / "to").exists()
