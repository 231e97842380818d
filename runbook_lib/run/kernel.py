"""The kernel manager the runner and the tests start notebooks' kernels with: local IPC sockets, no TCP port."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager


class LocalKernelManager(AsyncKernelManager):
    """Kernels talk over local IPC sockets, not TCP: nothing listens on the network while a run executes.

    Each kernel's sockets live in a folder of their own (mode 0700, under the temp dir), removed when the kernel
    stops: jupyter_client's default, `kernel-ipc-<n>` in the working directory (papermill's cwd, notebooks/), is
    shared by every run from the same checkout, and two runs starting together picked the same sockets (a kernel then
    failed with "Invalid Signature")."""

    transport = "ipc"

    def _ip_default(self) -> str:
        return str(Path(tempfile.mkdtemp(prefix="runbook-kernel-")) / "ipc")

    def cleanup_ipc_files(self) -> None:
        super().cleanup_ipc_files()
        folder = Path(self.ip).parent
        if folder.name.startswith("runbook-kernel-"):
            shutil.rmtree(folder, ignore_errors=True)
