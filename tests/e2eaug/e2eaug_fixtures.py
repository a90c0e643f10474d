"""A tiny E2EAug graph on the embedded ISIC sample, shared by the E2EAug tests."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from engines import DataStream
from problems.e2eaug import (
    ArchitectureLevel,
    AugmentedPairs,
    Optimizers,
    Pix2PixLevel,
    SegmentationLevel,
    e2eaug_graph,
    frozen_architecture_graph,
    segmentation_model,
)
from problems.e2eaug.augment import mask_augmentation
from problems.e2eaug.pix2pix import GeneratorArchitecture, Pix2Pix, UNetGenerator, patch_discriminator
from problems.segdata import SAMPLE_SPLITS, SegmentationDataset, ensure_dataset, find_cases, make_splits

SIZE = 16


@functools.lru_cache(maxsize=1)
def isic_sample(root: str) -> tuple:
    path, source = ensure_dataset("isic2018", None, sample_root=Path(root))
    splits = make_splits(
        "isic2018", find_cases("isic2018", path), 20, 0, test_size=SAMPLE_SPLITS["isic2018"]["test_size"]
    )
    return splits, source


def _tiny_levels(sample_root: Path, gan_method: str, seg_method: str, seed: int):
    splits, _ = isic_sample(str(sample_root))
    train = SegmentationDataset(splits.train, SIZE, cache=True)
    val = SegmentationDataset(splits.val, SIZE, cache=True)
    torch.manual_seed(seed)
    opt = Optimizers(seg_lr=1e-3, gan_lr=2e-4)
    architecture = GeneratorArchitecture(4)
    pix2pix = Pix2Pix(UNetGenerator(1, 3, n_down=4, ngf=8), patch_discriminator(1, 3, SIZE, ndf=8))
    gan = Pix2PixLevel(
        "gan",
        pix2pix,
        architecture,
        optimizer=opt.gan(),
        discriminator_optimizer=opt.gan(),
        data=DataStream(AugmentedPairs(train), 4, seed=seed),
        hypergrad=gan_method,
    )
    model = segmentation_model("unet", encoder="resnet18", in_channels=3, image_size=SIZE)
    seg = SegmentationLevel(
        "seg",
        model,
        optimizer=opt.seg(),
        hypergrad=seg_method,
        data=DataStream(AugmentedPairs(train, mask_augmentation()), 4, seed=seed + 1),
        synthesize=lambda m: (gan.generate(m) + 1) / 2,
    )
    return gan, seg, val, opt


def tiny_e2eaug(sample_root: Path, *, gan_method: str = "darts", seg_method: str = "darts", seed: int = 0):
    """Eq. (4) on 16-pixel images: a 4-cell searchable generator, a 3-stage U-Net, all three levels."""
    gan, seg, val, opt = _tiny_levels(sample_root, gan_method, seg_method, seed)
    arch = ArchitectureLevel(
        "arch",
        gan.architecture,
        segmenter=seg,
        optimizer=opt.arch(),
        data=DataStream(AugmentedPairs(val), 4, seed=seed + 2),
    )
    return e2eaug_graph(gan, seg, arch)


def tiny_frozen_architecture(sample_root: Path, *, seed: int = 0):
    """The same levels without ``arch``: A held constant, G and W trained jointly."""
    gan, seg, _, _ = _tiny_levels(sample_root, "darts", "darts", seed)
    gan.architecture.requires_grad_(False)
    return frozen_architecture_graph(gan, seg)
