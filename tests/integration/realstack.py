"""Helpers for the integration tier's own calls to the real tools (not the
code under test): qemu-io and qemu-img to prepare and inspect images, and
tar streams into and out of borg through borg_vm's Borg and tarstream.

A module of its own, not conftest.py: 'from conftest import' is ambiguous
when several test tiers each have a conftest.py.
"""

import json
import logging
import shutil
import socket
import subprocess
from pathlib import Path

from borg_vm.format.names import BLOCK_SIZE
from borg_vm.format.tarstream import TarWriter, read_members

KiB = 1024
MiB = 1024 * KiB
BLOCK = BLOCK_SIZE  # the archive format's block, and Borg's fixed chunk size
CHUNKER = f"fixed,{BLOCK}"
TIMESTAMP = "2026-11-26T02:00:00"
MTIME = 1795658400


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    """Run argv (a test's own tool call, not the code under test); fail with its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}: {proc.stderr}"
    return proc


def log_run(args, proc: subprocess.CompletedProcess) -> None:
    """Log a borg-vm run, its exit code and its last line on stderr, to "borgvm.runs"
    (tests/faults/results.py puts what borg-vm said into its table)."""
    last = (proc.stderr.strip().splitlines() or [""])[-1].removeprefix("borg-vm: ")
    logging.getLogger("borgvm.runs").info("borg-vm %s: exit %d: %s", " ".join(args),
                                          proc.returncode, last,
                                          extra={"exit_code": proc.returncode, "last_line": last})


def qemu_io(image: str, fmt: str, *commands: str) -> None:
    """Run qemu-io commands (e.g. 'write -P 0xab 1M 64k') against image."""
    argv = ["qemu-io", "-f", fmt]
    for c in commands:
        argv += ["-c", c]
    run(*argv, image)


def qemu_map(image: str, fmt: str) -> list[dict]:
    """Return `qemu-img map --output=json` of image."""
    return json.loads(run("qemu-img", "map", "--output=json", "-f", fmt, image).stdout)


def allocated_data(image: str, fmt: str) -> list[tuple[int, int]]:
    """Return the (start, length) ranges the image stores as data."""
    return [(m["start"], m["length"]) for m in qemu_map(image, fmt) if m["data"]]


def import_members(borg, archive, members, comment="c"):
    """Stream (name, data) members as a tar into 'borg import-tar'; wait for it;
    return the ID of the archive it committed."""
    with borg.import_tar(archive, comment=comment, timestamp=TIMESTAMP, compression="lz4",
                         chunker_params=CHUNKER) as proc:
        tar = TarWriter(proc.stdin, MTIME)
        for name, data in members:
            tar.add(name, data)
        tar.close()
        return borg.finish_import(proc)


def export_members(borg, archive, paths=()):
    """Return [(name, data)] of the members 'borg export-tar' streams."""
    with borg.export_tar(archive, list(paths)) as proc:
        members = [(m.name, m.read()) for m in read_members(proc.stdout) if m.regular]
        borg.finish("export-tar", proc)
    return members


def extract_file(borg, archive, path):
    """Return the contents of one file of an archive ('borg extract --stdout')."""
    with borg.extract_stdout(archive, [path]) as proc:
        data = proc.stdout.read()
        borg.finish("extract", proc)
    return data


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
KEYS_DIR_MODE = 0o700
KEYRING_MODE = 0o600


def copy_fixture_repo(name: str, tmp_path: Path, monkeypatch) -> Path:
    """Copy tests/fixtures/NAME (borg writes lock and index files into a repository
    it reads) into tmp_path and set it as BORG_REPO, with a keyring directory of
    its own; return the copy.

    A fixture of format 4 on (vN-repo) was signed by the keyring beside it
    (vN-keys): that is copied into the keyring directory, 0600 in a 0700
    directory as services/keyring.py makes them, as on a host that imported it
    with 'borg-vm key import'. An older fixture has none: every copy has the
    fixture's repository ID, and each test is the first use, which makes a
    keyring adopting what its copy holds then."""
    repo = tmp_path / name
    shutil.copytree(FIXTURES / name, repo)
    keys = tmp_path / "keys"
    shipped = FIXTURES / (name.removesuffix("-repo") + "-keys")
    if shipped.is_dir():
        keys.mkdir(mode=KEYS_DIR_MODE)
        keys.chmod(KEYS_DIR_MODE)   # git keeps no modes, and mkdir's is masked
        for keyring in shipped.iterdir():
            shutil.copyfile(keyring, keys / keyring.name)
            (keys / keyring.name).chmod(KEYRING_MODE)
    monkeypatch.setenv("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
    monkeypatch.setenv("BORG_REPO", str(repo))
    monkeypatch.setenv("BORG_VM_KEYS_DIR", str(keys))
    return repo


def listening(path: str) -> bool:
    """Return True if something accepts connections on the unix socket path
    (the file alone appears before the server listens)."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True
