"""The runbook sections: preflight, big keys, backup, nodes, validate, rollback, resume, monitoring, ACL rules.

They use the engine and the watchers, never the runner."""
