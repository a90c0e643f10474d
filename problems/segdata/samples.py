"""Embedded synthetic samples, written in each dataset's official on-disk layout.

Machines without the real data (CI, a first try of a recipe) still need image/mask pairs that
the real loader reads and that look like the modality, because the E2EAug recipe trains a
mask-to-image GAN on them. Every image here is generated procedurally from a seeded numpy
generator (no external data): skin with a pigmented lesion for dermoscopy, a radiograph with two
lung fields, speckled breast ultrasound with a hypoechoic lesion, placenta with a vessel tree
seen through a fetoscope, and colon mucosa with a polyp. The files copy the real archives' names,
formats and encodings (JPEG/PNG/BMP/GIF, 0/255 masks, JPEG masks for Kvasir-SEG, FetReg class
indices, headerless big-endian 12-bit JSRT ``.IMG``), so :func:`find_cases` and :func:`read_case`
read a sample exactly as they read the real dataset. A marker file,
``MEDMLO_SYNTHETIC_SAMPLE.txt``, says that a folder is a sample and with which settings it was made.

Output is a pure function of ``(key, seed, n_cases, size)``: the same arguments write
byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon as fill_polygon

from .layouts import DATASETS, DatasetError

__all__ = [
    "GENERATOR",
    "MARKER",
    "SAMPLE_CASES",
    "SAMPLE_SPLITS",
    "default_sample_root",
    "is_synthetic_sample",
    "write_sample",
]

MARKER = "MEDMLO_SYNTHETIC_SAMPLE.txt"
GENERATOR = "problems.segdata.samples v1"

SAMPLE_CASES: dict[str, int] = {
    "isic2018": 40,
    "ph2": 12,
    "dermis": 12,
    "jsrt": 24,
    "nlm_mc": 12,
    "nlm_sz": 12,
    "busi": 36,
    "fetreg": 40,
    "kvasir": 36,
}
"""Default number of cases (image + mask) written per dataset."""

SAMPLE_SPLITS: dict[str, dict] = {
    "isic2018": {"test_size": 16, "train_sizes": (20,)},
    "ph2": {"test_size": None, "train_sizes": ()},
    "dermis": {"test_size": None, "train_sizes": ()},
    "jsrt": {"test_size": 12, "train_sizes": (9,)},
    "nlm_mc": {"test_size": None, "train_sizes": ()},
    "nlm_sz": {"test_size": None, "train_sizes": ()},
    "busi": {"test_size": 12, "train_sizes": (20,)},
    "fetreg": {"test_size": 12, "train_sizes": (20,)},
    "kvasir": {"test_size": 16, "train_sizes": (20,)},
}
"""Split sizes used with the default sample (``test_size=None``: all cases are OOD test cases)."""

_FETREG_FRAMES_PER_VIDEO = 8
_SZ_UNMASKED_IMAGES = 2  # Shenzhen: like the real set, some images have no community mask


# ----------------------------------------------------------------------------- shared helpers


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple[float, ...]) -> np.ndarray:
    """Gaussian-filtered white noise, rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(v, u)`` in [0, 1]: v down the rows, u across the columns."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(axis, axis, indexing="ij")


def _blob(
    rng: np.random.Generator,
    size: int,
    centre: tuple[float, float],
    radius: float,
    roughness: float,
    aspect: float = 1.0,
    harmonics: int = 9,
) -> np.ndarray:
    """Bool mask of a closed blob whose radius follows a random Fourier series of the angle.

    ``centre`` is (row, col) in pixels, ``roughness`` the size of the boundary's bumps relative
    to ``radius``, ``aspect`` stretches the blob horizontally (width / height).
    """
    theta = np.linspace(0.0, 2.0 * np.pi, 256, endpoint=False)
    k = np.arange(2, harmonics + 1)[:, None]
    amplitude = rng.normal(0.0, roughness, (k.size, 1)) / k**0.8
    phase = rng.uniform(0.0, 2.0 * np.pi, (k.size, 1))
    r = radius * np.clip(1.0 + (amplitude * np.cos(k * theta + phase)).sum(axis=0), 0.35, 1.8)
    rows = centre[0] + r * np.sin(theta)
    cols = centre[1] + aspect * r * np.cos(theta)
    mask = np.zeros((size, size), dtype=bool)
    mask[fill_polygon(rows, cols, mask.shape)] = True
    return mask


def _shape_mask(size: int, points: np.ndarray, smooth: float) -> np.ndarray:
    """Bool mask of a polygon given in [0, 1] ``(u, v)`` coordinates, corners rounded by ``smooth`` px."""
    mask = np.zeros((size, size), dtype=np.float32)
    mask[fill_polygon(points[:, 1] * size, points[:, 0] * size, mask.shape)] = 1.0
    return ndimage.gaussian_filter(mask, smooth) > 0.5


def _vignette(size: int, start: float, end: float, floor: float) -> np.ndarray:
    """Radial light fall-off: 1 inside radius ``start``, ``floor`` beyond ``end`` (radii in half-widths)."""
    v, u = _grid(size)
    r = np.hypot(u - 0.5, v - 0.5) * 2.0
    t = np.clip((r - start) / (end - start), 0.0, 1.0)
    return (1.0 - (1.0 - floor) * t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int) -> np.ndarray:
    """``n`` points ``(x, y)`` of the quadratic Bezier curve with control point ``p1``."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _stroke(size: int, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Antialiased coverage in [0, 1] of discs of radius ``radii[i]`` centred at ``points[i]`` = (x, y)."""
    cover = np.zeros((size, size), dtype=np.float32)
    inside = (points >= 0).all(axis=1) & (points <= size - 1).all(axis=1)
    points, levels = np.round(points[inside]).astype(int), np.round(np.asarray(radii)[inside] * 4) / 4
    for r in np.unique(levels):
        background = np.ones((size, size), dtype=bool)
        centres = points[levels == r]
        background[centres[:, 1], centres[:, 0]] = False
        distance = ndimage.distance_transform_edt(background)
        cover = np.maximum(cover, np.clip(r + 0.5 - distance, 0.0, 1.0))
    return cover


def _blend(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-composite ``colour`` (``[3]`` or ``[H, W, 3]``) over RGB ``image`` with coverage ``alpha``."""
    return image * (1.0 - alpha[..., None]) + colour * alpha[..., None]


def _blur_rgb(image: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(image, (sigma, sigma, 0.0))


def _u8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _mask255(mask: np.ndarray) -> np.ndarray:
    return (mask.astype(bool) * 255).astype(np.uint8)


def _save(path: Path, array: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


# ----------------------------------------------------------------------------- modality scenes

_SKIN_TONES = np.array([[0.93, 0.77, 0.67], [0.87, 0.68, 0.56], [0.80, 0.60, 0.48], [0.68, 0.49, 0.37]])


def _skin_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Skin: a tone with low-frequency colour variation (redness) and fine pore texture."""
    tone = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * (1.0 + rng.normal(0.0, 0.03, 3))
    shading = 1.0 + 0.06 * _smooth_noise(rng, (size, size), size / 6)
    redness = 0.03 * _smooth_noise(rng, (size, size), size / 10)[..., None] * np.array([1.0, -0.4, -0.6])
    pores = 1.0 + 0.035 * _smooth_noise(rng, (size, size), 0.8)
    return tone * (shading * pores)[..., None] + redness


def _lesion_colour(rng: np.random.Generator, lesion: np.ndarray) -> np.ndarray:
    """Pigment of a melanocytic lesion: variegated brown, darker centre, reticular network, globules."""
    size = lesion.shape[0]
    light = np.array([0.58, 0.38, 0.25]) * rng.uniform(0.9, 1.1)
    dark = np.array([0.27, 0.15, 0.10]) * rng.uniform(0.8, 1.1)
    depth = ndimage.distance_transform_edt(lesion)
    depth = depth / (depth.max() + 1e-6)
    mix = 1.0 / (1.0 + np.exp(-1.6 * _smooth_noise(rng, (size, size), size / 14) - 2.0 * (depth - 0.4)))
    colour = light * (1.0 - mix[..., None]) + dark * mix[..., None]
    ridges = np.exp(-((_smooth_noise(rng, (size, size), 1.4) / 0.3) ** 2))
    colour = colour * (1.0 - 0.35 * ridges)[..., None]
    rows, cols = np.nonzero(lesion)
    picks = rng.choice(rows.size, size=int(rng.integers(3, 9)), replace=False)
    centres = np.stack([cols[picks], rows[picks]], axis=1).astype(float)
    globules = _stroke(size, centres, rng.uniform(0.8, 1.8, picks.size) * size / 128)
    return _blend(colour, np.array([0.14, 0.08, 0.06]), globules)


def _hairs(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """Coverage of ``count`` thin dark curved hairs crossing the image from edge to edge."""
    cover = np.zeros((size, size), dtype=np.float32)
    for _ in range(count):
        a, b = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        if rng.random() < 0.5:
            p0, p2 = np.array([-2.0, a[0]]), np.array([size + 1.0, b[0]])
        else:
            p0, p2 = np.array([a[1], -2.0]), np.array([b[1], size + 1.0])
        p1 = rng.uniform(0.2 * size, 0.8 * size, 2)
        points = _bezier(p0, p1, p2, 4 * size)
        cover = np.maximum(cover, _stroke(size, points, np.full(len(points), rng.uniform(0.3, 0.7) * size / 128)))
    return cover


def _skin_scene(rng: np.random.Generator, size: int, style: str) -> tuple[np.ndarray, np.ndarray]:
    """Skin lesion image (float RGB ``[S, S, 3]``) and lesion mask.

    ``style``: "isic" (dermoscopy, circular vignetting, hairs), "ph2" (dermoscopy with a strong
    dark circular border) or "clinical" (DermIS photographs: no dermoscope, side lighting).
    """
    image = _skin_background(rng, size)
    centre = (size / 2 + rng.normal(0, 0.06 * size), size / 2 + rng.normal(0, 0.06 * size))
    lesion = _blob(rng, size, centre, rng.uniform(0.18, 0.30) * size, rng.uniform(0.08, 0.2), rng.uniform(0.8, 1.3))
    edge = ndimage.gaussian_filter(lesion.astype(np.float32), 1.0 * size / 128)
    image = _blend(image, _lesion_colour(rng, lesion), edge)
    hair_count = int(rng.integers(*{"isic": (1, 5), "ph2": (0, 3), "clinical": (0, 2)}[style]))
    image = _blend(image, np.array([0.13, 0.09, 0.07]), 0.9 * _hairs(rng, size, hair_count))
    if style == "clinical":
        v, u = _grid(size)
        angle = rng.uniform(0, 2 * np.pi)
        image = image * (0.85 + 0.25 * ((u - 0.5) * np.cos(angle) + (v - 0.5) * np.sin(angle)))[..., None]
    else:
        start, floor = (0.80, 0.04) if style == "ph2" else (rng.uniform(0.85, 1.0), rng.uniform(0.05, 0.35))
        image = image * _vignette(size, start, 1.38, floor)[..., None]
    return _blur_rgb(image, 0.6 * size / 128), lesion


# fmt: off
_RIGHT_LUNG = np.array(  # patient's right lung = image left; (u, v) in [0, 1], apex first
    [[0.40, 0.17], [0.33, 0.15], [0.26, 0.21], [0.20, 0.34], [0.16, 0.52], [0.14, 0.68], [0.15, 0.81],
     [0.21, 0.80], [0.31, 0.76], [0.41, 0.72], [0.44, 0.58], [0.44, 0.40], [0.43, 0.26]]
)
_LEFT_LUNG = np.array(  # patient's left lung = image right; the heart takes its lower medial part
    [[0.60, 0.17], [0.67, 0.15], [0.74, 0.21], [0.80, 0.34], [0.84, 0.52], [0.86, 0.68], [0.85, 0.82],
     [0.79, 0.81], [0.71, 0.78], [0.65, 0.70], [0.60, 0.58], [0.57, 0.40], [0.57, 0.26]]
)
# fmt: on


def _lung_shapes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Jittered, scaled and shifted copies of the two lung outlines, rasterised (left, right)."""
    scale = rng.uniform(0.88, 1.06, 2)
    shift = rng.normal(0.0, 0.02, 2)
    masks = []
    for outline in (_LEFT_LUNG, _RIGHT_LUNG):
        points = (outline - 0.5) * scale + 0.5 + shift + rng.normal(0.0, 0.015, outline.shape)
        masks.append(_shape_mask(size, points, 2.0 * size / 128))
    return masks[0], masks[1]


def _ribs(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brightness of posterior rib arcs: bands rising from the spine and curving down laterally."""
    v, u = _grid(size)
    d = np.abs(u - 0.5)
    bands = np.zeros((size, size), dtype=np.float32)
    for k in range(9):
        centre = 0.16 + 0.075 * k + rng.normal(0, 0.006) - 0.12 * d + 0.55 * d**2
        bands += np.exp(-(((v - centre) / 0.011) ** 2)) * (d > 0.04)
    return bands


def _chest_xray_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frontal chest radiograph (float grey ``[S, S]``, bright = dense) with (left, right) lung masks."""
    v, u = _grid(size)
    body = ndimage.gaussian_filter(
        (((u - 0.5) / 0.47) ** 2 + ((v - 0.58) / 0.62) ** 2 < 1.0).astype(np.float32), 3.0 * size / 128
    )
    image = 0.06 + 0.52 * body
    image += 0.28 * np.exp(-(((u - 0.5) / (0.07 + 0.05 * v)) ** 2)) * body
    heart = ((u - 0.55) / 0.17) ** 2 + ((v - 0.68) / 0.13) ** 2 < 1.0
    image += 0.10 * ndimage.gaussian_filter(heart.astype(np.float32), 4.0 * size / 128)
    left, right = _lung_shapes(rng, size)
    left &= ~heart
    lungs = left | right
    field = ndimage.gaussian_filter(lungs.astype(np.float32), 1.5 * size / 128)
    image = image * (1.0 - field) + (0.18 + 0.12 * v + 0.03 * _smooth_noise(rng, (size, size), 2.5)) * field
    image += 0.07 * _ribs(rng, size) * body
    image += 0.04 * _smooth_noise(rng, (size, size), size / 8) + 0.015 * rng.standard_normal((size, size))
    image = ndimage.gaussian_filter(image, 0.7 * size / 128)
    return np.clip(image * rng.uniform(0.9, 1.1), 0.0, 1.0), left, right


def _ultrasound_scene(
    rng: np.random.Generator, size: int, kind: str, count: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """B-mode breast ultrasound (float grey ``[S, S]``) and one mask per lesion (``count`` lesions).

    Layers (skin line, fat, glandular tissue, chest wall) with horizontal streaks, multiplicative
    Rayleigh speckle and depth attenuation. ``kind``: "benign" (smooth oval, wider-than-tall
    hypoechoic lesions with mild posterior enhancement), "malignant" (irregular, taller lesion with
    posterior acoustic shadowing) or "normal" (``count`` must be 0).
    """
    v, _ = _grid(size)
    wave = 0.04 * _smooth_noise(rng, (1, size), size / 6)
    tissue = np.select(
        [v < 0.05 + wave / 4, v < 0.28 + wave, v < 0.78 + wave],
        [np.full_like(v, 0.9), np.full_like(v, 0.35), np.full_like(v, 0.7)],
        default=0.45,
    )
    tissue = tissue * np.clip(1.0 + 0.35 * _smooth_noise(rng, (size, size), (1.0, 6.0 * size / 128)), 0.1, None)
    malignant = kind == "malignant"
    lesions = [
        _blob(
            rng,
            size,
            (rng.uniform(0.35, 0.6) * size, (j + rng.uniform(0.3, 0.7)) / count * size),
            rng.uniform(0.08, 0.16) * size / count**0.5,
            roughness=0.3 if malignant else 0.06,
            aspect=rng.uniform(0.8, 1.0) if malignant else 1.5,
            harmonics=16 if malignant else 5,
        )
        for j in range(count)
    ]
    if lesions:
        union = np.logical_or.reduce(lesions)
        tissue = tissue * (1.0 - 0.85 * ndimage.gaussian_filter(union.astype(np.float32), 1.0))
        tissue = tissue * _posterior(union, -0.6 if malignant else 0.3)
    speckle = ndimage.gaussian_filter(rng.rayleigh(1.0, (size, size)), (0.5, 1.0))
    image = tissue * speckle / speckle.mean() * np.exp(-1.6 * v) * (1.0 + 1.2 * v)
    image = np.log1p(6.0 * image) / np.log1p(6.0)
    return np.clip(image * rng.uniform(0.8, 1.0), 0.0, 1.0), lesions


def _posterior(lesion: np.ndarray, strength: float) -> np.ndarray:
    """Gain below a lesion: ``1 + strength`` fading with depth (negative = acoustic shadow)."""
    size = lesion.shape[0]
    rows = np.arange(size)[:, None]
    has = lesion.any(axis=0)
    bottom = np.where(has, size - 1 - np.argmax(lesion[::-1], axis=0), size)
    below = (rows > bottom) * has * np.exp(-(rows - bottom).clip(0) / (0.4 * size))
    return 1.0 + strength * ndimage.gaussian_filter(below.astype(np.float32), (0.0, 2.0))


def _vessel_tree(
    rng: np.random.Generator, start: np.ndarray, angle: float, radius: float, length: float, depth: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Points (x, y) and radii of a tapering random-walk vessel with recursive side branches."""
    steps = max(int(length / 0.5), 2)
    turns = np.cumsum(rng.normal(0.0, 0.04, steps)) + angle
    points = start + np.cumsum(0.5 * np.stack([np.cos(turns), np.sin(turns)], axis=1), axis=0)
    radii = radius * np.linspace(1.0, 0.45, steps)
    all_points, all_radii = [points], [radii]
    if depth > 0:
        for at in rng.integers(steps // 5, steps - 1, size=2):
            side = turns[at] + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.1)
            sub_points, sub_radii = _vessel_tree(rng, points[at], side, radii[at] * 0.7, length * 0.55, depth - 1)
            all_points += sub_points
            all_radii += sub_radii
    return all_points, all_radii


def _fetoscopy_scene(rng: np.random.Generator, size: int, tint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fetoscopic placenta view (float RGB) and label map (0 background, 1 vessel, 2 tool)."""
    v, u = _grid(size)
    base = np.array([0.82, 0.44, 0.28]) * tint
    texture = 1.0 + 0.12 * _smooth_noise(rng, (size, size), size / 8) + 0.05 * _smooth_noise(rng, (size, size), 1.5)
    image = base * texture[..., None]
    centre = 0.5 + rng.normal(0.0, 0.03, 2)
    radius = rng.uniform(0.44, 0.52)
    fov = np.hypot(u - centre[0], v - centre[1]) < radius
    points, radii = [], []
    for _ in range(int(rng.integers(2, 4))):
        angle = rng.uniform(0, 2 * np.pi)
        start = (centre + 0.8 * radius * np.array([np.cos(angle), np.sin(angle)])) * size
        p, r = _vessel_tree(
            rng,
            start,
            angle + np.pi + rng.normal(0, 0.4),
            rng.uniform(2.0, 3.2) * size / 128,
            rng.uniform(0.5, 0.8) * size,
            depth=2,
        )
        points += p
        radii += r
    vessel = _stroke(size, np.concatenate(points), np.concatenate(radii))
    image = _blend(image, np.array([0.42, 0.09, 0.12]) * tint, vessel)
    label = np.where(fov & (vessel > 0.5), 1, 0).astype(np.uint8)
    if rng.random() < 0.35:
        tool = _tool_mask(rng, size, centre, radius) & fov
        image = _blend(image, (0.62 + 0.25 * u)[..., None] * np.array([1.0, 1.0, 0.97]), tool.astype(np.float32))
        label[tool] = 2
    light = 1.0 - 0.55 * (np.hypot(u - centre[0], v - centre[1]) / radius) ** 2
    image = image * (light * ndimage.gaussian_filter(fov.astype(np.float32), 0.8))[..., None]
    return _blur_rgb(image, 0.7 * size / 128), label


def _tool_mask(rng: np.random.Generator, size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """A straight laser-fibre-like band entering the field of view from its rim."""
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    tip = centre + 0.35 * radius * direction
    tail = centre + 1.3 * radius * direction
    half = rng.uniform(0.03, 0.05)
    corners = np.array([tip + half * normal, tail + half * normal, tail - half * normal, tip - half * normal])
    return _shape_mask(size, corners, 0.5)


def _endoscopy_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Colonoscopy frame (float RGB) with a raised polyp and its mask.

    Pink mucosa with vascular texture and folds, lit from the scope tip, a dome-shaped polyp
    shaded by its height field, specular highlights and the black cut corners of Kvasir frames.
    """
    v, u = _grid(size)
    mucosa = np.array([0.86, 0.50, 0.44]) * (1.0 + rng.normal(0.0, 0.04, 3))
    image = mucosa * (1.0 + 0.10 * _smooth_noise(rng, (size, size), size / 6))[..., None]
    veins = np.exp(-((_smooth_noise(rng, (size, size), 2.0) / 0.15) ** 2))
    image = _blend(image, np.array([0.70, 0.25, 0.25]), 0.35 * veins)
    theta = rng.uniform(0, np.pi)
    folds = np.sin(
        2 * np.pi * 3.0 * (u * np.cos(theta) + v * np.sin(theta)) + 2.0 * _smooth_noise(rng, (size, size), size / 5)
    )
    image = image * (1.0 - 0.12 * np.clip(folds, 0, 1))[..., None]
    centre = (rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size)
    polyp = _blob(rng, size, centre, rng.uniform(0.12, 0.24) * size, rng.uniform(0.05, 0.12), rng.uniform(0.8, 1.25))
    height = ndimage.gaussian_filter(polyp.astype(np.float32), 0.08 * size)
    gy, gx = np.gradient(height * size / 8)
    light = np.array([-0.6, -0.8])
    shade = 1.0 + 0.8 * (gx * light[0] + gy * light[1])
    polyp_colour = np.array([0.90, 0.55, 0.50]) * (1.0 + 0.08 * _smooth_noise(rng, (size, size), 3.0))[..., None]
    image = _blend(image, polyp_colour, ndimage.gaussian_filter(polyp.astype(np.float32), 1.0)) * shade[..., None]
    image = image * (0.45 + 0.6 * np.exp(-((u - 0.5) ** 2 + (v - 0.5) ** 2) / 0.18))[..., None]
    glints = (_smooth_noise(rng, (size, size), 1.2) > 2.8) | ((shade > 1.0 + 0.85 * (shade.max() - 1.0)) & polyp)
    image = _blend(image, np.ones(3), ndimage.gaussian_filter(glints.astype(np.float32), 0.7).clip(0, 1))
    corners = (np.abs(u - 0.5) + np.abs(v - 0.5)) > 0.86
    image[corners] = 0.01
    return _blur_rgb(image, 0.5 * size / 128), polyp


# ----------------------------------------------------------------------------- layout writers


def _case_rng(key: str, seed: int, index: int) -> np.random.Generator:
    """Independent generator per (dataset, seed, case), so cases do not depend on each other."""
    return np.random.default_rng([seed, zlib.crc32(key.encode()), index])


def _write_isic2018(root: Path, n: int, seed: int, size: int) -> None:
    images, masks = root / "ISIC2018_Task1-2_Training_Input", root / "ISIC2018_Task1_Training_GroundTruth"
    for i in range(n):
        image, lesion = _skin_scene(_case_rng("isic2018", seed, i), size, "isic")
        _save(images / f"ISIC_{i:07d}.jpg", _u8(image), quality=92)
        _save(masks / f"ISIC_{i:07d}_segmentation.png", _mask255(lesion))
    for folder in (images, masks):
        (folder / "ATTRIBUTION.txt").write_text("Synthetic sample: procedurally generated, no real images.\n")
        (folder / "LICENSE.txt").write_text("Synthetic sample written by medmlo.\n")


def _write_ph2(root: Path, n: int, seed: int, size: int) -> None:
    base = root / "PH2Dataset" / "PH2 Dataset images"
    for i in range(n):
        name = f"IMD{i + 2:03d}"
        image, lesion = _skin_scene(_case_rng("ph2", seed, i), size, "ph2")
        _save(base / name / f"{name}_Dermoscopic_Image" / f"{name}.bmp", _u8(image))
        _save(base / name / f"{name}_lesion" / f"{name}_lesion.bmp", _mask255(lesion))


def _write_dermis(root: Path, n: int, seed: int, size: int) -> None:
    for i in range(n):
        group = "melanoma" if i < (n + 1) // 2 else "notmelanoma"
        folder = root / "skin_data" / group / "dermIS"
        image, lesion = _skin_scene(_case_rng("dermis", seed, i), size, "clinical")
        _save(folder / f"sample{i:03d}_orig.jpg", _u8(image), quality=90)
        _save(folder / f"sample{i:03d}_contour.png", _mask255(lesion))


def _write_jsrt(root: Path, n: int, seed: int, size: int) -> None:
    """JSRT ``.IMG`` (size x size, big-endian 12-bit, stored inverted) and half-size SCR GIF masks."""
    nodules = (n * 154 + 246) // 247
    for i in range(n):
        name = f"JPCLN{i + 1:03d}" if i < nodules else f"JPCNN{i - nodules + 1:03d}"
        image, left, right = _chest_xray_scene(_case_rng("jsrt", seed, i), size)
        raw = np.round((1.0 - image) * 4095.0).astype(">u2")
        path = root / "All247images" / f"{name}.IMG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw.tobytes())
        fold = root / "SCR" / f"fold{1 + i % 2}" / "masks"
        _save(fold / "left lung" / f"{name}.gif", _mask255(left[::2, ::2]))
        _save(fold / "right lung" / f"{name}.gif", _mask255(right[::2, ::2]))


def _write_nlm_mc(root: Path, n: int, seed: int, size: int) -> None:
    base = root / "MontgomerySet"
    for i in range(n):
        rng = _case_rng("nlm_mc", seed, i)
        name = f"MCUCXR_{i + 1:04d}_{int(rng.random() < 0.42)}.png"
        image, left, right = _chest_xray_scene(rng, size)
        _save(base / "CXR_png" / name, _u8(image))
        _save(base / "ManualMask" / "leftMask" / name, _mask255(left))
        _save(base / "ManualMask" / "rightMask" / name, _mask255(right))


def _write_nlm_sz(root: Path, n: int, seed: int, size: int) -> None:
    """Shenzhen images; masks (both lungs in one file) for the first ``n`` only, as a separate set."""
    for i in range(n + _SZ_UNMASKED_IMAGES):
        rng = _case_rng("nlm_sz", seed, i)
        name = f"CHNCXR_{i + 1:04d}_{int(rng.random() < 0.5)}"
        image, left, right = _chest_xray_scene(rng, size)
        _save(root / "ChinaSet_AllFiles" / "CXR_png" / f"{name}.png", _u8(image))
        if i < n:
            _save(root / "mask" / f"{name}_mask.png", _mask255(left | right))


def _write_busi(root: Path, n: int, seed: int, size: int) -> None:
    """BUSI: RGB-stored grey images, 0/255 masks; one benign case has a second '_mask_1' file and
    one malignant mask is stored with 3 channels, as in the real set."""
    counts = {"normal": n // 10, "malignant": n * 3 // 10}
    counts["benign"] = n - counts["normal"] - counts["malignant"]
    index = 0
    for kind in ("benign", "malignant", "normal"):
        for k in range(counts[kind]):
            rng = _case_rng("busi", seed, index)
            count = 0 if kind == "normal" else 2 if kind == "benign" and k == 0 else 1
            image, lesions = _ultrasound_scene(rng, size, kind, count)
            folder, name = root / "Dataset_BUSI_with_GT" / kind, f"{kind} ({k + 1})"
            _save(folder / f"{name}.png", np.stack([_u8(image)] * 3, axis=-1))
            masks = [_mask255(lesion) for lesion in lesions] or [np.zeros((size, size), np.uint8)]
            if kind == "malignant" and k == 0:
                masks[0] = np.stack([masks[0]] * 3, axis=-1)
            for j, mask in enumerate(masks):
                _save(folder / f"{name}_mask{f'_{j}' if j else ''}.png", mask)
            index += 1


def _write_fetreg(root: Path, n: int, seed: int, size: int) -> None:
    base = root / "FetReg2021_dataset" / "Train" / "Train_FetReg2021_Task1_Segmentation"
    for i in range(n):
        video, frame = divmod(i, _FETREG_FRAMES_PER_VIDEO)
        tint = 1.0 + _case_rng("fetreg-video", seed, video).normal(0.0, 0.05, 3)
        image, label = _fetoscopy_scene(_case_rng("fetreg", seed, i), size, tint)
        name = f"Video{video + 1:03d}_frame{100 + 25 * frame:05d}.png"
        _save(base / f"Video{video + 1:03d}" / "images" / name, _u8(image))
        _save(base / f"Video{video + 1:03d}" / "labels" / name, label)


def _kvasir_id(rng: np.random.Generator) -> str:
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    return "cj" + "".join(rng.choice(alphabet, 23))


def _write_kvasir(root: Path, n: int, seed: int, size: int) -> None:
    """Kvasir-SEG: JPEG images and JPEG (RGB) masks of the same name, plus ``kavsir_bboxes.json``."""
    base = root / "Kvasir-SEG"
    boxes = {}
    for i in range(n):
        rng = _case_rng("kvasir", seed, i)
        name = _kvasir_id(rng)
        image, polyp = _endoscopy_scene(rng, size)
        _save(base / "images" / f"{name}.jpg", _u8(image), quality=90)
        _save(base / "masks" / f"{name}.jpg", np.stack([_mask255(polyp)] * 3, axis=-1), quality=75)
        rows, cols = np.nonzero(polyp)
        box = {
            "label": "polyp",
            "xmin": int(cols.min()),
            "ymin": int(rows.min()),
            "xmax": int(cols.max()),
            "ymax": int(rows.max()),
        }
        boxes[name] = {"height": size, "width": size, "bbox": [box]}
    (base / "kavsir_bboxes.json").write_text(json.dumps(boxes, indent=1, sort_keys=True))


_WRITERS: dict[str, Callable[[Path, int, int, int], None]] = {
    "isic2018": _write_isic2018,
    "ph2": _write_ph2,
    "dermis": _write_dermis,
    "jsrt": _write_jsrt,
    "nlm_mc": _write_nlm_mc,
    "nlm_sz": _write_nlm_sz,
    "busi": _write_busi,
    "fetreg": _write_fetreg,
    "kvasir": _write_kvasir,
}


def default_sample_root() -> Path:
    """Where embedded samples are written: ``$MEDMLO_CACHE/samples``, else ``~/.cache/medmlo/samples``."""
    cache = os.environ.get("MEDMLO_CACHE")
    return (Path(cache) if cache else Path.home() / ".cache" / "medmlo") / "samples"


def sample_settings(key: str, *, n_cases: int | None, seed: int, size: int) -> dict[str, str]:
    """The settings recorded in (and compared against) a sample's marker file."""
    n = SAMPLE_CASES[key] if n_cases is None else n_cases
    return {"dataset": key, "seed": str(seed), "n_cases": str(n), "size": str(size), "generator": GENERATOR}


def read_marker(root: Path) -> dict[str, str]:
    """``key: value`` settings of a sample's marker file (empty if ``root`` is no sample)."""
    marker = Path(root) / MARKER
    if not marker.is_file():
        return {}
    pairs = (line.split(":", 1) for line in marker.read_text().splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def is_synthetic_sample(root: Path) -> bool:
    """True if ``root`` holds the marker file of an embedded synthetic sample."""
    return (Path(root) / MARKER).is_file()


def write_sample(key: str, root: Path, *, n_cases: int | None = None, seed: int = 0, size: int = 128) -> Path:
    """Write a synthetic sample of dataset ``key`` in its official layout under ``root``.

    Args:
        key: a :data:`DATASETS` key.
        root: target folder; must be empty, absent, or an earlier sample (which is replaced).
        n_cases: image/mask cases to write (default :data:`SAMPLE_CASES`). Shenzhen also gets
            two extra images without a mask, like the real set; JSRT images are ``size x size``
            ``.IMG`` files (the loader infers the side from the file length; official files are
            2048 x 2048) with SCR-style masks at half resolution.
        seed: the output is a pure function of ``(key, seed, n_cases, size)``.
        size: image side in pixels (even, >= 32).

    Returns:
        ``root``, which also holds the marker file ``MEDMLO_SYNTHETIC_SAMPLE.txt``.
    """
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset '{key}'; expected one of {sorted(DATASETS)}")
    settings = sample_settings(key, n_cases=n_cases, seed=seed, size=size)
    n = int(settings["n_cases"])
    if size < 32 or size % 2:
        raise DatasetError(f"sample size must be an even number >= 32, got {size}")
    if n < 1:
        raise DatasetError(f"n_cases must be >= 1, got {n}")
    root = Path(root)
    if is_synthetic_sample(root):
        shutil.rmtree(root)
    elif root.exists() and any(root.iterdir()):
        raise DatasetError(f"refusing to write a synthetic sample into '{root}': it is not empty and not a sample")
    root.mkdir(parents=True, exist_ok=True)
    _WRITERS[key](root, n, seed, size)
    lines = [
        "This folder is a SYNTHETIC sample, not real data. It was generated procedurally by medmlo",
        f"and copies the on-disk layout, file names and encodings of {DATASETS[key].title}",
        "so that the real loader reads it. Do not report results on it as results on the dataset.",
        *(f"{k}: {v}" for k, v in settings.items()),
    ]
    (root / MARKER).write_text("\n".join(lines) + "\n")
    return root
