"""Progress of long work, shown only on a terminal (never mixed into logs or --json)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

REFRESH_SECONDS = 0.5


def human(n: float) -> str:
    """Return a byte count in IEC units, e.g. '1.5 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    """A one-line progress display for `total` bytes of work labelled `label`."""

    def __init__(self, label: str, total: int, enabled: bool, out: TextIO = sys.stderr):
        self.label = label
        self.total = total
        self.enabled = enabled
        self.out = out
        self.done = 0
        self._start = time.monotonic()
        self._shown = 0.0

    @classmethod
    def for_terminal(cls, label: str, total: int, wanted: bool) -> Progress:
        return cls(label, total, wanted and sys.stderr.isatty())

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._shown >= REFRESH_SECONDS:
            self._shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self._start, 1e-6)
        pct = 100 * self.done / self.total if self.total else 100
        self.out.write(f"\r{self.label}: {human(self.done)} / {human(self.total)} "
                       f"({pct:.0f}%) {human(rate)}/s   ")
        self.out.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.out.write("\n")
            self.out.flush()
