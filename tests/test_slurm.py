"""SLURM dispatch on a real single-node SLURM cluster (slurm/start-cluster.sh): real sbatch, squeue, sacct, scancel.

Every test submits real jobs through ``sweeplight study launch`` and checks the study's storage, the trials'
summaries and SLURM's own view of the jobs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from sweeplight.cli import main
from tests.conftest import REPO, SLURM, TOY, run_cli

pytestmark = pytest.mark.slow

@pytest.fixture
def slurm_study(make_study, cluster):
    def make(changes: dict[str, Any] | None = None) -> Path:
        base = {"executor": {"kind": "slurm", "workers": 1, "heartbeat_interval": 3}, "slurm": dict(SLURM)}
        for key, value in (changes or {}).items():
            base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
        return make_study(base)

    yield make
    subprocess.run(["scancel", "--name", "sweeplight-tiny"], capture_output=True, timeout=30)


def slow_model(seconds: float) -> dict[str, Any]:
    return {"model": {"class": f"{TOY}:SlowMLP", "args": {"epoch_seconds": seconds}}}


def load(path: Path) -> optuna.Study:
    study_dir = path.parent / "runs" / "tiny"
    spec = json.loads((study_dir / "spec.json").read_text())
    return optuna.load_study(study_name="tiny", storage=spec["storage"])


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def job_id(out: str) -> str:
    match = re.search(r"SLURM job array (\d+)", out)
    assert match, out
    return match.group(1)


def sacct_states(job: str) -> dict[str, str]:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job, "-o", "JobID,State"], capture_output=True,
                         text=True, timeout=30).stdout
    return {line.split("|")[0]: line.split("|")[1].split()[0] for line in out.splitlines() if "|" in line}


def running_trial(study: optuna.Study, min_epochs: int):
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "RUNNING" and len(t.intermediate_values) >= min_epochs and \
                t.system_attrs.get("sweeplight:slurm_job"):
            return t
    return None


def summary(path: Path, number: int) -> dict[str, Any]:
    return json.loads((path.parent / "runs" / "tiny" / "trials" / str(number) / "summary.json").read_text())


def test_job_array_finishes_a_study(slurm_array_study):
    path, _ = slurm_array_study  # 4 trials, 2 workers, launched with --follow (conftest.py)
    study = load(path)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in trials)
    jobs = {t.system_attrs["sweeplight:slurm_job"] for t in trials}
    array = {key.split("_")[0] for key in jobs}
    assert len(array) == 1 and jobs <= {f"{next(iter(array))}_0", f"{next(iter(array))}_1"}
    job = next(iter(array))
    slurm_dir = path.parent / "runs" / "tiny" / "slurm"
    script = (slurm_dir / f"{job}_submission.sh").read_text()
    assert "#SBATCH --array=0-1%2" in script and "#SBATCH --partition=debug" in script
    assert "#SBATCH --signal=USR2@60" in script and "#SBATCH --requeue" in script
    for index in (0, 1):
        assert "on study 'tiny'" in (slurm_dir / f"{job}_{index}_0_log.out").read_text()
    for t in trials:  # the trial knows its job, and its log is where status says
        record = summary(path, t.number)
        assert record["slurm_job_id"] and record["slurm_array_task_id"] in ("0", "1")
    assert set(wait_for(lambda: sacct_states(job) if len(sacct_states(job)) == 2 else None, 60,
                        "accounting").values()) == {"COMPLETED"}
    status = run_cli("study", "status", str(slurm_dir.parent))
    assert status.returncode == 0
    assert f"slurm jobs {job}: 2 completed" in status.stdout, status.stdout


def test_time_limit_requeues_and_resumes_the_same_trial(slurm_study):
    # A 1-minute limit with the warning 30 s before it (SLURM checks every ~30 s, so it comes 0-30 s after the
    # start): 10 epochs of >= 3 s after ~8 s of start-up cannot fit in one run.
    path = slurm_study({**slow_model(3.0), "budget": {"n_trials": 1},
                        "trainer": {"max_epochs": 10, "early_stopping": False},
                        "slurm": {"timeout_min": 1, "signal_delay_s": 30}})
    out = run_cli("study", "launch", str(path), "--follow", "--no-progress", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    study = load(path)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0], "the requeued job must continue trial 0, not start a new trial"
    trial = trials[0]
    assert trial.state.name == "COMPLETE"
    assert sorted(trial.intermediate_values) == list(range(10))
    record = summary(path, 0)
    assert record["restarts"] >= 1 and record["resumed_from"]["trial"] == 0
    assert record["epochs_lost"] == 0  # validated epochs; only the epoch in progress was trained twice
    assert [h["epoch"] for h in record["history"]] == list(range(10)), "no validated epoch was repeated"
    assert record["slurm_restart_count"] >= 1
    job = trial.system_attrs["sweeplight:slurm_job"]
    log = (path.parent / "runs" / "tiny" / "slurm" / f"{job}_0_log.out").read_text()
    assert "USR2 received" in log and "job requeued" in log and "resuming trial 0 from" in log


def test_preemption_by_a_higher_partition_resumes_the_same_trial(slurm_study):
    path = slurm_study({**slow_model(2.0), "budget": {"n_trials": 1},
                        "trainer": {"max_epochs": 10, "early_stopping": False}})
    out = run_cli("study", "launch", str(path), "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    study = load(path)
    wait_for(lambda: running_trial(study, 3), 180, "3 epochs of trial 0")
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()[0]
    urgent = subprocess.run(["sbatch", "-p", "high", f"-c{cpus}", "--mem=1G", "-o", "/dev/null", "--wrap", "sleep 3"],
                            capture_output=True, text=True, timeout=30)
    assert urgent.returncode == 0, urgent.stderr
    done = run_cli("study", "status", str(path.parent / "runs" / "tiny"), "--watch", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = study.get_trials()
    assert [t.number for t in trials] == [0] and trials[0].state.name == "COMPLETE"
    assert sorted(trials[0].intermediate_values) == list(range(10))
    record = summary(path, 0)
    assert record["restarts"] >= 1 and [h["epoch"] for h in record["history"]] == list(range(10))
    log = (path.parent / "runs" / "tiny" / "slurm" / f"{trials[0].system_attrs['sweeplight:slurm_job']}_0_log.out")
    assert "SIGTERM received" in log.read_text()


def test_killed_worker_trial_is_rerun_and_study_reaches_budget(slurm_study):
    path = slurm_study({**slow_model(1.5), "executor": {"workers": 2}, "budget": {"n_trials": 3},
                        "trainer": {"max_epochs": 6}})
    out = run_cli("study", "launch", str(path), "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    study = load(path)
    victim = wait_for(lambda: running_trial(study, 2), 180, "a trial with 2 epochs")
    # Killed without warning, as by a node failure or the OOM killer: SIGKILL to the worker process itself. (On
    # SLURM 22.05 `scancel -s KILL JOB` terminates the job step with SIGTERM first, which the worker records as
    # 'interrupted'; that trial is re-run the same way.)
    os.kill(victim.system_attrs["sweeplight:pid"], signal.SIGKILL)
    done = run_cli("study", "status", str(path.parent / "runs" / "tiny"), "--watch", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = {t.number: t for t in study.get_trials()}
    killed = trials[victim.number]
    assert killed.state.name == "FAIL" and killed.system_attrs["sweeplight:stop_reason"] == "stale"
    retry = [t for t in trials.values() if t.user_attrs.get("sweeplight:retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    record = summary(path, retry[0].number)
    assert record["resumed_from"]["trial"] == victim.number and record["resumed_from"]["epoch"] >= 1
    assert sum(t.state.name == "COMPLETE" for t in trials.values()) == 3


def test_ddp_trial_runs_as_two_slurm_tasks_with_fake_gpus(slurm_study):
    path = slurm_study({"budget": {"n_trials": 1},
                        "trainer": {"max_epochs": 2, "devices": 2, "strategy": "ddp", "accelerator": "cpu"},
                        "slurm": {"gpus_per_node": 2}})
    out = run_cli("study", "launch", str(path), "--follow", "--no-progress", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    study = load(path)
    (trial,) = study.get_trials()
    assert trial.state.name == "COMPLETE" and sorted(trial.intermediate_values) == [0, 1]
    record = summary(path, 0)
    assert record["strategy"] == "ddp" and record["devices"] == 2
    assert record["cuda_visible_devices"] == "0,1"  # SLURM gave the job both (fake) GPUs
    job = trial.system_attrs["sweeplight:slurm_job"]
    slurm_dir = path.parent / "runs" / "tiny" / "slurm"
    rank0, rank1 = (slurm_dir / f"{job}_0_log.out").read_text(), (slurm_dir / f"{job}_1_log.out").read_text()
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in rank0 + rank1 and "GLOBAL_RANK: 1, MEMBER: 2/2" in rank0 + rank1
    script = (slurm_dir / f"{job.split('_')[0]}_submission.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --gpus-per-node=2" in script


@pytest.mark.parametrize(("change", "expected"), [
    ({"partition": "nope"}, "error: slurm.partition: unknown partition 'nope'; this cluster has: debug, high"),
    ({"mem_gb": 100000}, "error: slurm.mem_gb: 100000 GB per node, but the largest node in partition 'debug' has"),
    ({"cpus_per_task": 512}, "error: slurm.cpus_per_task: cpus_per_task x tasks_per_node = 512 CPUs per node"),
    ({"gpus_per_node": 8}, "error: slurm.gpus_per_node: 8 GPUs per node, but the nodes in partition 'debug' have "
                           "at most 2"),
    ({"constraint": "bigmem"}, "error: slurm: the cluster refuses this job: allocation failure: Invalid feature "
                               "specification (sbatch --test-only)"),
])
def test_bad_resources_fail_before_anything_is_submitted(slurm_study, capsys, change, expected):
    path = slurm_study({"slurm": change})
    out = run_cli("study", "launch", str(path), "--no-progress")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not (path.parent / "runs").exists(), "nothing is created"
    assert subprocess.run(["squeue", "-h", "-n", "sweeplight-tiny"], capture_output=True, text=True).stdout == ""
    capsys.readouterr()
    # validate asks the same cluster; in this process, so torch and Lightning are not imported a second time
    assert main(["study", "validate", str(path)]) == 2
    assert capsys.readouterr().err.strip() == lines[0]


def test_status_and_cancel_against_real_jobs(slurm_study):
    path = slurm_study({**slow_model(2.0), "executor": {"workers": 2}, "budget": {"n_trials": 2},
                        "trainer": {"max_epochs": 8}})
    out = run_cli("study", "launch", str(path), "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    job = job_id(out.stdout)
    study = load(path)
    study_dir = path.parent / "runs" / "tiny"
    wait_for(lambda: sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"
                         and len(t.intermediate_values) >= 1) == 2, 180, "two running trials")
    status = run_cli("study", "status", str(study_dir))
    assert f"slurm jobs {job}: 2 running" in status.stdout, status.stdout
    for index in (0, 1):  # each running trial with its job and log
        assert re.search(rf"running: trial \d+  job {job}_{index} on \S+  log {re.escape(str(study_dir))}/slurm/"
                         rf"{job}_{index}_0_log.out", status.stdout), status.stdout
    as_json = json.loads(run_cli("study", "status", str(study_dir), "--json").stdout)
    assert {j["key"] for j in as_json["jobs"]} == {f"{job}_0", f"{job}_1"}

    cancel = run_cli("study", "cancel", str(study_dir), timeout=180)
    assert cancel.returncode == 0, cancel.stderr
    assert f"cancelled: jobs {job}" in cancel.stdout
    assert subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip() == ""
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert {t.system_attrs["sweeplight:stop_reason"] for t in trials} == {"interrupted"}
    assert set(wait_for(lambda: sacct_states(job) if len(sacct_states(job)) == 2 else None, 60,
                        "accounting").values()) == {"CANCELLED"}

    # The next launch re-runs both from their checkpoints and finishes the study.
    again = run_cli("study", "launch", str(path), "--follow", "--no-progress", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "re-queued interrupted trials [0, 1]" in again.stderr
    retries = [t for t in study.get_trials() if t.user_attrs.get("sweeplight:retry_of") is not None]
    assert sorted(t.user_attrs["sweeplight:retry_of"] for t in retries) == [0, 1]
    assert all(t.state.name == "COMPLETE" for t in retries)
    for t in retries:
        resumed = summary(path, t.number)["resumed_from"]
        assert resumed["trial"] == t.user_attrs["sweeplight:retry_of"] and resumed["epoch"] >= 0


def test_study_work_in_a_batch_script_of_your_own(slurm_study, tmp_path):
    path = slurm_study({"executor": {"kind": "local", "workers": 1}, "budget": {"n_trials": 3}})
    script = tmp_path / "sweep.sh"
    script.write_text(f"""#!/bin/bash
#SBATCH --array=0-1 --time=10 --mem=2G --job-name=sweeplight-tiny --requeue --signal=USR2@60
#SBATCH --output={tmp_path}/work-%A_%a.out
cd {REPO}
srun {sys.executable} -m sweeplight.cli study work {path}
""")
    out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    wait_for(lambda: sacct_states(job) if len(sacct_states(job)) == 2 and "RUNNING" not in
             sacct_states(job).values() and "PENDING" not in sacct_states(job).values() else None, 300, "the array")
    assert set(sacct_states(job).values()) == {"COMPLETED"}, sacct_states(job)
    trials = load(path).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2] and all(t.state.name == "COMPLETE" for t in trials)
    assert {t.system_attrs["sweeplight:slurm_job"].split("_")[0] for t in trials} == {job}  # stamped with its job
    logs = "".join(p.read_text() for p in tmp_path.glob(f"work-{job}_*.out"))
    assert logs.count("on study 'tiny'") == 2


def test_worker_runs_one_torch_thread_per_cpu_of_its_job(cluster):
    # task/none binds nothing, so torch would size its pool to the node's cores in every worker sharing the node.
    probe = ("from sweeplight._slurm_worker import limit_threads; limit_threads(); import torch; "
             "print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run(["srun", "-c", "1", "--mem=1G", sys.executable, "-c", probe], capture_output=True,
                         text=True, timeout=120, cwd=REPO, env=env)
    assert out.returncode == 0 and out.stdout.split() == ["1"], out.stderr[-2000:]
    chosen = subprocess.run(["srun", "-c", "1", "--mem=1G", sys.executable, "-c", probe], capture_output=True,
                            text=True, timeout=120, cwd=REPO, env={**env, "OMP_NUM_THREADS": "2"})
    assert chosen.returncode == 0 and chosen.stdout.split() == ["2"], chosen.stderr[-2000:]  # the user's choice
