"""Task-correlation meta-learning for multi-coil MRI: network weights θ below, a task-weight matrix
W above, the network trained through the method of Lagrange multipliers.

Papers: W. Bian et al., bilevel meta-learning with learnable task correlations for MRI
reconstruction (preprint, Preprints.org 202504.2285, 2025), whose equations did not survive in the
text we had (the model implemented is our reading, see docs/recipes/taskcorr.md); the network is
the optimal-control system of W. Bian, Y. Chen, X. Ye, "An optimal control framework for
joint-channel parallel MRI reconstruction without coil sensitivities", Magnetic Resonance Imaging,
2022.

* :mod:`~problems.taskcorr.optimal_control` — the unrolled network with adjoint (costate) gradients;
* :mod:`~problems.taskcorr.levels` — the levels ``theta`` and ``correlation`` and the baselines' graphs.
"""

from . import levels
from .levels import *  # noqa: F403

__all__ = list(levels.__all__)
