"""A real OpenSSH server on 127.0.0.1 for tests of ssh:// repositories and of
remote hypervisors (qemu+ssh://).

Each server has its own sshd_config, a throwaway host key, a free port and an
authorized_keys file whose keys are forced to one command (`borg serve ...`)
with `restrict`, as a repository server's would be, or (a hypervisor's) run
what they ask. Clients use real ssh with
the server's host key pinned in a private known_hosts file. Facts that shape
this module (OpenSSH 9.2, Debian 12):

* sshd must be started by its absolute path (it re-executes itself per
  connection) and needs its privilege separation directory, /run/sshd, which
  Debian's package creates only when its service starts.
* `StrictModes` checks every directory above authorized_keys up to `/` for
  group or world write permission, and pytest's temporary directories lie
  under /tmp (mode 1777), so it is off here; the files themselves are 0600.
* A key forced to `internal-sftp` serves sftp (Borg 2's sftp:// locations)
  with no shell and no borg on the server; the client asks for the `sftp`
  subsystem, which must be configured for the request to be taken at all.
* sshd runs a forced command through the user's shell with an environment of
  its own (PATH, HOME, USER...): `SetEnv` gives the server-side borg a
  BORG_BASE_DIR inside the test's directory.
* A hypervisor's key runs what its client asks (virt-ssh-helper for libvirt,
  qemu-img, mkdir...), so it is not forced to a command; `restrict,port-forwarding`
  still refuses a terminal, agent and X11 forwarding, and allows forwarding a
  unix socket (how borg-vm reaches a backup job's NBD socket).
* libvirt's ssh transport takes no known_hosts file, and its `no_verify=1`
  (StrictHostKeyChecking=no) would write ~/.ssh/known_hosts: a client gets an
  ssh program of its own instead (`wrapper`), `ssh -F CONFIG`, for the URI's
  `command=` parameter.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.02
# A free port can be taken by someone else between our probe and sshd's bind.
START_ATTEMPTS = 3


def make_key(path: Path, comment: str) -> str:
    """Create an ed25519 key pair without passphrase at `path`; return the
    public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL)
    return path.with_suffix(".pub").read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class Sshd:
    """sshd -D on 127.0.0.1 with files in `workdir`; a context manager that
    stops it (by its PID) on exit."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(mode=0o700)
        self.host_key = workdir / "host_ed25519"
        self.host_public = make_key(self.host_key, "borg-vm-test-host")
        self.authorized_keys = workdir / "authorized_keys"
        self.authorized_keys.touch(mode=0o600)
        self.known_hosts = workdir / "known_hosts"
        self.log = workdir / "sshd.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def authorize(self, public_key: str, command: list[str]) -> None:
        """Let `public_key` log in as root, and only to run `command`."""
        forced = shlex.join(command).replace("\\", "\\\\").replace('"', '\\"')
        with self.authorized_keys.open("a") as f:
            f.write(f'command="{forced}",restrict {public_key}\n')

    def authorize_hypervisor(self, public_key: str) -> None:
        """Let `public_key` log in as root to run any command and forward sockets,
        as a backup host's key on a hypervisor."""
        with self.authorized_keys.open("a") as f:
            f.write(f"restrict,port-forwarding {public_key}\n")

    def url(self, path: Path | str) -> str:
        return f"ssh://root@{LOOPBACK}:{self.port}{path}"

    def _client_options(self, key: Path) -> list[tuple[str, str]]:
        """ssh options that log in with `key` only, trust only this server's host
        key and never prompt."""
        return [("IdentityFile", str(key)), ("IdentitiesOnly", "yes"),
                ("UserKnownHostsFile", str(self.known_hosts)),
                ("GlobalKnownHostsFile", "/dev/null"),
                ("StrictHostKeyChecking", "yes"), ("BatchMode", "yes")]

    def rsh(self, key: Path) -> str:
        """Return a BORG_RSH that logs in with `key` only, trusts only this
        server's host key, never prompts, and reads no user ssh config."""
        options = [arg for name, value in self._client_options(key)
                   for arg in ("-o", f"{name}={value}")]
        return shlex.join(["ssh", "-F", "/dev/null", *options])

    def wrapper(self, key: Path) -> Path:
        """Return an ssh program (for a libvirt URI's command=) that runs ssh with a
        config of its own: as rsh(key), and reading no user ssh config."""
        config = self.workdir / f"ssh_config-{key.name}"
        config.write_text("Host *\n" + "".join(f"    {name} {value}\n"
                                               for name, value in self._client_options(key)))
        wrapper = self.workdir / f"ssh-{key.name}"
        wrapper.write_text(f"#!/bin/sh\nexec ssh -F {shlex.quote(str(config))} \"$@\"\n")
        wrapper.chmod(0o755)
        return wrapper

    def __enter__(self) -> Sshd:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        for _ in range(START_ATTEMPTS):
            if self._start(free_port()):
                return self
        raise RuntimeError(f"sshd did not start in {START_ATTEMPTS} attempts:\n"
                           f"{self.log.read_text()}")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=STOP_TIMEOUT)

    def _start(self, port: int) -> bool:
        """Start sshd on `port`; return True once it listens, False if it
        exited (the port was taken); raise TimeoutError if it does neither."""
        self.port = port
        config = self.workdir / "sshd_config"
        config.write_text(self._config())
        self.known_hosts.write_text(f"[{LOOPBACK}]:{port} {self.host_public}\n")
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log,
                                         stderr=log, stdin=subprocess.DEVNULL)
        listening = f"Server listening on {LOOPBACK} port {port}."
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if listening in self.log.read_text():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(POLL_INTERVAL)
        self.proc.kill()
        self.proc.wait()
        raise TimeoutError(f"sshd did not listen within {START_TIMEOUT:g} s:\n"
                           f"{self.log.read_text()}")

    def _config(self) -> str:
        return "\n".join([
            f"ListenAddress {LOOPBACK}:{self.port}",
            f"HostKey {self.host_key}",
            "PidFile none",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "AllowUsers root",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            # Borg 2's sftp:// repositories: a key forced to internal-sftp
            "Subsystem sftp internal-sftp",
            f"SetEnv BORG_BASE_DIR={self.workdir / 'server-borg'}",
            "LogLevel VERBOSE",
            "",
        ])
