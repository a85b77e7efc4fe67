"""Tar members an attacker with write access to the repository can plant in an
otherwise valid borg-vm archive: paths with `..` or a leading /, symbolic and
hard links, device nodes, FIFOs, data of a disk the manifest does not have.
Restore and verify are each one clear line naming the archive (or a
restore of exactly what the manifest says), and nothing is written outside --to."""

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from handmade import (
    CHECKPOINT_XML,
    DOMAIN,
    borg_vm,
    domain_xml,
    image_data,
    manifest,
    sign,
)
from realstack import MTIME

from borg_vm.adapters.borg import find_borg
from borg_vm.format import names as fmt

DATA = b"\x5a" * 65536
ESCAPE = "borgvm-escaped"   # the file a member tries to put outside --to


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
           link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mtime = kind, len(data), link, MTIME
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info, data


def plant(borg, tmp_path: Path, hostile: list) -> str:
    """Import a valid full archive of DOMAIN with the hostile members before its
    manifest, as 'borg import-tar' of a hand-made tar; return its name. It is
    signed: what a host holding the key (or compromised) might write."""
    m = manifest({"vda": DATA})
    manifest_doc, comment = sign(borg, m)
    members = [member(fmt.DOMAIN_XML, data=domain_xml()),
               member(fmt.CHECKPOINT_XML, data=CHECKPOINT_XML),
               member(fmt.member_name("vda", 0), data=DATA), *hostile,
               member(fmt.MANIFEST, data=manifest_doc)]
    tar = tmp_path / "planted.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    subprocess.run([find_borg(), "import-tar", "--comment", comment,
                    f"{borg.repo}::{m.name}", str(tar)], check=True, capture_output=True)
    return str(m.name)


def escaped(tmp_path: Path) -> list[str]:
    """Return the files named ESCAPE a member may have put outside --to."""
    return [str(p) for p in (*tmp_path.rglob(f"*{ESCAPE}*"), Path("/tmp") / ESCAPE,
                             Path("/etc") / ESCAPE) if p.exists()]


DAMAGED = "is not a regular file"
# kind: (members planted, what restore says (None: it restores exactly the
# manifest's data), whether verify calls the archive damaged)
HOSTILE = {
    "dotdot": ([member(f"disk/vda/../../../../../../tmp/{ESCAPE}", data=b"x" * 512)],
               None, False),
    "absolute": ([member(f"/etc/{ESCAPE}", data=b"x" * 512)], None, False),
    "symlink": ([member("disk/vda/0000000000100000", tarfile.SYMTYPE, link="/etc/shadow")],
                DAMAGED, True),
    "device": ([member("disk/vda/0000000000100000", tarfile.CHRTYPE)], DAMAGED, True),
    "fifo": ([member("disk/vda/0000000000100000", tarfile.FIFOTYPE)], DAMAGED, True),
    "symlink-manifest": ([member(fmt.MANIFEST, tarfile.SYMTYPE, link="/etc/shadow")],
                         DAMAGED, True),
    # borg itself fails to export a hard link whose target it is not asked for
    "hardlink": ([member("disk/vda/0000000000100000", tarfile.LNKTYPE,
                         link=fmt.MANIFEST)], "borg {command} of", True),
    "unknown-disk": ([member(fmt.member_name("vdz", 0), data=DATA)], None, True),
}


# restore reads an archive with export-tar, or with list + extract --stdout if its
# comment claims much data (reader.EXTRACT_FROM, set to 0 to take that way): both
# ways refuse the same members.
WAYS = {"export-tar": None, "extract": 0}


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_planted_member(make_repo, tmp_path, kind, way):
    members, says, damaged = HOSTILE[kind]
    borg = make_repo()
    name = plant(borg, tmp_path, members)
    says = says and says.format(command=way)
    to = tmp_path / "out"
    restored = borg_vm("restore", DOMAIN, "--repo", borg.repo, "--to", str(to), "--json",
                       code=None if says else 0, extract_from=WAYS[way])
    if says:
        line = restored.stderr.strip().splitlines()[-1]   # after "restoring vda of ..."
        assert restored.returncode == 2 and name in line and says in line, restored.stderr
        assert not to.exists()
    else:
        (image,) = json.loads(restored.stdout)["disks"].values()
        assert image_data(image["image"], tmp_path)[:len(DATA)] == DATA
    verified = borg_vm("verify", DOMAIN, "--repo", borg.repo, code=2 if damaged else 0)
    assert verified.stdout.startswith("DAMAGED" if damaged else "ok"), verified.stdout
    assert "Traceback" not in restored.stderr + verified.stderr
    assert escaped(tmp_path) == []
