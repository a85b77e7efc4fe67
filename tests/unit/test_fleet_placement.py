"""Which hypervisor backs up which domain when a run pulls from several
(core/fleet.py)."""

from borg_vm.core.fleet import Placement, place

A, B, C = "qemu+ssh://a/system", "qemu+ssh://b/system", "qemu+ssh://c/system"
U1, U2 = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"


def test_every_domain_of_each_hypervisor_in_order():
    listed = {A: {"db": U1, "web": U2}, B: {"mail": "u3"}}
    assert place(listed, [], None) == Placement({A: ["db", "web"], B: ["mail"]}, {})


def test_match_narrows_every_hypervisor():
    listed = {A: {"db": U1, "web1": U2}, B: {"web2": "u3"}}
    assert place(listed, [], "web*") == Placement({A: ["web1"], B: ["web2"]}, {})


def test_a_named_domain_is_backed_up_from_the_hypervisor_that_has_it():
    listed = {A: {"db": U1}, B: {"web": U2}}
    assert place(listed, ["web", "db", "web"], None) == Placement({A: ["db"], B: ["web"]}, {})


def test_a_named_domain_on_none_says_where_it_was_looked_for():
    got = place({A: {"db": U1}}, ["web"], None, unreachable=[B])
    assert got.domains == {A: []}
    assert got.problems == {"web": f"domain 'web' is on none of {A} ({B} could not be reached)"}


def test_one_domain_reached_twice_is_the_same_hypervisor_given_twice():
    got = place({A: {"db": U1, "web": U2}, B: {"web": U2}}, [], None)
    assert got.domains == {A: ["db"], B: []}
    assert got.problems == {"web": (
        f"domain 'web' (UUID {U2}) is reached through {A}, {B}: the same hypervisor given "
        "twice, or a domain being migrated; give each hypervisor once")}


def test_two_domains_of_one_name_are_not_backed_up_into_one_repository():
    got = place({A: {"web": U1}, B: {"web": U2}, C: {}}, ["web"], None)
    assert got.domains == {A: [], B: [], C: []}
    assert "domains named 'web' are on " + f"{A}, {B}, with different UUIDs" in got.problems["web"]
    assert "a repository holds one domain of a name" in got.problems["web"]
