"""A worker: pull trials from the shared study until the budget is met.

The study is the queue: any number of workers (local processes or SLURM array tasks) run this loop against the
same storage. A file lock around "check the budget, then ask" keeps the number of trials exact; a heartbeat on the
running trial lets any worker fail (and re-queue) the trial of a worker that died without warning.

Round trips per trial, beyond what ``study.optimize`` itself makes: one read of the stop flag and one write of the
worker's stamp; the study is read once (and handed to the sampler), the result's attributes go with the tell.

    python -m sweeplight._worker work runs/digits --launch-id ID --deadline EPOCH_SECONDS
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeplight._errors import SweeplightError
from sweeplight._grid import FIXED_PARAMS, grid_state, trial_budget
from sweeplight._heartbeat import HEARTBEAT, REQUEUED_AT, Heartbeat, ask_lock, fail_stale
from sweeplight._record import begin_worker, write_record
from sweeplight._resources import budget_reason, trial_devices, trial_use
from sweeplight._retrying import is_transient
from sweeplight._slurm_jobs import SLURM_JOB, task_key
from sweeplight._spec import spec_from_dir
from sweeplight._status import failed_in_launch
from sweeplight._storage import all_trials, mask_url
from sweeplight._summary import Durability
from sweeplight._trial_resume import continue_own, requeue, resume_for
from sweeplight._warm import WARM_FROM
from sweeplight._writes import params_in_one_write

STOP_ATTR = "sweeplight:stopped"  # study system attr: why every worker must stop (a config error)
# Seconds a worker waits out a storage outage before it gives up (its result stays in summary.json for `study sync`).
STORAGE_MAX_WAIT = float(os.environ.get("SWEEPLIGHT_STORAGE_WAIT", "300"))
DURABILITY = Durability()  # summaries fsynced off the critical path
EXIT_STORAGE = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 143
# Stop reasons under which a worker stays while other trials run, in case one dies and must be re-run.
LINGER_REASONS = ("budget.n_trials", "grid: every point taken")

# Runs one trial: (spec, trial, params, trial directory, resume or None) -> TrialOutcome.
Runner = Callable[[Any, Any, dict, Path, Any], Any]


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / "trials" / str(number)


class LightningRunner:
    """The real trial: the Lightning trainer, on one process or as rank 0 of a DDP group it starts."""

    def __init__(self, spec: Any) -> None:
        from sweeplight._check import resolve_components

        self.components = resolve_components(spec)

    def __call__(self, spec: Any, trial: Any, params: dict, directory: Path, resume: Any) -> Any:
        from sweeplight._ddp import ddp_ranks, world_size
        from sweeplight._slurm_worker import publish, world
        from sweeplight._trainer_spec import trainer_for_trial
        from sweeplight._trial import run_trial

        payload = {"number": trial.number, "params": params,
                   "resume": None if resume is None else {"from_trial": resume.from_trial,
                                                          "checkpoint": str(resume.checkpoint)}}
        size = world_size(trainer_for_trial(spec.raw.get("trainer"), spec.objective, params))
        if world() > 1:  # a SLURM job of one task per rank: the other ranks read the trial from a file
            publish(spec.directory, payload)
            size = 1
        with ddp_ranks(size, directory, payload) as ranks:
            outcome = run_trial(spec, self.components, number=trial.number, params=params, trial=trial,
                                trial_dir=directory, resume=resume)
            ranks["ok"] = outcome.state != "FAIL"
        return outcome


def work(study_dir: Path, *, launch_id: str, deadline: float | None, worker: int,
         runner: Runner | None = None) -> int:
    """Run trials until the budget, the deadline or a stop; returns the process exit code."""
    import optuna

    from sweeplight._retrying import unwrapped
    from sweeplight._samplers import build_pruner, build_sampler
    from sweeplight._storage import load_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = spec_from_dir(study_dir)
    runner = runner or LightningRunner(spec)
    begin_worker(spec, worker=worker)  # its trials' record.json name the worker's sampler seed
    study = load_study(spec, sampler=build_sampler(spec, worker=worker), pruner=build_pruner(spec),
                       max_wait=STORAGE_MAX_WAIT)
    # Heartbeats go through the same opened storage without the retrying wrapper, so they fail fast instead of
    # waiting; sharing it saves opening the database (or replaying the journal) a second time.
    monitor = optuna.load_study(study_name=spec.name, storage=unwrapped(study._storage))
    job = task_key()
    print(f"worker {worker} (pid {os.getpid()}{f', SLURM job {job}' if job else ''}) on study {spec.name!r}",
          flush=True)
    with Heartbeat(monitor, spec.executor.heartbeat_interval, study_dir) as heart:
        try:
            return _loop(spec, runner, study, heart, launch_id=launch_id, deadline=deadline, worker=worker, job=job)
        finally:
            DURABILITY.wait()  # every summary on disk before the worker exits


def _loop(spec: Any, runner: Runner, study: Any, heart: Any, *, launch_id: str, deadline: float | None,
          worker: int, job: str | None) -> int:
    from sweeplight._space import sample

    with ask_lock(spec.directory):  # not failed as stale while it is being taken back
        own = continue_own(spec, study, job)
    for trial, resume in own:  # this job was requeued: finish its trial first
        code = _run_one(spec, runner, study, trial, sample(spec.search_space, trial), heart, resume=resume)
        if code is not None:
            return code
    host = os.uname().nodename
    devices = trial_devices(spec)  # stamped on each trial: running trials count toward resource budgets
    while True:
        with ask_lock(spec.directory):
            trials = live_trials(study, spec)
            reason = stop_reason(study, spec, launch_id=launch_id, deadline=deadline, trials=trials)
            lingering = reason is not None and reason.startswith(LINGER_REASONS) and _others_running(
                trials, spec.executor.heartbeat_interval)
            if reason is not None and not lingering:
                print(f"worker {worker}: stopping ({reason})", flush=True)
                return EXIT_CONFIG if reason.startswith("config error") else 0
            if not lingering:
                stamp = {HEARTBEAT: time.time(), "sweeplight:launch": launch_id, "sweeplight:worker": worker,
                         "sweeplight:pid": os.getpid(), "sweeplight:host": host, **devices}
                if job:
                    stamp[SLURM_JOB] = job
                with _signals_deferred():  # a trial asked is stamped with its heartbeat before anything else
                    trial, waiting = ask(study, trials, stamp, fixed=_grid_point(spec, trials, launch_id))
                with params_in_one_write(trial):
                    params = sample(spec.search_space, trial)
        if lingering:  # the last trials run elsewhere: stay until they end, in case one of them dies and is re-run
            time.sleep(min(1.0, spec.executor.heartbeat_interval))
            continue
        resume = resume_for(spec, waiting) if waiting is not None else None
        code = _run_one(spec, runner, study, trial, params, heart, resume=resume)
        if code is not None:
            return code


def ask(study: Any, trials: list, stamp: dict[str, Any], *, fixed: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """``study.ask()`` with the worker's stamp written at once: (trial, the re-queued trial it took from the queue,
    or None for a new one).

    Like ``ask``, a waiting (re-queued) trial is taken first; ``trials`` is the list read under the ask lock, so no
    second read is needed to find one. The stamp is one write (``create_running_trial``, ``set_trial_attrs``), not
    one commit per attribute. The sampler gets ``trials`` as the study's trials for this trial (Optuna's own
    per-trial cache, which ``optimize`` fills with a read of its own after the ask): read under the lock, it already
    holds every other trial, and the study is read once per trial instead of twice.
    """
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from sweeplight._writes import create_running_trial, set_trial_attrs

    storage = study._storage
    study._thread_local.cached_all_trials = trials
    queued = TrialState.WAITING
    for waiting in [t for t in trials if t.state is queued]:
        try:
            if not storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                continue  # another worker took it
        except UpdateFinishedTrialError:
            continue
        set_trial_attrs(storage, waiting._trial_id, system=stamp)
        return optuna.Trial(study, waiting._trial_id), waiting
    if fixed is not None:  # a grid point, fixed on the trial before the sampler sees it (see _grid.py)
        stamp = {**stamp, FIXED_PARAMS: fixed}
    return optuna.Trial(study, create_running_trial(storage, study._study_id, stamp)), None


def _run_one(spec: Any, runner: Runner, study: Any, trial: Any, params: dict, heart: Any, *,
             resume: Any = None) -> int | None:
    from optuna.trial import TrialState

    from sweeplight._slurm_worker import requeued
    from sweeplight._summary import write_summary
    from sweeplight._trial import Interrupted, TrialOutcome

    directory = trial_dir(spec.directory, trial.number)
    directory.mkdir(parents=True, exist_ok=True)
    write_record(spec, number=trial.number, params=params, resume=resume)  # before training: a crash keeps it
    print(f"trial {trial.number}: {json.dumps(params)}", flush=True)
    if resume is not None:
        print(f"trial {trial.number}: resuming trial {resume.from_trial} from {resume.checkpoint} (restart "
              f"{resume.restarts}, {resume.epochs_lost} validated epochs lost)", flush=True)
    with heart.beating(trial._trial_id):
        started = time.perf_counter()
        try:
            outcome = runner(spec, trial, params, directory, resume)
        except Interrupted:  # arrived outside training (building, testing): no history to keep
            outcome = TrialOutcome(state="FAIL", value=None, interrupted=True, summary={
                "schema_version": 1, "study": spec.name, "trial": trial.number, "state": "FAIL",
                "params": params, "stop_reason": "interrupted", "error": "worker interrupted (SIGTERM/SIGINT)"})
    interrupted = outcome.interrupted
    if interrupted and requeued():  # the same trial goes on in the requeued job: leave it RUNNING
        _unless_finished(lambda: study._storage.set_trial_system_attr(trial._trial_id, REQUEUED_AT, time.time()))
        print(f"trial {trial.number}: left running for the requeued job (epochs so far in "
              f"{directory / 'history.json'})", flush=True)
        return EXIT_INTERRUPTED
    summary = outcome.summary
    summary["resources"] = trial_use(time.perf_counter() - started, trial_devices(spec))  # what budgets sum
    path = directory / "summary.json"
    # Visible before the study is told; fsynced beside the next ask. Also indexed for sweeplight.analysis.
    write_summary(path, summary, study=spec.name, study_dir=spec.directory, number=trial.number, durable=False)
    if outcome.state in ("COMPLETE", "PRUNED") and outcome.value is not None and "metrics" in summary:
        _write_hparams(spec, params, outcome, directory)  # pruned trials show their last value
    state = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED}.get(outcome.state, TrialState.FAIL)
    try:
        _record(spec, study, trial, summary, path, state, outcome.told if state == TrialState.COMPLETE else None)
    except Exception as exc:
        DURABILITY.later(path)
        DURABILITY.wait()  # the summary is the result's only copy now
        if not is_transient(exc):
            raise
        print(f"error: cannot record trial {trial.number} in the study ({mask_url(str(exc))[:200]}); its result is "
              f"kept in {path}; run `sweeplight study sync {spec.directory}` once the storage is back",
              file=sys.stderr, flush=True)
        return EXIT_STORAGE
    DURABILITY.later(path)
    shown = f"{outcome.value:.6g}" if outcome.value is not None else "-"
    print(f"trial {trial.number}: {outcome.state} value={shown} ({summary.get('stop_reason')})", flush=True)
    if outcome.state == "FAIL" and summary.get("error") and not interrupted:
        print(f"trial {trial.number} error: {summary['error']}", file=sys.stderr, flush=True)
    if interrupted:
        return EXIT_INTERRUPTED
    if outcome.config_error is not None:
        storage = study._storage
        _unless_finished(lambda: storage.set_study_system_attr(study._study_id, STOP_ATTR, str(outcome.config_error)))
        print(f"error: {outcome.config_error}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    return None


def _record(spec: Any, study: Any, trial: Any, summary: dict, path: Path, state: Any,
            value: float | list[float] | None) -> None:
    """The tell, the result's attributes written with it. A trial failed as stale meanwhile (its worker was cut off
    from the storage for two heartbeat intervals) keeps its result: it is added as a new trial linked to this one."""
    from sweeplight._sync import add, result_attrs, test_metrics

    told = _tell(study, trial, value, state, system=result_attrs(summary, path), user=test_metrics(summary))
    if told or state.name not in ("COMPLETE", "PRUNED"):
        return
    with ask_lock(spec.directory):
        number = add(study, spec, summary, path)
    print(f"trial {trial.number} was failed as stale while this worker could not reach the storage; its result "
          f"is recorded as trial {number}", file=sys.stderr, flush=True)


def _write_hparams(spec: Any, params: dict, outcome: Any, directory: Path) -> None:
    from sweeplight._tensorboard import hparams_row, write_hparams

    metrics = {"hp_metric": float(outcome.value)}
    metrics.update({k: float(v) for k, v in outcome.summary.get("metrics", {}).get("test", {}).items()})
    write_hparams(directory, hparams_row(spec.search_space, params), metrics)


def live_trials(study: Any, spec: Any) -> list:
    """The study's trials, once trials whose worker stopped sending heartbeats are failed and every interrupted or
    stale trial is re-queued. Call it under the ask lock; one read of the study unless something changed."""
    def read() -> list:
        return all_trials(study)

    trials = read()
    if fail_stale(study, spec.executor.heartbeat_interval, trials=trials):
        trials = read()
    if requeue(study, trials):  # a SLURM worker stopped for good (cancel, time limit) left an interrupted trial
        trials = read()
    return trials


def stop_reason(study: Any, spec: Any, *, launch_id: str, deadline: float | None,
                trials: list | None = None) -> str | None:
    """Why no new trial may start, or None. ``trials`` is ``live_trials`` (read here when not given)."""

    message = study._storage.get_study_system_attrs(study._study_id).get(STOP_ATTR)
    if message:
        return f"config error: {message}"
    if deadline is not None and time.time() >= deadline:
        return "budget.timeout reached"
    trials = live_trials(study, spec) if trials is None else trials
    counts = tally(trials)
    finished, running, waiting, failures = counts.finished, counts.running, counts.waiting, counts.failures
    failed = failed_in_launch(failures, launch_id)
    if spec.budget.max_failures is not None and failed >= spec.budget.max_failures:
        return f"budget.max_failures reached ({failed} failed trials)"
    grid = _grid(spec, trials, launch_id) if spec.sampler.name == "grid" else None
    if grid is not None and grid.done >= grid.size:
        return f"grid done ({grid.size} points)"
    # A grid study without n_trials ends with its grid: trials off the grid (enqueued) must not end it early.
    n_trials = spec.budget.n_trials if grid is not None else budget_trials(spec)
    if n_trials is not None and finished + running >= n_trials:
        return f"budget.n_trials reached ({finished} finished, {running} running)"
    resources = budget_reason(spec, trials)
    if resources is not None:
        return resources
    if grid is not None and not grid.free and not waiting:
        return f"grid: every point taken ({grid.done} of {grid.size} done, the rest running)"
    return None


@dataclass
class Tally:
    """The trials counted by state, as the budget checks see them."""

    finished: int = 0  # COMPLETE or PRUNED, not copied by --warm-start
    running: int = 0
    waiting: int = 0
    failures: list = field(default_factory=list)

    def add(self, trials: list) -> Tally:
        from optuna.trial import TrialState

        # The states are looked up once and compared by identity: an enum member read off its class costs
        # ~0.15 us, and four per trial were a third of the ask path at 10,000 trials.
        is_running, is_complete, is_pruned, is_fail, is_waiting = (
            TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.WAITING)
        for t in trials:
            state = t.state
            if state is is_complete or state is is_pruned:
                self.finished += WARM_FROM not in t.system_attrs  # trials copied by --warm-start did not run here
            elif state is is_running:
                self.running += 1
            elif state is is_fail:
                self.failures.append(t)
            elif state is is_waiting:
                self.waiting += 1
        return self

    def copy(self) -> Tally:
        return Tally(self.finished, self.running, self.waiting, list(self.failures))


_settled: tuple[list, Tally] = ([], Tally())  # the last read's trials up to its first unfinished one, counted


def tally(trials: list) -> Tally:
    """``trials`` counted by state, before every ask. The trials before the first unfinished one never change (a
    finished trial stays the storage's same object), so when the last read began with those same objects only the
    rest is counted: a list comparison of identical objects is a pointer check per trial, in C."""
    global _settled
    prefix, counted = _settled
    n = len(prefix)
    if not (n and len(trials) >= n and trials[n - 1] is prefix[-1] and trials[:n] == prefix):
        n, counted = 0, Tally()
    k = n
    while k < len(trials) and trials[k].state.is_finished():
        k += 1
    if k > n:
        counted = counted.copy().add(trials[n:k])
        _settled = (trials[:k], counted)
    return counted.copy().add(trials[k:])


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT/SIGUSR2 until the block is done; they are delivered right after it."""
    held = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR2}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _others_running(trials: list, interval: float) -> bool:
    """Trials running in live workers (a fresh heartbeat). Not those of a requeued SLURM job waiting in the queue:
    its own next run continues them, and lingering workers would hold the array's slots it needs."""
    from optuna.trial import TrialState

    now, running = time.time(), TrialState.RUNNING
    return any(t.state is running and now - t.system_attrs.get(HEARTBEAT, 0) <= 2 * interval
               for t in trials)


def budget_trials(spec: Any) -> int | None:
    """``budget.n_trials``, capped at the grid's size for the grid sampler (each grid point runs once)."""
    return trial_budget(spec)


_last_grid: tuple[list, Any, str | None, Any] | None = None


def _grid(spec: Any, trials: list, launch_id: str | None) -> Any:
    """``grid_state`` once per read of the study: ``stop_reason`` and ``_grid_point`` both need it, with the same
    list of trials, under the same ask lock (the list is kept, so its identity cannot be reused by a later read)."""
    global _last_grid
    if _last_grid is not None and _last_grid[0] is trials and _last_grid[1] is spec.search_space and (
            _last_grid[2] == launch_id):
        return _last_grid[3]
    state = grid_state(spec.search_space, trials, launch_id)
    _last_grid = (trials, spec.search_space, launch_id, state)
    return state


def _grid_point(spec: Any, trials: list, launch_id: str | None) -> dict[str, Any] | None:
    """The next grid point no trial holds (grid sampler only; ``stop_reason`` has checked one is left)."""
    if spec.sampler.name != "grid":
        return None
    free = _grid(spec, trials, launch_id).free
    return dict(free[0]) if free else None


def _tell(study: Any, trial: Any, value: float | None, state: Any, *, system: dict, user: dict) -> bool:
    """Tell the study, with the result's attributes in the same write; False when the trial was already finished
    (failed as stale): nothing is written then.

    This is Optuna's tell (checks, the sampler's ``after_trial``, a pruned trial's last value) with its final
    storage call, ``set_trial_state_values``, replaced by ``finish_trial`` for the length of the call. The grid
    sampler calls ``study.stop()`` once the grid is done, which Optuna only allows inside ``optimize``; the state is
    stored before that raises (a ``finally`` in Optuna), and ``stop_reason`` already ends a grid study once every
    point is done (``grid done``), so that one error is expected."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.study._tell import _tell_with_warning  # Study.tell, less the trial it reads back and copies

    storage = study._storage
    study._storage = _Finishing(storage, system, user)
    try:
        told, _, _ = _tell_with_warning(study, trial, value, state, skip_if_finished=True)
    except UpdateFinishedTrialError:  # failed as stale between Optuna's check and the write
        return False
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise
        return True
    finally:
        study._storage = storage
    return told == state


class _Finishing:
    """A study's storage for one tell: its ``set_trial_state_values`` also writes the result's attributes."""

    def __init__(self, storage: Any, system: dict, user: dict) -> None:
        self._storage, self._system, self._user = storage, system, user

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
        from sweeplight._writes import finish_trial

        return finish_trial(self._storage, trial_id, state, values, system=self._system, user=self._user)


def _unless_finished(call: Any) -> Any:
    """Run a storage write, ignoring a trial that is already finished (stale-marked, or told before a crash).

    Transient errors need no handling here: the worker's study storage retries them (``_retrying.py``).
    """
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        return call()
    except UpdateFinishedTrialError:
        return None


def follower(directory: Path, payload: dict | None = None) -> int:
    """DDP rank > 0: train the same parameters as rank 0; never talks to the study."""
    from sweeplight._check import resolve_components
    from sweeplight._trial import run_trial

    spec = spec_from_dir(directory.parent.parent)
    payload = payload or json.loads((directory / "ddp.json").read_text())
    resume = None
    if payload.get("resume"):
        from sweeplight._trial import Resume

        resume = Resume(from_trial=payload["resume"]["from_trial"], checkpoint=Path(payload["resume"]["checkpoint"]),
                        history=[])
    outcome = run_trial(spec, resolve_components(spec), number=payload["number"], params=payload["params"],
                        trial=None, trial_dir=directory, resume=resume,
                        rank=int(os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_PROCID") or 1))
    return 0 if outcome.state != "FAIL" else 1


def _raise_interrupted(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from sweeplight._trial import Interrupted

    raise Interrupted()


def main(argv: list[str] | None = None, runner: Runner | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeplight._worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("work", help="run trials of the study in STUDY_DIR until its budget is met")
    w.add_argument("study_dir", type=Path)
    w.add_argument("--launch-id", default="manual")
    w.add_argument("--deadline", type=float, default=None)
    w.add_argument("--worker", type=int, default=0)
    f = sub.add_parser("follower", help="(internal) a DDP rank > 0 of the trial in TRIAL_DIR")
    f.add_argument("trial_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "follower":
        return follower(args.trial_dir)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        return work(args.study_dir.resolve(), launch_id=args.launch_id, deadline=args.deadline, worker=args.worker,
                    runner=runner)
    except SweeplightError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except BaseException as exc:
        if type(exc).__name__ == "Interrupted":
            return EXIT_INTERRUPTED
        raise


if __name__ == "__main__":
    sys.exit(main())
