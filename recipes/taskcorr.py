"""Task-correlation meta-learning for multi-coil MRI reconstruction (Bian et al., Preprints.org 2025), with its baselines.

    python recipes/taskcorr.py [--data-root DIR] [--preset smoke|small|paper] [--methods ...] [--out DIR]
                               [--train-tasks t1:radial:0.2 ...] [--val-tasks t1:radial:0.25 ...]
                               [--gradient autograd|adjoint|adjoint_checkpointed] [--hypergrad theta=darts]

Training data come in N groups (tasks: a contrast sampled by a pattern at a ratio), validation data
in M groups; test data are the validation tasks on held-out slices. Every slice becomes multi-coil
k-space through simulated coil maps (the network never sees them). Methods, all with the same
optimal-control network (problems/taskcorr/optimal_control.py) and the same number of θ-steps:

* ``uniform`` — W fixed uniform: one θ on (1/N) Σ_i ℓ(θ; B_i) (no correlation learning);
* ``learned-shared`` — the paper's base model, M = 1: one θ and one softmax weight vector over the
  training groups, learned on all validation groups pooled;
* ``learned`` — the generalised model: W ∈ R^{N×M}, one θ_j per validation group j;
* ``metarecon`` — the metarecon recipe's model (LOA network, task-invariant θ and per-task ω_i,
  problems/metarecon/levels.py) meta-trained on the same training tasks, then adapted to each test task
  by its own protocol (θ frozen, a new ω trained on that task's validation slices). It is a
  single-coil model: it sees the single-channel k-space of the same slices under the same masks.

Writes to --out: results.json, results.md, per_slice.csv, figures/correlation*.png (σ(W) as
training × validation groups), figures/reconstructions.png (test slices with error maps),
figures/graph.png and runs/<method>__seed<s>/ (config.json, metrics.jsonl, checkpoints).
--steps sets the number of W-steps (outer steps; each follows k = --inner-steps θ-steps). --resume
skips finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import reporting

from engines import Graph, Runner
from engines.checkpoint import save_atomic
from problems import metarecon
from problems.metarecon.loa import LOASettings
from problems.mri import (
    MRIDataError,
    MRISlices,
    SliceSpec,
    load_slices,
    per_slice_rows,
    reconstruction_metrics,
    simulate_coil_maps,
    write_per_slice_csv,
)
from problems.taskcorr import (
    LossWeights,
    ReconGroup,
    ReconTask,
    TaskCorrSettings,
    pool_groups,
    reconstruct,
    task_groups,
    taskcorr_graph,
    uniform_graph,
)
from problems.taskcorr.optimal_control import GRADIENT_PATHS, ControlNetConfig

METHODS = ("uniform", "learned-shared", "learned", "metarecon")
DATASETS = ("auto", "mni152", "brats2018", "nifti")
"""auto: the embedded MNI152 stand-in without --data-root, else the layout found there (BraTS 2018 or a
folder of NIfTI volumes); a named dataset must be the one found."""
DEFAULT_TRAIN_TASKS = ("t1:radial:0.2", "t1:cartesian:0.3", "t2:radial:0.2", "t2:cartesian:0.3")
DEFAULT_VAL_TASKS = ("t1:radial:0.25", "t2:radial:0.25")
DEFAULT_HYPERGRAD = "darts"
"""The method through `theta`. The lower level is a non-convex unrolled network trained for only k
steps between W-steps, so implicit methods (cg, neumann), which assume a solved strongly convex
lower problem, do not apply; `exact` costs ≈3k lower steps with double backward through all
phases. darts is the one-step, H⁻¹ ≈ I approximation of the data-reweighting literature
(Meta-Weight-Net, Betty's reweighting examples): first-order in the network, so the adjoint
path's memory saving holds for the whole outer step, and its sign — σ(w_j)_i grows when group
i's gradient agrees with validation group j's — is what "correlation" means here."""


@dataclass(frozen=True)
class Preset:
    """Sizes and budgets. ``outer_steps`` W-steps of ``inner_steps`` θ-steps each (Algorithm 1);
    the baselines get the same number of θ-steps. Slice counts are per group."""

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
    train_slices: int | None
    val_slices: int | None
    test_slices: int | None
    loa_phases: int
    loa_channels: int
    adapt_steps: int
    threads: int | None = None  # CPU threads (None: torch's default)


PRESETS = {
    "smoke": Preset(
        crop=(180, 180),
        size=(64, 64),
        coils=2,
        phases=2,
        width=8,
        features=8,
        kernel=3,
        outer_steps=8,
        inner_steps=2,
        theta_lr=3e-3,
        correlation_lr=0.05,
        train_batch=1,
        val_batch=2,
        train_slices=12,
        val_slices=6,
        test_slices=4,
        loa_phases=2,
        loa_channels=4,
        adapt_steps=5,
        threads=1,
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
        train_slices=None,
        val_slices=None,
        test_slices=None,
        loa_phases=7,
        loa_channels=4,
        adapt_steps=100,
    ),
    # Bian's pMRI-CNet sizes (width 64, features 32, 9x9, three phase updates after the k-space block,
    # 15 coils), Adam 1e-4; the paper's slice geometry (160 x 180)
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
        train_slices=None,
        val_slices=None,
        test_slices=None,
        loa_phases=11,
        loa_channels=4,
        adapt_steps=500,
    ),
}


# ------------------------------------------------------------------------------------------- data
@dataclass
class TaskData:
    """Every group of the experiment: training B_i, validation V_j, test (the V_j tasks, test slices)."""

    train_tasks: list[ReconTask]
    val_tasks: list[ReconTask]
    slices: dict[str, MRISlices]
    train: list[ReconGroup]
    val: list[ReconGroup]
    test: list[ReconGroup]
    stand_in: bool
    description: str

    @property
    def source(self) -> str:
        """``mni152`` (the embedded stand-in), ``brats2018`` or ``nifti``: what was found."""
        found = next(iter(self.slices.values())).source
        return "mni152" if found == "embedded" else found


def load_task_data(
    train_tasks: list[ReconTask], val_tasks: list[ReconTask], root: Path | None, preset: Preset, seed: int
) -> TaskData:
    contrasts = sorted({t.contrast for t in [*train_tasks, *val_tasks]})
    spec = SliceSpec(crop=preset.crop, size=preset.size)
    slices = {c: load_slices(root, contrast=c, spec=spec, seed=seed) for c in contrasts}
    if any(s.source == "nifti" for s in slices.values()) and len(contrasts) > 1:
        raise MRIDataError(
            f"{root} is a plain folder of NIfTI volumes (one contrast), but the tasks name the "
            f"contrasts {contrasts}; name one contrast in --train-tasks and --val-tasks "
            "(e.g. nifti:radial:0.2)"
        )
    shape = next(iter(slices.values())).shape
    maps = simulate_coil_maps(shape, preset.coils, seed=seed)
    data = TaskData(
        train_tasks,
        val_tasks,
        slices,
        train=task_groups(train_tasks, slices, "train", maps, limit=preset.train_slices),
        val=task_groups(val_tasks, slices, "val", maps, limit=preset.val_slices),
        test=task_groups(val_tasks, slices, "test", maps, limit=preset.test_slices),
        stand_in=any(s.stand_in for s in slices.values()),
        description=" ".join(dict.fromkeys(s.description for s in slices.values()))
        + f" Multi-coil k-space simulated with {preset.coils} smooth coil maps (x_c = S_c x, Σ|S_c|² = 1).",
    )
    return data


# ------------------------------------------------------------------------------------------- training runs
def settings_for(preset: Preset, args: argparse.Namespace, hypergrad: str) -> TaskCorrSettings:
    return TaskCorrSettings(
        inner_steps=preset.inner_steps,
        theta_lr=preset.theta_lr,
        correlation_lr=preset.correlation_lr,
        train_batch=preset.train_batch,
        val_batch=preset.val_batch,
        hypergrad=hypergrad,
        gradient=args.gradient,
        loss=LossWeights(),
    )


def network_config(preset: Preset) -> ControlNetConfig:
    return ControlNetConfig(
        coils=preset.coils, phases=preset.phases, width=preset.width, features=preset.features, kernel=preset.kernel
    )


def build_graph(method: str, data: TaskData, preset: Preset, settings: TaskCorrSettings, seed: int) -> Graph:
    config = network_config(preset)
    if method == "uniform":
        return uniform_graph(config, data.train, settings, seed=seed)
    if method == "learned-shared":
        return taskcorr_graph(config, data.train, [pool_groups("all validation groups", data.val)], settings, seed=seed)
    return taskcorr_graph(
        config, data.train, data.val, settings, n_train=len(data.train_tasks), n_val=len(data.val_tasks), seed=seed
    )


def train_taskcorr(
    method: str,
    data: TaskData,
    preset: Preset,
    args: argparse.Namespace,
    device: torch.device,
    out: Path,
    seed: int,
    hypergrad: str,
) -> dict[str, Any]:
    """Train one optimal-control method and score it on every test group."""
    run_dir = out / "runs" / f"{method}__seed{seed}"
    if (run_dir / "result.json").exists():
        return json.loads((run_dir / "result.json").read_text())
    settings = settings_for(preset, args, hypergrad)
    graph = build_graph(method, data, preset, settings, seed)
    steps = preset.outer_steps * preset.inner_steps
    result = Runner(
        graph,
        steps,
        out=run_dir,
        device=device,
        seed=seed,
        precision=args.precision,
        checkpoint_every=preset.inner_steps * max(1, preset.outer_steps // 5),
        resume=(run_dir / "checkpoint_latest.pt").exists(),
        progress=not args.no_progress,
        config={
            "method": method,
            "preset": asdict(preset),
            "settings": asdict(settings),
            "command": common.command_line(),
        },
    ).run()
    nets = graph["theta"].module.nets
    rows, examples = [], {}
    for j, (task, group) in enumerate(zip(data.val_tasks, data.test)):
        net = nets[j] if len(nets) > 1 else nets[0]  # θ_j for validation group j; the shared θ otherwise
        net.eval()
        recon, reference = reconstruct(net, group, device=device)
        rows += per_slice_rows(reconstruction_metrics(recon, reference), method=method, task=task.label, seed=seed)
        examples[task.key] = recon[len(recon) // 2]
    payload = {
        "method": method,
        "seed": seed,
        "rows": rows,
        "theta_steps": steps,
        "wall_time_s": result.wall_time_s,
        "hypergrad": None if method == "uniform" else hypergrad,
        "gradient": args.gradient,
    }
    if method != "uniform":
        payload["sigma"] = graph["correlation"].module.weights().detach().cpu().tolist()
    save_atomic(examples, run_dir / "examples.pt")
    reporting.write_json(run_dir / "result.json", payload)
    return payload


class ContrastCrossTaskSlices(torch.utils.data.Dataset):
    """metarecon's cross-task items for tasks that may differ in contrast: item ``k`` holds one slice
    of every task, task ``i``'s from its own contrast's images (a seeded permutation of them)."""

    def __init__(self, images: Sequence[torch.Tensor], masks: torch.Tensor, *, seed: int = 0):
        self.images, self.masks = list(images), masks
        self.task_ids = torch.arange(len(masks))
        gen = torch.Generator().manual_seed(seed)
        self.length = min(len(x) for x in self.images)
        self.order = [torch.randperm(len(x), generator=gen)[: self.length] for x in self.images]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        target = torch.stack([x[o[k]] for x, o in zip(self.images, self.order)])
        return {"target": target, "mask": self.masks, "task": self.task_ids}


def _task_images(data: TaskData, task: ReconTask, split: str, limit: int | None) -> torch.Tensor:
    return data.slices[task.contrast].splits[split].subset(limit).images


def train_metarecon(
    data: TaskData, preset: Preset, args: argparse.Namespace, device: torch.device, out: Path, seed: int
) -> dict[str, Any]:
    """The metarecon model on the same training tasks (θ below, ω_i above, by default its penalty method), then
    adapted to each test task: θ frozen, a new ω trained on that task's validation slices (the paper's protocol
    for unseen tasks)."""
    run_dir = out / "runs" / f"metarecon__seed{seed}"
    if (run_dir / "result.json").exists():
        return json.loads((run_dir / "result.json").read_text())
    shape = data.train[0].image_shape
    masks = torch.stack([t.sampling.mask(shape) for t in data.train_tasks])
    train = ContrastCrossTaskSlices(
        [_task_images(data, t, "train", preset.train_slices) for t in data.train_tasks], masks, seed=seed
    )
    val = ContrastCrossTaskSlices(
        [_task_images(data, t, "val", preset.val_slices) for t in data.train_tasks], masks, seed=seed + 1
    )
    settings = LOASettings(phases=preset.loa_phases, channels=preset.loa_channels)
    schedule = metarecon.StairSchedule(preset.loa_phases)
    graph = metarecon.meta_graph(
        train=train,
        val=val,
        settings=settings,
        schedule=schedule,
        batch_per_task=preset.train_batch,
        val_batch_per_task=preset.val_batch,
        unroll=preset.inner_steps,
        hypergrad=args.metarecon_hypergrad,
        theta_lr=preset.theta_lr,
        omega_lr=preset.correlation_lr,
        seed=seed,
    )
    steps = preset.outer_steps * preset.inner_steps
    result = Runner(
        graph,
        steps,
        out=run_dir / "meta",
        device=device,
        seed=seed,
        precision=args.precision,
        checkpoint_every=preset.inner_steps * max(1, preset.outer_steps // 5),
        resume=(run_dir / "meta" / "checkpoint_latest.pt").exists(),
        progress=not args.no_progress,
        config={"method": "metarecon", "preset": asdict(preset), "command": common.command_line()},
    ).run()
    network = graph["theta"].module
    rows, examples, sigmas = [], {}, {}
    for _j, (task, _group) in enumerate(zip(data.val_tasks, data.test)):
        mask = task.sampling.mask(shape)
        adapt_images = _task_images(data, task, "val", preset.val_slices)
        adapt_data = ContrastCrossTaskSlices([adapt_images], mask[None], seed=seed)
        adapt = metarecon.adaptation_graph(
            network=network, train=adapt_data, batch_size=preset.val_batch, lr=preset.correlation_lr, seed=seed
        )
        Runner(
            adapt,
            preset.adapt_steps,
            out=run_dir / f"adapt-{task.key}",
            device=device,
            seed=seed,
            resume=(run_dir / f"adapt-{task.key}" / "checkpoint_latest.pt").exists(),
            progress=False,
        ).run()
        sigma = float(adapt["omega"].module.sigma()[0])
        images = _task_images(data, task, "test", preset.test_slices)
        recon, _ = metarecon.reconstruct(network.eval(), images, mask, sigma)
        rows += per_slice_rows(
            reconstruction_metrics(recon.abs(), images), method="metarecon", task=task.label, seed=seed
        )
        examples[task.key] = recon.abs()[len(recon) // 2]
        sigmas[task.key] = sigma
    payload = {
        "method": "metarecon",
        "seed": seed,
        "rows": rows,
        "theta_steps": steps,
        "wall_time_s": result.wall_time_s,
        "hypergrad": args.metarecon_hypergrad,
        "sigma_omega_test": sigmas,
        "sigma_omega_train": graph["omega"].module.sigma().tolist(),
    }
    save_atomic(examples, run_dir / "examples.pt")
    reporting.write_json(run_dir / "result.json", payload)
    return payload


# ------------------------------------------------------------------------------------------- reporting
def summary_rows(per_slice: list[dict]) -> list[dict]:
    """Mean over the test slices of every (method, task, seed, metric)."""
    rows = []
    keys = dict.fromkeys((r["method"], r["task"], r["seed"]) for r in per_slice)
    for method, task, seed in keys:
        chosen = [r for r in per_slice if (r["method"], r["task"], r["seed"]) == (method, task, seed)]
        for metric in ("psnr", "ssim", "nmse"):
            s = reporting.summarize(r[metric] for r in chosen)
            rows.append(
                {
                    "method": method,
                    "task": task,
                    "seed": seed,
                    "metric": metric,
                    "value": s.mean,
                    "slice_std": s.std,
                    "slices": s.n,
                }
            )
    return rows


def results_markdown(results: dict) -> str:
    paper = reporting.load_paper("taskcorr")
    lines = [
        "# Task-correlation meta-learning (Bian et al., Preprints.org 2025) on multi-coil reconstruction",
        "",
        reporting.data_statement(results["data"]["source"], results["data"]["description"]),
        "",
        f"The paper reports no experiments ({paper['note']}), so there are no published numbers to set "
        "ours beside; the table compares the methods of this run only.",
        "",
        f"Training groups (N = {len(results['train_tasks'])}): {', '.join(results['train_tasks'])}. "
        f"Validation groups (M = {len(results['val_tasks'])}): {', '.join(results['val_tasks'])}; the test "
        f"groups are the validation tasks on held-out slices. Hypergradient through `theta`: "
        f"{results['hypergrad']}; network gradient path: {results['gradient']}.",
        "",
    ]
    aggregated = reporting.aggregate(
        [{k: v for k, v in r.items() if k not in ("slice_std", "slices")} for r in results["rows"]]
    )
    index = {(r["method"], r["task"], r["metric"]): r for r in aggregated}
    header = ["Method", "Test task", "PSNR (dB)", "SSIM", "NMSE"]
    body = []
    for method in results["methods"]:
        for task in results["val_tasks"]:
            cells = [
                reporting.cell(
                    index[(method, task, m)]["value"],
                    index[(method, task, m)]["std"],
                    n=index[(method, task, m)]["n"],
                    digits=d,
                )
                for m, d in (("psnr", 2), ("ssim", 4), ("nmse", 4))
            ]
            body.append([method, task, *cells])
    lines += [
        "## PSNR / SSIM / NMSE on the test slices (mean over slices; ± std over seeds when several)",
        "",
        *reporting.markdown_table(header, body),
        "",
    ]
    for method, sigma in results["sigma"].items():
        cols = results["val_tasks"] if method == "learned" else ["all validation groups"]
        body = [[t, *(f"{v:.3f}" for v in row)] for t, row in zip(results["train_tasks"], sigma)]
        lines += [
            f"## Learned σ(W), `{method}` (rows: training groups, columns: validation groups; columns sum to 1)",
            "",
            *reporting.markdown_table(["training group", *cols], body),
            "",
        ]
    for _name, run in results["runs"].items():
        if run["method"] == "metarecon" and run["seed"] == results["seeds"][0]:
            train = ", ".join(f"{t} {v:.3f}" for t, v in zip(results["train_tasks"], run["sigma_omega_train"]))
            adapted = ", ".join(f"{t} {v:.3f}" for t, v in zip(results["val_tasks"], run["sigma_omega_test"].values()))
            lines += [
                "## metarecon: learned regulariser weights σ(ω)",
                "",
                f"Meta-trained on the training tasks ({run['hypergrad']}): {train}. Adapted to each test task "
                f"(θ frozen, ω trained on its validation slices): {adapted}.",
                "",
            ]
    return "\n".join(lines)


def plot_reconstructions(data: TaskData, examples: dict[str, dict[str, torch.Tensor]], path: Path) -> Path:
    """Rows: test tasks; columns: the reference, then every method's reconstruction and its error map."""
    methods = list(examples)
    fig, axes = plt.subplots(
        len(data.val_tasks),
        1 + 2 * len(methods),
        figsize=(1.6 * (1 + 2 * len(methods)), 1.7 * len(data.val_tasks)),
        squeeze=False,
    )
    for i, (task, group) in enumerate(zip(data.val_tasks, data.test)):
        reference = group.target[len(group) // 2].float().numpy()
        axes[i, 0].imshow(reference, cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(f"{task.label}\nreference", fontsize=7)
        for k, method in enumerate(methods):
            recon = examples[method][task.key].float().numpy()
            error = abs(recon - reference)
            psnr = float(reconstruction_metrics(torch.from_numpy(recon), torch.from_numpy(reference))["psnr"][0])
            axes[i, 1 + 2 * k].imshow(recon, cmap="gray", vmin=0, vmax=1)
            axes[i, 1 + 2 * k].set_title(f"{method}\n{psnr:.2f} dB", fontsize=7)
            axes[i, 2 + 2 * k].imshow(error, cmap="inferno", vmin=0, vmax=0.25)
            axes[i, 2 + 2 * k].set_title("|error| (0-0.25)", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return reporting.save_figure(fig, path)


# ------------------------------------------------------------------------------------------- command line
def parse_tasks(texts: Sequence[str], option: str) -> list[ReconTask]:
    try:
        tasks = [ReconTask.parse(t) for t in texts]
    except ValueError as err:
        raise SystemExit(f"error: {option}: {err}") from None
    if len({t.key for t in tasks}) != len(tasks):
        raise SystemExit(f"error: {option} names a task twice: {list(texts)}")
    return tasks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser, datasets=DATASETS, default_dataset="auto")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods to train and compare (default: all)",
    )
    parser.add_argument(
        "--train-tasks",
        nargs="+",
        default=list(DEFAULT_TRAIN_TASKS),
        help="training groups B_1..B_N as contrast:pattern:ratio (a fraction, or a percentage with %%)",
    )
    parser.add_argument(
        "--val-tasks",
        nargs="+",
        default=list(DEFAULT_VAL_TASKS),
        help="validation groups V_1..V_M (also the test tasks, on held-out slices)",
    )
    parser.add_argument(
        "--gradient",
        choices=GRADIENT_PATHS,
        default="adjoint",
        help="how the network's gradient is computed (adjoint: the Lagrange-multiplier recursion)",
    )
    parser.add_argument("--coils", type=common.positive_int, default=None, help="simulated coils")
    parser.add_argument("--phases", type=common.positive_int, default=None, help="T, phases of the network")
    parser.add_argument("--inner-steps", type=common.positive_int, default=None, help="k, θ-steps per W-step")
    parser.add_argument(
        "--threads",
        type=common.positive_int,
        default=None,
        help="CPU threads for torch (default: the preset's; smoke: 1)",
    )
    parser.add_argument(
        "--metarecon-hypergrad",
        default="penalty",
        help="hypergradient method of the metarecon baseline (default: penalty, its Algorithm 2)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, preset_name, seeds = common.resolve(args)
    threads = args.threads or PRESETS[preset_name].threads
    if threads is None or device.type != "cpu":
        return run(args, device, preset_name, seeds or [0])
    # The smoke sizes are too small for intra-op parallelism to pay: on the shared 2-core machine of
    # this work, 2 threads took 4.6x the wall-clock and 7x the CPU time of 1 (spinning threads).
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run(args, device, preset_name, seeds or [0])
    finally:
        torch.set_num_threads(before)


def run(args: argparse.Namespace, device: torch.device, preset_name: str, seeds: list[int]) -> dict:
    """The whole recipe for parsed arguments (see :func:`main`)."""
    if args.download:
        raise SystemExit("error: --download: BraTS 2018 needs a registration; extract it yourself and pass --data-root")
    if args.dataset in ("brats2018", "nifti") and args.data_root is None:
        raise SystemExit(
            f"error: --dataset {args.dataset} needs --data-root (BraTS 2018: the folder holding "
            "MICCAI_BraTS_2018_Data_Training/; nifti: a folder of *.nii.gz volumes)"
        )
    if args.dataset == "mni152" and args.data_root is not None:
        raise SystemExit(
            "error: --dataset mni152 is the embedded stand-in and reads no --data-root; "
            "pass --dataset auto, brats2018 or nifti"
        )
    train_tasks = parse_tasks(args.train_tasks, "--train-tasks")
    val_tasks = parse_tasks(args.val_tasks, "--val-tasks")
    if len(train_tasks) < 2:
        raise SystemExit(f"error: --train-tasks: correlations need N >= 2 training groups, got {len(train_tasks)}")
    hypergrad = common.parse_hypergrad(args.hypergrad, ("theta",)).get("theta", DEFAULT_HYPERGRAD)
    common.parse_hypergrad(args.metarecon_hypergrad, ("theta",))  # refuses an unknown method before any work
    preset = common.override(
        PRESETS[preset_name], coils=args.coils, phases=args.phases, inner_steps=args.inner_steps, outer_steps=args.steps
    )
    try:
        data = load_task_data(train_tasks, val_tasks, args.data_root, preset, seeds[0])
    except (MRIDataError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if args.dataset not in ("auto", data.source):
        raise SystemExit(f"error: --dataset {args.dataset}, but {args.data_root} holds the {data.source} layout")
    out = common.prepare_out(args.out or Path("runs") / f"taskcorr-{data.source}-{preset_name}", args.resume)
    print(f"[taskcorr] data: {data.description}")
    print(f"[taskcorr] preset '{preset_name}' on {device}: {common.preset_table(preset)}")
    print(f"[taskcorr] hypergradient through theta: {hypergrad}; network gradient path: {args.gradient}")

    trained = []
    for seed in seeds:
        for method in args.methods:
            print(f"[taskcorr] training {method} (seed {seed})")
            if method == "metarecon":
                trained.append(train_metarecon(data, preset, args, device, out, seed))
            else:
                trained.append(train_taskcorr(method, data, preset, args, device, out, seed, hypergrad))
    per_slice = [r for t in trained for r in t["rows"]]
    write_per_slice_csv(out / "per_slice.csv", per_slice)
    sigma = {t["method"]: t["sigma"] for t in trained if "sigma" in t and t["seed"] == seeds[0]}
    results = {
        "recipe": "taskcorr",
        "preset": preset_name,
        "device": str(device),
        "seeds": seeds,
        "data": {
            "name": data.source,
            "source": "embedded" if data.stand_in else "real",
            "stand_in": data.stand_in,
            "description": data.description,
            "root": str(args.data_root) if args.data_root else None,
        },
        "settings": asdict(preset),
        "methods": args.methods,
        "hypergrad": hypergrad,
        "gradient": args.gradient,
        "train_tasks": [t.label for t in train_tasks],
        "val_tasks": [t.label for t in val_tasks],
        "rows": summary_rows(per_slice),
        "sigma": sigma,
        "runs": {f"{t['method']}__seed{t['seed']}": {k: v for k, v in t.items() if k != "rows"} for t in trained},
    }
    reporting.write_results(out, results, results_markdown(results))
    figures = out / "figures"
    for method, matrix in sigma.items():
        cols = [t.label for t in val_tasks] if method == "learned" else ["all validation groups"]
        reporting.heatmap(
            matrix,
            [t.label for t in train_tasks],
            cols,
            figures / ("correlation.png" if method == "learned" else f"correlation_{method}.png"),
            title=f"σ(W), {method}: correlation of training and validation groups",
            xlabel="validation group j",
            ylabel="training group i",
            fmt="{:.3f}",
        )
    examples = {
        m: torch.load(out / "runs" / f"{m}__seed{seeds[0]}" / "examples.pt", weights_only=True) for m in args.methods
    }
    plot_reconstructions(data, examples, figures / "reconstructions.png")
    if "learned" in args.methods:
        graph = build_graph("learned", data, preset, settings_for(preset, args, hypergrad), seeds[0])
        graph.draw(figures / "graph.png")
    print((out / "results.md").read_text())
    print(f"[taskcorr] wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'per_slice.csv'} and {figures}/")
    return results


if __name__ == "__main__":
    main()
