"""DuMeta++: dual meta-learning of an encoder E_θ and a segmentation-head initialisation φ, with a
class-aware prototype regulariser over a memory bank.

Paper: Y. Sun, J. Shu, J. Ma, F. Wang, "DuMeta++: Spatiotemporal Dual Meta-Learning for
Generalizable Few-Shot Brain Tissue Segmentation Across Diverse Ages", arXiv:2602.07174, 2026.

* :mod:`~problems.dumeta.levels` — the levels ``head`` (inner, Eq. 1/7), ``encoder`` (MFL, Eq. 2-5)
  and ``head_init`` (MIL, Eq. 8-11), and the baselines' graphs;
* :mod:`~problems.dumeta.net` — the U-Net split by module into encoder and head;
* :mod:`~problems.dumeta.prototypes` — class means, the memory bank and the triplet regulariser
  (Eq. 12-14);
* :mod:`~problems.dumeta.data` — Algorithm 1's split of the domain pool per meta-iteration;
* :mod:`~problems.dumeta.domains` — the pool (train/validation) and the unseen domains of a seed;
* :mod:`~problems.dumeta.methods` — the methods of the tables and the meta-tests each one gets;
* :mod:`~problems.dumeta.metatest` — fine-tuning on one or five subjects of an unseen domain,
  segmentation and scoring, Table IV's yardsticks, model selection, the feature embedding;
* :mod:`~problems.dumeta.optim` — the paper's optimiser (SGD, Nesterov, poly decay).
"""

from . import levels
from .levels import *  # noqa: F403

__all__ = list(levels.__all__)
