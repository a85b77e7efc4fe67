"""Host resources: what restore and boot leave out of an archived domain's XML."""

import xml.etree.ElementTree as ET

import pytest
from test_domxml import DOMAIN_XML

from borg_vm.core.domxml import parse_disks, restored_domain_xml
from borg_vm.core.host_resources import strip

# What an archived domain may name on its host (or an attacker may put in an archive).
HOSTILE_XML = """\
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web01-restored</name>
  <metadata><app:note xmlns:app='https://example.org/app'>/etc/passwd</app:note></metadata>
  <description>/etc/passwd is a path in free text</description>
  <blkiotune><device><path>/dev/sda</path><weight>500</weight></device></blkiotune>
  <resource><partition>/machine</partition></resource>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.secboot.fd</loader>
    <kernel>/etc/shadow</kernel>
    <initrd>/boot/initrd.img</initrd>
    <cmdline>console=ttyS0 root=/dev/vda1</cmdline>
    <boot dev='hd'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/restore/web01.vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <mirror type='file' file='/var/lib/libvirt/images/steal.qcow2' format='qcow2'/>
    </disk>
    <disk type='block' device='lun' sgio='unfiltered'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/sdb'/>
      <target dev='sda' bus='scsi'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/debian-12.iso'/>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/etc/shadow'/>
      <target dev='vdc' bus='virtio'/>
      <readonly/>
    </disk>
    <disk type='network' device='cdrom'>
      <source protocol='rbd' name='pool/tools'/>
      <target dev='sdd' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sdc' bus='sata'/>
      <readonly/>
    </disk>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='/'/>
      <target dir='hostroot'/>
    </filesystem>
    <filesystem type='ram'><source usage='1024'/><target dir='tmp'/></filesystem>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source>
    </hostdev>
    <interface type='hostdev'><source><address type='pci' bus='0x04'/></source></interface>
    <interface type='network'><source network='default'/><model type='virtio'/></interface>
    <smartcard mode='host'/>
    <serial type='file'><source path='/root/.ssh/authorized_keys'/><target port='0'/></serial>
    <serial type='pty'><target port='1'/></serial>
    <console type='pty'><target type='serial' port='1'/></console>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/web01.agent'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.1'/></channel>
    <input type='evdev'><source dev='/dev/input/event0'/></input>
    <input type='tablet' bus='usb'/>
    <tpm model='tpm-crb'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <rng model='virtio'><backend model='random'>/etc/passwd</backend></rng>
    <graphics type='vnc' port='-1' autoport='yes'/>
    <memory model='nvdimm'><source><path>/dev/shm/secret</path></source>
      <target><size unit='KiB'>524288</size></target></memory>
  </devices>
  <qemu:commandline><qemu:arg value='-device'/><qemu:arg value='vfio-pci,host=0000:05:00.0'/>
  </qemu:commandline>
  <qemu:capabilities><qemu:del capability='sandbox'/></qemu:capabilities>
</domain>
"""
OWN = {"/restore/web01.vda.qcow2"}


def stripped():
    xml, removed = strip(HOSTILE_XML, OWN)
    return ET.fromstring(xml), removed


def test_strip_lists_what_it_removed():
    _root, removed = stripped()
    assert removed == [
        "qemu:commandline", "qemu:capabilities",
        "disk vda: mirror file (/var/lib/libvirt/images/steal.qcow2)",
        "disk sda (/dev/sdb)", "disk sdb (/iso/debian-12.iso)", "disk vdc (/etc/shadow)",
        "disk sdd (rbd pool/tools)", "filesystem mount (/)", "filesystem ram",
        "hostdev pci", "interface hostdev", "smartcard host",
        "serial file (/root/.ssh/authorized_keys) -> pty",
        "channel unix (/var/lib/libvirt/qemu/web01.agent)", "input evdev (/dev/input/event0)",
        "tpm (/dev/tpm0)", "rng (/etc/passwd)", "memory (/dev/shm/secret)",
        "loader pflash (/usr/share/OVMF/OVMF_CODE.secboot.fd)", "kernel (/etc/shadow)",
        "initrd (/boot/initrd.img)", "blkiotune (/dev/sda)"]


def test_strip_leaves_only_own_files_and_entropy_sources():
    root, _removed = stripped()
    free = {"metadata", "description", "resource"}
    paths = {v for top in root if top.tag not in free for e in top.iter()
             for v in (*e.attrib.values(), (e.text or "").strip()) if v.startswith("/")}
    assert paths == OWN | {"/dev/urandom"}
    assert root.find("devices/emulator") is None            # libvirt fills in its own
    assert all(not e.tag.startswith("{") for e in root)      # no qemu: element left


def test_strip_keeps_what_is_no_host_resource():
    root, _removed = stripped()
    devices = root.find("devices")
    assert [d.find("target").get("dev") for d in devices.findall("disk")] == ["vda", "sdc"]
    vda = devices.find("disk")
    assert [e.tag for e in vda] == ["driver", "source", "target"]
    assert [i.get("type") for i in devices.findall("interface")] == ["network"]
    assert [(s.get("type"), s.find("target").get("port")) for s in devices.findall("serial")] == [
        ("pty", "0"), ("pty", "1")]
    assert devices.find("console") is not None and devices.find("graphics") is not None
    assert [c.find("target").get("name") for c in devices.findall("channel")] == [
        "org.qemu.guest_agent.1"]
    assert [i.get("type") for i in devices.findall("input")] == ["tablet"]
    assert [r.findtext("backend") for r in devices.findall("rng")] == ["/dev/urandom"]
    assert root.findtext("os/cmdline") == "console=ttyS0 root=/dev/vda1"
    assert root.findtext("resource/partition") == "/machine"
    assert root.findtext("description").startswith("/etc/passwd")
    assert root.find("metadata")[0].text == "/etc/passwd"


def test_strip_lets_libvirt_choose_uefi_firmware_for_a_pflash_loader():
    os_ = stripped()[0].find("os")
    assert os_.find("loader") is None
    assert os_.get("firmware") == "efi"
    assert [(f.get("name"), f.get("enabled")) for f in os_.findall("firmware/feature")] == [
        ("secure-boot", "yes")]


def test_strip_keeps_a_chosen_firmware_and_adds_none_for_a_rom_loader():
    rom = ("<domain><name>x</name><os><type>hvm</type>"
           "<loader type='rom'>/usr/share/seabios/bios.bin</loader></os></domain>")
    root = ET.fromstring(strip(rom, set())[0])
    assert root.find("os").get("firmware") is None and root.find("os/loader") is None
    efi = ("<domain><name>x</name><os firmware='efi'><type>hvm</type>"
           "<firmware><feature enabled='no' name='secure-boot'/></firmware>"
           "<loader type='pflash' secure='yes'>/usr/share/OVMF/OVMF_CODE.fd</loader></os>"
           "</domain>")
    root = ET.fromstring(strip(efi, set())[0])
    assert [f.get("enabled") for f in root.findall("os/firmware/feature")] == ["no"]


def test_strip_of_a_plain_restored_domain_removes_nothing_but_the_emulator():
    xml = restored_domain_xml(DOMAIN_XML, "web01-restored",
                              {"vda": ("/r/vda.qcow2", "qcow2"), "vdb": ("/r/vdb.img", "raw")})
    out, removed = strip(xml, {"/r/vda.qcow2", "/r/vdb.img"})
    assert removed == ["disk sda (/iso/debian-12.iso)",
                       "disk vdc (/var/lib/libvirt/images/tools.qcow2)"]
    assert "emulator" not in out
    assert {d.target for d in parse_disks(out)} == {"vda", "vdb", "sdb"}


def domain(devices: str, rest: str = "") -> str:
    return f"<domain type='kvm'><name>x</name><devices>{devices}</devices>{rest}</domain>"


def strip_devices(devices: str, own: frozenset[str] = frozenset()) -> tuple[ET.Element, list]:
    """Return (<devices> of the stripped domain with these devices, what was changed)."""
    xml, changes = strip(domain(devices), set(own))
    return ET.fromstring(xml).find("devices"), changes


def same(e: ET.Element, xml: str) -> bool:
    """Return whether e is the element xml, but for whitespace between elements."""
    return (ET.canonicalize(ET.tostring(e), strip_text=True)
            == ET.canonicalize(xml, strip_text=True))


# --- graphics: listening on loopback only -------------------------------------------------

@pytest.mark.parametrize("graphics, change", [
    ("<graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0'>"
     "<listen type='address' address='0.0.0.0'/></graphics>", "vnc listen 0.0.0.0"),
    ("<graphics type='spice' autoport='yes'><listen type='address' address='::'/>"
     "<image compression='off'/></graphics>", "spice listen ::"),
    ("<graphics type='vnc' port='5977' autoport='no' listen='192.0.2.10'/>",
     "vnc listen 192.0.2.10"),
    ("<graphics type='vnc'><listen type='network' network='default'/></graphics>",
     "vnc listen network default"),
    ("<graphics type='spice'><listen type='address' address='127.0.0.1'/>"
     "<listen type='address' address='0.0.0.0'/></graphics>", "spice listen 0.0.0.0"),
    ("<graphics type='vnc' listen='localhost'/>", "vnc listen localhost"),  # resolved by the host
    ("<graphics type='rdp' listen='0.0.0.0'/>", "rdp listen 0.0.0.0"),
])
def test_a_graphics_listen_beyond_loopback_becomes_loopback(graphics, change):
    devices, changes = strip_devices(graphics)
    assert changes == [f"graphics {change} -> 127.0.0.1"]
    (g,) = devices.findall("graphics")
    assert g.get("listen") == "127.0.0.1"
    assert [(e.get("type"), e.get("address")) for e in g.findall("listen")] == [
        ("address", "127.0.0.1")]
    assert [e.tag for e in g] == ["listen"] + [e.tag for e in ET.fromstring(graphics)
                                               if e.tag != "listen"]


@pytest.mark.parametrize("graphics", [
    "<graphics type='vnc' port='-1' autoport='yes'><listen type='address'/></graphics>",
    "<graphics type='spice' autoport='yes'/>",
    "<graphics type='vnc' listen='127.0.0.1'><listen type='address' address='127.0.0.1'/>"
    "</graphics>",
    "<graphics type='spice' listen='::1'/>",
    "<graphics type='vnc' listen='127.0.0.2' websocket='5700'/>",
    "<graphics type='vnc'><listen type='socket'/></graphics>",
    "<graphics type='spice'><listen type='none'/></graphics>",
    "<graphics type='egl-headless'/>",
    "<graphics type='dbus' p2p='yes'/>",
])
def test_graphics_on_loopback_or_the_hosts_default_listen_are_kept(graphics):
    # No address: the host's default (qemu.conf's vnc_listen, spice_listen; 127.0.0.1
    # unless its administrator chose otherwise).
    devices, changes = strip_devices(graphics)
    assert changes == []
    assert same(devices.find("graphics"), graphics)


@pytest.mark.parametrize("graphics, removed", [
    ("<graphics type='sdl' display=':0'/>", "graphics sdl"),
    ("<graphics type='desktop' fullscreen='yes'/>", "graphics desktop"),
    ("<graphics type='dbus' address='unix:path=/run/user/0/bus'/>",
     "graphics dbus (unix:path=/run/user/0/bus)"),
    ("<graphics type='vnc' socket='/run/vnc.sock'/>", "graphics vnc (/run/vnc.sock)"),
    ("<graphics type='hologram'/>", "graphics hologram"),
])
def test_graphics_on_the_hosts_display_or_bus_are_removed(graphics, removed):
    devices, changes = strip_devices(graphics)
    assert changes == [removed]
    assert devices.find("graphics") is None


# --- seclabels: the host's default labelling ---------------------------------------------

@pytest.mark.parametrize("label, change", [
    ("<seclabel type='none'/>", "seclabel none"),
    ("<seclabel type='none' model='selinux'/>", "seclabel selinux none"),
    ("<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>",
     "seclabel dac static relabel=no (+0:+0)"),
    ("<seclabel type='static' model='selinux' relabel='yes'>"
     "<label>system_u:system_r:unconfined_t:s0</label></seclabel>",
     "seclabel selinux static (system_u:system_r:unconfined_t:s0)"),
    ("<seclabel type='dynamic' model='selinux'>"
     "<baselabel>system_u:system_r:svirt_tcg_t:s0</baselabel></seclabel>",
     "seclabel selinux dynamic (system_u:system_r:svirt_tcg_t:s0)"),
    ("<seclabel type='dynamic' model='dac' relabel='no'/>", "seclabel dac dynamic relabel=no"),
])
def test_a_domains_own_seclabel_gives_way_to_the_hosts_default(label, change):
    xml, changes = strip(domain("", label + "<seclabel type='dynamic' model='dac'/>"), set())
    assert changes == [change]
    assert ET.fromstring(xml).find("seclabel") is None


@pytest.mark.parametrize("label", [
    "<seclabel type='dynamic' model='dac' relabel='yes'/>",
    "<seclabel model='selinux'/>",
    # as the live XML shows what libvirt chose for one run
    "<seclabel type='dynamic' model='selinux' relabel='yes'>"
    "<label>system_u:system_r:svirt_t:s0:c1,c2</label>"
    "<imagelabel>system_u:object_r:svirt_image_t:s0:c1,c2</imagelabel></seclabel>",
])
def test_a_seclabel_as_libvirt_makes_one_anyway_goes_without_mention(label):
    xml, changes = strip(domain("", label), set())
    assert changes == []
    assert ET.fromstring(xml).find("seclabel") is None


def test_a_devices_seclabel_is_removed():
    devices, changes = strip_devices(
        "<disk type='file' device='disk'><source file='/r/vda.qcow2'>"
        "<seclabel model='dac' relabel='no'/></source><target dev='vda'/></disk>"
        "<serial type='pty'><source><seclabel model='selinux' relabel='yes'>"
        "<label>system_u:object_r:svirt_image_t:s0</label></seclabel></source>"
        "<target port='0'/></serial>", own=frozenset({"/r/vda.qcow2"}))
    assert changes == ["disk vda: seclabel dac relabel=no",
                       "serial pty: seclabel selinux (system_u:object_r:svirt_image_t:s0)"]
    assert not list(devices.iter("seclabel"))
    assert devices.find("disk/source").get("file") == "/r/vda.qcow2"


def test_a_seclabel_in_a_removed_device_is_not_named_twice():
    _devices, changes = strip_devices(
        "<disk type='file' device='cdrom'><source file='/iso/x.iso'>"
        "<seclabel model='dac' relabel='no'/></source><target dev='sda'/><readonly/></disk>")
    assert changes == ["disk sda (/iso/x.iso)"]


# --- character devices: nothing beyond QEMU and libvirt ----------------------------------

@pytest.mark.parametrize("port, change", [
    ("<serial type='tcp'><source mode='connect' host='198.51.100.7' service='4555'/>"
     "<protocol type='telnet'/><target port='0'/></serial>",
     "serial tcp (connect 198.51.100.7:4555)"),
    ("<serial type='udp'><source mode='bind' host='0.0.0.0' service='4556'/>"
     "<source mode='connect' host='198.51.100.7' service='4557'/><target port='0'/></serial>",
     "serial udp (bind 0.0.0.0:4556, connect 198.51.100.7:4557)"),
    # on loopback too: any local user may connect, to a pty only root and libvirt
    ("<serial type='tcp'><source mode='bind' host='127.0.0.1' service='4555'/>"
     "<target port='0'/></serial>", "serial tcp (bind 127.0.0.1:4555)"),
    ("<console type='tcp'><source mode='bind' host='0.0.0.0' service='4555'/>"
     "<target type='serial' port='0'/></console>", "console tcp (bind 0.0.0.0:4555)"),
    ("<serial type='file'><source path='/root/.ssh/authorized_keys'/><target port='0'/></serial>",
     "serial file (/root/.ssh/authorized_keys)"),
    ("<parallel type='file'><source path='/tmp/lp'/><target port='0'/></parallel>",
     "parallel file (/tmp/lp)"),
    ("<serial type='dev'><source path='/dev/ttyS0'/><target port='0'/></serial>",
     "serial dev (/dev/ttyS0)"),
    ("<serial type='pipe'><source path='/tmp/serial'/><target port='0'/></serial>",
     "serial pipe (/tmp/serial)"),
    ("<serial type='unix'><source mode='bind' path='/tmp/serial.sock'/><target port='0'/>"
     "</serial>", "serial unix (/tmp/serial.sock)"),
    ("<serial type='stdio'><target port='0'/></serial>", "serial stdio"),
    ("<serial type='pty'><log file='/var/log/libvirt/qemu/x-serial0.log' append='off'/>"
     "<target port='0'/></serial>", "serial pty (/var/log/libvirt/qemu/x-serial0.log)"),
])
def test_a_port_to_anything_beyond_qemu_and_libvirt_becomes_a_pty(port, change):
    devices, changes = strip_devices(port)
    assert changes == [f"{change} -> pty"]
    (e,) = list(devices)
    assert e.get("type") == "pty" and [c.tag for c in e] == ["target"]
    assert e.find("target").attrib == ET.fromstring(port).find("target").attrib


def test_a_pty_keeps_which_port_of_the_guest_it_is():
    devices, _changes = strip_devices(
        "<serial type='tcp'><source mode='bind' host='0.0.0.0' service='4555'/>"
        "<target type='isa-serial' port='0'><model name='isa-serial'/></target>"
        "<alias name='ua-console'/><address type='isa' iobase='0x3f8'/></serial>")
    assert same(devices.find("serial"), (
        "<serial type='pty'><target type='isa-serial' port='0'><model name='isa-serial'/>"
        "</target><alias name='ua-console'/><address type='isa' iobase='0x3f8'/></serial>"))


@pytest.mark.parametrize("dev", [
    "<serial type='pty'><target type='isa-serial' port='0'><model name='isa-serial'/>"
    "</target></serial>",
    "<console type='pty'><target type='serial' port='0'/></console>",
    "<serial type='null'><target port='1'/></serial>",
    "<serial type='vc'><target port='2'/></serial>",
    "<serial type='spiceport'><source channel='org.qemu.console.serial.0'/><target port='3'/>"
    "</serial>",
    "<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>",
    "<channel type='unix'><source mode='bind'/>"
    "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
    "<channel type='qemu-vdagent'><source><clipboard copypaste='yes'/></source>"
    "<target type='virtio' name='com.redhat.spice.0'/></channel>",
    "<channel type='pty'><target type='virtio' name='org.example.0'/></channel>",
    "<redirdev bus='usb' type='spicevmc'/>",
    "<smartcard mode='passthrough' type='spicevmc'/>",
    "<rng model='virtio'><backend model='builtin'/></rng>",
    "<rng model='virtio'><backend model='egd' type='spicevmc'/></rng>",
])
def test_character_devices_that_reach_nothing_beyond_qemu_and_libvirt_are_kept(dev):
    devices, changes = strip_devices(dev)
    assert changes == []
    assert same(devices[0], dev)


@pytest.mark.parametrize("dev, removed", [
    ("<channel type='tcp'><source mode='connect' host='198.51.100.7' service='9000'/>"
     "<target type='virtio' name='org.example.0'/></channel>",
     "channel tcp (connect 198.51.100.7:9000)"),
    ("<channel type='tcp'><source mode='connect' host='198.51.100.7' service='80'/>"
     "<target type='guestfwd' address='10.0.2.1' port='4600'/></channel>",
     "channel tcp (connect 198.51.100.7:80)"),
    ("<channel type='pipe'><source path='/tmp/pipe'/>"
     "<target type='virtio' name='org.example.0'/></channel>", "channel pipe (/tmp/pipe)"),
    ("<redirdev bus='usb' type='tcp'><source mode='connect' host='198.51.100.7' "
     "service='4000'/></redirdev>", "redirdev tcp (connect 198.51.100.7:4000)"),
    ("<smartcard mode='passthrough' type='tcp'><source mode='bind' host='0.0.0.0' "
     "service='2001'/></smartcard>", "smartcard tcp (bind 0.0.0.0:2001)"),
    ("<smartcard mode='host-certificates'><certificate>cert1</certificate>"
     "<database>/etc/pki/nssdb/</database></smartcard>",
     "smartcard host-certificates (/etc/pki/nssdb/)"),
    ("<smartcard mode='host-certificates'><certificate>cert1</certificate></smartcard>",
     "smartcard host-certificates"),
    ("<rng model='virtio'><backend model='egd' type='udp'><source mode='bind' service='1234'/>"
     "<source mode='connect' host='198.51.100.7' service='1234'/></backend></rng>",
     "rng egd udp (bind :1234, connect 198.51.100.7:1234)"),
])
def test_character_devices_that_reach_beyond_qemu_and_libvirt_are_removed(dev, removed):
    devices, changes = strip_devices(dev)
    assert changes == [removed]
    assert len(devices) == 0


# --- shared memory, network interfaces, audio --------------------------------------------

@pytest.mark.parametrize("shmem, removed", [
    ("<shmem name='ivshmem0'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>",
     "shmem ivshmem0"),
    ("<shmem name='ivshmem1'><model type='ivshmem-doorbell'/>"
     "<server path='/tmp/socket-ivshmem1'/></shmem>", "shmem ivshmem1 (/tmp/socket-ivshmem1)"),
])
def test_memory_shared_with_the_host_is_removed(shmem, removed):
    devices, changes = strip_devices(shmem)
    assert changes == [removed]
    assert len(devices) == 0


@pytest.mark.parametrize("nic", [
    "<interface type='network'><source network='default'/><model type='virtio'/></interface>",
    "<interface type='bridge'><source bridge='br0'/></interface>",
    "<interface type='user'><backend type='passt'/></interface>",
    "<interface type='ethernet'><target dev='tap7' managed='no'/></interface>",
    "<interface type='direct'><source dev='eth0' mode='bridge'/></interface>",
])
def test_interfaces_on_the_hosts_networks_are_kept(nic):
    devices, changes = strip_devices(nic)
    assert changes == []
    assert same(devices[0], nic)


@pytest.mark.parametrize("nic, removed", [
    ("<interface type='direct'><source dev='eth0' mode='passthrough'/></interface>",
     "interface direct (eth0 passthrough)"),
    ("<interface type='hostdev' managed='yes'><source><address type='pci' bus='0x04'/>"
     "</source></interface>", "interface hostdev"),
    ("<interface type='udp'><source address='198.51.100.7' port='5558'>"
     "<local address='0.0.0.0' port='5557'/></source></interface>",
     "interface udp (198.51.100.7:5558)"),
    ("<interface type='mcast'><source address='230.0.0.1' port='5558'/></interface>",
     "interface mcast (230.0.0.1:5558)"),
    ("<interface type='server'><source address='0.0.0.0' port='5558'/></interface>",
     "interface server (0.0.0.0:5558)"),
    ("<interface type='client'><source address='198.51.100.7' port='5558'/></interface>",
     "interface client (198.51.100.7:5558)"),
    ("<interface type='vhostuser'><source type='unix' path='/tmp/vhost1.sock' mode='server'/>"
     "</interface>", "interface vhostuser (/tmp/vhost1.sock)"),
    ("<interface type='vdpa'><source dev='/dev/vhost-vdpa-0'/></interface>",
     "interface vdpa (/dev/vhost-vdpa-0)"),
])
def test_interfaces_to_the_hosts_hardware_or_other_hosts_are_removed(nic, removed):
    devices, changes = strip_devices(nic)
    assert changes == [removed]
    assert len(devices) == 0


def test_port_forwards_to_user_networking_are_removed():
    devices, changes = strip_devices(
        "<interface type='user'><backend type='passt'/>"
        "<portForward proto='tcp' address='0.0.0.0'><range start='2022' to='22'/></portForward>"
        "<portForward proto='udp'><range start='5353' end='5354'/></portForward>"
        "<model type='virtio'/></interface>")
    assert changes == ["interface user: portForward tcp (0.0.0.0:2022)",
                       "interface user: portForward udp (:5353-5354)"]
    assert same(devices[0], "<interface type='user'><backend type='passt'/>"
                            "<model type='virtio'/></interface>")


@pytest.mark.parametrize("audio, change", [
    ("<audio id='1' type='pulseaudio' serverName='tcp:198.51.100.7'>"
     "<input name='in'/></audio>", "audio pulseaudio (tcp:198.51.100.7)"),
    ("<audio id='1' type='alsa'><output dev='hw:0'/></audio>", "audio alsa"),
    ("<audio id='1' type='oss'><output dev='/dev/dsp0'/></audio>", "audio oss (/dev/dsp0)"),
    ("<audio id='1' type='file' path='/tmp/guest.wav'/>", "audio file (/tmp/guest.wav)"),
    ("<audio id='1' type='sdl'/>", "audio sdl"),
])
def test_audio_played_on_the_host_plays_nowhere(audio, change):
    devices, changes = strip_devices(audio)
    assert changes == [f"{change} -> none"]
    assert same(devices[0], "<audio id='1' type='none'/>")


@pytest.mark.parametrize("audio", ["<audio id='1' type='none'/>", "<audio id='1' type='spice'/>",
                                   "<audio id='2' type='dbus'/>"])
def test_audio_to_the_graphics_client_or_nowhere_is_kept(audio):
    devices, changes = strip_devices(audio)
    assert changes == []
    assert same(devices[0], audio)


# As libvirt 9.0 keeps a domain made by virt-install (its persistent definition, which
# is what backups archive), with SPICE, the guest agent and a restored disk.
PLAIN_XML = """\
<domain type='kvm'>
  <name>web01-restored</name>
  <memory unit='KiB'>1048576</memory>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='/r/vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/><target dev='sda' bus='sata'/><readonly/>
    </disk>
    <interface type='network'><source network='default'/><model type='virtio'/></interface>
    <serial type='pty'>
      <target type='isa-serial' port='0'><model name='isa-serial'/></target>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
      <address type='virtio-serial' controller='0' bus='0' port='1'/>
    </channel>
    <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>
    <input type='tablet' bus='usb'/>
    <graphics type='spice' autoport='yes'><listen type='address'/>
      <image compression='off'/></graphics>
    <sound model='ich9'/>
    <audio id='1' type='spice'/>
    <video><model type='qxl' ram='65536' vram='65536' vgamem='16384' heads='1'/></video>
    <redirdev bus='usb' type='spicevmc'/>
    <memballoon model='virtio'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
"""


def test_a_plain_domain_is_kept_but_its_emulator_without_a_warning():
    xml, changes = strip(PLAIN_XML, {"/r/vda.qcow2"})
    assert changes == []
    expected = ET.fromstring(PLAIN_XML)
    expected.find("devices").remove(expected.find("devices/emulator"))
    assert same(ET.fromstring(xml), ET.tostring(expected, encoding="unicode"))


def test_the_restored_xml_is_indented_as_libvirt_indents_it():
    # Removed and inserted elements left their neighbours' whitespace behind:
    # '<source .../><target', '    </devices>', '  </domain>'.
    xml = restored_domain_xml(DOMAIN_XML, "web01-restored", {"vda": ("/r/vda.qcow2", "qcow2")})
    out, _changes = strip(xml, {"/r/vda.qcow2"})
    lines = out.splitlines()
    assert lines[-2:] == ["  </devices>", "</domain>"]
    assert '      <source file="/r/vda.qcow2" />' in lines
    depth = 0
    for line in lines:
        tag = line.lstrip()
        depth -= tag.startswith("</")
        assert line == "  " * depth + tag, out
        depth += not (tag.startswith("</") or tag.endswith("/>") or "</" in tag)
