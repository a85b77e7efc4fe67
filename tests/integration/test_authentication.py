"""Authenticated restore points over a real repository: archives planted by
whoever can write it ('borg import-tar' of hand-made tars, as an append-only
key, another hypervisor or a borgmatic host could), and the real CLI's answer
to each (format/trust.py, services/keyring.py, docs/security.md)."""

import hashlib
import json
import os
import secrets
from dataclasses import replace

import pytest
from handmade import DOMAIN, borg_vm, host_key, image_data, manifest, sign, write_archive
from realstack import run

from borg_vm.adapters.borg import find_borg
from borg_vm.services import keyring

DATA = b"\x5a" * 65536          # the host's own restore point
PLANTED = b"\xee" * 65536       # what a planter would have a restore bring back
LATER = "20261126T030000Z"      # after the host's own archive


@pytest.fixture
def repo(make_repo, tmp_path, monkeypatch):
    """A repository holding one archive this host wrote, set as BORG_REPO."""
    borg = make_repo()
    monkeypatch.setenv("BORG_REPO", borg.repo)
    monkeypatch.setenv("BORG_VM_RUNTIME_DIR", str(tmp_path / "run"))
    borg.good = write_archive(borg, {"vda": DATA})
    return borg


def cli(*args, code):
    return borg_vm(*args, code=code, env=dict(os.environ))


def listed():
    return [a["name"] for a in json.loads(cli("list", "--json", code=None).stdout)["archives"]]


def restored(tmp_path, *args, code):
    """Restore DOMAIN into a new directory; return (its --json document, the stderr)."""
    to = tmp_path / f"out-{secrets.token_hex(3)}"
    proc = cli("restore", DOMAIN, "--to", str(to), "--json", *args, code=code)
    return json.loads(proc.stdout), proc.stderr


def test_an_unsigned_archive_is_ignored_and_named(repo, tmp_path):
    planted = write_archive(repo, {"vda": PLANTED}, m=manifest({"vda": PLANTED}, at=LATER),
                            signed=False)
    out = cli("list", code=1)
    assert f"ignoring archive {planted}: not authenticated: its comment carries no " \
           "authentication code" in out.stderr
    assert "borgvm-20261126T020000Z" in out.stdout and LATER not in out.stdout
    assert listed() == [repo.good]

    # the default restore point is the newest authentic one, not the planted
    doc, err = restored(tmp_path, code=1)
    assert doc["checkpoint"] == "borgvm-20261126T020000Z", doc
    assert image_data(doc["disks"]["vda"]["image"], tmp_path)[:len(DATA)] == DATA

    # asked for by name it is refused, unless told to use it anyway
    proc = cli("restore", DOMAIN, "--checkpoint", f"borgvm-{LATER}", "--to",
               str(tmp_path / "refused"), code=2)
    assert proc.stderr.splitlines()[-1] == (
        f"borg-vm: Archive {planted} is not authenticated: its comment carries no "
        "authentication code. It may have been planted by whoever can write the repository; "
        "--allow-unauthenticated uses it anyway ('borg-vm key import' adds the key of the "
        "host that wrote it).")
    assert not (tmp_path / "refused").exists()
    doc, err = restored(tmp_path, "--checkpoint", f"borgvm-{LATER}",
                        "--allow-unauthenticated", code=1)
    assert f"using {planted}, which is not authenticated" in err
    assert image_data(doc["disks"]["vda"]["image"], tmp_path)[:len(PLANTED)] == PLANTED

    # verify names it and exits 1; the host's own archive is ok
    out = cli("verify", DOMAIN, "--all", code=1)
    assert out.stdout.splitlines() == [
        f"ok       {repo.good}",
        f"UNAUTHENTICATED {planted}: its comment carries no authentication code"]


def test_only_a_domains_own_archives_and_every_domain_are_refused_alike(repo):
    """With every domain (no DOMAIN), list and verify judge the same way."""
    write_archive(repo, {"vda": PLANTED}, m=manifest({"vda": PLANTED}, at=LATER), signed=False)
    out = cli("verify", code=1)
    assert "UNAUTHENTICATED" in out.stdout and f"ok       {repo.good}" in out.stdout


def test_prune_keeps_by_authentic_archives_and_never_deletes_a_planted_one(repo):
    planted = write_archive(repo, {"vda": PLANTED}, m=manifest({"vda": PLANTED}, at=LATER),
                            signed=False)
    # planted as the newest: were it counted, --keep-last 1 would delete the host's own
    cli("prune", DOMAIN, "--keep-last", "1", code=1)
    # borg's own list: borg-vm's hides what it cannot authenticate
    names = {a["name"] for a in json.loads(run(find_borg(), "list", "--json",
                                                repo.repo).stdout)["archives"]}
    assert {repo.good, planted} <= names


def test_an_archive_signed_with_another_hosts_key_needs_that_key(repo, tmp_path, monkeypatch):
    other = keyring.Keyring(repo.repository_id(), (secrets.token_bytes(32),), frozenset(),
                            "2026-11-26T00:00:00Z")
    theirs = write_archive(repo, {"vda": PLANTED}, m=manifest({"vda": PLANTED}, at=LATER),
                           key=other.signing_key)
    out = cli("list", code=1)
    assert (f"ignoring archive {theirs}: not authenticated: it was signed with key "
            f"{other.key_ids()[0]}, which this host does not hold") in out.stderr

    exported = tmp_path / "other.borg-vm-key"
    exported.write_bytes(other.to_json())
    mine = json.loads(cli("key", "show", "--json", code=0).stdout)
    cli("key", "import", str(exported), code=0)
    shown = json.loads(cli("key", "show", "--json", code=0).stdout)
    assert shown["signing_key"] == mine["signing_key"]
    assert shown["keys"] == [mine["signing_key"], other.key_ids()[0]]
    assert os.stat(shown["path"]).st_mode & 0o777 == 0o600
    assert listed() == [repo.good, theirs]
    cli("verify", DOMAIN, "--all", code=0)

    # export writes a new private file, never over one
    again = tmp_path / "again"
    cli("key", "export", str(again), code=0)
    assert os.stat(again).st_mode & 0o777 == 0o600
    assert keyring.Keyring.from_json(again.read_bytes(), str(again)).key_ids() == shown["keys"]
    assert cli("key", "export", str(again), code=2).stderr.strip().endswith("File exists")


def test_a_manifest_not_signed_like_its_comment_is_damage(repo, tmp_path):
    m = manifest({"vda": PLANTED}, at=LATER)
    manifest_doc, comment = sign(repo, m)
    forged = json.loads(manifest_doc)
    forged["auth"][1] = "0" * 64
    name = write_archive(repo, {"vda": PLANTED}, m=m,
                         manifest_json=json.dumps(forged, separators=(",", ":")).encode())
    assert listed() == [repo.good, name]     # the comment is authentic
    proc = cli("restore", DOMAIN, "--to", str(tmp_path / "out"), code=2)
    assert proc.stderr.splitlines()[-1].startswith(
        f"borg-vm: Archive {name} is not a borg-vm archive this version can read: its "
        "manifest's authentication code is wrong")
    assert "DAMAGED" in cli("verify", DOMAIN, "--all", code=2).stdout


def test_a_domain_xml_other_than_the_signed_one_is_damage(repo, tmp_path):
    m = manifest({"vda": PLANTED}, at=LATER)   # signed over the default domain.xml ...
    evil = (b"<domain type='kvm'><name>x</name><memory>1</memory><os><type>hvm</type></os>"
            b"<devices><disk type='file' device='disk'><source file='/etc/shadow'/>"
            b"<target dev='vda'/></disk></devices></domain>")
    name = write_archive(repo, {"vda": PLANTED}, m=m, xml=evil)   # ... holding another
    assert hashlib.sha256(evil).hexdigest() != m.domain_xml_sha256
    proc = cli("restore", DOMAIN, "--to", str(tmp_path / "out"), code=2)
    assert (f"{name} is not a borg-vm archive this version can read: its domain.xml differs "
            "from the digest its manifest records") in proc.stderr.splitlines()[-1]


def test_a_signed_archive_from_the_future_or_off_its_checkpoint_is_refused(repo):
    future = write_archive(repo, {"vda": PLANTED}, m=manifest({"vda": PLANTED},
                                                               at="20991231T000000Z"))
    off = manifest({"vda": PLANTED}, at=LATER)
    off_name = write_archive(repo, {"vda": PLANTED}, m=replace(off, time="2026-11-26T04:00:00Z"))
    out = cli("list", DOMAIN, code=1)
    assert "2 archives of borgvm-test-handmade this host cannot authenticate" in out.stderr
    assert listed() == [repo.good]
    text = cli("verify", DOMAIN, "--all", code=1).stdout
    assert f"UNAUTHENTICATED {future}: its time 2099-12-31T00:00:00Z is in the future" in text
    assert (f"UNAUTHENTICATED {off_name}: its time 2026-11-26T04:00:00Z is not its "
            "checkpoint's") in text


def test_two_archives_claiming_one_checkpoint_are_both_refused(repo):
    m = manifest({"vda": PLANTED})
    twin = write_archive(repo, {"vda": PLANTED}, m=replace(m, snapshot="S2"))
    out = cli("list", DOMAIN, code=2)
    assert f"checkpoint borgvm-20261126T020000Z is also claimed by {twin}" in out.stderr
    assert out.stderr.splitlines()[-1] == (
        f"borg-vm: The repository holds 2 archive(s) of {DOMAIN!r}, none of which this host "
        f"can authenticate (e.g. {twin}: checkpoint borgvm-20261126T020000Z is also claimed "
        f"by {repo.good}). 'borg-vm verify {DOMAIN}' names each; 'borg-vm key import' adds "
        "the key of the host that wrote them; restore, mount and boot use them anyway with "
        "--allow-unauthenticated.")
    assert listed() == []


def test_an_old_format_archive_is_adopted_only_when_the_keyring_is_made(make_repo, tmp_path,
                                                                      monkeypatch):
    borg = make_repo()
    monkeypatch.setenv("BORG_REPO", borg.repo)
    monkeypatch.setenv("BORG_VM_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("BORG_VM_KEYS_DIR", str(tmp_path / "keys"))
    v3 = write_archive(borg, {"vda": DATA}, signed=False,
                       m=replace(manifest({"vda": DATA}), version=3))
    out = cli("list", code=0)   # the first use: the keyring is made and adopts it
    assert "trusting the 1 archives of earlier formats it holds" in out.stderr
    assert listed() == [v3]
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700

    late = write_archive(borg, {"vda": PLANTED}, signed=False,
                         m=replace(manifest({"vda": PLANTED}, at=LATER), version=3))
    out = cli("list", code=1)
    assert (f"ignoring archive {late}: not authenticated: an archive of format 3 added after "
            "this host began to sign its archives") in out.stderr
    assert listed() == [v3]
    assert host_key(borg)   # the keyring is the one the CLI made
