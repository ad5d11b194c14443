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


def test_empty_reads_the_bytecode():
    def documented():
        """Only a docstring."""

    def passes():
        pass

    def returns_one():
        return 1

    def side_effect(items):
        items.append(1)

    def generator():
        yield

    assert _fastpath.empty(documented) and _fastpath.empty(passes)
    assert not _fastpath.empty(returns_one) and not _fastpath.empty(side_effect) and not _fastpath.empty(generator)
    assert not _fastpath.empty(len)


def _fit(calls: list[str], *, fastpath: bool, monkeypatch) -> dict[str, torch.Tensor]:
    """Two epochs of two steps with a callback and a module that override some per-step hooks, one set on an
    instance; returns the trained weights."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.layer(x), y)
            self.log("loss", loss)
            return loss

        def on_after_backward(self):
            calls.append(f"module.on_after_backward {self._current_fx_name}")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Counting(pl.Callback):
        def on_before_zero_grad(self, trainer, pl_module, optimizer):
            calls.append(f"callback.on_before_zero_grad {pl_module._current_fx_name}")

    quiet = pl.Callback()
    quiet.on_train_batch_end = lambda *args: calls.append("instance.on_train_batch_end")
    monkeypatch.setenv("SWEEPLIGHT_FASTPATH", "1" if fastpath else "0")
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Counting(), quiet])
    module = Module()
    with _fastpath.installed("lightning.pytorch") as active:
        assert active == fastpath
        trainer.fit(module, DataLoader(data, batch_size=4))
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_empty_hooks_are_skipped_and_written_ones_still_run(monkeypatch):
    from lightning.pytorch.profilers import PassThroughProfiler
    from lightning.pytorch.trainer import call

    original = call._call_callback_hooks
    fast_calls: list[str] = []
    slow_calls: list[str] = []
    fast = _fit(fast_calls, fastpath=True, monkeypatch=monkeypatch)
    slow = _fit(slow_calls, fastpath=False, monkeypatch=monkeypatch)
    assert fast_calls == slow_calls
    assert fast_calls.count("module.on_after_backward on_after_backward") == 4
    assert fast_calls.count("callback.on_before_zero_grad on_before_zero_grad") == 4
    assert fast_calls.count("instance.on_train_batch_end") == 4
    assert all(torch.equal(fast[k], slow[k]) for k in fast)
    assert call._call_callback_hooks is original and "profile" not in PassThroughProfiler.__dict__


def test_the_profiler_context_yields_the_action_name():
    from lightning.pytorch.profilers import PassThroughProfiler

    with _fastpath.installed("lightning.pytorch"):
        with PassThroughProfiler().profile("step") as name:
            assert name == "step"
        with pytest.raises(KeyError), PassThroughProfiler().profile("step"):
            raise KeyError("not swallowed")
