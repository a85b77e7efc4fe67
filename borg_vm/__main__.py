"""python -m borg_vm: the same as the borg-vm command."""

from borg_vm.cli import main

main()
