"""The documentation against the code: every option of `borg-vm COMMAND --help`
is in docs/usage.md under that command's heading (`## backup`, ...), every
option named there exists, relative links in README.md and docs/ resolve,
and no file names a path of the machine it was written on."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from borg_vm.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
USAGE = ROOT / "docs" / "usage.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Files that README.md or docs/ link to and that another branch adds; a link
# to one of them may dangle until that branch is merged (and is checked as
# soon as the file exists).
PENDING = {"docs/platforms.md"}

# A long option in running text or a synopsis: --name, --name=value,
# --name[=value]. Not preceded by a word character or a dash.
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*(?:\[=[a-z]+\]|=[a-z]+)?")
HEADING = re.compile(r"^## (\S+)\s*$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _base(option: str) -> str:
    """--quiesce[=try] and --quiesce=try are spellings of --quiesce."""
    return re.sub(r"(\[=[a-z]+\]|=[a-z]+)$", "", option)


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return dict(parser._subparsers._group_actions[0].choices)


def _long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {_base(s) for action in parser._actions for s in action.option_strings
            if s.startswith("--") and s != "--help"}


def _sections() -> dict[str, str]:
    """Return {heading: text} of usage.md's level-2 sections, and "" for the text
    before the first one."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in USAGE.read_text().splitlines():
        if m := HEADING.match(line):
            current = m.group(1)
            assert current not in sections, f"usage.md: two sections '## {current}'"
            sections[current] = []
        else:
            sections[current].append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def _mentioned(text: str) -> set[str]:
    return {_base(m) for m in OPTION.findall(text)}


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_option_of_a_command_is_in_its_usage_section(command):
    sections = _sections()
    assert command in sections, f"docs/usage.md has no section '## {command}'"
    missing = _long_options(_commands()[command]) - _mentioned(sections[command])
    assert not missing, f"'## {command}' of docs/usage.md does not mention {sorted(missing)}"


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_option_in_a_usage_section_exists(command):
    unknown = (_mentioned(_sections().get(command, "")) - _long_options(_commands()[command])
               - {"--help"})
    assert not unknown, (f"'## {command}' of docs/usage.md mentions {sorted(unknown)}, "
                         f"which borg-vm {command} does not take")


def test_every_option_outside_command_sections_exists_somewhere():
    commands = _commands()
    known = _long_options(build_parser()).union(*map(_long_options, commands.values()),
                                                 {"--help"})
    for name, text in _sections().items():
        if name in commands:
            continue
        unknown = _mentioned(text) - known
        assert not unknown, f"'{name or 'the top'}' of docs/usage.md mentions {sorted(unknown)}"


def test_relative_links_resolve():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL, or an anchor in the same file
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            relative = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else None
            if not path.exists() and relative not in PENDING:
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, "links to missing files: " + ", ".join(broken)


def _anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    heads = re.findall(r"^#+ (.+?)\s*$", doc.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_anchors_of_links_exist():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or "#" not in target:
                continue
            file, anchor = target.split("#", 1)
            path = (doc.parent / file).resolve() if file else doc
            if path.suffix == ".md" and path.exists() and anchor not in _anchors(path):
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, "links to missing headings: " + ", ".join(broken)


def test_readme_links_to_every_doc():
    readme = ROOT / "README.md"
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in LINK.findall(readme.read_text())}
    unlinked = [d.name for d in DOCS[1:] if d.resolve() not in linked]
    assert not unlinked, f"README.md does not link to docs/{unlinked}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_no_machine_specific_paths(doc):
    text = doc.read_text()
    found = sorted({m for m in re.findall(r"(?<![\w.-])/(?:work|root)/\S*", text)}
                   | ({str(ROOT)} if str(ROOT) in text else set()))
    assert not found, f"{doc.relative_to(ROOT)} names paths of this machine: {found}"
