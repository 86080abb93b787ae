"""Importing a user's model file (``lvm-zoo fit my_model.py:NAME``) as data, not as a script.

A model file is run once, to declare its models. Whatever goes wrong while it runs is the
user's input going wrong, so it becomes one :class:`~zoo.errors.InputError` that names the
file and the fix, never a traceback or another exit status:

- an exception (a failed import, a syntax error, a refused declaration);
- ``sys.exit(...)`` or ``exit()`` at import (script code that belongs under
  ``if __name__ == "__main__":``), whatever its status;
- output printed while importing goes to standard error, so that standard output stays what
  the command prints (one JSON object under ``--json``).

:func:`zoo.registry.get_model` calls :func:`run_model_file`; the registry keeps which file is
being imported, so that a declaration knows its source.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from zoo.errors import InputError

__all__ = ["module_name", "run_model_file"]


def module_name(path: Path) -> str:
    """The name a model file is imported under (``lvm_zoo_user_<stem>``)."""
    return f"lvm_zoo_user_{path.stem}"


def run_model_file(path: Path) -> ModuleType:
    """Import the model file ``path`` as a fresh module; every failure is one InputError."""
    if not path.is_file():
        raise InputError(f"model file '{path}' does not exist; check the path")
    if path.suffix != ".py":
        raise InputError(f"model file '{path}' is not a .py file; give path/to/file.py:NAME")
    name = module_name(path)
    try:
        module_spec = importlib.util.spec_from_file_location(name, path)
    except (ImportError, ValueError) as error:
        raise InputError(f"model file '{path}' cannot be imported ({error})") from None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    done = False
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the command's (--json)
            module_spec.loader.exec_module(module)
        done = True
    except InputError as error:  # a declaration the zoo refused: its message says the fix
        raise InputError(f"model file '{path}': {_one_line(error)}") from None
    except SystemExit as stop:
        raise InputError(
            f"model file '{path}' called sys.exit({stop.code!r}) while being imported; a model "
            "file only defines and declares its models: put script code under "
            "`if __name__ == \"__main__\":`") from None
    except SyntaxError as error:
        raise InputError(f"model file '{path}' has a syntax error at line {error.lineno}: "
                         f"{error.msg}; fix it (`python {path}` shows where)") from None
    except Exception as error:  # noqa: BLE001 -- anything the user's code raises, said once
        raise InputError(f"model file '{path}' failed to import ({type(error).__name__}: "
                         f"{_one_line(error)}); run `python {path}` to see where, and fix "
                         "it") from None
    finally:
        if not done:
            sys.modules.pop(name, None)
    return module


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
