"""The CLI over a real repository holding archives a compromised client planted
(issue #13 B1, R4, R6): made with 'borg import-tar' of hand-made tars, as an
attacker with write access to a shared repository would make them."""

import json
import os
from dataclasses import replace

import handmade
import pytest
from handmade import host_key
from realstack import import_members

from borg_vm.format.names import Level
from borg_vm.format.summary import DiskSummary, Summary

GOOD = "web01.20261126T020000Z.borgvm-20261126T020000Z"


def summary(**over) -> Summary:
    return replace(Summary(Level.FULL, None, "2026-11-26T02:00:00Z", "u",
                           {"vda": DiskSummary(Level.FULL, 1 << 20, "qcow2", "/x", 0, 0)}), **over)


def comment(**over) -> str:
    """An unsigned comment with fields (of any type) replaced, as a planter writes."""
    doc = json.loads(summary().to_comment())
    doc.update(over)
    return json.dumps(doc)


def signed(borg, archive: str, **over) -> str:
    """A comment signed with this host's key, as a host holding the key writes."""
    return summary(**over).signed(host_key(borg), archive).to_comment()


def borg_vm(*args, repo):
    return handmade.borg_vm(*args, code=None, env=dict(os.environ, BORG_REPO=repo.repo))


@pytest.fixture
def repo(make_repo):
    r = make_repo()
    import_members(r, GOOD, [("manifest.json", b"{}")], comment=signed(r, GOOD))
    return r


@pytest.mark.parametrize("bad", [{"time": 5}, {"parent": 123}, {"parent": [1]},
                                 {"disks": {"vda": ["full", -5, "raw", "/x", 0, 0]}}])
def test_a_badly_typed_comment_is_skipped_with_one_warning(repo, bad):
    planted = "web01.20261126T030000Z.borgvm-20261126T030000Z"
    import_members(repo, planted, [("manifest.json", b"{}")], comment=comment(**bad))
    out = borg_vm("list", repo=repo)
    assert out.returncode == 1, out.stderr   # the warning: exit 1
    assert "borgvm-20261126T020000Z" in out.stdout and "030000Z" not in out.stdout
    warnings = out.stderr.strip().splitlines()
    assert len(warnings) == 1 and f"ignoring archive {planted}" in warnings[0]
    assert "Traceback" not in out.stderr
    listed = json.loads(borg_vm("list", "--json", repo=repo).stdout)["archives"]
    assert [a["name"] for a in listed] == [GOOD]


def test_escape_sequences_in_names_and_comments_are_shown_escaped(repo):
    # signed: a host with the key may have odd domain names (or be compromised)
    planted = "web\x1b[2J01.20261126T030000Z.borgvm-20261126T030000Z"
    import_members(repo, planted, [("manifest.json", b"{}")],
                   comment=signed(repo, planted, time="2026-11-26T03:00:00Z",
                                  parent="evil.\x1b]0;owned\x07"))
    out = borg_vm("list", repo=repo)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert "web\\x1b[2J01" in out.stdout and "\\x1b]0;owned\\x07" in out.stdout
    # --json escapes by itself (JSON strings cannot hold raw control characters)
    assert "\x1b" not in borg_vm("list", "--json", repo=repo).stdout
    # unsigned, it is named in a warning: escaped there too
    unsigned = "web\x1b[2J02.20261126T030000Z.borgvm-20261126T030000Z"
    import_members(repo, unsigned, [("manifest.json", b"{}")],
                   comment=comment(time="2026-11-26T03:00:00Z"))
    out = borg_vm("list", repo=repo)
    assert out.returncode == 1 and "\x1b" not in out.stderr, out.stderr
    assert "ignoring archive web\\x1b[2J02." in out.stderr, out.stderr


def test_log_lines_escape_what_the_repository_says(repo):
    planted = "web01\x1b[31m.20261126T030000Z.borgvm-20261126T030000Z"
    import_members(repo, planted, [("manifest.json", b"{}")], comment="\x1b[31mnot json")
    out = borg_vm("list", repo=repo)
    assert out.returncode == 1 and "\x1b" not in out.stderr
    assert "ignoring archive web01\\x1b[31m." in out.stderr


def test_list_of_a_domain_the_repository_does_not_hold(repo):
    out = borg_vm("list", "web02", repo=repo)
    assert out.returncode == 2
    assert out.stderr.strip() == ("borg-vm: The repository holds no borg-vm archive of "
                                  "'web02' ('borg-vm list' shows the domains it holds).")
    assert out.stdout == ""
