"""The doctor's findings as data, Markdown, JSON and a figure, with the recommendation.

Per upper level: the reference (its norms and its trust), and for every candidate method, per path
and in total (direct gradient plus every path, what the upper optimizer receives): the cosine with
the reference, the norm ratio ``||method|| / ||reference||``, the relative error
``||method - reference|| / ||reference||``, the median time and the peak memory of the hypergradient
computation, and how the method's total agrees with the finite-difference slopes. Methods that do
not apply are listed with the reason, methods that failed with their error.

Recommendation: the cheapest method (median time, then peak memory) whose cosine is at least the
threshold on every path and in total.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = ["Comparison", "DoctorReport", "MethodRow", "ReferenceInfo", "UpperReport", "compare", "trust_verdict"]

TRUST_LEVELS = ((1e-3, "agrees"), (1e-1, "roughly agrees"))


def _norm(vectors: Sequence[Tensor]) -> float:
    return math.sqrt(sum(float((v.detach().double() ** 2).sum()) for v in vectors))


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return sum(float((x.detach().double() * y.detach().double()).sum()) for x, y in zip(a, b))


@dataclass
class Comparison:
    """A hypergradient against the reference: ``cosine`` and ``norm_ratio`` are None where a norm is 0."""

    cosine: float | None
    norm_ratio: float | None
    relative_error: float | None
    norm: float
    reference_norm: float


def compare(vector: Sequence[Tensor], reference: Sequence[Tensor]) -> Comparison:
    """Cosine, norm ratio and relative error of ``vector`` against ``reference`` (in float64)."""
    norm, ref = _norm(vector), _norm(reference)
    diff = _norm([a.double() - b.double() for a, b in zip(vector, reference)])
    cosine = _dot(vector, reference) / (norm * ref) if norm > 0 and ref > 0 else None
    return Comparison(
        cosine=cosine,
        norm_ratio=norm / ref if ref > 0 else None,
        relative_error=diff / ref if ref > 0 else None,
        norm=norm,
        reference_norm=ref,
    )


def trust_verdict(disagreement: float | None, reproducible: str | None) -> str:
    """``agrees`` (≤ 1e-3), ``roughly agrees`` (≤ 1e-1), ``disagrees``; or why it was not measured."""
    if reproducible is not None:
        return f"void: the re-runs saw different data ({reproducible})"
    if disagreement is None:
        return "not measured"
    for bound, word in TRUST_LEVELS:
        if disagreement <= bound:
            return word
    return "disagrees"


@dataclass
class ReferenceInfo:
    """What the reference is at this step and how far the finite-difference check trusts it."""

    available: bool
    reason: str | None
    path_norms: dict[str, float] = field(default_factory=dict)
    direct_norm: float = 0.0
    total_norm: float = 0.0
    replay_gaps: dict[str, float] = field(default_factory=dict)
    fd: dict[str, Any] = field(default_factory=dict)

    @property
    def trust(self) -> str:
        return trust_verdict(self.fd.get("relative_disagreement"), self.fd.get("reproducible"))


@dataclass
class MethodRow:
    """One candidate method's result at an upper level."""

    label: str
    method: str
    status: str  # "ok", "unsupported" or "failed"
    reason: str | None = None
    configured: bool = False
    paths: dict[str, Comparison] = field(default_factory=dict)
    total: Comparison | None = None
    seconds: float | None = None
    seconds_rounds: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    fd_disagreement: float | None = None
    warnings: list[str] = field(default_factory=list)
    hops: dict[str, dict[str, Any]] = field(default_factory=dict)

    def worst_cosine(self) -> float | None:
        """The lowest cosine over the paths and the total (None if any is undefined)."""
        values = [c.cosine for c in self.paths.values()] + ([self.total.cosine] if self.total else [])
        return None if not values or any(v is None for v in values) else min(values)


@dataclass
class UpperReport:
    """The doctor's table for one upper level."""

    upper: str
    paths: dict[str, str]  # path label -> the configured method of each hop, as text
    global_step: int
    dtype: str
    windows: dict[str, int]
    reference: ReferenceInfo
    methods: list[MethodRow]
    threshold: float
    recommendation: str | None = None
    notes: list[str] = field(default_factory=list)
    tensors: dict[str, Any] = field(default_factory=dict, repr=False)
    """The vectors behind the figures (not serialised): ``direct``, ``reference`` (per path) and
    ``reference_total``, and ``methods`` ({label: {path: vector}})."""

    def recommend(self) -> str | None:
        """The cheapest method (median time, then memory) with cosine ≥ threshold on every path and in total."""
        eligible = [
            m
            for m in self.methods
            if m.status == "ok" and m.worst_cosine() is not None and m.worst_cosine() >= self.threshold
        ]
        eligible.sort(key=lambda m: (m.seconds if m.seconds is not None else math.inf, m.peak_bytes or 0))
        self.recommendation = eligible[0].label if eligible else None
        return self.recommendation

    def recommendation_text(self) -> str:
        if not self.reference.available:
            return f"no recommendation: the reference is unavailable ({self.reference.reason})"
        configured = [m for m in self.methods if m.configured]
        if self.recommendation is None:
            best = max(
                (m for m in self.methods if m.status == "ok" and m.worst_cosine() is not None),
                key=lambda m: m.worst_cosine(),
                default=None,
            )
            tail = f"; the closest is `{best.label}` (worst cosine {best.worst_cosine():.3f})" if best else ""
            return f"no method reaches cosine ≥ {self.threshold:g} on every path and in total{tail}"
        row = next(m for m in self.methods if m.label == self.recommendation)
        text = (
            f"`{row.label}`: the cheapest method with cosine ≥ {self.threshold:g} on every path and in total "
            f"({_ms(row.seconds)} ms per outer step)"
        )
        ratios = [c.norm_ratio for c in row.paths.values() if c.norm_ratio is not None]
        if ratios and (min(ratios) < 0.5 or max(ratios) > 2):
            span = (
                f"{min(ratios):.2g}"
                if f"{min(ratios):.2g}" == f"{max(ratios):.2g}"
                else f"{min(ratios):.2g}–{max(ratios):.2g}"
            )
            text += (
                f"; its norm is {span}× the reference's (per path), which an SGD upper level feels as a "
                "learning-rate change (Adam much less)"
            )
        for m in configured:
            worst = m.worst_cosine()
            if m.status == "ok" and worst is not None and worst < self.threshold:
                text += f"; the configured `{m.label}` is below it (worst cosine {worst:.3f})"
        return text


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{1e3 * seconds:.3g}"


def _mib(peak: int | None) -> str:
    return "–" if peak is None else f"{peak / 2**20:.3g}"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if 1e-2 <= abs(value) < 1e3 or value == 0 else f"{value:.{digits - 1}e}"


@dataclass
class DoctorReport:
    """Everything :func:`engines.diagnose` found, per upper level."""

    graph: str
    uppers: list[UpperReport]
    settings: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, upper: str) -> UpperReport:
        for report in self.uppers:
            if report.upper == upper:
                return report
        raise KeyError(f"no report for upper level '{upper}'; diagnosed: {[r.upper for r in self.uppers]}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for upper, report in zip(out["uppers"], self.uppers):
            upper.pop("tensors")
            upper["reference"]["trust"] = report.reference.trust
            upper["recommendation_text"] = report.recommendation_text()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_jsonable)

    def to_markdown(self) -> str:
        lines = [f"# Hypergradient doctor: graph `{self.graph}`", ""]
        command = self.settings.get("command")
        if command:
            lines += [f"Produced by `{command}`.", ""]
        for report in self.uppers:
            lines += _upper_markdown(report)
        return "\n".join(lines).rstrip() + "\n"

    def plot(self, path: str | Path) -> Path:
        """Accuracy (cosine with the reference) against time, one point per method and path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        count = max(1, len(self.uppers))
        fig, axes = plt.subplots(1, count, figsize=(8.4 * count, 4.6), squeeze=False)
        markers = "osD^v<>pP*X"
        for ax, report in zip(axes[0], self.uppers):
            labels = [*report.paths, "total"]
            shown = [row for row in report.methods if row.status == "ok" and row.seconds is not None]
            for k, row in enumerate(shown):
                for i, label in enumerate(labels):
                    comparison = row.total if label == "total" else row.paths.get(label)
                    if comparison is None or comparison.cosine is None:
                        continue
                    x, y = 1e3 * max(row.seconds, 1e-6), comparison.cosine
                    ax.scatter(x, y, marker=markers[i % len(markers)], s=40, color=f"C{k % 10}", alpha=0.8)
            method_handles = [
                ax.scatter([], [], marker="o", color=f"C{k % 10}", label=row.label) for k, row in enumerate(shown)
            ]
            path_handles = [
                ax.scatter([], [], marker=markers[i % len(markers)], color="0.4", label=label)
                for i, label in enumerate(labels)
            ]
            ax.axhline(report.threshold, color="0.5", linestyle="--", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.05)
            ax.set_xlabel("hypergradient time per outer step (ms, log)")
            ax.set_ylabel("cosine with the reference")
            ax.set_title(f"{report.upper} (step {report.global_step}, {report.dtype})", fontsize=10)
            first = ax.legend(
                handles=method_handles,
                fontsize=7,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
                title="method",
                title_fontsize=7,
            )
            ax.add_artist(first)
            ax.legend(
                handles=path_handles,
                fontsize=7,
                loc="lower left",
                bbox_to_anchor=(1.01, 0.0),
                title="path",
                title_fontsize=7,
            )
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def save(self, folder: str | Path, stem: str = "hypergrad_doctor") -> dict[str, Path]:
        """Write ``<stem>.md``, ``<stem>.json`` and ``<stem>.png`` into ``folder``; returns their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = {"md": folder / f"{stem}.md", "json": folder / f"{stem}.json", "png": folder / f"{stem}.png"}
        out["md"].write_text(self.to_markdown(), encoding="utf-8")
        out["json"].write_text(self.to_json() + "\n", encoding="utf-8")
        self.plot(out["png"])
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _upper_markdown(report: UpperReport) -> list[str]:
    ref = report.reference
    lines = [f"## Upper level `{report.upper}` (global step {report.global_step}, {report.dtype})", ""]
    lines.append(
        "Paths (configured method per hop): "
        + "; ".join(f"`{label}` ({methods})" for label, methods in report.paths.items())
        + "."
    )
    lines.append(
        "Window replayed by the reference: "
        + ", ".join(f"`{name}` {k} step{'s' if k != 1 else ''}" for name, k in report.windows.items())
        + "."
    )
    lines.append("")
    if ref.available:
        norms = ", ".join(f"`{k}` {_num(v)}" for k, v in ref.path_norms.items())
        lines.append(
            f"Reference (`exact` through the whole window): norm per path {norms}; direct gradient {_num(ref.direct_norm)}; "
            f"total {_num(ref.total_norm)}."
        )
        if ref.replay_gaps:
            gap = max(ref.replay_gaps.values())
            lines.append(f"Largest replay gap (replayed vs real iterate, relative): {_num(gap)}.")
    else:
        lines.append(f"Reference unavailable: {ref.reason}.")
    fd = ref.fd
    if fd.get("slopes"):
        other = [t for t in fd.get("tried", []) if t["eps"] != fd["eps"]]
        values = [t["relative_disagreement"] for t in fd.get("tried", []) if t["relative_disagreement"] is not None]
        steady = bool(values) and max(values) <= 2 * min(values)
        listed = ", ".join(f"ε = {t['eps']:.2g}: {_num(t['relative_disagreement'])}" for t in other)
        if not other:
            retried = ""
        elif steady:
            retried = f"; the same at {listed}: not a matter of step size"
        else:
            retried = f" after larger steps disagreed ({listed}; the upper loss is rough at those scales)"
        lines.append(
            f"Trust: central finite differences through re-runs of the window along {len(fd['slopes'])} direction(s) "
            f"(ε = {fd['eps']:.2g}, {fd['dtype']}{retried}): relative disagreement with the reference total "
            f"{_num(fd.get('relative_disagreement'))} — **{ref.trust}**."
        )
    elif fd.get("note"):
        lines.append(f"Trust: {fd['note']}.")
    lines += [
        "",
        "| method | path | cosine | norm ratio | rel. error | time (ms) | peak memory (MiB) | FD disagreement |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for row in report.methods:
        if row.status != "ok":
            continue
        name = f"`{row.label}`" + (" (configured)" if row.configured else "")
        entries = [*row.paths.items(), *([("total", row.total)] if row.total is not None else [])]
        for i, (label, c) in enumerate(entries):
            first = i == 0
            lines.append(
                f"| {name if first else ''} | {label} | {_num(c.cosine)} | {_num(c.norm_ratio)} | "
                f"{_num(c.relative_error)} | {_ms(row.seconds) if first else ''} | {_mib(row.peak_bytes) if first else ''} | "
                f"{_num(row.fd_disagreement) if label == 'total' else ''} |"
            )
    other = [row for row in report.methods if row.status != "ok"]
    if other:
        lines += ["", "Not in the table:"]
        for row in other:
            lines.append(f"- `{row.label}` ({row.status}): {row.reason}")
    warned = [(row.label, w) for row in report.methods for w in row.warnings]
    if warned:
        lines += ["", "Warnings raised while computing:"]
        lines += [f"- `{label}`: {w}" for label, w in warned]
    for note in report.notes:
        lines += ["", note]
    lines += ["", f"**Recommendation**: {report.recommendation_text()}.", ""]
    return lines
