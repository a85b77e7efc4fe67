"""borg-vm mount of a real domain's chain: every checkpoint served over NBD reads
exactly as the guest saw its disks at that backup (qemu-img compare), zeroes
and discards included."""

from __future__ import annotations

import os
import signal

from borgvm import backup
from guest import MIB
from mounting import compare, mounts_under, start_mount

KIB = 1024


def test_every_checkpoint_of_a_chain_serves_the_guests_view(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 64 * MIB, "qcow2"), ("vdb", 32 * MIB, "qcow2")])
    d.write("vda", 0, 4 * MIB, 0xA1)
    d.write("vda", 10 * MIB + 4096, 3 * MIB, 0xA2)
    d.write("vdb", 1 * MIB, 2 * MIB, 0xB1)
    results = [backup(d.name, repo)]
    views = [d.views()]

    d.write("vda", 2 * MIB, 4 * MIB, 0xC1)
    d.write_zeroes("vda", 10 * MIB + 4096 + 64 * KIB, 128 * KIB)
    d.discard("vdb", 1 * MIB, 1 * MIB)
    d.write("vda", 40 * MIB + 100, 10, 0xC2)
    results.append(backup(d.name, repo))
    views.append(d.views())

    d.write_zeroes("vda", 0, 1 * MIB, unmap=True)
    d.write("vdb", 31 * MIB, 1 * MIB, 0xD1)
    d.write("vda", 3 * MIB, 64 * KIB, 0xD2)
    results.append(backup(d.name, repo))
    views.append(d.views())
    assert [r["level"] for r in results] == ["full", "inc", "inc"]
    assert results[1]["disks"]["vdb"]["zero"] >= 1 * MIB

    # A run directory of the test's own: the mounts in it are this test's.
    run_dir = tmp_path / "run"
    env = dict(os.environ, BORG_VM_RUNTIME_DIR=str(run_dir))
    for i, (result, view) in enumerate(zip(results, views)):
        sockets = tmp_path / f"sockets-{i}"
        m = start_mount(d.name, repo, str(sockets), "--checkpoint", result["checkpoint"],
                        env=env)
        try:
            assert m.served["checkpoint"] == result["checkpoint"]
            assert sorted(m.served["disks"]) == ["vda", "vdb"]
            for target, expected in view.items():
                assert m.served["disks"][target]["socket"] == str(sockets / f"{target}.sock")
                out = compare(m.uri(target), expected, str(tmp_path))
                assert out.returncode == 0, f"{target} at {result['checkpoint']}: {out.stdout}"
        finally:
            code, err = m.stop(signal.SIGTERM)
        assert code == 0, err
        assert not sockets.exists(), "the mount made the socket directory and removes it"

    # One disk, on a socket of its own, as of the newest checkpoint (the default).
    m = start_mount(d.name, repo, str(tmp_path / "vdb.sock"), "--disk", "vdb", env=env)
    try:
        assert m.served["checkpoint"] == results[-1]["checkpoint"]
        assert list(m.served["disks"]) == ["vdb"]
        assert compare(m.uri("vdb"), views[-1]["vdb"], str(tmp_path)).returncode == 0
    finally:
        code, err = m.stop(signal.SIGINT)
    assert code == 0, err
    assert not (tmp_path / "vdb.sock").exists()
    assert not mounts_under(run_dir) and os.listdir(run_dir) == []
