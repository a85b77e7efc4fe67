"""printable: text from archives cannot drive a terminal (issue #13 R4)."""

import re

from hypothesis import given
from hypothesis import strategies as st

from borg_vm.core.text import printable


def test_escape_sequences_are_shown_not_sent():
    assert printable("web\x1b[2J01") == "web\\x1b[2J01"
    assert printable("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert printable("\x9b31m\x7f") == "\\x9b31m\\x7f"


def test_ordinary_text_is_unchanged():
    assert printable("wébserver ü.img / web01.20261126T020000Z") == \
        "wébserver ü.img / web01.20261126T020000Z"


@given(st.text())
def test_no_control_character_survives(text):
    assert not re.search("[\x00-\x1f\x7f-\x9f]", printable(text))
