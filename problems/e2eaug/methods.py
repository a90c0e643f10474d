"""The methods E2EAug is compared with (Tables 2/3, §4.3) and the graph each one trains.

Every method trains the same segmenter level (Eq. 2) for the same number of steps; they differ
in where its augmented pairs come from:

* ``none``: no augmented pairs; ``rotate``, ``flip``, ``translate``, ``combine``: image and mask
  transformed together (:func:`~problems.e2eaug.augment.joint_augmentation`);
* ``gan_separate``: vanilla Pix2Pix (one candidate per cell, no α) trained first, then frozen,
  draws the image of each augmented mask — the paper's "GAN" baseline and §4.3 "Separate";
* ``e2eaug_frozen_arch``: the searchable generator trained jointly with the segmenter, its
  architecture A held at its initialisation (no Eq. 3): isolates the search;
* ``e2eaug``: Eq. (4), the three levels of :mod:`~problems.e2eaug.levels`.

Each is one graph: the baselines are one-level graphs of the same ``seg`` level. The generators of
the GAN-based methods come pre-trained (:mod:`~problems.e2eaug.pretraining`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from engines import METHODS as HYPERGRAD_METHODS
from engines import DataStream, Graph

from .augment import MASK_OPERATIONS, joint_augmentation, mask_augmentation
from .data import Data
from .levels import (
    ArchitectureLevel,
    AugmentedPairs,
    Optimizers,
    Pix2PixLevel,
    SegmentationLevel,
    e2eaug_graph,
    frozen_architecture_graph,
    segmentation_model,
)
from .pix2pix import PIX2PIX_CANDIDATE, GeneratorArchitecture, Pix2Pix, UNetGenerator, patch_discriminator

__all__ = [
    "BACKBONES",
    "DEFAULT_HYPERGRAD",
    "LEVEL_OPTIMIZERS",
    "METHODS",
    "SEARCHABLE_GAN_METHODS",
    "SIMPLE_METHODS",
    "Execution",
    "Settings",
    "build_graph",
    "check_settings",
    "continued_gan_level",
    "gan_level",
    "new_pix2pix",
    "new_segmenter",
]

SIMPLE_METHODS = ("none", "rotate", "flip", "translate", "combine")
METHODS = (*SIMPLE_METHODS, "gan_separate", "e2eaug_frozen_arch", "e2eaug")
SEARCHABLE_GAN_METHODS = ("e2eaug_frozen_arch", "e2eaug")
"""The methods that continue the pre-trained searchable generator."""
BACKBONES = ("unet", "deeplabv3")
DEFAULT_HYPERGRAD = "exact"
"""How upper levels differentiate through ``gan`` and ``seg`` unless told otherwise: §3.3's one-step
unrolled hypergradient, differentiated through each level's real optimizer step (``exact`` over the
levels' one-step window: Adam's and RMSprop's states depend on the gradient they precondition).
``one_step``, which holds the preconditioner fixed, disagrees with it on the smoke graph (the
hypergradient doctor's table in docs/recipes/e2eaug.md)."""
LEVEL_OPTIMIZERS = {"gan": "Adam", "seg": "RMSprop"}
"""The optimizer of each level crossed by hypergradients (what :class:`Optimizers` builds)."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything that fixes one run of any method (the recipe's presets extend it).

    Attributes:
        image_size: side of the square images; a power of two >= 16 (the generator halves it).
        ngf, ndf: base widths of the generator and of the PatchGAN discriminator.
        batch_size: pairs per step (a split smaller than that is one batch).
        pretrain_steps: Pix2Pix updates before the end-to-end phase; every generator takes
            ``pretrain_steps + steps`` updates in all.
        steps: segmenter steps (and end-to-end steps).
        encoder, encoder_weights: the segmenter's smp encoder and its initial weights (None: random).
        optimizers: the three levels' optimizers; lambda_aug: λ of Eq. 2; lambda_l1: Pix2Pix's L1 weight.
    """

    image_size: int
    ngf: int
    ndf: int
    batch_size: int
    pretrain_steps: int
    steps: int
    encoder: str
    optimizers: Optimizers = field(default_factory=Optimizers)
    lambda_aug: float = 1.0
    lambda_l1: float = 100.0
    encoder_weights: str | None = None

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size & (self.image_size - 1):
            raise ValueError(
                f"image_size must be a power of two >= 16 (the U-Net generator halves it), got {self.image_size}"
            )

    @property
    def n_down(self) -> int:
        """Down (and up) cells of the generator: the image is halved down to one pixel."""
        return int(math.log2(self.image_size))


@dataclass(frozen=True)
class Execution:
    """How runs execute, without changing what they compute: device, autocast precision, loader
    workers, progress bars."""

    device: torch.device
    precision: str = "fp32"
    workers: int = 0
    progress: bool = True


def check_settings(settings: Settings, backbones: tuple[str, ...], channels: int, hypergrad: Mapping[str, str]) -> None:
    """What can be checked before any training: each hypergradient method against the optimizer of
    its level, and that every segmenter can be built (encoder name, weights). Raises ValueError."""
    for level, method in hypergrad.items():
        allowed = HYPERGRAD_METHODS[method].optimizers
        if allowed is not None and LEVEL_OPTIMIZERS[level] not in allowed:
            raise ValueError(
                f"hypergradient method '{method}' needs one of {list(allowed)} at level '{level}', "
                f"which uses {LEVEL_OPTIMIZERS[level]}"
            )
    for backbone in backbones:
        try:
            new_segmenter(backbone, settings, channels, seed=0)
        except Exception as err:  # smp raises KeyError/ValueError/download errors for bad encoders or weights
            raise ValueError(
                f"cannot build the {backbone} segmenter with encoder {settings.encoder!r} and "
                f"encoder weights {settings.encoder_weights!r}: {err}"
            ) from None


def new_pix2pix(settings: Settings, channels: int, *, searchable: bool) -> Pix2Pix:
    """E2EAug's searchable generator (K = 3 candidates per cell) or vanilla Pix2Pix's (Conv/UpConv-421)."""
    candidates = {} if searchable else {"candidates": (PIX2PIX_CANDIDATE,)}
    return Pix2Pix(
        UNetGenerator(1, channels, n_down=settings.n_down, ngf=settings.ngf, **candidates),
        patch_discriminator(1, channels, settings.image_size, ndf=settings.ndf),
    )


def _stream(pairs: AugmentedPairs, settings: Settings, seed: int, workers: int) -> DataStream:
    """Mini-batches of the settings' size, or of the whole split when it is smaller (JSRT N = 9 has
    2 validation cases)."""
    return DataStream(pairs, min(settings.batch_size, len(pairs)), seed=seed, num_workers=workers)


def gan_level(
    settings: Settings,
    pix2pix: Pix2Pix,
    architecture: GeneratorArchitecture | None,
    data: Data,
    seed: int,
    workers: int,
    **options: Any,
) -> Pix2PixLevel:
    """The ``gan`` level (Eq. 1) on the training pairs."""
    return Pix2PixLevel(
        "gan",
        pix2pix,
        architecture,
        optimizer=settings.optimizers.gan(),
        discriminator_optimizer=settings.optimizers.gan(),
        lambda_l1=settings.lambda_l1,
        data=_stream(AugmentedPairs(data.train), settings, seed, workers),
        **options,
    )


def new_segmenter(backbone: str, settings: Settings, channels: int, seed: int) -> torch.nn.Module:
    """The segmenter at its initialisation for ``seed``: drawn from its own generator, so it is the
    same for every method of a seed whatever was built before it (paired comparison)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return segmentation_model(
            backbone,
            encoder=settings.encoder,
            in_channels=channels,
            image_size=settings.image_size,
            encoder_weights=settings.encoder_weights,
        )


def _seg_level(
    backbone: str, seed: int, lam: float, settings: Settings, data: Data, augmentation: Any, workers: int, **options
) -> SegmentationLevel:
    plateau = lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=5)  # noqa: E731
    return SegmentationLevel(
        "seg",
        new_segmenter(backbone, settings, data.channels, seed),
        optimizer=settings.optimizers.seg(),
        lam=lam,
        scheduler=plateau,
        data=_stream(AugmentedPairs(data.train, augmentation), settings, seed + 1, workers),
        **options,
    )


def continued_gan_level(
    pretrained: Mapping[str, Any],
    settings: Settings,
    data: Data,
    seed: int,
    execution: Execution,
    hypergrad: str | None,
) -> Pix2PixLevel:
    """The ``gan`` level continuing the pre-trained searchable Pix2Pix (weights and both Adam states)."""
    architecture = GeneratorArchitecture(settings.n_down)
    architecture.load_state_dict(pretrained["architecture"])
    pix2pix = new_pix2pix(settings, data.channels, searchable=True)
    pix2pix.load_state_dict(pretrained["pix2pix"])
    pix2pix.to(execution.device)  # before the optimizer states load, so that they land on the parameters' device
    gan = gan_level(settings, pix2pix, architecture, data, seed, execution.workers, hypergrad=hypergrad)
    # copies: load_state_dict keeps the given tensors, which the optimizer then updates in place
    gan.optimizer.load_state_dict(copy.deepcopy(pretrained["optimizers"]["generator"]))
    gan.discriminator_optimizer.load_state_dict(copy.deepcopy(pretrained["optimizers"]["discriminator"]))
    return gan


def build_graph(
    method: str,
    *,
    backbone: str,
    seed: int,
    settings: Settings,
    data: Data,
    pretrained: Mapping[str, Mapping[str, Any]],
    execution: Execution,
    lam: float | None = None,
    mask_ops: tuple[str, ...] = MASK_OPERATIONS,
    hypergrad: Mapping[str, str] | None = None,
) -> Graph:
    """The graph of one run of ``method`` (one of :data:`METHODS`).

    Args:
        pretrained: ``{"searchable": ..., "vanilla": ...}`` from
            :func:`~problems.e2eaug.pretraining.pretrain_generators` (what the method needs).
        lam: λ of Eq. 2 (None: ``settings.lambda_aug``); mask_ops: the mask operations of the
            GAN-based methods; hypergrad: method per level crossed (default :data:`DEFAULT_HYPERGRAD`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    lam = settings.lambda_aug if lam is None else lam
    hypergrad = dict(hypergrad or {})
    workers = execution.workers
    if method in SIMPLE_METHODS:
        graph = Graph(method)
        augmentation = None if method == "none" else joint_augmentation(method)
        graph.add(_seg_level(backbone, seed, lam, settings, data, augmentation, workers))
        return graph
    augmentation = mask_augmentation(mask_ops)
    if method == "gan_separate":  # GAN / Separate (§4.3): vanilla Pix2Pix trained first, then frozen
        pix2pix = new_pix2pix(settings, data.channels, searchable=False)
        pix2pix.load_state_dict(pretrained["vanilla"]["pix2pix"])
        generator = pix2pix.generator.requires_grad_(False).to(execution.device)

        def frozen(mask: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return (generator(mask) + 1) / 2

        graph = Graph(method)
        graph.add(_seg_level(backbone, seed, lam, settings, data, augmentation, workers, synthesize=frozen))
        return graph
    # hypergradients cross gan and seg only under arch; the A-frozen control has no upper level to carry
    hops = {lv: hypergrad.get(lv, DEFAULT_HYPERGRAD) if method == "e2eaug" else None for lv in ("gan", "seg")}
    gan = continued_gan_level(pretrained["searchable"], settings, data, seed, execution, hops["gan"])
    seg = _seg_level(
        backbone,
        seed,
        lam,
        settings,
        data,
        augmentation,
        workers,
        hypergrad=hops["seg"],
        synthesize=lambda mask: (gan.generate(mask) + 1) / 2,
    )
    if method == "e2eaug_frozen_arch":  # A held at its initialisation, G and W trained jointly
        gan.architecture.requires_grad_(False).to(execution.device)
        return frozen_architecture_graph(gan, seg)
    arch = ArchitectureLevel(
        "arch",
        gan.architecture,
        segmenter=seg,
        optimizer=settings.optimizers.arch(),
        data=_stream(AugmentedPairs(data.val), settings, seed + 2, workers),
    )
    return e2eaug_graph(gan, seg, arch)
