"""What the commands' parsers share: the options every command takes, the value
parsers of option types, the repository an invocation names, and JSON output.

A command module builds its own parser with these (``add_repository_options``)
and reads the parsed values through them (``repository``), so the argparse
namespace goes no further than the command's handler.
"""

from __future__ import annotations

import argparse
import getpass
import grp
import json
import os
import pwd
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from borg_vm.adapters import borg as borg_adapter
from borg_vm.adapters import libvirt as virt
from borg_vm.core import durations
from borg_vm.errors import NoRepository, UsageError

LOCK_WAIT_ENV = "BORG_VM_LOCK_WAIT"
T = TypeVar("T")


class CommandParser(argparse.ArgumentParser):
    """A command's parser. DOMAIN... may come before, between and after the
    options (``backup a --no-progress b``): argparse takes the first run of them
    only, and leaves the others here to be added. An option may take a value
    only as ``--option=VALUE`` from a fixed set (``--quiesce=try``): each
    allowed spelling is an option of its own (argparse matches it whole), and
    any other ``--option=VALUE`` (of any option that takes no value) is refused
    here with what the option takes."""

    value_spellings: dict[str, tuple[str, ...]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.value_spellings = {}

    def add_value_spelling(self, option: str, value: str, **kwargs: Any) -> None:
        """Accept ``option=value`` as an option of its own (kwargs: its action), not
        shown in the help (the option's own help says it)."""
        self.value_spellings.setdefault(option, ())
        self.value_spellings[option] += (value,)
        self.add_argument(f"{option}={value}", help=argparse.SUPPRESS, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # untyped: argparse's is overloaded
        args = list(sys.argv[1:] if args is None else args)
        for arg in args[:args.index("--") if "--" in args else len(args)]:
            option, eq, value = arg.partition("=")
            allowed = self.value_spellings.get(option)
            if eq and allowed is not None and value not in allowed:
                self.error(f"argument {option}: takes no value or "
                           f"{' or '.join(f'={v}' for v in allowed)}, not {value!r}")
            flag = self._option_string_actions.get(option)
            if eq and allowed is None and flag is not None and flag.nargs == 0:
                # argparse would say "ignored explicit argument"
                self.error(f"argument {option}: takes no value, not {value!r}")
        namespace, extras = super().parse_known_args(args, namespace)
        many = [a for a in self._get_positional_actions() if a.nargs == argparse.ZERO_OR_MORE]
        if many and extras:
            more, extras = _positionals(extras)
            setattr(namespace, many[0].dest, [*getattr(namespace, many[0].dest), *more])
        return namespace, extras


def _positionals(extras: list[str]) -> tuple[list[str], list[str]]:
    """Split what argparse left over into (positional arguments, the rest): those
    that are no option, and everything after a ``--``. (parse_intermixed_args
    would do this, but loses a DOMAIN after a ``--`` that follows options.)"""
    end = extras.index("--") if "--" in extras else len(extras)
    head, tail = extras[:end], extras[end + 1:]
    return ([a for a in head if not a.startswith("-")] + tail,
            [a for a in head if a.startswith("-")])


def add_repository_options(p: argparse.ArgumentParser, libvirt: bool = False,
                           hypervisors: bool = False) -> None:
    """Add --repo and --lock-wait (with libvirt: -c/--connect; with hypervisors,
    repeatable, a list or None) and --json."""
    p.add_argument("--repo", metavar="REPO", help="Borg repository (default: $BORG_REPO)")
    p.add_argument("--lock-wait", type=type_of(whole_seconds), metavar="SECONDS",
                   help="wait this long for another borg or borg-vm run to release "
                   f"the repository lock (default: ${LOCK_WAIT_ENV}, else "
                   f"{borg_adapter.DEFAULT_LOCK_WAIT} = "
                   f"{borg_adapter.DEFAULT_LOCK_WAIT // 3600} h)")
    if hypervisors:
        p.add_argument("-c", "--connect", metavar="URI", action="append",
                       help=f"libvirt URI, as for virsh -c (default: {virt.DEFAULT_URI}); "
                       "repeatable: the domains of several hypervisors, each backed up from "
                       "the one that has it")
    elif libvirt:
        p.add_argument("-c", "--connect", metavar="URI", default=virt.DEFAULT_URI,
                       help=f"libvirt URI, as for virsh -c (default: {virt.DEFAULT_URI})")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def add_logging_options(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="debug logging and tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="log warnings and errors only")


def add_progress_option(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--no-progress", action="store_true", help=f"no progress bar{what}")


def add_keep_host_resources_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-host-resources", action="store_true",
                   help="keep the domain XML as archived: host devices and files, QEMU "
                   "arguments, graphics and ports open to the network, seclabels (default: "
                   "remove or make them safe, with a warning)")


class _AppendOnce(argparse.Action):
    """Append the value unless it is there already: --disk vda --disk vda is one disk."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 value: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        values = list(getattr(namespace, self.dest) or [])
        if value not in values:
            values.append(value)
        setattr(namespace, self.dest, values)


def add_disk_option(p: argparse.ArgumentParser, verb: str) -> None:
    """Add --disk TARGET, repeatable; a disk named twice counts once (args.disk:
    the disks in the order first named)."""
    p.add_argument("--disk", action=_AppendOnce, default=[], metavar="TARGET",
                   help=f"{verb} only this disk; repeatable (a disk named twice counts once)")


def add_allow_unauthenticated_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="also use archives this host cannot authenticate (written by "
                   "another host, or planted by whoever can write the repository), with a "
                   "warning (default: only archives signed with this host's key)")


def progress(args: argparse.Namespace) -> bool:
    """Return whether to show a progress bar (not with --no-progress or --json)."""
    return not (args.no_progress or args.json)


def type_of(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Return an argparse type that reports parse's ValueError as a usage error."""
    def parsed(text: str) -> T:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
    parsed.__name__ = parse.__name__
    return parsed


def from_env(variable: str, parse: Callable[[str], T], default: T) -> T:
    """Return parse($variable), or default if it is unset or empty; raise UsageError
    naming the variable if parse refuses it."""
    text = os.environ.get(variable)
    if not text:
        return default
    try:
        return parse(text)
    except ValueError as e:
        raise UsageError(detail=f"{variable}: {e}") from e


def whole_seconds(text: str) -> int:
    """Parse a whole number of seconds (0 or more); raise ValueError otherwise."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"not a whole number of seconds: {text!r}")
    return int(text)


def positive_seconds(text: str) -> float:
    """Parse a positive, finite number of seconds; raise ValueError otherwise."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1
    if not 0 < seconds < float("inf"):
        raise ValueError(f"not a positive number of seconds: {text!r}")
    return seconds


def path(text: str) -> str:
    """Parse a path: any but the empty one (which open() and friends would take
    for the current directory); raise ValueError for that."""
    if not text:
        raise ValueError("an empty path")
    return text


def count(text: str) -> int:
    """Parse a count (0 or more); raise ValueError otherwise."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"not a count: {text!r}")
    return int(text)


def duration_hours(text: str) -> int:
    """Parse a duration as Borg spells it (core/durations.py) into hours."""
    return durations.parse_hours(text)


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
MIN_CHUNK = 64 * 1024
MAX_CHUNK = 16 * 1024 * 1024


def power_of_two_size(text: str) -> int:
    """Parse SIZE (bytes, or with a K/M/G suffix: powers of 1024): 0, or a power of
    two >= MIN_CHUNK; raise ValueError otherwise."""
    number, unit = text.rstrip("KMGkmg"), text[len(text.rstrip("KMGkmg")):].upper()
    if not (number.isascii() and number.isdigit()) or unit not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 4M, 65536)")
    value = int(number) * _SIZE_UNITS[unit]
    if value and (value & (value - 1) or value < MIN_CHUNK):
        raise ValueError(f"{text} is not a power of two >= 64K")
    return value


def owner(text: str) -> tuple[int, int]:
    """Parse USER[:GROUP] (names or numbers) into (uid, gid); GROUP defaults to the
    user's own. Raise ValueError for an unknown user or group."""
    user, _, group = text.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        gid = entry.pw_gid if not group else (
            int(group) if group.isdigit() else grp.getgrnam(group).gr_gid)
    except KeyError as e:
        raise ValueError(f"no such user or group in {text!r}") from e
    return entry.pw_uid, gid


def lock_wait(args: argparse.Namespace) -> int:
    """Return --lock-wait, else $BORG_VM_LOCK_WAIT, else the default."""
    if args.lock_wait is not None:
        return int(args.lock_wait)
    return from_env(LOCK_WAIT_ENV, whole_seconds, borg_adapter.DEFAULT_LOCK_WAIT)


def repository(args: argparse.Namespace,
               default_repo: str | None = None) -> borg_adapter.Repository:
    """Return the repository of --repo, else default_repo, else $BORG_REPO; raise
    NoRepository if none is named."""
    repo = args.repo or default_repo or os.environ.get("BORG_REPO")
    if not repo:
        raise NoRepository()
    # On a terminal, a passphrase nobody gave is asked for (once, by borg-vm:
    # borg itself never sees the terminal).
    ask = getpass.getpass if sys.stdin.isatty() else None
    return borg_adapter.open_repository(repo, lock_wait=lock_wait(args), ask_passphrase=ask)


def emit(doc: dict[str, Any]) -> None:
    """Print a result as JSON on stdout (lists of archives one per line)."""
    print(json.dumps(doc, indent=None if "archives" not in doc else 1))
