"""The one warning a fit that stopped short of its tolerance raises: ``ConvergenceWarning``.

Where scikit-learn is imported, it is scikit-learn's ``ConvergenceWarning``, so that a filter a
scikit-learn user already has (``warnings.simplefilter("ignore", ConvergenceWarning)``, or
``-W ignore::sklearn.exceptions.ConvergenceWarning``, which imports it) applies to the zoo's
fits too. Otherwise it is :class:`ConvergenceWarning` here, a ``UserWarning`` of the same name:
no filter can name scikit-learn's class before scikit-learn is imported, and importing it
only to warn cost 1.3 s of a command (scikit-learn's ``__init__`` pulls in SciPy), paid by
every fit that reached ``max_iter``.
"""

from __future__ import annotations

import sys
import warnings


class ConvergenceWarning(UserWarning):
    """A fit stopped at its iteration limit before its tolerance (scikit-learn not imported;
    see the module's docstring)."""


def category() -> type[UserWarning]:
    """scikit-learn's ``ConvergenceWarning`` where scikit-learn is imported, else ours."""
    imported = sys.modules.get("sklearn.exceptions")
    return imported.ConvergenceWarning if imported is not None else ConvergenceWarning


def warn_not_converged(message: str, *, stacklevel: int = 2) -> None:
    """``warnings.warn(message, ConvergenceWarning)`` at the caller's ``stacklevel``."""
    warnings.warn(message, category(), stacklevel=stacklevel + 1)
