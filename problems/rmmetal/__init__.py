"""RM-MetaL and its baselines (MAML, ANIL, ITD-BiO) as one two-level graph: a Conv-4 backbone over
per-task linear heads.

Paper: H. Yang, J. Ma, X. Yu, "Memory-Reduced Meta-Learning with Guaranteed Convergence", AAAI 2025
(arXiv:2412.12030).

* :mod:`~problems.rmmetal.levels` — the backbone and head levels and the algorithms as
  configurations of one graph.
* :mod:`~problems.rmmetal.graphs` — the reference code's hyperparameter table and one run's graph
  from its :class:`GraphConfig`.
* :mod:`~problems.rmmetal.metatest` — the meta-test protocol (Table 1) shared by every algorithm,
  meta-validation, backbone snapshots.
* :mod:`~problems.rmmetal.memory` — peak memory of one outer step against K (Fig. 2, §5.2).
* :mod:`~problems.rmmetal.timing` — time per outer step measured alternately, equal wall-clock budgets
  (Table 2, §5.3).
* :mod:`~problems.rmmetal.hypergradient_accuracy` — RM-MetaL's hypergradient against dense implicit solves
  while it trains; the last solve's diagnostics of a run.
"""

from . import graphs, hypergradient_accuracy, levels, memory, metatest, timing
from .graphs import *  # noqa: F403
from .hypergradient_accuracy import *  # noqa: F403
from .levels import *  # noqa: F403
from .memory import *  # noqa: F403
from .metatest import *  # noqa: F403
from .timing import *  # noqa: F403

__all__ = [
    *levels.__all__,
    *graphs.__all__,
    *metatest.__all__,
    *memory.__all__,
    *timing.__all__,
    *hypergradient_accuracy.__all__,
]
