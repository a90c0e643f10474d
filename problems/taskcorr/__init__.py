"""Task-correlation meta-learning for multi-coil MRI: network weights θ below, a task-weight matrix
W above, the network trained through the method of Lagrange multipliers.

Papers: W. Bian et al., bilevel meta-learning with learnable task correlations for MRI
reconstruction (preprint, Preprints.org 202504.2285, 2025), whose equations did not survive in the
text we had (the model implemented is our reading, see docs/recipes/taskcorr.md); the network is
the optimal-control system of W. Bian, Y. Chen, X. Ye, "An optimal control framework for
joint-channel parallel MRI reconstruction without coil sensitivities", Magnetic Resonance Imaging,
2022.

* :mod:`~problems.taskcorr.optimal_control` — the unrolled network with adjoint (costate) gradients;
* :mod:`~problems.taskcorr.second_order` — its second-order adjoint (Hessian-vector products, flat memory);
* :mod:`~problems.taskcorr.loss` — ℓ, Bian's reconstruction loss;
* :mod:`~problems.taskcorr.groups` — groups of multi-coil samples and the stream that batches them;
* :mod:`~problems.taskcorr.tasks` — the tasks (contrast × sampling, or pure noise) and their groups;
* :mod:`~problems.taskcorr.levels` — the levels ``theta`` and ``correlation`` and the baselines' graphs;
* :mod:`~problems.taskcorr.hypergradient` — ``adjoint_unroll``, W's hypergradient through the k Adam steps;
* :mod:`~problems.taskcorr.audit` — a hypergradient method against the gradient of what is trained;
* :mod:`~problems.taskcorr.similarity` — a measured task similarity (gradient cosines) beside σ(W);
* :mod:`~problems.taskcorr.scoring` — test-set reconstructions, the zero-filled row, per-slice metrics;
* :mod:`~problems.taskcorr.baselines` — the metarecon model as a baseline on the same tasks.
"""

from . import groups, hypergradient, levels, loss, scoring, similarity, tasks  # hypergradient registers its method
from .groups import *  # noqa: F403
from .levels import *  # noqa: F403
from .loss import *  # noqa: F403
from .scoring import *  # noqa: F403
from .similarity import *  # noqa: F403
from .tasks import *  # noqa: F403

__all__ = [
    *groups.__all__,
    *levels.__all__,
    *loss.__all__,
    *scoring.__all__,
    *similarity.__all__,
    *tasks.__all__,
    "hypergradient",
]
