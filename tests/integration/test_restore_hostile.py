"""borg-vm restore against damaged or hostile archives, as anyone with write
access to the repository could make them ('borg import-tar' of a hand-made
tar, named and commented like a borg-vm archive): one clear line and exit 2,
before any image is written, with bounded memory."""

import pytest

from handmade import DOMAIN, borg_vm, error_line, write_archive

DATA = b"\x5a" * 65536
BILLION_LAUGHS = (b"<?xml version='1.0'?><!DOCTYPE domain ["
                  b"<!ENTITY a 'aaaaaaaaaa'>"
                  + b"".join(b"<!ENTITY %c '%s'>" % (c, (b"&%c;" % (c - 1)) * 10)
                             for c in range(ord("b"), ord("k")))
                  + b"]><domain><name>&j;</name></domain>")


def restore(repo, to, *extra, code=0):
    return borg_vm("restore", DOMAIN, "--repo", repo, "--to", str(to), "--no-progress",
                   *extra, code=code)


# --- B3: a malformed domain.xml is found before any data is written --------------------

@pytest.mark.parametrize("xml, why", [
    (b"<domain type='kvm'><name>x</name><devices>", "not well-formed"),
    (b"<domain type='kvm'><devices/></domain>", "no <name>"),
    (b"<domain><name>caf\xe9</name></domain>", "not UTF-8"),
    (BILLION_LAUGHS, "DTD"),
    (b"<!DOCTYPE domain SYSTEM 'file:///etc/passwd'><domain><name>x</name></domain>", "DTD"),
    (b"<network><name>x</name></network>", "not a <domain>"),
], ids=["invalid", "no-name", "not-utf8", "billion-laughs", "external-dtd", "not-domain"])
def test_malformed_domain_xml_fails_first_with_exit_2(make_repo, tmp_path, xml, why):
    borg = make_repo()
    name = write_archive(borg, {"vda": DATA}, xml=xml)
    line = error_line(restore(borg.repo, tmp_path / "out", code=2))  # no "restoring vda" line
    assert f"Archive {name} " in line and "domain.xml" in line and why in line, line
    assert not (tmp_path / "out").exists()
