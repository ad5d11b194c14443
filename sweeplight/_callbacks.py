"""The callback that ties a Lightning run to its Optuna trial.

Each validation epoch it records the logged metrics and epoch time, checks the objective metric exists (a typo in
``objective.metric`` fails after the first epoch, listing what *was* logged), reports the value to Optuna and asks
the pruner. Under DDP only rank 0 holds the trial; its decision is broadcast so every rank stops together.

What is reported is the metric itself, except with ``objective.value: best`` and a pruner that compares trials by
their value at one step (successive halving, Hyperband): then each epoch reports the best value so far, the value the
trial would score if it stopped there, so one noisy epoch at a rung does not decide the comparison.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplight._errors import TrialConfigError
from sweeplight._summary import write_json_atomic

HISTORY_FILE = "history.json"  # the curve so far, rewritten every epoch
# Pruners that compare trials by the value reported at one step (a rung). The median and percentile pruners already
# take the trial's best value over its steps; a threshold pruner judges the value itself.
RUNG_PRUNERS = frozenset({"successive_halving", "hyperband"})

if TYPE_CHECKING:
    import optuna


class TrialPrunedSignal(Exception):
    """Raised on every rank when the pruner stops the trial; the runner records the trial as PRUNED."""


def reports_best_so_far(spec: Any) -> bool:
    """Whether a study's trials report their best value so far rather than each epoch's value (see above)."""
    pruner = spec.pruner
    if pruner.name == "patient":
        wrapped = pruner.options.get("wrapped")
        name = wrapped.get("name") if isinstance(wrapped, dict) else wrapped
    else:
        name = pruner.name
    return spec.objective.value == "best" and name in RUNG_PRUNERS


def reported_values(values: list[float | None], *, best_so_far: bool, maximize: bool) -> list[float | None]:
    """The values a trial reports for its epochs' objective ``values``: each one, or the best so far. A missing or
    non-finite value is kept as it is (it is never reported: a non-finite value prunes the trial)."""
    if not best_so_far:
        return list(values)
    out: list[float | None] = []
    best: float | None = None
    for value in values:
        if value is not None and math.isfinite(value):
            best = value if best is None else (max(best, value) if maximize else min(best, value))
            out.append(best)
        else:
            out.append(value)
    return out


@functools.cache
def trial_monitor_class(namespace: str) -> type:
    """Build the callback for the module's Lightning package (``lightning.pytorch`` or ``pytorch_lightning``)."""
    pl = importlib.import_module(namespace)

    class TrialMonitor(pl.Callback):
        def __init__(self, *, metric: str, required: tuple[str, ...], trial: optuna.Trial | None, number: int = 0,
                     verbose: bool = True, history_path: Path | None = None, best_so_far: bool = False,
                     maximize: bool = True, extras: list[Any] | tuple[Any, ...] = (), clock: Any = None) -> None:
            self.metric = metric
            self.best_so_far = best_so_far  # report the best value so far (reports_best_so_far)
            self.maximize = maximize
            self.number = number
            self.verbose = verbose  # one line per epoch on stdout (the worker's log)
            self.required = required  # metrics other callbacks monitor (early stopping)
            self.trial = trial  # None on DDP ranks other than 0
            self.history: list[dict[str, Any]] = []
            self.history_path = history_path  # rank 0: the curve so far, for a resume after SIGKILL
            self.pruned = False
            self.offline = False  # the storage was unreachable past the worker's wait: stop reporting
            self.extras = extras  # (trainer, module) -> more values for the epoch's entry (see _diagnostics)
            self.clock = clock  # _diagnostics.EpochClock: the trial's wall-time estimate, or None
            self._epoch_started = time.perf_counter()

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._merge_train_metrics(trainer)
            self._save_history()
            self._epoch_started = time.perf_counter()
            if self.clock is not None:
                self.clock.epoch_started(trainer.current_epoch)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking:
                return
            metrics = {k: v for k, v in _validation_metrics(trainer).items() if v is not None}
            for name in (self.metric, *self.required):
                if name not in metrics:
                    logged = ", ".join(sorted(set(metrics) | set(trainer.callback_metrics))) or "(nothing)"
                    field = "objective.metric" if name == self.metric else "trainer.early_stopping.monitor"
                    raise TrialConfigError(f"{field}: the module never logs {name!r}; metrics logged after the first"
                                           f" validation epoch: {logged}; log it with self.log({name!r}, ...) or "
                                           "pick one of those")
            epoch = trainer.current_epoch
            entry = {"epoch": epoch, "time_s": round(time.perf_counter() - self._epoch_started, 4), **metrics}
            for extra in self.extras:
                entry.update(extra(trainer, pl_module))
            if self.history and self.history[-1]["epoch"] == epoch:
                self.history[-1] = entry  # several validations per epoch: keep the last
            else:
                self.history.append(entry)
            self._print(entry, self.clock.after_epoch(epoch, trainer.max_epochs) if self.clock is not None else "")
            self._save_history()
            prune = False
            if self.trial is not None:
                value = metrics[self.metric]
                prune = not math.isfinite(value) or self._report(self._reported(value), epoch)
            prune = bool(trainer.strategy.broadcast(prune, src=0))
            if prune:
                self.pruned = True
                raise TrialPrunedSignal(f"pruned at epoch {epoch}")

        def _reported(self, value: float) -> float:
            if not self.best_so_far:
                return value
            curve = reported_values([h.get(self.metric) for h in self.history], best_so_far=True,
                                    maximize=self.maximize)  # a resumed trial's history included
            return curve[-1]

        def _report(self, value: float, epoch: int) -> bool:
            """Report to the study and ask the pruner. When the storage stays unreachable past the worker's wait,
            training goes on unpruned: the curve is in the summary, and ``study sync`` reports it later."""
            if self.offline:
                return False
            try:
                self.trial.report(value, step=epoch)
                return self.trial.should_prune()
            except Exception as exc:
                from sweeplight._retrying import is_transient

                if not is_transient(exc):
                    raise
                self.offline = True
                print(f"trial {self.number}: the storage is unreachable; training on without pruning, the results "
                      "stay in summary.json", flush=True)
                return False

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._merge_train_metrics(trainer)

        def _merge_train_metrics(self, trainer: Any) -> None:
            # Lightning reduces an epoch's training metrics after its validation and after the callbacks'
            # on_train_epoch_end, so they are read at the next epoch's start (or at the end of training).
            if not self.history:
                return
            entry = self.history[-1]
            for key, value in trainer.callback_metrics.items():
                scalar = _scalar(value)
                if scalar is not None:
                    entry.setdefault(key, scalar)

        def _save_history(self) -> None:
            # Before the epoch's checkpoint is written (ModelCheckpoint runs after this callback), so a worker
            # killed without warning leaves a curve at least as long as its checkpoint.
            if self.history_path is not None and self.history:
                write_json_atomic(self.history_path, {"history": self.history}, durable=False)

        def _print(self, entry: dict[str, Any], note: str) -> None:
            if self.verbose:
                shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(entry.items()) if k not in ("epoch", "time_s"))
                print(f"trial {self.number} epoch {entry['epoch']}: {shown} ({entry['time_s']:.2f} s){note}",
                      flush=True)

    return TrialMonitor


@functools.cache
def last_checkpoint_class(namespace: str) -> type:
    """Build the ``last.ckpt`` writer for the module's Lightning package."""
    pl = importlib.import_module(namespace)

    class LastCheckpoint(pl.callbacks.ModelCheckpoint):
        """``last.ckpt`` after every epoch, improved or not.

        Lightning's ``save_last=True`` writes it only when a top-k checkpoint was saved, so after a plateau a
        preempted trial would go back to its best epoch instead of its last. When the best checkpoint was written at
        this same step, ``last.ckpt`` becomes a hard link to it: the same bytes, serialised once (Lightning with
        ``save_last=True`` writes them twice). Lightning writes checkpoints to a new file and renames it, so the
        link never sees a half-written file, and deleting the old best leaves ``last.ckpt`` intact.
        """

        def __init__(self, dirpath: str, best: Any) -> None:
            super().__init__(dirpath=dirpath, filename="last", save_top_k=1, enable_version_counter=False)
            self.best = best

        def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
            source = getattr(self.best, "_last_checkpoint_saved", None)
            if (trainer.world_size == 1 and source and getattr(self.best, "_last_global_step_saved", -1)
                    == trainer.global_step and os.path.isfile(source)):
                scratch = f"{filepath}.link"
                with contextlib.suppress(FileNotFoundError):
                    os.remove(scratch)
                try:
                    os.link(source, scratch)
                    os.replace(scratch, filepath)
                except OSError:  # a file system without hard links: write it
                    pass
                else:
                    self._last_global_step_saved = trainer.global_step
                    self._last_checkpoint_saved = filepath
                    return
            super()._save_checkpoint(trainer, filepath)

    return LastCheckpoint


def _validation_metrics(trainer: Any) -> dict[str, float | None]:
    """Metrics logged by this validation run only; ``callback_metrics`` also holds last epoch's training values.

    Lightning exposes the running loop's results only privately, so fall back to ``callback_metrics``.
    """
    try:
        fresh = trainer._results.metrics(False)["callback"]
    except Exception:  # noqa: BLE001 - private API; the fallback is merely less precise
        fresh = trainer.callback_metrics
    return {k: _scalar(v) for k, v in fresh.items()}


def _scalar(value: Any) -> float | None:
    try:
        if hasattr(value, "numel") and value.numel() != 1:
            return None
        return float(value)
    except (TypeError, ValueError):
        return None
