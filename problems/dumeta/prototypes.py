"""Class-aware regularisation of DuMeta++ (Sec. III-B, Eq. 12–14): class means, a memory bank of
them, and a margin triplet loss with cosine distance.

For a feature map ``F_k [B, D_k, *S_k]`` and labels downsampled to ``S_k``, the class mean
``f_k^c [B, D_k]`` averages the feature vectors of the voxels labelled ``c`` in each sample.
Eq. 13, for a tissue ``c`` with the two others ``c', c''``::

    L^c = max(0, d(p^c, f^c) − d(p^c, f^c') − d(p^c, f^c'') + λ1),   d(x, y) = 1 − cos(x, y)

both negatives inside one hinge; ``L_reg`` (Eq. 14) sums it over tissues, the outer mini-batch's
datasets and scales and divides by (tissues · datasets · scales) = 6K.

Choices the paper leaves open (stated here and in the README):

* ``f^c`` is per sample (Sec. III-B: ``f ∈ R^{BS×NC_k}``); each sample's hinge is averaged over the
  samples of its dataset in which all three tissues are present at that scale. A term whose
  tissues are missing contributes nothing (no NaN): there is no mean to take.
* The memory bank is a FIFO per scale and tissue of capacity N holding detached per-sample class
  means; the prototype ``p^c`` (Eq. 12) is the mean of the entries it holds. Features are pushed
  before the prototypes are read, so the first step has prototypes and capacity 1 means "the
  latest sample".
* ``"sum"`` (Table V, D) drops the max of Eq. 13 (and with it λ1, a constant); ``"sample"``
  anchors (Table V, E; the ICCV DuMeta) replace the prototype of dataset B by the mean class
  feature of the other dataset of the same mini-batch, undetached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..losses import downsample_labels

__all__ = [
    "ANCHORS",
    "HINGES",
    "ClassAwareRegulariser",
    "MemoryBank",
    "class_means",
    "cosine_distance",
    "regulariser_terms",
    "sample_anchors",
]

HINGES = ("triplet", "sum")
ANCHORS = ("prototype", "sample")


def cosine_distance(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """``d(x, y) = 1 − x·y / (‖x‖ ‖y‖)`` over the last dimension (broadcasting)."""
    return 1.0 - torch.nn.functional.cosine_similarity(x, y, dim=-1, eps=eps)


def class_means(features: Tensor, label: Tensor, classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Per-sample mean feature of each class.

    Args:
        features: ``[B, D, *S_k]``.
        label: ``[B, *S]`` int64 at any resolution; resized to ``S_k`` by nearest neighbour.
        classes: the label values to average (tissues 1, 2, 3).

    Returns:
        ``means [B, len(classes), D]`` (zero where a class is absent) and ``present [B, len(classes)]``.
    """
    label = downsample_labels(label, features.shape[2:])
    onehot = torch.stack([label == c for c in classes], 1).to(features.dtype)  # [B, C, *S_k]
    counts = onehot.flatten(2).sum(-1)  # [B, C]
    sums = torch.einsum("bcn,bdn->bcd", onehot.flatten(2), features.flatten(2))
    return sums / counts.clamp(min=1)[..., None], counts > 0


def regulariser_terms(
    anchors: Tensor, anchor_valid: Tensor, means: Tensor, present: Tensor, *, margin: float, hinge: str = "triplet"
) -> Tensor:
    """Eq. 13 for every tissue: ``L^c`` averaged over the samples where it is defined.

    Args:
        anchors: ``[C, D]`` (prototypes, shared by the samples) or ``[B, C, D]``.
        anchor_valid: ``[C]`` or ``[B, C]``: whether each anchor exists.
        means: ``[B, C, D]`` per-sample class means; ``present``: ``[B, C]``.
        margin: λ1.
        hinge: ``"triplet"`` (Eq. 13) or ``"sum"`` (no max, Table V D).

    Returns:
        ``[C]``: each tissue's term; 0 where no sample has all tissues present and a valid anchor.
    """
    if hinge not in HINGES:
        raise ValueError(f"hinge must be one of {HINGES}, got {hinge!r}")
    n_classes = means.shape[1]
    if anchors.dim() == 2:
        anchors, anchor_valid = anchors.expand_as(means), anchor_valid.expand_as(present)
    # dist[b, c, j] = d(p^c, f_b^j): anchor of tissue c against the sample's mean of tissue j
    dist = cosine_distance(anchors[:, :, None, :], means[:, None, :, :])
    eye = torch.eye(n_classes, dtype=torch.bool, device=means.device)
    positive = dist.diagonal(dim1=1, dim2=2)  # [B, C]
    negatives = dist.masked_fill(eye, 0.0).sum(-1)  # [B, C]
    score = positive - negatives
    score = torch.clamp(score + margin, min=0.0) if hinge == "triplet" else score
    valid = anchor_valid & present.all(1, keepdim=True)  # [B, C]
    weight = valid.to(means.dtype)
    return (score * weight).sum(0) / weight.sum(0).clamp(min=1)


def sample_anchors(means: Tensor, present: Tensor, domain: Tensor) -> tuple[Tensor, Tensor]:
    """DuMeta's sample-level anchors: for each sample, the mean class feature of the *other*
    datasets' samples in the mini-batch (``[B, C, D]``), and where it exists (``[B, C]``)."""
    weight = present.to(means.dtype)  # [B, C]
    other = (domain[:, None] != domain[None, :]).to(means.dtype)  # [B, B']
    sums = torch.einsum("ij,jc,jcd->icd", other, weight, means)
    counts = other @ weight  # [B, C]
    return sums / counts.clamp(min=1)[..., None], counts > 0


class MemoryBank:
    """FIFO memory of detached per-sample class means, one ring buffer per (scale, tissue).

    Args:
        capacity: N, entries kept per scale and tissue (Table VI: 1, 10, 100, 1000).
        dims: feature channels of each scale (``D_k``).
        n_classes: tissues (3).

    Storage lives on the device and in the dtype of the features pushed into it; it is part of a
    checkpoint through :meth:`state_dict` (tensors and ints only).
    """

    def __init__(self, capacity: int, dims: Sequence[int], n_classes: int = 3):
        if capacity < 1:
            raise ValueError(f"memory bank capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.dims = [int(d) for d in dims]
        self.n_classes = int(n_classes)
        self.entries = [torch.zeros(n_classes, capacity, d) for d in self.dims]  # [C, N, D_k] per scale
        self.filled = torch.zeros(len(self.dims), n_classes, dtype=torch.long)  # entries held
        self.cursor = torch.zeros(len(self.dims), n_classes, dtype=torch.long)  # next slot to overwrite

    def push(self, scale: int, means: Tensor, present: Tensor) -> None:
        """Store the present rows of ``means [B, C, D_k]`` (detached), oldest entries overwritten first."""
        store = self.entries[scale]
        if store.device != means.device or store.dtype != means.dtype:
            store = self.entries[scale] = store.to(means.device, means.dtype)
        for c in range(self.n_classes):
            rows = means[present[:, c], c].detach()[-self.capacity :]
            if len(rows) == 0:
                continue
            start = int(self.cursor[scale, c])
            slots = (start + torch.arange(len(rows))) % self.capacity
            store[c, slots.to(store.device)] = rows
            self.cursor[scale, c] = (start + len(rows)) % self.capacity
            self.filled[scale, c] = min(self.capacity, int(self.filled[scale, c]) + len(rows))

    def prototypes(self, scale: int) -> tuple[Tensor, Tensor]:
        """``p_k^c`` (Eq. 12) ``[C, D_k]``: the mean of the held entries, and ``[C]`` whether any is held."""
        store = self.entries[scale]
        filled = self.filled[scale].to(store.device)
        held = (torch.arange(self.capacity, device=store.device)[None, :] < filled[:, None]).to(store.dtype)
        protos = (store * held[..., None]).sum(1) / filled.clamp(min=1)[:, None].to(store.dtype)
        return protos, filled > 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "dims": list(self.dims),
            "entries": [e.clone() for e in self.entries],
            "filled": self.filled.clone(),
            "cursor": self.cursor.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity or list(state["dims"]) != self.dims:
            raise ValueError(
                f"memory bank state has capacity {state['capacity']} and dims {state['dims']}; this bank "
                f"has capacity {self.capacity} and dims {self.dims}"
            )
        self.entries = [e.clone() for e in state["entries"]]
        self.filled, self.cursor = state["filled"].clone().cpu(), state["cursor"].clone().cpu()


class ClassAwareRegulariser:
    """``L_reg`` of Eq. 14 over K feature scales, with its memory bank.

    Args:
        dims: channels ``D_k`` of the regularised feature maps, in the order they are passed.
        anchor: ``"prototype"`` (memory-bank means, Eq. 12; DuMeta++) or ``"sample"`` (the other
            dataset's mean class features of the same mini-batch; DuMeta, Table V E).
        hinge: ``"triplet"`` (Eq. 13) or ``"sum"`` (Table V D).
        margin: λ1 (1.5).
        capacity: N, memory-bank entries per scale and tissue (100).
        tissues: the label values regularised (1, 2, 3 = CSF, GM, WM).
    """

    def __init__(
        self,
        dims: Sequence[int],
        *,
        anchor: str = "prototype",
        hinge: str = "triplet",
        margin: float = 1.5,
        capacity: int = 100,
        tissues: Sequence[int] = (1, 2, 3),
    ):
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
        if hinge not in HINGES:
            raise ValueError(f"hinge must be one of {HINGES}, got {hinge!r}")
        self.anchor, self.hinge, self.margin = anchor, hinge, float(margin)
        self.tissues = tuple(int(t) for t in tissues)
        self.bank = MemoryBank(capacity, dims, len(self.tissues)) if anchor == "prototype" else None

    def __call__(self, features: Sequence[Tensor], label: Tensor, domain: Tensor, *, update: bool) -> Tensor:
        """``L_reg`` for feature maps ``[B, D_k, *S_k]`` (one per scale), labels ``[B, *S]`` and the
        dataset index of every sample ``[B]``. ``update`` pushes this batch's class means into the
        memory bank first (only a level's real step may: recomputations must not store twice)."""
        if self.bank is not None and len(features) != len(self.bank.dims):
            raise ValueError(f"expected {len(self.bank.dims)} feature maps, got {len(features)}")
        datasets = torch.unique(domain).tolist()
        total = features[0].new_zeros(())
        for scale, fmap in enumerate(features):
            means, present = class_means(fmap, label, self.tissues)
            if self.bank is not None:
                if update:
                    self.bank.push(scale, means, present)
                anchors, anchor_valid = self.bank.prototypes(scale)
            else:
                anchors, anchor_valid = sample_anchors(means, present, domain)
            for d in datasets:
                rows = domain == d
                a, v = (anchors, anchor_valid) if anchors.dim() == 2 else (anchors[rows], anchor_valid[rows])
                total = (
                    total
                    + regulariser_terms(a, v, means[rows], present[rows], margin=self.margin, hinge=self.hinge).sum()
                )
        return total / (len(self.tissues) * len(datasets) * len(features))  # 1/(6K) for two datasets

    def state_dict(self) -> dict[str, Any]:
        return {} if self.bank is None else {"bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.bank is not None:
            if "bank" not in state:
                raise ValueError("the checkpoint holds no memory bank, but this regulariser uses prototypes")
            self.bank.load_state_dict(state["bank"])
