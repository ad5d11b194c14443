"""Import the user's classes from the paths the study file names, and nothing else.

``package.module:Class`` imports a module (the study file's directory and the working directory are on the path);
``path/to/file.py:Class`` loads that file, relative to the study file.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from sweeplight._errors import SpecError
from sweeplight._fields import did_you_mean, one_line, show


def import_class(target: str, *, base_dir: Path, field: str) -> type:
    """Return the class named by ``target``; every failure is one line naming ``field``."""
    module_part, _, class_name = target.rpartition(":")
    if not module_part or not class_name:
        raise SpecError(field, f"got {show(target)}; write 'package.module:ClassName' or 'file.py:ClassName'")
    for entry in (str(base_dir), str(Path.cwd())):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if module_part.endswith(".py") or "/" in module_part:
        module = _load_file(module_part, base_dir, field)
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            if exc.name and module_part.startswith(exc.name):
                raise SpecError(field, f"cannot import module {show(module_part)} ({one_line(str(exc))}); check the "
                                f"spelling, install the package, or give a file path like 'my_module.py:"
                                f"{class_name}'") from None
            raise SpecError(field, f"importing {show(module_part)} failed: {one_line(str(exc))}; install the "
                            "missing package") from None
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code may raise anything on import
            raise SpecError(field, f"importing {show(module_part)} {_raised(exc)}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        found = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and v.__module__ == module.__name__)
        raise SpecError(field, f"module {show(module_part)} has no {show(class_name)}{did_you_mean(class_name, found)};"
                        f" classes defined there: {', '.join(found) or '(none)'}")
    if not inspect.isclass(cls):
        raise SpecError(field, f"{show(target)} is a {type(cls).__name__}, not a class")
    return cls


def _raised(exc: BaseException) -> str:
    """How an import failed, in one line; ``sys.exit()`` at import time usually means unguarded script code."""
    if isinstance(exc, SystemExit):
        return (f"called sys.exit({show(exc.code)}) at import time; put the script code under "
                "if __name__ == '__main__':")
    return f"raised {type(exc).__name__}: {one_line(str(exc))}"


def _load_file(path_text: str, base_dir: Path, field: str) -> Any:
    given = Path(path_text).expanduser()
    path = given if given.is_absolute() else (base_dir / given)
    if not path.is_file():
        hint = "" if given.is_absolute() else " (paths are relative to the study file's folder)"
        raise SpecError(field, f"file {str(path)!r} does not exist{hint}; check the path")
    name = f"sweeplight_user_{path.stem}"
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) == str(path.resolve()):
        return existing
    if str(path.resolve().parent) not in sys.path:
        sys.path.insert(0, str(path.resolve().parent))
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    if spec is None or spec.loader is None:
        raise SpecError(field, f"cannot load {str(path)!r} as a Python module; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code may raise anything on import
        del sys.modules[name]
        raise SpecError(field, f"importing {str(path)!r} {_raised(exc)}") from None
    return module


def accepted_arguments(cls: type) -> tuple[set[str], bool]:
    """The constructor's keyword names, and whether it takes ``**kwargs`` (then it accepts any name)."""
    params = inspect.signature(cls.__init__).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def lightning_namespace(cls: type) -> str:
    """'pytorch_lightning' when the class derives from the old package, else 'lightning.pytorch'.

    The Trainer and callbacks must come from the same package as the module (mixing them fails: Optuna #4689).
    """
    for base in inspect.getmro(cls):
        if base.__module__.split(".")[0] == "pytorch_lightning":
            return "pytorch_lightning"
    return "lightning.pytorch"
