"""Rewrites of a traced linearisation that make its parts cheaper without changing a value.

:mod:`engines.hypergrad.linearize` traces forward mode once per input signature; what the trace records is
forward mode's generic formulas, which do more work than the products need. :func:`simplify` rewrites the
functionalised graph in place before it is split into a primal and a tangent part:

* bookkeeping that no recomputation needs goes (shape checks, buffer write-backs, no-op copies);
* arithmetic on tangents known to be zero goes (an input without a tangent gets a zero one);
* duplicated pure sub-expressions are computed once;
* a max-pooling's tangent is a ``gather`` of its input's tangent at the pooled positions; the pointwise
  operations that form that input (the ReLU's ``threshold_backward``, the batch-norm affine ``addcmul``,
  their sums) are moved after the gather, so each product runs them on the pooled quarter of the values
  and the primal values they read are gathered once per solve.

The trace is taken inside the level's recomputation scope, so on CPU its primal part already pools
through the channels-last kernel of :mod:`engines.cpu_pooling`.

Every rewrite is exact: gathering commutes with pointwise operations. The agreement tests of the Gauss-Newton products (linearised against forward mode and the
double-VJP trick, 1e-10 in float64) run through all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

__all__ = ["simplify"]

_aten = torch.ops.aten
_CHECK_OPS = {_aten.is_same_size.default, _aten._has_same_storage_numel.default}


def simplify(graph: fx.Graph) -> None:
    """Drop forward-AD's shape checks, the write-back of buffer updates (running statistics; a
    recomputation never advances them), copies that functionalisation left where no mutation remains,
    arithmetic on zero tangents (:func:`_fold_zeros`) and duplicated pure sub-expressions; move pooling's
    gathers of tangents ahead of the pointwise operations that feed them (:func:`_gather_before_pointwise`);
    then drop dead code."""
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in _CHECK_OPS and not node.users:
            graph.erase_node(node)
        elif node.target is _aten.copy_.default and node.args[0].op == "placeholder" and not node.users:
            graph.erase_node(node)  # a buffer update written back to an input: discarded, as in every recomputation
        elif node.target is _aten.clone.default and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
        elif node.target is _aten.copy.default and _same_meta(node.args[0], node.args[1]):
            node.replace_all_uses_with(node.args[1])
            graph.erase_node(node)
    _fold_zeros(graph)
    seen: dict[Any, fx.Node] = {}
    for node in list(graph.nodes):
        if node.op != "call_function" or node.is_impure():
            continue
        try:
            key = (node.target, _hashable(node.args), _hashable(node.kwargs))
            hash(key)
        except TypeError:
            continue
        if key in seen:
            node.replace_all_uses_with(seen[key])
            graph.erase_node(node)
        else:
            seen[key] = node
    graph.eliminate_dead_code()
    _gather_before_pointwise(graph)
    graph.eliminate_dead_code()


_ZERO_SOURCES = {_aten.zeros.default, _aten.zeros_like.default, _aten.new_zeros.default}
# operations whose result is zero when their first argument is
_ZERO_PRESERVING = {
    _aten.expand.default,
    _aten.view.default,
    _aten._unsafe_view.default,
    _aten.reshape.default,
    _aten.alias.default,
    _aten.clone.default,
    _aten.permute.default,
    _aten.t.default,
    _aten.transpose.int,
    _aten.unsqueeze.default,
    _aten.squeeze.dim,
    _aten.neg.default,
    _aten._to_copy.default,
}
_BILINEAR = {_aten.mul.Tensor, _aten.mm.default, _aten.bmm.default}  # zero when either factor is


def _fold_zeros(graph: fx.Graph) -> None:
    """Remove arithmetic on tensors known to be zero. Forward mode gives an input without a tangent a
    zero tangent, so the trace holds e.g. ``convolution(zeros, W)`` (a whole convolution in the primal
    part) and ``add(that, conv(x, dW))`` (a whole pass in every product); both go."""
    zero: set[fx.Node] = set()

    def known_zero(value: Any) -> bool:
        return value in zero if isinstance(value, fx.Node) else value == 0

    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if _yields_zero(node, known_zero):
            zero.add(node)
        elif node.target in (_aten.add.Tensor, _aten.sub.Tensor) and node.kwargs.get("alpha", 1) == 1:
            a, b = node.args[0], node.args[1]
            if known_zero(a) and known_zero(b):
                zero.add(node)
            elif known_zero(b) and _same_meta(node, a):
                node.replace_all_uses_with(a)
            elif known_zero(a) and node.target is _aten.add.Tensor and _same_meta(node, b):
                node.replace_all_uses_with(b)


def _yields_zero(node: fx.Node, known_zero: Callable[[Any], bool]) -> bool:
    """Whether ``node`` is zero whatever its non-zero inputs are."""
    target, args = node.target, node.args
    if target in _ZERO_SOURCES:
        return True
    if target is _aten.full.default:
        return len(args) > 1 and args[1] == 0
    if target in _ZERO_PRESERVING:
        return known_zero(args[0])
    if target in _BILINEAR:
        return known_zero(args[0]) or known_zero(args[1])
    if target is _aten.convolution.default:
        return args[2] is None and (known_zero(args[0]) or known_zero(args[1]))
    return False


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, fx.Node):
        return ("node", value)
    if isinstance(value, (torch.dtype, torch.device, torch.layout, torch.memory_format, int, float, bool, str)):
        return (type(value).__name__, value)
    if value is None:
        return None
    raise TypeError("unhashable argument")


def _same_meta(a: Any, b: Any) -> bool:
    va = a.meta.get("val") if isinstance(a, fx.Node) else None
    vb = b.meta.get("val") if isinstance(b, fx.Node) else None
    return (
        isinstance(va, Tensor) and isinstance(vb, Tensor) and va.shape == vb.shape and va.dtype == vb.dtype
    ) and va.device == vb.device


_VIEWS = {_aten.view.default, _aten._unsafe_view.default, _aten.reshape.default}


def _gather_before_pointwise(graph: fx.Graph) -> None:
    """``gather(view(f(a, b, ...)), -1, i)`` becomes ``f(gather(view(a), -1, i), b', ...)`` when ``f`` is a
    pointwise operation used only there and the view only merges trailing dimensions (forward mode's
    max-pooling tangent is exactly this); ``b'`` is an operand broadcast over those dimensions, viewed to
    broadcast over the merged one. Repeated down the chain of pointwise operations."""
    work = [n for n in graph.nodes if _gathers_last_dim(n)]
    while work:
        gather = work.pop()
        view, dim, index = gather.args
        pointwise = view.args[0]
        merged = _merged_view(view)
        if merged is None or not _is_pointwise(pointwise) or len(pointwise.users) != 1:
            continue
        operands = {arg: _operand(arg, *merged) for arg in pointwise.all_input_nodes}
        if any(how is None for how in operands.values()):
            continue
        moved: dict[fx.Node, fx.Node] = {}
        with graph.inserting_before(gather):
            for arg, how in operands.items():
                if how == "gather":
                    flat = graph.call_function(_aten.reshape.default, (arg, view.args[1]))
                    moved[arg] = graph.call_function(_aten.gather.default, (flat, dim, index))
                    work.append(moved[arg])
                elif how == "keep":
                    moved[arg] = arg
                else:
                    moved[arg] = graph.call_function(_aten.view.default, (arg, how))
            result = graph.call_function(
                pointwise.target,
                fx.node.map_arg(pointwise.args, moved.get),
                fx.node.map_arg(pointwise.kwargs, moved.get),
            )
        gather.replace_all_uses_with(result)
        for node in (gather, view, pointwise):
            graph.erase_node(node)


def _operand(arg: fx.Node, shape: tuple[int, ...], kept: int) -> str | list[int] | None:
    """How operand ``arg`` of a pointwise result of ``shape`` follows a gather over its dimensions after the
    first ``kept``: ``"gather"`` (it has the full shape), ``"keep"`` (a 0-d tensor, left as it is so that
    type promotion is unchanged), the shape it is viewed to when it broadcasts over those dimensions, or
    None when it cannot follow."""
    val = arg.meta.get("val")
    if not isinstance(val, Tensor) or val.dim() > len(shape):
        return None
    if tuple(val.shape) == shape:
        return "gather"
    if val.dim() == 0:
        return "keep"
    padded = (1,) * (len(shape) - val.dim()) + tuple(val.shape)
    if any(d != 1 for d in padded[kept:]) or any(d not in (1, s) for d, s in zip(padded[:kept], shape[:kept])):
        return None
    return [*padded[:kept], 1]


def _gathers_last_dim(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target is not _aten.gather.default or node.kwargs:
        return False
    view, dim = node.args[0], node.args[1]
    return isinstance(view, fx.Node) and view.target in _VIEWS and len(view.users) == 1 and dim == -1


def _merged_view(view: fx.Node) -> tuple[tuple[int, ...], int] | None:
    """``(shape of the viewed tensor, how many leading dimensions the view keeps)`` when the view keeps the
    leading dimensions and merges all the others into its last one; else None."""
    source = view.args[0]
    val = source.meta.get("val") if isinstance(source, fx.Node) else None
    if not isinstance(val, Tensor):
        return None
    shape, target = tuple(val.shape), list(view.args[1])
    if target.count(-1) == 1:  # the one inferred size
        rest = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = math.prod(shape) // rest if rest else 0
    kept = len(target) - 1
    if kept < 0 or kept >= len(shape) or shape[:kept] != tuple(target[:kept]):
        return None
    return (shape, kept) if math.prod(shape[kept:]) == target[-1] else None


def _is_pointwise(node: Any) -> bool:
    tags = getattr(node.target, "tags", ()) if isinstance(node, fx.Node) and node.op == "call_function" else ()
    return torch.Tag.pointwise in tags and torch.Tag.nondeterministic_seeded not in tags
