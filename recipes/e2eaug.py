"""E2EAug end to end: a searchable Pix2Pix, a segmenter and the generator architecture as three levels.

    python recipes/e2eaug.py --dataset isic [--data-root DIR] [--preset smoke|small|paper] [--out DIR]
    python recipes/e2eaug.py --dataset isic --ablation lambda mask-op train-size

For each training-set size and seed, every method trains the same segmenter (same
initialisation, labelled subset and batch order: a paired comparison) for the same number of
steps, selects its best checkpoint on the validation split and is scored per image on the test
set and the out-of-distribution test sets. Methods: none, rotate, flip, translate, combine (image
and mask transformed together), gan_separate (vanilla Pix2Pix trained first, then frozen),
e2eaug_frozen_arch (the searchable generator at a constant architecture, trained jointly with the
segmenter) and e2eaug (Eq. 4, the three-level graph of problems/e2eaug/levels.py). Every generator
takes --pretrain-steps + --steps updates in all.

Ablations (§4.3), each with its own results.md section, results.json rows and figure: lambda (λ of
Eq. 2 over --lambdas), mask-op (one mask operation instead of all three) and train-size (Fig. 2:
performance against the number of labelled examples). With --ablation only the named studies
run; add --methods to run the main comparison in the same folder.

Writes to --out: results.json, results.md (Tables 2/3 layout with the paper's numbers beside ours,
paired differences against `none`, the paper's claims tested on this run, the ablations),
figures/*.png and runs/<run>/ (config.json, metrics.jsonl, checkpoints) for every training run.
--resume skips finished runs and resumes interrupted ones from their checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import reporting

from engines import METHODS as HYPERGRAD_METHODS
from engines import DataStream, Graph, Runner
from engines.checkpoint import load_checkpoint, save_atomic
from problems.e2eaug import (
    ArchitectureLevel,
    AugmentedPairs,
    Optimizers,
    Pix2PixLevel,
    SegmentationLevel,
    e2eaug_graph,
    evaluate,
    frozen_architecture_graph,
    segmentation_model,
)
from problems.e2eaug.augment import MASK_OPERATIONS, joint_augmentation, mask_augmentation
from problems.e2eaug.pix2pix import (
    PIX2PIX_CANDIDATE,
    GeneratorArchitecture,
    Pix2Pix,
    UNetGenerator,
    patch_discriminator,
)
from problems.segdata import (
    DATASETS,
    SAMPLE_SPLITS,
    DatasetError,
    SegmentationDataset,
    ensure_dataset,
    find_cases,
    make_splits,
    ood_test_cases,
)

DATASET_KEYS = {
    "isic": "isic2018",
    "isic2018": "isic2018",
    "jsrt": "jsrt",
    "busi": "busi",
    "fetreg": "fetreg",
    "kvasir": "kvasir",
}
DEFAULT_HYPERGRAD = "one_step"
"""How upper levels differentiate through ``gan`` and ``seg`` unless --hypergrad says otherwise
(a one-step unrolled approximation, §3.3)."""
SIMPLE_METHODS = ("none", "rotate", "flip", "translate", "combine")
METHODS = (*SIMPLE_METHODS, "gan_separate", "e2eaug_frozen_arch", "e2eaug")
SEARCHABLE_GAN_METHODS = ("e2eaug_frozen_arch", "e2eaug")
BACKBONES = ("unet", "deeplabv3")
LEVELS = ("gan", "seg")
LEVEL_OPTIMIZERS = {"gan": "Adam", "seg": "RMSprop"}  # what Optimizers builds for the levels crossed by hypergradients
ABLATIONS = ("lambda", "mask-op", "train-size")
DEFAULT_LAMBDAS = (0.1, 0.5, 1.0, 2.0)
ABLATION_BACKBONE = "unet"  # §4.3: "U-Net as the backbone segmentation model unless otherwise stated"
SINGLE_OPERATIONS = tuple((op,) for op in MASK_OPERATIONS)
FULL_OPERATIONS = "+".join(MASK_OPERATIONS)


@dataclass(frozen=True)
class Preset:
    """Everything a preset fixes; command-line options override single fields."""

    image_size: int
    ngf: int
    ndf: int
    batch_size: int
    pretrain_steps: int
    steps: int
    valid_every: int
    backbones: tuple[str, ...]
    encoder: str
    seeds: tuple[int, ...]
    all_train_sizes: bool = False  # every N of Table 1, else the first (the sample has one)
    optimizers: Optimizers = field(default_factory=Optimizers)
    lambda_aug: float = 1.0
    lambda_l1: float = 100.0
    encoder_weights: str | None = None  # e.g. "imagenet" (must be downloadable or cached)


PRESETS = {
    # two CPU cores, a few minutes for all eight methods
    "smoke": Preset(
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
    ),
    # a real but short experiment on a GPU
    "small": Preset(
        image_size=128,
        ngf=32,
        ndf=32,
        batch_size=8,
        pretrain_steps=600,
        steps=1500,
        valid_every=100,
        backbones=BACKBONES,
        encoder="resnet34",
        seeds=(0,),
        optimizers=Optimizers(seg_lr=1e-4, gan_lr=2e-4),
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
}


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    """The splits of one (training size, seed) setting, as datasets at the preset's image size."""

    train: SegmentationDataset
    val: SegmentationDataset
    tests: dict[str, SegmentationDataset]  # test-set key -> dataset (in-distribution first)
    channels: int
    metric: str


Roots = dict[str, tuple[Path | None, str]]


def locate(key: str, args: argparse.Namespace, sample_root: Path) -> tuple[Path | None, str]:
    """Where dataset ``key`` comes from: real layout, download, embedded sample, or missing (OOD only)."""
    try:
        root, source = ensure_dataset(key, args.data_root, download=args.download, sample_root=sample_root)
    except DatasetError as err:
        if key == DATASET_KEYS[args.dataset]:
            raise SystemExit(f"error: {err}") from None
        print(f"[e2eaug] out-of-distribution test set '{key}' is not available: {err}")
        return None, "missing"
    return root, source


def splits_for(key: str, roots: Roots, train_size: int, seed: int):
    """Table 1 splits of N = ``train_size`` labelled examples; the labelled subset depends on the seed
    only, so every method of a seed trains on the same cases."""
    root, source = roots[key]
    test_size = SAMPLE_SPLITS[key]["test_size"] if source == "embedded-sample" else None
    return make_splits(key, find_cases(key, root), train_size, seed, test_size=test_size)


def load_data(key: str, roots: Roots, train_size: int, seed: int, size: int) -> Data:
    splits = splits_for(key, roots, train_size, seed)
    tests = {key: SegmentationDataset(splits.test, size)}
    for ood in DATASETS[key].ood_tests:
        ood_root, _ = roots[ood]
        if ood_root is not None:
            tests[ood] = SegmentationDataset(ood_test_cases(ood, find_cases(ood, ood_root)), size)
    return Data(
        SegmentationDataset(splits.train, size, cache=True),
        SegmentationDataset(splits.val, size, cache=True),
        tests,
        DATASETS[key].channels,
        DATASETS[key].metric,
    )


def comparison_sizes(key: str, preset: Preset, source: str, requested: list[int] | None) -> list[int]:
    """N of the main comparison: --train-sizes, else the first of Table 1 (all with ``paper``)."""
    if requested:
        return requested
    if source == "embedded-sample":
        return list(SAMPLE_SPLITS[key]["train_sizes"][:1])
    all_sizes = list(DATASETS[key].train_sizes)
    return all_sizes if preset.all_train_sizes else all_sizes[:1]


def size_ladder(key: str, source: str, requested: list[int] | None) -> list[int]:
    """N of the train-size study (Fig. 2): --train-sizes, else every N of Table 1; on the embedded
    sample, half, three quarters and all of the sample's N."""
    if requested:
        return requested
    if source == "embedded-sample":
        n = SAMPLE_SPLITS[key]["train_sizes"][0]
        return sorted({n // 2, (3 * n) // 4, n})
    return list(DATASETS[key].train_sizes)


# ---------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class RunSpec:
    """One training run. ``lam=None`` is the preset's λ; ``mask_ops`` the mask operations of the
    GAN-based methods (all three by default)."""

    method: str
    backbone: str
    train_size: int
    seed: int
    lam: float | None = None
    mask_ops: tuple[str, ...] = MASK_OPERATIONS

    @property
    def name(self) -> str:
        parts = [self.method, self.backbone, f"n{self.train_size}", f"seed{self.seed}"]
        if self.lam is not None:
            parts.append(f"lam{self.lam:g}")
        if self.mask_ops != MASK_OPERATIONS:
            parts.append("ops-" + "-".join(self.mask_ops))
        return "__".join(parts)


def plan(args: argparse.Namespace, preset: Preset, key: str, source: str) -> dict[str, list[RunSpec]]:
    """The runs of every requested study: ``comparison`` (the methods of Tables 2/3) and the ablations.

    The λ and mask-operation ablations train E2EAug on the first N (§4.3: 40 ISIC / 9 JSRT examples)
    with U-Net; the train-size study runs the methods over the ladder of N. Runs shared between
    studies (e.g. λ = 1, all three operations) are the same run directory, trained once.
    """
    sizes = comparison_sizes(key, preset, source, args.train_sizes)
    ablations = set(args.ablation or ())
    methods = args.methods if args.methods is not None else ([] if ablations else list(METHODS))
    seeds, backbones = preset.seeds, preset.backbones
    ablation_backbone = ABLATION_BACKBONE if ABLATION_BACKBONE in backbones else backbones[0]
    studies: dict[str, list[RunSpec]] = {}
    if methods:
        studies["comparison"] = [RunSpec(m, b, n, s) for n in sizes for s in seeds for b in backbones for m in methods]
    if "lambda" in ablations:
        studies["lambda"] = [
            RunSpec("e2eaug", ablation_backbone, sizes[0], s, None if lam == preset.lambda_aug else lam)
            for s in seeds
            for lam in args.lambdas
        ]
    if "mask-op" in ablations:
        studies["mask_op"] = [
            RunSpec("e2eaug", ablation_backbone, sizes[0], s, mask_ops=ops)
            for s in seeds
            for ops in (MASK_OPERATIONS, *SINGLE_OPERATIONS)
        ]
    if "train-size" in ablations:
        studies["train_size"] = [
            RunSpec(m, b, n, s)
            for n in size_ladder(key, source, args.train_sizes)
            for s in seeds
            for b in backbones
            for m in (methods or METHODS)
        ]
    return studies


def check_settings(args: argparse.Namespace, preset: Preset, hypergrad: dict[str, str]) -> None:
    """Everything that can be checked before any training: image size, hypergradient methods against
    the levels' optimizers, and that the segmenter can be built (encoder name, weights)."""
    if preset.image_size < 16 or preset.image_size & (preset.image_size - 1):
        raise SystemExit(
            f"error: --image-size must be a power of two >= 16 (the U-Net generator halves it), got {preset.image_size}"
        )
    for level, method in hypergrad.items():
        allowed = HYPERGRAD_METHODS[method].optimizers
        if allowed is not None and LEVEL_OPTIMIZERS[level] not in allowed:
            raise SystemExit(
                f"error: --hypergrad: '{method}' needs one of {list(allowed)} at level '{level}', "
                f"which uses {LEVEL_OPTIMIZERS[level]}"
            )
    for backbone in preset.backbones:
        try:
            segmentation_model(
                backbone,
                encoder=preset.encoder,
                in_channels=DATASETS[DATASET_KEYS[args.dataset]].channels,
                image_size=preset.image_size,
                encoder_weights=preset.encoder_weights,
            )
        except Exception as err:  # smp raises KeyError/ValueError/download errors for bad encoders or weights
            raise SystemExit(
                f"error: cannot build the {backbone} segmenter with --encoder {preset.encoder!r} and "
                f"--encoder-weights {preset.encoder_weights!r}: {err}"
            ) from None


def check_splits(key: str, roots: Roots, specs: Iterable[RunSpec]) -> None:
    """Every (N, seed) of the plan has enough cases (before any training)."""
    for n, seed in dict.fromkeys((s.train_size, s.seed) for s in specs):
        try:
            splits_for(key, roots, n, seed)
        except DatasetError as err:
            raise SystemExit(f"error: --train-sizes {n}: {err}") from None


# ---------------------------------------------------------------------------------------------- levels
def new_pix2pix(preset: Preset, channels: int, *, searchable: bool) -> Pix2Pix:
    """E2EAug's searchable generator (K = 3 candidates per cell) or vanilla Pix2Pix's (Conv/UpConv-421)."""
    n_down = int(math.log2(preset.image_size))
    candidates = {} if searchable else {"candidates": (PIX2PIX_CANDIDATE,)}
    return Pix2Pix(
        UNetGenerator(1, channels, n_down=n_down, ngf=preset.ngf, **candidates),
        patch_discriminator(1, channels, preset.image_size, ndf=preset.ndf),
    )


def stream(pairs: AugmentedPairs, preset: Preset, seed: int, workers: int) -> DataStream:
    """Mini-batches of the preset's size, or of the whole split when it is smaller (JSRT N = 9 has 2
    validation cases)."""
    return DataStream(pairs, min(preset.batch_size, len(pairs)), seed=seed, num_workers=workers)


def gan_level(
    preset: Preset,
    pix2pix: Pix2Pix,
    architecture: GeneratorArchitecture | None,
    data: Data,
    seed: int,
    workers: int,
    **options: Any,
) -> Pix2PixLevel:
    return Pix2PixLevel(
        "gan",
        pix2pix,
        architecture,
        optimizer=preset.optimizers.gan(),
        discriminator_optimizer=preset.optimizers.gan(),
        lambda_l1=preset.lambda_l1,
        data=stream(AugmentedPairs(data.train), preset, seed, workers),
        **options,
    )


def new_segmenter(backbone: str, preset: Preset, channels: int, seed: int) -> torch.nn.Module:
    """The segmenter at its initialisation for ``seed``: drawn from its own generator, so it is the
    same for every method of a seed whatever was built before it (paired comparison)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return segmentation_model(
            backbone,
            encoder=preset.encoder,
            in_channels=channels,
            image_size=preset.image_size,
            encoder_weights=preset.encoder_weights,
        )


def seg_level(
    spec: RunSpec, preset: Preset, data: Data, augmentation: Any, workers: int, **options: Any
) -> SegmentationLevel:
    plateau = lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=5)  # noqa: E731
    model = new_segmenter(spec.backbone, preset, data.channels, spec.seed)
    lam = preset.lambda_aug if spec.lam is None else spec.lam
    return SegmentationLevel(
        "seg",
        model,
        optimizer=preset.optimizers.seg(),
        lam=lam,
        scheduler=plateau,
        data=stream(AugmentedPairs(data.train, augmentation), preset, spec.seed + 1, workers),
        **options,
    )


def continued_gan_level(
    pretrained: dict, preset: Preset, data: Data, seed: int, device: torch.device, workers: int, hypergrad: str
) -> Pix2PixLevel:
    """The ``gan`` level continuing the pre-trained searchable Pix2Pix (weights and both Adam states)."""
    architecture = GeneratorArchitecture(int(math.log2(preset.image_size)))
    architecture.load_state_dict(pretrained["architecture"])
    pix2pix = new_pix2pix(preset, data.channels, searchable=True)
    pix2pix.load_state_dict(pretrained["pix2pix"])
    pix2pix.to(device)  # before the optimizer states load, so that they land on the parameters' device
    gan = gan_level(preset, pix2pix, architecture, data, seed, workers, hypergrad=hypergrad)
    gan.optimizer.load_state_dict(pretrained["optimizers"]["generator"])
    gan.discriminator_optimizer.load_state_dict(pretrained["optimizers"]["discriminator"])
    return gan


def build_graph(
    spec: RunSpec,
    preset: Preset,
    data: Data,
    pretrained: dict[str, dict],
    hypergrad: dict[str, str],
    device: torch.device,
    workers: int,
) -> Graph:
    """The graph of one run. Baselines are one-level graphs of the same segmentation level."""
    if spec.method in SIMPLE_METHODS:
        graph = Graph(spec.method)
        augmentation = None if spec.method == "none" else joint_augmentation(spec.method)
        graph.add(seg_level(spec, preset, data, augmentation, workers))
        return graph
    augmentation = mask_augmentation(spec.mask_ops)
    if spec.method == "gan_separate":  # GAN / Separate (§4.3): vanilla Pix2Pix trained first, then frozen
        pix2pix = new_pix2pix(preset, data.channels, searchable=False)
        pix2pix.load_state_dict(pretrained["vanilla"]["pix2pix"])
        generator = pix2pix.generator.requires_grad_(False).to(device)

        def frozen(mask: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return (generator(mask) + 1) / 2

        graph = Graph(spec.method)
        graph.add(seg_level(spec, preset, data, augmentation, workers, synthesize=frozen))
        return graph
    gan = continued_gan_level(
        pretrained["searchable"], preset, data, spec.seed, device, workers, hypergrad.get("gan", DEFAULT_HYPERGRAD)
    )
    seg = seg_level(
        spec,
        preset,
        data,
        augmentation,
        workers,
        hypergrad=hypergrad.get("seg", DEFAULT_HYPERGRAD),
        synthesize=lambda mask: (gan.generate(mask) + 1) / 2,
    )
    if spec.method == "e2eaug_frozen_arch":  # A held at its initialisation, G and W trained jointly
        gan.architecture.requires_grad_(False).to(device)
        return frozen_architecture_graph(gan, seg)
    arch = ArchitectureLevel(
        "arch",
        gan.architecture,
        segmenter=seg,
        optimizer=preset.optimizers.arch(),
        data=stream(AugmentedPairs(data.val), preset, spec.seed + 2, workers),
    )
    return e2eaug_graph(gan, seg, arch)


def trained_graph(
    spec: RunSpec, preset: Preset, data: Data, pretrained: dict[str, dict], run_dir: Path, device: torch.device
) -> Graph:
    """A run's graph with every level at its best validation checkpoint (for figures)."""
    graph = build_graph(spec, preset, data, pretrained, {}, device, 0)
    best = load_checkpoint(run_dir / "checkpoint_best.pt", map_location="cpu")
    for name, level in graph.levels.items():
        level.module.load_state_dict(best["levels"][name]["module"])
        level.module.to(device)
    return graph


# ---------------------------------------------------------------------------------------------- runs
def validation(data: Data, device: torch.device) -> Callable[[Graph], dict[str, float]]:
    def validate(graph: Graph) -> dict[str, float]:
        scores, _ = evaluate(graph["seg"].module, data.val, data.metric, device)
        return {f"val_{data.metric}": float(scores.mean())}

    return validate


def pretrain(
    searchable: bool,
    steps: int,
    preset: Preset,
    data: Data,
    seed: int,
    run_dir: Path,
    device: torch.device,
    args: argparse.Namespace,
) -> dict:
    """Pix2Pix trained alone on the training pairs (§4.1) as a one-level graph; A (searchable
    generator) stays at its initialisation. Returns the weights and both Adam states."""
    done = run_dir / "pretrained.pt"
    if done.exists():
        return load_checkpoint(done)
    torch.manual_seed(seed)
    architecture = GeneratorArchitecture(int(math.log2(preset.image_size))) if searchable else None
    pix2pix = new_pix2pix(preset, data.channels, searchable=searchable)
    gan = gan_level(preset, pix2pix, architecture, data, seed, args.workers)
    graph = Graph("pix2pix_pretraining" if searchable else "vanilla_pix2pix_training")
    graph.add(gan)
    Runner(
        graph,
        steps,
        out=run_dir,
        device=device,
        seed=seed,
        precision=args.precision,
        checkpoint_every=max(1, steps // 4),
        resume=(run_dir / "checkpoint_latest.pt").exists(),
        progress=not args.no_progress,
        config={"stage": "pix2pix pre-training", "searchable": searchable, "steps": steps},
    ).run()
    state = {
        "pix2pix": pix2pix.state_dict(),
        "architecture": architecture.state_dict() if architecture is not None else None,
        "optimizers": {
            "generator": gan.optimizer.state_dict(),
            "discriminator": gan.discriminator_optimizer.state_dict(),
        },
    }
    save_atomic(_to_cpu(state), done)
    return load_checkpoint(done)


def pretrain_generators(
    methods: set[str],
    preset: Preset,
    data: Data,
    n: int,
    seed: int,
    runs: Path,
    device: torch.device,
    args: argparse.Namespace,
) -> dict[str, dict]:
    """The generators the GAN-based methods of one (N, seed) start from, with equal budgets: every
    generator takes pretrain_steps + steps updates. The searchable one (e2eaug and its frozen-arch
    control) is pre-trained pretrain_steps here and trains the other ``steps`` with the segmenter;
    vanilla Pix2Pix (gan_separate) trains all pretrain_steps + steps here and is then frozen."""
    out = {}
    if methods & set(SEARCHABLE_GAN_METHODS):
        out["searchable"] = pretrain(
            True, preset.pretrain_steps, preset, data, seed, runs / f"pix2pix__n{n}__seed{seed}", device, args
        )
    if "gan_separate" in methods:
        out["vanilla"] = pretrain(
            False,
            preset.pretrain_steps + preset.steps,
            preset,
            data,
            seed,
            runs / f"pix2pix_vanilla__n{n}__seed{seed}",
            device,
            args,
        )
    return out


def train_and_test(
    spec: RunSpec,
    preset: Preset,
    data: Data,
    pretrained: dict[str, dict],
    run_dir: Path,
    device: torch.device,
    args: argparse.Namespace,
    hypergrad: dict[str, str],
) -> dict:
    """Train one run, pick its best validation checkpoint, score every test image."""
    scores_file = run_dir / "test_scores.json"
    if scores_file.exists():
        return json.loads(scores_file.read_text())
    graph = build_graph(spec, preset, data, pretrained, hypergrad, device, args.workers)
    t0 = time.perf_counter()
    result = Runner(
        graph,
        preset.steps,
        out=run_dir,
        device=device,
        seed=spec.seed,
        precision=args.precision,
        validate=validation(data, device),
        valid_every=preset.valid_every,
        monitor=f"val_{data.metric}",
        mode="max",
        checkpoint_every=preset.valid_every,
        resume=(run_dir / "checkpoint_latest.pt").exists(),
        progress=not args.no_progress,
        config={"run": asdict(spec), "preset": asdict(preset), "command": common.command_line()},
    ).run()
    best = load_checkpoint(run_dir / "checkpoint_best.pt", map_location=device)
    graph["seg"].module.load_state_dict(best["levels"]["seg"]["module"])
    out = {
        "run": spec.name,
        "best_step": result.best["step"],
        "val": result.best["metrics"][f"val_{data.metric}"],
        "train_seconds": time.perf_counter() - t0,
        "tests": {},
    }
    for name, dataset in data.tests.items():
        scores, ids = evaluate(graph["seg"].module, dataset, data.metric, device)
        out["tests"][name] = {"mean": float(scores.mean()), "n": len(ids), "per_image": dict(zip(ids, scores.tolist()))}
    if "arch" in graph.levels:
        out["genotype"] = graph["arch"].module.genotype()
    reporting.write_json(scores_file, out)
    return out


def execute(
    specs: Sequence[RunSpec],
    preset: Preset,
    key: str,
    roots: Roots,
    runs: Path,
    device: torch.device,
    args: argparse.Namespace,
    hypergrad: dict[str, str],
) -> dict[str, dict]:
    """Train every run once (grouped by labelled subset); ``{run name: test scores}``."""
    results: dict[str, dict] = {}
    for n, seed in dict.fromkeys((s.train_size, s.seed) for s in specs):
        group = [s for s in specs if (s.train_size, s.seed) == (n, seed)]
        data = load_data(key, roots, n, seed, preset.image_size)
        pretrained = pretrain_generators({s.method for s in group}, preset, data, n, seed, runs, device, args)
        for spec in group:
            print(f"[e2eaug] {spec.name}")
            results[spec.name] = train_and_test(
                spec, preset, data, pretrained, runs / spec.name, device, args, hypergrad
            )
    return results


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------- rows
def seed_rows(
    study: str, specs: Iterable[RunSpec], results: dict[str, dict], preset: Preset, metric: str
) -> list[dict]:
    """One row per (run, test set): the study's identifying keys, ``seed`` and ``value``."""
    rows = []
    for spec in specs:
        for test_set, scores in results[spec.name]["tests"].items():
            row = {
                "study": study,
                "method": spec.method,
                "backbone": spec.backbone,
                "train_size": spec.train_size,
                "test_set": test_set,
                "metric": metric,
            }
            if study == "lambda":
                row["lambda"] = preset.lambda_aug if spec.lam is None else spec.lam
            if study == "mask_op":
                row["mask_ops"] = "+".join(spec.mask_ops)
            rows.append({**row, "seed": spec.seed, "value": scores["mean"]})
    return rows


def margins(
    rows: Sequence[dict], key: str, winner: Any, others: Sequence[Any], keep: Callable[[dict], bool] = lambda r: True
) -> dict[int, float]:
    """Per seed: the mean over cells (test set, backbone, N) of ``value(winner) - max value(others)``,
    where ``key`` names what varies (method, lambda, mask_ops) and cells are paired on every other key."""
    cells: dict[tuple, dict[Any, float]] = {}
    for r in rows:
        if keep(r):
            cell = tuple(sorted((k, v) for k, v in r.items() if k not in (key, "value")))
            cells.setdefault(cell, {})[r[key]] = r["value"]
    per_seed: dict[int, list[float]] = {}
    for cell, values in cells.items():
        if winner in values and all(o in values for o in others):
            per_seed.setdefault(dict(cell)["seed"], []).append(values[winner] - max(values[o] for o in others))
    return {seed: sum(d) / len(d) for seed, d in per_seed.items()}


# ---------------------------------------------------------------------------------------------- tables
_LABEL = {
    "none": "",
    "rotate": "Rotate-",
    "flip": "Flip-",
    "translate": "Translate-",
    "combine": "Combine-",
    "gan_separate": "GAN-",
    "e2eaug_frozen_arch": "Ours (A frozen)-",
    "e2eaug": "Ours-",
}


def _row_name(method: str, backbone: str) -> str:
    net = "UNet" if backbone == "unet" else "DeepLab"
    return ("U-Net" if backbone == "unet" else "DeepLab") if method == "none" else f"{_LABEL[method]}{net}"


def _set_title(test_set: str) -> str:
    return DATASETS[test_set].title.split(" (")[0]


def _grid(
    cells: dict[tuple, str], combos: Sequence[tuple[str, str]], sizes: Sequence[int], sets: Sequence[str]
) -> list[str]:
    """Tables 2/3 layout: rows = backbone x method, columns = N x test set."""
    header = ["Method"] + [f"N={n}: {_set_title(s)}" for n in sizes for s in sets]
    body = [[_row_name(m, b)] + [cells.get((m, b, n, s), "–") for n in sizes for s in sets] for b, m in combos]
    return reporting.markdown_table(header, body)


def _signed(mean: float, std: float, n: int) -> str:
    return ("+" if mean > 0 else "") + reporting.cell(mean, std, n=n)


def comparison_section(title: str, rows: list[dict], paired: list[dict], paper: dict | None) -> list[str]:
    """Ours (± std over seeds, the paper's number in brackets) and paired differences against ``none``."""
    order = {m: i for i, m in enumerate(METHODS)}
    combos = sorted({(r["backbone"], r["method"]) for r in rows}, key=lambda bm: (bm[0], order[bm[1]]))
    sizes = sorted({r["train_size"] for r in rows})
    sets = list(dict.fromkeys(r["test_set"] for r in rows))
    reference = {
        (r["method"], r["backbone"], r["train_size"], r["test_set"]): r["value"] for r in (paper or {}).get("rows", [])
    }
    ours = {
        (r["method"], r["backbone"], r["train_size"], r["test_set"]): reporting.cell(
            r["value"],
            r["std"],
            n=r["n"],
            paper=reference.get((r["method"], r["backbone"], r["train_size"], r["test_set"])),
        )
        for r in rows
    }
    lines = [f"## {title}", "", *_grid(ours, combos, sizes, sets)]
    if paired:
        diffs = {
            (r["method"], r["backbone"], r["train_size"], r["test_set"]): _signed(r["difference"], r["std"], r["pairs"])
            for r in paired
        }
        lines += [
            "",
            "Paired differences against no augmentation (same seed, segmenter initialisation, labelled "
            "subset and batch order; mean ± std over seeds of the per-seed difference):",
            "",
            *_grid(diffs, [c for c in combos if c[1] != "none"], sizes, sets),
        ]
    if paper and not any(k[2] in sizes for k in reference):
        ref_combos = sorted({(k[1], k[0]) for k in reference}, key=lambda bm: (bm[0], order[bm[1]]))
        lines += [
            "",
            f"The paper's {paper['table']} (no setting in common with this run), for reference:",
            "",
            *_grid(
                {k: f"{v:.3f}" for k, v in reference.items()},
                ref_combos,
                sorted({k[2] for k in reference}),
                list(dict.fromkeys(k[3] for k in reference)),
            ),
        ]
    return lines


def variant_section(
    title: str, rows: list[dict], paired: list[dict], key: str, baseline: Any, label: Callable[[Any], str]
) -> list[str]:
    """One row per variant (λ, mask operations): ours per test set, then the paired difference
    against the default variant."""
    sets = list(dict.fromkeys(r["test_set"] for r in rows))
    variants = list(dict.fromkeys(r[key] for r in rows))
    value = {(r[key], r["test_set"]): reporting.cell(r["value"], r["std"], n=r["n"]) for r in rows}
    diff = {(r[key], r["test_set"]): _signed(r["difference"], r["std"], r["pairs"]) for r in paired}
    header = [key.replace("_", " ")] + [_set_title(s) for s in sets] + [f"Δ {_set_title(s)}" for s in sets]
    body = [
        [label(v)] + [value.get((v, s), "–") for s in sets] + [diff.get((v, s), "–") for s in sets] for v in variants
    ]
    return [
        f"## {title}",
        "",
        f"Δ: paired difference against {label(baseline)} (mean ± std over seeds).",
        "",
        *reporting.markdown_table(header, body),
    ]


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, tested on this run by per-seed differences that are > 0 when it holds."""

    text: str
    test: str
    per_seed: dict[int, float]

    def verdict(self) -> str:
        values = list(self.per_seed.values())
        held, s = sum(v > 0 for v in values), reporting.summarize(values)
        if s.mean <= 0:
            return f"no (mean ≤ 0; {held}/{s.n} seeds > 0)"
        if s.n == 1:
            return "same sign, 1 seed (no spread)"
        return f"same sign in all {s.n} seeds" if held == s.n else f"mixed ({held}/{s.n} seeds > 0)"


def claims(seed_rows_by_study: dict[str, list[dict]], key: str) -> list[Claim]:
    """The paper's claims that the runs made can test (§4.2, §4.3)."""
    out: list[Claim] = []
    shared = seed_rows_by_study.get("comparison", []) + seed_rows_by_study.get("train_size", [])
    unique = {json.dumps({k: v for k, v in r.items() if k != "study"}, sort_keys=True) for r in shared}
    comparison = [json.loads(r) for r in unique]  # a run in both studies counts once
    in_dist = lambda r: r["test_set"] == key  # noqa: E731
    ood = lambda r: r["test_set"] != key  # noqa: E731

    def add(text: str, test: str, per_seed: dict[int, float]) -> None:
        if per_seed:
            out.append(Claim(text, test, per_seed))

    add(
        "Ours improves in-distribution performance over no augmentation (Tables 2/3)",
        "Ours − none, in-distribution",
        margins(comparison, "method", "e2eaug", ["none"], in_dist),
    )
    add(
        "Ours improves out-of-distribution performance (Tables 2/3)",
        "Ours − none, OOD test sets",
        margins(comparison, "method", "e2eaug", ["none"], ood),
    )
    add(
        "Ours beats the simple augmentations (Tables 2/3)",
        "Ours − best of Rotate/Flip/Translate/Combine",
        margins(comparison, "method", "e2eaug", ["rotate", "flip", "translate", "combine"]),
    )
    add(
        "End-to-end beats the separately trained GAN (Tables 2/3 'GAN', Fig. 4 'Separate')",
        "Ours − GAN-Separate (vanilla Pix2Pix, same generator budget)",
        margins(comparison, "method", "e2eaug", ["gan_separate"]),
    )
    add(
        "The architecture search helps (§3.2; not an experiment of the paper)",
        "Ours − Ours (A frozen)",
        margins(comparison, "method", "e2eaug", ["e2eaug_frozen_arch"]),
    )
    add(
        "Training G jointly with the segmenter helps, A fixed (control; generator families differ)",
        "Ours (A frozen) − GAN-Separate",
        margins(comparison, "method", "e2eaug_frozen_arch", ["gan_separate"]),
    )
    lam_rows = seed_rows_by_study.get("lambda", [])
    lambdas = sorted({r["lambda"] for r in lam_rows})
    if 1.0 in lambdas and len(lambdas) > 1:
        add(
            "λ = 1 gives the best trade-off (Fig. 6)",
            "Ours(λ=1) − best other λ",
            margins(lam_rows, "lambda", 1.0, [v for v in lambdas if v != 1.0]),
        )
    op_rows = seed_rows_by_study.get("mask_op", [])
    add(
        "All three mask operations beat any single one (Fig. 5)",
        "Ours(all three) − best single operation",
        margins(op_rows, "mask_ops", FULL_OPERATIONS, [op[0] for op in SINGLE_OPERATIONS]),
    )
    sizes = sorted({r["train_size"] for r in seed_rows_by_study.get("train_size", [])})
    if len(sizes) > 1:
        small = margins(comparison, "method", "e2eaug", ["none"], lambda r: r["train_size"] == sizes[0])
        large = margins(comparison, "method", "e2eaug", ["none"], lambda r: r["train_size"] == sizes[-1])
        add(
            "The gain is larger with fewer training examples (§4.2, Fig. 2)",
            f"(Ours − none) at N={sizes[0]} − at N={sizes[-1]}",
            {s: small[s] - large[s] for s in small if s in large},
        )
    return out


def claims_section(found: list[Claim]) -> list[str]:
    body = []
    for c in found:
        s = reporting.summarize(c.per_seed.values())
        body.append([c.text, c.test, _signed(s.mean, s.std, s.n), c.verdict()])
    return [
        "## The paper's claims on this run",
        "",
        "Each claim as a paired difference that is positive when it holds: per seed, averaged over the cells "
        "it covers (test sets, backbones, N; 'best of' takes the strongest competitor per cell), then mean ± std "
        "over seeds. 'Same sign in all seeds' is a direction, not a significance test.",
        "",
        *reporting.markdown_table(["Claim", "Test", "Difference", "Verdict"], body),
    ]


def results_markdown(
    seed_rows_by_study: dict[str, list[dict]],
    rows_by_study: dict[str, list[dict]],
    paired_by_study: dict[str, list[dict]],
    key: str,
    data_block: dict,
    preset_name: str,
    preset: Preset,
) -> str:
    """results.md: the comparison in Tables 2/3 layout, paired differences, claims, then the ablations."""
    paper = reporting.load_paper("e2eaug").get(key)
    metric = DATASETS[key].metric
    lines = [
        f"# E2EAug on {DATASETS[key].title}",
        "",
        f"{metric.capitalize()} per image, mean over each test set (larger is better); preset `{preset_name}`. "
        "Cells: ours ± std over seeds, with the paper's number in brackets where it reports the same setting.",
        "",
        f"Budget: every segmenter takes {preset.steps} steps from the same initialisation per seed and backbone; "
        f"every generator takes {preset.pretrain_steps} + {preset.steps} = {preset.pretrain_steps + preset.steps} "
        "updates (each with one discriminator update): GAN-Separate's vanilla Pix2Pix trains all of them before "
        f"it is frozen, Ours and Ours (A frozen) pre-train {preset.pretrain_steps} and train {preset.steps} "
        "jointly with the segmenter. Ours (A frozen) keeps the searchable generator at the architecture Ours "
        "starts from and has no architecture level: it isolates the search.",
        "",
    ]
    synthetic = [DATASETS[k].title for k, v in data_block.items() if v["source"] == "embedded-sample"]
    if synthetic:
        lines += [
            reporting.data_statement(
                "embedded-sample",
                f"{'; '.join(synthetic)}: synthetic embedded samples "
                "written by problems/segdata/samples.py in the real layouts.",
            ),
            "",
        ]
    if "comparison" in rows_by_study:
        lines += [
            *comparison_section(
                "Comparison (Tables 2/3 layout)", rows_by_study["comparison"], paired_by_study["comparison"], paper
            ),
            "",
        ]
    found = claims(seed_rows_by_study, key)
    if found:
        lines += [*claims_section(found), ""]
    if "lambda" in rows_by_study:
        lines += variant_section(
            "Ablation: λ of Eq. 2 (Figure 6)",
            rows_by_study["lambda"],
            paired_by_study["lambda"],
            "lambda",
            preset.lambda_aug,
            lambda v: f"λ = {v:g}",
        )
        lines += ["", "The paper shows this study as a figure only; figure: `figures/ablation_lambda.png`.", ""]
    if "mask_op" in rows_by_study:
        lines += variant_section(
            "Ablation: mask operations (Figure 5)",
            rows_by_study["mask_op"],
            paired_by_study["mask_op"],
            "mask_ops",
            FULL_OPERATIONS,
            lambda v: "all three (random order)" if v == FULL_OPERATIONS else f"{v} only",
        )
        lines += ["", "The paper shows this study as a figure only; figure: `figures/ablation_mask_ops.png`.", ""]
    if "train_size" in rows_by_study:
        lines += comparison_section(
            "Performance against the number of labelled examples (Figure 2)",
            rows_by_study["train_size"],
            paired_by_study["train_size"],
            paper,
        )
        lines += ["", "Figure: `figures/performance_vs_n.png`.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- figures
def _show(ax: Any, image: torch.Tensor, title: str = "") -> None:
    ax.imshow(image.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


@torch.no_grad()
def figure_augmented_pairs(gan: Pix2PixLevel, data: Data, path: Path, n: int = 6) -> None:
    """Augmented masks M̂ and the images f(M̂; G, A) the trained generator makes of them."""
    pairs = AugmentedPairs(data.train, mask_augmentation())
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5))
    device = next(gan.module.parameters()).device
    for j in range(n):
        item = pairs.sample(j % len(pairs), 1000 + j)
        fake = (gan.generate(item["aug_mask"][None].to(device))[0].cpu() + 1) / 2
        _show(axes[0, j], item["image"], "real image" if j == 0 else "")
        _show(axes[1, j], item["aug_mask"], "augmented mask" if j == 0 else "")
        _show(axes[2, j], fake, "generated" if j == 0 else "")
    fig.tight_layout()
    reporting.save_figure(fig, path, dpi=110)


@torch.no_grad()
def figure_segmentations(
    models: dict[str, torch.nn.Module], data: Data, path: Path, device: torch.device, n: int = 5
) -> None:
    """Test images, ground truth and each method's prediction (sigmoid > 0.5)."""
    key, test = next(iter(data.tests.items()))
    cols = 2 + len(models)
    fig, axes = plt.subplots(n, cols, figsize=(1.7 * cols, 1.7 * n), squeeze=False)
    for i in range(n):
        item = test[i % len(test)]
        _show(axes[i, 0], item["image"], "image" if i == 0 else "")
        _show(axes[i, 1], item["mask"], "ground truth" if i == 0 else "")
        for j, (name, model) in enumerate(models.items()):
            model.eval()
            pred = (model(item["image"][None].to(device)) > 0).float()[0].cpu()
            _show(axes[i, 2 + j], pred, name if i == 0 else "")
    fig.suptitle(f"{DATASETS[key].title}: test segmentations", fontsize=8)
    fig.tight_layout()
    reporting.save_figure(fig, path, dpi=110)


def figure_variants(rows: list[dict], key: str, label: Callable[[Any], str], title: str, path: Path) -> None:
    """Grouped bars: one group per test set, one bar per variant (λ or mask operations), ± std over seeds."""
    sets = list(dict.fromkeys(r["test_set"] for r in rows))
    variants = list(dict.fromkeys(r[key] for r in rows))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(1.5 + 1.4 * len(sets), 3))
    for j, v in enumerate(variants):
        cells = {r["test_set"]: r for r in rows if r[key] == v}
        ax.bar(
            [i + j * width for i in range(len(sets))],
            [cells[s]["value"] for s in sets],
            width,
            yerr=[cells[s]["std"] for s in sets],
            label=label(v),
            capsize=2,
        )
    ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(sets))], [_set_title(s) for s in sets])
    ax.set_ylabel(rows[0]["metric"].capitalize())
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    reporting.save_figure(fig, path)


def figure_performance_vs_n(rows: list[dict], key: str, path: Path) -> None:
    """Fig. 2: score against N, one panel per (backbone, test set), one line per method (± std over seeds)."""
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    sets = list(dict.fromkeys(r["test_set"] for r in rows))
    fig, axes = plt.subplots(len(backbones), len(sets), figsize=(3.2 * len(sets), 2.8 * len(backbones)), squeeze=False)
    for i, backbone in enumerate(backbones):
        for j, test_set in enumerate(sets):
            ax = axes[i, j]
            for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
                line = sorted(
                    (r for r in rows if (r["backbone"], r["test_set"], r["method"]) == (backbone, test_set, method)),
                    key=lambda r: r["train_size"],
                )
                ax.errorbar(
                    [r["train_size"] for r in line],
                    [r["value"] for r in line],
                    yerr=[r["std"] for r in line],
                    marker="o",
                    capsize=2,
                    label=_row_name(method, backbone),
                )
            ax.set_title(f"{_set_title(key)}-{_set_title(test_set)} ({_row_name('none', backbone)})", fontsize=8)
            ax.set_xlabel("labelled examples N")
            ax.set_ylabel(rows[0]["metric"].capitalize())
    axes[0, -1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    reporting.save_figure(fig, path)


def comparison_figures(
    studies: dict[str, list[RunSpec]],
    preset: Preset,
    key: str,
    roots: Roots,
    out: Path,
    device: torch.device,
    args: argparse.Namespace,
) -> None:
    """Augmented pairs, test segmentations and the graph, for the comparison's first (N, seed) and last backbone."""
    specs = studies["comparison"]
    first = specs[0]
    backbone = preset.backbones[-1]
    chosen = [s for s in specs if (s.train_size, s.seed, s.backbone) == (first.train_size, first.seed, backbone)]
    data = load_data(key, roots, first.train_size, first.seed, preset.image_size)
    pretrained = pretrain_generators(
        {s.method for s in chosen}, preset, data, first.train_size, first.seed, out / "runs", device, args
    )
    graphs = {s.method: trained_graph(s, preset, data, pretrained, out / "runs" / s.name, device) for s in chosen}
    if "e2eaug" in graphs:
        figure_augmented_pairs(graphs["e2eaug"]["gan"], data, out / "figures" / "augmented_pairs.png")
        graphs["e2eaug"].draw(out / "figures" / "graph.png")
    figure_segmentations(
        {m: g["seg"].module for m, g in graphs.items()}, data, out / "figures" / "test_segmentations.png", device
    )


# ---------------------------------------------------------------------------------------------- main
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser, datasets=sorted(DATASET_KEYS), default_dataset="isic")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=None,
        help="methods of the main comparison (default: all; none with --ablation)",
    )
    parser.add_argument(
        "--ablation",
        nargs="+",
        choices=ABLATIONS,
        default=None,
        help="studies of §4.3 to run: lambda (λ sweep, Fig. 6), mask-op (single mask operation, "
        "Fig. 5), train-size (performance against N, Fig. 2)",
    )
    parser.add_argument(
        "--lambdas",
        type=_positive_float,
        nargs="+",
        default=None,
        help=f"λ values of the lambda ablation (default: {' '.join(f'{v:g}' for v in DEFAULT_LAMBDAS)})",
    )
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=None, help="segmentation networks")
    parser.add_argument("--encoder", default=None, help="smp encoder of the segmenter (e.g. resnet34)")
    parser.add_argument(
        "--train-sizes",
        type=common.positive_int,
        nargs="+",
        default=None,
        help="labelled examples N (split 80/20 into train/val) of the comparison and of the "
        "train-size study, e.g. 40 100 200 for ISIC; the λ and mask-op studies use the first",
    )
    parser.add_argument("--image-size", type=common.positive_int, default=None, help="side of the square images")
    parser.add_argument("--pretrain-steps", type=common.positive_int, default=None, help="Pix2Pix pre-training steps")
    parser.add_argument(
        "--lambda-aug", type=_positive_float, default=None, help="λ of Eq. 2 (weight of augmented pairs)"
    )
    parser.add_argument(
        "--encoder-weights",
        default=None,
        help="e.g. 'imagenet': start the encoder from pretrained weights (downloaded by smp, or cached)",
    )
    args = parser.parse_args(argv)
    if args.lambdas is not None and "lambda" not in (args.ablation or ()):
        parser.error("--lambdas needs --ablation lambda")
    args.lambdas = list(dict.fromkeys(args.lambdas or DEFAULT_LAMBDAS))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, preset_name, seeds = common.resolve(args)
    key = DATASET_KEYS[args.dataset]
    preset = common.override(
        PRESETS[preset_name],
        steps=args.steps,
        encoder=args.encoder,
        image_size=args.image_size,
        pretrain_steps=args.pretrain_steps,
        lambda_aug=args.lambda_aug,
        encoder_weights=args.encoder_weights,
        seeds=tuple(seeds) if seeds else None,
        backbones=tuple(args.backbones) if args.backbones else None,
    )
    hypergrad = common.parse_hypergrad(args.hypergrad, LEVELS)
    check_settings(args, preset, hypergrad)
    out = common.prepare_out(args.out or Path("runs") / f"e2eaug-{args.dataset}-{preset_name}", args.resume)

    roots = {k: locate(k, args, out / "samples") for k in (key, *DATASETS[key].ood_tests)}
    data_block = {k: {"source": src, "root": str(root) if root else None} for k, (root, src) in roots.items()}
    for k, v in data_block.items():
        note = "SYNTHETIC embedded sample (not the real data)" if v["source"] == "embedded-sample" else v["source"]
        print(f"[e2eaug] {DATASETS[k].title}: {note} at {v['root']}")
    studies = plan(args, preset, key, roots[key][1])
    specs = list(dict.fromkeys(s for study in studies.values() for s in study))
    check_splits(key, roots, specs)
    print(f"[e2eaug] preset '{preset_name}' on {device}: {common.preset_table(preset)}")
    print(
        f"[e2eaug] studies: {', '.join(f'{k} ({len(v)} runs)' for k, v in studies.items())}; {len(specs)} distinct runs"
    )

    results = execute(specs, preset, key, roots, out / "runs", device, args, hypergrad)
    metric = DATASETS[key].metric
    seed_rows_by_study = {study: seed_rows(study, s, results, preset, metric) for study, s in studies.items()}
    rows_by_study = {study: reporting.aggregate(r) for study, r in seed_rows_by_study.items()}
    paired_by_study = {
        "comparison": reporting.paired_differences(seed_rows_by_study.get("comparison", []), baseline="none"),
        "train_size": reporting.paired_differences(seed_rows_by_study.get("train_size", []), baseline="none"),
        "lambda": reporting.paired_differences(
            seed_rows_by_study.get("lambda", []), baseline=preset.lambda_aug, method_key="lambda"
        ),
        "mask_op": reporting.paired_differences(
            seed_rows_by_study.get("mask_op", []), baseline=FULL_OPERATIONS, method_key="mask_ops"
        ),
    }
    markdown = results_markdown(
        seed_rows_by_study, rows_by_study, paired_by_study, key, data_block, preset_name, preset
    )
    results_json = {
        "recipe": "e2eaug",
        "preset": preset_name,
        "dataset": key,
        "device": str(device),
        "data": data_block,
        "synthetic": any(v["source"] == "embedded-sample" for v in data_block.values()),
        "settings": asdict(preset),
        "hypergrad": {lv: hypergrad.get(lv, DEFAULT_HYPERGRAD) for lv in LEVELS},
        "studies": {study: [s.name for s in specs_] for study, specs_ in studies.items()},
        "rows": [r for rows in rows_by_study.values() for r in rows],
        "seed_rows": [r for rows in seed_rows_by_study.values() for r in rows],
        "paired": [{**r, "study": study} for study, rows in paired_by_study.items() for r in rows],
        "claims": [
            {"claim": c.text, "test": c.test, "per_seed": c.per_seed, "verdict": c.verdict()}
            for c in claims(seed_rows_by_study, key)
        ],
        "runs": [
            {k: v for k, v in r.items() if k != "tests"}
            | {"tests": {t: {"mean": s["mean"], "n": s["n"]} for t, s in r["tests"].items()}}
            for r in results.values()
        ],
    }
    figures = out / "figures"
    if "comparison" in studies:
        comparison_figures(studies, preset, key, roots, out, device, args)
    if "lambda" in studies:
        figure_variants(
            rows_by_study["lambda"],
            "lambda",
            lambda v: f"λ = {v:g}",
            "E2EAug: λ of Eq. 2",
            figures / "ablation_lambda.png",
        )
    if "mask_op" in studies:
        figure_variants(
            rows_by_study["mask_op"],
            "mask_ops",
            lambda v: "all three" if v == FULL_OPERATIONS else f"{v} only",
            "E2EAug: mask operations",
            figures / "ablation_mask_ops.png",
        )
    if "train_size" in studies:
        figure_performance_vs_n(rows_by_study["train_size"], key, figures / "performance_vs_n.png")
    reporting.write_results(out, results_json, markdown)
    print(markdown)
    print(f"[e2eaug] wrote {out / 'results.json'}, {out / 'results.md'} and {figures}/")
    return results_json


if __name__ == "__main__":
    main()
