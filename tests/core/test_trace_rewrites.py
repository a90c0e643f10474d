"""The rewrites of a traced linearisation change no value: pooling's gather moved ahead of the pointwise
tangent operations."""

import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.shape_prop import ShapeProp

from engines.hypergrad.trace_rewrites import simplify

aten = torch.ops.aten


def rewritten(fn, *args):
    """``fn`` traced to aten operations, and a copy of that trace after :func:`simplify`."""
    before = make_fx(fn)(*args)
    after = make_fx(fn)(*args)
    simplify(after.graph)
    after.recompile()
    return before, after


def pointwise_shapes(graph_module, *args):
    """The output shapes of the pointwise operations of ``graph_module`` run on ``args``."""
    ShapeProp(graph_module).propagate(*args)
    return [
        tuple(n.meta["tensor_meta"].shape)
        for n in graph_module.graph.nodes
        if n.op == "call_function" and torch.Tag.pointwise in getattr(n.target, "tags", ())
    ]


def pooled_tangent(grad, x_hat, slope, shift, relu_out, index):
    """The shape of forward mode's tangent of ReLU -> max-pool after a batch-norm affine map."""
    full = (grad + torch.addcmul(shift.view(1, -1, 1, 1), x_hat, slope.view(1, -1, 1, 1))) * 0.5
    masked = aten.threshold_backward(full, relu_out, 0)
    n, c = index.shape[:2]
    return torch.gather(masked.view(n, c, -1), -1, index.flatten(2)).view(index.shape)


def test_pointwise_operations_run_on_the_pooled_values_and_give_the_same_result():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    relu_out = torch.relu(torch.randn_like(x))
    _, index = aten.max_pool2d_with_indices(relu_out, [2, 2], [2, 2])
    args = (
        torch.randn_like(x),
        torch.randn_like(x),
        torch.randn(3, dtype=torch.float64),
        torch.randn(3),
        relu_out,
        index,
    )
    before, after = rewritten(pooled_tangent, *args)
    assert torch.equal(after(*args), before(*args))  # gathering commutes with pointwise operations: bit for bit
    assert (4, 3, 8, 8) in pointwise_shapes(before, *args)
    assert all(s != (4, 3, 8, 8) for s in pointwise_shapes(after, *args))  # every one on the pooled quarter


def test_an_operand_varying_over_the_pooled_dimensions_keeps_the_pointwise_operation_before_the_gather():
    def fn(grad, pattern, index):
        return torch.gather((grad * pattern).view(2, 3, -1), -1, index.flatten(2)).view(index.shape)

    grad, pattern = torch.randn(2, 3, 4, 4), torch.randn(1, 1, 4, 4)  # broadcast over the batch and channels only
    _, index = aten.max_pool2d_with_indices(torch.randn(2, 3, 4, 4), [2, 2], [2, 2])
    before, after = rewritten(fn, grad, pattern, index)
    assert torch.equal(after(grad, pattern, index), before(grad, pattern, index))
    assert (2, 3, 4, 4) in pointwise_shapes(after, grad, pattern, index)
