"""A stand-in for the borg command that runs the real borg, except that for
`import-tar` it can pause before borg starts (mode "pause"), pause while borg
holds the repository lock (mode "hold"), kill borg with SIGKILL after
feeding it some bytes (mode "kill"), or run borg here and SIGKILL it in the
middle of its commit, right after the commit tag is written and before the
index is (mode "commit"); mode "log" records every borg call; mode "late-list"
holds a Borg 2 listing (repo-list) back until a create has committed its
archive.
Used by e2e tests to make things happen in the middle of a backup stream,
deterministically.

Environment: BORGVM_TEST_REAL_BORG (the real borg), BORGVM_TEST_MODE,
BORGVM_TEST_DIR (where `started`, `go`, `killed` and `calls` files live),
BORGVM_TEST_KILL_AFTER (bytes, mode kill), BORGVM_TEST_KILL_MATCH (modes kill
and commit: only an archive whose name holds this text).
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

from borgvm import repo_lock_holders

POLL_SECONDS = 0.05
PAUSE_LIMIT_SECONDS = 120


def wait_for(what: str, predicate) -> bool:
    """Poll predicate until true (return True) or the limit passes (say so, return False)."""
    deadline = time.monotonic() + PAUSE_LIMIT_SECONDS
    while not predicate():
        if time.monotonic() > deadline:
            print(f"borg_wrapper: no {what} within the limit", file=sys.stderr)
            return False
        time.sleep(POLL_SECONDS)
    return True


def go_given(workdir: str) -> bool:
    return wait_for("'go'", lambda: os.path.exists(os.path.join(workdir, "go")))


def hold(argv: list[str], workdir: str) -> int:
    """Run borg; once it holds the repository lock, say "started" and keep its
    stream back until "go"; return borg's exit code."""
    repo = next(a for a in argv if "::" in a).split("::")[0]
    # close_fds=False: borg-vm may hand borg its passphrase on an inherited fd.
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, close_fds=False)
    if not wait_for("repository lock",
                    lambda: proc.pid in repo_lock_holders(repo) or proc.poll() is not None):
        proc.kill()
    if proc.poll() is None:
        open(os.path.join(workdir, "started"), "w").close()
        if go_given(workdir):
            # Our stdin never ends (borg-vm has us hold its write end, as borg
            # does): borg stops at the stream's end marker, and so do we, by
            # returning when it exits.
            threading.Thread(target=feed, args=(proc.stdin,), daemon=True).start()
            code = proc.wait()
            # Not sys.exit: the interpreter's shutdown would wait on the feeding
            # thread's blocked read of stdin, and abort.
            sys.stderr.flush()
            os._exit(code)
        proc.stdin.close()
    return proc.wait()


def feed(out) -> None:
    """Copy our stdin to out as it comes, until out's reader is gone."""
    with contextlib.suppress(BrokenPipeError):
        while chunk := sys.stdin.buffer.read1(1 << 20):
            out.write(chunk)
            out.flush()


def die_at_commit(argv: list[str]) -> int:
    """Run borg in this process with its repository's commit cut short by SIGKILL
    once the commit tag is on disk: the index is not written, the lock is left."""
    from borg.archiver import main as borg_main
    from borg.repository import LoggedIO

    write_commit = LoggedIO.write_commit

    def write_commit_and_die(self, *args, **kwargs):
        write_commit(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    LoggedIO.write_commit = write_commit_and_die
    sys.argv = argv
    return borg_main()


def late_list(argv: list[str], workdir: str) -> int:
    """Run Borg 2's create here and say "created" once it committed; hold its
    repo-list back until then (so a listing beside a backup holds its images)."""
    if "create" in argv:
        # close_fds=False: borg-vm may hand borg its passphrase on an inherited fd.
        code = subprocess.call(argv, close_fds=False)
        open(os.path.join(workdir, "created"), "w").close()
        return code
    if "repo-list" in argv and not wait_for(
            "create", lambda: os.path.exists(os.path.join(workdir, "created"))):
        return 2
    os.execv(argv[0], argv)


def main() -> int:
    real = os.environ["BORGVM_TEST_REAL_BORG"]
    argv = [real, *sys.argv[1:]]
    mode = os.environ["BORGVM_TEST_MODE"]
    workdir = os.environ["BORGVM_TEST_DIR"]
    if mode == "log":
        with open(os.path.join(workdir, "calls"), "a") as f:
            f.write(" ".join(sys.argv[1:]) + "\n")
        os.execv(real, argv)
    if mode == "late-list":
        return late_list(argv, workdir)
    match = os.environ.get("BORGVM_TEST_KILL_MATCH", "")
    if "import-tar" not in argv or not any(match in a for a in argv if "::" in a):
        os.execv(real, argv)
    if mode == "pause":
        open(os.path.join(workdir, "started"), "w").close()
        if not go_given(workdir):
            return 2
        os.execv(real, argv)
    if mode == "hold":
        return hold(argv, workdir)
    if mode == "kill":
        limit = int(os.environ["BORGVM_TEST_KILL_AFTER"])
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE)
        fed = 0
        while fed < limit:
            chunk = sys.stdin.buffer.read1(min(1 << 20, limit - fed))
            if not chunk:
                break
            proc.stdin.write(chunk)
            fed += len(chunk)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open(os.path.join(workdir, "killed"), "w") as f:
            f.write(str(fed))
        return 137
    if mode == "commit":
        return die_at_commit(argv)
    raise SystemExit(f"borg_wrapper: unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main())
