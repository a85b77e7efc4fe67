"""libvirt URIs: is the hypervisor this machine, and if not, how to reach it by ssh.

A URI without a host (``qemu:///system``) names this machine's libvirt. A
``qemu+ssh://`` URI names a hypervisor reached through ssh; borg-vm then runs its
own ssh to the same place, built from the URI as libvirt builds its own (libvirt
docs/uri.rst, "ssh transport"; its command line, from its debug log)::

    qemu+ssh://USER@HOST:PORT/system?command=SSH&keyfile=KEY&no_tty=1
    SSH -p PORT -l USER -i KEY -T -e none -o BatchMode=yes [OPTIONS] -- HOST [COMMAND]

so one URI configures both. libvirt's ``no_verify=1`` (``StrictHostKeyChecking=no``)
is not followed: ssh would then write the user's known_hosts, and borg-vm never
trusts a host key it was not given. Other remote transports (tls, tcp, libssh,
libssh2) are refused for now.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from borg_vm.errors import RemoteUnsupported, UsageError

SSH_TRANSPORT = "ssh"
LOCAL_TRANSPORTS = ("", "unix")
DEFAULT_SSH = "ssh"


@dataclass(frozen=True)
class SshTarget:
    """How to run ssh to a hypervisor: the program, the host and what the URI set."""

    host: str
    user: str | None = None
    port: int | None = None
    keyfile: str | None = None
    program: str = DEFAULT_SSH
    no_tty: bool = False

    def argv(self, *options: str) -> list[str]:
        """Return ssh's argv up to the host, with options before it (a remote
        command, if any, goes after it)."""
        argv = [self.program]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.user is not None:
            argv += ["-l", self.user]
        if self.keyfile is not None:
            argv += ["-i", self.keyfile]
        argv += ["-T", "-e", "none"]
        if self.no_tty:
            argv += ["-o", "BatchMode=yes"]
        return [*argv, *options, "--", self.host]


def transport(uri: str) -> str:
    """Return the transport of a libvirt URI ("" for none: unix for a local URI)."""
    scheme = urllib.parse.urlsplit(uri).scheme
    return scheme.partition("+")[2]


def is_remote(uri: str) -> bool:
    """Return True if uri names a hypervisor other than this machine (it has a host)."""
    split = urllib.parse.urlsplit(uri)
    return bool(split.netloc) or transport(uri) not in LOCAL_TRANSPORTS


def ssh_target(uri: str) -> SshTarget | None:
    """Given a libvirt URI, return the SshTarget of its hypervisor, or None if it
    names this machine. Raise RemoteUnsupported for another remote transport,
    UsageError for a qemu+ssh URI libvirt would not take either."""
    if not is_remote(uri):
        return None
    if transport(uri) != SSH_TRANSPORT:
        raise RemoteUnsupported(what=f"the {transport(uri) or 'tls'} transport", where=uri,
                                hint="use a qemu+ssh:// URI")
    split = urllib.parse.urlsplit(uri)
    try:
        port = split.port
    except ValueError as e:
        raise UsageError(detail=f"{uri}: {e}") from e
    if not split.hostname:
        raise UsageError(detail=f"{uri}: a qemu+ssh:// URI needs the hypervisor's host name")
    query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
    return SshTarget(host=split.hostname, user=urllib.parse.unquote(split.username)
                     if split.username else None, port=port,
                     keyfile=query.get("keyfile") or None,
                     program=query.get("command") or DEFAULT_SSH,
                     no_tty=_flag(uri, query.get("no_tty", "0")))


def _flag(uri: str, text: str) -> bool:
    """Parse a libvirt URI flag as libvirt does (a number, non-zero: set)."""
    try:
        return int(text or "0") != 0
    except ValueError as e:
        raise UsageError(detail=f"{uri}: no_tty takes 0 or 1, not {text!r}") from e
