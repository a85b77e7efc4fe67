"""Fixtures for the end-to-end tier: real throw-away libvirt/QEMU domains.

Only domains named borgvm-test-* that carry this suite's metadata are ever
touched; see guest.py for how guest I/O is injected and checked.
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest

try:
    import guest
    import libvirt
    import realguest
    from borgvm import init_repo, init_repo2, is_boot_server, run
    from mounting import wait_gone
except ImportError as e:  # reported by libvirt_conn, so every e2e test skips (fails under CI)
    _IMPORT_ERROR = e
else:
    _IMPORT_ERROR = None

URI = "qemu:///system"
SERVER_STOP_TIMEOUT = 60   # seconds a boot's server may take to stop at teardown


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


BORG2_PASSPHRASE = "e2e borg2"


@pytest.fixture
def generation(request) -> str:
    """The repository's Borg generation: "borg1" unless a test is parametrized
    with indirect=True over ["borg1", "borg2"] (behaviour both share)."""
    return getattr(request, "param", "borg1")


@pytest.fixture
def repo(generation, tmp_path, monkeypatch, request):
    """Return the path of a new repository in tmp_path: Borg 1's, unencrypted,
    or (generation "borg2") an encrypted Borg 2 one, with borg-vm pointed at
    Borg 2 and given its passphrase for the test."""
    if generation == "borg1":
        return init_repo(tmp_path / "repo")
    borg2_executable = request.getfixturevalue("borg2_executable")   # skips without one
    monkeypatch.setenv("BORG_VM_BORG", borg2_executable)
    monkeypatch.setenv("BORG_PASSPHRASE", BORG2_PASSPHRASE)
    return init_repo2(tmp_path / "repo2", borg2_executable)


@pytest.fixture
def booted(libvirt_conn, tmp_path):
    """Return boot(source Domain, repo, views, *extra) -> (guest.Domain of the booted
    domain, borg-vm boot's --json document). The booted Domain's model starts as the
    source's views at the checkpoint booted (the caller passes them; None: no model). At teardown the booted
    domains are removed, their servers stopped (by the pid boot reported) and their
    run directories removed, whatever the test left."""
    made = []

    def factory(source: guest.Domain, repo: str, views: dict[str, bytes] | None, *extra: str):
        to = tmp_path / "boot"
        doc = run("boot", source.name, "--repo", repo, "--to", str(to), "--json",
                  *extra).json()
        made.append(doc)
        dom = libvirt_conn.lookupByName(doc["name"])
        images = {t: Path(d["image"]) for t, d in doc["disks"].items()}
        if views is None:   # no model of its disks
            return guest.Domain(dom, tmp_path, images, {t: "qcow2" for t in images}, {},
                                source.discard_mode, model=False), doc
        new = guest.Domain(dom, tmp_path, images, {t: "qcow2" for t in images},
                           {t: len(views[t]) for t in images}, source.discard_mode)
        new.model = {t: bytearray(views[t]) for t in images}
        return new, doc

    yield factory
    for doc in made:
        try:
            guest.remove_domain(libvirt_conn.lookupByName(doc["name"]))
        except libvirt.libvirtError:
            pass   # the test removed it, or it never got defined
        pid = doc["server"]["pid"]
        if is_boot_server(pid):
            os.kill(pid, signal.SIGTERM)
            wait_gone(pid, SERVER_STOP_TIMEOUT)
        for d in doc["disks"].values():
            Path(d["image"]).unlink(missing_ok=True)
        run_dir = Path(doc["server"]["log"]).parent
        for f in run_dir.glob("*") if run_dir.is_dir() else ():
            f.unlink()
        if run_dir.is_dir():
            run_dir.rmdir()
