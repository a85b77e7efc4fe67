"""Fixtures for the end-to-end tier: real throw-away libvirt/QEMU domains.

Only domains named borgvm-test-* that carry this suite's metadata are ever
touched; see guest.py for how guest I/O is injected and checked.
"""

import subprocess

import pytest

try:
    import guest
    import libvirt
    import realguest
    from borgvm import init_repo
except ImportError as e:  # reported by libvirt_conn, so every e2e test skips (fails under CI)
    _IMPORT_ERROR = e
else:
    _IMPORT_ERROR = None

URI = "qemu:///system"


class Connection:
    """A connection to URI that opens again when the daemon was restarted (a case of
    tests/faults restarts it); otherwise a virConnect."""

    def __init__(self):
        self._conn = libvirt.open(URI)

    def __getattr__(self, name: str):
        try:
            self._conn.getLibVersion()   # isAlive() may not have noticed yet
        except libvirt.libvirtError:
            self._conn = libvirt.open(URI)
        return getattr(self._conn, name)


@pytest.fixture(scope="session")
def libvirt_conn():
    """Return a Connection to qemu:///system for the whole session; skip
    with the reason if the bindings or the daemon are unavailable."""
    if _IMPORT_ERROR is not None:
        pytest.skip(f"libvirt/QEMU test helpers unavailable: {_IMPORT_ERROR}")
    try:
        conn = Connection()
    except libvirt.libvirtError as e:
        pytest.skip(f"cannot connect to {URI}: {e}")
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def virt_type(libvirt_conn):
    """Return 'kvm' if KVM is usable here, else 'qemu' (TCG)."""
    return "kvm" if guest.kvm_usable(libvirt_conn) else "qemu"


@pytest.fixture(scope="session")
def real_virt_type(libvirt_conn):
    """Return 'kvm' if KVM can boot the real guest here, else 'qemu' (TCG)."""
    return "kvm" if realguest.kvm_boots_stock_kernels(libvirt_conn) else "qemu"


@pytest.fixture(scope="session")
def real_guest():
    """Return the real test guest's files, built by contrib/guest/build-guest.sh
    (cached: about a second once built); fail if it cannot be built."""
    try:
        return realguest.build()
    except subprocess.CalledProcessError as e:
        pytest.fail(f"building the test guest failed: {e.stderr}")


@pytest.fixture(scope="session")
def _remove_stale_domains(libvirt_conn):
    """At session start, remove borgvm-test-* domains left by crashed runs:
    only those with our metadata, a dead creating process and all images
    under the temp dir (the images themselves are left to pytest's cleanup)."""
    for dom in guest.stale_domains(libvirt_conn):
        guest.remove_domain(dom)


@pytest.fixture
def make_domain(libvirt_conn, virt_type, real_virt_type, _remove_stale_domains, tmp_path,
                tmp_path_factory):
    """Return make_domain(disks=[("vda", 64 MiB, "qcow2"), ...],
    name_suffix=None, discard="unmap", boot=None, fill=None, uefi=False,
    tpm=False) -> guest.Domain: a persistent domain started paused, or booting
    the real guest (`boot`, see realguest.py), its images filled before it
    starts by `fill`, with OVMF firmware (`uefi`) and an emulated TPM 2.0
    (`tpm`) if asked (see guest.create_domain), with images and NVRAM in
    tmp_path/vms; and
    make_domain.define(xml, disks, serial) -> guest.Domain for a domain of this
    suite defined from XML (guest.define_domain). Every domain made is
    destroyed and undefined (with checkpoint/snapshot metadata, NVRAM and TPM
    state) and its images removed at teardown, even when the test failed."""
    workdir = tmp_path / "vms"
    workdir.mkdir()
    basetemp = tmp_path_factory.getbasetemp()
    top = basetemp.parent if basetemp.parent.name.startswith("pytest-of-") else basetemp
    guest.allow_traverse(workdir, top)
    made = []

    def factory(disks=(("vda", 64 * guest.MIB, "qcow2"),), name_suffix=None, discard="unmap",
                boot=None, fill=None, uefi=False, tpm=False):
        domain = guest.create_domain(libvirt_conn, workdir,
                                     virt_type if boot is None else real_virt_type, list(disks),
                                     name_suffix=name_suffix, discard=discard, boot=boot,
                                     fill=fill, uefi=uefi, tpm=tpm)
        made.append(domain)
        return domain

    def define(xml, disks, serial=None):
        for path in [*(p for p, _fmt in disks.values()), *([serial] if serial else [])]:
            guest.allow_traverse(path.parent, top)
        domain = guest.define_domain(libvirt_conn, xml, workdir, disks, serial=serial)
        made.append(domain)
        return domain

    factory.define = define
    yield factory
    errors = []
    for domain in reversed(made):
        try:
            guest.destroy_test_domain(domain)
        except Exception as e:
            errors.append(f"{domain.name}: {e!r}")
    if errors:
        pytest.fail("teardown of test domains failed: " + "; ".join(errors))


@pytest.fixture
def repo(tmp_path):
    """Return the path of a new unencrypted Borg repository in tmp_path."""
    return init_repo(tmp_path / "repo")
