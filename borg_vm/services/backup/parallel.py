"""backup --jobs N: domains backed up at once, each by a borg-vm process of its own.

A child is this borg-vm run again for one domain: the parent's argv with
``--only DOMAIN --jobs 1 --no-progress``, so it parses, logs, reports and
undoes on SIGTERM exactly as a run for that domain alone does. Processes, not
threads: a signal reaches one thread only, and a thread cannot be stopped in
the middle of a libvirt call; a process can be told to undo what it started
(SIGTERM, by PID) and waited for. Children share the parent's stderr (a log
line is one write) and hand their stdout (--json results) to the parent,
which prints each child's once it ended. The passphrase goes to them as to
any borg child (Repository.child_env). If the parent is killed outright, the
kernel sends each child SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import sys
import time

from borg_vm.adapters import subproc
from borg_vm.adapters.borg import Repository
from borg_vm.errors import EXIT_ERROR, EXIT_OK, EXIT_WARNING, Interrupted, UsageError

log = logging.getLogger(__name__)
ONLY = "--only"
_POLL_SECONDS = 0.1


def child_argv(argv: list[str], domain: str) -> list[str]:
    """Given the parent's argv (after the program name) and a domain, return the
    argv of the borg-vm process that backs up that domain alone: the options
    come after the parent's (the last of an option wins) and before a `--`."""
    at = argv.index("--") if "--" in argv else len(argv)
    return [sys.executable, "-m", "borg_vm", *argv[:at], ONLY, domain, "--jobs", "1",
            "--no-progress", *argv[at:]]


def run(argv: list[str], jobs: int, borg: Repository, names: list[str]) -> int:
    """Back up names with up to jobs borg-vm children at once, each run with
    child_argv(argv, its domain) (argv: this run's, after the program name);
    return the worst exit code. On SIGINT or SIGTERM, stop every child (each
    undoes what it started) and raise Interrupted."""
    if borg.images is None:
        raise UsageError(detail=f"--jobs {jobs} needs a Borg 2 repository: "
                                f"{borg.repo} is a Borg 1.4 one, which takes one writer "
                                "at a time (back up one domain after another: --jobs 1)")
    borg.list_archives()   # asks for a passphrase now, once, on a terminal
    waiting = list(names)
    running: dict[str, subproc.Child] = {}
    ended: dict[str, int] = {}
    with borg.child_env() as (env, fds):
        try:
            while waiting or running:
                while waiting and len(running) < jobs:
                    name = waiting.pop(0)
                    running[name] = subproc.start_child(child_argv(argv, name), env=env,
                                                        pass_fds=fds)
                for name, child in list(running.items()):
                    if child.exit_code() is not None:
                        ended[name] = _finished(name, running.pop(name))
                time.sleep(_POLL_SECONDS)
        except Interrupted:
            _stop(running)
            raise
    failed = {name: code for name, code in ended.items() if code > EXIT_WARNING}
    warned = EXIT_WARNING in ended.values()   # the child logged it; its exit code tells
    return max(summary(failed, names), EXIT_WARNING if warned else EXIT_OK)


def _finished(name: str, child: subproc.Child) -> int:
    """Pass on a child's stdout; return its exit code."""
    sys.stdout.write(child.output().decode(errors="replace"))
    sys.stdout.flush()
    child.close()
    code = child.exit_code()
    assert code is not None
    if code < 0:   # killed by a signal: it reported nothing itself
        log.error("%s: its borg-vm process was killed by %s", name, signal.Signals(-code).name)
        return EXIT_ERROR
    return code


def _stop(running: dict[str, subproc.Child]) -> None:
    """SIGTERM every child, by PID, and wait for each to undo what it started;
    pass on what each printed."""
    for child in running.values():   # all at once: each undoes its run meanwhile
        child.send(signal.SIGTERM)
    for name, child in running.items():
        child.wait()
        _finished(name, child)   # one that had made its archive says so


def summary(failed: dict[str, int], names: list[str]) -> int:
    """Log which of several domains failed; return the worst exit code."""
    if failed and len(names) > 1:
        log.error("%d of %d domains failed: %s", len(failed), len(names), ", ".join(failed))
    return max(failed.values(), default=EXIT_OK)
