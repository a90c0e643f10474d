"""RM-MetaL and its baselines (MAML, ANIL, ITD-BiO) as one two-level graph: a Conv-4 backbone over
per-task linear heads.

Paper: H. Yang, J. Ma, X. Yu, "Memory-Reduced Meta-Learning with Guaranteed Convergence", AAAI 2025
(arXiv:2412.12030).

* :mod:`~problems.rmmetal.levels` — the backbone and head levels, the four algorithms as
  configurations of one graph, and the meta-test protocol.
"""

from . import levels
from .levels import *  # noqa: F403

__all__ = list(levels.__all__)
