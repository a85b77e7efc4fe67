"""Reading a domain's UEFI variable store at backup (services/backup/vmstate.py)."""

import os

import pytest

from borg_vm.errors import StateUnreadable
from borg_vm.format import names as fmt
from borg_vm.services.backup import vmstate

UUID = "0b5e0b5e-0000-4000-8000-000000000001"


def xml(nvram) -> str:
    return (f"<domain type='kvm'><name>d</name><os><type>hvm</type><nvram>{nvram}</nvram>"
            f"</os><devices/></domain>")


def test_reads_the_store(tmp_path):
    (tmp_path / "v.fd").write_bytes(b"vars")
    assert vmstate.read("d", xml(tmp_path / "v.fd"), UUID) == {"nvram": b"vars"}


def test_a_store_not_made_yet_is_left_out_and_said(tmp_path, caplog):
    caplog.set_level("INFO")
    assert vmstate.read("d", xml(tmp_path / "none.fd"), UUID) == {}
    assert "no UEFI variables at" in caplog.text and "not run" in caplog.text


def test_a_store_bigger_than_the_format_holds_is_refused(tmp_path):
    big = tmp_path / "big.fd"
    with open(big, "wb") as f:
        f.truncate(fmt.STATE["nvram"] + 1)
    with pytest.raises(StateUnreadable, match="bigger than"):
        vmstate.read("d", xml(big), UUID)


def test_not_a_regular_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StateUnreadable, match="not a regular file"):
        vmstate.read("d", xml(fifo), UUID)


def test_a_directory_is_one_error(tmp_path):
    with pytest.raises(StateUnreadable, match="UEFI variables of domain 'd'.*not a regular"):
        vmstate.read("d", xml(tmp_path), UUID)
