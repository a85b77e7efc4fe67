"""make test: the suite in two lanes at once, then what must run alone.

The tiers wait more than they compute (virtual machines booting, guests
writing, borg starting), so on a 2-core machine two pytest sessions side by
side take little more than the longer one alone:

- lane 1: tests/e2e;
- lane 2: tests/unit, tests/integration and tests/faults;
- then, alone: the tests marked ``alone`` (they restart the libvirt daemon
  every other test talks to), from every tier.

Each lane leaves out the ``alone`` tests and the last step runs only them, so
every test runs exactly once. Lane 1 prints as it goes; lane 2's output is
kept in a file and printed when both lanes ended. Every test touches only what
it made (domains named borgvm-test-*, its own temporary directories,
repositories, servers and ports), which is what lets two lanes share a
machine.

Usage: ``lanes.py PYTEST [ARG...]``: PYTEST is the pytest to run (make's
$(PYTEST)), the ARGs go to each of its runs (e.g. ``-x``). The exit code is
the worst of the runs'.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
LANES = (["e2e"], ["unit", "integration", "faults"])
ALONE = "alone"


def pytest_argv(pytest: str, tiers: list[str], marker: str, extra: list[str]) -> list[str]:
    """The command line of pytest over the tiers (directories under tests/),
    selecting the tests marker (a -m expression) selects."""
    return [pytest, "-m", marker, *(os.path.relpath(os.path.join(HERE, t)) for t in tiers),
            *extra]


def run(pytest: str, extra: list[str]) -> int:
    """Run the lanes, then the alone tests; return the worst exit code."""
    first, second = LANES
    with tempfile.TemporaryFile(prefix="borg-vm-lane.") as kept:
        print(f"lanes: tests/{', tests/'.join(second)} beside tests/{first[0]} "
              "(printed when both ended)", flush=True)
        beside = subprocess.Popen(pytest_argv(pytest, second, f"not {ALONE}", extra),
                                  stdout=kept, stderr=subprocess.STDOUT)
        try:
            codes = [subprocess.call(pytest_argv(pytest, first, f"not {ALONE}", extra))]
            codes.append(beside.wait())
        except KeyboardInterrupt:
            beside.send_signal(signal.SIGINT)   # by its PID; it stops as pytest does
            beside.wait()
            raise
        finally:
            kept.seek(0)
            sys.stdout.flush()
            print(f"\nlanes: the output of tests/{', tests/'.join(second)}:", flush=True)
            sys.stdout.buffer.write(kept.read())
            sys.stdout.flush()
    print(f"\nlanes: the tests marked {ALONE!r}, by themselves", flush=True)
    codes.append(subprocess.call(pytest_argv(pytest, ["."], ALONE, extra)))
    return max(codes)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} PYTEST [ARG...]")
    sys.exit(run(sys.argv[1], sys.argv[2:]))
