"""Diagnostics a trial can switch on (``diagnostics:`` in the study file, parsed in ``_diagnostics_spec.py``).

A diagnostic that is off adds nothing to the trial: no callback, no hook. Lightning dispatches a hook only to the
callbacks that override it (``_fastpath.py`` skips the rest), so even the ones that are on add per-step work only
where they must: the gradient norm (one hook per optimizer step, accumulated on the device and read once per epoch),
and the profiler and the gradient histograms, whose step hooks are instance attributes, deleted once their steps are
recorded (the shortcut looks at the class's methods and the instance's own attributes, so the steps after pay
nothing). The cheap ones, on by default, run once per fit or per epoch: the model summary, system information, GPU
memory and the epoch clock that estimates the trial's wall time.

The estimate reaches ``study status`` through the heartbeat thread: the training thread hands it to ``PROGRESS``
and the next heartbeat writes it as the trial's ``sweeplight:progress`` attribute, so training never waits on the
storage for it.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweeplight._diagnostics_spec import Diagnostics, ProfilerSchedule

PROGRESS_ATTR = "sweeplight:progress"  # trial system attr: the latest epoch timing and wall-time estimate
ESTIMATE_AFTER = 2  # epochs timed before the first estimate: the first one alone carries warm-up costs
PROFILER_DIR = "profiler"


class Progress:
    """The running trial's latest estimate, handed from the training thread to the heartbeat thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None

    def publish(self, value: dict[str, Any]) -> None:
        with self._lock:
            self._pending = value

    def take(self) -> dict[str, Any] | None:
        """The estimate published since the last take, or None."""
        with self._lock:
            value, self._pending = self._pending, None
        return value


PROGRESS = Progress()  # one trial at a time runs in a worker process


def duration_text(seconds: float) -> str:
    """'42 s', '3m05s', '2h10m': short enough for a log line or a status row."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class EpochClock:
    """Times the epochs of a fit; from the ``ESTIMATE_AFTER``-th on, estimates the trial's wall time.

    An epoch is measured from one validation's end to the next, so checkpoints, logging and the pruner's call are
    counted as the trial pays them. The first epoch of the fit is left out of the mean: it carries the warm-up
    (the data loaders' first batches, lazy initialisation), which on a small model can be several epochs' worth.
    The estimate is the time spent so far plus the epochs left at that mean: an upper bound when early stopping or
    a pruner may end the trial sooner.
    """

    def __init__(self, *, trial_started: float, stops_early: bool, publish: bool = True) -> None:
        self.trial_started = trial_started  # time.perf_counter() when the trial began
        self.stops_early = stops_early
        self.publish = publish  # hand the estimate to the heartbeat (rank 0)
        self.first: dict[str, Any] | None = None  # the first estimate, for summary.json
        self._first_epoch: int | None = None  # the fit's first epoch (a resumed trial starts past 0)
        self._first_end = 0.0  # when the fit's first epoch was validated

    def epoch_started(self, epoch: int) -> None:
        if self._first_epoch is None:
            self._first_epoch = epoch

    def after_epoch(self, epoch: int, max_epochs: int | None) -> str:
        """The estimate after validating ``epoch``, as a note for the trial's log line ('' before there is one)."""
        estimate = self.estimate(epoch, max_epochs)
        if estimate is None:
            return ""
        if self.first is None:
            self.first = estimate
        if self.publish:
            PROGRESS.publish(estimate)
        sooner = "; early stopping or pruning may end it sooner" if self.stops_early else ""
        return (f"  eta: {duration_text(estimate['remaining_s'])} left, ~{duration_text(estimate['total_s'])} in all "
                f"({estimate['max_epochs']} epochs, {duration_text(estimate['epoch_s'])} each{sooner})")

    def estimate(self, epoch: int, max_epochs: int | None) -> dict[str, Any] | None:
        if self._first_epoch is None:
            return None
        now = time.perf_counter()
        done = epoch - self._first_epoch + 1
        if done <= 1:
            self._first_end = now  # the last validation of the first epoch, with several per epoch
        if done < ESTIMATE_AFTER or not max_epochs or max_epochs < 0:
            return None
        per_epoch = (now - self._first_end) / (done - 1)
        remaining = max(0, max_epochs - epoch - 1) * per_epoch
        elapsed = now - self.trial_started
        return {"epoch": epoch, "max_epochs": max_epochs, "epoch_s": round(per_epoch, 3),
                "elapsed_s": round(elapsed, 2), "remaining_s": round(remaining, 2),
                "total_s": round(elapsed + remaining, 2), "at": round(time.time(), 3)}


def eta_fields(progress: Any, started: float | None, now: float) -> dict[str, Any]:
    """What ``study status`` shows of a running trial's timing: elapsed time since it started, and from its last
    published estimate (``sweeplight:progress``) the epochs planned, the mean epoch time, and the time left
    (counted down since the estimate was made) and in all."""
    elapsed = round(now - started, 1) if started else None
    fields: dict[str, Any] = {"elapsed_s": elapsed, "max_epochs": None, "epoch_s": None, "remaining_s": None,
                              "total_s": None}
    if not isinstance(progress, dict) or not isinstance(progress.get("remaining_s"), (int, float)):
        return fields
    remaining = max(0.0, progress["remaining_s"] - max(0.0, now - float(progress.get("at") or now)))
    total = elapsed + remaining if elapsed is not None else progress.get("total_s")
    fields.update(max_epochs=progress.get("max_epochs"), epoch_s=progress.get("epoch_s"),
                  remaining_s=round(remaining, 1), total_s=round(total, 1) if total is not None else None)
    return fields


def eta_text(fields: dict[str, Any]) -> str:
    """'elapsed 40 s, ~1m50s left of ~2m30s' for a status row ('' when nothing is known)."""
    if fields.get("elapsed_s") is None:
        return ""
    text = f"elapsed {duration_text(fields['elapsed_s'])}"
    if fields.get("remaining_s") is not None:
        text += f", ~{duration_text(fields['remaining_s'])} left of ~{duration_text(fields['total_s'])}"
    return text


class GpuMemory:
    """Peak CUDA memory between two validations, added to each epoch's history entry; nothing off CUDA.

    Reading and resetting the allocator's statistics is host-side bookkeeping: no device sync.
    """

    def __init__(self) -> None:
        self.peak_mb: float | None = None  # the highest per-epoch peak: the trial's peak survives the resets

    def __call__(self, trainer: Any, pl_module: Any) -> dict[str, float]:
        device = getattr(pl_module, "device", None)
        if device is None or device.type != "cuda":
            return {}
        import torch

        allocated = torch.cuda.max_memory_allocated(device) / 2**20
        reserved = torch.cuda.max_memory_reserved(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        self.peak_mb = round(max(self.peak_mb or 0.0, allocated), 1)
        return {"gpu_mem_peak_allocated_mb": round(allocated, 1), "gpu_mem_peak_reserved_mb": round(reserved, 1)}


class TrialDiagnostics:
    """The diagnostics of one trial: callbacks for the Trainer, per-epoch extras for the history, and what they
    add to summary.json.

        diagnostics = TrialDiagnostics(pl, spec.diagnostics, trial_dir=..., number=3, trial_started=clock)
        monitor = TrialMonitor(..., extras=diagnostics.extras, clock=diagnostics.clock)
        Trainer(callbacks=[...base, *diagnostics.callbacks], **diagnostics.trainer_defaults, **user_args)
    """

    def __init__(self, pl: Any, options: Diagnostics, *, trial_dir: Path, number: int, trial_started: float,
                 rank: int = 0, stops_early: bool = False) -> None:
        self.options = options
        self.callbacks: list[Any] = []
        self.extras: list[Callable[[Any, Any], dict[str, Any]]] = []
        self.gpu_memory = GpuMemory() if options.gpu_memory else None
        if self.gpu_memory is not None:
            self.extras.append(self.gpu_memory)
        self.clock = EpochClock(trial_started=trial_started, stops_early=stops_early, publish=rank == 0) \
            if options.epoch_timing else None
        self.model_summary = self.profiler = None
        if rank != 0:  # the other DDP ranks train the same model: rank 0 alone measures and writes
            return
        if options.model_summary:
            self.model_summary = model_summary_class(pl.__name__)(options.model_summary, number=number)
            self.callbacks.append(self.model_summary)
        if options.grad_norm:
            grad_norm = grad_norm_class(pl.__name__)()
            self.callbacks.append(grad_norm)
            self.extras.append(grad_norm.epoch_stats)
        if options.param_histograms:
            self.callbacks.append(histogram_class(pl.__name__)(options.param_histograms))
        if options.profiler is not None:
            self.profiler = profiler_class(pl.__name__)(options.profiler, trial_dir / PROFILER_DIR)
            self.callbacks.append(self.profiler)

    @property
    def trainer_defaults(self) -> dict[str, Any]:
        """Trainer arguments the study file's own ``trainer:`` may still override: Lightning's model summary is
        replaced by ours (printed with the trial's number, and kept in summary.json) or is off with it."""
        return {"enable_model_summary": False}

    def summary_fields(self) -> dict[str, Any]:
        """What the diagnostics add to summary.json (null for those that are off or did not run)."""
        return {
            "model_summary": self.model_summary.result if self.model_summary is not None else None,
            "system": system_info() if self.options.system_info else None,
            "profiler": self.profiler.result if self.profiler is not None else None,
            "wall_time_estimate": self.clock.first if self.clock is not None else None,
        }

    def gpu_peak_mb(self, measured: float | None) -> float | None:
        """The trial's peak CUDA memory: ``measured`` since the last per-epoch reset, or an earlier epoch's."""
        peaks = [p for p in (measured, self.gpu_memory.peak_mb if self.gpu_memory else None) if p is not None]
        return max(peaks) if peaks else None


def summary_fields_without(options: Diagnostics | None) -> dict[str, Any]:
    """summary.json's diagnostic keys for a trial that failed before its diagnostics were built."""
    return {"model_summary": None, "system": system_info() if options and options.system_info else None,
            "profiler": None, "wall_time_estimate": None}


@functools.cache
def model_summary_class(namespace: str) -> type:
    pl = importlib.import_module(namespace)
    summaries = importlib.import_module(f"{namespace}.utilities.model_summary")

    class ModelSummaryRecorder(pl.Callback):
        """Lightning's layer table at fit start (after ``configure_model``, so lazily built layers count), printed
        in the trial's log and kept as data for summary.json."""

        def __init__(self, max_depth: int, *, number: int) -> None:
            self.max_depth, self.number = max_depth, number
            self.result: dict[str, Any] | None = None

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            summary = summaries.summarize(pl_module, max_depth=self.max_depth)
            text = str(summary)
            layers = [{"name": name, "type": kind, "params": int(count), "mode": "train" if training else "eval"}
                      for name, kind, count, training in zip(summary.layer_names, summary.layer_types,
                                                             summary.param_nums, summary.training_modes, strict=True)]
            if pl_module.example_input_array is not None:
                for layer, in_size, out_size in zip(layers, summary.in_sizes, summary.out_sizes, strict=True):
                    layer.update(in_size=in_size, out_size=out_size)
            total, trainable = int(summary.total_parameters), int(summary.trainable_parameters)
            self.result = {"max_depth": self.max_depth, "layers": layers, "trainable_params": trainable,
                           "non_trainable_params": total - trainable, "size_mb": round(summary.model_size, 6),
                           "modules": dict(summary.total_training_modes),
                           "flops": int(summary.total_flops) or None, "text": text}
            print(f"trial {self.number} model summary:\n{text}", flush=True)

    return ModelSummaryRecorder


@functools.cache
def grad_norm_class(namespace: str) -> type:
    pl = importlib.import_module(namespace)

    class GradNorm(pl.Callback):
        """The total L2 norm of the gradients each optimizer step sees (after AMP's unscaling, before clipping).

        Logged to TensorBoard as ``grad_norm`` every ``log_every_n_steps`` optimizer steps (one device sync then,
        as Lightning's own logging has); each epoch's mean and max over its finite norms go into the history (one
        sync per epoch): the sums stay on the device in between.
        """

        def __init__(self) -> None:
            self._sums: Any = None  # tensor [sum of finite norms, finite steps]
            self._max: Any = None
            self._steps = 0

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            import torch

            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if not grads:
                return
            norm = torch.nn.utils.get_total_norm(grads, 2.0).float()
            finite = torch.isfinite(norm)
            value = torch.where(finite, norm, torch.zeros_like(norm))
            sums = torch.stack((value, finite.float()))
            self._sums = sums if self._sums is None else self._sums + sums
            self._max = value if self._max is None else torch.maximum(self._max, value)
            self._steps += 1
            every = getattr(trainer, "log_every_n_steps", 50) or 1
            if trainer.global_step % every == 0:
                _log_scalars(trainer, {"grad_norm": norm.item()}, trainer.global_step)

        def epoch_stats(self, trainer: Any, pl_module: Any) -> dict[str, float]:
            """The steps' norms since the last validation: ``grad_norm_mean`` and ``grad_norm_max``."""
            if self._sums is None:
                return {}
            import torch

            total, count, top = torch.cat((self._sums, self._max.reshape(1))).tolist()
            steps, self._sums, self._max, self._steps = self._steps, None, None, 0
            stats = {"grad_norm_mean": total / count, "grad_norm_max": top} if count else {}
            if count < steps:
                stats["grad_norm_nonfinite_steps"] = steps - int(count)
            if stats:
                _log_scalars(trainer, {f"{k}_epoch": v for k, v in stats.items()}, trainer.global_step)
            return stats

    return GradNorm


@functools.cache
def histogram_class(namespace: str) -> type:
    pl = importlib.import_module(namespace)

    class ParamHistograms(pl.Callback):
        """TensorBoard histograms of every parameter (``params/<name>``, at the end of the epoch) and its gradient
        (``grads/<name>``, at the epoch's first optimizer step) in every ``every``-th training epoch, the first
        included.

        Lightning sets the gradients to None before each validation, so they are taken at a step: the step hook is
        set on the instance for that one step and deleted after it, so the other steps pay nothing for it.
        """

        def __init__(self, every: int) -> None:
            self.every = every

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if trainer.current_epoch % self.every == 0:
                self.on_before_optimizer_step = self._gradients_once

        def _gradients_once(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            self.__dict__.pop("on_before_optimizer_step", None)
            _histograms(trainer, {f"grads/{name}": p.grad for name, p in pl_module.named_parameters()})

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.current_epoch % self.every == 0:
                _histograms(trainer, {f"params/{name}": p for name, p in pl_module.named_parameters()})

    return ParamHistograms


@functools.cache
def profiler_class(namespace: str) -> type:
    pl = importlib.import_module(namespace)

    class StepProfiler(pl.Callback):
        """torch.profiler over training steps ``wait + warmup`` to ``wait + warmup + steps``; writes the key
        averages table (``report.txt``) and a Chrome trace (``trace.json``, open it in Perfetto or
        chrome://tracing) to ``directory``.

        Its per-step hooks are set on the instance, not the class, and deleted when it is done: the hook dispatch
        shortcut (``_fastpath``) then sees no callback that wants them, and the rest of the trial's steps pay
        nothing for the profiler.
        """

        def __init__(self, schedule: ProfilerSchedule, directory: Path) -> None:
            self.schedule, self.directory = schedule, directory
            self.result: dict[str, Any] | None = None
            self._profiler: Any = None
            self._device = "cpu"
            self.on_train_batch_start = self._batch_start
            self.on_train_batch_end = self._batch_end

        def _batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if self._profiler is not None:
                return
            import torch

            activities = [torch.profiler.ProfilerActivity.CPU]
            self._device = pl_module.device.type
            if self._device == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            s = self.schedule
            self._profiler = torch.profiler.profile(
                activities=activities, on_trace_ready=self._write,
                schedule=torch.profiler.schedule(wait=s.wait, warmup=s.warmup, active=s.steps, repeat=1))
            self._profiler.start()

        def _batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self._profiler.step()
            if self._profiler.step_num >= self.schedule.wait + self.schedule.warmup + self.schedule.steps:
                self._finish()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._finish()  # fewer steps than the schedule: what was recorded is written

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self._finish()

        def _finish(self) -> None:
            for hook in ("on_train_batch_start", "on_train_batch_end"):
                self.__dict__.pop(hook, None)
            profiler, self._profiler = self._profiler, False  # done: never started again (a second fit)
            if profiler:
                profiler.stop()

        def _write(self, profiler: Any) -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            sort = "self_device_time_total" if self._device == "cuda" else "self_cpu_time_total"
            report, trace = self.directory / "report.txt", self.directory / "trace.json"
            table = profiler.key_averages().table(sort_by=sort, row_limit=60)
            report.write_text(f"torch.profiler: training steps {self.schedule.wait + self.schedule.warmup} to "
                              f"{profiler.step_num - 1}, sorted by {sort}\n{table}\n")
            profiler.export_chrome_trace(str(trace))
            self.result = {"report": str(report), "trace": str(trace), "wait": self.schedule.wait,
                           "warmup": self.schedule.warmup, "steps": self.schedule.steps, "sort_by": sort}

    return StepProfiler


def _histograms(trainer: Any, tensors: dict[str, Any]) -> None:
    writers = [w for w in (getattr(lg, "experiment", None) for lg in trainer.loggers) if hasattr(w, "add_histogram")]
    for tag, tensor in tensors.items():
        if tensor is not None:
            values = tensor.detach().float().cpu()
            for writer in writers:
                writer.add_histogram(tag, values, trainer.global_step)


def _log_scalars(trainer: Any, values: dict[str, float], step: int) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(values, step=step)


def system_info() -> dict[str, Any]:
    """The machine a trial ran on: CPU, memory, GPUs, CUDA, cuDNN and the NVIDIA driver.

    Read from /proc and torch; nothing needs ``nvidia-smi``, and a CUDA context is never created for it: GPU names
    come from torch only when the trial already initialised CUDA, else from the driver's /proc files.
    """
    import platform

    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "nvidia_driver": _nvidia_driver(),
        "gpus": _gpus(torch),
    }


def _cpu_model() -> str | None:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _nvidia_driver() -> str | None:
    try:
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)",
                          Path("/proc/driver/nvidia/version").read_text())
    except OSError:
        return None
    return match.group(1) if match else None


def _gpus(torch: Any) -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    if torch.cuda.is_initialized():
        gpus = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                         "capability": f"{props.major}.{props.minor}"})
        return gpus
    gpus = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            model = re.search(r"^Model:\s*(.+)$", info.read_text(), re.MULTILINE)
        except OSError:
            continue
        gpus.append({"bus": info.parent.name, "name": model.group(1).strip() if model else None})
    return gpus
