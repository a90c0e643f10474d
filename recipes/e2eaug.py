"""E2EAug end to end: a searchable Pix2Pix, a segmenter and the generator architecture as three levels.

Paper: *E2EAug: An End-to-End Data Augmentation Framework for Medical Image Semantic Segmentation*
(anonymous submission); the method's public code is GenSeg (L. Zhang et al., "Generative AI enables
medical image segmentation in ultra low-data regimes", Nature Communications, 2025).

    python recipes/e2eaug.py --dataset isic [--data-root DIR] [--preset smoke|small|paper|study] [--out DIR]
    python recipes/e2eaug.py --dataset isic --ablation lambda mask-op train-size

For each training-set size and seed, every method trains the same segmenter (same initialisation,
labelled subset and batch order: a paired comparison) for the same number of steps, selects its
best checkpoint on the validation split and is scored per image on the test set and the
out-of-distribution test sets. Methods (problems/e2eaug/methods.py): none, rotate, flip, translate,
combine, gan_separate (vanilla Pix2Pix trained first, then frozen), e2eaug_frozen_arch (A held
constant, G trained jointly with the segmenter) and e2eaug (Eq. 4). Every generator takes
--pretrain-steps + --steps updates in all. Ablations (§4.3): lambda (λ of Eq. 2 over --lambdas),
mask-op (one mask operation instead of all three), train-size (Fig. 2). With --ablation only the
named studies run; add --methods to run the main comparison in the same folder.

Reads presets -> plan -> graph -> run -> report. Writes to --out: results.md (the paper's claims
tested first, then Tables 2/3 with the paper's numbers, the ablations), results.json, figures/
(recipes/reports/e2eaug.py) and runs/<run>/ for every training run (--resume reads finished runs
back and resumes interrupted ones from their checkpoints).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import planning
from doctor import write_doctor
from planning import RunSpec
from reports import e2eaug as report

from engines import Graph, Runner, resolve_device
from engines.checkpoint import load_checkpoint
from problems.e2eaug.augment import MASK_OPERATIONS
from problems.e2eaug.data import Data, Roots, SampleSizes, comparison_sizes, load_data, size_ladder, splits_for
from problems.e2eaug.evaluation import examples, test_scores, validation
from problems.e2eaug.levels import Optimizers
from problems.e2eaug.methods import (
    BACKBONES,
    DEFAULT_HYPERGRAD,
    METHODS,
    Execution,
    Settings,
    build_graph,
    check_settings,
)
from problems.e2eaug.pretraining import pretrain_generators
from problems.segdata import DATASETS, DatasetError, ensure_dataset, is_synthetic_sample

DATASET_KEYS = {"isic": "isic2018", **{k: k for k in ("isic2018", "jsrt", "busi", "fetreg", "kvasir")}}
LEVELS = ("gan", "seg")
ABLATIONS = ("lambda", "mask-op", "train-size")
DEFAULT_LAMBDAS = (0.1, 0.5, 1.0, 2.0)
ABLATION_BACKBONE = "unet"  # §4.3: "U-Net as the backbone segmentation model unless otherwise stated"


# ---------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True, kw_only=True)
class Preset(Settings):
    """A run's :class:`Settings` plus what a preset adds (command-line options override single fields):
    the validation and checkpoint interval (the best validation checkpoint is tested), the backbones
    and seeds of every study, the comparison's N (all of Table 1 with ``all_train_sizes``, else the
    first; ``train_sizes`` instead when set) and the sizes of the embedded synthetic samples."""

    valid_every: int
    backbones: tuple[str, ...]
    seeds: tuple[int, ...]
    all_train_sizes: bool = False
    train_sizes: tuple[int, ...] = ()
    sample: SampleSizes = field(default_factory=SampleSizes)


SMOKE = Preset(  # two CPU cores, a few minutes for all eight methods
    image_size=32,
    ngf=8,
    ndf=8,
    batch_size=4,
    pretrain_steps=30,
    steps=30,
    valid_every=10,
    backbones=("unet",),
    encoder="resnet18",
    seeds=(0,),
    optimizers=Optimizers(seg_lr=1e-4, gan_lr=2e-4),
)
PRESETS = {
    "smoke": SMOKE,
    # a real but short experiment on a GPU
    "small": replace(
        SMOKE,
        image_size=128,
        ngf=32,
        ndf=32,
        batch_size=8,
        pretrain_steps=600,
        steps=1500,
        valid_every=100,
        backbones=BACKBONES,
        encoder="resnet34",
    ),
    # §4.1: 5000 iterations, RMSprop 1e-5 / Adam 1e-5 (β 0.5, 0.999), weight decay 1e-3, three seeds
    "paper": Preset(
        image_size=256,
        ngf=64,
        ndf=64,
        batch_size=2,
        pretrain_steps=4000,
        steps=5000,
        valid_every=50,
        backbones=BACKBONES,
        encoder="resnet34",
        seeds=(0, 1, 2),
        all_train_sizes=True,
    ),
    # the claims over three seeds on two CPU cores (docs/recipes/e2eaug.md, "Study preset"); N = 10: 8 train, 2 val
    "study": replace(
        SMOKE,
        pretrain_steps=200,
        steps=300,
        valid_every=30,
        seeds=(0, 1, 2),
        train_sizes=(10,),
        sample=SampleSizes(cases=160, test=100, ood_cases=60),
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The shared options (recipes/common.py) and E2EAug's own; option values are checked here."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser, datasets=sorted(DATASET_KEYS), default_dataset="isic")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="default: all; none with --ablation")
    what = "§4.3: lambda (λ sweep, Fig. 6), mask-op (one mask operation, Fig. 5), train-size (score against N, Fig. 2)"
    parser.add_argument("--ablation", nargs="+", choices=ABLATIONS, default=None, help=what)
    lambdas = " ".join(f"{v:g}" for v in DEFAULT_LAMBDAS)
    parser.add_argument("--lambdas", type=common.positive_float, nargs="+", help=f"λ of --ablation lambda ({lambdas})")
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=None, help="segmentation networks")
    parser.add_argument("--encoder", default=None, help="smp encoder of the segmenter (e.g. resnet34)")
    sizes = "labelled examples N (80/20 train/val) of the comparison and train-size study (λ, mask-op: the first)"
    parser.add_argument("--train-sizes", type=common.positive_int, nargs="+", help=sizes)
    parser.add_argument("--image-size", type=common.positive_int, default=None, help="side of the square images")
    parser.add_argument("--pretrain-steps", type=common.positive_int, default=None, help="Pix2Pix pre-training steps")
    parser.add_argument("--lambda-aug", type=common.positive_float, default=None, help="λ of Eq. 2 (augmented pairs)")
    parser.add_argument("--encoder-weights", default=None, help="e.g. 'imagenet' (downloaded by smp, or cached)")
    args = parser.parse_args(argv)
    if args.lambdas is not None and "lambda" not in (args.ablation or ()):
        parser.error("--lambdas needs --ablation lambda")
    args.lambdas = list(dict.fromkeys(args.lambdas or DEFAULT_LAMBDAS))
    return args


def preset_of(args: argparse.Namespace) -> tuple[str, Preset]:
    """The preset's name and its values with the command line's overrides."""
    _, name, seeds = common.resolve(args)
    try:
        return name, common.override(
            PRESETS[name],
            steps=args.steps,
            encoder=args.encoder,
            image_size=args.image_size,
            pretrain_steps=args.pretrain_steps,
            lambda_aug=args.lambda_aug,
            encoder_weights=args.encoder_weights,
            seeds=tuple(seeds) if seeds else None,
            backbones=tuple(args.backbones) if args.backbones else None,
        )
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


# ---------------------------------------------------------------------------------------------- plan
@dataclass
class Plan(planning.Plan):
    """The runs, plus which of them make each study (a run shared by two studies is trained once)."""

    studies: dict[str, list[RunSpec]] = field(default_factory=dict)
    values: Preset | None = None  # the preset with the command line's overrides
    hypergrad: dict[str, str] = field(default_factory=dict)  # the method of each level crossed by hypergradients

    def describe(self) -> dict:
        """planning's description plus the backbones, the N and the runs of each study."""
        shape = {
            "backbones": list(dict.fromkeys(r.get("backbone") for r in self.runs)),
            "labelled examples N": list(dict.fromkeys(r.get("n") for r in self.runs)),
            "studies": ", ".join(f"{k} ({len(v)} runs)" for k, v in self.studies.items()),
        }
        return {**super().describe(), **shape}


def run_spec(
    method: str, backbone: str, n: int, seed: int, *, lam: float | None = None, ops: tuple[str, ...] = MASK_OPERATIONS
) -> RunSpec:
    """One run; λ = None is the preset's λ and all three mask operations the default, so the runs that
    two studies share are one spec (one folder)."""
    variant = [("backbone", backbone), *([("lam", lam)] if lam is not None else []), ("n", n)]
    return RunSpec(method, seed, tuple(variant + ([("ops", tuple(ops))] if tuple(ops) != MASK_OPERATIONS else [])))


def make_plan(args: argparse.Namespace) -> Plan:
    """The runs of every requested study and the settings that fix them (pure: nothing is read or trained).

    ``comparison``: the methods of Tables 2/3. The λ and mask-operation ablations train E2EAug on the
    first N (§4.3) with U-Net; ``train_size`` runs the methods over the ladder of N.
    """
    name, preset = preset_of(args)
    chosen = common.parse_hypergrad(args.hypergrad, LEVELS)
    hypergrad = {level: chosen.get(level, DEFAULT_HYPERGRAD) for level in LEVELS}
    key = DATASET_KEYS[args.dataset]
    sample = args.data_root is None or is_synthetic_sample(args.data_root)
    source = "embedded-sample" if sample else "real"
    chosen = args.train_sizes or list(preset.train_sizes)
    sizes = chosen or comparison_sizes(key, source, every_size=preset.all_train_sizes)
    ablations = set(args.ablation or ())
    methods = args.methods if args.methods is not None else ([] if ablations else list(METHODS))
    seeds, backbones = preset.seeds, preset.backbones
    b0 = ABLATION_BACKBONE if ABLATION_BACKBONE in backbones else backbones[0]
    studies: dict[str, list[RunSpec]] = {}
    if methods:
        studies["comparison"] = [run_spec(m, b, n, s) for s in seeds for n in sizes for b in backbones for m in methods]
    if "lambda" in ablations:
        lams = [None if lam == preset.lambda_aug else lam for lam in args.lambdas]
        studies["lambda"] = [run_spec("e2eaug", b0, sizes[0], s, lam=lam) for s in seeds for lam in lams]
    if "mask-op" in ablations:
        ops = (MASK_OPERATIONS, *((op,) for op in MASK_OPERATIONS))
        studies["mask_op"] = [run_spec("e2eaug", b0, sizes[0], s, ops=o) for s in seeds for o in ops]
    if "train-size" in ablations:
        ladder = args.train_sizes or size_ladder(key, source)
        runs = [run_spec(m, b, n, s) for s in seeds for n in ladder for b in backbones for m in methods or METHODS]
        studies["train_size"] = runs
    ood = DATASETS[key].ood_tests
    tests = [f"{key} {preset.sample.test_of(key)}", *(f"{k} {preset.sample.cases_of(k, False)}" for k in ood)]
    settings = {
        "dataset": key,
        "data": f"embedded synthetic samples ({key}: {preset.sample.cases_of(key, True)} cases)" if sample else "real",
        "test images": ", ".join(tests) if sample else f"{key} {DATASETS[key].test_size}, out-of-distribution: all",
        **{f.name: getattr(preset, f.name) for f in fields(Settings) if f.name != "optimizers"},
        **asdict(preset.optimizers),
        "valid_every": preset.valid_every,
        "hypergrad": ", ".join(f"{level}={method}" for level, method in hypergrad.items()),
        "precision": args.precision,
    }
    all_runs = list(dict.fromkeys(r for study in studies.values() for r in study))
    return Plan("e2eaug", name, all_runs, settings, studies=studies, values=preset, hypergrad=hypergrad)


# ---------------------------------------------------------------------------------------------- graph
@dataclass
class Context:
    """What every run of one invocation shares; the data of each (N, seed) is loaded once."""

    preset: Preset
    key: str
    roots: Roots
    execution: Execution
    hypergrad: dict[str, str]
    runs: Path
    doctor: bool = False  # the hypergradient doctor's table of each graph with hypergradient paths, before training
    audit_every: int = 0  # the runner's audit of each upper level's hypergradient (0: off)
    _data: dict[tuple[int, int], Data] = field(default_factory=dict)

    def data(self, n: int, seed: int) -> Data:
        if (n, seed) not in self._data:
            self._data[(n, seed)] = load_data(self.key, self.roots, n, seed, self.preset.image_size, self.preset.sample)
        return self._data[(n, seed)]


def graph_for(spec: RunSpec, ctx: Context) -> Graph:
    """One run's graph, ready to run (its generators pre-trained first where it needs them)."""
    n, seed = spec.get("n"), spec.seed
    data = ctx.data(n, seed)
    pretrained = pretrain_generators({spec.method}, ctx.preset, data, n, seed, ctx.runs, ctx.execution)
    return build_graph(
        spec.method,
        backbone=spec.get("backbone"),
        seed=seed,
        settings=ctx.preset,
        data=data,
        pretrained=pretrained,
        execution=ctx.execution,
        lam=spec.get("lam"),
        mask_ops=spec.get("ops", MASK_OPERATIONS),
        hypergrad=ctx.hypergrad,
    )


# ---------------------------------------------------------------------------------------------- run
def train(spec: RunSpec, run_dir: Path, ctx: Context) -> dict:
    """Train one run, pick its best validation checkpoint, score every test image; figures' examples
    go to ``run_dir/examples.npz``."""
    graph, data = graph_for(spec, ctx), ctx.data(spec.get("n"), spec.seed)
    preset, device = ctx.preset, ctx.execution.device
    if ctx.doctor and any(graph.paths().values()):
        write_doctor(graph, run_dir, device=device)
    t0 = time.perf_counter()
    result = Runner(
        graph,
        preset.steps,
        out=run_dir,
        device=device,
        seed=spec.seed,
        precision=ctx.execution.precision,
        validate=validation(data, device),
        valid_every=preset.valid_every,
        monitor=f"val_{data.metric}",
        mode="max",
        checkpoint_every=preset.valid_every,
        resume=planning.has_checkpoint(run_dir),
        progress=ctx.execution.progress,
        audit_every=ctx.audit_every,
        config={"run": spec.as_row(), "preset": asdict(preset), "command": common.command_line()},
    ).run()
    out = {"run": spec.name, "best_step": result.best["step"], "val": result.best["metrics"][f"val_{data.metric}"]}
    out["train_seconds"] = time.perf_counter() - t0
    if "arch" in graph.levels:
        out["genotype"] = graph["arch"].module.genotype()  # at the last step
    best = load_checkpoint(run_dir / "checkpoint_best.pt", map_location=device)
    for name, level in graph.levels.items():
        level.module.load_state_dict(best["levels"][name]["module"])
    out["tests"] = test_scores(graph["seg"].module, data, device)
    np.savez_compressed(run_dir / "examples.npz", **examples(graph, data, device))
    return out


def prepare(args: argparse.Namespace, plan: Plan, out: Path) -> Context:
    """Where each dataset comes from (the embedded samples are written under ``out/samples``), that
    every (N, seed) of the plan fits it, and how runs execute: what :func:`train` shares."""
    preset, key = plan.values, plan.settings["dataset"]
    roots: Roots = {}
    for k in (key, *DATASETS[key].ood_tests):
        try:
            cases = preset.sample.cases_of(k, k == key)
            roots[k] = ensure_dataset(
                k, args.data_root, download=args.download, sample_root=out / "samples", sample_cases=cases
            )
        except DatasetError as err:
            if k == key:
                raise SystemExit(f"error: {err}") from None
            print(f"[e2eaug] out-of-distribution test set '{k}' is not available: {err}")
            roots[k] = (None, "missing")
        note = "SYNTHETIC embedded sample (not the real data)" if roots[k][1] == "embedded-sample" else roots[k][1]
        print(f"[e2eaug] {DATASETS[k].title}: {note} at {roots[k][0]}")
    for n, seed in dict.fromkeys((r.get("n"), r.seed) for r in plan.runs):
        try:
            splits_for(key, roots, n, seed, preset.sample)
        except DatasetError as err:
            raise SystemExit(f"error: --train-sizes {n}: {err}") from None
    execution = Execution(resolve_device(args.device), args.precision, args.workers, not args.no_progress)
    return Context(preset, key, roots, execution, plan.hypergrad, out / "runs", args.doctor, args.audit_every)


def main(argv: list[str] | None = None) -> dict:
    """parse -> plan -> check -> train every run (planning.execute) -> report; returns results.json."""
    args = parse_args(argv)
    plan = make_plan(args)
    preset = plan.values
    try:
        check_settings(preset, preset.backbones, DATASETS[plan.settings["dataset"]].channels, plan.hypergrad)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    out = common.prepare_out(args.out or Path("runs") / f"e2eaug-{args.dataset}-{plan.preset}", args.resume)
    ctx = prepare(args, plan, out)
    print(f"[e2eaug] preset '{plan.preset}' on {ctx.execution.device}: {common.preset_table(preset)}")
    print(f"[e2eaug] {plan.describe()['studies']}; {len(plan.runs)} distinct runs")
    results = planning.execute(plan, out, functools.partial(train, ctx=ctx))
    for first in [r for r in plan.studies.get("comparison", []) if r.method == "e2eaug"][:1]:  # the graph figure
        graph_for(first, ctx).draw(out / "figures" / "graph.png")
    saved, markdown = report.write(
        out,
        plan,
        plan.studies,
        results,
        preset=preset,
        roots=ctx.roots,
        device=ctx.execution.device,
        hypergrad=plan.hypergrad,
    )
    print(markdown)
    print(f"[e2eaug] wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'figures'}/")
    return saved


if __name__ == "__main__":
    main()
