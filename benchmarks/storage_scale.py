"""How does the study's storage hold up? Parallel workers on SQLite, a journal file and PostgreSQL, and the ask path
in studies of 100 to 10,000 finished trials.

Throughput: 1, 2, 4 and 8 real worker processes (tests/assets/quick_worker.py: the production loop, trials that do
no training) share one study of N trials; trials/s is N over the span from the first trial's start to the last
one's end (the workers' start-up is left out), errors are worker exits other than 0, tracebacks and failed
trials, retries the storage outages a worker waited out ("database is locked"). The baseline is raw Optuna as a user
runs it on several processes: each process ``optimize(objective, n_trials=N / processes)`` on the storage URL.

Ask latency: a study with studies/digits.yaml's space, sampler (TPE) and pruner (Hyperband) (``--space small``: the
throughput runs' two parameters, no pruner), filled with N realistic finished trials (two in three pruned, sweeplight's
attributes); then rounds in which three ask in turn: sweeplight's worker (under the ask lock: read the trials, fail
stale ones, the budget check, the stamped ask, then sampling the space with its TPE, ``build_sampler``), the same
worker with Optuna's ``TPESampler`` (what sweeplight used before), and raw Optuna (``study.ask()`` and the suggest
calls, ``TPESampler``). Shown: the first ask of a fresh process (which reads the whole study), then medians of the
ask path, the sampling, and the sampler's share of it (wall and CPU; the rest is Optuna writing each parameter).
Target: <= 50 ms at 10,000 trials. PostgreSQL is a private throwaway server (tests/postgres.py), so nothing needs to
be running.

    python benchmarks/storage_scale.py             # 400 trials per run, 1/2/4/8 workers, latency at 100/1k/10k
    python benchmarks/storage_scale.py --latency   # only the ask latency (about 5 minutes)
    python benchmarks/storage_scale.py --quick     # a few runs of each storage (the test suite runs this)
    python benchmarks/storage_scale.py --storages sqlite,journal --workers 1,4 --n 1000

The ratio is last: sweeplight's ask with sampling over raw Optuna's at the largest size on the slowest storage when
the latency is measured, else sweeplight trials/s over raw Optuna's (SQLite, 4 processes, or the most run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trial_overhead import QUICK_WORKER, REPO, SEED, Storages, check, postgres_server, study_dir

from sweeplight import _tpe, _worker
from sweeplight._heartbeat import ask_lock
from sweeplight._samplers import build_pruner, build_sampler
from sweeplight._space import Param, sample
from sweeplight._spec import StudySpec, load_spec, spec_from_dir, spec_to_json
from sweeplight._storage import create_or_load_study, load_study
from sweeplight._summary import write_json_atomic
from sweeplight._tpe import CachedTPESampler
from sweeplight._writes import params_in_one_write

RAW_WORKER = """
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, name, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if url.startswith("journal:///"):
    from optuna.storages.journal import JournalFileBackend
    url = optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:///"):]))
def objective(trial):
    value = trial.suggest_float("lr", 1e-3, 1e-1) + trial.suggest_int("width", 8, 64)
    for step in range(3):
        trial.report(value * (step + 1) / 3, step)
    return value
study = optuna.load_study(study_name=name, storage=url, sampler=optuna.samplers.TPESampler(seed=seed))
study.optimize(objective, n_trials=n)
"""


@dataclass
class Run:
    storage: str
    who: str
    workers: int
    rate: float
    errors: int
    retries: int


# ----------------------------------------------------------------- throughput


def span_rate(trials: list) -> float:
    """Trials per second from the first trial's start to the last one's end."""
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    return len(trials) / max((end - start).total_seconds(), 1e-6)


def sweeplight_run(store: Storages, workers: int, n: int, tag: str) -> Run:
    directory = study_dir(store, f"w{workers}{tag}", n)
    procs = [subprocess.Popen([sys.executable, str(QUICK_WORKER), "work", str(directory), "--worker", str(i),
                               "--launch-id", "scale"], cwd=directory, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(workers)]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    trials = load_study(spec_from_dir(directory)).get_trials()
    failed = sum(t.state != optuna.trial.TrialState.COMPLETE for t in trials)
    errors = sum(p.returncode != 0 for p in procs) + sum(o.count("Traceback") for o in outputs) + failed
    if not errors:
        check(trials, n, directory)  # the budget is exact and every value, report and summary is its trial's
        assert len({t.system_attrs["sweeplight:worker"] for t in trials}) == workers or n < 4 * workers
    return Run(store.label, "sweeplight", workers, span_rate(trials), errors,
               sum(o.count(" unavailable (") for o in outputs))


def raw_run(store: Storages, workers: int, n: int, tag: str) -> Run:
    name = f"raw{workers}{tag}"
    location = store.new(name)
    url = {"sqlite": f"sqlite:///{location}", "journal": f"journal:///{location}"}.get(store.kind, location)
    storage = store_url(store, url)
    optuna.create_study(study_name=name, storage=storage, direction="maximize")
    share = [n // workers + (i < n % workers) for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, "-c", RAW_WORKER, url, name, str(count), str(SEED)], cwd=store.directory,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for count in share]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    errors = sum(p.returncode != 0 for p in procs) + sum(o.count("Traceback") for o in outputs)
    errors += len(trials) - len(complete)
    if not errors:
        check(trials, n)
    return Run(store.label, "raw Optuna", workers, span_rate(complete) if complete else 0.0, errors, 0)


# ----------------------------------------------------------------- ask latency


DIGITS = REPO / "studies" / "digits.yaml"


def latency_dir(store: Storages, name: str, n: int, space: str) -> Path:
    """A launched study: ``digits``: studies/digits.yaml's search space (8 parameters: log floats, an int with a
    step, categoricals, a conditional one), sampler (TPE, 6 start-up trials) and pruner (Hyperband); ``small``: the
    throughput runs' two parameters (lr, width), TPE's defaults, no pruner."""
    if space == "small":
        return study_dir(store, name, n)
    digits = yaml.safe_load(DIGITS.read_text())
    raw = {"name": name, "root": str(store.directory / "runs"), "storage": store.new(name),
           "model": {"class": f"{REPO / 'studies' / 'digits.py'}:DigitsMLP"},
           "data": {"class": f"{REPO / 'studies' / 'digits.py'}:DigitsDataModule"},
           "objective": digits["objective"], "search_space": digits["search_space"],
           "sampler": {**digits["sampler"], "seed": SEED}, "pruner": digits["pruner"],
           "trainer": {"max_epochs": digits["trainer"]["max_epochs"]},
           "budget": {"n_trials": n, "max_failures": None}, "executor": {"heartbeat_interval": 10}}
    spec = load_spec(raw)
    create_or_load_study(spec, sampler=build_sampler(spec), pruner=build_pruner(spec))
    (spec.directory / "workers").mkdir(parents=True, exist_ok=True)
    write_json_atomic(spec.directory / "spec.json", spec_to_json(spec))
    return spec.directory


def finished_trial(number: int, space: tuple[Param, ...], epochs: int) -> optuna.trial.FrozenTrial:
    """A finished trial as a sweeplight worker leaves it: random values of the space, its stamp and result
    attributes; two in three are pruned at Hyperband's first rungs, the others report every epoch."""
    rng = random.Random(number)
    params: dict[str, Any] = {}
    for p in space:
        if not p.is_active(params):
            continue
        if p.type == "categorical":
            params[p.name] = rng.choice(p.choices)
        elif p.type == "int":
            params[p.name] = rng.randrange(int(p.low), int(p.high) + 1, int(p.step or 1))
        elif p.log:
            params[p.name] = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
        else:
            params[p.name] = rng.uniform(p.low, p.high)
    value = 0.5 + 0.45 * rng.random()
    reported = rng.choice([2, 2, 6, 6, epochs, epochs])
    state = optuna.trial.TrialState.COMPLETE if reported == epochs else optuna.trial.TrialState.PRUNED
    start = datetime.datetime(2026, 1, 1) + datetime.timedelta(seconds=60 * number)
    trial = optuna.trial.create_trial(
        params=params, distributions={p.name: p.distribution() for p in space if p.name in params},
        value=value if state == optuna.trial.TrialState.COMPLETE else None, state=state,
        intermediate_values={epoch: value * (epoch + 1) / epochs for epoch in range(reported)},
        system_attrs={"sweeplight:heartbeat": start.timestamp() + 55, "sweeplight:launch": "fill",
                      "sweeplight:worker": number % 8, "sweeplight:pid": 1000 + number % 8,
                      "sweeplight:host": "node1", "sweeplight:stop_reason": "max_epochs" if reported == epochs
                      else "pruned", "sweeplight:summary": f"/runs/fill/trials/{number}/summary.json",
                      "sweeplight:epochs": reported},
        user_attrs={"test_acc": 0.9})
    trial.datetime_start, trial.datetime_complete = start, start + datetime.timedelta(seconds=58)
    return trial


def fill(study: optuna.Study, count: int, spec: StudySpec) -> None:
    """Add finished trials up to ``count``: ``add_trials`` for a journal; one bulk transaction for a database, where
    ``add_trials`` writes each trial with ~90 SQL statements (10,000 trials would take 20 minutes on SQLite)."""
    trials = [finished_trial(i, spec.search_space, spec.trainer.max_epochs)
              for i in range(len(study.get_trials(deepcopy=False)), count)]
    backend = study._storage
    backend = getattr(backend, "_backend", backend)
    if not isinstance(backend, optuna.storages.RDBStorage):
        study.add_trials(trials)
        return
    from optuna.storages._rdb import models
    from sqlalchemy import func, insert, select

    with backend.engine.begin() as conn:
        first = (conn.execute(select(func.max(models.TrialModel.trial_id))).scalar() or 0) + 1
        numbers = conn.execute(select(func.count()).select_from(models.TrialModel)
                               .where(models.TrialModel.study_id == study._study_id)).scalar()
        rows: dict[Any, list[dict]] = {m: [] for m in (models.TrialModel, models.TrialValueModel,
                                                       models.TrialParamModel, models.TrialIntermediateValueModel,
                                                       models.TrialSystemAttributeModel,
                                                       models.TrialUserAttributeModel)}
        utc = datetime.timezone.utc
        for offset, t in enumerate(trials):
            trial_id = first + offset
            rows[models.TrialModel].append({
                "trial_id": trial_id, "number": numbers + offset, "study_id": study._study_id, "state": t.state,
                "datetime_start": t.datetime_start.astimezone(utc).replace(tzinfo=None),
                "datetime_complete": t.datetime_complete.astimezone(utc).replace(tzinfo=None)})
            if t.value is not None:
                value, kind = models.TrialValueModel.value_to_stored_repr(t.value)
                rows[models.TrialValueModel].append({"trial_id": trial_id, "objective": 0, "value": value,
                                                     "value_type": kind})
            for name, param in t.params.items():
                distribution = t.distributions[name]
                rows[models.TrialParamModel].append({
                    "trial_id": trial_id, "param_name": name, "param_value": distribution.to_internal_repr(param),
                    "distribution_json": optuna.distributions.distribution_to_json(distribution)})
            for step, inter in t.intermediate_values.items():
                inter, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(inter)
                rows[models.TrialIntermediateValueModel].append({
                    "trial_id": trial_id, "step": step, "intermediate_value": inter, "intermediate_value_type": kind})
            for model, attrs in ((models.TrialSystemAttributeModel, t.system_attrs),
                                 (models.TrialUserAttributeModel, t.user_attrs)):
                rows[model] += [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
        for model, batch in rows.items():
            if batch:
                conn.execute(insert(model.__table__), batch)
        if backend.engine.name == "postgresql":  # the ids given above did not advance the trials' sequence
            conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('trials', 'trial_id'), "
                                 "(SELECT max(trial_id) FROM trials))")


def timed(function: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def ask_latency(store: Storages, sizes: list[int], asks: int, space: str = "digits"
                ) -> list[tuple[int, dict[str, float]]]:
    """Per study size: the first and the median seconds of an ask (the ask, then sampling the space) by sweeplight's
    worker with its TPE (``build_sampler``), by the same worker with Optuna's ``TPESampler``, and by raw Optuna
    (``study.ask()`` and the suggest calls, ``TPESampler``). The three take turns, one ask each per round."""
    directory = latency_dir(store, "latency", max(sizes) + 10 * asks, space)
    spec = spec_from_dir(directory)
    url_study = load_study(spec)
    tpe_options = {**spec.sampler.options, "seed": spec.sampler.seed}
    results = []
    for size in sizes:
        fill(url_study, size, spec)
        found = len(url_study.get_trials(deepcopy=False))
        assert found >= size, (found, size)

        def worker_ask(study: optuna.Study) -> Any:
            """The worker's calls under the ask lock, then the sampling: (trial, params, ask seconds)."""
            start = time.perf_counter()
            with ask_lock(directory):
                trials = _worker.live_trials(study, spec)
                assert _worker.stop_reason(study, spec, launch_id="lat", deadline=None, trials=trials) is None
                trial, _ = _worker.ask(study, trials, {"sweeplight:heartbeat": time.time(),
                                                       "sweeplight:launch": "lat", "sweeplight:worker": 0})
                asked = time.perf_counter() - start
                with params_in_one_write(trial):
                    params = sample(spec.search_space, trial)
            return trial, params, asked

        def raw_ask(study: optuna.Study) -> Any:
            start = time.perf_counter()
            trial = study.ask()
            asked = time.perf_counter() - start
            return trial, sample(spec.search_space, trial), asked

        # Fresh studies: the first ask of each reads the whole study, as a new worker process's does.
        ours = load_study(spec, sampler=build_sampler(spec), pruner=build_pruner(spec), max_wait=30)
        assert isinstance(ours.sampler, CachedTPESampler)
        old = load_study(spec, sampler=optuna.samplers.TPESampler(**tpe_options), pruner=build_pruner(spec),
                         max_wait=30)
        raw = optuna.load_study(study_name=spec.name, storage=store_url(store, spec.storage),
                                sampler=optuna.samplers.TPESampler(**tpe_options), pruner=build_pruner(spec))
        series = {"sweeplight": (ours, worker_ask), "sweeplight, Optuna TPE": (old, worker_ask),
                  "raw": (raw, raw_ask)}
        in_sampler = {label: sampler_clock(study.sampler) for label, (study, _) in series.items()}
        times: dict[str, list[tuple[float, float, float, float]]] = {label: [] for label in series}
        for _ in range(asks + 1):
            for label, (study, ask) in series.items():
                in_sampler[label][:] = [0.0, 0.0]
                (trial, params, asked), seconds = timed(ask, study)
                times[label].append((asked, seconds - asked, *in_sampler[label]))
                assert {p.name for p in spec.search_space} - set(params) <= {"momentum"}, params
                study.tell(trial, 0.5)
        assert ours.sampler.optuna_path_calls == 0 or not _tpe._EXACT, "sweeplight's TPE took Optuna's own path"
        row: dict[str, float] = {}
        for label, values in times.items():
            row[f"{label}, first"] = sum(values[0][:2])
            row[f"{label}, ask"] = statistics.median(v[0] for v in values[1:])
            row[f"{label}, sampling"] = statistics.median(v[1] for v in values[1:])
            row[f"{label}, TPE"] = statistics.median(v[2] for v in values[1:])
            row[f"{label}, TPE CPU"] = statistics.median(v[3] for v in values[1:])
            row[label] = statistics.median(v[0] + v[1] for v in values[1:])
        results.append((size, row))
    return results


def sampler_clock(sampler: Any) -> list[float]:
    """Time the sampler's entry points (the sampler's share of sampling; the rest is Optuna writing each parameter
    and, with Hyperband, making a bracket study per suggest call): wall and CPU seconds add up in the returned list."""
    spent = [0.0, 0.0]  # wall, CPU
    for name in ("before_trial", "infer_relative_search_space", "sample_relative", "sample_independent"):
        method = getattr(sampler, name)

        def clocked(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
                spent[1] += time.process_time() - cpu

        setattr(sampler, name, clocked)
    return spent


def store_url(store: Storages, url: str) -> Any:
    """The storage a user passes to Optuna for sweeplight's storage URL."""
    if url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:///"):]))
    return url


# ----------------------------------------------------------------- main


@contextlib.contextmanager
def storage_kinds(kinds: list[str], where: str) -> Any:
    """One Storages per kind, sharing one throwaway PostgreSQL server (started only if asked for)."""
    with tempfile.TemporaryDirectory(dir=where) as tmp, contextlib.ExitStack() as stack:
        server = stack.enter_context(postgres_server()) if "postgresql" in kinds else None
        yield {kind: Storages(kind, Path(tmp) / kind, server if kind == "postgresql" else None) for kind in kinds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400, help="trials per throughput run (default 400)")
    parser.add_argument("--workers", default="1,2,4,8", help="worker processes per run (default 1,2,4,8)")
    parser.add_argument("--storages", default="sqlite,journal,postgresql")
    parser.add_argument("--raw-workers", default="1,4", help="raw Optuna baseline process counts (default 1,4)")
    parser.add_argument("--sizes", default="100,1000,10000", help="study sizes for the ask latency")
    parser.add_argument("--space", choices=("digits", "small"), default="digits",
                        help="the ask latency's study: studies/digits.yaml's space, sampler and pruner (default), or "
                        "the throughput runs' two parameters")
    parser.add_argument("--asks", type=int, default=20, help="timed asks per size (default 20)")
    parser.add_argument("--dir", default=None, help="where the storage files go (default: the system temp dir)")
    parser.add_argument("--latency", action="store_true", help="only the ask latency (no throughput runs)")
    parser.add_argument("--quick", action="store_true",
                        help="1 SQLite worker and 1 raw process, 1 PostgreSQL worker, 16 trials, latency at 100 on "
                        "SQLite and journal: for the test suite")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kinds = args.storages.split(",")
    plan = {k: ([int(w) for w in args.workers.split(",") if w], [int(w) for w in args.raw_workers.split(",") if w])
            for k in kinds}
    sizes = {k: [int(s) for s in args.sizes.split(",") if s] for k in kinds}
    if args.latency:
        plan = {k: ([], []) for k in kinds}
    n, asks = args.n, args.asks
    if args.quick:
        plan = {"sqlite": ([1], [1]), "journal": ([], []), "postgresql": ([1], [])}
        sizes = {"sqlite": [100], "journal": [100], "postgresql": []}
        n, asks = 16, 3
    where = args.dir or ("/dev/shm" if args.quick and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir())
    runs: list[Run] = []
    latency: list[tuple[str, int, dict[str, float]]] = []
    with storage_kinds(list(plan), where) as stores:
        for kind, (counts, raw_counts) in plan.items():
            stores[kind].directory.mkdir(parents=True, exist_ok=True)
            for workers in counts:
                runs.append(sweeplight_run(stores[kind], workers, n, "s"))
                if workers in raw_counts:
                    runs.append(raw_run(stores[kind], workers, n, "r"))
            for workers in (w for w in raw_counts if w not in counts):
                runs.append(raw_run(stores[kind], workers, n, "r"))
            if sizes[kind]:
                latency += [(stores[kind].label, size, row)
                            for size, row in ask_latency(stores[kind], sizes[kind], asks, args.space)]
    if runs:
        print(f"throughput: {n} trivial trials per run, TPE, trials/s from the first trial's start to the last one's "
              "end")
        print(f"{'storage':<12}{'loop':<12}{'workers':>8}{'trials/s':>10}{'errors':>8}{'retries':>9}")
    for r in runs:
        print(f"{r.storage:<12}{r.who:<12}{r.workers:>8}{r.rate:>10.1f}{r.errors:>8}{r.retries:>9}")
    pairs = [(o, r) for o in runs for r in runs if o.who == "sweeplight" and r.who == "raw Optuna"
             and o.storage == r.storage and o.workers == r.workers and r.rate > 0]
    if pairs:
        pick = next((p for p in pairs if p[0].storage == "sqlite" and p[0].workers == 4), None) or max(
            pairs, key=lambda p: (p[0].storage == "sqlite", p[0].workers))
        print(f"ratio sweeplight / raw trials/s ({pick[0].storage}, {pick[0].workers} processes)"
              f"{pick[0].rate / pick[1].rate:>10.2f}")
    if latency:
        columns = {"sweeplight, first": "ours 1st", "sweeplight, ask": "ours ask", "sweeplight, sampling": "+ sampling",
                   "sweeplight, TPE": "(TPE)", "sweeplight": "= ours", "sweeplight, Optuna TPE, TPE": "before TPE",
                   "sweeplight, Optuna TPE": "= before", "raw, first": "raw 1st", "raw, ask": "raw ask",
                   "raw, TPE": "raw TPE", "raw": "= raw"}
        study = f"{DIGITS.name}'s space, TPE, Hyperband" if args.space == "digits" else "lr and width, TPE"
        print(f"ask latency, ms ({study}): a fresh process's first ask, then medians of "
              f"{asks}; ours ask = lock, read trials, stale check, budget, stamped ask; + sampling = suggesting the "
              "space, (TPE) its part in the sampler (the rest: Optuna writes each parameter); before = the same worker "
              "with Optuna's TPESampler; raw = study.ask() + suggest calls with TPESampler")
        print(f"{'storage':<12}{'trials':>7}" + "".join(f"{name:>11}" for name in columns.values()))
        for label, size, row in latency:
            print(f"{label:<12}{size:>7}" + "".join(f"{row[key] * 1e3:>11.1f}" for key in columns))
        largest = max(size for _, size, _ in latency)
        label, _, worst = max(((label, size, row) for label, size, row in latency if size == largest),
                              key=lambda item: item[2]["sweeplight"])
        print(f"sweeplight's ask with sampling at {largest} trials, slowest storage ({label}): "
              f"{worst['sweeplight'] * 1e3:.1f} ms (target <= 50; before: {worst['sweeplight, Optuna TPE'] * 1e3:.1f}, "
              f"raw Optuna: {worst['raw'] * 1e3:.1f})")
        print(f"TPE's part at {largest} trials, CPU ms of the sampler per ask (less sensitive to load than wall time), "
              "sweeplight's TPE / Optuna's TPESampler in the worker: " + ", ".join(
                  f"{label} {row['sweeplight, TPE CPU'] * 1e3:.1f} / {row['sweeplight, Optuna TPE, TPE CPU'] * 1e3:.1f}"
                  for label, size, row in latency if size == largest))
        print(f"ratio sweeplight ask / raw Optuna ask, with sampling ({label}, {largest} trials)"
              f"{worst['sweeplight'] / worst['raw']:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
