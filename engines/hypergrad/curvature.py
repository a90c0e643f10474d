"""Curvature models of a lower loss for implicit hops: products ``v -> C v`` and the mixed term.

An implicit hop through level ``curr`` needs, at its current iterate θ and batch, the products of a
curvature matrix ``C`` of its loss ``g`` with vectors (the Krylov solve) and, once at the end, the
mixed term ``-(d²g/dλ dθ) x`` for the upper level's parameters λ. :func:`curvature_model` builds
both from **one** recomputation of the loss:

* ``"hessian"`` — ``C = d²g/dθ²`` by double backward (right for convex levels).
* ``"gauss_newton"`` — ``C = Jᵀ H_z J + H_r`` with ``z`` the outputs the loss marks (by default the
  outputs of every call of the level's own module, see :meth:`engines.Level.mark_output`), ``H_z`` the
  exact Hessian of the loss in ``z`` and ``H_r`` the exact Hessian of the terms that read θ directly
  (regularisers). Each product is one ``J v``, a cheap product with ``H_z`` through the loss head and
  one backward ``Jᵀ u`` through the recomputation's graph. ``J v`` (option ``jvp``):

  - ``"linearize"`` (default): the network is linearised once per solve and the linearisation reused
    by every product (:mod:`engines.hypergrad.linearize`; falls back to ``"forward"`` by itself);
  - ``"forward"``: forward-mode AD, the network's primal values recomputed at every product;
  - ``"reverse"``: the double-VJP trick (``J v`` as the derivative of ``Jᵀ u`` in ``u``): three
    backward passes per product, kept as the reference the others are tested against.

  The terms that read θ directly are found by walking the recomputation's autograd graph; only when
  there are some is the loss recomputed once more with ``z`` held constant for ``H_r``. When ``z``
  does not depend on λ and no term reads θ directly (per-example weights, loss weights...), the mixed
  term is ``-(∂/∂λ)⟨∂g/∂z, J x⟩``: a backward through the loss head instead of a backward with
  ``create_graph`` through the network, and ``J x`` comes free from a CG solve (which carries it along
  with ``x`` from the ``J p`` of its products) or costs one more tangent pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import GraphError
from .common import hessian_vector_product, lower_gradient, mixed_vjp, zeros_for_none
from .linearize import Linearizer, forward_jvp, linearizer_of, outputs_function

__all__ = ["CURVATURES", "JVP_MODES", "Curvature", "JacobianProduct", "curvature_model", "reaches"]

Vector = Sequence[Tensor]
CURVATURES = ("auto", "hessian", "gauss_newton")
JVP_MODES = ("linearize", "forward", "reverse")


@dataclass
class Curvature:
    """A curvature model at ``curr``'s current iterate and batch.

    Attributes:
        params: ``curr``'s trainable parameters (the vectors' layout).
        kind: ``"hessian"`` or ``"gauss_newton"`` (what ``"auto"`` resolved to).
        product: ``v -> C v``.
        mixed: ``(x, prev, image=None) -> -(d²g / dθ_prev dθ) x`` (a list over ``prev``'s trainable
            parameters); ``image``, when given, is ``J x`` (see ``image``) and spares the mixed term its own.
        jacobian: the ``J v`` product of a Gauss-Newton model (None for the Hessian).
        note: why the model differs from what was asked (e.g. the module's outputs feed one another), or "".
        image: ``v -> J v`` *as formed by the last* ``product(v)`` (None for another ``v``, or for the
            Hessian): a Krylov solve can carry ``J x`` along with ``x`` (see
            :func:`engines.hypergrad.linear_solve.conjugate_gradient`) and hand it to ``mixed``.
    """

    params: list[Tensor]
    kind: str
    product: Callable[[Vector], list[Tensor]]
    mixed: Callable[..., list[Tensor]]
    jacobian: JacobianProduct | None = None
    note: str = ""
    image: Callable[[Vector], list[Tensor] | None] | None = None

    @property
    def jvp(self) -> str | None:
        """How ``J v`` was formed: ``"linearize"``, ``"forward"`` or ``"reverse"`` (None for the Hessian)."""
        return None if self.jacobian is None else self.jacobian.mode

    def notes(self) -> str:
        """Everything worth reporting about how this model was formed."""
        parts = [self.note, "" if self.jacobian is None else self.jacobian.note]
        return "; ".join(p for p in parts if p)


class JacobianProduct:
    """``v -> [J_i v]`` for the marked outputs ``z_i``, by the mode asked for; forward mode that turns out
    to be unsupported by the network (e.g. a custom ``autograd.Function`` without a ``jvp``) at its first
    product falls back to the double-VJP trick, for this solve and the level's later ones."""

    def __init__(
        self,
        fn: Callable[[Vector], list[Tensor]],
        mode: str,
        note: str,
        params: list[Tensor],
        z: list[Tensor],
        lin: Linearizer | None,
    ):
        self.fn, self.mode, self.note = fn, mode, note
        self._params, self._z, self._lin = params, z, lin
        self._proven = mode == "reverse"

    def __call__(self, v: Vector) -> list[Tensor]:
        if self._proven:
            return self.fn(v)
        try:
            out = self.fn(v)
        except (RuntimeError, NotImplementedError) as err:
            reason = f"forward mode failed ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
            if self._lin is not None:
                self._lin.forward_failed = reason
            self.fn, self.mode, self.note = _double_vjp(self._params, self._z), "reverse", reason
            out = self.fn(v)
        self._proven = True
        return out


def curvature_model(curr: Any, kind: str = "auto", *, jvp: str = "linearize") -> Curvature:
    """The curvature model ``kind`` of ``curr``'s loss on its current batch (see the module docstring)."""
    if kind not in CURVATURES:
        raise GraphError(f"level '{curr.name}': curvature must be one of {CURVATURES}, got {kind!r}")
    if jvp not in JVP_MODES:
        raise GraphError(f"level '{curr.name}': jvp must be one of {JVP_MODES}, got {jvp!r}")
    capture = getattr(curr, "capturing_outputs", None)
    if capture is None:  # a plain Betty problem: no outputs to linearise, exact Hessian
        if kind == "gauss_newton":
            raise GraphError(
                f"problem '{curr.name}': curvature='gauss_newton' needs a medmlo Level (its module's outputs, or "
                "those its loss marks with level.mark_output(z), are linearised)"
            )
        params, grads = lower_gradient(curr)
        return _hessian(params, grads)
    params = list(curr.trainable_parameters())
    with capture() as outputs:
        loss = curr.training_step_exec(curr.cur_batch)
    keep = _distinct_differentiable(outputs)
    z = [outputs[i] for i in keep]
    note = ""
    if z and kind != "hessian" and _nested(z):
        if curr.marks_outputs:
            raise GraphError(
                f"level '{curr.name}': curvature='gauss_newton' needs marked outputs that do not feed one another; "
                "mark only the final network outputs the loss is computed from"
            )
        note = "the module's outputs feed one another (an unrolled network): mark the final outputs"
        z = []
    if kind == "hessian" or not z:
        if kind == "gauss_newton":
            raise GraphError(
                f"level '{curr.name}': curvature='gauss_newton' needs a loss that calls the level's module or marks "
                "the network output, e.g. `logits = level.mark_output(level.module(x))`; "
                + (note or "no output of it depends on the level's parameters")
            )
        grads = zeros_for_none(torch.autograd.grad(loss, params, create_graph=True, allow_unused=True), params)
        model = _hessian(params, grads)
        model.note = note
        return model
    return _gauss_newton(curr, params, loss, outputs, keep, jvp)


def _hessian(params: list[Tensor], grads: list[Tensor]) -> Curvature:
    return Curvature(
        params=params,
        kind="hessian",
        product=hessian_vector_product(grads, params),
        mixed=lambda x, prev, image=None: mixed_vjp(grads, x, prev),
    )


def _gauss_newton(
    curr: Any, params: list[Tensor], loss: Tensor, outputs: list[Tensor], keep: list[int], jvp: str
) -> Curvature:
    z = [outputs[i] for i in keep]
    grad_z = torch.autograd.grad(loss, z, create_graph=True, allow_unused=True)
    live = [i for i, g in enumerate(grad_z) if g is not None and g.requires_grad]  # H_z != 0 possible
    explicit = reaches([loss], params, stop=z)
    explicit_hvp = _explicit_hessian(curr, params) if explicit else None
    jv = _jacobian_product(curr, params, outputs, keep, jvp)
    last: dict[str, Any] = {}  # the vector of the last product and its J v

    def product(vector: Vector) -> list[Tensor]:
        last.clear()
        v = [t.detach() for t in vector]
        out = explicit_hvp(v) if explicit_hvp is not None else [torch.zeros_like(p) for p in params]
        if not live:
            return out
        jvs = jv(v)
        last.update(vector=vector, image=jvs)
        h = torch.autograd.grad(
            [grad_z[i] for i in live],
            [z[i] for i in live],
            grad_outputs=[jvs[i] for i in live],
            retain_graph=True,
            allow_unused=True,
        )
        h = zeros_for_none(h, [z[i] for i in live])
        jt = torch.autograd.grad([z[i] for i in live], params, grad_outputs=h, retain_graph=True, allow_unused=True)
        return [o if t is None else o + t.detach() for o, t in zip(out, jt)]

    def last_image(vector: Vector) -> list[Tensor] | None:
        return last["image"] if last.get("vector") is vector else None

    def mixed(x: Vector, prev: Any, image: Vector | None = None) -> list[Tensor]:
        prev_params = list(prev.trainable_parameters())
        if not explicit and not reaches(z, prev_params):
            # ∂g/∂θ = Jᵀ ∂g/∂z with J independent of λ: -(∂/∂λ) <∂g/∂z, J x>
            used = [i for i, g in enumerate(grad_z) if g is not None and g.requires_grad]
            if not used:
                return [torch.zeros_like(p) for p in prev_params]
            jx = list(image) if image is not None else jv([t.detach() for t in x])
            out = torch.autograd.grad(
                [grad_z[i] for i in used], prev_params, grad_outputs=[jx[i] for i in used], allow_unused=True
            )
            return [-g for g in zeros_for_none(out, prev_params)]
        grads = zeros_for_none(torch.autograd.grad(loss, params, create_graph=True, allow_unused=True), params)
        return mixed_vjp(grads, x, prev)

    return Curvature(params=params, kind="gauss_newton", product=product, mixed=mixed, jacobian=jv, image=last_image)


def _explicit_hessian(curr: Any, params: list[Tensor]) -> Callable[[Vector], list[Tensor]]:
    """``v -> H_r v`` for the loss terms that read θ directly: the loss recomputed with ``z`` held constant."""
    with curr.capturing_outputs(detach=True):
        explicit = curr.training_step_exec(curr.cur_batch)
    grads = zeros_for_none(
        torch.autograd.grad(explicit, params, create_graph=True, allow_unused=True)
        if explicit.requires_grad
        else [None] * len(params),
        params,
    )
    return hessian_vector_product(grads, params)


def _jacobian_product(
    curr: Any, params: list[Tensor], outputs: list[Tensor], keep: list[int], jvp: str
) -> JacobianProduct:
    """``J v`` for the outputs ``z_i = outputs[i], i in keep``, by mode ``jvp`` (or the mode it falls back to)."""
    z = [outputs[i] for i in keep]
    lin = linearizer_of(curr)
    if jvp == "reverse" or lin.forward_failed:
        return JacobianProduct(_double_vjp(params, z), "reverse", lin.forward_failed or "", params, z, lin)
    scope = getattr(curr, "recomputation", None) or contextlib.nullcontext
    if jvp == "linearize":
        fn, mode = lin.linearize(curr, params, outputs, scope)
        note = (
            "" if mode == "linearize" else f"linearisation off: {lin.disabled or 'its trace did not match this step'}"
        )
        return JacobianProduct(_select(fn, keep), mode, note, params, z, lin)
    fn, others, batch = outputs_function(curr)
    primals = [p.detach() for p in params]

    def forward(v: Vector) -> list[Tensor]:
        with scope(), torch.no_grad():
            return forward_jvp(fn, primals, [t.detach() for t in v], others, batch)

    return JacobianProduct(_select(forward, keep), "forward", "", params, z, lin)


def _select(fn: Callable[[Vector], list[Tensor]], keep: list[int]) -> Callable[[Vector], list[Tensor]]:
    def selected(v: Vector) -> list[Tensor]:
        out = fn(v)
        return [out[i] for i in keep]

    return selected


def _distinct_differentiable(outputs: Sequence[Tensor]) -> list[int]:
    """Positions of the outputs that carry a graph, each tensor once (a module may return its parameter)."""
    seen: set[int] = set()
    keep = []
    for i, o in enumerate(outputs):
        if o.requires_grad and id(o) not in seen:
            seen.add(id(o))
            keep.append(i)
    return keep


def _double_vjp(params: list[Tensor], z: list[Tensor]) -> Callable[[Vector], list[Tensor]]:
    """``J v`` as the derivative in ``u`` of ``Jᵀ u`` (built once with ``create_graph``)."""
    dummies = [torch.zeros_like(zi, requires_grad=True) for zi in z]
    jt_u = torch.autograd.grad(z, params, grad_outputs=dummies, create_graph=True, allow_unused=True)
    jt_live = [(i, t) for i, t in enumerate(jt_u) if t is not None and t.requires_grad]

    def jv(v: Vector) -> list[Tensor]:
        if not jt_live:
            return [torch.zeros_like(zi) for zi in z]
        out = torch.autograd.grad(
            [t for _, t in jt_live],
            dummies,
            grad_outputs=[v[i].detach() for i, _ in jt_live],
            retain_graph=True,
            allow_unused=True,
        )
        return [o.detach() for o in zeros_for_none(out, dummies)]

    return jv


def reaches(roots: Sequence[Tensor], targets: Sequence[Tensor], *, stop: Sequence[Tensor] = ()) -> bool:
    """Whether the autograd graph of ``roots`` reaches any tensor of ``targets`` (leaves or not) without
    passing through a tensor of ``stop``."""
    target_edges = {_edge(t) for t in targets}
    stop_edges = {_edge(t) for t in stop}
    seen: set[Any] = set()
    todo: list[Any] = []
    for r in roots:
        if not r.requires_grad:
            continue
        edge = _edge(r)
        if edge in stop_edges:
            continue
        if edge in target_edges:
            return True
        todo.append(edge[0])
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for nxt, nr in node.next_functions:
            if nxt is None:
                continue
            edge = (nxt, nr)
            if edge in stop_edges:
                continue
            if edge in target_edges:
                return True
            todo.append(nxt)
    return False


def _edge(t: Tensor) -> tuple[Any, Any]:
    """The graph position of ``t``: its grad_fn and output index, or (for a leaf) its accumulator."""
    if t.grad_fn is not None:
        return t.grad_fn, t.output_nr
    return _accumulator(t), 0


def _accumulator(t: Tensor) -> Any:
    """The AccumulateGrad node of leaf ``t`` (the node its consumers' graphs point to)."""
    if not t.requires_grad:
        return None
    return t.view_as(t).grad_fn.next_functions[0][0]


def _nested(z: Sequence[Tensor]) -> bool:
    """Whether one of the outputs ``z`` is computed from another."""
    return any(reaches([zj], [zi for i, zi in enumerate(z) if i != j]) for j, zj in enumerate(z))
