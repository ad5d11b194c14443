"""DDP trials on one node: sweeplight starts the extra ranks itself.

Lightning's own launcher re-runs ``sys.argv`` for each extra rank, which would start a whole new worker, and its
process observer SIGKILLs the parent when a child fails. Instead the worker is rank 0 and starts ranks 1..N-1 as
``python -m sweeplight._worker follower TRIAL_DIR`` with the usual ``MASTER_ADDR``/``LOCAL_RANK`` variables;
Lightning then sees processes created externally and simply joins them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sweeplight._trainer_spec import TrainerConfig

_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK")


def world_size(config: TrainerConfig) -> int:
    """How many processes a trial with this config trains on (1 unless a DDP strategy with devices > 1)."""
    devices = config.devices
    if devices == "auto":
        import torch

        devices = torch.cuda.device_count() if config.accelerator in ("auto", "gpu", "cuda") else 1
    count = len(devices) if isinstance(devices, list) else int(devices or 1)
    strategy = str(config.strategy)
    return count if count > 1 and (strategy.startswith("ddp") or strategy == "auto") else 1


@contextlib.contextmanager
def ddp_ranks(size: int, trial_dir: Path, payload: dict[str, Any]) -> Iterator[dict[str, bool]]:
    """Start ranks 1..size-1 for the trial in ``trial_dir``; on exit wait for them (kill if stuck) and reset env."""
    status = {"ok": True}  # the caller sets ok=False when the trial failed: then do not wait for stuck ranks
    if size <= 1:
        yield status
        return
    saved = {k: os.environ.get(k) for k in _ENV}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK="0", LOCAL_RANK="0",
                      WORLD_SIZE=str(size))
    (trial_dir / "ddp.json").write_text(json.dumps(payload))
    procs = []
    for rank in range(1, size):
        env = dict(os.environ, LOCAL_RANK=str(rank))
        log = open(trial_dir / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen([sys.executable, "-m", "sweeplight._worker", "follower", str(trial_dir)],
                                       env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        yield status
    finally:
        for proc, log in procs:
            try:
                proc.wait(timeout=60 if status["ok"] else 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
