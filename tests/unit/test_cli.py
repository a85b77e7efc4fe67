"""The one exit point: every error is one line and an exit code (issue #13 B1).

An unexpected exception is a bug, so no real part can be made to raise one
on purpose: these tests stand in for the action (and for libvirt, which the
backup command connects to first) with monkeypatched fakes, and run the
real main() with its real argument parsing, logging and exit codes.
"""

import contextlib
import json
import logging
import types

import pytest

from borg_vm import cli
from borg_vm.adapters import libvirt
from borg_vm.commands import backup as backup_command
from borg_vm.commands import list as list_command
from borg_vm.commands import mount as mount_command
from borg_vm.commands import options
from borg_vm.commands import prune as prune_command
from borg_vm.commands import restore as restore_command
from borg_vm.commands import verify as verify_command
from borg_vm.errors import DomainNotFound, Interrupted


@pytest.fixture
def fake_stack(monkeypatch):
    """Replace libvirt's connection and the repository with inert stand-ins."""
    monkeypatch.setattr(libvirt, "connect", lambda uri: contextlib.nullcontext(object()))
    monkeypatch.setattr(options.borg_adapter, "open_repository",
                        lambda repo, **kw: types.SimpleNamespace(repo=repo, images=None))
    monkeypatch.setenv("BORG_REPO", "/nonexistent/repo")


def run_main(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_an_unexpected_error_in_one_domain_does_not_stop_the_others(fake_stack, monkeypatch,
                                                                    capsys):
    tried = []

    def backup(hv, borg, name, opts, host):
        tried.append(name)
        if name == "a":
            raise TypeError("'<' not supported between instances of 'int' and 'str'")
        raise DomainNotFound(name=name, uri="qemu:///system")

    monkeypatch.setattr(backup_command, "backup", backup)
    code, out, err = run_main(capsys, "backup", "a", "b", "--no-progress")
    assert tried == ["a", "b"]
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0] == ("borg-vm: a: unexpected error (a bug in borg-vm, please report it): "
                        "TypeError: '<' not supported between instances of 'int' and 'str'; "
                        "--debug shows the traceback")
    assert lines[1].startswith("borg-vm: b: Domain 'b' not found")
    assert lines[2] == "borg-vm: 2 of 2 domains failed: a, b"
    assert "Traceback" not in err


def test_an_unexpected_error_anywhere_exits_2_with_one_line(fake_stack, monkeypatch, capsys):
    def boom(borg, domain):
        raise KeyError("time")

    monkeypatch.setattr(list_command, "list_archives", boom)
    code, out, err = run_main(capsys, "list")
    assert code == 2
    assert err == ("borg-vm: unexpected error (a bug in borg-vm, please report it): "
                   "KeyError: 'time'; --debug shows the traceback\n")


def test_debug_adds_the_traceback(fake_stack, monkeypatch, capsys):
    monkeypatch.setattr(list_command, "list_archives",
                        lambda borg, domain: (_ for _ in ()).throw(ValueError("x")))
    code, _out, err = run_main(capsys, "--debug", "list")
    assert code == 2
    assert "Traceback" in err and "ValueError: x" in err


def test_full_every_comes_from_the_environment(fake_stack, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(backup_command, "backup", lambda hv, borg, name, opts, host: seen.append(opts.full_every)
                        or (_ for _ in ()).throw(KeyError("stop")))
    monkeypatch.setenv("BORG_VM_FULL_EVERY", "30d")
    run_main(capsys, "backup", "a")
    assert seen[-1].text == "30d" and seen[-1].age == 30 * 86400
    run_main(capsys, "backup", "a", "--full-every", "14")        # the option wins
    assert seen[-1].count == 14
    monkeypatch.setenv("BORG_VM_FULL_EVERY", "soon")
    code, _out, err = run_main(capsys, "backup", "a")
    assert code == 2 and "BORG_VM_FULL_EVERY: not an age, a count or never: 'soon'" in err
    monkeypatch.delenv("BORG_VM_FULL_EVERY")                      # the default: a month
    run_main(capsys, "backup", "a")
    assert seen[-1].text == "30d" and seen[-1].age == 30 * 86400
    run_main(capsys, "backup", "a", "--full-every", "never")
    assert seen[-1].text == "never" and seen[-1].age is None and seen[-1].count is None


def backup_options(monkeypatch):
    """Make backup record the options it gets (and stop there); return the list."""
    seen = []
    monkeypatch.setattr(backup_command, "backup", lambda hv, borg, name, opts, host: seen.append((name, opts))
                        or (_ for _ in ()).throw(KeyError("stop")))
    return seen


@pytest.mark.parametrize("argv, domains, mode", [
    (["a"], ["a"], None),
    (["--quiesce", "a", "b"], ["a", "b"], "on"),       # a DOMAIN is never its value
    (["a", "--quiesce"], ["a"], "on"),
    (["--quiesce=try", "a"], ["a"], "try"),
    (["a", "--quiesce=try"], ["a"], "try"),
])
def test_quiesce_takes_a_value_only_after_an_equals_sign(fake_stack, monkeypatch, capsys,
                                                         argv, domains, mode):
    seen = backup_options(monkeypatch)
    run_main(capsys, "backup", *argv)
    assert [name for name, _ in seen] == domains
    assert {opts.quiesce for _, opts in seen} == {mode}


def test_quiesce_has_no_other_value(fake_stack, monkeypatch, capsys):
    seen = backup_options(monkeypatch)
    code, _out, err = run_main(capsys, "backup", "a", "--quiesce=yes")
    assert code == 2 and not seen
    assert "argument --quiesce: takes no value or =try, not 'yes'" in err


def test_freeze_timeout_comes_from_the_environment(fake_stack, monkeypatch, capsys):
    seen = backup_options(monkeypatch)
    run_main(capsys, "backup", "a", "--quiesce")
    assert seen[-1][1].freeze_timeout == 10
    monkeypatch.setenv("BORG_VM_FREEZE_TIMEOUT", "2.5")
    run_main(capsys, "backup", "a", "--quiesce")
    assert seen[-1][1].freeze_timeout == 2.5
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv("BORG_VM_FREEZE_TIMEOUT", bad)
        code, _out, err = run_main(capsys, "backup", "a", "--quiesce")
        assert code == 2
        assert f"BORG_VM_FREEZE_TIMEOUT: not a positive number of seconds: {bad!r}" in err


@pytest.mark.parametrize("argv", [
    ("boot", "web01"),                                         # booting needs --to
    ("boot", "--finish", "web01-restored", "--to", "/srv"),    # finishing takes no --to
    ("boot", "--resume", "web01-restored", "--checkpoint", "borgvm-20261127T020000Z"),
    ("boot", "--finish", "web01-restored", "--name", "other"),
])
def test_boot_refuses_options_that_do_not_go_together(fake_stack, capsys, argv):
    code, _out, err = run_main(capsys, *argv)
    assert code == 2
    assert err.startswith("borg-vm: boot DOMAIN needs --to DIR; --finish NEW and --resume NEW "
                          "take none of")


def test_boot_finish_and_resume_are_one_or_the_other(capsys):
    code, _out, err = run_main(capsys, "boot", "--finish", "--resume", "web01-restored")
    assert code == 2 and "not allowed with argument" in err


def test_socket_owner_takes_names_and_numbers():
    assert options.owner("0") == (0, 0)
    assert options.owner("root:0") == (0, 0)
    assert options.owner("0:root") == (0, 0)
    with pytest.raises(ValueError, match="no such user or group"):
        options.owner("no-such-user-borgvm")
    with pytest.raises(ValueError, match="no such user or group"):
        options.owner("root:no-such-group-borgvm")


def test_socket_owner_errors_are_usage_errors(capsys):
    code, _out, err = run_main(capsys, "mount", "web01", "--socket", "/tmp/s",
                               "--socket-owner", "no-such-user-borgvm")
    assert code == 2 and "argument --socket-owner: no such user or group" in err


def test_a_warning_makes_the_run_exit_1(fake_stack, monkeypatch, capsys):
    def warns(borg, domain):
        logging.getLogger("borg_vm.services.catalog").warning("ignoring archive x: y")
        return []

    monkeypatch.setattr(list_command, "list_archives", warns)
    code, _out, err = run_main(capsys, "list")
    assert code == 1
    assert err == "borg-vm: ignoring archive x: y\n"


def test_a_warning_does_not_lower_an_error(fake_stack, monkeypatch, capsys):
    def warns_then_fails(borg, domain):
        logging.getLogger("borg_vm.services.catalog").warning("ignoring archive x: y")
        raise DomainNotFound(name="x", uri="qemu:///system")

    monkeypatch.setattr(list_command, "list_archives", warns_then_fails)
    code, _out, _err = run_main(capsys, "--quiet", "list")
    assert code == 2


def test_info_alone_exits_0(fake_stack, monkeypatch, capsys):
    def informs(borg, domain):
        logging.getLogger("borg_vm.services.catalog").info("all fine")
        return []

    monkeypatch.setattr(list_command, "list_archives", informs)
    code, _out, _err = run_main(capsys, "list")
    assert code == 0
@pytest.mark.parametrize("command, extra", [("restore", ("--to", "/srv/out")),
                                            ("mount", ("--socket", "/tmp/s"))])
def test_a_disk_named_twice_is_one_disk(fake_stack, monkeypatch, capsys, command, extra):
    """restore read it twice (borg: "Include pattern never matched") and mount made
    a directory of sockets for one disk."""
    module = {"restore": restore_command, "mount": mount_command}[command]
    seen = []
    monkeypatch.setattr(module, command, lambda borg, domain, opts, *rest: seen.append(opts))
    run_main(capsys, command, "web01", *extra, "--disk", "vdb", "--disk", "vda",
             "--disk", "vdb")
    assert seen[0].disks == ("vdb", "vda")


def test_verify_checkpoint_needs_a_domain(fake_stack, monkeypatch, capsys):
    """It verified every archive of the repository, the checkpoint ignored."""
    called = []
    monkeypatch.setattr(verify_command, "verify", lambda *a: called.append(a))
    code, out, err = run_main(capsys, "verify", "--checkpoint", "borgvm-20261127T020000Z")
    assert (code, out, called) == (2, "", [])
    assert err == ("borg-vm: verify --checkpoint NAME needs the DOMAIN whose checkpoint it "
                   "is\n")


def test_backup_json_has_an_object_for_each_domain_that_failed(fake_stack, monkeypatch, capsys):
    """Only the good domain's object was printed: a failure was on stderr alone."""
    class Done:
        def to_json(self):
            return {"domain": "good", "archive": "good.base.borgvm-20261127T020000Z"}

    def backup(hv, borg, name, opts, host):
        if name == "good":
            return Done()
        if name == "buggy":
            raise TypeError("boom")
        raise DomainNotFound(name=name, uri="qemu:///system")

    monkeypatch.setattr(backup_command, "backup", backup)
    code, out, err = run_main(capsys, "backup", "nosuchdom", "good", "buggy", "--json")
    assert code == 2
    assert [json.loads(line) for line in out.splitlines()] == [
        {"domain": "nosuchdom", "error": "Domain 'nosuchdom' not found at qemu:///system "
                                         "('virsh -c qemu:///system list --all' lists the "
                                         "domains).", "exit_code": 2},
        {"domain": "good", "archive": "good.base.borgvm-20261127T020000Z"},
        {"domain": "buggy", "error": "unexpected error (a bug in borg-vm, please report it): "
                                     "TypeError: boom; --debug shows the traceback",
         "exit_code": 2}]
    assert "nosuchdom: Domain 'nosuchdom' not found" in err
@pytest.mark.parametrize("argv, domains", [
    (["a", "--no-progress", "b"], ["a", "b"]),
    (["a", "--level", "full", "b", "--quiesce", "c"], ["a", "b", "c"]),
    (["--debug", "a", "-q", "b"], ["a", "b"]),
])
def test_backup_takes_domains_between_options(fake_stack, monkeypatch, capsys, argv, domains):
    seen = backup_options(monkeypatch)
    run_main(capsys, "backup", *argv)
    assert [name for name, _ in seen] == domains


def test_prune_takes_domains_between_options(fake_stack, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(prune_command, "prune",
                        lambda borg, opts: seen.append(opts) or (_ for _ in ()).throw(
                            KeyError("stop")))
    run_main(capsys, "prune", "a", "--keep-last", "3", "b")
    assert seen[-1].domains == ("a", "b") and seen[-1].rules.last == 3


def test_an_unknown_argument_after_domains_is_still_refused(fake_stack, monkeypatch, capsys):
    seen = backup_options(monkeypatch)
    code, _out, err = run_main(capsys, "backup", "a", "--no-progress", "b", "--bogus")
    assert code == 2 and not seen
    assert "unrecognized arguments: --bogus" in err


@pytest.mark.parametrize("argv, domains", [
    (["--no-progress", "--", "-odd"], ["-odd"]),
    (["a", "--no-progress", "b", "--", "-odd", "--json"], ["a", "b", "-odd", "--json"]),
])
def test_everything_after_a_double_dash_is_a_domain(fake_stack, monkeypatch, capsys, argv,
                                                     domains):
    seen = backup_options(monkeypatch)
    run_main(capsys, "backup", *argv)
    assert [name for name, _ in seen] == domains


@pytest.mark.parametrize("argv, says", [
    ([], "name the domains to back up, or use --all (optionally with --match GLOB)"),
    (["a", "--all"], "name the domains to back up or use --all, not both"),
    (["a", "--all", "--match", "x*"], "name the domains to back up or use --all, not both"),
    (["--match", "x*", "a"], "--match narrows --all, not named domains: name the domains to "
                             "back up, or use --all --match GLOB"),
    (["--match", "x*"], "--match narrows --all: use --all --match GLOB"),
])
def test_backup_says_what_is_wrong_with_its_selection(fake_stack, monkeypatch, capsys, argv,
                                                      says):
    seen = backup_options(monkeypatch)
    code, _out, err = run_main(capsys, "backup", *argv)
    assert code == 2 and not seen
    assert err == f"borg-vm: {says}\n"


@pytest.mark.parametrize("arg, says", [
    ("--json=yes", "argument --json: takes no value, not 'yes'"),
    ("--no-progress=", "argument --no-progress: takes no value, not ''"),
    ("--quiesce=maybe", "argument --quiesce: takes no value or =try, not 'maybe'"),
])
def test_a_flag_given_a_value_says_it_takes_none(fake_stack, monkeypatch, capsys, arg, says):
    seen = backup_options(monkeypatch)
    code, _out, err = run_main(capsys, "backup", "a", arg)
    assert code == 2 and not seen
    assert err.endswith(f"borg-vm backup: error: {says}\n")


@pytest.mark.parametrize("argv, option", [
    (("restore", "web01", "--to", ""), "--to"),
    (("restore", "web01", "--to="), "--to"),
    (("boot", "web01", "--to", ""), "--to"),
    (("mount", "web01", "--socket", ""), "--socket"),
    (("backup", "web01", "--scratch-dir", ""), "--scratch-dir"),
])
def test_an_empty_path_is_refused(fake_stack, monkeypatch, capsys, argv, option):
    monkeypatch.setattr(restore_command, "restore", lambda *a: pytest.fail("restored"))
    code, _out, err = run_main(capsys, *argv)
    assert code == 2
    assert err.endswith(f"error: argument {option}: an empty path\n")


def test_a_signal_while_a_line_is_logged_is_not_lost(monkeypatch):
    """SIGINT raises Interrupted wherever the main thread is; logging swallows what
    a handler raises (it prints '--- Logging error ---'), and then borg-vm mount
    served on after Ctrl-C."""
    logger = logging.getLogger("borg_vm")
    monkeypatch.setattr(logger, "handlers", [])
    cli._setup_logging(debug=False, quiet=False)

    class Terminal:
        def write(self, text):
            raise Interrupted(signal="SIGINT")

        def flush(self):
            pass

    logger.handlers[0].setStream(Terminal())
    with pytest.raises(Interrupted):
        logging.getLogger("borg_vm.test").info("serving")


@pytest.mark.parametrize("images, argv, chunk", [
    (None, [], 256 * 1024),             # Borg 1: chains of data members
    (object(), [], 64 * 1024),          # Borg 2: complete images (names.IMAGE_BLOCK_SIZE)
    (object(), ["--chunk-size", "1M"], 1024 * 1024),
])
def test_the_chunk_size_defaults_by_the_repositorys_generation(fake_stack, monkeypatch, capsys,
                                                                images, argv, chunk):
    monkeypatch.setattr(options.borg_adapter, "open_repository",
                        lambda repo, **kw: types.SimpleNamespace(repo=repo, images=images))
    seen = backup_options(monkeypatch)
    run_main(capsys, "backup", "a", *argv)
    assert seen[0][1].block_size == chunk


@pytest.mark.parametrize(("argv", "says"), [
    (["boot", "web", "--to", "/srv/boot", "-c", "qemu+ssh://root@hv1/system"],
     "borg-vm: borg-vm does not support boot on a remote hypervisor "
     "(qemu+ssh://root@hv1/system) yet: run borg-vm boot on the hypervisor."),
    (["backup", "web", "-c", "qemu+tls://hv1/system"],
     "borg-vm: borg-vm does not support the tls transport on a remote hypervisor "
     "(qemu+tls://hv1/system) yet: use a qemu+ssh:// URI."),
])
def test_what_a_remote_hypervisor_cannot_do_yet_is_one_error(fake_stack, capsys, argv, says):
    code, out, err = run_main(capsys, *argv)
    assert (code, out, err.strip()) == (2, "", says)
