"""DuMeta++ meta-test: fine-tune the head on one or five subjects of an unseen domain, then segment.

Fine-tuning (Sec. IV-B): the encoder frozen, the last ``depth`` decoder stages (with their output
heads) trained with Dice + CE and deep supervision from the meta-learned initialisation; the
random-initialisation baselines train the whole network (``depth="all"``). It is a one-level
graph of the same engine, so it gets the same run folder, logs and resume as meta-training.

Segmentation runs MONAI's sliding-window inference: over the volume with 3D patches for the 3D
network, over every axial slice with 2D patches for the 2D one (predictions stacked along Z), so
both score on the subject's own grid with its voxel spacing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import Tensor, nn

from engines import Graph

from ..braindata import Subject
from ..losses import PAPER_DS_WEIGHTS, DeepSupervisedDiceCE
from .data import JointSampler
from .levels import InnerLevel
from .net import DualUNet, head_parameters
from .prototypes import class_means

__all__ = ["decoder_class_means", "fine_tuning_graph", "network_from", "segment_subject"]


def network_from(template: DualUNet, values: Mapping[str, Tensor]) -> DualUNet:
    """A copy of ``template`` holding ``values`` (every parameter, by name): the start of fine-tuning."""
    net = copy.deepcopy(template)
    missing = sorted({n for n, _ in net.named_parameters()} - set(values))
    if missing:
        raise KeyError(f"no starting value for parameters {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(values[name])
    return net


def fine_tuning_graph(
    net: DualUNet,
    support: JointSampler,
    *,
    depth: int | str,
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    scheduler: Callable | None = None,
    ds_weights: Sequence[float] = PAPER_DS_WEIGHTS,
) -> Graph:
    """One level, ``head``, training :func:`~problems.dumeta.net.head_parameters` of ``net`` at
    ``depth`` (1..5 or ``"all"``) on mini-batches of the support subjects; the rest stays frozen."""
    if depth == 0:
        raise ValueError("head depth 0 fine-tunes nothing: evaluate the meta-trained network directly")
    params = head_parameters(net, depth)
    chosen = {id(p) for p in params}
    for p in net.parameters():
        p.requires_grad_(id(p) in chosen)
    graph = Graph(f"dumeta-finetune[depth={depth}]")
    graph.add(
        InnerLevel(
            "head",
            net,
            net=net,
            seg_loss=DeepSupervisedDiceCE(ds_weights),
            adapts_encoder=True,
            data=support,
            optimizer=optimizer,
            scheduler=scheduler,
            trainable=lambda module: head_parameters(module, depth),
        )
    )
    return graph


@torch.no_grad()
def segment_subject(
    net: DualUNet, subject: Subject, *, roi: Sequence[int], batch: int = 4, device: torch.device | str = "cpu"
) -> np.ndarray:
    """The label map ``[X, Y, Z]`` (int64) predicted for ``subject`` on its own grid.

    ``roi``: the sliding window, 3 sizes for the 3D network, 2 for the 2D one (applied to every
    axial slice); windows overlap by half and are blended with Gaussian weights.
    """
    if len(roi) != net.spatial_dims:
        raise ValueError(
            f"roi must have {net.spatial_dims} sizes for the {net.spatial_dims}D network, got {tuple(roi)}"
        )
    was_training = net.training
    net.eval()
    dtype = next(net.parameters()).dtype
    image = torch.as_tensor(subject.image, dtype=dtype, device=device)
    # one volume [1, 1, X, Y, Z] in 3D, axial slices [Z, 1, X, Y] in 2D
    inputs = image[None, None] if net.spatial_dims == 3 else image.permute(2, 0, 1)[:, None]
    logits = sliding_window_inference(
        inputs, roi_size=tuple(roi), sw_batch_size=batch, predictor=net.predict, overlap=0.5, mode="gaussian"
    )
    labels = logits.argmax(1)
    labels = labels[0] if net.spatial_dims == 3 else labels.permute(1, 2, 0)
    net.train(was_training)
    return labels.to(torch.int64).cpu().numpy()


@torch.no_grad()
def decoder_class_means(
    net: DualUNet, image: Tensor, label: Tensor, *, tissues: Sequence[int] = (1, 2, 3), chunk: int = 8
) -> list[dict[str, Any]]:
    """Per-sample class-mean decoder features for the feature embedding of Fig. 6.

    ``image [N, 1, *S]``, ``label [N, *S]`` -> one entry per scale (fine to coarse) with ``means``
    ``[N, len(tissues), D_k]`` and ``present`` ``[N, len(tissues)]`` (numpy).
    """
    was_training = net.training
    net.eval()
    dtype, device = next(net.parameters()).dtype, next(net.parameters()).device
    per_scale: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(net.num_scales)]
    for start in range(0, len(image), chunk):
        x = image[start : start + chunk].to(device, dtype)
        y = label[start : start + chunk].to(device)
        for k, features in enumerate(net(x, encoder_grad=False).decoder_features):
            per_scale[k].append(class_means(features, y, tissues))
    net.train(was_training)
    return [
        {
            "means": torch.cat([m for m, _ in parts]).cpu().numpy(),
            "present": torch.cat([p for _, p in parts]).cpu().numpy(),
        }
        for parts in per_scale
    ]
