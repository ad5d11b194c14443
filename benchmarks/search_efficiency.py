"""How many training epochs does a study need to find a near-best model, with and without pruning?

Two real tasks from scikit-learn's bundled data, each with its example study file (``studies/digits.yaml``,
``studies/breast_cancer.yaml``). For each of four strategies and several sampler seeds, one study runs trials one
at a time through sweeplight's own trial path (``run_trial``: the real Trainer, callbacks, pruning callback and
summary) until it has trained ``--epochs`` epochs, the same compute for every strategy. Measured:

- epochs to target: total epochs trained (pruned trials count the epochs they ran) up to the end of the first
  trial that brings the study's best value (COMPLETE trials, as ``study.best_value``) within 0.5 accuracy points of
  the reference, the best accuracy a long TPE run without pruning found (stored below with its command);
- best value: the study's best value once the budget is spent (the "same final quality" check).

Strategies: the study file's sampler and pruner replaced by random search (no pruning), TPE (no pruning), TPE with
the median pruner (sweeplight's defaults) and TPE with the study file's Hyperband pruner (with ``objective.value:
best``, trials report their best value so far to it, as in any study). Studies are in memory
(the storage is not what is measured) and run with one torch thread (these MLPs are too small to gain from more, and
a second thread only adds contention). The ratio is last: median epochs to target of TPE over TPE + Hyperband.

    python benchmarks/search_efficiency.py                        # 5 seeds, both tasks, 400-epoch budget
    python benchmarks/search_efficiency.py --quick                # 1 seed, digits, 4-epoch trials (the test suite)
    python benchmarks/search_efficiency.py --reference digits     # the long TPE run that sets the target
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import logging
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from sweeplight._check import check_spec
from sweeplight._samplers import build_pruner, build_sampler
from sweeplight._space import sample
from sweeplight._spec import StudySpec, load_spec
from sweeplight._trial import run_trial

STUDIES = Path(__file__).resolve().parents[1] / "studies"
TASKS = {"digits": STUDIES / "digits.yaml", "breast_cancer": STUDIES / "breast_cancer.yaml"}
# Best val_acc of one long TPE run without pruning per task, from
#   python benchmarks/search_efficiency.py --reference TASK --trials 200
# (sampler seed 1000, no seed the benchmark itself uses; digits: 1 error in 269 validation images, 2,407 epochs;
# breast_cancer: 2 errors in 227, 2,294 epochs). Re-run it when a study file or its module changes.
REFERENCE = {"digits": 0.9962825179100037, "breast_cancer": 0.9911894202232361}
TOLERANCE = 0.005  # "within 0.5 %": accuracy points below the reference
# What the benchmark turns off because it costs time without changing the search: the last.ckpt written every epoch
# (for resuming preempted trials), and the LR monitor/TensorBoard/test cannot be turned off from a study file.
CHEAP = ["trainer.checkpoint={save_top_k: 1, save_last: false}"]
STRATEGIES = {
    "random": ["sampler={name: random}", "pruner={name: none}"],
    "TPE": ["pruner={name: none}"],
    "TPE + median": ["pruner={name: median}"],
    "TPE + Hyperband": [],  # the study file's own pruner
}


@dataclass(frozen=True)
class Run:
    """One study: the epochs each trial trained and the study's best value after each trial."""

    epochs: list[int]
    best: list[float]
    states: list[str]
    seconds: float = 0.0

    def epochs_to(self, target: float) -> int | None:
        total = 0
        for epochs, best in zip(self.epochs, self.best, strict=True):
            total += epochs
            if best >= target:
                return total
        return None


def study_spec(task: str, strategy: str, seed: int, root: Path, extra: list[str]) -> StudySpec:
    overrides = [f"root={root}", *CHEAP, *STRATEGIES[strategy], f"sampler.seed={seed}", *extra]
    spec = load_spec(TASKS[task], overrides)
    if strategy.startswith("TPE") and spec.sampler.name != "tpe":
        raise SystemExit(f"{TASKS[task]}: the TPE strategies keep the study file's sampler, which must be tpe")
    if strategy == "TPE + Hyperband" and spec.pruner.name != "hyperband":
        raise SystemExit(f"{TASKS[task]}: TPE + Hyperband keeps the study file's pruner, which must be hyperband")
    return spec


def run_study(spec: StudySpec, *, budget: int, max_trials: int | None = None) -> Run:
    """Trials one at a time, as a single local worker runs them, until ``budget`` epochs are trained."""
    components = check_spec(spec)
    study = optuna.create_study(study_name=spec.name, direction=spec.objective.direction,
                                sampler=build_sampler(spec), pruner=build_pruner(spec))
    run = Run([], [], [])
    start = time.perf_counter()
    while sum(run.epochs) < budget and (max_trials is None or len(run.epochs) < max_trials):
        trial = study.ask()
        params = sample(spec.search_space, trial)
        with contextlib.redirect_stdout(io.StringIO()):  # one line per epoch: the worker's log, not this table
            outcome = run_trial(spec, components, number=trial.number, params=params, trial=trial,
                                trial_dir=spec.directory / "trials" / str(trial.number))
        state = optuna.trial.TrialState[outcome.state]
        if state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            raise SystemExit(f"{spec.name}: trial {trial.number} ended {outcome.state}: {outcome.summary['error']}")
        study.tell(trial, outcome.value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        stored = study.trials[-1]
        if outcome.summary["epochs"] != len(stored.intermediate_values) or stored.state != state:
            raise SystemExit(f"{spec.name}: trial {trial.number}: {outcome.summary['epochs']} epochs in its summary, "
                             f"{len(stored.intermediate_values)} reported to the study ({stored.state.name})")
        summary_values = {int(k): v for k, v in outcome.summary["intermediate_values"].items()}
        if summary_values != stored.intermediate_values or (state == optuna.trial.TrialState.PRUNED and
                                                            stored.value != outcome.value):
            raise SystemExit(f"{spec.name}: trial {trial.number}: the study holds other intermediate values or another "
                             "pruned value than its summary")
        run.epochs.append(outcome.summary["epochs"])
        run.states.append(outcome.state)
        complete = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        run.best.append(max(complete, default=-math.inf))
    if spec.pruner.name == "none" and "PRUNED" in run.states:
        raise SystemExit(f"{spec.name}: a trial was pruned in a study without a pruner")
    if run.best[-1] != max((t.value for t in study.trials if t.value is not None and
                            t.state == optuna.trial.TrialState.COMPLETE), default=-math.inf):
        raise SystemExit(f"{spec.name}: the best value read back from the study differs from the one recorded")
    return Run(run.epochs, run.best, run.states, time.perf_counter() - start)


def median_epochs(values: list[int | None], budget: int) -> tuple[float, bool]:
    """Median with unreached studies counted as just over the budget; True when that censored value is the median."""
    counted = [budget + 1 if v is None else v for v in values]
    middle = statistics.median(counted)
    return middle, middle > budget


def reference(task: str, trials: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spec = study_spec(task, "TPE", 1000, Path(tmp), [])
        start = time.perf_counter()
        run = run_study(spec, budget=sys.maxsize, max_trials=trials)
    print(f"{task}: best val_acc {run.best[-1]!r} after {trials} TPE trials without pruning ({sum(run.epochs)} "
          f"epochs, {time.perf_counter() - start:.0f} s); first reached after {run.epochs_to(run.best[-1])} epochs")


def quiet() -> None:
    import lightning.pytorch  # noqa: F401 - its import sets its loggers to INFO: import it before quieting them

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)


def study_job(task: str, strategy: str, seed: int, directory: Path, extra: list[str], budget: int) -> Run:
    """One study, in this process or in a pool worker (which must quiet its own loggers)."""
    quiet()
    return run_study(study_spec(task, strategy, seed, directory, extra), budget=budget)


def run_all(jobs: list[tuple], workers: int) -> list[Run]:
    """Studies are independent and each runs its trials one at a time; with ``workers`` > 1 they run side by side
    in separate processes (what is measured is epochs, which does not depend on it)."""
    if workers <= 1:
        return [study_job(*job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(study_job, *zip(*jobs, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, digits only, 4-epoch trials, 12-epoch budget")
    parser.add_argument("--seeds", type=int, default=5, help="sampler seeds per strategy (default 5)")
    parser.add_argument("--epochs", type=int, default=400, help="epoch budget of each study (default 400)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="studies run side by side, one process each (default: 2, or 1 on one core)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES),
                        help="a subset of the strategies (the ratio needs TPE and TPE + Hyperband)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra study-file override for every study (to try a setting)")
    parser.add_argument("--verbose", action="store_true", help="also print each seed's epochs to target")
    parser.add_argument("--reference", choices=sorted(TASKS), help="run the long TPE reference for one task")
    parser.add_argument("--trials", type=int, default=200, help="trials of the reference run (default 200)")
    args = parser.parse_args(argv)
    quiet()
    if args.reference:
        reference(args.reference, args.trials)
        return 0
    tasks, seeds, budget, extra, workers = args.tasks, range(args.seeds), args.epochs, list(args.set), args.jobs
    if args.quick:
        tasks, seeds, budget, extra, workers = ["digits"], range(1), 12, [*extra, "trainer.max_epochs=4"], 1
    print(f"torch {torch.__version__}, optuna {optuna.__version__}, {len(seeds)} seed(s), {budget}-epoch budget "
          f"per study, target: reference - {TOLERANCE}; medians over seeds")
    cells = [(task, strategy) for task in tasks for strategy in args.strategies]
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(task, strategy, seed, Path(tmp) / f"{task}-{n}-{seed}", extra, budget)
                for n, (task, strategy) in enumerate(cells) for seed in seeds]
        runs = run_all(jobs, workers)
    print(f"{'task':<15}{'strategy':<17}{'epochs to target':>17}{'best value':>11}{'reached':>9}{'trials':>8}"
          f"{'epochs/trial':>13}{'s':>6}")
    medians: dict[tuple[str, str], float] = {}
    for n, (task, strategy) in enumerate(cells):
        group = runs[n * len(seeds):(n + 1) * len(seeds)]
        reached = [r.epochs_to(REFERENCE[task] - TOLERANCE) for r in group]
        middle, censored = median_epochs(reached, budget)
        medians[task, strategy] = middle
        shown = f">{budget}" if censored else f"{middle:.0f}"
        per_trial = sum(sum(r.epochs) for r in group) / sum(len(r.epochs) for r in group)
        print(f"{task:<15}{strategy:<17}{shown:>17}{statistics.median(r.best[-1] for r in group):>11.4f}"
              f"{f'{sum(r is not None for r in reached)}/{len(group)}':>9}"
              f"{statistics.median(len(r.epochs) for r in group):>8.0f}{per_trial:>13.1f}"
              f"{sum(r.seconds for r in group):>6.0f}")
        if args.verbose:
            print(f"    epochs to target per seed: {reached}; best per seed: {[round(r.best[-1], 4) for r in group]}")
    ratios = [(task, medians[task, "TPE"] / medians[task, "TPE + Hyperband"]) for task in tasks
              if (task, "TPE") in medians and (task, "TPE + Hyperband") in medians]
    if not ratios:
        return 0
    shown = ", ".join(f"{task} {ratio:.2f}" for task, ratio in ratios)
    print(f"ratio of epochs to target, TPE / TPE + Hyperband ({shown}), smallest: {min(r for _, r in ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
