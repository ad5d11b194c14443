"""How long from `sweeplight study launch` to a trial running on SLURM, and what do SLURM workers gain over one process?

On the local SLURM cluster (``bash slurm/start-cluster.sh``), with the digits MLP as the model (fixed width, only
``lr`` and ``dropout`` searched, no pruner, no early stopping: every trial costs the same):

(a) latency: the ``sweeplight study launch`` command as a user runs it, then per array task the queue wait (sbatch
    returns -> the batch script runs, stamped by a ``slurm.setup`` line), the start of the worker's Python (srun,
    interpreter, submitit; submitit's first log line), the worker's start-up (unpickling, imports, storage
    connection, ask) until its first trial is RUNNING in the study, and its first epoch (until the first validation
    ends, stamped by the model). The launch command itself is broken down in a fresh process (spec, the user's
    classes, sinfo + sbatch --test-only, creating the study).
(b) throughput: N trials on a SLURM array of W workers (``launch`` to the last trial finished in the storage, and to
    the jobs' end) against the same N trials back to back in one fresh process (an ask / ``run_trial`` / tell loop,
    with one thread, as each worker has, and in the full run also with torch's own thread count; the faster of the
    two is the baseline).
    The node advertises 4 CPUs but the machine may have fewer cores: the speed-up the cores allow is printed too.
    The ratio (one process / SLURM) is last.

    python benchmarks/slurm_dispatch.py            # (a) 3 single-worker launches; (b) 16 trials x 20 epochs, 4 workers
    python benchmarks/slurm_dispatch.py --epochs 3 # trials of ~0.3 s: the workers' start-up dominates
    python benchmarks/slurm_dispatch.py --quick    # 4 trials x 2 epochs, 2 workers; (a) from that run (<= 40 s)

Fails with one line when no SLURM cluster answers (start one with ``bash slurm/start-cluster.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "studies"
# The benchmark's model: the digits MLP, stamping the end of each worker's first validated epoch.
MODEL = '''
import os
import sys
import time

sys.path.insert(0, {studies!r})
from digits import DigitsDataModule, DigitsMLP


class StampedMLP(DigitsMLP):
    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            with open({stamps!r}, "a") as handle:
                task = os.environ.get("SLURM_ARRAY_TASK_ID", "0")
                handle.write(f"{{task}} {{os.getpid()}} {{self.current_epoch}} {{time.time()}}\\n")
'''
SUBMITIT_LINE = re.compile(r"submitit INFO \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\) - Starting")


def fail(message: str) -> SystemExit:
    return SystemExit(f"slurm_dispatch: {message}")


def require_cluster() -> None:
    """One line, not a skip, when there is no cluster to measure."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise fail(f"no SLURM cluster reachable (sinfo: {exc}); start one with: bash slurm/start-cluster.sh") from None
    if out.returncode != 0 or "up" not in out.stdout:
        why = " ".join(out.stderr.split())[:200] or "no partition is up"
        raise fail(f"no SLURM cluster reachable (sinfo: {why}); start one with: bash slurm/start-cluster.sh")


def write_study(directory: Path, *, name: str, trials: int, epochs: int, workers: int, kind: str) -> Path:
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "stamped.py").write_text(MODEL.format(studies=str(STUDIES), stamps=str(directory / "epochs.txt")))
    raw: dict[str, Any] = {
        "name": name, "root": str(directory / "runs"),
        "model": {"class": "stamped.py:StampedMLP", "args": {"width": 64, "depth": 2}},
        "data": {"class": "stamped.py:DigitsDataModule", "args": {"batch_size": 64}},
        "objective": {"metric": "val_acc", "direction": "maximize"},
        "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
                         "dropout": {"type": "float", "low": 0.0, "high": 0.3}},
        "sampler": {"name": "random", "seed": 0}, "pruner": "none",
        "budget": {"n_trials": trials, "max_failures": 2},
        "trainer": {"max_epochs": epochs, "accelerator": "cpu", "log_every_n_steps": 5, "early_stopping": False},
        "executor": {"kind": kind, "workers": workers},
    }
    if kind == "slurm":
        raw["slurm"] = {"partition": "debug", "timeout_min": 10, "cpus_per_task": 1, "mem_gb": 2,
                        "job_name": f"bench-{name}", "setup": ["echo BATCH_START $(date +%s.%N)"]}
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ SLURM runs --

def launch(path: Path) -> tuple[float, float]:
    """``sweeplight study launch`` as a user runs it; returns (start, end) wall-clock times."""
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "sweeplight.cli", "study", "launch", str(path), "--no-progress"],
                         capture_output=True, text=True, timeout=300, cwd=path.parent)
    end = time.time()
    if out.returncode != 0 or "submitted: SLURM job array" not in out.stdout:
        raise fail(f"launch failed (rc {out.returncode}): {(out.stderr or out.stdout).strip()[-500:]}")
    return start, end


def wait_done(study_dir: Path, job: str, trials: int, timeout: float) -> float:
    """Poll until the array's tasks have left the queue; returns when they were last seen in it."""
    end, last_seen = time.time() + timeout, time.time()
    while time.time() < end:
        out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i"], capture_output=True, text=True,
                             timeout=20)
        if out.returncode == 0 and not out.stdout.strip():
            return last_seen
        last_seen = time.time()
        time.sleep(0.2)
    subprocess.run(["scancel", job], capture_output=True, timeout=20)
    raise fail(f"job array {job} still in the queue after {timeout:.0f} s; see {study_dir / 'slurm'}")


def sacct_states(job: str) -> dict[str, str]:
    for _ in range(50):  # accounting lags the queue by up to a few tenths of a second
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job, "-o", "JobID,State"], capture_output=True,
                             text=True, timeout=20).stdout
        states = {line.split("|")[0]: line.split("|")[1].split()[0] for line in out.splitlines() if "|" in line}
        if states and all(s not in ("PENDING", "RUNNING", "COMPLETING") for s in states.values()):
            return states
        time.sleep(0.2)
    return states


def finished_trials(study_dir: Path, name: str) -> list[Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = json.loads((study_dir / "spec.json").read_text())["storage"]
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def slurm_run(directory: Path, *, name: str, trials: int, epochs: int, workers: int) -> dict[str, Any]:
    """Launch, wait for the jobs, check every trial and task, and return the timestamps of each phase."""
    path = write_study(directory, name=name, trials=trials, epochs=epochs, workers=workers, kind="slurm")
    study_dir = directory / "runs" / name
    start, launched = launch(path)
    record = json.loads((study_dir / "slurm" / "jobs.json").read_text())["jobs"][-1]
    job = record["job_id"]
    try:
        jobs_end = wait_done(study_dir, job, trials, timeout=120 + trials * epochs * 10)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=20)
    done = finished_trials(study_dir, name)
    states = sacct_states(job)
    bad = [t.number for t in done if t.state.name != "COMPLETE"]
    if len(done) != trials or bad:
        raise fail(f"{name}: {len(done)} trials, not COMPLETE: {bad}; see {study_dir / 'slurm'}")
    if len(states) != workers or set(states.values()) != {"COMPLETED"}:
        raise fail(f"{name}: sacct shows {states}, expected {workers} COMPLETED array tasks")
    for t in done:
        summary = json.loads((study_dir / "trials" / str(t.number) / "summary.json").read_text())
        if summary["epochs"] != epochs or not summary.get("slurm_job_id"):
            raise fail(f"{name}: trial {t.number} trained {summary['epochs']} epochs (expected {epochs})")
    stamps = [line.split() for line in (directory / "epochs.txt").read_text().splitlines()]
    tasks = []
    logs = sorted((study_dir / "slurm").glob(f"{job}*_0_log.out"))  # 12_0_0_log.out; 12_0_log.out for one worker
    if len(logs) != workers:
        raise fail(f"{name}: {len(logs)} worker logs, expected {workers}")
    for log_file in logs:
        key = log_file.name.removesuffix("_0_log.out")
        index = key.split("_")[1] if "_" in key else "0"
        log = log_file.read_text()
        batch = float(re.search(r"BATCH_START (\d+\.\d+)", log).group(1))
        python = datetime.strptime(SUBMITIT_LINE.search(log).group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        mine = [t for t in done if t.system_attrs.get("sweeplight:slurm_job") == key]
        asked = min(t.datetime_start.timestamp() for t in mine) if mine else None
        first_epoch = min((float(s[3]) for s in stamps if s[0] == index), default=None)
        tasks.append({"batch": batch, "python": python, "asked": asked, "first_epoch": first_epoch,
                      "trials": len(mine)})
    return {"start": start, "launched": launched, "submitted": record["submitted_at"], "tasks": tasks,
            "last_trial": max(t.datetime_complete.timestamp() for t in done), "jobs_end": jobs_end}


def latency_rows(run: dict[str, Any]) -> dict[str, float]:
    """Seconds of each phase, for the first array task to reach each step (the user's "first trial running")."""
    tasks = [t for t in run["tasks"] if t["asked"] is not None]
    first = min(tasks, key=lambda t: t["asked"])
    return {"launch command (until sbatch returned)": run["submitted"] - run["start"],
            "launch command (after sbatch: status, exit)": run["launched"] - run["submitted"],
            "queue wait (sbatch -> batch script runs)": first["batch"] - run["submitted"],
            "srun + python + submitit start": first["python"] - first["batch"],
            "worker start-up (imports, storage) -> ask": first["asked"] - first["python"],
            "= launch -> first trial RUNNING": first["asked"] - run["start"],
            "first epoch (trainer, data, 1 epoch)": first["first_epoch"] - first["asked"],
            "= launch -> first epoch done": first["first_epoch"] - run["start"],
            "job end (last trial told -> out of squeue)": run["jobs_end"] - run["last_trial"]}


# ----------------------------------------------------------------------------------------------- in-process --

def launch_steps(path: Path) -> dict[str, float]:
    """The steps ``launch`` runs before it submits, timed one by one in a fresh process (imports cold)."""
    out = subprocess.run([sys.executable, __file__, "--child-launch-steps", str(path)], capture_output=True,
                         text=True, timeout=300, cwd=path.parent)
    if out.returncode != 0:
        raise fail(f"launch steps failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_launch_steps(path: Path) -> None:
    steps: dict[str, float] = {}
    clock = time.perf_counter()

    def mark(what: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[what] = now - clock
        clock = now

    import sweeplight.cli  # noqa: F401

    mark("import sweeplight.cli")
    from sweeplight._spec import load_spec

    spec = load_spec(path)
    mark("read and check the study file")
    import optuna  # noqa: F401

    mark("import optuna")
    from sweeplight._check import check_spec

    check_spec(spec)
    mark("import + check model/data (lightning)")
    from sweeplight._slurm import check_cluster

    check_cluster(spec.executor.slurm)
    mark("check_cluster (sinfo, sbatch --test-only)")
    from sweeplight._launch import prepare

    prepare(spec, progress=False)  # again, as launch runs it; the imports and cluster checks are warm now
    steps["(prepare again, warm)"] = time.perf_counter() - clock
    print(json.dumps(steps))


def baseline(directory: Path, *, trials: int, epochs: int, threads: int | None = None) -> dict[str, Any]:
    """The same trials back to back in one fresh process (torch's own thread count, or ``threads``): returns its
    wall time and the loop's."""
    path = write_study(directory, name="baseline", trials=trials, epochs=epochs, workers=1, kind="local")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child-baseline", str(path)], capture_output=True, text=True,
                         timeout=600, cwd=directory, env=env)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise fail(f"baseline failed: {out.stderr.strip()[-500:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["complete"] != trials or result["epochs"] != [epochs] * trials:
        raise fail(f"baseline: {result['complete']} of {trials} trials complete, epochs {result['epochs']}")
    return {"wall": wall, **result}


def torch_threads() -> int:
    """What torch would use in a process of its own (its pool is sized to the cores when it is imported)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True,
                         text=True, timeout=120, env=env)
    return int(out.stdout.strip() or 0)


def child_baseline(path: Path) -> None:
    import logging
    import warnings

    import optuna

    from sweeplight._check import check_spec
    from sweeplight._samplers import build_pruner, build_sampler
    from sweeplight._space import sample
    from sweeplight._spec import load_spec
    from sweeplight._trial import run_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    spec = load_spec(path)
    components = check_spec(spec)
    spec.directory.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=spec.storage, study_name=spec.name, direction=spec.objective.direction,
                                sampler=build_sampler(spec), pruner=build_pruner(spec))
    start = time.perf_counter()
    complete, epochs = 0, []
    for _ in range(spec.budget.n_trials):
        trial = study.ask()
        params = sample(spec.search_space, trial)
        outcome = run_trial(spec, components, number=trial.number, params=params, trial=trial,
                            trial_dir=spec.directory / "trials" / str(trial.number))
        study.tell(trial, outcome.value)
        complete += outcome.state == "COMPLETE"
        epochs.append(outcome.summary.get("epochs"))
    print(json.dumps({"loop": time.perf_counter() - start, "complete": complete, "epochs": epochs}))


# ----------------------------------------------------------------------------------------------------- main --

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 trials x 2 epochs on 2 workers (the test suite)")
    parser.add_argument("--trials", type=int, default=16, help="trials in (b) (default 16)")
    parser.add_argument("--workers", type=int, default=4, help="SLURM array size in (b) (default 4)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per trial (default 20: ~1.5 s on 2 cores)")
    parser.add_argument("--repeats", type=int, default=3, help="single-worker launches for (a) (default 3)")
    parser.add_argument("--child-launch-steps", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-baseline", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_launch_steps:
        child_launch_steps(args.child_launch_steps)
        return 0
    if args.child_baseline:
        child_baseline(args.child_baseline)
        return 0
    if args.quick:
        args.trials, args.workers, args.epochs, args.repeats = 4, 2, 2, 0
    require_cluster()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="slurm-dispatch-") as tmp:
        root = Path(tmp)
        steps = {} if args.quick else launch_steps(write_study(root / "steps", name="steps", trials=1, epochs=1,
                                                                workers=1, kind="slurm"))
        singles = [slurm_run(root / f"single{i}", name=f"single{i}", trials=1, epochs=args.epochs, workers=1)
                   for i in range(args.repeats)]
        many = slurm_run(root / "many", name="many", trials=args.trials, epochs=args.epochs, workers=args.workers)
        # Each worker trains on one thread (one CPU per job); one process would use torch's own count (all cores).
        # Both are run in full mode and the faster is the baseline: the ratio is SLURM's gain over the best one
        # process can do, not over a thread pool fighting other processes for the cores.
        bases = {"1 torch thread": baseline(root / "base1", trials=args.trials, epochs=args.epochs, threads=1)}
        if not args.quick:
            bases[f"torch's {torch_threads()} threads"] = baseline(root / "base", trials=args.trials,
                                                                    epochs=args.epochs)
    rows = [latency_rows(run) for run in singles] or [latency_rows(many)]
    where = (f"{len(singles)} single-worker launches, median" if singles else
             f"first of {args.workers} workers starting together")
    print(f"SLURM dispatch on {cores} cores ({os.uname().nodename}); {args.epochs} epochs per trial")
    if steps:
        print("\nlaunch steps before sbatch (fresh process)      s")
        for what, seconds in steps.items():
            print(f"  {what:<45}{seconds:6.2f}")
    print(f"\n(a) latency ({where})              s")
    for what in rows[0]:
        print(f"  {what:<45}{statistics.median(r[what] for r in rows):6.2f}")
    slurm_done = many["last_trial"] - many["start"]
    jobs_end = many["jobs_end"] - many["start"]
    ideal = min(args.workers, cores)
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=20).stdout
    advertised = max((int(n) for n in re.findall(r"\d+", sinfo)), default=0)
    print(f"\n(b) the node advertises {advertised} CPUs, the machine has {cores} cores: "
          f"{args.workers} workers can be at most {ideal:.2f}x faster")
    print(f"  {str(args.trials) + ' trials x ' + str(args.epochs) + ' epochs':<45}wall s  trials/min  ratio")
    best = min(b["wall"] for b in bases.values())
    for label, b in bases.items():
        print(f"  {'one process, ' + label + ' (loop ' + format(b['loop'], '.1f') + ' s)':<45}{b['wall']:6.1f}"
              f"{args.trials / b['wall'] * 60:12.1f}{best / b['wall']:7.2f}")
    print(f"  {'SLURM, ' + str(args.workers) + ' workers: launch -> jobs ended':<45}{jobs_end:6.1f}"
          f"{args.trials / jobs_end * 60:12.1f}{best / jobs_end:7.2f}")
    print(f"  {'SLURM, ' + str(args.workers) + ' workers: launch -> last trial done':<45}{slurm_done:6.1f}"
          f"{args.trials / slurm_done * 60:12.1f}{best / slurm_done:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
