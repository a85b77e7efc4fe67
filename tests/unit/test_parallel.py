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
    assert (args.only, args.jobs, args.no_progress) == ("web", 1, True)


class _Borg1:
    repo = "/backups/vms"
    images = None


def test_a_borg1_repository_takes_one_writer():
    with pytest.raises(UsageError, match="Borg 2 repository: /backups/vms is a Borg 1.4 one"):
        parallel.run([], 2, _Borg1(), ["a", "b"])


@pytest.mark.parametrize("failed,code", [({}, EXIT_OK), ({"a": 2}, EXIT_ERROR)])
def test_the_summary_is_the_worst_exit_code(failed, code):
    assert parallel.summary(failed, ["a", "b"]) == code
    assert EXIT_WARNING < EXIT_ERROR
