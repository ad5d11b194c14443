"""Write the trial's row of TensorBoard's HPARAMS tab: its parameters and ``hp_metric`` = the objective value.

Lightning's logger would write a placeholder ``hp_metric = -1`` (we build it with ``default_hp_metric=False``) and
only the keys it saw; here every trial writes every search-space key, so the tab's columns agree across trials
(a conditional parameter that was not sampled shows NaN, or 'none' for categorical ones).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweeplight._space import Param


def hparams_row(space: tuple[Param, ...], params: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for param in space:
        value = params.get(param.name)
        if value is None:
            value = math.nan if param.type in ("float", "int") else "none"
        elif not isinstance(value, (bool, int, float, str)):
            value = str(value)
        row[param.name] = value
    return row


def write_hparams(log_dir: Path, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
    """Append the hparams session and the metric scalars to the trial's event files."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        exp, ssi, sei = hparams_summary(hparams, metrics)
        file_writer = writer._get_file_writer()
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)
        for name, value in metrics.items():
            if name == "hp_metric" or not name.startswith("test"):
                writer.add_scalar(name, value, 0)
    finally:
        writer.close()
