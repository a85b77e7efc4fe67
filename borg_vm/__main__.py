"""python -m borg_vm: the same as the borg-vm command."""

from .cli import main

main()
