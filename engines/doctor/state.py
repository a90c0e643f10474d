"""Saving and restoring the complete state of a graph, so the doctor can re-run steps and leave no trace.

The doctor re-runs real steps of the lower levels (to record the window an upper level's
hypergradient differentiates through, and again with perturbed upper parameters for the
finite-difference check). Every re-run starts from a :class:`GraphState` and the graph is put
back into it afterwards, bit for bit:

* what a checkpoint holds, per level (``Level.state_dict``: module, optimizer, scheduler,
  counters, data position, held batch, method state, subclass extras), deep-copied;
* every buffer of every level's module (also non-persistent ones), every parameter's ``.grad`` and
  every submodule's train/eval mode;
* the level's in-memory attributes (recorded windows, last hypergradients, logs, warning sets,
  readiness flags...), with their containers copied so that appends during a re-run do not leak;
* the global random generators (Python, NumPy, torch CPU and CUDA) and the engine's global step.

A state is only taken *at rest* (:func:`at_rest`: every level below an upper level has completed
its inner loop), the same condition under which the runner writes checkpoints: restoring a data
source then re-opens it at the saved position, which crash-exact resume already relies on.
State outside the levels (a module a loss reads but no level owns) is not saved.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from ..checkpoint import rng_state, set_rng_state
from ..level import Level, _to_device
from ..topology import Topology

__all__ = ["GraphState", "at_rest", "float64_graph", "level_attributes", "restore_attributes"]

# attributes that Level.load_state_dict sets from the checkpoint dict but that hold in-memory values
# (the batch of the last step, its random state...) the restore must put back as they were
_AFTER_LOAD = ("cur_batch", "hold_batch", "_checked_loss", "last_step_rng", "_last_raw_batch")


# attributes a restore leaves alone: observers are attached and detached by whoever added them
_UNTOUCHED = ("step_observers",)


def at_rest(graph: Topology) -> bool:
    """True when every level below an upper level has completed its inner loop (as :meth:`Runner.at_rest`)."""
    return all(lv.count % lv.unroll == 0 for name, lv in graph.levels.items() if graph.uppers(name))


def _copy_container(value: Any) -> Any:
    """One level deeper than a reference: lists, dicts, sets and dataclass instances get new containers."""
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, set):
        return set(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = copy.copy(value)
        for f in dataclasses.fields(value):
            inner = getattr(value, f.name)
            if isinstance(inner, (list, dict, set)):
                object.__setattr__(out, f.name, _copy_container(inner))
        return out
    return value


@dataclasses.dataclass
class _LevelState:
    checkpoint: dict[str, Any]
    attributes: dict[str, Any]
    buffers: list[tuple[torch.nn.Module, str, torch.Tensor]]
    grads: list[tuple[torch.nn.Parameter, torch.Tensor | None]]
    modes: list[tuple[torch.nn.Module, bool]]


class GraphState:
    """A complete copy of a graph's state; :meth:`restore` puts it back exactly (any number of times)."""

    def __init__(self, graph: Topology):
        self.graph = graph
        self.levels = {name: self._take(level) for name, level in graph.levels.items()}
        self.rng = copy.deepcopy(rng_state())
        engine = graph.engine
        self.engine_step = getattr(engine, "global_step", None)

    @staticmethod
    def _take(level: Level) -> _LevelState:
        checkpoint = copy.deepcopy(level.state_dict())
        attributes = {k: _copy_container(v) for k, v in vars(level).items() if k not in _UNTOUCHED}
        attributes["method_state"] = copy.deepcopy(level.method_state)
        buffers = [
            (module, name, buffer.detach().clone())
            for module in level.module.modules()
            for name, buffer in module._buffers.items()
            if buffer is not None
        ]
        grads = [(p, None if p.grad is None else p.grad.detach().clone()) for p in level.module.parameters()]
        modes = [(module, module.training) for module in level.module.modules()]
        return _LevelState(checkpoint, attributes, buffers, grads, modes)

    def restore(self) -> None:
        """Put every level, the random generators and the engine's step back as they were when taken."""
        for name, level in self.graph.levels.items():
            self._put(level, self.levels[name])
        set_rng_state(copy.deepcopy(self.rng))
        if self.graph.engine is not None and self.engine_step is not None:
            self.graph.engine.global_step = self.engine_step

    @staticmethod
    def _put(level: Level, saved: _LevelState) -> None:
        # 1. in-memory attributes (new containers each time: the state may be restored again)
        for key in [k for k in vars(level) if k not in saved.attributes and k not in _UNTOUCHED]:
            delattr(level, key)
        for key, value in saved.attributes.items():
            setattr(level, key, _copy_container(value))
        # 2. what a checkpoint holds, from a fresh copy: optimizers keep the loaded state tensors themselves
        level.load_state_dict(copy.deepcopy(saved.checkpoint))
        # 3. what load_state_dict sets from the checkpoint but was in memory before
        for key in _AFTER_LOAD:
            if key in saved.attributes:
                setattr(level, key, saved.attributes[key])
        level.method_state = copy.deepcopy(saved.attributes["method_state"])
        with torch.no_grad():
            for module, name, value in saved.buffers:
                current = module._buffers.get(name)
                if current is None or current.dtype != value.dtype or current.shape != value.shape:
                    module._buffers[name] = value.clone()
                else:
                    current.copy_(value)
        for p, grad in saved.grads:
            p.grad = None if grad is None else grad.clone()
        for module, training in saved.modes:
            module.training = training


def _optimizers(level: Level) -> list[torch.optim.Optimizer]:
    """Every optimizer a level holds as an attribute (its own, and e.g. a discriminator's)."""
    seen: dict[int, torch.optim.Optimizer] = {}
    for value in vars(level).values():
        if isinstance(value, torch.optim.Optimizer):
            seen.setdefault(id(value), value)
    return list(seen.values())


def _double(t: torch.Tensor) -> torch.Tensor:
    """Floating tensors to float64, complex ones to complex128, others unchanged."""
    if t.is_floating_point():
        return t.to(torch.float64)
    if t.is_complex():
        return t.to(torch.complex128)
    return t


def _to_float64(value: Any) -> Any:
    if torch.is_tensor(value):
        return _double(value)
    if isinstance(value, dict):
        return {k: _to_float64(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_float64(v) for v in value]
    return value


@contextlib.contextmanager
def float64_graph(graph: Topology) -> Iterator[None]:
    """Run the block with every level in double precision: modules (parameters and buffers), optimizer
    states, method states and held batches converted, new batches cast, autocast off, default dtype
    float64. The caller restores values from a :class:`GraphState` taken before; on exit this puts the
    original dtypes back (values then come from that state)."""
    dtypes: list[tuple[Any, ...]] = []
    default = torch.get_default_dtype()
    try:
        for level in graph.levels.values():
            for p in level.module.parameters():
                dtypes.append(("param", p, p.dtype))
            for module in level.module.modules():
                for name, buffer in module._buffers.items():
                    if buffer is not None:
                        dtypes.append(("buffer", module, name, buffer.dtype))
        with torch.no_grad():
            for entry in dtypes:
                if entry[0] == "param":
                    entry[1].data = _double(entry[1].data)
                    entry[1].grad = None  # restored, with the values, from the caller's GraphState
                else:
                    _, module, name, _ = entry
                    module._buffers[name] = _double(module._buffers[name])
        for level in graph.levels.values():
            for optimizer in _optimizers(level):
                optimizer.load_state_dict(optimizer.state_dict())  # casts the state to the parameters' dtype
            level.method_state = _to_float64(level.method_state)
            if level.hold_batch and level.cur_batch is not None:
                level.cur_batch = _to_device(level.cur_batch, level.device, torch.float64)
            level._last_raw_batch = None
            level._float64 = True
            level._autocast_dtype = None
            level._grad_scaler = None
        torch.set_default_dtype(torch.float64)
        yield
    finally:
        torch.set_default_dtype(default)
        with torch.no_grad():
            for entry in dtypes:
                if entry[0] == "param":
                    _, p, dtype = entry
                    p.data = p.data.to(dtype)
                    if p.grad is not None:
                        p.grad = None
                else:
                    _, module, name, dtype = entry
                    buffer = module._buffers.get(name)
                    if buffer is not None:
                        module._buffers[name] = buffer.to(dtype)


def level_attributes(graph: Topology) -> dict[str, dict[str, Any]]:
    """Every level's attributes (containers copied): what :func:`restore_attributes` puts back, e.g. to
    return a graph the doctor had to build to the unbuilt state a runner expects."""
    return {
        name: {k: _copy_container(v) for k, v in vars(level).items() if k not in _UNTOUCHED}
        for name, level in graph.levels.items()
    }


def restore_attributes(graph: Topology, saved: dict[str, dict[str, Any]]) -> None:
    """Put back what :func:`level_attributes` took (attributes added since are removed)."""
    for name, level in graph.levels.items():
        attributes = saved[name]
        for key in [k for k in vars(level) if k not in attributes and k not in _UNTOUCHED]:
            delattr(level, key)
        for key, value in attributes.items():
            setattr(level, key, _copy_container(value))
