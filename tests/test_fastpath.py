"""The shortcut for Lightning's per-log device move returns exactly what Lightning computes without it."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection

from sweeplight import _fastpath


def _log_three(results: _ResultCollection) -> None:
    for value, batch_size in ((1.0, 10), (2.0, 30), (4.0, 60)):
        results.batch_size = batch_size
        results.log("training_step", "loss", torch.tensor(value), on_step=False, on_epoch=True)


def test_logged_epoch_mean_is_unchanged_and_other_moves_still_happen():
    results = _ResultCollection(training=True)
    with _fastpath.installed("lightning.pytorch") as active:
        assert active
        _log_three(results)
    metric = results["training_step.loss"]
    assert metric.compute().item() == pytest.approx((1.0 * 10 + 2.0 * 30 + 4.0 * 60) / 100, rel=1e-7)
    assert metric.cumulated_batch_size.item() == 100
    # A move to another device is not a no-op: it goes through Lightning's own code.
    with _fastpath.installed("lightning.pytorch"):
        metric.to(torch.device("meta"))
    assert metric.value.device.type == "meta" and metric.cumulated_batch_size.device.type == "meta"


def test_on_only_while_a_trial_runs_and_can_be_switched_off(monkeypatch):
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric

    original = _ResultMetric.to
    with _fastpath.installed("lightning.pytorch"):
        patched = _ResultMetric.to
        assert patched is not original
        with _fastpath.installed("lightning.pytorch") as nested:  # the LR finder's fit inside the trial's
            assert nested and _ResultMetric.to is patched
        assert _ResultMetric.to is patched
    assert _ResultMetric.to is original
    monkeypatch.setenv("SWEEPLIGHT_FASTPATH", "0")
    with _fastpath.installed("lightning.pytorch") as active:
        assert not active and _ResultMetric.to is original


def test_signature_answers_are_cached_per_function_and_stay_right():
    from lightning.pytorch.loops import training_epoch_loop
    from lightning.pytorch.utilities import signature_utils

    original = training_epoch_loop.is_param_in_hook_signature

    class Module:
        def plain(self, batch, batch_idx): ...
        def with_iter(self, dataloader_iter): ...
        def varargs(self, *args): ...

    module = Module()
    with _fastpath.installed("lightning.pytorch"):
        cached = training_epoch_loop.is_param_in_hook_signature
        assert cached is not original and signature_utils.is_param_in_hook_signature is cached
        for _ in range(2):  # the second round is answered from the cache
            assert cached(module.with_iter, "dataloader_iter", explicit=True)
            assert not cached(module.plain, "dataloader_iter", explicit=True)
            assert cached(module.varargs, "dataloader_iter") and not cached(module.varargs, "x", explicit=True)
            assert cached(module.plain, "x", min_args=2) and not cached(module.plain, "x", min_args=3)
        module.plain = module.with_iter  # a hook replaced on the instance is a new function: asked again
        assert cached(module.plain, "dataloader_iter", explicit=True)
    assert training_epoch_loop.is_param_in_hook_signature is original
    assert signature_utils.is_param_in_hook_signature is original
