"""Run one trial: data → model → callbacks → logger → Trainer → (LR finder) → fit → test → results.

The same function runs on every DDP rank; only rank 0 is handed the Optuna trial and writes results.
"""

from __future__ import annotations

import importlib
import math
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeplight import _fastpath
from sweeplight._callbacks import (
    HISTORY_FILE,
    TrialPrunedSignal,
    last_checkpoint_class,
    reported_values,
    reports_best_so_far,
    trial_monitor_class,
)
from sweeplight._check import Components, split_params
from sweeplight._constraints import own_metrics, score
from sweeplight._diagnostics import TrialDiagnostics, summary_fields_without
from sweeplight._errors import TrialConfigError
from sweeplight._spec import StudySpec
from sweeplight._summary import (
    SCHEMA_VERSION,
    git_commit,
    host_context,
    peak_rss_mb,
    reset_peak_rss,
    versions,
)
from sweeplight._trainer_spec import TrainerConfig, trainer_for_trial
from sweeplight._trial_resume import weights_only


class Interrupted(BaseException):
    """SIGTERM/SIGINT reached the worker. A BaseException so user code's ``except Exception`` cannot swallow it."""


@dataclass(frozen=True)
class Resume:
    """Continue an interrupted trial's training in a new trial, from its ``last.ckpt``."""

    from_trial: int
    checkpoint: Path
    history: list[dict[str, Any]]  # the old trial's validated epochs, up to the checkpoint
    restarts: int = 1
    epochs_lost: int = 0  # validated epochs after the checkpoint, trained again (the epoch in progress aside)


@dataclass
class TrialOutcome:
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | None
    summary: dict[str, Any] = field(default_factory=dict)
    config_error: TrialConfigError | None = None  # the study itself is misconfigured: stop every worker
    interrupted: bool = False
    values: list[float] | None = None  # every objective's value (multi-objective studies); value is the first

    @property
    def told(self) -> float | list[float] | None:
        """What the study is told for a COMPLETE trial: the value, or every objective's value."""
        return self.values if self.values is not None and len(self.values) > 1 else self.value


def run_trial(
    spec: StudySpec,
    components: Components,
    *,
    number: int,
    params: Mapping[str, Any],
    trial: Any,
    trial_dir: Path,
    rank: int = 0,
    resume: Resume | None = None,
) -> TrialOutcome:
    """Train one configuration. Never raises for a failing trial: the failure is the outcome."""
    pl = importlib.import_module(components.namespace)
    started, clock = time.time(), time.perf_counter()
    reset_peak_rss()
    _reset_gpu_peak()
    state, error, config_error, stop_reason, interrupted = "FAIL", None, None, "failed", False
    monitor = trainer = early_stopping = checkpoint = config = diagnostics = None
    lr_info: dict[str, Any] | None = None
    test_metrics: dict[str, float] = {}
    param_count = None
    try:
        config = trainer_for_trial(spec.raw.get("trainer"), spec.objective, params)
        model_kwargs, data_kwargs, _ = split_params(spec, components, params)
        pl.seed_everything(config.seed, workers=True, verbose=False)
        datamodule = components.data_cls(**data_kwargs)
        model = components.model_cls(**model_kwargs)
        param_count = sum(p.numel() for p in model.parameters())
        required = (config.early_stopping["monitor"],) if config.early_stopping else ()
        diagnostics = TrialDiagnostics(pl, spec.diagnostics, trial_dir=trial_dir, number=number, trial_started=clock,
                                       rank=rank, stops_early=bool(config.early_stopping) or spec.pruner.name != "none")
        reporting = trial if not spec.multi_objective else None  # Optuna cannot report or prune several objectives
        monitor = trial_monitor_class(components.namespace)(
            metric=spec.objective.metric, required=required, trial=reporting, number=number, verbose=rank == 0,
            history_path=trial_dir / HISTORY_FILE if rank == 0 else None, best_so_far=reports_best_so_far(spec),
            maximize=spec.objective.direction == "maximize", extras=diagnostics.extras, clock=diagnostics.clock)
        if resume is not None:
            monitor.history = [dict(h) for h in resume.history]
            if reporting is not None:
                known = trial.storage.get_trial(trial._trial_id).intermediate_values  # the same trial resumed
                for epoch, value in _reported(spec, resume.history).items():  # the pruner sees the whole curve
                    if value is not None and epoch not in known:
                        trial.report(value, step=epoch)
        callbacks, early_stopping, checkpoint = _callbacks(pl, config, monitor, trial_dir, spec)
        callbacks.extend(diagnostics.callbacks)
        logger = pl.loggers.TensorBoardLogger(save_dir=str(trial_dir.parent), name="", version=trial_dir.name,
                                              default_hp_metric=False)
        try:
            trainer = pl.Trainer(
                max_epochs=config.max_epochs, min_epochs=config.min_epochs, precision=config.precision,
                accelerator=config.accelerator, devices=config.devices, strategy=config.strategy,
                callbacks=callbacks, logger=logger, default_root_dir=str(trial_dir),
                enable_progress_bar=config.enable_progress_bar,
                **_with_cluster(pl, {**diagnostics.trainer_defaults, **config.args}, spec))
        except Exception as exc:
            raise TrialConfigError(f"trainer: Lightning rejected the configuration: {exc}") from exc
        with _fastpath.installed(components.namespace):
            if config.lr_find and resume is None:
                lr_info = _lr_find(pl, trainer, model, datamodule, config, spec, params)
            ckpt_path = str(resume.checkpoint) if resume is not None else None
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path,
                        weights_only=weights_only(ckpt_path) if ckpt_path else None)
            # Before the test: testing the best checkpoint restores EarlyStopping's state from it, resetting the epoch
            # it stopped at whenever the best epoch came before the stop (always, with min_delta 0).
            stop_reason = _stop_reason(trainer, early_stopping, config)
            test_metrics = _test(pl, trainer, model, datamodule, checkpoint)
        state = "COMPLETE"
    except Interrupted:
        interrupted, stop_reason, error = True, "interrupted", "worker interrupted (SIGTERM/SIGINT)"
    except TrialPrunedSignal:
        state, stop_reason = "PRUNED", "pruned"
    except TrialConfigError as exc:
        config_error, error = exc, str(exc)
    except Exception as exc:  # noqa: BLE001 - user code may raise anything; the trial fails, the worker goes on
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-8)}"
    history = monitor.history if monitor is not None else []
    value = _objective_value(spec, history, state)
    if state == "COMPLETE" and value is None:
        state, stop_reason = "FAIL", "failed"
        error = f"no validation epoch logged {spec.objective.metric!r}; the trial cannot be scored"
    own = own_metrics(param_count, history)
    scored = score(spec.all_objectives, spec.constraints, value,
                   _best_metrics(history, spec) if spec.objective.value == "best" else _last(history), own)
    if state == "COMPLETE" and scored.missing is not None:  # another objective or a constraint cannot be scored
        state, stop_reason, error = "FAIL", "failed", scored.missing
        if config_error is None and "never logs" in scored.missing:
            config_error = TrialConfigError(scored.missing)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "study": spec.name,
        "trial": number,
        "state": state,
        "params": dict(params),
        "objective": {"metric": spec.objective.metric, "direction": spec.objective.direction,
                      "which": spec.objective.value, "value": value},
        "objectives": [{"metric": o.metric, "direction": o.direction,
                        "value": scored.values[i] if scored.values is not None else (value if i == 0 else None)}
                       for i, o in enumerate(spec.all_objectives)],
        "constraints": scored.constraints,  # [{constraint, metric, value, violation}]: violation <= 0 holds
        "feasible": scored.feasible,
        "metrics": {"best": _best_metrics(history, spec), "last": _last(history), "test": test_metrics},
        "history": history,
        "intermediate_values": {str(epoch): value for epoch, value in _reported(spec, history).items()},
        "epochs": len(history),
        "stop_reason": stop_reason,
        "resumed_from": None if resume is None else {
            "trial": resume.from_trial, "checkpoint": str(resume.checkpoint),
            "epoch": resume.history[-1]["epoch"] if resume.history else None},
        "restarts": 0 if resume is None else resume.restarts,
        "epochs_lost": 0 if resume is None else resume.epochs_lost,
        "error": error,
        "checkpoints": {"best": _path(checkpoint, "best_model_path"), "last": _last_checkpoint(trial_dir)},
        "lr_find": lr_info,
        "swa": config.swa if config else None,
        "precision": config.precision if config else None,
        "accelerator": config.accelerator if config else None,
        "devices": config.devices if config else None,
        "strategy": config.strategy if config else None,
        "seed": config.seed if config else None,
        "param_count": param_count,
        "epoch_time_s": own.get("epoch_time"),
        "wall_time_s": round(time.perf_counter() - clock, 3),
        "epoch_times_s": [h["time_s"] for h in history],
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mem_mb": diagnostics.gpu_peak_mb(_gpu_peak()) if diagnostics is not None else _gpu_peak(),
        "torch_threads": _torch_threads(),
        **(diagnostics.summary_fields() if diagnostics is not None else summary_fields_without(spec.diagnostics)),
        "started_at": started,
        "finished_at": time.time(),
        "versions": versions(),
        "git_commit": git_commit(str(spec.base_dir)),
        "lightning_namespace": components.namespace,
        **host_context(),
    }
    return TrialOutcome(state=state, value=value, summary=summary, config_error=config_error,
                        interrupted=interrupted, values=scored.values)


def _callbacks(pl: Any, config: TrainerConfig, monitor: Any, trial_dir: Path, spec: StudySpec) -> tuple:
    mode = "max" if spec.objective.direction == "maximize" else "min"
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=str(trial_dir / "checkpoints"), filename="best-{epoch:03d}", monitor=spec.objective.metric,
        mode=mode, save_top_k=config.checkpoint["save_top_k"])
    callbacks = [monitor, checkpoint, pl.callbacks.LearningRateMonitor(logging_interval="epoch")]
    if config.checkpoint["save_last"]:  # after the best one: it may link to the file that one just wrote
        callbacks.insert(2, last_checkpoint_class(pl.__name__)(str(trial_dir / "checkpoints"), checkpoint))
    early_stopping = None
    if config.early_stopping:
        early_stopping = pl.callbacks.EarlyStopping(**config.early_stopping)
        callbacks.append(early_stopping)
    if config.swa:
        swa = config.swa
        callbacks.append(pl.callbacks.StochasticWeightAveraging(
            swa_lrs=swa["lrs"], swa_epoch_start=swa["epoch_start"], annealing_epochs=swa["annealing_epochs"],
            annealing_strategy=swa["annealing_strategy"]))
    return callbacks, early_stopping, checkpoint


def _with_cluster(pl: Any, args: dict[str, Any], spec: StudySpec) -> dict[str, Any]:
    """Trainer arguments plus the cluster environment. Inside a SLURM job Lightning would pick
    ``SLURMEnvironment(auto_requeue=True)`` and requeue on SIGUSR1 itself; the worker owns signals, so a SLURM
    worker gets ``auto_requeue=False`` and local workers inside an allocation get the plain environment (their DDP
    ranks are processes the worker starts, not SLURM tasks)."""
    environments = importlib.import_module(f"{pl.__name__}.plugins.environments")
    if not environments.SLURMEnvironment.detect():
        return args
    from sweeplight._slurm_worker import slurm_worker

    env = environments.SLURMEnvironment(auto_requeue=False) if slurm_worker() else environments.LightningEnvironment()
    plugins = args.get("plugins") or []
    return {**args, "plugins": [*(plugins if isinstance(plugins, list) else [plugins]), env]}


def _lr_find(pl: Any, trainer: Any, model: Any, datamodule: Any, config: TrainerConfig, spec: StudySpec,
             params: Mapping[str, Any]) -> dict[str, Any]:
    """Run Lightning's LR finder; use its suggestion unless the learning rate is itself searched."""
    options = config.lr_find or {}
    attr = options.get("attr") or next((a for a in ("lr", "learning_rate") if hasattr(model, a)), None)
    if attr is None or not hasattr(model, attr):
        raise TrialConfigError("trainer.lr_find: the model has no 'lr' or 'learning_rate' attribute; set self.lr in "
                               "__init__ and use it in configure_optimizers, or name it with trainer.lr_find.attr")
    searched = any(name.split(".")[-1] == attr and not name.startswith(("data.", "trainer.")) for name in params)
    finder = pl.tuner.Tuner(trainer).lr_find(
        model, datamodule=datamodule, min_lr=options["min_lr"], max_lr=options["max_lr"],
        num_training=options["num_training"], mode=options["mode"], attr_name=attr, update_attr=not searched)
    suggestion = finder.suggestion() if finder is not None else None
    return {"suggestion": suggestion, "used": bool(suggestion is not None and not searched), "attr": attr,
            "lr": float(getattr(model, attr))}


def _test(pl: Any, trainer: Any, model: Any, datamodule: Any, checkpoint: Any) -> dict[str, float]:
    """Test the best checkpoint when the data module has test data and the model a test_step."""
    helpers = importlib.import_module(f"{pl.__name__}.utilities.model_helpers")
    if not (helpers.is_overridden("test_step", model) and helpers.is_overridden("test_dataloader", datamodule)):
        return {}
    ckpt_path = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    results = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False,
                           weights_only=weights_only(ckpt_path) if ckpt_path else None)
    merged: dict[str, float] = {}
    for result in results or []:
        merged.update({k: float(v) for k, v in result.items()})
    return merged


def _stop_reason(trainer: Any, early_stopping: Any, config: TrainerConfig) -> str:
    if early_stopping is not None and early_stopping.stopped_epoch > 0:
        return "early_stopping"
    if config.args.get("fast_dev_run"):
        return "fast_dev_run"
    if trainer.current_epoch >= config.max_epochs:
        return "max_epochs"
    for limit in ("max_steps", "max_time"):
        if config.args.get(limit) not in (None, -1):
            return limit
    return "max_epochs" if not trainer.interrupted else "interrupted"


def _reported(spec: StudySpec, history: list[dict[str, Any]]) -> dict[int, float | None]:
    """Epoch -> the value reported to the study for it (the metric, or its best so far: see _callbacks)."""
    values = reported_values([h.get(spec.objective.metric) for h in history], best_so_far=reports_best_so_far(spec),
                             maximize=spec.objective.direction == "maximize")
    return {h["epoch"]: value for h, value in zip(history, values, strict=True)}


def _objective_value(spec: StudySpec, history: list[dict[str, Any]], state: str) -> float | None:
    values = [h[spec.objective.metric] for h in history if spec.objective.metric in h]
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    if state == "PRUNED":  # its last reported value, as Optuna records it
        return [v for v in _reported(spec, history).values() if v is not None and math.isfinite(v)][-1]
    if spec.objective.value == "last":
        return values[-1]
    return max(values) if spec.objective.direction == "maximize" else min(values)


def _best_metrics(history: list[dict[str, Any]], spec: StudySpec) -> dict[str, Any]:
    """All metrics of the epoch where the objective was best."""
    scored = [h for h in history if h.get(spec.objective.metric) is not None]
    if not scored:
        return {}
    pick = max if spec.objective.direction == "maximize" else min
    return dict(pick(scored, key=lambda h: h[spec.objective.metric]))


def _last(history: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(history[-1]) if history else {}


def _last_checkpoint(trial_dir: Path) -> str | None:
    path = trial_dir / "checkpoints" / "last.ckpt"
    return str(path) if path.is_file() else None


def _path(checkpoint: Any, attr: str) -> str | None:
    value = getattr(checkpoint, attr, "") if checkpoint is not None else ""
    return value or None


def _reset_gpu_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _gpu_peak() -> float | None:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _torch_threads() -> int | None:
    """Torch's intra-op threads in this process: workers share the cores out (``OMP_NUM_THREADS``)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None
