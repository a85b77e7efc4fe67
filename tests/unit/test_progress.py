"""The progress line and the log share the terminal: a log record clears the line
first, so it never lands after the bar's text."""

import io
import logging

import pytest

from borg_vm import progress
from borg_vm.progress import Progress

CLEAR = "\r\x1b[K"


@pytest.fixture
def terminal(monkeypatch):
    """Return a stream that borg_vm's logger writes to, as cli sets it up (restored
    afterwards); every advance draws."""
    out = io.StringIO()
    logger = logging.getLogger("borg_vm")
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("borg-vm: %(message)s"))
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "level", logging.INFO)
    monkeypatch.setattr(progress, "REFRESH_SECONDS", 0)
    return out


def test_a_log_record_clears_the_progress_line_first(terminal):
    p = Progress("vm", 100, True, terminal)
    p.advance(50)
    logging.getLogger("borg_vm.test").info("hello")
    p.advance(10)
    p.close()
    shown = terminal.getvalue()
    assert shown.index("vm: 50 B / 100 B") < shown.index(CLEAR + "borg-vm: hello\n")
    assert shown.index("borg-vm: hello\n") < shown.index("vm: 60 B / 100 B")
    assert shown.endswith("\n")


def test_nothing_is_cleared_without_a_line_drawn(terminal):
    p = Progress("vm", 100, False, terminal)
    p.advance(50)
    logging.getLogger("borg_vm.test").info("hello")
    p.close()
    assert terminal.getvalue() == "borg-vm: hello\n"


def test_after_close_log_records_are_left_alone(terminal):
    p = Progress("vm", 100, True, terminal)
    p.advance(100)
    p.close()
    before = terminal.getvalue()
    logging.getLogger("borg_vm.test").warning("later")
    assert terminal.getvalue() == before + "borg-vm: later\n"
    assert not logging.getLogger("borg_vm").handlers[0].filters
