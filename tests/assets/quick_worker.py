"""A real sweeplight worker whose trials do no training: for storage stress tests and the per-trial benchmark.

Everything around the trial is the production path (ask lock, budget, heartbeats, summary.json before the tell,
retrying storage); the trial itself computes a value from its parameters, reporting three steps, in a few ms
(plus ``QUICK_TRIAL_SECONDS`` of sleep when set).

    python tests/assets/quick_worker.py work STUDY_DIR --worker N --launch-id ID
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from sweeplight._trial import TrialOutcome
from sweeplight._worker import main


def quick_trial(spec: Any, trial: Any, params: dict, directory: Path, resume: Any) -> TrialOutcome:
    started = time.time()
    numbers = [v for v in params.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    value = float(sum(numbers))
    steps = {}
    for step in range(3):
        steps[step] = value * (step + 1) / 3
        trial.report(steps[step], step)
    pause = float(os.environ.get("QUICK_TRIAL_SECONDS", "0"))
    if pause > 0:  # the outage tests stop the storage here (no sleep(0): it yields the CPU, a cost no trial has)
        time.sleep(pause)
    summary = {"schema_version": 1, "study": spec.name, "trial": trial.number, "state": "COMPLETE",
               "params": params, "objective": {"metric": spec.objective.metric, "value": value},
               "intermediate_values": {str(k): v for k, v in steps.items()}, "epochs": 3,
               "stop_reason": "max_epochs", "pid": os.getpid(), "wall_time_s": time.time() - started}
    return TrialOutcome(state="COMPLETE", value=value, summary=summary)


if __name__ == "__main__":
    sys.exit(main(runner=quick_trial))
