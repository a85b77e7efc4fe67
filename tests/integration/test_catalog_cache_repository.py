"""A restore of a named checkpoint starts from what this host last listed
(services/catalog_cache.py) while the repository is listed again, and keeps
nothing the listing does not confirm: over a real repository, with the cache
left behind by a deleted point, a changed one, and an entry no key signed."""

import glob
import json
import os
import secrets

import pytest
from handmade import CHECKPOINT, DOMAIN, borg_vm, image_data, manifest, write_archive
from realstack import run

from borg_vm.adapters.borg import find_borg

DATA = b"\x5a" * 65536
PLANTED = b"\xee" * 65536
LATER = "20261126T030000Z"
STARTED = "as this host last listed it while the repository is listed again"
RELISTED = "the repository changed since this host last listed it"


@pytest.fixture
def repo(make_repo, tmp_path, monkeypatch):
    """A repository with one archive this host wrote, set as BORG_REPO, and listed
    once (which leaves the cache)."""
    borg = make_repo()
    monkeypatch.setenv("BORG_REPO", borg.repo)
    monkeypatch.setenv("BORG_VM_RUNTIME_DIR", str(tmp_path / "run"))
    borg.good = write_archive(borg, {"vda": DATA})
    cli("list", DOMAIN, code=0)
    return borg


def cli(*args, code):
    return borg_vm(*args, code=code, env=dict(os.environ))


def cache_file() -> str:
    found = glob.glob(os.path.join(os.environ["BORG_BASE_DIR"], ".cache", "borg-vm",
                                   "catalog-*.json"))
    assert len(found) == 1, found
    return found[0]


def edit_cache(change) -> None:
    path = cache_file()
    with open(path) as f:
        doc = json.load(f)
    change(doc)
    with open(path, "w") as f:
        json.dump(doc, f)


def restore(tmp_path, checkpoint, code):
    """Restore DOMAIN at checkpoint into a new directory, logging at debug level;
    return (the directory, the --json document or None, the stderr)."""
    to = tmp_path / f"out-{secrets.token_hex(3)}"
    proc = cli("--debug", "restore", DOMAIN, "--checkpoint", checkpoint, "--to", str(to),
               "--json", code=code)
    return to, (json.loads(proc.stdout) if code in (0, 1) else None), proc.stderr


def test_a_listing_leaves_the_domains_authentic_archives(repo):
    with open(cache_file()) as f:
        doc = json.load(f)
    assert doc["borg-vm-catalog"] == 1 and doc["domain"] == DOMAIN
    assert [a[0] for a in doc["archives"]] == [repo.good]
    assert os.stat(os.path.dirname(cache_file())).st_mode & 0o777 == 0o700


def test_a_point_listed_before_is_restored_from_it(repo, tmp_path):
    to, doc, err = restore(tmp_path, CHECKPOINT, code=0)
    assert STARTED in err and RELISTED not in err
    assert image_data(doc["disks"]["vda"]["image"], tmp_path)[:len(DATA)] == DATA


def test_a_point_deleted_since_is_refused_as_without_the_cache(repo, tmp_path):
    run(find_borg(), "delete", f"{repo.repo}::{repo.good}")
    to, _doc, err = restore(tmp_path, CHECKPOINT, code=2)
    assert STARTED in err
    said = f"The repository holds no borg-vm archive of '{DOMAIN}'"
    assert said in err.splitlines()[-1], err
    assert not to.exists()
    os.unlink(cache_file())
    to, _doc, err = restore(tmp_path, CHECKPOINT, code=2)
    assert STARTED not in err and said in err.splitlines()[-1]


def test_a_point_that_changed_since_is_restored_as_listed_now(repo, tmp_path):
    """The cached point names another archive ID than the repository's archive of
    that name (a repository replaced at the same location, say): the restore
    runs again from the listing."""
    edit_cache(lambda doc: doc["archives"][0].__setitem__(1, "0" * 64))
    to, doc, err = restore(tmp_path, CHECKPOINT, code=0)
    assert STARTED in err and RELISTED in err
    assert image_data(doc["disks"]["vda"]["image"], tmp_path)[:len(DATA)] == DATA
    assert sorted(os.listdir(to)) == sorted(
        os.path.basename(p) for p in (doc["disks"]["vda"]["image"], doc["domain_xml"]))


def test_an_entry_no_key_signed_is_not_a_guess(repo, tmp_path):
    """Whoever can write the cache gains nothing: an unsigned archive put into it
    (and into the repository) is refused as it is without the cache."""
    m = manifest({"vda": PLANTED}, at=LATER)
    planted = write_archive(repo, {"vda": PLANTED}, m=m, signed=False)
    listed = json.loads(run(find_borg(), "list", "--json", repo.repo).stdout)["archives"]
    planted_id = next(a["id"] for a in listed if a["name"] == planted)
    edit_cache(lambda doc: doc["archives"].append(
        [planted, planted_id, m.summary().to_comment()]))
    to, _doc, err = restore(tmp_path, f"borgvm-{LATER}", code=2)
    assert STARTED not in err
    assert f"Archive {planted} is not authenticated" in err.splitlines()[-1]
    assert not to.exists()


def test_a_damaged_cache_is_ignored(repo, tmp_path):
    with open(cache_file(), "w") as f:
        f.write('{"borg-vm-catalog": 1, "archives": [')
    to, doc, err = restore(tmp_path, CHECKPOINT, code=0)
    assert STARTED not in err
    assert image_data(doc["disks"]["vda"]["image"], tmp_path)[:len(DATA)] == DATA
    # and the restore's listing left a good one
    to, doc, err = restore(tmp_path, CHECKPOINT, code=0)
    assert STARTED in err
