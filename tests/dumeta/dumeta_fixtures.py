"""Tiny DuMeta++ graphs on synthetic 64x64 'brains' (concentric tissue rings), for fast level tests."""

import functools

import torch

from problems.dumeta import dual_meta_graph, init_learning_graph, joint_training_graph
from problems.dumeta.data import JointSampler, MetaTaskSampler, TensorItems
from problems.dumeta.net import DualUNet

SIZE = 64
INNER_LR = 0.05


def ring_items(name: str, n: int = 6, seed: int = 0, contrast: float = 1.0) -> TensorItems:
    """``n`` 64x64 images: CSF, GM and WM rings of jittered radii, intensity per tissue times ``contrast``."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    r = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2).sqrt()
    labels = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    for i in range(n):
        jitter = 4 * torch.rand(3, generator=g)
        labels[i][r < 28 - jitter[0]] = 1
        labels[i][r < 22 - jitter[1]] = 2
        labels[i][r < 14 - jitter[2]] = 3
    images = (labels.float() * contrast / 3 + 0.1 * torch.randn(n, SIZE, SIZE, generator=g)).clamp(0, 1)
    return TensorItems(name, images, labels)


def toy_pool() -> list[TensorItems]:
    return [
        ring_items("young", seed=1, contrast=0.6),
        ring_items("middle", seed=2),
        ring_items("old", seed=3, contrast=0.8),
    ]


def outer_sgd(lr: float = 0.01):
    return functools.partial(torch.optim.SGD, lr=lr, momentum=0.9, nesterov=True)


def dual_graph(
    variant: str = "dumeta++",
    *,
    batch_size: int = 1,
    width: int = 2,
    seed: int = 0,
    upper_order: str = "two-phase",
    **kwargs,
):
    """A DuMeta++ graph on the toy pool; the outer levels' order is two-phase unless asked (the goldens and
    the order-independent reference test use it; the sequential order has its own test)."""
    torch.manual_seed(seed)
    net = DualUNet(2, base_width=width)
    sampler = MetaTaskSampler(toy_pool(), batch_size=batch_size, seed=seed)
    graph = dual_meta_graph(
        variant,
        net=net,
        sampler=sampler,
        inner_lr=INNER_LR,
        outer_optimizer=outer_sgd(),
        capacity=4,
        upper_order=upper_order,
        **kwargs,
    )
    return graph, net, sampler


def init_graph(kind: str, *, inner_steps: int = 2, width: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    net = DualUNet(2, base_width=width)
    sampler = MetaTaskSampler(toy_pool(), batch_size=1, seed=seed)
    graph = init_learning_graph(
        kind,
        net=net,
        sampler=sampler,
        inner_lr=INNER_LR,
        inner_steps=inner_steps,
        outer_optimizer=outer_sgd(0.5 if kind == "reptile" else 0.01),
    )
    return graph, net, sampler


def joint_graph(*, width: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    net = DualUNet(2, base_width=width)
    sampler = JointSampler(toy_pool(), batch_size=1, seed=seed)
    return joint_training_graph(net=net, sampler=sampler, optimizer=outer_sgd()), net, sampler
