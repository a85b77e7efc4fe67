"""Adapters: one module per outside system, the only places that touch it.

    libvirt   the libvirt binding (domains, checkpoints, backup jobs)
    libnbd    the nbd binding (NBD reads, block status, writes)
    qemu      qemu-img and qemu-nbd command lines
    borg      the borg command line
    subproc   starting any program (argv only, stderr captured)
    sources   where a backup reads a disk's data (DiskSource implementations)

Adapters import core types, borg_vm.errors and each other, never an action.
"""
