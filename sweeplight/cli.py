"""The ``sweeplight`` command. Heavy imports happen inside the commands, so ``--help`` answers at once.

Exit codes: 0 success, 1 the study stopped early (too many failed trials, a worker crashed), 2 bad input
(study file, overrides, storage) with nothing created, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

STUDY_TARGET = "the study file (YAML) or the study directory (runs/<name>)"
EPILOG = "Exit codes: 0 ok, 1 study stopped early, 2 bad input (nothing created), 130 interrupted."
TRIAL_EPILOG = "Exit codes: 0 reproduced, 1 not reproduced, 2 bad input or no usable record, 130 interrupted."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweeplight", description="Hyperparameter sweeps of Lightning modules with Optuna, locally or on SLURM.",
        epilog=EPILOG)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND")
    study = groups.add_parser("study", help="launch, inspect, analyse and sync studies", description="Study commands.",
                              epilog=EPILOG)
    verbs = study.add_subparsers(dest="verb", metavar="VERB", required=True)

    launch = verbs.add_parser(
        "launch", help="create or resume a study and run it to its budget",
        description="Create the study (or resume it: finished trials count toward the budget) and run its workers "
                    "until the budget is met. Example: sweeplight study launch studies/digits.yaml "
                    "--set budget.n_trials=4", epilog=EPILOG)
    launch.add_argument("study", help="the study file (YAML)")
    _add_set(launch)
    launch.add_argument("--workers", type=int, default=None, help="override executor.workers")
    launch.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and scripts)")
    launch.add_argument("--follow", action="store_true",
                        help="executor.kind slurm: after submitting, show the progress bar until the study's jobs end "
                             "(launch otherwise returns at once)")
    launch.add_argument("--warm-start", metavar="OTHER", default=None,
                        help="before the workers start, copy the COMPLETE trials of study OTHER (its study file or "
                             "directory) whose parameters fit this search space; the same objective is required, "
                             "copies do not count toward n_trials, and a second launch copies nothing twice")

    status = verbs.add_parser("status", help="trials by state, the best trial, and what is running",
                              description="Show a study's trials by state, its best trial and its running trials.",
                              epilog=EPILOG)
    status.add_argument("study", help=STUDY_TARGET)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.add_argument("--watch", action="store_true",
                        help="show a progress bar until the study ends (its budget is met, its SLURM jobs have ended), "
                             "then the status")

    work = verbs.add_parser(
        "work", help="run one worker: pull trials from the study until its budget is met",
        description="The worker entry point, for your own batch scripts: creates or resumes the study like launch, "
                    "then runs trials in this process until the budget is met. Inside a SLURM job it stamps its "
                    "trials with the job id, requeues the job on SIGUSR2/SIGTERM (sbatch --signal=USR2@120 "
                    "--requeue) and continues the same trial in the requeued run. Start any number of them, e.g. "
                    "#SBATCH --array=0-7 with srun sweeplight study work studies/digits.yaml", epilog=EPILOG)
    work.add_argument("study", help=STUDY_TARGET)
    _add_set(work)
    work.add_argument("--worker", type=int, default=None,
                      help="worker index in logs and trial attributes (default: $SLURM_ARRAY_TASK_ID or 0)")

    cancel = verbs.add_parser(
        "cancel", help="cancel the study's SLURM jobs; their running trials are re-run by the next launch",
        description="scancel every SLURM job the study's launches submitted. Workers stop without requeueing; "
                    "their running trials end as 'interrupted' and the next launch re-runs them from their last "
                    "checkpoints. Example: sweeplight study cancel runs/digits", epilog=EPILOG)
    cancel.add_argument("study", help=STUDY_TARGET)

    validate = verbs.add_parser(
        "validate", help="check a study file without creating anything",
        description="Run every check launch runs (imports the model and data classes, checks names and options) "
                    "and create nothing.", epilog=EPILOG)
    validate.add_argument("study", help="the study file (YAML)")
    _add_set(validate)

    sync = verbs.add_parser(
        "sync", help="put results the study is missing back into it from the trials' summary.json files",
        description="Every finished trial writes summary.json before it tells the study. When the tell never "
                    "reached the storage (database down longer than workers wait, a worker killed in between), "
                    "sync closes such trials, or adds their results as new trials linked to them. Running it twice "
                    "adds nothing. Example: sweeplight study sync runs/digits", epilog=EPILOG)
    sync.add_argument("study", help=STUDY_TARGET)
    sync.add_argument("--json", action="store_true", help="print what was done as JSON")

    best = verbs.add_parser(
        "best", help="the best trial: parameters, objective, checkpoint, and a command that re-runs it",
        description="Print the best completed trial's parameters (YAML), objective, test metrics and checkpoint, and "
                    "write runs/<name>/best-<number>.yaml, a study file with every parameter fixed to those values, so "
                    "one command re-runs exactly that configuration. A multi-objective study prints every trial of "
                    "its Pareto front (feasible trials only). Example: sweeplight study best runs/digits",
        epilog=EPILOG)
    best.add_argument("study", help=STUDY_TARGET)
    best.add_argument("--json", action="store_true", help="print the best trial as JSON")

    export = verbs.add_parser(
        "export", help="write the trials and learning curves as parquet or CSV tables",
        description="Write trials.<format> (one row per trial: state, objective, params.*, best./last./test. "
                    "metrics, epochs, stop reason, wall time, memory, host, ...) and curves.<format> (study, trial, "
                    "epoch, metric, value). Example: sweeplight study export runs/digits --format csv", epilog=EPILOG)
    export.add_argument("study", help=STUDY_TARGET)
    export.add_argument("--format", dest="fmt", choices=("parquet", "csv"), default="parquet",
                        help="file format (default parquet)")
    export.add_argument("--out", default=None, help="output directory (default: <study directory>/export)")

    report = verbs.add_parser(
        "report", help="write a self-contained HTML report (opens offline)",
        description="Write one HTML file with plotly.js inlined: optimization history, parallel coordinates, "
                    "parameter importances, slice and contour plots, learning curves (pruned and early-stopped "
                    "trials marked), the trial table, wall times with a suggested SLURM --time, states over time per "
                    "worker, and the best trial. Example: sweeplight study report runs/digits", epilog=EPILOG)
    report.add_argument("study", help=STUDY_TARGET)
    report.add_argument("--out", default=None, help="output file (default: <study directory>/report.html)")

    trial = groups.add_parser("trial", help="re-run one trial from its record", description="Trial commands.",
                              epilog=TRIAL_EPILOG)
    trial_verbs = trial.add_subparsers(dest="verb", metavar="VERB", required=True)
    rerun = trial_verbs.add_parser(
        "rerun", help="train one trial again from its record.json and say whether it reproduced its objective",
        description="Rebuild the study from the trial's record.json (not the study file as it is now), train the "
                    "recorded parameters with the recorded seed and torch threads in a fresh directory, and compare "
                    "the objective with the original's. The study's storage is not touched and nothing prunes the "
                    "rerun (a pruned trial stops at the epoch it was pruned at). Warns when the code's commit or "
                    "uncommitted changes, or the installed packages, differ from the record. Example: sweeplight "
                    "trial rerun runs/digits 3", epilog=TRIAL_EPILOG)
    rerun.add_argument("study", help=STUDY_TARGET)
    rerun.add_argument("number", type=int, help="the trial number")
    rerun.add_argument("--out", default=None, help="directory for the rerun (default: <study directory>/reruns/"
                                                   "<number>-<k>, a new one each time)")
    rerun.add_argument("--tolerance", type=float, default=0.0,
                       help="largest absolute difference of the objective that counts as reproduced (default 0: "
                            "exactly equal, what deterministic CPU runs give)")
    rerun.add_argument("--json", action="store_true", help="print the comparison as JSON (training output to stderr)")

    storage = groups.add_parser("storage", help="check a storage before pointing workers at it",
                                description="Storage commands.", epilog=EPILOG)
    storage_verbs = storage.add_subparsers(dest="verb", metavar="VERB", required=True)
    check = storage_verbs.add_parser(
        "check", help="connect, time a round trip, and say what to change",
        description="Connect to a storage the way a worker does: report the backend, the file system of a file "
                    "storage, the server version and connection limit of a database, the round-trip latency, and "
                    "warnings (SQLite on NFS, a slow link). Creates nothing. Examples: sweeplight storage check "
                    "runs/study.log; sweeplight storage check 'postgresql://me@db/sweeps'; sweeplight storage check "
                    "studies/digits.yaml", epilog=EPILOG)
    check.add_argument("target", help="a storage URL, a .db or .log path, a study file or a study directory")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a study-file field, e.g. --set budget.n_trials=4 (repeatable)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(f"sweeplight {version('sweeplight')}")
        return 0
    if args.group is None:
        parser.print_help()
        return 0
    from sweeplight._errors import SweeplightError

    try:
        return _run(args)
    except SweeplightError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: workers stopped; running trials are recorded as interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sweeplight study best --json | head`: the reader left, nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if args.debug:
            raise
        from sweeplight._storage import mask_url

        text = mask_url(" ".join(str(exc).split())[:300])
        print(f"internal error: {type(exc).__name__}: {text} (run with --debug for the traceback and report it)",
              file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.verb == "launch":
        import signal

        from sweeplight._launch import launch
        from sweeplight._record import note_launch_command

        note_launch_command()  # the workers' trial records name the command that launched them

        def _terminate(signum: int, frame: object) -> None:
            raise KeyboardInterrupt  # SIGTERM (scancel, timeout, kill) stops the workers like Ctrl-C does

        signal.signal(signal.SIGTERM, _terminate)

        if args.workers is not None and args.workers < 1:
            from sweeplight._errors import SpecError

            raise SpecError("--workers", f"must be >= 1, got {args.workers}")
        result = launch(args.study, overrides=args.overrides, workers=args.workers, progress=not args.no_progress,
                        follow=args.follow, warm_start=args.warm_start)
        from sweeplight._status import format_status

        print(format_status(result.status))
        if result.job is not None and not args.follow:
            print(f"submitted: SLURM job array {result.job['job_id']} with {result.job['workers']} workers; follow "
                  f"it with: sweeplight study status {result.directory} --watch")
            return 0
        print(f"done: {result.stop_reason}; results in {result.directory}")
        return 0
    if args.verb == "status":
        from sweeplight._status import format_status, read_status, resolve

        if args.watch:
            from sweeplight._launch import watch
            from sweeplight._slurm_jobs import read_jobs

            spec = resolve(args.study)
            watch(spec, jobs=bool(read_jobs(spec.directory)))
        status = read_status(args.study)
        if args.json:
            import dataclasses
            import json

            print(json.dumps(dataclasses.asdict(status), indent=2, default=str))
        else:
            print(format_status(status))
        return 0
    if args.verb == "validate":
        from sweeplight._check import check_spec
        from sweeplight._spec import load_spec

        spec = load_spec(args.study, args.overrides)
        components = check_spec(spec)
        if spec.executor.kind == "slurm":
            from sweeplight._slurm import check_cluster

            check_cluster(spec.executor.slurm)
        print(f"ok: study {spec.name!r}, {len(spec.search_space)} parameters, model "
              f"{components.model_cls.__name__}, data {components.data_cls.__name__}, storage "
              f"{_masked(spec.storage)}")
        from sweeplight._constraints import sampler_notes

        for note in sampler_notes(spec):
            print(f"note: {note}")
        return 0
    if args.verb == "sync":
        return _sync(args)
    if args.verb == "work":
        return _work(args)
    if args.verb == "cancel":
        from sweeplight._slurm_jobs import cancel
        from sweeplight._status import resolve
        from sweeplight._storage import load_study

        spec = resolve(args.study)
        jobs, trials = cancel(load_study(spec), spec.directory)
        print(f"cancelled: jobs {', '.join(jobs) or '(none in the queue)'}; running trials marked for re-run: "
              f"{trials or 'none'}; the next `sweeplight study launch` resumes them from their checkpoints")
        return 0
    if args.verb == "best":
        return _best(args)
    if args.verb == "export":
        from sweeplight._status import resolve
        from sweeplight.analysis import export

        out = args.out or resolve(args.study).directory / "export"
        for path in export(args.study, out, fmt=args.fmt):
            print(path)
        return 0
    if args.verb == "report":
        from sweeplight._report import write_report

        print(write_report(args.study, args.out))
        return 0
    if args.verb == "check":
        from sweeplight._storage_check import check_storage, format_report, storage_url_for

        report = check_storage(storage_url_for(args.target))
        if args.json:
            import json

            print(json.dumps(report.as_dict(), indent=2))
        else:
            print(format_report(report))
        return 0
    if args.verb == "rerun":
        return _rerun(args)
    raise AssertionError(args.verb)


def _work(args: argparse.Namespace) -> int:
    import os
    import uuid
    from pathlib import Path

    from sweeplight._slurm_jobs import task_key
    from sweeplight._slurm_worker import SlurmWorker
    from sweeplight._spec import load_spec
    from sweeplight._status import resolve
    from sweeplight._worker import main as worker_main

    spec = load_spec(args.study, args.overrides) if args.overrides else resolve(args.study)
    if not Path(args.study).is_dir() or args.overrides:
        _prepare_once(spec)
    index = args.worker if args.worker is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    launch_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID") or uuid.uuid4().hex[:12]
    if task_key():  # a batch job: the same worker launch submits, owning the time-limit and preemption signals
        return SlurmWorker(str(spec.directory), launch_id, None)(index)
    return worker_main(["work", str(spec.directory), "--launch-id", launch_id, "--worker", str(index)])


def _prepare_once(spec: object) -> None:
    """Create or resume the study; workers of one array starting together take turns."""
    import fcntl

    from sweeplight._launch import prepare

    spec.root.mkdir(parents=True, exist_ok=True)
    with open(spec.root / f".{spec.name}.prepare.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        prepare(spec, progress=False, clear_stop=False)


def _best(args: argparse.Namespace) -> int:
    import json

    import yaml

    from sweeplight.analysis import best_trials

    front = best_trials(args.study, write_rerun=True)
    if len(front[0].values) > 1:  # a multi-objective study: every Pareto-optimal trial
        from sweeplight._pareto import format_front, front_json

        print(json.dumps(front_json(front), indent=2) if args.json else format_front(front))
        return 0
    best = front[0]
    if args.json:
        print(json.dumps({"study": best.study, "number": best.number, "value": best.value, "metric": best.metric,
                          "direction": best.direction, "params": best.params, "test_metrics": best.test_metrics,
                          "checkpoint": str(best.checkpoint) if best.checkpoint else None,
                          "rerun_command": best.rerun_command}, indent=2))
        return 0
    print(f"# best trial of study {best.study!r}: trial {best.number}, {best.metric} = {best.value:.6g} "
          f"({best.direction})")
    print(yaml.safe_dump({"params": best.params}, sort_keys=False).rstrip())
    if best.test_metrics:
        print(yaml.safe_dump({"test": best.test_metrics}, sort_keys=False).rstrip())
    print(f"checkpoint: {best.checkpoint or '(none)'}")
    if best.rerun_command:
        print(f"re-run: {best.rerun_command}")
    return 0


def _rerun(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from sweeplight._rerun import format_result, rerun

    result = rerun(args.study, args.number, out=args.out, tolerance=args.tolerance, quiet=args.json)
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    else:
        print(format_result(result))
    return 0 if result.reproduced else 1


def _sync(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from sweeplight._status import resolve
    from sweeplight._sync import sync

    report = sync(resolve(args.study))
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
        return 0
    added = ", ".join(f"trial {old} as trial {new}" for old, new in report.added)
    print(f"sync: finished {len(report.finished)} running trials{f' {report.finished}' if report.finished else ''}, "
          f"added {len(report.added)}{f' ({added})' if added else ''}, {report.present} already in the study")
    for line in report.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    return 0


def _masked(url: str) -> str:
    from sweeplight._storage import mask_url

    return mask_url(url)


def entry() -> None:
    """The ``sweeplight`` command: ``main``, then exit without the interpreter's final garbage collections.

    After a command that loaded torch and Lightning (launch, validate, work) those collections take 1.5-3 s of a
    2-core machine, after the work is done; freezing the heap skips them (the process ends right after).
    """
    code = main()
    import gc

    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
