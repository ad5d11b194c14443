"""How fast do ``sweeplight --help`` and ``sweeplight study status`` answer? Target: 0.3 s each, no torch import.

A study of N finished trials (plus two running ones with heartbeats and epochs) in SQLite, the default storage.
Each command runs as a user runs it (the ``sweeplight`` script next to this Python), 5 times, median. Baselines in
the same run: the bare interpreter (``python -c pass``), and the status read through Optuna (``optuna.load_study``,
``get_trials``), which is what ``study status`` did before it read the tables itself. The ratio is last.

    python benchmarks/cli_speed.py            # 10,000 trials
    python benchmarks/cli_speed.py --quick    # 300 trials, 2 runs each (the test suite runs this)
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState, create_trial

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("sweeplight")
OPTUNA_STATUS = ("import sys; from sweeplight._status import resolve; from sweeplight._storage import load_study; "
                 "from sweeplight._status_read import read_optuna; read_optuna(load_study(resolve(sys.argv[1])))")
LEAK = ("import sys, runpy; sys.argv = ['sweeplight', 'study', 'status', sys.argv[1]]; "
        "from sweeplight.cli import main; main(); "
        "print('heavy imports:', sorted(m for m in ('torch', 'lightning', 'optuna', 'numpy', 'pandas') if m in "
        "sys.modules))")


def make_study(root: Path, n: int) -> Path:
    """The digits study as launch leaves it (storage + spec.json; no model import), with ``n`` finished trials."""
    from sweeplight._samplers import build_sampler
    from sweeplight._spec import load_spec, spec_to_json
    from sweeplight._storage import open_storage
    from sweeplight._summary import write_json_atomic

    raw = yaml.safe_load((REPO / "studies" / "digits.yaml").read_text())
    raw.update(root=str(root / "runs"), model={"class": str(REPO / "studies" / "digits.py") + ":DigitsMLP"},
               data={"class": str(REPO / "studies" / "digits.py") + ":DigitsDataModule"})
    path = root / "digits.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path)
    spec.directory.mkdir(parents=True)
    write_json_atomic(spec.directory / "spec.json", spec_to_json(spec))
    study = optuna.create_study(study_name=spec.name, storage=open_storage(spec.storage), direction="maximize",
                                sampler=build_sampler(spec))
    template = study.ask()
    from sweeplight._space import sample

    sample(spec.search_space, template)
    study.tell(template, 0.5)
    distributions = study.trials[0].distributions
    params = study.trials[0].params
    start = datetime.datetime(2026, 1, 1)
    trials = []
    for number in range(n):
        state = TrialState.PRUNED if number % 3 == 0 else TrialState.COMPLETE
        trial = create_trial(state=state, value=0.5 + (number % 997) / 2000 if state == TrialState.COMPLETE else None,
                             params=params, distributions=distributions,
                             intermediate_values={e: 0.5 + e / 100 for e in range(15)},
                             user_attrs={"test_acc": 0.9, "test_loss": 0.3},
                             system_attrs={"sweeplight:summary": f"trials/{number}/summary.json",
                                           "sweeplight:worker": 0})
        trial.datetime_start, trial.datetime_complete = start, start + datetime.timedelta(seconds=30)
        trials.append(trial)
    study.add_trials(trials)
    for _ in range(2):
        trial = study.ask()
        study._storage.set_trial_system_attr(trial._trial_id, "sweeplight:heartbeat", time.time())
        trial.report(0.7, 0)
    return spec.directory


def timed(command: list[str], runs: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {result.stderr.strip()}")
        out = result.stdout
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="finished trials in the study (default 10,000)")
    parser.add_argument("--quick", action="store_true", help="300 trials, 2 runs each, for the test suite")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n, runs = (300, 2) if args.quick else (args.n, 5)
    if not SCRIPT.is_file():
        raise SystemExit(f"no sweeplight script next to {sys.executable}; pip install -e . first")
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_study(Path(tmp), n)
        python, _ = timed([sys.executable, "-c", "pass"], runs)
        help_s, help_out = timed([str(SCRIPT), "--help"], runs)
        status_s, status_out = timed([str(SCRIPT), "study", "status", str(directory)], runs)
        optuna_s, _ = timed([sys.executable, "-c", OPTUNA_STATUS, str(directory)], runs)
        _, leak = timed([sys.executable, "-c", LEAK, str(directory)], 1)
    assert "study" in help_out, help_out
    assert f"finished {n + 1} of 20" in status_out and "running: trial" in status_out, status_out
    assert leak.strip().endswith("heavy imports: []"), leak
    print(f"{n} finished trials + 2 running, SQLite; median of {runs} runs; status imports no torch/optuna/numpy")
    print(f"{'command':<44}{'seconds':>9}")
    print(f"{'baseline: python -c pass':<44}{python:>9.3f}")
    print(f"{'sweeplight --help':<44}{help_s:>9.3f}")
    print(f"{'before: status read through Optuna':<44}{optuna_s:>9.3f}")
    print(f"{'sweeplight study status':<44}{status_s:>9.3f}")
    print(f"{'ratio status / status through Optuna':<44}{status_s / optuna_s:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
