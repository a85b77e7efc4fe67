"""features.py: the borg program's version and the spellings that depend on it."""

import os

import pytest

from borg_vm.adapters.borg.features import BorgVersion, Dialect, check_supported
from borg_vm.errors import BorgUnsupported


@pytest.mark.parametrize("text, version", [
    ("borg 1.4.5\n", "1.4.5"),
    ("borg 1.2.0", "1.2.0"),
    ("borg2 2.0.0b23\n", "2.0.0b23"),                      # installed under another name
    ("borg.exe 2.0.0b25\n", "2.0.0b25"),
    ("borg 2.0.0b24.dev3+g1a2b3c4\n", "2.0.0b24.dev3+g1a2b3c4"),   # a build from git
    ("some warning first\nborg 1.4.5\n", "1.4.5"),
])
def test_the_version_is_the_second_word(text, version):
    assert str(BorgVersion.parse(text)) == version


@pytest.mark.parametrize("text", ["", "borg", "borg version unknown", "1.4.5", "borg 1.4"])
def test_what_names_no_version_is_refused(text):
    with pytest.raises(ValueError, match="not a borg version"):
        BorgVersion.parse(text)


def test_versions_order_as_python_versions():
    order = ["1.2.0", "1.4.5", "2.0.0b3", "2.0.0b23", "2.0.0b24.dev3+gabc", "2.0.0b25",
             "2.0.0rc1", "2.0.0"]
    assert sorted(order, key=BorgVersion.of) == order


@pytest.mark.parametrize("version", ["1.2.0", "1.4.5", "2.0.0b23", "2.0.0b25", "2.0.0"])
def test_borg_1_2_to_1_4_and_2_from_its_beta_with_map_are_supported(version):
    check_supported(BorgVersion.of(version), "/usr/bin/borg")


@pytest.mark.parametrize("version", ["1.1.18", "2.0.0b22", "3.0.0"])
def test_other_versions_are_refused_by_name(version):
    with pytest.raises(BorgUnsupported, match=version.replace(".", r"\.")):
        check_supported(BorgVersion.of(version), "/usr/bin/borg")


BORG1, BORG2 = Dialect(BorgVersion.of("1.4.5")), Dialect(BorgVersion.of("2.0.0b23"))


@pytest.mark.parametrize("dialect, repo", [
    (BORG1, "ssh://u@h/./repo"), (BORG1, "u@host:repo"),
    (BORG1, "host:/srv/repo"), (BORG1, "/srv/repo"),
    (BORG2, "ssh://u@h/./repo"), (BORG2, "sftp://u@h/srv/repo"),
    (BORG2, "file:///srv/repo"), (BORG2, "rclone:remote:path/repo"),
    (BORG2, "s3:profile@http://127.0.0.1:9000/bucket/repo"),
    (BORG2, "b2:key:secret@bucket/repo"), (BORG2, "/srv/repo"),
])
def test_locations_that_name_a_place_are_kept(dialect, repo):
    assert dialect.absolute_location(repo) == repo


@pytest.mark.parametrize("dialect", [BORG1, BORG2])
def test_a_relative_path_is_made_absolute(dialect, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert dialect.absolute_location("repo") == os.path.join(tmp_path, "repo")
    # Borg 2 has no scp-style locations: a colon in a local name is a path
    assert BORG2.absolute_location("my:repo") == os.path.join(tmp_path, "my:repo")


def test_comments_reach_borg_as_they_are():
    comment = '{"borg-vm":5,"host":"{hostname}"}'
    assert BORG1.comment_arg(comment) == comment
    assert BORG2.comment_arg(comment) == '{{"borg-vm":5,"host":"{{hostname}}"}}'


def test_each_generation_names_archives_its_way():
    assert BORG1.archive_args("/r", "a") == ["/r::a"]
    assert BORG2.archive_args("/r", "a") == ["-r", "/r", "a"]
    assert BORG1.list_archives_command() == "list"
    assert BORG2.list_archives_command() == "repo-list"
    assert BORG1.match_archives_args("web.*") == ["--glob-archives", "web.*"]
    assert BORG2.match_archives_args("web.*") == ["-a", "sh:web.*"]
