"""Progress of long work, shown only on a terminal (never mixed into logs or --json).

The progress line and the log share the terminal: while a line is drawn, a log
record clears it before it is written (a filter on the handlers of borg-vm's
logger), and the next advance draws it again below the record.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

REFRESH_SECONDS = 0.5
CLEAR_LINE = "\r\x1b[K"   # to the line's start, erase to its end


def human(n: float) -> str:
    """Return a byte count in IEC units, e.g. '1.5 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    """A one-line progress display for `total` bytes of work labelled `label`."""

    def __init__(self, label: str, total: int, enabled: bool, out: TextIO | None = None):
        self.label = label
        self.total = total
        self.enabled = enabled
        self.out = out or sys.stderr
        self.done = 0
        self._start = time.monotonic()
        self._shown = 0.0
        self._drawn = False                      # a line is on the terminal now
        self._watched: list[logging.Handler] = []

    @classmethod
    def for_terminal(cls, label: str, total: int, wanted: bool) -> Progress:
        return cls(label, total, wanted and sys.stderr.isatty())

    def reach(self, done: int) -> None:
        """Advance to done bytes in all (a report of the total so far); never back."""
        if done > self.done:
            self.advance(done - self.done)

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._shown >= REFRESH_SECONDS:
            self._shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        if not self._watched:
            self._watched = logging.getLogger("borg_vm").handlers[:]
            for handler in self._watched:
                handler.addFilter(self._clear)
        rate = self.done / max(now - self._start, 1e-6)
        pct = 100 * self.done / self.total if self.total else 100
        self.out.write(f"\r{self.label}: {human(self.done)} / {human(self.total)} "
                       f"({pct:.0f}%) {human(rate)}/s   ")
        self.out.flush()
        self._drawn = True

    def _clear(self, _record: logging.LogRecord) -> bool:
        """A handler's filter: clear the line before the record is written (and draw
        it again at the next advance); let every record through."""
        if self._drawn:
            self.out.write(CLEAR_LINE)
            self.out.flush()
            self._drawn = False
            self._shown = 0.0
        return True

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.out.write("\n")
            self.out.flush()
            self._drawn = False
        for handler in self._watched:
            handler.removeFilter(self._clear)
        self._watched = []
