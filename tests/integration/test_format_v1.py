"""Repositories written by borg-vm 0.1.0 (archive format version 1) keep restoring.

tests/fixtures/v1-repo is a real Borg repository that release made of a small
two-disk domain (a qcow2 and a raw disk; a full and an incremental with a
zeroed range); v1-repo.json holds the SHA-256 of each disk as the guest saw
it at each checkpoint. Every later format must still restore it bit for bit.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EXPECTED = json.loads((FIXTURES / "v1-repo.json").read_text())




def borg_vm(*args):
    proc = subprocess.run([sys.executable, "-m", "borg_vm", *args], capture_output=True,
                          text=True, env=dict(os.environ), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def sha256_of_image(path: str, tmp_path: Path) -> str:
    raw = tmp_path / "flat.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", path, str(raw)], check=True)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    raw.unlink()
    return digest


def test_v1_archives_are_listed(v1_repo):
    listed = json.loads(borg_vm("list", "--json"))["archives"]
    assert [a["checkpoint"] for a in listed] == sorted(EXPECTED["checkpoints"])
    assert [a["level"] for a in listed] == ["full", "inc"]


@pytest.mark.parametrize("mode", [(), ("--flatten",), ("--flatten", "--format", "raw")],
                         ids=["chain", "flatten", "raw"])
def test_v1_archives_restore_bit_for_bit(v1_repo, tmp_path, mode):
    for i, (checkpoint, disks) in enumerate(sorted(EXPECTED["checkpoints"].items())):
        to = tmp_path / f"to{i}"
        doc = json.loads(borg_vm("restore", EXPECTED["domain"], "--checkpoint", checkpoint,
                                 "--to", str(to), "--json", *mode))
        for target, digest in disks.items():
            assert sha256_of_image(doc["disks"][target]["image"], tmp_path) == digest, \
                (checkpoint, target, mode)
