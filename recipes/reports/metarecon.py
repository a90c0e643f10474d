"""The report of ``recipes/metarecon.py``: the paper's claims as paired differences over seeds, then
Tables 1-5 of Bian et al. (Journal of Imaging 2021) beside the paper's numbers, σ(ω_i) against the
sampling ratio, and figures.

Every number comes from the runs' ``result.json`` (per-slice test rows, σ(ω_i), wall times); this
module trains nothing and reads no image data except each run's saved example reconstructions.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import planning
import reporting
import torch
from matplotlib.patches import Rectangle

from engines import Graph
from problems.mri import MRISlices, summarize_rows, write_per_slice_csv

__all__ = ["METRICS", "TABLES", "claims", "summary_rows", "write"]

TABLES = {
    ("t1", "seen"): "table1",
    ("t1", "adapted radial"): "table2",
    ("t2", "seen"): "table3",
    ("t2", "adapted radial"): "table4",
    ("t2", "adapted cartesian"): "table5",
}
"""The paper's table of each (contrast, task group); the paper's seen tasks are radial 10-40 %."""
METRICS = ("psnr", "ssim", "nmse")
GROUPS = {
    "seen": "seen tasks (meta-trained)",
    "adapted radial": "unseen radial ratios (ω adapted, θ frozen)",
    "adapted cartesian": "unseen random Cartesian pattern (ω adapted, θ frozen)",
}


def task_group(row: Mapping[str, Any]) -> str:
    """``seen`` (ω meta-learned) or ``adapted <pattern>`` (ω adapted with θ frozen): the paper's tables."""
    return "seen" if row["seen"] else f"adapted {row['pattern']}"


def _paper_group(row: Mapping[str, Any]) -> str:
    return "seen" if row["tasks"] == "seen" else f"adapted {row['pattern']}"


def summary_rows(per_slice: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over test slices for every (contrast, seed, task, method, ablation, metric); σ(ω_i) as a
    metric. Rows of the λ ablation's runs carry ``ablation`` (``lam=0.001``, ``hypergrad=exact``)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in per_slice:
        groups.setdefault((r["contrast"], r["seed"], r["task"], r["method"], r.get("ablation")), []).append(r)
    out = []
    for (contrast, seed, task, method, ablation), members in groups.items():
        first = members[0]
        base = {"contrast": contrast, "seed": seed, "task": task, "method": method}
        base.update({k: first[k] for k in ("pattern", "ratio", "seen", "achieved_ratio")})
        base.update({"ablation": ablation} if ablation else {})
        for metric, s in summarize_rows(members, METRICS).items():
            out.append({**base, "metric": metric, "value": s["mean"], "std": s["std"], "n": s["n"]})
        if "sigma_omega" in first:
            out.append({**base, "metric": "sigma_omega", "value": first["sigma_omega"], "std": 0.0, "n": 1})
    return out


# ---------------------------------------------------------------------------------------- claims
def _gain(rows: Sequence[Mapping[str, Any]], contrast: str, group: str, baseline: str) -> dict[int, float]:
    """Per seed: test PSNR of meta-learning minus ``baseline``, averaged over the group's tasks."""
    keep = [
        {k: v for k, v in r.items() if k not in ("std", "n")}
        for r in rows
        if r["metric"] == "psnr" and r["contrast"] == contrast and task_group(r) == group
    ]
    return reporting.margins(keep, "method", "meta", [baseline])


def _sigma_drop(rows: Sequence[Mapping[str, Any]], contrast: str) -> dict[int, float]:
    """Per seed: σ(ω_i) of the lowest seen ratio minus σ(ω_i) of the highest."""
    out = {}
    sigma = [r for r in rows if r["metric"] == "sigma_omega" and r["contrast"] == contrast and r["seen"]]
    for seed in dict.fromkeys(r["seed"] for r in sigma):
        points = sorted((r["ratio"], r["value"]) for r in sigma if r["seed"] == seed)
        if len(points) > 1:
            out[seed] = points[0][1] - points[-1][1]
    return out


def time_saved(runs: Mapping[str, Mapping[str, Any]], plan: planning.Plan) -> list[float]:
    """Per seed and contrast: the share of conventional learning's wall time on the unseen tasks that
    adapting ω saves (the paper: "saving half of the training time"). It follows from the two budgets
    as much as from the methods, so it is reported beside the paper's claim, not tested as one."""
    out = []
    for seed, contrast in itertools.product(plan.seeds, plan.settings["contrasts"]):
        times = {"adapt": 0.0, "conventional": 0.0}
        for spec in plan.runs:
            unseen = spec.method == "adapt" or spec.get("task") in plan.settings["unseen"]
            if spec.seed == seed and spec.get("contrast") == contrast and unseen and spec.name in runs:
                times[spec.method] += runs[spec.name]["wall_time_s"]
        if times["adapt"] > 0 and times["conventional"] > 0:
            out.append(1.0 - times["adapt"] / times["conventional"])
    return out


def claims(rows: Sequence[Mapping[str, Any]], paper: Mapping) -> list[reporting.Claim]:
    """The paper's claims, per contrast, as paired differences over seeds (> 0 when the claim holds).
    ``rows`` are :func:`summary_rows`; those of the λ ablation's runs (``ablation``) test the first
    claim again with that meta-learning setting (is a failure the model's or the optimiser's?)."""
    said = paper["claims"]
    main = [r for r in rows if "ablation" not in r]
    out = []
    for contrast in dict.fromkeys(r["contrast"] for r in main):
        c = contrast.upper()
        groups = {task_group(r) for r in main if r["contrast"] == contrast}
        seen_gain = said.get(f"meta_gain_seen_{contrast}_db")
        seen_where = "Table 1" if contrast == "t1" else "Table 3"
        gain_text = f"; paper +{seen_gain} dB" if seen_gain else ""
        out.append(
            reporting.Claim(
                f"Meta-learning beats conventional learning on the seen ratios, {c} ({seen_where}{gain_text})",
                f"meta − conventional, test PSNR (dB), {c}, mean over the seen tasks",
                _gain(main, contrast, "seen", "conventional"),
            )
        )
        for label in dict.fromkeys(r["ablation"] for r in rows if "ablation" in r and r["contrast"] == contrast):
            variant = [{k: v for k, v in r.items() if k != "ablation"} for r in rows if r.get("ablation") == label]
            out.append(
                reporting.Claim(
                    f"... also when meta-learned with {label.replace('hypergrad=', '')}, {c} (our ablation)",
                    f"meta ({label}) − conventional, test PSNR (dB), {c}, mean over the seen tasks",
                    _gain(
                        [*variant, *(r for r in main if r["method"] == "conventional")],
                        contrast,
                        "seen",
                        "conventional",
                    ),
                )
            )
        out.append(
            reporting.Claim(
                f"Meta-learning beats zero-filling on the seen ratios, {c} ({seen_where})",
                f"meta − zero-filled, test PSNR (dB), {c}, mean over the seen tasks",
                _gain(main, contrast, "seen", "zero-filled"),
            )
        )
        for group, where in (
            ("adapted radial", "Tables 2, 4; paper +1.22 dB"),
            ("adapted cartesian", "Table 5; paper +1.87 dB"),
        ):
            pattern = group.split()[1]
            out.append(
                reporting.Claim(
                    f"Adapting ω alone beats conventional learning on unseen {pattern} tasks, {c} ({where})",
                    f"adapted meta − conventional, test PSNR (dB), {c}, mean over the unseen {pattern} tasks",
                    _gain(main, contrast, group, "conventional") if group in groups else {},
                    "" if group in groups else f"no unseen {pattern} task was run",
                )
            )
        out.append(
            reporting.Claim(
                f"A lower sampling ratio learns a larger σ(ω_i), {c} (Section 5.3, {seen_where})",
                f"σ(ω_i) at the lowest − at the highest seen ratio, {c}",
                _sigma_drop(main, contrast),
            )
        )
    return out


# ---------------------------------------------------------------------------------------- results
def write(
    out: Path,
    plan: planning.Plan,
    runs: Mapping[str, Mapping[str, Any]],
    *,
    data: Mapping[str, MRISlices],
    graph: Graph,
) -> dict[str, Any]:
    """Write results.json, results.md, per_slice.csv and figures/ into ``out``; returns results.json's content."""
    out = Path(out)
    per_slice = [r for result in runs.values() for r in result["rows"]]
    every = summary_rows(per_slice)
    rows = [r for r in every if "ablation" not in r]
    paper = reporting.load_paper("metarecon")
    tested = claims(every, paper)
    first = next(iter(data.values()))
    main_meta = {
        spec.name: runs[spec.name]
        for spec in plan.runs
        if spec.method == "meta" and spec.name in runs and not {"lam", "hypergrad"} & dict(spec.variant).keys()
    }
    results = {
        "recipe": "metarecon",
        "preset": plan.preset,
        "plan": plan.describe(),
        "data": {
            "name": first.name,
            "source": first.source,
            "stand_in": first.stand_in,
            "description": first.description,
            "contrasts": list(data),
            "counts": first.counts(),
        },
        "claims": [c.as_dict() for c in tested],
        "paper_summary": paper_summary(tested, paper, time_saved(runs, plan)),
        "rows": [{**r, "paper_table": TABLES.get((r["contrast"], task_group(r)))} for r in rows],
        "ablation": ablation_rows(every, runs, plan),
        "eps_rule": eps_rule_rows(main_meta),
        "runs": {name: {k: v for k, v in r.items() if k != "rows"} for name, r in runs.items()},
        "sigma_claim": sigma_trend(rows, paper),
    }
    write_per_slice_csv(out / "per_slice.csv", per_slice)
    reporting.write_results(out, results, markdown(results, tested, paper))
    figures = out / "figures"
    reporting.plot_claims(tested, figures / "claims.png", title="Bian et al.: paired differences over seeds")
    plot_sigma(rows, paper, figures / "sigma_vs_ratio.png", first.stand_in)
    for (contrast, group), examples in example_groups(plan, out).items():
        tag = " (stand-in data)" if first.stand_in else ""
        plot_reconstructions(
            examples,
            figures / f"reconstructions_{contrast}_{group}.png",
            f"{contrast.upper()} {group} tasks: reconstructions, zoom, |error|, masks{tag}",
        )
    first_seed = {
        run_label(spec): out / "runs" / spec.name
        for spec in plan.runs
        if spec.method == "meta"
        and spec.seed == plan.seeds[0]
        and spec.get("contrast") == plan.settings["contrasts"][0]
    }
    for key in ("theta_ratio", "omega_ratio"):
        reporting.plot_learning_curves(
            first_seed, figures / f"{key}.png", level="validation", key=key, title=f"{key} during meta-learning"
        )
    graph.draw(figures / "graph.png")
    return results


def run_label(spec: planning.RunSpec, settings: Mapping[str, Any] | None = None) -> str:
    """``penalty λ0=1e-05`` or ``exact``: how a meta-learning run's hypergradient is named in tables."""
    method = spec.get("hypergrad", (settings or {}).get("hypergrad", "penalty"))
    lam = spec.get("lam", (settings or {}).get("lam"))
    return f"penalty λ0={lam:g}" if method == "penalty" and lam is not None else method


def ablation_rows(
    every: Sequence[Mapping[str, Any]], runs: Mapping[str, Mapping[str, Any]], plan: planning.Plan
) -> list[dict[str, Any]]:
    """Per meta-learning setting (the main run and every ablation run) and seed: mean test PSNR over the
    seen tasks, σ(ω_i) per task and the two ratios of :mod:`problems.metarecon.balance` at the kept checkpoint."""
    out = []
    for spec in plan.runs:
        if spec.method != "meta" or spec.name not in runs:
            continue
        run = runs[spec.name]
        label = ",".join(f"{k}={v}" for k, v in spec.variant if k in ("lam", "hypergrad")) or None
        psnr = [
            r["value"]
            for r in every
            if r.get("ablation") == label
            and r["metric"] == "psnr"
            and r["method"] == "meta"
            and r["seen"]
            and r["seed"] == spec.seed
            and r["contrast"] == spec.get("contrast")
        ]
        out.append(
            {
                "setting": run_label(spec, plan.settings),
                "contrast": spec.get("contrast"),
                "seed": spec.seed,
                "psnr": statistics.fmean(psnr) if psnr else float("nan"),
                "sigma": run["sigma"],
                **{k: run.get(k, float("nan")) for k in ("theta_ratio", "omega_ratio", "lam")},
            }
        )
    return out


def eps_rule_rows(main_meta: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Line 15 of Algorithm 1 at every σ tried, averaged over the main meta-learning runs (seeds)."""
    by_sigma: dict[float, list[Mapping[str, Any]]] = {}
    for run in main_meta.values():
        for r in run.get("eps_rule", []):
            by_sigma.setdefault(r["sigma"], []).append(r)
    keys = ("eps_reduced", "grad_over_eps_threshold", "psnr")
    eps0 = [run["eps0"] for run in main_meta.values() if "eps0" in run]
    return [
        {
            "sigma": sigma,
            **{k: statistics.fmean(r[k] for r in rs) for k in keys},
            "n": len(rs),
            "eps0": statistics.fmean(eps0),
        }
        for sigma, rs in sorted(by_sigma.items())
    ]


def paper_summary(
    tested: Sequence[reporting.Claim], paper: Mapping[str, Any], saved: Sequence[float]
) -> list[dict[str, Any]]:
    """The paper's summary numbers (abstract, Sections 5.3-5.4) beside ours: the per-seed values of the
    matching claims pooled over the contrasts run, and the share of training time adaptation saves."""
    said = paper["claims"]
    wanted = [  # (what, the claim's test starts with, and holds, the paper's number under this key)
        (
            "PSNR gain of meta over conventional, seen ratios, T1",
            "meta − conventional",
            ", T1,",
            "meta_gain_seen_t1_db",
        ),
        (
            "PSNR gain of meta over conventional, seen ratios, T2",
            "meta − conventional",
            ", T2,",
            "meta_gain_seen_t2_db",
        ),
        (
            "PSNR gain of adapted ω over conventional, unseen radial",
            "adapted meta",
            "radial",
            "meta_gain_unseen_radial_db",
        ),
        (
            "PSNR gain of adapted ω over conventional, unseen Cartesian",
            "adapted meta",
            "cartesian",
            "meta_gain_cartesian_t2_db",
        ),
    ]
    rows = []
    for what, start, inside, key in wanted:
        values = [v for c in tested if c.test.startswith(start) and inside in c.test for v in c.per_seed.values()]
        rows.append((what, said[f"{key}_where"], f"{said[key]:+.2f} dB", reporting.summarize(values), " dB"))
    time = "share of conventional training time (wall clock, unseen tasks) saved by adapting ω instead"
    key = "adaptation_time_fraction"
    rows.append((time, said[f"{key}_where"], f"{said[key]:.2f}", reporting.summarize(saved), ""))
    out = []
    for what, where, theirs, s, unit in rows:
        ours = "not run" if s.n == 0 else f"{s.mean:+.2f}{unit} (± {s.std:.2f}, {s.n} seed × contrast)"
        out.append({"summary": what, "where": where, "paper": theirs, "ours": ours})
    return out


def sigma_trend(rows: Sequence[Mapping[str, Any]], paper: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Section 5.3: lower sampling ratios learn larger σ(ω_i); the seed-mean σ(ω_i) of every task group
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

    ours = reporting.aggregate([r for r in rows if r["metric"] == "sigma_omega" and r["method"] == "meta"])
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


def markdown(results: Mapping[str, Any], tested: Sequence[reporting.Claim], paper: Mapping[str, Any]) -> str:
    """results.md: claims, data, the summary numbers beside the paper's, Tables 1-5, σ(ω_i), safeguard."""
    plan = results["plan"]
    lines = ["# Meta-learned LOA reconstruction (Bian et al., Journal of Imaging 2021)", ""]
    lines += ["## The paper's claims, tested", ""]
    lines += reporting.claims_table(tested, digits=3)
    lines += ["", "![claims](figures/claims.png)", ""]
    data = results["data"]
    lines += [reporting.data_statement("stand-in" if data["stand_in"] else "real", data["description"]), ""]
    body = [[k, ", ".join(map(str, v)) if isinstance(v, list) else v] for k, v in plan.items()]
    lines += ["## Plan", "", *reporting.markdown_table(["setting", "value"], body)]
    lines += [
        "",
        "Paper: BraTS 2018 HGG, 160×180, 11 phases with stair training, 100 epochs of meta-learning, 2000 of "
        "conventional learning. Cells: mean over seeds ± std over seeds (one seed: ± std over test slices); the "
        f"paper's PSNR (mean ± std over its 60 test slices) in brackets. {paper['missing']}",
        "",
    ]
    lines += ["## The paper's summary numbers beside ours", ""]
    body = [[r["summary"], r["where"], r["paper"], r["ours"]] for r in results["paper_summary"]]
    lines += [*reporting.markdown_table(["summary claim", "where", "paper", "ours"], body), ""]
    lines += tables(results["rows"], paper)
    lines += sigma_section(results["sigma_claim"])
    lines += ablation_section(results["ablation"])
    lines += eps_section(results["eps_rule"])
    lines += ["", "## The safeguard of Algorithm 1", "", "Fraction of phase-samples whose u-step was refused:", ""]
    for name, run in results["runs"].items():
        if "safeguard" in run:
            taken = run["safeguard"]["safeguard_taken_mean"]
            lines.append(
                f"- {name}: {taken:.3f} during meta-learning (kept step {run['best_step']}, {run['phases']} phases)"
            )
    return "\n".join(lines) + "\n"


def ablation_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The λ ablation: is the penalty method bilevel at this λ, and what does λ change?"""
    if not rows:
        return []
    lines = [
        "",
        "## Is the penalty method bilevel here? The λ ablation",
        "",
        "θ-ratio = λ‖∇²_θθ L_tr ∇_θ L_tr‖ / ‖∇_θ L_val‖, the share of θ's step that comes from the training "
        "split (0 for other methods, whose θ descends L_tr); ω-ratio = ‖hypergradient through θ‖ / ‖∇_ω L_val‖. "
        "Both on fixed batches at the kept checkpoint (figures/theta_ratio.png, figures/omega_ratio.png: "
        "during training). Mean over seeds (± std).",
        "",
    ]
    body = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        tasks = list(mine[0]["sigma"])
        cells = [reporting.cell(*_mean_std([r["psnr"] for r in mine]), n=len(mine), digits=3)]
        cells += [f"{statistics.fmean(r[k] for r in mine):.3g}" for k in ("theta_ratio", "omega_ratio")]
        cells.append(", ".join(f"{statistics.fmean(r['sigma'][t] for r in mine):.3f}" for t in tasks))
        body.append([setting, *cells, len(mine)])
    header = ["meta-learning", "test PSNR, seen tasks (dB)", "θ-ratio", "ω-ratio", "σ(ω_i) (seen tasks)", "seeds"]
    return [*lines, *reporting.markdown_table(header, body)]


def eps_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Line 15 of Algorithm 1: does ε ever shrink, and at which σ would it?"""
    if not rows:
        return []
    lines = [
        "",
        "## The ε reduction of Algorithm 1 (line 15)",
        "",
        f"ε ← γε when ‖∇φ_ε(x_{{t+1}})‖ < σγε. The trained networks (learned ε₀ = {rows[0]['eps0']:.3g}) were "
        "run on the test slices of the seen tasks with other values of σ (trained with σ = 1): the fraction of "
        "phase-samples where ε was reduced, the median of ‖∇φ_ε‖ / σγε (the rule fires below 1) and the PSNR.",
        "",
    ]
    body = [
        [f"{r['sigma']:g}", f"{r['eps_reduced']:.3f}", f"{r['grad_over_eps_threshold']:.3g}", f"{r['psnr']:.2f}"]
        for r in rows
    ]
    return [*lines, *reporting.markdown_table(["σ", "ε reduced", "median ‖∇φ_ε‖ / σγε", "test PSNR (dB)"], body)]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    s = reporting.summarize(values)
    return s.mean, s.std


def tables(rows: Sequence[Mapping[str, Any]], paper: Mapping[str, Any]) -> list[str]:
    """Tables 1-5 layout: per (contrast, task group), every task × method with PSNR, SSIM, NMSE, σ(ω_i)."""
    key = ("table", "pattern", "ratio", "method", "metric")
    theirs = {tuple(round(r[k], 4) if k == "ratio" else r[k] for k in key): r for r in paper["rows"]}
    seeds = len({r["seed"] for r in rows})
    merged = (
        reporting.aggregate([{k: v for k, v in r.items() if k not in ("std", "n")} for r in rows])
        if seeds > 1
        else rows
    )
    index = {(r["contrast"], r["task"], r["method"], r["metric"]): r for r in merged}
    groups: dict[tuple[str, str], list[str]] = {}
    for r in merged:
        if r["method"] == "meta" and r["metric"] == "psnr":
            groups.setdefault((r["contrast"], task_group(r)), []).append(r["task"])
    lines = []
    for (contrast, group), tasks in groups.items():
        table = TABLES.get((contrast, group))
        heading = f"Table {table[-1]} layout" if table else "no counterpart in the paper"
        lines += [f"## {contrast.upper()}, {GROUPS.get(group, group)} — {heading}", ""]
        body = []
        for task, method in itertools.product(dict.fromkeys(tasks), ("zero-filled", "conventional", "meta")):
            first = index.get((contrast, task, method, "psnr"))
            if first is None:
                continue
            cells = []
            for metric in (*METRICS, "sigma_omega"):
                r = index.get((contrast, task, method, metric))
                ref = theirs.get((table, first["pattern"], round(first["ratio"], 4), method, metric))
                digits = 2 if metric == "psnr" else 4
                text = "–" if r is None else reporting.cell(r["value"], r["std"], n=r["n"], digits=digits)
                if ref is not None:
                    text += f" ({ref['value']:.2f} ± {ref['std']:.2f})" if "std" in ref else f" ({ref['value']:.4f})"
                cells.append(text)
            body.append([f"{first['ratio'] * 100:g}%", method, *cells])
        lines += reporting.markdown_table(["CS ratio", "method", "PSNR (dB)", "SSIM", "NMSE", "σ(ω_i)"], body)
        lines.append("")
    return lines


def sigma_section(trends: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "## Does a lower sampling ratio learn a larger σ(ω_i)?",
        "",
        'Section 5.3: "small CS ratio needs higher value of σ(ω_i)".',
        "",
    ]
    body = []
    for c in trends:
        theirs = "–" if c["paper"] is None else ("yes" if c["paper"]["strictly_decreasing"] else "no")
        ratios = ", ".join(f"{100 * x:g}%" for x in c["ratios"])
        sigmas = ", ".join(f"{s:.3f}" for s in c["sigma_omega"])
        body.append(
            [
                c["contrast"],
                c["group"],
                ratios,
                sigmas,
                "yes" if c["strictly_decreasing"] else "no",
                f"{c['spearman_rho']:.2f}",
                theirs,
            ]
        )
    header = [
        "contrast",
        "tasks",
        "ratios",
        "σ(ω_i), mean over seeds",
        "strictly decreasing",
        "Spearman ρ",
        "paper: decreasing",
    ]
    return [*lines, *reporting.markdown_table(header, body)]


# ---------------------------------------------------------------------------------------- figures
def example_groups(plan: planning.Plan, out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The first seed's saved example reconstructions, per (contrast, task group): seen, then unseen by pattern."""
    merged: dict[str, dict[str, Any]] = {}
    for spec in plan.runs:
        path = out / "runs" / spec.name / "examples.pt"
        if spec.seed != plan.seeds[0] or not path.is_file():
            continue
        saved = torch.load(path, map_location="cpu", weights_only=True)
        contrast = merged.setdefault(spec.get("contrast"), {"reference": saved["reference"], "tasks": {}})
        for task, example in saved["examples"].items():
            contrast["tasks"].setdefault(task, {}).update(example)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    seen = set(plan.settings["seen"])
    for contrast, found in merged.items():
        for task, example in found["tasks"].items():
            group = "seen" if task in seen else task.split("-")[0]
            entry = groups.setdefault((contrast, group), {"reference": found["reference"], "tasks": {}})
            entry["tasks"][task] = example
    return groups


def plot_reconstructions(examples: Mapping[str, Any], path: Path, title: str) -> Path:
    """Meta and conventional reconstructions with a zoomed inset, their error maps and the masks."""
    reference = examples["reference"].abs()
    keys = [k for k, ex in examples["tasks"].items() if "meta" in ex and "conventional" in ex]
    h, w = reference.shape
    box = (h // 3, w // 3, max(8, h // 4), max(8, w // 4))  # zoom region: row, col, height, width
    methods = (("meta", "meta-learning"), ("conventional", "conventional"))
    fig, axes = plt.subplots(5, len(keys) + 1, figsize=(2.2 * (len(keys) + 1), 11), squeeze=False)
    errors = [examples["tasks"][k][m] - reference for k in keys for m, _ in methods]
    vmax = max([float(e.abs().max()) for e in errors] + [1e-12])
    for ax in axes.flat:
        ax.set_axis_off()
    _image_with_zoom(axes[0, 0], reference, box, "ground truth")
    im = None
    for c, key in enumerate(keys, start=1):
        ex = examples["tasks"][key]
        for r, (method, label) in enumerate(methods):
            _image_with_zoom(axes[r, c], ex[method], box, f"{label}\n{key}" if r == 0 else label)
            im = axes[r + 2, c].imshow((ex[method] - reference).abs().numpy(), cmap="inferno", vmin=0, vmax=vmax)
            axes[r + 2, c].set_title(f"|error| {label}", fontsize=7)
        axes[4, c].imshow(ex["mask"].numpy(), cmap="gray")
        axes[4, c].set_title(f"mask {100 * float(ex['mask'].mean()):.1f}%", fontsize=7)
    if im is not None:
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


def plot_sigma(rows: Sequence[Mapping[str, Any]], paper: Mapping[str, Any], path: Path, stand_in: bool) -> Path:
    """σ(ω_i) against the sampling ratio per contrast and task group: ours (solid, seeds as dots) and the paper's (dashed)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ours = [r for r in rows if r["metric"] == "sigma_omega" and r["method"] == "meta"]
    for contrast, group in dict.fromkeys((r["contrast"], task_group(r)) for r in ours):
        mine = [r for r in ours if r["contrast"] == contrast and task_group(r) == group]
        ratios = sorted({r["ratio"] for r in mine})
        means = [statistics.fmean(r["value"] for r in mine if r["ratio"] == x) for x in ratios]
        line = ax.plot([100 * x for x in ratios], means, marker="o", label=f"ours {contrast} {group}")[0]
        ax.plot([100 * r["ratio"] for r in mine], [r["value"] for r in mine], ".", color=line.get_color(), alpha=0.5)
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
