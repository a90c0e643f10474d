"""Resumable, deterministic, rank-sharded mini-batch streams for levels.

A level draws one mini-batch per step. Betty's own loader patching re-creates
iterators from global RNG state, so a resumed run sees different batches; here
every batch is a pure function of ``(seed, epoch, position)``, which makes
``10 steps + resume + 10 steps`` identical to 20 uninterrupted steps.

Datasets that draw random augmentations may implement ``sample(index, seed)``:
the stream then passes a per-item seed derived from ``(seed, epoch, index)``, so
augmentations do not depend on the number of DataLoader workers, on the rank, or
on whether the run was resumed (albumentations keeps its own RNG and would
otherwise repeat the same stream in every worker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

__all__ = ["DataStream", "IterableSource", "SeededDataset", "as_source", "mix_seed"]

_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (SplitMix64), stable across runs and platforms."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (int(part) & _M64))
    return h >> 1


class SeededDataset(Protocol):
    """A dataset whose items may be random: ``sample(index, seed)`` must be a pure function."""

    def __len__(self) -> int: ...

    def sample(self, index: int, seed: int) -> Any: ...


class _SeededItems(Dataset):
    """Adapts a dataset to receive ``(index, seed)`` keys from the stream's batch sampler."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self._seeded = callable(getattr(dataset, "sample", None))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        if self._seeded:
            return self.dataset.sample(index, seed)
        return self.dataset[index]


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class DataStream:
    """Endless stream of mini-batches over a map-style dataset.

    Args:
        dataset: a map-style dataset; if it has ``sample(index, seed)`` that is used.
        batch_size: items per batch on each rank.
        shuffle: reshuffle every epoch (from ``seed`` and the epoch number).
        drop_last: drop the incomplete last batch of an epoch.
        seed: base seed of the order and of per-item seeds.
        num_workers, collate_fn, pin_memory: passed to ``torch.utils.data.DataLoader``.

    Under ``torch.distributed`` each rank reads a disjoint, equally long shard of
    every epoch's order.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        collate_fn: Callable | None = None,
        pin_memory: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"DataStream: batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError(f"DataStream: the dataset {type(dataset).__name__} is empty")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.pin_memory = pin_memory
        self.epoch = 0
        self.position = 0  # batches consumed in the current epoch
        self._iterator: Iterator | None = None

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The ``(index, item_seed)`` keys of every batch this rank reads in ``epoch``."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        rank, world = _rank_and_world()
        order = order[: n - n % world][rank::world] if world > 1 else order
        keys = [(i, mix_seed(self.seed, epoch, i)) for i in order]
        batches = [keys[s : s + self.batch_size] for s in range(0, len(keys), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if not batches:
            raise ValueError(
                f"DataStream: {n} items give no full batch of {self.batch_size} on {world} rank(s); "
                "lower batch_size or pass drop_last=False"
            )
        return batches

    def _open_epoch(self) -> Iterator:
        batches = self.epoch_batches(self.epoch)[self.position :]
        loader = DataLoader(
            _SeededItems(self.dataset),
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            # a private generator: opening an iterator must not consume the global RNG (that would
            # shift dropout masks after a resume, which opens the epoch at a different step)
            generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 1)),
        )
        return iter(loader)

    def __iter__(self) -> DataStream:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._open_epoch()
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self._iterator = self._open_epoch()
            batch = next(self._iterator)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None


class IterableSource:
    """Wraps any re-iterable (e.g. a DataLoader): restarts it when exhausted.

    Resuming replays the consumed batches of the current pass (by iterating), so it is
    exact only if the iterable itself is deterministic; prefer :class:`DataStream`.
    """

    def __init__(self, iterable: Iterable):
        self.iterable = iterable
        self.position = 0
        self._iterator: Iterator | None = None

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self.iterable)
            for _ in range(self.position):
                next(self._iterator)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator, self.position = iter(self.iterable), 0
            batch = next(self._iterator)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position, self._iterator = int(state["position"]), None


def as_source(data: Any, level_name: str) -> Callable[[Any], Any] | None:
    """Normalise a level's ``data`` argument to a callable ``source(level) -> batch``.

    Accepted: None (the loss takes no data), a :class:`DataStream` or other iterator,
    a re-iterable such as a DataLoader, or a callable ``fn(level) -> batch``.
    """
    if data is None:
        return None
    _refuse_tensors(data, level_name)
    if isinstance(data, Dataset) and not hasattr(data, "__next__"):
        raise TypeError(
            f"level '{level_name}': data is a Dataset; wrap it in engines.DataStream(dataset, "
            "batch_size=...) so the level knows how to batch, shuffle and resume it"
        )
    if hasattr(data, "__next__"):
        return _IteratorSource(data)
    if callable(data):
        return data
    if isinstance(data, Iterable):
        return _IteratorSource(IterableSource(data))
    raise TypeError(
        f"level '{level_name}': data must be None, a DataStream, an iterable or a callable "
        f"fn(level) -> batch, got {type(data).__name__}"
    )


def _refuse_tensors(data: Any, level_name: str) -> None:
    """A tensor, or a tuple of tensors, is iterable — row by row, or tensor by tensor — which is never
    the mini-batching a level wants; refuse it with the two ways to say what is meant."""
    if torch.is_tensor(data):
        what = f"a tensor of shape {tuple(data.shape)}, which would be iterated row by row (each batch one row"
        what += f" of shape {tuple(data.shape[1:])})" if data.dim() > 0 else ")"
        names = "x"
    elif isinstance(data, tuple) and data and all(torch.is_tensor(t) for t in data):
        what = f"a tuple of {len(data)} tensors, which would be iterated tensor by tensor (the first batch the first tensor)"
        names = ", ".join(f"t{i}" for i in range(len(data)))
    else:
        return
    raise TypeError(
        f"level '{level_name}': data is {what}; for mini-batches pass "
        f"data=engines.DataStream(torch.utils.data.TensorDataset({names}), batch_size=...), or for the same whole "
        f"batch at every step data=lambda level: {'(' + names + ')' if ',' in names else names}"
    )


class _IteratorSource:
    """Callable view of an iterator that forwards checkpoint state."""

    def __init__(self, iterator: Any):
        self.iterator = iterator

    @property
    def restorable(self) -> bool:
        """Whether the position can be saved and restored (so a batch can be previewed without consuming it)."""
        return callable(getattr(self.iterator, "state_dict", None)) and callable(
            getattr(self.iterator, "load_state_dict", None)
        )

    def __call__(self, level: Any) -> Any:
        return next(self.iterator)

    def state_dict(self) -> dict:
        fn = getattr(self.iterator, "state_dict", None)
        return fn() if callable(fn) else {}

    def load_state_dict(self, state: dict) -> None:
        fn = getattr(self.iterator, "load_state_dict", None)
        if callable(fn) and state:
            fn(state)
