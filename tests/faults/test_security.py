"""What a backup shows other local users and keeps from them: no passphrase (nor
what BORG_PASSCOMMAND prints) in any process's argv, in borg's environment when
borg-vm hands it over, or anywhere in the --debug log; the run directory,
socket, scratch files and lock private to root and QEMU's user."""

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from borgvm import DETACHED, init_repo
from harness import Target, children, wait_stopped

from borg_vm import runtime

SECRET = "correct horse battery staple"


def argv_holding(secret: str) -> list[str]:
    """Return every process's command line that holds secret."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        if secret in text:
            found.append(text.replace("\0", " "))
    return found


@pytest.mark.parametrize("given", ["BORG_PASSPHRASE", "BORG_PASSCOMMAND", "BORG_PASSPHRASE_FD"])
def test_no_secret_in_argv_or_debug_log(make_domain, tmp_path, record, given):
    repo = init_repo(tmp_path / "secret", "repokey-blake2",
                     env=dict(os.environ, BORG_PASSPHRASE=SECRET))
    (tmp_path / "pass").write_text(SECRET + "\n")
    env = dict(os.environ, **{runtime.STOP_AT_ENV: runtime.STREAMING})
    fds: tuple[int, ...] = ()
    if given == "BORG_PASSPHRASE":
        env[given] = SECRET
    elif given == "BORG_PASSCOMMAND":
        env[given] = f"cat {tmp_path / 'pass'}"
    else:
        r, w = os.pipe()
        os.write(w, SECRET.encode())
        os.close(w)
        env[given], fds = str(r), (r,)
    t = Target(make_domain(), repo, tmp_path, record)
    t.write()
    record["injected"] = (f"a backup --debug, passphrase in {given}: every process's argv "
                          "searched while it streams, and the whole log")
    proc = subprocess.Popen([sys.executable, "-m", "borg_vm", "--debug", "backup", t.name,
                             "--repo", repo, "--json"], env=env, pass_fds=fds, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **DETACHED)
    for fd in fds:
        os.close(fd)
    wait_stopped(proc, runtime.STREAMING)
    assert argv_holding(SECRET) == []
    (borg,) = children(proc.pid)
    borg_env = Path(f"/proc/{borg}/environ").read_bytes()
    assert (SECRET.encode() in borg_env) == (given == "BORG_PASSPHRASE")  # borg's own way
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "phase done" in err and SECRET not in out + err
    record["did"] = (f"exit 0; no secret in any argv or in the {len(err.splitlines())} lines "
                     "of --debug log" + ("; borg reads it from a pipe" if given != "BORG_PASSPHRASE"
                                         else ""))
    record["lost"] = "nothing"


def test_run_directory_socket_scratch_and_lock_are_private(target, record, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o755)
    t = target(scratch=scratch)
    proc = t.start(stop_at=runtime.JOB_STARTED)
    record["injected"] = ("a backup (--scratch-dir a 0755 directory) stopped with its job "
                          "running: modes and owners looked at")
    try:
        uuid = t.d.dom.UUIDString()
        base = Path(runtime.base_dir())
        qemu = os.stat(f"/proc/{t.d.pid()}")
        (rundir,) = [p for p in base.glob(f"{uuid}.*") if p.is_dir()]
        found = {p: os.lstat(p) for p in [base, base / f"{uuid}.lock", rundir,
                                          *rundir.iterdir(), *scratch.iterdir()]}
    finally:
        t.kill(proc)
    modes = {p: stat.S_IMODE(s.st_mode) for p, s in found.items()}
    assert not modes[base] & 0o022, f"{base} is writable by others"
    assert modes[base / f"{uuid}.lock"] == 0o600
    assert modes[rundir] == 0o700
    assert (found[rundir].st_uid, found[rundir].st_gid) == (qemu.st_uid, qemu.st_gid)
    socket = rundir / "nbd.sock"   # QEMU's umask decides its mode: only the 0700 dir guards it
    assert stat.S_ISSOCK(found[socket].st_mode)
    (scratch_file,) = scratch.iterdir()
    assert modes[scratch_file] == 0o600 and found[scratch_file].st_uid == qemu.st_uid
    record["did"] = (f"{base} {modes[base]:o}, its lock 0600, run directory 0700 owned by "
                     f"QEMU's user with the NBD socket in it, scratch file "
                     f"{modes[scratch_file]:o} in a 0755 --scratch-dir")
    t.next_run()
    t.check()
