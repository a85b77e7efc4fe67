"""A pytest plugin that writes the fault matrix's table, RESULTS.md, from a real
run: `make faults` loads it (`-p results --results PATH`).

A fault case fills its row through the `record` fixture (conftest.py):
what was injected, what borg-vm did, what it left and what the next run did,
and whether anything was lost. Any other test run with it (the hostile
repository cases) gets a row from its docstring and parameters, and what
borg-vm said: the last line of the last borg-vm run that failed, which the
test helpers log to the "borgvm.runs" logger.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import installed  # tests/ (make faults puts it on PYTHONPATH)
import pytest

RECORD = "fault"          # the user property conftest.py's `record` fills
RUNS_LOGGER = "borgvm.runs"
MAX_GIVEN = 100           # characters of a case's parameters shown


@dataclass
class Row:
    group: str
    case: str
    injected: str
    did: str
    left: str
    lost: str
    outcome: str
    seconds: float


@dataclass
class Table:
    path: Path
    started: float = field(default_factory=time.time)
    rows: list[Row] = field(default_factory=list)


class _Runs(logging.Handler):
    """Collects what the test helpers log about each borg-vm run of one test."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.runs: list[tuple[int, str]] = []   # (exit code, last line)

    def emit(self, record: logging.LogRecord) -> None:
        self.runs.append((record.exit_code, record.last_line))

    def said(self) -> str:
        """Return what the last failing run said, else the last run, else that none ran."""
        if not self.runs:
            return "(no borg-vm run: the code under test, in the test's process)"
        code, line = ([r for r in self.runs if r[0]] or self.runs)[-1]
        return f"exit {code}" + (f": {line}" if line else "")


def pytest_addoption(parser):
    parser.addoption("--results", metavar="PATH", help="write the fault table (Markdown) here")


def pytest_configure(config):
    path = config.getoption("--results")
    if path:
        config.stash[_TABLE] = Table(Path(path))


_TABLE = pytest.StashKey[Table]()
_RUNS = pytest.StashKey[_Runs]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    handler = _Runs()
    item.stash[_RUNS] = handler
    logger = logging.getLogger(RUNS_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    table = item.config.stash.get(_TABLE, None)
    if table is None or not (report.when == "call" or (report.when == "setup"
                                                       and not report.passed)):
        return
    table.rows.append(_row(item, report))


def _row(item, report) -> Row:
    recorded = dict(next((v for k, v in item.user_properties if k == RECORD), {}))
    doc = (getattr(item.function, "__doc__", None) or "").strip().splitlines()
    params = getattr(getattr(item, "callspec", None), "params", {})
    given = ", ".join(f"{k}={v!r}" for k, v in params.items())
    verdict = ("passed" if report.passed else "SKIPPED" if report.skipped else "FAILED")
    return Row(
        group=Path(item.fspath).name,
        case=item.name,
        injected=recorded.get("injected") or " ".join(
            x for x in ((doc[0] if doc else item.originalname.removeprefix("test_")
                         .replace("_", " ")),
                        f"({given[:MAX_GIVEN]})" if given else "") if x),
        did=recorded.get("did") or item.stash[_RUNS].said(),
        left=" / ".join(x for x in (recorded.get("left"), recorded.get("next")) if x) or "-",
        lost=recorded.get("lost") or ("nothing" if report.passed else "?"),
        outcome=verdict,
        seconds=report.duration)


def pytest_sessionfinish(session, exitstatus):
    table = session.config.stash.get(_TABLE, None)
    if table is not None:
        table.path.write_text(_markdown(table, session))


def _markdown(table: Table, session) -> str:
    rows = table.rows
    passed = sum(r.outcome == "passed" for r in rows)
    lines = [
        "# Fault matrix and hostile repositories: results",
        "",
        "Written by `make faults` (tests/faults/results.py) from the run below; every row is",
        "a test that really ran. Rerun it with `make faults`.",
        "",
        f"- run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(table.started))}, "
        f"{time.time() - table.started:.0f} s, {passed} of {len(rows)} cases passed",
        f"- machine: {platform.platform()}, {_versions()}",
        f"- command: `pytest {' '.join(session.config.invocation_params.args)}`",
        "",
    ]
    for group in dict.fromkeys(r.group for r in rows):
        lines += [f"## {group}", "",
                  "| case | injected | what borg-vm did | left behind / the next run | "
                  "lost | result |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {_cell(r.case)} | {_cell(r.injected)} | {_cell(r.did)} | "
                  f"{_cell(r.left)} | {_cell(r.lost)} | {r.outcome} ({r.seconds:.0f} s) |"
                  for r in rows if r.group == group]
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _versions() -> str:
    """Return the versions of the stack the run used."""
    found = []
    for name, argv in (("libvirt", ["virsh", "--version"]),
                       ("QEMU", ["qemu-system-x86_64", "--version"]),
                       ("borg", [str(Path(sys.executable).with_name("borg")), "--version"]),
                       ("Borg 2", [installed.borg2(), "--version"])):
        try:
            out = subprocess.run(argv, capture_output=True, text=True).stdout.split("\n")[0]
        except OSError:
            out = "?"
        found.append(f"{name} {out.split()[-1] if name != 'QEMU' else out.split()[3]}"
                     if out and out != "?" else f"{name} ?")
    return ", ".join(found)
