"""Format version 6 (Borg 2 repositories): records of complete images, their
image archives' names, and what chains, plans and deletes make of them."""

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from borg_vm.core import chain
from borg_vm.core.plan import Disk, FullEvery, plan
from borg_vm.errors import FormatError
from borg_vm.format import names as fmt
from borg_vm.format.manifest import DiskRecord, LayerRecord, Manifest
from borg_vm.format.names import IMAGES_VERSION, ArchiveName, Level
from borg_vm.format.summary import ArchiveInfo, DiskSummary, ImageRecord, Summary
from borg_vm.services import catalog
from borg_vm.services.restore import plan as restore_plan

DOMAIN = "web01.example.com"
UUID = "9b1c5a5e-3c1e-4c55-9d7e-2a1d0b9c1f00"
SOURCE = "/var/lib/libvirt/images/web01.qcow2"
IMAGE = ImageRecord("ab" * 32, "2026-11-20T02:00:00Z", 3)
KEY = b"k" * 32


def record(**over) -> Manifest:
    fields = dict(
        domain=DOMAIN, uuid=UUID, snapshot="base", checkpoint="borgvm-20261126T020000Z",
        level=Level.INC, parent_checkpoint="borgvm-20261125T020000Z",
        parent_archive=f"{DOMAIN}.base.borgvm-20261125T020000Z", parent_id="12" * 32,
        time="2026-11-26T02:00:00Z", domain_xml_sha256="34" * 32,
        checkpoint_xml_sha256="56" * 32, version=IMAGES_VERSION,
        disks={"vda": DiskRecord(Level.INC, "qcow2", SOURCE, 1 << 30, (),
                                 layers=(LayerRecord("base", SOURCE, "qcow2"),),
                                 image=IMAGE, counts=(1 << 20, 65536))})
    fields.update(over)
    return Manifest(**fields)


def test_record_round_trips_with_its_images_and_agrees_with_its_comment():
    m = record().signed(KEY)
    back = Manifest.from_json(m.to_json(), str(m.name))
    assert back == m
    assert back.disks["vda"].image == IMAGE
    assert (back.disks["vda"].data_bytes, back.disks["vda"].zero_bytes) == (1 << 20, 65536)
    assert back.code_problem(KEY) is None
    comment = m.summary().signed(KEY, str(m.name)).to_comment()
    summary = Summary.from_comment(comment, str(m.name))
    assert summary.disks["vda"].image == IMAGE
    assert summary.code_valid(KEY, str(m.name))
    assert back.disagreement(ArchiveInfo(m.name, summary, key=KEY)) is None


def test_record_holds_no_extents_or_digest():
    doc = json.loads(record().to_json())
    assert set(doc["disks"]["vda"]) == {"level", "format", "source", "virtual_size",
                                        "data_bytes", "zero_bytes", "image", "layers"}


@pytest.mark.parametrize("image", [None, [], ["ab" * 32, "2026-11-20T02:00:00Z"],
                                   ["xyz", "2026-11-20T02:00:00Z", 0],
                                   ["ab" * 32, "yesterday", 0], ["ab" * 32, "2026-11-20T02:00:00Z", -1],
                                   ["ab" * 32, "2026-11-20T02:00:00Z", True]])
def test_a_bad_image_is_refused_in_manifest_and_comment(image):
    doc = json.loads(record().to_json())
    doc["disks"]["vda"]["image"] = image
    with pytest.raises(FormatError):
        Manifest.from_json(json.dumps(doc).encode(), "a")
    comment = json.loads(record().summary().to_comment())
    comment["disks"]["vda"][6] = image
    with pytest.raises(FormatError):
        Summary.from_comment(json.dumps(comment), "a")


def test_a_version_5_comment_has_no_image_and_a_version_6_one_needs_it():
    comment = json.loads(record().summary().to_comment())
    comment["borg-vm"] = 5
    with pytest.raises(FormatError, match="zero bytes\\]"):
        Summary.from_comment(json.dumps(comment), "a")
    comment["borg-vm"] = 6
    del comment["disks"]["vda"][6]
    with pytest.raises(FormatError, match="image"):
        Summary.from_comment(json.dumps(comment), "a")


@pytest.mark.parametrize("domain", [DOMAIN, "a~b", "x.base.borgvm-20261126T020000Z~vda"])
def test_image_archive_names_parse_back_to_their_record(domain):
    name = ArchiveName(domain, "base", "borgvm-20261126T020000Z")
    image = fmt.image_archive_name(name, "vdb")
    assert fmt.parse_image_archive_name(image) == (name, "vdb")
    assert ArchiveName.parse(image) is None   # never taken for a record
    assert fmt.parse_image_archive_name(str(name)) is None


@pytest.mark.parametrize("name", ["", "~vda", "web01.base.borgvm-20261126T020000Z~",
                                  "web01.base.20261126~vda"])
def test_other_names_are_no_image_archives(name):
    assert fmt.parse_image_archive_name(name) is None


def info(checkpoint: str, *, level=Level.INC, image=IMAGE, parent=None, size=1 << 30,
         time="2026-11-26T02:00:00Z") -> ArchiveInfo:
    disks = {"vda": DiskSummary(level, size, "qcow2", SOURCE, 1, 0, image)}
    return ArchiveInfo(ArchiveName(DOMAIN, "base", checkpoint),
                       Summary(level, parent, time, UUID, disks, version=IMAGES_VERSION))


def test_a_point_of_images_is_its_own_chain_whatever_its_level_and_parent():
    top = info("borgvm-20261126T020000Z", parent="gone")
    assert chain.disk_chain([top], top, "vda") == [top]
    assert chain.restore_chain([top], top, "vda") == [top]


def test_a_point_of_images_restores_chained_and_flattened_by_one_plan():
    """So the e2e tier restores a Borg 2 point flattened once, not at every point
    (tests/e2e/borgvm.py restore_every_mode)."""
    old = info("borgvm-20261125T020000Z", level=Level.FULL)
    top = info("borgvm-20261126T020000Z", parent=old.name.checkpoint)
    for base in ("qcow2", "raw"):
        assert (restore_plan.chain_plans([old, top], top, ("vda",), base, flatten=False)
                == restore_plan.chain_plans([old, top], top, ("vda",), base, flatten=True))


VDA = Disk("vda", SOURCE, "qcow2", 1 << 30)
NOW = datetime(2026, 11, 27, 2, 0, 0, tzinfo=UTC)


def test_incremental_on_a_pruned_parent_lineage():
    parent = info("borgvm-20261126T020000Z", parent="long gone")
    p = plan("auto", DOMAIN, UUID, [VDA], [parent], {parent.name.checkpoint}, images=True)
    assert p.level == Level.INC and p.parent == parent


def test_a_parent_that_holds_a_chain_gives_no_image_to_build_on():
    parent = info("borgvm-20261126T020000Z", image=None)
    chained = replace(parent, summary=replace(parent.summary, version=5))
    p = plan("auto", DOMAIN, UUID, [VDA], [chained], {parent.name.checkpoint}, images=True)
    assert p.level == Level.FULL and "holds no complete image" in p.reason


@pytest.mark.parametrize("every, full", [("3", True), ("4", False), ("7d", True), ("8d", False)])
def test_full_every_counts_reads_since_the_last_full_read(every, full):
    parent = info("borgvm-20261126T020000Z")   # 3 runs since a full read on 11-20
    p = plan("auto", DOMAIN, UUID, [VDA], [parent], {parent.name.checkpoint},
             FullEvery.parse(every), NOW, images=True)
    assert (p.level == Level.FULL) == full
    if full:
        assert p.reason.startswith("a full read: disk vda: ")


class Deletes:
    """A repository that records what it is asked to delete."""

    def __init__(self):
        self.names, self.ids = [], []
        self.images = self

    def delete(self, names):
        self.names += names

    def delete_ids(self, ids):
        self.ids += ids


@pytest.fixture
def saved(monkeypatch):
    """What catalog.delete keeps as what this host saw: (domain, archives) each."""
    calls = []
    monkeypatch.setattr(catalog.catalog_cache, "save",
                        lambda _borg, domain, archives: calls.append((domain, archives)))
    return calls


def test_deleting_a_point_of_images_deletes_its_image_archives(saved):
    a = info("borgvm-20261126T020000Z")
    two = replace(a, summary=replace(a.summary, disks={
        **a.summary.disks, "vdb": a.summary.disks["vda"]}))
    chained = replace(a, summary=replace(a.summary, version=5))
    kept = info("borgvm-20261127T020000Z")
    borg = Deletes()
    catalog.delete(borg, catalog.Catalog([two, kept, chained], None), [two, chained])
    assert borg.names == [two.archive, f"{two.archive}~vda", f"{two.archive}~vdb",
                          chained.archive]
    assert borg.ids == []
    # what this host saw of the domain is the listing less what it deleted
    assert saved == [(a.name.domain, [kept])]


def with_layers(a: ArchiveInfo, *layers) -> ArchiveInfo:
    return replace(a, summary=replace(a.summary, disks={
        "vda": replace(a.summary.disks["vda"], layers=layers)}))


def test_an_image_of_a_sealed_layer_goes_with_the_last_record_naming_it(saved):
    base, s1 = "cd" * 32, "ef" * 32
    old = with_layers(info("borgvm-20261124T020000Z"), ("/i/base", base))
    mid = with_layers(info("borgvm-20261125T020000Z"), ("/i/S1", s1), ("/i/base", base))
    new = with_layers(info("borgvm-20261126T020000Z"), ("/i/S1", s1), ("/i/base", base))
    borg = Deletes()
    found = catalog.Catalog([old, mid], None, [(new, "not signed here")])
    catalog.delete(borg, found, [old, mid])
    assert borg.names == [old.archive, f"{old.archive}~vda", mid.archive, f"{mid.archive}~vda"]
    assert borg.ids == []
    catalog.delete(borg, catalog.Catalog([new], None), [new])
    assert borg.ids == [base, s1]


def test_images_of_sealed_layers_parse_back_to_their_record_and_disk():
    name = ArchiveName(DOMAIN, "S2", "borgvm-20261126T020000Z")
    for layer in ("base", "pre upgrade.1", "layer-0a1b2c3d"):
        image = fmt.image_archive_name(name, "vdb", layer)
        assert fmt.parse_image_archive_name(image) == (name, "vdb")
        assert ArchiveName.parse(image) is None
    assert fmt.image_archive_name(name, "vdb", "pre upgrade.1").endswith("~vdb.pre%20upgrade%2E1")


def test_a_version_7_comment_carries_the_images_of_sealed_layers():
    a = with_layers(info("borgvm-20261126T020000Z"), ("/i/S1", "cd" * 32), ("/i/base", None))
    back = Summary.from_comment(a.summary.to_comment(), a.archive)
    assert back.disks["vda"].layers == (("/i/S1", "cd" * 32), ("/i/base", None))


def test_a_version_6_comment_still_reads_without_layers():
    a = info("borgvm-20261126T020000Z")
    six = replace(a.summary, version=6)
    doc = json.loads(six.to_comment())
    assert len(doc["disks"]["vda"]) == 7
    assert Summary.from_comment(six.to_comment(), a.archive).disks["vda"].layers == ()


@pytest.mark.parametrize("layers", ["x", [["/a"]], [["/a", "zz"]], [["/a", None], ["/a", None]],
                                    [[1, None]], [["/l", None]] * 16])
def test_a_version_7_comment_with_bad_layers_is_refused(layers):
    a = info("borgvm-20261126T020000Z")
    doc = json.loads(a.summary.to_comment())
    doc["disks"]["vda"][7] = layers
    with pytest.raises(FormatError):
        Summary.from_comment(json.dumps(doc), a.archive)


def test_a_record_names_the_images_of_its_sealed_layers_in_manifest_and_comment():
    m = record(disks={"vda": DiskRecord(
        Level.INC, "qcow2", "/i/S2", 1 << 30, (),
        layers=(LayerRecord("S2", "/i/S2", "qcow2"),
                LayerRecord("base", "/i/base", "qcow2", "cd" * 32)),
        image=IMAGE, counts=(1 << 20, 0))}).signed(KEY)
    back = Manifest.from_json(m.to_json(), str(m.name))
    assert back == m and back.disks["vda"].layers[1].image == "cd" * 32
    assert m.summary().disks["vda"].layers == (("/i/base", "cd" * 32),)
    doc = json.loads(m.to_json())
    assert "image" not in doc["disks"]["vda"]["layers"][0]


def test_a_version_6_record_with_layers_keeps_its_code():
    """Version 6 wrote no image IDs of layers: its manifest reads back, and its
    code checks over, exactly what it wrote."""
    m = record(version=6, disks={"vda": DiskRecord(
        Level.INC, "qcow2", "/i/S2", 1 << 30, (),
        layers=(LayerRecord("S2", "/i/S2", "qcow2"), LayerRecord("base", "/i/base", "qcow2")),
        image=IMAGE, counts=(1 << 20, 0))}).signed(KEY)
    doc = json.loads(m.to_json())
    assert all("image" not in x for x in doc["disks"]["vda"]["layers"])
    back = Manifest.from_json(m.to_json(), str(m.name))
    assert back == m and back.code_problem(KEY) is None
    assert m.summary().disks["vda"].layers == ()


def test_a_new_archive_takes_no_checkpoint_of_an_archive_it_cannot_authenticate():
    a, planted = info("borgvm-20261126T020000Z"), info("borgvm-20261126T020001Z")
    found = catalog.Catalog([a], None, [(planted, "no code")],
                            [f"{DOMAIN}.base.borgvm-20261126T020002Z~vda",
                             f"{DOMAIN}.base.borgvm-20261126T020003Z.checkpoint"])
    assert found.checkpoints() == {"borgvm-20261126T020000Z", "borgvm-20261126T020001Z",
                                   "borgvm-20261126T020002Z"}


def test_the_images_of_the_run_writing_a_record_are_no_leftovers_of_it():
    """A listing that ran beside a backup may hold the images that backup made:
    they neither take its record's checkpoint nor are deleted as leftovers
    after it (services/backup/run.py)."""
    running = ArchiveName(DOMAIN, "base", "borgvm-20261126T020002Z")
    crashed = ArchiveName(DOMAIN, "base", "borgvm-20261126T020001Z")
    own = [fmt.image_archive_name(running, "vda"), fmt.image_archive_name(running, "vdb")]
    left = [fmt.image_archive_name(crashed, "vda"), f"{DOMAIN}.base.borgvm-20261126T020003Z"]
    found = catalog.Catalog([], None, [], [own[0], left[0], own[1], left[1]])
    assert found.leftovers(running) == left
    assert found.leftovers() == [own[0], left[0], own[1], left[1]]
    assert found.checkpoints(running) == {"borgvm-20261126T020001Z", "borgvm-20261126T020003Z"}
    assert "borgvm-20261126T020002Z" in found.checkpoints()
