"""Backups at size, pure parts: the save timeout that follows used_memory, and when an RDB is copied."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runbook_lib.config import Backup
from runbook_lib.sections.backup import BackupRecord, checks, copy_decision, restore_instructions, save_timeout

GB = 1024 ** 3
MB = 1024 * 1024


def test_the_timeout_is_a_floor_plus_seconds_per_gb_of_used_memory():
    assert save_timeout(0, Backup()) == 300.0
    assert save_timeout(10 * GB, Backup()) == 300.0 + 600.0
    assert save_timeout(GB // 2, Backup(timeout_floor_s=10, timeout_per_gb_s=100)) == 60.0


def test_timeout_s_overrides_the_size_rule():
    assert save_timeout(50 * GB, Backup(timeout_s=42.0)) == 42.0


def test_auto_copies_up_to_the_threshold_only():
    assert copy_decision(64 * MB, Backup()) == (True, "copied (backup.copy: auto, at most 64 MB)")
    assert copy_decision(64 * MB + 1, Backup()) == (False, "left in place (backup.copy: auto, over 64 MB)")


def test_always_and_never_ignore_the_size():
    assert copy_decision(10 * GB, Backup(copy="always"))[0] is True
    assert copy_decision(1, Backup(copy="never"))[0] is False
    with pytest.raises(ValidationError):
        Backup(copy="sometimes")


def record(**fields) -> BackupRecord:
    base = dict(shard_master="m:1", node="10.9.9.9:7003", role="replica", lastsave_before=1, lastsave_after=2,
                status="ok", rdb_path="/var/lib/redis/dump.rdb", copied_to=None, bytes=None, sha256=None, keys=5,
                location="10.9.9.9:/var/lib/redis/dump.rdb", copy="on another host, not readable from here")
    return BackupRecord(**{**base, **fields})


def test_a_remote_rdb_is_a_warning_and_its_restore_line_says_how_to_hash_it():
    remote = record()
    assert checks([remote])[0].status == "warn"
    text = restore_instructions([remote])
    assert "10.9.9.9:/var/lib/redis/dump.rdb" in text and "sha256sum /var/lib/redis/dump.rdb` there" in text


def test_a_copied_rdb_names_the_copy_and_where_it_came_from():
    copied = record(copied_to="/runs/x/backup/a.rdb", bytes=10, sha256="ab" * 32, copy="copied (backup.copy: always)")
    assert checks([copied])[0].status == "pass"
    assert f"/runs/x/backup/a.rdb  sha256 {'ab' * 32}  (10 bytes; copied from 10.9.9.9:" in restore_instructions([copied])
