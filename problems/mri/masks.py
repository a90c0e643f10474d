"""k-space sampling masks on the Cartesian grid: radial lines, random Cartesian lines, Poisson disc.

Every mask is a real ``{0, 1}`` tensor ``[H, W]`` with k-space centred (DC at ``(H // 2, W // 2)``,
the convention of :mod:`problems.mri.operators`) and a pure function of
``(pattern, ratio, shape, seed)``. The *sampling ratio* is the fraction of k-space samples kept;
the achieved ratio is measured on every mask and must lie within :data:`RATIO_TOLERANCE` (one
percentage point) of the requested one, otherwise generation fails naming the pattern and shape.

Patterns (:data:`PATTERNS`):

* ``radial`` — lines through the k-space centre, rasterised on the grid (the "radio" masks of
  Bian et al.): ``L`` equispaced angles with a seeded rotation, ``L`` the fewest lines whose
  pixels reach the target count. The lines are drawn in order, each from the centre outwards,
  until exactly ``round(ratio * H * W)`` samples are taken, so only the last line may stop short
  of the border and the ratio is exact to one sample.
* ``cartesian`` — whole k-space lines along the first axis (phase encoding along the last
  axis): a fully sampled centre of ``center_fraction * W`` columns (default ``ratio / 3``), the
  other columns drawn without replacement with density ``∝ (1 - |k| / (W/2 + 1))²`` (1D variable
  density). ``round(ratio * W)`` columns, so the ratio is exact to ``1 / (2W)``.
* ``poisson`` — 2D variable-density Poisson disc from :func:`sigpy.mri.poisson` with a fully
  sampled calibration square of about a tenth of each side; sigpy's acceleration tolerance is
  set from the 1 % bound on the ratio.

Masks are cached twice: in memory, and as ``.npy`` files under :func:`mask_cache_dir`
(``$MEDMLO_CACHE/masks``, else ``~/.cache/medmlo/masks``), so every run and every recipe sees the
same pixels. Public API::

    PATTERNS, RATIO_TOLERANCE
    SamplingTask(pattern, ratio)              # a task: .key, .label, .mask(shape, seed=...), .parse(text)
    sampling_mask(pattern, ratio, shape, *, seed=0, cache=True) -> Tensor [H, W]
    radial_mask / cartesian_mask / poisson_mask(ratio, shape, *, seed=0) -> Tensor [H, W] (uncached)
    achieved_ratio(mask) -> float
    check_ratio(ratio, what="ratio") -> float
    mask_cache_dir() -> Path

Example:
    >>> mask = sampling_mask("radial", 0.2, (64, 64), seed=0, cache=False)
    >>> round(achieved_ratio(mask), 3)
    0.2
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PATTERNS",
    "RATIO_TOLERANCE",
    "SamplingTask",
    "achieved_ratio",
    "cartesian_mask",
    "check_pattern",
    "check_ratio",
    "mask_cache_dir",
    "poisson_mask",
    "radial_mask",
    "sampling_mask",
]

PATTERNS = ("radial", "cartesian", "poisson")
RATIO_TOLERANCE = 0.01  # |achieved - requested| sampling ratio, in absolute terms (one percentage point)
_GENERATOR = "v1"  # part of the cache file name: bump it when a generator's output changes


def check_ratio(ratio: float, what: str = "ratio") -> float:
    """``ratio`` as a float in (0, 1], else a ValueError naming ``what``."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"sampling {what} must be a number in (0, 1], got {ratio!r}") from None
    if not (0.0 < value <= 1.0) or not math.isfinite(value):
        raise ValueError(
            f"sampling {what} must lie in (0, 1] (a fraction of k-space, e.g. 0.2 for 20 %), got {ratio!r}"
        )
    return value


def check_pattern(pattern: str) -> str:
    if pattern not in PATTERNS:
        raise ValueError(f"unknown sampling pattern {pattern!r}; expected one of {list(PATTERNS)}")
    return pattern


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) < 2 for s in shape):
        raise ValueError(f"mask shape must be (H, W) with both sides >= 2, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def achieved_ratio(mask: Tensor) -> float:
    """Fraction of sampled k-space points of a ``{0, 1}`` mask ``[..., H, W]``."""
    return float((mask != 0).double().mean())


def _verify(mask: np.ndarray, pattern: str, ratio: float) -> np.ndarray:
    got = float(mask.mean())
    if abs(got - ratio) > RATIO_TOLERANCE:
        raise ValueError(
            f"{pattern} mask of shape {mask.shape}: achieved sampling ratio {got:.4f} is more than "
            f"{RATIO_TOLERANCE:.2f} from the requested {ratio:.4f}; the grid is too coarse for this "
            "pattern and ratio (use a larger image or another pattern)"
        )
    return mask


# ---------------------------------------------------------------------------------------- radial
def _line_pixels(angle: float, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and distances from the centre of a line through the k-space centre at ``angle``,
    sampled every half pixel and rounded to the grid (ordered along the line)."""
    h, w = shape
    cy, cx = h // 2, w // 2
    reach = math.hypot(h, w) / 2 + 1
    t = np.arange(-reach, reach + 0.25, 0.5)
    rows = np.rint(cy + t * math.sin(angle)).astype(np.int64)
    cols = np.rint(cx + t * math.cos(angle)).astype(np.int64)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    return rows[inside] * w + cols[inside], np.abs(t[inside])


def _radial_order(n_lines: int, offset: float, shape: tuple[int, int]) -> np.ndarray:
    """Flat pixel indices of ``n_lines`` equispaced lines, each pixel once, in drawing order:
    line by line, each from the centre outwards."""
    pixels, keys = [], []
    for k in range(n_lines):
        flat, radius = _line_pixels(offset + math.pi * k / n_lines, shape)
        pixels.append(flat)
        keys.append(k * 1e6 + radius)  # line index first, then distance from the centre
    flat = np.concatenate(pixels)
    order = np.argsort(np.concatenate(keys), kind="stable")
    flat = flat[order]
    _, first = np.unique(flat, return_index=True)  # first time each pixel is drawn
    return flat[np.sort(first)]


def radial_mask(ratio: float, shape: tuple[int, int], *, seed: int = 0) -> Tensor:
    """Radial lines through the centre with exactly ``round(ratio * H * W)`` samples (uncached)."""
    ratio, shape = check_ratio(ratio), _check_shape(shape)
    h, w = shape
    target = round(ratio * h * w)
    if target >= h * w:
        return torch.ones(h, w)
    offset = float(np.random.default_rng(seed).uniform(0.0, math.pi))
    low, high = 1, 2  # the fewest lines reaching the target: double, then bisect
    while len(_radial_order(high, offset, shape)) < target:
        low, high = high, 2 * high
    while low < high:
        middle = (low + high) // 2
        if len(_radial_order(middle, offset, shape)) < target:
            low = middle + 1
        else:
            high = middle
    order = _radial_order(high, offset, shape)
    mask = np.zeros(h * w, dtype=np.float32)
    mask[order[:target]] = 1.0
    return torch.from_numpy(_verify(mask.reshape(h, w), "radial", ratio))


# ---------------------------------------------------------------------------------------- Cartesian
def cartesian_mask(
    ratio: float, shape: tuple[int, int], *, seed: int = 0, center_fraction: float | None = None
) -> Tensor:
    """Random Cartesian lines (whole columns) with a fully sampled centre and 1D variable density."""
    ratio, shape = check_ratio(ratio), _check_shape(shape)
    h, w = shape
    n_columns = max(1, round(ratio * w))
    fraction = ratio / 3 if center_fraction is None else check_ratio(center_fraction, "centre fraction")
    n_center = min(n_columns, max(1, round(fraction * w)))
    start = w // 2 - n_center // 2
    chosen = np.zeros(w, dtype=bool)
    chosen[start : start + n_center] = True
    rest = n_columns - n_center
    if rest:
        k = np.abs(np.arange(w) - w // 2)
        density = (1.0 - k / (w / 2 + 1)) ** 2
        density[chosen] = 0.0
        picks = np.random.default_rng(seed).choice(w, size=rest, replace=False, p=density / density.sum())
        chosen[picks] = True
    mask = np.zeros((h, w), dtype=np.float32)
    mask[:, chosen] = 1.0
    return torch.from_numpy(_verify(mask, "cartesian", ratio))


# ---------------------------------------------------------------------------------------- Poisson disc
def poisson_mask(ratio: float, shape: tuple[int, int], *, seed: int = 0) -> Tensor:
    """2D variable-density Poisson-disc mask (sigpy) with a fully sampled calibration square."""
    import sigpy.mri

    ratio, shape = check_ratio(ratio), _check_shape(shape)
    h, w = shape
    if ratio >= 1.0:
        return torch.ones(h, w)
    calib = (max(2, 2 * round(h / 20)), max(2, 2 * round(w / 20)))
    error = None
    # sigpy bounds |achieved accel - 1/ratio| < tol; d(ratio) ≈ d(accel) * ratio², so this keeps the
    # ratio within a fraction of RATIO_TOLERANCE, loosened step by step if sigpy cannot meet it
    for share in (0.3, 0.6, 0.95):
        try:
            mask = sigpy.mri.poisson(
                shape, 1.0 / ratio, calib=calib, dtype=np.float32, seed=seed, tol=share * RATIO_TOLERANCE / ratio**2
            )
            break
        except ValueError as err:
            error = err
    else:
        raise ValueError(
            f"poisson mask of shape {shape}: sigpy cannot reach sampling ratio {ratio:.4f} "
            f"within {RATIO_TOLERANCE:.2f} ({error})"
        ) from None
    return torch.from_numpy(_verify(np.ascontiguousarray(mask.real, dtype=np.float32), "poisson", ratio))


_GENERATORS = {"radial": radial_mask, "cartesian": cartesian_mask, "poisson": poisson_mask}


# ---------------------------------------------------------------------------------------- cache
def mask_cache_dir() -> Path:
    """Where masks are cached: ``$MEDMLO_CACHE/masks``, else ``~/.cache/medmlo/masks``."""
    cache = os.environ.get("MEDMLO_CACHE")
    return (Path(cache) if cache else Path.home() / ".cache" / "medmlo") / "masks"


@functools.lru_cache(maxsize=256)
def _cached(pattern: str, ratio: float, shape: tuple[int, int], seed: int, folder: str) -> Tensor:
    path = Path(folder) / f"{pattern}-{shape[0]}x{shape[1]}-r{ratio:.6f}-s{seed}-{_GENERATOR}.npy"
    if path.is_file():
        mask = np.load(path)
        if mask.shape == shape:
            return torch.from_numpy(mask.astype(np.float32))
    mask = _GENERATORS[pattern](ratio, shape, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, mask.numpy().astype(np.uint8))
    os.replace(tmp, path)
    return mask


def sampling_mask(pattern: str, ratio: float, shape: tuple[int, int], *, seed: int = 0, cache: bool = True) -> Tensor:
    """The ``{0, 1}`` mask ``[H, W]`` (float32) of ``pattern`` at sampling ``ratio``; see the module doc.

    Raises:
        ValueError: an unknown pattern, a ratio outside (0, 1], a shape that is not ``(H, W)``, or a
            grid too coarse to reach the ratio within :data:`RATIO_TOLERANCE`.
    """
    check_pattern(pattern)
    ratio, shape = check_ratio(ratio), _check_shape(tuple(shape))
    if not cache:
        return _GENERATORS[pattern](ratio, shape, seed=seed)
    return _cached(pattern, ratio, shape, int(seed), str(mask_cache_dir())).clone()


@dataclass(frozen=True)
class SamplingTask:
    """A reconstruction task: a sampling pattern at a sampling ratio (e.g. radial at 20 %).

    ``key`` names it in files and tables (``radial-20``), ``label`` in figures (``radial 20%``).
    """

    pattern: str
    ratio: float

    def __post_init__(self) -> None:
        check_pattern(self.pattern)
        object.__setattr__(self, "ratio", check_ratio(self.ratio))

    @property
    def percent(self) -> str:
        value = 100 * self.ratio
        return f"{value:.0f}" if abs(value - round(value)) < 1e-9 else f"{value:g}"

    @property
    def key(self) -> str:
        return f"{self.pattern}-{self.percent}"

    @property
    def label(self) -> str:
        return f"{self.pattern} {self.percent}%"

    def mask(self, shape: tuple[int, int], *, seed: int = 0, cache: bool = True) -> Tensor:
        """This task's mask ``[H, W]`` (see :func:`sampling_mask`)."""
        return sampling_mask(self.pattern, self.ratio, shape, seed=seed, cache=cache)

    @classmethod
    def parse(cls, text: str) -> SamplingTask:
        """``"radial:0.2"`` (a fraction), ``"radial:20%"`` or ``"radial-20"`` (percent, as :attr:`key`) -> a task.

        A fraction outside (0, 1] is an error, so ``radial:20`` is refused rather than guessed."""
        pattern, sep, value = text.partition(":")
        percent = value.endswith("%")
        if not sep:
            pattern, sep, value = text.rpartition("-")
            percent = True
        if not sep or not pattern:
            raise ValueError(
                f"task {text!r} must read pattern:fraction (radial:0.2), pattern:percent% (radial:20%) "
                "or pattern-percent (radial-20)"
            )
        try:
            number = float(value.rstrip("%"))
        except ValueError:
            raise ValueError(f"task {text!r}: sampling ratio {value!r} is not a number") from None
        return cls(pattern.strip(), number / 100 if percent else number)
