"""Audit integrity of a run folder: its provenance, the params with secrets redacted, and a sha256 manifest.

The manifest is written last and lists every file of the folder, so a file changed, removed or added afterwards
shows when `runbook verify-report DIR` recomputes it. Keep the manifest's own sha256 (printed at the end of a run)
in the change record: that pins the manifest itself.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

from runbook_lib import __version__
from runbook_lib.config import Params
from runbook_lib.exceptions import BadInput
from runbook_lib.files import sha256_file

PROVENANCE = "provenance.json"
RESULTS_DIR = "results"
"""In a run folder: each section's verdict as <section>.json."""
PARAMS_COPY = "params.redacted.yaml"
MANIFEST = "manifest.json"
REDACTED = "[redacted]"
SECRET_WORDS = ("password", "passwd", "secret", "token", "auth", "credential", "private")
SECRET_NAMES = {"password_env", "password_file"}
MIN_SECRET_LEN = 6
TEXT_SUFFIXES = {".ipynb", ".html", ".json", ".jsonl", ".csv", ".txt", ".yaml", ".yml", ".md", ".log", ".svg", ".prom",
                 ".rules"}


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def redact(data, secrets: list[str] = ()):
    """A copy of `data` with secret-looking keys' values and any occurrence of the given secrets replaced."""
    secrets = [s for s in secrets if s]
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            name = str(k).lower()
            secret_key = name not in SECRET_NAMES and any(w in name for w in SECRET_WORDS)
            out[k] = REDACTED if secret_key and v not in ("", None) else redact(v, secrets)
        return out
    if isinstance(data, (list, tuple)):
        return [redact(v, secrets) for v in data]
    if isinstance(data, str):
        for s in secrets:
            data = data.replace(s, REDACTED)
    return data


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("redis", "papermill", "nbconvert", "pydantic"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def invocation(command: str, run_id: str, params: Params, started: float, ended: float, **details) -> dict:
    """What one invocation that wrote into a run folder was: who ran which code where, when, on which params."""
    return {
        "run_id": run_id, "command": command, "argv": list(sys.argv),
        "runbook_lib": __version__, "git_commit": git_commit(), "versions": _versions(),
        "host": platform.node(), "os_user": getpass.getuser(), "uid": os.getuid(), "pid": os.getpid(),
        "started_utc": utc(started), "ended_utc": utc(ended), "seconds": round(ended - started, 2),
        "params_file": str(params.path), "params_sha256": sha256_file(params.path), **details,
    }


def write_params_copy(run_dir: Path, params: Params, secrets: list[str] = ()) -> Path:
    """The validated params (defaults filled in) as YAML, with secrets redacted."""
    data = redact(params.model.model_dump(mode="json"), secrets)
    path = run_dir / PARAMS_COPY
    path.write_text(f"# The params of this run as validated (defaults filled in), secrets redacted.\n"
                    f"# Source: {params.path}\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def write_provenance(run_dir: Path, record: dict) -> Path:
    """provenance.json: this invocation at the top level, earlier invocations into the same folder under `earlier`."""
    path = run_dir / PROVENANCE
    earlier: list[dict] = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
            earlier = old.pop("earlier", []) + [old]
        except (ValueError, AttributeError):
            earlier = []
    path.write_text(json.dumps({**record, "earlier": earlier}, indent=2, default=str))
    return path


def _files(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.rglob("*") if p.is_file() and p.relative_to(run_dir).as_posix() != MANIFEST)


def scrub_secrets(run_dir: Path, secrets: list[str]) -> tuple[list[str], list[str]]:
    """Find the secrets in every file of the folder; replace them in text files. Returns (scrubbed, binary hits).

    Defence in depth: nothing should ever write a secret into a run folder, so any hit is a bug to report.
    """
    needles = sorted({s.encode() for s in secrets if len(s) >= MIN_SECRET_LEN}
                     | {json.dumps(s)[1:-1].encode() for s in secrets if len(s) >= MIN_SECRET_LEN}, key=len,
                     reverse=True)
    scrubbed, binary = [], []
    if not needles:
        return scrubbed, binary
    for path in _files(run_dir):
        data = path.read_bytes()
        if not any(n in data for n in needles):
            continue
        rel = path.relative_to(run_dir).as_posix()
        if path.suffix.lower() not in TEXT_SUFFIXES:
            binary.append(rel)
            continue
        for n in needles:
            data = data.replace(n, REDACTED.encode())
        path.write_bytes(data)
        scrubbed.append(rel)
    return scrubbed, binary


def write_manifest(run_dir: Path, run_id: str = "", **extra) -> Path:
    """manifest.json: the sha256 and size of every file in the folder (all but itself). Write it last."""
    files = {p.relative_to(run_dir).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in _files(run_dir)}
    path = run_dir / MANIFEST
    path.write_text(json.dumps({"algorithm": "sha256", "run_id": run_id, "created_utc": utc(time.time()), **extra,
                                "files": files}, indent=2, sort_keys=False))
    return path


@dataclass
class Verification:
    """What `verify` found: files changed, missing, or not in the manifest."""

    run_dir: Path
    checked: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.unlisted)

    def lines(self) -> list[str]:
        return ([f"changed: {f}" for f in self.changed] + [f"missing: {f}" for f in self.missing]
                + [f"not in the manifest: {f}" for f in self.unlisted])


def verify(run_dir: str | os.PathLike) -> Verification:
    """Recompute every file's sha256 against the folder's manifest; BadInput when there is no readable manifest."""
    folder = Path(run_dir).resolve()
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BadInput(f"{folder} is not a folder; give the run folder (the one holding index.html and {MANIFEST})")
    if not path.exists():
        raise BadInput(f"{folder} has no {MANIFEST}; it is not a finished run folder (or the manifest was removed)")
    try:
        listed = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise BadInput(f"{path} is not a readable manifest ({e}); the folder cannot be verified") from None
    result = Verification(run_dir=folder, checked=len(listed))
    present = {p.relative_to(folder).as_posix(): p for p in _files(folder)}
    for rel, entry in sorted(listed.items()):
        p = present.get(rel)
        if p is None:
            result.missing.append(rel)
        elif p.stat().st_size != entry.get("bytes") or sha256_file(p) != entry.get("sha256"):
            result.changed.append(rel)
    result.unlisted = sorted(set(present) - set(listed))
    return result


def record(run_dir: Path, params: Params, invocation_record: dict, secrets: list[str]) -> None:
    """The first half of sealing a run folder: the params copy and provenance.json (both secrets redacted)."""
    write_params_copy(run_dir, params, secrets)
    write_provenance(run_dir, redact(invocation_record, secrets))


def finish(run_dir: Path, run_id: str, secrets: list[str]) -> dict:
    """The second half, last of all: scrub any secret that leaked into a file, then write the manifest."""
    scrubbed, binary = scrub_secrets(run_dir, secrets)
    manifest = write_manifest(run_dir, run_id, secrets_scrubbed_from=scrubbed, secrets_in_binary_files=binary)
    return {"manifest": manifest, "manifest_sha256": sha256_file(manifest), "scrubbed": scrubbed, "binary": binary}


def seal(run_dir: Path, params: Params, invocation_record: dict, secrets: list[str]) -> dict:
    """Seal a run folder after an invocation wrote into it: params copy, provenance, then the manifest last."""
    record(run_dir, params, invocation_record, secrets)
    return finish(run_dir, invocation_record.get("run_id", ""), secrets)


def git_commit() -> str:
    """The git commit of the checkout the package runs from, or "unknown" when not in one."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (out.stdout.strip() + ("+dirty" if dirty else "")) if out.returncode == 0 else "unknown"
