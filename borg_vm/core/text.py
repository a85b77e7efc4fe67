"""Text shown to a person that came from outside: archive names and comments,
domain names, paths. Pure.

A repository may hold archives a compromised client crafted, and a terminal
obeys escape sequences: every such string is printed through ``printable``,
which shows control characters as escapes instead of sending them.
"""

from __future__ import annotations

import re

# C0 controls (tab and newline included: one record per line), DEL, and the
# C1 controls, which some terminals also obey (CSI is U+009B).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Return text with every control character replaced by a visible escape
    (\\x1b for ESC, \\n for a newline), so it cannot drive a terminal or forge
    a line of output."""
    return _CONTROL.sub(_escape, text)


def _escape(m: re.Match[str]) -> str:
    return m.group().encode("unicode_escape").decode("ascii")
