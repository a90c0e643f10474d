"""The paper's optimiser (Sec. IV-A2): SGD with Nesterov momentum and weight decay, poly learning-rate decay.

Both are factories, the form a :class:`engines.Level` takes (``optimizer=params -> optimizer``,
``scheduler=optimizer -> scheduler``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

__all__ = ["poly", "sgd"]


def sgd(lr: float, momentum: float, weight_decay: float) -> Callable[[list[torch.nn.Parameter]], torch.optim.SGD]:
    """SGD from ``lr`` with Nesterov momentum (plain momentum-free SGD when ``momentum`` is 0) and weight decay."""
    return functools.partial(
        torch.optim.SGD, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay
    )


def poly(total: int) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.PolynomialLR]:
    """nnU-Net's poly decay, ``lr · (1 − step/total)^0.9``, over ``total`` steps of the level."""
    return functools.partial(torch.optim.lr_scheduler.PolynomialLR, total_iters=max(1, total), power=0.9)
