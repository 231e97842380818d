"""Run-folder integrity: redaction, the sha256 manifest and its verification, the secret scrub."""

from __future__ import annotations

import json

import pytest

from runbook_lib.config import load_params
from runbook_lib.exceptions import BadInput
from runbook_lib.files import sha256_file
from runbook_lib.run import audit
from runbook_lib.run.cli import main


@pytest.fixture
def folder(tmp_path):
    run = tmp_path / "run"
    (run / "charts").mkdir(parents=True)
    (run / "journal.jsonl").write_text('{"event": "slot_assigned"}\n')
    (run / "charts" / "batches.png").write_bytes(b"\x89PNG fake")
    (run / "index.html").write_text("<html></html>")
    return run


def test_redact_hides_secret_keys_and_values_but_keeps_where_the_password_lives():
    data = {"cluster": {"password_file": "pw", "password_env": "REDIS_PW", "password": "p4ssw0rd!", "seed": "h:1"},
            "note": "connect with p4ssw0rd! please", "list": ["p4ssw0rd!"], "token": "", "auth": "x"}
    out = audit.redact(data, ["p4ssw0rd!"])
    assert out["cluster"] == {"password_file": "pw", "password_env": "REDIS_PW", "password": "[redacted]",
                              "seed": "h:1"}
    assert out["note"] == "connect with [redacted] please" and out["list"] == ["[redacted]"]
    assert out["token"] == "" and out["auth"] == "[redacted]"


def test_manifest_then_verify_is_intact(folder):
    audit.write_manifest(folder, "run-1")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"journal.jsonl", "charts/batches.png", "index.html"}
    assert manifest["files"]["index.html"]["sha256"] == sha256_file(folder / "index.html")
    result = audit.verify(folder)
    assert result.ok and result.checked == 3 and result.lines() == []


def test_verify_shows_changed_missing_and_added_files(folder):
    audit.write_manifest(folder)
    (folder / "journal.jsonl").write_text('{"event": "slot_assigned"}\n'.replace("slot", "slut"))
    (folder / "charts" / "batches.png").unlink()
    (folder / "extra.csv").write_text("a,b\n")
    result = audit.verify(folder)
    assert not result.ok
    assert result.lines() == ["changed: journal.jsonl", "missing: charts/batches.png", "not in the manifest: extra.csv"]


def test_same_size_change_is_caught_by_the_hash(folder):
    audit.write_manifest(folder)
    (folder / "index.html").write_text("<html></HTML>")
    assert audit.verify(folder).changed == ["index.html"]


def test_verify_without_manifest_is_bad_input(folder, tmp_path):
    with pytest.raises(BadInput, match="no manifest.json"):
        audit.verify(folder)
    with pytest.raises(BadInput, match="is not a folder"):
        audit.verify(tmp_path / "nope")


def test_cli_verify_report_exit_codes(folder, capsys):
    audit.write_manifest(folder)
    assert main(["verify-report", str(folder)]) == 0
    assert "all intact" in capsys.readouterr().out
    (folder / "index.html").unlink()
    assert main(["verify-report", str(folder)]) == 1
    assert "missing: index.html" in capsys.readouterr().out
    (folder / "manifest.json").unlink()
    assert main(["verify-report", str(folder)]) == 2


def test_scrub_replaces_a_leaked_secret_in_text_files_and_reports_binary_ones(folder):
    (folder / "leak.json").write_text(json.dumps({"oops": "s3cret-value"}))
    (folder / "backup.rdb").write_bytes(b"REDIS\x00s3cret-value\x00")
    scrubbed, binary = audit.scrub_secrets(folder, ["s3cret-value", "short"])
    assert scrubbed == ["leak.json"] and binary == ["backup.rdb"]
    assert "s3cret-value" not in (folder / "leak.json").read_text()
    assert b"s3cret-value" in (folder / "backup.rdb").read_bytes(), "a backup is never modified"
    assert audit.scrub_secrets(folder, ["abc"]) == ([], []), "too short to search for safely"


def test_seal_writes_provenance_params_copy_and_manifest_last(folder, tmp_path):
    params_path = tmp_path / "p.yaml"
    params_path.write_text('cluster:\n  seed: "127.0.0.1:7000"\n  password_file: "pw"\n'
                           'new_masters:\n  - address: "127.0.0.1:7006"\n')
    params = load_params(params_path)
    record = audit.invocation("runbook run", "run-1", params, 100.0, 160.0, exit_code=0)
    first = audit.seal(folder, params, record, ["hunter2-secret"])
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["run_id"] == "run-1" and prov["started_utc"] == "1970-01-01T00:01:40Z" and prov["seconds"] == 60.0
    assert prov["os_user"] and prov["host"] and prov["git_commit"] and prov["earlier"] == []
    assert "password_file: pw" in (folder / "params.redacted.yaml").read_text()
    assert audit.verify(folder).ok
    audit.seal(folder, params, audit.invocation("runbook resume", "run-2", params, 200.0, 210.0), [])
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["run_id"] == "run-2" and [e["run_id"] for e in prov["earlier"]] == ["run-1"]
    assert audit.verify(folder).ok and first["manifest_sha256"] != sha256_file(folder / "manifest.json")


def test_a_password_read_by_this_process_never_reaches_an_error_line(tmp_path, capsys):
    secret = "pw-" + "x7Qz" * 5
    (tmp_path / "pw").write_text(secret + "\n")
    (tmp_path / "pw").chmod(0o600)
    (tmp_path / "p.yaml").write_text('cluster:\n  seed: "127.0.0.1:7000"\n  password_file: "pw"\n'
                                     'new_masters:\n  - address: "127.0.0.1:7006"\n')
    assert load_params(tmp_path / "p.yaml").credentials().password == secret
    assert main(["verify-report", str(tmp_path / f"run-{secret}")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "[redacted]" in err and secret not in err
