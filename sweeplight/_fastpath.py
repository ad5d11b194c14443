"""Exact shortcuts for Lightning's per-step hot spots, applied to the trials sweeplight runs.

Measured with ``benchmarks/trainer_overhead.py --profile`` on the digits MLP: every ``self.log`` call moves the
logged metric's whole state to the value's device (``_ResultMetric.to`` → ``apply_to_collection`` over the metric's
``__dict__``, deep-copying its metadata dataclass), ~0.6 ms per call on a 2-core CPU, although after the first call
the state is already there; a step that logs two metrics paid more for that than for the MLP's forward and
backward. Every batch, the loops inspect the signature of ``training_step`` three times. And every batch, each of
about ten hooks is dispatched to every callback and to the module, most of them the base classes' empty methods,
each call wrapped in the (pass-through) profiler's generator context manager and a ``Module.__setattr__`` of the
hook's name: ~0.3 ms a step, as much as the tiny MLP's whole optimiser step.

Each shortcut returns exactly what the original would; it is on only while a trial runs, on the Lightning package
the user's module uses, and only when the patched function is there (another Lightning version simply runs
unpatched). ``SWEEPLIGHT_FASTPATH=0`` turns them off, to measure or to rule them out.
"""

from __future__ import annotations

import contextlib
import dis
import functools
import importlib
import logging
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
            if original is None:  # the class inherited it: take the class's own copy away again
                delattr(owner, name)
            else:
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
    patches.extend(_hook_patches(namespace))
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


def _hook_patches(namespace: str) -> list[tuple[Any, str, Any, Any]]:
    """Dispatch of empty hooks skipped, and the pass-through profiler's context made a plain object."""
    try:
        call = importlib.import_module(f"{namespace}.trainer.call")
        passthrough = importlib.import_module(f"{namespace}.profilers.base").PassThroughProfiler
        callback = importlib.import_module(f"{namespace}.callbacks.callback").Callback
        hooks = importlib.import_module(f"{namespace}.core.module").LightningModule
        callbacks_original = call.__dict__["_call_callback_hooks"]
        module_original = call.__dict__["_call_lightning_module_hook"]
    except (ImportError, AttributeError, KeyError):
        return []
    if getattr(callbacks_original, _PATCHED, False):
        return []
    patches = [
        (call, "_call_callback_hooks", callbacks_original,
         _skip_empty_callback_hooks(callbacks_original, callback, passthrough, call.log)),
        (call, "_call_lightning_module_hook", module_original,
         _skip_empty_module_hooks(module_original, hooks, passthrough, call.log)),
    ]
    if "profile" not in passthrough.__dict__:  # inherited from Profiler: start/stop are PassThrough's no-ops
        patches.append((passthrough, "profile", None, _plain_profile))
    return patches


def empty(function: Any) -> bool:
    """Whether ``function`` does nothing but return None (a docstring and ``pass``), read from its bytecode."""
    code = getattr(function, "__code__", None)
    if code is None or code.co_flags & 0x20:  # not Python, or a generator
        return False
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("RESUME", "NOP", "RETURN_VALUE"):
            continue
        if instruction.opname in ("LOAD_CONST", "RETURN_CONST") and instruction.argval is None:
            continue
        return False
    return True


def _empty_hooks(base: type) -> dict[str, Any]:
    """The hooks of ``base`` that do nothing, by name: calling one of them is a no-op that may be skipped."""
    return {name: fn for name, fn in vars(base).items() if name.startswith("on_") and callable(fn) and empty(fn)}


def _inherits_empty(obj: Any, name: str, base_fn: Any, seen: dict[tuple[type, str], bool]) -> bool:
    """``obj.<name>`` is the base's empty method: not overridden by its class, nor set on the instance."""
    key = (type(obj), name)
    try:
        inherited = seen[key]
    except KeyError:
        inherited = seen[key] = getattr(type(obj), name, None) is base_fn
    return inherited and name not in getattr(obj, "__dict__", ())


def _skip_empty_callback_hooks(original: Any, callback: type, passthrough: type, log: logging.Logger) -> Any:
    """Lightning calls every callback for every hook, mostly ``Callback``'s empty methods, six times a training step.
    When no callback overrides the hook, the call does nothing observable (it sets and restores the module's
    ``_current_fx_name``, times the calls with a pass-through profiler and logs at debug level): skip it."""
    empties = _empty_hooks(callback)
    seen: dict[tuple[type, str], bool] = {}

    @functools.wraps(original)
    def _call_callback_hooks(trainer: Any, hook_name: str, *args: Any, **kwargs: Any) -> None:
        base_fn = empties.get(hook_name)
        if (base_fn is not None and type(trainer.profiler) is passthrough and not log.isEnabledFor(logging.DEBUG)
                and all(_inherits_empty(cb, hook_name, base_fn, seen) for cb in trainer.callbacks)):
            return None
        return original(trainer, hook_name, *args, **kwargs)

    setattr(_call_callback_hooks, _PATCHED, True)
    return _call_callback_hooks


def _skip_empty_module_hooks(original: Any, module: type, passthrough: type, log: logging.Logger) -> Any:
    """The same for the LightningModule's own hooks (``on_before_backward`` and the like) the user did not write."""
    empties = {name: fn for cls in reversed(module.__mro__) for name, fn in _empty_hooks(cls).items()}
    empties = {name: fn for name, fn in empties.items() if getattr(module, name, None) is fn}
    seen: dict[tuple[type, str], bool] = {}

    @functools.wraps(original)
    def _call_lightning_module_hook(trainer: Any, hook_name: str, *args: Any, pl_module: Any = None,
                                    **kwargs: Any) -> Any:
        base_fn = empties.get(hook_name)
        if base_fn is not None and type(trainer.profiler) is passthrough and not log.isEnabledFor(logging.DEBUG):
            target = pl_module or trainer.lightning_module
            if target is not None and _inherits_empty(target, hook_name, base_fn, seen):
                return None
        return original(trainer, hook_name, *args, pl_module=pl_module, **kwargs)

    setattr(_call_lightning_module_hook, _PATCHED, True)
    return _call_lightning_module_hook


class _Action:
    """What ``Profiler.profile`` yields (the action's name), without a generator: the pass-through profiler's
    ``start`` and ``stop`` do nothing, and Lightning enters this context ~100 times a training step."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> str:
        return self.name

    def __exit__(self, *exc: object) -> None:
        return None


def _plain_profile(self: Any, action_name: str) -> _Action:
    return _Action(action_name)


setattr(_plain_profile, _PATCHED, True)
