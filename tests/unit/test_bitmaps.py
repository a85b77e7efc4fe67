"""Which layers' bitmaps hold the writes since a checkpoint (shut-off domains)."""

from hypothesis import given
from hypothesis import strategies as st

from borg_vm.core.bitmaps import ENABLED, IN_USE, layers_since

CP = "borgvm-20261126T020000Z"


def test_single_image():
    assert layers_since([{CP: (ENABLED,)}], CP) == ([0], None)


def test_snapshot_overlay_and_sealed_base():
    chain = [{CP: (ENABLED,)}, {CP: (), "other": (ENABLED,)}, {}]
    assert layers_since(chain, CP) == ([0, 1], None)


def test_stops_at_the_first_layer_without_it():
    chain = [{CP: (ENABLED,)}, {}, {CP: ()}]
    assert layers_since(chain, CP) == ([0], None)


def test_top_without_the_bitmap():
    assert layers_since([{}, {CP: ()}], CP)[1] == f"the top image has no bitmap {CP}"
    assert layers_since([], CP)[0] == []


def test_disabled_top():
    assert "disabled" in layers_since([{CP: ()}], CP)[1]


def test_in_use_anywhere():
    assert "in use" in layers_since([{CP: (ENABLED, IN_USE)}], CP)[1]
    assert "in use" in layers_since([{CP: (ENABLED,)}, {CP: (IN_USE,)}], CP)[1]


FLAGS = st.lists(st.sampled_from([ENABLED, IN_USE]), unique=True).map(tuple)
LAYER = st.dictionaries(st.sampled_from([CP, "x"]), FLAGS, max_size=2)


@given(st.lists(LAYER, max_size=5))
def test_layers_are_a_prefix_all_holding_the_bitmap(chain):
    layers, why = layers_since(chain, CP)
    assert (why is None) == bool(layers)
    if layers:
        assert layers == list(range(len(layers)))
        assert all(CP in chain[i] and IN_USE not in chain[i][CP] for i in layers)
        assert ENABLED in chain[0][CP]
        assert len(layers) == len(chain) or CP not in chain[len(layers)]
