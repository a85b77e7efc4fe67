"""A hostile manifest under the size cap, in a real repository (issue 20, item 5):
2,000,001 extents in ~47 MiB took verify to 787 MB and restore to 1.2 GB. Now
verify and restore hold it in arrays, within the peak memory docs/performance.md
states; where the disk is too small for so many extents, both refuse it."""

from handmade import (
    DOMAIN,
    borg_vm,
    borg_vm_peak_rss,
    error_line,
    spaced_zeros,
    write_zeros_archive,
)
from realstack import MiB

GiB = 1024 * MiB
HOSTILE_EXTENTS = 2_000_001
# docs/performance.md: borg-vm's own peak memory stays under this.
PEAK_RSS_LIMIT = 200 * MiB


def test_verify_and_restore_read_it_in_bounded_memory(make_repo, tmp_path):
    borg = make_repo()
    name = write_zeros_archive(borg, 4 * GiB, spaced_zeros(HOSTILE_EXTENTS))
    proc, rss = borg_vm_peak_rss(tmp_path, "verify", DOMAIN, "--repo", borg.repo)
    assert proc.stdout == f"ok       {name}\n"
    assert rss < PEAK_RSS_LIMIT, rss
    proc, rss = borg_vm_peak_rss(tmp_path, "restore", DOMAIN, "--repo", borg.repo, "--to",
                                 str(tmp_path / "out"), "--no-progress")
    assert rss < PEAK_RSS_LIMIT, rss
    assert len(list((tmp_path / "out").glob("*.qcow2"))) == 1


def test_a_disk_too_small_for_its_extents_is_refused(make_repo, tmp_path):
    """512 MiB have 1,048,576 sectors: 2,000,001 extents are damage (extent.max_extents),
    though they fit it (a byte every 256)."""
    borg = make_repo()
    name = write_zeros_archive(borg, 512 * MiB, spaced_zeros(HOSTILE_EXTENTS, 256, 1))
    why = (f"bad manifest: {HOSTILE_EXTENTS} extents on a disk of {512 * MiB} bytes: more "
           "than one a 512-byte sector")
    out = borg_vm("verify", DOMAIN, "--repo", borg.repo, code=2)
    assert out.stdout.startswith(f"DAMAGED  {name}: ") and why in out.stdout, out.stdout
    proc, rss = borg_vm_peak_rss(tmp_path, "restore", DOMAIN, "--repo", borg.repo, "--to",
                                 str(tmp_path / "out"), "--no-progress", code=2)
    line = error_line(proc)
    assert f"Archive {name} " in line and why in line, line
    assert rss < PEAK_RSS_LIMIT, rss
    assert not (tmp_path / "out").exists()
