"""borg-vm: incremental backups of libvirt/QEMU virtual machines into Borg."""

__version__ = "0.1.0"
