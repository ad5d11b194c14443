"""What does a sweeplight trial cost per training step, against the loop a user would write by hand?

Same model (the digits MLP), data, seed and steps, in one process, three ways:

- raw: a hand-written PyTorch loop, training then validation each epoch, loss and accuracy as the module logs them;
- Lightning: a plain ``Trainer`` (no logger, checkpoints or progress bar), and one with what a careful user adds
  (TensorBoard, best/last checkpoints, early stopping);
- sweeplight: ``run_trial`` with everything on (an SQLite study, the pruning callback, early stopping, best and last
  checkpoints, TensorBoard with hp_metric, history and summary.json).

An epoch is the time between two ``on_train_epoch_start`` calls (training, validation, checkpoints, logging, the
pruner); the first is warm-up and not counted. The run's fixed cost (Trainer set-up, test, summary) is reported
apart. Two sizes: the tiny digits MLP (~1 ms/step) and a wide one (>= 10 ms/step). The ratio is last.

    python benchmarks/trainer_overhead.py             # 3 repeats, 30/10 epochs
    python benchmarks/trainer_overhead.py --quick     # 1 repeat, 4 epochs (the test suite runs this)
    python benchmarks/trainer_overhead.py --profile   # cProfile of one tiny sweeplight trial, top 25 by own time
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import logging
import pstats
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import torch
from torch import nn

from sweeplight._check import check_spec
from sweeplight._imports import import_class
from sweeplight._samplers import build_pruner, build_sampler
from sweeplight._space import sample
from sweeplight._spec import load_spec
from sweeplight._storage import create_or_load_study, load_study
from sweeplight._trial import run_trial
from sweeplight._worker import STORAGE_MAX_WAIT

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Size:
    name: str
    model: str  # class in models.py
    args: dict[str, Any]  # its constructor arguments besides PARAMS
    batch_size: int
    epochs: int


SIZES = (Size("tiny", "TimedMLP", {"width": 64, "depth": 2}, 64, 30),
         Size("cnn", "TimedCNN", {"channels": 48}, 64, 8))
PARAMS = {"lr": 1e-3, "dropout": 0.1, "weight_decay": 1e-4, "optimizer": "adam"}


def models(name: str = "TimedMLP") -> Any:
    """A class of the benchmarks' module, loaded the way sweeplight loads it (one module object, one MARKS list)."""
    return import_class(f"models.py:{name}", base_dir=HERE, field="model.class")


def per_epoch(marks: list[float]) -> float:
    """Median seconds per epoch, the warm-up epoch left out."""
    gaps = [b - a for a, b in itertools.pairwise(marks)]
    return statistics.median(gaps[1:] if len(gaps) > 1 else gaps)


def run_raw(size: Size) -> tuple[float, float]:
    """The hand-written loop; returns (seconds per epoch, seconds in all)."""
    start = time.perf_counter()
    torch.manual_seed(0)
    data = import_class("models.py:DigitsDataModule", base_dir=HERE, field="data.class")(batch_size=size.batch_size)
    data.setup("fit")
    model = models(size.model)(**size.args, **PARAMS)
    optimizer = model.configure_optimizers()
    marks = []
    for _ in range(size.epochs):
        marks.append(time.perf_counter())
        model.train()
        loss_sum, correct, seen = torch.zeros(()), torch.zeros(()), 0
        for x, y in data.train_dataloader():
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(-1) == y).float().sum()
            seen += len(y)
        model.eval()
        val_loss, val_correct, val_seen = torch.zeros(()), torch.zeros(()), 0
        with torch.inference_mode():
            for x, y in data.val_dataloader():
                logits = model(x)
                val_loss += nn.functional.cross_entropy(logits, y) * len(y)
                val_correct += (logits.argmax(-1) == y).float().sum()
                val_seen += len(y)
        _ = (loss_sum / seen).item(), (correct / seen).item(), (val_loss / val_seen).item(), (val_correct / val_seen)
    marks.append(time.perf_counter())
    return per_epoch(marks), time.perf_counter() - start


def run_lightning(size: Size, directory: Path, *, extras: bool) -> tuple[float, float]:
    """A plain Trainer; with ``extras``, TensorBoard + best/last checkpoints + early stopping, as a user would add."""
    start = time.perf_counter()
    cls = models(size.model)
    module = import_class("models.py:DigitsDataModule", base_dir=HERE, field="data.class")
    pl.seed_everything(0, verbose=False)
    marks = _marks()
    marks.clear()
    callbacks: list[Any] = []
    logger: Any = False
    if extras:
        callbacks = [pl.callbacks.ModelCheckpoint(dirpath=directory, monitor="val_acc", mode="max", save_last=True),
                     pl.callbacks.EarlyStopping(monitor="val_acc", mode="max", patience=1000)]
        logger = pl.loggers.TensorBoardLogger(str(directory), name="tb")
    trainer = pl.Trainer(max_epochs=size.epochs, accelerator="cpu", devices=1, logger=logger, callbacks=callbacks,
                         enable_checkpointing=extras, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(directory))
    trainer.fit(cls(**size.args, **PARAMS), datamodule=module(batch_size=size.batch_size))
    marks.append(time.perf_counter())
    return per_epoch(list(marks)), time.perf_counter() - start


def study_file(size: Size, directory: Path) -> Path:
    """A one-configuration study with everything sweeplight does per epoch switched on."""
    import yaml

    raw = {
        "name": f"overhead-{size.name}", "root": str(directory / "runs"),
        "model": {"class": f"{HERE / 'models.py'}:{size.model}", "args": {**size.args, **PARAMS}},
        "data": {"class": f"{HERE / 'models.py'}:DigitsDataModule", "args": {"batch_size": size.batch_size}},
        "objective": {"metric": "val_acc", "direction": "maximize"},
        "search_space": {"dropout": {"type": "categorical", "choices": [PARAMS["dropout"]]}},
        "sampler": {"name": "tpe", "seed": 0},
        "pruner": {"name": "median", "options": {"n_warmup_steps": 0}},
        "budget": {"n_trials": 1},
        "trainer": {"max_epochs": size.epochs, "accelerator": "cpu", "seed": 0,
                    "early_stopping": {"patience": 1000}, "checkpoint": {"save_top_k": 1, "save_last": True}},
        "storage": f"sqlite:///{directory / 'study.db'}",
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_sweeplight(size: Size, directory: Path) -> tuple[float, float, dict[str, Any]]:
    spec = load_spec(study_file(size, directory))
    components = check_spec(spec)
    # The storage as a worker opens it (sweeplight's SQLite settings, retrying wrapper), not Optuna's defaults.
    create_or_load_study(spec)
    study = load_study(spec, sampler=build_sampler(spec), pruner=build_pruner(spec), max_wait=STORAGE_MAX_WAIT)
    marks = _marks()
    marks.clear()
    start = time.perf_counter()
    trial = study.ask()
    params = sample(spec.search_space, trial)
    outcome = run_trial(spec, components, number=trial.number, params=params, trial=trial,
                        trial_dir=spec.directory / "trials" / str(trial.number))
    study.tell(trial, outcome.value)
    marks_now = list(marks)
    elapsed = time.perf_counter() - start
    if outcome.state != "COMPLETE" or outcome.summary["epochs"] != size.epochs:
        raise SystemExit(f"the sweeplight trial did not train {size.epochs} epochs: {outcome.summary.get('error')}")
    # The last epoch has no following start: its end is when validation of the last epoch ended.
    marks_now.append(marks_now[-1] + outcome.summary["epoch_times_s"][-1])
    return per_epoch(marks_now), elapsed, outcome.summary


def _marks() -> list[float]:
    import sys

    return sys.modules["sweeplight_user_models"].MARKS


def steps_per_epoch(size: Size) -> int:
    data = import_class("models.py:DigitsDataModule", base_dir=HERE, field="data.class")(batch_size=size.batch_size)
    data.setup("fit")
    return len(data.train_dataloader())


def measure(size: Size, repeats: int) -> dict[str, tuple[float, float]]:
    """Median over ``repeats`` interleaved runs of (seconds per epoch, seconds in all) for each way."""
    runs: dict[str, list[tuple[float, float]]] = {"raw loop": [], "Lightning": [], "Lightning + TB/ckpt/ES": [],
                                                  "sweeplight trial": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs["raw loop"].append(run_raw(size))
            runs["Lightning"].append(run_lightning(size, Path(tmp) / "plain", extras=False))
            runs["Lightning + TB/ckpt/ES"].append(run_lightning(size, Path(tmp) / "extras", extras=True))
            epoch, total, _ = run_sweeplight(size, Path(tmp) / "sweeplight")
            runs["sweeplight trial"].append((epoch, total))
    return {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
            for name, rs in runs.items()}


def profile(size: Size) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_sweeplight(size, Path(tmp) / "warm")
        profiler = cProfile.Profile()
        profiler.enable()
        run_sweeplight(size, Path(tmp) / "profiled")
        profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat of 4 epochs per size, for the test suite")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per way (default 3)")
    parser.add_argument("--profile", action="store_true", help="profile one tiny sweeplight trial instead")
    args = parser.parse_args(argv)
    quiet()
    models()
    if args.profile:
        profile(SIZES[0])
        return 0
    sizes = [Size(s.name, s.model, s.args, s.batch_size, 4) for s in SIZES] if args.quick else list(SIZES)
    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, lightning {pl.__version__}, {torch.get_num_threads()} threads, "
          f"{repeats} repeat(s), median")
    print(f"{'size':<6}{'way':<24}{'ms/epoch':>10}{'ms/step':>9}{'fixed s':>9}{'+ms/step':>10}{'ratio':>7}")
    for size in sizes:
        steps = steps_per_epoch(size)
        result = measure(size, repeats)
        base_epoch = result["raw loop"][0]
        for name, (epoch, total) in result.items():
            fixed = total - epoch * size.epochs
            print(f"{size.name:<6}{name:<24}{epoch * 1e3:>10.1f}{epoch / steps * 1e3:>9.2f}{fixed:>9.2f}"
                  f"{(epoch - base_epoch) / steps * 1e3:>10.2f}{epoch / base_epoch:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
