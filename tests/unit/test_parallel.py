"""backup --jobs N (services/backup/parallel.py): the argv of each child, and what a
Borg 1.4 repository is told."""

import sys

import pytest

from borg_vm.errors import EXIT_ERROR, EXIT_OK, EXIT_WARNING, UsageError
from borg_vm.services.backup import parallel


@pytest.mark.parametrize("argv", [
    ["backup", "--all", "--jobs", "4", "--repo", "r"],
    ["--debug", "backup", "a", "b", "--jobs=2"],
    ["backup", "--jobs", "2", "--", "a", "b"],
])
def test_a_child_backs_up_one_domain_alone_with_its_parents_options(argv):
    child = parallel.child_argv(argv, "b")
    at = argv.index("--") if "--" in argv else len(argv)
    assert child[:3] == [sys.executable, "-m", "borg_vm"]
    assert child[3:] == [*argv[:at], "--only", "b", "--jobs", "1", "--no-progress",
                         *argv[at:]]


def test_every_option_a_child_gets_parses():
    from borg_vm.cli import build_parser
    args = build_parser().parse_args(parallel.child_argv(
        ["backup", "--all", "--jobs", "3", "--", "x"], "web")[3:])
    assert (args.only, args.only_at, args.jobs, args.no_progress) == ("web", None, 1, True)


def test_a_child_of_a_run_over_several_hypervisors_backs_up_from_its_own():
    from borg_vm.cli import build_parser
    argv = ["backup", "--all", "-c", "qemu+ssh://a/system", "-c", "qemu+ssh://b/system",
            "--jobs", "3"]
    child = parallel.child_argv(argv, "web", "qemu+ssh://b/system")
    assert child[3:] == [*argv, "--only", "web", "--only-at", "qemu+ssh://b/system",
                         "--jobs", "1", "--no-progress"]
    args = build_parser().parse_args(child[3:])
    assert (args.only, args.only_at) == ("web", "qemu+ssh://b/system")


class _Borg1:
    repo = "/backups/vms"
    images = None


def test_a_borg1_repository_takes_one_writer():
    with pytest.raises(UsageError, match="Borg 2 repository: /backups/vms is a Borg 1.4 one"):
        parallel.run([], 2, _Borg1(), {"a": None, "b": None})


@pytest.mark.parametrize("codes,code", [({}, EXIT_OK), ({"a": 1}, EXIT_WARNING),
                                        ({"a": 2}, EXIT_ERROR), ({"a": 1, "b": 2}, EXIT_ERROR),
                                        ({"qemu+ssh://c/system": 2}, EXIT_ERROR)])
def test_the_summary_is_the_worst_exit_code(codes, code):
    assert parallel.summary(codes, ["a", "b"]) == code
    assert EXIT_WARNING < EXIT_ERROR


def test_the_summary_names_the_domains_that_failed(caplog):
    parallel.summary({"a": 2, "b": 1, "qemu+ssh://c/system": 2}, ["a", "b"])
    assert [r.getMessage() for r in caplog.records] == ["1 of 2 domains failed: a"]


def test_the_summary_names_the_hypervisors_that_could_not_be_reached(caplog):
    gone = "qemu+ssh://c/system"
    assert parallel.summary({gone: 2}, ["a"], ["qemu:///system", gone]) == EXIT_ERROR
    assert [r.getMessage() for r in caplog.records] == [
        f"1 of 2 hypervisors could not be reached: {gone}"]
