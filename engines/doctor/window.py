"""Recording the window an upper level's hypergradient differentiates through, and driving a graph to the
moment that upper level forms its gradient.

A *window* is what happened between an upper level's previous step and its next one: the real
steps of the levels below it. The doctor needs two things from it:

* for every level a hypergradient path passes through, its last inner loop (``unroll`` real steps):
  the parameters, buffers and optimizer state at its start, and for each step the batch, the random
  state, the learning rates and the hypergradient the level received from levels below it — exactly
  what ``exact`` replays (:class:`engines.hypergrad.unrolled.Trajectory`), recorded here for the
  full inner loop whatever truncation the graph's own methods use;
* the batches every level drew, in order, so that re-runs of the window can be checked to see
  the same data.

:func:`drive_to_step` runs global steps exactly as the runner does until the upper level has formed
its gradient, calls a function there, and stops before the update (the caller restores a
:class:`engines.doctor.state.GraphState` afterwards).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..errors import GraphError
from ..hypergrad import diff_optim
from ..hypergrad.finite_difference import record_one_step
from ..hypergrad.unrolled import RecordedStep, Trajectory
from ..level import Level
from ..topology import Topology

__all__ = ["DoctorError", "Recorder", "drive_to_step", "step_bound", "through_levels", "upper_paths"]


class DoctorError(GraphError):
    """The doctor cannot examine this graph or level as asked (named in the message)."""


def upper_paths(upper: Level) -> list[list[Any]]:
    """The hypergradient paths of ``upper`` (Betty's form ``[upper, l_1, ..., l_n, upper]``)."""
    return list(upper._paths)


def through_levels(paths: Sequence[Sequence[Any]]) -> list[Level]:
    """The levels the paths pass through (each once, in order of first appearance)."""
    seen: dict[str, Level] = {}
    for path in paths:
        for level in path[1:-1]:
            seen.setdefault(level.name, level)
    return list(seen.values())


def step_bound(graph: Topology, upper: Level) -> int:
    """Global steps within which ``upper`` must step from any state at rest: every warm-up plus two
    inner loops of every level below it, multiplied along the chain."""
    below = [graph[n] for n in graph.levels if n != upper.name and _is_below(graph, n, upper.name)]
    loops = 1
    for level in below:
        loops *= level.unroll
    return 2 * loops + sum(level.warmup_steps for level in below) * loops + 1


def _is_below(graph: Topology, name: str, upper: str) -> bool:
    todo, seen = list(graph.uppers(name)), set()
    while todo:
        current = todo.pop()
        if current == upper:
            return True
        if current not in seen:
            seen.add(current)
            todo.extend(graph.uppers(current))
    return False


class Recorder:
    """Observes real steps: the full last inner loop of each level in ``windows``, every level's batches,
    and (``one_step=True``) the pre-step record ``one_step`` differentiates, on the window levels."""

    def __init__(self, graph: Topology, windows: Sequence[Level], *, one_step: bool = False):
        self.graph = graph
        self.window_levels = list(windows)
        self.one_step = one_step
        self.trajectories: dict[str, Trajectory] = {}
        self.one_step_errors: dict[str, str] = {}
        self.batches: list[tuple[str, Any]] = []
        self._attached: list[tuple[Level, Callable]] = []

    def reset_batches(self) -> None:
        self.batches = []

    def _window(self, level: Level, batch: Any, logged: dict[str, Any]) -> None:
        if (level.count - 1) % level.unroll == 0:  # first step of an inner loop: snapshot where it starts
            params = level.trainable_parameters()
            self.trajectories[level.name] = Trajectory(
                values=[p.detach().clone() for p in params],
                buffers={n: b.detach().clone() for n, b in level.module.named_buffers()},
                optimizer_state=diff_optim.snapshot_state(level.optimizer, params),
                from_inner_loop_start=True,
            )
        trajectory = self.trajectories.get(level.name)
        if trajectory is not None:
            indirect = level.last_indirect_grads
            trajectory.steps.append(
                RecordedStep(
                    batch=batch,
                    rng=level.last_step_rng,
                    indirect=None if indirect is None else [g.detach() for g in indirect],
                    hyper=diff_optim.group_settings(level.optimizer),
                )
            )
        if self.one_step:
            try:
                record_one_step(level, batch)
            except TypeError as err:  # an optimizer without a closed-form update Jacobian
                self.one_step_errors[level.name] = str(err)

    def _batch(self, level: Level, batch: Any, logged: dict[str, Any]) -> None:
        self.batches.append((level.name, batch))

    def attach(self) -> None:
        for level in self.graph.levels.values():
            self._add(level, self._batch)
        for level in self.window_levels:
            self._add(level, self._window)

    def _add(self, level: Level, fn: Callable) -> None:
        level.step_observers.append(fn)
        self._attached.append((level, fn))

    def detach(self) -> None:
        for level, fn in self._attached:
            if fn in level.step_observers:
                level.step_observers.remove(fn)
        self._attached = []

    @contextlib.contextmanager
    def attached(self) -> Iterator[Recorder]:
        self.attach()
        try:
            yield self
        finally:
            self.detach()

    def incomplete(self) -> dict[str, str]:
        """Levels whose full inner loop was not recorded, with the reason."""
        out = {}
        for level in self.window_levels:
            trajectory = self.trajectories.get(level.name)
            found = 0 if trajectory is None else len(trajectory.steps)
            if found != level.unroll:
                out[level.name] = (
                    f"{found} of the {level.unroll} steps of its last inner loop were recorded (the doctor started "
                    "recording mid inner loop)"
                )
        return out


def same_batches(first: Sequence[tuple[str, Any]], second: Sequence[tuple[str, Any]]) -> str | None:
    """None if two runs of a window drew identical batches, level by level; else where they differ."""
    if [n for n, _ in first] != [n for n, _ in second]:
        return "the levels stepped in a different order"
    for index, ((name, a), (_, b)) in enumerate(zip(first, second)):
        if not _equal(a, b):
            return f"level '{name}' drew a different batch at its {index + 1}-th step of the window"
    return None


def _equal(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dict__") and hasattr(b, "__dict__") and type(a) is type(b):
        return _equal(vars(a), vars(b))
    try:
        return bool(a == b)
    except Exception:  # an object without a usable equality: cannot be told apart
        return True


class _Reached(Exception):
    """Carries the value computed where the upper level formed its gradient out of the step."""

    def __init__(self, value: Any):
        super().__init__("upper level reached")
        self.value = value


def drive_to_step(
    graph: Topology,
    upper: Level,
    at_step: Callable[[Level, Any, dict[str, Any]], Any],
    *,
    max_steps: int,
    on_boundary: Callable[[], None] | None = None,
    hops: bool = False,
) -> Any:
    """Run global steps until ``upper`` has formed its gradient; return ``at_step(upper, batch, logged)``.

    ``hops=False`` leaves the upper level's own hypergradient out of that step (only its direct
    gradient is formed; the doctor computes hypergradients itself). ``on_boundary`` runs before
    every global step. The graph is left mid-step: restore a ``GraphState`` afterwards.
    """
    engine = graph.engine

    def observer(level: Level, batch: Any, logged: dict[str, Any]) -> None:
        raise _Reached(at_step(level, batch, logged))

    paths, checked = upper._paths, upper._checked_loss
    upper.step_observers.append(observer)
    if not hops:
        upper._paths, upper._checked_loss = [], True
    try:
        for _ in range(max_steps):
            if on_boundary is not None:
                on_boundary()
            engine.global_step += 1
            engine.train_step()
    except _Reached as reached:
        return reached.value
    finally:
        upper._paths, upper._checked_loss = paths, checked
        if observer in upper.step_observers:
            upper.step_observers.remove(observer)
    raise DoctorError(
        f"level '{upper.name}' did not step within {max_steps} global steps from here (warm-up, unroll or a "
        "lower level that never completes its inner loop)"
    )
