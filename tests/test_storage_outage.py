"""Workers on a real PostgreSQL server survive a restart in the middle of the study: nothing lost or duplicated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import optuna
import pytest

from sweeplight._launch import prepare
from sweeplight._retrying import is_transient
from sweeplight._spec import load_spec
from sweeplight._storage import open_storage

from .conftest import REPO, run_cli

pytestmark = pytest.mark.slow


def test_storage_internal_error_from_a_lost_connection_is_transient(postgres_server, postgres_url):
    storage = optuna.storages.RDBStorage(postgres_url)
    optuna.create_study(storage=storage, study_name="s")
    postgres_server.stop()
    try:
        with pytest.raises(Exception) as info:
            optuna.load_study(study_name="s", storage=storage).ask()
        assert is_transient(info.value)
    finally:
        postgres_server.start()
    assert not is_transient(KeyError("no such study"))


def test_postgres_restart_mid_study(make_study, postgres_server, postgres_url):
    path = make_study({"storage": postgres_url, "budget": {"n_trials": 6}, "executor": {"workers": 4},
                       "trainer": {"max_epochs": 4, "early_stopping": False}, "data": {"args": {"batch_size": 16}}})
    proc = subprocess.Popen([sys.executable, "-m", "sweeplight.cli", "study", "launch", str(path), "--no-progress"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [path.parent / "runs" / "tiny" / "workers" / f"worker-{i}.log" for i in range(4)]
    deadline = time.time() + 120
    while time.time() < deadline and not all(log.exists() and " epoch 0:" in log.read_text() for log in logs):
        time.sleep(0.2)
    postgres_server.stop()
    time.sleep(20)  # the server is down while the workers train and try to report
    postgres_server.start()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    study = optuna.load_study(study_name="tiny", storage=postgres_url)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    assert sorted(t.number for t in trials) == list(range(6))  # no duplicate, no gap
    for t in trials:
        summary = json.loads((path.parent / "runs" / "tiny" / "trials" / str(t.number) / "summary.json").read_text())
        assert summary["objective"]["value"] == pytest.approx(t.value)
        assert sorted(map(int, summary["intermediate_values"])) == sorted(t.intermediate_values) == [0, 1, 2, 3]
    worker_logs = "".join(log.read_text() for log in logs)
    assert "unavailable" in worker_logs and "is back after" in worker_logs
    assert postgres_server.password not in worker_logs + out + err


def test_password_can_come_from_pgpassword_instead_of_the_url(postgres_server, postgres_url, monkeypatch):
    url = postgres_url.replace(":" + postgres_url.split("://", 1)[1].split("@")[0].split(":", 1)[1] + "@", "@")
    assert postgres_server.password not in url and "@" in url
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    optuna.create_study(storage=url, study_name="from-env")
    monkeypatch.setenv("PGPASSWORD", "wrong")
    with pytest.raises(Exception, match="password authentication failed"):
        optuna.load_study(study_name="from-env", storage=url)


def test_password_from_a_variable_in_the_url_never_reaches_disk(make_study, postgres_server, postgres_url):
    user = postgres_url.split("://", 1)[1].split(":", 1)[0]
    url = postgres_url.replace(postgres_url.split("://", 1)[1].split("@")[0], f"{user}:${{SWEEP_DB_PASSWORD}}")
    path = make_study({"storage": url, "budget": {"n_trials": 1}, "trainer": {"max_epochs": 1}})
    result = run_cli("study", "launch", str(path), "--no-progress", env={"SWEEP_DB_PASSWORD": postgres_server.password})
    assert result.returncode == 0, result.stderr
    study_dir = path.parent / "runs" / "tiny"
    assert "${SWEEP_DB_PASSWORD}" in (study_dir / "spec.json").read_text()
    for file in study_dir.rglob("*"):
        if file.is_file() and file.suffix in (".json", ".log", ".yaml"):
            assert postgres_server.password not in file.read_text(errors="replace"), file
    assert optuna.load_study(study_name="tiny", storage=postgres_url).best_trial.state.name == "COMPLETE"


def test_password_from_pgpass_file(postgres_server, postgres_url, tmp_path, monkeypatch):
    url = postgres_url.replace(":" + postgres_url.split("://", 1)[1].split("@")[0].split(":", 1)[1] + "@", "@")
    user, dbname = url.split("://", 1)[1].split("@")[0], url.rsplit("/", 1)[1]
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"{postgres_server.host}:{postgres_server.port}:{dbname}:{user}:"
                      f"{postgres_server.password.replace(':', chr(92) + ':')}\n")
    pgpass.chmod(0o600)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    optuna.create_study(storage=open_storage(url), study_name="from-pgpass")
    assert [s.study_name for s in open_storage(url).get_all_studies()] == ["from-pgpass"]


def test_result_survives_a_tell_that_cannot_reach_the_storage(make_study, postgres_server, postgres_url):
    """The database is gone longer than the worker waits: the worker stops, the result stays in summary.json, and
    ``study sync`` puts it into the study once the database is back."""
    path = make_study({"storage": postgres_url, "budget": {"n_trials": 1},
                       "search_space": {"_replace": True, "lr": {"type": "float", "low": 1e-3, "high": 1e-1}}})
    spec = load_spec(path)
    prepare(spec, progress=False)
    worker = subprocess.Popen([sys.executable, str(REPO / "tests" / "assets" / "quick_worker.py"), "work",
                               str(spec.directory)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "QUICK_TRIAL_SECONDS": "4", "SWEEPLIGHT_STORAGE_WAIT": "3"})
    deadline = time.time() + 60
    study = optuna.load_study(study_name="tiny", storage=postgres_url)
    while time.time() < deadline and not (study.get_trials() and study.get_trials()[0].intermediate_values):
        time.sleep(0.1)
    postgres_server.stop()
    try:
        output = worker.communicate(timeout=60)[0]
    finally:
        postgres_server.start()
    assert worker.returncode == 1, output
    assert "Traceback" not in output
    summary = spec.directory / "trials" / "0" / "summary.json"
    assert "cannot record trial 0 in the study" in output and f"its result is kept in {summary}" in output
    assert "sweeplight study sync" in output and postgres_server.password not in output
    study = optuna.load_study(study_name="tiny", storage=open_storage(postgres_url))  # a new pool: reconnects
    assert study.get_trials()[0].state.name == "RUNNING"

    result = run_cli("study", "sync", str(spec.directory))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sync: finished 1 running trials [0], added 0")
    trial = study.get_trials()[0]
    value = json.loads(summary.read_text())["objective"]["value"]
    assert trial.state.name == "COMPLETE" and trial.value == pytest.approx(value) == pytest.approx(trial.params["lr"])


def test_summaries_are_fsynced_in_order_before_wait_returns(tmp_path, monkeypatch):
    from sweeplight._summary import Durability, write_json_atomic

    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    durability = Durability()
    paths = [tmp_path / str(i) / "summary.json" for i in range(3)]
    for path in paths:
        write_json_atomic(path, {"trial": path.parent.name}, durable=False)
        assert not synced or synced[-1] != str(path)  # the write itself did not fsync
        durability.later(path)
    durability.wait()
    assert synced == [name for path in paths for name in (str(path), str(path.parent))]
    durability.wait()  # nothing pending: returns at once
