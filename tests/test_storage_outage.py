"""Workers on a real PostgreSQL server survive a restart in the middle of the study: nothing lost or duplicated."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import optuna
import pytest

from sweeplight._retrying import is_transient

from .conftest import REPO

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
    path = make_study({"storage": postgres_url, "budget": {"n_trials": 4}, "executor": {"workers": 2},
                       "trainer": {"max_epochs": 4, "early_stopping": False}, "data": {"args": {"batch_size": 16}}})
    proc = subprocess.Popen([sys.executable, "-m", "sweeplight.cli", "study", "launch", str(path), "--no-progress"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [path.parent / "runs" / "tiny" / "workers" / f"worker-{i}.log" for i in (0, 1)]
    deadline = time.time() + 120
    while time.time() < deadline and not all(log.exists() and " epoch 0:" in log.read_text() for log in logs):
        time.sleep(0.2)
    postgres_server.stop()
    time.sleep(15)  # the server is down while both workers train and try to report
    postgres_server.start()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    study = optuna.load_study(study_name="tiny", storage=postgres_url)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # no duplicate, no gap
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
