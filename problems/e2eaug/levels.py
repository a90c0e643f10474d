"""E2EAug's three levels (GAN / segmentation / architecture) and the graphs built from them.

Eq. (4) of the paper, read bottom-up:

    gan  (Eq. 1)  G*(A), E* = argmin_G max_E L_gan(D_gan; G, A, E)
    seg  (Eq. 2)  W*(G*(A), A) = argmin_W L_seg(D_tr; W) + λ L_seg(D_aug(D_tr; G*(A), A); W)
    arch (Eq. 3)  min_A L_seg(D_val; W*(G*(A), A))

Wiring: ``nest(gan, seg)`` (G enters Eq. 2), ``nest(seg, arch)`` (W enters Eq. 3) and
``feeds(arch, into=[gan, seg])`` (A enters Eq. 1 through the generator's cells and Eq. 2
through the generated images). ``arch`` therefore receives its hypergradient along two paths,
``arch <- seg`` and ``arch <- seg <- gan``, one hop per level with the method each level names
(by default differentiated exactly through each level's one real step, §3.3's one-step unrolling).

:func:`frozen_architecture_graph` is the control "A frozen, G trained end to end": Eq. (1) and
Eq. (2) solved jointly in one run (G keeps training by its GAN loss while W trains on its
images), with A held at a constant and no Eq. (3); it differs from Eq. (4) only by the search.

The minimax of Eq. 1 is solved by alternating gradient steps inside the ``gan`` level: every
step first moves the discriminator E up the GAN objective (its own optimizer, generator output
detached), then moves G down it (the level's optimizer). Upper levels differentiate G's
best response with E held at its current value.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import albumentations as A
import numpy as np
import segmentation_models_pytorch as smp
import torch
from monai.losses import PatchAdversarialLoss
from torch import Tensor, nn
from torch.utils.data import Dataset

from engines import Graph, Level

from ..metrics import per_image_score
from ..segdata import SegmentationDataset
from .pix2pix import GeneratorArchitecture, Pix2Pix

__all__ = [
    "ArchitectureLevel",
    "AugmentedPairs",
    "Optimizers",
    "Pix2PixLevel",
    "SegmentationLevel",
    "e2eaug_graph",
    "evaluate",
    "frozen_architecture_graph",
    "segmentation_model",
]


def _bce(logits: Tensor, mask: Tensor) -> Tensor:
    """Pixel-wise binary cross-entropy: the paper's L_seg for one foreground class."""
    return nn.functional.binary_cross_entropy_with_logits(logits, mask)


class AugmentedPairs(Dataset):
    """Training pairs plus an augmented copy drawn with a per-item seed.

    Items: ``{"image": [C,S,S], "mask": [1,S,S]}`` and, when ``augmentation`` is given,
    ``{"aug_image", "aug_mask"}``: the pair transformed jointly (only ``aug_mask`` is used
    by the GAN methods, which synthesise their own image for it).
    """

    def __init__(self, pairs: SegmentationDataset, augmentation: A.Compose | None = None):
        self.pairs = pairs
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(self, index: int, seed: int) -> dict[str, Tensor]:
        image, mask = self.pairs.arrays(index)
        item = {"image": _chw(image), "mask": _chw(mask[..., None])}
        if self.augmentation is not None:
            self.augmentation.set_random_seed(seed)
            out = self.augmentation(image=image, mask=mask)
            item.update(aug_image=_chw(out["image"]), aug_mask=_chw(out["mask"][..., None]))
        return item

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.sample(index, index)


def _chw(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32))


class Pix2PixLevel(Level):
    """``gan`` — Eq. (1): generator G trained here, discriminator E its adversary, A held fixed.

    Args:
        pix2pix: generator and discriminator; only the generator's weights are this level's
            trainable parameters (upper levels differentiate through them).
        architecture: the generator architecture A (owned by the ``arch`` level, or held
            constant); None for a one-candidate generator (vanilla Pix2Pix).
        optimizer: factory for G's optimizer; ``discriminator_optimizer`` for E's.
        lambda_l1: weight of Pix2Pix's L1 reconstruction term (100 in Pix2Pix).
    """

    def __init__(
        self,
        name: str,
        pix2pix: Pix2Pix,
        architecture: GeneratorArchitecture | None,
        *,
        optimizer: Callable,
        discriminator_optimizer: Callable,
        data: Any,
        lambda_l1: float = 100.0,
        **level_options: Any,
    ):
        if (architecture is None) == pix2pix.generator.searchable:
            raise ValueError("a searchable generator needs its architecture A, a one-candidate generator none")
        super().__init__(
            name, pix2pix, optimizer, data=data, trainable=lambda m: m.generator.parameters(), **level_options
        )
        self.architecture = architecture
        self.discriminator_optimizer = discriminator_optimizer(pix2pix.discriminator.parameters())
        self.lambda_l1 = lambda_l1
        self.adversarial = PatchAdversarialLoss(criterion="bce")
        self._last_d_loss = float("nan")

    def generate(self, mask: Tensor) -> Tensor:
        """f(M; G, A): the generator's image for ``mask`` [B,1,H,W], in [-1, 1]."""
        return self.module.generator(mask, None if self.architecture is None else self.architecture.weights())

    def before_step(self, batch: dict[str, Tensor]) -> None:
        """max_E of Eq. (1): one step of E on ½[BCE(E(M, I), real) + BCE(E(M, G(M)), fake)]."""
        mask, real = batch["mask"], batch["image"] * 2 - 1
        with torch.no_grad():
            fake = self.generate(mask)
        d = self.module
        loss = 0.5 * (
            self.adversarial(d.critic(mask, real), target_is_real=True, for_discriminator=True)
            + self.adversarial(d.critic(mask, fake), target_is_real=False, for_discriminator=True)
        )
        params = list(d.discriminator.parameters())
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        self.sync_gradients(params)
        self.discriminator_optimizer.step()
        self._last_d_loss = float(loss.detach())

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """min_G of Eq. (1) with E fixed: BCE(E(M, G(M)), real) + λ_L1 · |G(M) - I|."""
        mask, real = batch["mask"], batch["image"] * 2 - 1
        fake = self.generate(mask)
        adversarial = self.adversarial(self.module.critic(mask, fake), target_is_real=True, for_discriminator=False)
        l1 = (fake - real).abs().mean()
        return {
            "loss": adversarial + self.lambda_l1 * l1,
            "adversarial": adversarial,
            "l1": l1,
            "discriminator": self._last_d_loss,
        }

    def extra_state_dict(self) -> dict[str, Any]:
        return {"discriminator_optimizer": self.discriminator_optimizer.state_dict()}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        if "discriminator_optimizer" in state:
            self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])


class SegmentationLevel(Level):
    """``seg`` — Eq. (2): W trained on real pairs plus λ-weighted augmented pairs.

    Args:
        model: the segmenter (one logit map per image).
        synthesize: ``mask -> image in [0, 1]`` used for the augmented masks (the ``gan``
            level's generator for E2EAug and its frozen-architecture control, a frozen vanilla
            Pix2Pix for GAN-Separate); None keeps the batch's jointly transformed ``aug_image``
            (simple baselines).
        lam: λ of Eq. (2) (1 in the paper). Batches without augmented items train on real
            pairs only.

    The level trains the parameters that require a gradient (:func:`segmentation_model` leaves out
    those its forward never uses); its golden probe is every parameter of the model.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        *,
        optimizer: Callable,
        data: Any,
        synthesize: Callable[[Tensor], Tensor] | None = None,
        lam: float = 1.0,
        **level_options: Any,
    ):
        level_options.setdefault("trainable", lambda m: [p for p in m.parameters() if p.requires_grad])
        level_options.setdefault("probe", lambda lv: torch.cat([p.detach().flatten() for p in lv.module.parameters()]))
        super().__init__(name, model, optimizer, data=data, **level_options)
        self.synthesize = synthesize
        self.lam = lam

    def loss(self, batch: dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
        real = _bce(self.module(batch["image"]), batch["mask"])  # L_seg(D_tr; W)
        if "aug_mask" not in batch or self.lam == 0:
            return real
        aug_mask = batch["aug_mask"]
        aug_image = batch["aug_image"] if self.synthesize is None else self._synthesized(aug_mask)
        augmented = _bce(self.module(aug_image), aug_mask)  # L_seg(D_aug(D_tr; G*(A), A); W)
        return {"loss": real + self.lam * augmented, "real": real, "augmented": augmented}

    def _synthesized(self, mask: Tensor) -> Tensor:
        # a real step differentiates W only; the generator's graph is needed when an upper level recomputes the loss
        with torch.no_grad() if self.in_real_step else contextlib.nullcontext():
            return self.synthesize(mask)


class ArchitectureLevel(Level):
    """``arch`` — Eq. (3): the generator architecture A, scored by the segmenter's validation loss."""

    def __init__(
        self,
        name: str,
        architecture: GeneratorArchitecture,
        *,
        segmenter: Level,
        optimizer: Callable,
        data: Any,
        **level_options: Any,
    ):
        super().__init__(
            name,
            architecture,
            optimizer,
            data=data,
            probe=lambda lv: torch.cat(lv.module.weights()).flatten(),
            **level_options,
        )
        self.segmenter = segmenter

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        return _bce(self.segmenter.module(batch["image"]), batch["mask"])  # L_seg(D_val; W*(G*(A), A))


def e2eaug_graph(gan: Pix2PixLevel, seg: SegmentationLevel, arch: ArchitectureLevel, name: str = "e2eaug") -> Graph:
    """Eq. (4): the three levels nested end to end."""
    graph = Graph(name)
    graph.add(gan, seg, arch)
    graph.nest(lower=gan, upper=seg)  # G*(A) enters Eq. 2
    graph.nest(lower=seg, upper=arch)  # W* enters Eq. 3
    graph.feeds(arch, into=[gan, seg])  # A enters Eq. 1 (generator cells) and Eq. 2 (generated images)
    return graph


def frozen_architecture_graph(gan: Pix2PixLevel, seg: SegmentationLevel, name: str = "e2eaug_frozen_arch") -> Graph:
    """Eq. (1) and (2) trained jointly with A constant: ``gan`` steps, then ``seg`` on its images.

    No level differentiates through another (there is no Eq. 3), so the nest edge only orders the
    steps as in :func:`e2eaug_graph`: every global step, G and E take one step, then W one step.
    """
    graph = Graph(name)
    graph.add(gan, seg)
    graph.nest(lower=gan, upper=seg)  # G enters Eq. 2 (read at its current value)
    return graph


def segmentation_model(
    backbone: str, *, encoder: str, in_channels: int, image_size: int, encoder_weights: str | None = None
) -> nn.Module:
    """U-Net or DeepLabV3 from segmentation-models-pytorch with one output logit map.

    ``encoder_weights=None`` (default) trains from scratch; "imagenet" needs the weights to be
    downloadable or cached. Below 64 pixels the U-Net uses a 3-stage encoder so that its
    deepest features keep a spatial extent. smp keeps the encoder's deeper stages even then
    (resnet18's last two: 10.5 M of its 11.4 M parameters), so every parameter the forward pass
    never reaches is marked ``requires_grad=False``: no optimizer or hypergradient carries it.
    """
    kwargs = {"encoder_name": encoder, "encoder_weights": encoder_weights, "in_channels": in_channels, "classes": 1}
    if backbone == "unet":
        if image_size < 64:
            kwargs.update(encoder_depth=3, decoder_channels=(64, 32, 16))
        model = smp.Unet(**kwargs)
    elif backbone == "deeplabv3":
        model = smp.DeepLabV3(**kwargs)
    else:
        raise ValueError(f"backbone must be 'unet' or 'deeplabv3', got {backbone!r}")
    return _freeze_unused(model, in_channels, image_size)


def _freeze_unused(model: nn.Module, in_channels: int, image_size: int) -> nn.Module:
    """Mark the parameters that one forward pass (eval mode: no statistics updated, no randomness
    drawn) leaves without a gradient as not trainable."""
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    model(torch.zeros(1, in_channels, image_size, image_size, dtype=dtype)).sum().backward()
    model.train(was_training)
    for p in model.parameters():
        if p.grad is None:
            p.requires_grad_(False)
        p.grad = None
    return model


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: SegmentationDataset, metric: str, device: torch.device, batch_size: int = 16
) -> tuple[Tensor, list[str]]:
    """Per-image scores [N] of ``model`` (in eval mode) on ``dataset``, and the case ids."""
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    scores, ids = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        logits = model(batch["image"].to(device, dtype))
        scores.append(per_image_score(logits, batch["mask"].to(device), metric).cpu())
        ids.extend(batch["case_id"])
    model.train(was_training)
    return torch.cat(scores), ids


def adam(lr: float, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0) -> Callable:
    """Optimizer factory (params -> Adam), for levels."""
    return functools.partial(torch.optim.Adam, lr=lr, betas=betas, weight_decay=weight_decay)


def rmsprop(lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> Callable:
    """Optimizer factory (params -> RMSprop), for levels."""
    return functools.partial(torch.optim.RMSprop, lr=lr, momentum=momentum, weight_decay=weight_decay)


@dataclass(frozen=True)
class Optimizers:
    """Optimizer settings of the three levels (defaults: §4.1 of the paper; A's rate is unstated
    there and follows DARTS)."""

    seg_lr: float = 1e-5
    seg_momentum: float = 0.9
    seg_weight_decay: float = 1e-3
    gan_lr: float = 1e-5
    gan_betas: tuple[float, float] = (0.5, 0.999)
    gan_weight_decay: float = 1e-3
    arch_lr: float = 3e-4
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3

    def seg(self) -> Callable:
        return rmsprop(self.seg_lr, self.seg_momentum, self.seg_weight_decay)

    def gan(self) -> Callable:
        return adam(self.gan_lr, self.gan_betas, self.gan_weight_decay)

    def arch(self) -> Callable:
        return adam(self.arch_lr, self.arch_betas, self.arch_weight_decay)
