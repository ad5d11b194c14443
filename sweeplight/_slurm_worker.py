"""A worker as a SLURM array task (submitted by submitit): signals, requeue, and DDP ranks as SLURM tasks.

**One owner for signals.** In a worker job sweeplight alone acts on the time-limit and preemption signals: it
replaces submitit's USR2/TERM handlers and gives Lightning ``SLURMEnvironment(auto_requeue=False)`` (so Lightning
neither requeues on USR1 nor saves an extra checkpoint). On the first USR2 (``--signal=USR2@signal_delay_s`` before
the time limit, or ``scancel -s USR2``) or TERM (preemption, ``scancel``), rank 0 runs ``scontrol requeue`` for its own
array task and the worker exits, leaving its trial RUNNING in the study; the requeued job continues that same trial
(same number, its intermediate values kept) from the trial's ``last.ckpt``. At most the epoch in progress is lost:
``last.ckpt`` is written at the end of every validated epoch. A job killed without any signal (``scancel -s KILL``, a
node failure) stops sending heartbeats; its trial is failed as stale and re-run from its checkpoint by another worker
or the next launch.

**DDP.** A trial on N devices is a job of N tasks. Every task runs this worker; rank 0 asks and tells, and before
each trial writes the trial's parameters to ``slurm/ddp/<job>-r<restart>/round-<i>.json``, which the other ranks
read to train the same configuration. Lightning recognises the SLURM-launched processes and joins them.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

_state: dict[str, Any] = {"requeued": False, "round": 0, "study_dir": "."}
_MARK = "SWEEPLIGHT_WORKER"


def requeued() -> bool:
    """True once this worker asked SLURM to requeue its job: its running trial stays RUNNING for the next run."""
    return _state["requeued"]


def rank() -> int:
    return int(os.environ.get("SLURM_PROCID", "0"))


def slurm_worker() -> bool:
    """This process is a worker job's task (submitted by launch, or ``study work`` inside a batch script)."""
    return os.environ.get(_MARK) == "slurm" and bool(os.environ.get("SLURM_JOB_ID"))


def world() -> int:
    """SLURM tasks in this job step: > 1 for a DDP worker job."""
    return int(os.environ.get("SLURM_NTASKS", "1")) if slurm_worker() else 1


def _on_signal(signum: int, frame: Any) -> None:
    if _state.get("signalled"):
        # Lightning keeps calling this handler for SIGTERM through its own (composed) handler, and SLURM sends TERM
        # right after accepting the requeue: the first signal decided, the shutdown it started goes on.
        return
    _state["signalled"] = True
    for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    name = signal.Signals(signum).name
    if rank() == 0:
        from sweeplight._slurm_jobs import cancelled, job_state, requeue_self

        # TERM comes with preemption (the job is still RUNNING) and with scancel or the hard time limit (the job is
        # already COMPLETING): only the first is a reason to come back.
        ending = signum == signal.SIGTERM and job_state() not in (None, "RUNNING")
        _state["requeued"] = not ending and not cancelled(Path(_state["study_dir"])) and requeue_self()
        what = "requeued; the trial continues in the next run" if _state["requeued"] else "not requeued"
        where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}" if frame else "?"
        print(f"{name} received at {time.strftime('%H:%M:%S')} (in {where}): job {what}", flush=True)
    from sweeplight._trial import Interrupted

    raise Interrupted()


def install_signals(study_dir: Path) -> None:
    """Take the signals over (from submitit, and before Lightning composes its own SIGTERM notifier with ours)."""
    os.environ[_MARK] = "slurm"
    _state["study_dir"] = str(study_dir)
    # DDP ranks > 0 leave it to rank 0: its requeue (or exit) ends the whole job step, while a follower leaving its
    # collective early could keep rank 0 from ever reaching its own handler.
    handler = _on_signal if rank() == 0 else signal.SIG_IGN
    for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, handler)


class SlurmWorker:
    """The callable submitit pickles: one array task = one worker pulling trials from the study."""

    def __init__(self, study_dir: str, launch_id: str, deadline: float | None) -> None:
        self.study_dir = study_dir
        self.launch_id = launch_id
        self.deadline = deadline

    def __call__(self, index: int) -> int:
        limit_threads()  # before torch is imported: its thread pool is sized once
        from sweeplight._errors import SweeplightError
        from sweeplight._trial import Interrupted
        from sweeplight._worker import EXIT_INTERRUPTED, work

        directory = Path(self.study_dir)
        install_signals(directory)
        try:
            if rank() > 0:
                code = follow(directory)
            else:
                try:
                    code = work(directory, launch_id=self.launch_id, deadline=self.deadline, worker=index)
                finally:
                    publish(directory, None)
        except Interrupted:
            code = EXIT_INTERRUPTED
        except SweeplightError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            code = exc.exit_code
        # The process ends here (submitit only pickles the result): with torch and Lightning loaded, the interpreter's
        # final garbage collections take 1.5-3 s, during which the job still holds its CPUs and the study's end waits.
        gc.freeze()
        if code != 0:  # sacct shows FAILED with the code; after a requeue no result file, so it runs again
            sys.exit(code)
        return code


def limit_threads() -> None:
    """One compute thread per CPU the job was given, unless the user chose (``OMP_NUM_THREADS``).

    torch sizes its thread pool to the node's cores, not the job's CPUs, wherever SLURM does not bind tasks to
    cores (``task/none``, no cgroup cpusets): workers sharing a node then run cores x workers threads that fight
    over the same cores. Lightning does the same for the processes it launches itself (``OMP_NUM_THREADS``).
    """
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if not cpus or not cpus.isdigit() or "OMP_NUM_THREADS" in os.environ:
        return
    os.environ["OMP_NUM_THREADS"] = cpus  # read by torch when it is imported, and inherited by its subprocesses
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(cpus))


# ---------------------------------------------------------------------------------------------------- DDP --

def _rounds_dir(study_dir: Path) -> Path:
    from sweeplight._slurm_jobs import task_key

    return study_dir / "slurm" / "ddp" / f"{task_key()}-r{os.environ.get('SLURM_RESTART_COUNT', '0')}"


def publish(study_dir: Path, payload: dict[str, Any] | None) -> None:
    """Rank 0: the next trial for the other ranks, or None for "no more trials"."""
    if world() <= 1 or rank() != 0:
        return
    from sweeplight._summary import write_json_atomic

    directory = _rounds_dir(study_dir)
    directory.mkdir(parents=True, exist_ok=True)
    if _state["round"] == 0:
        write_json_atomic(directory / "rank0.json", {"host": os.uname().nodename, "pid": os.getpid()})
    name = "stop.json" if payload is None else f"round-{_state['round']}.json"
    write_json_atomic(directory / name, payload or {})
    _state["round"] += 1


def follow(study_dir: Path) -> int:
    """Ranks > 0: train what rank 0 publishes until it says stop (or dies)."""
    from sweeplight._worker import follower

    directory = _rounds_dir(study_dir)
    index = 0
    while True:
        payload = _wait(directory, index)
        if payload is None:
            return 0
        follower(study_dir / "trials" / str(payload["number"]), payload)
        index += 1


def _wait(directory: Path, index: int) -> dict[str, Any] | None:
    path, stop = directory / f"round-{index}.json", directory / "stop.json"
    while True:
        if path.is_file():
            return json.loads(path.read_text())
        if stop.is_file() or not _rank0_alive(directory):
            return None
        time.sleep(0.2)


def _rank0_alive(directory: Path) -> bool:
    try:
        info = json.loads((directory / "rank0.json").read_text())
    except (OSError, ValueError):
        return True  # not started yet
    if info.get("host") != os.uname().nodename:
        return True  # another node: its job step ends us if it dies
    return Path(f"/proc/{info['pid']}").exists()


__all__ = ["SlurmWorker", "follow", "install_signals", "limit_threads", "publish", "rank", "requeued", "world"]
