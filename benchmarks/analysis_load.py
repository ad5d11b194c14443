"""How fast do study results load into pandas? sweeplight's trials frame against a plain ``json`` loop.

The baseline is what a user would write: read every ``summary.json`` with ``json.load`` and build a DataFrame.
sweeplight also reads the study from its storage (here a journal file) and joins the two, so the ratio shows what
the join costs. Prints one table; the ratio is last.

    python benchmarks/analysis_load.py            # 10,000 trials
    python benchmarks/analysis_load.py --quick    # 500 trials (the test suite runs this)
    python benchmarks/analysis_load.py --n 100000
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution

from sweeplight.analysis import curves_frame, load_results, trials_frame

EPOCHS = 20


def make_study(directory: Path, n: int) -> str:
    """A journal study of ``n`` finished trials, each with a realistic summary.json (20 epochs of history)."""
    url = f"journal:///{directory / 'study.log'}"
    study = optuna.create_study(study_name="bench", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(directory / "study.log"))), direction="maximize")
    distributions = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "width": CategoricalDistribution([32, 64, 128])}
    start = datetime.datetime(2026, 1, 1)
    trials = []
    for number in range(n):
        params = {"lr": 1e-4 * (1 + number % 997), "width": (32, 64, 128)[number % 3]}
        history = [{"epoch": e, "time_s": 0.1, "val_loss": 1 / (e + 1), "val_acc": 0.5 + e / 50,
                    "train_loss": 1 / (e + 2)} for e in range(EPOCHS)]
        path = directory / "trials" / str(number) / "summary.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({
            "schema_version": 1, "study": "bench", "trial": number, "state": "COMPLETE", "params": params,
            "objective": {"metric": "val_acc", "value": history[-1]["val_acc"]},
            "metrics": {"best": history[-1], "last": history[-1], "test": {"test_acc": 0.9}}, "history": history,
            "intermediate_values": {str(h["epoch"]): h["val_acc"] for h in history}, "epochs": EPOCHS,
            "stop_reason": "max_epochs", "wall_time_s": 2.0, "peak_rss_mb": 500.0, "hostname": "node1"}))
        trials.append(optuna.trial.create_trial(
            params=params, distributions=distributions, value=history[-1]["val_acc"],
            system_attrs={"sweeplight:summary": str(path)},
            intermediate_values={h["epoch"]: h["val_acc"] for h in history}))
        trials[-1].datetime_start, trials[-1].datetime_complete = start, start + datetime.timedelta(seconds=2)
    study.add_trials(trials)
    return url


def baseline(directory: Path) -> pd.DataFrame:
    rows = []
    for path in directory.glob("trials/*/summary.json"):
        with open(path) as handle:
            summary = json.load(handle)
        rows.append({"number": summary["trial"], "objective": summary["objective"]["value"],
                     **{f"params.{k}": v for k, v in summary["params"].items()}, "epochs": summary["epochs"]})
    return pd.DataFrame(rows)


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="number of trials (default 10,000)")
    parser.add_argument("--quick", action="store_true", help="500 trials, for the test suite")
    args = parser.parse_args(argv)
    n = 500 if args.quick else args.n
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        url, setup = timed(make_study, directory, n)
        plain, t_plain = timed(baseline, directory)
        results, t_load = timed(load_results, url)
        frame, t_frame = timed(trials_frame, *results)
        curves, t_curves = timed(curves_frame, *results)
        assert len(plain) == len(frame) == n, (len(plain), len(frame))
        assert sorted(frame["number"]) == list(range(n))
        assert frame["objective"].sort_values().tolist() == plain["objective"].sort_values().tolist()
        assert len(curves) == n * EPOCHS * 4  # time_s, val_loss, val_acc, train_loss per epoch
    total = t_load + t_frame
    print(f"{n} trials ({setup:.1f} s to create)")
    print(f"{'step':<40}{'seconds':>10}")
    print(f"{'baseline: json loop -> DataFrame':<40}{t_plain:>10.3f}")
    print(f"{'sweeplight: read storage + summaries':<40}{t_load:>10.3f}")
    print(f"{'sweeplight: trials_frame':<40}{t_frame:>10.3f}")
    print(f"{'sweeplight: curves_frame (long format)':<40}{t_curves:>10.3f}")
    print(f"{'ratio trials (read + frame) / baseline':<40}{total / t_plain:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
