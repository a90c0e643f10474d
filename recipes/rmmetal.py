"""RM-MetaL with MAML, ANIL and ITD-BiO in one engine: accuracy at equal outer steps and at equal
wall-clock, memory against K, warm against cold starts.

Paper: H. Yang, J. Ma, X. Yu, "Memory-Reduced Meta-Learning with Guaranteed Convergence", AAAI 2025
(arXiv:2412.12030).

    python recipes/rmmetal.py [--dataset digits|cifar-fs|fc100|miniimagenet|tieredimagenet] [--data-root DIR]
                              [--preset smoke|small|paper|study] [--seeds S ...] [--methods ...]
                              [--no-warm-start] [--select-best] [--skip-memory] [--out DIR] [--resume]

The algorithms are configurations of one two-level graph (problems/rmmetal/). Per seed each is
meta-trained from the same backbone on the same tasks and meta-tested with one protocol, beside the
untrained backbone; measured besides: peak memory of one outer step against K (Fig. 2), the time per
outer step of every algorithm alternating in one process (it fixes the equal wall-clock budget each
run's snapshots are scored at, Table 2), and RM-MetaL's hypergradient against exact implicit ones.

Writes to --out: results.md (the paper's claims as paired differences over seeds first, then Table 1,
Fig. 2 and Table 2 beside the paper's numbers), results.json, figures/ (recipes/reports/rmmetal.py)
and runs/<run>/ (checkpoints, snapshots/, metrics.jsonl, result.json; with --doctor the hypergradient
doctor's table) for every run and measurement. --resume reads finished runs back.
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import doctor
import planning
from planning import RunSpec
from reports import rmmetal as report

from engines import Graph, Runner, resolve_device
from engines.checkpoint import load_checkpoint
from problems.fewshot import DATASET_NAMES, Episodes, FewShotDataError, FewShotDataset, load_fewshot
from problems.rmmetal import (
    SMALL_IMAGE_DATASETS,
    GraphConfig,
    MetaTestProtocol,
    MetaValidation,
    build_graph,
    confidence95,
    equal_time_steps,
    evaluate,
    first_snapshot_from,
    hypergradient_check,
    keep_snapshots,
    last_solve_report,
    load_snapshot,
    memory_against_k,
    memory_methods,
    sample_meta_test_tasks,
    save_snapshot,
    settings_for,
    snapshot_steps,
    time_per_outer_step,
    untrained_reference,
    validation_curve,
)

METHODS = ("rm-metal", "itd-bio", "anil", "maml")
NO_WARM_START = "rm-metal-no-warm-start"  # RM-MetaL as its released code runs it
UNTRAINED = "untrained"  # the reference row: the common starting backbone, meta-tested without training


# ---------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    n_tasks: int  # |B|
    steps: int  # outer iterations T
    valid_every: int  # outer steps between validations
    valid_tasks: int
    test_tasks: int
    cg_iterations: int  # N of Subroutine 1
    width: int | None  # Conv-4 filters (None: 64 for 32x32 data, 32 for 84x84)
    inner_steps: int | None  # K (None: the reference table's, problems/rmmetal/graphs.py)
    outer_lr_scale: float = 1.0  # multiplies the table's Adam rates (short runs on few tasks)
    memory_tasks: int = 4
    memory_width: int = 16
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = METHODS
    timing_rounds: int = 5  # alternating rounds timing one outer step of every algorithm
    check: tuple[int, int] = (5, 4)  # hypergradient check on 2 tasks, N = 20: K and Conv-4 width
    snapshot_every: int = 1  # outer steps between backbone snapshots (the equal wall-clock scoring)
    n_way: int = 5
    k_shot: int = 5
    k_query: int = 5  # query images per class, in training, meta-validation and meta-test
    mu: float = 0.01  # R(φ) = μ/2 ||φ||²
    fine_tune_steps: int = 20  # meta-test: GD steps fitting the head (Table 1: 20)
    fine_tune_lr: float = 0.05  # meta-test GD step size (the reference code's test_lr, for every method)


SMOKE = Preset(
    n_tasks=4,
    steps=40,
    valid_every=10,
    valid_tasks=50,
    test_tasks=100,
    cg_iterations=5,
    width=16,
    inner_steps=5,
    outer_lr_scale=10.0,
    memory_tasks=2,
    memory_width=8,
    timing_rounds=2,
)
PRESETS = {
    "smoke": SMOKE,
    "small": Preset(
        n_tasks=8,
        steps=500,
        valid_every=50,
        valid_tasks=200,
        test_tasks=600,
        cg_iterations=20,
        width=None,
        inner_steps=None,
        outer_lr_scale=3.0,
        memory_tasks=8,
        memory_width=32,
        snapshot_every=10,
    ),
    # §5: |B| = 32, 2000 iterations, K = N = 20; meta-test on 640 tasks as the released code
    "paper": Preset(
        n_tasks=32,
        steps=2000,
        valid_every=100,
        valid_tasks=320,
        test_tasks=640,
        cg_iterations=20,
        width=None,
        inner_steps=None,
        memory_tasks=32,
        memory_width=64,
        snapshot_every=20,
    ),
    # the claims over seeds on two CPU cores (docs/recipes/rmmetal.md, "Study preset")
    "study": replace(
        SMOKE,
        steps=150,
        valid_every=15,
        test_tasks=1000,
        cg_iterations=20,
        inner_steps=None,
        memory_tasks=4,
        memory_width=16,
        seeds=(0, 1, 2),
        methods=(*METHODS, NO_WARM_START),
        timing_rounds=7,
        check=(20, 16),
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The shared options (recipes/common.py) and RM-MetaL's own; option values are checked here."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser, datasets=DATASET_NAMES, default_dataset="digits")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[*METHODS, NO_WARM_START, "itd-bio-shared", "anil-shared"],
        default=None,
        help=f"algorithms to train (default: the preset's; {', '.join(METHODS)} for all but study)",
    )
    parser.add_argument(
        "--no-warm-start", action="store_true", help="also run RM-MetaL without its two warm starts (the released code)"
    )
    parser.add_argument(
        "--select-best", action="store_true", help="meta-test the best-validation checkpoint instead of the final model"
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory-against-K measurement")
    parser.add_argument("--tasks", type=common.positive_int, default=None, help="|B|, tasks per meta-batch")
    parser.add_argument("--cg-iterations", type=common.positive_int, default=None, help="CG iterations N")
    parser.add_argument("--mu", type=common.finite_non_negative_float, default=None, help="μ of R(φ) = μ/2 ||φ||²")
    args = parser.parse_args(argv)
    if args.download:
        raise SystemExit(
            "error: --download: these datasets are not redistributed openly; see docs/recipes/rmmetal.md for "
            "the files learn2learn reads, then pass --data-root"
        )
    return args


# ---------------------------------------------------------------------------------------------- plan
@dataclass
class Plan(planning.Plan):
    """The training runs, plus the measurements (one folder each, read back like runs) and the preset."""

    measurements: list[RunSpec] = field(default_factory=list)
    values: Preset | None = None  # the preset with the command line's overrides
    sizes: dict[str, Any] = field(default_factory=dict)  # every run's GraphConfig but the method's K and rates
    protocol: MetaTestProtocol | None = None  # how every run is meta-tested

    def describe(self) -> dict[str, Any]:
        done = ", ".join(
            f"{m} (seeds {', '.join(str(r.seed) for r in self.measurements if r.method == m)})"
            for m in dict.fromkeys(r.method for r in self.measurements)
        )
        return {**super().describe(), "measurements": done}


def make_plan(args: argparse.Namespace) -> Plan:
    """The runs (every method × seed), the measurements and the settings that fix them (pure: nothing is
    read or trained)."""
    _, name, seeds = common.resolve(args)
    p = common.override(
        PRESETS[name], steps=args.steps, n_tasks=args.tasks, cg_iterations=args.cg_iterations, mu=args.mu
    )
    seeds = list(seeds or p.seeds)
    methods = list(dict.fromkeys([*(args.methods or p.methods), *([NO_WARM_START] if args.no_warm_start else [])]))
    hypergrad = common.parse_hypergrad(args.hypergrad, ("heads",)).get("heads")
    width = p.width or (64 if args.dataset in SMALL_IMAGE_DATASETS else 32)
    table = {
        m: settings_for(m, args.dataset, inner_steps=p.inner_steps, outer_lr_scale=p.outer_lr_scale) for m in METHODS
    }
    checkpoint = "best-validation" if args.select_best else "final"
    protocol = MetaTestProtocol(p.fine_tune_steps, p.fine_tune_lr, p.k_query, p.test_tasks, checkpoint)
    settings = {
        "dataset": args.dataset,
        "data": "embedded stand-in" if args.dataset == "digits" else "real (--data-root)",
        "tasks": f"{p.n_way}-way {p.k_shot}-shot, {p.k_query} query images per class",
        "tasks per meta-batch": p.n_tasks,
        "outer steps T": p.steps,
        "validation": f"every {p.valid_every} outer steps on {p.valid_tasks} tasks",
        "outer steps between backbone snapshots": p.snapshot_every,
        "test tasks per seed": p.test_tasks,
        "meta-test": f"{p.fine_tune_steps} GD steps of size {p.fine_tune_lr} from a zero head, {checkpoint} model",
        "Conv-4 width": width,
        "N (CG iterations)": p.cg_iterations,
        "mu": p.mu,
        **{f"{m}: K, λ_φ, Adam rate": f"{s.inner_steps}, {s.inner_lr:g}, {s.outer_lr:g}" for m, s in table.items()},
        "memory": f"K = 1, 5, 10, 20; {p.memory_tasks} tasks, Conv-4 width {p.memory_width}",
        "timing": f"{p.timing_rounds} alternating rounds of one outer step per algorithm",
        "hypergradient check": f"K = {p.check[0]}, Conv-4 width {p.check[1]}, 2 tasks, N = 20, 10 outer steps",
        "hypergrad through heads": hypergrad or "each algorithm's own",
        "precision": args.precision,
    }
    measured = ([] if args.skip_memory else ["memory"]) + ["timing", "hypergradient-check"]
    measurements = [RunSpec(UNTRAINED, s) for s in seeds]
    measurements += [RunSpec(m, s) for m in measured for s in (seeds if m == "memory" else seeds[:1])]
    sizes = {"n_tasks": p.n_tasks, "width": width, "mu": p.mu, "cg_iterations": p.cg_iterations,
             "hypergrad": hypergrad, "n_way": p.n_way, "k_shot": p.k_shot, "k_query": p.k_query}  # fmt: skip
    runs = planning.grid(methods, seeds)
    return Plan("rmmetal", name, runs, settings, measurements, values=p, sizes=sizes, protocol=protocol)


# ---------------------------------------------------------------------------------------------- graph
@dataclass
class Context:
    """What every run of one invocation shares: the data, the preset, the device and the test tasks."""

    plan: Plan
    data: FewShotDataset
    device: torch.device
    args: argparse.Namespace
    _episodes: dict[int, dict[str, Episodes]] = field(default_factory=dict)

    def config(self, method: str, **changes: Any) -> GraphConfig:
        """The graph config of ``method`` under the preset (``changes``: other sizes, for measurements)."""
        p = self.plan.values
        settings = settings_for(method, self.data.name, inner_steps=p.inner_steps, outer_lr_scale=p.outer_lr_scale)
        return GraphConfig.of(method, settings, **{**self.plan.sizes, **changes})

    def episodes(self, seed: int) -> dict[str, Episodes]:
        """The fixed validation and test tasks of ``seed`` (every algorithm of the seed is scored on them)."""
        if seed not in self._episodes:
            p = self.plan.values
            tasks = sample_meta_test_tasks(self.data, p.n_way, p.k_shot, p.valid_tasks, self.plan.protocol, seed)
            self._episodes[seed] = tasks
        return self._episodes[seed]


def graph_for(spec: RunSpec, ctx: Context) -> Graph:
    """One run's graph, ready to run: ``spec.method`` under the preset, seeded by ``spec.seed``."""
    return build_graph(ctx.config(spec.method), ctx.data, spec.seed)


# ---------------------------------------------------------------------------------------------- run
def train(spec: RunSpec, run_dir: Path, ctx: Context) -> dict[str, Any]:
    """Meta-train one algorithm with periodic meta-validation and backbone snapshots, then meta-test it
    under the protocol; resumes from its checkpoint if the run was interrupted."""
    graph, preset, device = graph_for(spec, ctx), ctx.plan.values, ctx.device
    episodes, protocol, K = ctx.episodes(spec.seed), ctx.plan.protocol, graph["heads"].unroll
    resume = planning.has_checkpoint(run_dir)
    planning.started(run_dir, spec, ctx.plan.settings)
    if ctx.args.doctor and not resume:  # the hypergradient doctor's table of this run's graph (docs/doctor.md)
        doctor.write_doctor(lambda: graph_for(spec, ctx), run_dir, device=device)
    if not resume:
        save_snapshot(run_dir, 0, graph["backbone"].module)
    keep_snapshots(graph, run_dir, preset.snapshot_every)
    result = Runner(
        graph,
        preset.steps * K,
        out=run_dir,
        device=device,
        seed=spec.seed,
        precision=ctx.args.precision,
        validate=MetaValidation(episodes["val"].to(device), protocol, run_dir),
        valid_every=preset.valid_every * K,
        monitor="val_accuracy",
        mode="max",
        checkpoint_every=preset.valid_every * K,
        resume=resume,
        audit_every=ctx.args.audit_every,
        progress=not ctx.args.no_progress,
        config={"run": spec.as_row(), "settings": ctx.plan.settings, "command": common.command_line()},
    ).run()
    save_snapshot(run_dir, preset.steps, graph["backbone"].module)  # T, whatever snapshot_every
    if protocol.checkpoint == "best-validation":
        best = load_checkpoint(run_dir / "checkpoint_best.pt", map_location=device)
        graph["backbone"].module.load_state_dict(best["levels"]["backbone"]["module"])
    acc = evaluate(graph["backbone"].module, episodes["test"].to(device), protocol)
    return {
        "method": spec.method,
        "seed": spec.seed,
        "settings": asdict(ctx.config(spec.method)),
        "protocol": asdict(protocol),
        "tested_step": result.best["step"] // K if protocol.checkpoint == "best-validation" else preset.steps,
        "best_step": result.best["step"] // K,
        "best_val_accuracy": result.best["metrics"]["val_accuracy"],
        "test_accuracy": float(acc.mean()),
        "ci95": confidence95(acc),
        "test_tasks": len(acc),
        "validation": validation_curve(run_dir, K),
        "cg_residual": last_solve_report(run_dir).get("residual"),
    }


def measure(spec: RunSpec, run_dir: Path, ctx: Context) -> dict[str, Any]:
    """One measurement of the plan: the untrained reference row, memory against K, time per outer step
    (every algorithm, alternating) or the hypergradient check."""
    p, data, seed = ctx.plan.values, ctx.data, spec.seed
    if spec.method == UNTRAINED:
        meta = graph_for(RunSpec("rm-metal", seed), ctx)["backbone"].module
        return untrained_reference(meta, ctx.episodes(seed), ctx.plan.protocol, ctx.device)
    if spec.method == "memory":
        configs = [ctx.config(m, n_tasks=p.memory_tasks, width=p.memory_width) for m in memory_methods(METHODS)]
        return {"rows": memory_against_k(configs, data, ctx.device, seed)}
    if spec.method == "timing":
        configs = [ctx.config(m) for m in dict.fromkeys((*METHODS, NO_WARM_START, *ctx.plan.methods))]
        return time_per_outer_step(configs, data, ctx.device, seed, rounds=p.timing_rounds)
    return {"rows": hypergradient_check(ctx.config("rm-metal"), data, seed, inner_steps=p.check[0], width=p.check[1])}


def equal_time_accuracy(timing: dict[str, Any], ctx: Context) -> dict[str, dict]:
    """Every run scored at its first snapshot from the equal wall-clock budget on (problems/rmmetal/timing.py):
    ``{run name: {"budget_steps", "snapshot", "test_accuracy"}}``."""
    timed = [m for m in ctx.plan.methods if m in timing["ratio"]]
    credited = equal_time_steps({m: timing["ratio"][m] for m in timed}, ctx.plan.values.steps)
    out = {}
    for spec in (r for r in ctx.plan.runs if r.method in credited):
        run_dir = ctx.args.out / "runs" / spec.name
        step = first_snapshot_from(snapshot_steps(run_dir), credited[spec.method])
        meta = load_snapshot(run_dir, step, graph_for(spec, ctx)["backbone"].module).to(ctx.device)
        acc = evaluate(meta, ctx.episodes(spec.seed)["test"].to(ctx.device), ctx.plan.protocol)
        score = {"test_accuracy": float(acc.mean()), "ci95": confidence95(acc)}
        out[spec.name] = {"budget_steps": credited[spec.method], "snapshot": step, **score}
    return out


def main(argv: list[str] | None = None) -> dict:
    """parse -> plan -> load data -> measure and train every run (planning.execute) -> report."""
    args = parse_args(argv)
    plan = make_plan(args)
    device, preset, protocol = resolve_device(args.device), plan.values, plan.protocol
    args.out = common.prepare_out(args.out or Path("runs") / f"rmmetal-{args.dataset}-{plan.preset}", args.resume)
    try:
        data = load_fewshot(args.dataset, args.data_root)
    except FewShotDataError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"[rmmetal] data: {data.description}")
    print(f"[rmmetal] preset '{plan.preset}' on {device}: {common.preset_table(preset)}")
    print(f"[rmmetal] meta-test protocol: {protocol.describe()}")
    ctx = Context(plan, data, device, args)
    measured = planning.execute(plan, args.out, functools.partial(measure, ctx=ctx), runs=plan.measurements)
    results = planning.execute(plan, args.out, functools.partial(train, ctx=ctx))
    equal_time = equal_time_accuracy(measured[RunSpec("timing", plan.seeds[0]).name], ctx)
    graph_for(RunSpec("rm-metal", plan.seeds[0]), ctx).draw(args.out / "figures" / "graph.png")
    saved, markdown = report.write(
        args.out, plan, results, measured, equal_time, data=data, device=device, protocol=protocol, untrained=UNTRAINED
    )
    print(markdown)
    print(f"[rmmetal] wrote {args.out / 'results.json'}, {args.out / 'results.md'} and {args.out / 'figures'}/")
    return saved


if __name__ == "__main__":
    main()
