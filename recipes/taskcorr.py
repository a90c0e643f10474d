"""Task-correlation meta-learning for multi-coil MRI reconstruction, with its baselines.

W. Bian et al., "Bilevel meta-learning with learnable task correlations for MRI reconstruction"
(preprint, Preprints.org 202504.2285, 2025); the network is the optimal-control system of Bian, Chen
& Ye (Magnetic Resonance Imaging, 2022). The model is our reading of the preprint (docs/recipes/taskcorr.md).

    python recipes/taskcorr.py [--preset smoke|small|paper|study] [--data-root DIR] [--methods ...] [--out DIR]
                               [--train-tasks t1:radial:0.2 ... noise:radial:0.2] [--val-tasks t1:radial:0.25 ...]
                               [--gradient autograd|adjoint|adjoint_checkpointed] [--hypergrad theta=adjoint_unroll]

Training data come in N groups (a contrast sampled by a pattern at a ratio, or pure noise),
validation data in M groups; the test groups are the validation tasks on held-out slices. Every
method has the same M optimal-control networks θ_j (one per test task, same initialisation), sees
the same data and takes the same number of θ-steps:

* ``learned`` — W ∈ R^{N×M} learned (the paper's generalised model): θ_j on Σ_i σ(w_j)_i ℓ(θ_j; B_i),
  W on Σ_j ℓ(θ_j; V_j); W's hypergradient through the k Adam steps (``adjoint_unroll``);
* ``learned-shared`` — the paper's base model, M = 1: one θ, one weight vector, validation pooled;
* ``uniform`` — W fixed: θ_j on the training groups and V_j with equal weights;
* ``independent`` — θ_j on V_j alone (independent per-task training);
* ``metarecon`` — the metarecon recipe's single-coil LOA model on the same tasks, adapted per test task.

Writes to --out: results.md (claims table first), results.json, per_slice.csv, figures/ and
runs/<method>__seed<s>/. --steps sets the W-steps (each after k = --inner-steps θ-steps).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import doctor
import planning
from reports import taskcorr as report

from engines import Graph, Runner
from engines.checkpoint import save_atomic
from problems.mri import MRIDataError, SliceSpec
from problems.taskcorr import (
    TaskCorrSettings,
    TaskData,
    gradient_similarity,
    independent_graph,
    load_task_data,
    parse_tasks,
    pool_groups,
    score_networks,
    taskcorr_graph,
    uniform_graph,
)
from problems.taskcorr.baselines import MetareconBaseline, train_metarecon_baseline
from problems.taskcorr.optimal_control import GRADIENT_PATHS, ControlNetConfig

METHODS = ("uniform", "independent", "learned-shared", "learned", "metarecon")
LEARNED = ("learned", "learned-shared")
DATASETS = ("auto", "mni152", "brats2018", "nifti")  # auto: the embedded stand-in, else the layout in --data-root
DEFAULT_HYPERGRAD = "adjoint_unroll"
"""W's hypergradient: equal to `exact` (the gradient of what is trained) with memory flat in T; darts and
one_step drift from it (problems/taskcorr/hypergradient.py, benchmarks/taskcorr_hypergradient.py)."""
FOUR_TASKS = ("t1:radial:0.2", "t1:cartesian:0.3", "t2:radial:0.2", "t2:cartesian:0.3")
VAL_TASKS = ("t1:radial:0.25", "t2:radial:0.25")


@dataclass(frozen=True)
class Preset:
    """Sizes and budgets. ``outer_steps`` W-steps of ``inner_steps`` θ-steps each (Algorithm 1); every
    method takes the same θ-steps. Slice counts are per group (None: all)."""

    crop: tuple[int, int]
    size: tuple[int, int] | None
    coils: int
    phases: int
    width: int
    features: int
    kernel: int
    outer_steps: int
    inner_steps: int
    theta_lr: float
    correlation_lr: float
    train_batch: int
    val_batch: int
    loa_phases: int
    loa_channels: int
    adapt_steps: int
    train_slices: int | None = None
    val_slices: int | None = None
    test_slices: int | None = None
    train_tasks: tuple[str, ...] = FOUR_TASKS
    val_tasks: tuple[str, ...] = VAL_TASKS
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0,)
    threads: int | None = None  # CPU threads (None: torch's default)


_TINY = {"crop": (180, 180), "coils": 2, "kernel": 3, "loa_channels": 4, "threads": 1}
PRESETS = {
    "smoke": Preset(
        **_TINY,
        size=(32, 32),
        phases=2,
        width=4,
        features=4,
        outer_steps=12,
        inner_steps=3,
        theta_lr=1e-2,
        correlation_lr=0.1,
        train_batch=1,
        val_batch=2,
        train_slices=8,
        val_slices=6,
        test_slices=4,
        loa_phases=2,
        adapt_steps=5,
        train_tasks=("t1:radial:0.2", "t1:cartesian:0.25", "t2:radial:0.2", "t2:cartesian:0.25", "noise:radial:0.2"),
    ),
    # the paper's claims on the embedded stand-in: >= 150 W-steps, 3 seeds, every test slice
    "study": Preset(
        **_TINY,
        size=(40, 40),
        phases=2,
        width=8,
        features=8,
        outer_steps=150,
        inner_steps=2,
        theta_lr=3e-3,
        correlation_lr=0.05,
        train_batch=2,
        val_batch=2,
        loa_phases=3,
        adapt_steps=50,
        train_tasks=(*FOUR_TASKS, "noise:radial:0.2"),
        methods=("uniform", "independent", "learned"),
        seeds=(0, 1, 2),
    ),
    "small": Preset(
        crop=(160, 180),
        size=(128, 144),
        coils=8,
        phases=4,
        width=32,
        features=16,
        kernel=5,
        outer_steps=600,
        inner_steps=5,
        theta_lr=1e-3,
        correlation_lr=0.01,
        train_batch=4,
        val_batch=4,
        loa_phases=7,
        loa_channels=4,
        adapt_steps=100,
    ),
    # Bian's pMRI-CNet sizes (width 64, features 32, 9x9, three phases, 15 coils), Adam 1e-4, 160 x 180
    "paper": Preset(
        crop=(160, 180),
        size=None,
        coils=15,
        phases=3,
        width=64,
        features=32,
        kernel=9,
        outer_steps=2000,
        inner_steps=5,
        theta_lr=1e-4,
        correlation_lr=0.01,
        train_batch=2,
        val_batch=2,
        loa_phases=11,
        loa_channels=4,
        adapt_steps=500,
    ),
}


# ------------------------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser, datasets=DATASETS, default_dataset="auto")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None, help="default: the preset's")
    parser.add_argument(
        "--train-tasks",
        nargs="+",
        default=None,
        help="training groups B_1..B_N as contrast:pattern:ratio (ratio a fraction or e.g. 20%%; contrast "
        "'noise': a group of pure noise); default: the preset's",
    )
    parser.add_argument(
        "--val-tasks", nargs="+", default=None, help="validation groups V_1..V_M (also the test tasks, held-out slices)"
    )
    parser.add_argument("--gradient", choices=GRADIENT_PATHS, default="adjoint", help="the network's gradient path")
    parser.add_argument("--coils", type=common.positive_int, default=None, help="simulated coils")
    parser.add_argument("--phases", type=common.positive_int, default=None, help="T, phases of the network")
    parser.add_argument("--inner-steps", type=common.positive_int, default=None, help="k, θ-steps per W-step")
    parser.add_argument("--threads", type=common.positive_int, default=None, help="CPU threads (default: preset's)")
    parser.add_argument("--metarecon-hypergrad", default="penalty", help="the metarecon baseline's method")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> planning.Plan:
    """The runs (methods × seeds) and the settings that fix them; checks the arguments, loads nothing."""
    if args.download:
        raise SystemExit("error: --download: BraTS 2018 needs a registration; extract it yourself and pass --data-root")
    if args.dataset in ("brats2018", "nifti") and args.data_root is None:
        raise SystemExit(f"error: --dataset {args.dataset} needs --data-root (BraTS 2018 layout or *.nii.gz)")
    if args.dataset == "mni152" and args.data_root is not None:
        raise SystemExit("error: --dataset mni152 is the embedded stand-in and reads no --data-root")
    _, name, seeds = common.resolve(args)
    preset = common.override(
        PRESETS[name],
        coils=args.coils,
        phases=args.phases,
        inner_steps=args.inner_steps,
        outer_steps=args.steps,
        train_tasks=tuple(args.train_tasks) if args.train_tasks else None,
        val_tasks=tuple(args.val_tasks) if args.val_tasks else None,
    )
    try:
        train_tasks = parse_tasks(preset.train_tasks, "--train-tasks")
        parse_tasks(preset.val_tasks, "--val-tasks")
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if len(train_tasks) < 2:
        raise SystemExit(f"error: --train-tasks: correlations need N >= 2 training groups, got {len(train_tasks)}")
    hypergrad = common.parse_hypergrad(args.hypergrad, ("theta",)).get("theta", DEFAULT_HYPERGRAD)
    common.parse_hypergrad(args.metarecon_hypergrad, ("theta",))  # an unknown method is refused before any work
    methods = args.methods or preset.methods
    baseline = ("loa_phases", "loa_channels", "adapt_steps") if "metarecon" not in methods else ()
    settings = {k: v for k, v in asdict(preset).items() if k not in ("methods", "seeds", "threads", *baseline)}
    settings.update(hypergrad=hypergrad, gradient=args.gradient, precision=args.precision, data_seed=0)
    if "metarecon" in methods:
        settings["metarecon_hypergrad"] = args.metarecon_hypergrad
    runs = planning.grid(methods, seeds or preset.seeds)
    return planning.Plan("taskcorr", name, runs, settings)


# ------------------------------------------------------------------------------------------- graph
@dataclass
class Setup:
    """What every run of one invocation shares: the plan's settings, the data, the device, the options."""

    settings: dict[str, Any]
    data: TaskData
    device: torch.device
    progress: bool
    doctor: bool = False  # --doctor: the hypergradient doctor's table in each run folder before training
    audit_every: int = 0  # --audit-every: W's hypergradient audited against the reference during training

    @property
    def network(self) -> ControlNetConfig:
        s = self.settings
        return ControlNetConfig(s["coils"], s["phases"], s["width"], s["features"], s["kernel"])

    @property
    def training(self) -> TaskCorrSettings:
        s = self.settings
        return TaskCorrSettings(
            inner_steps=s["inner_steps"],
            theta_lr=s["theta_lr"],
            correlation_lr=s["correlation_lr"],
            train_batch=s["train_batch"],
            val_batch=s["val_batch"],
            hypergrad=s["hypergrad"],
            gradient=s["gradient"],
        )


def load_data(args: argparse.Namespace, settings: dict[str, Any]) -> TaskData:
    """The groups of the plan's tasks (SystemExit naming the problem when the data do not fit)."""
    try:
        data = load_task_data(
            parse_tasks(settings["train_tasks"], "--train-tasks"),
            parse_tasks(settings["val_tasks"], "--val-tasks"),
            args.data_root,
            spec=SliceSpec(crop=tuple(settings["crop"]), size=settings["size"] and tuple(settings["size"])),
            coils=settings["coils"],
            limits={s: settings[f"{s}_slices"] for s in ("train", "val", "test")},
            seed=settings["data_seed"],
        )
    except (MRIDataError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if args.dataset not in ("auto", data.source):
        raise SystemExit(f"error: --dataset {args.dataset}, but {args.data_root} holds the {data.source} layout")
    return data


def graph_for(spec: planning.RunSpec, setup: Setup) -> Graph:
    """One run's graph, ready to run (the metarecon baseline builds its own graphs)."""
    data, config, training = setup.data, setup.network, setup.training
    if spec.method == "learned":
        return taskcorr_graph(config, data.train, data.val, training, seed=spec.seed)
    if spec.method == "learned-shared":
        return taskcorr_graph(
            config, data.train, [pool_groups("all validation groups", data.val)], training, seed=spec.seed
        )
    if spec.method == "uniform":
        return uniform_graph(config, data.train, data.val, training, seed=spec.seed)
    if spec.method == "independent":
        samples = len(data.train) * training.train_batch
        return independent_graph(config, data.val, training, samples_per_step=samples, seed=spec.seed)
    raise ValueError(f"graph_for: method '{spec.method}' has no task-correlation graph (one of {METHODS[:4]})")


# ------------------------------------------------------------------------------------------- run
def train(spec: planning.RunSpec, run_dir: Path, *, setup: Setup) -> dict[str, Any]:
    """Train one run, resuming from its checkpoint, and score it on every test group."""
    s, data = setup.settings, setup.data
    if spec.method == "metarecon":
        baseline = MetareconBaseline(
            **{k: s[k] for k in ("outer_steps", "inner_steps", "adapt_steps", "train_batch", "val_batch", "theta_lr")},
            phases=s["loa_phases"],
            channels=s["loa_channels"],
            omega_lr=s["correlation_lr"],
            hypergrad=s["metarecon_hypergrad"],
            **{f"{k}_slices": s[f"{k}_slices"] for k in ("train", "val", "test")},
        )
        out = train_metarecon_baseline(
            data,
            baseline,
            run_dir,
            seed=spec.seed,
            device=setup.device,
            precision=s["precision"],
            progress=setup.progress,
            resume=True,
        )
        save_atomic(out.pop("examples"), run_dir / "examples.pt")
        return out
    graph = graph_for(spec, setup)
    if setup.doctor:
        doctor.write_doctor(lambda: graph_for(spec, setup), run_dir)
    steps = s["outer_steps"] * s["inner_steps"]
    Runner(
        graph,
        steps,
        out=run_dir,
        device=setup.device,
        seed=spec.seed,
        precision=s["precision"],
        checkpoint_every=s["inner_steps"] * max(1, s["outer_steps"] // 5),
        resume=planning.has_checkpoint(run_dir),
        progress=setup.progress,
        audit_every=setup.audit_every,
        config={"spec": spec.as_row(), "settings": s},
    ).run()
    nets = graph["theta"].module.nets
    rows, examples = score_networks(nets, data.val_tasks, data.test, device=setup.device, **spec.as_row())
    save_atomic(examples, run_dir / "examples.pt")
    result: dict[str, Any] = {"rows": rows, "theta_steps": steps}
    if spec.method in LEARNED:
        result["sigma"] = graph["correlation"].module.weights().detach().cpu().tolist()
        val = data.val if spec.method == "learned" else [pool_groups("all validation groups", data.val)]
        result["similarity"] = gradient_similarity(nets, data.train, val).tolist()
    return result


@contextmanager
def torch_threads(threads: int | None, device: torch.device) -> Iterator[None]:
    """Run with ``threads`` intra-op CPU threads (tiny networks: spinning threads cost more than they gain)."""
    before = torch.get_num_threads()
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    plan = make_plan(args)
    device = common.resolve(args)[0]
    data = load_data(args, plan.settings)
    out = common.prepare_out(args.out or Path("runs") / f"taskcorr-{data.source}-{plan.preset}", args.resume)
    print(f"[taskcorr] data: {data.description}")
    print(f"[taskcorr] {len(plan.runs)} runs on {device}: " + ", ".join(f"{k}={v}" for k, v in plan.settings.items()))
    setup = Setup(plan.settings, data, device, not args.no_progress, args.doctor, args.audit_every)
    with torch_threads(args.threads or PRESETS[plan.preset].threads, device):
        results = planning.execute(plan, out, functools.partial(train, setup=setup))
        if "learned" in plan.methods:
            graph_for(planning.RunSpec("learned", plan.seeds[0]), setup).draw(out / "figures" / "graph.png")
    written = report.write(out, plan, results, data, device=str(device), root=args.data_root)
    print((out / "results.md").read_text())
    print(f"[taskcorr] wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'per_slice.csv'} and figures/")
    return written


if __name__ == "__main__":
    main()
