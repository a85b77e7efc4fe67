"""Fixtures of the fault matrix: the e2e tier's real domains and repositories
(tests/e2e/conftest.py's make_domain and repo, shared, not copied) over a
libvirt connection that survives a libvirt daemon restart (one case restarts
it), and a record per case for tests/faults/RESULTS.md (see results.py)."""

import importlib.util
import sys
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parent.parent / "e2e"
sys.path.insert(0, str(E2E))   # guest.py, borgvm.py, borg_wrapper.py

_spec = importlib.util.spec_from_file_location("e2e_conftest", E2E / "conftest.py")
_e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_e2e)

from harness import Target  # noqa: E402  (needs tests/e2e on the path)
from results import RECORD  # noqa: E402
make_domain = _e2e.make_domain
repo = _e2e.repo
MIB = 1024 * 1024


class Daemon:
    """The connection to libvirt, opened again when the daemon was restarted."""

    def __init__(self):
        self.conn = _e2e.libvirt.open(_e2e.URI)

    def live(self):
        try:
            self.conn.getLibVersion()   # isAlive() may not have noticed yet
        except _e2e.libvirt.libvirtError:
            self.conn = _e2e.libvirt.open(_e2e.URI)
        return self.conn


@pytest.fixture(scope="session")
def daemon():
    """Return the session's Daemon; skip with the reason if libvirt is unavailable."""
    if _e2e._IMPORT_ERROR is not None:
        pytest.skip(f"libvirt/QEMU test helpers unavailable: {_e2e._IMPORT_ERROR}")
    try:
        d = Daemon()
    except _e2e.libvirt.libvirtError as e:
        pytest.skip(f"cannot connect to {_e2e.URI}: {e}")
    yield d
    d.live().close()


@pytest.fixture
def libvirt_conn(daemon):
    return daemon.live()


@pytest.fixture(scope="session")
def virt_type(daemon):
    return "kvm" if _e2e.guest.kvm_usable(daemon.live()) else "qemu"


@pytest.fixture(scope="session")
def real_virt_type(daemon):
    """What make_domain boots the real guest with: 'kvm' where KVM can boot it, else 'qemu'."""
    return "kvm" if _e2e.realguest.kvm_boots_stock_kernels(daemon.live()) else "qemu"


@pytest.fixture(scope="session")
def _remove_stale_domains(daemon):
    for dom in _e2e.guest.stale_domains(daemon.live()):
        _e2e.guest.remove_domain(dom)


@pytest.fixture
def target(make_domain, repo, tmp_path, record):
    """Return target(disks=..., repo=..., scratch=None, args=(), name_suffix=None) ->
    harness.Target: a new domain (one 64 MiB qcow2 disk by default) with a good full
    backup of a guest write, and another write since, for the run a case strikes."""
    made = []

    def make(disks=(("vda", 64 * MIB, "qcow2"),), repo=repo, scratch=None, args=(),
             name_suffix=None):
        t = Target(make_domain(disks=disks, name_suffix=name_suffix), repo, tmp_path,
                   record, args, scratch)
        made.append(t)
        t.write()
        t.backup()
        t.write()
        return t
    yield make
    for t in made:   # a test that failed may leave a run stopped at a phase
        t.end_runs()


@pytest.fixture
def record(request) -> dict:
    """Return this case's row of RESULTS.md, to fill in: "injected" (what the test
    did), "did" (what borg-vm did), "left" (what it left behind), "next" (what the
    next run did) and "lost"."""
    row: dict[str, str] = {}
    request.node.user_properties.append((RECORD, row))
    return row
