"""Meta-learned LOA reconstruction: a task-invariant regulariser θ below, task-specific weights
σ(ω_i) above, trained by the penalty method.

Paper: W. Bian, Y. Chen, X. Ye, Q. Zhang, "An Optimization-Based Meta-Learning Model for MRI
Reconstruction with Diverse Dataset", Journal of Imaging, 2021.

* :mod:`~problems.metarecon.loa` — the LOA-induced network (Algorithm 1), one phase per iteration;
* :mod:`~problems.metarecon.levels` — the levels ``theta`` (Eq. 14b) and ``omega`` (Eq. 14a), the
  stair schedule, and the graphs of meta-learning, adaptation and conventional training;
* :mod:`~problems.metarecon.scoring` — reconstructions, zero-filling, test rows, validation PSNR;
* :mod:`~problems.metarecon.compare` — hypergradient methods at equal wall-clock.
"""

from . import levels, scoring
from .compare import compare_at_equal_wallclock
from .levels import *  # noqa: F403
from .loa import LOANetwork, LOASettings
from .scoring import *  # noqa: F403

__all__ = [*levels.__all__, *scoring.__all__, "LOANetwork", "LOASettings", "compare_at_equal_wallclock"]
