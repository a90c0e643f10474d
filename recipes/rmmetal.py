"""RM-MetaL with MAML, ANIL and ITD-BiO in one engine: accuracy, memory against K, wall-clock.

    python recipes/rmmetal.py [--dataset digits|cifar-fs|fc100|miniimagenet|tieredimagenet] [--data-root DIR]
                              [--preset smoke|small|paper] [--methods ...] [--no-warm-start] [--select-best]
                              [--out DIR]

The algorithms are the same two-level graph (problems/rmmetal/levels.py) with a different
configuration: what the lower level adapts, where its inner loops start, the hypergradient
method through it (cg_warm for RM-MetaL, exact for the others) and whether the backbone runs
again in every differentiated inner step (ITD-BiO and ANIL as their reference code runs them;
the "-shared" variants compute the support features once). Each algorithm is meta-trained
with periodic meta-validation, then meta-tested with one protocol for all: the final model
(--select-best: the best-validation checkpoint), backbone frozen, a zero-initialised linear
head fitted with 20 GD steps of size 0.05 on each test task's support set, accuracy on 5 query
images per class ± 95 % interval. The untrained backbone every algorithm starts from is
meta-tested the same way as a reference row. The recipe also measures the peak memory of one
outer step at K in {1, 5, 10, 20} (Fig. 2), the training time to reach 0.9 x the best
validation accuracy among the algorithms (Table 2), and RM-MetaL's hypergradient against the
exact implicit one on a tiny head.

Writes to --out: results.json, results.md, figures/memory_vs_k.png, figures/graph.png and runs/<algorithm>/.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import reporting

from engines import Graph, MemoryReport, Runner, track_peak_memory
from engines.checkpoint import load_checkpoint
from problems.fewshot import (
    DATASET_NAMES,
    Episodes,
    EpisodeStream,
    FewShotDataError,
    FewShotDataset,
    load_fewshot,
    sample_episodes,
)
from problems.rmmetal import (
    ALGORITHMS,
    EpisodeSource,
    MetaModel,
    dense_implicit_hypergradient,
    meta_learning_graph,
    meta_test,
)

METHODS = ("rm-metal", "itd-bio", "anil", "maml")
SHARED_VARIANT = {"itd-bio": "itd-bio-shared", "anil": "anil-shared"}  # features computed once per hypergradient
OPTIONAL_METHODS = ("rm-metal-no-warm-start", *SHARED_VARIANT.values())
UNTRAINED = "untrained"  # the reference row: the common starting backbone, meta-tested without training
MEMORY_KS = (1, 5, 10, 20)


@dataclass(frozen=True)
class Settings:
    """One algorithm's hyperparameters (RM-MetaL code's table, §5 of the paper)."""

    inner_steps: int
    inner_lr: float
    outer_lr: float


# (CIFAR-FS/FC100, mini/tieredImageNet): K, λ_φ, Adam learning rate of the upper level
TABLE = {
    "rm-metal": (Settings(20, 0.1, 1e-4), Settings(20, 0.05, 1e-3)),
    "itd-bio": (Settings(20, 0.1, 1e-4), Settings(20, 0.05, 1e-4)),
    "anil": (Settings(10, 0.1, 1e-4), Settings(5, 0.1, 1e-3)),
    "maml": (Settings(3, 0.5, 1e-3), Settings(3, 0.5, 5e-3)),
}
TABLE["rm-metal-no-warm-start"] = TABLE["rm-metal"]
TABLE.update({shared: TABLE[method] for method, shared in SHARED_VARIANT.items()})


@dataclass(frozen=True)
class Preset:
    n_tasks: int  # |B|
    n_way: int
    k_shot: int
    k_query: int  # query images per class, in training and in meta-validation/test
    steps: int  # outer iterations
    valid_every: int
    valid_tasks: int
    test_tasks: int
    fine_tune_steps: int  # meta-test: GD steps fitting the head (Table 1: 20)
    cg_iterations: int  # N
    mu: float  # R(φ) = μ/2 ||φ||²
    width: int | None  # Conv-4 filters (None: 64 for 32x32 data, 32 for 84x84)
    inner_steps: int | None  # None: the table above
    outer_lr_scale: float = 1.0
    memory_tasks: int = 4
    memory_width: int = 16
    fine_tune_lr: float = 0.05  # meta-test GD step size (the reference code's test_lr, for every method)


PRESETS = {
    "smoke": Preset(
        n_tasks=4,
        n_way=5,
        k_shot=5,
        k_query=5,
        steps=40,
        valid_every=10,
        valid_tasks=50,
        test_tasks=100,
        fine_tune_steps=20,
        cg_iterations=5,
        mu=0.01,
        width=16,
        inner_steps=5,
        outer_lr_scale=10.0,
        memory_tasks=2,
        memory_width=8,
    ),
    "small": Preset(
        n_tasks=8,
        n_way=5,
        k_shot=5,
        k_query=5,
        steps=500,
        valid_every=50,
        valid_tasks=200,
        test_tasks=600,
        fine_tune_steps=20,
        cg_iterations=20,
        mu=0.01,
        width=None,
        inner_steps=None,
        outer_lr_scale=3.0,
        memory_tasks=8,
        memory_width=32,
    ),
    "paper": Preset(
        n_tasks=32,
        n_way=5,
        k_shot=5,
        k_query=5,
        steps=2000,
        valid_every=100,
        valid_tasks=320,
        test_tasks=640,
        fine_tune_steps=20,
        cg_iterations=20,
        mu=0.01,
        width=None,
        inner_steps=None,
        memory_tasks=32,
        memory_width=64,
    ),
}


def settings_for(method: str, dataset: str, preset: Preset) -> Settings:
    small_images = dataset in ("cifar-fs", "fc100", "digits")
    s = TABLE[method][0 if small_images else 1]
    steps = preset.inner_steps if preset.inner_steps is not None else s.inner_steps
    if method == "maml":
        steps = min(steps, s.inner_steps)
    return Settings(steps, s.inner_lr, s.outer_lr * preset.outer_lr_scale)


def build(
    method: str,
    split,
    preset: Preset,
    settings: Settings,
    width: int,
    image_size: int,
    channels: int,
    seed: int,
    n_tasks: int | None = None,
    hypergrad: str | None = None,
) -> Graph:
    """The graph of ``method``; ``hypergrad`` replaces its method through the ``heads`` level."""
    stream = EpisodeStream(split, preset.n_way, preset.k_shot, preset.k_query, n_tasks or preset.n_tasks, seed=seed)
    algorithm = replace(ALGORITHMS[method], hypergrad=hypergrad) if hypergrad else method
    return meta_learning_graph(
        algorithm,
        data=EpisodeSource(stream),
        in_channels=channels,
        image_size=image_size,
        width=width,
        n_way=preset.n_way,
        n_tasks=n_tasks or preset.n_tasks,
        inner_steps=settings.inner_steps,
        inner_lr=settings.inner_lr,
        outer_optimizer=functools.partial(torch.optim.Adam, lr=settings.outer_lr),
        mu=preset.mu,
        cg_iterations=preset.cg_iterations,
        seed=seed,
    )


@dataclass(frozen=True)
class MetaTestProtocol:
    """How every algorithm (and the untrained backbone) is meta-tested and meta-validated.

    A zero-initialised linear head is fitted to each task's support set with ``steps`` plain GD
    steps of size ``lr`` on the frozen backbone's features and scored on ``query_per_class``
    query images per class; ``checkpoint`` is the model that is tested: "final" (the last outer
    step) or "best-validation".
    """

    steps: int
    lr: float
    query_per_class: int
    test_tasks: int
    checkpoint: str

    def describe(self) -> str:
        model = "the final model" if self.checkpoint == "final" else "the best-validation checkpoint"
        return (
            f"every algorithm and the untrained backbone alike: {model}, backbone frozen, a linear head "
            f"started at zero and fitted with {self.steps} plain gradient-descent steps of size {self.lr} "
            f"on each task's support set, accuracy on {self.query_per_class} query images per class, mean "
            f"± 95 % interval over {self.test_tasks} test tasks"
        )


def protocol_for(preset: Preset, select_best: bool) -> MetaTestProtocol:
    return MetaTestProtocol(
        steps=preset.fine_tune_steps,
        lr=preset.fine_tune_lr,
        query_per_class=preset.k_query,
        test_tasks=preset.test_tasks,
        checkpoint="best-validation" if select_best else "final",
    )


def evaluate(meta: MetaModel, episodes: Episodes, protocol: MetaTestProtocol) -> torch.Tensor:
    """Accuracy [T] of ``meta``'s backbone on ``episodes`` under ``protocol``."""
    return meta_test(meta, episodes, steps=protocol.steps, lr=protocol.lr)


class MetaValidation:
    """Meta-validation accuracy on fixed tasks (the meta-test protocol on validation classes), and
    the training time it took to get there (wall-clock of training only: validating is subtracted)."""

    def __init__(self, episodes: Episodes, protocol: MetaTestProtocol):
        self.episodes, self.protocol = episodes, protocol
        self.history: list[dict[str, float]] = []
        self._validating = 0.0
        self._start = time.perf_counter()

    def __call__(self, graph: Graph) -> dict[str, float]:
        t0 = time.perf_counter()
        acc = evaluate(graph["backbone"].module, self.episodes, self.protocol)
        train_time = t0 - self._start - self._validating
        self._validating += time.perf_counter() - t0
        self.history.append(
            {
                "step": graph.engine.global_step // graph["heads"].unroll,
                "accuracy": float(acc.mean()),
                "train_seconds": train_time,
            }
        )
        return {"val_accuracy": float(acc.mean())}


def confidence95(acc: torch.Tensor) -> float:
    return float(1.96 * acc.std() / len(acc) ** 0.5) if len(acc) > 1 else 0.0


def train(
    method: str,
    data: FewShotDataset,
    preset: Preset,
    args: argparse.Namespace,
    device: torch.device,
    out: Path,
    seed: int,
    width: int,
    episodes: dict[str, Episodes],
    protocol: MetaTestProtocol,
    hypergrad: str | None,
) -> dict[str, Any]:
    """Meta-train ``method`` with periodic meta-validation, then meta-test it under ``protocol``."""
    run_dir = out / "runs" / method
    result_file = run_dir / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    s = settings_for(method, data.name, preset)
    graph = build(
        method, data.splits["train"], preset, s, width, data.image_size, data.channels, seed, hypergrad=hypergrad
    )
    validation = MetaValidation(episodes["val"].to(device), protocol)
    K = s.inner_steps
    result = Runner(
        graph,
        preset.steps * K,
        out=run_dir,
        device=device,
        seed=seed,
        precision=args.precision,
        validate=validation,
        valid_every=preset.valid_every * K,
        monitor="val_accuracy",
        mode="max",
        checkpoint_every=preset.valid_every * K,
        resume=(run_dir / "checkpoint_latest.pt").exists(),
        progress=not args.no_progress,
        config={
            "method": method,
            "settings": asdict(s),
            "preset": asdict(preset),
            "protocol": asdict(protocol),
            "hypergrad": graph["heads"].hypergrad,
            "command": common.command_line(),
        },
    ).run()
    if protocol.checkpoint == "best-validation":
        best = load_checkpoint(run_dir / "checkpoint_best.pt", map_location=device)
        graph["backbone"].module.load_state_dict(best["levels"]["backbone"]["module"])
    acc = evaluate(graph["backbone"].module, episodes["test"].to(device), protocol)
    payload = {
        "method": method,
        "settings": asdict(s),
        "protocol": asdict(protocol),
        "tested_step": result.best["step"] // K if protocol.checkpoint == "best-validation" else preset.steps,
        "best_step": result.best["step"] // K,
        "best_val_accuracy": result.best["metrics"]["val_accuracy"],
        "test_accuracy": float(acc.mean()),
        "ci95": confidence95(acc),
        "test_tasks": len(acc),
        "validation": validation.history,
        "cg_residual": last_solve_report(run_dir).get("residual"),
    }
    reporting.write_json(result_file, payload)
    return payload


def last_solve_report(run_dir: Path) -> dict[str, Any]:
    """The diagnostics of the last implicit solve logged in ``run_dir/metrics.jsonl`` (residual, products...),
    or ``{}`` for methods that solve nothing (first-order, unrolled)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for line in reversed(lines):
        entry = json.loads(line) if line.strip() else {}
        for hops in entry.get("hypergradient", {}).values():
            for hop in hops.values():
                if isinstance(hop, dict) and "residual" in hop:
                    return hop
    return {}


def untrained(
    data: FewShotDataset,
    preset: Preset,
    device: torch.device,
    seed: int,
    width: int,
    episodes: dict[str, Episodes],
    protocol: MetaTestProtocol,
) -> dict[str, Any]:
    """The reference row: the backbone every algorithm starts from (same seed), meta-tested untrained."""
    s = settings_for("rm-metal", data.name, preset)
    graph = build("rm-metal", data.splits["train"], preset, s, width, data.image_size, data.channels, seed)
    meta = graph["backbone"].module.to(device)
    meta.eval()  # as the Runner validates; Conv-4 normalises with batch statistics in both modes
    acc = evaluate(meta, episodes["test"].to(device), protocol)
    val = evaluate(meta, episodes["val"].to(device), protocol)
    return {
        "method": UNTRAINED,
        "protocol": asdict(protocol),
        "test_accuracy": float(acc.mean()),
        "ci95": confidence95(acc),
        "test_tasks": len(acc),
        "val_accuracy": float(val.mean()),
    }


def memory_methods(methods: list[str]) -> list[str]:
    """The trained methods plus the feature-sharing variant of each reference-style baseline."""
    return list(dict.fromkeys([*methods, *(SHARED_VARIANT[m] for m in methods if m in SHARED_VARIANT)]))


def peak_memory_of_outer_step(
    method: str, k: int, data: FewShotDataset, preset: Preset, device: torch.device, seed: int
) -> MemoryReport:
    """Peak memory of one outer step of ``method`` at K = ``k`` (K lower steps, then the upper step
    with its hypergradient), measured after one warm-up outer step, with ``preset.memory_tasks``
    tasks and a Conv-4 of width ``preset.memory_width``."""
    s = settings_for(method, data.name, preset)
    graph = build(
        method,
        data.splits["train"],
        preset,
        Settings(k, s.inner_lr, s.outer_lr),
        preset.memory_width,
        data.image_size,
        data.channels,
        seed,
        n_tasks=preset.memory_tasks,
    )
    runner = Runner(graph, 2 * k, device=device, progress=False)
    for _ in range(k):
        runner.step()
    with track_peak_memory(device) as mem:
        for _ in range(k):
            runner.step()
    runner.close()
    return mem


def memory_against_k(
    methods: list[str], data: FewShotDataset, preset: Preset, device: torch.device, seed: int
) -> list[dict]:
    """Fig. 2: :func:`peak_memory_of_outer_step` for every method and K in MEMORY_KS."""
    rows = []
    for method in methods:
        for k in MEMORY_KS:
            mem = peak_memory_of_outer_step(method, k, data, preset, device, seed)
            rows.append(
                {
                    "method": method,
                    "dataset": data.name,
                    "metric": "peak_memory_bytes",
                    "k": k,
                    "value": mem.peak_bytes,
                    "measured_by": mem.method,
                    "tasks": preset.memory_tasks,
                    "width": preset.memory_width,
                }
            )
            print(f"[rmmetal] memory {method:>22} K={k:>2}: {mem.peak_bytes / 2**20:8.2f} MiB")
    return rows


WARM_CHECK_OUTER_STEPS = 10
WARM_CHECK_INNER_STEPS = 5


def hypergradient_check(
    data,
    preset: Preset,
    seed: int,
    *,
    outer_steps: int = WARM_CHECK_OUTER_STEPS,
    inner_steps: int = WARM_CHECK_INNER_STEPS,
) -> list[dict[str, Any]]:
    """RM-MetaL's hypergradient against the exact implicit one, measured while it trains, for the warm-started
    CG of Subroutine 1 (``cg_warm``) and a cold-started one (``cg``), both with the paper's N = 20.

    The heads are warm-started (Algorithm 1) and the backbone trains with RM-MetaL's optimizer, so from the
    second outer step on ``cg_warm`` starts from the previous step's solution for new tasks and a new θ. At
    every outer step the hypergradient the engine formed is compared with the dense one at the same state
    (``dense_implicit_hypergradient``, per-task Hessians formed from unit vectors: a tiny width-4 Conv-4 on 2
    tasks). The engine's warm-start safeguard is on (a start worse than zero restarts from zero, counted).
    One row per method: cosine and relative error over outer steps 2..T (after the first warm start), the
    relative residual reached, products per solve and the number of cold restarts.
    """
    settings = settings_for("rm-metal", data.name, preset)
    preset = common.override(preset, cg_iterations=20)
    rows = []
    for method in ("cg_warm", "cg"):
        graph = build(
            "rm-metal",
            data.splits["train"],
            preset,
            Settings(inner_steps, settings.inner_lr, settings.outer_lr),
            4,
            data.image_size,
            data.channels,
            seed,
            n_tasks=2,
            hypergrad=method,
        )
        upper = graph["backbone"]
        steps: list[dict[str, float]] = []

        def compare(upper=upper, graph=graph, steps=steps) -> None:
            engine = torch.cat([p.grad.flatten() for p in upper.trainable_parameters()])
            dense = dense_implicit_hypergradient(graph)
            solve = upper.hypergradient_report["backbone<-heads"]["heads->backbone"]
            steps.append(
                {
                    "cosine": float(torch.nn.functional.cosine_similarity(engine, dense, dim=0)),
                    "relative_error": float((engine - dense).norm() / dense.norm()),
                    "residual": solve["residual"],
                    "products": solve["products"],
                    "cold_restart": solve.get("cold_restart", 0),
                }
            )

        upper.grad_callback = compare
        runner = Runner(graph, outer_steps * inner_steps, device="cpu", progress=False, seed=seed)
        runner.run()
        later = steps[1:]  # from the second outer step on, cg_warm starts from the previous solution
        rows.append(
            {
                "method": "rm-metal",
                "hypergrad": method,
                "dataset": data.name,
                "metric": "hypergradient_cosine_vs_dense_implicit",
                "value": reporting.summarize(s["cosine"] for s in later).mean,
                "min_cosine": min(s["cosine"] for s in later),
                "relative_error": reporting.summarize(s["relative_error"] for s in later).mean,
                "mean_residual": reporting.summarize(s["residual"] for s in later).mean,
                "products_per_solve": reporting.summarize(s["products"] for s in later).mean,
                "cold_restarts": int(sum(s["cold_restart"] for s in steps)),
                "cg_iterations": preset.cg_iterations,
                "outer_steps": outer_steps,
                "inner_steps": inner_steps,
                "tasks": 2,
                "width": 4,
                "per_step": steps,
            }
        )
    return rows


def wallclock_rows(trained: dict[str, dict], dataset: str) -> list[dict]:
    """Table 2: training seconds until validation accuracy first reached 0.9 x the best of all methods."""
    best = max(v["accuracy"] for r in trained.values() for v in r["validation"])
    rows = []
    for method, r in trained.items():
        reached = [v["train_seconds"] for v in r["validation"] if v["accuracy"] >= 0.9 * best]
        rows.append(
            {
                "method": method,
                "dataset": dataset,
                "metric": "seconds_to_0.9_best_val",
                "value": reached[0] if reached else None,
                "target_accuracy": 0.9 * best,
            }
        )
    return rows


def plot_memory(rows: list[dict], path: Path) -> None:
    """Fig. 2 layout: peak memory against K, and what each K adds over K = 1 (feature-sharing
    variants dashed)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        ks = [r["k"] for r in rows if r["method"] == method]
        mib = [r["value"] / 2**20 for r in rows if r["method"] == method]
        # distinct markers shrinking with i, so that methods with equal memory stay visible on top of each other
        style = {
            "linestyle": "--" if method in SHARED_VARIANT.values() else "-",
            "marker": "osD^vx+"[i % 7],
            "markersize": max(9 - i, 3),
            "label": method,
        }
        left.plot(ks, mib, **style)
        right.plot(ks, [max(m - mib[0], 1e-3) for m in mib], **style)
    left.set_ylabel("peak memory of one outer step (MiB)")
    right.set_ylabel("increase over K = 1 (MiB, log)")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xlabel("inner-loop iterations K")
        ax.set_xticks(MEMORY_KS)
    left.legend(fontsize=7)
    fig.suptitle(
        f"Memory against K ({rows[0]['tasks']} tasks, Conv-4 width {rows[0]['width']}), measured by "
        f"{rows[0]['measured_by']}",
        fontsize=8,
    )
    fig.tight_layout()
    reporting.save_figure(fig, path)


def _percent(row: dict[str, Any]) -> str:
    return f"{100 * row['value']:.2f} ± {100 * row['ci95']:.2f}"


FLAT = 1.10  # "stable in K": peak memory at the largest K within 10 % of K = 1 (the paper gives no figure)


def paper_claims(rows: list[dict[str, Any]], memory_claim: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(claim of the paper, what this run measured, whether it reproduces) for every claim the rows
    can test; ``memory_claim`` is the paper's §5.2 claim (assets/paper_results/rmmetal.json)."""
    claims = []
    acc = {r["method"]: r for r in rows if r["metric"] == "test_accuracy"}
    mem: dict[str, dict[int, int]] = {}
    for r in rows:
        if r["metric"] == "peak_memory_bytes":
            mem.setdefault(r["method"], {})[r["k"]] = r["value"]
    baselines = [m for m in ("itd-bio", "anil", "maml") if m in acc or m in mem]
    if "rm-metal" in acc and len([m for m in acc if m != UNTRAINED]) > 1:
        ours = acc["rm-metal"]
        other = max((r for m, r in acc.items() if m not in ("rm-metal", UNTRAINED)), key=lambda r: r["value"])
        if ours["value"] < other["value"]:
            verdict = "no"
        elif ours["value"] - ours["ci95"] > other["value"] + other["ci95"]:
            verdict = "yes"
        else:
            verdict = "not resolved: the 95 % intervals overlap"
        claims.append(
            (
                "Table 1: RM-MetaL has the highest test accuracy",
                f"rm-metal {_percent(ours)} %, best other ({other['method']}) {_percent(other)} %",
                verdict,
            )
        )
    if "rm-metal" in acc and UNTRAINED in acc:
        gain = acc["rm-metal"]["value"] - acc[UNTRAINED]["value"]
        claims.append(
            (
                "(precondition) meta-training improves on the untrained backbone",
                f"rm-metal {_percent(acc['rm-metal'])} % vs untrained {_percent(acc[UNTRAINED])} % "
                f"({100 * gain:+.1f} points)",
                "yes" if gain > acc[UNTRAINED]["ci95"] + acc["rm-metal"]["ci95"] else "no",
            )
        )
    first, last = MEMORY_KS[0], MEMORY_KS[-1]
    if "rm-metal" in mem:
        ratio = mem["rm-metal"][last] / mem["rm-metal"][first]
        claims.append(
            (
                "Fig. 2: RM-MetaL's memory stays flat in K",
                f"K={last} / K={first} = {ratio:.3f}",
                "yes" if ratio <= FLAT else "no",
            )
        )
    grows = {m: mem[m][last] / mem[m][first] for m in baselines if m in mem}
    if grows:
        claims.append(
            (
                "Fig. 2: MAML's, ANIL's and ITD-BiO's memory grows with K",
                ", ".join(f"{m} K={last} / K={first} = {v:.2f}" for m, v in grows.items()),
                "yes"
                if all(v > FLAT for v in grows.values())
                else "no for " + ", ".join(m for m, v in grows.items() if v <= FLAT),
            )
        )
    k, bound = memory_claim["k"], memory_claim["max_ratio"]
    if "rm-metal" in mem and k in mem["rm-metal"]:
        ratios = {m: mem["rm-metal"][k] / mem[m][k] for m in memory_claim["against"] if m in mem}
        if ratios:
            claims.append(
                (
                    f"§5.2: at K = {k} RM-MetaL needs ≥ {100 * (1 - bound):.0f} % less memory than "
                    f"{', '.join(memory_claim['against'])}",
                    ", ".join(f"rm-metal / {m} = {v:.2f}" for m, v in ratios.items()),
                    "yes"
                    if all(v <= bound for v in ratios.values())
                    else "no for " + ", ".join(m for m, v in ratios.items() if v > bound),
                )
            )
    clock = {r["method"]: r["value"] for r in rows if r["metric"] == "seconds_to_0.9_best_val"}
    if "rm-metal" in clock and len(clock) > 1:
        reached = {m: v for m, v in clock.items() if v is not None}
        fastest = min(reached, key=reached.get) if reached else None
        claims.append(
            (
                "Table 2: RM-MetaL reaches 0.9 x the best validation accuracy first",
                ", ".join(f"{m} {'never' if v is None else f'{v:.1f} s'}" for m, v in clock.items()),
                "yes" if fastest == "rm-metal" else "no",
            )
        )
    return claims


def results_markdown(results: dict) -> str:
    paper = reporting.load_paper("rmmetal")
    dataset = results["dataset"]
    paper_acc = {r["method"]: r for r in paper["accuracy"] if r["dataset"] == dataset}
    paper_time = {r["method"]: r["value"] for r in paper["wallclock"] if r["dataset"] == dataset}
    rows = results["rows"]
    protocol = MetaTestProtocol(**results["protocol"])
    lines = [
        f"# RM-MetaL and baselines on {dataset}",
        "",
        reporting.data_statement(results["data"]["source"], results["data"]["description"]),
        "",
    ]
    lines += ["## Test accuracy (Table 1), %", "", f"Meta-test protocol: {protocol.describe()}.", ""]
    accuracy = [
        (
            r["method"] + (" (reference)" if r["method"] == UNTRAINED else ""),
            r["backbone"],
            _percent(r),
            (
                f"{paper_acc[r['method']]['value']:.2f} ± {paper_acc[r['method']]['ci95']:.2f}"
                if r["method"] in paper_acc
                else "–"
            ),
        )
        for r in rows
        if r["metric"] == "test_accuracy"
    ]
    lines += reporting.markdown_table(["Algorithm", "Backbone", "ours", "paper"], accuracy)
    mem = [r for r in rows if r["metric"] == "peak_memory_bytes"]
    if mem:
        lines += ["", "## Peak memory of one outer step against K (Fig. 2), MiB", ""]
        table = []
        for method in dict.fromkeys(r["method"] for r in mem):
            vals = {r["k"]: r["value"] for r in mem if r["method"] == method}
            table.append(
                [
                    method,
                    *(f"{vals[k] / 2**20:.2f}" for k in MEMORY_KS),
                    f"{vals[MEMORY_KS[-1]] / vals[MEMORY_KS[0]]:.2f}",
                ]
            )
        lines += reporting.markdown_table(
            ["Algorithm", *(f"K={k}" for k in MEMORY_KS), f"K={MEMORY_KS[-1]} / K={MEMORY_KS[0]}"], table
        )
        lines += [
            "",
            f"One outer step (K lower steps, then the upper step with its hypergradient) after a warm-up "
            f"step; {mem[0]['tasks']} tasks, Conv-4 width {mem[0]['width']}; measured by: "
            f"{mem[0]['measured_by']}. "
            "itd-bio and anil run the backbone again in every differentiated inner step, as the reference code "
            "does; the -shared variants compute the support features once per hypergradient (same "
            "hypergradient, less memory).",
        ]
    clock = [r for r in rows if r["metric"] == "seconds_to_0.9_best_val"]
    if clock:
        lines += [
            "",
            "## Training time to reach 0.9 x the best validation accuracy "
            f"({clock[0]['target_accuracy']:.3f}) (Table 2)",
            "",
        ]

        def seconds(value: float | None, known: bool = True) -> str:
            return "–" if not known else ("never" if value is None else f"{value:.1f}")

        lines += reporting.markdown_table(
            ["Algorithm", "ours (s)", "paper (s)"],
            [
                (r["method"], seconds(r["value"]), seconds(paper_time.get(r["method"]), r["method"] in paper_time))
                for r in clock
            ],
        )
    claims = paper_claims(rows, paper["memory"])
    if claims:
        lines += ["", "## The paper's claims on this data", ""]
        lines += reporting.markdown_table(["claim", "measured here", "reproduces"], claims)
    check = [r for r in rows if r["metric"] == "hypergradient_cosine_vs_dense_implicit"]
    if check:
        c = check[0]
        lines += [
            "",
            "## Hypergradient check: warm starts measured while training",
            "",
            f"RM-MetaL's hypergradient (N = {c['cg_iterations']} CG iterations) against the exact implicit "
            f"hypergradient from dense per-task Hessian solves at the same state, at every one of "
            f"{c['outer_steps']} outer steps of training ({c['tasks']} tasks, width-{c['width']} Conv-4, "
            f"K = {c['inner_steps']}, warm-started heads); averages over outer steps 2..{c['outer_steps']}, "
            "where cg_warm starts from the previous step's solution. A warm start worse than zero restarts "
            "from zero (the engine's safeguard) and is counted.",
            "",
        ]
        lines += reporting.markdown_table(
            [
                "solve",
                "mean cosine",
                "min cosine",
                "mean rel. error",
                "mean residual",
                "products / solve",
                "cold restarts",
            ],
            [
                (
                    r["hypergrad"],
                    f"{r['value']:.6f}",
                    f"{r['min_cosine']:.6f}",
                    f"{r['relative_error']:.2e}",
                    f"{r['mean_residual']:.2e}",
                    f"{r['products_per_solve']:.1f}",
                    r["cold_restarts"],
                )
                for r in check
            ],
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_arguments(parser, datasets=DATASET_NAMES, default_dataset="digits")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[*METHODS, *OPTIONAL_METHODS],
        default=list(METHODS),
        help="algorithms to train (memory is also measured for the -shared variant of itd-bio and "
        "anil); default: %(default)s",
    )
    parser.add_argument(
        "--no-warm-start",
        action="store_true",
        help="also run RM-MetaL without its two warm starts (what the released code does)",
    )
    parser.add_argument(
        "--select-best", action="store_true", help="meta-test the best-validation checkpoint instead of the final model"
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory-against-K measurement")
    parser.add_argument("--tasks", type=common.positive_int, default=None, help="|B|, tasks per meta-batch")
    parser.add_argument(
        "--cg-iterations", type=common.positive_int, default=None, help="N, CG iterations of Subroutine 1"
    )
    parser.add_argument("--mu", type=float, default=None, help="μ of the lower regulariser R(φ) = μ/2 ||φ||²")
    return parser.parse_args(argv)


def sample_meta_test_tasks(
    data: FewShotDataset, preset: Preset, protocol: MetaTestProtocol, seed: int
) -> dict[str, Episodes]:
    """The fixed validation and test tasks every algorithm is scored on (seeded by ``seed``)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    return {
        split: sample_episodes(
            data.splits[split],
            n_way=preset.n_way,
            k_shot=preset.k_shot,
            k_query=protocol.query_per_class,
            n_tasks=n,
            generator=gen,
        )
        for split, n in (("val", preset.valid_tasks), ("test", protocol.test_tasks))
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, preset_name, seeds = common.resolve(args)
    if args.download:
        raise SystemExit(
            "error: --download: these datasets are not redistributed openly; see README for where to get "
            "the files learn2learn reads, then pass --data-root"
        )
    if args.mu is not None and args.mu < 0:
        raise SystemExit(f"error: --mu must be >= 0 (the weight of R(φ) = μ/2 ||φ||²), got {args.mu}")
    preset = common.override(
        PRESETS[preset_name], steps=args.steps, n_tasks=args.tasks, cg_iterations=args.cg_iterations, mu=args.mu
    )
    if seeds and len(seeds) > 1:
        raise SystemExit(
            "error: this recipe runs one seed at a time (its intervals are over test tasks); give --seed S"
        )
    seed = (seeds or [0])[0]
    hypergrad = common.parse_hypergrad(args.hypergrad, ("heads",)).get("heads")
    methods = list(dict.fromkeys(args.methods + (["rm-metal-no-warm-start"] if args.no_warm_start else [])))
    out = common.prepare_out(args.out or Path("runs") / f"rmmetal-{args.dataset}-{preset_name}", args.resume)
    try:
        data = load_fewshot(args.dataset, args.data_root)
    except FewShotDataError as err:
        raise SystemExit(f"error: {err}") from None
    stand_in = data.name == "digits"
    protocol = protocol_for(preset, args.select_best)
    print(f"[rmmetal] data: {data.description}")
    print(f"[rmmetal] preset '{preset_name}' on {device}: {common.preset_table(preset)}")
    print(f"[rmmetal] meta-test protocol: {protocol.describe()}")
    width = preset.width or (64 if data.image_size <= 32 else 32)
    episodes = sample_meta_test_tasks(data, preset, protocol, seed)

    trained = {}
    for method in methods:
        print(f"[rmmetal] training {method}")
        trained[method] = train(method, data, preset, args, device, out, seed, width, episodes, protocol, hypergrad)
    reference = untrained(data, preset, device, seed, width, episodes, protocol)
    backbone = "-".join([str(width)] * 4)
    rows = [
        {
            "method": m,
            "dataset": data.name,
            "backbone": backbone,
            "metric": "test_accuracy",
            "value": r["test_accuracy"],
            "ci95": r["ci95"],
            "test_tasks": r["test_tasks"],
        }
        for m, r in [*trained.items(), (UNTRAINED, reference)]
    ]
    rows += wallclock_rows(trained, data.name)
    memory = [] if args.skip_memory else memory_against_k(memory_methods(methods), data, preset, device, seed)
    rows += memory
    rows += hypergradient_check(data, preset, seed)

    results = {
        "recipe": "rmmetal",
        "preset": preset_name,
        "dataset": data.name,
        "device": str(device),
        "data": {
            "name": data.name,
            "source": "embedded" if stand_in else "real",
            "stand_in": stand_in,
            "description": data.description,
            "root": str(args.data_root) if args.data_root else None,
        },
        "settings": asdict(preset),
        "protocol": asdict(protocol),
        "methods": methods,
        "rows": rows,
        "runs": {m: {k: v for k, v in r.items() if k != "validation"} for m, r in trained.items()}
        | {UNTRAINED: reference},
        "validation_curves": {m: r["validation"] for m, r in trained.items()},
    }
    reporting.write_results(out, results, results_markdown(results))
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    if memory:
        plot_memory(memory, figures / "memory_vs_k.png")
    build(
        "rm-metal",
        data.splits["train"],
        preset,
        settings_for("rm-metal", data.name, preset),
        width,
        data.image_size,
        data.channels,
        seed,
    ).draw(figures / "graph.png")
    print((out / "results.md").read_text())
    print(f"[rmmetal] wrote {out / 'results.json'}, {out / 'results.md'} and {figures}/")
    return results


if __name__ == "__main__":
    main()
