"""Storage faults in the bad-input table (the study-file faults are in test_validation.py): each launch fails with
exit code 2, one line naming the field and the fix, never the password, and creates nothing. The launches are
independent, so the module runs them side by side, each in a directory of its own."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .conftest import BASE, _merge, run_cli_all

pytestmark = pytest.mark.slow
SECRET = "S3cret-p@ss"
QUOTED = "S3cret-p%40ss"


def _files(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*")}


@dataclass(frozen=True)
class Rejected:
    directory: Path  # the case's directory: its study file and whatever the case put there first
    before: set[Path]  # the files in it before the launch
    result: subprocess.CompletedProcess  # the launch's output


def _full_disk(mount: Path) -> Path:
    """A real full file system: a 128 KiB tmpfs, filled up (needs root, as CI and this machine kind run)."""
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)], check=True)
    fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)
    return mount


@pytest.fixture(scope="module")
def rejected(tmp_path_factory: pytest.TempPathFactory, postgres_server) -> Iterator[dict[str, Rejected]]:
    """Each case's study launched through the CLI, all at once: case name -> Rejected."""
    url = postgres_server.url_without_password
    user = url.split("://", 1)[1].split("@", 1)[0]
    directories = {name: tmp_path_factory.mktemp(name) for name in (
        "unreachable", "wrong_password", "missing_database", "password_variable", "missing_driver", "journal_lock",
        "not_a_database", "full_study_directory", "full_journal")}
    mounts = []
    try:
        (directories["not_a_database"] / "notes.db").write_text("not a database, just notes\n" * 100)
        for name in ("full_study_directory", "full_journal"):
            mounts.append(_full_disk(directories[name] / "full"))
        changes = {
            "unreachable": {"storage": f"postgresql+psycopg2://sweep:{QUOTED}@127.0.0.1:1/studies"},
            "wrong_password": {"storage": url.replace(f"://{user}@", f"://{user}:{QUOTED}@", 1)},
            "missing_database": {"storage": postgres_server.url_for("no_such_database")},
            "password_variable": {"storage": "postgresql://sweep:${SWEEPLIGHT_TEST_UNSET}@127.0.0.1/db"},
            "missing_driver": {"storage": f"mysql://sweep:{QUOTED}@127.0.0.1/db"},
            "journal_lock": {"storage": str(directories["journal_lock"] / "shared" / "study.log") + "?lock=flock"},
            "not_a_database": {"storage": str(directories["not_a_database"] / "notes.db")},
            "full_study_directory": {"root": str(directories["full_study_directory"] / "full" / "runs")},
            "full_journal": {"storage": str(directories["full_journal"] / "full" / "shared" / "study.log")},
        }
        befores = {}
        for name, directory in directories.items():
            path = directory / "study.yaml"
            path.write_text(yaml.safe_dump(_merge(BASE, {"root": str(directory / "runs"), **changes[name]}),
                                           sort_keys=False))
            befores[name] = _files(directory)
        results = run_cli_all(*[("study", "launch", str(d / "study.yaml"), "--no-progress")
                                for d in directories.values()])
        yield {name: Rejected(directories[name], befores[name], result)
               for name, result in zip(directories, results, strict=True)}
    finally:
        for mount in mounts:
            subprocess.run(["umount", str(mount)], check=True)


def _assert_rejected(case: Rejected, *expected: str) -> None:
    result = case.result
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in expected:
        assert part in lines[0], lines[0]
    assert SECRET not in result.stdout + result.stderr and QUOTED not in result.stdout + result.stderr
    assert _files(case.directory) == case.before  # nothing created: no runs/, no database file, no journal


def test_unreachable_server(rejected):
    _assert_rejected(rejected["unreachable"],
                     "error: storage: cannot open 'postgresql+psycopg2://sweep:***@127.0.0.1:1/studies'",
                     "Connection refused", "that the server is running and reachable")


def test_wrong_password_is_never_shown(rejected):
    _assert_rejected(rejected["wrong_password"], "password authentication failed", "check the user and password",
                     ":***@")


def test_missing_database(rejected):
    _assert_rejected(rejected["missing_database"], "does not exist", "create the database first")


def test_password_variable_not_set(rejected):
    _assert_rejected(rejected["password_variable"], "environment variable SWEEPLIGHT_TEST_UNSET is not set",
                     "export SWEEPLIGHT_TEST_UNSET=")


def test_missing_driver(rejected):
    _assert_rejected(rejected["missing_driver"], "no database driver for mysql:// URLs", "pip install")


def test_journal_lock_typo(rejected):
    _assert_rejected(rejected["journal_lock"], "error: storage: lock='flock'", "lock=open")


def test_not_a_database(rejected):
    _assert_rejected(rejected["not_a_database"], "file is not a database", "point storage at a new file")


def test_full_disk_for_the_study_directory(rejected):
    _assert_rejected(rejected["full_study_directory"], "disk is full", "free space on that file system")


def test_full_disk_for_a_journal_file(rejected):
    _assert_rejected(rejected["full_journal"], "No space left on device", "free space on that file system")
