"""The command line: help everywhere, no heavy imports for help and status, exit codes, JSON status."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sweeplight._check import check_spec
from sweeplight._spec import load_spec
from sweeplight._storage import create_or_load_study

from .conftest import REPO, run_cli

_NO_HEAVY = """
import sys
from sweeplight.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "lightning", "pytorch_lightning") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
sys.exit(code)
"""


def _light(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _NO_HEAVY, *args], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize("args", [["--help"], ["study", "--help"], ["study", "launch", "--help"],
                                  ["study", "status", "--help"], ["study", "validate", "--help"], ["--version"]])
def test_help_works_without_importing_torch(args):
    result = _light(*args)
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stdout or result.stdout.rstrip().endswith("HEAVY=")
    if "--help" in args:
        assert "usage: sweeplight" in result.stdout


def test_status_reads_the_study_without_torch(make_study):
    path = make_study()
    spec = load_spec(path)
    check_spec(spec)
    study = create_or_load_study(spec)
    trial = study.ask({"lr": __import__("optuna").distributions.FloatDistribution(1e-3, 1e-1)})
    study.tell(trial, 0.5)
    result = _light("study", "status", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "HEAVY="
    data = json.loads("\n".join(result.stdout.splitlines()[:-1]))
    assert data["counts"]["COMPLETE"] == 1 and data["best_value"] == 0.5 and data["best_number"] == 0


def test_status_of_a_missing_study_is_one_line_exit_2(make_study):
    path = make_study()
    result = run_cli("study", "status", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("error: storage: ") and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr and not (path.parent / "runs").exists()


def test_validate_ok_creates_nothing(make_study, tmp_path):
    result = run_cli("study", "validate", str(make_study()))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: study 'tiny'")
    assert not (tmp_path / "runs").exists()


def test_no_command_prints_help():
    result = run_cli()
    assert result.returncode == 0 and "study" in result.stdout
