"""2D MRI slices for reconstruction: BraTS 2018, a plain folder of NIfTI volumes, or the embedded MNI152.

Every source ends as :class:`MRISlices`: real magnitude images ``[N, H, W]`` (float32) per split
(``train`` / ``val`` / ``test``), each slice centre-cropped to ``SliceSpec.crop`` (160×180 in the
paper), optionally resized to ``SliceSpec.size``, and divided by its own maximum (Bian et al. §5.1).
k-space is *not* stored: a recipe simulates it from the image with the forward model of
:mod:`problems.mri.operators` and a mask of :mod:`problems.mri.masks`.

Sources (:func:`load_slices`):

* ``brats2018`` — the BraTS 2018 training layout, unchanged::

      <root>/MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair}.nii.gz

  (``<root>`` may also be the ``MICCAI_BraTS_2018_Data_Training`` folder itself). Cases of the
  chosen grades (HGG, as the paper) are split by a seeded permutation into ``counts`` patients
  (paper: 30 / 15 / 6; the paper drew its 15 validation patients from the BraTS validation
  release, here they are further distinct training patients), and each volume gives its
  ``slices_per_volume`` central axial slices (paper: 10), i.e. 300 / 150 / 60 slices per task.
* ``nifti`` — any folder holding ``*.nii`` / ``*.nii.gz`` volumes (searched recursively); each
  volume is a case, split as above (proportionally when there are fewer than the counts).
* ``embedded`` (no root) — axial slices of the real MNI152 2009 T1 template shipped inside the
  nilearn wheel (1 mm, 197×233×189), and a *synthesised* T2-like contrast from its GM/WM
  probability maps and brain mask (CSF = mask − GM − WM; T2w = 1.0·CSF + 0.55·GM + 0.3·WM) as a
  second domain. One brain only, so there are no patients to split: the axial slices with at
  least half the largest brain area (39-130) are cut into slabs of adjacent slices dealt to the
  splits by an :class:`EmbeddedLayout`. The default, :data:`ADJACENT_BLOCKS`, deals blocks of 3 in
  the pattern train, val, train, test, train with no gap (54 / 18 / 18; a test slice is then 1 mm
  from a training slice); :data:`SLABS_WITH_GAPS` leaves 3 slices out between slabs of 6 train /
  3 val / 3 test slices (36 / 9 / 9; every test slice at least 4 mm from any training slice), so
  that generalisation is not measured on near-copies of training slices. The description states
  the separation measured: the nearest training slice of each test slice and the median PSNR
  between the two. Always a **stand-in** (``MRISlices.stand_in``), and every output says so.

Slices whose maximum is 0 (nothing to scale) are dropped; how many is stated in the description.

Axial slice ``k`` of a volume ``[X, Y, Z]`` is ``volume[:, :, k]`` (rows = first voxel axis); all
volumes must be 3D (a trailing singleton axis is dropped). Public API::

    CONTRASTS, EMBEDDED_CONTRASTS, SPLITS, PAPER_COUNTS
    SliceSpec(crop=(160, 180), size=None, slices_per_volume=10)
    SplitCounts(train=30, val=15, test=6)
    SliceSet(images, cases, slice_index, dropped)  # one split; .subset(n)
    EmbeddedLayout(slabs, pattern, gap); ADJACENT_BLOCKS, SLABS_WITH_GAPS
    MRISlices(name, source, contrast, stand_in, description, splits)
    load_slices(root=None, *, contrast="t1", spec=SliceSpec(), counts=PAPER_COUNTS, seed=0,
                grades=("HGG",), limit=None, layout=ADJACENT_BLOCKS) -> MRISlices
    split_sizes(root=None, *, spec, counts, grades, limit, layout) -> {split: slices}   # no volume read
    read_volume(path) -> np.ndarray [X, Y, Z];  axial_slices(volume, spec) -> np.ndarray [n, H, W]
    center_crop(image, shape);  embedded_volume(contrast) -> np.ndarray [X, Y, Z]
    MRIDataError                                  # every bad input (a ValueError)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ADJACENT_BLOCKS",
    "BRATS_FOLDER",
    "CONTRASTS",
    "EMBEDDED_CONTRASTS",
    "PAPER_COUNTS",
    "SLABS_WITH_GAPS",
    "SPLITS",
    "EmbeddedLayout",
    "MRIDataError",
    "MRISlices",
    "SliceSet",
    "SliceSpec",
    "SplitCounts",
    "axial_slices",
    "brats_cases",
    "center_crop",
    "embedded_volume",
    "load_slices",
    "read_volume",
    "split_sizes",
]

CONTRASTS = ("t1", "t1ce", "t2", "flair")  # BraTS modality file suffixes
EMBEDDED_CONTRASTS = ("t1", "t2")
SPLITS = ("train", "val", "test")
BRATS_FOLDER = "MICCAI_BraTS_2018_Data_Training"
GRADES = ("HGG", "LGG")


class MRIDataError(ValueError):
    """Bad MRI input: a missing file, a volume of the wrong rank, an unknown layout or contrast."""


@dataclass(frozen=True)
class SliceSpec:
    """How volumes become slices: centre crop ``(H, W)``, optional resize, central slices per volume."""

    crop: tuple[int, int] = (160, 180)
    size: tuple[int, int] | None = None
    slices_per_volume: int = 10

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.size) if self.size is not None else tuple(self.crop)


@dataclass(frozen=True)
class SplitCounts:
    """Patients (volumes) per split."""

    train: int = 30
    val: int = 15
    test: int = 6

    def as_dict(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test": self.test}


PAPER_COUNTS = SplitCounts(30, 15, 6)


@dataclass(frozen=True)
class EmbeddedLayout:
    """How the embedded stand-in's usable axial slices are dealt to the splits: slabs of adjacent
    slices, ``slabs[split]`` thick, in the cyclic order ``pattern``, with ``gap`` slices left out after
    every slab; dealing stops at the first slab that does not fit."""

    slabs: tuple[tuple[str, int], ...] = (("train", 3), ("val", 3), ("test", 3))
    pattern: tuple[str, ...] = ("train", "val", "train", "test", "train")
    gap: int = 0

    def __post_init__(self) -> None:
        thickness = dict(self.slabs)
        if set(thickness) != set(SPLITS) or set(self.pattern) != set(SPLITS):
            raise MRIDataError(f"EmbeddedLayout: slabs and pattern must name every split {list(SPLITS)}, got {self}")
        if min(thickness.values()) < 1 or self.gap < 0:
            raise MRIDataError(f"EmbeddedLayout: slabs must be >= 1 slice and the gap >= 0, got {self}")

    def deal(self, first: int, last: int) -> dict[str, list[int]]:
        """Slice indices of each split for the usable slices ``first..last``."""
        thickness, out = dict(self.slabs), {split: [] for split in SPLITS}
        z, i = first, 0
        while z + thickness[self.pattern[i % len(self.pattern)]] - 1 <= last:
            n = thickness[self.pattern[i % len(self.pattern)]]
            out[self.pattern[i % len(self.pattern)]] += list(range(z, z + n))
            z, i = z + n + self.gap, i + 1
        return out

    def describe(self) -> str:
        slabs = "/".join(f"{n} {split}" for split, n in self.slabs)
        gap = f", {self.gap} slice(s) left out between slabs" if self.gap else ", no gap"
        return f"slabs of {slabs} adjacent slices dealt in the order {', '.join(self.pattern)}{gap}"


ADJACENT_BLOCKS = EmbeddedLayout()
"""Blocks of 3 adjacent slices, no gap (54 / 18 / 18 slices): a test slice is 1 mm from a training slice."""
SLABS_WITH_GAPS = EmbeddedLayout((("train", 6), ("val", 3), ("test", 3)), ("train", "val", "train", "test"), gap=3)
"""Slabs of 6 train / 3 val / 3 test slices with 3 slices left out between slabs (36 / 9 / 9 slices):
every test slice lies at least 4 mm from any training slice."""


@dataclass
class SliceSet:
    """One split: images ``[N, H, W]`` (real, each slice max-normalised) and where each came from."""

    images: Tensor
    cases: list[str]
    slice_index: list[int]
    dropped: int = 0  # slices of this split dropped as all-zero when it was read

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, n: int | None) -> SliceSet:
        """At most ``n`` slices, evenly spaced over the split (all of them for None)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise MRIDataError(f"a split needs at least one slice, asked for {n}")
        keep = np.linspace(0, len(self) - 1, n).round().astype(int).tolist()
        return SliceSet(
            self.images[keep], [self.cases[i] for i in keep], [self.slice_index[i] for i in keep], self.dropped
        )


@dataclass
class MRISlices:
    """Slices of one contrast, split for training, validation and test."""

    name: str
    source: str  # "embedded", "brats2018" or "nifti"
    contrast: str
    stand_in: bool
    description: str
    splits: dict[str, SliceSet] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.splits["train"].images.shape[-2:])

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


# ---------------------------------------------------------------------------------------- volumes
def read_volume(path: Path) -> np.ndarray:
    """A NIfTI volume as float32 ``[X, Y, Z]``; trailing singleton axes are dropped. A volume holding
    NaN or infinite voxels is an :class:`MRIDataError` naming the file (its slices would otherwise
    vanish without a word: a NaN maximum is not > 0)."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise MRIDataError(f"volume {path} does not exist")
    try:
        image = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for unreadable files
        raise MRIDataError(f"cannot read {path} as a NIfTI volume: {err}") from None
    shape = tuple(image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise MRIDataError(
            f"{path}: expected a 3D volume [X, Y, Z] (axial slices along the last axis), got shape {tuple(image.shape)}"
        )
    volume = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    bad = int(volume.size - np.count_nonzero(np.isfinite(volume)))
    if bad:
        raise MRIDataError(f"{path}: {bad} voxel(s) are NaN or infinite; expected finite intensities")
    return volume


def center_crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre crop of the last two axes to ``shape``, zero-padded where the image is smaller."""
    h, w = image.shape[-2:]
    th, tw = shape
    out = np.zeros((*image.shape[:-2], th, tw), dtype=image.dtype)
    sy, sx = max(0, (h - th) // 2), max(0, (w - tw) // 2)
    dy, dx = max(0, (th - h) // 2), max(0, (tw - w) // 2)
    ch, cw = min(h, th), min(w, tw)
    out[..., dy : dy + ch, dx : dx + cw] = image[..., sy : sy + ch, sx : sx + cw]
    return out


def axial_slices(volume: np.ndarray, spec: SliceSpec, indices: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Axial slices ``[n, H, W]`` (cropped, resized, each divided by its maximum) and their indices.

    ``indices`` default to the ``spec.slices_per_volume`` adjacent slices at the volume's centre.
    All-zero slices (nothing to scale) are dropped.
    """
    depth = volume.shape[-1]
    if indices is None:
        n = min(spec.slices_per_volume, depth)
        start = depth // 2 - n // 2
        indices = list(range(start, start + n))
    stack = center_crop(np.moveaxis(volume[..., indices], -1, 0), spec.crop)
    images = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))
    if spec.size is not None and tuple(spec.size) != tuple(spec.crop):
        images = torch.nn.functional.interpolate(
            images[:, None], size=tuple(spec.size), mode="bilinear", antialias=True, align_corners=False
        )[:, 0].clamp_min(0)
    peak = images.flatten(1).amax(1)
    keep = peak > 0
    images = images[keep] / peak[keep, None, None]
    return images.numpy(), [i for i, k in zip(indices, keep.tolist()) if k]


# ---------------------------------------------------------------------------------------- embedded
@functools.lru_cache(maxsize=2)
def embedded_volume(contrast: str) -> np.ndarray:
    """The MNI152 2009 T1 template (``t1``) or the T2-like contrast synthesised from its tissue maps (``t2``)."""
    from nilearn import datasets

    if contrast not in EMBEDDED_CONTRASTS:
        raise MRIDataError(f"the embedded MNI152 stand-in has contrasts {list(EMBEDDED_CONTRASTS)}, got {contrast!r}")
    if contrast == "t1":
        return np.asarray(datasets.load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata()
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    return np.asarray(1.0 * csf + 0.55 * gm + 0.3 * wm, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _embedded_brain_area() -> np.ndarray:
    """Voxels of the MNI152 brain mask in each axial slice ``[Z]``."""
    from nilearn import datasets

    return (datasets.load_mni152_brain_mask(resolution=1).get_fdata() > 0.5).sum((0, 1))


def _embedded_indices(layout: EmbeddedLayout) -> dict[str, list[int]]:
    """Axial slice indices of each split of the embedded stand-in (see the module docstring)."""
    area = _embedded_brain_area()
    usable = np.nonzero(area >= 0.5 * area.max())[0]
    return layout.deal(int(usable[0]), int(usable[-1]))


def _separation(splits: dict[str, SliceSet]) -> str:
    """How far the test slices lie from the training slices of the same brain: the smallest distance
    in slices (1 mm each), and the median PSNR of each test slice against its nearest training slice."""
    train = np.asarray(splits["train"].slice_index)
    if train.size == 0 or not splits["test"].slice_index:
        return ""
    distances, psnrs = [], []
    for k, index in enumerate(splits["test"].slice_index):
        nearest = int(np.argmin(np.abs(train - index)))
        distances.append(abs(int(train[nearest]) - index))
        reference = splits["test"].images[k].double()
        error = (splits["train"].images[nearest].double() - reference).pow(2).mean()
        psnrs.append(float(10 * torch.log10(reference.max() ** 2 / error)))
    return (
        f" Every test slice lies at least {min(distances)} mm from a training slice (median PSNR between a "
        f"test slice and its nearest training slice: {float(np.median(psnrs)):.1f} dB)."
    )


def _embedded(contrast: str, spec: SliceSpec, layout: EmbeddedLayout) -> tuple[dict[str, SliceSet], str]:
    volume = embedded_volume(contrast)
    indices = _embedded_indices(layout)
    splits: dict[str, SliceSet] = {}
    for split in SPLITS:
        images, kept = axial_slices(volume, spec, indices[split])
        splits[split] = SliceSet(
            torch.from_numpy(images), ["mni152"] * len(kept), kept, len(indices[split]) - len(kept)
        )
    what = (
        "the real MNI152 2009 T1 template"
        if contrast == "t1"
        else "a T2-like contrast synthesised from the MNI152 2009 GM/WM/brain-mask maps"
    )
    every = sorted(i for v in indices.values() for i in v)
    description = (
        f"Stand-in: axial slices {every[0]}-{every[-1]} of {what} (one brain, shipped with nilearn), "
        f"{layout.describe()}; not BraTS 2018 patients.{_separation(splits)}"
    )
    return splits, description


# ---------------------------------------------------------------------------------------- real layouts
def brats_cases(root: Path, grades: tuple[str, ...] = ("HGG",)) -> list[Path]:
    """Case folders ``<grade>/<case>`` of the BraTS 2018 training layout under ``root``, sorted."""
    root = Path(root)
    base = root / BRATS_FOLDER if (root / BRATS_FOLDER).is_dir() else root
    unknown = sorted(set(grades) - set(GRADES))
    if unknown:
        raise MRIDataError(f"unknown BraTS grade(s) {unknown}; expected some of {list(GRADES)}")
    cases = []
    for grade in grades:
        folder = base / grade
        if not folder.is_dir():
            raise MRIDataError(f"BraTS layout: expected the folder {folder} ({BRATS_FOLDER}/{{HGG,LGG}}/<case>/)")
        cases += sorted(p for p in folder.iterdir() if p.is_dir())
    if not cases:
        raise MRIDataError(f"BraTS layout under {base}: no case folders in {list(grades)}")
    return cases


def _is_brats(root: Path) -> bool:
    base = root / BRATS_FOLDER if (root / BRATS_FOLDER).is_dir() else root
    return any((base / g).is_dir() for g in GRADES)


def _split_cases(cases: list, counts: SplitCounts, seed: int) -> dict[str, list]:
    """A seeded permutation dealt into ``counts``; proportionally (at least one each) if there are fewer."""
    n = len(cases)
    if n < len(SPLITS):
        raise MRIDataError(f"found {n} volume(s); train, validation and test need at least one each")
    wanted = counts.as_dict()
    total = sum(wanted.values())
    if n < total:
        sizes = {k: max(1, math.floor(n * v / total)) for k, v in wanted.items()}
        sizes["train"] = n - sizes["val"] - sizes["test"]
    else:
        sizes = wanted
    order = np.random.default_rng(seed).permutation(n).tolist()
    out, start = {}, 0
    for split in SPLITS:
        out[split] = [cases[i] for i in order[start : start + sizes[split]]]
        start += sizes[split]
    return out


def _slices_of(files: list[tuple[str, Path]], spec: SliceSpec) -> SliceSet:
    images, cases, indices, dropped = [], [], [], 0
    for case, path in files:
        volume = read_volume(path)
        stack, kept = axial_slices(volume, spec)
        images.append(torch.from_numpy(stack))
        cases += [case] * len(kept)
        indices += kept
        dropped += min(spec.slices_per_volume, volume.shape[-1]) - len(kept)
    return SliceSet(torch.cat(images), cases, indices, dropped)


def _brats(
    root: Path, contrast: str, spec: SliceSpec, counts: SplitCounts, seed: int, grades: tuple[str, ...]
) -> tuple[dict[str, SliceSet], str]:
    if contrast not in CONTRASTS:
        raise MRIDataError(f"BraTS 2018 contrast must be one of {list(CONTRASTS)}, got {contrast!r}")
    files = []
    for case in brats_cases(root, grades):
        path = case / f"{case.name}_{contrast}.nii.gz"
        if not path.is_file():
            raise MRIDataError(
                f"BraTS case {case.name}: missing modality file {path} "
                f"(expected <case>/<case>_{{{','.join(CONTRASTS)}}}.nii.gz)"
            )
        files.append((case.name, path))
    split = _split_cases(files, counts, seed)
    splits = {k: _slices_of(v, spec) for k, v in split.items()}
    sizes = "/".join(str(len(split[k])) for k in SPLITS)
    return splits, (
        f"BraTS 2018 {'+'.join(grades)} {contrast.upper()} from {root}: {sizes} patients "
        f"(train/val/test), {spec.slices_per_volume} central axial slices each"
    )


def _nifti_folder(root: Path, spec: SliceSpec, counts: SplitCounts, seed: int) -> tuple[dict[str, SliceSet], str]:
    paths = sorted(p for p in root.rglob("*") if p.name.endswith((".nii", ".nii.gz")) and p.is_file())
    if not paths:
        raise MRIDataError(
            f"{root}: neither the BraTS 2018 layout ({BRATS_FOLDER}/{{HGG,LGG}}/<case>/) nor a folder "
            "of NIfTI volumes (*.nii, *.nii.gz)"
        )
    files = [(str(p.relative_to(root)), p) for p in paths]
    split = _split_cases(files, counts, seed)
    splits = {k: _slices_of(v, spec) for k, v in split.items()}
    sizes = "/".join(str(len(split[k])) for k in SPLITS)
    return splits, (
        f"NIfTI volumes from {root}: {sizes} volumes (train/val/test), "
        f"{spec.slices_per_volume} central axial slices each"
    )


def load_slices(
    root: Path | str | None = None,
    *,
    contrast: str = "t1",
    spec: SliceSpec = SliceSpec(),
    counts: SplitCounts = PAPER_COUNTS,
    seed: int = 0,
    grades: tuple[str, ...] = ("HGG",),
    limit: dict[str, int] | None = None,
    layout: EmbeddedLayout = ADJACENT_BLOCKS,
) -> MRISlices:
    """Slices of ``contrast`` from ``root`` (BraTS 2018 layout or a NIfTI folder) or the embedded MNI152.

    Args:
        root: data folder, or None for the embedded stand-in.
        contrast: BraTS modality (t1, t1ce, t2, flair) or embedded contrast (t1, t2); a plain NIfTI
            folder has one contrast, recorded as ``nifti``.
        spec: crop, resize and slices per volume.
        counts: patients per split (real data).
        seed: the case permutation.
        grades: BraTS grades to draw cases from.
        limit: at most this many slices per split (evenly spaced), e.g. ``{"train": 24}``.
        layout: how the embedded stand-in's slices are dealt to the splits (ignored for real data).
    """
    if spec.slices_per_volume < 1:
        raise MRIDataError(f"slices_per_volume must be >= 1, got {spec.slices_per_volume}")
    if root is None:
        splits, description = _embedded(contrast, spec, layout)
        source, name, stand_in = "embedded", f"mni152-{contrast}", True
    else:
        root = Path(root)
        if not root.is_dir():
            raise MRIDataError(f"data root {root} is not a folder")
        if _is_brats(root):
            splits, description = _brats(root, contrast, spec, counts, seed, tuple(grades))
            source, name, stand_in = "brats2018", f"brats2018-{contrast}", False
        else:
            splits, description = _nifti_folder(root, spec, counts, seed)
            source, name, stand_in, contrast = "nifti", "nifti", False, "nifti"
    unknown = sorted(set(limit or {}) - set(SPLITS))
    if unknown:
        raise MRIDataError(f"limit names unknown split(s) {unknown}; splits are {list(SPLITS)}")
    splits = {k: v.subset((limit or {}).get(k)) for k, v in splits.items()}
    for split, slices in splits.items():
        if len(slices) == 0:
            raise MRIDataError(f"{name}: the {split} split has no slices")
    dropped = [splits[k].dropped for k in SPLITS]
    description += f" {sum(dropped)} slice(s) dropped as all-zero (train/val/test: {'/'.join(map(str, dropped))})."
    return MRISlices(name, source, contrast, stand_in, description, splits)


def split_sizes(
    root: Path | str | None = None,
    *,
    spec: SliceSpec = SliceSpec(),
    counts: SplitCounts = PAPER_COUNTS,
    grades: tuple[str, ...] = ("HGG",),
    limit: dict[str, int] | None = None,
    layout: EmbeddedLayout = ADJACENT_BLOCKS,
) -> dict[str, int]:
    """Slices per split that :func:`load_slices` with the same arguments gives, without reading a volume.

    Exact for the embedded stand-in; for a real layout it counts the cases (a directory listing)
    and assumes ``spec.slices_per_volume`` slices each, an upper bound when a volume is thinner or
    has all-zero slices. Planning a budget in epochs needs these numbers before any data is loaded.
    """
    if root is None:
        sizes = {k: len(v) for k, v in _embedded_indices(layout).items()}
    else:
        root = Path(root)
        if not root.is_dir():
            raise MRIDataError(f"data root {root} is not a folder")
        if _is_brats(root):
            n = len(brats_cases(root, tuple(grades)))
        else:
            n = sum(1 for p in root.rglob("*") if p.name.endswith((".nii", ".nii.gz")) and p.is_file())
        if n < len(SPLITS):
            raise MRIDataError(f"{root}: found {n} volume(s); train, validation and test need at least one each")
        cases = {k: len(v) for k, v in _split_cases(list(range(n)), counts, 0).items()}
        sizes = {k: v * spec.slices_per_volume for k, v in cases.items()}
    return {k: min(v, (limit or {}).get(k, v)) for k, v in sizes.items()}
