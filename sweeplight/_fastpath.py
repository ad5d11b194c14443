"""Exact shortcuts for Lightning's per-step hot spots, applied to the trials sweeplight runs.

Measured with ``benchmarks/trainer_overhead.py --profile`` on the digits MLP: every ``self.log`` call moves the
logged metric's whole state to the value's device (``_ResultMetric.to`` → ``apply_to_collection`` over the metric's
``__dict__``, deep-copying its metadata dataclass), ~0.6 ms per call on a 2-core CPU, although after the first call
the state is already there. A step that logs two metrics paid more for that than for the MLP's forward and backward.

Each shortcut returns exactly what the original would; it is on only while a trial runs, on the Lightning package
the user's module uses, and only when the patched function is there (another Lightning version simply runs
unpatched). ``SWEEPLIGHT_FASTPATH=0`` turns them off, to measure or to rule them out.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import Iterator
from typing import Any

_PATCHED = "__sweeplight_fastpath__"


@contextlib.contextmanager
def installed(namespace: str) -> Iterator[bool]:
    """Run a trial with the shortcuts on the Lightning package ``namespace``; yields whether they are active.

    Scoped to the trial rather than the process, so Lightning code the user runs around it (and the benchmark's
    plain-Lightning baseline) runs exactly as Lightning ships it.
    """
    if os.environ.get("SWEEPLIGHT_FASTPATH", "1") == "0":
        yield False
        return
    try:
        result = importlib.import_module(f"{namespace}.trainer.connectors.logger_connector.result")
        metric_cls = result._ResultMetric
        original = metric_cls.__dict__["to"]
    except (ImportError, AttributeError, KeyError):
        yield False
        return
    if getattr(original, _PATCHED, False):  # a trial inside a trial (the LR finder's fit): already on
        yield True
        return
    metric_cls.to = _skip_noop_moves(original)
    try:
        yield True
    finally:
        metric_cls.to = original


def _skip_noop_moves(original: Any) -> Any:
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
    return to
