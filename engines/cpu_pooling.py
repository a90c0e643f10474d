"""2-d max-pooling of recomputations through PyTorch's channels-last CPU kernel (same values, same gradients).

PyTorch's CPU kernel for ``max_pool2d`` on the default (NCHW) layout is several times slower than its
channels-last kernel on the same data; on a small CNN the pooling forwards take about a third of a
forward pass. Hypergradient methods recompute the lower loss (once per implicit solve, twice per
``darts`` step), so :func:`channels_last_max_pooling`, entered by every recomputation
(:meth:`engines.level.Level.recomputation`), pools a channels-last copy of each contiguous 4-d CPU
input and hands back contiguous values and indices. Both kernels keep a window's first maximum, so the
values and indices are the same, ties included; the backward (and its double backward) is PyTorch's
default-layout ``max_pool2d_with_indices_backward`` with those indices — the faster of the two
backwards — and the forward-mode tangent gathers at them, as PyTorch's own formulas do. Real training
steps are not touched: they run the user's network as written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["channels_last_max_pooling"]

_aten = torch.ops.aten
_POOLS = {F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d}
_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


class _ChannelsLastMaxPool2d(torch.autograd.Function):
    """``max_pool2d_with_indices`` computed on a channels-last copy; backward and tangent at its indices."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, kernel: list[int], stride: list[int], padding: list[int], dilation: list[int], ceil: bool):
        values, indices = _aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), kernel, stride, padding, dilation, ceil
        )
        return values.contiguous(), indices.contiguous()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, *settings = inputs
        ctx.settings = settings
        ctx.save_for_backward(x, output[1])
        ctx.save_for_forward(output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor):
        x, indices = ctx.saved_tensors
        return _aten.max_pool2d_with_indices_backward(grad, x, *ctx.settings, indices), None, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, dx: Tensor, *_: Any):
        (indices,) = ctx.saved_tensors
        return torch.gather(dx.flatten(-2), -1, indices.flatten(-2)).view_as(indices), None


def _pair(value: Any) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)


class _Mode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _POOLS:
            bound = dict(zip(_ARGS, args), **kwargs)
            x = bound["input"]
            if (
                type(x) is Tensor
                and x.device.type == "cpu"
                and x.dim() == 4
                and x.is_floating_point()
                and x.shape[1] > 1
                and x.is_contiguous()
            ):
                kernel = _pair(bound["kernel_size"])
                stride = _pair(bound.get("stride") or kernel)
                values, indices = _ChannelsLastMaxPool2d.apply(
                    x,
                    kernel,
                    stride,
                    _pair(bound.get("padding", 0)),
                    _pair(bound.get("dilation", 1)),
                    bool(bound.get("ceil_mode", False)),
                )
                wants_indices = func is F.max_pool2d_with_indices or bound.get("return_indices", False)
                return (values, indices) if wants_indices else values
        return func(*args, **kwargs)


@contextlib.contextmanager
def channels_last_max_pooling() -> Iterator[None]:
    """Within: 2-d max-pooling of contiguous 4-d CPU float tensors runs as described in the module docstring."""
    with _Mode():
        yield
