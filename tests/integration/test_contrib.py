"""The shipped set-up files are what they claim: the systemd units pass
`systemd-analyze verify`, and the retention their defaults give borg-vm prune
is accepted (issue #9)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from borg_vm.core.plan import FullEvery

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
BORG_VM = Path(sys.executable).with_name("borg-vm")


def units_in(tmp_path: Path, borg_vm: str) -> Path:
    """Copy the units into tmp_path with ExecStart naming borg_vm (the installed
    path, /usr/local/bin/borg-vm, is the README's; here it is the venv's)."""
    for unit in (CONTRIB / "systemd").iterdir():
        (tmp_path / unit.name).write_text(
            unit.read_text().replace("/usr/local/bin/borg-vm", borg_vm))
    return tmp_path


# What `systemctl enable` would name: an instance of the per-domain template,
# and the unit for every domain.
UNITS = ("borg-vm@web01.service", "borg-vm@web01.timer",
         "borg-vm-all.service", "borg-vm-all.timer")


def verify(units: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", *(str(units / u) for u in UNITS)],
                          capture_output=True, text=True)


@pytest.fixture(autouse=True)
def _systemd_analyze():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (contrib/setup-host.sh installs it)")


def test_units_verify(tmp_path):
    proc = verify(units_in(tmp_path, str(BORG_VM)))
    assert proc.returncode == 0, proc.stderr


def test_verify_catches_a_broken_unit(tmp_path):
    proc = verify(units_in(tmp_path, "/nonexistent/borg-vm"))
    assert proc.returncode != 0 and "/nonexistent/borg-vm" in proc.stderr


def test_the_units_default_retention_is_a_valid_prune(make_repo):
    service = (CONTRIB / "systemd" / "borg-vm@.service").read_text()
    keep = re.search(r'^Environment="BORG_VM_KEEP=([^"]*)"$', service, re.M).group(1)
    every = re.search(r"^Environment=BORG_VM_FULL_EVERY=(\S+)$", service, re.M).group(1)
    assert "ExecStart=/usr/local/bin/borg-vm prune $BORG_VM_KEEP %i" in service
    assert FullEvery.parse(every).age == 30 * 86400       # what backup reads from the unit
    repo = make_repo()
    env = dict(os.environ, BORG_REPO=repo.repo)
    proc = subprocess.run([str(BORG_VM), "prune", *keep.split(), "--dry-run"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "would delete 0 of 0 archives" in proc.stderr


def test_the_all_unit_backs_up_every_domain_then_prunes_like_the_domain_unit():
    """borg-vm-all.service: backup --all (every domain unless BORG_VM_MATCH
    narrows it), then prune every domain, by the per-domain unit's defaults."""
    def settings(unit: str) -> tuple[list[str], list[str]]:
        text = (CONTRIB / "systemd" / unit).read_text()
        lines = text.splitlines()
        return ([line for line in lines if line.startswith("Environment=")],
                [line for line in lines if line.startswith("ExecStart=")])

    one_env, _ = settings("borg-vm@.service")
    all_env, all_exec = settings("borg-vm-all.service")
    assert all_env == [*one_env, "Environment=BORG_VM_MATCH=*"]
    assert all_exec == [
        "ExecStart=/usr/local/bin/borg-vm backup --no-progress --all --match ${BORG_VM_MATCH}",
        "ExecStart=/usr/local/bin/borg-vm prune $BORG_VM_KEEP"]
