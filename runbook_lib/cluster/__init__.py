"""The cluster engine: cluster model, connections, journal, run lock, plan, the slot state machine, mover, repair.

It imports no section, watcher or runner."""
