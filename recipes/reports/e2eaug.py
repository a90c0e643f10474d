"""E2EAug's report: the paper's claims tested on the runs, Tables 2/3 beside the paper's numbers, the
§4.3 ablations, results.json and the figures.

Rows are per (run, test set): ``study``, ``method``, ``backbone``, ``train_size``, ``test_set``,
``metric`` (plus ``lambda`` / ``mask_ops`` in the ablations), ``seed`` and ``value`` (the mean
score over the test set). Every claim is a paired difference that is positive when it holds
(:func:`reporting.margins`: per seed, averaged over the cells it covers, "best of" taking the
strongest competitor per cell), tested with a 95 % interval over seeds (:class:`reporting.Claim`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import reporting
from planning import Plan, RunSpec
from reporting import Claim, margins

from problems.e2eaug.augment import MASK_OPERATIONS
from problems.e2eaug.methods import METHODS, SIMPLE_METHODS
from problems.segdata import DATASETS

__all__ = ["claims", "results_markdown", "seed_rows", "write"]

FULL_OPERATIONS = "+".join(MASK_OPERATIONS)
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
CLAIMS_NOTE = (
    "Each claim is a paired difference that is positive when it holds: per seed (same segmenter "
    "initialisation, labelled subset and batch order for every method), averaged over the cells it covers "
    "(test sets, backbones, N; 'best of' takes the strongest competitor in each cell), then its mean over "
    "seeds with the 95 % Student-t interval. Reproduced: the interval lies above 0."
)


def _row_name(method: str, backbone: str) -> str:
    net = "UNet" if backbone == "unet" else "DeepLab"
    return ("U-Net" if backbone == "unet" else "DeepLab") if method == "none" else f"{_LABEL[method]}{net}"


def _set_title(test_set: str) -> str:
    return DATASETS[test_set].title.split(" (")[0]


# ---------------------------------------------------------------------------------------------- rows
def seed_rows(
    study: str, specs: Sequence[RunSpec], results: Mapping[str, dict], lambda_aug: float, metric: str
) -> list[dict]:
    """One row per (run, test set) of ``study``: its identifying keys, ``seed`` and ``value``."""
    rows = []
    for spec in specs:
        result = results[spec.name]
        for test_set, scores in result["tests"].items():
            row = {
                "study": study,
                "method": spec.method,
                "backbone": spec.get("backbone"),
                "train_size": spec.get("n"),
                "test_set": test_set,
                "metric": metric,
            }
            if study == "lambda":
                row["lambda"] = spec.get("lam", lambda_aug)
            if study == "mask_op":
                row["mask_ops"] = "+".join(spec.get("ops", MASK_OPERATIONS))
            rows.append({**row, "seed": spec.seed, "value": scores["mean"]})
    return rows


# ---------------------------------------------------------------------------------------------- claims
def claims(seed_rows_by_study: Mapping[str, list[dict]], key: str) -> list[Claim]:
    """The paper's claims that the runs made can test (§4.2, §4.3), each as per-seed paired differences."""
    found: list[Claim] = []
    shared = seed_rows_by_study.get("comparison", []) + seed_rows_by_study.get("train_size", [])
    unique = {json.dumps({k: v for k, v in r.items() if k != "study"}, sort_keys=True) for r in shared}
    comparison = [json.loads(r) for r in unique]  # a run in both studies counts once
    methods = {r["method"] for r in comparison}
    has_ood = any(r["test_set"] != key for r in comparison)
    where = {
        "in distribution": lambda r: r["test_set"] == key,
        "out of distribution": lambda r: r["test_set"] != key,
        "all test sets": lambda r: True,
    }

    def add(text: str, winner: str, others: list[str], name: str, scope: str) -> None:
        if winner in methods and all(o in methods for o in others):
            why = (
                ""
                if has_ood or scope != "out of distribution"
                else f"no out-of-distribution test set is available for {key}"
            )
            per_seed = margins(comparison, "method", winner, others, where[scope])
            found.append(Claim(text, f"{name}, {scope}", per_seed, untestable=why))

    for scope in ("in distribution", "out of distribution"):
        add(
            f"Ours improves {scope.replace(' ', '-')} performance over no augmentation (Tables 2/3, §4.2)",
            "e2eaug",
            ["none"],
            "Ours − none",
            scope,
        )
    simple = list(SIMPLE_METHODS[1:])
    for scope in ("in distribution", "out of distribution"):
        add(
            "Ours beats the simple augmentations (Tables 2/3, §4.2)",
            "e2eaug",
            simple,
            "Ours − best of Rotate/Flip/Translate/Combine",
            scope,
        )
    for scope in ("in distribution", "out of distribution"):
        add(
            "End-to-end beats the separately trained GAN (Tables 2/3 'GAN', Fig. 4 'Separate')",
            "e2eaug",
            ["gan_separate"],
            "Ours − GAN-Separate (vanilla Pix2Pix, same generator budget)",
            scope,
        )
    add(
        "The architecture search helps (§3.2; a control, not an experiment of the paper)",
        "e2eaug",
        ["e2eaug_frozen_arch"],
        "Ours − Ours (A frozen)",
        "all test sets",
    )
    add(
        "Training G jointly with the segmenter helps, A fixed (a control; the generator families differ)",
        "e2eaug_frozen_arch",
        ["gan_separate"],
        "Ours (A frozen) − GAN-Separate",
        "all test sets",
    )
    lam_rows = seed_rows_by_study.get("lambda", [])
    lambdas = sorted({r["lambda"] for r in lam_rows})
    if 1.0 in lambdas and len(lambdas) > 1:
        others = [v for v in lambdas if v != 1.0]
        per_seed = margins(lam_rows, "lambda", 1.0, others)
        found.append(
            Claim("λ = 1 gives the best trade-off (Fig. 6)", "Ours(λ=1) − best other λ, all test sets", per_seed)
        )
    op_rows = seed_rows_by_study.get("mask_op", [])
    if op_rows:
        per_seed = margins(op_rows, "mask_ops", FULL_OPERATIONS, list(MASK_OPERATIONS))
        text = "All three mask operations beat any single one (Fig. 5)"
        found.append(Claim(text, "Ours(all three) − best single operation, all test sets", per_seed))
    sizes = sorted({r["train_size"] for r in seed_rows_by_study.get("train_size", [])})
    if len(sizes) > 1 and "e2eaug" in methods and "none" in methods:
        small = margins(comparison, "method", "e2eaug", ["none"], lambda r: r["train_size"] == sizes[0])
        large = margins(comparison, "method", "e2eaug", ["none"], lambda r: r["train_size"] == sizes[-1])
        found.append(
            Claim(
                "The gain is larger with fewer training examples (§4.2, Fig. 2)",
                f"(Ours − none) at N={sizes[0]} − at N={sizes[-1]}, all test sets",
                {s: small[s] - large[s] for s in small if s in large},
            )
        )
    return found


# ---------------------------------------------------------------------------------------------- tables
def _grid(
    cells: dict[tuple, str], combos: Sequence[tuple[str, str]], sizes: Sequence[int], sets: Sequence[str]
) -> list[str]:
    """Tables 2/3 layout: rows = backbone x method, columns = N x test set."""
    header = ["Method"] + [f"N={n}: {_set_title(s)}" for n in sizes for s in sets]
    body = [[_row_name(m, b)] + [cells.get((m, b, n, s), "–") for n in sizes for s in sets] for b, m in combos]
    return reporting.markdown_table(header, body)


def _signed(mean: float, std: float, n: int) -> str:
    return ("+" if mean > 0 else "") + reporting.cell(mean, std, n=n)


def _cell_key(r: Mapping[str, Any]) -> tuple:
    return (r["method"], r["backbone"], r["train_size"], r["test_set"])


def comparison_section(title: str, rows: list[dict], paired: list[dict], paper: dict | None) -> list[str]:
    """Ours (± std over seeds, the paper's number in brackets) and paired differences against ``none``."""
    order = {m: i for i, m in enumerate(METHODS)}
    combos = sorted({(r["backbone"], r["method"]) for r in rows}, key=lambda bm: (bm[0], order[bm[1]]))
    sizes = sorted({r["train_size"] for r in rows})
    sets = list(dict.fromkeys(r["test_set"] for r in rows))
    reference = {_cell_key(r): r["value"] for r in (paper or {}).get("rows", [])}
    ours = {
        _cell_key(r): reporting.cell(r["value"], r["std"], n=r["n"], paper=reference.get(_cell_key(r))) for r in rows
    }
    lines = [f"## {title}", "", *_grid(ours, combos, sizes, sets)]
    if paired:
        diffs = {_cell_key(r): _signed(r["difference"], r["std"], r["pairs"]) for r in paired}
        lines += [
            "",
            "Paired differences against no augmentation (same seed, segmenter initialisation, labelled "
            "subset and batch order; mean ± std over seeds of the per-seed difference):",
            "",
            *_grid(diffs, [c for c in combos if c[1] != "none"], sizes, sets),
        ]
    if paper and not any(k[2] in sizes for k in reference):
        ref_combos = sorted({(k[1], k[0]) for k in reference}, key=lambda bm: (bm[0], order[bm[1]]))
        ref_sets = list(dict.fromkeys(k[3] for k in reference))
        lines += ["", f"The paper's {paper['table']} (no setting in common with this run), for reference:", ""]
        lines += _grid(
            {k: f"{v:.3f}" for k, v in reference.items()}, ref_combos, sorted({k[2] for k in reference}), ref_sets
        )
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


def _lambda_label(v: float) -> str:
    return f"λ = {v:g}"


def _ops_label(v: str) -> str:
    return "all three (random order)" if v == FULL_OPERATIONS else f"{v} only"


@dataclass(frozen=True)
class Variants:
    """An ablation that varies one setting of E2EAug: its row key, its section and figure."""

    key: str
    title: str
    figure: str
    label: Callable[[Any], str]

    def baseline(self, lambda_aug: float) -> Any:
        """The default variant, which the others are compared with."""
        return lambda_aug if self.key == "lambda" else FULL_OPERATIONS


VARIANTS = {
    "lambda": Variants("lambda", "Ablation: λ of Eq. 2 (Figure 6)", "ablation_lambda.png", _lambda_label),
    "mask_op": Variants("mask_ops", "Ablation: mask operations (Figure 5)", "ablation_mask_ops.png", _ops_label),
}


def results_markdown(
    found: list[Claim],
    rows_by_study: Mapping[str, list[dict]],
    paired_by_study: Mapping[str, list[dict]],
    key: str,
    synthetic: list[str],
    preset_name: str,
    preset: Any,
    paths: Sequence[str] = (),
) -> str:
    """results.md: the claims, the budget, the comparison in Tables 2/3 layout, then the ablations."""
    paper = reporting.load_paper("e2eaug").get(key)
    metric = DATASETS[key].metric
    lines = [
        f"# E2EAug on {DATASETS[key].title}",
        "",
        f"{metric.capitalize()} per image, mean over each test set (larger is better); preset `{preset_name}`.",
        "",
        "## The paper's claims on this run",
        "",
        CLAIMS_NOTE,
        "",
        *reporting.claims_table(found),
        "",
        "Figure: `figures/claims.png`.",
        "",
        f"Budget: every segmenter takes {preset.steps} steps from the same initialisation per seed and backbone; "
        f"every generator takes {preset.pretrain_steps} + {preset.steps} = {preset.pretrain_steps + preset.steps} "
        "updates (each with one discriminator update): GAN-Separate's vanilla Pix2Pix trains all of them before "
        f"it is frozen, Ours and Ours (A frozen) pre-train {preset.pretrain_steps} and train {preset.steps} "
        "jointly with the segmenter. Ours (A frozen) keeps the searchable generator at the architecture Ours "
        "starts from and has no architecture level: it isolates the search.",
        "",
    ]
    if synthetic:
        described = f"{'; '.join(synthetic)}: synthetic embedded samples written by problems/segdata/samples.py in the real layouts."
        lines += [reporting.data_statement("embedded-sample", described), ""]
    if "comparison" in rows_by_study:
        title = "Comparison (Tables 2/3 layout; cells: ours ± std over seeds, the paper's number in brackets)"
        lines += [*comparison_section(title, rows_by_study["comparison"], paired_by_study["comparison"], paper), ""]
    lines += paths
    for study, v in VARIANTS.items():
        if study in rows_by_study:
            baseline = v.baseline(preset.lambda_aug)
            lines += variant_section(v.title, rows_by_study[study], paired_by_study[study], v.key, baseline, v.label)
            lines += ["", f"The paper shows this study as a figure only; figure: `figures/{v.figure}`.", ""]
    if "train_size" in rows_by_study:
        title = "Performance against the number of labelled examples (Figure 2)"
        lines += comparison_section(title, rows_by_study["train_size"], paired_by_study["train_size"], paper)
        lines += ["", "Figure: `figures/performance_vs_n.png`.", ""]
    return "\n".join(lines)


def path_norms(run_dir: Path) -> list[float]:
    """Per ``arch`` step of one E2EAug run: ``||arch <- seg <- gan|| / ||arch <- seg||``, the norm of the
    hypergradient path through the generator relative to the direct path (from ``metrics.jsonl``)."""
    ratios = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        paths = json.loads(line).get("hypergradient", {})
        if "arch<-seg<-gan" in paths and paths.get("arch<-seg", {}).get("norm"):
            ratios.append(paths["arch<-seg<-gan"]["norm"] / paths["arch<-seg"]["norm"])
    return ratios


def paths_section(specs: Sequence[RunSpec], out: Path, hypergrad: Mapping[str, str]) -> list[str]:
    """The two hypergradient paths into ``arch``: the ratio of their norms over each E2EAug run's steps."""
    body = []
    for spec in specs:
        metrics = out / "runs" / spec.name / "metrics.jsonl"
        ratios = path_norms(metrics.parent) if spec.method == "e2eaug" and metrics.is_file() else []
        if ratios:
            body.append([spec.name, len(ratios), f"{np.median(ratios):.3g}", f"{min(ratios):.3g} – {max(ratios):.3g}"])
    if not body:
        return []
    methods = ", ".join(f"{level}: {method}" for level, method in hypergrad.items())
    return [
        "## Hypergradient paths into the architecture",
        "",
        f"||arch ← seg ← gan|| / ||arch ← seg|| on every `arch` step (hops: {methods}); read from each run's "
        "`metrics.jsonl`. A ratio far above 1 means the path through the generator drowns the direct one.",
        "",
        *reporting.markdown_table(["run", "arch steps", "median", "range"], body),
        "",
    ]


# ---------------------------------------------------------------------------------------------- figures
def _show(ax: Any, image: np.ndarray, title: str = "") -> None:
    pixels = np.moveaxis(image, 0, -1)  # [C, H, W] -> [H, W, C]
    ax.imshow(np.clip(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, 0, 1), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def figure_augmented_pairs(example: Mapping[str, np.ndarray], path: Path) -> Path:
    """Training images, augmented masks M̂ and the images the trained generator makes of them."""
    n = len(example["aug_mask"])
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5), squeeze=False)
    for j in range(n):
        _show(axes[0, j], example["real"][j], "real image" if j == 0 else "")
        _show(axes[1, j], example["aug_mask"][j], "augmented mask" if j == 0 else "")
        _show(axes[2, j], example["generated"][j], "generated" if j == 0 else "")
    fig.tight_layout()
    return reporting.save_figure(fig, path, dpi=110)


def figure_segmentations(examples: Mapping[str, Mapping[str, np.ndarray]], key: str, path: Path) -> Path:
    """Test images, ground truth and each method's prediction (sigmoid > 0.5)."""
    first = next(iter(examples.values()))
    n, cols = len(first["image"]), 2 + len(examples)
    fig, axes = plt.subplots(n, cols, figsize=(1.7 * cols, 1.7 * n), squeeze=False)
    for i in range(n):
        _show(axes[i, 0], first["image"][i], "image" if i == 0 else "")
        _show(axes[i, 1], first["mask"][i], "ground truth" if i == 0 else "")
        for j, (name, example) in enumerate(examples.items()):
            _show(axes[i, 2 + j], example["prediction"][i], name if i == 0 else "")
    fig.suptitle(f"{DATASETS[key].title}: test segmentations", fontsize=8)
    fig.tight_layout()
    return reporting.save_figure(fig, path, dpi=110)


def figure_variants(rows: list[dict], key: str, label: Callable[[Any], str], title: str, path: Path) -> Path:
    """Grouped bars: one group per test set, one bar per variant (λ or mask operations), ± std over seeds."""
    sets = list(dict.fromkeys(r["test_set"] for r in rows))
    variants = list(dict.fromkeys(r[key] for r in rows))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(1.5 + 1.4 * len(sets), 3))
    for j, v in enumerate(variants):
        cells = {r["test_set"]: r for r in rows if r[key] == v}
        xs = [i + j * width for i in range(len(sets))]
        ax.bar(
            xs,
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
    return reporting.save_figure(fig, path)


def figure_performance_vs_n(rows: list[dict], key: str, path: Path) -> Path:
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
                xs, ys, err = ([r[k] for r in line] for k in ("train_size", "value", "std"))
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=2, label=_row_name(method, backbone))
            ax.set_title(f"{_set_title(key)}-{_set_title(test_set)} ({_row_name('none', backbone)})", fontsize=8)
            ax.set_xlabel("labelled examples N")
            ax.set_ylabel(rows[0]["metric"].capitalize())
    axes[0, -1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return reporting.save_figure(fig, path)


def comparison_figures(specs: Sequence[RunSpec], out: Path, key: str, metric: str) -> None:
    """Test segmentations, augmented pairs and validation curves of the comparison's first (N, seed)
    and last backbone, from each run's ``examples.npz`` and ``metrics.jsonl``."""
    first = specs[0]
    last_backbone = specs[-1].get("backbone")
    chosen = [
        s for s in specs if (s.get("n"), s.seed, s.get("backbone")) == (first.get("n"), first.seed, last_backbone)
    ]
    runs = {s.method: out / "runs" / s.name for s in chosen}
    examples = {m: dict(np.load(d / "examples.npz")) for m, d in runs.items() if (d / "examples.npz").is_file()}
    figures = out / "figures"
    if examples:
        figure_segmentations(examples, key, figures / "test_segmentations.png")
    if "generated" in examples.get("e2eaug", {}):
        figure_augmented_pairs(examples["e2eaug"], figures / "augmented_pairs.png")
    title = f"validation {metric} (seed {first.seed}, N={first.get('n')}, {last_backbone})"
    reporting.plot_learning_curves(
        runs, figures / "validation_curves.png", level="validation", key=f"val_{metric}", title=title
    )


# ---------------------------------------------------------------------------------------------- write
def write(
    out: Path,
    plan: Plan,
    studies: Mapping[str, list[RunSpec]],
    results: Mapping[str, dict],
    *,
    preset: Any,
    roots: Mapping[str, tuple[Path | None, str]],
    device: Any,
    hypergrad: Mapping[str, str],
) -> tuple[dict, str]:
    """Write results.json, results.md and figures/ into ``out``; returns (results.json's content, results.md).

    ``studies`` names the runs of each study (``comparison``, ``lambda``, ``mask_op``, ``train_size``);
    ``results`` is :func:`planning.execute`'s ``{run name: result}``.
    """
    key = plan.settings["dataset"]
    metric = DATASETS[key].metric
    seed_rows_by_study = {s: seed_rows(s, specs, results, preset.lambda_aug, metric) for s, specs in studies.items()}
    rows_by_study = {study: reporting.aggregate(r) for study, r in seed_rows_by_study.items()}
    paired_by_study = {
        "comparison": reporting.paired_differences(seed_rows_by_study.get("comparison", []), baseline="none"),
        "train_size": reporting.paired_differences(seed_rows_by_study.get("train_size", []), baseline="none"),
        **{
            study: reporting.paired_differences(
                seed_rows_by_study.get(study, []), baseline=v.baseline(preset.lambda_aug), method_key=v.key
            )
            for study, v in VARIANTS.items()
        },
    }
    found = claims(seed_rows_by_study, key)
    data = {k: {"source": source, "root": str(root) if root else None} for k, (root, source) in roots.items()}
    synthetic = [DATASETS[k].title for k, v in data.items() if v["source"] == "embedded-sample"]
    e2eaug_runs = [r for specs in studies.values() for r in specs if r.method == "e2eaug"]
    paths = paths_section(list(dict.fromkeys(e2eaug_runs)), out, hypergrad)
    markdown = results_markdown(found, rows_by_study, paired_by_study, key, synthetic, plan.preset, preset, paths)
    saved = {
        "recipe": "e2eaug",
        "preset": plan.preset,
        "dataset": key,
        "device": str(device),
        "data": data,
        "synthetic": bool(synthetic),
        "settings": asdict(preset),
        "plan": plan.describe(),
        "hypergrad": dict(hypergrad),
        "studies": {study: [s.name for s in specs] for study, specs in studies.items()},
        "rows": [r for rows in rows_by_study.values() for r in rows],
        "seed_rows": [r for rows in seed_rows_by_study.values() for r in rows],
        "paired": [{**r, "study": study} for study, rows in paired_by_study.items() for r in rows],
        "claims": [c.as_dict() for c in found],
        "runs": [
            {k: v for k, v in r.items() if k != "tests"}
            | {"tests": {t: {"mean": s["mean"], "n": s["n"]} for t, s in r["tests"].items()}}
            for r in results.values()
        ],
    }
    figures = out / "figures"
    reporting.plot_claims(found, figures / "claims.png", title=f"E2EAug on {DATASETS[key].title}: the paper's claims")
    if "comparison" in studies:
        comparison_figures(studies["comparison"], out, key, metric)
    for study, v in VARIANTS.items():
        if study in studies:
            figure_variants(
                rows_by_study[study],
                v.key,
                v.label,
                "E2EAug: " + v.title.removeprefix("Ablation: "),
                figures / v.figure,
            )
    if "train_size" in studies:
        figure_performance_vs_n(rows_by_study["train_size"], key, figures / "performance_vs_n.png")
    reporting.write_results(out, saved, markdown)
    return saved, markdown
