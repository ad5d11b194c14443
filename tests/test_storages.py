"""One suite, three storages: SQLite file, Optuna journal file and a real PostgreSQL server.

Each test runs real worker processes against the storage: many concurrent writers, a worker killed with SIGKILL,
results recovered from summaries, a changed search space refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from sweeplight._launch import prepare
from sweeplight._spec import load_spec
from sweeplight._storage import load_study
from sweeplight._sync import SYNCED_FROM, sync

from .conftest import REPO, run_cli

pytestmark = pytest.mark.slow
QUICK_WORKER = REPO / "tests" / "assets" / "quick_worker.py"
BACKENDS = ["sqlite", "journal", "postgres"]


@pytest.fixture(params=BACKENDS)
def storage_url(request, tmp_path):
    """A fresh, empty storage of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "shared" / "study.db")
    if request.param == "journal":
        return str(tmp_path / "shared" / "study.log")
    server = request.getfixturevalue("postgres_server")
    return server.new_database(f"s_{uuid.uuid4().hex[:10]}")


def _quick_study(make_study, storage_url: str, n_trials: int, interval: float = 5) -> Path:
    return make_study({"storage": storage_url, "budget": {"n_trials": n_trials, "max_failures": None},
                       "search_space": {"_replace": True, "lr": {"type": "float", "low": 1e-3, "high": 1e-1},
                                        "width": {"type": "int", "low": 8, "high": 64}},
                       "executor": {"heartbeat_interval": interval}})


def _quick_workers(study_dir: Path, count: int, env: dict | None = None) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, str(QUICK_WORKER), "work", str(study_dir), "--worker", str(i),
                              "--launch-id", "stress"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env={**os.environ, **(env or {})})
            for i in range(count)]


def test_eight_workers_hundreds_of_trials(make_study, storage_url):
    """No duplicate numbers, no lost tells, no worker crashing on a lock; the budget is exact."""
    n_trials = 240
    spec = load_spec(_quick_study(make_study, storage_url, n_trials))
    prepare(spec, progress=False)
    procs = _quick_workers(spec.directory, 8)
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-2000:]
        assert "Traceback" not in output
    trials = load_study(spec).get_trials()
    assert len(trials) == n_trials
    assert sorted(t.number for t in trials) == list(range(n_trials))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:  # each tell carried the value its own trial computed, and its three reports
        assert t.value == pytest.approx(t.params["lr"] + t.params["width"])
        assert t.intermediate_values == pytest.approx({0: t.value / 3, 1: 2 * t.value / 3, 2: t.value})
        summary = json.loads((spec.directory / "trials" / str(t.number) / "summary.json").read_text())
        assert summary["trial"] == t.number and summary["objective"]["value"] == pytest.approx(t.value)
    workers = {t.system_attrs["sweeplight:worker"] for t in trials}
    assert len(workers) >= 4  # the work really was shared
    assert sync(spec).added == []  # every result already in the study


def test_killed_worker_trial_is_rerun_from_its_checkpoint(make_study, storage_url):
    """SIGKILL a worker mid-training: its trial is failed as stale within two heartbeat intervals (plus one beat of
    the checking worker) and re-run from its last checkpoint by the other worker."""
    interval = 2.0
    path = make_study({"storage": storage_url, "budget": {"n_trials": 2},
                       "trainer": {"max_epochs": 8, "early_stopping": False},
                       "data": {"args": {"batch_size": 8}}, "executor": {"workers": 2, "heartbeat_interval": interval}})
    launcher = subprocess.Popen([sys.executable, "-m", "sweeplight.cli", "study", "launch", str(path), "--no-progress"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spec = load_spec(path)
    victim = None
    deadline = time.time() + 180
    while victim is None and time.time() < deadline:
        time.sleep(0.3)
        with_checkpoint = {int(c.parent.parent.name) for c in spec.directory.glob("trials/*/checkpoints/last.ckpt")}
        if with_checkpoint:
            running = [t for t in load_study(spec).get_trials() if t.state == TrialState.RUNNING
                       and t.number in with_checkpoint]
            victim = running[0] if running else None
    assert victim is not None, "no running trial wrote a checkpoint"
    os.kill(victim.system_attrs["sweeplight:pid"], signal.SIGKILL)
    victim = victim.number
    killed_at = time.time()
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, err[-3000:]
    assert "exited with code -9" in err  # the launcher says which worker died
    trials = {t.number: t for t in load_study(spec).get_trials()}
    dead = trials[victim]
    assert dead.state == TrialState.FAIL and dead.system_attrs["sweeplight:stop_reason"] == "stale"
    assert dead.system_attrs["sweeplight:stale_at"] - killed_at <= 3 * interval + 2  # the checker's beat is late
    retry = next(t for t in trials.values() if t.user_attrs.get("sweeplight:retry_of") == victim)
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    summary = json.loads((spec.directory / "trials" / str(retry.number) / "summary.json").read_text())
    assert summary["resumed_from"]["trial"] == victim and summary["restarts"] == 1
    assert [h["epoch"] for h in summary["history"]] == list(range(8))  # the curve continues, not from epoch 0
    kept = summary["resumed_from"]["epoch"]
    assert kept >= 0 and summary["epochs_lost"] <= 1  # at most the epoch in progress
    worker_logs = "".join(p.read_text() for p in (spec.directory / "workers").glob("*.log"))
    assert f"trial {retry.number} epoch 0:" not in worker_logs  # epoch 0 was not trained again
    finished = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    assert len(finished) == 2


def test_sync_recovers_results_the_study_missed(make_study, storage_url):
    """A tell that never happened, and a result whose trial was failed as stale: sync adds both, once."""
    spec = load_spec(_quick_study(make_study, storage_url, 4))
    prepare(spec, progress=False)
    procs = _quick_workers(spec.directory, 1)
    assert procs[0].wait(timeout=120) == 0
    study = load_study(spec)
    # Trial 4 ran, wrote its summary, and its worker died before the tell; trial 5 was failed as stale meanwhile.
    ghosts = []
    for _ in range(2):
        trial = study.ask()
        params = {"lr": trial.suggest_float("lr", 1e-3, 1e-1), "width": trial.suggest_int("width", 8, 64)}
        value = params["lr"] + params["width"]
        directory = spec.directory / "trials" / str(trial.number)
        directory.mkdir(parents=True)
        (directory / "summary.json").write_text(json.dumps({
            "schema_version": 1, "study": spec.name, "trial": trial.number, "state": "COMPLETE", "params": params,
            "objective": {"metric": "val_acc", "value": value}, "intermediate_values": {"0": value / 2, "1": value},
            "epochs": 2, "stop_reason": "max_epochs"}))
        ghosts.append((trial, value))
    study.tell(ghosts[1][0], state=TrialState.FAIL)

    result = run_cli("study", "sync", str(spec.directory))
    assert result.returncode == 0, result.stderr
    assert "finished 1" in result.stdout and "added 1" in result.stdout
    trials = {t.number: t for t in load_study(spec).get_trials()}
    assert trials[ghosts[0][0].number].state == TrialState.COMPLETE
    assert trials[ghosts[0][0].number].value == pytest.approx(ghosts[0][1])
    copy = next(t for t in trials.values() if t.system_attrs.get(SYNCED_FROM) == ghosts[1][0].number)
    assert copy.value == pytest.approx(ghosts[1][1]) and copy.params == ghosts[1][0].params
    assert copy.intermediate_values == pytest.approx({0: ghosts[1][1] / 2, 1: ghosts[1][1]})
    count = len(trials)

    again = run_cli("study", "sync", str(spec.directory), "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["finished"] == [] and report["added"] == [] and report["present"] == 6
    assert len(load_study(spec).get_trials()) == count


def test_changed_search_space_is_refused(make_study, storage_url):
    path = _quick_study(make_study, storage_url, 1)
    spec = load_spec(path)
    prepare(spec, progress=False)
    data = yaml.safe_load(path.read_text())
    data["search_space"]["lr"]["high"] = 0.5
    path.write_text(yaml.safe_dump(data))
    result = run_cli("study", "launch", str(path), "--no-progress")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: search_space: study 'tiny' already exists with a different search space (lr (high 0.1 -> 0.5)); to "
        "search the new space give the study a new name (name: tiny-2), or restore the old space to resume"]
    assert not list(spec.directory.glob("trials/*"))  # no trial ran


def test_storage_check_reports_backend_and_latency(storage_url, make_study, request):
    spec = load_spec(_quick_study(make_study, storage_url, 1))
    prepare(spec, progress=False)
    result = run_cli("storage", "check", spec.storage, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    backend = {"sqlite": "sqlite", "journal": "journal", "postgresql": "postgresql"}[spec.storage.split(":")[0]
                                                                                     .split("+")[0]]
    assert report["backend"] == backend
    assert 0 < report["latency_ms"] < 1000
    assert report["studies"] == ["tiny"]
    if backend == "postgresql":
        server = request.getfixturevalue("postgres_server")
        assert server.password not in result.stdout and ":***@" in report["url"]
        assert report["server"].startswith("PostgreSQL 15") and report["max_connections"] >= 10
    else:
        assert report["filesystem"].startswith(("ext4", "overlay", "xfs", "tmpfs", "btrfs"))
        assert report["warnings"] == []


def test_batched_writes_are_all_or_nothing(storage_url, tmp_path):
    """The worker's one-write stamp and result (sweeplight/_writes.py) read back like Optuna's own calls, through
    the retrying wrapper, and a finished trial takes no more writes."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError

    from sweeplight._retrying import retrying
    from sweeplight._storage import open_storage, resolve_storage_url
    from sweeplight._writes import create_running_trial, finish_trial, set_trial_attrs

    url = resolve_storage_url(storage_url, tmp_path, tmp_path)
    storage = retrying(open_storage(url), max_wait=5, label=url)
    study = optuna.create_study(storage=storage, study_name="batch", direction="maximize")
    stamp = {"sweeplight:heartbeat": 1.5, "sweeplight:host": "node1", "sweeplight:pid": 42}
    trial_id = create_running_trial(storage, study._study_id, stamp)
    set_trial_attrs(storage, trial_id, system={"sweeplight:pid": 43, "sweeplight:worker": 0}, user={"note": "x"})
    trial = storage.get_trial(trial_id)
    assert trial.state == TrialState.RUNNING and trial.datetime_start is not None
    assert trial.system_attrs == {**stamp, "sweeplight:pid": 43, "sweeplight:worker": 0}
    assert trial.user_attrs == {"note": "x"}
    assert finish_trial(storage, trial_id, TrialState.COMPLETE, [0.5], system={"sweeplight:epochs": 3},
                        user={"test_acc": 0.9})
    done = optuna.load_study(study_name="batch", storage=open_storage(url)).trials[0]
    assert done.state == TrialState.COMPLETE and done.value == 0.5 and done.datetime_complete is not None
    assert done.system_attrs["sweeplight:epochs"] == 3 and done.user_attrs == {"note": "x", "test_acc": 0.9}
    with pytest.raises(UpdateFinishedTrialError):
        finish_trial(storage, trial_id, TrialState.FAIL, None, system={"sweeplight:epochs": 4})
    with pytest.raises(UpdateFinishedTrialError):
        set_trial_attrs(storage, trial_id, system={"sweeplight:epochs": 5})
    again = optuna.load_study(study_name="batch", storage=open_storage(url)).trials[0]
    assert again.state == TrialState.COMPLETE and again.system_attrs["sweeplight:epochs"] == 3
    study.optimize(lambda t: 1.0, n_trials=1)  # the storage still works after the refused writes


def test_sqlite_keeps_a_write_ahead_log_on_local_disks_only(tmp_path, monkeypatch):
    import sqlite3

    from sweeplight import _storage
    from sweeplight._storage import Mount, open_storage

    local = tmp_path / "local.db"
    open_storage(f"sqlite:///{local}").get_all_studies()
    assert sqlite3.connect(local).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    monkeypatch.setattr(_storage, "filesystem", lambda path, mounts="": Mount("/mnt/nfs", "nfs4", "rw,vers=4.2"))
    remote = tmp_path / "remote.db"
    open_storage(f"sqlite:///{remote}").get_all_studies()
    assert sqlite3.connect(remote).execute("PRAGMA journal_mode").fetchone() == ("delete",)
