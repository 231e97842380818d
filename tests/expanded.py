"""The expanded clusters that several test modules check: one sandbox per kind (plain, ACL, TLS, multi-host,
multi-host over IPv6 and TLS), expanded 3+3 -> 4+4 by one `runbook run`, once per test session.

`<kind>_expansion` is the finished run (see `Expansion`). Every test that uses one runs on the same xdist worker
(tests/conftest.py groups them by kind), so each kind's sandbox starts and expands once per run. Checks common to
every kind are in tests/integration/test_expanded.py, each kind's own in its module; tests/browser/test_report_page.py
reads the plain run's report.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from runbook_lib.addresses import resolve
from runbook_lib.config import Credentials
from runbook_lib.sandbox import Sandbox, SandboxLayout, network
from tests.conftest import LOOSE_GATES, loosen, port_block

ACL_PASSWORD_ENV = "RUNBOOK_ACL_TEST_PASSWORD"
"""The ACL run reads its password from this environment variable instead of the password file."""
RTT_MS = 0.5
"""The round trip between the multi-host sandbox's hosts, where tc netem exists."""
NO_NAMESPACES = network.unavailable()
NO_NETEM = network.netem_unavailable()


@dataclass(frozen=True)
class Kind:
    """How one kind of sandbox is made and expanded."""

    name: str
    keys: int
    layout: dict = field(default_factory=dict)
    acl: bool = False
    tls: bool = False
    port: int = field(default_factory=port_block)


PLAIN = Kind("plain", 20_000)
ACL = Kind("acl", 10_000, acl=True)
TLS = Kind("tls", 10_000, tls=True)
MULTIHOST = Kind("multihost", 4000, {"hosts": 4, "rtt_ms": 0.0 if NO_NETEM else RTT_MS})
MULTIHOST_TLS = Kind("multihost_tls", 3000, {"hosts": 4, "ipv6": True, "announce_hostnames": True}, tls=True)
KINDS = [PLAIN, ACL, TLS, MULTIHOST, MULTIHOST_TLS]
FIXTURES = {f"{kind.name}_expansion": f"expanded-{kind.name}" for kind in KINDS}
"""Each kind's fixture and the xdist group of the tests that use it."""


@dataclass
class Expansion:
    """A sandbox of one kind after the whole expansion: the params the run used, the finished process, the run
    folder."""

    kind: Kind
    sandbox: Sandbox
    params: Path
    proc: subprocess.CompletedProcess
    out: Path

    @property
    def layout(self) -> SandboxLayout:
        return SandboxLayout(port=self.kind.port, **self.kind.layout)

    @property
    def seed(self) -> str:
        return self.sandbox.address(self.kind.port)

    @property
    def creds(self) -> Credentials:
        """The runbook's own credentials (the least-privilege user under ACL)."""
        return self.sandbox.credentials()

    @property
    def reader(self) -> Credentials:
        """Credentials that may read every key (the admin under ACL)."""
        return self.sandbox.admin_credentials()

    def redis_cli_check(self, redis_cli: str) -> subprocess.CompletedProcess:
        """`redis-cli --cluster check` at the seed: as the admin under ACL, with the client certificate under TLS,
        the password from the environment."""
        creds, args = self.reader, [redis_cli]
        if creds.username:
            args += ["--user", creds.username]
        if creds.tls:
            args += ["--tls", "--cacert", creds.ca_file, "--cert", creds.cert_file, "--key", creds.key_file]
        env = {"REDISCLI_AUTH": creds.password, "PATH": "/usr/bin:/bin"}
        return subprocess.run([*args, "--cluster", "check", self.seed], capture_output=True, text=True, env=env,
                              timeout=60)


def run_params(kind: Kind, sb: Sandbox) -> tuple[Path, dict]:
    """The params file the kind's run uses and the environment it runs in. ACL: the password from an environment
    variable and the traffic probe on (its keys are under the user's prefix); ACL and TLS: gates no busy machine
    trips (those runs prove access control and encryption, not latency)."""
    path, env = sb.root / "params.yaml", dict(os.environ)
    if kind.acl or kind.tls:
        data = yaml.safe_load(path.read_text())
        data["gates"] = {**data.get("gates", {}), **LOOSE_GATES}
        if kind.acl:
            del data["cluster"]["password_file"]
            data["cluster"]["password_env"] = ACL_PASSWORD_ENV
            data["probe"] = {**data.get("probe", {}), "enabled": True}
            env[ACL_PASSWORD_ENV] = sb.credentials().password
        path = sb.root / f"params-{kind.name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, env


def expand(kind: Kind, root: Path, runbook_bin: str) -> Expansion:
    """Start the kind's sandbox (params loosened as `start_sandbox` does) and run the whole expansion on it."""
    sb = Sandbox(root / "sandbox")
    try:
        sb.up(SandboxLayout(port=kind.port, **kind.layout), keys=kind.keys, progress=False, acl=kind.acl,
              tls=kind.tls)
        loosen(sb.root / "params.yaml")
        params, env = run_params(kind, sb)
        out = root / f"run-{kind.name}"
        proc = subprocess.run([runbook_bin, "run", "--params", str(params), "--out", str(out)], capture_output=True,
                              text=True, timeout=900, env=env)
    except BaseException:
        sb.down()
        raise
    return Expansion(kind, sb, params, proc, out)


def assert_network_removed(sb: Sandbox, hosts: list[network.Host], port: int) -> None:
    """No namespace, link, /etc/hosts line or network record of a multi-host sandbox is left."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    assert not [h for h in hosts if h.namespace in listed]
    assert f"rb{port}" not in links
    assert not [h for h in hosts if resolve(h.name)] and f"rb{port}" not in open("/etc/hosts").read()
    assert not (sb.root / network.RECORD_FILE).exists()


def _fixture(kind: Kind):
    """The session-wide fixture of one kind; a multi-host sandbox's teardown also checks that `down` removes every
    namespace, link and host name it made."""
    @pytest.fixture(scope="session")
    def expansion(tmp_path_factory, runbook_bin) -> Iterator[Expansion]:
        if kind.layout.get("hosts", 1) > 1 and NO_NAMESPACES:
            pytest.skip(f"needs network namespaces: {NO_NAMESPACES}")
        done = expand(kind, tmp_path_factory.mktemp(f"expanded-{kind.name}"), runbook_bin)
        hosts = done.sandbox.hosts()
        yield done
        done.sandbox.down()
        if hosts:
            assert_network_removed(done.sandbox, hosts, kind.port)
    return expansion


plain_expansion = _fixture(PLAIN)
acl_expansion = _fixture(ACL)
tls_expansion = _fixture(TLS)
multihost_expansion = _fixture(MULTIHOST)
multihost_tls_expansion = _fixture(MULTIHOST_TLS)
