"""``v -> J v`` for a level's marked outputs ``z(θ)``, linearised once per solve and reused for every product.

The Gauss-Newton product ``Jᵀ H_z J v`` of :mod:`engines.hypergrad.gauss_newton` needs ``J v``, the
directional derivative of the network outputs in the parameters. Forward-mode AD gives it in one
pass, but a plain ``torch.func.jvp`` recomputes the network's primal values at every product, and
``torch.func.linearize`` (which keeps them) traces the function again at every call — seconds for a
small CNN, more than the products it saves. This module traces once per *input signature* and
splits the trace in two:

* a **primal part**, run once per solve at the current parameters, buffers, batch and random state:
  the network's forward, plus every value the tangent computation reads (activations, batch-norm
  statistics, dropout masks, pooling indices);
* a **tangent part**, run once per product: only the operations that carry the tangent ``v``.

The trace is ``make_fx`` of a forward-mode pass (``torch.autograd.forward_ad``) of the level's own
loss with its trainable parameters swapped by ``torch.func.functional_call``, functionalised (no
in-place operations, so running the primal part first and the tangent part later is exact), with
checks and duplicate sub-expressions removed. Batch normalisation in training mode is traced with a
tangent of one fused kernel (its input Jacobian is symmetric, so ``native_batch_norm_backward``
applies it) instead of forward mode's generic formula of about ten elementwise passes.

**Why a cached trace is safe.** Everything that can change between steps is an input of the trace
(the trainable parameters, the module's other parameters and buffers, every tensor of the batch);
tensors the loss reads from elsewhere (an upper level's parameters) are read by reference, so
in-place optimizer updates are seen. What a trace cannot see — Python numbers or control flow that
changed since it was taken, a tensor replaced by a new object, Python-level randomness — changes
the outputs ``z``. So every solve compares the primal part's ``z`` with the ``z`` of the eager
recomputation that the rest of the product uses (same parameters, batch and random state); on any
difference beyond rounding the trace is retaken, and a level whose trace keeps missing (three times
in a row) or cannot be traced at all is linearised by plain forward mode instead (primal values
recomputed at each product). The mode actually used is reported with every solve.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.fx as fx
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..loss_module import LossModule
from .trace_rewrites import simplify

__all__ = ["Linearizer", "forward_jvp", "linearizer_of", "outputs_function"]

Vector = Sequence[Tensor]
_MISSES_BEFORE_FORWARD = 3
_MAX_TRACES = 4
_aten = torch.ops.aten


def outputs_function(curr: Any) -> tuple[Callable[..., list[Tensor]], list[Tensor], Any]:
    """``(fn, other_values, batch)``: ``fn(values, others, batch)`` runs ``curr``'s loss with its
    trainable parameters replaced by ``values`` and every other parameter and buffer of its module by
    ``others`` (in the order of ``other_values``, detached copies of the current ones), and returns the
    outputs the loss marks (explicitly or, by default, the module's outputs). The caller supplies the
    random state and autocast of the step it stands for."""
    trainable = set(curr.trainable_names)
    named = [(n, t) for n, t in curr.module.named_parameters(remove_duplicate=False) if n not in trainable]
    named += list(curr.module.named_buffers(remove_duplicate=False))
    other_names = [n for n, _ in named]
    other_values = [t.detach().clone() for _, t in named]
    names = curr.trainable_names
    holder = LossModule(curr)

    def fn(values: Sequence[Tensor], others: Sequence[Tensor], batch: Any) -> list[Tensor]:
        swap = {f"m.{n}": v for n, v in zip(names, values)}
        swap.update({f"m.{n}": v for n, v in zip(other_names, others)})
        with curr.capturing_outputs() as outputs:
            torch.func.functional_call(holder, swap, (batch,), strict=False)
        return list(outputs)

    return fn, other_values, curr.cur_batch


def forward_jvp(
    fn: Callable[..., list[Tensor]], primals: Sequence[Tensor], tangents: Sequence[Tensor], *args: Any
) -> list[Tensor]:
    """Tangents of ``fn(primals, *args)`` in direction ``tangents`` by forward-mode AD (primal recomputed)."""
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        outs = fn(duals, *args)
        return [_tangent_or_zeros(o) for o in outs]


def _tangent_or_zeros(out: Tensor) -> Tensor:
    primal, tangent = fwAD.unpack_dual(out)
    return torch.zeros_like(primal) if tangent is None else tangent


@dataclass
class _Trace:
    """The two halves of one traced linearisation."""

    primal: fx.GraphModule  # (primals, others, batch leaves) -> (z..., boundary...)
    tangent: fx.GraphModule  # (boundary..., tangents...) -> (J v ...)
    n_outputs: int


@dataclass
class Linearizer:
    """The traces of one level, keyed by input signature, and how well they have been matching."""

    traces: OrderedDict = field(default_factory=OrderedDict)
    misses: int = 0
    traced: int = 0  # traces taken so far
    disabled: str | None = None  # why this level is linearised by plain forward mode
    forward_failed: str | None = None  # why forward mode itself is unavailable (the double-VJP trick is used)

    def linearize(
        self,
        curr: Any,
        params: Sequence[Tensor],
        reference: Sequence[Tensor],
        scope: Callable[[], contextlib.AbstractContextManager],
    ) -> tuple[Callable[[Vector], list[Tensor]], str]:
        """``(v -> J v, mode)`` at ``curr``'s current parameters and batch, where ``J`` is the Jacobian of
        the marked outputs; ``reference`` are those outputs from the eager recomputation, ``scope`` enters
        the random state and autocast of the step. ``mode`` is ``"linearize"`` (cached trace) or
        ``"forward"`` (forward mode, primal recomputed per product)."""
        fn, others, batch = outputs_function(curr)
        primals = [p.detach() for p in params]
        leaves, spec = tree_flatten(batch)
        tensor_at = [i for i, leaf in enumerate(leaves) if torch.is_tensor(leaf)]
        batch_tensors = [leaves[i] for i in tensor_at]

        def run(values: Sequence[Tensor], other: Sequence[Tensor], tensors: Sequence[Tensor]) -> list[Tensor]:
            filled = list(leaves)
            for i, t in zip(tensor_at, tensors):
                filled[i] = t
            return fn(values, other, tree_unflatten(filled, spec))

        def forward(v: Vector) -> list[Tensor]:
            with scope(), torch.no_grad():
                return forward_jvp(run, primals, [t.detach() for t in v], others, batch_tensors)

        if self.disabled is not None:
            return forward, "forward"
        key = _signature(curr, primals, others, batch_tensors, spec)
        trace = self.traces.get(key)
        for fresh in (trace is None, True):
            if fresh:
                try:
                    trace = _trace(run, primals, others, batch_tensors, scope)
                except Exception as err:  # any failure to trace falls back to (exact) forward mode
                    self.disabled = f"could not be traced ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
                    return forward, "forward"
                self.traced += 1
                self.traces[key] = trace
                while len(self.traces) > _MAX_TRACES:
                    self.traces.popitem(last=False)
            self.traces.move_to_end(key)
            with scope(), torch.no_grad():
                values = trace.primal(*primals, *others, *batch_tensors)
            z, boundary = values[: trace.n_outputs], values[trace.n_outputs :]
            if _same(z, reference):
                self.misses = 0
                return _tangent_fn(trace.tangent, boundary), "linearize"
            del self.traces[key]  # stale, or not reproducible: a cached trace is retaken once
            if fresh:
                break
        self.misses += 1
        if self.misses >= _MISSES_BEFORE_FORWARD:
            self.disabled = f"its trace did not reproduce the outputs {self.misses} times in a row"
            self.traces.clear()
        return forward, "forward"


_LINEARIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def linearizer_of(curr: Any) -> Linearizer:
    """The :class:`Linearizer` of level ``curr`` (kept for the level's lifetime, not checkpointed)."""
    lin = _LINEARIZERS.get(curr)
    if lin is None:
        lin = Linearizer()
        _LINEARIZERS[curr] = lin
    return lin


def _tangent_fn(graph: fx.GraphModule, boundary: Sequence[Tensor]) -> Callable[[Vector], list[Tensor]]:
    """The tangent part at the saved primal values. It holds no random operation (those are primal), and
    any autocast casts were recorded into it, so it runs outside the step's random state and autocast."""

    def jvp(v: Vector) -> list[Tensor]:
        with torch.no_grad():
            return list(graph(*boundary, *[t.detach() for t in v]))

    return jvp


def _signature(curr: Any, primals: Sequence[Tensor], others: Sequence[Tensor], batch: Sequence[Tensor], spec: Any):
    tensors = (*primals, *others, *batch)
    modes = tuple(m.training for m in curr.module.modules())
    autocast = getattr(curr, "_autocast_dtype", None)
    return (
        str(spec),
        tuple((tuple(t.shape), t.dtype, t.device, t.requires_grad) for t in tensors),
        modes,
        autocast,
    )


def _same(z: Sequence[Tensor], reference: Sequence[Tensor]) -> bool:
    """Whether the traced outputs equal the eager ones up to rounding: within ``1e3 eps`` of their largest value
    in float32/float64 (a few ulps of bf16/fp16 outputs); a stale trace is off by far more."""
    if len(z) != len(reference):
        return False
    for a, b in zip(z, reference):
        b = b.detach()
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not a.is_floating_point():
            if not torch.equal(a, b):
                return False
            continue
        if not b.numel():
            continue
        eps = torch.finfo(b.dtype).eps
        tolerance = (1e3 if b.dtype in (torch.float32, torch.float64) else 4.0) * eps * (float(b.abs().max()) + 1.0)
        if float((a - b).abs().max()) > tolerance:
            return False
    return True


def _trace(
    run: Callable[..., list[Tensor]],
    primals: Sequence[Tensor],
    others: Sequence[Tensor],
    batch: Sequence[Tensor],
    scope: Callable[[], contextlib.AbstractContextManager],
) -> _Trace:
    from torch.fx.experimental.proxy_tensor import make_fx

    n_p, n_o, n_b = len(primals), len(others), len(batch)
    count: list[int] = []

    def both(*flat: Tensor) -> tuple[Tensor, ...]:
        """The outputs' primal values, then their tangents, as one flat tuple."""
        values, tangents = flat[:n_p], flat[n_p : 2 * n_p]
        other, tensors = flat[2 * n_p : 2 * n_p + n_o], flat[2 * n_p + n_o :]
        with fwAD.dual_level():
            duals = [fwAD.make_dual(p, t) for p, t in zip(values, tangents)]
            outs = run(duals, other, tensors)
            unpacked = [fwAD.unpack_dual(o) for o in outs]
            count.append(len(unpacked))
            return (
                *[u.primal for u in unpacked],
                *[torch.zeros_like(u.primal) if u.tangent is None else u.tangent for u in unpacked],
            )

    tangents = [torch.zeros_like(p) for p in primals]
    example = (*primals, *tangents, *[o.clone() for o in others], *batch)
    with scope(), torch.no_grad(), _FusedBatchNormTangent():
        traced = make_fx(both)(*example)
    with scope(), torch.no_grad():
        functional = make_fx(torch.func.functionalize(traced, remove="mutations"))(
            *primals, *tangents, *[o.clone() for o in others], *batch
        )
    graph = functional.graph
    simplify(graph)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 2 * n_p + n_o + n_b:
        raise RuntimeError(f"unexpected trace inputs: {len(placeholders)} for {2 * n_p + n_o + n_b} tensors")
    tangent_inputs = placeholders[n_p : 2 * n_p]
    primal_inputs = placeholders[:n_p] + placeholders[2 * n_p :]
    output = next(n for n in graph.nodes if n.op == "output")
    flat = list(output.args[0])
    n_out = count[0]
    if len(flat) != 2 * n_out:
        raise RuntimeError(f"unexpected trace outputs: {len(flat)} for {n_out} marked outputs")
    return _split(functional, graph, primal_inputs, tangent_inputs, flat[:n_out], flat[n_out:])


class _TrainingBatchNorm(torch.autograd.Function):
    """Batch normalisation with batch statistics whose tangent is one fused kernel.

    Forward mode's generic formula for ``native_batch_norm`` costs about ten elementwise passes over the
    activations; but in training mode the Jacobian in the input is symmetric per channel,
    ``(γ/σ)(I - 11ᵀ/N - x̂x̂ᵀ/N)``, so ``J dx`` is what ``native_batch_norm_backward`` computes for ``dx``
    as output gradient. Used only while a linearisation is traced."""

    @staticmethod
    def forward(x, weight, bias, running_mean, running_var, momentum, eps):
        return torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, _, _, _, eps = inputs
        _, mean, invstd = output
        ctx.save_for_forward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(output[1], output[2])

    @staticmethod
    def jvp(ctx, dx, dweight, dbias, *_):
        x, weight, mean, invstd = ctx.saved_tensors
        shape = [1, -1] + [1] * (x.dim() - 2)
        out = None
        if dx is not None:
            out = torch.ops.aten.native_batch_norm_backward(
                dx, x, weight, None, None, mean, invstd, True, ctx.eps, [True, False, False]
            )[0]
        affine = None  # dγ x̂ + dβ, formed by one addcmul rather than a product and a sum
        if dweight is not None:
            x_hat = (x - mean.view(shape)) * invstd.view(shape)  # primal: computed once per solve
            slope = dweight.view(shape)
            affine = x_hat * slope if dbias is None else torch.addcmul(dbias.view(shape), x_hat, slope)
        elif dbias is not None:
            affine = dbias.view(shape).expand_as(x)
        if affine is None:
            return out, None, None
        return (affine if out is None else out + affine), None, None


_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


class _FusedBatchNormTangent(TorchFunctionMode):
    """While tracing: ``F.batch_norm`` in training mode goes through :class:`_TrainingBatchNorm`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.batch_norm:
            bound = dict(zip(_BATCH_NORM_ARGS, args), **kwargs)
            if bound.get("training", False):
                out = _TrainingBatchNorm.apply(
                    bound["input"],
                    bound.get("weight"),
                    bound.get("bias"),
                    bound.get("running_mean"),
                    bound.get("running_var"),
                    bound.get("momentum") or 0.0,
                    bound.get("eps", 1e-5),
                )
                return out[0]
        return func(*args, **kwargs)


def _split(
    owner: fx.GraphModule,
    graph: fx.Graph,
    primal_inputs: list[fx.Node],
    tangent_inputs: list[fx.Node],
    z_nodes: list[Any],
    jv_nodes: list[Any],
) -> _Trace:
    """Partition ``graph`` into the nodes that do not depend on the tangents (primal part) and those that do."""
    tangent_set = set(tangent_inputs)
    depends: set[fx.Node] = set()
    for node in graph.nodes:
        if node in tangent_set or any(a in depends for a in node.all_input_nodes):
            depends.add(node)
    if any(isinstance(z, fx.Node) and z in depends for z in z_nodes):
        raise RuntimeError("the traced outputs depend on the tangents")
    # values the tangent part (or the outputs) reads from the primal part
    boundary: list[fx.Node] = []
    seen: set[fx.Node] = set()
    for node in graph.nodes:
        if node in depends and node.op not in ("placeholder", "output"):
            for a in node.all_input_nodes:
                if a not in depends and a not in seen:
                    seen.add(a)
                    boundary.append(a)
    for jv in jv_nodes:
        if isinstance(jv, fx.Node) and jv not in depends and jv not in seen:
            seen.add(jv)
            boundary.append(jv)

    primal = fx.Graph()
    env: dict[fx.Node, fx.Node] = {n: primal.placeholder(n.name) for n in primal_inputs}
    for node in graph.nodes:
        if node.op in ("placeholder", "output") or node in depends:
            continue
        env[node] = primal.node_copy(node, lambda a: env[a])
    primal.output(tuple(env[z] for z in z_nodes) + tuple(env[b] for b in boundary))
    primal.eliminate_dead_code()

    tangent = fx.Graph()
    tenv: dict[fx.Node, fx.Node] = {b: tangent.placeholder(f"saved_{b.name}") for b in boundary}
    for n in tangent_inputs:
        tenv[n] = tangent.placeholder(n.name)
    for node in graph.nodes:
        if node in depends and node.op not in ("placeholder", "output"):
            tenv[node] = tangent.node_copy(node, lambda a: tenv[a])
    tangent.output(tuple(tenv[j] for j in jv_nodes))
    tangent.eliminate_dead_code()
    return _Trace(fx.GraphModule(owner, primal), fx.GraphModule(owner, tangent), len(z_nodes))
