"""Where a domain's state beyond its disks is (core/vmstate.py), from its XML."""

import pytest

from borg_vm.core import domxml, vmstate

UUID = "0b5e0b5e-0000-4000-8000-000000000001"


def xml(os_extra: str = "", devices: str = "") -> str:
    return (f"<domain type='kvm'><name>d</name><uuid>{UUID}</uuid>"
            f"<os><type>hvm</type>{os_extra}</os><devices>{devices}</devices></domain>")


def test_no_state():
    assert vmstate.state_paths(xml(), UUID) == {}


def test_nvram_file():
    paths = vmstate.state_paths(xml("<nvram template='/t.fd'> /var/lib/x_VARS.fd </nvram>"),
                                UUID)
    assert paths == {"nvram": "/var/lib/x_VARS.fd"}


@pytest.mark.parametrize("nvram", ["<nvram type='network'><source protocol='iscsi'/></nvram>",
                                   "<nvram/>"])
def test_nvram_not_a_local_file_is_not_state(nvram):
    assert vmstate.state_paths(xml(nvram), UUID) == {}


@pytest.mark.parametrize("backend, path", [
    ("<backend type='emulator' version='2.0'/>", f"/var/lib/libvirt/swtpm/{UUID}/tpm2/"
                                                 "tpm2-00.permall"),
    ("<backend type='emulator'/>", f"/var/lib/libvirt/swtpm/{UUID}/tpm2/tpm2-00.permall"),
    ("<backend type='emulator' version='1.2'/>", f"/var/lib/libvirt/swtpm/{UUID}/tpm1.2/"
                                                 "tpm-00.permall"),
])
def test_emulated_tpm(backend, path):
    assert vmstate.state_paths(xml(devices=f"<tpm model='tpm-crb'>{backend}</tpm>"),
                               UUID) == {"tpm": path}


def test_passed_through_tpm_is_the_hosts():
    tpm = "<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/>" \
          "</backend></tpm>"
    assert vmstate.state_paths(xml(devices=tpm), UUID) == {}


def test_restored_xml_names_the_restored_state():
    archived = xml("<loader>/c.fd</loader><nvram template='/t.fd'>/v.fd</nvram>")
    root = domxml.parse_xml(domxml.restored_domain_xml(archived, "r", {}, "/to/r.nvram.fd",
                                                       "11111111-2222-4333-8444-555555555555"))
    assert [e.tag for e in root][:2] == ["name", "uuid"]
    assert root.findtext("uuid") == "11111111-2222-4333-8444-555555555555"
    assert [(e.text, e.attrib) for e in root.findall("os/nvram")] == [("/to/r.nvram.fd", {})]


def test_restored_xml_without_state_drops_uuid_and_nvram():
    archived = xml("<nvram>/v.fd</nvram>")
    root = domxml.parse_xml(domxml.restored_domain_xml(archived, "r", {}))
    assert root.find("uuid") is None and root.find("os/nvram") is None
