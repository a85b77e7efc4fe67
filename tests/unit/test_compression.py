"""Borg compression specs: every documented form, every edge of every level
range, and hypothesis for round trips and for arbitrary text."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borg_vm.core.compression import ALGORITHMS, OBFUSCATE_LEVELS, Compression, parse_compression
from borg_vm.errors import BadCompression, UsageError

# Every example of `borg help compression` (borg 1.4).
BORG_EXAMPLES = ["lz4", "zstd", "zstd,10", "zlib", "zlib,1", "auto,lzma,6", "auto,lzma",
                 "obfuscate,110,none", "obfuscate,3,auto,zstd,10", "obfuscate,2,zstd,6",
                 "obfuscate,250,zstd,3"]


@pytest.mark.parametrize("spec", BORG_EXAMPLES)
def test_borg_documented_examples_parse_and_print_back(spec):
    assert str(parse_compression(spec)) == spec


@pytest.mark.parametrize("spec, expected", [
    ("none", Compression("none")),
    ("lz4", Compression("lz4")),
    ("zstd", Compression("zstd")),
    ("zstd,1", Compression("zstd", 1)),
    ("zstd,22", Compression("zstd", 22)),
    ("zlib,0", Compression("zlib", 0)),
    ("zlib,9", Compression("zlib", 9)),
    ("lzma,0", Compression("lzma", 0)),
    ("lzma,9", Compression("lzma", 9)),
    ("auto,lz4", Compression("lz4", auto=True)),
    ("auto,zstd,22", Compression("zstd", 22, auto=True)),
    ("obfuscate,1,none", Compression("none", obfuscate=1)),
    ("obfuscate,6,lz4", Compression("lz4", obfuscate=6)),
    ("obfuscate,110,lz4", Compression("lz4", obfuscate=110)),
    ("obfuscate,123,zlib,0", Compression("zlib", 0, obfuscate=123)),
    ("obfuscate,250,auto,lzma,1", Compression("lzma", 1, auto=True, obfuscate=250)),
])
def test_valid_specs(spec, expected):
    assert parse_compression(spec) == expected
    assert str(expected) == spec


def test_leading_zeros_are_the_same_level():
    assert str(parse_compression("zstd,03")) == "zstd,3"


@pytest.mark.parametrize("spec, words", [
    ("bogus", "unknown algorithm 'bogus'"),
    ("", "unknown algorithm ''"),
    ("LZ4", "unknown algorithm 'LZ4'"),
    ("zstd,0", "zstd level must be 1-22, not 0"),
    ("zstd,23", "zstd level must be 1-22, not 23"),
    ("zlib,10", "zlib level must be 0-9, not 10"),
    ("lzma,10", "lzma level must be 0-9, not 10"),
    ("zstd,", "level '' is not a number"),
    ("zstd,+3", "level '+3' is not a number"),
    ("zstd,-1", "level '-1' is not a number"),
    ("zstd, 3", "level ' 3' is not a number"),
    ("zstd,٣", "level '٣' is not a number"),
    ("zstd,3,4", "unexpected ',4'"),
    ("lz4,1", "lz4 takes no level"),
    ("none,1", "none takes no level"),
    ("auto", "auto needs an algorithm after it"),
    ("auto,", "unknown algorithm ''"),
    ("auto,auto,lz4", "unknown algorithm 'auto'"),
    ("auto,obfuscate,1,lz4", "unknown algorithm 'obfuscate'"),
    ("obfuscate", "obfuscate needs N and an algorithm"),
    ("obfuscate,1", "obfuscate needs N and an algorithm"),
    ("obfuscate,x,lz4", "obfuscate N 'x' is not a number"),
    ("obfuscate,0,lz4", "obfuscate N must be 1-6, 110-123 or 250, not 0"),
    ("obfuscate,7,lz4", "not 7"),
    ("obfuscate,109,lz4", "not 109"),
    ("obfuscate,124,lz4", "not 124"),
    ("obfuscate,249,lz4", "not 249"),
    ("obfuscate,251,lz4", "not 251"),
    ("obfuscate,1,obfuscate,1,lz4", "unknown algorithm 'obfuscate'"),
])
def test_invalid_specs_say_what_is_wrong(spec, words):
    with pytest.raises(BadCompression) as e:
        parse_compression(spec)
    message = e.value.message
    assert words in message
    assert repr(spec) in message and "borg help compression" in message
    assert "\n" not in message
    assert isinstance(e.value, UsageError) and e.value.exit_code == 2


def test_level_ranges_are_exactly_borgs():
    accepted = {name: [lv for lv in range(-5, 40)
                       if _parses(f"{name},{lv}")] for name in ALGORITHMS}
    assert accepted == {"none": [], "lz4": [], "zstd": list(range(1, 23)),
                        "zlib": list(range(10)), "lzma": list(range(10))}
    assert [n for n in range(0, 300) if _parses(f"obfuscate,{n},lz4")] == [
        *range(1, 7), *range(110, 124), 250]


def _parses(spec: str) -> bool:
    try:
        parse_compression(spec)
    except BadCompression:
        return False
    return True


def compressions():
    """Every valid Compression value."""
    def base(name):
        levels = ALGORITHMS[name]
        return st.builds(Compression, st.just(name),
                         st.none() | st.sampled_from(levels) if levels else st.none())
    return st.sampled_from(sorted(ALGORITHMS)).flatmap(base).flatmap(
        lambda c: st.builds(Compression, st.just(c.algorithm), st.just(c.level),
                            auto=st.booleans(),
                            obfuscate=st.none() | st.sampled_from(OBFUSCATE_LEVELS)))


@settings(max_examples=500)
@given(compressions())
def test_every_valid_value_prints_as_a_spec_that_parses_back(c):
    assert parse_compression(str(c)) == c


SPEC_ALPHABET = st.sampled_from(["none", "lz4", "zstd", "zlib", "lzma", "auto", "obfuscate",
                                 ",", "0", "1", "3", "9", "22", "23", "110", "250", "x", " "])


@settings(max_examples=1000)
@given(st.lists(SPEC_ALPHABET, max_size=8).map("".join) | st.text(max_size=20))
def test_any_text_parses_to_a_canonical_spec_or_is_refused_in_one_line(text):
    try:
        c = parse_compression(text)
    except BadCompression as e:
        assert "\n" not in e.message and repr(text) in e.message
        return
    assert parse_compression(str(c)) == c
    # The canonical form differs from the text at most by leading zeros of numbers.
    assert str(c) == re.sub(r"(?<=,)0+(?=\d)", "", text)
