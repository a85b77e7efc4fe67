"""Borg 2 repositories beyond a local path (issue #22): sftp:// against a real
sshd on 127.0.0.1 (a key forced to internal-sftp: no shell, no borg on the
server), rclone: with Debian's rclone (its local backend), and s3: against a
real S3 server on 127.0.0.1 (SeaweedFS, s3server.py). A full and an
incremental, each verified and restored bit for bit."""

from __future__ import annotations

import os
import subprocess

import pytest
from borgvm import backup, restore_and_compare, run
from guest import MIB
from s3server import S3Server
from sshd import LOOPBACK, make_key

KIB = 1024
PASSPHRASE = "borg2 locations"


@pytest.fixture
def sftp_location(tmp_path, ssh_server):
    """(location, environment): an sftp:// repository path on a real sshd, the
    client's key and the server's host key in a private HOME's ~/.ssh, where
    Borg 2 (paramiko) looks for them."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    key = home / ".ssh" / "id_borgvm"
    ssh_server.authorize(make_key(key, "borg-vm-test-client"), ["internal-sftp"])
    (home / ".ssh" / "config").write_text(f"Host {LOOPBACK}\n  IdentityFile {key}\n")
    (home / ".ssh" / "known_hosts").write_text(ssh_server.known_hosts.read_text())
    store = tmp_path / "store"
    store.mkdir()
    # Two slashes: an absolute path (one would be relative to the user's home).
    return f"sftp://root@{LOOPBACK}:{ssh_server.port}/{store}/repo", {"HOME": str(home)}


@pytest.fixture
def rclone_location(tmp_path):
    """(location, environment): an rclone: repository (rclone's local backend)."""
    return f"rclone::local:{tmp_path / 'store' / 'repo'}", {}


@pytest.fixture
def s3_location(tmp_path):
    """(location, environment): a repository in a bucket of a real S3 server."""
    with S3Server(tmp_path / "s3") as server:
        yield server.location("repo"), {}


@pytest.mark.parametrize("where", ["sftp_location", "rclone_location", "s3_location"])
def test_backup_and_restore_at_a_remote_location(where, request, make_domain,
                                                 borg2_stores_executable, tmp_path):
    location, extra = request.getfixturevalue(where)
    borg = borg2_stores_executable
    env = {**os.environ, **extra, "BORG_VM_BORG": borg, "BORG_PASSPHRASE": PASSPHRASE}
    done = subprocess.run([borg, "-r", location, "repo-create", "-e", "aes256-ocb"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 2 * MIB, 0x61)
    results, views = [backup(d.name, location, env=env)], [d.views()]
    d.write("vda", 8 * MIB, 256 * KIB, 0x62)
    results.append(backup(d.name, location, env=env))
    views.append(d.views())
    assert [r["level"] for r in results] == ["full", "inc"]
    assert results[1]["disks"]["vda"]["read"] <= 256 * KIB + 64 * KIB
    checked = run("verify", d.name, "--all", "--repo", location, "--json", env=env).json()
    assert checked["ok"] and len(checked["archives"]) == 2, checked
    for i, (r, view) in enumerate(zip(results, views, strict=True)):
        restore_and_compare(d.name, location, r["checkpoint"], view, tmp_path, f"at{i}",
                            env=env)
