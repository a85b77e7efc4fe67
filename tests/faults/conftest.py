"""Fixtures of the fault matrix: the e2e tier's real domains and repositories
(tests/e2e/conftest.py's fixtures, shared, not copied), a Target per case
(harness.py) and its row of tests/faults/RESULTS.md (see results.py)."""

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

# The e2e tier's fixtures, over a libvirt connection that survives the restart
# of the daemon test_parts.py does.
libvirt_conn = _e2e.libvirt_conn
virt_type = _e2e.virt_type
real_virt_type = _e2e.real_virt_type
_remove_stale_domains = _e2e._remove_stale_domains
make_domain = _e2e.make_domain
MIB = 1024 * 1024
generation = _e2e.generation
repo = _e2e.repo


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
