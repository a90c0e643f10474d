"""Meta-learned LOA MRI reconstruction: θ shared by all sampling tasks, one weight ω_i per task.

Paper: W. Bian, Y. Chen, X. Ye, Q. Zhang, "An Optimization-Based Meta-Learning Model for MRI
Reconstruction with Diverse Dataset", Journal of Imaging, 2021.

    python recipes/metarecon.py [--preset smoke|small|paper|study] [--data-root DIR] [--contrasts t1 t2]
        [--seeds 0 1 2] [--seen-tasks radial-10 ...] [--unseen-tasks radial-15 cartesian-10 ...] [--out DIR]
        [--hypergrad METHOD] [--lambdas 1e-3 1e-1 ...] [--ablation-hypergrad exact cg] [--doctor] [--audit-every N]

Per seed and contrast, each run in its own folder ``<out>/runs/<run>/``: ``meta`` (θ and the task
weights ω meta-learned on the seen tasks with the penalty method of Algorithm 2 on the paper's literal
objective, the penalty part of each level's gradient logged at every validation); ``adapt`` (every
unseen task: θ frozen, a new ω trained); ``conventional`` (the network trained on each task alone,
without ω, on the training and validation slices merged); the λ ablation (``meta`` at every
``--lambdas`` value and with every ``--ablation-hypergrad`` method). One protocol scores every run: the
checkpoint with the best validation PSNR, with the phases it ran, on the test slices. Writes results.md
(the paper's claims as paired differences over seeds, then its tables beside ours), results.json,
per_slice.csv, figures/ and runs/ to --out; --resume reads finished runs back.
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import doctor
import planning
from reports import metarecon as report

import problems.metarecon as loa
from engines import Graph, Runner
from engines.checkpoint import load_checkpoint, save_atomic
from problems import mri

DEFAULT_HYPERGRAD = "penalty"  # Algorithm 2's penalty method, the paper's


@dataclass(frozen=True)
class Preset:
    """Everything the runs need; the defaults are the paper's (Sections 4.2, 5.1-5.2). Epochs are over
    each task's training slices. docs/recipes/metarecon.md says why each departure from the paper."""

    crop: tuple[int, int] = (160, 180)
    size: tuple[int, int] | None = None  # resize after cropping (None: keep the crop)
    limit: tuple[int, int, int] | None = None  # at most this many train/val/test slices (None: all)
    phases: int = 11
    stair: bool = True  # stair training: phases added one at a time
    inner_steps: int = 5  # K: θ steps per ω step
    batch_per_task: int = 2  # J: slices of every task in a cross-task batch (batch 8 over 4 tasks)
    epochs: float = 100.0  # meta-learning epochs
    valid_times: int = 20  # validations (and checkpoints) of every run
    baseline_epoch_ratio: float = 20.0  # conventional / meta-learning epochs (2000 / 100)
    baseline_batch: int = 25
    adapt_samples: int = 100
    adapt_epochs: float = 50.0
    adapt_batch: int = 8
    lr: float = 1e-3  # Adam on θ (meta-learning and conventional)
    omega_lr: float = 1e-3  # Adam on ω during meta-learning
    adapt_lr: float = 1e-2  # Adam on the new ω (not stated in the paper)
    grad_clip: float = 0.0  # clip every level's gradient norm at this (0: no clipping, the paper's)
    lam: float = 1e-5  # λ0 of the penalty method (ν_λ = 1.001 per round)
    penalty_rounds: int = 1  # rounds of (K θ-steps, one ω-step) on one pair of batches
    ablation_lams: tuple[float, ...] = ()  # λ0 of extra meta-learning runs (the λ ablation)
    ablation_methods: tuple[str, ...] = ()  # hypergradient methods of extra meta-learning runs
    eps_sigmas: tuple[float, ...] = (1.0, 1e2, 1e4, 1e6)  # σ of Algorithm 1's line 15, tried at test time
    contrasts: tuple[str, ...] = ("t1", "t2")
    seen: tuple[str, ...] = tuple(t.key for t in loa.SEEN_TASKS)  # radial 10-40 %
    unseen: tuple[str, ...] = tuple(t.key for t in (*loa.UNSEEN_RADIAL, *loa.UNSEEN_CARTESIAN))
    eval_batch: int = 16

    @property
    def slices(self) -> mri.SliceSpec:
        return mri.SliceSpec(crop=self.crop, size=self.size)

    @property
    def limits(self) -> dict[str, int] | None:
        return dict(zip(mri.SPLITS, self.limit)) if self.limit else None


STUDY = Preset(
    crop=(160, 160),
    size=(64, 64),
    phases=4,
    stair=False,
    batch_per_task=1,
    epochs=10.0,
    valid_times=10,
    baseline_epoch_ratio=2.0,
    baseline_batch=8,
    adapt_samples=36,
    adapt_epochs=20.0,
    adapt_batch=6,
    lr=5e-3,
    omega_lr=4e-2,
    adapt_lr=5e-2,
    grad_clip=1e3,
    ablation_methods=("exact",),
    contrasts=("t1",),
    unseen=("radial-15", "radial-35", "cartesian-20"),
)
"""The paper's claims over three seeds on the embedded T1 stand-in, sized for 2 CPU cores (docs/recipes/metarecon.md)."""
TINY = {"limit": (16, 8, 4), "phases": 3, "inner_steps": 2, "epochs": 1.0, "valid_times": 1, "adapt_samples": 8}
PRESETS = {
    "smoke": replace(STUDY, **TINY, adapt_epochs=1.0, ablation_methods=()),
    "small": Preset(phases=5, stair=False, epochs=20.0, valid_times=10),
    "paper": Preset(),
    "study": STUDY,
}
STUDY_SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------------------- presets -> plan
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser, datasets=("brats2018",), default_dataset="brats2018")
    add, positive = parser.add_argument, common.positive_float
    add("--contrasts", nargs="+", default=None, help=f"BraTS {list(mri.CONTRASTS)}; the stand-in has t1, t2")
    add("--seen-tasks", nargs="+", default=None, help="meta-training tasks: radial-20, radial:0.2 or radial:20%%")
    add("--unseen-tasks", nargs="+", default=None, help="tasks adapted with θ frozen (radial, cartesian, poisson)")
    add("--phases", type=common.positive_int, default=None, help="LOA phases (paper: 11)")
    add("--stair", action=argparse.BooleanOptionalAction, default=None, help="stair training: phases one at a time")
    add("--inner-steps", type=common.positive_int, default=None, help="K: θ steps per ω step")
    add("--baseline-epoch-ratio", type=positive, default=None, help="conventional / meta-learning epochs (paper: 20)")
    add("--adapt-epochs", type=positive, default=None, help="epochs of ω adaptation on each unseen task (paper: 50)")
    add("--lambdas", type=positive, nargs="*", default=None, help="λ0 of extra penalty-method runs (λ ablation)")
    add("--ablation-hypergrad", nargs="*", default=None, help="methods of extra meta-learning runs (exact, cg...)")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Setup:
    """What the command line resolves to: :func:`plan_for` lists its runs, :func:`train` makes them."""

    preset_name: str
    preset: Preset
    seeds: tuple[int, ...]
    seen: tuple[mri.SamplingTask, ...]
    unseen: tuple[mri.SamplingTask, ...]
    hypergrad: str
    budget: loa.Budget
    data: str  # what the runs read and how many slices (part of the settings a finished run is checked against)


def _tasks(texts: list[str], what: str, shape: tuple[int, int], seed: int) -> tuple[mri.SamplingTask, ...]:
    """Parsed tasks whose masks reach their ratio on this grid, or a SystemExit naming the option."""
    try:
        tasks = tuple(mri.SamplingTask.parse(t) for t in texts)
        for task in tasks:
            task.mask(shape, seed=seed)
    except ValueError as err:
        raise SystemExit(f"error: {what}: {err}") from None
    if len(set(tasks)) != len(tasks):
        raise SystemExit(f"error: {what} lists a task twice: {[t.key for t in tasks]}")
    return tasks


def setup(args: argparse.Namespace) -> Setup:
    """Check every option (before any data is read) and resolve the preset, tasks and budget."""
    _, name, seeds = common.resolve(args)
    seeds = tuple(seeds or (STUDY_SEEDS if name == "study" else [0]))
    if args.precision != "fp32":
        raise SystemExit(f"error: --precision {args.precision}: the LOA network's FFTs and safeguard tests run in fp32")
    if args.download:
        raise SystemExit("error: --download: BraTS 2018 needs registration (CBICA IPP); pass its folder to --data-root")
    preset = common.override(
        PRESETS[name],
        phases=args.phases,
        stair=args.stair,
        baseline_epoch_ratio=args.baseline_epoch_ratio,
        adapt_epochs=args.adapt_epochs,
        inner_steps=args.inner_steps,
        contrasts=tuple(args.contrasts) if args.contrasts else None,
        ablation_lams=tuple(args.lambdas) if args.lambdas is not None else None,
        ablation_methods=tuple(args.ablation_hypergrad) if args.ablation_hypergrad is not None else None,
    )
    hypergrad = common.parse_hypergrad(args.hypergrad, ("theta",)).get("theta", DEFAULT_HYPERGRAD)
    for method in preset.ablation_methods:
        common.parse_hypergrad(method, ("theta",))
    try:
        sizes = mri.split_sizes(args.data_root, spec=preset.slices, limit=preset.limits, layout=mri.SLABS_WITH_GAPS)
    except mri.MRIDataError as err:
        raise SystemExit(f"error: {err}") from None
    seen = _tasks(args.seen_tasks or preset.seen, "--seen-tasks", preset.slices.shape, seeds[0])
    unseen = _tasks(args.unseen_tasks or preset.unseen, "--unseen-tasks", preset.slices.shape, seeds[0])
    epochs = {k: getattr(preset, k) for k in ("epochs", "batch_per_task", "inner_steps", "phases", "stair")}
    adapt = {k: getattr(preset, k) for k in ("valid_times", "adapt_samples", "adapt_epochs", "adapt_batch")}
    baseline = {k: getattr(preset, k) for k in ("baseline_epoch_ratio", "baseline_batch")}
    n = {"n_train": sizes["train"], "n_val": sizes["val"], "meta_steps": args.steps}
    data = "embedded MNI152 stand-in" if args.data_root is None else "BraTS 2018 or NIfTI folder (--data-root)"
    data += f", {'/'.join(str(sizes[k]) for k in mri.SPLITS)} train/val/test slices per task"
    b = loa.Budget.from_epochs(**n, **epochs, **adapt, **baseline)
    return Setup(name, preset, seeds, seen, unseen, hypergrad, b, data)


def plan_for(s: Setup) -> planning.Plan:
    """Per seed and contrast: meta-learning, every task's adaptation (unseen) and conventional run, then
    the ablation's meta-learning runs (seeds outermost, so a partial study has complete pairs)."""
    runs, p = [], s.preset
    ablation = [("lam", x) for x in p.ablation_lams if x != p.lam] if s.hypergrad == "penalty" else []
    ablation += [("hypergrad", m) for m in p.ablation_methods if m != s.hypergrad]
    for seed, contrast in ((seed, c) for seed in s.seeds for c in p.contrasts):
        runs.append(planning.RunSpec("meta", seed, (("contrast", contrast),)))
        for task in (*s.seen, *s.unseen):
            for method in ("adapt", "conventional") if task in s.unseen else ("conventional",):
                runs.append(planning.RunSpec(method, seed, (("contrast", contrast), ("task", task.key))))
        runs += [planning.RunSpec("meta", seed, (("contrast", contrast), variant)) for variant in ablation]
    settings = {"data": s.data, **asdict(p), **asdict(s.budget), "hypergrad": s.hypergrad}
    settings.update(seen=[t.key for t in s.seen], unseen=[t.key for t in s.unseen])  # as parsed from the options
    return planning.Plan("metarecon", s.preset_name, runs, settings)


def make_plan(args: argparse.Namespace) -> planning.Plan:
    """The runs and settings of a command line, without reading data or training anything."""
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
    doctor: bool = False  # --doctor: the hypergradient doctor's table of each meta-learning graph before it trains
    audit_every: int = 0  # --audit-every: the runner audits the meta-learning runs' hypergradients

    def tasks(self, spec: planning.RunSpec) -> tuple[mri.SamplingTask, ...]:
        """The run's tasks: the seen ones for meta-learning, else its own."""
        return self.setup.seen if spec.method == "meta" else (mri.SamplingTask.parse(spec.get("task")),)

    def masks(self, spec: planning.RunSpec) -> torch.Tensor:
        """The run's masks ``[T, H, W]`` on its contrast's grid (seeded by the run's seed)."""
        shape = self.data[spec.get("contrast")].shape
        return torch.stack([t.mask(shape, seed=spec.seed) for t in self.tasks(spec)])

    def split(self, spec: planning.RunSpec, name: str) -> torch.Tensor:
        return self.data[spec.get("contrast")].splits[name].images


def graph_for(spec: planning.RunSpec, ctx: Context) -> Graph:
    """One run's graph, ready for a :class:`~engines.Runner`."""
    p, b, masks, seed = ctx.setup.preset, ctx.setup.budget, ctx.masks(spec), spec.seed
    settings, train, val = loa.LOASettings(phases=p.phases), ctx.split(spec, "train"), ctx.split(spec, "val")
    if spec.method == "meta":
        method = spec.get("hypergrad", ctx.setup.hypergrad)
        options = {"lam": spec.get("lam", p.lam), "max_rounds": p.penalty_rounds} if method == "penalty" else None
        return loa.meta_graph(
            train=loa.CrossTaskSlices(train, masks, seed=seed),
            val=loa.CrossTaskSlices(val, masks, seed=seed + 1),
            settings=settings,
            schedule=loa.StairSchedule(p.phases, b.stage_steps),
            batch_per_task=p.batch_per_task,
            val_batch_per_task=p.batch_per_task,
            unroll=p.inner_steps,
            hypergrad=method,
            hypergrad_options=options,
            theta_lr=p.lr,
            omega_lr=p.omega_lr,
            grad_clip=p.grad_clip,
            seed=seed,
            workers=ctx.workers,
        )
    if spec.method == "conventional":
        merged = torch.cat([train, val])
        return loa.conventional_graph(
            train=loa.CrossTaskSlices(merged, masks, seed=seed),
            settings=settings,
            schedule=loa.StairSchedule(p.phases, b.conventional_stage_steps()),
            batch_size=min(p.baseline_batch, len(merged)),
            lr=p.lr,
            grad_clip=p.grad_clip,
            seed=seed,
            workers=ctx.workers,
        )
    meta = planning.RunSpec("meta", seed, (("contrast", spec.get("contrast")),))
    model = torch.load(ctx.out / "runs" / meta.name / "model.pt", weights_only=True)
    images = ctx.data[spec.get("contrast")].splits["train"].subset(p.adapt_samples).images
    network = loa.network_from(model["network"], settings, model["phases"])
    train_set, batch = loa.CrossTaskSlices(images, masks, seed=seed), min(p.adapt_batch, len(images))
    return loa.adaptation_graph(
        network=network, train=train_set, batch_size=batch, lr=p.adapt_lr, grad_clip=p.grad_clip, seed=seed
    )


# ---------------------------------------------------------------------------------------- run
def train(spec: planning.RunSpec, run_dir: Path, *, ctx: Context) -> dict[str, Any]:
    """Train one run (resuming from its checkpoint) and score its best-validation checkpoint."""
    p, b, masks = ctx.setup.preset, ctx.setup.budget, ctx.masks(spec)
    if ctx.doctor and spec.method == "meta" and not planning.has_checkpoint(run_dir):
        doctor.write_doctor(lambda: graph_for(spec, ctx), run_dir, device=ctx.device)
    graph = graph_for(spec, ctx)
    steps = {"meta": b.meta_steps, "conventional": b.baseline_steps, "adapt": b.adapt_steps}[spec.method]
    every = b.valid_every if spec.method == "meta" else max(1, steps // p.valid_times)
    probe = None
    if spec.method == "meta":
        lam = spec.get("lam", p.lam) if graph["theta"].hypergrad == "penalty" else None
        train_images, val_images = ctx.split(spec, "train"), ctx.split(spec, "val")
        probe = loa.BalanceProbe(train_images, val_images, masks, p.batch_per_task, lam=lam, seed=spec.seed)
    adapted = graph["omega"].network.active_phases if spec.method == "adapt" else 0
    schedule = loa.StairSchedule(adapted) if adapted else graph["theta"].schedule
    validate = loa.ValidationPSNR(ctx.split(spec, "val"), masks, schedule, p.eval_batch, extra=probe)
    result = Runner(
        graph,
        steps,
        out=run_dir,
        device=ctx.device,
        seed=spec.seed,
        validate=validate,
        valid_every=every,
        monitor="val_psnr",
        mode="max",
        checkpoint_every=every,
        resume=planning.has_checkpoint(run_dir),
        progress=ctx.progress,
        audit_every=ctx.audit_every if spec.method == "meta" else 0,
        config={"run": spec.as_row(), "budget": asdict(b), "command": common.command_line()},
    ).run()
    best = load_checkpoint(run_dir / "checkpoint_best.pt", map_location="cpu")["levels"]
    if spec.method == "adapt":
        network = graph["omega"].network
    else:
        phases = graph["theta"].schedule(result.best["step"])
        network = loa.network_from(best["theta"]["module"], loa.LOASettings(phases=p.phases), phases)
    save_atomic({"network": network.state_dict(), "phases": network.active_phases}, run_dir / "model.pt")
    test, ablation = ctx.split(spec, "test"), {k: v for k, v in spec.variant if k in ("lam", "hypergrad")}
    scored = loa.score_checkpoint(
        best,
        network.to(ctx.device),
        tasks=ctx.tasks(spec),
        masks=masks,
        images=test,
        method="conventional" if spec.method == "conventional" else "meta",
        batch_size=p.eval_batch,
        eps_sigmas=p.eps_sigmas if spec.method == "meta" else (),
        contrast=spec.get("contrast"),
        seed=spec.seed,
        seen=ctx.tasks(spec)[0] in ctx.setup.seen,
        **({"ablation": ",".join(f"{k}={v}" for k, v in ablation.items())} if ablation else {}),
    )
    save_atomic({"examples": scored.pop("examples"), "reference": test[len(test) // 2]}, run_dir / "examples.pt")
    if spec.method == "meta":
        scored["safeguard"] = loa.safeguard_summary(run_dir / "metrics.jsonl", "theta")
    return {"steps": result.steps, "best_step": result.best["step"], **result.best["metrics"], **scored}


def load_data(s: Setup, data_root: Path | None) -> dict[str, mri.MRISlices]:
    """Every contrast's slices (the embedded stand-in in slabs with gaps), or a SystemExit naming the file."""
    datasets: dict[str, mri.MRISlices] = {}
    kwargs = {"spec": s.preset.slices, "limit": s.preset.limits, "layout": mri.SLABS_WITH_GAPS}
    try:
        for contrast in s.preset.contrasts:
            slices = mri.load_slices(data_root, contrast=contrast, **kwargs)
            datasets[slices.contrast] = slices
            if slices.source == "nifti":  # a plain NIfTI folder has one contrast
                break
    except mri.MRIDataError as err:
        raise SystemExit(f"error: {err}") from None
    return datasets


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    s = setup(args)
    plan = plan_for(s)
    data = load_data(s, args.data_root)
    source = "embedded" if args.data_root is None else "brats2018"
    out = common.prepare_out(args.out or Path("runs") / f"metarecon-{source}-{s.preset_name}", args.resume)
    device = common.resolve_device(args.device)
    print(f"[metarecon] data: {next(iter(data.values())).description}")
    print(f"[metarecon] preset '{s.preset_name}' on {device}: {len(plan.runs)} runs; budget {asdict(s.budget)}")
    ctx = Context(s, data, device, out, args.workers, not args.no_progress, args.doctor, args.audit_every)
    runs = planning.execute(plan, out, functools.partial(train, ctx=ctx))
    results = report.write(out, plan, runs, data=data, graph=graph_for(plan.runs[0], ctx))
    print((out / "results.md").read_text())
    print(f"[metarecon] wrote results.json, results.md, per_slice.csv and figures/ to {out}")
    return results


if __name__ == "__main__":
    main()
