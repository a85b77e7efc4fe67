"""Actions: one module per command (backup, restore, listing), each orchestrating
the pure core and the adapters. An action may import core, adapters and the
top-level helpers (errors, runtime, progress, prefetch); nothing imports an
action but cli."""
