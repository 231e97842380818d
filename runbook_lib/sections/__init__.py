"""The runbook sections, one a step: preflight, big keys, backup, nodes (add masters and replicas), plan, migration,
validate, monitoring, rollback, resume, and the ACL rules.

Notebooks and the CLI call them; they use the engine and the watchers, never the runner."""
