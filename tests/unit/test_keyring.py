"""The host's keyring of a repository (services/keyring.py): made once, 0600,
exported and imported."""

import os
import stat

import pytest

from borg_vm.errors import KeyringError
from borg_vm.services import keyring

REPO = "ab" * 32


@pytest.fixture(autouse=True)
def keys_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(keyring.KEYS_DIR_ENV, str(tmp_path / "keys"))
    return tmp_path / "keys"


def test_made_on_first_use_private_and_adopting_what_is_there(keys_dir):
    k = keyring.load_or_create(REPO, ["cd" * 32, "not an id"])
    assert k.adopted == {"cd" * 32} and len(k.keys) == 1 and len(k.signing_key) == 32
    path = keys_dir / REPO
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(keys_dir).st_mode) == 0o700
    again = keyring.load_or_create(REPO, ["ef" * 32])     # adopts nothing later
    assert again == k


def test_an_import_adds_keys_and_keeps_signing_with_its_own(keys_dir):
    own = keyring.load_or_create(REPO, [])
    other = keyring.Keyring("12" * 32, (b"x" * 32,), frozenset({"34" * 32}), "t")
    merged = own.merged(other)
    assert merged.signing_key == own.signing_key and merged.keys[1] == b"x" * 32
    assert merged.adopted == {"34" * 32}
    keyring.save(merged)
    assert keyring.load(REPO) == merged


@pytest.mark.parametrize("raw", [b"", b"{}", b'{"borg-vm-keyring": 1}', b"[1]",
                                 b'{"borg-vm-keyring": 1, "repository": "x", "created": "t", '
                                 b'"keys": ["AAAA"], "adopted": []}'])
def test_a_damaged_keyring_is_one_clear_error(raw):
    with pytest.raises(KeyringError, match="where"):
        keyring.Keyring.from_json(raw, "where")


def test_a_keyring_under_another_repository_name_is_refused(keys_dir):
    k = keyring.load_or_create(REPO, [])
    os.rename(keys_dir / REPO, keys_dir / ("cd" * 32))
    with pytest.raises(KeyringError, match="keyring of repository"):
        keyring.load("cd" * 32)
    assert k.repository == REPO


def test_the_export_round_trips():
    k = keyring.load_or_create(REPO, ["cd" * 32])
    assert keyring.Keyring.from_json(k.to_json(), "x") == k
