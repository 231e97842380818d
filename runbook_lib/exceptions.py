"""Errors the runbook raises, each carrying the exit code the CLI returns for it."""


class RunbookError(Exception):
    """Base of every runbook error; `exit_code` is what the CLI exits with."""

    exit_code = 1


class BadInput(RunbookError):
    """The input (params, arguments, target cluster) is wrong; nothing was changed."""

    exit_code = 2


class ParamsError(BadInput):
    """A params file is invalid; the message names the file and the key."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path, self.key, self.problem = path, key, problem
        super().__init__(f"{path}: {key}: {problem}")


class CheckFailed(RunbookError):
    """A health check or gate failed; the cluster was left consistent."""

    exit_code = 1


class PaceStop(CheckFailed):
    """The pace stopped the run between slots (gates kept failing, the off-peak window closed): no slot is open
    and the cluster is consistent; `runbook resume` goes on."""


class MigrationError(RunbookError):
    """A slot move stopped; the slot is left open for a deliberate repair (`runbook resume`)."""

    exit_code = 1

    def __init__(self, slot: int, message: str) -> None:
        self.slot = slot
        super().__init__(f"slot {slot}: {message}")


class SandboxError(RunbookError):
    """The local sandbox cannot be started or stopped as asked."""

    exit_code = 2


class RunLocked(RunbookError):
    """Another run holds the cluster's run lock; nothing was changed."""

    exit_code = 2
