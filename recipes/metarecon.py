"""Meta-learned LOA MRI reconstruction: θ shared by all sampling tasks, one weight ω_i per task.

Paper: W. Bian, Y. Chen, X. Ye, Q. Zhang, "An Optimization-Based Meta-Learning Model for MRI
Reconstruction with Diverse Dataset", Journal of Imaging, 2021.

    python recipes/metarecon.py [--data-root DIR] [--contrasts t1 t2] [--preset smoke|small|paper] [--out DIR]
                                [--seeds 0 1 2] [--seen-tasks radial:10 ...] [--unseen-tasks radial:15 cartesian:10 ...]
                                [--hypergrad METHOD] [--compare-hypergrad METHOD ...] [--compare-seconds S]

For every seed and contrast it makes these runs, each in its own folder ``<out>/runs/<run>/``:

1. ``meta``: meta-learning (problems/metarecon/levels.py) of the LOA network's θ (lower level
   ``theta``, Eq. 14b) and the task weights ω (upper level ``omega``, Eq. 14a) on cross-task
   mini-batches of the seen tasks (radial 10/20/30/40 %), with the penalty method of Algorithm 2
   (``--hypergrad`` picks any other method); the checkpoint with the best validation PSNR is kept;
2. ``adapt``: for every unseen task (radial 15/25/35 %, random Cartesian 10-40 %), θ frozen and
   only a new ω trained on ``adapt_samples`` training slices (paper: 100 slices, 50 epochs);
3. ``conventional``: the same network trained on each task alone, without ω, on the training and
   validation slices merged, for ``baseline_epoch_ratio`` times the meta-learning epochs (paper:
   2000 against 100, batch 25).

Every run is scored on the test slices (PSNR, SSIM, NMSE per slice; zero-filled for reference).
``--compare-hypergrad`` also compares hypergradient methods at equal wall-clock.

Writes to --out: results.md (the paper's claims tested as paired differences over seeds, then
Tables 1-5 beside the paper's numbers), results.json, per_slice.csv, figures/ and runs/. --resume
reads finished runs back and resumes interrupted ones.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import planning
from reports import metarecon as report

import problems.metarecon as loa
from engines import Graph, Runner
from engines.checkpoint import load_checkpoint, save_atomic
from problems import mri

DEFAULT_HYPERGRAD = "penalty"
"""Algorithm 2's penalty method."""


@dataclass(frozen=True)
class Preset:
    """Everything the three trainings need; the defaults are the paper's (Sections 4.2, 5.1-5.2).
    Epochs are over each task's training slices."""

    crop: tuple[int, int] = (160, 180)
    size: tuple[int, int] | None = None  # resize after cropping (None: keep the crop)
    limit: tuple[int, int, int] | None = None  # at most this many train/val/test slices (None: all)
    phases: int = 11
    stair: bool = True  # stair training: phases added one at a time
    inner_steps: int = 5  # K: θ steps per ω step
    batch_per_task: int = 2  # J: slices of every task in a cross-task batch (batch 8 over 4 tasks)
    epochs: float = 100.0  # meta-learning epochs
    valid_times: int = 20  # validations (and checkpoints) during meta-learning
    baseline_epoch_ratio: float = 20.0  # conventional / meta-learning epochs (2000 / 100)
    baseline_batch: int = 25
    adapt_samples: int = 100
    adapt_epochs: float = 50.0
    adapt_batch: int = 8
    lr: float = 1e-3  # Adam, both levels
    # Adam on the single new ω. It starts at 0 (σ = 0.5) like every ω, and Adam moves one scalar by about
    # its learning rate per step: the paper's 50 epochs over 100 slices in batches of 8 are 625 steps, so
    # 1e-3 would keep σ(ω) within about [0.35, 0.65]. The paper states no rate; we use 1e-2.
    adapt_lr: float = 1e-2
    compare_methods: tuple[str, ...] = (DEFAULT_HYPERGRAD, "darts", "cg", "exact")  # at equal wall-clock
    compare_seconds: float = 1800.0
    contrasts: tuple[str, ...] = ("t1", "t2")
    eval_batch: int = 16

    @property
    def slices(self) -> mri.SliceSpec:
        return mri.SliceSpec(crop=self.crop, size=self.size)

    @property
    def limits(self) -> dict[str, int] | None:
        return dict(zip(mri.SPLITS, self.limit)) if self.limit else None


PRESETS = {
    "smoke": Preset(
        crop=(160, 160),
        size=(64, 64),
        limit=(16, 8, 4),
        phases=3,
        stair=False,
        inner_steps=2,
        batch_per_task=1,
        epochs=1.0,
        valid_times=1,
        baseline_epoch_ratio=2.0,
        baseline_batch=4,
        adapt_samples=8,
        adapt_epochs=1.0,
        adapt_batch=4,
        lr=1e-2,
        adapt_lr=0.1,
        compare_methods=(DEFAULT_HYPERGRAD, "darts"),
        compare_seconds=4.0,
        contrasts=("t1",),
    ),
    "small": Preset(phases=5, stair=False, epochs=20.0, valid_times=10, compare_seconds=300.0),
    "paper": Preset(),
}


# ---------------------------------------------------------------------------------------- presets -> plan
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser, datasets=("brats2018",), default_dataset="brats2018")
    add = parser.add_argument
    add(
        "--contrasts", nargs="+", default=None, help=f"contrasts (BraTS {list(mri.CONTRASTS)}; the stand-in has t1, t2)"
    )
    add(
        "--seen-tasks",
        nargs="+",
        default=[t.key for t in loa.SEEN_TASKS],
        help="meta-training tasks: pattern:fraction (radial:0.2), pattern:percent%% (radial:20%%) or "
        "pattern-percent (radial-20); patterns radial, cartesian, poisson",
    )
    add(
        "--unseen-tasks",
        nargs="+",
        default=[t.key for t in (*loa.UNSEEN_RADIAL, *loa.UNSEEN_CARTESIAN)],
        help="adapted tasks",
    )
    add("--phases", type=common.positive_int, default=None, help="LOA phases (paper: 11)")
    add("--stair", action=argparse.BooleanOptionalAction, default=None, help="stair training: phases one at a time")
    add("--inner-steps", type=common.positive_int, default=None, help="K: θ steps per ω step")
    add("--baseline-epoch-ratio", type=float, default=None, help="conventional / meta-learning epochs (paper: 20)")
    add("--adapt-epochs", type=float, default=None, help="epochs of ω adaptation on each unseen task (paper: 50)")
    add("--compare-hypergrad", nargs="*", default=None, help="methods compared at equal wall-clock (none: skip)")
    add("--compare-seconds", type=float, default=None, help="wall-clock per compared method")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Budget:
    """Global steps of the three trainings, from the preset's epochs (or --steps for meta-learning)."""

    meta_steps: int
    stage_steps: int | None
    valid_every: int
    baseline_steps: int
    adapt_steps: int


def budget(preset: Preset, sizes: dict[str, int], override_steps: int | None) -> Budget:
    k, j, n_train = preset.inner_steps, preset.batch_per_task, sizes["train"]
    meta = override_steps if override_steps is not None else math.ceil(preset.epochs * n_train / j)
    meta = k * max(1, math.ceil(meta / k))  # whole outer rounds
    stage = k * max(1, meta // (k * preset.phases)) if preset.stair and preset.phases > 1 else None
    valid_every = k * max(1, meta // (k * max(1, preset.valid_times)))
    merged = n_train + sizes["val"]
    baseline = math.ceil(
        preset.baseline_epoch_ratio * (meta * j / n_train) * merged / min(preset.baseline_batch, merged)
    )
    adapt_n = min(preset.adapt_samples, n_train)
    adapt = math.ceil(preset.adapt_epochs * adapt_n / min(preset.adapt_batch, adapt_n))
    return Budget(meta, stage, valid_every, max(1, baseline), max(1, adapt))


@dataclass(frozen=True)
class Setup:
    """What the command line resolves to; :func:`make_plan` lists its runs, :func:`train` makes them."""

    preset_name: str
    preset: Preset
    seeds: tuple[int, ...]
    seen: tuple[mri.SamplingTask, ...]
    unseen: tuple[mri.SamplingTask, ...]
    hypergrad: str
    budget: Budget


def _tasks(texts: list[str], what: str) -> tuple[mri.SamplingTask, ...]:
    try:
        tasks = tuple(mri.SamplingTask.parse(t) for t in texts)
    except ValueError as err:
        raise SystemExit(f"error: {what}: {err}") from None
    if len(set(tasks)) != len(tasks):
        raise SystemExit(f"error: {what} lists a task twice: {[t.key for t in tasks]}")
    return tasks


def setup(args: argparse.Namespace) -> Setup:
    """Check every option (before any data is read) and resolve the preset, tasks and budget."""
    _, name, seeds = common.resolve(args)
    if args.precision != "fp32":
        raise SystemExit(f"error: --precision {args.precision}: the LOA network's FFTs and safeguard tests run in fp32")
    if args.download:
        raise SystemExit("error: --download: BraTS 2018 needs registration (CBICA IPP); pass its folder to --data-root")
    for flag in ("baseline_epoch_ratio", "adapt_epochs", "compare_seconds"):
        if getattr(args, flag) is not None and not getattr(args, flag) > 0:
            raise SystemExit(f"error: --{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    preset = common.override(
        PRESETS[name],
        phases=args.phases,
        stair=args.stair,
        baseline_epoch_ratio=args.baseline_epoch_ratio,
        adapt_epochs=args.adapt_epochs,
        inner_steps=args.inner_steps,
        compare_seconds=args.compare_seconds,
        contrasts=tuple(args.contrasts) if args.contrasts else None,
        compare_methods=tuple(args.compare_hypergrad) if args.compare_hypergrad is not None else None,
    )
    hypergrad = common.parse_hypergrad(args.hypergrad, ("theta",)).get("theta", DEFAULT_HYPERGRAD)
    for method in preset.compare_methods:
        common.parse_hypergrad(method, ("theta",))
    try:
        sizes = mri.split_sizes(args.data_root, spec=preset.slices, counts=mri.PAPER_COUNTS, limit=preset.limits)
    except mri.MRIDataError as err:
        raise SystemExit(f"error: {err}") from None
    seen, unseen = _tasks(args.seen_tasks, "--seen-tasks"), _tasks(args.unseen_tasks, "--unseen-tasks")
    for task in (*seen, *unseen):  # every mask must reach its ratio on this grid before anything is read
        try:
            task.mask(preset.slices.shape, seed=(seeds or [0])[0])
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
    b = budget(preset, sizes, args.steps)
    return Setup(name, preset, tuple(seeds or [0]), seen, unseen, hypergrad, b)


def plan_for(s: Setup) -> planning.Plan:
    """Per seed and contrast: meta-learning, then every task's adaptation (unseen) and conventional run."""
    runs = []
    for seed in s.seeds:
        for contrast in s.preset.contrasts:
            runs.append(planning.RunSpec("meta", seed, (("contrast", contrast),)))
            for task in (*s.seen, *s.unseen):
                if task in s.unseen:
                    runs.append(planning.RunSpec("adapt", seed, (("contrast", contrast), ("task", task.key))))
                runs.append(planning.RunSpec("conventional", seed, (("contrast", contrast), ("task", task.key))))
    fixed = {k: v for k, v in asdict(s.preset).items() if k not in ("compare_methods", "compare_seconds")}
    settings = {**fixed, **asdict(s.budget), "seen": [t.key for t in s.seen], "unseen": [t.key for t in s.unseen]}
    return planning.Plan("metarecon", s.preset_name, runs, {**settings, "hypergrad": s.hypergrad})


def make_plan(args: argparse.Namespace) -> planning.Plan:
    """The runs and settings of a command line, without reading or training anything."""
    return plan_for(setup(args))


# ---------------------------------------------------------------------------------------- graph
@dataclass
class Context:
    """What every run of one invocation shares: the set-up, the data, the device and the output folder."""

    setup: Setup
    data: dict[str, mri.MRISlices]
    device: torch.device
    out: Path
    workers: int = 0
    progress: bool = False

    def task(self, spec: planning.RunSpec) -> mri.SamplingTask:
        return mri.SamplingTask.parse(spec.get("task"))

    def masks(self, tasks: tuple[mri.SamplingTask, ...], spec: planning.RunSpec) -> torch.Tensor:
        """The tasks' masks ``[T, H, W]`` on this contrast's grid (seeded by the run's seed)."""
        shape = self.data[spec.get("contrast")].shape
        return torch.stack([t.mask(shape, seed=spec.seed) for t in tasks])

    def stage_steps(self, steps: int) -> int | None:
        """Stair stages of a training of ``steps`` steps: the same share of it as in meta-learning."""
        b = self.setup.budget
        return None if b.stage_steps is None else max(1, round(b.stage_steps * steps / b.meta_steps))


def meta_spec(spec: planning.RunSpec) -> planning.RunSpec:
    """The meta-learning run an adaptation run starts from."""
    return planning.RunSpec("meta", spec.seed, (("contrast", spec.get("contrast")),))


def graph_for(spec: planning.RunSpec, ctx: Context, *, hypergrad: str | None = None, all_phases: bool = False) -> Graph:
    """One run's graph, ready for a :class:`~engines.Runner` (``hypergrad``/``all_phases`` override a
    meta-learning run's method and stair schedule)."""
    p, s, slices = ctx.setup.preset, ctx.setup, ctx.data[spec.get("contrast")]
    settings = loa.LOASettings(phases=p.phases)
    train, val = slices.splits["train"].images, slices.splits["val"].images
    if spec.method == "meta":
        masks = ctx.masks(s.seen, spec)
        return loa.meta_graph(
            train=loa.CrossTaskSlices(train, masks, seed=spec.seed),
            val=loa.CrossTaskSlices(val, masks, seed=spec.seed + 1),
            settings=settings,
            schedule=loa.StairSchedule(p.phases, None if all_phases else s.budget.stage_steps),
            batch_per_task=p.batch_per_task,
            val_batch_per_task=p.batch_per_task,
            unroll=p.inner_steps,
            hypergrad=hypergrad or s.hypergrad,
            theta_lr=p.lr,
            omega_lr=p.lr,
            seed=spec.seed,
            workers=ctx.workers,
        )
    mask = ctx.masks((ctx.task(spec),), spec)
    if spec.method == "conventional":
        merged = torch.cat([train, val])
        return loa.conventional_graph(
            train=loa.CrossTaskSlices(merged, mask, seed=spec.seed),
            settings=settings,
            schedule=loa.StairSchedule(p.phases, ctx.stage_steps(s.budget.baseline_steps)),
            batch_size=min(p.baseline_batch, len(merged)),
            lr=p.lr,
            seed=spec.seed,
            workers=ctx.workers,
        )
    model = torch.load(ctx.out / "runs" / meta_spec(spec).name / "model.pt", weights_only=True)
    network = loa.network_from(model["network"], settings, model["phases"])
    images = slices.splits["train"].subset(p.adapt_samples).images
    return loa.adaptation_graph(
        network=network,
        train=loa.CrossTaskSlices(images, mask, seed=spec.seed),
        batch_size=min(p.adapt_batch, len(images)),
        lr=p.adapt_lr,
        seed=spec.seed,
        workers=ctx.workers,
    )


# ---------------------------------------------------------------------------------------- run
def train(spec: planning.RunSpec, run_dir: Path, *, ctx: Context) -> dict[str, Any]:
    """Train one run (resuming from its checkpoint), score it on the test slices, keep an example."""
    p, b = ctx.setup.preset, ctx.setup.budget
    graph = graph_for(spec, ctx)
    steps = {"meta": b.meta_steps, "conventional": b.baseline_steps, "adapt": b.adapt_steps}[spec.method]
    validation = None
    if spec.method == "meta":
        schedule = graph["theta"].schedule
        validation = loa.ValidationPSNR(
            ctx.data[spec.get("contrast")].splits["val"].images, ctx.masks(ctx.setup.seen, spec), schedule, p.eval_batch
        )
    result = Runner(
        graph,
        steps,
        out=run_dir,
        device=ctx.device,
        seed=spec.seed,
        validate=validation,
        valid_every=b.valid_every if validation else 0,
        monitor="val_psnr" if validation else None,
        mode="max" if validation else None,
        checkpoint_every=b.valid_every if validation else max(1, steps // 4),
        resume=planning.has_checkpoint(run_dir),
        progress=ctx.progress,
        config={"run": spec.as_row(), "budget": asdict(b), "command": common.command_line()},
    ).run()
    return score(spec, graph, result, run_dir, ctx)


def score(spec: planning.RunSpec, graph: Graph, result: Any, run_dir: Path, ctx: Context) -> dict[str, Any]:
    """Test rows of a trained run (meta: its best-validation checkpoint; others: the last step)."""
    p, settings = ctx.setup.preset, loa.LOASettings(phases=ctx.setup.preset.phases)
    out: dict[str, Any] = {"steps": result.steps}
    if spec.method == "meta":
        best = load_checkpoint(run_dir / "checkpoint_best.pt", map_location="cpu")
        phases = graph["theta"].schedule(best["step"])
        network = loa.network_from(best["levels"]["theta"]["module"], settings, phases)
        weights = torch.sigmoid(best["levels"]["omega"]["module"]["omega"])
        tasks = ctx.setup.seen
        out.update(best_step=best["step"], best_val_psnr=result.best["metrics"]["val_psnr"])
        out["safeguard"] = loa.safeguard_summary(run_dir / "metrics.jsonl", "theta")
    elif spec.method == "conventional":
        phases = graph["theta"].schedule(result.steps)
        network = loa.network_from(graph["theta"].module.state_dict(), settings, phases)
        tasks, weights, out["final_loss"] = (ctx.task(spec),), torch.ones(1), result.losses["theta"][-1]
    else:
        network, weights, tasks = graph["omega"].network, graph["omega"].module.sigma(), (ctx.task(spec),)
        phases = network.active_phases
    save_atomic({"network": network.state_dict(), "phases": phases, "sigma": weights}, run_dir / "model.pt")
    test = ctx.data[spec.get("contrast")].splits["test"].images
    rows, examples, out["safeguard_at_test"] = loa.test_rows(
        network.to(ctx.device),
        test,
        tasks,
        ctx.masks(tasks, spec),
        weights.tolist(),
        method="conventional" if spec.method == "conventional" else "meta",
        batch_size=p.eval_batch,
        with_zero_filled=spec.method == "conventional",
        contrast=spec.get("contrast"),
        seed=spec.seed,
        seen=tasks[0] in ctx.setup.seen,
    )
    save_atomic({"examples": examples, "reference": test[len(test) // 2]}, run_dir / "examples.pt")
    return {**out, "phases": phases, "sigma": dict(zip([t.key for t in tasks], weights.tolist())), "rows": rows}


def compare_methods(spec: planning.RunSpec, ctx: Context) -> list[dict[str, Any]]:
    """Validation PSNR of every ``compare_methods`` after ``compare_seconds`` of meta-learning (all phases:
    the comparison is about the hypergradient), on the first run's contrast and seed."""
    p = ctx.setup.preset
    images = ctx.data[spec.get("contrast")].splits["val"].images
    validation = loa.ValidationPSNR(images, ctx.masks(ctx.setup.seen, spec), loa.StairSchedule(p.phases), p.eval_batch)
    rows = loa.compare_at_equal_wallclock(
        lambda method: graph_for(spec, ctx, hypergrad=method, all_phases=True),
        p.compare_methods,
        p.compare_seconds,
        validation,
        inner_steps=p.inner_steps,
        device=ctx.device,
        seed=spec.seed,
    )
    for r in rows:
        print(f"[metarecon] {r['method']}: {r['outer_steps']} outer steps in {r['seconds']:.1f} s, {r['value']:.3f} dB")
    return [{**r, "contrast": spec.get("contrast")} for r in rows]


def load_data(s: Setup, data_root: Path | None) -> dict[str, mri.MRISlices]:
    datasets: dict[str, mri.MRISlices] = {}
    try:
        for contrast in s.preset.contrasts:
            slices = mri.load_slices(
                data_root, contrast=contrast, spec=s.preset.slices, counts=mri.PAPER_COUNTS, limit=s.preset.limits
            )
            datasets[slices.contrast] = slices
            if slices.source == "nifti":
                print("[metarecon] a plain NIfTI folder has one contrast: --contrasts does not apply")
                break
    except mri.MRIDataError as err:
        raise SystemExit(f"error: {err}") from None
    return datasets


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    s = setup(args)
    plan = plan_for(s)
    data = load_data(s, args.data_root)
    first = next(iter(data.values()))
    source = "embedded" if args.data_root is None else "brats2018"
    out = common.prepare_out(args.out or Path("runs") / f"metarecon-{source}-{s.preset_name}", args.resume)
    device = common.resolve_device(args.device)
    print(f"[metarecon] data: {first.description}")
    print(f"[metarecon] preset '{s.preset_name}' on {device}: {common.preset_table(s.preset)}")
    print(f"[metarecon] budget: {asdict(s.budget)}")
    ctx = Context(s, data, device, out, workers=args.workers, progress=not args.no_progress)
    runs = planning.execute(plan, out, functools.partial(train, ctx=ctx))
    compare = compare_methods(plan.runs[0], ctx) if s.preset.compare_methods else []
    results = report.write(out, plan, runs, data=data, compare=compare, graph=graph_for(plan.runs[0], ctx))
    print((out / "results.md").read_text())
    print(
        f"[metarecon] wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'per_slice.csv'} and {out / 'figures'}/"
    )
    return results


if __name__ == "__main__":
    main()
