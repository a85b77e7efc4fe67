"""The whole VM, not only its disks: a UEFI guest with an emulated TPM 2.0 comes
back from a disaster with its UEFI variables and its TPM state.

The real guest boots under OVMF with swtpm (libvirt manufactures its TPM at
the first start). A marker goes into each, offline: a UEFI variable of the
suite's own and an NV index of the TPM. A backup of the shut-off domain, then
one of the running domain with --quiesce; the domain is destroyed and
undefined with its NVRAM and TPM state. restore writes both back, byte for
byte as they were at the backup, where the restored domain uses them; the
restored domain boots on them (libvirt runs no new TPM manufacturing) and
both markers are there. The same through `borg-vm boot` from the repository.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import libvirt
import realguest
import vmstate
from borgvm import backup, run
from guest import MIB

from borg_vm.core.domxml import parse_xml

DISK = [("vda", 64 * MIB, "qcow2")]
VARIABLE = "BorgVmTest"
SWTPM_LOGS = Path("/var/log/swtpm/libvirt/qemu")


def manufactured(name: str) -> bool:
    """Return True if libvirt made a new TPM for domain name (swtpm_setup ran)."""
    log = SWTPM_LOGS / f"{name}-swtpm.log"
    return log.exists() and "manufacturing" in log.read_text(errors="replace")


def permall(uuid: str) -> bytes:
    return (vmstate.tpm_state_dir(uuid) / "tpm2-00.permall").read_bytes()


def test_uefi_variables_and_tpm_state_survive_a_disaster(make_domain, real_guest, repo,
                                                          tmp_path, booted, libvirt_conn):
    dom = make_domain(DISK, boot=real_guest.boot("files"), uefi=True, tpm=True)
    realguest.wait_booted(dom, "files")
    uuid = dom.dom.UUIDString()
    nvram = dom.nvram()
    assert manufactured(dom.name)
    dom.shut_off()
    variable, marker = secrets.token_bytes(16), secrets.token_bytes(vmstate.MARKER_SIZE)
    vmstate.set_uefi_variable(nvram, VARIABLE, variable)
    vmstate.write_tpm_marker(vmstate.tpm_state_dir(uuid), tmp_path, marker)

    # Shut off: the files as they are; running: as at the job's start (the guest
    # writes neither once booted, so they are what the backup must hold).
    first = backup(dom.name, repo)
    at_first = nvram.read_bytes(), permall(uuid)
    dom.start()
    realguest.wait_booted(dom, "files")
    second = backup(dom.name, repo, "--quiesce")
    at_second = nvram.read_bytes(), permall(uuid)
    assert (first["level"], second["level"]) == ("full", "inc")
    listed = run("list", dom.name, "--repo", repo, "--json").json()["archives"]
    assert [a["vm_state"] for a in listed] == [["nvram", "tpm"]] * 2
    assert run("verify", dom.name, "--repo", repo).stdout.startswith("ok")

    # The disaster: the domain, its variables and its TPM are gone.
    dom.dom.destroy()
    dom.dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                          | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    assert not nvram.exists() and not vmstate.tpm_state_dir(uuid).exists()

    # restore: the firmware and the kernel are the host's (a warning, exit 1)
    of_first = run("restore", dom.name, "--repo", repo, "--checkpoint", first["checkpoint"],
                   "--to", str(tmp_path / "restore-first"), "--json", code=1).json()
    try:   # never defined: its TPM state is removed by hand, as docs/usage.md says
        assert tuple(Path(of_first["vm_state"][n]).read_bytes()
                     for n in ("nvram", "tpm")) == at_first
    finally:
        shutil.rmtree(Path(of_first["vm_state"]["tpm"]).parent.parent)
    restored = run("restore", dom.name, "--repo", repo, "--checkpoint", second["checkpoint"],
                   "--to", str(tmp_path / "restore"), "--json", code=1).json()
    state = {n: Path(p) for n, p in restored["vm_state"].items()}
    new_uuid = parse_xml(Path(restored["domain_xml"]).read_text()).findtext("uuid")
    assert state["tpm"] == vmstate.tpm_state_dir(new_uuid) / "tpm2-00.permall"
    assert (state["nvram"].read_bytes(), state["tpm"].read_bytes()) == at_second
    assert {n: oct(os.stat(p).st_mode & 0o777) for n, p in state.items()} == {
        "nvram": "0o600", "tpm": "0o600"}
    copy = realguest.boot_restored(make_domain, restored, real_guest, tmp_path)
    assert realguest.verified(copy).log.startswith("whole ")   # it booted, its disk read
    assert copy.dom.UUIDString() == new_uuid and not manufactured(copy.name)
    copy.shut_off()
    assert vmstate.uefi_variable(state["nvram"], VARIABLE) == variable
    assert vmstate.tpm_marker(vmstate.tpm_state_dir(new_uuid), tmp_path) == marker

    # boot from the repository, as of the shut-off backup
    dom.serial.write_bytes(b"")   # the kept XML's console file: this boot's lines only
    new, doc = booted(dom, repo, None, "--checkpoint", first["checkpoint"],
                      "--keep-host-resources")
    assert set(doc["vm_state"]) == {"nvram", "tpm"}
    realguest.Console(dom.serial).wait_for("workload files started", realguest.BOOT_TIMEOUT)
    assert not manufactured(new.name)
    new.dom.destroy()
    booted_uuid = new.dom.UUIDString()
    assert Path(doc["vm_state"]["tpm"]).parent == vmstate.tpm_state_dir(booted_uuid)
    assert vmstate.uefi_variable(Path(doc["vm_state"]["nvram"]), VARIABLE) == variable
    assert vmstate.tpm_marker(vmstate.tpm_state_dir(booted_uuid), tmp_path) == marker
