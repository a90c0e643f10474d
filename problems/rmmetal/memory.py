"""Peak memory of one outer step against the number of inner steps K (the paper's Fig. 2 and §5.2).

One outer step is K lower steps followed by the upper step with its hypergradient; it is measured
after one warm-up outer step (so optimizer states and warm starts exist), with the engine's
``track_peak_memory``: CUDA's peak allocated bytes on a GPU, the peak of live tensor storages on
the CPU (deterministic: it depends on the sizes, not on the seed or the machine).

Besides the trained algorithms, the feature-sharing variant of each reference-style baseline
(``itd-bio-shared``, ``anil-shared``) is measured: the same hypergradient with the support
features computed once per hypergradient, which separates what the implicit hypergradient saves
from what re-running the backbone in every replayed inner step costs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch

from engines import MemoryReport, Runner, track_peak_memory

from ..fewshot import FewShotDataset
from .graphs import GraphConfig, build_graph

__all__ = ["MEMORY_KS", "SHARED_VARIANT", "memory_against_k", "memory_methods", "peak_memory_of_outer_step"]

MEMORY_KS = (1, 5, 10, 20)
"""The numbers of inner steps K the memory is measured at."""

SHARED_VARIANT = {"itd-bio": "itd-bio-shared", "anil": "anil-shared"}
"""The feature-sharing variant of each reference-style baseline (features computed once per hypergradient)."""


def memory_methods(methods: Iterable[str]) -> list[str]:
    """The trained methods plus the feature-sharing variant of each reference-style baseline."""
    methods = list(methods)
    return list(dict.fromkeys([*methods, *(SHARED_VARIANT[m] for m in methods if m in SHARED_VARIANT)]))


def peak_memory_of_outer_step(
    config: GraphConfig, data: FewShotDataset, device: torch.device, seed: int
) -> MemoryReport:
    """Peak memory of one outer step of ``config`` (K = ``config.inner_steps`` lower steps, then the upper
    step with its hypergradient), measured after one warm-up outer step."""
    graph = build_graph(config, data, seed)
    k = config.inner_steps
    runner = Runner(graph, 2 * k, device=device, progress=False)
    for _ in range(k):
        runner.step()
    with track_peak_memory(device) as mem:
        for _ in range(k):
            runner.step()
    runner.close()
    return mem


def memory_against_k(
    configs: Sequence[GraphConfig],
    data: FewShotDataset,
    device: torch.device,
    seed: int,
    ks: Sequence[int] = MEMORY_KS,
) -> list[dict[str, Any]]:
    """Fig. 2: :func:`peak_memory_of_outer_step` of every config at every K in ``ks`` (K replaced, the
    rest of each config kept); one row per (method, K)."""
    rows = []
    for config in configs:
        for k in ks:
            mem = peak_memory_of_outer_step(replace(config, inner_steps=k), data, device, seed)
            rows.append(
                {
                    "method": config.method,
                    "dataset": data.name,
                    "metric": "peak_memory_bytes",
                    "k": k,
                    "value": mem.peak_bytes,
                    "measured_by": mem.method,
                    "tasks": config.n_tasks,
                    "width": config.width,
                }
            )
            print(f"[rmmetal] memory {config.method:>22} K={k:>2}: {mem.peak_bytes / 2**20:8.2f} MiB")
    return rows
