"""libvirt URIs to ssh command lines (core/libvirt_uri.py): the same ssh libvirt
runs for the URI (libvirt docs/uri.rst, "ssh transport"), or a clean refusal."""

from __future__ import annotations

import pytest

from borg_vm.core import libvirt_uri
from borg_vm.core.libvirt_uri import SshTarget
from borg_vm.errors import RemoteUnsupported, UsageError


@pytest.mark.parametrize("uri", ["qemu:///system", "qemu:///session", "qemu+unix:///system",
                                 "qemu+unix:///system?socket=/run/libvirt/libvirt-sock",
                                 "test:///default"])
def test_a_uri_without_a_host_is_this_machine(uri):
    assert not libvirt_uri.is_remote(uri)
    assert libvirt_uri.ssh_target(uri) is None


@pytest.mark.parametrize(("uri", "argv"), [
    ("qemu+ssh://hv1/system",
     ["ssh", "-T", "-e", "none", "--", "hv1"]),
    ("qemu+ssh://root@hv1.example.org:2222/system",
     ["ssh", "-p", "2222", "-l", "root", "-T", "-e", "none", "--", "hv1.example.org"]),
    ("qemu+ssh://backup@10.0.0.7/system?keyfile=/etc/borg-vm/id_ed25519&no_tty=1",
     ["ssh", "-l", "backup", "-i", "/etc/borg-vm/id_ed25519", "-T", "-e", "none",
      "-o", "BatchMode=yes", "--", "10.0.0.7"]),
    ("qemu+ssh://root@127.0.0.1:22424/system?command=/opt/ssh%20wrap&no_tty=1&no_verify=1",
     ["/opt/ssh wrap", "-p", "22424", "-l", "root", "-T", "-e", "none", "-o", "BatchMode=yes",
      "--", "127.0.0.1"]),
    ("qemu+ssh://root@[fd00::7]:22/system?no_tty=0&proxy=native",
     ["ssh", "-p", "22", "-l", "root", "-T", "-e", "none", "--", "fd00::7"]),
])
def test_an_ssh_uri_gives_the_ssh_libvirt_runs(uri, argv):
    """libvirt's order: -p, -l, -i, then -T -e none, BatchMode for no_tty; no_verify
    is not followed (StrictHostKeyChecking=no would write ~/.ssh/known_hosts)."""
    assert libvirt_uri.is_remote(uri)
    assert libvirt_uri.ssh_target(uri).argv() == argv


def test_options_go_before_the_host_and_a_command_after():
    target = SshTarget(host="hv1", user="root")
    assert target.argv("-S", "/run/borg-vm/ssh.x/ctl", "-O", "check") == [
        "ssh", "-l", "root", "-T", "-e", "none", "-S", "/run/borg-vm/ssh.x/ctl", "-O", "check",
        "--", "hv1"]


def test_a_user_name_is_unquoted():
    assert libvirt_uri.ssh_target("qemu+ssh://back%40up@hv1/system").user == "back@up"


@pytest.mark.parametrize(("uri", "transport"), [
    ("qemu://hv1/system", "tls"), ("qemu+tls://hv1/system", "tls"),
    ("qemu+tcp://hv1/system", "tcp"), ("qemu+libssh2://root@hv1/system", "libssh2"),
    ("qemu+libssh://root@hv1/system", "libssh")])
def test_other_remote_transports_are_refused_for_now(uri, transport):
    with pytest.raises(RemoteUnsupported, match=f"the {transport} transport.*qemu\\+ssh://"):
        libvirt_uri.ssh_target(uri)


@pytest.mark.parametrize(("uri", "says"), [
    ("qemu+ssh:///system", "needs the hypervisor's host name"),
    ("qemu+ssh://hv1:port/system", "hv1:port"),
    ("qemu+ssh://hv1/system?no_tty=yes", "no_tty takes 0 or 1"),
])
def test_a_broken_ssh_uri_is_a_usage_error(uri, says):
    with pytest.raises(UsageError, match=says):
        libvirt_uri.ssh_target(uri)
