"""Snapshot layers: names, escaping, what froze, where data goes (issue #8)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from borg_vm.core.layers import (
    BASE,
    carried,
    escape,
    home,
    layer_name,
    sealed_since,
    unescape,
)

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
    assert sealed_since(CHAIN, CHAIN[0]) == []                 # same top
    assert sealed_since(CHAIN, CHAIN[1]) == [1]                # one snapshot
    assert sealed_since(CHAIN, CHAIN[2]) == [1, 2]             # two in a row
    assert sealed_since(CHAIN[2:], CHAIN[0]) == []             # committed back down
    assert sealed_since(CHAIN, None) == []


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


# --- restore by layers --------------------------------------------------------------

from borg_vm.core.layers import restore_steps  # noqa: E402

B, S2, S3 = "/i/vm.qcow2", "/i/vm.S2.qcow2", "/i/vm.S3.qcow2"


def test_restore_steps_t1_to_t5():
    # T1 full on base; T3 on S2 with base's final changes; T4 on S2.
    archives = [([B], []), ([S2, B], [1]), ([S2, B], [])]
    assert restore_steps([S2, B], archives) == [
        (0, 0, 0),            # the full into base
        (1, 1, 0),            # base's final changes into base
        (1, 0, 1),            # T3's data into S2
        (2, 0, 1)]            # T4's data into S2
    # As of T1 (before the snapshot) there is one image.
    assert restore_steps([B], archives[:1]) == [(0, 0, 0)]


def test_restore_steps_after_a_commit_put_everything_into_the_base():
    archives = [([B], []), ([S2, B], [1]), ([S3, S2, B], [1]), ([B], [])]
    assert restore_steps([B], archives) == [
        (0, 0, 0), (1, 1, 0), (1, 0, 0), (2, 1, 0), (2, 0, 0), (3, 0, 0)]


def test_restore_steps_two_snapshots_between_backups():
    archives = [([B], []), ([S3, S2, B], [1, 2])]
    assert restore_steps([S3, S2, B], archives) == [
        (0, 0, 0), (1, 2, 0), (1, 1, 1), (1, 0, 2)]


@given(st.lists(st.tuples(st.lists(st.sampled_from([B, S2, S3]), min_size=1, max_size=3,
                                   unique=True), st.integers(0, 3)), min_size=1, max_size=5),
       st.lists(st.sampled_from([B, S2, S3]), min_size=1, max_size=3, unique=True))
def test_restore_steps_cover_every_record_once_in_order(raw, now):
    archives = [(chain, list(range(1, min(n, len(chain) - 1) + 1))) for chain, n in raw]
    steps = restore_steps(now, archives)
    assert [(a, layer) for a, layer, _ in steps] == [
        (a, layer) for a, (_, frozen) in enumerate(archives)
        for layer in sorted(frozen, reverse=True) + [0]]
    assert all(0 <= image < len(now) for _, _, image in steps)


# carried: which images of sealed layers (format version 7) a record keeps.
IMAGES = {"/base": "b" * 64, "/S1": "1" * 64}


def test_sealed_layers_keep_their_images_while_nothing_changes_below_the_top():
    assert carried(["/S2", "/S1", "/base"], ["/S2", "/S1", "/base"], IMAGES) == {
        1: IMAGES["/S1"], 2: IMAGES["/base"]}


def test_the_top_then_sealed_now_gets_a_new_image_not_a_carried_one():
    assert carried(["/S3", "/S2", "/S1", "/base"], ["/S2", "/S1", "/base"],
                   {**IMAGES, "/S2": "2" * 64}) == {2: IMAGES["/S1"], 3: IMAGES["/base"]}


def test_a_layer_committed_into_loses_its_image_and_what_lies_below_keeps_its_own():
    # S1 committed into base: base changed; the layers above are new images anyway.
    assert carried(["/S2", "/base"], ["/S2", "/S1", "/base"], IMAGES) == {}
    # base committed away below S1 (S1 now on another backing): S1's view is the same
    # data only if the layers below are the same; they are not, so nothing is carried.
    assert carried(["/S2", "/S1", "/other"], ["/S2", "/S1", "/base"], IMAGES) == {}


def test_no_image_then_carries_none():
    assert carried(["/S2", "/S1", "/base"], ["/S2", "/S1", "/base"],
                   {"/base": None, "/S1": None}) == {}
