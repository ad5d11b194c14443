"""sweeplight: hyperparameter sweeps of PyTorch Lightning modules with Optuna, on a laptop or a SLURM cluster.

    import sweeplight
    result = sweeplight.launch("studies/digits.yaml", overrides=["budget.n_trials=4"])
    print(sweeplight.status("runs/digits").best_value)
"""

from __future__ import annotations

from sweeplight._errors import SpecError, StorageError, StudyStopped, SweeplightError, TrialConfigError
from sweeplight._launch import LaunchResult, launch
from sweeplight._spec import StudySpec, load_spec
from sweeplight._status import StudyStatus
from sweeplight._status import read_status as status

__version__ = "0.1.0"

__all__ = [
    "LaunchResult",
    "SpecError",
    "StorageError",
    "StudySpec",
    "StudyStatus",
    "StudyStopped",
    "SweeplightError",
    "TrialConfigError",
    "__version__",
    "launch",
    "load_spec",
    "status",
]
