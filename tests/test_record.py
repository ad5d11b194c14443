"""Trial records and ``sweeplight trial rerun``: real git repositories, real studies launched through the CLI, real
training, and on SLURM a real job on the local cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from sweeplight._record import freeze, git_state, parse_freeze

from .conftest import DIGITS, run_cli, run_cli_all

MARKER = "UNCOMMITTED_MARKER = 42"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.strip()


def make_repo(path: Path) -> Path:
    """A repository holding the digits model, committed, then changed without committing."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    shutil.copy(DIGITS, path / "model.py")
    (path / ".gitignore").write_text("*.yaml\n")  # the study files: editing one is not a change of the code
    git(path, "add", "model.py", ".gitignore")
    git(path, "commit", "-q", "-m", "model")
    with open(path / "model.py", "a") as handle:
        handle.write(f"\n{MARKER}\n")
    (path / "helper_untracked.py").write_text("HELPER = 'untracked'\n")
    return path


def write_study(repo: Path, name: str) -> Path:
    """Two grid points: lr 1e-5 learns nothing in two epochs and is pruned after the second one (val_acc below the
    threshold), lr 3e-2 completes its three epochs."""
    study = {
        "name": name, "root": str(repo / "runs"),
        "model": {"class": "model.py:DigitsMLP", "args": {"width": 32}},
        "data": {"class": "model.py:DigitsDataModule"},
        "objective": {"metric": "val_acc", "direction": "maximize"},
        "search_space": {"lr": {"type": "categorical", "choices": [1e-5, 3e-2]}},
        "sampler": {"name": "grid", "seed": 1},
        "pruner": {"name": "threshold", "options": {"lower": 0.5, "n_warmup_steps": 1}},
        "budget": {"n_trials": 2},
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "deterministic": True},
        "executor": {"kind": "local", "workers": 1, "heartbeat_interval": 5},
    }
    path = repo / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@dataclass(frozen=True)
class Launched:
    repo: Path  # the repository; the study's results are in repo/runs/rec
    head: str  # its commit when the study ran
    complete: int  # the trial that completed its three epochs
    pruned: int  # the trial pruned after two
    rerun_complete: subprocess.CompletedProcess  # `trial rerun <complete> --json`
    rerun_pruned: subprocess.CompletedProcess  # `trial rerun <pruned>`


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Launched:
    """A two-trial study launched through the CLI from a repository with an uncommitted change; then its study file
    is edited (a rerun must use the recorded study) and both trials are rerun side by side. The reruns read the
    study and add reruns/<number>-0; the tests share all of it and leave it as they found it."""
    repo = make_repo(tmp_path_factory.mktemp("record") / "code")
    study_file = write_study(repo, "rec")
    out = run_cli("study", "launch", str(study_file), "--no-progress", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    study_dir = repo / "runs" / "rec"
    complete, pruned = trial_in(study_dir, "COMPLETE"), trial_in(study_dir, "PRUNED")
    study_file.write_text(study_file.read_text().replace("max_epochs: 3", "max_epochs: 5"))
    reruns = run_cli_all(("trial", "rerun", str(study_dir), str(complete), "--json"),
                         ("trial", "rerun", str(study_dir), str(pruned)), timeout=300)
    return Launched(repo, git(repo, "rev-parse", "HEAD"), complete, pruned, *reruns)


def trial_in(study_dir: Path, state: str) -> int:
    """The number of the study's trial in ``state`` (one each: see write_study)."""
    (number,) = [int(p.parent.name) for p in (study_dir / "trials").glob("*/summary.json")
                 if json.loads(p.read_text())["state"] == state]
    return number


def record(study_dir: Path, number: int) -> dict[str, Any]:
    return json.loads((study_dir / "trials" / str(number) / "record.json").read_text())


@pytest.mark.slow
def test_record_holds_what_a_rerun_needs(launched):
    study_dir = launched.repo / "runs" / "rec"
    study = optuna.load_study(study_name="rec", storage=f"sqlite:///{study_dir / 'study.db'}")
    for trial in study.get_trials():
        rec = record(study_dir, trial.number)
        assert rec["schema_version"] == 1 and rec["study"] == "rec" and rec["trial"] == trial.number
        assert rec["params"] == trial.params
        assert rec["seed"] == {"trainer": 0, "sampler": 1}
        assert rec["sampler"] == {"name": "grid", "seed": 1, "worker": 0, "worker_seed": 1}
        assert rec["spec"]["raw"]["trainer"]["max_epochs"] == 3 and rec["spec"]["base_dir"] == str(launched.repo)
        (repo,) = rec["code"]["repos"]
        assert repo["root"] == str(launched.repo) and repo["commit"] == launched.head and repo["branch"] == "main"
        assert repo["dirty"] is True and repo["untracked"] == ["helper_untracked.py"]  # not runs/
        assert rec["code"]["components"]["model"]["file"] == str(launched.repo / "model.py")
        patch = (study_dir / repo["diff"]).read_text()
        assert f"+{MARKER}" in patch and "+HELPER = 'untracked'" in patch
        lines = (study_dir / rec["packages"]["freeze"]).read_text().splitlines()
        assert "torch==2.13.0+cpu" in lines and any(line.startswith("lightning==2.6.6") for line in lines)
        assert rec["packages"]["count"] == len(lines)
        assert "-m sweeplight._worker work" in " ".join(rec["command"]["worker"]["argv"])
        assert "-m sweeplight.cli study launch" in " ".join(rec["command"]["launch"]["argv"])
        assert rec["slurm"] is None and rec["torch_threads"] >= 1 and rec["versions"]["optuna"] == optuna.__version__
    # One package list and one patch for the worker, not one per trial.
    assert len(list((study_dir / "env").glob("freeze-*.txt"))) == 1
    assert len(list((study_dir / "env").glob("diff-*.patch"))) == 1


@pytest.mark.slow
def test_rerun_reproduces_the_objective_exactly(launched):
    study_dir = launched.repo / "runs" / "rec"
    number, out = launched.complete, launched.rerun_complete  # run after the study file was edited (the fixture)
    assert "max_epochs: 5" in (launched.repo / "rec.yaml").read_text()
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    result = json.loads(out.stdout)
    original = json.loads((study_dir / "trials" / str(number) / "summary.json").read_text())
    assert result["reproduced"] is True and result["difference"] == 0 and result["rerun_state"] == "COMPLETE"
    assert result["original_value"] == original["objective"]["value"] == result["rerun_value"]
    assert result["epochs"] == [3, 3] and "warning: code" not in out.stderr and "warning: packages" not in out.stderr
    assert result["directory"] == str(study_dir / "reruns" / f"{number}-0")  # the trial's first rerun
    rerun = json.loads((study_dir / "reruns" / f"{number}-0" / "summary.json").read_text())
    assert rerun["objective"]["value"] == original["objective"]["value"] and rerun["params"] == original["params"]
    assert [h["val_loss"] for h in rerun["history"]] == [h["val_loss"] for h in original["history"]]
    assert json.loads((study_dir / "reruns" / f"{number}-0" / "rerun.json").read_text())["reproduced"] is True
    study = optuna.load_study(study_name="rec", storage=f"sqlite:///{study_dir / 'study.db'}")
    assert len(study.get_trials()) == 2  # the study is untouched


@pytest.mark.slow
def test_rerun_of_a_pruned_trial_stops_where_it_was_pruned(launched):
    study_dir = launched.repo / "runs" / "rec"
    number, out = launched.pruned, launched.rerun_pruned
    original = json.loads((study_dir / "trials" / str(number) / "summary.json").read_text())
    assert original["epochs"] == 2 and original["params"] == {"lr": 1e-5}
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert f"rerun:      PRUNED {original['objective']['value']:.10g} (2 epochs)" in out.stdout
    assert "reproduced: yes (equal)" in out.stdout


@pytest.mark.slow
def test_rerun_with_other_params_and_code_is_not_reproduced(launched):
    """Changes the trial's record and commits the code change, and puts both back afterwards (the other tests read
    them)."""
    repo, number = launched.repo, launched.complete
    study_dir = repo / "runs" / "rec"
    path = study_dir / "trials" / str(number) / "record.json"
    saved = path.read_text()
    rec = json.loads(saved)
    rec["params"]["lr"] = 1e-7  # too small to learn anything in three epochs
    try:
        path.write_text(json.dumps(rec))
        git(repo, "commit", "-q", "-am", "the change, committed")
        try:
            out = run_cli("trial", "rerun", str(repo / "rec.yaml"), str(number), timeout=300)
            head = git(repo, "rev-parse", "HEAD")
        finally:
            git(repo, "reset", "-q", "HEAD~1")  # uncommitted again, as when the study ran
    finally:
        path.write_text(saved)
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    assert "reproduced: NO (difference" in out.stdout
    assert f"code: {repo} is at commit {head[:12]}" in out.stderr
    assert f"code: the uncommitted changes in {repo} differ" in out.stderr
    # beside the fixture's rerun of the same trial, not over it
    assert len(list((study_dir / "reruns").glob(f"{number}-*/summary.json"))) == 2
    assert git(repo, "rev-parse", "HEAD") == launched.head and git(repo, "status", "--porcelain", "model.py")


@pytest.mark.slow
def test_rerun_of_a_missing_trial_is_one_line_exit_2(launched):
    out = run_cli("trial", "rerun", str(launched.repo / "runs" / "rec"), "7")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: trial 7: no such trial in {launched.repo / 'runs' / 'rec'} (trials: 0-1); give one of those numbers"]


@pytest.mark.slow
def test_slurm_trial_records_its_job(slurm_array_study):
    path, _ = slurm_array_study  # 4 trials as a SLURM job array of 2 workers (conftest.py), deterministic
    study_dir = path.parent / "runs" / "tiny"
    for number in (0, 1, 2, 3):
        slurm = record(study_dir, number)["slurm"]
        summary = json.loads((study_dir / "trials" / str(number) / "summary.json").read_text())
        assert slurm["job_id"] == summary["slurm_job_id"] and slurm["array_task_id"] == summary["slurm_array_task_id"]
        assert slurm["array_task_id"] in ("0", "1") and slurm["array_job_id"] and slurm["partition"] == "debug"
        assert slurm["node"] and slurm["nodelist"] and slurm["cpus_per_task"] == "1"
        assert "-m sweeplight.cli study launch" in " ".join(record(study_dir, number)["command"]["launch"]["argv"])
    out = run_cli("trial", "rerun", str(study_dir), "0", timeout=300)  # locally, from the SLURM trial's record
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]


def test_git_state_patch_recreates_the_working_tree(tmp_path):
    repo = make_repo(tmp_path / "code")
    (repo / "runs").mkdir()
    (repo / "runs" / "noise.json").write_text("{}\n")
    state = git_state(repo, exclude=repo / "runs")
    assert state["commit"] == git(repo, "rev-parse", "HEAD") and state["dirty"] is True
    assert state["untracked"] == ["helper_untracked.py"] and state["untracked_not_in_patch"] == []
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, timeout=30)
    (tmp_path / "changes.patch").write_text(state["patch"])
    git(clone, "apply", str(tmp_path / "changes.patch"))
    for name in ("model.py", "helper_untracked.py"):
        assert (clone / name).read_text() == (repo / name).read_text()


def test_git_state_outside_a_repository_or_without_git(tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_state(plain) is None
    repo = make_repo(tmp_path / "code")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))  # git is not installed
    assert git_state(repo) is None


def test_freeze_lists_installed_packages_like_pip():
    text = freeze()
    packages = parse_freeze(text)
    assert packages["torch"] == "torch==2.13.0+cpu" and packages["optuna"] == f"optuna=={optuna.__version__}"
    assert packages["sweeplight"].startswith("sweeplight==")
    names = [line.split("==")[0].split(" @ ")[0].lower() for line in text.splitlines()]
    assert names == sorted(names, key=lambda n: n.replace("_", "-")) and len(names) == len(set(names))


def test_trial_help_lists_rerun():
    out = run_cli("trial", "rerun", "--help")
    assert out.returncode == 0 and "--tolerance" in out.stdout and "0 reproduced, 1 not reproduced" in out.stdout
