"""The comparison of inference strategies on one model, split by concern.

- :mod:`.harness`: the grid over strategies and seeds on one split (``compare``);
- :mod:`.gaps`: the exact ELBO and gap, and the approximation / amortization split;
- :mod:`.labels`: label matching for mixtures (adjusted Rand index, matched parameters);
- :mod:`.tables`: the summary over seeds, the text table and CSV (shared with the report);
- :mod:`.figures`: curves, the yardstick, aligned posteriors;
- :mod:`.report`: report.html, self-contained.
"""

from inference.compare.gaps import amortization_split, exact_decomposition, judge_fit
from inference.compare.harness import compare, strategy_grid
from inference.compare.labels import label_switching_measures, match_labels
from inference.compare.tables import format_table, summarize, table

__all__ = ["amortization_split", "compare", "exact_decomposition", "format_table", "judge_fit",
           "label_switching_measures", "match_labels", "strategy_grid", "summarize", "table"]
