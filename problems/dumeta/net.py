"""The DuMeta++ U-Net (Table VII): an encoder E_θ and a segmentation head D_ω, split by module.

The topology is MONAI's DynUNet with the paper's settings — six encoder stages (an input block at
full resolution, four stride-2 downsampling blocks, a stride-2 bottleneck at 1/32), five decoder
stages (transposed convolution, concatenation with the skip, two convolutions), 3×3(×3) kernels,
widths ``c·(1, 2, 4, 8, 10, 10)`` (c = 32 in the paper), InstanceNorm (affine) and ReLU, and a
1×1(×1) output head after every decoder stage (deep supervision at 1/16 … 1/1). It is built from
MONAI's own DynUNet blocks (``UnetBasicBlock``, ``UnetUpBlock``, ``UnetOutBlock``) with DynUNet's
initialisation, but with an explicit forward: DynUNet's recursive forward hides the per-scale
decoder features the class-aware regulariser needs (Sec. III-B) and upsamples the deep-supervision
logits, whereas here they stay at their own scale (labels are downsampled, as in nnU-Net).

Parameters belong to two modules, so the meta-learner/base-learner split is by module structure:

* ``net.encoder`` — θ, the feature extractor (Table VII layers 0–11);
* ``net.decoder`` — ω, the segmentation head: ``decoder.stages[i]`` (coarse to fine, 1/16 … 1/1)
  and ``decoder.heads[i]`` (the 1×1 output on stage i; ``heads[-1]`` is the final output).

During meta-training the head is the whole decoder (as the paper). At meta-test the fine-tuned head
may be only the last ``depth`` decoder stages with their output heads (Fig. 7, Appendix II:
"ft 3 upsample layers" = layers 18–27); :func:`head_parameters` selects them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetUpBlock
from monai.networks.nets import DynUNet
from torch import Tensor, nn

__all__ = [
    "PAPER_WIDTH_MULTIPLIERS",
    "DualUNet",
    "UNetDecoder",
    "UNetEncoder",
    "UNetOutput",
    "fine_tuned_modules",
    "head_parameters",
]

PAPER_WIDTH_MULTIPLIERS = (1, 2, 4, 8, 10, 10)
"""Channel widths of the six encoder stages as multiples of ``c`` (Table VII: c, 2c, 4c, 8c, 10c, 10c)."""

_NORM = ("INSTANCE", {"affine": True})
_ACT = ("relu", {"inplace": False})  # not in place: the decoder features are returned to the regulariser


@dataclass
class UNetOutput:
    """What one forward pass returns; every list runs fine to coarse (index 0 = full resolution).

    Attributes:
        logits: K = 5 tensors ``[B, n_classes, *S_k]``, ``S_k = S / 2**k`` (deep-supervision outputs).
        decoder_features: the five decoder stage outputs ``[B, C_k, *S_k]`` (Table VII layers 26, 23,
            20, 17, 14), the multi-scale features F_k of Sec. III-B.
        encoder_features: the outputs of encoder stages 0–4 ``[B, C_k, *S_k]`` (layers 1, 3, 5, 7, 9),
            which Appendix II also lists among the regularised layers.
    """

    logits: list[Tensor]
    decoder_features: list[Tensor]
    encoder_features: list[Tensor]


class UNetEncoder(nn.Module):
    """θ: six ``UnetBasicBlock`` stages (two convolutions each), strides 1, 2, 2, 2, 2, 2."""

    def __init__(self, spatial_dims: int, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        self.stages = nn.ModuleList(
            UnetBasicBlock(
                spatial_dims, in_channels if i == 0 else widths[i - 1], widths[i], 3, 1 if i == 0 else 2, _NORM, _ACT
            )
            for i in range(len(widths))
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x`` ``[B, in, *S]`` -> the six stage outputs, fine to coarse (the last is the bottleneck)."""
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class UNetDecoder(nn.Module):
    """ω: five ``UnetUpBlock`` stages (coarse to fine) and a 1×1 ``UnetOutBlock`` on each."""

    def __init__(self, spatial_dims: int, out_channels: int, widths: tuple[int, ...]):
        super().__init__()
        ups = list(range(len(widths) - 1, 0, -1))  # stage i upsamples encoder level ups[i] into level ups[i] - 1
        self.stages = nn.ModuleList(
            UnetUpBlock(spatial_dims, widths[k], widths[k - 1], 3, 2, 2, _NORM, _ACT) for k in ups
        )
        self.heads = nn.ModuleList(UnetOutBlock(spatial_dims, widths[k - 1], out_channels) for k in ups)

    def forward(self, skips: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Encoder outputs (fine to coarse) -> (logits, features), both fine to coarse."""
        x = skips[-1]
        features, logits = [], []
        for stage, head, skip in zip(self.stages, self.heads, reversed(skips[:-1])):
            x = stage(x, skip)
            features.append(x)
            logits.append(head(x))
        return logits[::-1], features[::-1]


class DualUNet(nn.Module):
    """E_θ + D_ω (Table VII): a 2D or 3D U-Net with five down- and five up-sampling stages.

    Args:
        spatial_dims: 3 (the paper) or 2 (the CPU presets; the same network on slices).
        in_channels: image channels (1: T1w).
        out_channels: classes including background (4: background, CSF, GM, WM).
        base_width: ``c`` of Table VII (32 in the paper).

    Inputs must have every spatial size divisible by 32 (five stride-2 stages).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 4, base_width: int = 32):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {base_width}")
        widths = tuple(base_width * m for m in PAPER_WIDTH_MULTIPLIERS)
        self.spatial_dims = spatial_dims
        self.widths = widths
        self.encoder = UNetEncoder(spatial_dims, in_channels, widths)
        self.decoder = UNetDecoder(spatial_dims, out_channels, widths)
        self.apply(DynUNet.initialize_weights)

    @property
    def num_scales(self) -> int:
        """K: decoder stages, deep-supervision outputs and regularised feature scales (5)."""
        return len(self.decoder.stages)

    @property
    def divisor(self) -> int:
        """Every spatial size must be a multiple of this (2 ** downsampling stages = 32)."""
        return 2 ** (len(self.widths) - 1)

    def decoder_channels(self) -> list[int]:
        """Channels of the decoder features, fine to coarse: ``c, 2c, 4c, 8c, 10c``."""
        return list(self.widths[:-1])

    def forward(self, x: Tensor, *, encoder_grad: bool = True) -> UNetOutput:
        """``x`` ``[B, in, *S]`` -> :class:`UNetOutput`.

        ``encoder_grad=False`` runs the encoder without recording a graph: for losses that only
        differentiate the head (the inner step, the head initialisation), it saves the encoder's
        backward activations.
        """
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if x.dim() != self.spatial_dims + 2 or bad:
            raise ValueError(
                f"DualUNet({self.spatial_dims}D) expects [B, C, *S] with {self.spatial_dims} spatial "
                f"sizes divisible by {self.divisor}, got {tuple(x.shape)}"
            )
        with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
            skips = self.encoder(x)
        logits, features = self.decoder(skips)
        return UNetOutput(logits, features, skips[:-1])

    def predict(self, x: Tensor) -> Tensor:
        """Full-resolution logits ``[B, out, *S]`` (what inference and sliding windows call)."""
        return self.forward(x, encoder_grad=False).logits[0]


def fine_tuned_modules(net: DualUNet, depth: int | str) -> list[nn.Module]:
    """The modules fine-tuned at meta-test for a head of ``depth`` (Fig. 7).

    ``depth`` 1..5: the last ``depth`` decoder stages with their output heads (1: the final
    up-sampling stage only; 5: the whole decoder); 0: nothing (the pre-trained model as is);
    ``"all"``: the whole network, encoder included.
    """
    stages = len(net.decoder.stages)
    if depth == "all":
        return [net]
    if not isinstance(depth, int) or not 0 <= depth <= stages:
        raise ValueError(f"head depth must be an integer in 0..{stages} or 'all', got {depth!r}")
    if depth == 0:
        return []
    return [*net.decoder.stages[stages - depth :], *net.decoder.heads[stages - depth :]]


def head_parameters(net: DualUNet, depth: int | str) -> list[nn.Parameter]:
    """Parameters of :func:`fine_tuned_modules` (in module order, without duplicates)."""
    seen: dict[int, nn.Parameter] = {}
    for module in fine_tuned_modules(net, depth):
        for p in module.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())
