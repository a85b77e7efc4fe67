"""Fixtures for the end-to-end tier: real throw-away libvirt/QEMU domains.

Only domains named borgvm-test-* that carry this suite's metadata are ever
touched; see guest.py for how guest I/O is injected and checked.
"""

import pytest

try:
    import libvirt

    import guest
    from borgvm import init_repo
except ImportError as e:  # reported by libvirt_conn, so every e2e test skips (fails under CI)
    _IMPORT_ERROR = e
else:
    _IMPORT_ERROR = None

URI = "qemu:///system"


@pytest.fixture(scope="session")
def libvirt_conn():
    """Return a connection to qemu:///system for the whole session; skip
    with the reason if the bindings or the daemon are unavailable."""
    if _IMPORT_ERROR is not None:
        pytest.skip(f"libvirt/QEMU test helpers unavailable: {_IMPORT_ERROR}")
    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError as e:
        pytest.skip(f"cannot connect to {URI}: {e}")
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def virt_type(libvirt_conn):
    """Return 'kvm' if KVM is usable here, else 'qemu' (TCG)."""
    return "kvm" if guest.kvm_usable(libvirt_conn) else "qemu"


@pytest.fixture(scope="session")
def _remove_stale_domains(libvirt_conn):
    """At session start, remove borgvm-test-* domains left by crashed runs:
    only those with our metadata, a dead creating process and all images
    under the temp dir (the images themselves are left to pytest's cleanup)."""
    for dom in guest.stale_domains(libvirt_conn):
        guest.remove_domain(dom)


@pytest.fixture
def make_domain(libvirt_conn, virt_type, _remove_stale_domains, tmp_path, tmp_path_factory):
    """Return make_domain(disks=[("vda", 64 MiB, "qcow2"), ...],
    name_suffix=None, discard="unmap", fill=None) -> guest.Domain: a persistent
    domain started paused, with images in tmp_path/vms (see guest.create_domain).  Every domain made is
    destroyed and undefined (with checkpoint/snapshot metadata) and its
    images removed at teardown, even when the test failed."""
    workdir = tmp_path / "vms"
    workdir.mkdir()
    basetemp = tmp_path_factory.getbasetemp()
    top = basetemp.parent if basetemp.parent.name.startswith("pytest-of-") else basetemp
    guest.allow_traverse(workdir, top)
    made = []

    def factory(disks=(("vda", 64 * guest.MIB, "qcow2"),), name_suffix=None, discard="unmap",
                fill=None):
        domain = guest.create_domain(libvirt_conn, workdir, virt_type, list(disks),
                                     name_suffix=name_suffix, discard=discard, fill=fill)
        made.append(domain)
        return domain

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
