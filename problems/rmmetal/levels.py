"""Meta-learning levels of RM-MetaL (Yang, Ma, Yu, AAAI 2025) and its baselines, as one graph with two levels.

Problem (Eq. 1-2): ``min_θ F(θ) = 1/|B| Σ_i f_i(θ, φ_i*(θ))`` with ``φ_i*(θ) = argmin_φ g_i(θ, φ)``;
``f_i`` = cross-entropy on task i's query set, ``g_i`` = cross-entropy on its support set plus a
strongly convex ``R(φ) = μ/2 ||φ||²``.

* ``backbone`` (upper): θ, a Conv-4 network, and for ANIL/MAML also the meta-learned start of
  the adapted parameters; its loss is ``f = 1/|B| Σ_i f_i``.
* ``heads`` (lower): φ_i for the |B| tasks of a meta-batch, held batched (leading task dimension,
  no Python loop over tasks); its loss is ``g = Σ_i g_i``, so one gradient step moves every φ_i
  by ``-λ_φ ∇g_i`` independently. Under MAML this level adapts the whole network per task.

The algorithms differ only in configuration (:data:`ALGORITHMS`): what the lower level
adapts, where each inner loop starts (warm, fixed, meta-learned), the hypergradient method
through it — ``cg_warm`` (RM-MetaL, Algorithm 1 with Subroutine 1), ``exact`` (ITD-BiO, ANIL,
MAML: differentiation through the K steps) — and whether the backbone runs again in every
differentiated inner step (ITD-BiO and ANIL as their reference code runs them, Eq. 3) or once.

Conv-4 normalises with the statistics of each task's batch (``track_running_stats=False``):
the reference code never switches to eval mode, so this is the behaviour its numbers come from,
and it keeps tasks independent when they are processed together with ``torch.func.vmap``.

The meta-test every algorithm is scored with is in :mod:`~problems.rmmetal.metatest`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from engines import Graph, Level

from ..fewshot import Episodes, EpisodeStream

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Conv4",
    "EpisodeSource",
    "MetaModel",
    "TaskHeads",
    "TaskNetworks",
    "meta_learning_graph",
    "per_task_ce",
]


class Conv4(nn.Module):
    """Four blocks of 3x3 conv (padding 1) - BatchNorm - ReLU - 2x2 max-pool, then flatten.

    32x32 inputs give ``4 * width``-dimensional features (width 64 -> 256), 84x84 inputs
    ``25 * width`` (width 32 -> 800).
    """

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1),
                nn.BatchNorm2d(width, track_running_stats=False),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.width = width

    def feature_dim(self, image_size: int) -> int:
        return self.width * (image_size // 16) ** 2

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [N, C, H, W] -> features [N, d]."""
        return self.net(x)


class MetaModel(nn.Module):
    """The upper level's module: backbone θ, and the meta-learned head start (ANIL, MAML) if any."""

    def __init__(self, backbone: Conv4, n_way: int, feature_dim: int, meta_head: bool):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, n_way) if meta_head else None
        if self.head is not None:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def features(self, x: Tensor) -> Tensor:
        """``x``: [T, N, C, H, W] -> [T, N, d], every task normalised with its own batch statistics."""
        return torch.func.vmap(self.backbone)(x)

    def forward(self, x: Tensor) -> Tensor:
        """One task's images [N, C, H, W] -> logits [N, n_way] (the template MAML copies per task)."""
        return self.head(self.backbone(x))


class TaskHeads(nn.Module):
    """|B| linear heads φ_i = (W_i, b_i), stored batched: weight [B, n_way, d], bias [B, n_way].

    ``initial`` keeps the first values as buffers (the fixed start φ_{i,0} of Algorithm 1).
    """

    def __init__(self, n_tasks: int, n_way: int, feature_dim: int, *, scale: float = 0.01):
        super().__init__()
        weight = scale * torch.randn(n_tasks, n_way, feature_dim)
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(torch.zeros(n_tasks, n_way))
        self.register_buffer("initial_weight", weight)
        self.register_buffer("initial_bias", torch.zeros(n_tasks, n_way))

    def forward(self, features: Tensor) -> Tensor:
        """``features``: [B, N, d] -> logits [B, N, n_way]."""
        return torch.einsum("bnd,bwd->bnw", features, self.weight) + self.bias[:, None, :]

    def squared_norm(self) -> Tensor:
        """||φ||² summed over tasks (read through attributes, so substituted parameters count)."""
        return self.weight.pow(2).sum() + self.bias.pow(2).sum()


class TaskNetworks(nn.Module):
    """MAML's lower parameters: a copy of the whole network (Conv-4 and head) per task, batched.

    Parameters are ``[B, *shape]`` tensors named like the template's with '.' -> '__'; the
    forward pass maps the template over tasks with ``vmap(functional_call)``.
    """

    def __init__(self, template: MetaModel, n_tasks: int):
        super().__init__()
        self._template = (template,)  # not a submodule: its parameters belong to the upper level
        self.names = [n for n, _ in template.named_parameters()]
        self.copies = nn.ParameterDict(
            {
                n.replace(".", "__"): nn.Parameter(p.detach().unsqueeze(0).repeat(n_tasks, *[1] * p.dim()))
                for n, p in template.named_parameters()
            }
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [B, N, C, H, W] -> logits [B, N, n_way], task i through its own network."""
        template = self._template[0]
        params = {n: self.copies[n.replace(".", "__")] for n in self.names}

        def one_task(p: dict[str, Tensor], xi: Tensor) -> Tensor:
            return torch.func.functional_call(template, p, (xi,), strict=False)

        return torch.func.vmap(one_task)(params, x)


class EpisodeSource:
    """Meta-batches for both levels: the lower level draws a new episode at the first step of each
    inner loop and keeps it for its K steps; the upper level reads the same episode's query set."""

    def __init__(self, stream: EpisodeStream):
        self.stream = stream
        self.current: Episodes | None = None

    def __call__(self, level: Level) -> Episodes:
        if self.current is None or level.inner_step == 1:
            self.current = self.stream.next().to(level.device)  # moved once, reused for the K steps
        return self.current

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)
        self.current = None


@dataclass(frozen=True)
class Algorithm:
    """What distinguishes the meta-learning algorithms (nothing else does).

    adapt: "head" (φ = last linear layer) or "all" (MAML: the whole network).
    start: where each inner loop starts: "warm" (φ^0_t = φ^K_{t-1}, Algorithm 1 line 6), "fixed"
        (the same random φ_0 every outer step) or "meta" (the upper level's meta-learned start).
    hypergrad: the hypergradient method through the lower level.
    regularised: g includes R(φ) = μ/2 ||φ||² (the bilevel formulations) or not (init-based).
    features: how a hypergradient evaluates θ(support) in the lower loss: "per_step" (the
        backbone runs again in every differentiated inner step, as ``learner(feature(x))`` does in
        the reference ITD-BiO/ANIL code, so the graph of K backbone passes is alive at once) or
        "shared" (computed once per hypergradient and reused by all its steps). The real inner
        steps compute the features once without graph either way (θ is fixed during them and
        only φ is differentiated); MAML adapts the backbone itself, so its features are per step.
    """

    adapt: str
    start: str
    hypergrad: str
    regularised: bool
    features: str = "shared"

    def __post_init__(self) -> None:
        choices = {"adapt": ("head", "all"), "start": ("warm", "fixed", "meta"), "features": ("per_step", "shared")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Algorithm.{name} must be one of {allowed}; got {getattr(self, name)!r}")
        if self.adapt == "all" and self.features != "per_step":
            raise ValueError("Algorithm: adapt='all' adapts the backbone per task, so its features must be 'per_step'")


ALGORITHMS: dict[str, Algorithm] = {
    "rm-metal": Algorithm(adapt="head", start="warm", hypergrad="cg_warm", regularised=True),
    "itd-bio": Algorithm(adapt="head", start="fixed", hypergrad="exact", regularised=True, features="per_step"),
    "anil": Algorithm(adapt="head", start="meta", hypergrad="exact", regularised=False, features="per_step"),
    "maml": Algorithm(adapt="all", start="meta", hypergrad="exact", regularised=False, features="per_step"),
    # RM-MetaL as its released code runs it: heads restart from φ_0 and CG from 0 every outer step
    "rm-metal-no-warm-start": Algorithm(adapt="head", start="fixed", hypergrad="cg", regularised=True),
    # ITD-BiO and ANIL with the support features computed once per hypergradient: the same
    # hypergradient as the reference-style variants, without K backbone graphs held at once
    "itd-bio-shared": Algorithm(adapt="head", start="fixed", hypergrad="exact", regularised=True),
    "anil-shared": Algorithm(adapt="head", start="meta", hypergrad="exact", regularised=False),
}


def per_task_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of each task [B] (mean over its examples) for logits [B, N, W], labels [B, N]."""
    ce = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return ce.view(labels.shape).mean(1)


class HeadsLevel(Level):
    """``heads``: g = Σ_i [CE(φ_i; support_i) + μ/2 ||φ_i||²] (Eq. 1, lower problem)."""

    def __init__(
        self, name: str, module: nn.Module, *, algorithm: Algorithm, meta: MetaModel, mu: float, **options: Any
    ):
        super().__init__(name, module, **options)
        self.algorithm = algorithm
        self.meta = meta
        self.mu = mu if algorithm.regularised else 0.0
        self._support_features: Tensor | None = None

    def before_step(self, batch: Episodes) -> None:
        if self.inner_step == 1:  # a new episode and a new θ: the cached support features are stale
            self._support_features = None

    def support_features(self, batch: Episodes) -> Tensor:
        """θ(support) [B, N, d]. Within an inner loop θ is fixed and a real step differentiates
        only φ, so real steps compute the features once, without graph. A hypergradient needs
        their graph to θ: "per_step" algorithms compute them anew at every call (each replayed
        inner step of Eq. 3 holds its own backbone graph, as in the reference code), "shared"
        ones once per hypergradient."""
        if self.in_real_step:
            if self._support_features is None:
                with torch.no_grad():
                    self._support_features = self.meta.features(batch.support_x)
            return self._support_features
        if self.algorithm.features == "per_step":
            return self.meta.features(batch.support_x)
        key = ("support", id(batch.support_x))
        if key not in self.hop_cache:
            self.hop_cache[key] = self.meta.features(batch.support_x)
        return self.hop_cache[key]

    def loss(self, batch: Episodes) -> dict[str, Tensor]:
        if self.algorithm.adapt == "head":
            logits = self.module(self.support_features(batch))
        else:
            logits = self.module(batch.support_x)
        ce = per_task_ce(logits, batch.support_y)
        reg = 0.5 * self.mu * self.module.squared_norm() if self.mu else 0.0  # R(φ) = μ/2 ||φ||²
        return {"loss": ce.sum() + reg, "support_ce": ce.mean()}


class BackboneLevel(Level):
    """``backbone``: f = 1/|B| Σ_i CE(φ_i; query_i) (Eq. 2, upper problem)."""

    def __init__(self, name: str, module: MetaModel, *, algorithm: Algorithm, heads: HeadsLevel, **options: Any):
        super().__init__(name, module, **options)
        self.algorithm = algorithm
        self.heads = heads

    def loss(self, batch: Episodes) -> dict[str, Tensor]:
        if self.algorithm.adapt == "head":
            logits = self.heads.module(self.module.features(batch.query_x))
        else:
            logits = self.heads.module(batch.query_x)
        ce = per_task_ce(logits, batch.query_y)
        accuracy = (logits.argmax(-1) == batch.query_y).float().mean()
        return {"loss": ce.mean(), "query_accuracy": accuracy}


def _start_map(algorithm: Algorithm, heads: nn.Module, meta: MetaModel) -> Callable | None:
    """``start`` of the lower level: None (warm), the fixed φ_0, or the upper level's meta-learned start."""
    if algorithm.start == "warm":
        return None
    if algorithm.start == "fixed":
        return lambda lv: {"weight": heads.initial_weight, "bias": heads.initial_bias}
    if algorithm.adapt == "head":
        return lambda lv: {
            "weight": meta.head.weight.expand_as(heads.weight),
            "bias": meta.head.bias.expand_as(heads.bias),
        }
    return lambda lv: {
        f"copies.{n.replace('.', '__')}": p.expand_as(heads.copies[n.replace(".", "__")])
        for n, p in meta.named_parameters()
    }


def meta_learning_graph(
    algorithm: str | Algorithm,
    *,
    data: EpisodeSource,
    in_channels: int,
    image_size: int,
    width: int,
    n_way: int,
    n_tasks: int,
    inner_steps: int,
    inner_lr: float,
    outer_optimizer: Callable,
    mu: float = 0.01,
    cg_iterations: int = 20,
    cg_tol: float = 0.0,
    seed: int = 0,
) -> Graph:
    """The two-level graph for ``algorithm`` (a key of :data:`ALGORITHMS`).

    ``cg_tol=0`` runs exactly ``cg_iterations`` CG iterations, as Subroutine 1 does.
    """
    algo = ALGORITHMS[algorithm] if isinstance(algorithm, str) else algorithm
    torch.manual_seed(seed)
    backbone = Conv4(in_channels, width)
    dim = backbone.feature_dim(image_size)
    meta = MetaModel(backbone, n_way, dim, meta_head=algo.start == "meta")
    if algo.adapt == "all":
        lower_module: nn.Module = TaskNetworks(meta, n_tasks)
    else:
        lower_module = TaskHeads(n_tasks, n_way, dim)
    options = {}
    if algo.hypergrad in ("cg", "cg_warm"):
        # Subroutine 1: plain CG on each task's exact Hessian ∇²_φφ g_i (Eq. 8), N iterations, no damping
        options = {
            "maxiter": cg_iterations,
            "tol": cg_tol,
            "blockwise": True,
            "curvature": "hessian",
            "damping": 0.0,
            "adaptive_damping": False,
        }
    heads = HeadsLevel(
        "heads",
        lower_module,
        algorithm=algo,
        meta=meta,
        mu=mu,
        optimizer=functools.partial(torch.optim.SGD, lr=inner_lr),
        data=data,
        hypergrad=algo.hypergrad,
        unroll=inner_steps,
        options=options,
        start=_start_map(algo, lower_module, meta),
    )
    upper = BackboneLevel(
        "backbone", meta, algorithm=algo, heads=heads, optimizer=outer_optimizer, data=lambda lv: data.current
    )
    graph = Graph(f"meta-learning[{algorithm if isinstance(algorithm, str) else 'custom'}]")
    graph.add(heads, upper)
    graph.bilevel(lower=heads, upper=upper)
    return graph
