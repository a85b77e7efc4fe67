"""Snapshot layers: names, escaping, what froze, where data goes (issue #8)."""

import pytest
from hypothesis import given, strategies as st

from borg_vm.core.layers import BASE, escape, frozen_since, home, layer_name, unescape

CHAIN = ["/i/vm.S3.qcow2", "/i/vm.S2.qcow2", "/i/vm.qcow2"]   # top first


def test_layer_names():
    snapshots = {"/i/vm.S2.qcow2": "pre-upgrade.1"}
    assert layer_name(CHAIN, 2, snapshots) == BASE
    assert layer_name(CHAIN, 1, snapshots) == "pre-upgrade.1"
    unnamed = layer_name(CHAIN, 0, snapshots)
    assert unnamed.startswith("layer-") and len(unnamed) == len("layer-") + 8
    assert unnamed == layer_name(CHAIN, 0, {})          # stable
    assert layer_name(["/i/vm.qcow2"], 0, {}) == BASE


@pytest.mark.parametrize("name, escaped", [
    ("base", "base"), ("pre-upgrade.1", "pre-upgrade%2E1"), ("a b/c%", "a%20b%2Fc%25"),
    ("ünï", "%C3%BCn%C3%AF"), ("x\x1b", "x%1B")])
def test_escape(name, escaped):
    assert escape(name) == escaped
    assert unescape(escaped) == name


@given(st.text(min_size=1))
def test_escape_round_trip_and_no_dot(name):
    e = escape(name)
    assert "." not in e and "/" not in e and unescape(e) == name


@pytest.mark.parametrize("text", ["", "a.b", "a%2", "a%zz", "a%2e", "a b"])
def test_unescape_rejects(text):
    with pytest.raises(ValueError):
        unescape(text)


def test_frozen_since():
    assert frozen_since(CHAIN, CHAIN[0]) == []                 # same top
    assert frozen_since(CHAIN, CHAIN[1]) == [1]                # one snapshot
    assert frozen_since(CHAIN, CHAIN[2]) == [1, 2]             # two in a row
    assert frozen_since(CHAIN[2:], CHAIN[0]) == []             # committed back down
    assert frozen_since(CHAIN, None) == []


def test_home():
    assert home(CHAIN, CHAIN) == 0
    assert home(CHAIN, CHAIN[1:]) == 1
    assert home(CHAIN[2:], CHAIN) == 0                         # committed into the base
    assert home(["/i/vm.S4.qcow2", "/i/vm.qcow2"], CHAIN[1:]) == 1
    assert home(["/new/vm.qcow2"], CHAIN) == 0                 # moved: the bottom


@given(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=5, unique=True),
       st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=5))
def test_home_is_an_index_of_the_chain(now, then):
    i = home(now, then)
    assert 0 <= i < len(now)
    if set(now) & set(then):
        assert now[i] == next(p for p in then if p in now)
