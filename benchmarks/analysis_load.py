"""How fast do study results load into pandas? sweeplight's trials frame against a plain ``json`` loop.

The baseline is what a user would write: read every ``summary.json`` with ``json.load`` and build a DataFrame.
sweeplight also reads the study from its storage (here a journal file) and joins the two. Four sweeplight loads:
without the cache (``SWEEPLIGHT_ANALYSIS_CACHE=0``), cold without the index (the first load of a study whose
summaries were written without it, by an older sweeplight: every summary is read; it writes the cache), cold with the
index (the first load of a study as workers leave it: each summary's row is in the index; it writes the cache) and
warm (the cache is there and a few trials were added since). The summaries are written by the workers' own
function (``_summary.write_summary``: ``json.dump``, indent 2, then the index line) and are older than the cache's
few-second window for files still being written. Each time is the best of ``--repeat`` runs (the machine is shared;
the two cold loads alternate); every frame must equal the uncached one, and the first load with the index must read
no summary. Prints one table; the ratios are last.

    python benchmarks/analysis_load.py            # 10,000 trials
    python benchmarks/analysis_load.py --quick    # 500 trials (the test suite runs this)
    python benchmarks/analysis_load.py --n 100000
    python benchmarks/analysis_load.py --storage sqlite   # the default storage instead of a journal file
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution

from sweeplight import _rows
from sweeplight._rows import CACHE_DIR, RACY_NS, index_file
from sweeplight._summary import write_summary
from sweeplight.analysis import curves_frame, load_results, trials_frame

EPOCHS = 20
DISTRIBUTIONS = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "width": CategoricalDistribution([32, 64, 128])}
START = datetime.datetime(2026, 1, 1)


def make_study(directory: Path, n: int, kind: str) -> str:
    """A study of ``n`` finished trials, each with a realistic summary.json (20 epochs of history)."""
    url = f"journal:///{directory / 'study.log'}" if kind == "journal" else f"sqlite:///{directory / 'study.db'}"
    optuna.create_study(study_name="bench", storage=storage_of(url), direction="maximize")
    add_trials(url, directory, range(n), bulk=True)
    return url


def storage_of(url: str) -> optuna.storages.BaseStorage:
    if url.startswith("journal"):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url.split(":///")[1]))
    return optuna.storages.RDBStorage(url)


def add_trials(url: str, directory: Path, numbers: range, bulk: bool = False) -> None:
    study = optuna.load_study(study_name="bench", storage=storage_of(url))
    trials = []
    for number in numbers:
        params = {"lr": 1e-4 * (1 + number % 997), "width": (32, 64, 128)[number % 3]}
        history = [{"epoch": e, "time_s": 0.1, "val_loss": 1 / (e + 1), "val_acc": 0.5 + e / 50,
                    "train_loss": 1 / (e + 2)} for e in range(EPOCHS)]
        path = directory / "trials" / str(number) / "summary.json"
        path.parent.mkdir(parents=True)
        write_summary(path, {  # as a worker writes it: the file, and its line in the study's index
            "schema_version": 1, "study": "bench", "trial": number, "state": "COMPLETE", "params": params,
            "objective": {"metric": "val_acc", "value": history[-1]["val_acc"]},
            "metrics": {"best": history[-1], "last": history[-1], "test": {"test_acc": 0.9}}, "history": history,
            "intermediate_values": {str(h["epoch"]): h["val_acc"] for h in history}, "epochs": EPOCHS,
            "stop_reason": "max_epochs", "wall_time_s": 2.0, "peak_rss_mb": 500.0, "hostname": "node1"},
            study="bench", study_dir=directory, number=number, durable=False)
        trials.append(optuna.trial.create_trial(
            params=params, distributions=DISTRIBUTIONS, value=history[-1]["val_acc"],
            system_attrs={"sweeplight:summary": str(path)},
            intermediate_values={h["epoch"]: h["val_acc"] for h in history}))
        trials[-1].datetime_start, trials[-1].datetime_complete = START, START + datetime.timedelta(seconds=2)
    if bulk and url.startswith("sqlite"):
        bulk_insert(study, trials)
        return
    with mock.patch("os.fsync"):  # setting up only: Optuna syncs the journal once per trial
        study.add_trials(trials)


def bulk_insert(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> None:
    """The trials in one transaction, as Optuna's RDB storage stores them (``add_trials`` makes ~90 SQL statements
    a trial: 10,000 trials would take many minutes to set up)."""
    from optuna.storages._rdb import models
    from sqlalchemy import insert

    tables: dict[Any, list[dict[str, Any]]] = {m: [] for m in (
        models.TrialModel, models.TrialValueModel, models.TrialParamModel, models.TrialIntermediateValueModel,
        models.TrialSystemAttributeModel)}
    for number, t in enumerate(trials):
        trial_id = number + 1
        tables[models.TrialModel].append({"trial_id": trial_id, "number": number, "study_id": study._study_id,
                                          "state": t.state, "datetime_start": t.datetime_start,
                                          "datetime_complete": t.datetime_complete})
        value, kind = models.TrialValueModel.value_to_stored_repr(t.value)
        tables[models.TrialValueModel].append({"trial_id": trial_id, "objective": 0, "value": value,
                                               "value_type": kind})
        for name, param in t.params.items():
            tables[models.TrialParamModel].append({
                "trial_id": trial_id, "param_name": name,
                "param_value": t.distributions[name].to_internal_repr(param),
                "distribution_json": optuna.distributions.distribution_to_json(t.distributions[name])})
        for step, inter in t.intermediate_values.items():
            tables[models.TrialIntermediateValueModel].append({
                "trial_id": trial_id, "step": step, "intermediate_value": inter, "intermediate_value_type": "FINITE"})
        tables[models.TrialSystemAttributeModel] += [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                                                     for k, v in t.system_attrs.items()]
    with getattr(study._storage, "_backend", study._storage).engine.begin() as conn:
        for model, rows in tables.items():
            conn.execute(insert(model.__table__), rows)


def baseline(directory: Path) -> pd.DataFrame:
    rows = []
    for path in directory.glob("trials/*/summary.json"):
        with open(path) as handle:
            summary = json.load(handle)
        rows.append({"number": summary["trial"], "objective": summary["objective"]["value"],
                     **{f"params.{k}": v for k, v in summary["params"].items()}, "epochs": summary["epochs"]})
    return pd.DataFrame(rows)


def load(url: str, cache: bool = True) -> tuple[pd.DataFrame, float, float]:
    """The trials frame, and the seconds load_results and trials_frame took."""
    start = time.perf_counter()
    results = load_results(url, cache=cache)
    middle = time.perf_counter()
    frame = trials_frame(*results)
    return frame, middle - start, time.perf_counter() - middle


def best(runs: list[tuple[pd.DataFrame, float, float]]) -> tuple[pd.DataFrame, float, float]:
    return min(runs, key=lambda run: run[1] + run[2])


def main(argv: list[str] | None = None) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="number of trials (default 10,000)")
    parser.add_argument("--new", type=int, default=10, help="trials added before the warm loads (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each load; the best is shown (default 3)")
    parser.add_argument("--storage", choices=["journal", "sqlite"], default="journal",
                        help="the study's storage (default journal)")
    parser.add_argument("--quick", action="store_true", help="500 trials, for the test suite")
    args = parser.parse_args(argv)
    n = 500 if args.quick else args.n
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        start = time.perf_counter()
        url = make_study(directory, n, args.storage)
        setup = time.perf_counter() - start
        cache = directory / CACHE_DIR
        index = index_file(cache, "bench")
        written = index.read_bytes()  # what the workers left: each summary's line
        time.sleep(RACY_NS / 1e9 + 0.1)  # the study finished a while ago
        plain = min((timed(baseline, directory) for _ in range(args.repeat)), key=lambda run: run[1])
        uncached = best([load(url, cache=False) for _ in range(args.repeat)])
        colds, firsts = [], []
        for _ in range(args.repeat):  # interleaved: the machine's load changes both alike
            shutil.rmtree(cache, ignore_errors=True)
            colds.append(load(url))  # a study written without the index (an older sweeplight)
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir()
            index.write_bytes(written)
            firsts.append(load(url))
        cold, first = best(colds), best(firsts)
        left = index.stat().st_size  # the index after the first load: the cache holds its rows now
        shutil.rmtree(cache)
        cache.mkdir()
        index.write_bytes(written)
        with mock.patch.object(_rows, "read_part", wraps=_rows.read_part) as reads:
            load(url)
        assert reads.call_count == 0, f"the first load with the index read {reads.call_count} summaries"
        add_trials(url, directory, range(n, n + args.new))
        warm = best([load(url) for _ in range(args.repeat)])
        curves, t_curves = timed(curves_frame, url)
        total = n + args.new
        assert len(plain[0]) == n and len(cold[0]) == n and len(warm[0]) == total, (len(plain[0]), len(warm[0]))
        pd.testing.assert_frame_equal(cold[0], uncached[0], check_exact=True)
        pd.testing.assert_frame_equal(first[0], uncached[0], check_exact=True)
        pd.testing.assert_frame_equal(warm[0], load(url, cache=False)[0], check_exact=True)  # the uncached path
        assert sorted(warm[0]["number"]) == list(range(total))
        assert cold[0]["objective"].sort_values().tolist() == plain[0]["objective"].sort_values().tolist()
        assert len(curves) == total * EPOCHS * 4  # time_s, val_loss, val_acc, train_loss per epoch
        cache_mb = sum(p.stat().st_size for p in cache.glob("*.json")) / 1e6
        size_kb = os.path.getsize(directory / "trials" / "0" / "summary.json") / 1e3
    print(f"{n} trials ({setup:.1f} s to create), summaries of {EPOCHS} epochs ({size_kb:.1f} KB), {args.storage} "
          f"storage; best of {args.repeat}; cache {cache_mb:.1f} MB; index {len(written) / 1e6:.1f} MB as written, "
          f"{left / 1e3:.1f} KB after the first load")
    print(f"{'step':<64}{'seconds':>10}")
    rows = [("baseline: json.load loop -> DataFrame (summaries only)", plain[1]),
            ("sweeplight, no cache: load_results + trials_frame", uncached[1] + uncached[2]),
            (f"  load_results {uncached[1]:.3f} + trials_frame {uncached[2]:.3f}", None),
            ("sweeplight cold, no index (first load, writes the cache)", cold[1] + cold[2]),
            (f"  load_results {cold[1]:.3f} + trials_frame {cold[2]:.3f}", None),
            ("sweeplight cold, index (first load, writes the cache)", first[1] + first[2]),
            (f"  load_results {first[1]:.3f} + trials_frame {first[2]:.3f}", None),
            (f"sweeplight warm (cache present, {args.new} new trials)", warm[1] + warm[2]),
            (f"  load_results {warm[1]:.3f} + trials_frame {warm[2]:.3f}", None),
            (f"curves_frame ({len(curves):,} rows, long format)", t_curves),
            ("ratio cold without index / baseline", (cold[1] + cold[2]) / plain[1]),
            ("ratio cold with index / baseline", (first[1] + first[2]) / plain[1]),
            ("ratio warm / baseline", (warm[1] + warm[2]) / plain[1])]
    for label, value in rows:
        if value is None:
            print(label)
        else:
            print(f"{label:<64}{value:>10.{2 if label.startswith('ratio') else 3}f}")
    return 0


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


if __name__ == "__main__":
    raise SystemExit(main())
