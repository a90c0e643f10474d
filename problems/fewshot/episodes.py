"""N-way K-shot task sampling from a :class:`ClassSplit`.

A task picks ``n_way`` distinct classes uniformly at random, relabels them ``0..n_way-1`` in a
random order, and draws ``k_shot + k_query`` distinct images of each class without replacement;
the first ``k_shot`` go to the support set, the rest to the query set (the RM-MetaL code draws
``2 * shots`` images per class the same way and splits them evenly). Both sets are laid out
class-major: positions ``c * k .. (c + 1) * k - 1`` hold label ``c``. Since the class behind each
label is random, the layout carries no information.

Every random number comes from the caller's ``torch.Generator`` (CPU), so a seed fixes the episodes
and ``generator.get_state()`` / ``set_state()`` resumes the stream exactly. Images are returned as
float32 in [0, 1] (``ToTensor`` scaling for every dataset, including miniImageNet, which the
reference code fed unscaled).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from .formats import ClassSplit, FewShotDataError

__all__ = ["EpisodeStream", "Episodes", "sample_episodes"]


@dataclass
class Episodes:
    """A meta-batch of T tasks.

    support_x: float32 ``[T, n_way*k_shot, C, H, W]`` in [0, 1]; support_y: int64 ``[T, n_way*k_shot]``
    in ``0..n_way-1``; query_x: float32 ``[T, n_way*k_query, C, H, W]``; query_y: int64 ``[T, n_way*k_query]``.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @property
    def n_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Episodes:
        """A copy with every tensor on ``device``."""
        return Episodes(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})


class _ClassTable:
    """Image indices of a split grouped by class: ``table[c, :counts[c]]`` are the images of class c.

    table: int64 ``[n_classes, max_count]`` (padded with 0); counts: int64 ``[n_classes]``.
    """

    def __init__(self, split: ClassSplit):
        self.counts = split.class_counts()
        order = torch.argsort(split.labels, stable=True)
        starts = torch.cumsum(self.counts, 0) - self.counts
        position = torch.arange(order.numel()) - starts[split.labels[order]]
        max_count = int(self.counts.max()) if split.n_classes else 0
        self.table = torch.zeros((split.n_classes, max_count), dtype=torch.int64)
        self.table[split.labels[order], position] = order

    def check(self, split: ClassSplit, n_way: int, per_class: int) -> None:
        """Raise FewShotDataError unless ``n_way``-way tasks with ``per_class`` images per class can be drawn."""
        where = split.source or "split"
        if split.n_classes < n_way:
            raise FewShotDataError(f"{where} has {split.n_classes} classes, fewer than n_way={n_way}")
        short = (self.counts < per_class).nonzero().flatten().tolist()
        if short:
            examples = ", ".join(f"'{split.class_names[c]}' ({int(self.counts[c])})" for c in short[:5])
            raise FewShotDataError(
                f"{where}: {len(short)} class(es) have fewer than k_shot + k_query = {per_class} images, "
                f"e.g. {examples}"
            )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FewShotDataError(f"{name} must be a positive integer; got {value!r}")


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1]."""
    return images.to(torch.float32).div_(255.0)


def _sample(
    split: ClassSplit,
    table: _ClassTable,
    n_way: int,
    k_shot: int,
    k_query: int,
    n_tasks: int,
    generator: torch.Generator,
) -> Episodes:
    per_class = k_shot + k_query
    # Random classes in random order: the first n_way of a random permutation per task.
    classes = torch.rand((n_tasks, split.n_classes), generator=generator, dtype=torch.float64)
    classes = classes.argsort(dim=1, stable=True)[:, :n_way]  # [T, n_way]
    # Random images without replacement: the per_class smallest random keys among each class's images.
    counts = table.counts[classes]  # [T, n_way]
    keys = torch.rand((n_tasks, n_way, table.table.shape[1]), generator=generator, dtype=torch.float64)
    keys.masked_fill_(torch.arange(table.table.shape[1]) >= counts[..., None], 2.0)  # padding never wins
    slots = keys.argsort(dim=2, stable=True)[..., :per_class]  # [T, n_way, per_class]
    index = table.table[classes[..., None], slots]  # image indices
    shape = split.images.shape[1:]

    def gather(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = idx.shape[-1]
        x = _to_unit(split.images[idx.reshape(-1)]).view(n_tasks, n_way * k, *shape)
        y = torch.arange(n_way).repeat_interleave(k).expand(n_tasks, -1).contiguous()
        return x, y

    support_x, support_y = gather(index[..., :k_shot])
    query_x, query_y = gather(index[..., k_shot:])
    return Episodes(support_x, support_y, query_x, query_y)


def sample_episodes(
    split: ClassSplit, *, n_way: int, k_shot: int, k_query: int, n_tasks: int, generator: torch.Generator
) -> Episodes:
    """Draw ``n_tasks`` independent ``n_way``-way tasks with ``k_shot`` support and ``k_query`` query images per class.

    Returns :class:`Episodes` (support ``[T, n_way*k_shot, C, H, W]``, query ``[T, n_way*k_query, C, H, W]``,
    float32 in [0, 1]). All randomness comes from ``generator`` (a CPU generator). Raises
    FewShotDataError when the split has fewer than ``n_way`` classes or a class has fewer than
    ``k_shot + k_query`` images.
    """
    _check_positive(n_way=n_way, k_shot=k_shot, k_query=k_query, n_tasks=n_tasks)
    table = _ClassTable(split)
    table.check(split, n_way, k_shot + k_query)
    return _sample(split, table, n_way, k_shot, k_query, n_tasks, generator)


class EpisodeStream:
    """Infinite, resumable stream of meta-batches of ``n_tasks`` tasks, seeded by ``seed``.

    ``next()`` (or ``next(stream)``) returns :class:`Episodes`. ``state_dict()`` holds the generator
    state as a uint8 tensor plus the configuration, so it round-trips through
    ``torch.save`` / ``torch.load(weights_only=True)``; ``load_state_dict`` continues the exact stream.
    """

    def __init__(self, split: ClassSplit, n_way: int, k_shot: int, k_query: int, n_tasks: int, seed: int):
        _check_positive(n_way=n_way, k_shot=k_shot, k_query=k_query, n_tasks=n_tasks)
        self.split = split
        self.config = {
            "n_way": n_way,
            "k_shot": k_shot,
            "k_query": k_query,
            "n_tasks": n_tasks,
            "seed": int(seed),
            "n_images": int(split.labels.numel()),
            "n_classes": split.n_classes,
        }
        self._table = _ClassTable(split)
        self._table.check(split, n_way, k_shot + k_query)
        self._generator = torch.Generator().manual_seed(int(seed))
        self.batches_drawn = 0

    def next(self) -> Episodes:
        """The next meta-batch."""
        c = self.config
        batch = _sample(self.split, self._table, c["n_way"], c["k_shot"], c["k_query"], c["n_tasks"], self._generator)
        self.batches_drawn += 1
        return batch

    def __iter__(self) -> EpisodeStream:
        return self

    def __next__(self) -> Episodes:
        return self.next()

    def state_dict(self) -> dict[str, Any]:
        """``{'generator_state': uint8 tensor, 'batches_drawn': int, 'config': dict}``."""
        return {
            "generator_state": self._generator.get_state(),
            "batches_drawn": self.batches_drawn,
            "config": dict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the stream saved in ``state``; it must come from a stream with the same configuration."""
        if not isinstance(state, dict) or set(state) != {"generator_state", "batches_drawn", "config"}:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise FewShotDataError(
                f"episode-stream state must have keys batches_drawn, config, generator_state; found {found}"
            )
        if state["config"] != self.config:
            raise FewShotDataError(
                f"episode-stream state was saved with {state['config']}, but this stream has {self.config}"
            )
        self._generator.set_state(state["generator_state"])
        self.batches_drawn = int(state["batches_drawn"])
