"""RM-MetaL's report: the paper's claims tested on the runs, Table 1, the accuracy at equal wall-clock,
Fig. 2 (memory against K), Table 2 (time to 0.9 x the best validation accuracy), the hypergradient
check, results.json and the figures.

Rows are flat (``reporting`` conventions): ``method``, ``seed``, ``metric``, ``value`` and what else
identifies them (``k`` for memory). Every claim is a paired difference over seeds that is positive when
it holds: within a seed every algorithm starts from the same backbone, sees the same training tasks and
is scored on the same test tasks (:func:`reporting.margins`), tested with a 95 % Student-t interval over
seeds (:class:`reporting.Claim`).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import reporting
from planning import Plan
from reporting import Claim, margins

from problems.fewshot import FewShotDataset
from problems.rmmetal import MEMORY_KS, SHARED_VARIANT, MetaTestProtocol, steps_to_reach

__all__ = ["FLAT", "claims", "results_markdown", "rows_of", "write"]

FLAT = 1.10  # "stable in K": peak memory at the largest K within 10 % of K = 1 (the paper gives no figure)
BASELINES = ("itd-bio", "anil", "maml")
NAMES = {"rm-metal": "RM-MetaL", "itd-bio": "ITD-BiO", "anil": "ANIL", "maml": "MAML"}
CLAIMS_NOTE = (
    "Each claim is a paired difference that is positive when it holds: per seed (every algorithm starts from "
    "the same backbone, sees the same training tasks and is scored on the same test tasks), then its mean over "
    "seeds with the 95 % Student-t interval. Reproduced: the interval lies above 0. Accuracy differences are "
    "in percentage points. Peak memory on the CPU counts live tensor storages and depends on the sizes only, "
    "so its seeds agree exactly and its interval has zero width."
)


# ---------------------------------------------------------------------------------------------- rows
def rows_of(
    results: Mapping[str, dict],
    measured: Mapping[str, dict],
    equal_time: Mapping[str, dict],
    *,
    dataset: str,
    backbone: str,
    untrained: str,
) -> list[dict[str, Any]]:
    """The flat rows of results.json from the runs, the measurements and the equal-time scores."""
    rows = []
    for name, r in results.items():
        seed = {"method": r["method"], "seed": r["seed"], "dataset": dataset}
        rows.append(
            {
                **seed,
                "backbone": backbone,
                "metric": "test_accuracy",
                "value": r["test_accuracy"],
                "ci95": r["ci95"],
                "test_tasks": r["test_tasks"],
            }
        )
        if name in equal_time:
            rows.append(
                {
                    **seed,
                    "metric": "test_accuracy_at_equal_time",
                    "value": equal_time[name]["test_accuracy"],
                    "ci95": equal_time[name]["ci95"],
                    "budget_steps": equal_time[name]["budget_steps"],
                    "snapshot": equal_time[name]["snapshot"],
                }
            )
    for name, m in measured.items():
        kind, seed = name.rsplit("__seed", 1)
        if kind == untrained:
            rows.append(
                {
                    "method": untrained,
                    "seed": int(seed),
                    "dataset": dataset,
                    "backbone": backbone,
                    "metric": "test_accuracy",
                    "value": m["test_accuracy"],
                    "ci95": m["ci95"],
                    "test_tasks": m["test_tasks"],
                }
            )
        elif kind == "timing":
            rows += [
                {
                    "method": method,
                    "dataset": dataset,
                    "metric": "seconds_per_outer_step",
                    "value": value,
                    "ratio_to_rm_metal": m["ratio"][method],
                    "rounds": m["rounds"],
                }
                for method, value in m["median_seconds"].items()
            ]
        else:
            rows += [{**r, "seed": int(seed)} if kind == "memory" else r for r in m["rows"]]
    return rows + wallclock_rows(results, measured, dataset)


def wallclock_rows(results: Mapping[str, dict], measured: Mapping[str, dict], dataset: str) -> list[dict]:
    """Table 2 per seed: training time until the validation accuracy first reached 0.9 x the best of all
    algorithms of that seed, measured during training and estimated as outer steps x the alternating
    measurement's median time per outer step."""
    timing = next((m for name, m in measured.items() if name.startswith("timing__")), {"median_seconds": {}})
    rows = []
    for seed in dict.fromkeys(r["seed"] for r in results.values()):
        runs = [r for r in results.values() if r["seed"] == seed]
        target = 0.9 * max(v["accuracy"] for r in runs for v in r["validation"])
        for r in runs:
            step = steps_to_reach(r["validation"], target)
            reached = [v["train_seconds"] for v in r["validation"] if v["step"] == step]
            per_step = timing["median_seconds"].get(r["method"])
            rows.append(
                {
                    "method": r["method"],
                    "seed": seed,
                    "dataset": dataset,
                    "metric": "seconds_to_0.9_best_val",
                    "value": reached[0] if reached else None,
                    "outer_steps": step,
                    "seconds_from_timing": step * per_step if step is not None and per_step else None,
                    "target_accuracy": target,
                }
            )
    return rows


def _values(rows: Sequence[Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    """``{method, seed, value}`` of ``metric``'s rows, the identifying keys :func:`reporting.margins` pairs on."""
    return [{"method": r["method"], "seed": r["seed"], "value": r["value"]} for r in rows if r["metric"] == metric]


def _memory(rows: Sequence[Mapping[str, Any]]) -> dict[int, dict[tuple[str, int], float]]:
    """Peak memory per seed: ``{seed: {(method, K): bytes}}``."""
    out: dict[int, dict[tuple[str, int], float]] = {}
    for r in rows:
        if r["metric"] == "peak_memory_bytes":
            out.setdefault(r["seed"], {})[r["method"], r["k"]] = r["value"]
    return out


# ---------------------------------------------------------------------------------------------- claims
def claims(rows: Sequence[Mapping[str, Any]], methods: Sequence[str], untrained: str, memory: Mapping) -> list[Claim]:
    """The paper's claims that the rows can test (``memory`` is its §5.2 claim, assets/paper_results)."""
    found = []
    baselines = [b for b in BASELINES if b in methods]
    for metric, what, where, when in (
        ("test_accuracy", "", "Table 1, §5.1", "after the same outer steps"),
        (
            "test_accuracy_at_equal_time",
            " in the same wall-clock time",
            "Table 2, §5.3",
            "at an equal wall-clock budget",
        ),
    ):
        points = [{**r, "value": 100 * r["value"]} for r in _values(rows, metric)]
        for b in baselines if points and "rm-metal" in methods else ():
            found.append(
                Claim(
                    f"RM-MetaL is more accurate than {NAMES[b]}{what} ({where})",
                    f"RM-MetaL − {NAMES[b]}, test accuracy {when}",
                    margins(points, "method", "rm-metal", [b]),
                )
            )
    points = [{**r, "value": 100 * r["value"]} for r in _values(rows, "test_accuracy")]
    if "rm-metal-no-warm-start" in methods and "rm-metal" in methods:
        found.append(
            Claim(
                "Algorithm 1's warm starts (φ: line 6; v: Subroutine 1 line 2) help accuracy",
                "RM-MetaL − RM-MetaL without warm starts (the released code), test accuracy",
                margins(points, "method", "rm-metal", ["rm-metal-no-warm-start"]),
            )
        )
    if "rm-metal" in methods:
        found.append(
            Claim(
                "(precondition) meta-training improves on the untrained backbone",
                "RM-MetaL − untrained backbone, test accuracy",
                margins(points, "method", "rm-metal", [untrained]),
            )
        )
    peaks = _memory(rows)
    if not peaks:
        return found
    first, last, k = MEMORY_KS[0], MEMORY_KS[-1], memory["k"]
    found.append(
        Claim(
            "RM-MetaL's memory stays stable as K grows (Fig. 2, §5.2)",
            f"{FLAT:.2f} − RM-MetaL's peak at K={last} / K={first}",
            {s: FLAT - p["rm-metal", last] / p["rm-metal", first] for s, p in peaks.items()},
        )
    )
    found.append(
        Claim(
            "MAML's, ANIL's and ITD-BiO's memory grows with K (Fig. 2, §5.2)",
            f"smallest peak at K={last} / K={first} of the three − {FLAT:.2f}",
            {s: min(p[b, last] / p[b, first] for b in BASELINES) - FLAT for s, p in peaks.items()},
        )
    )
    found.append(
        Claim(
            f"At K = {k} RM-MetaL needs > {100 * (1 - memory['max_ratio']):.0f} % less memory than "
            "MAML, ANIL and ITD-BiO (§5.2)",
            f"{memory['max_ratio']} − largest RM-MetaL / baseline peak at K={k}",
            {
                s: memory["max_ratio"] - max(p["rm-metal", k] / p[b, k] for b in memory["against"])
                for s, p in peaks.items()
            },
        )
    )
    return found


# ---------------------------------------------------------------------------------------------- tables
def _accuracy(values: Sequence[Mapping[str, Any]]) -> str:
    """Mean ± std over seeds in %, or ± the 95 % interval over test tasks for a single seed."""
    if len(values) == 1:
        return f"{100 * values[0]['value']:.2f} ± {100 * values[0]['ci95']:.2f}"
    s = reporting.summarize(v["value"] for v in values)
    return reporting.cell(s.mean, s.std, n=s.n, scale=100, digits=2)


def _by_method(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r["metric"] == metric:
            out.setdefault(r["method"], []).append(r)
    return out


def _mean(values: Sequence[float | None], digits: int = 1) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.fmean(known):.{digits}f}" if known else "never"


def results_markdown(results: Mapping[str, Any], found: Sequence[Claim]) -> str:
    """results.md: the claims table first, then the paper's tables beside its numbers."""
    paper = reporting.load_paper("rmmetal")
    dataset, rows, untrained = results["dataset"], results["rows"], results["untrained"]
    paper_acc = {r["method"]: r for r in paper["accuracy"] if r["dataset"] == dataset}
    paper_time = {r["method"]: r["value"] for r in paper["wallclock"] if r["dataset"] == dataset}
    seeds = results["seeds"]
    lines = [f"# RM-MetaL and baselines on {dataset}", ""]
    lines += [reporting.data_statement(results["data"]["source"], results["data"]["description"]), ""]
    lines += ["## The paper's claims on this data", "", *reporting.claims_table(found, digits=2), "", CLAIMS_NOTE]
    lines += ["", f"Seeds: {', '.join(map(str, seeds))}. Figure: figures/claims.png.", ""]

    protocol = MetaTestProtocol(**results["protocol"])
    spread = "± 95 % interval over test tasks" if len(seeds) == 1 else f"mean ± std over {len(seeds)} seeds"
    lines += ["## Test accuracy (Table 1), %", "", f"Meta-test protocol: {protocol.describe()}. Ours: {spread}.", ""]
    acc = _by_method(rows, "test_accuracy")
    body = []
    for method, values in acc.items():
        label = method + (" (reference)" if method == untrained else "")
        ref = paper_acc.get(method)
        body.append(
            [label, values[0]["backbone"], _accuracy(values), f"{ref['value']:.2f} ± {ref['ci95']:.2f}" if ref else "–"]
        )
    lines += reporting.markdown_table(["Algorithm", "Backbone", "ours", "paper"], body)

    clock = _by_method(rows, "seconds_per_outer_step")
    equal = _by_method(rows, "test_accuracy_at_equal_time")
    if equal:
        lines += ["", "## Accuracy at an equal wall-clock budget (Table 2, §5.3), %", ""]
        steps = results["settings"]["steps"]
        lines += [
            f"Time per outer step measured in one process, every algorithm alternating ({clock['rm-metal'][0]['rounds']} "
            "rounds, order rotated each round); cost = median over rounds of the time / RM-MetaL's in the same round. "
            f"Budget: the time the cheapest trained algorithm needs for T = {steps} outer steps; each algorithm is "
            "credited with the outer steps that fit into it and scored at its first snapshot at or after them "
            "(rounding up to a kept snapshot gives no algorithm less than the budget).",
            "",
        ]
        body = [
            [
                m,
                f"{1000 * clock[m][0]['value']:.0f}",
                f"{clock[m][0]['ratio_to_rm_metal']:.2f}",
                v[0]["budget_steps"],
                v[0]["snapshot"],
                _accuracy(v),
                _accuracy(acc[m]),
            ]
            for m, v in equal.items()
        ]
        lines += reporting.markdown_table(
            [
                "Algorithm",
                "ms / outer step",
                "cost / RM-MetaL",
                "steps in budget",
                "snapshot",
                "at equal time",
                f"at T = {steps}",
            ],
            body,
        )

    mem = [r for r in rows if r["metric"] == "peak_memory_bytes" and r["seed"] == seeds[0]]
    if mem:
        lines += ["", "## Peak memory of one outer step against K (Fig. 2), MiB", ""]
        table = []
        for method in dict.fromkeys(r["method"] for r in mem):
            v = {r["k"]: r["value"] for r in mem if r["method"] == method}
            table.append(
                [method, *(f"{v[k] / 2**20:.2f}" for k in MEMORY_KS), f"{v[MEMORY_KS[-1]] / v[MEMORY_KS[0]]:.2f}"]
            )
        lines += reporting.markdown_table(
            ["Algorithm", *(f"K={k}" for k in MEMORY_KS), f"K={MEMORY_KS[-1]} / K={MEMORY_KS[0]}"], table
        )
        lines += [
            "",
            f"One outer step (K lower steps, then the upper step with its hypergradient) after a warm-up step; "
            f"{mem[0]['tasks']} tasks, Conv-4 width {mem[0]['width']}; measured by: {mem[0]['measured_by']} "
            f"(seed {seeds[0]}; figures/memory_vs_k.png). itd-bio and anil run the backbone again in every "
            "differentiated inner step, as the reference code does; the -shared variants compute the support "
            "features once per hypergradient (same hypergradient, less memory).",
        ]

    wall = _by_method(rows, "seconds_to_0.9_best_val")
    if wall:
        lines += ["", "## Training time to reach 0.9 x the best validation accuracy (Table 2)", ""]
        lines += [
            "Per seed the target is 0.9 x the best validation accuracy any algorithm of that seed reached; means "
            "over the seeds that reached it. Seconds during training are the run's own (validation excluded; "
            "they include whatever else the machine did meanwhile); from timing: outer steps x the alternating "
            "measurement's median time per outer step.",
            "",
        ]
        body = []
        for method, values in wall.items():
            reached = [v for v in values if v["outer_steps"] is not None]
            known = method in paper_time
            body.append(
                [
                    method,
                    f"{len(reached)}/{len(values)}",
                    _mean([v["outer_steps"] for v in reached], 0),
                    _mean([v["value"] for v in reached]),
                    _mean([v["seconds_from_timing"] for v in reached]),
                    ("never" if paper_time[method] is None else f"{paper_time[method]:.1f}") if known else "–",
                ]
            )
        lines += reporting.markdown_table(
            ["Algorithm", "seeds reaching it", "outer steps", "s (training)", "s (from timing)", "paper (s)"], body
        )

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


# ---------------------------------------------------------------------------------------------- figures
def plot_memory(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
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
    return reporting.save_figure(fig, path)


def plot_validation(curves: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Fig. 1 layout: meta-validation accuracy against the outer step, mean over seeds per algorithm."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for method in dict.fromkeys(c["method"] for c in curves.values()):
        per_step: dict[int, list[float]] = {}
        for c in (c for c in curves.values() if c["method"] == method):
            for v in c["curve"]:
                per_step.setdefault(v["step"], []).append(100 * v["accuracy"])
        steps = sorted(per_step)
        ax.plot(steps, [statistics.fmean(per_step[s]) for s in steps], marker=".", label=method)
    ax.set_xlabel("outer step")
    ax.set_ylabel("validation accuracy (%), mean over seeds")
    ax.legend(fontsize=7)
    return reporting.save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- write
def write(
    out: Path,
    plan: Plan,
    results: Mapping[str, dict],
    measured: Mapping[str, dict],
    equal_time: Mapping[str, dict],
    *,
    data: FewShotDataset,
    device: Any,
    protocol: MetaTestProtocol,
    untrained: str,
) -> tuple[dict[str, Any], str]:
    """Write results.json, results.md and figures/ into ``out``; returns (results.json's content, results.md)."""
    backbone = "-".join([str(plan.sizes["width"])] * 4)
    rows = rows_of(results, measured, equal_time, dataset=data.name, backbone=backbone, untrained=untrained)
    found = claims(rows, plan.methods, untrained, reporting.load_paper("rmmetal")["memory"])
    stand_in = data.name == "digits"
    saved = {
        "recipe": "rmmetal",
        "preset": plan.preset,
        "dataset": data.name,
        "device": str(device),
        "data": {
            "name": data.name,
            "source": "embedded" if stand_in else "real",
            "stand_in": stand_in,
            "description": data.description,
        },
        "plan": plan.describe(),
        "settings": asdict(plan.values),
        "protocol": asdict(protocol),
        "methods": plan.methods,
        "seeds": plan.seeds,
        "untrained": untrained,
        "claims": [c.as_dict() for c in found],
        "rows": rows,
        "runs": {name: {k: v for k, v in r.items() if k != "validation"} for name, r in results.items()},
        "measurements": {name: m for name, m in measured.items() if "rows" not in m},
        "validation_curves": {name: {"method": r["method"], "curve": r["validation"]} for name, r in results.items()},
    }
    markdown = results_markdown(saved, found)
    reporting.write_results(out, saved, markdown)
    figures = Path(out) / "figures"
    reporting.plot_claims(found, figures / "claims.png", title=f"RM-MetaL's claims on {data.name}")
    memory = [r for r in rows if r["metric"] == "peak_memory_bytes" and r["seed"] == plan.seeds[0]]
    if memory:
        plot_memory(memory, figures / "memory_vs_k.png")
    plot_validation(saved["validation_curves"], figures / "validation_curves.png")
    return saved, markdown
