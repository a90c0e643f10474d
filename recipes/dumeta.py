"""DuMeta++ with its baselines and ablations: meta-train on a pool of age groups, fine-tune the head on
one or five subjects of an unseen age group, and score Dice / ASSD / STCS / ASPC (Tables I–VI, Fig. 6–7) of
Y. Sun, J. Shu, J. Ma, F. Wang, "DuMeta++: Spatiotemporal Dual Meta-Learning for Generalizable Few-Shot
Brain Tissue Segmentation Across Diverse Ages", arXiv:2602.07174, 2026.

    python recipes/dumeta.py [--data-root DIR] [--preset smoke|small|paper|study] [--methods ...]
                             [--shots 1 5] [--head-depth 3] [--capacities 1 10 100 1000]
                             [--depths 0 1 2 3 4 5 all] [--seeds 0 1 2] [--out DIR] [--resume]

Meta-training (problems/dumeta/levels.py) runs once per method and seed on the meta-training pool (three
domains; 80/20 train/validation split, the validation Dice of the meta-trained network selecting the
checkpoint). Each run then meta-tests its network the way the method's paper does (problems/dumeta/
methods.py, metatest.py): DuMeta++ and its ablations with the encoder frozen and the last --head-depth
decoder stages fine-tuned, MAML, Reptile and random initialisation on the whole network, on the support
subjects of an unseen domain; the test subjects are segmented on their own grid and scored.

Writes to --out: results.json, results.md (claims first, then the paper's table layouts with its numbers
in brackets; recipes/reports/dumeta.py), figures/*.png, and runs/<run>/ per method and seed (meta-training:
config.json, metrics.jsonl, checkpoints, result.json) with finetune/<domain>__<k>shot__depth<d>/ for every
meta-test. Finished runs are read back; --resume continues interrupted ones.
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
import planning
from reports import dumeta as report

from engines import Graph, Runner
from engines.checkpoint import load_checkpoint
from problems.braindata import BrainDataError
from problems.dumeta import (
    REG_FEATURES,
    dual_meta_graph,
    effective_upper_order,
    init_learning_graph,
    joint_training_graph,
    meta_trained_parameters,
)
from problems.dumeta.data import JointSampler, MetaTaskSampler
from problems.dumeta.domains import Data, DataSource, check_shots, meta_data
from problems.dumeta.metatest import (
    MetaTestSetup,
    PoolValidation,
    feature_embedding,
    meta_test,
    network_from,
    random_start,
    reference_test,
)
from problems.dumeta.methods import DEFAULT_CAPACITY, METHODS, REFERENCES, jobs_for
from problems.dumeta.net import DualUNet
from problems.dumeta.optim import poly, sgd

DEPTH_CHOICES = ("0", "1", "2", "3", "4", "5", "all")


# ----------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """What fixes a run; the defaults are the paper's setting (Sec. IV-A2 and the authors' nnU-Net code)."""

    dims: int = 3  # the meta-learned network: 2 (axial slices) or 3 (volumes / patches)
    grid: tuple[int | None, ...] = (None, None, None)  # every subject resampled to this grid (None: keep the axis)
    patch: int = 128  # training patch edge (2D: S x S axial patches; 3D: S^3) and sliding window
    base_width: int = 32  # c of Table VII
    batch_size: int = 2  # items per dataset in a mini-batch
    steps: int = 250_000  # meta-iterations (nnU-Net's 1000 epochs x 250 iterations)
    inner_lr: float = 0.01  # α (Eq. 1), constant (Theorem 1's α_t = min{1/L, c1/√T} does not vary with t)
    outer_lr: float = 0.01  # β (Eq. 2, 8) of θ and φ, poly decay (Sec. IV-A2)
    upper_order: str = "sequential"  # θ then φ, as Algorithm 1 (problems/dumeta/levels.py: UPPER_ORDERS)
    augment: bool = True  # nnU-Net's default augmentation (problems/braindata/augment.py), training and fine-tuning
    both_protocols: bool = True  # MAML, Reptile, Table V A also meta-tested the other way (problems/dumeta/methods.py)
    momentum: float = 0.99
    weight_decay: float = 3e-5
    reptile_inner_steps: int = 3
    fine_tune_steps: int = 250_000
    fine_tune_lr: float = 0.01
    fine_tune_batch: int = 2
    valid_every: int = 250  # meta-iterations between validations (0: at the end)
    valid_people: int = 4  # validation people per pool dataset
    test_people: int | None = None  # cap on test people per meta-test domain (None: all)
    embed_items: int = 32  # samples per domain in the feature embedding (Fig. 6)
    sw_batch: int = 2  # sliding-window batch at inference
    people: int | None = None  # people per embedded domain (None: the generator's 6, 10 for infant6m)
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] | None = None  # None: every method (randinit-3d only in 3D)
    shots: tuple[int, ...] = (1, 5)
    capacities: tuple[int, ...] = (1, 10, 100, 1000)  # Table VI
    depths: tuple[int | str, ...] = (0, 1, 2, 3, 4, 5, "all")  # Fig. 7

    def meta_test(self, dims: int | None = None) -> MetaTestSetup:
        """How this preset meta-tests a network of ``dims`` (default: the preset's)."""
        same = ("base_width", "patch", "momentum", "weight_decay", "sw_batch", "test_people", "augment")
        tuning = {"steps": self.fine_tune_steps, "lr": self.fine_tune_lr, "batch": self.fine_tune_batch}
        return MetaTestSetup(dims=dims or self.dims, **tuning, **{k: getattr(self, k) for k in same})


CPU_2D = {"dims": 2, "grid": (64, 64, None), "patch": 64, "valid_people": 1, "sw_batch": 32, "augment": False}
"""2D on 64x64 axial slices of volumes resampled to 64x64xZ: what two CPU cores can train."""
PRESETS = {
    # a c = 4 network, a handful of steps: the pipeline on 2 cores
    "smoke": Preset(
        **CPU_2D,
        base_width=4,
        steps=8,
        inner_lr=0.05,
        outer_lr=0.05,
        momentum=0.9,
        reptile_inner_steps=2,
        fine_tune_steps=10,
        fine_tune_lr=0.05,
        fine_tune_batch=4,
        valid_every=0,
        test_people=2,
        embed_items=6,
    ),
    # 3D on whole volumes resampled to 64^3, c = 16
    "small": Preset(
        grid=(64, 64, 64),
        patch=64,
        base_width=16,
        steps=3000,
        fine_tune_steps=1000,
        valid_people=2,
        embed_items=16,
    ),
    # the paper: 3D 128^3 patches of the native volumes, c = 32, batch 2, SGD Nesterov 0.99 from 0.01 with poly decay
    "paper": Preset(),
    # the claims on 2 CPU cores (docs/recipes/dumeta.md, "Study preset"): 2D c = 8 on 64x64 slices, the paper's
    # optimiser, 300 meta-iterations and fine-tuning steps, 16 people per embedded domain, three seeds
    "study": Preset(
        **CPU_2D,
        base_width=8,
        steps=300,
        fine_tune_steps=300,
        valid_every=100,
        embed_items=8,
        test_people=6,
        both_protocols=False,
        people=16,
        seeds=(0, 1, 2),
        methods=("randinit-2d", "maml", "reptile", "sample", "dumeta++"),
        capacities=(),
        depths=(),
    ),
}


@dataclass(frozen=True)
class Context:
    """What every run of one invocation shares: the resolved preset, the plan's settings, the options, the device."""

    preset: Preset
    settings: dict[str, Any]
    args: argparse.Namespace
    device: torch.device

    def data(self, seed: int) -> Data:
        """The pool and the unseen domains of ``seed`` (loaded once per seed and source)."""
        a, p = self.args, self.preset
        source = DataSource(
            str(a.data_root) if a.data_root else None,
            tuple(a.meta_train) if a.meta_train else None,
            tuple(a.meta_test) if a.meta_test else None,
            a.label_map,
            p.people,
        )
        patch, device = p.meta_test().patch_size, str(self.device)
        return meta_data(
            source, grid=p.grid, patch=patch, valid_people=p.valid_people, seed=seed, augment=p.augment, device=device
        )


# ----------------------------------------------------------------------------------------- command line
def depth_arg(text: str) -> int | str:
    if text not in DEPTH_CHOICES:
        raise argparse.ArgumentTypeError(f"head depth must be one of {', '.join(DEPTH_CHOICES)}, got {text!r}")
    return text if text == "all" else int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser, datasets=("lifespan",), default_dataset="lifespan")
    add = parser.add_argument
    add("--methods", nargs="+", choices=list(METHODS), help="methods to run (default: all; randinit-3d in 3D presets)")
    add("--shots", nargs="+", type=common.positive_int, help="support subjects on both unseen domains (default 1 5)")
    add("--head-depth", type=depth_arg, default=3, help="decoder stages fine-tuned at meta-test (Fig. 7: 3 is best)")
    add("--capacities", nargs="*", type=common.positive_int, help="Table VI (dumeta++; default 1 10 100 1000)")
    add("--depths", nargs="*", type=depth_arg, help="Fig. 7's fine-tuned depths (dumeta++; default 0-5 and all)")
    add("--lambda1", type=common.finite_non_negative_float, default=1.5, help="λ1, the triplet margin (Eq. 13)")
    add("--lambda2", type=common.finite_non_negative_float, default=0.1, help="λ2, the weight of L_reg (Eq. 15)")
    add("--reg-features", choices=REG_FEATURES, default="decoder", help="L_reg's features (Sec. III-B; Appendix II)")
    add("--fine-tune-steps", type=common.positive_int, default=None, help="override the preset's fine-tuning steps")
    add("--meta-train", nargs="+", default=None, help="meta-training domains (folders under --data-root)")
    add("--meta-test", nargs=2, default=None, metavar=("ISEG_LIKE", "ADNI_LIKE"), help="the two unseen domains")
    add("--label-map", default=None, help="label map of nnU-Net-layout folders: identity, iseg, ibeat or freesurfer")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------- plan
def resolve(args: argparse.Namespace) -> tuple[str, Preset, list[int], list[str]]:
    """The preset's name, the preset with the command line's overrides, the seeds and the methods."""
    device, name, seeds = common.resolve(args)
    lists = {
        k: tuple(dict.fromkeys(v)) for k in ("shots", "capacities", "depths") if (v := getattr(args, k)) is not None
    }
    preset = common.override(PRESETS[name], steps=args.steps, fine_tune_steps=args.fine_tune_steps, **lists)
    methods = list(args.methods or preset.methods or [m for m in METHODS if m != "randinit-3d" or preset.dims == 3])
    if preset.dims == 2 and "randinit-3d" in methods:
        raise SystemExit(f"error: randinit-3d needs a 3D preset (small or paper); the {name} preset is 2D")
    if any(METHODS[m].main for m in methods):  # Table IV's yardsticks beside the methods
        methods = list(dict.fromkeys([*methods, *REFERENCES]))
    if "dumeta++" not in methods:  # Table VI and Fig. 7 are DuMeta++'s
        preset = replace(preset, capacities=(), depths=())
    return name, preset, list(seeds or preset.seeds), methods


def make_plan(args: argparse.Namespace) -> planning.Plan:
    """The runs (method x seed, and DuMeta++ at every other memory-bank capacity) and what fixes them."""
    name, preset, seeds, methods = resolve(args)
    others = [n for n in preset.capacities if n != DEFAULT_CAPACITY]
    runs = []
    for seed in seeds:
        runs += planning.grid(methods, [seed])
        runs += planning.grid(["dumeta++"], [seed], {"capacity": others}) if others else []
    settings = {
        **{k: v for k, v in asdict(preset).items() if k not in ("seeds", "methods")},
        "head_depth": args.head_depth,
        "lambda1": args.lambda1,
        "lambda2": args.lambda2,
        "reg_features": args.reg_features,
        "hypergrad": common.parse_hypergrad(args.hypergrad, ("encoder", "head_init")),
        "data_root": str(args.data_root) if args.data_root else None,
        "meta_train": args.meta_train,
        "meta_test": args.meta_test,
        "label_map": args.label_map,
        "precision": args.precision,
    }
    return planning.Plan("dumeta", name, runs, settings)


# ----------------------------------------------------------------------------------------- graph
def graph_for(spec: planning.RunSpec, ctx: Context, data: Data) -> tuple[Graph, int, DualUNet]:
    """The meta-training graph of one run, ready to run: the graph, its number of global steps, the network."""
    p, s, method = ctx.preset, ctx.settings, METHODS[spec.method]
    torch.manual_seed(spec.seed)
    net = DualUNet(p.dims, base_width=p.base_width)
    outer = sgd(p.outer_lr, p.momentum, p.weight_decay)
    if method.kind == "joint":
        sampler = JointSampler(data.pool, p.batch_size, seed=spec.seed)
        return joint_training_graph(net=net, sampler=sampler, optimizer=outer, scheduler=poly(p.steps)), p.steps, net
    sampler = MetaTaskSampler(data.pool, p.batch_size, seed=spec.seed)
    shared = {"net": net, "sampler": sampler, "inner_lr": p.inner_lr, "outer_optimizer": outer}
    shared["outer_scheduler"] = poly(p.steps)  # α stays constant (no inner scheduler)
    if method.kind == "init":
        k = 1 if method.variant == "maml" else p.reptile_inner_steps
        return init_learning_graph(method.variant, inner_steps=k, **shared), p.steps * k, net
    graph = dual_meta_graph(
        method.variant,
        **shared,
        reg_weight=s["lambda2"],
        margin=s["lambda1"],
        capacity=spec.get("capacity", DEFAULT_CAPACITY),
        reg_features=s["reg_features"],
        encoder_hypergrad=s["hypergrad"].get("encoder", "exact"),
        head_init_hypergrad=s["hypergrad"].get("head_init", "first_order"),
        upper_order=p.upper_order,
    )
    return graph, p.steps, net


# ----------------------------------------------------------------------------------------- run
def meta_train(spec: planning.RunSpec, run_dir: Path, ctx: Context, data: Data) -> tuple[dict, dict]:
    """Meta-train one run (resuming its checkpoint) and select its best checkpoint; returns the start of
    every meta-test (the parameters by name) and the run's facts."""
    p = ctx.preset
    graph, steps, net = graph_for(spec, ctx, data)
    every = (p.valid_every or p.steps) * (steps // p.steps)  # global steps per meta-iteration
    result = Runner(
        graph,
        steps,
        out=run_dir,
        device=ctx.device,
        seed=spec.seed,
        precision=ctx.args.precision,
        validate=PoolValidation(net, data.pool_val, p.meta_test(), ctx.device),
        valid_every=every,
        monitor="val_dice",
        mode="max",
        checkpoint_every=every,
        resume=planning.has_checkpoint(run_dir),
        progress=not ctx.args.no_progress,
        config={"run": spec.as_row(), "preset": asdict(p), "command": common.command_line()},
    ).run()
    best = run_dir / "checkpoint_best.pt"
    if best.exists():
        state = load_checkpoint(best, map_location=ctx.device)
        for level_name, level in graph.levels.items():
            level.module.load_state_dict(state["levels"][level_name]["module"])
    start = {n: t.detach().cpu().clone() for n, t in meta_trained_parameters(graph, net).items()}
    facts = {
        "steps": result.steps,
        "best_step": result.best["step"] if result.best else None,
        "best_val_dice": result.best["metrics"]["val_dice"] if result.best else None,
        "upper_order": effective_upper_order(p.upper_order) if "head_init" in graph.levels else None,
    }
    return start, facts


def train(spec: planning.RunSpec, run_dir: Path, *, ctx: Context) -> dict[str, Any]:
    """One run: meta-train ``spec.method`` (random initialisation: nothing), then every meta-test its
    tables need; returns the per-subject rows, the meta-training facts and one example slice per meta-test."""
    p, s, a, method = ctx.preset, ctx.settings, ctx.args, METHODS[spec.method]
    planning.started(run_dir, spec, s)  # an interrupted run continues only with the settings it began with
    data = ctx.data(spec.seed)
    setup = p.meta_test(method.dims)
    facts, embedding, start = {}, None, None
    if method.kind == "scratch":
        start = random_start(setup.dims, p.base_width, spec.seed)
    elif method.kind != "reference":
        start, facts = meta_train(spec, run_dir, ctx, data)
    if method.kind == "dual":  # Fig. 6: class-mean decoder features of the meta-trained network
        net = network_from(DualUNet(p.dims, base_width=p.base_width), start).to(ctx.device)
        features = feature_embedding(net, data, setup, p.embed_items, spec.seed)
        torch.save(features, run_dir / "embedding.pt")
        embedding = "embedding.pt"
    rows, examples = [], {}
    capacity = spec.get("capacity", DEFAULT_CAPACITY)
    jobs = jobs_for(
        spec.method,
        capacity=capacity,
        head_depth=s["head_depth"],
        shots=s["shots"],
        depths=s["depths"],
        both_protocols=s["both_protocols"],
    )
    for job in jobs:
        domain = data.targets[job.domain]
        folder = job.folder(domain.name)
        kwargs = {"seed": spec.seed, "device": ctx.device, "precision": a.precision, "progress": not a.no_progress}
        if method.kind == "reference":
            done = reference_test(spec.method, job, domain, setup, **kwargs)
        else:
            done = meta_test(start, job, domain, setup, out=run_dir / "finetune" / folder, **kwargs)
        rows += done["rows"]
        examples[folder] = done["example"]
    return {"rows": rows, "facts": facts, "examples": examples, "embedding": embedding}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.download:
        raise SystemExit(
            "error: --download: OASIS3, IBIS, ADNI and iSeg-2019 need registration; see docs/recipes/dumeta.md "
            "for the layouts to place under --data-root"
        )
    if args.workers:
        raise SystemExit("error: --workers: this recipe draws its patches in the training process; leave it at 0")
    plan = make_plan(args)
    args.preset = plan.preset
    device, _, _ = common.resolve(args)
    _, preset, seeds, methods = resolve(args)
    ctx = Context(preset, plan.settings, args, device)
    try:  # before any training: the data exist, and every unseen domain has people for --shots and a test
        first = ctx.data(seeds[0])
    except BrainDataError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        check_shots(first.targets, preset.shots)
    except BrainDataError as err:
        raise SystemExit(f"error: {err} (--shots {' '.join(map(str, preset.shots))})") from None
    out = common.prepare_out(args.out or Path("runs") / f"dumeta-{args.dataset}-{plan.preset}", args.resume)
    print(f"[dumeta] preset '{plan.preset}' on {device}: {common.preset_table(preset)}")
    print(f"[dumeta] pool {[d.name for d in first.pool]}, unseen {[d.name for d in first.targets]} ({first.source})")
    done = planning.execute(plan, out, functools.partial(train, ctx=ctx))
    graph = graph_for(planning.RunSpec("dumeta++", seeds[0]), ctx, first)[0] if "dumeta++" in methods else None
    return report.write(out, plan, done, data=first, root=args.data_root, device=device, graph=graph)


if __name__ == "__main__":
    main()
