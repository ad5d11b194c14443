"""Exact shortcuts for Lightning's per-step hot spots, applied to the trials sweeplight runs.

Measured with ``benchmarks/trainer_overhead.py --profile`` on the digits MLP: every ``self.log`` call moves the
logged metric's whole state to the value's device (``_ResultMetric.to`` → ``apply_to_collection`` over the metric's
``__dict__``, deep-copying its metadata dataclass), ~0.6 ms per call on a 2-core CPU, although after the first call
the state is already there; a step that logs two metrics paid more for that than for the MLP's forward and
backward. And every batch, the loops inspect the signature of ``training_step`` three times.

Each shortcut returns exactly what the original would; it is on only while a trial runs, on the Lightning package
the user's module uses, and only when the patched function is there (another Lightning version simply runs
unpatched). ``SWEEPLIGHT_FASTPATH=0`` turns them off, to measure or to rule them out.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from collections.abc import Iterator
from typing import Any

_PATCHED = "__sweeplight_fastpath__"


@contextlib.contextmanager
def installed(namespace: str) -> Iterator[bool]:
    """Run a trial with the shortcuts on the Lightning package ``namespace``; yields whether any is active.

    Scoped to the trial rather than the process, so Lightning code the user runs around it (and the benchmark's
    plain-Lightning baseline) runs exactly as Lightning ships it.
    """
    if os.environ.get("SWEEPLIGHT_FASTPATH", "1") == "0":
        yield False
        return
    patches, already_on = _patches(namespace)
    for owner, name, _, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield bool(patches) or already_on
    finally:
        for owner, name, original, _ in patches:
            setattr(owner, name, original)


def _patches(namespace: str) -> tuple[list[tuple[Any, str, Any, Any]], bool]:
    """(owner, attribute, original, replacement) for each shortcut whose target is there and not yet patched, and
    whether some are on already (a trial run inside another's ``installed``)."""
    patches = []
    already_on = False
    try:
        result = importlib.import_module(f"{namespace}.trainer.connectors.logger_connector.result")
        original = result._ResultMetric.__dict__["to"]
        already_on = getattr(original, _PATCHED, False)
        if not already_on:
            patches.append((result._ResultMetric, "to", original, _skip_noop_moves(original)))
    except (ImportError, AttributeError, KeyError):
        pass
    try:
        signatures = importlib.import_module(f"{namespace}.utilities.signature_utils")
        original = signatures.is_param_in_hook_signature
    except (ImportError, AttributeError):
        return patches, already_on
    if getattr(original, _PATCHED, False):
        return patches, True
    cached = _cache_signatures(original)
    # The loops import the function by name, so it is replaced where they hold it.
    importlib.import_module(f"{namespace}.loops")
    for name, module in list(sys.modules.items()):
        if name.startswith(f"{namespace}.") and getattr(module, "is_param_in_hook_signature", None) is original:
            patches.append((module, "is_param_in_hook_signature", original, cached))
    return patches, already_on


def _cache_signatures(original: Any) -> Any:
    """Lightning asks whether ``training_step`` takes ``dataloader_iter`` (and the like) on every batch, through
    ``inspect.getfullargspec``: ~0.1 ms each, three times a step. The answer depends only on the function."""
    answers: dict[tuple[Any, ...], bool] = {}

    @functools.wraps(original)
    def is_param_in_hook_signature(hook_fx: Any, param: str, explicit: bool = False,
                                   min_args: int | None = None) -> bool:
        function = getattr(hook_fx, "__func__", hook_fx)
        try:
            key = (function, getattr(hook_fx, "__wrapped__", None), param, explicit, min_args)
            return answers[key]
        except KeyError:
            answers[key] = answer = original(hook_fx, param, explicit, min_args)
            return answer
        except TypeError:  # an unhashable callable
            return original(hook_fx, param, explicit, min_args)

    setattr(is_param_in_hook_signature, _PATCHED, True)
    return is_param_in_hook_signature


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
