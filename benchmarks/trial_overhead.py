"""What does sweeplight cost per trial, around the training? A real worker against a plain ``study.optimize`` loop.

Both run trials that do no training (tests/assets/quick_worker.py's ``quick_trial``: the value is ``lr + width``,
three intermediate values reported), on the same kind of storage, with the same sampler (TPE, seed 1) and space:

- raw: what a user would write, ``study.optimize(objective, n_trials=N)`` on a storage URL of that kind; and the
  same loop on the storage opened as sweeplight opens it (SQLite's write-ahead log, ...), which isolates the loop;
- sweeplight: ``sweeplight._worker.work`` in this process: the ask lock, budget and stale-trial check, the stamped
  ask, the heartbeat thread, ``summary.json`` before the attributes and the tell (fsynced beside the next ask),
  the retrying storage.

Also printed: where a sweeplight trial's time goes (each step timed inside the real loop), storage writes per
trial (commits that wrote, or journal appends), and a worker's start-up (its imports, and a real worker process that
starts, checks the budget and stops). The ratio (sweeplight trials/s over raw trials/s) is last.

    python benchmarks/trial_overhead.py                      # 1,000 trials, SQLite, 2 interleaved repeats
    python benchmarks/trial_overhead.py --storage journal    # or: postgresql (a private throwaway server), a URL
    python benchmarks/trial_overhead.py --quick              # 30 trials in /dev/shm (the test suite)
    python benchmarks/trial_overhead.py --profile            # cProfile of one worker doing 200 trials
    python benchmarks/trial_overhead.py --dir /dev/shm       # storage in RAM: what is left is CPU
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import functools
import importlib
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.assets.quick_worker and tests.postgres

from sweeplight import _worker  # noqa: E402
from sweeplight._samplers import build_pruner, build_sampler  # noqa: E402
from sweeplight._spec import load_spec, spec_to_json  # noqa: E402
from sweeplight._storage import create_or_load_study, load_study, open_storage  # noqa: E402
from sweeplight._summary import write_json_atomic  # noqa: E402
from tests.assets.quick_worker import quick_trial  # noqa: E402

QUICK_WORKER = REPO / "tests" / "assets" / "quick_worker.py"
SEED = 1


# ----------------------------------------------------------------- storages


@contextlib.contextmanager
def postgres_server() -> Iterator[Any]:
    """tests/postgres.py's private throwaway server (initdb in a temporary directory), deleted at the end."""
    from tests.postgres import find_bindir, throwaway_server

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries not found (initdb, pg_ctl); install postgresql or give a URL")
    with throwaway_server(bindir) as server:
        yield server


class Storages:
    """Fresh, empty storages of one kind: ``sqlite``, ``journal``, ``postgresql`` (a throwaway server) or a URL."""

    def __init__(self, kind: str, directory: Path, server: Any = None) -> None:
        self.kind, self.directory, self.server = kind, directory, server

    @property
    def label(self) -> str:
        return self.kind if "://" not in self.kind else self.kind.split("://")[0]

    def new(self, name: str) -> str:
        """A storage URL for sweeplight (a path for the files)."""
        if self.kind == "sqlite":
            return str(self.directory / f"{name}.db")
        if self.kind == "journal":
            return str(self.directory / f"{name}.log")
        if self.server is not None:
            return self.server.new_database(f"b_{name}_{uuid.uuid4().hex[:8]}")
        return self.kind  # a URL the user gave: one study name per run keeps the runs apart

    def raw(self, name: str, *, tuned: bool = False) -> Any:
        """The storage a user would pass to ``optuna.create_study`` for the same kind; ``tuned``: opened the way
        sweeplight opens it (``open_storage``: SQLite's write-ahead log, the journal's lock, the server's pool)."""
        url = self.new(name)
        if tuned:
            from sweeplight._storage import resolve_storage_url

            return open_storage(resolve_storage_url(url, self.directory, self.directory))
        if self.kind == "journal":
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url))
        return f"sqlite:///{url}" if self.kind == "sqlite" else url


@contextlib.contextmanager
def storages(kind: str, where: str | None) -> Iterator[Storages]:
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        if kind in ("postgresql", "postgres"):
            with postgres_server() as server:
                yield Storages("postgresql", Path(tmp), server)
        else:
            yield Storages(kind, Path(tmp))


# ----------------------------------------------------------------- the two loops


def study_dir(store: Storages, name: str, n: int, *, seed: int = SEED) -> Path:
    """A launched study directory (what ``prepare`` makes, without importing the user's classes: no trial trains)."""
    raw = {"name": name, "root": str(store.directory / "runs"), "storage": store.new(name),
           "model": {"class": f"{REPO / 'studies' / 'digits.py'}:DigitsMLP"},
           "data": {"class": f"{REPO / 'studies' / 'digits.py'}:DigitsDataModule"},
           "objective": {"metric": "val_acc", "direction": "maximize"},
           "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1},
                            "width": {"type": "int", "low": 8, "high": 64}},
           "sampler": {"name": "tpe", "seed": seed}, "pruner": "none",
           "budget": {"n_trials": n, "max_failures": None}, "executor": {"heartbeat_interval": 10}}
    spec = load_spec(raw)
    create_or_load_study(spec, sampler=build_sampler(spec), pruner=build_pruner(spec))
    (spec.directory / "workers").mkdir(parents=True, exist_ok=True)
    write_json_atomic(spec.directory / "spec.json", spec_to_json(spec))
    return spec.directory


def run_worker(directory: Path, *, worker: int = 0, breakdown: Breakdown | None = None
               ) -> tuple[float, float, float]:
    """One sweeplight worker in this process until the budget is met: (seconds in the loop, CPU seconds in the loop,
    start-up seconds)."""
    started = time.perf_counter()
    first: list[float] = []
    hooks = breakdown.hooked() if breakdown is not None else contextlib.nullcontext(quick_trial)
    with hooks as runner, open(directory / "workers" / f"worker-{worker}.log", "a") as log:
        real = _worker.live_trials  # the timed one when hooked

        def live_trials(*args: Any, **kwargs: Any) -> Any:
            if not first:
                first.extend((time.perf_counter(), time.process_time()))
            return real(*args, **kwargs)

        _worker.live_trials = live_trials
        try:
            with contextlib.redirect_stdout(log):
                code = _worker.work(directory, launch_id="bench", deadline=None, worker=worker, runner=runner)
        finally:
            _worker.live_trials = real
    ended, cpu = time.perf_counter(), time.process_time()
    assert code == 0, f"worker exited with {code}; see {directory / 'workers'}"
    return ended - first[0], cpu - first[1], first[0] - started


def objective(trial: optuna.Trial) -> float:
    """quick_trial's value and reports, as a user writes them for ``optimize``."""
    value = trial.suggest_float("lr", 1e-3, 1e-1) + trial.suggest_int("width", 8, 64)
    for step in range(3):
        trial.report(value * (step + 1) / 3, step)
    return value


def run_raw(store: Storages, name: str, n: int, *, tuned: bool = False) -> tuple[float, float, optuna.Study]:
    study = optuna.create_study(study_name=name, storage=store.raw(name, tuned=tuned), direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=SEED))
    start, cpu = time.perf_counter(), time.process_time()
    study.optimize(objective, n_trials=n)
    return time.perf_counter() - start, time.process_time() - cpu, study


def check(trials: list, n: int, directory: Path | None = None) -> None:
    """Every trial COMPLETE, numbered 0..n-1, with its own value and three reports (and its summary.json)."""
    import json

    assert sorted(t.number for t in trials) == list(range(n)), f"{len(trials)} trials, not {n}"
    for t in trials:
        assert t.state == optuna.trial.TrialState.COMPLETE, (t.number, t.state)
        value = t.params["lr"] + t.params["width"]
        assert abs(t.value - value) < 1e-9, (t.number, t.value, value)
        assert sorted(t.intermediate_values) == [0, 1, 2] and abs(t.intermediate_values[2] - value) < 1e-9
        if directory is not None:
            path = directory / "trials" / str(t.number) / "summary.json"
            summary = json.loads(path.read_text())
            assert summary["trial"] == t.number and abs(summary["objective"]["value"] - value) < 1e-9
            assert t.system_attrs["sweeplight:summary"] == str(path) and t.system_attrs["sweeplight:epochs"] == 3
            assert isinstance(t.system_attrs["sweeplight:worker"], int) and "sweeplight:heartbeat" in t.system_attrs


# ----------------------------------------------------------------- storage writes


class Writes:
    """Counts storage writes: SQL transactions that wrote something, and journal appends (one lock + fsync each)."""

    def __init__(self) -> None:
        self.count = 0
        self._dirty: set[int] = set()

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        import sqlalchemy
        from optuna.storages.journal import JournalFileBackend
        from sqlalchemy import event

        def statement(conn: Any, cursor: Any, text: str, *args: Any) -> None:
            if text.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
                self._dirty.add(id(conn))

        def commit(conn: Any) -> None:
            if id(conn) in self._dirty:
                self._dirty.discard(id(conn))
                self.count += 1

        append = JournalFileBackend.append_logs

        def counted_append(backend: Any, logs: list) -> None:
            self.count += 1
            append(backend, logs)

        event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", statement)
        event.listen(sqlalchemy.engine.Engine, "commit", commit)
        JournalFileBackend.append_logs = counted_append
        try:
            yield
        finally:
            event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", statement)
            event.remove(sqlalchemy.engine.Engine, "commit", commit)
            JournalFileBackend.append_logs = append


# ----------------------------------------------------------------- where a trial's time goes


STEPS = (  # (label, module, attribute): each timed where the worker loop calls it
    ("ask lock (flock)", "sweeplight._worker", "ask_lock"),
    ("read trials, fail stale, requeue", "sweeplight._worker", "live_trials"),
    ("budget check (stop attr, counts)", "sweeplight._worker", "stop_reason"),
    ("ask + stamp", "sweeplight._worker", "ask"),
    ("sample params (TPE)", "sweeplight._space", "sample"),
    ("trial body (3 reports)", None, "runner"),
    ("summary.json (write)", "sweeplight._summary", "write_json_atomic"),
    ("tell + result attributes", "sweeplight._worker", "_tell"),
    ("heartbeat (start/stop beating)", "sweeplight._heartbeat:Heartbeat", "beating"),
)


class Breakdown:
    """Times each step where the real worker loop calls it (outermost calls only); a few microseconds per trial."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = collections.defaultdict(float)
        self.trials = 0
        self.seconds = 0.0
        self._depth = 0  # a step called inside another (the stamp's batch inside ask) counts for the outer one

    def per_trial(self) -> dict[str, float]:
        return {label: self.spent[label] / self.trials for label, _, _ in STEPS}

    def timed(self, label: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._depth -= 1
                if not self._depth:
                    self.spent[label] += time.perf_counter() - start
        return call

    def timed_context(self, label: str, function: Callable) -> Callable:
        """Only entering and leaving the block: the lock's flock, the heartbeat thread's start and stop."""
        @contextlib.contextmanager
        def context(*args: Any, **kwargs: Any) -> Iterator[None]:
            start = time.perf_counter()
            manager = function(*args, **kwargs)
            manager.__enter__()
            self.spent[label] += time.perf_counter() - start
            try:
                yield
            finally:
                start = time.perf_counter()
                manager.__exit__(*sys.exc_info())
                self.spent[label] += time.perf_counter() - start
        return context

    @contextlib.contextmanager
    def hooked(self) -> Iterator[Callable]:
        """Wrap the steps in place; yields the runner to give the worker (the trial body, timed)."""
        patched = []
        for label, module, name in STEPS:
            if module is None:
                continue
            module, _, cls = module.partition(":")
            owner = getattr(importlib.import_module(module), cls) if cls else importlib.import_module(module)
            real = getattr(owner, name)
            wrap = self.timed_context if name in ("ask_lock", "beating") else self.timed
            setattr(owner, name, wrap(label, real))
            patched.append((owner, name, real))
        try:
            yield self.timed("trial body (3 reports)", quick_trial)
        finally:
            for owner, name, real in patched:
                setattr(owner, name, real)


def _spec(directory: Path) -> Any:
    from sweeplight._spec import spec_from_dir

    return spec_from_dir(directory)


# ----------------------------------------------------------------- start-up


def startup(store: Storages, repeats: int) -> dict[str, float]:
    """Best of ``repeats``: the interpreter alone, ``import sweeplight._worker``, and a real worker process (imports,
    spec, storage, the budget check) on a study whose budget is met, so it stops at once."""
    directory = study_dir(store, "startup", 1)
    run_worker(directory)  # the budget is met: the worker process below starts, checks it and stops
    commands = {"python -c pass": [sys.executable, "-c", "pass"],
                "import sweeplight._worker": [sys.executable, "-c", "import sweeplight._worker"],
                "worker process, start to stop": [sys.executable, str(QUICK_WORKER), "work", str(directory)]}
    best = {}
    for label, command in commands.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, cwd=directory, check=False)
            times.append(time.perf_counter() - start)
            assert done.returncode == 0, done.stdout + done.stderr
            if label.startswith("worker"):
                assert "stopping (budget.n_trials reached" in done.stdout, done.stdout
        best[label] = min(times)
    return best


# ----------------------------------------------------------------- main


def measure(store: Storages, n: int, repeats: int) -> dict[str, Any]:
    """Interleaved runs (raw, sweeplight, ...): medians of trials/s, CPU ms per trial and storage writes per trial,
    and where the sweeplight trials' time went."""
    runs: dict[str, list[tuple[float, float, float]]] = {"raw": [], "tuned": [], "sweeplight": []}
    in_process_start = []
    steps = Breakdown()
    for repeat in range(repeats):
        writes = Writes()
        with writes.counting():
            seconds, cpu, study = run_raw(store, f"raw{repeat}", n)
        check(study.get_trials(), n)
        runs["raw"].append((n / seconds, cpu / n, writes.count / n))
        writes = Writes()
        with writes.counting():
            seconds, cpu, study = run_raw(store, f"tuned{repeat}", n, tuned=True)
        check(study.get_trials(), n)
        runs["tuned"].append((n / seconds, cpu / n, writes.count / n))
        directory = study_dir(store, f"sweeplight{repeat}", n)
        writes = Writes()
        with writes.counting():
            seconds, cpu, start = run_worker(directory, breakdown=steps)
        check(load_study(_spec(directory)).get_trials(), n, directory)
        runs["sweeplight"].append((n / seconds, cpu / n, writes.count / n))
        in_process_start.append(start)
        steps.trials += n
        steps.seconds += seconds
    medians = {name: tuple(statistics.median(r[i] for r in rs) for i in range(3)) for name, rs in runs.items()}
    return {**medians, "in_process_start": statistics.median(in_process_start), "steps": steps}


def profile(store: Storages, n: int) -> None:
    directory = study_dir(store, "profiled", n)
    profiler = cProfile.Profile()
    profiler.enable()
    run_worker(directory)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="trials per run (default 1,000)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each loop (default 2)")
    parser.add_argument("--storage", default="sqlite",
                        help="sqlite (default), journal, postgresql (a private throwaway server) or a storage URL")
    parser.add_argument("--dir", default=None, help="where the storage files go (default: the system temp dir)")
    parser.add_argument("--quick", action="store_true",
                        help="30 trials, 1 repeat, storage in /dev/shm: for the test suite, not for numbers")
    parser.add_argument("--profile", action="store_true", help="cProfile one sweeplight worker doing 200 trials")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n, repeats = (30, 1) if args.quick else (args.n, args.repeats)
    where = args.dir or ("/dev/shm" if args.quick and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir())
    with storages(args.storage, where) as store:
        if args.profile:
            profile(store, 200)
            return 0
        result = measure(store, n, repeats)
        start = startup(store, 1 if args.quick else 3)
    (raw_rate, raw_cpu, raw_writes), (our_rate, our_cpu, our_writes) = result["raw"], result["sweeplight"]
    tuned_rate, tuned_cpu, tuned_writes = result["tuned"]
    steps = result["steps"]
    print(f"{store.label} in {where}, TPE (seed {SEED}), {n} trivial trials per run, {repeats} interleaved "
          "repeat(s), median")
    print(f"{'where a sweeplight trial goes (all runs)':<46}{'ms/trial':>10}")
    for label, seconds in steps.per_trial().items():
        print(f"  {label:<44}{seconds * 1e3:>10.2f}")
    rest = steps.seconds / steps.trials - sum(steps.per_trial().values())
    print(f"  {'rest (prints, trial directory, loop)':<44}{rest * 1e3:>10.2f}")
    print(f"{'start-up':<46}{'seconds':>10}")
    for label, seconds in start.items():
        print(f"  {label:<44}{seconds:>10.2f}")
    print(f"  {'in-process worker, work() to first ask':<44}{result['in_process_start']:>10.2f}")
    print(f"{'loop':<28}{'trials/s':>10}{'ms/trial':>10}{'CPU ms/trial':>14}{'writes/trial':>14}")
    for label, rate, cpu, writes in (("raw study.optimize", raw_rate, raw_cpu, raw_writes),
                                     ("raw, sweeplight's storage", tuned_rate, tuned_cpu, tuned_writes),
                                     ("sweeplight worker", our_rate, our_cpu, our_writes)):
        print(f"{label:<28}{rate:>10.1f}{1e3 / rate:>10.2f}{cpu * 1e3:>14.2f}{writes:>14.2f}")
    print(f"{'fixed cost per trial (ms)':<28}{'':>10}{1e3 / our_rate - 1e3 / raw_rate:>10.2f}"
          f"{(our_cpu - raw_cpu) * 1e3:>14.2f}")
    print(f"{'ratio of CPU per trial, raw / sweeplight':<48}{raw_cpu / our_cpu:>10.2f}")
    print(f"{'ratio sweeplight / raw on the same storage':<48}{our_rate / tuned_rate:>10.2f}")
    print(f"{'ratio sweeplight / raw (trials/s)':<48}{our_rate / raw_rate:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
