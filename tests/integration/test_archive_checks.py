"""verify, restore and mount judge an archive alike (issue #20, item 4): an
archive one of them refuses, the others refuse with the same words, and verify
says ok only of what restore and mount accept. All three go through
format.reader.check_archive."""

import os

import pytest
from handmade import DOMAIN, borg_vm, error_line, manifest, write_archive
from mounting import failed_mount, mounts_under
from realstack import MiB

DATA = b"\x5a" * 65536

# case -> (write_archive's arguments, what all three say is wrong)
CASES = {
    "not-well-formed": (dict(xml=b"<domain type='kvm'><name>x</name><devices>"),
                        "domain.xml is not well-formed XML"),
    "dtd": (dict(xml=b"<!DOCTYPE domain SYSTEM 'file:///etc/passwd'>"
                     b"<domain><name>x</name></domain>"), "domain.xml has a DTD"),
    "foo-root": (dict(xml=b"<foo><name>x</name></foo>"), "domain.xml is a <foo>, not a <domain>"),
    # the comment claims 128 MiB, the manifest 64 MiB: restore made a 128 MiB image
    "comment-size": (dict(size=128 * MiB,
                          manifest_json=manifest({"vda": DATA}, 64 * MiB).to_json()),
                     "its manifest disagrees with its comment"),
}


@pytest.fixture(params=CASES)
def damaged(request, make_repo, monkeypatch, tmp_path):
    """Return (repository, archive name, what is wrong) of a repository holding one
    archive damaged as CASES[param] says."""
    monkeypatch.setenv("BORG_VM_RUNTIME_DIR", str(tmp_path / "run"))
    borg = make_repo()
    kwargs, why = CASES[request.param]
    return borg.repo, write_archive(borg, {"vda": DATA}, **kwargs), why


def test_verify_calls_it_damaged(damaged):
    repo, name, why = damaged
    out = borg_vm("verify", DOMAIN, "--repo", repo, code=2)
    assert out.stdout.startswith(f"DAMAGED  {name}: ") and why in out.stdout, out.stdout


def test_restore_refuses_it_before_writing(damaged, tmp_path):
    repo, name, why = damaged
    to = tmp_path / "out"
    line = error_line(borg_vm("restore", DOMAIN, "--repo", repo, "--to", str(to),
                              "--no-progress", code=2))
    assert f"Archive {name} " in line and why in line, line
    assert not to.exists()


def test_restore_layers_refuses_it_before_writing(damaged, tmp_path):
    repo, name, why = damaged
    to = tmp_path / "out"
    line = error_line(borg_vm("restore", DOMAIN, "--repo", repo, "--to", str(to), "--layers",
                              "--no-progress", code=2))
    assert f"Archive {name} " in line and why in line, line
    assert not to.exists()


def test_mount_refuses_to_serve_it(damaged, tmp_path):
    repo, name, why = damaged
    proc = failed_mount(DOMAIN, repo, str(tmp_path / "vda.sock"),
                        env=dict(os.environ, BORG_VM_RUNTIME_DIR=str(tmp_path / "run")))
    assert proc.returncode == 2
    line = error_line(proc)
    assert f"Archive {name} " in line and why in line, line
    assert not (tmp_path / "vda.sock").exists() and not mounts_under(tmp_path / "run")
