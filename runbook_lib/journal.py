"""The run journal: every change to the cluster appended as a JSON line, flushed and fsynced before the next."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator


class Journal:
    """Append-only JSON-lines record of changes; each entry is durable before `record` returns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, event: str, **fields) -> dict:
        """Append one event with a UTC timestamp and make it durable."""
        entry = {"ts": time.time(), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **fields}
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return entry

    def entries(self) -> Iterator[dict]:
        """Every entry so far, oldest first (a torn last line from a crash is skipped)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue
