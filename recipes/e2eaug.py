"""E2EAug end to end: a searchable Pix2Pix, a segmenter and the generator architecture as three levels.

    python recipes/e2eaug.py --dataset isic [--data-root DIR] [--preset smoke|small|paper] [--out DIR]

For each training-set size and seed: Pix2Pix is pre-trained on the training pairs (one-level
graph), then every method trains the same segmenter with the same budget, selects its best
checkpoint on the validation split and is scored per image on the test set and the
out-of-distribution test sets. Methods: none, rotate, flip, translate, combine (image and mask
transformed together), gan_separate (the pre-trained Pix2Pix, frozen, augments) and e2eaug
(Eq. 4: the three-level graph of problems/e2eaug.py).

Writes to --out: results.json, results.md (Tables 2/3 layout, the paper's numbers beside ours),
figures/augmented_pairs.png, figures/test_segmentations.png, and runs/<run>/ (config.json,
metrics.jsonl, checkpoints) for every training run. --resume skips finished runs and resumes
interrupted ones from their checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from engines import DataStream, Graph, Runner  # noqa: E402
from engines.checkpoint import load_checkpoint  # noqa: E402
from problems.augment import joint_augmentation, mask_augmentation  # noqa: E402
from problems.e2eaug import (  # noqa: E402
    ArchitectureLevel,
    AugmentedPairs,
    Optimizers,
    Pix2PixLevel,
    SegmentationLevel,
    e2eaug_graph,
    evaluate,
    segmentation_model,
)
from problems.pix2pix import GeneratorArchitecture, Pix2Pix, SearchableUNetGenerator, patch_discriminator  # noqa: E402
from problems.segdata import (  # noqa: E402
    DATASETS,
    SAMPLE_SPLITS,
    DatasetError,
    SegmentationDataset,
    ensure_dataset,
    find_cases,
    make_splits,
    ood_test_cases,
)

ROOT = Path(__file__).resolve().parents[1]
DATASET_KEYS = {"isic": "isic2018", "isic2018": "isic2018", "jsrt": "jsrt", "busi": "busi", "fetreg": "fetreg",
                "kvasir": "kvasir"}
METHODS = ("none", "rotate", "flip", "translate", "combine", "gan_separate", "e2eaug")
BACKBONES = ("unet", "deeplabv3")
LEVELS = ("gan", "seg")


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
    # two CPU cores, a few minutes for all seven methods
    "smoke": Preset(image_size=32, ngf=16, ndf=16, batch_size=4, pretrain_steps=30, steps=30, valid_every=10,
                    backbones=("unet",), encoder="resnet18", seeds=(0,),
                    optimizers=Optimizers(seg_lr=1e-4, gan_lr=2e-4)),
    # a real but short experiment on a GPU
    "small": Preset(image_size=128, ngf=32, ndf=32, batch_size=8, pretrain_steps=600, steps=1500, valid_every=100,
                    backbones=BACKBONES, encoder="resnet34", seeds=(0,),
                    optimizers=Optimizers(seg_lr=1e-4, gan_lr=2e-4)),
    # §4.1: 5000 iterations, RMSprop 1e-5 / Adam 1e-5 (β 0.5, 0.999), weight decay 1e-3, three seeds
    "paper": Preset(image_size=256, ngf=64, ndf=64, batch_size=2, pretrain_steps=4000, steps=5000, valid_every=50,
                    backbones=BACKBONES, encoder="resnet34", seeds=(0, 1, 2), all_train_sizes=True),
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


def load_data(key: str, roots: dict[str, tuple[Path | None, str]], train_size: int, seed: int, size: int) -> Data:
    spec = DATASETS[key]
    root, source = roots[key]
    sample = source == "embedded-sample"
    test_size = SAMPLE_SPLITS[key]["test_size"] if sample else None
    splits = make_splits(key, find_cases(key, root), train_size, seed, test_size=test_size)
    tests = {key: SegmentationDataset(splits.test, size)}
    for ood in spec.ood_tests:
        ood_root, ood_source = roots[ood]
        if ood_root is not None:
            tests[ood] = SegmentationDataset(ood_test_cases(ood, find_cases(ood, ood_root)), size)
    return Data(SegmentationDataset(splits.train, size, cache=True), SegmentationDataset(splits.val, size, cache=True),
                tests, spec.channels, spec.metric)


def train_sizes(key: str, preset: Preset, source: str, requested: list[int] | None) -> list[int]:
    if requested:
        return requested
    if source == "embedded-sample":
        return list(SAMPLE_SPLITS[key]["train_sizes"][:1])
    all_sizes = list(DATASETS[key].train_sizes)
    return all_sizes if preset.all_train_sizes else all_sizes[:1]


# ---------------------------------------------------------------------------------------------- levels
def new_pix2pix(preset: Preset, channels: int) -> Pix2Pix:
    n_down = int(math.log2(preset.image_size))
    return Pix2Pix(SearchableUNetGenerator(1, channels, n_down=n_down, ngf=preset.ngf),
                   patch_discriminator(1, channels, preset.image_size, ndf=preset.ndf))


def gan_level(preset: Preset, pix2pix: Pix2Pix, architecture: GeneratorArchitecture, data: Data, seed: int,
              workers: int, **options: Any) -> Pix2PixLevel:
    return Pix2PixLevel("gan", pix2pix, architecture, optimizer=preset.optimizers.gan(),
                        discriminator_optimizer=preset.optimizers.gan(), lambda_l1=preset.lambda_l1,
                        data=DataStream(AugmentedPairs(data.train), preset.batch_size, seed=seed, num_workers=workers),
                        **options)


def seg_level(preset: Preset, backbone: str, data: Data, augmentation: Any, seed: int, workers: int,
              **options: Any) -> SegmentationLevel:
    model = segmentation_model(backbone, encoder=preset.encoder, in_channels=data.channels,
                               image_size=preset.image_size, encoder_weights=preset.encoder_weights)
    plateau = lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=5)  # noqa: E731
    return SegmentationLevel("seg", model, optimizer=preset.optimizers.seg(), lam=preset.lambda_aug,
                             scheduler=plateau, data=DataStream(AugmentedPairs(data.train, augmentation),
                                                                preset.batch_size, seed=seed + 1,
                                                                num_workers=workers), **options)


def build_graph(method: str, backbone: str, preset: Preset, data: Data, seed: int, pretrained: dict | None,
                hypergrad: dict[str, str], device: torch.device, workers: int) -> Graph:
    """The graph of one method. Baselines are one-level graphs of the same segmentation level."""
    torch.manual_seed(seed)
    if method in ("none", "rotate", "flip", "translate", "combine"):
        graph = Graph(method)
        graph.add(seg_level(preset, backbone, data, None if method == "none" else joint_augmentation(method),
                            seed, workers))
        return graph
    architecture = GeneratorArchitecture(int(math.log2(preset.image_size)))
    pix2pix = new_pix2pix(preset, data.channels)
    pix2pix.load_state_dict(pretrained["pix2pix"])
    architecture.load_state_dict(pretrained["architecture"])
    if method == "gan_separate":  # Separate (§4.3): the pre-trained Pix2Pix, frozen, architecture not searched
        generator = pix2pix.generator.requires_grad_(False).to(device)
        weights = tuple(w.detach().to(device) for w in architecture.weights())

        def frozen(mask: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return (generator(mask, weights) + 1) / 2

        graph = Graph(method)
        graph.add(seg_level(preset, backbone, data, mask_augmentation(), seed, workers, synthesize=frozen))
        return graph
    gan = gan_level(preset, pix2pix, architecture, data, seed, workers, hypergrad=hypergrad.get("gan", "darts"))
    seg = seg_level(preset, backbone, data, mask_augmentation(), seed, workers, hypergrad=hypergrad.get("seg", "darts"),
                    synthesize=lambda mask: (gan.generate(mask) + 1) / 2)
    arch = ArchitectureLevel("arch", architecture, segmenter=seg, optimizer=preset.optimizers.arch(),
                             data=DataStream(AugmentedPairs(data.val), preset.batch_size, seed=seed + 2))
    return e2eaug_graph(gan, seg, arch)


def trained_graph(method: str, backbone: str, preset: Preset, data: Data, seed: int, pretrained: dict | None,
                  run_dir: Path, device: torch.device) -> Graph:
    """A method's graph with every level at its best validation checkpoint (for figures)."""
    graph = build_graph(method, backbone, preset, data, seed, pretrained, {}, device, 0)
    best = load_checkpoint(run_dir / "checkpoint_best.pt", map_location="cpu")
    for name, level in graph.levels.items():
        level.module.load_state_dict(best["levels"][name]["module"])
        level.module.to(device)
    return graph


# ---------------------------------------------------------------------------------------------- runs
def validation(data: Data, device: torch.device):
    def validate(graph: Graph) -> dict[str, float]:
        scores, _ = evaluate(graph["seg"].module, data.val, data.metric, device)
        return {f"val_{data.metric}": float(scores.mean())}

    return validate


def pretrain(preset: Preset, data: Data, seed: int, run_dir: Path, device: torch.device, args: argparse.Namespace) -> dict:
    """Pix2Pix pre-training on the training pairs (§4.1), as a one-level graph; A stays at its initialisation."""
    done = run_dir / "pretrained.pt"
    if done.exists():
        return load_checkpoint(done)
    torch.manual_seed(seed)
    architecture = GeneratorArchitecture(int(math.log2(preset.image_size)))
    pix2pix = new_pix2pix(preset, data.channels)
    graph = Graph("pix2pix_pretraining")
    graph.add(gan_level(preset, pix2pix, architecture, data, seed, args.workers))
    Runner(graph, preset.pretrain_steps, out=run_dir, device=device, seed=seed, precision=args.precision,
           checkpoint_every=max(1, preset.pretrain_steps // 4), resume=(run_dir / "checkpoint_latest.pt").exists(),
           progress=not args.no_progress, config={"stage": "pix2pix pre-training"}).run()
    state = {"pix2pix": {k: v.cpu() for k, v in pix2pix.state_dict().items()},
             "architecture": {k: v.cpu() for k, v in architecture.state_dict().items()}}
    torch.save(state, done)
    return state


def train_and_test(method: str, backbone: str, preset: Preset, data: Data, seed: int, pretrained: dict | None,
                   run_dir: Path, device: torch.device, args: argparse.Namespace, hypergrad: dict[str, str]) -> dict:
    """Train one method, pick its best validation checkpoint, score every test image."""
    scores_file = run_dir / "test_scores.json"
    if scores_file.exists():
        return json.loads(scores_file.read_text())
    graph = build_graph(method, backbone, preset, data, seed, pretrained, hypergrad, device, args.workers)
    t0 = time.perf_counter()
    result = Runner(graph, preset.steps, out=run_dir, device=device, seed=seed, precision=args.precision,
                    validate=validation(data, device), valid_every=preset.valid_every,
                    monitor=f"val_{data.metric}", mode="max", checkpoint_every=preset.valid_every,
                    resume=(run_dir / "checkpoint_latest.pt").exists(), progress=not args.no_progress,
                    config={"method": method, "backbone": backbone, "preset": asdict(preset),
                            "command": common.command_line()}).run()
    best = load_checkpoint(run_dir / "checkpoint_best.pt", map_location=device)
    graph["seg"].module.load_state_dict(best["levels"]["seg"]["module"])
    out = {"method": method, "backbone": backbone, "best_step": result.best["step"],
           "val": result.best["metrics"][f"val_{data.metric}"], "train_seconds": time.perf_counter() - t0,
           "tests": {}}
    for name, dataset in data.tests.items():
        scores, ids = evaluate(graph["seg"].module, dataset, data.metric, device)
        out["tests"][name] = {"mean": float(scores.mean()), "n": len(ids), "per_image": dict(zip(ids, scores.tolist()))}
    if "arch" in graph.levels:
        out["genotype"] = graph["arch"].module.genotype()
    common.write_json(scores_file, out)
    return out


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
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def figure_segmentations(models: dict[str, torch.nn.Module], data: Data, path: Path, device: torch.device,
                         n: int = 5) -> None:
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- results
def aggregate(runs: list[dict], key: str, metric: str) -> list[dict]:
    rows = []
    groups: dict[tuple, list[float]] = {}
    for r in runs:
        for test_set, t in r["tests"].items():
            groups.setdefault((r["method"], r["backbone"], r["train_size"], test_set), []).append(t["mean"])
    for (method, backbone, n, test_set), values in groups.items():
        mean, std = common.mean_std(values)
        rows.append({"method": method, "backbone": backbone, "train_size": n, "test_set": test_set, "metric": metric,
                     "value": mean, "std": std, "n_seeds": len(values)})
    return rows


_LABEL = {"none": "", "rotate": "Rotate-", "flip": "Flip-", "translate": "Translate-", "combine": "Combine-",
          "gan_separate": "GAN-", "e2eaug": "Ours-"}


def _row_name(method: str, backbone: str) -> str:
    net = "UNet" if backbone == "unet" else "DeepLab"
    return ("U-Net" if backbone == "unet" else "DeepLab") if method == "none" else f"{_LABEL[method]}{net}"


def _markdown_table(cells: dict[tuple, str], combos: list[tuple[str, str]], sizes: list[int], sets: list[str]) -> list[str]:
    header = ["Method"] + [f"N={n}: {DATASETS[s].title.split(' (')[0]}" for n in sizes for s in sets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for backbone, method in combos:
        values = [cells.get((method, backbone, n, s), "–") for n in sizes for s in sets]
        lines.append(f"| {_row_name(method, backbone)} | " + " | ".join(values) + " |")
    return lines


def results_markdown(rows: list[dict], key: str, data_block: dict, preset_name: str) -> str:
    """Tables 2/3 layout: rows = method x backbone, columns = training size x test set."""
    paper = json.loads((ROOT / "assets" / "paper_results" / "e2eaug.json").read_text()).get(key)
    reference = {(r["method"], r["backbone"], r["train_size"], r["test_set"]): r["value"] for r in (paper or {}).get("rows", [])}
    order = {m: i for i, m in enumerate(METHODS)}
    combos = sorted({(r["backbone"], r["method"]) for r in rows}, key=lambda bm: (bm[0], order[bm[1]]))
    sizes = sorted({r["train_size"] for r in rows})
    sets = list(dict.fromkeys(r["test_set"] for r in rows))
    ours = {}
    for r in rows:
        k = (r["method"], r["backbone"], r["train_size"], r["test_set"])
        text = f"{r['value']:.3f}" + (f" ± {r['std']:.3f}" if r["n_seeds"] > 1 else "")
        ours[k] = text + (f" ({reference[k]:.3f})" if k in reference else "")
    metric = DATASETS[key].metric
    lines = [f"# E2EAug on {DATASETS[key].title}", "",
             f"{metric.capitalize()} per image, mean over each test set (larger is better); preset `{preset_name}`. "
             "Cells: ours ± std over seeds, with the paper's number in brackets where it reports the same setting.", ""]
    synthetic = [DATASETS[k].title for k, v in data_block.items() if v["source"] == "embedded-sample"]
    if synthetic:
        lines += [f"**Synthetic data.** {'; '.join(synthetic)}: embedded samples written by "
                  "problems/segdata/samples.py in the real layouts, not the real datasets. These numbers show that "
                  "the pipeline runs end to end; they are not comparable with the paper's.", ""]
    lines += _markdown_table(ours, combos, sizes, sets)
    if paper and not any(k[2] in sizes for k in reference):
        ref_sizes = sorted({k[2] for k in reference})
        ref_sets = list(dict.fromkeys(k[3] for k in reference))
        lines += ["", f"The paper's {paper['table']} (no setting in common with this run), for reference:", ""]
        lines += _markdown_table({k: f"{v:.3f}" for k, v in reference.items()},
                                 sorted({(k[1], k[0]) for k in reference}, key=lambda bm: (bm[0], order[bm[1]])),
                                 ref_sizes, ref_sets)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, datasets=sorted(DATASET_KEYS), default_dataset="isic")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to run")
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=None, help="segmentation networks")
    parser.add_argument("--encoder", default=None, help="smp encoder of the segmenter (e.g. resnet34)")
    parser.add_argument("--train-sizes", type=int, nargs="+", default=None,
                        help="labelled examples N (split 80/20 into train/val), e.g. 40 100 200 for ISIC")
    parser.add_argument("--image-size", type=int, default=None, help="side of the square images")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="Pix2Pix pre-training steps")
    parser.add_argument("--lambda-aug", type=float, default=None, help="λ of Eq. 2 (weight of augmented pairs)")
    parser.add_argument("--encoder-weights", default=None,
                        help="e.g. 'imagenet': start the encoder from pretrained weights (downloaded by smp, or cached)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, preset_name, seeds = common.resolve(args)
    key = DATASET_KEYS[args.dataset]
    preset = common.override(PRESETS[preset_name], steps=args.steps, encoder=args.encoder, image_size=args.image_size,
                             pretrain_steps=args.pretrain_steps, lambda_aug=args.lambda_aug,
                             encoder_weights=args.encoder_weights)
    if seeds:
        preset = common.override(preset, seeds=tuple(seeds))
    if args.backbones:
        preset = common.override(preset, backbones=tuple(args.backbones))
    if preset.image_size & (preset.image_size - 1):
        raise SystemExit(f"error: --image-size must be a power of two (the U-Net generator halves it), got {preset.image_size}")
    hypergrad = common.parse_hypergrad(args.hypergrad, LEVELS)
    out = common.prepare_out(args.out or Path("runs") / f"e2eaug-{args.dataset}-{preset_name}", args.resume)
    sample_root = out / "samples"

    roots = {k: locate(k, args, sample_root) for k in (key, *DATASETS[key].ood_tests)}
    data_block = {k: {"source": src, "root": str(root) if root else None} for k, (root, src) in roots.items()}
    for k, v in data_block.items():
        note = "SYNTHETIC embedded sample (not the real data)" if v["source"] == "embedded-sample" else v["source"]
        print(f"[e2eaug] {DATASETS[k].title}: {note} at {v['root']}")
    sizes = train_sizes(key, preset, roots[key][1], args.train_sizes)
    print(f"[e2eaug] preset '{preset_name}' on {device}: {common.preset_table(preset)}")

    runs = []
    for n in sizes:
        for seed in preset.seeds:
            data = load_data(key, roots, n, seed, preset.image_size)
            needs_gan = any(m in ("gan_separate", "e2eaug") for m in args.methods)
            pretrained = pretrain(preset, data, seed, out / "runs" / f"pix2pix__n{n}__seed{seed}", device, args) \
                if needs_gan else None
            for backbone in preset.backbones:
                for method in args.methods:
                    run_dir = out / "runs" / f"{method}__{backbone}__n{n}__seed{seed}"
                    print(f"[e2eaug] {method} / {backbone} / N={n} / seed {seed}")
                    r = train_and_test(method, backbone, preset, data, seed, pretrained, run_dir, device, args, hypergrad)
                    runs.append({**r, "train_size": n, "seed": seed})

    rows = aggregate(runs, key, DATASETS[key].metric)
    results = {"recipe": "e2eaug", "preset": preset_name, "dataset": key, "device": str(device),
               "data": data_block, "synthetic": any(v["source"] == "embedded-sample" for v in data_block.values()),
               "settings": asdict(preset), "methods": args.methods, "rows": rows,
               "runs": [{k: v for k, v in r.items() if k != "tests"} | {"tests": {t: {"mean": s["mean"], "n": s["n"]}
                                                                               for t, s in r["tests"].items()}}
                        for r in runs]}
    common.write_json(out / "results.json", results)
    (out / "results.md").write_text(results_markdown(rows, key, data_block, preset_name))
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    backbone = preset.backbones[-1]
    graphs = {m: trained_graph(m, backbone, preset, data, seed, pretrained, out / "runs" / f"{m}__{backbone}__n{n}__seed{seed}",
                               device) for m in args.methods}
    if "e2eaug" in graphs:
        figure_augmented_pairs(graphs["e2eaug"]["gan"], data, figures / "augmented_pairs.png")
        graphs["e2eaug"].draw(figures / "graph.png")
    figure_segmentations({m: g["seg"].module for m, g in graphs.items()}, data, figures / "test_segmentations.png", device)
    print((out / "results.md").read_text())
    print(f"[e2eaug] wrote {out / 'results.json'}, {out / 'results.md'} and {figures}/")
    return results


if __name__ == "__main__":
    main()
