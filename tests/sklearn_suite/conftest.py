"""scikit-learn's own tests, run against the zoo's estimators (see ``_shim.py``).

The fixtures scikit-learn's test files take from its own conftest (``global_random_seed``,
``global_dtype``), with its defaults (seed 42; float32 as well as float64: the zoo keeps
float32 input float32, so those cases are run, as scikit-learn does with
``SKLEARN_RUN_FLOAT32_TESTS=1``); and the expected failures of ``expected_failures.py``,
strict inside the scikit-learn versions that list was made for.
"""

from __future__ import annotations

import fnmatch

import numpy as np
import pytest
import sklearn
from expected_failures import EXPECTED_FAILURES, MADE_FOR, NOT_APPLICABLE


@pytest.fixture
def global_random_seed():
    return 42


@pytest.fixture(params=[np.float32, np.float64])
def global_dtype(request):
    return request.param


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def in_made_for_range() -> bool:
    low, high = MADE_FOR
    return _version(low) <= _version(sklearn.__version__) < _version(high)


def _reason(table: dict[str, str], name: str) -> str | None:
    for pattern, reason in table.items():
        if fnmatch.fnmatchcase(name, pattern):
            return reason
    return None


def pytest_collection_modifyitems(config, items):
    strict = in_made_for_range()  # another version: the list may be stale, so not strict
    kept, dropped = [], []
    for item in items:
        suite = item.path.name
        if not suite.startswith("test_sklearn_suite_"):
            kept.append(item)
            continue
        # the classes of the parameters too: an estimator instance's id is "estimator1"
        callspec = getattr(item, "callspec", None)
        classes = [type(v).__name__ for v in callspec.params.values()] if callspec else []
        label = " ".join([item.name, *classes])
        if _reason(NOT_APPLICABLE.get(suite, {}), label) is not None:
            dropped.append(item)
            continue
        reason = _reason(EXPECTED_FAILURES.get(suite, {}), item.name)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=strict))
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
