"""The reporting layer every recipe shares: seed aggregation, paired differences, Markdown tables
beside the paper's numbers, results files and figures.

A recipe reads presets -> graph -> run -> report; this module is the *report* part, so that
results.json / results.md look alike across recipes and nobody re-implements "mean ± std over
seeds" or "ours (paper)" cells. Nothing here trains anything.

Conventions:

* A *row* is a flat dict with at least ``metric`` and ``value`` and whatever keys identify it
  (``method``, ``dataset``, ``task``, ``seed``...). Rows are what ``results.json["rows"]`` holds.
* :func:`aggregate` groups rows over seeds (or any key) into mean / std / n.
* :func:`paired_differences` compares methods seed by seed against a baseline (paired design:
  same data subset and initialisation within a seed) and summarises the differences.
* :func:`cell` formats "ours ± std (paper)" consistently.
* A :class:`Claim` is one of the paper's claims tested on a run: per-seed paired differences that
  are positive when the claim holds, a 95 % interval on their mean and a verdict;
  :func:`claims_table` prints them, :func:`plot_claims` draws them.
* :func:`plot_learning_curves` draws a logged value of ``metrics.jsonl`` for several runs.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

__all__ = [
    "ROOT",
    "Claim",
    "Summary",
    "aggregate",
    "cell",
    "claims_table",
    "data_statement",
    "heatmap",
    "load_paper",
    "margins",
    "markdown_table",
    "paired_differences",
    "plot_claims",
    "plot_learning_curves",
    "save_figure",
    "summarize",
    "write_json",
    "write_results",
]

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (0 for one value) and count of finite values."""

    mean: float
    std: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"value": self.mean, "std": self.std, "n": self.n}


def summarize(values: Iterable[float]) -> Summary:
    """Mean ± std of the finite values (NaN/inf are skipped and do not count)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return Summary(float("nan"), float("nan"), 0)
    return Summary(statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0, len(finite))


def aggregate(rows: Sequence[Mapping[str, Any]], *, over: str = "seed", value: str = "value") -> list[dict[str, Any]]:
    """Collapse rows that differ only in ``over`` into one row with ``value``/``std``/``n``.

    Keys other than ``over``, ``value`` (and ``std``/``n`` already present) identify a group; the
    first row's order of groups is kept.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        key = tuple(sorted((k, _hashable(v)) for k, v in row.items() if k not in (over, value, "std", "n")))
        groups.setdefault(key, []).append(row)
    out = []
    for members in groups.values():
        s = summarize(r[value] for r in members)
        base = {k: v for k, v in members[0].items() if k not in (over, value, "std", "n")}
        out.append({**base, value: s.mean, "std": s.std, "n": s.n, f"{over}s": [r.get(over) for r in members]})
    return out


def paired_differences(
    rows: Sequence[Mapping[str, Any]],
    *,
    baseline: str,
    method_key: str = "method",
    pair_key: str = "seed",
    value: str = "value",
) -> list[dict[str, Any]]:
    """Per-method difference to ``baseline`` within each pair (seed), summarised over pairs.

    Rows are matched on every key except ``method_key`` and ``value`` (so the same seed, data
    subset, test set, metric...). Returns one row per (method != baseline, group) with the mean
    and std of the paired differences and how many pairs entered.
    """

    def group_key(row: Mapping[str, Any], drop: tuple[str, ...]) -> tuple:
        return tuple(sorted((k, _hashable(v)) for k, v in row.items() if k not in drop))

    base = {group_key(r, (method_key, value, "std", "n")): r[value] for r in rows if r.get(method_key) == baseline}
    diffs: dict[tuple, list[float]] = {}
    firsts: dict[tuple, Mapping[str, Any]] = {}
    for r in rows:
        if r.get(method_key) == baseline:
            continue
        ref = base.get(group_key(r, (method_key, value, "std", "n")))
        if ref is None:
            continue
        key = (r.get(method_key), group_key(r, (method_key, pair_key, value, "std", "n")))
        diffs.setdefault(key, []).append(float(r[value]) - float(ref))
        firsts.setdefault(key, r)
    out = []
    for key, values in diffs.items():
        s = summarize(values)
        row = {k: v for k, v in firsts[key].items() if k not in (pair_key, value, "std", "n")}
        out.append({**row, "baseline": baseline, "difference": s.mean, "std": s.std, "pairs": s.n})
    return out


@dataclass(frozen=True)
class Claim:
    """A claim of the paper tested on this run by paired differences, one per seed, > 0 when it holds.

    Attributes:
        text: the claim as the paper makes it, with where (``"Ours beats no augmentation (Table 2)"``).
        test: the difference measured (``"Ours − none, Jaccard, in distribution"``).
        per_seed: ``{seed: difference}``; each difference is paired (same data, initialisation and
            batches within a seed).
        untestable: why the claim cannot be tested at this scale (then ``per_seed`` may be empty).
    """

    text: str
    test: str
    per_seed: Mapping[int, float]
    untestable: str = ""

    def interval(self, level: float = 0.95) -> tuple[float, float, float]:
        """Mean of the differences and its two-sided Student-t interval (NaN bounds below 2 seeds)."""
        s = summarize(self.per_seed.values())
        if s.n < 2:
            return s.mean, float("nan"), float("nan")
        from scipy.stats import t

        half = float(t.ppf(0.5 + level / 2, s.n - 1)) * s.std / math.sqrt(s.n)
        return s.mean, s.mean - half, s.mean + half

    def verdict(self) -> str:
        """``reproduced`` (interval above 0), ``not reproduced`` (interval includes or is below 0, saying
        which) or ``not testable at this scale`` (with the reason)."""
        if self.untestable:
            return f"not testable at this scale: {self.untestable}"
        n = summarize(self.per_seed.values()).n
        if n < 3:
            return f"not testable at this scale: {n} seed(s), at least 3 are needed for an interval"
        mean, low, high = self.interval()
        if low > 0:
            return "reproduced"
        if high < 0:
            return "not reproduced (the opposite holds: interval below 0)"
        return "not reproduced (the interval includes 0)"

    def as_dict(self) -> dict[str, Any]:
        mean, low, high = self.interval()
        return {
            "claim": self.text,
            "test": self.test,
            "per_seed": {str(k): v for k, v in self.per_seed.items()},
            "mean": mean,
            "ci95": [low, high],
            "verdict": self.verdict(),
        }


def margins(
    rows: Sequence[Mapping[str, Any]],
    key: str,
    winner: Any,
    others: Sequence[Any],
    keep: Callable[[Mapping[str, Any]], bool] = lambda r: True,
    *,
    pair_key: str = "seed",
    value: str = "value",
) -> dict[Any, float]:
    """Per pair (seed): the mean over cells of ``value(winner) − max value(others)``.

    ``key`` names what varies (method, λ...); a *cell* is every other key of a row (test set, size,
    task...) but the pair key, and only cells holding the winner and every other are used. Rows
    ``keep`` rejects are ignored. The result feeds :class:`Claim`.
    """
    cells: dict[tuple, dict[Any, float]] = {}
    for r in rows:
        if keep(r):
            cell_key = tuple(sorted((k, _hashable(v)) for k, v in r.items() if k not in (key, value, "std", "n")))
            cells.setdefault(cell_key, {})[r[key]] = float(r[value])
    per_pair: dict[Any, list[float]] = {}
    for cell_key, values in cells.items():
        if winner in values and all(o in values for o in others):
            pair = dict(cell_key)[pair_key]
            per_pair.setdefault(pair, []).append(values[winner] - max(values[o] for o in others))
    return {pair: statistics.fmean(d) for pair, d in per_pair.items()}


def claims_table(claims: Sequence[Claim], *, digits: int = 3) -> list[str]:
    """The claims as a Markdown table: claim, test, mean difference [95 % interval], seeds, verdict."""
    body = []
    for c in claims:
        mean, low, high = c.interval()
        n = summarize(c.per_seed.values()).n
        if n == 0:
            measured = "–"
        elif n < 2:
            measured = f"{mean:+.{digits}f}"
        else:
            measured = f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
        body.append([c.text, c.test, measured, n, c.verdict()])
    return markdown_table(["claim (paper)", "paired difference tested", "mean [95 % CI]", "seeds", "verdict"], body)


def plot_claims(claims: Sequence[Claim], path: Path, *, title: str = "") -> Path:
    """One horizontal bar per claim: mean paired difference with its 95 % interval, seeds as dots."""
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.5 * max(1, len(claims))))
    for i, c in enumerate(claims):
        mean, low, high = c.interval()
        values = list(c.per_seed.values())
        if values:
            ax.plot(values, [i] * len(values), "o", color="#7f7f7f", ms=3, zorder=3)
        if math.isfinite(mean):
            color = "#2e7d32" if c.verdict() == "reproduced" else "#c62828"
            err = [[mean - low], [high - mean]] if math.isfinite(low) else None
            ax.errorbar([mean], [i], xerr=err, fmt="s", color=color, capsize=3, zorder=4)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(claims)), [c.test for c in claims], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference (> 0: the claim holds); square = mean with 95 % CI, dots = seeds", fontsize=8)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_learning_curves(
    runs: Mapping[str, Path], path: Path, *, level: str, key: str = "loss", title: str = "", smooth: int = 1
) -> Path:
    """``key`` of ``level`` against the global step, one line per run (``{label: run folder}``), read from
    each run's ``metrics.jsonl``; ``smooth`` > 1 draws a running mean over that many points."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, run_dir in runs.items():
        steps, values = [], []
        metrics = Path(run_dir) / "metrics.jsonl"
        if not metrics.is_file():
            continue
        for line in metrics.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("level") == level and isinstance(entry.get(key), (int, float)):
                steps.append(entry["step"])
                values.append(float(entry[key]))
        if smooth > 1 and len(values) >= smooth:
            values = [statistics.fmean(values[max(0, i - smooth + 1) : i + 1]) for i in range(len(values))]
        ax.plot(steps, values, lw=1.1, label=label)
    ax.set_xlabel("global step")
    ax.set_ylabel(f"{level}: {key}")
    ax.set_title(title, fontsize=9)
    if runs:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def cell(
    mean: float | None,
    std: float | None = None,
    *,
    n: int = 1,
    paper: float | None = None,
    digits: int = 3,
    scale: float = 1.0,
) -> str:
    """``"0.812 ± 0.010 (0.830)"``: ours, ± std when more than one run entered, the paper's number in
    brackets when it reports the same setting; ``"–"`` for a missing value."""
    if mean is None or not math.isfinite(float(mean)):
        text = "–"
    else:
        text = f"{scale * mean:.{digits}f}"
        if std is not None and n > 1:
            text += f" ± {scale * std:.{digits}f}"
    if paper is not None:
        text += f" ({paper:.{digits}f})"
    return text


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A GitHub Markdown table as lines."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def load_paper(recipe: str) -> dict[str, Any]:
    """The paper's reported numbers for ``recipe`` (``assets/paper_results/<recipe>.json``)."""
    path = ROOT / "assets" / "paper_results" / f"{recipe}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no paper results for recipe '{recipe}' at {path}")
    return json.loads(path.read_text())


def data_statement(source: str, description: str) -> str:
    """The sentence every results.md carries about where its data came from."""
    if source in ("embedded", "embedded-sample", "synthetic", "stand-in"):
        return (
            f"**Stand-in data, not the paper's.** {description} These numbers show that the pipeline runs "
            "end to end; they are not comparable with the paper's."
        )
    return f"Data: {description}"


def write_json(path: Path, payload: Any) -> None:
    """Atomic JSON write (temporary file beside it, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_jsonable))
    os.replace(tmp, path)


def write_results(out: Path, results: Mapping[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``out`` (both atomically)."""
    out = Path(out)
    write_json(out / "results.json", results)
    md = out / "results.md"
    tmp = md.with_name(".results.md.tmp")
    tmp.write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    os.replace(tmp, md)
    return out / "results.json", md


def save_figure(fig: plt.Figure, path: Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG (folders created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def heatmap(
    matrix: Any,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: Path,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    fmt: str = "{:.2f}",
    cmap: str = "viridis",
) -> Path:
    """A labelled heat map with the value written in every cell (e.g. learned task weights)."""
    values = torch.as_tensor(matrix, dtype=torch.float64).cpu().numpy()
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(col_labels), 0.8 + 0.5 * len(row_labels)))
    im = ax.imshow(values, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, fontsize=8)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    mid = (values.max() + values.min()) / 2
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(
                j,
                i,
                fmt.format(values[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="black" if values[i, j] > mid else "white",
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def rows_where(rows: Iterable[Mapping[str, Any]], **match: Any) -> list[Mapping[str, Any]]:
    """The rows whose keys equal every ``match`` value."""
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def lookup(rows: Iterable[Mapping[str, Any]], key: Callable[[Mapping[str, Any]], Any]) -> dict[Any, Mapping[str, Any]]:
    """Index rows by ``key(row)`` (last wins)."""
    return {key(r): r for r in rows}


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if torch.is_tensor(obj):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
