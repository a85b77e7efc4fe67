"""A stand-in for the borg command that runs the real borg, except that for
`import-tar` it can pause before borg starts (mode "pause") or kill borg with
SIGKILL after feeding it some bytes (mode "kill"). Used by e2e tests to make
things happen in the middle of a backup stream, deterministically.

Environment: BORGVM_TEST_REAL_BORG (the real borg), BORGVM_TEST_MODE,
BORGVM_TEST_DIR (where `started`, `go` and `killed` files live),
BORGVM_TEST_KILL_AFTER (bytes, mode kill).
"""

import os
import signal
import subprocess
import sys
import time

POLL_SECONDS = 0.05
PAUSE_LIMIT_SECONDS = 120


def main() -> int:
    real = os.environ["BORGVM_TEST_REAL_BORG"]
    argv = [real, *sys.argv[1:]]
    if "import-tar" not in argv:
        os.execv(real, argv)
    mode = os.environ["BORGVM_TEST_MODE"]
    workdir = os.environ["BORGVM_TEST_DIR"]
    if mode == "pause":
        open(os.path.join(workdir, "started"), "w").close()
        deadline = time.monotonic() + PAUSE_LIMIT_SECONDS
        while not os.path.exists(os.path.join(workdir, "go")):
            if time.monotonic() > deadline:
                print("borg_wrapper: no 'go' within the limit", file=sys.stderr)
                return 2
            time.sleep(POLL_SECONDS)
        os.execv(real, argv)
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
    raise SystemExit(f"borg_wrapper: unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main())
