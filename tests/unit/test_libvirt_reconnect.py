"""A domain borg-vm looked up or defined survives libvirtd restarting between calls
(adapters/libvirt.py: _Reconnecting), with a fake libvirt connection."""

import libvirt
import pytest

from borg_vm.adapters.libvirt import Hypervisor

UUID = "6a3b0d4e-0000-4000-8000-000000000001"


class FakeDomain:
    def __init__(self, conn):
        self.conn = conn

    def UUIDString(self):
        return UUID

    def name(self):
        return "vm"

    def isActive(self):
        if self.conn.closed:
            raise libvirt.libvirtError("internal error: client socket is closed")
        return 1


class FakeConn:
    def __init__(self):
        self.closed = False

    def lookupByName(self, name):
        if name != "vm":
            raise libvirt.libvirtError("no domain")
        return FakeDomain(self)

    def lookupByUUIDString(self, uuid):
        assert uuid == UUID
        return FakeDomain(self)

    def defineXML(self, xml):
        return FakeDomain(self)

    def getLibVersion(self):
        if self.closed:
            raise libvirt.libvirtError("internal error: client socket is closed")
        return 9000000

    def close(self):
        self.closed = True


@pytest.fixture
def hv(monkeypatch):
    conns = [FakeConn()]
    monkeypatch.setattr(libvirt, "open", lambda uri: conns.append(FakeConn()) or conns[-1])
    hv = Hypervisor(conns[0], "qemu:///system")
    return hv, conns


@pytest.mark.parametrize("how", ["domain", "define"])
def test_a_domain_survives_a_lost_connection(hv, how, monkeypatch):
    hv, conns = hv
    if how == "domain":
        dom = hv.domain("vm")
    else:
        monkeypatch.setattr(hv, "exists", lambda name: False)
        dom = hv.define("<domain/>", "vm")
    conns[0].closed = True          # libvirtd restarted: the old connection is dead
    assert dom.is_active()
    assert len(conns) == 2          # connected again, the call made on the new one
