"""Exact shortcuts for Lightning's per-step hot spots, applied to the trials sweeplight runs.

Measured with ``benchmarks/trainer_overhead.py --profile`` on the digits MLP: every ``self.log`` call moves the
logged metric's whole state to the value's device (``_ResultMetric.to`` → ``apply_to_collection`` over the metric's
``__dict__``, deep-copying its metadata dataclass), ~0.6 ms per call on a 2-core CPU, although after the first call
the state is already there. A step that logs two metrics paid more for that than for the MLP's forward and backward.

Each shortcut returns exactly what the original would; it is installed once per process on the Lightning package
the user's module uses, and only when the patched function looks as expected (another Lightning version simply runs
unpatched). ``SWEEPLIGHT_FASTPATH=0`` turns them off, to measure or to rule them out.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any

_PATCHED = "__sweeplight_fastpath__"


@functools.cache
def install(namespace: str) -> bool:
    """Install the shortcuts for ``lightning.pytorch`` or ``pytorch_lightning``; True when they are active."""
    if os.environ.get("SWEEPLIGHT_FASTPATH", "1") == "0":
        return False
    try:
        result = importlib.import_module(f"{namespace}.trainer.connectors.logger_connector.result")
        metric_cls = result._ResultMetric
        original = metric_cls.to
    except (ImportError, AttributeError):
        return False
    if getattr(original, _PATCHED, False):
        return True
    import torch

    @functools.wraps(original)
    def to(self: Any, *args: Any, **kwargs: Any) -> Any:
        # _ResultCollection.log calls ``metric.to(value.device)`` on every call; every move goes through here or
        # through reset/_apply, which move value and cumulated_batch_size together, so those two tell where the
        # whole state is.
        if len(args) == 1 and not kwargs and isinstance(args[0], torch.device) and self.__dict__.get("is_tensor"):
            value = self.__dict__.get("value")
            count = self.__dict__.get("cumulated_batch_size", value)
            if (isinstance(value, torch.Tensor) and isinstance(count, torch.Tensor) and value.device == args[0]
                    and count.device == args[0]):
                return self
        return original(self, *args, **kwargs)

    setattr(to, _PATCHED, True)
    metric_cls.to = to
    return True
