"""DuMeta++ with its baselines and ablations: meta-train on a pool of age groups, fine-tune the head on
one or five subjects of an unseen age group, and score Dice / ASSD / STCS / ASPC (Tables I–VI, Fig. 6–7).

    python recipes/dumeta.py [--data-root DIR] [--preset smoke|small|paper] [--methods ...]
                             [--shots 1 5] [--head-depth 3] [--capacities 1 10 100 1000]
                             [--depths 0 1 2 3 4 5 all] [--out DIR] [--resume]

Meta-training (problems/dumeta/levels.py) runs once per method and seed on the meta-training pool (three
domains; 80/20 train/validation split, the validation Dice of the meta-trained network selecting
the checkpoint). Meta-test fine-tunes the last --head-depth decoder stages with the encoder frozen
(one-level graph, same engine) on the support subjects of each unseen domain and segments its test
subjects on their own grid (MONAI sliding windows; per axial slice for the 2D network).

Tables: I = one-shot on the first meta-test domain (iSeg-2019-like); II / III = one- / five-shot
on the second (ADNI-like); IV = longitudinal consistency (STCS, ASPC) of the one-shot models on
the second domain's series; V = ablations A–F (+ MIL only) one-shot on the first domain;
VI = memory-bank capacities one-shot on the second; Fig. 7 = fine-tuned head depth one-shot on
the first. Baselines: random initialisation (2D, and 3D in the 3D presets), first-order MAML,
Reptile, DuMeta (sample-level anchors).

Writes to --out: results.json, results.md (the paper's table layouts, its numbers in brackets),
figures/*.png, and runs/<method>__seed<s>/ (meta-training: config.json, metrics.jsonl, checkpoints,
meta_trained.pt) with finetune/<domain>__<k>shot__depth<d>/ for every meta-test. --resume skips
finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import reporting

from engines import Graph, Runner
from engines.checkpoint import load_checkpoint
from problems.braindata import (
    TISSUES,
    BrainDataError,
    BrainDomain,
    Subject,
    dice_per_tissue,
    few_shot_split,
    load_domains,
    longitudinal_rows,
    resample_subject,
    score_subjects,
    train_val_split,
)
from problems.dumeta import (
    REG_FEATURES,
    dual_meta_graph,
    init_learning_graph,
    joint_training_graph,
    meta_trained_parameters,
)
from problems.dumeta.data import JointSampler, MetaTaskSampler, PatchItems
from problems.dumeta.metatest import decoder_class_means, fine_tuning_graph, network_from, segment_subject
from problems.dumeta.net import DualUNet

DEFAULT_CAPACITY = 100  # N (Sec. IV-C4: "a capacity of 100 offers a strong accuracy-efficiency trade-off")
DEPTH_CHOICES = ("0", "1", "2", "3", "4", "5", "all")


# ----------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    """A row of Tables I–V: how its network is obtained before the meta-test.

    kind: "scratch" (random initialisation, the whole network fine-tuned), "dual" (a DuMeta++
    variant, ``variant`` a key of problems.dumeta.VARIANTS), "init" (``variant`` "maml" or
    "reptile": a meta-learned initialisation of the whole network) or "joint" (Table V A).
    """

    label: str
    kind: str
    variant: str | None = None
    dims: int | None = None  # scratch: the network's dimensionality (else the preset's)
    main: bool = False  # a row of Tables I–IV (else an ablation of Table V)


METHODS: dict[str, Method] = {
    "randinit-2d": Method("RandInitUnet.2D", "scratch", dims=2, main=True),
    "randinit-3d": Method("RandInitUnet.3D", "scratch", dims=3, main=True),
    "maml": Method("MAML", "init", "maml", main=True),
    "reptile": Method("Reptile", "init", "reptile", main=True),
    "dumeta": Method("DuMeta", "dual", "dumeta", main=True),
    "dumeta++": Method("DuMeta++", "dual", "dumeta++", main=True),
    "joint": Method("A", "joint"),
    "mfl": Method("B", "dual", "mfl"),
    "mfl+mil": Method("C", "dual", "mfl+mil"),
    "prototype-sum": Method("D", "dual", "prototype-sum"),
    "mil": Method("MIL only", "dual", "mil"),
}
TABLE_V = {
    "joint": "A",
    "mfl": "B",
    "mfl+mil": "C",
    "prototype-sum": "D",
    "dumeta": "E",
    "dumeta++": "F",
    "mil": "MIL only",
}
TABLE_V_COLUMNS = {  # Feature, Loss, MFL, MIL as Table V prints them
    "A": ("", "", "", ""),
    "B": ("", "", "✓", ""),
    "C": ("", "", "✓", "✓"),
    "D": ("Prototype", "Sum", "✓", "✓"),
    "E": ("Sample", "Triplet", "✓", "✓"),
    "F": ("Prototype", "Triplet", "✓", "✓"),
    "MIL only": ("", "", "", "✓"),
}


# ----------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    dims: int  # the meta-learned network: 2 (axial slices) or 3 (volumes / patches)
    grid: tuple[int | None, ...]  # every subject resampled to this grid (None: keep the axis)
    patch: int  # training patch edge (2D: S x S axial patches; 3D: S^3)
    base_width: int  # c of Table VII
    batch_size: int  # items per dataset in a mini-batch
    steps: int  # meta-iterations
    inner_lr: float  # α (Eq. 1)
    outer_lr: float  # β (Eq. 2, 8), poly decay
    momentum: float
    weight_decay: float
    reptile_inner_steps: int
    fine_tune_steps: int
    fine_tune_lr: float
    fine_tune_batch: int
    valid_every: int  # meta-iterations between validations (0: at the end)
    valid_people: int  # validation people per pool dataset
    test_people: int | None  # cap on test people per meta-test domain (None: all)
    embed_items: int  # samples per domain in the feature embedding (Fig. 6)
    sw_batch: int  # sliding-window batch at inference


PRESETS = {
    # 2D on 64x64 axial slices of 64x64xZ volumes, a c = 4 network, a handful of steps: the pipeline on 2 cores
    "smoke": Preset(
        dims=2,
        grid=(64, 64, None),
        patch=64,
        base_width=4,
        batch_size=2,
        steps=8,
        inner_lr=0.05,
        outer_lr=0.05,
        momentum=0.9,
        weight_decay=3e-5,
        reptile_inner_steps=2,
        fine_tune_steps=10,
        fine_tune_lr=0.05,
        fine_tune_batch=4,
        valid_every=0,
        valid_people=1,
        test_people=2,
        embed_items=6,
        sw_batch=32,
    ),
    # 3D on whole volumes resampled to 64^3, c = 16
    "small": Preset(
        dims=3,
        grid=(64, 64, 64),
        patch=64,
        base_width=16,
        batch_size=2,
        steps=3000,
        inner_lr=0.01,
        outer_lr=0.01,
        momentum=0.99,
        weight_decay=3e-5,
        reptile_inner_steps=3,
        fine_tune_steps=1000,
        fine_tune_lr=0.01,
        fine_tune_batch=2,
        valid_every=250,
        valid_people=2,
        test_people=None,
        embed_items=16,
        sw_batch=2,
    ),
    # the paper: 3D 128^3 patches of the native volumes, c = 32, batch 2, SGD Nesterov 0.99 from 0.01 with poly
    # decay, wd 3e-5; 1000 epochs x 250 iterations for meta-training and fine-tuning (the authors' nnU-Net code)
    "paper": Preset(
        dims=3,
        grid=(None, None, None),
        patch=128,
        base_width=32,
        batch_size=2,
        steps=250_000,
        inner_lr=0.01,
        outer_lr=0.01,
        momentum=0.99,
        weight_decay=3e-5,
        reptile_inner_steps=3,
        fine_tune_steps=250_000,
        fine_tune_lr=0.01,
        fine_tune_batch=2,
        valid_every=250,
        valid_people=4,
        test_people=None,
        embed_items=32,
        sw_batch=2,
    ),
}


def sgd(lr: float, preset: Preset) -> Callable:
    """The paper's optimiser family: SGD with Nesterov momentum and weight decay."""
    return functools.partial(
        torch.optim.SGD, lr=lr, momentum=preset.momentum, nesterov=preset.momentum > 0, weight_decay=preset.weight_decay
    )


def poly(total: int) -> Callable:
    """nnU-Net's poly learning-rate decay (power 0.9) over ``total`` steps of the level."""
    return functools.partial(torch.optim.lr_scheduler.PolynomialLR, total_iters=max(1, total), power=0.9)


# ----------------------------------------------------------------------------------------- data
@dataclass
class Data:
    """Everything a seed's runs read: the pool's items and validation subjects, the unseen domains."""

    pool: list[PatchItems]  # meta-training items, one per pool dataset
    pool_val: list[Subject]  # validation subjects of the pool (model selection)
    targets: list[BrainDomain]  # the unseen domains, on the working grid
    descriptions: dict[str, str]
    source: str


def _foreground_box(subjects: Sequence[Subject], margin_mm: float = 4.0) -> tuple[slice, ...]:
    """One bounding box of the brain over several scans of a series (so they stay on one grid)."""
    foreground = np.zeros(subjects[0].label.shape, dtype=bool)
    for s in subjects:
        foreground |= (s.image > 0) | (s.label > 0)
    box = []
    for axis, (n, spacing) in enumerate(zip(foreground.shape, subjects[0].spacing)):
        idx = np.flatnonzero(foreground.any(axis=tuple(a for a in range(3) if a != axis)))
        margin = math.ceil(margin_mm / spacing)
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, n)))
    return tuple(box)


def on_grid(domain: BrainDomain, grid: Sequence[int | None]) -> BrainDomain:
    """``domain`` with every subject resampled to ``grid``; the scans of a series are cropped to their
    common brain box first, so they share one grid and STCS compares them voxel to voxel."""
    if all(g is None for g in grid):
        return domain
    subjects, done = [], set()
    series = domain.series()
    for s in domain.subjects:
        if s.series in series:
            if s.series in done:
                continue
            done.add(s.series)
            scans = series[s.series]
            box = _foreground_box(scans)
            subjects += [
                resample_subject(
                    dataclasses.replace(t, image=t.image[box], label=t.label[box]), grid, crop_to_brain=False
                )
                for t in scans
            ]
        else:
            subjects.append(resample_subject(s, grid))
    return dataclasses.replace(domain, subjects=sorted(subjects, key=lambda t: t.subject_id))


def load_data(args: argparse.Namespace, preset: Preset, seed: int) -> Data:
    try:
        domains = load_domains(
            args.data_root, meta_train=args.meta_train, meta_test=args.meta_test, label_map=args.label_map
        )
    except BrainDataError as err:
        raise SystemExit(f"error: {err}") from None
    pool_domains = [d for d in domains.values() if d.role == "meta-train"]
    targets = [d for d in domains.values() if d.role == "meta-test"]
    if len(pool_domains) < 3 or len(targets) != 2:
        raise SystemExit(
            f"error: DuMeta++ needs at least three meta-training domains and two meta-test domains "
            f"(iSeg-2019-like for Tables I/V, ADNI-like for Tables II-IV/VI); got "
            f"{[d.name for d in pool_domains]} and {[d.name for d in targets]}"
        )
    patch = (preset.patch, preset.patch, 1 if preset.dims == 2 else preset.patch)
    pool, pool_val = [], []
    for d in pool_domains:
        train, val = train_val_split(d, val_fraction=0.2, seed=seed)
        grid = on_grid(dataclasses.replace(d, subjects=train + val), preset.grid)
        by_id = {s.subject_id: s for s in grid.subjects}
        pool.append(PatchItems(d.name, [by_id[s.subject_id] for s in train], patch))
        pool_val += [by_id[s.subject_id] for s in val][: preset.valid_people]
    source = "embedded" if all(d.source == "embedded" for d in domains.values()) else "real"
    return Data(
        pool,
        pool_val,
        [on_grid(d, preset.grid) for d in targets],
        {d.name: d.description for d in domains.values()},
        source,
    )


def split_for(domain: BrainDomain, shots: int, preset: Preset, seed: int) -> tuple[list[Subject], list[Subject]]:
    """Support and test subjects of one meta-test task (the test people capped by the preset)."""
    try:
        split = few_shot_split(domain, shots, seed=seed)
    except BrainDataError as err:
        raise SystemExit(f"error: {err}") from None
    test = split.test
    if preset.test_people is not None:
        people = list(dict.fromkeys(s.series or s.subject_id for s in test))[: preset.test_people]
        test = [s for s in test if (s.series or s.subject_id) in people]
    return split.support, test


# ----------------------------------------------------------------------------------------- meta-training
def run_name(method: str, capacity: int) -> str:
    """Run folder key: the method, with the memory-bank capacity when it is not the default (Table VI)."""
    return method if capacity == DEFAULT_CAPACITY else f"{method}-n{capacity}"


def build_graph(
    method: str,
    net: DualUNet,
    data: Data,
    preset: Preset,
    args: argparse.Namespace,
    seed: int,
    capacity: int,
    hypergrad: dict[str, str],
) -> tuple[Graph, int]:
    """The meta-training graph of ``method`` and its number of global steps."""
    spec = METHODS[method]
    steps = preset.steps
    if spec.kind == "joint":
        sampler = JointSampler(data.pool, preset.batch_size, seed=seed)
        return joint_training_graph(
            net=net, sampler=sampler, optimizer=sgd(preset.outer_lr, preset), scheduler=poly(steps)
        ), steps
    sampler = MetaTaskSampler(data.pool, preset.batch_size, seed=seed)
    if spec.kind == "init":
        k = 1 if spec.variant == "maml" else preset.reptile_inner_steps
        return init_learning_graph(
            spec.variant,
            net=net,
            sampler=sampler,
            inner_lr=preset.inner_lr,
            inner_steps=k,
            outer_optimizer=sgd(preset.outer_lr, preset),
            inner_scheduler=poly(steps * k),
            outer_scheduler=poly(steps),
        ), steps * k
    return dual_meta_graph(
        spec.variant,
        net=net,
        sampler=sampler,
        inner_lr=preset.inner_lr,
        outer_optimizer=sgd(preset.outer_lr, preset),
        inner_scheduler=poly(steps),
        outer_scheduler=poly(steps),
        reg_weight=args.lambda2,
        margin=args.lambda1,
        capacity=capacity,
        reg_features=args.reg_features,
        encoder_hypergrad=hypergrad.get("encoder", "exact"),
        head_init_hypergrad=hypergrad.get("head_init", "first_order"),
    ), steps


class PoolValidation:
    """Mean Dice over tissues of the meta-trained network (θ with φ, no adaptation) on the pool's
    validation subjects: the paper's model selection on the 20 % validation partitions."""

    def __init__(
        self, net: DualUNet, subjects: Sequence[Subject], roi: Sequence[int], preset: Preset, device: torch.device
    ):
        self.net, self.subjects, self.roi, self.preset, self.device = net, list(subjects), tuple(roi), preset, device

    def __call__(self, graph: Graph) -> dict[str, float]:
        net = network_from(self.net, meta_trained_parameters(graph, self.net)).to(self.device)
        scores = [
            v
            for s in self.subjects
            for v in dice_per_tissue(
                segment_subject(net, s, roi=self.roi, batch=self.preset.sw_batch, device=self.device), s.label
            ).values()
        ]
        finite = [v for v in scores if math.isfinite(v)]
        return {"val_dice": float(np.mean(finite)) if finite else 0.0}


def roi_for(dims: int, preset: Preset) -> tuple[int, ...]:
    """The sliding window of inference: the training patch (2D: applied to every axial slice)."""
    return (preset.patch,) * dims


def meta_train(
    method: str,
    capacity: int,
    data: Data,
    preset: Preset,
    args: argparse.Namespace,
    device: torch.device,
    out: Path,
    seed: int,
    hypergrad: dict[str, str],
) -> dict[str, Any]:
    """Meta-train ``method`` (or reuse a finished run); returns its start parameters and run facts."""
    name = run_name(method, capacity)
    run_dir = out / "runs" / f"{name}__seed{seed}"
    done = run_dir / "meta_trained.pt"
    if done.exists():
        return torch.load(done, weights_only=True)
    torch.manual_seed(seed)
    net = DualUNet(preset.dims, base_width=preset.base_width)
    graph, steps = build_graph(method, net, data, preset, args, seed, capacity, hypergrad)
    validation = PoolValidation(net, data.pool_val, roi_for(preset.dims, preset), preset, device)
    every = (preset.valid_every or preset.steps) * (steps // preset.steps)  # global steps per meta-iteration
    print(f"[dumeta] meta-training {name} (seed {seed}): {steps} steps")
    result = Runner(
        graph,
        steps,
        out=run_dir,
        device=device,
        seed=seed,
        precision=args.precision,
        validate=validation,
        valid_every=every,
        monitor="val_dice",
        mode="max",
        checkpoint_every=every,
        resume=(run_dir / "checkpoint_latest.pt").exists(),
        progress=not args.no_progress,
        config={
            "method": method,
            "capacity": capacity,
            "preset": asdict(preset),
            "args": _args(args),
            "command": common.command_line(),
        },
    ).run()
    best = run_dir / "checkpoint_best.pt"
    if best.exists():
        state = load_checkpoint(best, map_location=device)
        for level_name, level in graph.levels.items():
            level.module.load_state_dict(state["levels"][level_name]["module"])
    start = {n: t.detach().cpu().clone() for n, t in meta_trained_parameters(graph, net).items()}
    embedding = (
        feature_embedding(network_from(net, start).to(device), data, preset, seed)
        if METHODS[method].kind == "dual"
        else {}
    )
    payload = {
        "start": start,
        "embedding": embedding,
        "facts": {
            "steps": result.steps,
            "wall_time_s": result.wall_time_s,
            "best_step": result.best["step"] if result.best else None,
            "best_val_dice": result.best["metrics"]["val_dice"] if result.best else None,
        },
    }
    torch.save(payload, done)
    return payload


def feature_embedding(net: DualUNet, data: Data, preset: Preset, seed: int) -> dict[str, Any]:
    """Per-sample class-mean decoder features of every domain (pool and unseen), for Fig. 6."""
    patch = (preset.patch, preset.patch, 1 if preset.dims == 2 else preset.patch)
    sources = [(items.name, items) for items in data.pool]
    sources += [(d.name, PatchItems(d.name, d.subjects, patch)) for d in data.targets]
    out = {}
    for name, items in sources:
        image, label = items.draw(preset.embed_items, torch.Generator().manual_seed(seed))
        scales = decoder_class_means(net, image, label, chunk=preset.sw_batch)
        out[name] = [{k: torch.from_numpy(v) for k, v in scale.items()} for scale in scales]
    return out


# ----------------------------------------------------------------------------------------- meta-test
@dataclass(frozen=True)
class Job:
    """One meta-test: a network start, a domain, a number of shots and the fine-tuned depth."""

    method: str
    run: str
    domain: int  # index into Data.targets
    shots: int
    depth: int | str


def meta_test(
    job: Job,
    start: dict[str, torch.Tensor],
    data: Data,
    preset: Preset,
    args: argparse.Namespace,
    device: torch.device,
    out: Path,
    seed: int,
) -> dict[str, Any]:
    """Fine-tune ``start`` on the support subjects of ``job`` (or reuse a finished one), segment the test
    subjects and score them; returns the rows, the split and one example slice for the figures."""
    domain = data.targets[job.domain]
    ft_dir = out / "runs" / f"{job.run}__seed{seed}" / "finetune" / f"{domain.name}__{job.shots}shot__depth{job.depth}"
    done = ft_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    dims = METHODS[job.method].dims or preset.dims
    net = network_from(DualUNet(dims, base_width=preset.base_width), start)
    support, test = split_for(domain, job.shots, preset, seed)
    if job.depth != 0:
        patch = (preset.patch, preset.patch, 1 if dims == 2 else preset.patch)
        sampler = JointSampler(
            [PatchItems(f"{domain.name}-support", support, patch)], preset.fine_tune_batch, seed=seed
        )
        graph = fine_tuning_graph(
            net,
            sampler,
            depth=job.depth,
            optimizer=sgd(preset.fine_tune_lr, preset),
            scheduler=poly(preset.fine_tune_steps),
        )
        Runner(
            graph,
            preset.fine_tune_steps,
            out=ft_dir,
            device=device,
            seed=seed,
            precision=args.precision,
            resume=(ft_dir / "checkpoint_latest.pt").exists(),
            progress=not args.no_progress,
            config={"job": asdict(job), "support": [s.subject_id for s in support]},
        ).run()
    net = net.to(device)
    predictions = {
        s.subject_id: segment_subject(net, s, roi=roi_for(dims, preset), batch=preset.sw_batch, device=device)
        for s in test
    }
    key = {
        "method": job.method,
        "run": job.run,
        "domain": domain.name,
        "shots": job.shots,
        "depth": str(job.depth),
        "seed": seed,
    }
    rows = [{**key, **r} for r in score_subjects(predictions, test) + longitudinal_rows(predictions, test)]
    first = test[0]
    z = int(np.argmax((first.label > 0).sum(axis=(0, 1))))  # the axial slice with the most brain
    example = {
        "subject": first.subject_id,
        "image": first.image[:, :, z].tolist(),
        "truth": first.label[:, :, z].tolist(),
        "prediction": predictions[first.subject_id][:, :, z].tolist(),
    }
    payload = {
        "rows": rows,
        "support": [s.subject_id for s in support],
        "test": [s.subject_id for s in test],
        "example": example,
    }
    ft_dir.mkdir(parents=True, exist_ok=True)
    reporting.write_json(done, payload)
    return payload


def random_start(dims: int, preset: Preset, seed: int) -> dict[str, torch.Tensor]:
    """A freshly initialised network's parameters (the random-initialisation baselines)."""
    torch.manual_seed(seed)
    return {n: p.detach().clone() for n, p in DualUNet(dims, base_width=preset.base_width).named_parameters()}


def plan_jobs(args: argparse.Namespace, methods: list[str]) -> list[Job]:
    """Every meta-test the requested tables need (duplicates removed)."""
    jobs: list[Job] = []
    depth = args.head_depth
    for m in methods:
        d = "all" if METHODS[m].kind == "scratch" else depth
        if METHODS[m].main:
            jobs += [Job(m, m, 0, 1, d), *(Job(m, m, 1, k, d) for k in args.shots)]
        if m in TABLE_V:
            jobs.append(Job(m, m, 0, 1, d))
    if "dumeta++" in methods:
        jobs += [Job("dumeta++", run_name("dumeta++", n), 1, 1, depth) for n in args.capacities]
        jobs += [Job("dumeta++", "dumeta++", 0, 1, d) for d in args.depths]
    return list(dict.fromkeys(jobs))


# ----------------------------------------------------------------------------------------- results
def summaries(rows: Sequence[dict], **match: Any) -> dict[tuple[str, str], reporting.Summary]:
    """``(metric, tissue) -> mean ± std`` over the subjects (or series pairs) and seeds matching ``match``."""
    values: dict[tuple[str, str], list[float]] = {}
    for r in reporting.rows_where(rows, **match):
        values.setdefault((r["metric"], r["tissue"]), []).append(r["value"])
    return {k: reporting.summarize(v) for k, v in values.items()}


def paper_values(paper: dict) -> dict[tuple, dict]:
    return {(r["table"], r["method"], r["metric"], r["tissue"]): r for r in paper["rows"]}


def _cell(s: reporting.Summary | None, paper: dict | None, digits: int = 4) -> str:
    ref = None if paper is None else paper["value"]
    if s is None:
        return reporting.cell(None, paper=ref, digits=digits)
    return reporting.cell(s.mean, s.std, n=s.n, paper=ref, digits=digits)


def metric_table(
    rows: list[dict],
    paper: dict,
    table: str,
    entries: list[tuple[str, dict]],
    metrics: Sequence[str],
    unit: dict[str, str],
) -> list[str]:
    """One table: a row per ``(label, match)``, a column per metric and tissue, the paper's value in brackets."""
    header = ["Method"] + [f"{m} {t}{unit.get(m, '')}" for m in metrics for t in TISSUES]
    body = []
    for label, match in entries:
        s = summaries(rows, **match)
        body.append([label] + [_cell(s.get((m, t)), paper.get((table, label, m, t))) for m in metrics for t in TISSUES])
    return reporting.markdown_table(header, body)


def results_markdown(results: dict, paper_json: dict) -> str:
    rows, args = results["rows"], results["args"]
    paper = paper_values(paper_json)
    first, second = results["targets"]
    depth = str(args["head_depth"])
    main = [m for m in results["methods"] if METHODS[m].main]

    def depth_of(m: str) -> str:
        return "all" if METHODS[m].kind == "scratch" else depth

    def entries(methods: list[str], domain: str, shots: int) -> list[tuple[str, dict]]:
        return [
            (METHODS[m].label, {"method": m, "run": m, "domain": domain, "shots": shots, "depth": depth_of(m)})
            for m in methods
            if reporting.rows_where(rows, method=m, run=m, domain=domain, shots=shots)
        ]

    same = results["data"]["source"] == "real" and results["preset"] == "paper"
    lines = [
        f"# DuMeta++ and baselines: few-shot brain tissue segmentation across ages ({results['preset']} preset)",
        "",
    ]
    where = (
        "Synthetic lifespan domains made from the real MNI152 2009 tissue maps (problems/braindata/lifespan.py)."
        if results["data"]["stand_in"]
        else f"The folders under {results['data']['root']}."
    )
    lines += [reporting.data_statement(results["data"]["source"], where), ""]
    lines += [f"- {text}" for text in results["data"]["descriptions"].values()] + [""]
    lines += [
        (
            "Setting: the paper's (real data, paper preset)."
            if same
            else "**The setting differs from the paper's** (data and/or preset); the paper's numbers are in brackets "
            "for orientation only."
        ),
        f"Meta-training pool: {', '.join(results['pool'])}; unseen domains: {first} (Tables I, V, Fig. 7; the "
        f"paper's iSeg-2019) and {second} (Tables II–IV, VI; the paper's ADNI). Encoder frozen, the last "
        f"{depth} decoder stage(s) fine-tuned (random initialisation: the whole network). Mean ± std over "
        f"test subjects (and seeds {results['seeds']}); ASSD in mm.",
        "",
    ]
    unit = {"ASSD": " (mm)"}
    for table, domain, shots, title in (
        ("I", first, 1, "One-shot segmentation"),
        ("II", second, 1, "One-shot segmentation"),
        ("III", second, 5, "Five-shot segmentation"),
    ):
        found = entries(main, domain, shots)
        if found:
            lines += [
                f"## Table {table}: {title} on {domain}",
                "",
                *metric_table(rows, paper, table, found, ("Dice", "ASSD"), unit),
                "",
            ]
    found = entries(main, second, 1)
    if found and any(r["metric"] == "STCS" for r in rows):
        aspc_unit = next((r["unit"] for r in rows if r["metric"] == "ASPC"), "%")
        lines += [
            f"## Table IV: Longitudinal consistency on {second} (one-shot models, consecutive time points)",
            "",
            *metric_table(rows, paper, "IV", found, ("STCS", "ASPC"), {"ASPC": f" ({aspc_unit})"}),
            "",
        ]
    ablations = [m for m in TABLE_V if m in results["methods"]]
    if ablations:
        header = ["Exp", "Feature", "Loss", "MFL", "MIL"] + [f"Dice {t}" for t in TISSUES]
        body = []
        for m in ablations:
            code = TABLE_V[m]
            s = summaries(rows, method=m, run=m, domain=first, shots=1, depth=depth_of(m))
            body.append(
                [f"{code} ({m})", *TABLE_V_COLUMNS[code]]
                + [_cell(s.get(("Dice", t)), paper.get(("V", code, "Dice", t))) for t in TISSUES]
            )
        lines += [
            f"## Table V: Ablations, one-shot on {first}",
            "",
            *reporting.markdown_table(header, body),
            "",
            "MIL only is not a row of the paper's Table V.",
            "",
        ]
    capacities = results["capacities"]
    if capacities and "dumeta++" in results["methods"]:
        found = [
            (
                f"capacity {n}",
                {"method": "dumeta++", "run": run_name("dumeta++", n), "domain": second, "shots": 1, "depth": depth},
            )
            for n in capacities
        ]
        table = metric_table(rows, paper, "VI", found, ("Dice", "ASSD"), unit)
        lines += [f"## Table VI: Memory-bank capacity, one-shot on {second}", "", *table, ""]
    depths = results["depths"]
    if depths and "dumeta++" in results["methods"]:
        header = ["Fine-tuned decoder stages"] + [f"Dice {t}" for t in TISSUES] + ["mean Dice"]
        body = []
        for d in depths:
            s = summaries(rows, method="dumeta++", run="dumeta++", domain=first, shots=1, depth=str(d))
            dice = [s.get(("Dice", t)) for t in TISSUES]
            means = [x.mean for x in dice if x is not None and x.n]
            body.append([str(d)] + [_cell(x, None) for x in dice] + [f"{np.mean(means):.4f}" if means else "–"])
        lines += [
            f"## Fig. 7: Fine-tuned head depth (DuMeta++), one-shot on {first}",
            "",
            *reporting.markdown_table(header, body),
            "",
            "0 = the meta-trained network as is; all = encoder included. The paper plots this (no printed "
            "numbers); it finds three up-sampling stages best.",
            "",
        ]
    not_here = sorted(
        {r["method"] for r in paper_json["rows"] if r["table"] == "I"} - {METHODS[m].label for m in METHODS}
    )
    lines += [
        "Rows of the paper's Tables I–IV not implemented here (self-supervised and longitudinal pre-training "
        f"baselines): {', '.join(not_here)}.",
        "",
        "Figures: " + ", ".join(f"`{f}`" for f in results["figures"]),
        "",
    ]
    return "\n".join(lines)


TISSUE_COLOURS = ListedColormap(["black", "#4c9be8", "#e8a33c", "#f2f2f2"])


def plot_examples(examples: dict[str, dict], title: str, path: Path) -> Path:
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


def plot_embedding(embeddings: dict[str, dict], path: Path) -> Path:
    """Fig. 6: PCA of per-sample class-mean decoder features, coarse (left) to fine (right) scale, one row per
    model; colour = domain, marker = tissue."""
    names = list(embeddings)
    scales = len(next(iter(next(iter(embeddings.values())).values())))
    fig, axes = plt.subplots(len(names), scales, figsize=(2.4 * scales, 2.4 * len(names)), squeeze=False)
    markers = ("o", "s", "^")
    from sklearn.decomposition import PCA

    for row, name in zip(axes, names):
        domains = list(embeddings[name])
        colours = plt.get_cmap("tab10")
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


def plot_depths(rows: list[dict], domain: str, depths: Sequence[str], path: Path) -> Path:
    """Fig. 7: Dice per tissue against the number of fine-tuned decoder stages."""
    fig, ax = plt.subplots(figsize=(4.4, 3))
    for tissue in TISSUES:
        means = []
        for d in depths:
            s = summaries(rows, method="dumeta++", run="dumeta++", domain=domain, shots=1, depth=str(d)).get(
                ("Dice", tissue)
            )
            means.append(s.mean if s else float("nan"))
        ax.plot(range(len(depths)), means, marker="o", label=tissue)
    ax.set_xticks(range(len(depths)), [str(d) for d in depths])
    ax.set_xlabel("fine-tuned decoder stages (all: whole network)")
    ax.set_ylabel("Dice")
    ax.legend(fontsize=7)
    ax.set_title(f"DuMeta++, one-shot on {domain}", fontsize=8)
    fig.tight_layout()
    return reporting.save_figure(fig, path)


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
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=None,
        help="methods to run (default: all; randinit-3d only in the 3D presets)",
    )
    parser.add_argument(
        "--shots",
        nargs="+",
        type=common.positive_int,
        default=[1, 5],
        help="support subjects on the second unseen domain (Tables II/III); Table I is one-shot",
    )
    parser.add_argument(
        "--head-depth",
        type=depth_arg,
        default=3,
        help="decoder stages fine-tuned at meta-test (1-5, 'all'; Fig. 7: 3 is best)",
    )
    parser.add_argument(
        "--capacities",
        nargs="*",
        type=common.positive_int,
        default=[1, 10, 100, 1000],
        help="memory-bank capacities of Table VI (with dumeta++; none to skip)",
    )
    parser.add_argument(
        "--depths",
        nargs="*",
        type=depth_arg,
        default=[0, 1, 2, 3, 4, 5, "all"],
        help="fine-tuned depths of Fig. 7 (with dumeta++; none to skip)",
    )
    parser.add_argument("--lambda1", type=float, default=1.5, help="λ1, the triplet margin (Eq. 13)")
    parser.add_argument("--lambda2", type=float, default=0.1, help="λ2, the weight of L_reg (Eq. 15)")
    parser.add_argument(
        "--reg-features",
        choices=REG_FEATURES,
        default="decoder",
        help="feature maps of L_reg: the decoder's (Sec. III-B) or also the encoder's (Appendix II)",
    )
    parser.add_argument(
        "--fine-tune-steps", type=common.positive_int, default=None, help="override the preset's fine-tuning steps"
    )
    parser.add_argument(
        "--meta-train",
        nargs="+",
        default=None,
        help="meta-training domains (folders under --data-root; default OASIS3 IBIS12M IBIS24M, or the "
        "embedded infant12m infant24m adult)",
    )
    parser.add_argument(
        "--meta-test",
        nargs=2,
        default=None,
        metavar=("ISEG_LIKE", "ADNI_LIKE"),
        help="the two unseen domains (default iSeg-2019 ADNI, or the embedded infant6m elderly)",
    )
    parser.add_argument(
        "--label-map",
        default=None,
        help="label map of the nnU-Net-layout folders: identity, iseg, ibeat or freesurfer "
        "(default: their dataset.json)",
    )
    return parser.parse_args(argv)


def _args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, preset_name, seeds = common.resolve(args)
    if args.download:
        raise SystemExit(
            "error: --download: OASIS3, IBIS, ADNI and iSeg-2019 need registration; see README for the "
            "layouts to place under --data-root"
        )
    if args.workers:
        raise SystemExit(
            "error: --workers: this recipe draws its patches in the training process (no DataLoader); leave it at 0"
        )
    preset = common.override(PRESETS[preset_name], steps=args.steps, fine_tune_steps=args.fine_tune_steps)
    seeds = seeds or [0]
    methods = args.methods or [m for m in METHODS if not (m == "randinit-3d" and preset.dims == 2)]
    if preset.dims == 2 and "randinit-3d" in methods:
        raise SystemExit("error: randinit-3d needs a 3D preset (small or paper); the smoke preset is 2D")
    hypergrad = common.parse_hypergrad(args.hypergrad, ("encoder", "head_init"))
    out = common.prepare_out(args.out or Path("runs") / f"dumeta-{args.dataset}-{preset_name}", args.resume)
    print(f"[dumeta] preset '{preset_name}' on {device}: {common.preset_table(preset)}")
    capacities = list(dict.fromkeys(args.capacities)) if "dumeta++" in methods else []
    depths = list(dict.fromkeys(args.depths)) if "dumeta++" in methods else []
    args.capacities, args.depths = capacities, depths
    jobs = plan_jobs(args, methods)
    runs = list(dict.fromkeys((m, DEFAULT_CAPACITY) for m in methods if METHODS[m].kind != "scratch"))
    runs += [("dumeta++", n) for n in capacities if n != DEFAULT_CAPACITY]
    rows: list[dict] = []
    trained: dict[str, dict] = {}
    examples: dict[tuple[str, int], dict[str, dict]] = {}
    data = None
    for seed in seeds:
        data = load_data(args, preset, seed)
        print(f"[dumeta] pool {[d.name for d in data.pool]}, unseen {[d.name for d in data.targets]} ({data.source})")
        for method, capacity in runs:
            trained[run_name(method, capacity)] = meta_train(
                method, capacity, data, preset, args, device, out, seed, hypergrad
            )
        for job in jobs:
            dims = METHODS[job.method].dims or preset.dims
            scratch = METHODS[job.method].kind == "scratch"
            start = random_start(dims, preset, seed) if scratch else trained[job.run]["start"]
            payload = meta_test(job, start, data, preset, args, device, out, seed)
            rows += payload["rows"]
            if (
                METHODS[job.method].main
                and job.run == job.method
                and seed == seeds[0]
                and job.depth == ("all" if METHODS[job.method].kind == "scratch" else args.head_depth)
            ):
                examples.setdefault((data.targets[job.domain].name, job.shots), {})[METHODS[job.method].label] = (
                    payload["example"]
                )

    figures_dir = out / "figures"
    figures = []
    for (domain, shots), ex in examples.items():
        path = figures_dir / f"segmentation_{domain}_{shots}shot.png"
        figures.append(plot_examples(ex, f"{shots}-shot on {domain}", path))
    embedding = {
        label: trained[m]["embedding"]
        for m, label in (("mfl+mil", "without L_reg (C)"), ("dumeta++", "with L_reg (DuMeta++)"))
        if m in trained and trained[m]["embedding"]
    }
    if embedding:
        figures.append(plot_embedding(embedding, figures_dir / "feature_embedding.png"))
    if depths:
        figures.append(
            plot_depths(rows, data.targets[0].name, [str(d) for d in depths], figures_dir / "head_depth.png")
        )
    if "dumeta++" in methods:
        torch.manual_seed(0)
        graph, _ = build_graph(
            "dumeta++",
            DualUNet(preset.dims, base_width=preset.base_width),
            data,
            preset,
            args,
            0,
            DEFAULT_CAPACITY,
            hypergrad,
        )
        figures.append(graph.draw(figures_dir / "graph.png"))
    results = {
        "recipe": "dumeta",
        "preset": preset_name,
        "device": str(device),
        "seeds": seeds,
        "data": {
            "source": data.source,
            "stand_in": data.source == "embedded",
            "descriptions": data.descriptions,
            "root": str(args.data_root) if args.data_root else None,
        },
        "pool": [d.name for d in data.pool],
        "targets": [d.name for d in data.targets],
        "settings": asdict(preset),
        "args": _args(args),
        "methods": methods,
        "capacities": capacities,
        "depths": [str(d) for d in depths],
        "figures": [str(f.relative_to(out)) for f in figures],
        "runs": {name: t["facts"] for name, t in trained.items()},
        "rows": rows,
        "summary": [
            {**dict(zip(("method", "run", "domain", "shots", "depth", "metric", "tissue"), key)), **s.as_dict()}
            for key, s in _grouped(rows).items()
        ],
    }
    markdown = results_markdown(results, reporting.load_paper("dumeta"))
    reporting.write_results(out, results, markdown)
    print(markdown)
    print(f"[dumeta] wrote {out / 'results.json'}, {out / 'results.md'} and {figures_dir}/")
    return results


def _grouped(rows: list[dict]) -> dict[tuple, reporting.Summary]:
    """Mean ± std per method, run, domain, shots, depth, metric and tissue (over subjects/pairs and seeds)."""
    values: dict[tuple, list[float]] = {}
    for r in rows:
        key = tuple(r[k] for k in ("method", "run", "domain", "shots", "depth", "metric", "tissue"))
        values.setdefault(key, []).append(r["value"])
    return {k: reporting.summarize(v) for k, v in values.items()}


if __name__ == "__main__":
    main()
