"""Running the real `borg-vm mount` from tests (integration and e2e): start it,
wait until it serves, stop it; and qemu-img compare of an export with bytes."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

SERVE_TIMEOUT = 120   # seconds until the exports listen (borg mount, nbdkit start)
STOP_TIMEOUT = 60     # seconds until it exits after SIGTERM


@dataclass
class Mount:
    proc: subprocess.Popen
    served: dict          # its --json document: domain, checkpoint, disks

    def uri(self, target: str) -> str:
        return self.served["disks"][target]["uri"]

    def children(self) -> list[int]:
        """Return the pids of the processes borg-vm mount started (borg, nbdkit)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Send sig, wait for the exit; return (exit code, stderr)."""
        self.proc.send_signal(sig)
        _out, err = self.proc.communicate(timeout=STOP_TIMEOUT)
        return self.proc.returncode, err


def mounts_under(path) -> list[str]:
    """Return the mount points under path (a run directory of the test's own)."""
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(str(path))]


def start_mount(domain: str, repo: str, socket: str, *extra: str,
                env: dict | None = None) -> Mount:
    """Start `borg-vm mount DOMAIN --json` and return once it printed what it serves;
    raise AssertionError with its stderr if it exits first or takes too long."""
    proc = subprocess.Popen([sys.executable, "-m", "borg_vm", "mount", domain, "--repo", repo,
                             "--socket", socket, "--json", *extra], env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    ready, _, _ = select.select([proc.stdout], [], [], SERVE_TIMEOUT)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"borg-vm mount did not serve (exit {proc.returncode}): {err}")
    return Mount(proc, json.loads(line))


def failed_mount(domain: str, repo: str, socket: str, *extra: str,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `borg-vm mount` that is expected to refuse: return how it ended."""
    return subprocess.run([sys.executable, "-m", "borg_vm", "mount", domain, "--repo", repo,
                           "--socket", socket, *extra], env=env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=SERVE_TIMEOUT)


def compare(uri: str, expected: bytes, workdir: str) -> subprocess.CompletedProcess:
    """Run `qemu-img compare` of a raw file holding expected against the export."""
    fd, path = tempfile.mkstemp(suffix=".raw", dir=workdir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(expected)
        return subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", path, uri],
                              capture_output=True, text=True)
    finally:
        os.unlink(path)


def wait_gone(pid: int, timeout: float) -> None:
    """Wait until process pid no longer exists (or is a zombie); raise AssertionError
    after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs after {timeout} s")
