"""DuMeta++ (Sun et al., arXiv:2602.07174): dual meta-learning of an encoder and a head initialisation, as three levels.

Algorithm 1, one meta-iteration t, with E_θ / D_ω the encoder / head of a :class:`DualUNet`:

* ``head`` (inner, ω): ω ← φ (Eq. 6), then one SGD step of ``L_inner`` = Dice + CE on a mini-batch
  of dataset A (Eq. 1 / 7). Shared by both outer levels.
* ``encoder`` (outer 1, MFL, θ): ``L_outer1 = L_seg + λ2·L_reg`` (Eq. 15) on datasets B and C
  through ω*(θ); its gradient has the direct term and the indirect term through the inner step
  (Eq. 3–5): hypergradient method ``exact`` through ``head``.
* ``head_init`` (outer 2, MIL, φ): ``L_outer2 = L_seg`` on datasets B and C through ω*(φ)
  (Eq. 8–11) with the second-order term dropped, as the paper does: ``first_order`` through
  ``head`` (∂ω*/∂φ ≈ I, the Jacobian of the start map).

Both hypergradients come from the same real inner step. The order of the two outer updates is one
setting, ``upper_order`` of :func:`dual_meta_graph` (:data:`UPPER_ORDERS`): ``"sequential"`` is
Algorithm 1 (lines 6–11: θ is updated first, then φ's gradient is formed with the updated encoder,
"having determined the universal feature extractor", Sec. III-A2), the default; ``"two-phase"`` forms
both gradients from the state before either update (the engine's order-independent default). The
sequential order is the engine's ``Level(upper_order="sequential")`` on ``head``, whose uppers step in
the order the graph declares them (``encoder`` first); :func:`effective_upper_order` says whether this
engine has that option. During meta-training the head is the whole decoder and the encoder the rest
(the paper's split); the fine-tuned depth at meta-test is separate (``problems.dumeta.metatest``).

The memory bank of ``L_reg`` (Eq. 12–14) belongs to ``encoder``, whose loss is the only one that
uses it: the detached per-sample class means of the adapted head's decoder features on datasets B
and C are pushed in each real ``encoder`` step (so over iterations every dataset of the pool feeds
it), before the prototypes are read; recomputations of the loss never push. The bank is saved in
the level's checkpoint state, so a resumed run continues identically.

Baselines and ablations are configurations (:data:`VARIANTS`, :func:`init_learning_graph`,
:func:`joint_training_graph`): MFL only (ω carries over, no φ), MFL + MIL without ``L_reg``, the
"sum" loss and the sample-level anchors of Table V (D, E), MIL only (θ gets its direct gradient only), first-order MAML and Reptile on the whole network, and joint
training on the pool (Table V A).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from engines import Graph, Level

from ..losses import PAPER_DS_WEIGHTS, DeepSupervisedDiceCE
from .data import JointSampler, MetaTaskSampler, SegBatch
from .net import DualUNet
from .prototypes import ClassAwareRegulariser

__all__ = [
    "REG_FEATURES",
    "UPPER_ORDERS",
    "VARIANTS",
    "EncoderLevel",
    "HeadInitLevel",
    "InnerLevel",
    "ParameterMirror",
    "ReptileInitLevel",
    "Variant",
    "dual_meta_graph",
    "effective_upper_order",
    "init_learning_graph",
    "joint_training_graph",
    "meta_trained_parameters",
]

REG_FEATURES = ("decoder", "encoder+decoder")
"""Which feature maps L_reg reads: the five decoder scales (Sec. III-B, "feature maps from D_ω";
the default) or also encoder stages 0–4 (Appendix II lists layers 1, 3, 5, 7, 9 as well)."""


UPPER_ORDERS = ("sequential", "two-phase")
"""How ``encoder`` and ``head_init`` step after the shared inner step: ``sequential`` (Algorithm 1: θ
first, then φ's gradient with the updated θ) or ``two-phase`` (both gradients from the same state)."""


@functools.cache
def _engine_has_upper_order() -> bool:
    return "upper_order" in inspect.signature(Level.__init__).parameters


def effective_upper_order(requested: str) -> str:
    """The order the outer levels really step in: ``requested``, or ``"two-phase"`` when ``"sequential"``
    is asked for and this engine's :class:`~engines.Level` has no ``upper_order`` option yet."""
    if requested not in UPPER_ORDERS:
        raise ValueError(f"upper_order must be one of {UPPER_ORDERS}, got {requested!r}")
    return requested if requested == "two-phase" or _engine_has_upper_order() else "two-phase"


def _upper_order_option(requested: str) -> dict[str, str]:
    """``{"upper_order": "sequential"}`` for the shared inner level when the engine supports it, else ``{}``
    (the engine's default is the two-phase update); a warning says when a sequential request falls back."""
    effective = effective_upper_order(requested)
    if effective != requested:
        warnings.warn(
            "upper_order='sequential' requested, but this engine's Level has no upper_order option: the outer "
            "levels use the two-phase update (both gradients from the state before either update)",
            stacklevel=3,
        )
    return {"upper_order": "sequential"} if effective == "sequential" else {}


@dataclass(frozen=True)
class Variant:
    """What distinguishes DuMeta++, its Table V ablations and DuMeta (nothing else does).

    meta_features: MFL — θ differentiates through the inner step (Eq. 3–5); otherwise θ receives
        only the direct gradient of its loss.
    meta_init: MIL — ω restarts from a meta-learned φ every meta-iteration (Eq. 6–11); otherwise ω
        carries over from one inner step to the next and there is no ``head_init`` level.
    anchor: class-aware regulariser: None (no L_reg), ``"prototype"`` (memory bank, Eq. 12) or
        ``"sample"`` (sample-level features, DuMeta).
    hinge: ``"triplet"`` (Eq. 13) or ``"sum"`` (Table V D: the max removed).
    """

    meta_features: bool = True
    meta_init: bool = True
    anchor: str | None = "prototype"
    hinge: str = "triplet"


VARIANTS: dict[str, Variant] = {
    "dumeta++": Variant(),  # Table V F
    "sample": Variant(anchor="sample"),  # Table V E: sample-level anchors (not the ICCV DuMeta's cosine loss)
    "mfl": Variant(meta_init=False, anchor=None),  # Table V B
    "mfl+mil": Variant(anchor=None),  # Table V C
    "prototype-sum": Variant(hinge="sum"),  # Table V D
    "mil": Variant(meta_features=False, anchor=None),  # MIL only (not a row of Table V)
}


class ParameterMirror(nn.Module):
    """A meta-learned initialisation φ: one parameter per parameter of ``template``, copied at build.

    :meth:`values` maps the template's parameter names to φ's tensors: the ``start`` map that restarts
    the adapted parameters at every inner loop (ω ← φ, Eq. 6).
    """

    def __init__(self, template: nn.Module):
        super().__init__()
        self.names = [n for n, _ in template.named_parameters()]
        # an OrderedDict keeps the template's order (a plain dict would be sorted by key)
        self.copies = nn.ParameterDict(
            OrderedDict((_key(n), nn.Parameter(p.detach().clone())) for n, p in template.named_parameters())
        )

    def values(self) -> dict[str, Tensor]:
        return {n: self.copies[_key(n)] for n in self.names}


def _key(name: str) -> str:
    return name.replace(".", "__")


class InnerLevel(Level):
    """``head`` (or ``adapted`` for MAML/Reptile): SGD steps of ``L_inner`` = Dice + CE (Eq. 1 / 7).

    ``adapts_encoder`` is False for DuMeta++ (ω = the decoder): a real step differentiates only ω,
    so the encoder runs without graph; a hypergradient recomputation keeps it (∂²L/∂ω∂θ, Eq. 4).
    """

    def __init__(
        self,
        name: str,
        module: nn.Module,
        *,
        net: DualUNet,
        seg_loss: DeepSupervisedDiceCE,
        adapts_encoder: bool = False,
        **options: Any,
    ):
        super().__init__(name, module, **options)
        self.net, self.seg_loss, self.adapts_encoder = net, seg_loss, adapts_encoder

    def loss(self, batch: SegBatch) -> dict[str, Tensor]:
        out = self.net(batch.image, encoder_grad=self.adapts_encoder or not self.in_real_step)
        return {"loss": self.seg_loss(out.logits, batch.label)}  # L_inner, Eq. 1


class EncoderLevel(Level):
    """``encoder`` (θ): ``L_outer1 = L_seg + λ2·L_reg`` on datasets B and C through ω* (Eq. 15)."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        *,
        net: DualUNet,
        seg_loss: DeepSupervisedDiceCE,
        regulariser: ClassAwareRegulariser | None,
        reg_weight: float,
        reg_features: str,
        **options: Any,
    ):
        super().__init__(name, module, **options)
        if reg_features not in REG_FEATURES:
            raise ValueError(f"reg_features must be one of {REG_FEATURES}, got {reg_features!r}")
        self.net, self.seg_loss = net, seg_loss
        self.regulariser, self.reg_weight, self.reg_features = regulariser, float(reg_weight), reg_features

    def loss(self, batch: SegBatch) -> dict[str, Tensor]:
        out = self.net(batch.image)
        seg = self.seg_loss(out.logits, batch.label)  # L_seg
        if self.regulariser is None:
            return {"loss": seg}
        features = out.decoder_features
        if self.reg_features == "encoder+decoder":
            features = out.encoder_features + features
        reg = self.regulariser(features, batch.label, batch.domain, update=self.in_real_step)  # L_reg, Eq. 14
        return {"loss": seg + self.reg_weight * reg, "seg": seg, "reg": reg}  # Eq. 15

    def extra_state_dict(self) -> dict[str, Any]:
        return {} if self.regulariser is None else {"regulariser": self.regulariser.state_dict()}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        if self.regulariser is not None:
            self.regulariser.load_state_dict(state["regulariser"])


class HeadInitLevel(Level):
    """``head_init`` (φ) or MAML's ``init``: ``L_outer2 = L_seg`` on datasets B and C through the
    adapted parameters (Eq. 8–9). φ enters only through the inner loop's start, so its whole
    gradient is the hypergradient."""

    def __init__(
        self,
        name: str,
        module: ParameterMirror,
        *,
        net: DualUNet,
        seg_loss: DeepSupervisedDiceCE,
        encoder_grad: bool = False,
        **options: Any,
    ):
        super().__init__(name, module, **options)
        self.net, self.seg_loss, self.encoder_grad = net, seg_loss, encoder_grad

    def loss(self, batch: SegBatch) -> dict[str, Tensor]:
        out = self.net(batch.image, encoder_grad=self.encoder_grad)
        return {"loss": self.seg_loss(out.logits, batch.label)}  # L_outer2, Eq. 8


class ReptileInitLevel(Level):
    """Reptile's ``init`` (φ): ``½ Σ ‖φ − sg(ω_K)‖²``, whose gradient is φ − ω_K (Nichol et al.)."""

    def __init__(self, name: str, module: ParameterMirror, *, adapted: nn.Module, **options: Any):
        super().__init__(name, module, **options)
        self.adapted_net = adapted

    def loss(self, batch: Any) -> Tensor:
        adapted = dict(self.adapted_net.named_parameters())
        return sum(0.5 * (phi - adapted[n].detach()).pow(2).sum() for n, phi in self.module.values().items())


def dual_meta_graph(
    variant: str | Variant,
    *,
    net: DualUNet,
    sampler: MetaTaskSampler,
    inner_lr: float,
    outer_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    inner_scheduler: Callable | None = None,
    outer_scheduler: Callable | None = None,
    reg_weight: float = 0.1,
    margin: float = 1.5,
    capacity: int = 100,
    reg_features: str = "decoder",
    ds_weights: Sequence[float] = PAPER_DS_WEIGHTS,
    encoder_hypergrad: str = "exact",
    head_init_hypergrad: str = "first_order",
    upper_order: str = "sequential",
) -> Graph:
    """DuMeta++ (``"dumeta++"``) or one of its configurations (:data:`VARIANTS`) on ``net``.

    Args:
        inner_lr: α of Eq. 1 (plain SGD, one step).
        outer_optimizer: factory for θ's and φ's optimizers (β of Eq. 2 / 8).
        inner_scheduler, outer_scheduler: optional ``optimizer -> scheduler`` factories (poly decay).
        reg_weight, margin, capacity: λ2, λ1 and the memory bank's N.
        reg_features: see :data:`REG_FEATURES`.
        encoder_hypergrad, head_init_hypergrad: methods on the two edges through ``head``.
        upper_order: :data:`UPPER_ORDERS`; ``encoder`` is declared first, so it steps first when sequential.
    """
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    name = variant if isinstance(variant, str) else "custom"
    effective_upper_order(upper_order)  # checked before anything is built
    seg_loss = DeepSupervisedDiceCE(ds_weights)
    g = Graph(f"dumeta[{name}]")
    phi = ParameterMirror(net.decoder) if v.meta_init else None
    head = InnerLevel(
        "head",
        net.decoder,
        net=net,
        seg_loss=seg_loss,
        data=sampler,
        optimizer=lambda params: torch.optim.SGD(params, lr=inner_lr),
        scheduler=inner_scheduler,
        hypergrad=encoder_hypergrad if v.meta_features else head_init_hypergrad,
        start=(lambda level: phi.values()) if phi is not None else None,
        **(_upper_order_option(upper_order) if phi is not None else {}),
    )
    regulariser = None
    if v.anchor is not None:
        dims = net.decoder_channels() if reg_features == "decoder" else net.decoder_channels() * 2
        regulariser = ClassAwareRegulariser(dims, anchor=v.anchor, hinge=v.hinge, margin=margin, capacity=capacity)
    encoder = EncoderLevel(
        "encoder",
        net.encoder,
        net=net,
        seg_loss=seg_loss,
        regulariser=regulariser,
        reg_weight=reg_weight,
        reg_features=reg_features,
        optimizer=outer_optimizer,
        scheduler=outer_scheduler,
        data=lambda level: sampler.outer("encoder"),
    )
    g.add(head, encoder)
    if v.meta_features:
        g.bilevel(lower=head, upper=encoder, hypergrad=encoder_hypergrad)  # Eq. 3-5: direct + indirect
    else:
        g.nest(lower=head, upper=encoder)  # θ steps after the inner step on its direct gradient only
    if phi is not None:
        head_init = HeadInitLevel(
            "head_init",
            phi,
            net=net,
            seg_loss=seg_loss,
            optimizer=outer_optimizer,
            scheduler=outer_scheduler,
            data=lambda level: sampler.outer("head_init"),
        )
        g.add(head_init)
        g.bilevel(lower=head, upper=head_init, hypergrad=head_init_hypergrad)  # Eq. 9-11 without the Hessian
    return g


def init_learning_graph(
    kind: str,
    *,
    net: DualUNet,
    sampler: MetaTaskSampler,
    inner_lr: float,
    inner_steps: int,
    outer_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    inner_scheduler: Callable | None = None,
    outer_scheduler: Callable | None = None,
    ds_weights: Sequence[float] = PAPER_DS_WEIGHTS,
) -> Graph:
    """Meta-learned initialisation of the whole network: ``"maml"`` (first-order MAML: the outer loss
    on datasets B and C through ω_K, ``first_order`` through ``adapted``) or ``"reptile"``
    (φ ← φ + ε(ω_K − φ) with the outer optimizer). ``inner_steps`` SGD steps on dataset A."""
    if kind not in ("maml", "reptile"):
        raise ValueError(f"kind must be 'maml' or 'reptile', got {kind!r}")
    seg_loss = DeepSupervisedDiceCE(ds_weights)
    phi = ParameterMirror(net)
    adapted = InnerLevel(
        "adapted",
        net,
        net=net,
        seg_loss=seg_loss,
        adapts_encoder=True,
        data=sampler,
        optimizer=lambda params: torch.optim.SGD(params, lr=inner_lr),
        scheduler=inner_scheduler,
        hypergrad="first_order",
        unroll=inner_steps,
        start=lambda level: phi.values(),
    )
    g = Graph(f"dumeta[{kind}]")
    if kind == "maml":
        init: Level = HeadInitLevel(
            "init",
            phi,
            net=net,
            seg_loss=seg_loss,
            encoder_grad=True,
            optimizer=outer_optimizer,
            scheduler=outer_scheduler,
            data=lambda level: sampler.outer("init"),
        )
        g.add(adapted, init)
        g.bilevel(lower=adapted, upper=init)
    else:
        init = ReptileInitLevel("init", phi, adapted=net, optimizer=outer_optimizer, scheduler=outer_scheduler)
        g.add(adapted, init)
        g.nest(lower=adapted, upper=init)  # Reptile's update needs ω_K, not a hypergradient
    return g


def joint_training_graph(
    *,
    net: DualUNet,
    sampler: JointSampler,
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    scheduler: Callable | None = None,
    ds_weights: Sequence[float] = PAPER_DS_WEIGHTS,
) -> Graph:
    """Table V A: the network trained on the pooled datasets with Dice + CE, no meta-learning."""
    seg_loss = DeepSupervisedDiceCE(ds_weights)
    g = Graph("dumeta[joint]")
    g.add(
        InnerLevel(
            "network",
            net,
            net=net,
            seg_loss=seg_loss,
            adapts_encoder=True,
            data=sampler,
            optimizer=optimizer,
            scheduler=scheduler,
        )
    )
    return g


def meta_trained_parameters(graph: Graph, net: DualUNet) -> dict[str, Tensor]:
    """What meta-test fine-tuning starts from, by parameter name in ``net``: the trained encoder θ and
    the head's meta-learned initialisation φ (``head_init``); for MAML/Reptile the whole meta-learned
    initialisation (``init``); otherwise (no φ) the network's current parameters."""
    levels = graph.levels
    values = {n: p.detach() for n, p in net.named_parameters()}
    if "head_init" in levels:
        values.update({f"decoder.{n}": t.detach() for n, t in levels["head_init"].module.values().items()})
    elif "init" in levels:
        values.update({n: t.detach() for n, t in levels["init"].module.values().items()})
    return values
