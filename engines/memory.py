"""Peak tensor memory of a region of code, on CUDA and on CPU.

On CUDA this is the caching allocator's peak of allocated bytes
(``torch.cuda.max_memory_allocated``). PyTorch keeps no such counter for CPU tensors, so
on CPU a ``TorchDispatchMode`` observes every tensor storage produced by an ATen operator
inside the region (forward, backward and optimizer kernels alike) and a weak reference
tells when its storage is freed. The figure is therefore the peak of live tensor bytes
created inside the region — activations saved for backward, gradients, optimizer and
hypergradient temporaries — excluding tensors that existed before (parameters, data),
and excluding allocator caching and Python-object overhead. It is exact for tensors and
blind to everything else, which is what comparing hypergradient methods needs.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["MemoryReport", "track_peak_memory"]


@dataclass
class MemoryReport:
    """``peak_bytes``: peak of tensor bytes alive inside the region, above what existed before it;
    ``retained_bytes``: bytes created inside the region and still alive at its end;
    ``method``: how it was measured."""

    peak_bytes: int = 0
    retained_bytes: int = 0
    method: str = ""


class _StorageTracker(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def _track(self, t: torch.Tensor) -> None:
        try:
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except RuntimeError:  # a storage without data that some backward kernels return: nothing to count
            return
        if size == 0 or key in self._sizes or t.device.type != "cpu":
            return
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out


@contextmanager
def track_peak_memory(device: torch.device | str = "cpu") -> Iterator[MemoryReport]:
    """Measure the peak tensor memory of the ``with`` block on ``device``.

    Example:
        >>> with track_peak_memory("cpu") as mem:
        ...     y = (torch.randn(256, 256) @ torch.randn(256, 256)).sum()
        >>> mem.peak_bytes >= 256 * 256 * 4
        True
    """
    device = torch.device(device)
    report = MemoryReport()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        try:
            yield report
        finally:
            torch.cuda.synchronize(device)
            report.peak_bytes = torch.cuda.max_memory_allocated(device) - base
            report.retained_bytes = torch.cuda.memory_allocated(device) - base
            report.method = "torch.cuda.max_memory_allocated (caching allocator, allocated bytes)"
        return
    tracker = _StorageTracker()
    try:
        with tracker:
            yield report
    finally:
        report.peak_bytes = tracker.peak
        report.retained_bytes = tracker.live
        report.method = "live CPU tensor storages observed by a TorchDispatchMode"
