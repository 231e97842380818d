"""Params validation names the file and key; secrets come only from env or an owner-only file."""

import os

import pytest

from runbook_lib.config import load_params, parse_address
from runbook_lib.exceptions import BadInput, ParamsError

GOOD = """cluster:
  seed: "127.0.0.1:7000"
  password_file: "pw"
new_masters:
  - address: "127.0.0.1:7006"
    replica: "127.0.0.1:7007"
"""


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_file_loads_with_defaults(tmp_path):
    params = load_params(write(tmp_path, GOOD))
    assert params.model.migration.keys_per_migrate == 1000
    assert params.model.gates.cpu_pct == 70.0
    assert params.model.apply is False


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, GOOD + "migration:\n  slots_per_btach: 5\n")
    with pytest.raises(ParamsError) as e:
        load_params(path)
    assert str(path) in str(e.value) and "migration.slots_per_btach" in str(e.value) and "unknown key" in str(e.value)


def test_wrong_type_is_refused(tmp_path):
    with pytest.raises(ParamsError, match="migration.slots_per_batch"):
        load_params(write(tmp_path, GOOD + "migration:\n  slots_per_batch: \"many\"\n"))


def test_yaml_bool_for_string_is_refused(tmp_path):
    with pytest.raises(ParamsError, match="cluster.username"):
        load_params(write(tmp_path, GOOD.replace('  password_file: "pw"', '  password_file: "pw"\n  username: no')))


def test_missing_seed(tmp_path):
    with pytest.raises(ParamsError, match="cluster.seed: missing"):
        load_params(write(tmp_path, "cluster: {}\nnew_masters: [{address: '127.0.0.1:1'}]\n"))


def test_duplicate_node_is_refused(tmp_path):
    text = GOOD.replace('replica: "127.0.0.1:7007"', 'replica: "127.0.0.1:7006"')
    with pytest.raises(ParamsError, match="listed twice"):
        load_params(write(tmp_path, text))


def test_bad_address(tmp_path):
    with pytest.raises(ParamsError, match="new_masters.0.address"):
        load_params(write(tmp_path, GOOD.replace("127.0.0.1:7006", "localhost")))


def test_apply_needs_confirm(tmp_path):
    with pytest.raises(ParamsError, match="confirm_cluster"):
        load_params(write(tmp_path, GOOD + "apply: true\n"))


def test_missing_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        load_params(tmp_path / "nope.yaml")


def test_password_file_must_be_owner_only(tmp_path):
    params = load_params(write(tmp_path, GOOD))
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o644)
    with pytest.raises(ParamsError, match="chmod 600"):
        params.credentials()
    os.chmod(secret, 0o600)
    creds = params.credentials()
    assert creds.password == "s3cret"
    assert "s3cret" not in repr(creds)


def test_credentials_are_read_once_per_params(tmp_path, monkeypatch):
    """The password (file or environment) and the TLS files are read and checked at a Params' first call only; a
    Params loaded anew reads them again."""
    secret = tmp_path / "pw"
    secret.write_text("first\n")
    os.chmod(secret, 0o600)
    params = load_params(write(tmp_path, GOOD))
    first = params.credentials()
    secret.write_text("second\n")
    os.chmod(secret, 0o644)
    assert params.credentials() is first and first.password == "first"
    with pytest.raises(ParamsError, match="chmod 600"):
        load_params(tmp_path / "p.yaml").credentials()
    monkeypatch.setenv("RB_TEST_PW", "env-first")
    from_env = load_params(write(tmp_path, GOOD.replace('password_file: "pw"', 'password_env: "RB_TEST_PW"'), "e.yaml"))
    assert from_env.credentials().password == "env-first"
    monkeypatch.setenv("RB_TEST_PW", "env-second")
    assert from_env.credentials().password == "env-first"


def test_password_env_must_be_set(tmp_path, monkeypatch):
    params = load_params(write(tmp_path, GOOD.replace('password_file: "pw"', 'password_env: "RB_TEST_PW"')))
    monkeypatch.delenv("RB_TEST_PW", raising=False)
    with pytest.raises(ParamsError, match="RB_TEST_PW is not set"):
        params.credentials()
    monkeypatch.setenv("RB_TEST_PW", "from-env")
    assert params.credentials().password == "from-env"


def test_shipped_params_files_are_valid():
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "params"
    for name in ("sandbox.yaml", "production.example.yaml"):
        assert load_params(root / name).model.cluster.seed


def test_parse_address():
    assert parse_address("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    with pytest.raises(ValueError):
        parse_address("host:99999")


def test_password_in_params_is_refused_without_echoing_it(tmp_path):
    path = write(tmp_path, GOOD.replace('password_file: "pw"', 'password: "hunter2-inline"'))
    with pytest.raises(ParamsError) as e:
        load_params(path)
    assert str(path) in str(e.value) and "cluster.password: passwords never go in params" in str(e.value)
    assert "hunter2-inline" not in str(e.value)


def test_password_env_holding_a_password_is_refused_without_echoing_it(tmp_path):
    with pytest.raises(ParamsError) as e:
        load_params(write(tmp_path, GOOD.replace('password_file: "pw"', 'password_env: "s3cr3t!pw#"')))
    assert "cluster.password_env" in str(e.value) and "NAME of an environment variable" in str(e.value)
    assert "s3cr3t!pw#" not in str(e.value)


def test_duplicate_node_names_the_key(tmp_path):
    text = GOOD.replace('replica: "127.0.0.1:7007"', 'replica: "127.0.0.1:7006"')
    with pytest.raises(ParamsError, match=r"p.yaml: new_masters\.0\.replica: node 127.0.0.1:7006 is listed twice"):
        load_params(write(tmp_path, text))
    with pytest.raises(ParamsError, match=r"new_masters\.0\.address: 127.0.0.1:7000 is the seed"):
        load_params(write(tmp_path, GOOD.replace("127.0.0.1:7006", "127.0.0.1:7000")))


def test_tls_files_must_exist_and_the_key_be_private(tmp_path):
    (tmp_path / "pw").write_text("pw\n")
    os.chmod(tmp_path / "pw", 0o600)
    tls = '  tls:\n    enabled: true\n    ca_file: "ca.crt"\n    key_file: "client.key"\n'
    params = load_params(write(tmp_path, GOOD.replace('  password_file: "pw"\n', '  password_file: "pw"\n' + tls)))
    with pytest.raises(ParamsError, match=r"cluster\.tls\.ca_file: file .*ca.crt does not exist"):
        params.credentials()
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "client.key").write_text("x")
    os.chmod(tmp_path / "client.key", 0o644)
    with pytest.raises(ParamsError, match=r"cluster\.tls\.key_file: private key .* readable by others"):
        params.credentials()
    os.chmod(tmp_path / "client.key", 0o600)
    creds = params.credentials()
    assert creds.tls and creds.ca_file == str(tmp_path / "ca.crt") and creds.cert_file == ""
