"""runbook_lib: the engine behind the zero-downtime Redis Cluster expansion runbook."""

__version__ = "0.1.0"
