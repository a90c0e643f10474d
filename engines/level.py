"""A declarative level: one optimisation problem of a multilevel program, as a Betty Problem.

A level is configured, not subclassed: what it trains (``module``, optionally a subset
chosen by ``trainable``), how (``optimizer``, ``scheduler``), on what (``data``), which
loss (a callable ``loss(level, batch)`` or an overridden :meth:`Level.loss`), and how
upper levels differentiate through it (``hypergrad``, ``unroll``, ``options``). Other
levels are reachable by name as attributes (``level.seg``), as in Betty.

Compared with Betty's ``ImplicitProblem`` this class owns the mechanics the engine needs
to be exact and safe: gradients of all methods are formed without DDP hooks (averaged
explicitly across ranks), every recomputation of the loss during a hypergradient reuses
the random state of the real step it stands for, non-finite losses and gradients stop the
run naming the level, autocast uses the device-agnostic ``torch.autocast``, and the full
state (counters, data position, method state) is checkpointable.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from betty.configs import Config
from betty.hypergradient import get_grads
from betty.problems import ImplicitProblem
from torch import Tensor, nn

from .data import as_source
from .errors import GraphError, NonFiniteError
from .hypergrad import METHODS

__all__ = ["Level", "OptimizerSpec", "SchedulerSpec", "LossFn"]

OptimizerSpec = torch.optim.Optimizer | Callable[[list[nn.Parameter]], torch.optim.Optimizer]
SchedulerSpec = Callable[[torch.optim.Optimizer], Any]
LossFn = Callable[["Level", Any], Tensor | Mapping[str, Any]]
RngState = tuple[Tensor, Tensor | None]


class _LossModule(nn.Module):
    """Puts a level's module under a parent so ``torch.func.functional_call`` can swap its
    parameters while the level's own loss code (``self.module(...)``) runs unchanged."""

    def __init__(self, level: Level):
        super().__init__()
        self.m = level.module
        self._level = (level,)

    def forward(self, batch: Any) -> Tensor:
        out = self._level[0].training_step(batch)
        return out["loss"] if isinstance(out, Mapping) else out


class Level(ImplicitProblem):
    """One level of a multilevel program.

    Args:
        name: unique identifier (other levels reach this one as ``level.<name>``).
        module: the ``nn.Module`` holding this level's parameters.
        optimizer: an optimizer over exactly the trainable parameters, or a factory
            ``params -> optimizer`` (e.g. ``functools.partial(torch.optim.Adam, lr=1e-3)``).
        loss: ``loss(level, batch) -> Tensor | {"loss": Tensor, ...extras}``; omit it when a
            subclass overrides :meth:`loss`. Extras are logged. The loss must read this level's
            parameters through ``level.module`` (its forward or attributes), not through
            ``trainable_parameters()``: ``exact`` re-runs it with substituted parameters.
        data: where batches come from: a :class:`engines.DataStream`, any iterator or
            re-iterable, a callable ``fn(level) -> batch``, or None.
        scheduler: ``optimizer -> scheduler``; stepped every step, except
            ``ReduceLROnPlateau``, which the runner steps on the monitored validation metric.
        hypergrad: how upper levels differentiate through this level (see
            ``engines.hypergrad.METHODS``): darts, sama, neumann, cg, cg_warm, exact, first_order.
        unroll: real steps of this level per step of its upper levels (``K``).
        options: method options (e.g. ``{"maxiter": 20, "tol": 1e-6}`` for cg).
        trainable: ``module -> parameters`` when only part of the module is trained here.
        start: ``level -> {param name: tensor}``: values the trainable parameters restart
            from at every inner loop, possibly functions of upper parameters (MAML's
            ``φ_0 = θ``). Without it the parameters carry over between inner loops.
        warmup: real steps before the upper levels are first called.
        grad_clip: clip the total gradient norm to this value (0 disables).
        probe: ``level -> Tensor`` summarising the level's output for regression goldens
            (default: its trainable parameters).
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
        hypergrad: str = "darts",
        unroll: int = 1,
        options: Mapping[str, Any] | None = None,
        trainable: Callable[[nn.Module], Iterable[nn.Parameter]] | None = None,
        start: Callable[[Level], Mapping[str, Tensor]] | None = None,
        warmup: int = 0,
        grad_clip: float = 0.0,
        probe: Callable[[Level], Tensor] | None = None,
    ):
        if not isinstance(module, nn.Module):
            raise TypeError(f"level '{name}': module must be an nn.Module, got {type(module).__name__}")
        if int(unroll) < 1:
            raise ValueError(f"level '{name}': unroll must be >= 1, got {unroll}")
        if loss is None and type(self).loss is Level.loss:
            raise TypeError(f"level '{name}': give loss=fn(level, batch) or subclass Level and override loss()")
        options = dict(options or {})
        betty_fields = self._betty_option_fields(name, hypergrad, options)
        config = Config(
            type=hypergrad,
            unroll_steps=int(unroll),
            warmup_steps=int(warmup),
            gradient_clipping=float(grad_clip),
            log_step=-1,
            **betty_fields,
        )
        super().__init__(name, config, module=module)
        self.hypergrad = hypergrad
        self.unroll = int(unroll)
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
        self.diagnostics: dict[str, float] = {}
        self.trajectory: Any = None
        self.step_log: list[dict[str, Any]] = []
        self.last_step_rng: RngState | None = None
        self.last_indirect_grads: list[Tensor] | None = None
        self._in_real_step = False
        self._autocast_dtype: torch.dtype | None = None
        self._grad_scaler: torch.amp.GradScaler | None = None
        self._device_type = "cpu"
        if isinstance(optimizer, torch.optim.Optimizer):
            self.optimizer = optimizer
        elif callable(optimizer):
            self.optimizer = optimizer(self.trainable_parameters())

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _betty_option_fields(name: str, method: str, options: dict[str, Any]) -> dict[str, Any]:
        info = METHODS.get(method)
        if info is None:  # reported with the full list by Graph.validate()
            return {}
        unknown = sorted(set(options) - set(info.options))
        if unknown:
            accepted = ", ".join(sorted(info.options)) or "none"
            raise ValueError(
                f"level '{name}': option(s) {unknown} are not understood by hypergrad '{method}' "
                f"(accepted: {accepted})"
            )
        fields = {}
        for key, (field, _default) in info.options.items():
            if field is not None and key in options:
                fields[field] = options[key]
        return fields

    def configure_precision(self, dtype: torch.dtype | None, device_type: str) -> None:
        """Autocast dtype for this level's losses (None: full precision); fp16 adds loss scaling."""
        self._autocast_dtype = dtype
        self._device_type = device_type
        self._grad_scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None

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
        values = dict(self._start_fn(self))
        missing = sorted(set(self.trainable_names) - set(values))
        if missing:
            raise KeyError(f"level '{self.name}': start map lacks parameters {missing}")
        return values

    def on_inner_loop_start(self) -> None:
        if self._start_fn is None:
            return
        values = self.start_values()
        with torch.no_grad():
            for name, p in zip(self.trainable_names, self.trainable_parameters()):
                p.copy_(values[name])
        self.optimizer.state.clear()  # each inner loop is a fresh optimisation

    def step_normal(self, global_step: int | None = None) -> None:
        # Betty records the global step only for bottom levels (in step()); uppers need it for logs and errors
        if global_step is not None:
            self._global_step = global_step
        super().step_normal(global_step=global_step)

    @property
    def count(self) -> int:
        return self._count

    @property
    def in_real_step(self) -> bool:
        """True while this level's own step computes its loss; False when the loss is recomputed by
        a hypergradient method. A loss may then skip graph it does not need (e.g. through upper
        parameters, which a real step never differentiates) and reuse values across the
        recomputations of one hypergradient through :attr:`hop_cache`, which the engine empties
        after every hypergradient."""
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
        return _to_device(self._source(self), self.device)

    def loss(self, batch: Any) -> Tensor | Mapping[str, Any]:
        """The level's loss on ``batch``; override in subclasses or pass ``loss=``."""
        return self._loss_fn(self, batch)

    def training_step(self, batch: Any) -> Tensor | Mapping[str, Any]:
        return self.loss(batch)

    def before_step(self, batch: Any) -> None:
        """Hook run at the start of every real step (e.g. a discriminator update)."""

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
        if state is None:
            yield
            return
        cpu, cuda = state
        devices = [torch.device(self.device)] if cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, torch.device(self.device))
            yield

    def _loss_output(self, batch: Any) -> Tensor | Mapping[str, Any]:
        """The loss (or loss dict) under autocast; outside the real step it replays that step's random state."""
        replay = None if self._in_real_step else self.last_step_rng
        with self._rng(replay), self._autocast():
            return self.training_step(batch)

    def training_step_exec(self, batch: Any) -> Tensor:
        """The scalar loss on ``batch`` (what Betty's hypergradient functions recompute)."""
        out = self._loss_output(batch)
        return out["loss"] if isinstance(out, Mapping) else out

    def functional_loss(self, values: list[Tensor], buffers: dict[str, Tensor], batch: Any, rng: RngState) -> Tensor:
        """The loss with the trainable parameters replaced by ``values`` and buffers by ``buffers``."""
        swap = {f"m.{n}": v for n, v in zip(self.trainable_names, values)}
        swap.update({f"m.{n}": b for n, b in buffers.items()})
        with self._rng(rng), self._autocast():
            return torch.func.functional_call(_LossModule(self), swap, (batch,), strict=False)

    def get_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        out = self._loss_output(batch)
        loss = out["loss"] if isinstance(out, Mapping) else out
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteError(self.name, self.global_step, "loss", value)
        logged = {"loss": value}
        if isinstance(out, Mapping):
            logged.update({k: float(v.detach()) if torch.is_tensor(v) else v for k, v in out.items() if k != "loss"})
        if self._grad_scaler is not None:
            loss = self._grad_scaler.scale(loss)
        return loss, logged

    # ------------------------------------------------------------------ one step
    def one_step_descent(self, batch: Any = None) -> dict[str, float]:
        if batch is None:
            self.cur_batch = self.get_batch()
            batch = self.cur_batch
        self.before_step(batch)
        self.last_step_rng = self._capture_rng()
        self._in_real_step = True
        try:
            loss, logged = self.get_loss(batch)
        finally:
            self._in_real_step = False
        self.backward(loss, self.trainable_parameters(), self._paths)
        del loss
        hook = METHODS[self.hypergrad].on_lower_step if self.hypergrad in METHODS else None
        if hook is not None and self._parents:
            hook(self, batch)
        if self.is_implemented("grad_callback"):
            self.grad_callback()
        self.optimizer_step()
        if self.is_implemented("param_callback"):
            self.param_callback()
        self.zero_grad()
        self._log(logged)
        return logged

    def backward(self, loss: Tensor, params: list[Tensor], paths: list, **_: Any) -> None:
        """Direct gradient plus one hypergradient per path, formed without DDP hooks."""
        direct = torch.autograd.grad(loss, params, retain_graph=bool(paths), allow_unused=True)
        indirect: list[Tensor] | None = None
        for i, path in enumerate(paths):
            hop = get_grads(loss, path, i < len(paths) - 1, False)
            hop = [torch.zeros_like(p) if g is None else g for g, p in zip(hop, params)]
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
        if self.hypergrad == "sama":  # Betty's SAMA preconditioner reads the last raw gradient
            for p in params:
                state = self.optimizer.state.get(p)
                if state:
                    state["last_grad"] = p.grad.detach().clone()

    def _log(self, logged: dict[str, float]) -> None:
        entry = {"level": self.name, "step": self.global_step, "local_step": self._count, **logged}
        entry["lr"] = float(self.optimizer.param_groups[0]["lr"])
        entry.update(self.diagnostics)
        self.step_log.append(entry)

    def probe(self) -> Tensor:
        """A tensor summarising this level's output, for regression goldens."""
        if self._probe_fn is not None:
            return self._probe_fn(self).detach().float()
        return torch.cat([p.detach().float().flatten() for p in self.trainable_parameters()])

    # ------------------------------------------------------------------ state
    def extra_state_dict(self) -> dict[str, Any]:
        """Subclass hook: more state to checkpoint (e.g. an auxiliary optimizer)."""
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
            inner_loop_start=self._inner_loop_start,
            data=source_state() if callable(source_state) else None,
            method_state={k: v for k, v in self.method_state.items() if k != "replay_warned"},
            diagnostics=dict(self.diagnostics),
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
        self._inner_loop_start = bool(state["inner_loop_start"])
        loader = getattr(self._source, "load_state_dict", None)
        if callable(loader) and state.get("data") is not None:
            loader(state["data"])
        self.method_state = dict(state.get("method_state", {}))
        self.diagnostics = dict(state.get("diagnostics", {}))
        self.load_extra_state_dict(state.get("extra", {}))

    def __repr__(self) -> str:
        return f"Level({self.name!r}, hypergrad={self.hypergrad!r}, unroll={self.unroll})"


def _to_device(batch: Any, device: Any) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
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
