"""Meta-learned LOA MRI reconstruction (Bian et al.): θ shared by all sampling tasks, one weight ω_i per task.

    python recipes/metarecon.py [--data-root DIR] [--contrasts t1 t2] [--preset smoke|small|paper] [--out DIR]
                                [--seen-tasks radial:10 ...] [--unseen-tasks radial:15 cartesian:10 ...]
                                [--hypergrad METHOD] [--compare-hypergrad METHOD ...] [--compare-seconds S]

For every contrast this trains, on the same slices:

1. **meta-learning** (problems/metarecon/levels.py): the LOA network's θ (lower level ``theta``, Eq. 14b,
   training split) and the task weights ω (upper level ``omega``, Eq. 14a, validation split) on
   cross-task mini-batches of the seen tasks (radial 10/20/30/40 %), with the penalty method of
   Algorithm 2 when the engine has it (``--hypergrad`` picks any other method); the checkpoint
   with the best validation PSNR is kept;
2. **adaptation** to every unseen task (radial 15/25/35 %, random Cartesian 10-40 %): θ frozen,
   only a new ω trained on ``adapt_samples`` training slices (paper: 100 slices, 50 epochs);
3. **conventional learning**: the same network trained on each task alone, without ω, on the
   training and validation slices merged, for ``baseline_epoch_ratio`` times the meta-learning
   epochs (paper: 2000 against 100, batch 25).

All are scored on the test slices (PSNR, SSIM, NMSE per slice; zero-filled for reference). It
also compares hypergradient methods at equal wall-clock (validation PSNR after
``--compare-seconds`` of training each) and checks the paper's claim that lower sampling ratios
learn larger σ(ω_i).

Writes to --out: results.json, results.md (Tables 1-5 layout, the paper's numbers beside ours),
per_slice.csv, figures/ (reconstructions with zoomed insets and error maps per task group,
σ(ω_i) against the sampling ratio, the graph) and runs/<contrast>/... (config.json,
metrics.jsonl, checkpoints, model.pt, result.json) for every training run. --resume skips
finished runs and resumes interrupted ones. --steps sets the meta-learning steps; the conventional
budget follows from it through --baseline-epoch-ratio, the adaptation budget from --adapt-epochs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

import common
import reporting

from engines import METHODS, Graph, Runner
from engines.checkpoint import load_checkpoint, save_atomic
from problems.metarecon import (
    SEEN_TASKS,
    UNSEEN_CARTESIAN,
    UNSEEN_RADIAL,
    CrossTaskSlices,
    StairSchedule,
    adaptation_graph,
    conventional_graph,
    meta_graph,
    reconstruct,
    zero_filled,
)
from problems.metarecon.loa import LOANetwork, LOASettings
from problems.mri import (
    CONTRASTS,
    PAPER_COUNTS,
    MRIDataError,
    MRISlices,
    SamplingTask,
    SliceSpec,
    achieved_ratio,
    load_slices,
    per_slice_rows,
    reconstruction_metrics,
    summarize_rows,
    write_per_slice_csv,
)

DEFAULT_HYPERGRAD = "penalty" if "penalty" in METHODS else "darts"
"""Algorithm 2's penalty method once the engine registers it; until then the one-step unrolled
approximation (darts) stands in for it."""
TABLES = {
    ("t1", "seen"): "table1",
    ("t1", "adapted radial"): "table2",
    ("t2", "seen"): "table3",
    ("t2", "adapted radial"): "table4",
    ("t2", "adapted cartesian"): "table5",
}
"""The paper's table of each (contrast, task group); the paper's seen tasks are radial 10-40 %."""
METRICS = ("psnr", "ssim", "nmse")


@dataclass(frozen=True)
class Preset:
    """Everything the three trainings need; epochs are over each task's training slices."""

    crop: tuple[int, int]
    size: tuple[int, int] | None
    limit: tuple[int, int, int] | None  # at most this many train/val/test slices (None: all)
    phases: int
    stair: bool
    inner_steps: int  # K: θ steps per ω step
    batch_per_task: int  # J: slices of every task in a cross-task batch
    epochs: float  # meta-learning epochs (paper: 100)
    valid_times: int  # validations during meta-learning
    baseline_epoch_ratio: float  # conventional / meta-learning epochs (paper: 2000 / 100)
    baseline_batch: int  # paper: 25
    adapt_samples: int  # paper: 100
    adapt_epochs: float  # paper: 50
    adapt_batch: int
    lr: float  # Adam, both levels (paper: 1e-3)
    # Adam on the single new ω. It starts at 0 (σ = 0.5) like every ω, and Adam moves one scalar by about
    # its learning rate per step: the paper's 50 epochs over 100 slices in batches of 8 are 625 steps, so
    # 1e-3 would keep σ(ω) within about [0.35, 0.65]. The paper states no rate; we use 1e-2.
    adapt_lr: float
    compare_methods: tuple[str, ...]  # hypergradient methods compared at equal wall-clock
    compare_seconds: float
    contrasts: tuple[str, ...]
    eval_batch: int = 16


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
        compare_methods=tuple(dict.fromkeys((DEFAULT_HYPERGRAD, "darts"))),
        compare_seconds=4.0,
        contrasts=("t1",),
    ),
    "small": Preset(
        crop=(160, 180),
        size=None,
        limit=None,
        phases=5,
        stair=False,
        inner_steps=5,
        batch_per_task=2,
        epochs=20.0,
        valid_times=10,
        baseline_epoch_ratio=20.0,
        baseline_batch=25,
        adapt_samples=100,
        adapt_epochs=50.0,
        adapt_batch=8,
        lr=1e-3,
        adapt_lr=1e-2,
        compare_methods=tuple(dict.fromkeys((DEFAULT_HYPERGRAD, "darts", "cg", "exact"))),
        compare_seconds=300.0,
        contrasts=("t1", "t2"),
    ),
    "paper": Preset(
        crop=(160, 180),
        size=None,
        limit=None,
        phases=11,
        stair=True,
        inner_steps=5,
        batch_per_task=2,
        epochs=100.0,
        valid_times=20,
        baseline_epoch_ratio=20.0,
        baseline_batch=25,
        adapt_samples=100,
        adapt_epochs=50.0,
        adapt_batch=8,
        lr=1e-3,
        adapt_lr=1e-2,
        compare_methods=tuple(dict.fromkeys((DEFAULT_HYPERGRAD, "darts", "cg", "exact"))),
        compare_seconds=1800.0,
        contrasts=("t1", "t2"),
    ),
}


# ---------------------------------------------------------------------------------------- set-up
def parse_tasks(texts: list[str], what: str) -> tuple[SamplingTask, ...]:
    try:
        tasks = tuple(SamplingTask.parse(t) for t in texts)
    except ValueError as err:
        raise SystemExit(f"error: {what}: {err}") from None
    if len(set(tasks)) != len(tasks):
        raise SystemExit(f"error: {what} lists a task twice: {[t.key for t in tasks]}")
    return tasks


def masks_for(tasks: tuple[SamplingTask, ...], shape: tuple[int, int], seed: int) -> torch.Tensor:
    """The tasks' masks ``[T, H, W]``; a mask that cannot reach its ratio on this grid stops the recipe."""
    try:
        return torch.stack([t.mask(shape, seed=seed) for t in tasks])
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


@dataclass
class Budget:
    """Global steps of the three trainings, from the preset's epochs (or --steps for meta-learning)."""

    meta_steps: int
    stage_steps: int | None
    valid_every: int
    baseline_steps: int
    adapt_steps: int


def budget(preset: Preset, slices: MRISlices, override_steps: int | None) -> Budget:
    k, j = preset.inner_steps, preset.batch_per_task
    n_train, n_val = len(slices.splits["train"]), len(slices.splits["val"])
    meta = override_steps if override_steps is not None else math.ceil(preset.epochs * n_train / j)
    meta = k * max(1, math.ceil(meta / k))  # whole outer rounds
    meta_epochs = meta * j / n_train
    stage = k * max(1, meta // (k * preset.phases)) if preset.stair and preset.phases > 1 else None
    valid_every = k * max(1, meta // (k * max(1, preset.valid_times)))
    merged = n_train + n_val
    baseline = math.ceil(preset.baseline_epoch_ratio * meta_epochs * merged / min(preset.baseline_batch, merged))
    adapt_n = min(preset.adapt_samples, n_train)
    adapt = math.ceil(preset.adapt_epochs * adapt_n / min(preset.adapt_batch, adapt_n))
    return Budget(meta, stage, valid_every, max(1, baseline), max(1, adapt))


def loa_settings(preset: Preset) -> LOASettings:
    return LOASettings(phases=preset.phases)


# ---------------------------------------------------------------------------------------- trainings
class ValidationPSNR:
    """Mean validation PSNR over the seen tasks, with the phases active at this step."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, schedule: StairSchedule, batch: int):
        self.images, self.masks, self.schedule, self.batch = images, masks, schedule, batch

    def __call__(self, graph: Graph) -> dict[str, float]:
        phases = self.schedule(graph.engine.global_step)
        sigma = graph["omega"].module.sigma()
        values = []
        for i, mask in enumerate(self.masks):
            recon, _ = reconstruct(
                graph["theta"].module, self.images, mask, float(sigma[i]), phases=phases, batch_size=self.batch
            )
            values.append(float(reconstruction_metrics(recon, self.images)["psnr"].mean()))
        return {"val_psnr": sum(values) / len(values), "phases": float(phases)}


def run_dir_done(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def train_meta(
    slices: MRISlices,
    tasks: tuple[SamplingTask, ...],
    masks: torch.Tensor,
    preset: Preset,
    b: Budget,
    hypergrad: str,
    args: argparse.Namespace,
    device: torch.device,
    seed: int,
    run_dir: Path,
) -> tuple[LOANetwork, torch.Tensor, dict[str, Any]]:
    """Meta-learning of θ and ω on the seen tasks; returns the best-validation network, σ(ω) and a summary."""
    schedule = StairSchedule(preset.phases, b.stage_steps)
    done = run_dir_done(run_dir)
    if done is None:
        graph = build_meta(slices, masks, preset, schedule, hypergrad, seed, args.workers)
        validation = ValidationPSNR(slices.splits["val"].images, masks, schedule, preset.eval_batch)
        result = Runner(
            graph,
            b.meta_steps,
            out=run_dir,
            device=device,
            seed=seed,
            validate=validation,
            valid_every=b.valid_every,
            monitor="val_psnr",
            mode="max",
            checkpoint_every=b.valid_every,
            resume=(run_dir / "checkpoint_latest.pt").exists(),
            progress=not args.no_progress,
            config={
                "run": "meta",
                "tasks": [t.key for t in tasks],
                "hypergrad": hypergrad,
                "preset": asdict(preset),
                "budget": asdict(b),
                "command": common.command_line(),
            },
        ).run()
        best = load_checkpoint(run_dir / "checkpoint_best.pt", map_location="cpu")
        best_phases = schedule(best["step"])
        save_atomic(
            {
                "network": best["levels"]["theta"]["module"],
                "omega": best["levels"]["omega"]["module"],
                "phases": best_phases,
            },
            run_dir / "model.pt",
        )
        done = {
            "steps": result.steps,
            "best_step": best["step"],
            "best_val_psnr": result.best["metrics"]["val_psnr"],
            "phases": best_phases,
            "hypergrad": hypergrad,
            "wall_time_s": result.wall_time_s,
            "safeguard": _safeguard_summary(run_dir / "metrics.jsonl", "theta"),
        }
        reporting.write_json(run_dir / "result.json", done)
    model = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    network = LOANetwork(loa_settings(preset))
    network.load_state_dict(model["network"])
    network.active_phases = int(model["phases"])
    return network.to(device), torch.sigmoid(model["omega"]["omega"]), done


def build_meta(
    slices: MRISlices,
    masks: torch.Tensor,
    preset: Preset,
    schedule: StairSchedule,
    hypergrad: str,
    seed: int,
    workers: int = 0,
) -> Graph:
    train = CrossTaskSlices(slices.splits["train"].images, masks, seed=seed)
    val = CrossTaskSlices(slices.splits["val"].images, masks, seed=seed + 1)
    return meta_graph(
        train=train,
        val=val,
        settings=loa_settings(preset),
        schedule=schedule,
        batch_per_task=preset.batch_per_task,
        val_batch_per_task=preset.batch_per_task,
        unroll=preset.inner_steps,
        hypergrad=hypergrad,
        theta_lr=preset.lr,
        omega_lr=preset.lr,
        seed=seed,
        workers=workers,
    )


def _safeguard_summary(metrics: Path, level: str) -> dict[str, float]:
    """Mean fraction of samples and phases whose u-step was refused (line 5 failed) over a run."""
    entries = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    taken = [e["safeguard_taken"] for e in entries if e.get("level") == level and "safeguard_taken" in e]
    return {"safeguard_taken_mean": sum(taken) / len(taken) if taken else float("nan"), "steps": len(taken)}


def train_conventional(
    slices: MRISlices,
    task: SamplingTask,
    mask: torch.Tensor,
    preset: Preset,
    b: Budget,
    args: argparse.Namespace,
    device: torch.device,
    seed: int,
    run_dir: Path,
) -> LOANetwork:
    """The same network trained on one task alone (training and validation slices merged, weight 1)."""
    schedule = StairSchedule(preset.phases, _scaled_stage(b, b.baseline_steps))
    if run_dir_done(run_dir) is None:
        merged = torch.cat([slices.splits["train"].images, slices.splits["val"].images])
        graph = conventional_graph(
            train=CrossTaskSlices(merged, mask[None], seed=seed),
            settings=loa_settings(preset),
            schedule=schedule,
            batch_size=min(preset.baseline_batch, len(merged)),
            lr=preset.lr,
            seed=seed,
            workers=args.workers,
        )
        result = Runner(
            graph,
            b.baseline_steps,
            out=run_dir,
            device=device,
            seed=seed,
            checkpoint_every=max(1, b.baseline_steps // 4),
            resume=(run_dir / "checkpoint_latest.pt").exists(),
            progress=not args.no_progress,
            config={
                "run": "conventional",
                "task": task.key,
                "preset": asdict(preset),
                "steps": b.baseline_steps,
                "command": common.command_line(),
            },
        ).run()
        phases = schedule(b.baseline_steps)  # the stair stage training ended in
        save_atomic({"network": graph["theta"].module.state_dict(), "phases": phases}, run_dir / "model.pt")
        reporting.write_json(
            run_dir / "result.json",
            {
                "steps": result.steps,
                "wall_time_s": result.wall_time_s,
                "final_loss": result.losses["theta"][-1],
                "phases": phases,
            },
        )
    model = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    network = LOANetwork(loa_settings(preset))
    network.load_state_dict(model["network"])
    network.active_phases = int(model["phases"])
    return network.to(device)


def _scaled_stage(b: Budget, steps: int) -> int | None:
    """Stair stages of another training, as the same share of its steps as in meta-learning."""
    if b.stage_steps is None:
        return None
    return max(1, round(b.stage_steps * steps / b.meta_steps))


def adapt(
    network: LOANetwork,
    slices: MRISlices,
    task: SamplingTask,
    mask: torch.Tensor,
    preset: Preset,
    b: Budget,
    args: argparse.Namespace,
    device: torch.device,
    seed: int,
    run_dir: Path,
) -> float:
    """σ(ω_new) of an unseen task: θ frozen, ω trained on ``adapt_samples`` training slices."""
    done = run_dir_done(run_dir)
    if done is None:
        images = slices.splits["train"].subset(preset.adapt_samples).images
        graph = adaptation_graph(
            network=network,
            train=CrossTaskSlices(images, mask[None], seed=seed),
            batch_size=min(preset.adapt_batch, len(images)),
            lr=preset.adapt_lr,
            seed=seed,
            workers=args.workers,
        )
        Runner(
            graph,
            b.adapt_steps,
            out=run_dir,
            device=device,
            seed=seed,
            checkpoint_every=max(1, b.adapt_steps // 4),
            resume=(run_dir / "checkpoint_latest.pt").exists(),
            progress=not args.no_progress,
            config={
                "run": "adaptation",
                "task": task.key,
                "steps": b.adapt_steps,
                "samples": len(images),
                "command": common.command_line(),
            },
        ).run()
        done = {"sigma_omega": float(graph["omega"].module.sigma()[0]), "samples": len(images), "steps": b.adapt_steps}
        reporting.write_json(run_dir / "result.json", done)
    return float(done["sigma_omega"])


def compare_hypergradients(
    slices: MRISlices,
    masks: torch.Tensor,
    preset: Preset,
    b: Budget,
    methods: tuple[str, ...],
    seconds: float,
    device: torch.device,
    seed: int,
) -> list[dict[str, Any]]:
    """Validation PSNR after the same wall-clock of meta-learning with each hypergradient method."""
    rows = []
    schedule = StairSchedule(preset.phases, None)  # all phases: the comparison is about the hypergradient
    validation = ValidationPSNR(slices.splits["val"].images, masks, schedule, preset.eval_batch)
    for method in methods:
        graph = build_meta(slices, masks, preset, schedule, method, seed)
        runner = Runner(graph, 10**9, device=device, seed=seed, progress=False)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or not runner.at_rest():
            runner.step()
        elapsed = time.perf_counter() - start
        runner.close()
        graph.engine.eval()
        psnr = validation(graph)["val_psnr"]
        rows.append(
            {
                "method": method,
                "metric": "val_psnr_at_equal_wallclock",
                "value": psnr,
                "seconds": elapsed,
                "outer_steps": runner.step_count // preset.inner_steps,
                "budget_seconds": seconds,
                "sigma_omega": graph["omega"].module.sigma().tolist(),
            }
        )
        print(
            f"[metarecon] hypergradient {method:>12}: {runner.step_count // preset.inner_steps} outer steps in "
            f"{elapsed:.1f} s, validation PSNR {psnr:.3f} dB"
        )
    return rows


# ---------------------------------------------------------------------------------------- evaluation
def score(
    network: LOANetwork, images: torch.Tensor, mask: torch.Tensor, weight: float, preset: Preset
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, float]]:
    recon, stats = reconstruct(
        network, images, mask, weight, phases=network.active_phases, batch_size=preset.eval_batch
    )
    return reconstruction_metrics(recon, images), recon, stats


def run_contrast(
    contrast: str,
    slices: MRISlices,
    seen: tuple[SamplingTask, ...],
    unseen: tuple[SamplingTask, ...],
    preset: Preset,
    b: Budget,
    hypergrad: str,
    args: argparse.Namespace,
    device: torch.device,
    seed: int,
    out: Path,
) -> dict[str, Any]:
    """Meta-learning, adaptation and conventional learning on one contrast; per-slice rows and figure data."""
    shape = slices.shape
    seen_masks, unseen_masks = masks_for(seen, shape, seed), masks_for(unseen, shape, seed)
    runs = out / "runs" / contrast
    print(
        f"[metarecon] {contrast}: meta-learning on {', '.join(t.key for t in seen)} ({b.meta_steps} steps, "
        f"hypergrad {hypergrad})"
    )
    network, sigma, meta = train_meta(slices, seen, seen_masks, preset, b, hypergrad, args, device, seed, runs / "meta")
    test = slices.splits["test"].images
    figure_slice = len(test) // 2
    rows, examples, stats = [], {}, {}
    for i, task in enumerate((*seen, *unseen)):
        is_seen = i < len(seen)
        mask = seen_masks[i] if is_seen else unseen_masks[i - len(seen)]
        if is_seen:
            weight = float(sigma[i])
        else:
            print(f"[metarecon] {contrast}: adapting ω to unseen {task.key} ({b.adapt_steps} steps)")
            weight = adapt(network, slices, task, mask, preset, b, args, device, seed, runs / "adapt" / task.key)
        print(f"[metarecon] {contrast}: conventional learning on {task.key} ({b.baseline_steps} steps)")
        conventional = train_conventional(
            slices, task, mask, preset, b, args, device, seed, runs / "conventional" / task.key
        )
        meta_metrics, meta_recon, meta_stats = score(network, test, mask, weight, preset)
        conv_metrics, conv_recon, _ = score(conventional, test, mask, 1.0, preset)
        zf = zero_filled(test.double(), mask.double())
        identity = {
            "contrast": contrast,
            "task": task.key,
            "pattern": task.pattern,
            "ratio": task.ratio,
            "seen": is_seen,
            "achieved_ratio": achieved_ratio(mask),
        }
        rows += per_slice_rows(meta_metrics, **identity, method="meta", sigma_omega=weight)
        rows += per_slice_rows(conv_metrics, **identity, method="conventional")
        rows += per_slice_rows(reconstruction_metrics(zf, test), **identity, method="zero-filled")
        examples[task.key] = {
            "meta": meta_recon[figure_slice].abs(),
            "conventional": conv_recon[figure_slice].abs(),
            "zero-filled": zf[figure_slice].abs(),
            "mask": mask,
        }
        stats[task.key] = meta_stats
    return {
        "rows": rows,
        "examples": examples,
        "reference": test[figure_slice],
        "meta": meta,
        "sigma": {t.key: float(sigma[i]) for i, t in enumerate(seen)},
        "safeguard_at_test": stats,
    }


def summary_rows(per_slice: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over test slices for every (contrast, task, method, metric)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in per_slice:
        groups.setdefault((r["contrast"], r["task"], r["method"]), []).append(r)
    out = []
    for (contrast, task, method), members in groups.items():
        first = members[0]
        base = {
            "contrast": contrast,
            "task": task,
            "pattern": first["pattern"],
            "ratio": first["ratio"],
            "seen": first["seen"],
            "method": method,
            "achieved_ratio": first["achieved_ratio"],
        }
        for metric, s in summarize_rows(members, METRICS).items():
            out.append({**base, "metric": metric, "value": s["mean"], "std": s["std"], "n": s["n"]})
        if "sigma_omega" in first:
            out.append({**base, "metric": "sigma_omega", "value": first["sigma_omega"], "std": 0.0, "n": 1})
    return out


def table_of(row: dict[str, Any]) -> str | None:
    """The paper's table a (contrast, task group) row corresponds to, if any."""
    return TABLES.get((row["contrast"], task_group(row)))


def task_group(row: dict[str, Any]) -> str:
    """``seen`` (ω meta-learned) or ``adapted <pattern>`` (ω adapted with θ frozen): the paper's tables."""
    return "seen" if row["seen"] else f"adapted {row['pattern']}"


def _paper_group(row: dict[str, Any]) -> str:
    return "seen" if row["tasks"] == "seen" else f"adapted {row['pattern']}"


def sigma_claim(rows: list[dict[str, Any]], paper: dict[str, Any]) -> list[dict[str, Any]]:
    """Section 5.3: lower sampling ratios learn larger σ(ω_i); tested within each table's group of tasks
    (seen, adapted radial, adapted Cartesian) per contrast, ours and the paper's."""
    from scipy.stats import spearmanr

    def verdict(points: list[tuple[float, float]]) -> dict[str, Any]:
        ratios, sigmas = zip(*sorted(points))
        decreasing = all(b < a for a, b in itertools.pairwise(sigmas))
        if len(set(sigmas)) == 1:
            rho = float("nan")  # σ(ω) did not move: no ordering to measure
        elif len(points) > 2:
            rho = float(spearmanr(ratios, sigmas).statistic)
        else:
            rho = -1.0 if decreasing else 1.0
        return {
            "ratios": list(ratios),
            "sigma_omega": list(sigmas),
            "strictly_decreasing": decreasing,
            "spearman_rho": rho,
        }

    ours = [r for r in rows if r["metric"] == "sigma_omega" and r["method"] == "meta"]
    out = []
    for contrast, group in dict.fromkeys((r["contrast"], task_group(r)) for r in ours):
        points = [(r["ratio"], r["value"]) for r in ours if r["contrast"] == contrast and task_group(r) == group]
        if len(points) < 2:
            continue
        theirs = [
            (r["ratio"], r["value"])
            for r in paper["rows"]
            if r["metric"] == "sigma_omega" and r["contrast"] == contrast and _paper_group(r) == group
        ]
        out.append(
            {
                "contrast": contrast,
                "group": group,
                **verdict(points),
                "paper": verdict(theirs) if len(theirs) > 1 else None,
            }
        )
    return out


# ---------------------------------------------------------------------------------------- figures
def plot_reconstructions(keys: list[str], result: dict[str, Any], path: Path, title: str) -> Path:
    """Meta and conventional reconstructions with a zoomed inset, their error maps and the masks."""
    reference = result["reference"].abs()
    h, w = reference.shape
    box = (h // 3, w // 3, max(8, h // 4), max(8, w // 4))  # zoom region: row, col, height, width
    rows = (("meta", "meta-learning"), ("conventional", "conventional"))
    fig, axes = plt.subplots(5, len(keys) + 1, figsize=(2.2 * (len(keys) + 1), 11), squeeze=False)
    errors = [ex[m] - reference for ex in (result["examples"][k] for k in keys) for m, _ in rows]
    vmax = max(float(e.abs().max()) for e in errors) or 1.0
    for ax in axes.flat:
        ax.set_axis_off()
    _image_with_zoom(axes[0, 0], reference, box, "ground truth")
    for c, key in enumerate(keys, start=1):
        ex = result["examples"][key]
        for r, (method, label) in enumerate(rows):
            _image_with_zoom(axes[r, c], ex[method], box, f"{label}\n{key}" if r == 0 else label)
            im = axes[r + 2, c].imshow((ex[method] - reference).abs().numpy(), cmap="inferno", vmin=0, vmax=vmax)
            axes[r + 2, c].set_title(f"|error| {label}", fontsize=7)
        axes[4, c].imshow(ex["mask"].numpy(), cmap="gray")
        axes[4, c].set_title(f"mask {100 * achieved_ratio(ex['mask']):.1f}%", fontsize=7)
    fig.colorbar(im, ax=axes[2:4, :].ravel().tolist(), fraction=0.02)
    fig.suptitle(title, fontsize=9)
    return reporting.save_figure(fig, path)


def _image_with_zoom(ax: plt.Axes, image: torch.Tensor, box: tuple[int, int, int, int], title: str) -> None:
    r, c, hh, ww = box
    ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.add_patch(Rectangle((c, r), ww, hh, fill=False, edgecolor="red", linewidth=0.8))
    inset = ax.inset_axes([0.55, 0.55, 0.45, 0.45])
    inset.imshow(image[r : r + hh, c : c + ww].numpy(), cmap="gray", vmin=0, vmax=1)
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_edgecolor("red")
    ax.set_title(title, fontsize=7)


def plot_sigma(rows: list[dict[str, Any]], paper: dict[str, Any], path: Path, stand_in: bool) -> Path:
    """σ(ω_i) against the sampling ratio per contrast and task group, ours (solid) and the paper's (dashed)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ours = [r for r in rows if r["metric"] == "sigma_omega" and r["method"] == "meta"]
    for contrast, group in dict.fromkeys((r["contrast"], task_group(r)) for r in ours):
        points = sorted(
            (100 * r["ratio"], r["value"]) for r in ours if r["contrast"] == contrast and task_group(r) == group
        )
        line = ax.plot(*zip(*points), marker="o", label=f"ours {contrast} {group}")[0]
        theirs = sorted(
            (100 * r["ratio"], r["value"])
            for r in paper["rows"]
            if r["metric"] == "sigma_omega" and r["contrast"] == contrast and _paper_group(r) == group
        )
        if theirs:
            ax.plot(
                *zip(*theirs), marker="x", linestyle="--", color=line.get_color(), label=f"paper {contrast} {group}"
            )
    ax.set_xlabel("sampling ratio (%)")
    ax.set_ylabel("σ(ω_i)")
    ax.set_title(
        "Learned regulariser weight against sampling ratio" + (" (stand-in data)" if stand_in else ""), fontsize=9
    )
    ax.legend(fontsize=6)
    return reporting.save_figure(fig, path)


# ---------------------------------------------------------------------------------------- results.md
def results_markdown(results: dict[str, Any]) -> str:
    paper = reporting.load_paper("metarecon")
    paper_rows = {(r["table"], r["pattern"], round(r["ratio"], 4), r["method"], r["metric"]): r for r in paper["rows"]}
    rows = results["rows"]
    lines = ["# Meta-learned LOA reconstruction (Bian et al.)", ""]
    data = results["data"]
    lines += [reporting.data_statement("stand-in" if data["stand_in"] else "real", data["description"]), ""]
    setting = results["setting"]
    lines += [
        f"Setting: {setting}. Paper: BraTS 2018 HGG, 160×180, 11 phases with stair training, 100 epochs of "
        "meta-learning, 2000 of conventional learning. Our numbers and the paper's are beside each other only "
        "where the task and contrast match; "
        + (
            "the data and budget differ, so they are not comparable."
            if data["stand_in"]
            else "the setting differs as stated."
        ),
        "",
        f"Paper's numbers in brackets (PSNR only: {paper['missing']})",
        "",
    ]
    groups: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        if r["metric"] == "psnr" and r["method"] == "meta":
            group = task_group(r)
            groups.setdefault((r["contrast"], group), [])
            if r["task"] not in groups[(r["contrast"], group)]:
                groups[(r["contrast"], group)].append(r["task"])
    index = {(r["contrast"], r["task"], r["method"], r["metric"]): r for r in rows}
    for (contrast, group), tasks in groups.items():
        table = TABLES.get((contrast, group))
        what = {
            "seen": "seen tasks (meta-trained)",
            "adapted radial": "unseen radial ratios (ω adapted, θ frozen)",
            "adapted cartesian": "unseen random Cartesian pattern (ω adapted, θ frozen)",
        }.get(group, group)
        heading = f"Table {table[-1]} layout" if table else "no counterpart in the paper"
        lines += [
            f"## {contrast.upper()}, {what} — {heading}",
            "",
            "| CS ratio | Method | PSNR (dB) | SSIM | NMSE | σ(ω_i) |",
            "|---|---|---|---|---|---|",
        ]
        for task in tasks:
            for method in ("zero-filled", "conventional", "meta"):
                cells = []
                first = index[(contrast, task, method, "psnr")]
                for metric in METRICS:
                    r = index[(contrast, task, method, metric)]
                    ref = paper_rows.get((table, first["pattern"], round(first["ratio"], 4), method, metric))
                    digits = 2 if metric == "psnr" else 4
                    text = reporting.cell(r["value"], r["std"], n=r["n"], digits=digits)
                    if ref is not None:
                        text += f" ({ref['value']:.2f} ± {ref['std']:.2f})"
                    cells.append(text)
                sig = index.get((contrast, task, method, "sigma_omega"))
                ref = paper_rows.get((table, first["pattern"], round(first["ratio"], 4), method, "sigma_omega"))
                sig_text = "–" if sig is None else f"{sig['value']:.4f}" + (f" ({ref['value']:.4f})" if ref else "")
                lines.append(f"| {first['ratio'] * 100:g}% | {method} | " + " | ".join(cells) + f" | {sig_text} |")
        lines.append("")
    lines += [
        "## Does a lower sampling ratio learn a larger σ(ω_i)?",
        "",
        'The paper (Section 5.3): "small CS ratio needs higher value of σ(ω_i)".',
        "",
        "| contrast | tasks | ratios | σ(ω_i) | strictly decreasing | Spearman ρ | paper: decreasing |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in results["sigma_claim"]:
        theirs = "–" if c["paper"] is None else ("yes" if c["paper"]["strictly_decreasing"] else "no")
        lines.append(
            f"| {c['contrast']} | {c['group']} | "
            + ", ".join(f"{100 * x:g}%" for x in c["ratios"])
            + " | "
            + ", ".join(f"{s:.3f}" for s in c["sigma_omega"])
            + f" | {'yes' if c['strictly_decreasing'] else 'no'} | {c['spearman_rho']:.2f} | {theirs} |"
        )
    compare = results["hypergradient_comparison"]
    if compare:
        best = max(compare, key=lambda r: r["value"])
        lines += [
            "",
            f"## Hypergradient methods at equal wall-clock ({compare[0]['budget_seconds']:g} s of "
            f"meta-learning each, {compare[0]['contrast']})",
            "",
            "| method | outer steps | seconds | validation PSNR (dB) |",
            "|---|---|---|---|",
        ]
        for r in compare:
            lines.append(f"| {r['method']} | {r['outer_steps']} | {r['seconds']:.1f} | {r['value']:.3f} |")
        lines += ["", f"Best validation PSNR at equal wall-clock: **{best['method']}**."]
    lines += [
        "",
        "## The safeguard of Algorithm 1",
        "",
        "Fraction of phases (and samples) whose u-step was refused and replaced by the backtracking gradient step v:",
        "",
    ]
    for contrast, meta in results["meta"].items():
        lines.append(
            f"- {contrast}: {meta['safeguard']['safeguard_taken_mean']:.3f} during meta-learning "
            f"({meta['hypergrad']}, best validation at step {meta['best_step']} with {meta['phases']} phases)"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser, datasets=("brats2018",), default_dataset="brats2018")
    parser.add_argument(
        "--contrasts",
        nargs="+",
        default=None,
        help=f"contrasts to run (BraTS modalities {list(CONTRASTS)}; the embedded stand-in has t1, "
        "t2); default: the preset's",
    )
    parser.add_argument(
        "--seen-tasks",
        nargs="+",
        default=[t.key for t in SEEN_TASKS],
        help="meta-training tasks: pattern:fraction (radial:0.2), pattern:percent%% (radial:20%%) or "
        "pattern-percent (radial-20); patterns radial, cartesian, poisson",
    )
    parser.add_argument(
        "--unseen-tasks",
        nargs="+",
        default=[t.key for t in (*UNSEEN_RADIAL, *UNSEEN_CARTESIAN)],
        help="tasks adapted with θ frozen (only ω trained)",
    )
    parser.add_argument("--phases", type=common.positive_int, default=None, help="LOA phases (paper: 11)")
    parser.add_argument(
        "--stair",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stair training: add phases one at a time (default: the preset's)",
    )
    parser.add_argument("--inner-steps", type=common.positive_int, default=None, help="K: θ steps per ω step")
    parser.add_argument(
        "--baseline-epoch-ratio",
        type=float,
        default=None,
        help="conventional-learning epochs per meta-learning epoch (paper: 2000 / 100 = 20)",
    )
    parser.add_argument(
        "--adapt-epochs", type=float, default=None, help="epochs of ω adaptation on each unseen task (paper: 50)"
    )
    parser.add_argument(
        "--compare-hypergrad",
        nargs="*",
        default=None,
        help="hypergradient methods to compare at equal wall-clock (none: skip)",
    )
    parser.add_argument("--compare-seconds", type=float, default=None, help="wall-clock per compared method")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device, preset_name, seeds = common.resolve(args)
    if args.precision != "fp32":
        raise SystemExit(
            f"error: --precision {args.precision}: the LOA network's complex FFTs and safeguard tests run in fp32 only"
        )
    if args.download:
        raise SystemExit(
            "error: --download: BraTS 2018 is distributed after registration (CBICA IPP); extract the "
            "training archive and pass its folder with --data-root"
        )
    if seeds and len(seeds) > 1:
        raise SystemExit("error: this recipe runs one seed at a time (its ± are over test slices, as the paper's)")
    seed = (seeds or [0])[0]
    if args.baseline_epoch_ratio is not None and not args.baseline_epoch_ratio > 0:
        raise SystemExit(f"error: --baseline-epoch-ratio must be positive, got {args.baseline_epoch_ratio}")
    if args.adapt_epochs is not None and not args.adapt_epochs > 0:
        raise SystemExit(f"error: --adapt-epochs must be positive, got {args.adapt_epochs}")
    if args.compare_seconds is not None and not args.compare_seconds > 0:
        raise SystemExit(f"error: --compare-seconds must be positive, got {args.compare_seconds}")
    preset = common.override(
        PRESETS[preset_name],
        phases=args.phases,
        stair=args.stair,
        baseline_epoch_ratio=args.baseline_epoch_ratio,
        adapt_epochs=args.adapt_epochs,
        inner_steps=args.inner_steps,
        compare_seconds=args.compare_seconds,
        contrasts=tuple(args.contrasts) if args.contrasts else None,
        compare_methods=tuple(args.compare_hypergrad) if args.compare_hypergrad is not None else None,
    )
    seen = parse_tasks(args.seen_tasks, "--seen-tasks")
    unseen = parse_tasks(args.unseen_tasks, "--unseen-tasks")
    hypergrad = common.parse_hypergrad(args.hypergrad, ("theta",)).get("theta", DEFAULT_HYPERGRAD)
    for method in preset.compare_methods:
        common.parse_hypergrad(method, ("theta",))
    source = "embedded" if args.data_root is None else "brats2018"
    out = common.prepare_out(args.out or Path("runs") / f"metarecon-{source}-{preset_name}", args.resume)
    spec = SliceSpec(crop=preset.crop, size=preset.size)
    limit = dict(zip(("train", "val", "test"), preset.limit)) if preset.limit else None
    datasets: dict[str, MRISlices] = {}
    try:
        for contrast in preset.contrasts:
            slices = load_slices(
                args.data_root, contrast=contrast, spec=spec, counts=PAPER_COUNTS, seed=seed, limit=limit
            )
            datasets[slices.contrast] = slices
            if slices.source == "nifti":
                print("[metarecon] a plain NIfTI folder has one contrast: --contrasts does not apply")
                break
    except MRIDataError as err:
        raise SystemExit(f"error: {err}") from None
    first = next(iter(datasets.values()))
    for task in (*seen, *unseen):  # every mask must reach its ratio before anything trains
        masks_for((task,), first.shape, seed)
    b = budget(preset, first, args.steps)
    if b.stage_steps is not None and b.meta_steps < b.stage_steps * preset.phases:
        print(
            f"[metarecon] note: {b.meta_steps} meta-learning steps reach stair stage "
            f"{StairSchedule(preset.phases, b.stage_steps)(b.meta_steps)} of {preset.phases}; give more --steps "
            "for the network to grow to all its phases"
        )
    print(f"[metarecon] data: {first.description}")
    print(f"[metarecon] preset '{preset_name}' on {device}: {common.preset_table(preset)}")
    print(f"[metarecon] budget: {asdict(b)}")

    per_slice, figures, meta_runs, safeguard = [], {}, {}, {}
    for contrast, slices in datasets.items():
        result = run_contrast(contrast, slices, seen, unseen, preset, b, hypergrad, args, device, seed, out)
        per_slice += result["rows"]
        figures[contrast] = result
        meta_runs[contrast] = result["meta"]
        safeguard[contrast] = result["safeguard_at_test"]
    rows = summary_rows(per_slice)
    compare = []
    if preset.compare_methods:
        contrast, slices = next(iter(datasets.items()))
        compare = [
            {**r, "contrast": contrast}
            for r in compare_hypergradients(
                slices,
                masks_for(seen, slices.shape, seed),
                preset,
                b,
                preset.compare_methods,
                preset.compare_seconds,
                device,
                seed,
            )
        ]
    setting = (
        f"{first.shape[0]}×{first.shape[1]} slices, {preset.phases} phases"
        f"{' with stair training' if preset.stair else ''}, {b.meta_steps} meta-learning steps (K = "
        f"{preset.inner_steps}, {preset.batch_per_task} slice(s) per task per batch), {b.baseline_steps} "
        f"conventional steps per task, {b.adapt_steps} adaptation steps, hypergradient {hypergrad}, "
        f"{', '.join(f'{k} {v}' for k, v in first.counts().items())} slices"
    )
    results = {
        "recipe": "metarecon",
        "preset": preset_name,
        "device": str(device),
        "seed": seed,
        "data": {
            "name": first.name,
            "source": first.source,
            "stand_in": first.stand_in,
            "description": first.description,
            "contrasts": list(datasets),
            "root": str(args.data_root) if args.data_root else None,
            "counts": first.counts(),
        },
        "setting": setting,
        "settings": asdict(preset),
        "budget": asdict(b),
        "hypergrad": hypergrad,
        "tasks": {"seen": [t.key for t in seen], "unseen": [t.key for t in unseen]},
        "rows": [{**r, "paper_table": table_of(r)} for r in rows],
        "meta": meta_runs,
        "sigma_claim": sigma_claim(rows, reporting.load_paper("metarecon")),
        "hypergradient_comparison": compare,
        "safeguard_at_test": safeguard,
    }
    write_per_slice_csv(out / "per_slice.csv", per_slice)
    reporting.write_results(out, results, results_markdown(results))
    figure_dir = out / "figures"
    tag = " (stand-in data)" if first.stand_in else ""
    figure_groups = {"seen": [t.key for t in seen]}  # one figure per task group: seen, then unseen by pattern
    for task in unseen:
        figure_groups.setdefault(task.pattern, []).append(task.key)
    for contrast, result in figures.items():
        for name, keys in figure_groups.items():
            plot_reconstructions(
                keys,
                result,
                figure_dir / f"reconstructions_{contrast}_{name}.png",
                f"{contrast.upper()} {name} tasks: reconstructions, zoom, |error|, masks{tag}",
            )
    plot_sigma(rows, reporting.load_paper("metarecon"), figure_dir / "sigma_vs_ratio.png", first.stand_in)
    build_meta(first, masks_for(seen, first.shape, seed), preset, StairSchedule(preset.phases), hypergrad, seed).draw(
        figure_dir / "graph.png"
    )
    print((out / "results.md").read_text())
    print(f"[metarecon] wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'per_slice.csv'} and {figure_dir}/")
    return results


if __name__ == "__main__":
    main()
