"""DuMeta++'s report: the paper's claims tested by paired differences over seeds, then Tables I–VI and
Fig. 6–7 beside the paper's numbers (results.md), results.json and figures/.

Every score is first averaged per seed over the test subjects (Dice, ASSD) or series pairs (STCS,
ASPC) of a meta-test; tables show the mean ± std of those per-seed means over seeds, and a claim is
the per-seed paired difference (same seed: same data split, initialisation and batches), > 0 when
the claim holds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import reporting
import torch
from matplotlib.colors import ListedColormap

from problems.braindata import TISSUES
from problems.dumeta.methods import DEFAULT_CAPACITY, METHODS, REFERENCES, TABLE_V, protocols, row_label

__all__ = ["claims", "difference", "render", "seed_means", "write"]

KEYS = ("method", "capacity", "domain", "shots", "depth", "seed", "metric", "tissue")
"""What identifies a per-seed cell: a meta-test of one run, one metric and tissue."""

TABLE_V_COLUMNS = {  # Feature, Loss, MFL, MIL as Table V prints them
    "A": ("", "", "", ""),
    "B": ("", "", "✓", ""),
    "C": ("", "", "✓", "✓"),
    "D": ("Prototype", "Sum", "✓", "✓"),
    "E": ("Sample", "Triplet", "✓", "✓"),
    "F": ("Prototype", "Triplet", "✓", "✓"),
    "MIL only": ("", "", "", "✓"),
}
TABLE_V_CLAIMS = (  # (winner, loser, what the paper says), Sec. IV-C1
    ("B", "A", "meta-feature learning (MFL) beats plain pre-training"),
    ("C", "B", "adding meta-initialisation learning (MIL) helps"),
    ("F", "C", "the class-aware regulariser L_reg helps"),
    ("F", "D", "the triplet hinge beats the plain sum"),
    ("F", "E", "memory-bank prototypes beat sample-level anchors"),
)
TISSUE_COLOURS = ListedColormap(["black", "#4c9be8", "#e8a33c", "#f2f2f2"])


# ----------------------------------------------------------------------------------------- numbers
def seed_means(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-seed means over the subjects / series pairs of every cell (:data:`KEYS`); non-finite values
    (a tissue missing from a prediction) are left out and counted in ``undefined``."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in KEYS), []).append(r)
    cells = []
    for key, members in groups.items():
        finite = [float(r["value"]) for r in members if math.isfinite(float(r["value"]))]
        cell = dict(zip(KEYS, key))
        cell.update(value=statistics.fmean(finite) if finite else float("nan"), n=len(finite))
        cell.update(undefined=len(members) - len(finite), unit=members[0].get("unit", ""))
        cells.append(cell)
    return cells


def _values(cells: Sequence[Mapping[str, Any]], metric: str, match: Mapping[str, Any]) -> dict[tuple, float]:
    """``{(seed, tissue): value}`` of the cells of ``metric`` matching ``match`` (capacity default unless given)."""
    match = {"capacity": DEFAULT_CAPACITY, **match}
    return {(c["seed"], c["tissue"]): c["value"] for c in reporting.rows_where(cells, metric=metric, **match)}


def difference(
    cells: Sequence[Mapping[str, Any]],
    metric: str,
    better: Mapping[str, Any],
    worse: Mapping[str, Any],
    *,
    truth: Mapping[str, Any] | None = None,
) -> dict[int, float]:
    """Per seed: the mean over tissues of ``metric(better) − metric(worse)``, or with ``truth`` of
    ``|metric(worse) − metric(truth)| − |metric(better) − metric(truth)|`` (closer to the truth is
    better); only seeds and tissues holding every side enter."""
    reference = _values(cells, metric, truth) if truth is not None else {}

    def value(key: tuple, v: float) -> float:
        return v if truth is None else -abs(v - reference.get(key, float("nan")))

    rows = [
        {"side": side, "seed": key[0], "tissue": key[1], "value": value(key, v)}
        for side, match in (("better", better), ("worse", worse))
        for key, v in _values(cells, metric, match).items()
        if math.isfinite(value(key, v))
    ]
    return reporting.margins(rows, "side", "better", ["worse"])


def _job(method: str, domain: str, shots: int, head: str) -> dict[str, Any]:
    """A meta-test of ``method`` on its own paper's protocol."""
    return {"method": method, "domain": domain, "shots": shots, "depth": str(protocols(method, head)[0])}


def _where(domain_index: int, shots: int) -> str:
    return {(0, 1): "Table I", (1, 1): "Table II", (1, 5): "Table III"}.get((domain_index, shots), "Sec. IV-B")


def claims(cells: Sequence[Mapping[str, Any]], results: Mapping[str, Any]) -> list[reporting.Claim]:
    """The paper's claims that this run can test, in the order of the paper. Every baseline is meta-tested
    on its own paper's protocol (:func:`~problems.dumeta.methods.protocols`)."""
    s, targets, methods = results["settings"], results["targets"], results["methods"]
    head = str(s["head_depth"])
    out: list[reporting.Claim] = []

    def claim(text: str, test: str, metric: str, better: dict, worse: dict, truth: dict | None = None) -> None:
        out.append(reporting.Claim(text, test, difference(cells, metric, better, worse, truth=truth)))

    baselines = [m for m in methods if METHODS[m].main and m != "dumeta++"] if "dumeta++" in methods else []
    for index, shots in [(d, k) for d in (0, 1) for k in s["shots"]]:
        d = targets[index]
        for b in baselines:
            name = METHODS[b].label
            claim(
                f"DuMeta++ beats {name} ({_where(index, shots)})",
                f"DuMeta++ − {name}: mean Dice, {d}, {shots}-shot",
                "Dice",
                _job("dumeta++", d, shots, head),
                _job(b, d, shots, head),
            )
    d, truth = targets[1], {"method": "truth", "domain": targets[1], "shots": 1, "depth": "0"}
    for b in baselines:
        name = METHODS[b].label
        better, worse = _job("dumeta++", d, 1, head), _job(b, d, 1, head)
        claim(
            f"DuMeta++ is more consistent over time than {name} (Table IV)",
            f"DuMeta++ − {name}: mean STCS, {d}, 1-shot",
            "STCS",
            better,
            worse,
        )
        if "truth" in methods:
            claim(
                f"DuMeta++ tracks the true atrophy better than {name} (Table IV's ASPC, against the labels' own)",
                f"|ASPC {name} − ASPC labels| − |ASPC DuMeta++ − ASPC labels|, {d}, 1-shot",
                "ASPC",
                better,
                worse,
                truth,
            )

    def absent(text: str, test: str, needs: str) -> None:
        out.append(reporting.Claim(text, test, {}, untestable=f"not in this run; {needs}"))

    for better, worse, text in TABLE_V_CLAIMS:
        test = f"{better} − {worse}: mean Dice, {targets[0]}, 1-shot"
        if TABLE_V[better] in methods and TABLE_V[worse] in methods:
            jobs = [_job(TABLE_V[x], targets[0], 1, head) for x in (better, worse)]
            claim(f"{text} (Table V {better} > {worse})", test, "Dice", *jobs)
        elif "dumeta++" in methods:
            absent(f"{text} (Table V {better} > {worse})", test, f"needs --methods {TABLE_V[better]} {TABLE_V[worse]}")
    test = f"N = {DEFAULT_CAPACITY} − N = 1: mean Dice, {targets[1]}, 1-shot"
    text = f"a memory bank of {DEFAULT_CAPACITY} beats a bank of 1 (Table VI)"
    if {1, DEFAULT_CAPACITY} <= set(s["capacities"]):
        job = _job("dumeta++", targets[1], 1, head)
        claim(text, test, "Dice", job, {**job, "capacity": 1})
    elif "dumeta++" in methods:
        absent(text, test, f"needs --capacities 1 {DEFAULT_CAPACITY}")
    others = [str(x) for x in s["depths"] if str(x) not in (head, "all")]
    text = f"fine-tuning {head} decoder stages beats fewer or more (Fig. 7)"
    if head in [str(x) for x in s["depths"]] and others:
        rows = [
            {"depth": c["depth"], "seed": c["seed"], "tissue": c["tissue"], "value": c["value"]}
            for c in reporting.rows_where(cells, method="dumeta++", capacity=DEFAULT_CAPACITY, domain=targets[0])
            if c["metric"] == "Dice" and c["shots"] == 1 and math.isfinite(c["value"])
        ]
        test = f"depth {head} − best of depths {', '.join(others)}: DuMeta++ mean Dice, {targets[0]}, 1-shot"
        out.append(reporting.Claim(text, test, reporting.margins(rows, "depth", head, others)))
    elif "dumeta++" in methods:
        absent(text, f"depth {head} − best of other depths: DuMeta++ mean Dice, {targets[0]}, 1-shot", "needs --depths")
    return out


# ----------------------------------------------------------------------------------------- tables
def _summary(
    cells: Sequence[Mapping[str, Any]], metric: str, tissue: str, match: Mapping[str, Any]
) -> reporting.Summary:
    match = {"capacity": DEFAULT_CAPACITY, **match}
    return reporting.summarize(c["value"] for c in reporting.rows_where(cells, metric=metric, tissue=tissue, **match))


def _cell(s: reporting.Summary, paper: Mapping[str, Any] | None, digits: int = 4) -> str:
    return reporting.cell(s.mean if s.n else None, s.std, n=s.n, paper=paper["value"] if paper else None, digits=digits)


def metric_table(
    cells: Sequence[Mapping[str, Any]],
    paper: Mapping[tuple, Mapping[str, Any]],
    table: str,
    entries: Sequence[tuple[str, str | None, Mapping[str, Any]]],
    metrics: Sequence[str],
    unit: Mapping[str, str],
) -> list[str]:
    """A row per ``(label, paper label, match)``, a column per metric and tissue, the paper's value in brackets."""
    header = ["Method"] + [f"{m} {t}{unit.get(m, '')}" for m in metrics for t in TISSUES]
    body = [
        [label] + [_cell(_summary(cells, m, t, match), paper.get((table, ref, m, t))) for m in metrics for t in TISSUES]
        for label, ref, match in entries
    ]
    return reporting.markdown_table(header, body)


def _order_note(results: Mapping[str, Any]) -> str:
    """Which order the two outer levels stepped in (the engine may lack the sequential option)."""
    orders = sorted({r["upper_order"] for r in results["runs"].values() if r.get("upper_order")})
    if not orders:
        return ""
    if orders == ["sequential"]:
        return "Outer levels: sequential, as Algorithm 1 (θ updated, then φ's gradient with the updated encoder)."
    if results["settings"]["upper_order"] == "two-phase":
        return "Outer levels: two-phase, as asked — θ's and φ's gradients from the state before either update."
    return (
        "Outer levels: two-phase — θ's and φ's gradients from the state before either update (the preset asks "
        f"for {results['settings']['upper_order']}; this engine's Level has no upper_order option yet)."
    )


def render(results: Mapping[str, Any], found: Sequence[reporting.Claim], paper_json: Mapping[str, Any]) -> str:
    """results.md: claims, then Tables I–VI and Fig. 7 in the paper's layout."""
    cells, s = results["rows"], results["settings"]
    paper = {(r["table"], r["method"], r["metric"], r["tissue"]): r for r in paper_json["rows"]}
    first, second = results["targets"]
    head = str(s["head_depth"])
    main = [m for m in results["methods"] if METHODS[m].main]
    same = results["data"]["source"] == "real" and results["preset"] == "paper" and s["augment"]
    where = (
        "Synthetic lifespan domains made from the real MNI152 2009 tissue maps (problems/braindata/lifespan.py)."
        if results["data"]["stand_in"]
        else f"The folders under {results['data']['root']}."
    )
    lines = [
        f"# DuMeta++ and baselines: few-shot brain tissue segmentation across ages ({results['preset']} preset)",
        "",
        reporting.data_statement(results["data"]["source"], where),
        "",
        *[f"- {text}" for text in results["data"]["descriptions"].values()],
        "",
        "## Claims",
        "",
        *reporting.claims_table(found),
        "",
        f"Seeds {results['seeds']}; each difference is paired within a seed (same split, initialisation and "
        "batches) and averaged over tissues; 95 % Student-t interval over seeds.",
        "",
        "Setting: the paper's (real data, the paper preset, nnU-Net's default augmentation)."
        if same
        else "**The setting differs from the paper's** (data, preset and/or augmentation); the paper's numbers "
        "are in brackets for orientation only."
        + ("" if s["augment"] else " No data augmentation (the paper follows nnU-Net's pipeline)."),
        f"Meta-training pool: {', '.join(results['pool'])}; unseen domains: {first} (Tables I, V, Fig. 7; the "
        f"paper's iSeg-2019) and {second} (Tables II–IV, VI; the paper's ADNI). Each method is meta-tested the "
        f"way its paper does: DuMeta++ and its ablations with the encoder frozen and the last {head} decoder "
        "stage(s) fine-tuned, MAML, Reptile and random initialisation on the whole network; MAML, Reptile and "
        "Table V A also the other way (labelled rows, without the paper's number). Mean ± std over seeds of the "
        "per-seed means over test subjects; ASSD in mm.",
        _order_note(results),
        "",
    ]

    def entries(methods: Sequence[str], domain: str, shots: int) -> list[tuple[str, str | None, dict]]:
        """A row per method and protocol; the paper's number only beside the method's own protocol."""
        found = []
        for m in methods:
            for i, depth in enumerate(protocols(m, head)):
                match = {"method": m, "domain": domain, "shots": shots, "depth": str(depth)}
                found.append((row_label(m, depth, head), METHODS[m].paper if i == 0 else None, match))
        return [e for e in found if reporting.rows_where(cells, **e[2])]

    unit = {"ASSD": " (mm)"}
    for index, shots in [(d, k) for d in (0, 1) for k in s["shots"]]:
        domain, table = results["targets"][index], _where(index, shots)
        if entries(main, domain, shots):
            title = f"{table}: {shots}-shot segmentation on {domain}"
            if table.startswith("Sec."):
                title = f"{shots}-shot segmentation on {domain} (no table in the paper)"
            lines += [f"## {title}", ""]
            ref = table.removeprefix("Table ")
            lines += [*metric_table(cells, paper, ref, entries(main, domain, shots), ("Dice", "ASSD"), unit), ""]
    if entries(main, second, 1) and reporting.rows_where(cells, metric="STCS"):
        aspc = next((c["unit"] for c in cells if c["metric"] == "ASPC"), "%")
        found = entries([*main, *REFERENCES], second, 1)
        lines += [f"## Table IV: Longitudinal consistency on {second} (one-shot models, consecutive time points)", ""]
        lines += [*metric_table(cells, paper, "IV", found, ("STCS", "ASPC"), {"ASPC": f" ({aspc})"}), ""]
        lines += [
            "The last two rows are yardsticks on the same test series: the labels themselves (their ASPC is the "
            "atrophy built into the data) and every brain voxel labelled GM, which is perfectly consistent while "
            "segmenting nothing — a higher STCS or a lower ASPC is better only as far as the labels allow. The "
            "claims compare ASPC against the labels' own.",
            "",
        ]
    ablations = [(code, m) for code, m in TABLE_V.items() if m in results["methods"]]
    if ablations:
        header = ["Exp", "Feature", "Loss", "MFL", "MIL"] + [f"Dice {t}" for t in TISSUES]
        body = [
            [f"{code}: {label}", *TABLE_V_COLUMNS[code]]
            + [
                _cell(_summary(cells, "Dice", t, match), paper.get(("V", code, "Dice", t)) if ref else None)
                for t in TISSUES
            ]
            for code, m in ablations
            for label, ref, match in entries([m], first, 1)
        ]
        lines += [f"## Table V: Ablations, one-shot on {first}", "", *reporting.markdown_table(header, body), ""]
        lines += ["MIL only is not a row of the paper's Table V.", ""]
    if s["capacities"]:
        found = [
            (f"capacity {n}", f"capacity {n}", {**_job("dumeta++", second, 1, head), "capacity": n})
            for n in s["capacities"]
        ]
        lines += [f"## Table VI: Memory-bank capacity, one-shot on {second}", ""]
        lines += [*metric_table(cells, paper, "VI", found, ("Dice", "ASSD"), unit), ""]
    if s["depths"]:
        header = ["Fine-tuned decoder stages"] + [f"Dice {t}" for t in TISSUES] + ["mean Dice"]
        body = []
        for d in s["depths"]:
            dice = [
                _summary(cells, "Dice", t, {"method": "dumeta++", "domain": first, "shots": 1, "depth": str(d)})
                for t in TISSUES
            ]
            means = [x.mean for x in dice if x.n]
            body.append([str(d)] + [_cell(x, None) for x in dice] + [f"{np.mean(means):.4f}" if means else "–"])
        lines += [f"## Fig. 7: Fine-tuned head depth (DuMeta++), one-shot on {first}", ""]
        lines += [*reporting.markdown_table(header, body), ""]
        lines += [
            "0 = the meta-trained network as is; all = encoder included. The paper plots this (no printed "
            "numbers); it finds three up-sampling stages best.",
            "",
        ]
    not_here = sorted(
        {r["method"] for r in paper_json["rows"] if r["table"] == "I"} - {m.paper for m in METHODS.values()}
    )
    lines += [
        "Rows of the paper's Tables I–IV not implemented here: the self-supervised and longitudinal pre-training "
        f"baselines ({', '.join(x for x in not_here if x != 'DuMeta')}) and DuMeta (ICCV 2023), whose cosine "
        "inter/intra-class loss is not implemented; its nearest row here is the sample-level ablation (Table V E).",
        "",
        "Figures: " + ", ".join(f"`{f}`" for f in results["figures"]),
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- figures
def plot_examples(examples: Mapping[str, Mapping[str, Any]], title: str, path: Path) -> Path:
    """Rows = methods; columns = image | ground truth | prediction (tissue colours: CSF blue, GM orange, WM white)."""
    fig, axes = plt.subplots(len(examples), 3, figsize=(6.6, 2.2 * len(examples)), squeeze=False)
    for row, (label, ex) in zip(axes, examples.items()):
        panels = (np.asarray(ex["image"]), np.asarray(ex["truth"]), np.asarray(ex["prediction"]))
        for ax, panel, name in zip(row, panels, ("image", "truth", "prediction")):
            kwargs = (
                {"cmap": "gray"}
                if name == "image"
                else {"cmap": TISSUE_COLOURS, "vmin": 0, "vmax": 3, "interpolation": "nearest"}
            )
            ax.imshow(np.rot90(panel), **kwargs)
            ax.set_xticks([])
            ax.set_yticks([])
            if name == "image":
                ax.set_ylabel(label, fontsize=8)
            if row is axes[0]:
                ax.set_title(name, fontsize=9)
    fig.suptitle(f"{title} ({next(iter(examples.values()))['subject']}; CSF blue, GM orange, WM white)", fontsize=8)
    return reporting.save_figure(fig, path)


def plot_embedding(embeddings: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Fig. 6: PCA of per-sample class-mean decoder features, coarse (left) to fine (right) scale, one row per
    model; colour = domain, marker = tissue."""
    from sklearn.decomposition import PCA

    names = list(embeddings)
    scales = len(next(iter(next(iter(embeddings.values())).values())))
    fig, axes = plt.subplots(len(names), scales, figsize=(2.4 * scales, 2.4 * len(names)), squeeze=False)
    markers = ("o", "s", "^")
    colours = plt.get_cmap("tab10")
    handles = []
    for row, name in zip(axes, names):
        domains = list(embeddings[name])
        for col, k in zip(row, reversed(range(scales))):  # coarse to fine, as Fig. 6
            points, tags = [], []
            for d_index, domain in enumerate(domains):
                scale = embeddings[name][domain][k]
                means, present = np.asarray(scale["means"]), np.asarray(scale["present"])
                for t in range(len(TISSUES)):
                    chosen = means[present[:, t], t]
                    points.append(chosen)
                    tags += [(d_index, t)] * len(chosen)
            stacked = np.concatenate(points)
            if len(stacked) < 2:
                continue
            xy = PCA(n_components=2).fit_transform(stacked)
            for (d_index, t), (x, y) in zip(tags, xy):
                col.scatter(x, y, s=10, color=colours(d_index), marker=markers[t], alpha=0.8)
            col.set_xticks([])
            col.set_yticks([])
            col.set_title(f"{name}: scale 1/{2**k}", fontsize=7)
        handles = [plt.Line2D([], [], color=colours(i), marker="o", ls="", label=d) for i, d in enumerate(domains)]
        handles += [plt.Line2D([], [], color="gray", marker=m, ls="", label=t) for m, t in zip(markers, TISSUES)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return reporting.save_figure(fig, path)


def plot_depths(cells: Sequence[Mapping[str, Any]], domain: str, depths: Sequence[str], path: Path) -> Path:
    """Fig. 7: Dice per tissue against the number of fine-tuned decoder stages."""
    fig, ax = plt.subplots(figsize=(4.4, 3))
    for tissue in TISSUES:
        means = []
        for d in depths:
            s = _summary(cells, "Dice", tissue, {"method": "dumeta++", "domain": domain, "shots": 1, "depth": d})
            means.append(s.mean if s.n else float("nan"))
        ax.plot(range(len(depths)), means, marker="o", label=tissue)
    ax.set_xticks(range(len(depths)), list(depths))
    ax.set_xlabel("fine-tuned decoder stages (all: whole network)")
    ax.set_ylabel("Dice")
    ax.legend(fontsize=7)
    ax.set_title(f"DuMeta++, one-shot on {domain}", fontsize=8)
    fig.tight_layout()
    return reporting.save_figure(fig, path)


def figures(
    out: Path,
    results: Mapping[str, Any],
    found: Sequence[reporting.Claim],
    plan: Any,
    done: Mapping[str, Any],
    graph: Any,
) -> list[Path]:
    """Every figure of the report, from the first seed's runs: segmentation examples per meta-test of
    Tables I–III, the feature embedding (Fig. 6), the head depths (Fig. 7), the graph and the claims."""
    folder, seed, s = out / "figures", results["seeds"][0], results["settings"]
    head, targets = str(s["head_depth"]), results["targets"]
    made = []
    for index, shots in [(d, k) for d in (0, 1) for k in s["shots"]]:
        examples = {}
        for spec in (r for r in plan.runs if r.seed == seed and not r.variant and METHODS[r.method].main):
            key = f"{targets[index]}__{shots}shot__depth{protocols(spec.method, head)[0]}"
            if key in done[spec.name]["examples"]:
                examples[METHODS[spec.method].label] = done[spec.name]["examples"][key]
        if examples:
            path = folder / f"segmentation_{targets[index]}_{shots}shot.png"
            made.append(plot_examples(examples, f"{shots}-shot on {targets[index]}", path))
    embedding = {}
    for method, label in (("mfl+mil", "without L_reg (C)"), ("dumeta++", "with L_reg (DuMeta++)")):
        name = f"{method}__seed{seed}"
        if name in done and done[name]["embedding"]:
            embedding[label] = torch.load(out / "runs" / name / done[name]["embedding"], weights_only=True)
    if embedding:
        made.append(plot_embedding(embedding, folder / "feature_embedding.png"))
    if s["depths"]:
        made.append(plot_depths(results["rows"], targets[0], [str(d) for d in s["depths"]], folder / "head_depth.png"))
    if graph is not None:
        made.append(graph.draw(folder / "graph.png"))
    if found:
        made.append(reporting.plot_claims(found, folder / "claims.png", title="DuMeta++: the paper's claims"))
    return made


# ----------------------------------------------------------------------------------------- write
def write(
    out: Path, plan: Any, done: Mapping[str, Mapping[str, Any]], *, data: Any, root: Any, device: Any, graph: Any = None
) -> dict[str, Any]:
    """The report of ``plan``'s finished runs (``done``: run name -> result): per-subject rows aggregated to
    per-seed cells, the claims, the figures, results.json and results.md in ``out``; returns what
    results.json holds. ``data`` is the first seed's :class:`~problems.dumeta.domains.Data` (names and
    descriptions of the domains), ``root`` the data root (None: embedded)."""
    rows = [
        {"method": s.method, "capacity": s.get("capacity", DEFAULT_CAPACITY), **r}
        for s in plan.runs
        for r in done[s.name]["rows"]
    ]
    report = {
        "recipe": "dumeta",
        "preset": plan.preset,
        "device": str(device),
        "seeds": plan.seeds,
        "plan": plan.describe(),
        "data": {
            "source": data.source,
            "stand_in": data.source == "embedded",
            "descriptions": data.descriptions,
            "root": str(root) if root else None,
        },
        "pool": [d.name for d in data.pool],
        "targets": [d.name for d in data.targets],
        "settings": plan.settings,
        "methods": plan.methods,
        "runs": {s.name: {**s.as_row(), **done[s.name]["facts"]} for s in plan.runs},
        "rows": seed_means(rows),
    }
    found = claims(report["rows"], report)
    report["claims"] = [c.as_dict() for c in found]
    report["figures"] = [str(p.relative_to(out)) for p in figures(out, report, found, plan, done, graph)]
    markdown = render(report, found, reporting.load_paper("dumeta"))
    reporting.write_results(out, report, markdown)
    print(markdown)
    print(f"[dumeta] wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'figures'}/")
    return report
