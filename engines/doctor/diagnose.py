"""``engines.diagnose``: does each hypergradient method carry the true signal on *this* graph, now?

For every upper level (a level with hypergradient paths), from the graph's current state (or a
checkpoint), at rest:

1. the real steps of the window are run (as the runner would run them next), recording what the
   reference replays (:mod:`engines.doctor.window`); where the upper level would form its gradient,
   the run stops and
2. the reference is formed (``exact`` through the whole window, :mod:`engines.doctor.reference`) and
   every candidate method's hypergradient is computed at the same state, timed and measured
   (:mod:`engines.doctor.methods`);
3. the window is re-run with the upper parameters moved along a few directions: central finite
   differences of the upper loss, the reference's trust (:mod:`engines.doctor.finite_difference`);
4. the graph is put back exactly as it was (:mod:`engines.doctor.state`), so a run continues as if
   nothing happened.

By default everything is done in float64 (modules, optimizer states and batches converted for the
examination, then restored), so that the table measures the methods, not rounding; where a module or
loss cannot run in float64 the examination falls back to the run's own precision and says so.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import load_checkpoint, set_rng_state
from ..hypergrad.paths import path_label
from ..level import Level
from ..topology import Topology
from .finite_difference import FD_SCALES, FDCheck, agreement, directions, finite_differences, predictions
from .methods import Candidate, Computed, candidates, compute, median_seconds, unsupported_reason
from .reference import ReferenceResult, StepVectors, reference, step_vectors
from .report import TRUST_LEVELS, DoctorReport, MethodRow, ReferenceInfo, UpperReport, compare
from .state import GraphState, at_rest, float64_graph, level_attributes, restore_attributes
from .window import DoctorError, Recorder, drive_to_step, step_bound, through_levels, upper_paths

__all__ = ["diagnose"]


def diagnose(
    graph: Topology,
    *,
    uppers: Sequence[str] | None = None,
    methods: Sequence[Any] | None = None,
    rounds: int = 3,
    fd_directions: int = 2,
    fd_eps: float | None = None,
    dtype: str = "float64",
    threshold: float = 0.9,
    device: str | torch.device | None = None,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    command: str | None = None,
) -> DoctorReport:
    """Compare every applicable hypergradient method with a reference on the graph's next outer step.

    Args:
        graph: a graph, built (being run or run) or not (it is then built for the examination and
            returned to its unbuilt state, ready for a runner).
        uppers: the upper levels to examine (default: every level with hypergradient paths).
        methods: candidates: method names, or ``(label, method, options)`` for a variant, e.g.
            ``("cg/minres", "cg", {"curvature": "hessian", "solver": "minres"})`` (default: every
            registered method; ``penalty`` and ``betty_cg`` only when named).
        rounds: timed runs of each method (the median is reported).
        fd_directions: random directions of the finite-difference check, besides the reference's own
            (0 with no reference: no check).
        fd_eps: finite-difference step relative to ``max(1, ||upper parameters||)`` (default 1e-6 in
            float64, 3e-3 in float32).
        dtype: ``"float64"`` (examine in double precision) or ``"native"`` (the run's precision).
        threshold: the cosine a method must reach on every path and in total to be recommended.
        device: where to build an unbuilt graph (default cpu); a built graph stays where it runs.
        checkpoint: examine the state of this checkpoint (``checkpoint_latest.pt`` of a run) instead of
            the graph's current state; the graph's own state is restored afterwards.
        seed: seeds the random directions (the run's generators are not touched).
        max_steps: give up if an upper level has not stepped after this many global steps.
        command: the command line that produced the report (written into its Markdown).

    Returns:
        A :class:`engines.doctor.DoctorReport` (``.save(folder)`` writes ``hypergrad_doctor.{md,json,png}``).
    """
    _check_arguments(rounds, fd_directions, fd_eps, dtype, threshold, seed)
    chosen = candidates(methods)
    graph.validate()
    names = list(uppers) if uppers is not None else [n for n in graph.levels if graph.paths().get(n)]
    for name in names:
        if name not in graph.levels:
            raise DoctorError(f"diagnose: unknown upper level '{name}'; levels: {sorted(graph.levels)}")
        if not graph.paths().get(name):
            raise DoctorError(f"diagnose: level '{name}' has no hypergradient paths (no feeds edge from it)")
    if not names:
        raise DoctorError(f"diagnose: graph '{graph.name}' has no upper level with hypergradient paths")
    from ..run import build_engine, resolve_device  # here: engines.run imports this package (the audit)

    built_here = graph.engine is None
    unbuilt = level_attributes(graph) if built_here else None
    if built_here:
        where = resolve_device(device or "cpu")
        try:
            build_engine(graph, where)
        except BaseException:
            restore_attributes(graph, unbuilt)
            graph.engine = None
            raise
        for level in graph.levels.values():
            level.configure_precision(None, where.type)
    where = torch.device(graph.engine.device)
    original = GraphState(graph)
    try:
        if checkpoint is not None:
            _load(graph, Path(checkpoint), where)
        if not at_rest(graph):
            mid = {n: f"{lv.count % lv.unroll}/{lv.unroll}" for n, lv in graph.levels.items() if lv.count % lv.unroll}
            raise DoctorError(
                f"diagnose: graph '{graph.name}' is mid inner loop ({mid}); examine it between outer steps "
                "(e.g. where the runner writes checkpoints)"
            )
        graph.engine.train()
        base = GraphState(graph)
        settings = {
            "rounds": rounds,
            "fd_directions": fd_directions,
            "fd_eps": fd_eps,
            "dtype": dtype,
            "threshold": threshold,
            "seed": seed,
        }
        reports = []
        for name in names:
            upper = graph[name]
            bound = max_steps if max_steps is not None else step_bound(graph, upper)
            reports.append(_upper(graph, upper, base, chosen, where, bound, settings))
            base.restore()
    finally:
        original.restore()
        if built_here:
            restore_attributes(graph, unbuilt)
            graph.engine = None
    return DoctorReport(
        graph.name,
        reports,
        {**settings, "methods": [c.label for c in chosen], "device": str(where), "command": command},
    )


def _check_arguments(rounds: Any, fd_directions: Any, fd_eps: Any, dtype: Any, threshold: Any, seed: Any) -> None:
    for name, value, low in (("rounds", rounds, 1), ("fd_directions", fd_directions, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"diagnose: {name} must be an integer >= {low}, got {value!r}")
    if fd_eps is not None and (not isinstance(fd_eps, numbers.Real) or not 0 < fd_eps < 1):
        raise ValueError(f"diagnose: fd_eps must be a number in (0, 1) (relative step), got {fd_eps!r}")
    if dtype not in ("float64", "native"):
        raise ValueError(f"diagnose: dtype must be 'float64' or 'native', got {dtype!r}")
    if not isinstance(threshold, numbers.Real) or not -1 <= threshold <= 1:
        raise ValueError(f"diagnose: threshold must be a cosine in [-1, 1], got {threshold!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"diagnose: seed must be an integer, got {seed!r}")


def _load(graph: Topology, path: Path, device: torch.device) -> None:
    state = load_checkpoint(path, map_location=device)
    if state.get("graph") != graph.signature():
        raise DoctorError(f"diagnose: checkpoint {path} was written by a different graph than '{graph.name}'")
    for name, level in graph.levels.items():
        level.load_state_dict(state["levels"][name])
    set_rng_state(state["rng"])
    graph.engine.global_step = int(state["step"])


def _upper(
    graph: Topology,
    upper: Level,
    base: GraphState,
    chosen: list[Candidate],
    device: torch.device,
    bound: int,
    settings: dict[str, Any],
) -> UpperReport:
    native = all(p.dtype == torch.float64 for lv in graph.levels.values() for p in lv.module.parameters())
    if settings["dtype"] == "float64" and not native:
        try:
            with float64_graph(graph):
                return _examine(graph, upper, chosen, device, bound, settings, "float64", [])
        except (RuntimeError, TypeError) as err:  # a module or loss that cannot run in double precision
            base.restore()
            note = f"float64 was not possible ({type(err).__name__}: {str(err)[:200]}); examined in the run's precision"
            return _examine(graph, upper, chosen, device, bound, settings, _dtype_of(upper), [note])
    return _examine(graph, upper, chosen, device, bound, settings, _dtype_of(upper), [])


def _dtype_of(level: Level) -> str:
    return str(next(iter(level.trainable_parameters())).dtype).replace("torch.", "")


def _examine(
    graph: Topology,
    upper: Level,
    chosen: list[Candidate],
    device: torch.device,
    bound: int,
    settings: dict[str, Any],
    dtype: str,
    notes: list[str],
) -> UpperReport:
    paths = upper_paths(upper)
    through = through_levels(paths)
    owners = {n for n, lv in graph.levels.items() if lv._paths}
    for level in through:  # sama reads the last raw gradient, kept only for levels that use it
        if "sama" not in level._methods_through:
            level._methods_through = (*level._methods_through, "sama")
    recorder = Recorder(graph, through, one_step=True)
    start: dict[str, GraphState] = {}

    def boundary() -> None:  # the last state at rest before the upper level steps starts the window
        warm = all(lv.count + lv.unroll > lv.warmup_steps for lv in through)  # no copies through a long warm-up
        if at_rest(graph) and ("state" not in start or warm):
            start["state"] = GraphState(graph)
            recorder.reset_batches()

    def at_step(level: Level, batch: Any, logged: dict[str, Any]) -> tuple:
        vectors = step_vectors(upper, paths, batch)
        ref = reference(paths, vectors, recorder.trajectories, recorder.incomplete())
        computed: dict[str, Computed | str] = {}
        for candidate in chosen:
            reason = unsupported_reason(candidate, paths, owners)
            if reason is None and candidate.method == "one_step":
                failed = {n: e for n, e in recorder.one_step_errors.items() if n in {lv.name for lv in through}}
                reason = next((f"at '{n}': {e}" for n, e in failed.items()), None)
            computed[candidate.label] = reason or compute(
                candidate, paths, vectors, recorder.trajectories, rounds=settings["rounds"], device=device
            )
        return vectors, ref, computed, upper.global_step

    with recorder.attached():
        vectors, ref, computed, step = drive_to_step(graph, upper, at_step, max_steps=bound, on_boundary=boundary)
    expected = list(recorder.batches)
    ref_total = _total(vectors, ref.paths) if ref.paths is not None else None
    params = list(upper.trainable_parameters())
    count = settings["fd_directions"]
    dirs, kinds = directions(params, ref_total, count, settings["seed"])
    tries: list[FDCheck] = []
    # in float64 a step that disagrees is retried 100 and 10^4 times smaller: a training window is often smooth
    # only very near the current point (its loss rough at larger scales), where the derivative still holds
    scales = [settings["fd_eps"]] if settings["fd_eps"] is not None or dtype != "float64" else list(FD_SCALES)
    for eps in scales if dirs else []:
        tries.append(
            finite_differences(
                graph,
                upper,
                start["state"],
                dirs,
                kinds,
                eps=eps,
                max_steps=bound,
                expected_batches=expected,
                recorder_factory=lambda: Recorder(graph, []),
            )
        )
        last = tries[-1]
        if ref_total is None or last.reproducible is not None or agreement(last, ref_total) <= TRUST_LEVELS[0][0]:
            break
    notes = notes + _replay_notes(paths)
    return _report(
        upper, paths, through, vectors, ref, ref_total, computed, tries, chosen, step, dtype, settings, notes
    )


def _replay_notes(paths: list) -> list[str]:
    """What the reference's replay of the window does not follow, level by level."""
    notes = []
    for level in {lv.name: lv for path in paths for lv in path[1:-1]}.values():
        if "penalty" in level._methods_through:
            notes.append(
                f"`{level.name}` is trained by the penalty method, whose steps descend the penalised objective; the "
                "reference replays them as steps of the level's own loss (the replay gap and the trust say how far apart)."
            )
        if level.gradient_clipping > 0:
            notes.append(
                f"`{level.name}` clips its gradient norm at {level.gradient_clipping:g}; the reference's replay does not "
                "(the replay gap and the trust say whether it mattered)."
            )
    return notes


def _total(vectors: StepVectors, paths: dict[str, list[Tensor]]) -> list[Tensor]:
    total = [d.clone() for d in vectors.direct]
    for grads in paths.values():
        total = [t + g.to(t.dtype) for t, g in zip(total, grads)]
    return total


def _report(
    upper: Level,
    paths: list,
    through: list[Level],
    vectors: StepVectors,
    ref: ReferenceResult,
    ref_total: list[Tensor] | None,
    computed: dict[str, Computed | str],
    tries: list[FDCheck],
    chosen: list[Candidate],
    step: int,
    dtype: str,
    settings: dict[str, Any],
    notes: list[str],
) -> UpperReport:
    configured = {
        path_label(path): ", ".join(
            f"{curr.name}->{prev.name}: {curr.method_through(prev)[0]}" for curr, prev in itertools.pairwise(path[1:])
        )
        for path in paths
    }
    info = ReferenceInfo(available=ref.paths is not None, reason=ref.reason)
    info.direct_norm = compare(vectors.direct, vectors.direct).norm
    if ref.paths is not None:
        info.path_norms = {label: compare(g, g).norm for label, g in ref.paths.items()}
        info.total_norm = compare(ref_total, ref_total).norm
        info.replay_gaps = {
            f"{label}: {hop}": float(r["replay_gap"])
            for label, hops in ref.hops.items()
            for hop, r in hops.items()
            if "replay_gap" in r
        }
    fd = None
    if tries:
        # the step that agrees best with the reference (the last one when there is no reference)
        fd = min(tries, key=lambda t: agreement(t, ref_total)) if ref_total is not None else tries[-1]
        info.fd = {
            "eps": fd.eps,
            "dtype": fd.dtype,
            "kinds": fd.kinds,
            "slopes": fd.slopes,
            "predicted": predictions(fd, ref_total) if ref_total is not None else None,
            "relative_disagreement": agreement(fd, ref_total) if ref_total is not None else None,
            "reproducible": fd.reproducible,
            "tried": [
                {"eps": t.eps, "relative_disagreement": agreement(t, ref_total) if ref_total is not None else None}
                for t in tries
            ],
        }
    else:
        info.fd = {"note": "not run (no reference direction and fd_directions=0)"}
    tensors: dict[str, Any] = {"direct": vectors.direct, "reference": ref.paths, "reference_total": ref_total}
    rows = []
    for candidate in chosen:
        result = computed[candidate.label]
        row = MethodRow(candidate.label, candidate.method, "ok", configured=_is_configured(candidate, paths))
        if isinstance(result, str):
            row.status, row.reason = "unsupported", result
        elif result.error is not None:
            row.status, row.reason, row.warnings = "failed", result.error, result.warnings
        else:
            row.seconds, row.seconds_rounds, row.peak_bytes = median_seconds(result), result.seconds, result.peak_bytes
            row.warnings, row.hops = result.warnings, result.hops
            total = _total(vectors, result.paths)
            for label, grads in result.paths.items():
                row.paths[label] = compare(grads, ref.paths[label] if ref.paths is not None else grads)
            row.total = compare(total, ref_total if ref_total is not None else total)
            if ref.paths is None:
                for c in [*row.paths.values(), row.total]:
                    c.cosine = c.norm_ratio = c.relative_error = None
            if fd is not None and fd.reproducible is None:
                row.fd_disagreement = agreement(fd, total)
        rows.append(row)
        if row.status == "ok":
            tensors.setdefault("methods", {})[row.label] = result.paths
    report = UpperReport(
        upper=upper.name,
        paths=configured,
        global_step=int(step),
        dtype=dtype,
        windows={lv.name: lv.unroll for lv in through},
        reference=info,
        methods=rows,
        threshold=float(settings["threshold"]),
        notes=notes,
        tensors=tensors,
    )
    report.recommend()
    return report


def _is_configured(candidate: Candidate, paths: list) -> bool:
    """True when the graph uses ``candidate`` (its method and options) on every hop of every path."""
    for path in paths:
        for curr, prev in itertools.pairwise(path[1:]):
            method, options = curr.method_through(prev)
            if method != candidate.method or (candidate.options is not None and dict(candidate.options) != options):
                return False
    return True
