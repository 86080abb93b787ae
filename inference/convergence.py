"""The one warning a fit that stopped short of its tolerance raises: scikit-learn's
``ConvergenceWarning``, so that a filter a scikit-learn user already has
(``warnings.simplefilter("ignore", ConvergenceWarning)``) applies to the zoo's fits too.

scikit-learn is imported when the warning is raised, not when a command starts: importing it
pulls in SciPy's statistics and pandas, seconds of a command that needs none of them.
"""

from __future__ import annotations

import warnings


def warn_not_converged(message: str, *, stacklevel: int = 2) -> None:
    """``warnings.warn(message, ConvergenceWarning)`` at the caller's ``stacklevel``."""
    from sklearn.exceptions import ConvergenceWarning

    warnings.warn(message, ConvergenceWarning, stacklevel=stacklevel + 1)
