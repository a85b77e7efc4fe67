"""Running the real borg-vm and borg from e2e tests, and a borg wrapper that
lets a test pause or kill borg in the middle of a backup stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BORG = str(Path(sys.executable).with_name("borg"))
WRAPPER = Path(__file__).with_name("borg_wrapper.py")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)

    def json_lines(self) -> list:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def run(*args: str, env: dict | None = None, code: int | None = 0) -> Result:
    """Given borg-vm arguments, run `python -m borg_vm ARGS`; return its Result.

    Assert the exit code when `code` is not None (with the output in the message).
    """
    proc = subprocess.run([sys.executable, "-m", "borg_vm", *args], capture_output=True,
                          text=True, env=env, timeout=600)
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    if code is not None:
        assert proc.returncode == code, (
            f"borg-vm {' '.join(args)} exited {proc.returncode}, expected {code}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return result


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    """Start borg-vm in the background; the caller waits for it."""
    return subprocess.Popen([sys.executable, "-m", "borg_vm", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def borg(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([BORG, *args], capture_output=True, text=True, check=True, env=env)


def init_repo(path: Path | str, encryption: str = "none", env: dict | None = None) -> str:
    borg("init", "--encryption", encryption, str(path), env=env)
    return str(path)


def archive_names(repo: str) -> list[str]:
    out = borg("list", "--json", repo).stdout
    return [a["name"] for a in json.loads(out)["archives"]]


def wrapper_env(workdir: Path, mode: str, **settings: str) -> dict:
    """Return an environment where borg-vm's borg import-tar goes through borg_wrapper.py.

    mode "pause": the wrapper creates workdir/started and waits for workdir/go
    before running borg. mode "kill": it feeds borg KILL_AFTER bytes and then
    SIGKILLs it.
    """
    script = workdir / "borg"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {WRAPPER} \"$@\"\n")
    script.chmod(0o755)
    env = dict(os.environ, BORG_VM_BORG=str(script), BORGVM_TEST_REAL_BORG=BORG,
               BORGVM_TEST_MODE=mode, BORGVM_TEST_DIR=str(workdir))
    env.update({f"BORGVM_TEST_{k.upper()}": v for k, v in settings.items()})
    return env


# -- backup and restore as the tests call them --------------------------------

def read_image(path: str, workdir: Path) -> bytes:
    """Return the guest-visible bytes of an image (following its backing chain)."""
    out = workdir / "read.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", path, str(out)], check=True)
    data = out.read_bytes()
    out.unlink()
    return data


def assert_same(actual: bytes, expected: bytes, what: str) -> None:
    assert len(actual) == len(expected), f"{what}: size {len(actual)} != {len(expected)}"
    if actual != expected:
        at = next(i for i in range(0, len(actual), 4096)
                  if actual[i:i + 4096] != expected[i:i + 4096])
        end = next((i for i in range(at, len(actual), 4096)
                    if actual[i:i + 4096] == expected[i:i + 4096]), len(actual))
        raise AssertionError(f"{what}: differs in [{at}, {end}): restored "
                             f"{actual[at:at + 8].hex()}.. expected {expected[at:at + 8].hex()}..")


def backup(name: str, repo: str, *extra: str, env=None, code=0):
    result = run("backup", name, "--repo", repo, "--json", *extra, env=env, code=code)
    return result.json_lines()[0] if code == 0 else result


def restore_and_compare(name, repo, checkpoint, views, tmp_path, tag, *extra):
    """Restore checkpoint into a fresh directory and compare every disk with views."""
    to = tmp_path / f"restore-{tag}"
    doc = run("restore", name, "--repo", repo, "--checkpoint", checkpoint, "--to", str(to),
              "--json", *extra).json()
    assert doc["checkpoint"] == checkpoint
    assert set(doc["disks"]) == set(views)
    for target, expected in views.items():
        assert_same(read_image(doc["disks"][target]["image"], tmp_path), expected,
                    f"{tag} {target} at {checkpoint}")
    assert Path(doc["domain_xml"]).exists()
    return doc
