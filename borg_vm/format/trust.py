"""Which archives are restore points this host can authenticate. Pure, no I/O.

An archive is authentic when

- its comment (format 4) carries a valid code of one of the host's keys over
  its name and summary (format/auth.py), or it is an archive of formats 1-3
  the host's keyring adopted when it was made (by Borg archive ID: the ID is
  Borg's hash over the archive's contents, so the archive is the one found then);
- and it is plausible: the time in its comment is the time in its checkpoint's
  name, and not in the future;
- and no other such archive of the domain claims the same checkpoint.

Everything else is unauthenticated: planted by whoever can write the
repository, or written by another host (whose key this one may import). The
chain, the default restore point, prune and checkpoint recovery use only
authentic archives; a chain's links are checked by archive ID as well
(core/chain.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from borg_vm.format import auth
from borg_vm.format.names import AUTHENTICATED_FROM, stamp
from borg_vm.format.summary import ArchiveInfo

# A host's clock may run a little ahead of the one that wrote the archive.
FUTURE_SLACK = timedelta(minutes=15)
Rejected = tuple[ArchiveInfo, str]      # an archive and why it is not authentic


def authenticate(infos: Sequence[ArchiveInfo], keys: Sequence[bytes],
                 adopted: frozenset[str], now: datetime
                 ) -> tuple[list[ArchiveInfo], list[Rejected]]:
    """Return (authentic archives, each with the key that signed it if any,
    [(unauthenticated archive, why)]), both in the order of infos."""
    good: list[ArchiveInfo] = []
    bad: list[Rejected] = []
    for info in infos:
        signed, why = _signature(info, keys, adopted)
        why = why or _implausible(info, now)
        if why:
            bad.append((info, why))
        else:
            good.append(signed)
    claims = defaultdict(list)
    for info in good:
        claims[(info.name.domain, info.name.checkpoint)].append(info.archive)
    twice = {k: v for k, v in claims.items() if len(v) > 1}
    if twice:
        bad += [(i, f"checkpoint {i.name.checkpoint} is also claimed by "
                    f"{', '.join(a for a in twice[k] if a != i.archive)}")
                for i in good if (k := (i.name.domain, i.name.checkpoint)) in twice]
        good = [i for i in good if (i.name.domain, i.name.checkpoint) not in twice]
        bad.sort(key=lambda r: infos.index(r[0]))
    return good, bad


def _signature(info: ArchiveInfo, keys: Sequence[bytes], adopted: frozenset[str]
               ) -> tuple[ArchiveInfo, str | None]:
    summary = info.summary
    if summary.version < AUTHENTICATED_FROM:
        if info.id in adopted:
            return info, None
        return info, (f"an archive of format {summary.version} added after this host "
                      "began to sign its archives")
    if summary.auth is None:
        return info, "its comment carries no authentication code"
    for key in keys:
        if summary.code_valid(key, info.archive):
            return replace(info, key=key), None
    if summary.auth[0] in {auth.key_id(k) for k in keys}:
        return info, "its authentication code is wrong"
    return info, f"it was signed with key {summary.auth[0]}, which this host does not hold"


def _implausible(info: ArchiveInfo, now: datetime) -> str | None:
    when = datetime.strptime(info.summary.time, "%Y-%m-%dT%H:%M:%S%z")
    name_stamp = info.name.checkpoint.split("-")[1]
    if stamp(when) != name_stamp:
        return f"its time {info.summary.time} is not its checkpoint's"
    if when > now + FUTURE_SLACK:
        return f"its time {info.summary.time} is in the future"
    return None
