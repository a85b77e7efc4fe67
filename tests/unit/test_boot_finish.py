"""boot --finish of a domain that reads nothing from a repository, against
libvirt's own test driver (test:///default: libvirt in this process, no daemon,
no QEMU; its domains live as long as the process, so the real main() runs here).
Pulling disks needs QEMU: tests/e2e/test_boot.py."""

import json
import uuid

import pytest

from borg_vm import cli

libvirt = pytest.importorskip("libvirt")

TEST_URI = "test:///default"
NBD_BACKING = """
      <backingStore type='network'>
        <format type='raw'/>
        <source protocol='nbd'><host transport='unix' socket='/run/borg-vm/x/vda.sock'/></source>
        <backingStore/>
      </backingStore>"""


@pytest.fixture
def define(tmp_path, monkeypatch):
    """Return define(backed) -> the name of a new running test-driver domain with one
    qcow2 disk (backed by an NBD export if backed); undefined at teardown."""
    monkeypatch.setenv("BORG_VM_RUNTIME_DIR", str(tmp_path / "run"))
    conn = libvirt.open(TEST_URI)
    made = []

    def make(backed: bool) -> str:
        name = f"borgvm-test-{uuid.uuid4().hex[:8]}-restored"
        dom = conn.defineXML(f"""<domain type='test'><name>{name}</name>
  <memory>65536</memory><os><type>hvm</type></os>
  <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{tmp_path}/{name}.vda.qcow2'/>{NBD_BACKING if backed else ''}
      <target dev='vda' bus='virtio'/></disk></devices></domain>""")
        dom.create()
        made.append(dom)
        return name

    yield make
    for dom in made:
        dom.destroy()
        dom.undefine()
    conn.close()


def run_main(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_finishing_a_finished_domain_says_so_and_exits_0(define, capsys, tmp_path):
    name = define(backed=False)
    code, out, err = run_main(capsys, "boot", "--finish", name, "-c", TEST_URI)
    assert code == 0, err
    assert out == f"vda: {tmp_path}/{name}.vda.qcow2\n"
    assert err == (f"borg-vm: {name}: nothing to finish: it reads nothing from a repository "
                   "(its boot was finished already, or borg-vm did not boot it)\n")
    code, out, _err = run_main(capsys, "boot", "--finish", name, "-c", TEST_URI, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["pulled"] == 0 and doc["nothing_to_do"] is True


def test_a_domain_reading_from_a_repository_without_a_boot_record_is_refused(define,
                                                                              capsys):
    name = define(backed=True)
    code, _out, err = run_main(capsys, "boot", "--finish", name, "-c", TEST_URI)
    assert code == 2
    assert err.startswith(f"borg-vm: Domain {name!r} has no borg-vm boot record")
