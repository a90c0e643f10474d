"""Scoring a trained run: validation for checkpoint selection, per-image test scores, examples.

The metric is the dataset's (Jaccard on skin sets, Dice otherwise; sigmoid > 0.5, an image with
empty ground truth and empty prediction scores 1), per image with MONAI
(:func:`problems.metrics.per_image_score`), then averaged over each test set.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from engines import Graph

from .augment import mask_augmentation
from .data import Data
from .levels import AugmentedPairs, Pix2PixLevel, evaluate

__all__ = ["examples", "test_scores", "validation"]


def validation(data: Data, device: torch.device) -> Callable[[Graph], dict[str, float]]:
    """``graph -> {"val_<metric>": mean score of the segmenter on the validation split}``."""

    def validate(graph: Graph) -> dict[str, float]:
        scores, _ = evaluate(graph["seg"].module, data.val, data.metric, device)
        return {f"val_{data.metric}": float(scores.mean())}

    return validate


def test_scores(model: torch.nn.Module, data: Data, device: torch.device) -> dict[str, dict]:
    """``{test set: {"mean", "n", "per_image": {case id: score}}}`` over every test set of ``data``."""
    out = {}
    for name, dataset in data.tests.items():
        scores, ids = evaluate(model, dataset, data.metric, device)
        out[name] = {"mean": float(scores.mean()), "n": len(ids), "per_image": dict(zip(ids, scores.tolist()))}
    return out


@torch.no_grad()
def examples(graph: Graph, data: Data, device: torch.device, n: int = 5, n_pairs: int = 6) -> dict[str, np.ndarray]:
    """What the report's figures show of one run, as arrays in [0, 1]:

    ``image``, ``mask``, ``prediction`` [n, C, H, W]: the first ``n`` in-distribution test images, their
    ground truth and the segmenter's mask (sigmoid > 0.5, eval mode); with a ``gan`` level also
    ``real``, ``aug_mask``, ``generated`` [n_pairs, C, H, W]: training images, augmented masks M̂
    and the generator's image f(M̂; G, A) of each.
    """
    test = next(iter(data.tests.values()))
    items = [test[i % len(test)] for i in range(n)]
    model = graph["seg"].module
    was_training = model.training
    model.eval()
    images = torch.stack([item["image"] for item in items])
    out = {
        "image": images.numpy(),
        "mask": torch.stack([item["mask"] for item in items]).numpy(),
        "prediction": (model(images.to(device)) > 0).float().cpu().numpy(),
    }
    model.train(was_training)
    if "gan" in graph.levels:
        gan: Pix2PixLevel = graph["gan"]
        pairs = AugmentedPairs(data.train, mask_augmentation())
        drawn = [pairs.sample(j % len(pairs), 1000 + j) for j in range(n_pairs)]
        masks = torch.stack([item["aug_mask"] for item in drawn])
        out["real"] = torch.stack([item["image"] for item in drawn]).numpy()
        out["aug_mask"] = masks.numpy()
        out["generated"] = ((gan.generate(masks.to(device)) + 1) / 2).clamp(0, 1).cpu().numpy()
    return out
