"""Every benchmark runs in its ``--quick`` mode: it finishes, checks its own results, and prints its table.

These are not timed tests (the numbers live in benchmarks/RESULTS.md); they keep the scripts working. Each script
asserts what it measured is right (trial counts, values read back, epochs trained) before it prints.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_") and p.name != "models.py")


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_quick_mode(script: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.strip()]
    # The table ends with the ratio: its last column is a number.
    assert re.search(r"ratio", result.stdout, re.IGNORECASE), result.stdout
    assert re.search(r"\d+(\.\d+)?x?\s*$", rows[-1]), rows[-1]
    assert list(tmp_path.iterdir()) == [], "a benchmark left files in its working directory"
