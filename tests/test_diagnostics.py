"""diagnostics: in the study file: validation, each diagnostic on a real Trainer, nothing added when off, and a running
trial's wall-time estimate in `study status` while the study runs through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from lightning.pytorch import Callback

from sweeplight._check import check_spec
from sweeplight._diagnostics import duration_text, eta_fields
from sweeplight._diagnostics_spec import Diagnostics, ProfilerSchedule
from sweeplight._errors import SpecError
from sweeplight._samplers import build_sampler
from sweeplight._space import sample
from sweeplight._spec import load_spec
from sweeplight._trial import run_trial

from .conftest import REPO, TOY, run_cli

optuna.logging.set_verbosity(optuna.logging.WARNING)
WATCHED = REPO / "tests" / "assets" / "diagnostics_models.py"
FIXED = {"lr": 0.01, "width": 32, "optimizer": "adam"}
# Hooks Lightning calls on every training step: a callback that overrides one adds work to each step.
STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
              "on_before_optimizer_step", "on_before_zero_grad")


@pytest.mark.parametrize(("section", "field", "message"), [
    ({"grad_nrom": True}, "diagnostics.grad_nrom", "did you mean 'grad_norm'"),
    ({"grad_norm": "yes"}, "diagnostics.grad_norm", "expected true or false, got string 'yes'"),
    ({"profiler": {"step": 3}}, "diagnostics.profiler.step", "did you mean 'steps'"),
    ({"profiler": {"steps": 0}}, "diagnostics.profiler.steps", "must be >= 1, got 0"),
    ({"profiler": "on"}, "diagnostics.profiler", "expected true, false or {wait: 1, warmup: 1, steps: 5}"),
    ({"param_histograms": 3}, "diagnostics.param_histograms", "expected true, false or {every: N}"),
    ({"param_histograms": {"every": 0}}, "diagnostics.param_histograms.every", "must be >= 1"),
    ({"model_summary": {"max_depth": 0}}, "diagnostics.model_summary.max_depth", "model_summary: false"),
    ("all", "diagnostics", "expected a mapping"),
])
def test_bad_sections_name_the_field_and_the_fix(make_study, section, field, message):
    with pytest.raises(SpecError) as caught:
        load_spec(make_study({"diagnostics": section}))
    assert caught.value.field == field and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_defaults_false_and_overrides(make_study):
    assert load_spec(make_study()).diagnostics.enabled == ["model_summary", "system_info", "gpu_memory",
                                                           "epoch_timing"]
    assert load_spec(make_study({"diagnostics": False})).diagnostics.enabled == []
    spec = load_spec(make_study(), ["diagnostics.profiler={steps: 2}", "diagnostics.param_histograms={every: 3}"])
    assert spec.diagnostics == Diagnostics(profiler=ProfilerSchedule(wait=1, warmup=1, steps=2), param_histograms=3)
    result = run_cli("study", "validate", str(make_study({"diagnostics": {"gpu_memroy": False}})))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: diagnostics.gpu_memroy: unknown key (did you mean 'gpu_memory'?); allowed keys here: grad_norm, "
        "param_histograms, model_summary, system_info, gpu_memory, profiler, epoch_timing"]


def _trial(make_study, diagnostics, *, epochs: int = 2, trainer: dict | None = None):
    spec = load_spec(make_study({"model": {"class": f"{WATCHED}:WatchedMLP"}, "diagnostics": diagnostics,
                                 "trainer": {"max_epochs": epochs, **(trainer or {})}}))
    components = check_spec(spec)
    study = optuna.create_study(direction="maximize", sampler=build_sampler(spec))
    study.enqueue_trial(FIXED)
    trial = study.ask()
    directory = spec.directory / "trials" / str(trial.number)
    outcome = run_trial(spec, components, number=trial.number, params=sample(spec.search_space, trial), trial=trial,
                        trial_dir=directory)
    assert outcome.state == "COMPLETE", outcome.summary["error"]
    return outcome.summary, directory, components.model_cls


def _step_hooks(callbacks: list) -> set[tuple[str, str]]:
    return {(type(cb).__name__, hook) for cb in callbacks for hook in STEP_HOOKS
            if getattr(type(cb), hook) is not getattr(Callback, hook) or hook in vars(cb)}


def test_everything_on_records_real_diagnostics(make_study, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary, directory, model_cls = _trial(make_study, {
        "grad_norm": True, "param_histograms": True, "model_summary": {"max_depth": 2},
        "profiler": {"wait": 1, "warmup": 1, "steps": 2}}, trainer={"log_every_n_steps": 5})
    names = {type(cb).__name__ for cb in model_cls.callbacks}
    assert {"ModelSummaryRecorder", "GradNorm", "ParamHistograms", "StepProfiler"} <= names
    assert "ModelSummary" not in names  # Lightning's own table is replaced by ours, not printed twice
    profiler = next(cb for cb in model_cls.callbacks if type(cb).__name__ == "StepProfiler")
    assert "on_train_batch_end" not in vars(profiler)  # done after 4 steps: its step hooks are gone

    # Gradient norms: the history's per-epoch mean and max are those of every step, computed by the module itself.
    for entry in summary["history"]:
        norms = [n for epoch, n in model_cls.grad_norms if epoch == entry["epoch"]]
        assert len(norms) == 20  # 1,258 training images in batches of 64
        assert entry["grad_norm_mean"] == pytest.approx(sum(norms) / len(norms), rel=1e-4)
        assert entry["grad_norm_max"] == pytest.approx(max(norms), rel=1e-5)
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    logged = events.Scalars("grad_norm")
    assert [e.step for e in logged] == list(range(0, 40, 5))  # every log_every_n_steps optimizer steps
    all_norms = [n for _, n in model_cls.grad_norms]
    assert [e.value for e in logged] == pytest.approx([all_norms[s] for s in range(0, 40, 5)], rel=1e-5)
    assert len(events.Scalars("grad_norm_max_epoch")) == 2
    histograms = events.Tags()["histograms"]
    assert {"params/net.0.weight", "grads/net.0.weight", "params/net.6.bias", "grads/net.6.bias"} <= set(histograms)
    assert [h.step for h in events.Histograms("params/net.0.weight")] == [20, 40]  # at the end of each epoch
    assert [h.step for h in events.Histograms("grads/net.0.weight")] == [0, 20]  # at each epoch's first step
    histogram = next(cb for cb in model_cls.callbacks if type(cb).__name__ == "ParamHistograms")
    assert "on_before_optimizer_step" not in vars(histogram)  # one step per epoch, then gone
    assert events.Histograms("params/net.0.weight")[0].histogram_value.num == 64 * 32

    # The model summary: structured, with the model's real parameter count.
    model = model_cls(**FIXED)
    real = sum(p.numel() for p in model.parameters())
    table = summary["model_summary"]
    assert real == summary["param_count"] == table["trainable_params"] and table["non_trainable_params"] == 0
    layers = {layer["name"]: layer for layer in table["layers"]}
    assert layers["net"]["params"] == real and layers["net"]["type"] == "Sequential"
    assert layers["net.0"]["params"] == 64 * 32 + 32 and layers["net.0"]["type"] == "Linear"
    assert table["size_mb"] == pytest.approx(real * 4 / 1e6, rel=1e-3)
    assert "Trainable params" in table["text"]

    system = summary["system"]
    assert system["cpu_count"] == os.cpu_count() and system["cpu"] and system["memory_gb"] > 0.5
    assert system["cuda_available"] is torch.cuda.is_available() and system["cuda"] == torch.version.cuda
    if not torch.cuda.is_available():
        assert system["gpus"] == [] and all("gpu_mem" not in key for key in summary["history"][0])

    report = Path(summary["profiler"]["report"])
    assert report.parent == directory / "profiler" and report.is_file()
    text = report.read_text()
    assert "aten::addmm" in text and "training steps 2 to 3" in text
    trace = json.loads(Path(summary["profiler"]["trace"]).read_text())
    assert any(event.get("name") == "aten::addmm" for event in trace["traceEvents"])

    estimate = summary["wall_time_estimate"]
    assert estimate["epoch"] == 1 and estimate["max_epochs"] == 2 and estimate["remaining_s"] == 0
    assert 0 < estimate["total_s"] <= summary["wall_time_s"]
    out = capsys.readouterr().out
    assert "trial 0 model summary:" in out and "| net.0 " in out
    assert "trial 0 epoch 1:" in out and "eta: 0.0 s left" in out


def test_off_adds_no_callback_and_defaults_no_step_hook(make_study):
    off, _, model_cls = _trial(make_study, False, epochs=1)
    baseline = {type(cb).__name__ for cb in model_cls.callbacks}
    assert baseline == {"TrialMonitor", "ModelCheckpoint", "LastCheckpoint", "LearningRateMonitor", "EarlyStopping"}
    hooks_off = _step_hooks(model_cls.callbacks)
    assert all(off[key] is None for key in ("model_summary", "system", "profiler", "wall_time_estimate"))
    assert not any(key.startswith(("grad_norm", "gpu_mem")) for key in off["history"][0])

    default, _, model_cls = _trial(make_study, None, epochs=1)
    assert {type(cb).__name__ for cb in model_cls.callbacks} == baseline | {"ModelSummaryRecorder"}
    assert _step_hooks(model_cls.callbacks) == hooks_off  # the cheap diagnostics add nothing to a step
    assert default["model_summary"]["trainable_params"] == default["param_count"]
    assert default["system"]["cpu_count"] == os.cpu_count()


def test_eta_fields_count_down_from_the_published_estimate():
    fields = eta_fields({"max_epochs": 10, "epoch_s": 2.0, "remaining_s": 16.0, "total_s": 20.0, "at": 100.0},
                        started=96.0, now=101.0)
    assert fields == {"elapsed_s": 5.0, "max_epochs": 10, "epoch_s": 2.0, "remaining_s": 15.0, "total_s": 20.0}
    assert eta_fields(None, started=96.0, now=101.0)["remaining_s"] is None
    assert [duration_text(s) for s in (4.25, 42, 185, 7800)] == ["4.2 s", "42 s", "3m05s", "2h10m"]


@pytest.mark.parametrize("storage", ["study.db", "study.log", "postgres"])
def test_heartbeat_carries_the_estimate_to_both_status_readers(make_study, tmp_path, request, storage):
    """The worker's heartbeat thread writes a published estimate with its beat, on each storage; status reads it
    without Optuna (SQLite, PostgreSQL) and through it (a journal file)."""
    from sweeplight._diagnostics import PROGRESS, PROGRESS_ATTR
    from sweeplight._heartbeat import HEARTBEAT, Heartbeat
    from sweeplight._retrying import unwrapped
    from sweeplight._status import format_status, read_status
    from sweeplight._storage import create_or_load_study

    url = request.getfixturevalue("postgres_url") if storage == "postgres" else str(tmp_path / storage)
    spec = load_spec(make_study({"storage": url}))
    study = create_or_load_study(spec)
    trial = study.ask()
    trial.report(0.5, step=3)
    study._storage.set_trial_system_attr(trial._trial_id, "sweeplight:host", "node07")
    beats = optuna.load_study(study_name=spec.name, storage=unwrapped(study._storage))  # as a worker's heartbeat
    with Heartbeat(beats, 0.2, spec.directory) as heart, heart.beating(trial._trial_id):
        PROGRESS.publish({"epoch": 3, "max_epochs": 10, "epoch_s": 2.0, "remaining_s": 12.0, "total_s": 20.0,
                          "at": time.time()})
        deadline = time.monotonic() + 20
        while PROGRESS_ATTR not in study._storage.get_trial_system_attrs(trial._trial_id):
            assert time.monotonic() < deadline, "the heartbeat never wrote the estimate"
            time.sleep(0.1)
    attrs = study._storage.get_trial_system_attrs(trial._trial_id)
    assert attrs[PROGRESS_ATTR]["max_epochs"] == 10 and attrs[HEARTBEAT] > time.time() - 20
    running = read_status(spec).running[0]
    assert (running.last_epoch, running.max_epochs, running.epoch_s) == (3, 10, 2.0)
    assert 0 < running.remaining_s <= 12.0 and running.elapsed_s >= 0
    assert running.total_s == pytest.approx(running.elapsed_s + running.remaining_s, abs=0.2)
    assert "epoch 3 (4/10) val_acc=0.5  elapsed " in format_status(read_status(spec))


@pytest.mark.slow
def test_running_trial_estimate_in_status_through_the_cli(make_study):
    """A trial of 1 s epochs launched in the background: `study status` shows its epoch, elapsed and remaining time
    while it runs, and the estimate comes true."""
    path = make_study({"model": {"class": f"{TOY}:SlowMLP", "args": {"epoch_seconds": 1.0}},
                       "budget": {"n_trials": 1}, "trainer": {"max_epochs": 6, "early_stopping": False},
                       "executor": {"heartbeat_interval": 1}})
    spec = load_spec(path)
    output = path.parent / "launch.out"
    sink = output.open("w")
    launch = subprocess.Popen([sys.executable, "-m", "sweeplight.cli", "study", "launch", str(path), "--no-progress"],
                              cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    try:
        running, text, deadline = None, "", time.monotonic() + 90
        while time.monotonic() < deadline and launch.poll() is None:
            time.sleep(0.5)
            if not (spec.directory / "spec.json").is_file():
                continue
            status = json.loads(run_cli("study", "status", str(spec.directory), "--json").stdout)
            if status["running"] and status["running"][0]["remaining_s"] is not None:
                running = status["running"][0]
                text = run_cli("study", "status", str(spec.directory)).stdout
                break
        assert running is not None, "no estimate while the trial ran"
        assert running["max_epochs"] == 6 and running["last_epoch"] >= 1
        assert 1.0 <= running["epoch_s"] < 4.0  # each epoch sleeps 1 s
        assert 0 < running["remaining_s"] <= 5 * running["epoch_s"]
        assert running["total_s"] == pytest.approx(running["elapsed_s"] + running["remaining_s"], abs=0.2)
        assert "/6) val_acc=" in text and "left of" in text and "elapsed" in text
        launch.wait(timeout=120)
    finally:
        if launch.poll() is None:
            launch.kill()
        sink.close()
    assert launch.returncode == 0, output.read_text()
    summary = json.loads((spec.directory / "trials" / "0" / "summary.json").read_text())
    estimate = summary["wall_time_estimate"]
    assert estimate["epoch"] == 1 and summary["epochs"] == 6
    assert estimate["total_s"] == pytest.approx(summary["wall_time_s"], rel=0.35)  # made after 2 of 6 epochs
    log = (spec.directory / "workers" / "worker-0.log").read_text()
    assert "trial 0 epoch 1:" in log and "left, ~" in log and "trial 0 model summary:" in log
