"""Malformed and hostile study files: every one fails with exit code 2, one line naming the field, and nothing made.

Each case starts from the example study (``studies/digits.yaml``, classes by absolute path, ``root`` in the test's
own directory, a small budget) and changes one thing. Most run ``sweeplight.cli.main`` in-process so the suite stays
fast; a few run the real command in a subprocess, and a few also run ``study launch``.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sweeplight.cli import main

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "studies" / "digits.py"
BASE = yaml.safe_load((REPO / "studies" / "digits.yaml").read_text())

# Mutates the study in place, or returns the file's whole text (str or bytes) to write instead of the YAML.
Change = Callable[[dict[str, Any], Path], "str | bytes | None"]


def base_study(directory: Path) -> dict[str, Any]:
    """The example study, runnable from any directory, with a budget small enough to launch for real."""
    study = copy.deepcopy(BASE)
    study["model"]["class"] = f"{DIGITS}:DigitsMLP"
    study["data"]["class"] = f"{DIGITS}:DigitsDataModule"
    study["root"] = str(directory / "runs")
    study["budget"] = {"n_trials": 2, "max_failures": 1}
    study["trainer"]["max_epochs"] = 2
    study["executor"] = {"kind": "local", "workers": 1}
    return study


def dump(study: dict[str, Any]) -> str:
    return yaml.safe_dump(study, sort_keys=False)


def put(path: str | tuple[str, ...], value: Any) -> Change:
    """Set one field; a tuple path allows keys that hold dots (``("search_space", "model.widht")``)."""
    keys = path.split(".") if isinstance(path, str) else path

    def change(study: dict[str, Any], directory: Path) -> None:
        node = study
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = copy.deepcopy(value)

    return change


def drop(path: str) -> Change:
    *parents, last = path.split(".")

    def change(study: dict[str, Any], directory: Path) -> None:
        node = study
        for key in parents:
            node = node[key]
        del node[last]

    return change


def unchanged(study: dict[str, Any], directory: Path) -> None:
    """For cases whose fault is on the command line."""


def both(*changes: Change) -> Change:
    def change(study: dict[str, Any], directory: Path) -> None:
        for one in changes:
            one(study, directory)

    return change


def text(content: str | bytes) -> Change:
    return lambda study, directory: content


def edit_text(edit: Callable[[str], str]) -> Change:
    """Change the dumped YAML text itself (for what a mapping cannot express, such as a duplicate key)."""
    return lambda study, directory: edit(dump(study))


def user_module(code: str, cls: str = "Model") -> Change:
    """Point model.class at a small module written next to the study file."""

    def change(study: dict[str, Any], directory: Path) -> None:
        (directory / "user_model.py").write_text(code)
        study["model"]["class"] = f"user_model.py:{cls}"

    return change


def alias_bomb() -> list[Any]:
    """Nine levels of ten references to the level below: a short YAML file, a billion values once expanded."""
    level: list[Any] = [1] * 10
    for _ in range(8):
        level = [level] * 10
    return level


def self_reference() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def root_is_a_file(study: dict[str, Any], directory: Path) -> None:
    (directory / "afile").write_text("")
    study["root"] = str(directory / "afile")


def missing_model_file(study: dict[str, Any], directory: Path) -> None:
    study["model"]["class"] = f"{directory / 'missing.py'}:DigitsMLP"


def duplicate_lr(dumped: str) -> str:
    return dumped.replace("search_space:\n", "search_space:\n  lr: {type: float, low: 0.1, high: 1.0}\n", 1)


@dataclass(frozen=True)
class Case:
    id: str
    field: str  # the field path the error starts with; '' for errors about the file as a whole
    expected: tuple[str, ...]  # specific parts of the message: the value received, what is allowed, the fix
    change: Change
    overrides: tuple[str, ...] = ()
    secret: str | None = None  # must appear nowhere in the output


def puts(*pairs: tuple[str, Any]) -> Change:
    """Several fields at once."""
    changes = [put(path, value) for path, value in pairs]

    def change(study: dict[str, Any], directory: Path) -> None:
        for one in changes:
            one(study, directory)

    return change


def case(id: str, field: str, expected: str | tuple[str, ...], change: Change, **kwargs: Any) -> Case:
    return Case(id, field, (expected,) if isinstance(expected, str) else expected, change, **kwargs)


# fmt: off
CASES = [
    # The file itself.
    case("yaml_unclosed_flow", "", ("is not valid YAML at line 4", "expected ',' or '}'"),
         text("name: digits\nsearch_space:\n  lr: {type: float, low: 1.0e-4\n  depth: {type: int, low: 1, high: 3}\n")),
    case("yaml_tab_indent", "", ("is not valid YAML at line 3, column 1", "'\\t'"),
         text("name: digits\nbudget:\n\tn_trials: 2\n")),
    case("empty_file", "", "is empty", text("")),
    case("comments_only", "", "is empty", text("# nothing here yet\n")),
    case("top_level_list", "", "a study file is a mapping of fields (key: value lines), got list",
         text("- name: digits\n- budget: {n_trials: 2}\n")),
    case("top_level_scalar", "", "got string", text("digits\n")),
    case("not_utf8", "", "is not a text file", text(b"name: \xff\xfe digits\n")),
    case("duplicate_key", "", ("at line 15, column 3", "duplicate key 'lr'"), edit_text(duplicate_lr)),
    case("python_tag", "", "could not determine a constructor for the tag",
         edit_text(lambda t: t + "name2: !!python/object/apply:os.system ['touch pwned']\n")),
    case("deeply_nested", "", "nested too deeply", text("name: digits\nmodel: " + "[" * 1000 + "]" * 1000 + "\n")),
    case("alias_bomb", "model.args.lr.0.0.0.0", "more than 100000 values", put("model.args.lr", alias_bomb())),
    case("alias_loop", "model.args.lr.0", "refers to itself through a YAML alias",
         put("model.args.lr", self_reference())),
    case("date_value", "name", "got date 2024-05-01; quote it ('2024-05-01')",
         edit_text(lambda t: t.replace("name: digits", "name: 2024-05-01"))),
    # Unknown keys.
    case("unknown_top_key", "sampeler", ("did you mean 'sampler'?", "allowed keys here: name, root"),
         put("sampeler", "tpe")),
    case("unknown_objective_key", "objective.directon", "did you mean 'direction'?",
         put("objective.directon", "maximize")),
    case("unknown_budget_key", "budget.n_trial", "did you mean 'n_trials'?", put("budget.n_trial", 5)),
    case("unknown_early_stopping_key", "trainer.early_stopping.patiense", "did you mean 'patience'?",
         put("trainer.early_stopping.patiense", 3)),
    case("unknown_swa_key", "trainer.swa.epoch_strat", "did you mean 'epoch_start'?",
         put("trainer.swa.epoch_strat", 0.5)),
    case("newline_in_key", "trainer.early_stopping.'pati\\nence'", "unknown key",
         put("trainer.early_stopping.pati\nence", 3)),
    # Wrong types and ranges.
    case("n_trials_string", "budget.n_trials", "expected an integer, got string 'ten'", put("budget.n_trials", "ten")),
    case("max_epochs_fraction", "trainer.max_epochs", "expected an integer, got number 2.5",
         put("trainer.max_epochs", 2.5)),
    case("workers_zero", "executor.workers", "must be >= 1, got 0", put("executor.workers", 0)),
    case("budget_without_end", "budget", "give n_trials, timeout, cpu_hours or gpu_hours",
         put("budget", {"max_failures": 3})),
    case("timeout_words", "budget.timeout", ("got '2 hours'", "'30m', '2h', '1h30m'"),
         put("budget", {"timeout": "2 hours"})),
    case("slurm_unknown_key", "slurm.mem", ("did you mean 'mem_gb'?", "allowed keys here: partition"),
         puts(("executor", "slurm"), ("slurm", {"mem": 4}))),
    case("slurm_timeout_text", "slurm.timeout_min", "expected an integer, got string '1h'",
         puts(("executor", "slurm"), ("slurm", {"timeout_min": "1h"}))),
    case("slurm_tasks_mismatch", "slurm.tasks_per_node", ("1 x 3 = 3 processes", "trains on 2"),
         puts(("executor", "slurm"), ("slurm", {"tasks_per_node": 3}), ("trainer.devices", 2),
              ("trainer.strategy", "ddp"))),
    case("slurm_signal_after_limit", "slurm.signal_delay_s", "not shorter than the time limit (timeout_min=1)",
         puts(("executor", "slurm"), ("slurm", {"timeout_min": 1, "signal_delay_s": 90}))),
    case("slurm_setup_mapping", "slurm.setup", "expected a list of shell lines",
         puts(("executor", "slurm"), ("slurm", {"setup": {"module": "load"}}))),
    case("min_epochs_above_max", "trainer.min_epochs", "(5) must be <= max_epochs (2)", put("trainer.min_epochs", 5)),
    case("swa_without_lrs", "trainer.swa.lrs", "is required", put("trainer.swa", {"epoch_start": 0.7})),
    case("swa_empty_lrs", "trainer.swa.lrs", "is an empty list", put("trainer.swa.lrs", [])),
    case("devices_empty", "trainer.devices", "got list []", put("trainer.devices", [])),
    # The search space.
    case("low_above_high", "search_space.lr", ("low=0.1 high=0.001", "swap them"),
         put("search_space.lr", {"type": "float", "low": 0.1, "high": 0.001})),
    case("log_low_zero", "search_space.lr.low", ("must be > 0 when log: true, got 0", "set log: false"),
         put("search_space.lr.low", 0)),
    case("int_fractional_bound", "search_space.width.low", ("got 32.5", "use type: float"),
         put("search_space.width.low", 32.5)),
    case("empty_choices", "search_space.optimizer.choices", "expected a non-empty list, got list []",
         put("search_space.optimizer.choices", [])),
    case("duplicate_choices", "search_space.optimizer.choices", "'adam' appears more than once",
         put("search_space.optimizer.choices", ["adam", "sgd", "adam"])),
    case("equal_number_choices", "search_space.batch_size.choices", "32.0 appears more than once",
         put("search_space.batch_size.choices", [32, 64, 32.0])),
    case("unknown_param_type", "search_space.depth.type", ("got 'integer'", "allowed: float, int, categorical, fixed"),
         put("search_space.depth.type", "integer")),
    case("param_name_with_space", "search_space.'learning rate'", "parameter names are identifiers",
         put(("search_space", "learning rate"), {"type": "float", "low": 0.1, "high": 0.2})),
    case("when_unknown_param", "search_space.momentum.when.optimiser", "did you mean 'optimizer'?",
         put("search_space.momentum.when", {"optimiser": "sgd"})),
    case("when_value_not_a_choice", "search_space.momentum.when.optimizer",
         ("value 'sdg' is not among optimizer's values ['adam', 'sgd']", "did you mean 'sgd'?"),
         put("search_space.momentum.when", {"optimizer": "sdg"})),
    case("when_cycle", "search_space.optimizer.when", "conditions form a cycle (optimizer -> batch_size -> optimizer)",
         both(put("search_space.optimizer.when", {"batch_size": 32}),
              put("search_space.batch_size.when", {"optimizer": "adam"}))),
    case("when_on_continuous_float", "search_space.momentum.when.dropout", "probability zero",
         put("search_space.momentum.when", {"dropout": 0.1})),
    case("when_int_out_of_range", "search_space.momentum.when.depth", "from 1 to 3",
         put("search_space.momentum.when", {"depth": 5})),
    case("when_empty_list", "search_space.momentum.when.optimizer", "the condition never holds",
         put("search_space.momentum.when", {"optimizer": []})),
    case("grid_float_without_step", "search_space.dropout.step", ("required by the grid sampler", "e.g. step: 0.05"),
         both(put("sampler", "grid"), put("search_space.lr", [0.001, 0.01]),
              put("search_space.weight_decay", [0.0, 0.01]))),
    case("grid_log_float", "search_space.lr",
         ("log: true cannot take", "as a categorical instead, e.g. [0.0001, ..., 0.03]"), put("sampler", "grid")),
    # Samplers and pruners.
    case("unknown_sampler", "sampler.name", ("got 'tpee' (did you mean 'tpe'?)", "allowed: tpe, random, grid"),
         put("sampler.name", "tpee")),
    case("unknown_sampler_option", "sampler.options.n_startup_trial",
         ("is not an option of TPESampler (did you mean 'n_startup_trials'?)", "valid options: consider_prior"),
         put("sampler.options", {"n_startup_trial": 6})),
    case("sampler_option_wrong_type", "sampler.options.n_startup_trials", "TPESampler expects int, got string 'six'",
         put("sampler.options.n_startup_trials", "six")),
    case("sampler_option_needs_object", "sampler.options.gamma", "expects a Python object",
         put("sampler.options.gamma", 0.25)),
    case("sampler_seed_negative", "sampler.seed", "must be >= 0, got -1", put("sampler.seed", -1)),
    case("unknown_pruner_option", "pruner.options.min_resources",
         ("not an option of HyperbandPruner (did you mean 'min_resource'?)", "valid options: min_resource"),
         put("pruner.options", {"min_resources": 2})),
    # The model and data classes.
    case("model_file_missing", "model.class", ("missing.py", "does not exist"),
         missing_model_file),
    case("module_raises", "model.class", "raised RuntimeError: no GPU here second line",
         user_module("raise RuntimeError('no GPU here\\nsecond line')\n")),
    case("module_exits", "model.class", ("called sys.exit(3) at import time", "if __name__ == '__main__'"),
         user_module("import sys\n\nsys.exit(3)\n")),
    case("module_syntax_error", "model.class", "raised SyntaxError", user_module("def broken(:\n    pass\n")),
    case("class_missing", "model.class",
         ("has no 'DigitsMLPP' (did you mean 'DigitsMLP'?)", "classes defined there: DigitsDataModule, DigitsMLP"),
         put("model.class", f"{DIGITS}:DigitsMLPP")),
    case("model_not_lightning", "model.class", "is not a LightningModule subclass; it is a LightningDataModule",
         put("model.class", f"{DIGITS}:DigitsDataModule")),
    case("model_not_a_class", "model.class", "is a module, not a class", put("model.class", f"{DIGITS}:nn")),
    case("data_not_datamodule", "data.class", "is not a lightning.pytorch.LightningDataModule",
         put("data.class", f"{DIGITS}:DigitsMLP")),
    case("searched_name_unknown", "search_space.widht", ("accepts 'widht' (did you mean 'width'?)", "model accepts:"),
         both(drop("search_space.width"), put("search_space.widht", {"type": "int", "low": 32, "high": 64}))),
    case("model_prefixed_name_unknown", "search_space.model.dropuot",
         "DigitsMLP.__init__ has no argument 'dropuot' (did you mean 'dropout'?)",
         put(("search_space", "model.dropuot"), {"type": "float", "low": 0.0, "high": 0.5})),
    case("model_args_unknown", "model.args.hidden", ("has no argument 'hidden'", "it accepts: depth, dropout, lr"),
         put("model.args", {"hidden": 64})),
    # The trainer section.
    case("trainer_unknown_arg", "trainer.max_epoch", "is not a Trainer argument (did you mean 'max_epochs'?)",
         put("trainer.max_epoch", 3)),
    case("trainer_callbacks", "trainer.callbacks", "is managed by sweeplight", put("trainer.callbacks", [])),
    case("trainer_logger", "trainer.logger", "is managed by sweeplight", put("trainer.logger", True)),
    case("bad_precision", "trainer.precision", ("got 'fp16'", "allowed: 32, 16-mixed, bf16-mixed"),
         put("trainer.precision", "fp16")),
    case("bad_accelerator", "trainer.accelerator", ("got 'gpuu' (did you mean 'gpu'?)", "allowed: auto, cpu"),
         put("trainer.accelerator", "gpuu")),
    case("searched_bad_precision", "search_space.trainer.precision", ("value 'fp8' is invalid", "got 'fp8'"),
         put(("search_space", "trainer.precision"), ["32", "fp8"])),
    # Objective, name, storage.
    case("multi_objective_with_pruner", "pruner", ("got 'hyperband'", "Optuna cannot prune multi-objective studies",
                                                   "set pruner: {name: none}"),
         put("objective", [{"metric": "val_acc", "direction": "maximize"},
                           {"metric": "val_loss", "direction": "minimize"}])),
    case("objective_without_direction", "objective.direction", "is required; one of: maximize, minimize",
         drop("objective.direction")),
    case("name_with_slash", "name", ("got 'digits/v2'", "no '/' or '..'"), put("name", "digits/v2")),
    case("name_with_dotdot", "name", ("got 'digits..v2'", "no '/' or '..'"), put("name", "digits..v2")),
    case("root_is_a_file", "root", "is a file, not a directory", root_is_a_file),
    case("storage_unknown_scheme", "storage", ("unknown URL scheme 'postgress' (did you mean 'postgresql'?)",
                                               "postgresql://user@host/db"),
         put("storage", "postgress://user:secret@host/db"), secret="secret"),
    case("storage_url_without_scheme", "storage", "got 'user:***@host/db'", put("storage", "user:secret@host/db"),
         secret="secret"),
    case("storage_in_memory", "storage", "in-memory database", put("storage", "sqlite:///:memory:")),
    # --set overrides.
    case("set_without_equals", "--set", "expected key.path=value, got 'budget.n_trials'", unchanged,
         overrides=("budget.n_trials",)),
    case("set_makes_bad_value", "search_space.lr.low", "must be > 0 when log: true, got -1", unchanged,
         overrides=("search_space.lr.low=-1",)),
    case("set_through_a_string", "--set", "'name' holds a string, not a mapping", unchanged,
         overrides=("name.first=x",)),
]
# fmt: on
BY_ID = {c.id: c for c in CASES}
LAUNCHED = (
    "python_tag",
    "grid_log_float",
    "unknown_sampler_option",
    "model_not_lightning",
    "trainer_unknown_arg",
    "storage_unknown_scheme",
    "set_makes_bad_value",
)
SUBPROCESS = ("yaml_unclosed_flow", "top_level_list", "module_exits", "storage_unknown_scheme")


def write_case(c: Case, directory: Path) -> Path:
    study = base_study(directory)
    content = c.change(study, directory)
    path = directory / "study.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(dump(study) if content is None else content)
    return path


def files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if "__pycache__" not in p.parts)


def assert_rejected(c: Case, code: int, out: str, err: str, directory: Path, before: list[str]) -> None:
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    assert err.endswith("\n") and len(err.splitlines()) == 1, f"expected one line, got {err!r}"
    line = err.rstrip("\n")
    assert line.startswith(f"error: {c.field}: " if c.field else "error: "), line
    for fragment in c.expected:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    if c.secret:
        assert c.secret not in out + err
    assert not (directory / "runs").exists()
    assert files(directory) == before, "the command created files"


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the user's classes puts the study's folder on sys.path; keep that within each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_validate_rejects(c: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_case(c, tmp_path)
    before = files(tmp_path)
    argv = ["study", "validate", str(path)]
    for item in c.overrides:
        argv += ["--set", item]
    code = main(argv)
    captured = capsys.readouterr()
    assert_rejected(c, code, captured.out, captured.err, tmp_path, before)


@pytest.mark.parametrize("case_id", LAUNCHED)
def test_launch_rejects_and_creates_nothing(case_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = BY_ID[case_id]
    path = write_case(c, tmp_path)
    before = files(tmp_path)
    argv = ["study", "launch", str(path), "--no-progress"]
    for item in c.overrides:
        argv += ["--set", item]
    code = main(argv)
    captured = capsys.readouterr()
    assert_rejected(c, code, captured.out, captured.err, tmp_path, before)


@pytest.mark.parametrize(
    ("verb", "case_id"), [*(("validate", i) for i in SUBPROCESS), ("launch", "storage_unknown_scheme")]
)
def test_command_line_rejects(verb: str, case_id: str, tmp_path: Path) -> None:
    c = BY_ID[case_id]
    path = write_case(c, tmp_path)
    before = files(tmp_path)
    argv = [sys.executable, "-m", "sweeplight.cli", "study", verb, str(path)]
    for item in c.overrides:
        argv += ["--set", item]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert_rejected(c, result.returncode, result.stdout, result.stderr, tmp_path, before)


def test_base_study_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(dump(base_study(tmp_path)))
    assert main(["study", "validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("ok: study 'digits', 8 parameters, model DigitsMLP, data DigitsDataModule")
    assert captured.err == ""
    assert not (tmp_path / "runs").exists()


def test_valid_storage_password_is_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = base_study(tmp_path)
    study["storage"] = "postgresql://sweep:p@ss/word@db.example.org/studies"
    path = tmp_path / "study.yaml"
    path.write_text(dump(study))
    assert main(["study", "validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert "postgresql://sweep:***@db.example.org/studies" in captured.out
    assert "p@ss" not in captured.out + captured.err


def test_grid_values_stay_within_range() -> None:
    from sweeplight._space import parse_space

    width, dropout = parse_space(
        {
            "width": {"type": "int", "low": 32, "high": 250, "step": 32},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
        }
    )
    assert width.grid_values() == [32, 64, 96, 128, 160, 192, 224]
    assert dropout.grid_values() == [0.0, 0.1, 0.2, 0.3]
