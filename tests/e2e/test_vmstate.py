"""Fast checks that vmstate.py's markers round-trip, on a fresh OVMF variable
store and a fresh swtpm state: no domain, no libvirt."""

import os
import shutil
import subprocess

import pytest

pytest.importorskip("libvirt")

import vmstate  # noqa: E402  (guest.py, which it uses, needs libvirt)
from guest import OVMF_VARS  # noqa: E402

NOBODY = 65534   # an owner neither root nor swtpm would give a file


def test_uefi_variable_round_trip_keeps_the_store_and_its_owner(tmp_path):
    nvram = tmp_path / "VARS.fd"
    shutil.copyfile(OVMF_VARS, nvram)
    os.chown(nvram, NOBODY, NOBODY)
    nvram.chmod(0o600)
    assert vmstate.uefi_variable(nvram, "BorgVmTest") is None

    # Two writes only: virt-fw-vars takes about 2 s to write a store here.
    vmstate.set_uefi_variable(nvram, "BorgVmTest", b"\x00first\xff")
    vmstate.set_uefi_variable(nvram, "BorgVmOther", b"other")
    assert vmstate.uefi_variable(nvram, "BorgVmTest") == b"\x00first\xff"
    assert vmstate.uefi_variable(nvram, "BorgVmOther") == b"other"
    assert vmstate.uefi_variable(nvram, "BorgVmTest", guid=vmstate.MARKER_GUID.upper()) is None
    st = nvram.stat()
    assert (st.st_size, st.st_uid, st.st_mode & 0o777) == (OVMF_VARS.stat().st_size, NOBODY,
                                                            0o600)


def test_tpm_marker_round_trip_keeps_the_owner(tmp_path):
    state = tmp_path / "tpm2"
    state.mkdir()
    subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", str(state)], check=True,
                   capture_output=True)
    for path in (state, *state.iterdir()):
        os.chown(path, NOBODY, NOBODY)
    assert vmstate.tpm_marker(state, tmp_path) is None

    vmstate.write_tpm_marker(state, tmp_path, b"a" * vmstate.MARKER_SIZE)
    marker = os.urandom(vmstate.MARKER_SIZE)
    vmstate.write_tpm_marker(state, tmp_path, marker)   # defined anew
    assert vmstate.tpm_marker(state, tmp_path) == marker
    assert vmstate.tpm_marker(state, tmp_path, vmstate.MARKER_NV_INDEX + 1) is None
    assert {p.name: p.stat().st_uid for p in state.iterdir()} == {
        ".lock": NOBODY, "tpm2-00.permall": NOBODY}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tpm2"]   # no socket left


def test_a_running_tpm_is_not_touched(tmp_path):
    state = tmp_path / "tpm2"
    state.mkdir()
    subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", str(state)], check=True,
                   capture_output=True)
    with vmstate.Swtpm(state, tmp_path), pytest.raises(vmstate.StateError, match="lock"):
        vmstate.tpm_marker(state, tmp_path)   # as if the domain's swtpm ran
