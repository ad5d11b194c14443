"""Storage faults in the bad-input table (the study-file faults are in test_validation.py): each launch fails with
exit code 2, one line naming the field and the fix, never the password, and creates nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import run_cli

pytestmark = pytest.mark.slow
SECRET = "S3cret-p@ss"
QUOTED = "S3cret-p%40ss"


def _files(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*")}


def _assert_rejected(make_study, tmp_path: Path, changes: dict, *expected: str, env: dict | None = None) -> None:
    path = make_study(changes)
    before = _files(tmp_path)
    result = run_cli("study", "launch", str(path), "--no-progress", env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in expected:
        assert part in lines[0], lines[0]
    assert SECRET not in result.stdout + result.stderr and QUOTED not in result.stdout + result.stderr
    assert _files(tmp_path) == before  # nothing created: no runs/, no database file, no journal


def test_unreachable_server(make_study, tmp_path):
    _assert_rejected(make_study, tmp_path, {"storage": f"postgresql+psycopg2://sweep:{QUOTED}@127.0.0.1:1/studies"},
                     "error: storage: cannot open 'postgresql+psycopg2://sweep:***@127.0.0.1:1/studies'",
                     "Connection refused", "that the server is running and reachable")


def test_wrong_password_is_never_shown(make_study, tmp_path, postgres_server):
    url = postgres_server.url_without_password
    user = url.split("://", 1)[1].split("@", 1)[0]
    bad = url.replace(f"://{user}@", f"://{user}:{QUOTED}@", 1)
    _assert_rejected(make_study, tmp_path, {"storage": bad}, "password authentication failed",
                     "check the user and password", ":***@")


def test_missing_database(make_study, tmp_path, postgres_server):
    url = postgres_server.url_for("no_such_database")
    _assert_rejected(make_study, tmp_path, {"storage": url}, "does not exist", "create the database first")


def test_password_variable_not_set(make_study, tmp_path):
    _assert_rejected(make_study, tmp_path, {"storage": "postgresql://sweep:${SWEEPLIGHT_TEST_UNSET}@127.0.0.1/db"},
                     "environment variable SWEEPLIGHT_TEST_UNSET is not set", "export SWEEPLIGHT_TEST_UNSET=")


def test_missing_driver(make_study, tmp_path):
    _assert_rejected(make_study, tmp_path, {"storage": f"mysql://sweep:{QUOTED}@127.0.0.1/db"},
                     "no database driver for mysql:// URLs", "pip install")


def test_journal_lock_typo(make_study, tmp_path):
    _assert_rejected(make_study, tmp_path, {"storage": str(tmp_path / "shared" / "study.log") + "?lock=flock"},
                     "error: storage: lock='flock'", "lock=open")


def test_not_a_database(make_study, tmp_path):
    (tmp_path / "notes.db").write_text("not a database, just notes\n" * 100)
    _assert_rejected(make_study, tmp_path, {"storage": str(tmp_path / "notes.db")},
                     "file is not a database", "point storage at a new file")


@pytest.fixture
def full_disk(tmp_path):
    """A real full file system: a 128 KiB tmpfs, filled up (needs root, as CI and this machine kind run)."""
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)], check=True)
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:  # ENOSPC: full
            pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_for_the_study_directory(make_study, tmp_path, full_disk):
    _assert_rejected(make_study, tmp_path, {"root": str(full_disk / "runs")}, "disk is full",
                     "free space on that file system")


def test_full_disk_for_a_journal_file(make_study, tmp_path, full_disk):
    _assert_rejected(make_study, tmp_path, {"storage": str(full_disk / "shared" / "study.log")},
                     "No space left on device", "free space on that file system")
