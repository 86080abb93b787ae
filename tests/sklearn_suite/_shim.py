"""Run a test file of the INSTALLED scikit-learn against the zoo's estimators.

:func:`load_suite` reads the file's source from the scikit-learn that is installed (never a
copy kept here), rewrites the imports of the estimators under test to the zoo's
(``from sklearn.mixture import GaussianMixture`` -> ``from inference.estimators_sklearn import
GaussianMixture``), leaves every other line as it is, and executes it as a module of its own;
the caller's test module then exposes its tests to pytest. Tracebacks point at scikit-learn's
own file and lines.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

OURS = "inference.estimators_sklearn"


def sklearn_file(relative: str) -> Path:
    """The path of ``relative`` (e.g. ``mixture/tests/test_mixture.py``) inside the installed
    scikit-learn."""
    root = Path(importlib.util.find_spec("sklearn").origin).parent
    return root / relative


class _Rewrite(ast.NodeTransformer):
    """``from <module> import <name>`` -> ``from inference.estimators_sklearn import <ours> as
    <name>`` for every ``(module, name) -> ours`` in ``replace``; nothing else changes."""

    def __init__(self, replace: dict[tuple[str, str], str]):
        self.replace = replace
        self.done: set[tuple[str, str]] = set()

    def visit_ImportFrom(self, node: ast.ImportFrom):
        kept, ours = [], []
        for alias in node.names:
            key = (node.module, alias.name)
            if key in self.replace:
                self.done.add(key)
                ours.append(ast.alias(name=self.replace[key], asname=alias.asname or alias.name))
            else:
                kept.append(alias)
        if not ours:
            return node
        nodes = [ast.ImportFrom(module=OURS, names=ours, level=0)]
        if kept:
            nodes.insert(0, ast.ImportFrom(module=node.module, names=kept, level=node.level))
        return [ast.copy_location(n, node) for n in nodes]


def load_suite(relative: str, replace: dict[tuple[str, str], str],
               select=None) -> dict:
    """The namespace of scikit-learn's test file ``relative`` with the imports in ``replace``
    pointed at the zoo. ``select(name, source)`` keeps only some ``test_*`` functions (all by
    default). Raises if an import to replace is no longer in the file, so that a renamed
    estimator import cannot silently test scikit-learn against itself."""
    path = sklearn_file(relative)
    if not path.is_file():  # a test file this scikit-learn does not ship: nothing to run
        import pytest
        import sklearn

        pytest.skip(f"scikit-learn {sklearn.__version__} has no {relative}",
                    allow_module_level=True)
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    rewrite = _Rewrite(replace)
    tree = ast.fix_missing_locations(rewrite.visit(tree))
    missing = set(replace) - rewrite.done
    if missing:
        raise ImportError(f"{path} no longer imports {sorted(missing)}; update the shim")
    name = "sklearn_suite." + relative.replace("/", ".").removesuffix(".py")
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(tree, str(path), "exec"), module.__dict__)  # noqa: S102 - the installed file
    namespace = {k: v for k, v in vars(module).items() if not k.startswith("__")}
    if select is not None:
        functions = {node.name: ast.get_source_segment(source, node)
                     for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}
        namespace = {k: v for k, v in namespace.items()
                     if not k.startswith("test") or select(k, functions.get(k, ""))}
    return namespace
