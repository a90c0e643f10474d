"""RM-MetaL with MAML, ANIL and ITD-BiO in one engine: accuracy, memory against K, wall-clock.

    python recipes/rmmetal.py [--dataset digits|cifar-fs|fc100|miniimagenet|tieredimagenet] [--data-root DIR]
                              [--preset smoke|small|paper] [--methods ...] [--no-warm-start] [--out DIR]

The four algorithms are the same two-level graph (problems/rmmetal.py) with a different
configuration: what the lower level adapts, where its inner loops start, and the hypergradient
method through it (cg_warm for RM-MetaL, exact for the others). For each algorithm this trains
the meta-learner with periodic meta-validation (best checkpoint kept), then meta-tests it by
fine-tuning a head with 20 gradient steps on every test task (accuracy ± 95 % interval).
It also measures the peak memory of one outer step at K in {1, 5, 10, 20} (Fig. 2), the
training time to reach 0.9 x the best validation accuracy among the algorithms (Table 2),
and RM-MetaL's hypergradient against the exact implicit one on a tiny head.

Writes to --out: results.json, results.md, figures/memory_vs_k.png and runs/<algorithm>/.
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
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from engines import Graph, Runner, track_peak_memory  # noqa: E402
from engines.checkpoint import load_checkpoint  # noqa: E402
from problems.fewshot import DATASET_NAMES, Episodes, EpisodeStream, FewShotDataError, load_fewshot, sample_episodes  # noqa: E402
from problems.rmmetal import ALGORITHMS, EpisodeSource, dense_implicit_hypergradient, meta_learning_graph, meta_test  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("rm-metal", "itd-bio", "anil", "maml")
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
    "rm-metal-no-warm-start": (Settings(20, 0.1, 1e-4), Settings(20, 0.05, 1e-3)),
    "itd-bio": (Settings(20, 0.1, 1e-4), Settings(20, 0.05, 1e-4)),
    "anil": (Settings(10, 0.1, 1e-4), Settings(5, 0.1, 1e-3)),
    "maml": (Settings(3, 0.5, 1e-3), Settings(3, 0.5, 5e-3)),
}


@dataclass(frozen=True)
class Preset:
    n_tasks: int            # |B|
    n_way: int
    k_shot: int
    k_query: int
    steps: int              # outer iterations
    valid_every: int
    valid_tasks: int
    test_tasks: int
    fine_tune_steps: int
    cg_iterations: int      # N
    mu: float               # R(φ) = μ/2 ||φ||²
    width: int | None       # Conv-4 filters (None: 64 for 32x32 data, 32 for 84x84)
    inner_steps: int | None  # None: the table above
    outer_lr_scale: float = 1.0
    memory_tasks: int = 4
    memory_width: int = 16


PRESETS = {
    "smoke": Preset(n_tasks=4, n_way=5, k_shot=5, k_query=5, steps=40, valid_every=10, valid_tasks=50, test_tasks=100,
                    fine_tune_steps=20, cg_iterations=5, mu=0.01, width=16, inner_steps=5, outer_lr_scale=10.0,
                    memory_tasks=2, memory_width=8),
    "small": Preset(n_tasks=8, n_way=5, k_shot=5, k_query=5, steps=500, valid_every=50, valid_tasks=200, test_tasks=600,
                    fine_tune_steps=20, cg_iterations=20, mu=0.01, width=None, inner_steps=None, outer_lr_scale=3.0,
                    memory_tasks=8, memory_width=32),
    "paper": Preset(n_tasks=32, n_way=5, k_shot=5, k_query=5, steps=2000, valid_every=100, valid_tasks=320,
                    test_tasks=640, fine_tune_steps=20, cg_iterations=20, mu=0.01, width=None, inner_steps=None,
                    memory_tasks=32, memory_width=64),
}


def settings_for(method: str, dataset: str, preset: Preset) -> Settings:
    small_images = dataset in ("cifar-fs", "fc100", "digits")
    s = TABLE[method][0 if small_images else 1]
    steps = preset.inner_steps if preset.inner_steps is not None else s.inner_steps
    if method == "maml":
        steps = min(steps, s.inner_steps)
    return Settings(steps, s.inner_lr, s.outer_lr * preset.outer_lr_scale)


def build(method: str, split, preset: Preset, settings: Settings, width: int, image_size: int, channels: int,
          seed: int, n_tasks: int | None = None, hypergrad: str | None = None) -> Graph:
    """The graph of ``method``; ``hypergrad`` replaces its method through the ``heads`` level."""
    stream = EpisodeStream(split, preset.n_way, preset.k_shot, preset.k_query, n_tasks or preset.n_tasks, seed=seed)
    algorithm = replace(ALGORITHMS[method], hypergrad=hypergrad) if hypergrad else method
    return meta_learning_graph(
        algorithm, data=EpisodeSource(stream), in_channels=channels, image_size=image_size, width=width,
        n_way=preset.n_way, n_tasks=n_tasks or preset.n_tasks, inner_steps=settings.inner_steps,
        inner_lr=settings.inner_lr, outer_optimizer=functools.partial(torch.optim.Adam, lr=settings.outer_lr),
        mu=preset.mu, cg_iterations=preset.cg_iterations, seed=seed,
    )


class MetaValidation:
    """Meta-validation accuracy on fixed tasks, and the training time it took to get there
    (wall-clock of training only: time spent validating is subtracted)."""

    def __init__(self, episodes: Episodes, preset: Preset, lr: float):
        self.episodes, self.preset, self.lr = episodes, preset, lr
        self.history: list[dict[str, float]] = []
        self._validating = 0.0
        self._start = time.perf_counter()

    def __call__(self, graph: Graph) -> dict[str, float]:
        t0 = time.perf_counter()
        acc = meta_test(graph["backbone"].module, self.episodes, steps=self.preset.fine_tune_steps, lr=self.lr)
        train_time = t0 - self._start - self._validating
        self._validating += time.perf_counter() - t0
        self.history.append({"step": graph.engine.global_step // graph["heads"].unroll, "accuracy": float(acc.mean()),
                             "train_seconds": train_time})
        return {"val_accuracy": float(acc.mean())}


def confidence95(acc: torch.Tensor) -> float:
    return float(1.96 * acc.std() / len(acc) ** 0.5) if len(acc) > 1 else 0.0


def train(method: str, data, preset: Preset, args: argparse.Namespace, device: torch.device, out: Path, seed: int,
          width: int, val_episodes: Episodes, test_episodes: Episodes, hypergrad: str | None) -> dict[str, Any]:
    run_dir = out / "runs" / method
    result_file = run_dir / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    s = settings_for(method, data.name, preset)
    graph = build(method, data.splits["train"], preset, s, width, data.image_size, data.channels, seed,
                  hypergrad=hypergrad)
    validation = MetaValidation(val_episodes.to(device), preset, s.inner_lr)
    K = s.inner_steps
    result = Runner(graph, preset.steps * K, out=run_dir, device=device, seed=seed, precision=args.precision,
                    validate=validation, valid_every=preset.valid_every * K, monitor="val_accuracy", mode="max",
                    checkpoint_every=preset.valid_every * K, resume=(run_dir / "checkpoint_latest.pt").exists(),
                    progress=not args.no_progress,
                    config={"method": method, "settings": asdict(s), "preset": asdict(preset),
                            "hypergrad": graph["heads"].hypergrad, "command": common.command_line()}).run()
    best = load_checkpoint(run_dir / "checkpoint_best.pt", map_location=device)
    graph["backbone"].module.load_state_dict(best["levels"]["backbone"]["module"])
    acc = meta_test(graph["backbone"].module, test_episodes.to(device), steps=preset.fine_tune_steps, lr=s.inner_lr)
    payload = {"method": method, "settings": asdict(s), "best_step": result.best["step"] // K,
               "best_val_accuracy": result.best["metrics"]["val_accuracy"], "test_accuracy": float(acc.mean()),
               "ci95": confidence95(acc), "test_tasks": len(acc), "validation": validation.history,
               "cg_residual": graph["heads"].diagnostics.get("hg_cg_residual")}
    common.write_json(result_file, payload)
    return payload


def memory_against_k(methods: list[str], data, preset: Preset, device: torch.device, seed: int) -> list[dict]:
    """Peak memory of one outer step (after one warm-up outer step) for every method and K."""
    rows = []
    for method in methods:
        s = settings_for(method, data.name, preset)
        for k in MEMORY_KS:
            graph = build(method, data.splits["train"], preset, Settings(k, s.inner_lr, s.outer_lr),
                          preset.memory_width, data.image_size, data.channels, seed, n_tasks=preset.memory_tasks)
            runner = Runner(graph, 2 * k, device=device, progress=False)
            for _ in range(k):
                runner.step()
            with track_peak_memory(device) as mem:
                for _ in range(k):
                    runner.step()
            runner.close()
            rows.append({"method": method, "dataset": data.name, "metric": "peak_memory_bytes", "k": k,
                         "value": mem.peak_bytes, "measured_by": mem.method, "tasks": preset.memory_tasks,
                         "width": preset.memory_width})
            print(f"[rmmetal] memory {method:>22} K={k:>2}: {mem.peak_bytes / 2**20:8.2f} MiB")
    return rows


def hypergradient_check(data, preset: Preset, seed: int) -> dict[str, Any]:
    """RM-MetaL's hypergradient (cg_warm with the paper's N = 20) against the dense implicit one on a tiny head."""
    k = 30
    preset = common.override(preset, cg_iterations=20)
    graph = build("rm-metal", data.splits["train"], preset, Settings(k, 0.1, 0.0), 4, data.image_size, data.channels,
                  seed, n_tasks=2)
    upper, captured = graph["backbone"], {}
    upper.grad_callback = lambda: captured.setdefault(
        "cg", torch.cat([p.grad.flatten() for p in upper.trainable_parameters()]))
    runner = Runner(graph, k, device="cpu", progress=False)
    for _ in range(k):
        runner.step()
    runner.close()
    dense = dense_implicit_hypergradient(graph)
    cosine = float(torch.nn.functional.cosine_similarity(captured["cg"], dense, dim=0))
    return {"method": "rm-metal", "dataset": data.name, "metric": "hypergradient_cosine_vs_dense_implicit",
            "value": cosine, "relative_error": float((captured["cg"] - dense).norm() / dense.norm()),
            "cg_iterations": preset.cg_iterations, "cg_residual": graph["heads"].diagnostics["hg_cg_residual"],
            "tasks": 2, "width": 4, "inner_steps": k}


def wallclock_rows(trained: dict[str, dict], dataset: str) -> list[dict]:
    """Table 2: training seconds until validation accuracy first reached 0.9 x the best of all methods."""
    best = max(v["accuracy"] for r in trained.values() for v in r["validation"])
    rows = []
    for method, r in trained.items():
        reached = [v["train_seconds"] for v in r["validation"] if v["accuracy"] >= 0.9 * best]
        rows.append({"method": method, "dataset": dataset, "metric": "seconds_to_0.9_best_val",
                     "value": reached[0] if reached else None, "target_accuracy": 0.9 * best})
    return rows


def plot_memory(rows: list[dict], path: Path) -> None:
    """Fig. 2 layout: peak memory against K, and what each K adds over K = 1."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for method in dict.fromkeys(r["method"] for r in rows):
        ks = [r["k"] for r in rows if r["method"] == method]
        mib = [r["value"] / 2**20 for r in rows if r["method"] == method]
        left.plot(ks, mib, marker="o", label=method)
        right.plot(ks, [max(m - mib[0], 1e-3) for m in mib], marker="o", label=method)
    left.set_ylabel("peak memory of one outer step (MiB)")
    right.set_ylabel("increase over K = 1 (MiB, log)")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xlabel("inner-loop iterations K")
        ax.set_xticks(MEMORY_KS)
    left.legend(fontsize=7)
    fig.suptitle(f"Memory against K, measured by {rows[0]['measured_by']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_markdown(results: dict) -> str:
    paper = json.loads((ROOT / "assets" / "paper_results" / "rmmetal.json").read_text())
    dataset = results["dataset"]
    paper_acc = {r["method"]: r for r in paper["accuracy"] if r["dataset"] == dataset}
    paper_time = {r["method"]: r["value"] for r in paper["wallclock"] if r["dataset"] == dataset}
    rows = results["rows"]
    lines = [f"# RM-MetaL and baselines on {dataset}", ""]
    if results["data"]["stand_in"]:
        lines += [f"**Stand-in data.** {results['data']['description']} The paper's numbers are for its own datasets "
                  "and are shown only for orientation.", ""]
    lines += ["## Test accuracy (Table 1): fine-tuning a head with 20 GD steps, mean ± 95 % interval over test tasks", "",
              "| Algorithm | Backbone | ours (%) | paper (%) |", "|---|---|---|---|"]
    for r in (r for r in rows if r["metric"] == "test_accuracy"):
        ref = paper_acc.get(r["method"])
        ref_text = f"{ref['value']:.2f} ± {ref['ci95']:.2f}" if ref else "–"
        lines.append(f"| {r['method']} | {r['backbone']} | {100 * r['value']:.2f} ± {100 * r['ci95']:.2f} | {ref_text} |")
    mem = [r for r in rows if r["metric"] == "peak_memory_bytes"]
    if mem:
        lines += ["", "## Peak memory of one outer step against K (Fig. 2), MiB", "",
                  "| Algorithm | " + " | ".join(f"K={k}" for k in MEMORY_KS) + " | K=20 / K=1 |", "|---|" + "---|" * (len(MEMORY_KS) + 1)]
        for method in dict.fromkeys(r["method"] for r in mem):
            vals = {r["k"]: r["value"] for r in mem if r["method"] == method}
            lines.append(f"| {method} | " + " | ".join(f"{vals[k] / 2**20:.2f}" for k in MEMORY_KS)
                         + f" | {vals[MEMORY_KS[-1]] / vals[MEMORY_KS[0]]:.2f} |")
        lines += ["", f"Measured by: {mem[0]['measured_by']}; {mem[0]['tasks']} tasks, Conv-4 width {mem[0]['width']}."]
    clock = [r for r in rows if r["metric"] == "seconds_to_0.9_best_val"]
    if clock:
        lines += ["", f"## Training time to reach 0.9 x the best validation accuracy ({clock[0]['target_accuracy']:.3f}) (Table 2)", "",
                  "| Algorithm | ours (s) | paper (s) |", "|---|---|---|"]
        def seconds(value: float | None, known: bool = True) -> str:
            return "–" if not known else ("never" if value is None else f"{value:.1f}")

        for r in clock:
            ref = seconds(paper_time.get(r["method"]), r["method"] in paper_time)
            lines.append(f"| {r['method']} | {seconds(r['value'])} | {ref} |")
    check = [r for r in rows if r["metric"] == "hypergradient_cosine_vs_dense_implicit"]
    if check:
        c = check[0]
        lines += ["", "## Hypergradient check", "",
                  f"RM-MetaL's hypergradient (warm-started CG, N = {c['cg_iterations']}) against the exact implicit "
                  f"hypergradient from dense per-task Hessian solves ({c['tasks']} tasks, width-{c['width']} Conv-4, "
                  f"K = {c['inner_steps']}): cosine {c['value']:.6f}, relative error {c['relative_error']:.2e}."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, datasets=DATASET_NAMES, default_dataset="digits")
    parser.add_argument("--methods", nargs="+", choices=[*METHODS, "rm-metal-no-warm-start"], default=list(METHODS))
    parser.add_argument("--no-warm-start", action="store_true",
                        help="also run RM-MetaL without its two warm starts (what the released code does)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory-against-K measurement")
    parser.add_argument("--tasks", type=int, default=None, help="|B|, tasks per meta-batch")
    parser.add_argument("--cg-iterations", type=int, default=None, help="N, CG iterations of Subroutine 1")
    parser.add_argument("--mu", type=float, default=None, help="μ of the lower regulariser R(φ) = μ/2 ||φ||²")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, preset_name, seeds = common.resolve(args)
    if args.download:
        raise SystemExit("error: --download: these datasets are not redistributed openly; see README for where to get "
                         "the files learn2learn reads, then pass --data-root")
    preset = common.override(PRESETS[preset_name], steps=args.steps, n_tasks=args.tasks,
                             cg_iterations=args.cg_iterations, mu=args.mu)
    if seeds and len(seeds) > 1:
        raise SystemExit("error: this recipe runs one seed at a time (its intervals are over test tasks); give --seed S")
    seed = (seeds or [0])[0]
    hypergrad = common.parse_hypergrad(args.hypergrad, ("heads",)).get("heads")
    methods = list(dict.fromkeys(args.methods + (["rm-metal-no-warm-start"] if args.no_warm_start else [])))
    out = common.prepare_out(args.out or Path("runs") / f"rmmetal-{args.dataset}-{preset_name}", args.resume)
    try:
        data = load_fewshot(args.dataset, args.data_root)
    except FewShotDataError as err:
        raise SystemExit(f"error: {err}") from None
    stand_in = data.name == "digits"
    print(f"[rmmetal] data: {data.description}")
    print(f"[rmmetal] preset '{preset_name}' on {device}: {common.preset_table(preset)}")
    width = preset.width or (64 if data.image_size <= 32 else 32)
    gen = torch.Generator().manual_seed(10_000 + seed)
    val_episodes = sample_episodes(data.splits["val"], n_way=preset.n_way, k_shot=preset.k_shot, k_query=15,
                                   n_tasks=preset.valid_tasks, generator=gen)
    test_episodes = sample_episodes(data.splits["test"], n_way=preset.n_way, k_shot=preset.k_shot, k_query=15,
                                    n_tasks=preset.test_tasks, generator=gen)

    trained = {}
    for method in methods:
        print(f"[rmmetal] training {method}")
        trained[method] = train(method, data, preset, args, device, out, seed, width, val_episodes, test_episodes,
                                hypergrad)
    backbone = "-".join([str(width)] * 4)
    rows = [{"method": m, "dataset": data.name, "backbone": backbone, "metric": "test_accuracy",
             "value": r["test_accuracy"], "ci95": r["ci95"], "test_tasks": r["test_tasks"]} for m, r in trained.items()]
    rows += wallclock_rows(trained, data.name)
    memory = [] if args.skip_memory else memory_against_k(methods, data, preset, device, seed)
    rows += memory
    rows.append(hypergradient_check(data, preset, seed))

    results = {"recipe": "rmmetal", "preset": preset_name, "dataset": data.name, "device": str(device),
               "data": {"name": data.name, "source": "embedded" if stand_in else "real", "stand_in": stand_in,
                        "description": data.description, "root": str(args.data_root) if args.data_root else None},
               "settings": asdict(preset), "methods": methods, "rows": rows,
               "runs": {m: {k: v for k, v in r.items() if k != "validation"} for m, r in trained.items()},
               "validation_curves": {m: r["validation"] for m, r in trained.items()}}
    common.write_json(out / "results.json", results)
    (out / "results.md").write_text(results_markdown(results))
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    if memory:
        plot_memory(memory, figures / "memory_vs_k.png")
    build("rm-metal", data.splits["train"], preset, settings_for("rm-metal", data.name, preset), width, data.image_size,
          data.channels, seed).draw(figures / "graph.png")
    print((out / "results.md").read_text())
    print(f"[rmmetal] wrote {out / 'results.json'}, {out / 'results.md'} and {figures}/")
    return results


if __name__ == "__main__":
    main()
