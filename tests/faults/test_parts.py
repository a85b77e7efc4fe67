"""The parts around borg-vm failing mid-stream: borg killed (mid-stream and in its
commit), the ssh connection to the repository cut, QEMU killed, the libvirt
daemon restarted, and borg-vm itself told to stop (SIGTERM). Each is one clear
line and exit 2, or a good backup; nothing lost. The cases of QEMU, libvirt
and SIGTERM run under both Borg generations: in a Borg 2 repository the
stream is the record's, written after the disks' images."""

import os
import signal
from pathlib import Path

import pytest
import sshd
from borgvm import BORG, init_repo, wrapper_env
from guest import poll
from harness import STOP_TIMEOUT, children, kill_borg, processes_naming, restart_libvirtd

from borg_vm import runtime

# A borg killed leaves its repository lock; the next borg removes it as stale,
# but only after the first of its lock waits, a tenth of --lock-wait (at most a
# minute): a short wait keeps these cases quick.
QUICK_LOCK_WAIT = {"BORG_VM_LOCK_WAIT": "10"}


def test_borg_killed_mid_stream(target, record):
    t = target()
    record["injected"] = "SIGKILL of borg import-tar mid-stream"
    t.failed(t.strike(runtime.STREAMING, kill_borg, env=dict(os.environ, **QUICK_LOCK_WAIT)),
             "borg import-tar failed: killed by SIGKILL")
    t.next_run()
    t.check()


def test_borg_killed_in_its_commit(target, record, tmp_path):
    t = target()
    (tmp_path / "wrapper").mkdir()
    env = dict(wrapper_env(tmp_path / "wrapper", "commit"), **QUICK_LOCK_WAIT)
    record["injected"] = ("SIGKILL of borg import-tar in its commit: commit tag written, "
                          "index not")
    t.failed(t.finish(t.start(env=env), 2), "borg import-tar failed: killed by SIGKILL")
    t.next_run()
    t.check()


def test_ssh_connection_cut_mid_stream(target, record, tmp_path, monkeypatch, ssh_server):
    server = ssh_server
    served = tmp_path / "served" / "repo"
    served.parent.mkdir()
    key = tmp_path / "client"
    server.authorize(sshd.make_key(key, "borg-vm-test-faults"),
                     [BORG, "serve", "--restrict-to-repository", str(served)])
    monkeypatch.setenv("BORG_RSH", server.rsh(key))
    monkeypatch.setenv("BORG_VM_LOCK_WAIT", QUICK_LOCK_WAIT["BORG_VM_LOCK_WAIT"])
    t = target(repo=init_repo(server.url(served)))
    record["injected"] = ("ssh:// repository on a real sshd; the connection cut mid-stream "
                          "(the session's sshd killed)")

    def cut(_proc):   # the session's sshd processes (monitor and network child)
        poll(lambda: [p for p in processes_naming(str(served), "borg") if " serve " in p],
             STOP_TIMEOUT, "borg import-tar's borg serve to run on the server")
        sessions = children(server.proc.pid)
        for pid in sessions + [c for s in sessions for c in children(s)]:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                os.kill(pid, signal.SIGKILL)

    t.failed(t.strike(runtime.STREAMING, cut), "cannot be reached",
             "Connection closed by remote host")
    t.next_run()
    t.check()


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_qemu_killed_mid_stream(target, record, generation):
    """In a Borg 2 repository the stream is the record's, after the disks' images
    were read whole: the point is good, and the next run reads the disk whole,
    its bitmap lost with QEMU."""
    t = target()
    record["injected"] = "SIGKILL of QEMU mid-stream; the domain started again after"
    result = t.strike(runtime.STREAMING, lambda _proc: t.d.kill_qemu(),
                      code=2 if generation == "borg1" else 0)
    if generation == "borg1":
        t.failed(result, "stopped while it was being backed up", "Start it")
    else:
        t.succeeded(result)
    t.d.start_paused()
    t.next_run("full", "inconsistent", code=1)   # it planned an incremental
    t.check()


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_sigterm_mid_stream(target, record):
    t = target()
    record["injected"] = "SIGTERM to borg-vm mid-stream"
    t.failed(t.strike(runtime.STREAMING, lambda proc: proc.send_signal(signal.SIGTERM)),
             "Interrupted by SIGTERM")
    t.next_run()
    t.check()


@pytest.mark.alone
@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_libvirtd_restarted_mid_stream(target, record, libvirt_conn):
    """libvirt keeps the job across its restart; borg-vm connects again to end it."""
    t = target()
    record["injected"] = "libvirtd restarted (SIGTERM, started again) mid-stream"
    result = t.strike(runtime.STREAMING, lambda _proc: restart_libvirtd(libvirt_conn, t.d), code=0)
    assert "lost the connection to libvirt" in result.stderr, result.stderr
    t.succeeded(result)
    assert t.leftovers() == []   # the job ended and the older checkpoint went, at once
    record["did"] += "; connected again, ended its job, deleted the older checkpoint"
    t.next_run()
    t.check()
