"""End to end through the real CLI: local worker processes, a real SQLite study, real training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from sweeplight._launch import _cores, worker_threads

from .conftest import BASE, REPO, TOY, _merge, run_cli

pytestmark = pytest.mark.slow


def _study(path: Path, name: str = "tiny") -> optuna.Study:
    runs = path.parent / "runs"
    return optuna.load_study(study_name=name, storage=f"sqlite:///{runs / name / 'study.db'}")


def _hparams_of(log_dir: Path) -> tuple[dict, dict]:
    """Read a trial's HPARAMS session and scalars back with TensorBoard's own loader."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    params = {}
    for key, value in start.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        params[key] = getattr(value, kind)
    scalars = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return params, scalars


def test_two_workers_run_a_study_with_summaries_tensorboard_and_resume(make_study):
    path = make_study({"budget": {"n_trials": 4}, "executor": {"workers": 2},
                       "trainer": {"max_epochs": 2}})
    result = run_cli("study", "launch", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "finished 4 of 4" in result.stdout
    study = _study(path)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    workers = {t.system_attrs["sweeplight:worker"] for t in trials}
    assert workers == {0, 1}  # both workers took trials
    threads = int(os.environ.get("OMP_NUM_THREADS") or worker_threads(_cores(), 2))
    for trial in trials:
        trial_dir = path.parent / "runs" / "tiny" / "trials" / str(trial.number)
        summary = json.loads((trial_dir / "summary.json").read_text())
        assert summary["state"] == "COMPLETE" and summary["trial"] == trial.number
        assert summary["torch_threads"] == threads  # the two workers share the cores out
        assert summary["params"] == trial.params
        assert summary["objective"]["value"] == pytest.approx(trial.value)
        assert list(map(int, summary["intermediate_values"])) == sorted(trial.intermediate_values)
        for epoch, value in trial.intermediate_values.items():
            assert summary["intermediate_values"][str(epoch)] == pytest.approx(value)
        params, scalars = _hparams_of(trial_dir)
        assert set(params) == {"lr", "width", "optimizer", "momentum"}  # every key, sampled or not
        if "momentum" not in trial.params:
            assert params["momentum"] != params["momentum"]  # NaN for the unsampled conditional parameter
        assert params["lr"] == pytest.approx(trial.params["lr"])
        assert scalars["hp_metric"] == [pytest.approx(trial.value)]  # the real value, never the -1 placeholder
    status = run_cli("study", "status", str(path.parent / "runs" / "tiny"))
    assert status.returncode == 0 and "4 complete" in status.stdout
    best = max(trials, key=lambda t: t.value)
    assert f"best: trial {best.number}" in status.stdout

    resumed = run_cli("study", "launch", str(path), "--no-progress", "--set", "budget.n_trials=5")
    assert resumed.returncode == 0, resumed.stderr
    assert len(_study(path).get_trials()) == 5  # finished trials counted toward the budget: one more ran
    again = run_cli("study", "launch", str(path), "--no-progress", "--set", "budget.n_trials=5")
    assert again.returncode == 0 and len(_study(path).get_trials()) == 5


# The tests below each read what one launch left. Their studies are independent, so they are launched side by side,
# each in a directory of its own (runs/tiny under it).
ONCE = {
    # 4 grid points; the 2 with width 32 fail
    "failing": {"model": {"class": f"{TOY}:FailingMLP"}, "budget": {"n_trials": 3, "max_failures": 5},
                "sampler": {"name": "grid"}, "search_space": {"_replace": True, "width": [32, 64], "lr": [0.01, 0.02]},
                "trainer": {"max_epochs": 1}},
    "max_failures": {"model": {"class": f"{TOY}:AlwaysFailingMLP"}, "budget": {"n_trials": 10, "max_failures": 2},
                     "trainer": {"max_epochs": 1}},
    "never_logged": {"objective": {"metric": "val_accuracy", "direction": "maximize"}, "budget": {"n_trials": 5},
                     "executor": {"workers": 2}},
    "ddp": {"budget": {"n_trials": 1}, "search_space": {"_replace": True, "width": [64]},
            "trainer": {"max_epochs": 2, "devices": 2, "strategy": "ddp", "accelerator": "cpu"}},
    "pruned_ddp": {"budget": {"n_trials": 2}, "pruner": {"name": "threshold", "options": {"lower": 0.999}},
                   "trainer": {"max_epochs": 4, "devices": 2, "strategy": "ddp", "accelerator": "cpu"}},
}


@dataclass(frozen=True)
class Launch:
    path: Path  # the study file
    result: subprocess.CompletedProcess
    seconds: float  # how long the launch took


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Launch]:
    paths = {}
    for name, changes in ONCE.items():
        directory = tmp_path_factory.mktemp(name)
        paths[name] = directory / "study.yaml"
        paths[name].write_text(yaml.safe_dump(_merge(BASE, {"root": str(directory / "runs"), **changes})))

    def launch(path: Path) -> Launch:
        start = time.time()
        return Launch(path, run_cli("study", "launch", str(path), "--no-progress", timeout=600), time.time() - start)

    with ThreadPoolExecutor(len(paths)) as pool:
        return dict(zip(paths, pool.map(launch, paths.values()), strict=True))


def test_a_failing_trial_does_not_stop_the_others(launched):
    path, result = launched["failing"].path, launched["failing"].result
    assert result.returncode == 0, result.stderr
    trials = _study(path).get_trials()
    failed = [t for t in trials if t.state.name == "FAIL"]
    # Each of the 4 grid points runs once: the 2 with width 32 fail (and are not retried in this launch), the
    # others complete; the grid is done before n_trials=3 finished trials.
    assert sorted(t.params["lr"] for t in failed) == [0.01, 0.02] and all(t.params["width"] == 32 for t in failed)
    assert sorted(t.params["lr"] for t in trials if t.state.name == "COMPLETE") == [0.01, 0.02]
    assert len(trials) == 4 and "grid done (4 points)" in result.stdout + result.stderr
    summary = json.loads(Path(failed[0].system_attrs["sweeplight:summary"]).read_text())
    assert summary["state"] == "FAIL" and "width 32 is broken on purpose" in summary["error"]


def test_max_failures_stops_the_study_with_exit_1(launched):
    path, result = launched["max_failures"].path, launched["max_failures"].result
    assert result.returncode == 1
    assert "budget.max_failures=2 reached" in result.stderr
    assert len(_study(path).get_trials()) == 2


def test_metric_never_logged_stops_the_study_with_exit_2(launched):
    path, result = launched["never_logged"].path, launched["never_logged"].result
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: objective.metric: the module never logs 'val_accuracy'")
    assert "val_acc, val_loss" in lines[-1]
    assert "Traceback" not in result.stderr
    assert len(_study(path).get_trials()) <= 2  # one trial per worker at most, not the whole budget


def test_ddp_trial_on_two_cpu_processes_is_one_trial(launched):
    path, result = launched["ddp"].path, launched["ddp"].result
    assert result.returncode == 0, result.stderr
    trials = _study(path).get_trials()
    assert len(trials) == 1 and trials[0].state.name == "COMPLETE"
    trial_dir = path.parent / "runs" / "tiny" / "trials" / "0"
    summary = json.loads((trial_dir / "summary.json").read_text())
    assert summary["devices"] == 2 and summary["strategy"] == "ddp" and summary["epochs"] == 2
    rank1 = (trial_dir / "rank1.log").read_text()
    assert "Error" not in rank1 and "Traceback" not in rank1
    worker_log = (path.parent / "runs" / "tiny" / "workers" / "worker-0.log").read_text()
    assert "distributed_backend=gloo" in worker_log and "All distributed processes registered" in worker_log


def test_pruned_ddp_trial_stops_every_rank(launched):
    path, result = launched["pruned_ddp"].path, launched["pruned_ddp"].result
    assert result.returncode == 0, result.stderr
    trials = _study(path).get_trials()
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [0] for t in trials)
    assert launched["pruned_ddp"].seconds < 240


def test_ctrl_c_records_the_trial_as_interrupted_and_the_next_launch_resumes_it(make_study):
    path = make_study({"budget": {"n_trials": 1}, "data": {"args": {"batch_size": 8}},
                       "search_space": {"_replace": True, "lr": [0.003], "width": [32]},
                       "trainer": {"max_epochs": 8, "early_stopping": False}})  # room for a late signal under load
    proc = subprocess.Popen([sys.executable, "-m", "sweeplight.cli", "study", "launch", str(path), "--no-progress"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = path.parent / "runs" / "tiny" / "workers" / "worker-0.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and "trial 0 epoch 1:" in log.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    trial = _study(path).get_trials()[0]
    assert trial.state.name == "FAIL" and trial.system_attrs["sweeplight:stop_reason"] == "interrupted"
    with pytest.raises(ProcessLookupError):  # the worker process is gone
        os.kill(trial.system_attrs["sweeplight:pid"], 0)
    trial_dir = path.parent / "runs" / "tiny" / "trials"
    old = json.loads((trial_dir / "0" / "summary.json").read_text())
    assert old["stop_reason"] == "interrupted" and 2 <= old["epochs"] < 8
    assert (trial_dir / "0" / "checkpoints" / "last.ckpt").is_file()

    result = run_cli("study", "launch", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr
    trials = _study(path).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    new = json.loads((trial_dir / "1" / "summary.json").read_text())
    assert new["resumed_from"]["trial"] == 0 and new["restarts"] == 1
    assert [h["epoch"] for h in new["history"]] == list(range(8))  # continued, not restarted from epoch 0
    kept = new["resumed_from"]["epoch"]
    assert new["history"][: kept + 1] == old["history"][: kept + 1]
    assert sorted(trials[1].intermediate_values) == list(range(8))
    assert trials[1].user_attrs["sweeplight:retry_of"] == 0
    worker_log = log.read_text()
    assert "resuming trial 0 from" in worker_log
    assert worker_log.count("trial 1 epoch 0:") == 0  # epoch 0 was not trained again


def test_worker_threads_share_the_cores_out():
    assert worker_threads(16, 4) == 4 and worker_threads(16, 3) == 5 and worker_threads(16, 2, ranks=4) == 2
    assert worker_threads(2, 4) == 1 and worker_threads(1, 1) == 1
