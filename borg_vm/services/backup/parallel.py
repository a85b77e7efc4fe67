"""backup --jobs N: domains backed up at once, each by a borg-vm process of its own.

A child is this borg-vm run again for one domain: the parent's argv with
``--only DOMAIN --jobs 1 --no-progress`` (and ``--only-at URI``, its
hypervisor, when the run pulls from several), so it parses, logs, reports and
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
from collections.abc import Sequence

from borg_vm.adapters import subproc
from borg_vm.adapters.borg import Repository
from borg_vm.errors import EXIT_ERROR, EXIT_OK, EXIT_WARNING, Interrupted, UsageError

log = logging.getLogger(__name__)
ONLY = "--only"
ONLY_AT = "--only-at"
_POLL_SECONDS = 0.1


def child_argv(argv: list[str], domain: str, hypervisor: str | None = None) -> list[str]:
    """Given the parent's argv (after the program name), a domain and the URI of
    its hypervisor (None: the run's only one), return the argv of the borg-vm
    process that backs up that domain alone: the options come after the
    parent's (the last of an option wins) and before a `--`."""
    at = argv.index("--") if "--" in argv else len(argv)
    return [sys.executable, "-m", "borg_vm", *argv[:at], ONLY, domain,
            *([ONLY_AT, hypervisor] if hypervisor is not None else []), "--jobs", "1",
            "--no-progress", *argv[at:]]


def run(argv: list[str], jobs: int, borg: Repository, domains: dict[str, str | None]
        ) -> dict[str, int]:
    """Back up the domains (name -> its hypervisor's URI, or None) with up to jobs
    borg-vm children at once, each run with child_argv (argv: this run's, after
    the program name); return each one's exit code. On SIGINT or SIGTERM, stop
    every child (each undoes what it started) and raise Interrupted."""
    if borg.images is None:
        raise UsageError(detail=f"--jobs {jobs} needs a Borg 2 repository: "
                                f"{borg.repo} is a Borg 1.4 one, which takes one writer "
                                "at a time (back up one domain after another: --jobs 1)")
    borg.list_archives()   # asks for a passphrase now, once, on a terminal
    waiting = list(domains)
    running: dict[str, subproc.Child] = {}
    ended: dict[str, int] = {}
    with borg.child_env() as (env, fds):
        try:
            while waiting or running:
                while waiting and len(running) < jobs:
                    name = waiting.pop(0)
                    running[name] = subproc.start_child(child_argv(argv, name, domains[name]),
                                                        env=env, pass_fds=fds)
                for name, child in list(running.items()):
                    if child.exit_code() is not None:
                        ended[name] = _finished(name, running.pop(name))
                time.sleep(_POLL_SECONDS)
        except Interrupted:
            _stop(running)
            raise
    return ended


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


def summary(codes: dict[str, int], names: list[str], hypervisors: Sequence[str] = ()) -> int:
    """Given the exit codes of what ended with one (domains, and hypervisors that
    could not be reached, by URI, each reported already; a warning a child logged
    is in its code, one this process logged need not be), log which of the
    domains (names) failed, if several, and which of several hypervisors could
    not be reached; return the worst exit code."""
    failed = [name for name in names if codes.get(name, EXIT_OK) > EXIT_WARNING]
    if failed and len(names) > 1:
        log.error("%d of %d domains failed: %s", len(failed), len(names), ", ".join(failed))
    gone = [uri for uri in hypervisors if uri in codes]
    if gone and len(hypervisors) > 1:
        log.error("%d of %d hypervisors could not be reached: %s", len(gone), len(hypervisors),
                  ", ".join(gone))
    return max(codes.values(), default=EXIT_OK)
