"""Fragmented disks for the scale test and bench (issue #11): a big sparse
qcow2 whose data is many separate extents spread over the whole disk, made
offline through qemu-nbd without writing a byte of the holes, and checked
afterwards by its allocation map and the bytes of its extents alone.

    disk     |stripe 0       |stripe 1       |stripe 2       | ...
    extents  |   [x]         |         [x]   | [x]           |
             one extent at a random slot of each stripe; the last slot of a
             stripe stays free, so no two extents touch
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

from borg_vm.adapters import qemu
from borg_vm.adapters.libnbd import open_command

Content = Callable[[int, int], bytes]   # (offset, length) -> the bytes there
WRITES_IN_FLIGHT = 8


def spread(size: int, count: int, length: int, rng: random.Random) -> list[int]:
    """Return the sorted offsets of count extents of length bytes, one at a random
    length-aligned slot of each of count equal stripes of a disk of size bytes,
    none touching another; raise ValueError if they do not fit."""
    stripe = size // count // length * length
    if stripe < 2 * length:
        raise ValueError(f"{count} extents of {length} bytes do not fit {size} bytes apart")
    return [i * stripe + rng.randrange(stripe // length - 1) * length for i in range(count)]


def scattered(offsets: list[int], count: int, rng: random.Random) -> list[int]:
    """Return count of the offsets, chosen at random, sorted."""
    return sorted(rng.sample(offsets, count))


def tagged(offset: int, length: int) -> bytes:
    """Bytes that say where they belong (their offset, repeated): a piece restored
    in the wrong place shows. Compressible, so Borg stores them fast."""
    return struct.pack("<Q", offset) * (length // 8) + bytes(length % 8)


def create_qcow2(image: Path, size: int, cluster_size: int) -> None:
    """(Re)create an empty qcow2 image of size bytes with the given cluster size
    (QEMU's dirty bitmaps then default to that granularity, if 4 KiB or more)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"cluster_size={cluster_size}", str(image), str(size)], check=True)


def write_extents(image: Path, fmt: str, extents: list[tuple[int, int]],
                  content: Content) -> None:
    """Write content(offset, length) over each (offset, length) of an image no one
    else has open, through qemu-nbd, touching nothing else."""
    with open_command(qemu.nbd_server_argv(str(image), fmt), where=str(image)) as exp:
        with exp.pipelined_writes(WRITES_IN_FLIGHT) as write:
            for offset, length in extents:
                write(content(offset, length), offset)
        exp.flush()


def data_ranges(image: Path) -> list[tuple[int, int]]:
    """Return the (offset, length) ranges of an image (and its backing chain) that
    hold data, joined where they touch: `qemu-img map`'s allocation."""
    done = subprocess.run(["qemu-img", "map", "-U", "--output=json", str(image)],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"qemu-img map {image}: {done.stderr.strip()}")
    out = done.stdout
    ranges: list[tuple[int, int]] = []
    for e in json.loads(out):
        if e["data"] and not e.get("zero"):
            if ranges and sum(ranges[-1]) == e["start"]:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + e["length"])
            else:
                ranges.append((e["start"], e["length"]))
    return ranges


def in_clusters(ranges: list[tuple[int, int]], image: Path) -> list[tuple[int, int]]:
    """Return (offset, length) ranges rounded out to the clusters of a qcow2 image
    (a raw image's allocation is as fine as the file system's), joined where
    they touch: where that image holds data after the ranges were written."""
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(image)],
                                     capture_output=True, text=True, check=True).stdout)
    cluster = info.get("cluster-size", 1) if info["format"] == "qcow2" else 1
    out: list[tuple[int, int]] = []
    for offset, length in ranges:
        lo, hi = offset // cluster * cluster, -(-(offset + length) // cluster) * cluster
        if out and sum(out[-1]) >= lo:
            out[-1] = (out[-1][0], max(sum(out[-1]), hi) - out[-1][0])
        else:
            out.append((lo, hi - lo))
    return out


def differing_extents(image: Path, extents: list[tuple[int, int]], content: Content
                      ) -> list[int]:
    """Return the offsets of the extents whose bytes in the image (read through its
    backing chain by a read-only qemu-nbd) are not content(offset, length)."""
    argv = ["qemu-nbd", "-r", str(image)]
    with open_command(argv, where=str(image)) as exp:
        return [offset for offset, data in exp.read_pipelined(extents, WRITES_IN_FLIGHT, 1)
                if data != content(offset, len(data))]
