"""The domain's state in an archive (format 5: UEFI variables and TPM state), from
hand-made archives in a real repository: restore puts it where the restored
domain uses it, files 0600; verify and list see it; a damaged, oversized or
unlisted state member is refused like any other, before anything is written."""

import hashlib
import json
import os
import shutil
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from handmade import DOMAIN, Zeros, borg_vm, domain_xml, error_line, manifest, write_archive

from borg_vm.core import vmstate
from borg_vm.core.domxml import parse_xml
from borg_vm.format import names as fmt

DATA = b"\x5a" * 65536
NVRAM = b"\x4e" * 540672          # OVMF_VARS_4M.fd's size
TPM = os.urandom(9000)            # of the order of a TPM 2.0 permall
UEFI_XML = ("<os><type arch='x86_64' machine='q35'>hvm</type>"
            "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
            "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>"
            "/var/lib/libvirt/qemu/nvram/x_VARS.fd</nvram></os>")
TPM_XML = "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"


def uefi_tpm_xml() -> bytes:
    """domain_xml of vda, UEFI with a variable store, and an emulated TPM 2.0."""
    xml = domain_xml(("vda",), TPM_XML).decode()
    return xml.replace("<os><type arch='x86_64'>hvm</type></os>", UEFI_XML).encode()


def write_stateful(borg, state=None, members=None, xml=None) -> str:
    """Write a full of vda holding state (name -> bytes; default NVRAM and TPM) as
    its manifest lists it, with members (default: the state's members) in the
    archive; return its name."""
    state = {"nvram": NVRAM, "tpm": TPM} if state is None else state
    xml = uefi_tpm_xml() if xml is None else xml
    m = replace(manifest({"vda": DATA}, xml=xml),
                state={n: hashlib.sha256(raw).hexdigest() for n, raw in state.items()})
    if members is None:
        members = [(fmt.state_member(n), raw) for n, raw in state.items()]
    return write_archive(borg, {"vda": DATA}, xml=xml, m=m, extra=members)


@pytest.fixture
def swtpm_dirs():
    """The TPM state directories a test made under libvirt's (restore writes there),
    removed at teardown; yield a function that lists those made since the start."""
    before = set(os.listdir(vmstate.SWTPM_DIR)) if os.path.isdir(vmstate.SWTPM_DIR) else set()

    def made() -> list[str]:
        now = set(os.listdir(vmstate.SWTPM_DIR)) if os.path.isdir(vmstate.SWTPM_DIR) else set()
        return sorted(now - before)

    yield made
    for uuid in made():
        shutil.rmtree(os.path.join(vmstate.SWTPM_DIR, uuid))


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_restore_puts_the_state_where_the_restored_domain_uses_it(make_repo, tmp_path,
                                                                   swtpm_dirs):
    borg = make_repo()
    name = write_stateful(borg)
    to = tmp_path / "out"
    # The firmware is the host's (libvirt picks this host's): a warning, exit 1
    restored = borg_vm("restore", DOMAIN, "--repo", borg.repo, "--to", str(to), "--json",
                       code=1)
    assert "loader pflash (/usr/share/OVMF/OVMF_CODE_4M.fd)" in restored.stderr
    out = json.loads(restored.stdout)
    nvram, tpm = out["vm_state"]["nvram"], out["vm_state"]["tpm"]
    assert Path(nvram).read_bytes() == NVRAM and mode(nvram) == 0o600
    assert os.path.dirname(nvram) == str(to)
    root = parse_xml(Path(out["domain_xml"]).read_text())
    assert root.findtext("os/nvram") == nvram and root.find("os/nvram").get("template") is None
    uuid = root.findtext("uuid")
    (made,) = swtpm_dirs()
    assert made == uuid and uuid != manifest({"vda": DATA}).uuid
    assert tpm == vmstate.tpm_state_file("2.0", uuid)
    assert Path(tpm).read_bytes() == TPM
    assert (mode(tpm), mode(os.path.dirname(tpm)),
            mode(os.path.dirname(os.path.dirname(tpm)))) == (0o600, 0o700, 0o711)
    assert root.find("devices/tpm/backend").get("type") == "emulator"
    # the text output names both
    again = borg_vm("restore", DOMAIN, "--repo", borg.repo, "--to", str(tmp_path / "out2"),
                    code=1)
    assert "UEFI variables: " in again.stdout and "TPM state: " in again.stdout
    listed = json.loads(borg_vm("list", "--repo", borg.repo, "--json").stdout)["archives"]
    assert [a["vm_state"] for a in listed] == [["nvram", "tpm"]]
    assert "+nvram  +tpm" in borg_vm("list", "--repo", borg.repo).stdout
    verified = borg_vm("verify", DOMAIN, "--repo", borg.repo)
    assert verified.stdout.startswith("ok") and name in verified.stdout


@pytest.mark.parametrize("mode", [(), ("--flatten",), ("--layers",)],
                         ids=["chain", "flatten", "layers"])
def test_keep_host_resources_keeps_the_loader_and_the_state(make_repo, tmp_path, swtpm_dirs,
                                                            mode):
    borg = make_repo()
    write_stateful(borg)
    out = json.loads(borg_vm("restore", DOMAIN, "--repo", borg.repo, "--to", str(tmp_path),
                             "--json", "--keep-host-resources", *mode).stdout)
    root = parse_xml(Path(out["domain_xml"]).read_text())
    assert root.findtext("os/loader") == "/usr/share/OVMF/OVMF_CODE_4M.fd"
    assert root.findtext("os/nvram") == out["vm_state"]["nvram"]
    assert Path(out["vm_state"]["nvram"]).read_bytes() == NVRAM
    assert Path(out["vm_state"]["tpm"]).read_bytes() == TPM


@pytest.mark.parametrize("damage", ["nvram", "tpm"])
def test_damaged_state_is_refused_before_anything_is_written(make_repo, tmp_path, swtpm_dirs,
                                                             damage):
    borg = make_repo()
    state = {"nvram": NVRAM, "tpm": TPM}
    # The last byte flipped: a damage whatever the random state ends with
    members = [(fmt.state_member(n), raw[:-1] + bytes([raw[-1] ^ 0xFF]) if n == damage else raw)
               for n, raw in state.items()]
    name = write_stateful(borg, state, members)
    to = tmp_path / "out"
    line = error_line(borg_vm("restore", DOMAIN, "--repo", borg.repo, "--to", str(to),
                              code=2))
    assert name in line and f"state/{damage} differs from the digest" in line
    assert not to.exists() and swtpm_dirs() == []
    verified = borg_vm("verify", DOMAIN, "--repo", borg.repo, code=2)
    assert verified.stdout.startswith("DAMAGED") and f"state/{damage}" in verified.stdout


def test_missing_state_member_is_refused(make_repo, tmp_path, swtpm_dirs):
    borg = make_repo()
    name = write_stateful(borg, members=[(fmt.state_member("nvram"), NVRAM)])
    line = error_line(borg_vm("restore", DOMAIN, "--repo", borg.repo, "--to", str(tmp_path),
                              code=2))
    assert name in line and "no state/tpm" in line
    assert swtpm_dirs() == []


def test_oversized_state_member_is_refused_unread(make_repo, tmp_path, swtpm_dirs):
    borg = make_repo()
    big = Zeros(fmt.STATE["tpm"] + 1)
    name = write_stateful(borg, members=[(fmt.state_member("nvram"), NVRAM),
                                         (fmt.state_member("tpm"), big)])
    line = error_line(borg_vm("restore", DOMAIN, "--repo", borg.repo, "--to", str(tmp_path),
                              code=2))
    assert name in line and "state/tpm" in line
    assert swtpm_dirs() == []


def test_planted_unlisted_state_member_fails_verify_and_is_never_used(make_repo, tmp_path,
                                                                      swtpm_dirs):
    """A state member the manifest does not list: verify calls the archive damaged;
    restore reads only what the manifest lists, so it restores without it."""
    borg = make_repo()
    name = write_stateful(borg, state={}, members=[(fmt.state_member("tpm"), TPM)],
                          xml=domain_xml(("vda",)))
    verified = borg_vm("verify", DOMAIN, "--repo", borg.repo, code=2)
    assert verified.stdout.startswith("DAMAGED") and "does not list" in verified.stdout
    assert name in verified.stdout
    out = json.loads(borg_vm("restore", DOMAIN, "--repo", borg.repo, "--to", str(tmp_path),
                             "--json").stdout)
    assert out["vm_state"] == {} and swtpm_dirs() == []


def test_an_archive_without_the_state_its_domain_used_says_so(make_repo, tmp_path):
    borg = make_repo()
    write_stateful(borg, state={})
    proc = borg_vm("restore", DOMAIN, "--repo", borg.repo, "--to", str(tmp_path), "--json",
                   "--keep-host-resources", code=1)
    assert "holds no UEFI variables or TPM state" in proc.stderr
    assert "fresh UEFI variables and a new TPM" in proc.stderr
    root = parse_xml(Path(json.loads(proc.stdout)["domain_xml"]).read_text())
    assert root.find("os/nvram") is None and root.find("uuid") is None
