"""Which hypervisor backs up which domain, when one backup run pulls from several
(``backup -c URI -c URI ...``).

One repository holds one domain of a name: its archives are named by it, and
its chains follow one disk history. So a domain is backed up from the one
hypervisor that has it; a name several hypervisors have is not backed up at
all (which is the real one cannot be told from here), and the run says where
it found it. The same domain (one UUID) on several is the same hypervisor
given twice, or a domain being migrated; two domains (two UUIDs) of one name
are two machines that cannot share a repository.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class Placement:
    """Where each domain is backed up from (URI -> domain names, in the order of
    the hypervisors, then of the names), and why the others are not (name ->
    the reason, one line)."""
    domains: dict[str, list[str]] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


def place(listed: Mapping[str, Mapping[str, str]], named: Sequence[str], match: str | None,
          unreachable: Sequence[str] = ()) -> Placement:
    """Given what each reachable hypervisor has (URI -> {domain name: UUID}, in the
    order given), the domains named (none: every domain, or those matching the
    glob match), and the URIs of the hypervisors that could not be reached,
    return where each domain is backed up from."""
    where: dict[str, list[str]] = {}
    for uri, domains in listed.items():
        for name in domains:
            where.setdefault(name, []).append(uri)
    wanted = list(dict.fromkeys(named)) if named else [
        name for name in where if fnmatchcase(name, match or "*")]
    placement = Placement({uri: [] for uri in listed})
    for name in wanted:
        uris = where.get(name, [])
        if len(uris) == 1:
            placement.domains[uris[0]].append(name)
        elif not uris:
            placement.problems[name] = _nowhere(name, list(listed), unreachable)
        else:
            placement.problems[name] = _several(name, {u: listed[u][name] for u in uris})
    return placement


def _nowhere(name: str, reached: list[str], unreachable: Sequence[str]) -> str:
    missed = f" ({', '.join(unreachable)} could not be reached)" if unreachable else ""
    return f"domain {name!r} is on none of {', '.join(reached)}{missed}"


def _several(name: str, uuids: dict[str, str]) -> str:
    uris = ", ".join(uuids)
    if len(set(uuids.values())) == 1:
        return (f"domain {name!r} (UUID {next(iter(uuids.values()))}) is reached through "
                f"{uris}: the same hypervisor given twice, or a domain being migrated; "
                "give each hypervisor once")
    return (f"domains named {name!r} are on {uris}, with different UUIDs: a repository "
            "holds one domain of a name (back them up into different repositories, or "
            "rename one)")
