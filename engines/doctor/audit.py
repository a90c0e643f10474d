"""Auditing a run: every N upper steps, the active method's hypergradient against the reference.

``Runner(audit_every=N)`` audits the first step of every upper level and every N-th after it
(local steps 1, N+1, 2N+1, ...). For an audited step:

1. at the last state at rest before it (the start of its window) the auditor takes a
   :class:`engines.doctor.state.GraphState` and starts recording the window
   (:class:`engines.doctor.window.Recorder`);
2. when the upper level forms its gradient in the real step, right after the configured methods
   produced its hypergradients, the reference (``exact`` through the recorded window) is formed
   at that same state, with every random generator, buffer and cache left as it was;
3. after the global step, the reference's trust is measured by central finite differences along
   the reference's own direction (two re-runs of the window from the saved start; more directions
   with ``fd_directions``), and the graph is restored to the state the real run reached.

Logged on the upper level's metrics line (and TensorBoard) as ``audit``: per path ``cosine``,
``norm_ratio`` (active / reference), ``ratio_to_direct`` (active / direct gradient) and
``reference_trust`` (relative disagreement of the finite differences with the reference total),
plus ``total``. A :class:`RuntimeWarning`, once per path, names the level, path and method and
suggests what to try when the cosine is below ``cosine_floor`` or the hypergradient is below
``ratio_floor`` of the direct gradient.

The audit does not change the run: a seeded run with auditing ends bitwise equal to one without it
(tested), data position and random state included. It needs data sources that can save and restore
their position (a ``DataStream``, an ``IterableSource``, or a source with ``state_dict``): a plain
iterator is refused at start; a callable source is assumed to be a function of the graph's state,
and the finite-difference re-runs check that they drew the same batches.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..hypergrad.paths import path_label
from ..level import Level
from ..topology import Topology
from .finite_difference import agreement, directions, finite_differences
from .reference import reference, step_vectors
from .report import compare
from .state import GraphState, at_rest
from .window import DoctorError, Recorder, step_bound, through_levels, upper_paths

__all__ = ["AuditSettings", "Auditor", "advice"]


@dataclass(frozen=True)
class AuditSettings:
    """How ``Runner(audit_every=N)`` audits.

    Attributes:
        cosine_floor: warn when a path's cosine with the reference is below this.
        ratio_floor: warn when a path's hypergradient norm is below this fraction of the direct gradient's.
        trust: measure the reference's trust by finite differences (two re-runs of the window per direction).
        fd_directions: random directions besides the reference's own (0: only the reference's).
        fd_eps: finite-difference step relative to ``max(1, ||upper parameters||)`` (None: by dtype).
        uppers: the upper levels to audit (None: every level with hypergradient paths).
        seed: seeds the random directions (the run's generators are not touched).
    """

    cosine_floor: float = 0.5
    ratio_floor: float = 1e-3
    trust: bool = True
    fd_directions: int = 0
    fd_eps: float | None = None
    uppers: tuple[str, ...] | None = None
    seed: int = 0


_FAMILIES = {
    "cg": "implicit",
    "cg_warm": "implicit",
    "neumann": "implicit",
    "betty_cg": "implicit",
    "darts": "finite_difference",
    "sama": "finite_difference",
    "one_step": "one_step",
    "exact": "exact",
    "first_order": "first_order",
    "penalty": "penalty",
}
_ADVICE = {
    "implicit": "implicit methods assume the lower level is at its optimum; far from it (few or early lower "
    "steps, an adaptive optimizer) try exact or one_step",
    "finite_difference": "darts and sama ignore the lower optimizer's step size and preconditioner (and weigh each "
    "hop of a chain by 1/lr); try one_step or exact",
    "one_step": "one_step differentiates only the last of the lower steps; try exact (all of them)",
    "exact": "exact truncated to fewer steps than the inner loop misses the rest; raise its truncate option",
    "first_order": "first_order drops the second-order term; try exact or one_step",
    "penalty": "the penalty term is small against the upper loss at this λ; raise the lam option (or its growth) "
    "or use a hypergradient method such as exact",
}


def advice(methods: Sequence[str]) -> str:
    """What to try instead of ``methods`` (the methods of a path's hops)."""
    families = list(dict.fromkeys(_FAMILIES.get(m, "") for m in methods))
    tips = [_ADVICE[f] for f in families if f in _ADVICE]
    return (
        "; ".join(tips) + ("; " if tips else "") + "engines.diagnose(graph) (recipes: --doctor) compares every method"
    )


@dataclass
class _Armed:
    upper: Level
    paths: list
    start: GraphState | None
    recorder: Recorder
    observer: Any
    result: dict[str, Any] | None = None


class Auditor:
    """The runner's auditor (see the module docstring); :meth:`before_step` and :meth:`after_step` wrap every
    global step."""

    def __init__(self, graph: Topology, every: int, settings: AuditSettings | None = None):
        self.graph = graph
        self.every = int(every)
        self.settings = settings or AuditSettings()
        self._armed: dict[str, _Armed] = {}
        self._warned: set[tuple[str, str, str]] = set()
        self.audits: list[dict[str, Any]] = []
        self.seconds = 0.0  # wall time spent auditing (snapshots, recording, reference, trust)

    # ------------------------------------------------------------------ start
    def check(self, world_size: int) -> None:
        """Refuse what the audit cannot do without changing the run, before any training."""
        if world_size > 1:
            raise DoctorError(
                "audit_every is not supported under torch.distributed (the audit re-runs steps); audit a "
                "single-process run"
            )
        paths = self.graph.paths()
        wanted = list(self.settings.uppers) if self.settings.uppers is not None else [n for n in paths if paths[n]]
        for name in wanted:
            if name not in self.graph.levels or not paths.get(name):
                raise DoctorError(
                    f"audit: level '{name}' is not an upper level with hypergradient paths; those are {sorted(paths)}"
                )
        for name, level in self.graph.levels.items():
            source = level._source
            if source is not None and not getattr(source, "restorable", True):
                raise DoctorError(
                    f"audit_every: level '{name}' reads from an iterator that cannot save and restore its position, "
                    "so re-running its steps would change the data the run sees; wrap the data in engines.DataStream "
                    "or engines.IterableSource"
                )
        self.uppers = wanted

    # ------------------------------------------------------------------ around every global step
    def before_step(self) -> None:
        """At a state at rest, start (or restart) recording the window of every upper level whose next step is due."""
        t0 = time.perf_counter()
        try:
            self._before_step()
        finally:
            self.seconds += time.perf_counter() - t0

    def after_step(self) -> None:
        """Finish the audits whose upper level stepped in this global step."""
        t0 = time.perf_counter()
        try:
            self._after_step()
        finally:
            self.seconds += time.perf_counter() - t0

    def _before_step(self) -> None:
        if not at_rest(self.graph):
            return
        for name in self.uppers:
            upper = self.graph[name]
            if upper.count % self.every != 0 or not self._warmed_up(upper):
                self._disarm(name)
                continue
            self._disarm(name)
            self._arm(upper)

    def _after_step(self) -> None:
        for name in list(self._armed):
            armed = self._armed[name]
            if armed.result is None:
                continue
            self._disarm(name)
            entry = self._finish(armed)
            self.audits.append({"level": name, **entry})

    # ------------------------------------------------------------------ internals
    def _warmed_up(self, upper: Level) -> bool:
        return all(lv.count + lv.unroll > lv.warmup_steps for lv in through_levels(upper_paths(upper)))

    def _arm(self, upper: Level) -> None:
        paths = upper_paths(upper)
        recorder = Recorder(self.graph, through_levels(paths))
        start = GraphState(self.graph) if self.settings.trust else None
        armed = _Armed(upper, paths, start, recorder, None)

        def observer(level: Level, batch: Any, logged: dict[str, Any]) -> None:
            if armed.result is None:
                t0 = time.perf_counter()
                try:
                    armed.result = self._at_step(armed, batch)
                except Exception as err:  # an audit that fails is reported; it never stops the run
                    armed.result = {"step": upper.global_step, "error": f"{type(err).__name__}: {err}"}
                self.seconds += time.perf_counter() - t0

        armed.observer = observer
        recorder.attach()
        upper.step_observers.append(observer)
        self._armed[upper.name] = armed

    def _disarm(self, name: str) -> None:
        armed = self._armed.pop(name, None)
        if armed is None:
            return
        armed.recorder.detach()
        if armed.observer in armed.upper.step_observers:
            armed.upper.step_observers.remove(armed.observer)

    def _at_step(self, armed: _Armed, batch: Any) -> dict[str, Any]:
        """In the real step, after the configured hypergradients: the reference at the same state."""
        upper = armed.upper
        with _untouched(self.graph):
            vectors = step_vectors(upper, armed.paths, batch)
            ref = reference(armed.paths, vectors, armed.recorder.trajectories, armed.recorder.incomplete())
        active = {label: list(upper.hypergradients[label]) for label in map(path_label, armed.paths)}
        return {
            "step": upper.global_step,
            "vectors": vectors,
            "reference": ref,
            "active": active,
            "batches": list(armed.recorder.batches),
        }

    def _finish(self, armed: _Armed) -> dict[str, Any]:
        upper, result = armed.upper, armed.result
        entry = self._log_entry(upper, result["step"])
        if "error" in result:
            audit = {"unavailable": f"the audit failed: {result['error']}"}
            if entry is not None:
                entry["audit"] = audit
            warnings.warn(
                f"hypergradient audit at global step {result['step']}: level '{upper.name}': {audit['unavailable']}",
                RuntimeWarning,
                stacklevel=4,
            )
            return {"step": result["step"], "audit": audit}
        ref, vectors, active = result["reference"], result["vectors"], result["active"]
        if ref.paths is None:
            audit = {"unavailable": ref.reason}
            if entry is not None:
                entry["audit"] = audit
            return {"step": result["step"], "audit": audit}
        ref_total = _sum(vectors.direct, ref.paths.values())
        trust = None
        if armed.start is not None and at_rest(self.graph):
            trust = self._trust(armed, ref_total, result["batches"])
        direct_norm = compare(vectors.direct, vectors.direct).norm
        audit: dict[str, Any] = {}
        for label, grads in active.items():
            c = compare(grads, ref.paths[label])
            audit[label] = {
                "cosine": c.cosine,
                "norm_ratio": c.norm_ratio,
                "ratio_to_direct": c.norm / direct_norm if direct_norm > 0 else None,
                "reference_trust": trust,
            }
        total = compare(_sum(vectors.direct, active.values()), ref_total)
        audit["total"] = {"cosine": total.cosine, "norm_ratio": total.norm_ratio, "reference_trust": trust}
        if entry is not None:
            entry["audit"] = audit
        self._warn(upper, armed.paths, audit, result["step"])
        return {"step": result["step"], "audit": audit}

    def _trust(self, armed: _Armed, ref_total: list[Tensor], batches: list) -> float | None:
        upper = armed.upper
        reached = GraphState(self.graph)
        others = list(self._armed.values())  # audits still waiting must not see the re-runs
        for other in others:
            other.recorder.detach()
            other.upper.step_observers.remove(other.observer)
        dirs, kinds = directions(
            list(upper.trainable_parameters()), ref_total, self.settings.fd_directions, self.settings.seed
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                check = finite_differences(
                    self.graph,
                    upper,
                    armed.start,
                    dirs,
                    kinds,
                    eps=self.settings.fd_eps,
                    max_steps=step_bound(self.graph, upper),
                    expected_batches=batches,
                    recorder_factory=lambda: Recorder(self.graph, []),
                )
        except Exception as err:  # a re-run that fails (e.g. non-finite at the perturbed point) voids the check
            warnings.warn(
                f"audit: level '{upper.name}': the finite-difference check failed ({type(err).__name__}: {err}); "
                "the reference's trust is not measured at this step",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        finally:
            reached.restore()
            for other in others:
                other.recorder.attach()
                other.upper.step_observers.append(other.observer)
        if check.reproducible is not None:
            warnings.warn(
                f"audit: level '{upper.name}': re-running its window drew different data ({check.reproducible}); a "
                "data source keeps state the engine cannot save, so the audit's finite-difference check is void",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        return agreement(check, ref_total)

    def _log_entry(self, upper: Level, step: int) -> dict[str, Any] | None:
        for entry in reversed(upper.step_log):
            if entry.get("step") == step:
                return entry
        return None

    def _warn(self, upper: Level, paths: list, audit: dict[str, Any], step: int) -> None:
        for path in paths:
            label = path_label(path)
            methods = [curr.method_through(prev)[0] for curr, prev in itertools.pairwise(path[1:])]
            values = audit[label]
            named = f"level '{upper.name}', path '{label}', method {'/'.join(dict.fromkeys(methods))}"
            cosine, ratio = values["cosine"], values["ratio_to_direct"]
            if cosine is not None and cosine < self.settings.cosine_floor:
                self._warn_once(
                    (upper.name, label, "cos"),
                    f"hypergradient audit at global step {step}: {named}: cosine {cosine:.3f} with the reference "
                    f"(exact through the window; finite-difference disagreement {_fmt(values['reference_trust'])}) is "
                    f"below {self.settings.cosine_floor:g}; {advice(methods)}",
                )
            if ratio is not None and ratio < self.settings.ratio_floor:
                self._warn_once(
                    (upper.name, label, "ratio"),
                    f"hypergradient audit at global step {step}: {named}: the hypergradient is {ratio:.2e} of the "
                    f"direct gradient (below {self.settings.ratio_floor:g}): the bilevel structure carries no "
                    f"measurable signal along this path; {advice(methods)}",
                )

    def _warn_once(self, key: tuple[str, str, str], message: str) -> None:
        """One warning per (upper level, path, kind) for the whole run."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=5)


def _fmt(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2e}"


def _sum(direct: list[Tensor], parts: Any) -> list[Tensor]:
    total = [d.clone() for d in direct]
    for grads in parts:
        total = [t + g.to(t.dtype) for t, g in zip(total, grads)]
    return total


@contextlib.contextmanager
def _untouched(graph: Topology) -> Iterator[None]:
    """Computations inside leave every generator, buffer, cache and warning set of the graph as it was."""
    levels = list(graph.levels.values())
    kept = ("hop_cache", "_replay_warned", "_warned_hops")
    saved = [(lv, {k: copy.copy(vars(lv)[k]) for k in kept if k in vars(lv)}) for lv in levels]
    py, np_state = random.getstate(), np.random.get_state()
    devices = [torch.device(lv.device) for lv in levels[:1] if torch.device(lv.device).type == "cuda"]
    try:
        with (
            torch.random.fork_rng(devices=devices),
            warnings.catch_warnings(),
            contextlib.ExitStack() as frozen,
        ):
            warnings.simplefilter("ignore")
            for lv in levels:
                frozen.enter_context(lv._frozen_buffers())
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        for lv, attributes in saved:
            for key in kept:
                if key in attributes:
                    setattr(lv, key, attributes[key])
                elif key in vars(lv):
                    delattr(lv, key)
