"""Fixtures for the integration tier: real qemu-img, qemu-io, qemu-nbd,
nbdkit and borg, each working in the test's own tmp_path.

NBD servers are started by libnbd (socket activation or stdio, so they end
with the connection) or, for a unix socket, by the ``qemu_nbd_socket``
fixture, which stops its server at teardown. The top-level conftest clears
BORG_* and gives every test a private BORG_BASE_DIR.
"""

import shutil
import subprocess
import time

import pytest
from realstack import copy_fixture_repo, listening, run

from borg_vm.adapters.borg import Borg1Repository, features, find_borg
from borg_vm.adapters.borg.borg2 import Borg2Repository

TOOLS = ("qemu-img", "qemu-io", "qemu-nbd", "nbdkit")
SOCKET_WAIT_SECONDS = 10
SOCKET_POLL_SECONDS = 0.02


@pytest.fixture(autouse=True)
def _tools_installed():
    """Skip with the reason when a tool this tier drives is missing (under CI
    the top-level conftest turns that skip into a failure)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


@pytest.fixture
def qemu_nbd_socket(tmp_path):
    """Return serve(image, *options) -> socket path: a qemu-nbd serving image
    (export name 'vda') on a unix socket in tmp_path, stopped at teardown."""
    servers = []

    def serve(image, *options):
        sock = str(tmp_path / f"nbd{len(servers)}.sock")
        proc = subprocess.Popen(["qemu-nbd", "--persistent", "--socket", sock, "-x", "vda",
                                 *options, image],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        servers.append(proc)
        deadline = time.monotonic() + SOCKET_WAIT_SECONDS
        while not listening(sock):
            if proc.poll() is not None:
                pytest.fail(f"qemu-nbd exited {proc.returncode}: {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail(f"qemu-nbd did not listen on {sock} in {SOCKET_WAIT_SECONDS} s")
            time.sleep(SOCKET_POLL_SECONDS)
        return sock

    yield serve
    for proc in servers:
        proc.terminate()
        proc.wait(SOCKET_WAIT_SECONDS)
        proc.stderr.close()


@pytest.fixture
def make_repo(tmp_path):
    """Return make_repo(encryption='none', name='repo') -> Borg: a new
    repository in tmp_path, made with 'borg init'. For repokey modes set
    BORG_PASSPHRASE first."""

    def make(encryption="none", name="repo"):
        path = str(tmp_path / name)
        run(find_borg(), "init", "-e", encryption, path)
        return Borg1Repository(path)

    return make


@pytest.fixture
def v1_repo(tmp_path, monkeypatch):
    """A repository borg-vm 0.1.0 wrote in archive format 1 (tests/fixtures/v1-repo),
    set as BORG_REPO."""
    return copy_fixture_repo("v1-repo", tmp_path, monkeypatch)



BORG2_PASSPHRASE = "borg2 test"


@pytest.fixture
def repo2(tmp_path, monkeypatch, borg2_executable, request):
    """A new Borg 2 repository in tmp_path: encrypted, unless a test is
    parametrized with indirect=True over Borg 2 encryption modes."""
    monkeypatch.setenv("BORG_PASSPHRASE", BORG2_PASSPHRASE)
    monkeypatch.setenv("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
    path = str(tmp_path / "repo2")
    subprocess.run([borg2_executable, "-r", path, "repo-create", "-e",
                    getattr(request, "param", "aes256-ocb")], check=True, capture_output=True)
    version = features.BorgVersion.parse(subprocess.run(
        [borg2_executable, "--version"], check=True, capture_output=True, text=True).stdout)
    return Borg2Repository(path, executable=borg2_executable, version=version)
