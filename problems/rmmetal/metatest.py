"""The meta-test protocol every algorithm (and the untrained backbone) is scored with, meta-validation
during training, and the backbone snapshots that let a run be scored at an earlier outer step.

Table 1 of the paper fine-tunes the learned model with 20 steps of gradient descent on each test
task; the released code does it with plain GD of size 0.05 on a head over frozen features. Here one
protocol holds for all: a zero-initialised linear head, ``steps`` GD steps of size ``lr`` on the
frozen backbone's support features, accuracy on the query set. Meta-validation uses the same
protocol on the validation classes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engines import Graph

from ..fewshot import Episodes, FewShotDataset, sample_episodes
from .levels import MetaModel, per_task_ce

__all__ = [
    "MetaTestProtocol",
    "MetaValidation",
    "confidence95",
    "evaluate",
    "keep_snapshots",
    "load_snapshot",
    "meta_test",
    "sample_meta_test_tasks",
    "save_snapshot",
    "snapshot_steps",
    "untrained_reference",
    "validation_curve",
]


@torch.no_grad()
def _features(meta: MetaModel, x: Tensor, chunk: int) -> Tensor:
    return torch.cat([meta.features(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def meta_test(meta: MetaModel, episodes: Episodes, *, steps: int, lr: float, chunk: int = 50) -> Tensor:
    """Accuracy [T] on each task's query set after fitting a linear head to its support set with
    ``steps`` plain gradient-descent steps of size ``lr`` on the frozen backbone's features
    (the meta-test of Table 1).

    Every head starts at zero whatever the algorithm learned (a meta-learned head start, as ANIL
    and MAML have, is not used), so algorithms compared under the same ``steps`` and ``lr`` differ
    only through their backbones.
    """
    support = _features(meta, episodes.support_x, chunk)
    query = _features(meta, episodes.query_x, chunk)
    n_tasks, n_way = episodes.n_tasks, int(episodes.support_y.max()) + 1
    weight = support.new_zeros(n_tasks, n_way, support.shape[-1])
    bias = support.new_zeros(n_tasks, n_way)
    for _ in range(steps):
        with torch.enable_grad():
            weight.requires_grad_(True)
            bias.requires_grad_(True)
            logits = torch.einsum("bnd,bwd->bnw", support, weight) + bias[:, None]
            loss = per_task_ce(logits, episodes.support_y).sum()  # tasks are independent: Σ_i CE_i
            gw, gb = torch.autograd.grad(loss, (weight, bias))
        weight, bias = (weight - lr * gw).detach(), (bias - lr * gb).detach()
    logits = torch.einsum("bnd,bwd->bnw", query, weight) + bias[:, None]
    return (logits.argmax(-1) == episodes.query_y).float().mean(1)


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


def evaluate(meta: MetaModel, episodes: Episodes, protocol: MetaTestProtocol) -> Tensor:
    """Accuracy [T] of ``meta``'s backbone on ``episodes`` under ``protocol``."""
    return meta_test(meta, episodes, steps=protocol.steps, lr=protocol.lr)


def confidence95(acc: Tensor) -> float:
    """Half-width of the normal 95 % interval of the mean of ``acc`` (0 for a single task)."""
    return float(1.96 * acc.std() / len(acc) ** 0.5) if len(acc) > 1 else 0.0


def sample_meta_test_tasks(
    data: FewShotDataset, n_way: int, k_shot: int, valid_tasks: int, protocol: MetaTestProtocol, seed: int
) -> dict[str, Episodes]:
    """The fixed ``valid_tasks`` validation and ``protocol.test_tasks`` test tasks every algorithm of seed
    ``seed`` is scored on (``n_way``-way ``k_shot``-shot, ``protocol.query_per_class`` queries per class)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    return {
        split: sample_episodes(
            data.splits[split], n_way=n_way, k_shot=k_shot, k_query=protocol.query_per_class, n_tasks=n, generator=gen
        )
        for split, n in (("val", valid_tasks), ("test", protocol.test_tasks))
    }


def untrained_reference(
    meta: MetaModel, episodes: dict[str, Episodes], protocol: MetaTestProtocol, device: torch.device
) -> dict[str, Any]:
    """The reference row: the backbone every algorithm starts from (same seed), meta-tested untrained."""
    meta = meta.to(device)
    meta.eval()  # as the Runner validates; Conv-4 normalises with batch statistics in both modes
    acc = evaluate(meta, episodes["test"].to(device), protocol)
    val = evaluate(meta, episodes["val"].to(device), protocol)
    return {
        "protocol": asdict(protocol),
        "test_accuracy": float(acc.mean()),
        "ci95": confidence95(acc),
        "test_tasks": len(acc),
        "val_accuracy": float(val.mean()),
    }


SNAPSHOTS = "snapshots"


def save_snapshot(run_dir: Path, outer_step: int, meta: MetaModel) -> Path:
    """Keep ``meta`` as the upper level's module at ``outer_step`` (``run_dir/snapshots/step<N>.pt``), so
    that the run can later be meta-tested at that step (accuracy at an equal wall-clock budget)."""
    path = Path(run_dir) / SNAPSHOTS / f"step{outer_step:06d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({k: v.detach().cpu() for k, v in meta.state_dict().items()}, tmp)
    tmp.replace(path)
    return path


def snapshot_steps(run_dir: Path) -> list[int]:
    """The outer steps a snapshot was kept at, ascending."""
    return sorted(int(p.stem[4:]) for p in (Path(run_dir) / SNAPSHOTS).glob("step*.pt"))


def load_snapshot(run_dir: Path, outer_step: int, meta: MetaModel) -> MetaModel:
    """``meta`` with the snapshot of ``outer_step`` loaded (FileNotFoundError naming the file if absent)."""
    path = Path(run_dir) / SNAPSHOTS / f"step{outer_step:06d}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no snapshot of outer step {outer_step} at {path}; kept: {snapshot_steps(run_dir)}")
    meta.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return meta


def keep_snapshots(graph: Graph, run_dir: Path, every: int) -> None:
    """Save the ``backbone`` level's module after every ``every``-th outer step of ``graph`` (right after
    its update, as :func:`save_snapshot`); snapshots are what an equal wall-clock budget is scored at."""
    upper, unroll = graph["backbone"], graph["heads"].unroll

    def save() -> None:
        step = graph.engine.global_step // unroll
        if step % every == 0:
            save_snapshot(run_dir, step, upper.module)

    upper.param_callback = save


class MetaValidation:
    """Meta-validation accuracy on fixed tasks (the meta-test protocol on validation classes) and the
    training time it took to get there (wall-clock of training only: validating is subtracted).

    Both numbers are returned as metrics, so the Runner logs them in ``run_dir/metrics.jsonl``; a
    resumed run continues the training time from the last logged validation and
    :func:`validation_curve` reads the whole curve back.
    """

    def __init__(self, episodes: Episodes, protocol: MetaTestProtocol, run_dir: Path | None = None):
        self.episodes, self.protocol, self.run_dir = episodes, protocol, run_dir
        self._validating = 0.0
        self._start = time.perf_counter()
        self._offset: float | None = None

    def __call__(self, graph: Graph) -> dict[str, float]:
        if self._offset is None:  # the Runner has cut its log back to the checkpoint it resumed from
            logged = validation_curve(self.run_dir, 1) if self.run_dir is not None else []
            self._offset = logged[-1]["train_seconds"] if logged else 0.0
        t0 = time.perf_counter()
        meta = graph["backbone"].module
        acc = float(evaluate(meta, self.episodes, self.protocol).mean())
        train_time = self._offset + t0 - self._start - self._validating
        self._validating += time.perf_counter() - t0
        return {"val_accuracy": acc, "train_seconds": train_time}


def validation_curve(run_dir: Path, unroll: int) -> list[dict[str, float]]:
    """``[{"step": outer step, "accuracy", "train_seconds"}]`` from ``run_dir/metrics.jsonl`` (global
    steps divided by the inner-loop length ``unroll``)."""
    path = Path(run_dir) / "metrics.jsonl"
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed run may be partial
            continue
    return [
        {"step": e["step"] // unroll, "accuracy": e["val_accuracy"], "train_seconds": e["train_seconds"]}
        for e in entries
        if e.get("level") == "validation" and "train_seconds" in e
    ]
