"""Meta-learned LOA reconstruction: a task-invariant regulariser θ below, task-specific weights
σ(ω_i) above, trained by the penalty method.

Paper: W. Bian, Y. Chen, X. Ye, Q. Zhang, "An Optimization-Based Meta-Learning Model for MRI
Reconstruction with Diverse Dataset", Journal of Imaging, 2021.

* :mod:`~problems.metarecon.loa` — the LOA-induced network (Algorithm 1), one phase per iteration;
* :mod:`~problems.metarecon.levels` — the levels ``theta`` (Eq. 14b) and ``omega`` (Eq. 14a), the
  stair schedule, adaptation and conventional training.
"""

from . import levels
from .levels import *  # noqa: F403

__all__ = list(levels.__all__)
