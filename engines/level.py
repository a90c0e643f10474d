"""A declarative level: one optimisation problem of a multilevel program, as a Betty Problem.

A level is configured, not subclassed: what it trains (``module``, optionally a subset
chosen by ``trainable``), how (``optimizer``, ``scheduler``), on what (``data``), which
loss (a callable ``loss(level, batch)`` or an overridden :meth:`Level.loss`), and how
upper levels differentiate through it (``hypergrad``, ``unroll``, ``options``; a graph edge
may override the method for one upper). Other levels are reachable by name as attributes
(``level.seg``), as in Betty.

Compared with Betty's ``ImplicitProblem`` this class owns the mechanics the engine needs
to be exact and safe:

* several uppers of one level are stepped in two phases — every upper forms its gradient
  from the same state, then every upper updates — so no upper's hypergradient depends on
  which upper happened to step first (or, with ``upper_order="sequential"``, one after the
  other in declared order, each after the previous one's update);
* hypergradients are formed path by path with the method each *edge* names
  (:mod:`engines.hypergrad.paths`), and the last one of every path is kept
  (:attr:`Level.hypergradients`) and its norm logged;
* every recomputation of the loss during a hypergradient reuses the random state of the real
  step it stands for and leaves the running statistics of norm layers untouched;
* gradients are formed without DDP hooks (averaged explicitly across ranks); non-finite or
  malformed losses stop the run naming the level; autocast uses ``torch.autocast``; and the full
  state (counters, data position, held batch, method state) is checkpointable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import numbers
import random
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from betty.configs import Config
from betty.problems import ImplicitProblem
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from .cpu_pooling import channels_last_max_pooling
from .data import as_source
from .edges import ReadCheck, check_reads
from .errors import GraphError, LossError, NonFiniteError
from .hypergrad import METHODS
from .hypergrad.paths import Hypergradients, path_label, walk_path
from .loss_module import LossModule

__all__ = ["UPPER_ORDERS", "Level", "LossFn", "OptimizerSpec", "SchedulerSpec"]

UPPER_ORDERS = ("simultaneous", "sequential")

OptimizerSpec = torch.optim.Optimizer | Callable[[list[nn.Parameter]], torch.optim.Optimizer]
SchedulerSpec = Callable[[torch.optim.Optimizer], Any]
LossFn = Callable[["Level", Any], Tensor | Mapping[str, Any]]
RngState = tuple[Tensor, Tensor | None]


class Level(ImplicitProblem):
    """One level of a multilevel program.

    Args:
        name: unique identifier (other levels reach this one as ``level.<name>``).
        module: the ``nn.Module`` holding this level's parameters.
        optimizer: an optimizer over exactly the trainable parameters, or a factory
            ``params -> optimizer`` (e.g. ``functools.partial(torch.optim.Adam, lr=1e-3)``).
        loss: ``loss(level, batch) -> Tensor | {"loss": Tensor, ...extras}``; omit it when a
            subclass overrides :meth:`loss`. The loss must be a scalar tensor; extras are logged.
            It must read this level's parameters through ``level.module`` (its forward or
            attributes), not through ``trainable_parameters()``: ``exact`` re-runs it with
            substituted parameters.
        data: where batches come from: a :class:`engines.DataStream`, any iterator or
            re-iterable, a callable ``fn(level) -> batch``, or None (the loss takes no batch); a tensor
            or a tuple of tensors (which would be iterated row by row) is refused.
        scheduler: ``optimizer -> scheduler``; stepped every step, except
            ``ReduceLROnPlateau``, which the runner steps on the monitored validation metric.
        hypergrad: how upper levels differentiate through this level by default (a name in
            ``engines.METHODS``, default ``"darts"``); a graph edge may override it for one upper.
        unroll: real steps of this level per step of its upper levels (``K``, default 1).
        options: options of the default method (e.g. ``{"maxiter": 20, "tol": 1e-6}`` for cg); names,
            types and ranges are checked here.
        trainable: ``module -> parameters`` when only part of the module is trained here.
        start: ``level -> {name: tensor}``: values the trainable parameters restart from at every
            inner loop, possibly functions of upper parameters (MAML's ``φ_0 = θ``). It must map
            *every* trainable parameter, by its name within ``module`` (see
            :attr:`trainable_names`), to a tensor of that parameter's shape. Without it the
            parameters carry over between inner loops.
        warmup: real steps before the upper levels are first called (default 0).
        upper_order: how several upper levels of this level step when they are due together:
            ``"simultaneous"`` (default: every upper forms its gradient from the same state, then every
            upper updates, so no result depends on their order) or ``"sequential"`` (in the order their
            edges were declared, each forming its gradient after the previous one's update, e.g.
            DuMeta++'s Algorithm 1: θ, then φ with the updated encoder).
        grad_clip: clip the total gradient norm to this value (0 disables).
        probe: ``level -> Tensor`` summarising the level's output for regression goldens
            (default: its trainable parameters).

    ``hypergrad``, ``unroll``, ``options``, ``warmup`` and ``upper_order`` concern upper levels: graph
    validation warns about them on a top level, where they would be ignored.
    """

    def __init__(
        self,
        name: str,
        module: nn.Module,
        optimizer: OptimizerSpec | None,
        loss: LossFn | None = None,
        data: Any = None,
        *,
        scheduler: SchedulerSpec | None = None,
        hypergrad: str | None = None,
        unroll: int | None = None,
        options: Mapping[str, Any] | None = None,
        trainable: Callable[[nn.Module], Iterable[nn.Parameter]] | None = None,
        start: Callable[[Level], Mapping[str, Tensor]] | None = None,
        warmup: int | None = None,
        grad_clip: float = 0.0,
        probe: Callable[[Level], Tensor] | None = None,
        upper_order: str | None = None,
    ):
        given = {
            "hypergrad": hypergrad,
            "unroll": unroll,
            "options": options or None,
            "warmup": warmup,
            "upper_order": upper_order,
        }
        # settings that concern upper levels and were given explicitly (warned about on a top level by validation)
        self.explicit_settings = tuple(key for key, value in given.items() if value is not None)
        hypergrad = "darts" if hypergrad is None else hypergrad
        unroll = 1 if unroll is None else unroll
        warmup = 0 if warmup is None else warmup
        upper_order = "simultaneous" if upper_order is None else upper_order
        if not isinstance(module, nn.Module):
            raise TypeError(f"level '{name}': module must be an nn.Module, got {type(module).__name__}")
        if not isinstance(hypergrad, str):
            raise TypeError(
                f"level '{name}': hypergrad must be a method name (str) such as 'cg', got {type(hypergrad).__name__} "
                f"{hypergrad!r}; pass the method's options separately as options={{...}}"
            )
        if isinstance(unroll, bool) or not isinstance(unroll, numbers.Integral) or unroll < 1:
            raise ValueError(f"level '{name}': unroll must be an integer >= 1, got {unroll!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
            raise ValueError(f"level '{name}': warmup must be an integer >= 0, got {warmup!r}")
        if upper_order not in UPPER_ORDERS:
            raise ValueError(f"level '{name}': upper_order must be one of {list(UPPER_ORDERS)}, got {upper_order!r}")
        if loss is None and type(self).loss is Level.loss:
            raise TypeError(f"level '{name}': give loss=fn(level, batch) or subclass Level and override loss()")
        if loss is not None and not callable(loss):
            raise TypeError(f"level '{name}': loss must be callable as loss(level, batch), got {type(loss).__name__}")
        if options is not None and not isinstance(options, Mapping):
            raise TypeError(f"level '{name}': options must be a dict of method options, got {type(options).__name__}")
        options = dict(options or {})
        config = Config(
            type=hypergrad,
            unroll_steps=int(unroll),
            warmup_steps=int(warmup),
            gradient_clipping=float(grad_clip),
            log_step=-1,
            **_betty_option_fields(name, hypergrad, options),
        )
        super().__init__(name, config, module=module)
        self.hypergrad = hypergrad
        self.unroll = int(unroll)
        self.upper_order = upper_order
        self.hypergrad_options = options
        self._scheduler_spec = scheduler
        self._loss_fn = loss
        self._source = as_source(data, name)
        self._trainable_fn = trainable
        self._start_fn = start
        self._probe_fn = probe
        self._params: list[nn.Parameter] | None = None
        self._names: list[str] | None = None
        self.plateau_scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self.method_state: dict[str, Any] = {}
        self.hop_cache: dict[Any, Any] = {}
        self.diagnostics: dict[str, Any] = {}
        self.hypergradients: dict[str, list[Tensor]] = Hypergradients(name)
        self.hypergradient_report: dict[str, Any] = {}
        self.trajectory: Any = None
        self.step_log: list[dict[str, Any]] = []
        self.last_step_rng: RngState | None = None
        self.last_indirect_grads: list[Tensor] | None = None
        self.hold_batch = False
        self._last_raw_batch: tuple[Any, Any] | None = None
        self.stop_request: str | None = None
        # observer(level, batch, logged) after each real step's gradient, before the update; must not change the
        # level's state (the hypergradient doctor records windows and audits through it: engines/doctor)
        self.step_observers: list[Callable[[Level, Any, dict[str, Any]], None]] = []
        self.one_step_record: dict[str, Any] | None = None
        self._edge_methods: dict[str, tuple[str, dict[str, Any]]] = {}
        self._methods_through: tuple[str, ...] = (hypergrad,)
        self._uppers_through: tuple[str, ...] = ()
        self._graph_paths = False
        self._read_checks: tuple[ReadCheck, ...] = ()
        self._in_real_step = False
        self._captured_outputs: list[Tensor] | None = None
        self._auto_outputs: list[Tensor] = []
        self._detach_outputs = False
        self._marks_outputs = False
        module.register_forward_hook(_OutputHook(self))
        self._pending: dict[str, Any] | None = None
        self._checked_loss = False
        self._autocast_dtype: torch.dtype | None = None
        self._float64 = False
        self._grad_scaler: torch.amp.GradScaler | None = None
        self._device_type = "cpu"
        if isinstance(optimizer, torch.optim.Optimizer):
            self.optimizer = optimizer
        elif callable(optimizer):
            self.optimizer = optimizer(self.trainable_parameters())
        elif optimizer is not None:
            raise TypeError(
                f"level '{name}': optimizer must be a torch optimizer or a factory params -> optimizer, "
                f"got {type(optimizer).__name__}"
            )

    # ------------------------------------------------------------------ configuration
    def configure_precision(self, dtype: torch.dtype | None, device_type: str, *, float64: bool = False) -> None:
        """Autocast dtype for this level's losses (None: full precision); fp16 adds loss scaling.
        ``float64`` runs the level in double precision instead: the module (parameters and buffers)
        is converted and every floating batch tensor is cast (complex ones to complex128)."""
        self._autocast_dtype = dtype
        self._device_type = device_type
        self._grad_scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None
        self._float64 = float64
        if float64:
            self.module.to(torch.float64)

    def configure_edges(
        self,
        edges: Mapping[str, tuple[str, Mapping[str, Any]]],
        uppers_through: Iterable[str],
        paths: Iterable[list[Level]] | None = None,
        read_checks: Iterable[ReadCheck] = (),
    ) -> None:
        """Set by the graph: per-upper method overrides, the uppers whose hypergradients pass through
        this level (so the level runs the recording hooks of every method used on them), this level's
        own hypergradient paths, and what its loss must read for every declared edge to carry
        something (checked before the first step, :mod:`engines.edges`)."""
        self._edge_methods = {k: (m, dict(o)) for k, (m, o) in edges.items()}
        self._uppers_through = tuple(uppers_through)
        used = {self.method_through_name(u)[0] for u in uppers_through}
        self._methods_through = tuple(sorted(used)) or (self.hypergrad,)
        if paths is not None:
            self._paths = [list(path) for path in paths]
            self._graph_paths = True
        self._read_checks = tuple(read_checks)

    def add_paths(self, paths: list) -> None:
        """Betty's path registration; a graph sets the paths itself (they may pass through ``via`` levels,
        which Betty's search along nest edges does not know)."""
        if not self._graph_paths:
            super().add_paths(paths)

    def method_through_name(self, upper: str) -> tuple[str, dict[str, Any]]:
        """``(method, options)`` for differentiating this level's solution with respect to level ``upper``."""
        return self._edge_methods.get(upper, (self.hypergrad, self.hypergrad_options))

    def method_through(self, prev: Any) -> tuple[str, dict[str, Any]]:
        """As :meth:`method_through_name`, for a level object (the path walker's call)."""
        return self.method_through_name(prev.name)

    def options_through(self, method: str) -> list[dict[str, Any]]:
        """The options of every hop through this level that uses ``method``."""
        return [o for m, o in (self.method_through_name(u) for u in self._uppers_through) if m == method]

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> list[nn.Parameter]:
        if self._params is None:
            chosen = self.module.parameters() if self._trainable_fn is None else self._trainable_fn(self.module)
            self._params = list(chosen)
            if not self._params:
                raise GraphError(f"level '{self.name}' has no trainable parameters")
        return self._params

    def parameters(self) -> list[nn.Parameter]:
        return self.trainable_parameters()

    @property
    def trainable_names(self) -> list[str]:
        """Names (in ``module``) of the trainable parameters, in their order."""
        if self._names is None:
            by_id = {id(p): n for n, p in self.module.named_parameters(remove_duplicate=False)}
            missing = [i for i, p in enumerate(self.trainable_parameters()) if id(p) not in by_id]
            if missing:
                raise GraphError(
                    f"level '{self.name}': trainable parameters {missing} are not parameters of its module"
                )
            self._names = [by_id[id(p)] for p in self.trainable_parameters()]
        return self._names

    @property
    def has_start(self) -> bool:
        return self._start_fn is not None

    def start_values(self) -> dict[str, Tensor]:
        """The inner-loop start of each trainable parameter (differentiable in upper parameters)."""
        values = self._start_fn(self)
        if not isinstance(values, Mapping):
            raise GraphError(
                f"level '{self.name}': start must return a dict {{parameter name: tensor}}, got {type(values).__name__}"
            )
        values = dict(values)
        names = self.trainable_names
        unknown = sorted(set(values) - set(names))
        missing = sorted(set(names) - set(values))
        if unknown or missing:
            raise GraphError(
                f"level '{self.name}': start must map every trainable parameter by its name within the level's "
                f"module; unknown name(s) {unknown}, missing {missing}; the names are {names}"
            )
        for name, p in zip(names, self.trainable_parameters()):
            v = values[name]
            if not torch.is_tensor(v) or v.shape != p.shape:
                got = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
                raise GraphError(
                    f"level '{self.name}': start value for '{name}' must be a tensor of shape "
                    f"{tuple(p.shape)}, got {got}"
                )
        return values

    def on_inner_loop_start(self) -> None:
        if self._start_fn is None:
            return
        values = self.start_values()
        with torch.no_grad():
            for name, p in zip(self.trainable_names, self.trainable_parameters()):
                p.copy_(values[name])
        self.optimizer.state.clear()  # each inner loop is a fresh optimisation

    @property
    def count(self) -> int:
        return self._count

    @property
    def in_real_step(self) -> bool:
        """True while this level's own step computes its loss; False when the loss is recomputed by
        a hypergradient method. A loss may then skip graph it does not need (e.g. through upper
        parameters, which a real step never differentiates) and reuse values across the
        recomputations of one hypergradient through :attr:`hop_cache`, which the engine empties
        after every hypergradient. State a loss updates (a memory bank...) must change only in
        real steps."""
        return self._in_real_step

    @property
    def inner_step(self) -> int:
        """Position of the latest real step in its inner loop, 1..unroll."""
        return (self._count - 1) % self.unroll + 1

    @property
    def global_step(self) -> int:
        return int(self._global_step or 0)

    # ------------------------------------------------------------------ Betty patching
    def patch_module(self) -> None:
        """Place the module; under DDP broadcast rank 0's state (no DDP wrapper, see optimizer_step)."""
        self.module.to(self.device)
        if self._world_size and self._world_size > 1:
            with torch.no_grad():
                for t in list(self.module.parameters()) + list(self.module.buffers()):
                    dist.broadcast(t.data, 0)

    def patch_optimizer(self) -> None:
        """Keep the optimizer built at construction (Betty would rebuild it from ``defaults``,
        dropping per-group settings) and build the scheduler."""
        if self.optimizer is None:
            raise GraphError(f"level '{self.name}' has no optimizer")
        if self._scheduler_spec is not None and self.scheduler is None and self.plateau_scheduler is None:
            scheduler = self._scheduler_spec(self.optimizer)
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.plateau_scheduler = scheduler
            else:
                self.scheduler = scheduler

    def patch_scheduler(self) -> None:  # built in patch_optimizer
        pass

    # ------------------------------------------------------------------ data and loss
    def get_batch(self) -> Any:
        if self._source is None:
            return None
        raw = self._source(self)
        if self._last_raw_batch is not None and raw is self._last_raw_batch[0]:
            return self._last_raw_batch[1]  # a source that hands out the same batch again (e.g. K inner steps)
        batch = _to_device(raw, self.device, torch.float64 if self._float64 else None)
        self._last_raw_batch = (raw, batch)
        return batch

    def loss(self, batch: Any) -> Tensor | Mapping[str, Any]:
        """The level's loss on ``batch``; override in subclasses or pass ``loss=``."""
        return self._loss_fn(self, batch)

    def training_step(self, batch: Any) -> Tensor | Mapping[str, Any]:
        return self.loss(batch)

    def before_step(self, batch: Any) -> None:
        """Hook run at the start of every real step (e.g. a discriminator update)."""

    def mark_output(self, output: Tensor) -> Tensor:
        """Mark ``output`` as a network output the loss is computed from, and return it.

        Used by ``curvature="gauss_newton"`` (the default for cg, cg_warm and neumann): the network up to
        the marked outputs is linearised, the rest of the loss keeps its exact curvature, e.g.
        ``logits = level.mark_output(level.module(x))``. Without any mark, the outputs of every call of
        the level's own ``module`` are the marked outputs; mark explicitly when the loss post-processes
        them with parameters of its own or calls the module repeatedly on its own outputs (an unrolled
        network), where only the final outputs may be marked. Outside such a solve it does nothing.
        """
        if self._captured_outputs is not None:
            if self._detach_outputs:
                return output.detach()
            self._captured_outputs.append(output)
        return output

    @property
    def marks_outputs(self) -> bool:
        """Whether the loss marked its outputs itself (with :meth:`mark_output`) the last time they were
        collected; otherwise its module's outputs stand for them."""
        return self._marks_outputs

    @contextlib.contextmanager
    def capturing_outputs(self, detach: bool = False) -> Iterator[list[Tensor]]:
        """Collect the network outputs of the loss computed inside (or, with ``detach``, hold them constant).

        The list yielded is filled on exit: the tensors the loss marked with :meth:`mark_output`, or, if it
        marked none, the tensor outputs of every call of the level's module."""
        outputs: list[Tensor] = []
        saved = self._captured_outputs, self._auto_outputs, self._detach_outputs
        self._captured_outputs, self._auto_outputs, self._detach_outputs = [], [], detach
        try:
            yield outputs
            if not detach:
                self._marks_outputs = bool(self._captured_outputs)
                outputs.extend(self._captured_outputs or self._auto_outputs)
        finally:
            self._captured_outputs, self._auto_outputs, self._detach_outputs = saved

    def _module_output(self, output: Any) -> Any:
        """The forward hook's work: collect (or detach) the module's tensor outputs while outputs are collected."""
        if self._captured_outputs is None:
            return None
        if self._detach_outputs:
            if self._marks_outputs:
                return None
            return tree_map(lambda t: t.detach() if torch.is_tensor(t) and t.is_floating_point() else t, output)
        self._auto_outputs.extend(t for t in tree_flatten(output)[0] if torch.is_tensor(t) and t.is_floating_point())
        return None

    @contextlib.contextmanager
    def recomputation(self) -> Iterator[None]:
        """The context of every recomputation of the loss by a hypergradient method: the random state of the
        latest real step, its autocast, the buffers of every connected level's module left untouched, compiled code run eagerly
        (``torch.compile`` supports no double backward; the parameters are the same), and CPU max-pooling through the
        faster channels-last kernel (same values and gradients, :mod:`engines.cpu_pooling`)."""
        with (
            self._rng(self.last_step_rng),
            self._autocast(),
            self._graph_buffers_frozen(),
            eager(self.module),
            channels_last_max_pooling(),
        ):
            yield

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self._autocast_dtype is None:
            yield
        else:
            with torch.autocast(self._device_type, dtype=self._autocast_dtype):
                yield

    def _capture_rng(self) -> RngState:
        cuda = None
        if torch.device(self.device).type == "cuda":
            cuda = torch.cuda.get_rng_state(torch.device(self.device))
        return torch.get_rng_state(), cuda

    @contextlib.contextmanager
    def _rng(self, state: RngState | None) -> Iterator[None]:
        """Run with the random state ``state`` (None: the current one) without advancing the global generators."""
        devices = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if state is not None:
                cpu, cuda = state
                torch.set_rng_state(cpu)
                if cuda is not None:
                    torch.cuda.set_rng_state(cuda, torch.device(self.device))
            yield

    @contextlib.contextmanager
    def _frozen_buffers(self) -> Iterator[None]:
        """Running statistics advance once per real step: during a recomputation every buffer of the
        module is swapped for a copy (which the forward may update and its graph may keep), and the
        original tensors are put back untouched afterwards."""
        swapped = []
        for module in self.module.modules():
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    swapped.append((module, name, buffer))
                    module._buffers[name] = buffer.clone()
        try:
            yield
        finally:
            for module, name, buffer in swapped:
                module._buffers[name] = buffer

    @contextlib.contextmanager
    def _graph_buffers_frozen(self) -> Iterator[None]:
        """:meth:`_frozen_buffers` for this level and every level connected to it: a loss may run other
        levels' modules (an upper's validation loss runs the lower's network), and a recomputation must
        not advance their running statistics either."""
        with contextlib.ExitStack() as frozen:
            for level in self._connected_levels():
                frozen.enter_context(level._frozen_buffers())
            yield

    def _loss_output(self, batch: Any) -> Tensor | Mapping[str, Any]:
        """The loss (or loss dict) under autocast; outside the real step it replays that step's random
        state and leaves the buffers of every level's module as they were."""
        if self._in_real_step:
            with self._autocast():
                return self.training_step(batch)
        with self.recomputation():
            return self.training_step(batch)

    def training_step_exec(self, batch: Any) -> Tensor:
        """The scalar loss on ``batch`` (what hypergradient methods recompute)."""
        return self._scalar_loss(self._loss_output(batch))

    def functional_loss(self, values: list[Tensor], buffers: dict[str, Tensor], batch: Any, rng: RngState) -> Tensor:
        """The loss with the trainable parameters replaced by ``values`` and buffers by ``buffers``."""
        swap = {f"m.{n}": v for n, v in zip(self.trainable_names, values)}
        swap.update({f"m.{n}": b for n, b in buffers.items()})
        with self._rng(rng), self._autocast(), self._graph_buffers_frozen(), eager(self.module):
            return torch.func.functional_call(LossModule(self), swap, (batch,), strict=False)

    def _guarded_loss_output(self, batch: Any) -> Tensor | Mapping[str, Any]:
        """The loss output. A loss that reads an attribute a level does not have (``level.hyper`` with no
        level named ``hyper``) is reported as that; one that fails on ``batch=None`` at a level without
        data, as that."""
        try:
            return self._loss_output(batch)
        except (TypeError, AttributeError, IndexError, KeyError) as err:
            owner = getattr(err, "obj", None) if isinstance(err, AttributeError) else None
            if isinstance(owner, Level) and isinstance(getattr(err, "name", None), str):
                raise LossError(self._unknown_attribute(owner, err.name)) from err
            if batch is None and self._source is None:
                raise LossError(
                    f"level '{self.name}': its loss failed on batch=None ({type(err).__name__}: {err}); "
                    "the level has no data — pass data=... (a DataStream, an iterable or a callable)"
                ) from err
            raise

    def _unknown_attribute(self, owner: Level, attribute: str) -> str:
        names = sorted(level.name for level in self._connected_levels())
        close = difflib.get_close_matches(attribute, names, n=1)
        hint = f" — did you mean level.{close[0]}?" if close else ""
        where = "the level" if owner is self else f"level '{owner.name}'"
        return (
            f"level '{self.name}': its loss reads '{attribute}' on {where}, which has no such attribute: "
            f"no level is named '{attribute}'{hint} (levels reach each other by name; the levels of this "
            f"graph are {names})"
        )

    def preflight(self) -> bool:
        """Evaluate the loss once on the batch the first step will draw, with no side effects, and check it
        (a scalar tensor that depends on what it should). Returns False when the batch cannot be previewed
        without consuming data (a source without ``state_dict``); the check then runs at the first step."""
        source_state = getattr(self._source, "state_dict", None)
        restorable = getattr(self._source, "restorable", callable(source_state))
        if self._source is not None and not (restorable and callable(source_state)):
            return False
        saved_source = source_state() if self._source is not None else None
        py_state, np_state = random.getstate(), np.random.get_state()
        devices = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), self._graph_buffers_frozen():
                batch = self.get_batch()
                loss = self._scalar_loss(self._guarded_loss_output(batch))  # as a recomputation sees it
                self._check_dependence(loss)
                self._check_edges(loss)
        finally:
            if self._source is not None:
                self._source.load_state_dict(saved_source)
            random.setstate(py_state)
            np.random.set_state(np_state)
            self.hop_cache.clear()
            for level in self._parents + self._children:
                level.hop_cache.clear()
        return True

    def _connected_levels(self) -> list[Level]:
        """This level and every level reachable from it through upper/lower edges."""
        seen: dict[int, Level] = {}
        todo = [self]
        while todo:
            level = todo.pop()
            if id(level) not in seen and isinstance(level, Level):
                seen[id(level)] = level
                todo.extend(level._parents + level._children)
        return list(seen.values())

    def _scalar_loss(self, out: Any) -> Tensor:
        loss = out["loss"] if isinstance(out, Mapping) and "loss" in out else out
        if not torch.is_tensor(loss) or loss.numel() != 1:
            got = (
                f"a tensor of shape {tuple(loss.shape)}"
                if torch.is_tensor(loss)
                else f"{type(out).__name__}" + (" without a 'loss' key" if isinstance(out, Mapping) else "")
            )
            raise LossError(
                f"level '{self.name}': the loss must return a scalar tensor or a dict with a scalar "
                f"tensor under 'loss', got {got}"
            )
        return loss.reshape(())

    def get_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        out = self._guarded_loss_output(batch)
        loss = self._scalar_loss(out)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteError(self.name, self.global_step, "loss", value)
        logged = {"loss": value}
        if isinstance(out, Mapping):
            logged.update(
                {
                    k: float(v.detach()) if torch.is_tensor(v) and v.numel() == 1 else v
                    for k, v in out.items()
                    if k != "loss"
                }
            )
        if self._grad_scaler is not None:
            loss = self._grad_scaler.scale(loss)
        return loss, logged

    # ------------------------------------------------------------------ one step
    def step_normal(self, global_step: int | None = None) -> None:
        """One real step of this level, then (after ``unroll`` of them) a step of its uppers.

        Replaces Betty's ``step_normal``: several uppers of this level first all form their
        gradients (the hypergradients through this level are computed from the same state), and
        only then all update, so the result does not depend on their order.
        """
        if global_step is not None:
            self._global_step = global_step
        if not self.check_ready():
            return
        self._begin_step()
        self.compute_step()
        self.apply_step()

    def _begin_step(self) -> None:
        if self._inner_loop_start:
            self.on_inner_loop_start()
            self._inner_loop_start = False
        if self._training:
            self._count += 1

    def compute_step(self, batch: Any = None) -> None:
        """Draw the batch, compute the loss and the full gradient (direct plus hypergradients), and
        run the recording hooks of the methods that differentiate through this level."""
        if batch is None:
            if not (self.hold_batch and self.cur_batch is not None):
                self.cur_batch = self.get_batch()
            batch = self.cur_batch
        self.before_step(batch)
        self.last_step_rng = self._capture_rng()
        first_check = not self._checked_loss
        self._in_real_step = True
        try:
            loss, logged = self.get_loss(batch)
            if first_check:
                self._check_dependence(loss)
        finally:
            self._in_real_step = False
        if first_check and self._read_checks:  # not previewed: check the edges on a recomputation, once
            self._check_edges(self.training_step_exec(batch))
            self.hop_cache.clear()
        reports = self.backward(loss, self.trainable_parameters(), self._paths)
        del loss
        if self._parents:
            for method in self._methods_through:
                hook = METHODS[method].on_lower_step if method in METHODS else None
                if hook is not None:
                    hook(self, batch)
        for observe in tuple(self.step_observers):
            observe(self, batch, logged)
        if self.is_implemented("grad_callback"):
            self.grad_callback()
        self._pending = {"logged": logged, "reports": reports}

    def apply_step(self) -> None:
        """Update with the gradient :meth:`compute_step` formed; then step the uppers if due."""
        pending, self._pending = self._pending or {"logged": {}, "reports": {}}, None
        self.optimizer_step()
        if self.is_implemented("param_callback"):
            self.param_callback()
        self.zero_grad()
        if self.scheduler is not None:
            self.scheduler.step()
        self._log(pending["logged"], pending["reports"])
        self.ready = [False] * len(self._children)
        if self._training and self._count % self.unroll == 0 and self._count > self.warmup_steps:
            self._step_uppers()

    def _step_uppers(self) -> None:
        """Step the uppers that are due, in the order their edges were declared: simultaneously (every
        one forms its gradient from the same state, then every one updates) or sequentially (each forms
        its gradient after the previous one's update), as ``upper_order`` says."""
        due = []
        for upper in self._parents:
            upper.ready[upper.children.index(self)] = True
            if upper.check_ready():
                due.append(upper)
        for upper in due:
            upper._global_step = self._global_step
        if self.upper_order == "sequential":
            for upper in due:
                upper._begin_step()
                upper.compute_step()
                upper.apply_step()
        else:
            for upper in due:  # phase 1: every upper forms its gradient from the same state
                upper._begin_step()
                upper.compute_step()
            for upper in due:  # phase 2: every upper updates
                upper.apply_step()
        self._inner_loop_start = True

    def one_step_descent(self, batch: Any = None) -> dict[str, float]:
        """Betty's single-step entry point (compute, then apply); returns the logged values."""
        self.compute_step(batch)
        logged = dict(self._pending["logged"])
        self.apply_step()
        return logged

    def _check_dependence(self, loss: Tensor) -> None:
        """Once, before the level's first real step: its loss must depend on its own parameters, or (for an
        upper level whose parameters act only through lower levels) on some lower level's."""
        self._checked_loss = True
        if self._paths:
            if not loss.requires_grad:
                raise LossError(
                    f"level '{self.name}': its loss does not depend on any parameter (no autograd "
                    "graph); it must read the lower level(s) it is nested over"
                )
            return
        if not loss.requires_grad or all(
            g is None
            for g in torch.autograd.grad(loss, self.trainable_parameters(), retain_graph=True, allow_unused=True)
        ):
            raise LossError(
                f"level '{self.name}': its loss does not depend on the level's own parameters "
                f"({', '.join(self.trainable_names[:4])}{'...' if len(self.trainable_names) > 4 else ''}); "
                "read them through level.module, or feed this level into a lower level with graph.feeds"
                + self._swap_hint(loss)
            )

    def _swap_hint(self, loss: Tensor) -> str:
        """For a loss that reads an upper level's parameters but not its own: the edge is probably reversed."""
        if not loss.requires_grad:
            return ""
        for upper in self._parents:
            grads = torch.autograd.grad(loss, upper.trainable_parameters(), retain_graph=True, allow_unused=True)
            if any(g is not None for g in grads):
                return (
                    f"; it reads the parameters of '{upper.name}', which is declared as its upper level — if "
                    f"'{self.name}' is meant to be the upper level, swap the arguments: "
                    f"g.bilevel(lower='{upper.name}', upper='{self.name}')"
                )
        return ""

    def _check_edges(self, loss: Tensor) -> None:
        """Every declared edge on a hypergradient path that this level's loss (or start map) must carry."""
        if self._read_checks:
            check_reads(self, loss, self._read_checks, lambda name: getattr(self, name))

    def backward(self, loss: Tensor, params: list[Tensor], paths: list, **_: Any) -> dict[str, Any]:
        """Direct gradient plus one hypergradient per path (each hop with its edge's method), formed
        without DDP hooks. Returns the per-path reports logged with this step."""
        # One backward pass for the direct gradient and every path's first vector, before any hop
        # runs: hops may perturb lower levels' parameters in place, which the loss's graph saved.
        firsts = list({id(path[1]): path[1] for path in paths}.values())
        first_params = [list(level.trainable_parameters()) for level in firsts]
        grads = torch.autograd.grad(loss, [*params, *(p for ps in first_params for p in ps)], allow_unused=True)
        direct, offset, first_vectors = grads[: len(params)], len(params), {}
        for level, ps in zip(firsts, first_params):
            first_vectors[id(level)] = grads[offset : offset + len(ps)]
            offset += len(ps)
        indirect: list[Tensor] | None = None
        reports: dict[str, Any] = {}
        for path in paths:
            hop, hop_reports = walk_path(first_vectors[id(path[1])], path)
            hop = [torch.zeros_like(p) if g is None else g for g, p in zip(hop, params)]
            label = path_label(path)
            self.hypergradients[label] = [g.detach() for g in hop]
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in hop])))
            reports[label] = {"norm": norm, **hop_reports}
            indirect = hop if indirect is None else [a + b for a, b in zip(indirect, hop)]
        for path in paths:  # values cached for this hypergradient (and their graphs) die here
            for level in path[1:-1]:
                level.hop_cache.clear()
        self.set_grads(params, direct)
        if indirect is not None:
            self.set_grads(params, indirect)
            if self._grad_scaler is not None:
                indirect = [g / self._grad_scaler.get_scale() for g in indirect]
        self.last_indirect_grads = indirect
        if reports:
            self.hypergradient_report = reports
        return reports

    def sync_gradients(self, params: Iterable[Tensor]) -> None:
        """Average the gradients of ``params`` across ranks (no-op in one process). The engine does
        this for the level's trainable parameters; call it for parameters a level updates itself
        (e.g. a discriminator stepped in :meth:`before_step`)."""
        params = [p for p in params if p.grad is not None]
        if params and self._world_size and self._world_size > 1:
            _average_gradients(params, self._world_size)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        params = [p for p in self.trainable_parameters() if p.grad is not None]
        if not params:
            return
        self.sync_gradients(params)
        if self._grad_scaler is not None:
            self._grad_scaler.unscale_(self.optimizer)
        norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params]))))
        if not math.isfinite(norm) and self._grad_scaler is None:
            raise NonFiniteError(self.name, self.global_step, "gradient norm", norm)
        self.diagnostics["grad_norm"] = norm
        if self.gradient_clipping > 0.0:
            torch.nn.utils.clip_grad_norm_(params, self.gradient_clipping)
        if self._grad_scaler is not None:
            self._grad_scaler.step(self.optimizer)
            self._grad_scaler.update()
        else:
            self.optimizer.step()
        if "sama" in self._methods_through:  # Betty's SAMA preconditioner reads the last raw gradient
            for p in params:
                state = self.optimizer.state.get(p)
                if state:
                    state["last_grad"] = p.grad.detach().clone()

    def _log(self, logged: dict[str, Any], reports: dict[str, Any]) -> None:
        entry = {"level": self.name, "step": self.global_step, "local_step": self._count, **logged}
        entry["lr"] = float(self.optimizer.param_groups[0]["lr"])
        entry.update(self.diagnostics)
        if reports:
            entry["hypergradient"] = reports
        self.step_log.append(entry)

    def probe(self) -> Tensor:
        """A tensor summarising this level's output, for regression goldens."""
        if self._probe_fn is not None:
            return self._probe_fn(self).detach().double()
        return torch.cat([p.detach().double().flatten() for p in self.trainable_parameters()])

    # ------------------------------------------------------------------ state
    def extra_state_dict(self) -> dict[str, Any]:
        """Subclass hook: more state to checkpoint (e.g. an auxiliary optimizer, a memory bank)."""
        return {}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        """Subclass hook, counterpart of :meth:`extra_state_dict`."""

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.plateau_scheduler is not None:
            state["plateau_scheduler"] = self.plateau_scheduler.state_dict()
        if self._grad_scaler is not None:
            state["grad_scaler"] = self._grad_scaler.state_dict()
        source_state = getattr(self._source, "state_dict", None)
        state.update(
            count=self._count,
            global_step=self.global_step,
            inner_loop_start=self._inner_loop_start,
            data=source_state() if callable(source_state) else None,
            held_batch=_to_device(self.cur_batch, "cpu") if self.hold_batch else None,
            last_step_rng=list(self.last_step_rng) if self.last_step_rng is not None else None,
            method_state=self.method_state,
            extra=self.extra_state_dict(),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.plateau_scheduler is not None and "plateau_scheduler" in state:
            self.plateau_scheduler.load_state_dict(state["plateau_scheduler"])
        if self._grad_scaler is not None and "grad_scaler" in state:
            self._grad_scaler.load_state_dict(state["grad_scaler"])
        self._count = int(state["count"])
        self._global_step = int(state.get("global_step", 0))
        self._inner_loop_start = bool(state["inner_loop_start"])
        loader = getattr(self._source, "load_state_dict", None)
        if callable(loader) and state.get("data") is not None:
            loader(state["data"])
        held = state.get("held_batch")
        self.hold_batch = held is not None
        self.cur_batch = _to_device(held, self.device) if held is not None else None
        self.method_state = dict(state.get("method_state", {}))
        rng = state.get("last_step_rng")
        self.last_step_rng = (rng[0], rng[1]) if rng is not None else None
        self._checked_loss = self._count > 0
        self.load_extra_state_dict(state.get("extra", {}))

    def __repr__(self) -> str:
        return f"Level({self.name!r}, hypergrad={self.hypergrad!r}, unroll={self.unroll})"


def _betty_option_fields(name: str, method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check ``options`` against the method's (names, types and ranges) and translate the ones Betty's
    ``Config`` also has."""
    info = METHODS.get(method)
    if info is None:  # reported with the full list by Graph.validate()
        return {}
    problems = info.option_problems(options)
    if problems:
        raise ValueError(f"level '{name}': " + "; ".join(problems))
    return {field: options[key] for key, (field, _) in info.options.items() if field is not None and key in options}


def _to_device(batch: Any, device: Any, float_dtype: torch.dtype | None = None) -> Any:
    """Move every tensor of ``batch`` to ``device``; with ``float_dtype`` (float64 runs) also cast
    floating tensors to it and complex ones to the matching complex dtype."""
    if torch.is_tensor(batch):
        if float_dtype is not None and batch.is_floating_point():
            return batch.to(device, float_dtype, non_blocking=True)
        if float_dtype is not None and batch.is_complex():
            return batch.to(device, torch.complex128, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device, float_dtype) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_to_device(v, device, float_dtype) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device, float_dtype) for v in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(
            batch,
            **{
                f.name: _to_device(getattr(batch, f.name), device, float_dtype)
                for f in dataclasses.fields(batch)
                if f.init
            },
        )
    to = getattr(batch, "to", None)
    return to(device) if callable(to) else batch


def _average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """Average gradients over ranks with one flat all-reduce (what DDP does, explicitly)."""
    grads = [p.grad for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


@contextlib.contextmanager
def eager(module: nn.Module) -> Iterator[None]:
    """Run ``module`` (and any code compiled with ``torch.compile`` called meanwhile) eagerly: every
    ``torch.compile``-d module inside ``module`` calls its original module directly, with the same
    parameters, and other compiled functions run under the ``force_eager`` stance. Hypergradient
    recomputations need this: compiled graphs support no double backward and cannot be traced.
    Without ``torch._dynamo`` loaded nothing can have been compiled, and nothing is done."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is None:
        yield
        return
    compiled = [m for m in module.modules() if isinstance(m, dynamo.eval_frame.OptimizedModule)]
    saved = [m.__dict__.get("forward") for m in compiled]
    try:
        for m in compiled:
            m.forward = m._orig_mod.__call__
        with torch.compiler.set_stance("force_eager"):
            yield
    finally:
        for m, forward in zip(compiled, saved):
            if forward is None:
                del m.forward
            else:
                m.forward = forward


class _OutputHook:
    """Forward hook on a level's module: hands the module's outputs to the level while it collects marked
    outputs. Holds the level weakly (so copies of the module do not copy the level) and acts only for the
    level's own module object (not for a deep copy carrying the hook)."""

    def __init__(self, level: Level):
        self._level = weakref.ref(level)

    def __getstate__(self) -> dict[str, Any]:  # a pickled module keeps an inert hook
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._level = lambda: None

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        level = self._level()
        if level is None or module is not level.module:
            return None
        return level._module_output(output)
