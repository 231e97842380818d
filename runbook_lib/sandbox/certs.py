"""Throwaway TLS material for the sandbox, made with the openssl command: a CA, a node certificate, a client one.

The CA key is deleted once both certificates are signed, so nothing else can ever be issued under that CA.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from runbook_lib.exceptions import SandboxError

HOSTS = "IP:127.0.0.1,IP:::1,DNS:localhost"


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the CA certificate, the nodes' certificate and key, the operator's client certificate and key."""

    ca_cert: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    tool = shutil.which("openssl")
    if not tool:
        raise SandboxError("openssl not found on PATH; install it (Debian: apt-get install -y openssl) to use --tls")
    proc = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SandboxError(f"openssl {args[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def _issue(folder: Path, name: str, subject: str, days: int, hosts: str) -> None:
    """A prime256v1 key and a certificate for `hosts` (subjectAltName entries), signed by the CA in `folder`."""
    ext = folder / f"{name}.ext"
    ext.write_text(f"subjectAltName={hosts}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n")
    _openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-set_serial", str(secrets.randbits(63)), "-days", str(days), "-out", f"{name}.crt",
             "-extfile", ext.name, cwd=folder)
    (folder / f"{name}.csr").unlink()
    ext.unlink()


def make_certificates(folder: Path, days: int = 7, names: list[str] | None = None) -> TLSFiles:
    """Create a throwaway CA and sign a node and a client certificate with it; private keys are mode 0600.

    The certificates name 127.0.0.1, ::1 and localhost, or with `names` those DNS names only (no IP), so a client
    verifies the nodes by host name as it must when certificates name hosts."""
    hosts = ",".join(f"DNS:{n}" for n in names) if names else HOSTS
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    _openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", str(days), "-subj", "/CN=runbook sandbox CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)
    _issue(folder, "redis", "/CN=runbook sandbox node", days, hosts)
    _issue(folder, "client", "/CN=runbook operator", days, hosts)
    (folder / "ca.key").unlink()
    for key in ("redis.key", "client.key"):
        os.chmod(folder / key, 0o600)
    return TLSFiles(ca_cert=folder / "ca.crt", node_cert=folder / "redis.crt", node_key=folder / "redis.key",
                    client_cert=folder / "client.crt", client_key=folder / "client.key")
