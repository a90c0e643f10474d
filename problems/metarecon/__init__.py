"""Meta-learned LOA reconstruction: a task-invariant regulariser θ below, task-specific weights
σ(ω_i) above, trained by the penalty method.

Paper: W. Bian, Y. Chen, X. Ye, Q. Zhang, "An Optimization-Based Meta-Learning Model for MRI
Reconstruction with Diverse Dataset", Journal of Imaging, 2021.

* :mod:`~problems.metarecon.loa` — the LOA-induced network (Algorithm 1), one phase per iteration;
* :mod:`~problems.metarecon.levels` — the levels ``theta`` (Eq. 14b) and ``omega`` (Eq. 14a), the
  stair schedule, and the graphs of meta-learning, adaptation and conventional training;
* :mod:`~problems.metarecon.scoring` — reconstructions, zero-filling, test rows, validation PSNR,
  line 15 of Algorithm 1 (the ε rule) at other values of its σ;
* :mod:`~problems.metarecon.balance` — how much of each level's step comes through the other
  (is the penalty method bilevel at a given λ?);
* :mod:`~problems.metarecon.budget` — the paper's budgets in epochs as global steps;
* :mod:`~problems.metarecon.compare` — hypergradient methods at equal wall-clock.
"""

from . import levels, scoring
from .balance import BalanceProbe, gradient_balance
from .budget import Budget
from .compare import compare_at_equal_wallclock
from .levels import *  # noqa: F403
from .loa import LOANetwork, LOASettings
from .scoring import *  # noqa: F403

__all__ = [
    *levels.__all__,
    *scoring.__all__,
    "BalanceProbe",
    "Budget",
    "LOANetwork",
    "LOASettings",
    "compare_at_equal_wallclock",
    "gradient_balance",
]
