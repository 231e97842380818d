"""When to show progress bars: under a notebook someone is watching (JupyterLab), or in a terminal; never in a
notebook `runbook run` executes (its output is the audit record, not a live screen) nor in a log (CI)."""

from __future__ import annotations

import os
import sys

HEADLESS_ENV = "RUNBOOK_HEADLESS"
"""Set to 1 by `runbook run` for the notebooks it executes: nobody watches those cells, so no bar is drawn there."""


def in_kernel() -> bool:
    """Whether this runs inside a Jupyter kernel (IPython's ZMQ shell), where tqdm.auto draws under the cell."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def wanted(progress: bool | None = None) -> bool:
    """`progress` when given; otherwise True in a Jupyter kernel that `runbook run` did not start, or when stderr is
    a terminal, and False elsewhere (CI logs, redirected output)."""
    if progress is not None:
        return progress
    if os.environ.get(HEADLESS_ENV) == "1":
        return False
    if in_kernel():
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())
