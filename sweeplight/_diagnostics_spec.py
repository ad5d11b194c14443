"""The study file's ``diagnostics:`` section: what a trial measures about itself besides its metrics.

Kept apart from ``_diagnostics.py`` (the callbacks) so that reading a study file imports no torch or Lightning, as
``_trainer_spec.py`` is kept apart from the trial runner. The cheap diagnostics are on by default; those that cost
time on every step (gradient norms, histograms, the profiler) are off until asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sweeplight._errors import SpecError
from sweeplight._fields import as_mapping, check_keys, get_bool, get_int, show, type_name

KEYS = ("grad_norm", "param_histograms", "model_summary", "system_info", "gpu_memory", "profiler", "epoch_timing")


@dataclass(frozen=True)
class ProfilerSchedule:
    """torch.profiler over a few training steps: skip ``wait``, warm up ``warmup``, record ``steps``."""

    wait: int = 1
    warmup: int = 1
    steps: int = 5


@dataclass(frozen=True)
class Diagnostics:
    """Which diagnostics a trial runs. Off means no callback and no hook: nothing is added to the training step."""

    grad_norm: bool = False  # total L2 norm of the gradients before each optimizer step
    param_histograms: int = 0  # TensorBoard histograms of parameters and gradients every N epochs; 0: off
    model_summary: int = 1  # the layer table to this depth, in the log and summary.json; 0: off
    system_info: bool = True  # CPU, memory, GPU, CUDA, driver and library versions in summary.json
    gpu_memory: bool = True  # peak CUDA memory per epoch in the history (nothing on CPU)
    profiler: ProfilerSchedule | None = None  # torch.profiler report and trace in trials/<n>/profiler/
    epoch_timing: bool = True  # an estimate of the trial's wall time after 2 epochs: in the log and in status

    @property
    def enabled(self) -> list[str]:
        """The names of the diagnostics that are on, as the study file spells them."""
        return [key for key in KEYS if getattr(self, key) not in (False, 0, None)]


ALL_OFF = Diagnostics(model_summary=0, system_info=False, gpu_memory=False, epoch_timing=False)


def parse_diagnostics(raw: Any) -> Diagnostics:
    """``diagnostics:`` from the study file: a mapping of the keys above, or ``false`` for all off.

    >>> parse_diagnostics({"grad_norm": True, "profiler": {"steps": 3}}).profiler.steps
    3
    """
    if raw is None:
        return Diagnostics()
    if raw is False:
        return ALL_OFF
    mapping = as_mapping(raw, "diagnostics")
    check_keys(mapping, KEYS, "diagnostics")
    return Diagnostics(
        grad_norm=get_bool(mapping, "grad_norm", "diagnostics", False),
        param_histograms=_every(mapping.get("param_histograms", False)),
        model_summary=_summary_depth(mapping.get("model_summary", True)),
        system_info=get_bool(mapping, "system_info", "diagnostics", True),
        gpu_memory=get_bool(mapping, "gpu_memory", "diagnostics", True),
        profiler=_profiler(mapping.get("profiler", False)),
        epoch_timing=get_bool(mapping, "epoch_timing", "diagnostics", True),
    )


def _switch_or_number(value: Any, where: str, key: str, minimum: int) -> int:
    """``true``/``false`` (1/0) or ``{key: N}``: a diagnostic that is on or off, or on with one setting."""
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, dict):
        raise SpecError(where, f"expected true, false or {{{key}: N}}, got {type_name(value)} {show(value)}")
    mapping = as_mapping(value, where)
    check_keys(mapping, (key,), where)
    return get_int(mapping, key, where, 1, minimum=minimum)


def _every(value: Any) -> int:
    return _switch_or_number(value, "diagnostics.param_histograms", "every", 1)


def _summary_depth(value: Any) -> int:
    where = "diagnostics.model_summary"
    depth = _switch_or_number(value, where, "max_depth", -1)
    if depth == 0 and not isinstance(value, bool):
        raise SpecError(f"{where}.max_depth", "got 0; give a depth >= 1 (-1 for every layer), or model_summary: false")
    return depth


def _profiler(value: Any) -> ProfilerSchedule | None:
    where = "diagnostics.profiler"
    if value is False or value is None:
        return None
    if value is True:
        return ProfilerSchedule()
    if not isinstance(value, dict):
        raise SpecError(where, f"expected true, false or {{wait: 1, warmup: 1, steps: 5}}, got {type_name(value)} "
                        f"{show(value)}")
    mapping = as_mapping(value, where)
    check_keys(mapping, ("wait", "warmup", "steps"), where)
    return ProfilerSchedule(wait=get_int(mapping, "wait", where, 1, minimum=0),
                            warmup=get_int(mapping, "warmup", where, 1, minimum=0),
                            steps=get_int(mapping, "steps", where, 5, minimum=1))
