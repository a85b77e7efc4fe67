"""Authentication of restore points (format version 4): message authentication
codes under a key the repository does not hold. Pure, no I/O.

Anyone who can write a repository (an append-only key and its passphrase,
another hypervisor, a host running borgmatic) can add archives that parse.
What they cannot do without this host's authentication key is make one that
carries a valid code:

- the archive comment (``manifest.Summary``) carries ``auth``: [key id, code]
  over the archive's name and the summary, as the comment serializes it
  without ``auth``. ``borg list`` alone so says which archives this host
  wrote: the chain, the default restore point and prune use only those.
- manifest.json carries ``auth`` over the name and the manifest serialized
  without it; the manifest holds the digests of every disk's data and of
  domain.xml and checkpoint.xml, so the whole archive is covered.
- both carry the Borg archive ID of the parent (``parent_id``): a chain is
  linked by what Borg computed over the parent's contents, not by a name a
  planted archive could also carry. ``borg transfer`` (Borg 1 to Borg 2)
  gives every archive a new ID: a parent that carries this host's code, alone
  under its name, is accepted with another (core/chain.py).

The code is HMAC-SHA256 (the standard library's ``hmac``: a well-kept,
constant-time implementation; nothing here is hand-rolled crypto). A key id
is the first 16 hex digits of SHA-256 over the key: it names the key in
messages without revealing it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

KEY_BYTES = 32
KEY_ID_HEX = 16
_SUMMARY = b"borg-vm summary v4\0"
_MANIFEST = b"borg-vm manifest v4\0"


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:KEY_ID_HEX]


def summary_code(key: bytes, archive: str, body: bytes) -> str:
    """The code of an archive comment: body is the comment without ``auth``."""
    return _code(key, _SUMMARY, archive, (body,))


def manifest_code(key: bytes, archive: str, body: Iterable[bytes]) -> str:
    """The code of a manifest: body is the manifest without ``auth``, in pieces
    (one after the other, as if joined: a manifest may be tens of MiB)."""
    return _code(key, _MANIFEST, archive, body)


def _code(key: bytes, purpose: bytes, archive: str, body: Iterable[bytes]) -> str:
    # the name is length-prefixed, so no (name, body) pair reads as another
    name = archive.encode("utf-8", "surrogateescape")
    mac = hmac.new(key, purpose + len(name).to_bytes(4, "big") + name, hashlib.sha256)
    for piece in body:
        mac.update(piece)
    return mac.hexdigest()


def same_code(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
