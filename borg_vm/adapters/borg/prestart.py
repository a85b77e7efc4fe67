"""A borg started before it may touch the repository.

Most of a short borg command's time is Python importing borg (about 0.5 s of
CPU for Borg 1.4 here). A borg whose executable is a Python script (pip's
launcher, Debian's /usr/bin/borg) can pay that while borg-vm still waits for
something else, and touch the repository only afterwards:

    borg's interpreter -c BOOTSTRAP GO_FD SCRIPT ARGS...
        imports borg.archiver      (the costly part of the start)
        reads one byte from GO_FD  (borg-vm writes it when borg may go on)
        runs SCRIPT as its own #! line would, with ARGS

Until it is told to go, it holds no lock and has read nothing of the
repository; the pipe closed without the byte (or SIGTERM, as a stream's
exception sends) ends it there. A borg that is not a Python script (a
single-file binary, a shell launcher) cannot be held: it is started once it
may go, as without this module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

GO = b"g"
SHEBANG_MAX = 512

# Runs in borg's interpreter: argv[1] is the go pipe, argv[2] borg's script,
# the rest borg's arguments. A failed import is left for the script itself to
# report, in its own words.
BOOTSTRAP = """\
import os, sys
try:
    import borg.archiver
except Exception:
    pass
go = int(sys.argv[1])
told = os.read(go, 1)
os.close(go)
if told != b"g":
    sys.exit(0)
sys.argv = sys.argv[2:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def python_of(executable: str) -> list[str] | None:
    """Return the interpreter argv of executable's #! line (the interpreter and its
    options) if it names a Python, None otherwise (a binary, a shell script, a
    file that cannot be read)."""
    try:
        with open(executable, "rb") as f:
            first = f.readline(SHEBANG_MAX)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = words[1:]
    if not words or not os.path.basename(words[0]).startswith("python"):
        return None
    return words


@dataclass
class Held:
    """A borg to start now and let go later: start argv, passing it fd."""

    argv: list[str]
    fd: int          # the go pipe's read end, for the child
    _write: int

    def go(self) -> None:
        """Let borg go on: it runs as if started now."""
        os.write(self._write, GO)
        self._close_write()

    def _close_write(self) -> None:
        if self._write >= 0:
            os.close(self._write)
            self._write = -1


@contextlib.contextmanager
def held(argv: Sequence[str]) -> Iterator[Held | None]:
    """Yield a Held for borg argv, or None if its executable cannot be held (start it
    once it may go). Leaving the block without go() ends a held borg unstarted."""
    python = python_of(argv[0])
    if python is None:
        yield None
        return
    r, w = os.pipe()
    it = Held([*python, "-c", BOOTSTRAP, str(r), *argv], r, w)
    try:
        yield it
    finally:
        it._close_write()
        os.close(r)
