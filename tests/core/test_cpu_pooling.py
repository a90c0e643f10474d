"""Recomputations pool through the channels-last CPU kernel: values, indices, gradients, double backward
and forward-mode tangents are exactly those of PyTorch's own max-pooling."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from engines.cpu_pooling import channels_last_max_pooling

CONFIGS = [
    pytest.param({"kernel_size": 2}, id="2x2"),
    pytest.param({"kernel_size": 3, "stride": 2, "padding": 1}, id="overlapping-padded"),
    pytest.param({"kernel_size": 3, "stride": 1, "dilation": 2, "ceil_mode": True}, id="dilated-ceil"),
]


def inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    ties = torch.randint(0, 3, (2, 4, 9, 9), generator=g).to(dtype)  # windows with several equal maxima
    return [ties, torch.randn(2, 4, 9, 9, generator=g, dtype=dtype)]


def pooled(x, config, *, fast):
    x = x.detach().requires_grad_(True)
    with channels_last_max_pooling() if fast else torch.enable_grad():
        values, indices = F.max_pool2d(x, **config, return_indices=True)
        (grad,) = torch.autograd.grad((values**3).sum(), x, create_graph=True)  # a non-linear loss
    (second,) = torch.autograd.grad(grad.sin().sum(), x)  # double backward through the pooling
    return values, indices, grad, second


@pytest.mark.parametrize("config", CONFIGS)
def test_values_indices_gradients_and_double_backward_equal_pytorchs(config):
    for x in inputs():
        for ours, theirs in zip(pooled(x, config, fast=True), pooled(x, config, fast=False)):
            assert torch.equal(ours, theirs)


@pytest.mark.parametrize("config", CONFIGS)
def test_the_forward_mode_tangent_equals_pytorchs(config):
    x, t = inputs()[1], torch.randn(2, 4, 9, 9, dtype=torch.float64)
    with channels_last_max_pooling():
        ours = torch.func.jvp(lambda a: F.max_pool2d(a, **config), (x,), (t,))
    theirs = torch.func.jvp(lambda a: F.max_pool2d(a, **config), (x,), (t,))
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


class PoolingInputs(TorchDispatchMode):
    """Records, for every max-pooling kernel called, whether its input was a channels-last copy."""

    def __init__(self):
        super().__init__()
        self.channels_last = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.max_pool2d_with_indices.default:
            x = args[0]
            self.channels_last.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return func(*args, **(kwargs or {}))


def test_every_entry_point_is_rerouted_and_other_inputs_are_left_alone():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with PoolingInputs() as seen, channels_last_max_pooling():
        torch.max_pool2d(x, 2)
        F.max_pool2d(x, 2)
        F.max_pool2d_with_indices(x, 2)
        nn.MaxPool2d(2, return_indices=True)(x)
    assert seen.channels_last == [True] * 4
    with PoolingInputs() as seen, channels_last_max_pooling():
        F.max_pool2d(x[:, :1], 2)  # one channel: both layouts are the same
        F.max_pool2d(x.transpose(2, 3), 2)  # not contiguous
        F.max_pool2d(x[0], 2)  # 3-d
    assert seen.channels_last == [False] * 3
    with PoolingInputs() as seen:
        F.max_pool2d(x, 2)  # outside a recomputation: PyTorch's default
    assert seen.channels_last == [False]
