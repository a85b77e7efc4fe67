"""Running the real borg-vm and borg from e2e tests, and a borg wrapper that
lets a test pause or kill borg in the middle of a backup stream."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BORG = str(Path(sys.executable).with_name("borg"))
WRAPPER = Path(__file__).with_name("borg_wrapper.py")
RUN_TIMEOUT = 600
# borg-vm runs without a terminal unless a test gives it one (run_on_terminal):
# no test may prompt on, or read from, the terminal pytest runs on.
DETACHED = {"stdin": subprocess.DEVNULL, "start_new_session": True}


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)

    def json_lines(self) -> list:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def run(*args: str, env: dict | None = None, code: int | None = 0,
        wrap: Sequence[str] = ()) -> Result:
    """Given borg-vm arguments, run `python -m borg_vm ARGS` (through the command
    wrap, if given: it runs the argv after it); return its Result.

    Assert the exit code when `code` is not None (with the output in the message).
    """
    proc = subprocess.run([*wrap, sys.executable, "-m", "borg_vm", *args], capture_output=True,
                          text=True, env=env, timeout=RUN_TIMEOUT, **DETACHED)
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    if code is not None:
        assert proc.returncode == code, (
            f"borg-vm {' '.join(args)} exited {proc.returncode}, expected {code}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return result


def start(*args: str, env: dict | None = None, wrap: Sequence[str] = ()) -> subprocess.Popen:
    """Start borg-vm in the background (through wrap, as run); the caller waits for it."""
    return subprocess.Popen([*wrap, sys.executable, "-m", "borg_vm", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **DETACHED)


def run_on_terminal(*args: str, answer: str, env: dict | None = None,
                    prompt: bytes = b"Enter passphrase for ") -> tuple[Result, int]:
    """Run `python -m borg_vm ARGS` with a new pseudo-terminal as its controlling
    terminal, stdin, stdout and stderr; type `answer` at every prompt.

    Return (Result with all the terminal showed as stdout, prompts answered);
    raise TimeoutError (killing it) if it runs longer than RUN_TIMEOUT.
    """
    argv = [sys.executable, "-m", "borg_vm", *args]
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execve(argv[0], argv, os.environ if env is None else env)
        finally:
            os._exit(127)
    out, answered, deadline = b"", 0, time.monotonic() + RUN_TIMEOUT
    try:
        while select.select([fd], [], [], max(0, deadline - time.monotonic()))[0]:
            try:
                data = os.read(fd, 4096)
            except OSError:   # EIO: every process on the terminal is gone
                break
            if not data:
                break
            out += data
            while out.count(prompt) > answered:
                os.write(fd, answer.encode() + b"\n")
                answered += 1
    finally:
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    if time.monotonic() >= deadline:
        raise TimeoutError(f"borg-vm {' '.join(args)} ran longer than {RUN_TIMEOUT} s")
    text = out.decode(errors="replace").replace("\r\n", "\n")
    return Result(os.waitstatus_to_exitcode(status), text, ""), answered


def borg(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([BORG, *args], capture_output=True, text=True, check=True, env=env)


def init_repo(path: Path | str, encryption: str = "none", env: dict | None = None) -> str:
    borg("init", "--encryption", encryption, str(path), env=env)
    return str(path)


def init_repo2(path: Path | str, borg2: str, env: dict | None = None) -> str:
    """Make an encrypted Borg 2 repository at path with borg2 (its passphrase:
    BORG_PASSPHRASE of env or of ours)."""
    subprocess.run([borg2, "-r", str(path), "repo-create", "-e", "aes256-ocb"],
                   check=True, capture_output=True, env=env)
    return str(path)


def archive_names(repo: str, env: dict | None = None) -> list[str]:
    """Every archive's name, borg's checkpoint archives included; of a Borg 2
    repository where borg-vm is pointed at Borg 2 ($BORG_VM_BORG)."""
    borg2 = (env if env is not None else os.environ).get("BORG_VM_BORG")
    if borg2:
        out = subprocess.run([borg2, "-r", repo, "repo-list", "--json"], check=True,
                             capture_output=True, text=True, env=env).stdout
    else:
        out = borg("list", "--json", "--consider-checkpoints", repo, env=env).stdout
    return [a["name"] for a in json.loads(out)["archives"]]


# Borg 1.x locks a repository by renaming a fresh temporary directory to
# REPO/lock.exclusive; the holder's file in it is named HOST.PID-THREAD. A borg
# waiting for the lock keeps its REPO/lock.exclusive.*.tmp directory meanwhile.
LOCK_DIR = "lock.exclusive"
_LOCK_OWNER = re.compile(r"\.(\d+)-[0-9a-f]+$")


def repo_lock_holders(repo: str) -> set[int]:
    """Given a local repository path, return the pids holding its lock."""
    try:
        names = os.listdir(os.path.join(repo, LOCK_DIR))
    except FileNotFoundError:
        return set()
    return {int(m.group(1)) for m in map(_LOCK_OWNER.search, names) if m}


def repo_lock_waiters(repo: str) -> list[str]:
    """Given a local repository path, return the temporary lock directories of
    the borg processes waiting for its lock."""
    return sorted(n for n in os.listdir(repo)
                  if n.startswith(LOCK_DIR + ".") and n.endswith(".tmp"))


def repo_lock_waiting_argv(repo: str) -> list[tuple[int, list[str]]]:
    """Given a local repository path, return (pid, command line) of the borg
    processes waiting for its lock (by the pid each names in its directory)."""
    found = []
    for waiter in repo_lock_waiters(repo):
        try:
            names = os.listdir(os.path.join(repo, waiter))
            for m in filter(None, map(_LOCK_OWNER.search, names)):
                with open(f"/proc/{m.group(1)}/cmdline", "rb") as f:
                    found.append((int(m.group(1)), f.read().decode().split("\0")[:-1]))
        except OSError:   # it got the lock, or gave up, meanwhile
            continue
    return found


BORG_COMMANDS = {"list", "import-tar", "export-tar", "extract", "rename", "delete", "info"}


def borg_commands(workdir: Path) -> list[str]:
    """Return the borg commands a "log" mode wrapper saw, in order."""
    calls = workdir / "calls"
    lines = calls.read_text().splitlines() if calls.exists() else []
    # borg-vm asks a borg it has not seen for its version (cached afterwards):
    # a question to the program, not a command on the repository.
    return [next(w for w in line.split() if w in BORG_COMMANDS) for line in lines
            if line.split() != ["--version"]]


def wrapper_env(workdir: Path, mode: str, **settings: str) -> dict:
    """Return an environment where borg-vm's borg goes through borg_wrapper.py.

    mode "log": every borg call appends its arguments to workdir/calls, one
    line each (see borg_commands). mode "pause": the wrapper creates
    workdir/started and waits for workdir/go before running borg. mode "hold":
    it runs borg, creates workdir/started once borg holds the repository lock
    and feeds borg its stream only after workdir/go. mode "kill": it feeds borg
    KILL_AFTER bytes and then SIGKILLs it. mode "commit": borg is SIGKILLed in
    its commit, after the commit tag and before the index. "kill" and "commit"
    strike only archives whose name holds KILL_MATCH (default: any).
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


def backup(name: str, repo: str, *extra: str, env=None, code=0, wrap: Sequence[str] = ()):
    result = run("backup", name, "--repo", repo, "--json", *extra, env=env, code=code,
                 wrap=wrap)
    return result.json_lines()[0] if code in (0, 1) else result


def restore_and_compare(name, repo, checkpoint, views, tmp_path, tag, *extra, env=None,
                        code=0):
    """Restore checkpoint into a fresh directory (exit code code: 1 if it warns) and
    compare every disk with views."""
    to = tmp_path / f"restore-{tag}"
    doc = run("restore", name, "--repo", repo, "--checkpoint", checkpoint, "--to", str(to),
              "--json", *extra, env=env, code=code).json()
    assert doc["checkpoint"] == checkpoint
    assert set(doc["disks"]) == set(views)
    for target, expected in views.items():
        assert_same(read_image(doc["disks"][target]["image"], tmp_path), expected,
                    f"{tag} {target} at {checkpoint}")
    assert Path(doc["domain_xml"]).exists()
    return doc


def restore_every_mode(name, repo, results, views, tmp_path):
    """Restore each backup result's checkpoint chained, flattened and by layers,
    and compare every disk with the guest's view at that backup. In a Borg 2
    repository ($BORG_VM_BORG, as archive_names) a point is complete images,
    which chained and flattened restore by one plan (tests/unit/
    test_images_format.py): only the newest point is restored flattened too."""
    images = bool(os.environ.get("BORG_VM_BORG"))
    for i, (result, view) in enumerate(zip(results, views)):
        for mode, extra in (("chain", ()), ("flat", ("--flatten",)), ("layers", ("--layers",))):
            if images and mode == "flat" and i < len(results) - 1:
                continue
            restore_and_compare(name, repo, result["checkpoint"], view, tmp_path, f"{mode}{i}",
                                *extra)


def is_boot_server(pid: int) -> bool:
    """Return True if pid is (still) a borg-vm mount: the server a boot started."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    return b"borg_vm" in argv and b"mount" in argv


def running_from(doc: dict) -> bool:
    """Return True if the server `borg-vm boot --json` reported (doc) still runs."""
    return is_boot_server(doc["server"]["pid"])
