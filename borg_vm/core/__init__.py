"""The pure core: no I/O, no outside system. Extent arithmetic, backup
planning, chains, the archive format, libvirt XML documents and the tar
container. Core modules import only other core modules and borg_vm.errors;
tests/unit exercises them exhaustively."""
