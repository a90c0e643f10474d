"""Mask-to-image Pix2Pix with a searchable U-Net generator (E2EAug §3.2) and a PatchGAN discriminator.

The generator is Pix2Pix's U-Net (Isola et al. 2017): ``n_down`` down cells halve the
resolution, ``n_down`` up cells double it, with skip connections. In E2EAug every cell is a
*mixed operation* over K = 3 candidates whose kernel-stride-padding all give exactly x1/2
(down) or x2 (up) resolution:

    down: Conv-421, Conv-622, Conv-823        up: UpConv-421, UpConv-622, UpConv-823

and a cell's output is ``y_i = Σ_k α_{i,k} o_{i,k}(x_i)`` with ``α_i = softmax(a_i)`` (§3.2).
The architecture weights ``A = {a_i}`` live in :class:`GeneratorArchitecture`, a separate
module owned by the ``arch`` level, and are passed to the generator at call time, so the
generator's own parameters ``G`` and the architecture ``A`` belong to different levels.
Unlike the authors' released code, both down and up cells are searchable, as the paper says.

The same cells with the single candidate :data:`PIX2PIX_CANDIDATE` make vanilla Pix2Pix's
generator (plain Conv-421 / UpConv-421, no α): the paper's "GAN" baseline.
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets import PatchDiscriminator
from torch import Tensor, nn

__all__ = [
    "CANDIDATES",
    "PIX2PIX_CANDIDATE",
    "GeneratorArchitecture",
    "MixedConv",
    "Pix2Pix",
    "UNetGenerator",
    "patch_discriminator",
]

Candidate = tuple[int, int, int]

CANDIDATES: tuple[Candidate, ...] = ((4, 2, 1), (6, 2, 2), (8, 2, 3))
"""(kernel, stride, padding) of the K = 3 candidate operations of every searchable cell."""

PIX2PIX_CANDIDATE: Candidate = (4, 2, 1)
"""The one operation of vanilla Pix2Pix's cells (Conv-421 down, UpConv-421 up)."""


class GeneratorArchitecture(nn.Module):
    """The architecture ``A``: one row of K logits per down cell and per up cell.

    Initialised to ``1e-3 · N(0, 1)`` as in DARTS, i.e. an almost uniform mixture.
    """

    def __init__(self, n_down: int, k: int = len(CANDIDATES)):
        super().__init__()
        self.down = nn.Parameter(1e-3 * torch.randn(n_down, k))
        self.up = nn.Parameter(1e-3 * torch.randn(n_down, k))

    def weights(self) -> tuple[Tensor, Tensor]:
        """``(α_down [n_down, K], α_up [n_down, K])``: softmax over each cell's candidates."""
        return self.down.softmax(dim=-1), self.up.softmax(dim=-1)

    def genotype(self) -> dict[str, list[str]]:
        """The candidate each cell would keep (argmax of α), e.g. ``{"down": ["Conv-421", ...]}``."""
        names = lambda prefix: ["{}-{}{}{}".format(prefix, *CANDIDATES[i]) for i in range(len(CANDIDATES))]  # noqa: E731
        return {
            "down": [names("Conv")[i] for i in self.down.argmax(-1).tolist()],
            "up": [names("UpConv")[i] for i in self.up.argmax(-1).tolist()],
        }


class MixedConv(nn.Module):
    """``Σ_k w_k · conv_k(x)`` over the K candidate (transposed) convolutions of one cell; with a
    single candidate, that plain convolution (no weights)."""

    def __init__(
        self, c_in: int, c_out: int, *, transposed: bool, bias: bool, candidates: tuple[Candidate, ...] = CANDIDATES
    ):
        super().__init__()
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.ops = nn.ModuleList(conv(c_in, c_out, k, s, p, bias=bias) for k, s, p in candidates)

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        """``x``: [B, c_in, H, W]; ``weights``: [K] (one row of α), None for a one-candidate cell.
        Returns [B, c_out, H/2 or 2H, W/2 or 2W]."""
        if weights is None:
            if len(self.ops) != 1:
                raise ValueError(f"a cell with {len(self.ops)} candidates needs its row of architecture weights")
            return self.ops[0](x)
        if weights.shape != (len(self.ops),):
            raise ValueError(f"expected {len(self.ops)} architecture weights for this cell, got {tuple(weights.shape)}")
        return sum(w * op(x) for w, op in zip(weights, self.ops))


def _norm(channels: int) -> nn.Module:
    # Pix2Pix normalises with the statistics of the current batch at train *and* test time
    return nn.BatchNorm2d(channels, track_running_stats=False)


class _DownCell(nn.Module):
    def __init__(self, c_in: int, c_out: int, *, outermost: bool, innermost: bool, candidates: tuple[Candidate, ...]):
        super().__init__()
        self.act = nn.Identity() if outermost else nn.LeakyReLU(0.2)
        self.conv = MixedConv(c_in, c_out, transposed=False, bias=False, candidates=candidates)
        self.norm = nn.Identity() if (outermost or innermost) else _norm(c_out)

    def forward(self, x: Tensor, weights: Tensor | None) -> Tensor:
        return self.norm(self.conv(self.act(x), weights))


class _UpCell(nn.Module):
    def __init__(self, c_in: int, c_out: int, *, outermost: bool, dropout: float, candidates: tuple[Candidate, ...]):
        super().__init__()
        self.act = nn.ReLU()
        self.conv = MixedConv(c_in, c_out, transposed=True, bias=outermost, candidates=candidates)
        self.post = nn.Tanh() if outermost else nn.Sequential(_norm(c_out), nn.Dropout(dropout))

    def forward(self, x: Tensor, weights: Tensor | None) -> Tensor:
        return self.post(self.conv(self.act(x), weights))


class UNetGenerator(nn.Module):
    """Pix2Pix U-Net generator; every cell mixes ``candidates`` (searchable) or is one plain op.

    Args:
        in_channels: mask channels (1 for a binary mask).
        out_channels: image channels (3 for RGB, 1 for grey).
        n_down: number of down (and up) cells; the input side must be divisible by ``2**n_down``
            (Pix2Pix's ``unet_256`` has 8).
        ngf: filters of the outermost cell, doubling per level up to ``8 * ngf``.
        dropout: dropout of the intermediate ``8 * ngf`` up cells (Pix2Pix's noise source).
        candidates: (kernel, stride, padding) of each cell's operations: :data:`CANDIDATES` for
            E2EAug's search space, ``(PIX2PIX_CANDIDATE,)`` for vanilla Pix2Pix.

    Input masks in [0, 1] are mapped to [-1, 1]; the output image is in [-1, 1] (tanh).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        n_down: int = 8,
        ngf: int = 64,
        dropout: float = 0.5,
        candidates: tuple[Candidate, ...] = CANDIDATES,
    ):
        super().__init__()
        if n_down < 2:
            raise ValueError(f"n_down must be >= 2, got {n_down}")
        if not candidates:
            raise ValueError("candidates must name at least one (kernel, stride, padding) operation")
        self.n_down = n_down
        self.candidates = tuple(candidates)
        widths = [ngf * min(2**i, 8) for i in range(n_down)]
        self.down = nn.ModuleList(
            _DownCell(
                in_channels if i == 0 else widths[i - 1],
                widths[i],
                outermost=i == 0,
                innermost=i == n_down - 1,
                candidates=self.candidates,
            )
            for i in range(n_down)
        )
        # Pix2Pix drops out in the intermediate 8*ngf up cells next to the innermost one (3 of them at n_down = 8)
        dropped = {i for i in range(1, n_down - 1) if widths[i] == 8 * ngf and i >= n_down - 4}
        self.up = nn.ModuleList(
            _UpCell(
                widths[i] * (1 if i == n_down - 1 else 2),
                out_channels if i == 0 else widths[i - 1],
                outermost=i == 0,
                dropout=dropout if i in dropped else 0.0,
                candidates=self.candidates,
            )
            for i in range(n_down)
        )

    @property
    def searchable(self) -> bool:
        """True when cells mix several candidates (the forward pass then needs an architecture)."""
        return len(self.candidates) > 1

    def forward(self, mask: Tensor, arch: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``mask``: [B, in, H, W] in [0, 1]; ``arch``: ``GeneratorArchitecture.weights()`` (None for a
        one-candidate generator). Returns the image [B, out, H, W] in [-1, 1]."""
        side = mask.shape[-1]
        if mask.shape[-2] % 2**self.n_down or side % 2**self.n_down:
            raise ValueError(
                f"generator with n_down={self.n_down} needs sides divisible by {2**self.n_down}, got {tuple(mask.shape[-2:])}"
            )
        if arch is None and self.searchable:
            raise ValueError(
                f"this generator's cells mix {len(self.candidates)} candidates; pass the architecture "
                "weights (GeneratorArchitecture.weights())"
            )
        w_down, w_up = arch if arch is not None else ([None] * self.n_down, [None] * self.n_down)
        skips = []
        h = mask * 2 - 1
        for i, cell in enumerate(self.down):
            h = cell(h, w_down[i])
            skips.append(h)
        h = self.up[-1](skips[-1], w_up[-1])
        for i in range(self.n_down - 2, -1, -1):
            h = self.up[i](torch.cat([h, skips[i]], dim=1), w_up[i])
        return h


def patch_discriminator(mask_channels: int, image_channels: int, image_size: int, ndf: int = 64) -> PatchDiscriminator:
    """PatchGAN on ``cat(mask, image)`` (MONAI's implementation). Three strided layers give the
    classic 70x70 receptive field at 256 pixels; smaller images get fewer layers."""
    layers = max(1, min(3, int(math.log2(image_size)) - 3))
    return PatchDiscriminator(
        spatial_dims=2,
        channels=ndf,
        in_channels=mask_channels + image_channels,
        out_channels=1,
        num_layers_d=layers,
        norm="BATCH",
    )


class Pix2Pix(nn.Module):
    """The GAN of the ``gan`` level: generator weights ``G`` and discriminator weights ``E``."""

    def __init__(self, generator: UNetGenerator, discriminator: nn.Module):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator

    def critic(self, mask: Tensor, image: Tensor) -> Tensor:
        """Patch logits of ``E`` for (mask, image) pairs, image in [-1, 1]."""
        return self.discriminator(torch.cat([mask * 2 - 1, image], dim=1))[-1]
