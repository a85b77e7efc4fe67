"""The Python half of contrib/demo.sh: the real test guest of contrib/guest,
through the helpers the e2e tests use (tests/e2e/realguest.py, guest.py).

    demoguest.py xml NAME VMDIR GUESTDIR WORKLOAD   print the demo VM's domain XML
    demoguest.py boot-xml XML NAME GUESTDIR SERIAL WORKLOAD
                                                    print domain XML (a restored one,
                                                    say) renamed, booting the guest
    demoguest.py started SERIAL WORKLOAD SINCE      wait until the workload runs; say how
                                                    long after SINCE (seconds since the epoch)
    demoguest.py synced SERIAL MORE OUT.json        wait for MORE newly synced files;
                                                    write every synced one to OUT.json
    demoguest.py verify SERIAL [--log-restarted] EXPECTED.json...
                                                    wait for the verify workload's report;
                                                    fail unless it has every file expected
    demoguest.py fsck IMAGE WORKDIR                 e2fsck -fn of the guest's root image

Each prints one line of what it saw; exit 1 with the reason on failure.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import guest  # noqa: E402
import libvirt  # noqa: E402
import realguest  # noqa: E402

URI = "qemu:///system"
METADATA = ("borgvmdemo", "https://borg-vm.invalid/demo")
DATA_DISK = "vdb"   # written by the demo through QEMU; the guest leaves it alone


def virt_type() -> str:
    conn = libvirt.open(URI)
    try:
        return "kvm" if realguest.kvm_boots_stock_kernels(conn) else "qemu"
    finally:
        conn.close()


def xml(name: str, vmdir: str, guestdir: str, workload: str) -> None:
    vm = Path(vmdir)
    disks = [(t, vm / f"{t}.qcow2", "qcow2") for t in ("vda", DATA_DISK)]
    # The owner is demo.sh, our parent: the tag says who made the domain.
    print(guest.domain_xml(name, virt_type(), disks, "unmap", guest.owner_token(os.getppid()),
                           METADATA, realguest.built(Path(guestdir)).boot(workload),
                           vm / f"{name}.serial"))


def boot_xml(xml_file: str, name: str, guestdir: str, serial: str, workload: str) -> None:
    print(guest.with_boot(Path(xml_file).read_text(), name,
                          realguest.built(Path(guestdir)).boot(workload), Path(serial)))


def started(serial: str, workload: str, since: str) -> None:
    realguest.Console(Path(serial)).wait_for(f"workload {workload} started",
                                             realguest.BOOT_TIMEOUT)
    print(f"the guest runs its workload ({workload}) {time.time() - float(since):.1f} s "
          "after the start")


def synced(serial: str, more: str, out: str) -> None:
    console = realguest.Console(Path(serial))
    files = console.wait_synced(len(console.synced()) + int(more), realguest.VERIFY_TIMEOUT)
    Path(out).write_text(json.dumps(files))
    last = max(files)
    print(f"the guest has written and synced {len(files)} files, the last {last} "
          f"sha256 {files[last][:16]}...")


def verify(serial: str, *expected_json: str) -> None:
    """Fail unless every file in the EXPECTED.json files is there (a later file's
    checksum wins) and /data/log is whole; with --log-restarted first, the log
    is not checked (a guest booted again with the files workload starts it over)."""
    check_log = expected_json[:1] != ("--log-restarted",)
    expected = {}
    for path in expected_json[0 if check_log else 1:]:
        expected.update(json.loads(Path(path).read_text()))
    seen = realguest.verified_on(realguest.Console(Path(serial)))
    wrong = seen.wrong(expected)
    if wrong or (check_log and not seen.log.startswith("whole ")):
        sys.exit(f"demo: files missing or changed: {wrong}; /data/log {seen.log}")
    print(f"all {len(expected)} files synced before it are there with their SHA-256 "
          f"({len(seen.files)} in /data)" + (f"; /data/log {seen.log}" if check_log else ""))


def fsck(image: str, workdir: str) -> None:
    check = realguest.e2fsck(Path(image), Path(workdir))
    if check.code != 0 or check.needs_recovery:
        sys.exit(f"demo: e2fsck -fn exited {check.code}, journal needs recovery: "
                 f"{check.needs_recovery}\n{check.output}")
    print(f"e2fsck -fn {Path(image).name}: clean, no journal to replay (frozen at the backup)")


COMMANDS = {"xml": xml, "boot-xml": boot_xml, "started": started, "synced": synced,
            "verify": verify, "fsck": fsck}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        sys.exit(__doc__)
    try:
        COMMANDS[argv[0]](*argv[1:])
    except TimeoutError as e:
        sys.exit(f"demo: {e}")
    except KeyboardInterrupt:   # Ctrl-C: demo.sh cleans up, no traceback
        sys.exit(130)


if __name__ == "__main__":
    main(sys.argv[1:])
