"""DuMeta++ meta-test: fine-tune the head on one or five subjects of an unseen domain, then segment.

Fine-tuning (Sec. IV-B): the encoder frozen, the last ``depth`` decoder stages (with their output
heads) trained with Dice + CE and deep supervision from the meta-learned initialisation; the
random-initialisation baselines train the whole network (``depth="all"``). It is a one-level
graph of the same engine, so it gets the same run folder, logs and resume as meta-training.

Segmentation runs MONAI's sliding-window inference: over the volume with 3D patches for the 3D
network, over every axial slice with 2D patches for the 2D one (predictions stacked along Z), so
both score on the subject's own grid with its voxel spacing.

:func:`meta_test` is one whole meta-test (fine-tune, segment the test subjects, score Dice/ASSD
and STCS/ASPC); :class:`PoolValidation` is the paper's model selection during meta-training (the
meta-trained network, no adaptation, on the pool's validation subjects); :func:`feature_embedding`
collects the class-mean decoder features of Fig. 6.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import Tensor, nn

from engines import Graph, Runner

from ..braindata import BrainDomain, Subject, dice_per_tissue, longitudinal_rows, score_subjects
from ..losses import PAPER_DS_WEIGHTS, DeepSupervisedDiceCE
from .data import JointSampler, PatchItems
from .domains import Data, split_for
from .levels import InnerLevel, meta_trained_parameters
from .methods import Job
from .net import DualUNet, head_parameters
from .optim import poly, sgd
from .prototypes import class_means

__all__ = [
    "MetaTestSetup",
    "PoolValidation",
    "decoder_class_means",
    "feature_embedding",
    "fine_tuning_graph",
    "meta_test",
    "network_from",
    "random_start",
    "reference_test",
    "scored",
    "segment_subject",
]


@dataclass(frozen=True)
class MetaTestSetup:
    """How every meta-test runs (Sec. IV-B): the network, the fine-tuning optimiser and its schedule,
    and inference.

    Attributes:
        dims, base_width: the network (2D or 3D, c of Table VII).
        patch: training patch edge and sliding window (2D: applied to every axial slice).
        steps, lr, momentum, weight_decay, batch: fine-tuning: SGD (Nesterov) with poly decay over
            ``steps``, ``batch`` patches of the support subjects per step.
        sw_batch: sliding-window batch at inference.
        test_people: cap on the test people of a domain (None: all).
        augment: nnU-Net's augmentation of the support patches (as the authors' fine-tuning trainer).
    """

    dims: int
    base_width: int
    patch: int
    steps: int
    lr: float
    momentum: float
    weight_decay: float
    batch: int
    sw_batch: int
    test_people: int | None = None
    augment: bool = False

    @property
    def roi(self) -> tuple[int, ...]:
        return (self.patch,) * self.dims

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """The 3D patch drawn from a volume (``pz = 1``: an axial 2D patch)."""
        return (self.patch, self.patch, 1 if self.dims == 2 else self.patch)


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


def random_start(dims: int, base_width: int, seed: int) -> dict[str, Tensor]:
    """A freshly initialised network's parameters (the random-initialisation baselines)."""
    torch.manual_seed(seed)
    return {n: p.detach().clone() for n, p in DualUNet(dims, base_width=base_width).named_parameters()}


def meta_test(
    start: Mapping[str, Tensor],
    job: Job,
    domain: BrainDomain,
    setup: MetaTestSetup,
    *,
    seed: int,
    out: Path,
    device: torch.device,
    precision: str = "fp32",
    progress: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``start`` on the support subjects of ``job`` in ``out`` (resuming an interrupted run;
    a finished one is read back from ``out/result.json``), segment the test subjects and score them.

    Returns :func:`scored`'s ``{"rows", "support", "test", "example"}``.
    """
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    net = network_from(DualUNet(setup.dims, base_width=setup.base_width), start)
    support, test = split_for(domain, job.shots, seed, setup.test_people)
    if job.depth != 0:
        items = PatchItems(
            f"{domain.name}-support", support, setup.patch_size, augment=setup.augment, device=str(device)
        )
        sampler = JointSampler([items], setup.batch, seed=seed)
        graph = fine_tuning_graph(
            net,
            sampler,
            depth=job.depth,
            optimizer=sgd(setup.lr, setup.momentum, setup.weight_decay),
            scheduler=poly(setup.steps),
        )
        Runner(
            graph,
            setup.steps,
            out=out,
            device=device,
            seed=seed,
            precision=precision,
            resume=(out / "checkpoint_latest.pt").exists(),
            progress=progress,
            config={"job": dataclasses.asdict(job), "support": [s.subject_id for s in support]},
        ).run()
    net = net.to(device)
    predictions = {
        s.subject_id: segment_subject(net, s, roi=setup.roi, batch=setup.sw_batch, device=device) for s in test
    }
    payload = scored(predictions, support, test, job, seed)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".result.json.tmp"
    tmp.write_text(json.dumps(payload))
    tmp.replace(done)
    return payload


def reference_test(method: str, job: Job, domain: BrainDomain, setup: MetaTestSetup, *, seed: int, **_: Any) -> dict:
    """Table IV's yardsticks on the test scans of ``job``'s split, in :func:`meta_test`'s form: ``"truth"``
    scores the labels themselves, ``"all-gm"`` labels every brain voxel (label > 0) grey matter."""
    if method not in ("truth", "all-gm"):
        raise ValueError(f"reference must be 'truth' or 'all-gm', got {method!r}")
    support, test = split_for(domain, job.shots, seed, setup.test_people)
    predictions = {s.subject_id: s.label if method == "truth" else np.where(s.label > 0, 2, 0) for s in test}
    return scored(predictions, support, test, job, seed)


def scored(
    predictions: Mapping[str, np.ndarray], support: Sequence[Subject], test: Sequence[Subject], job: Job, seed: int
) -> dict[str, Any]:
    """What a meta-test returns: Dice/ASSD rows per test scan and STCS/ASPC rows per series pair (keyed by
    domain, shots, depth and seed), the subject ids, and the axial slice with the most brain of the first
    test scan (image, truth, prediction) for the figures."""
    key = {"shots": job.shots, "depth": str(job.depth), "seed": seed}
    rows = [{**r, **key} for r in score_subjects(predictions, test) + longitudinal_rows(predictions, test)]
    first = test[0]
    z = int(np.argmax((first.label > 0).sum(axis=(0, 1))))
    return {
        "rows": rows,
        "support": [s.subject_id for s in support],
        "test": [s.subject_id for s in test],
        "example": {
            "subject": first.subject_id,
            "image": first.image[:, :, z].tolist(),
            "truth": first.label[:, :, z].tolist(),
            "prediction": np.asarray(predictions[first.subject_id])[:, :, z].tolist(),
        },
    }


class PoolValidation:
    """Mean Dice over tissues of the meta-trained network (θ with φ, no adaptation) on the pool's
    validation subjects: the paper's model selection on the 20 % validation partitions."""

    def __init__(self, net: DualUNet, subjects: Sequence[Subject], setup: MetaTestSetup, device: torch.device):
        self.net, self.subjects, self.setup, self.device = net, list(subjects), setup, device

    def __call__(self, graph: Graph) -> dict[str, float]:
        net = network_from(self.net, meta_trained_parameters(graph, self.net)).to(self.device)
        scores = [
            v
            for s in self.subjects
            for v in dice_per_tissue(
                segment_subject(net, s, roi=self.setup.roi, batch=self.setup.sw_batch, device=self.device), s.label
            ).values()
        ]
        finite = [v for v in scores if math.isfinite(v)]
        return {"val_dice": float(np.mean(finite)) if finite else 0.0}


def feature_embedding(net: DualUNet, data: Data, setup: MetaTestSetup, items: int, seed: int) -> dict[str, Any]:
    """Per-sample class-mean decoder features of ``items`` patches of every domain (pool and unseen),
    for Fig. 6: ``{domain: [{"means", "present"} per scale]}``."""
    domains = [(p.name, p.subjects) for p in data.pool] + [(d.name, d.subjects) for d in data.targets]
    sources = [(name, PatchItems(name, subjects, setup.patch_size)) for name, subjects in domains]  # no augmentation
    out = {}
    for name, patches in sources:
        image, label = patches.draw(items, torch.Generator().manual_seed(seed))
        scales = decoder_class_means(net, image, label, chunk=setup.sw_batch)
        out[name] = [{k: torch.from_numpy(v) for k, v in scale.items()} for scale in scales]
    return out
