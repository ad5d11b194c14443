"""sweeplight: hyperparameter sweeps of PyTorch Lightning modules with Optuna, on a laptop or a SLURM cluster.

    import sweeplight
    result = sweeplight.launch("studies/digits.yaml", overrides=["budget.n_trials=4"])
    print(sweeplight.status("runs/digits").best_value)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweeplight._errors import SpecError, StorageError, StudyStopped, SweeplightError, TrialConfigError

if TYPE_CHECKING:
    from sweeplight._launch import LaunchResult, launch
    from sweeplight._spec import StudySpec, load_spec
    from sweeplight._status import StudyStatus
    from sweeplight._status import read_status as status

# Imported on first use: the command line (``sweeplight --help``, ``study status``) imports this package first and
# must not pay for the launch machinery it does not run.
_LAZY = {"LaunchResult": "_launch", "launch": "_launch", "StudySpec": "_spec", "load_spec": "_spec",
         "StudyStatus": "_status", "status": "_status"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sweeplight' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f"sweeplight.{_LAZY[name]}")
    value = getattr(module, "read_status" if name == "status" else name)
    globals()[name] = value
    return value

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
