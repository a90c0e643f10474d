"""The embedded default: synthetic lifespan domains made from the real MNI152 2009 tissue maps.

No download and no registration: the nilearn wheel ships the MNI152 2009a (symmetric) T1 template
and its GM and WM probability maps. At 2 mm they are cropped around the brain to an
80 x 96 x 80 grid (RAS+), CSF is taken as brain mask - GM - WM, and the labels are the argmax of
(background, CSF, GM, WM) probabilities. Each synthetic scan then goes through:

1. the person's pose and brain size: a random affine (small rotation and shift, the domain's
   brain scale -- infants have smaller brains -- with +-4 % jitter; MONAI ``RandAffined``);
2. a smooth random elastic deformation (MONAI ``RandSmoothDeformd``: a random displacement field
   on a coarse control grid, smoothly upsampled). The probability maps are warped (bilinear) and
   the labels follow from them;
3. atrophy on the probability maps: enlarged ventricles (tissue within a distance of the
   ventricles turned into CSF) and thinner cortex (GM within a depth of the tissue's outer
   surface turned into CSF), both in mm with sub-voxel partial volume;
4. the domain's T1w contrast: tissue means (CSF, GM, WM) per domain, plus the real template's
   within-tissue detail scaled per domain;
5. a smooth multiplicative bias field and Gaussian noise (MONAI ``RandBiasFieldd``,
   ``RandGaussianNoised``), zero outside the brain (skull-stripped), then
   :func:`~problems.braindata.subjects.normalise_intensity`.

Domains mirror the paper's roles: a meta-training pool of three (12- and 24-month infants,
adults) and two unseen meta-test domains (6-month isointense infants; elderly with
longitudinal series). An elderly series is one synthetic person (one deformation) scanned at
time points 12 months apart with progressing atrophy; scans of a series share one voxel grid,
so STCS needs no registration. Bias field and noise differ per scan.

Everything is a pure function of the arguments (seeded); each domain is cached as one ``.npz``
under :func:`default_cache_dir` so later runs load it in about a second. Images are stored
as float16 (and always rounded through float16, so fresh and cached results are identical).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .subjects import ROLES, BrainDataError, BrainDomain, Subject, normalise_intensity

__all__ = [
    "GENERATOR",
    "GRID",
    "META_TEST",
    "META_TRAIN",
    "PROFILES",
    "SPACING",
    "AgeProfile",
    "default_cache_dir",
    "lifespan_domains",
]

GENERATOR = "problems.braindata.lifespan v1"
"""Recorded in every cache file; bump when the synthesis changes so old caches are rebuilt."""

GRID: tuple[int, int, int] = (80, 96, 80)
"""Voxels of every embedded volume (RAS+)."""

SPACING: tuple[float, float, float] = (2.0, 2.0, 2.0)
"""Voxel size in mm (nilearn's 2 mm MNI152 resolution)."""

_MONTHS_PER_YEAR = 12.0
_DEEP_CSF_MM = 10.0  # CSF deeper than this inside the brain counts as ventricle ...
_VENTRICLE_SHARE = 0.2  # ... if its connected region has at least this share of the largest one


@dataclass(frozen=True)
class AgeProfile:
    """How one age group looks: size, contrast, atrophy and acquisition of its T1w scans.

    Attributes:
        name: domain key.
        like: the real dataset it stands in for.
        role: ``"meta-train"`` or ``"meta-test"``.
        age_months: age of the group (elderly: age at the first time point).
        people: default number of people (scans, or series of scans for a longitudinal domain).
        tissue_means: T1w intensity of pure CSF, GM, WM (before normalisation; the adult values
            are the template's own).
        texture: weight of the real template's within-tissue detail (1 = adult template).
        brain_scale: linear brain size relative to the adult template.
        ventricle_growth_mm: how far the ventricles are grown (at the first time point).
        cortical_thinning_mm: depth of cortex turned into CSF (at the first time point).
        atrophy_per_year_mm: (thinning, ventricle growth) added per year along a series.
        noise_std: Gaussian noise standard deviation relative to the WM mean.
        bias_coeff: coefficient range of the bias field polynomial (MONAI ``RandBiasField``).
        contrast: one line about the contrast, for the description.
    """

    name: str
    like: str
    role: str
    age_months: float
    people: int
    tissue_means: tuple[float, float, float]
    texture: float
    brain_scale: float
    ventricle_growth_mm: float
    cortical_thinning_mm: float
    atrophy_per_year_mm: tuple[float, float]
    noise_std: float
    bias_coeff: tuple[float, float]
    contrast: str


PROFILES: dict[str, AgeProfile] = {
    p.name: p
    for p in (
        AgeProfile(
            "infant12m",
            "IBIS12M",
            ROLES[0],
            12.0,
            6,
            (0.22, 0.50, 0.64),
            0.5,
            0.88,
            0.0,
            0.0,
            (0.0, 0.0),
            0.03,
            (0.10, 0.25),
            "early adult-like, low GM/WM contrast",
        ),
        AgeProfile(
            "infant24m",
            "IBIS24M",
            ROLES[0],
            24.0,
            6,
            (0.20, 0.52, 0.74),
            0.7,
            0.93,
            0.0,
            0.0,
            (0.0, 0.0),
            0.03,
            (0.10, 0.25),
            "adult-like, GM/WM contrast below the adult's",
        ),
        AgeProfile(
            "adult",
            "OASIS3",
            ROLES[0],
            65 * _MONTHS_PER_YEAR,
            6,
            (0.18, 0.56, 0.84),
            1.0,
            1.0,
            1.0,
            0.2,
            (0.0, 0.0),
            0.025,
            (0.05, 0.15),
            "adult T1w contrast of the MNI152 template, mild atrophy",
        ),
        AgeProfile(
            "infant6m",
            "iSeg-2019",
            ROLES[1],
            6.0,
            10,
            (0.26, 0.52, 0.55),
            0.3,
            0.82,
            0.0,
            0.0,
            (0.0, 0.0),
            0.035,
            (0.10, 0.30),
            "isointense: GM and WM intensities overlap",
        ),
        AgeProfile(
            "elderly",
            "ADNI",
            ROLES[1],
            75 * _MONTHS_PER_YEAR,
            6,
            (0.16, 0.52, 0.78),
            0.9,
            1.0,
            3.5,
            0.6,
            (0.1, 0.5),
            0.03,
            (0.05, 0.20),
            "aged T1w contrast, enlarged ventricles and CSF, thinner GM",
        ),
    )
}
"""The five embedded age groups (meta-train pool first)."""

META_TRAIN: tuple[str, ...] = tuple(n for n, p in PROFILES.items() if p.role == ROLES[0])
"""Embedded meta-training pool: 12-month (IBIS12M-like), 24-month (IBIS24M-like), adult (OASIS3-like)."""

META_TEST: tuple[str, ...] = tuple(n for n, p in PROFILES.items() if p.role == ROLES[1])
"""Embedded unseen meta-test domains: 6-month isointense (iSeg-2019-like), elderly longitudinal (ADNI-like)."""


def default_cache_dir() -> Path:
    """``$MEDMLO_CACHE/braindata``, else ``~/.cache/medmlo/braindata``."""
    cache = os.environ.get("MEDMLO_CACHE")
    return (Path(cache) if cache else Path.home() / ".cache" / "medmlo") / "braindata"


@functools.lru_cache(maxsize=1)
def _template() -> np.ndarray:
    """The MNI152 2009 maps at 2 mm, cropped to :data:`GRID` around the brain: channels mask, GM, WM, detail.

    ``detail`` is the template T1 minus its least-squares fit by the tissue probabilities (the
    within-tissue structure that a pure tissue-mixture image lacks).
    """
    from monai.transforms import CropForeground, ResizeWithPadOrCrop
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=2).get_fdata(dtype=np.float32)
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata(dtype=np.float32)
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata(dtype=np.float32)
    gm, wm = gm * mask, wm * mask
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    inside = mask > 0
    design = np.stack([csf[inside], gm[inside], wm[inside]], axis=1)
    means, *_ = np.linalg.lstsq(design, t1[inside], rcond=None)
    detail = (t1 - (np.stack([csf, gm, wm], axis=-1) @ means)) * mask
    stack = np.stack([mask, gm, wm, detail]).astype(np.float32)
    stack = CropForeground(select_fn=lambda x: x > 0, margin=0)(stack)
    stack = np.asarray(ResizeWithPadOrCrop(GRID)(stack), dtype=np.float32)
    return stack


def _probabilities(maps: np.ndarray) -> np.ndarray:
    """``[4, X, Y, Z]`` probabilities of background, CSF, GM, WM from warped (mask, GM, WM) channels."""
    mask = np.clip(maps[0], 0.0, 1.0)
    gm = np.clip(maps[1], 0.0, 1.0)
    wm = np.clip(maps[2], 0.0, 1.0)
    over = np.maximum(gm + wm, 1e-6)
    scale = np.minimum(1.0, mask / over)  # GM + WM never exceed the brain mask
    gm, wm = gm * scale, wm * scale
    return np.stack([1.0 - mask, mask - gm - wm, gm, wm]).astype(np.float32)


def _ramp(distance_mm: np.ndarray, reach_mm: float) -> np.ndarray:
    """Partial-volume step: 1 well within ``reach_mm``, 0 beyond, linear over one voxel."""
    return np.clip((reach_mm - distance_mm) / SPACING[0] + 0.5, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class _Anatomy:
    """Distances (mm) that atrophy grows along, fixed per person (shared by the scans of a series).

    ``ventricle_distance``: from the ventricles (the large connected CSF regions deeper than
    10 mm in the brain). ``surface_depth``: from the outside of the tissue (CSF or background).
    Both carry the person's smooth random offset of about one voxel, so that atrophy is uneven
    across the brain and labels change gradually (not shell by shell) as the atrophy grows.
    """

    ventricle_distance: np.ndarray
    surface_depth: np.ndarray


def _anatomy(probs: np.ndarray, seed: int) -> _Anatomy:
    labels = probs.argmax(axis=0)
    brain = labels > 0
    deep_csf = (labels == 1) & (ndimage.distance_transform_edt(brain, sampling=SPACING) > _DEEP_CSF_MM)
    components, count = ndimage.label(deep_csf)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    ventricles = np.isin(components, 1 + np.flatnonzero(sizes >= _VENTRICLE_SHARE * sizes.max())) if count else deep_csf
    rng = np.random.default_rng(seed)
    offsets = [ndimage.gaussian_filter(rng.standard_normal(labels.shape), 2.0) for _ in range(2)]
    offsets = [SPACING[0] * o / o.std() for o in offsets]
    distance = (
        ndimage.distance_transform_edt(~ventricles, sampling=SPACING) + offsets[0]
        if count
        else np.full(labels.shape, np.inf)
    )
    depth = ndimage.distance_transform_edt(labels >= 2, sampling=SPACING) + offsets[1]
    return _Anatomy(np.asarray(distance, dtype=np.float32), np.asarray(depth, dtype=np.float32))


def _atrophy(
    probs: np.ndarray, anatomy: _Anatomy, ventricle_growth_mm: float, cortical_thinning_mm: float
) -> np.ndarray:
    """Probabilities after growing the ventricles and thinning the cortex (both in mm, >= 0).

    Tissue within ``ventricle_growth_mm`` of the ventricles becomes CSF; grey matter within
    ``cortical_thinning_mm`` of the outside of the tissue becomes CSF. A one-voxel ramp keeps
    sub-voxel changes in the probabilities, so labels change gradually along a series.
    """
    bg, csf, gm, wm = probs
    if ventricle_growth_mm > 0:
        grown = _ramp(anatomy.ventricle_distance, ventricle_growth_mm) * (1.0 - bg)
        new_csf = np.maximum(csf, grown)
        keep = np.clip((1.0 - bg - new_csf) / np.maximum(gm + wm, 1e-6), 0.0, 1.0)
        csf, gm, wm = new_csf, gm * keep, wm * keep
    if cortical_thinning_mm > 0:
        thinned = _ramp(anatomy.surface_depth, cortical_thinning_mm) * gm
        csf, gm = csf + thinned, gm - thinned
    return np.stack([bg, csf, gm, wm]).astype(np.float32)


def _has_atrophy(profile: AgeProfile) -> bool:
    """Whether the profile has atrophy (at baseline or along a series)."""
    return bool(profile.ventricle_growth_mm or profile.cortical_thinning_mm or any(profile.atrophy_per_year_mm))


def _intensity(probs: np.ndarray, detail: np.ndarray, means: Sequence[float], texture: float) -> np.ndarray:
    """Noise-free T1w image: the tissue mixture of ``means`` plus the template's detail inside tissue."""
    _, csf, gm, wm = probs
    return (csf * means[0] + gm * means[1] + wm * means[2] + texture * detail * (gm + wm)).astype(np.float32)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


@dataclass(frozen=True)
class _Person:
    """One synthetic person: a deformation, contrast jitter and atrophy offsets (all seeded)."""

    seed: int
    means: tuple[float, float, float]
    ventricle_mm: float
    thinning_mm: float
    rate_scale: float


def _draw_person(profile: AgeProfile, seed: int) -> _Person:
    rng = np.random.default_rng(seed)
    csf, gm, wm = (float(m * j) for m, j in zip(profile.tissue_means, rng.uniform(0.96, 1.04, size=3), strict=True))
    return _Person(
        seed=seed,
        means=(csf, gm, wm),
        ventricle_mm=profile.ventricle_growth_mm * float(rng.uniform(0.6, 1.4)),
        thinning_mm=profile.cortical_thinning_mm * float(rng.uniform(0.6, 1.4)),
        rate_scale=float(rng.uniform(0.7, 1.3)),
    )


def _warp(maps: np.ndarray, profile: AgeProfile, seed: int) -> np.ndarray:
    """The person's pose and brain size (random affine), then a smooth random elastic deformation.

    MONAI ``RandAffined`` (rotation up to 4.6 degrees, translation up to 2 voxels, the domain's
    brain scale +- 4 %) and ``RandSmoothDeformd`` (a random displacement field on a 5^3 control
    grid, smoothly upsampled; displacements up to ~3 % of the field of view).
    """
    from monai.transforms import Compose, RandAffined, RandSmoothDeformd

    zoom = 1.0 / profile.brain_scale - 1.0  # MONAI scales the sampling grid: > 0 shrinks the brain
    warp = Compose(
        [
            RandAffined(
                keys="maps",
                prob=1.0,
                rotate_range=(0.08, 0.08, 0.08),
                translate_range=(2.0, 2.0, 2.0),
                scale_range=((zoom - 0.04, zoom + 0.04),) * 3,
                mode="bilinear",
                padding_mode="zeros",
            ),
            RandSmoothDeformd(
                keys="maps",
                spatial_size=maps.shape[1:],
                rand_size=(5, 5, 5),
                prob=1.0,
                def_range=0.03,
                grid_mode="bilinear",
                grid_padding_mode="zeros",
            ),
        ]
    )
    warp.set_random_state(seed=seed % 2**32)
    return np.asarray(warp({"maps": maps})["maps"], dtype=np.float32)


def _acquire(clean: np.ndarray, brain: np.ndarray, profile: AgeProfile, seed: int) -> np.ndarray:
    """Bias field and noise of one scan, zero outside the brain, normalised, rounded through float16."""
    from monai.transforms import RandBiasFieldd, RandGaussianNoised

    bias = RandBiasFieldd(keys="image", degree=3, coeff_range=profile.bias_coeff, prob=1.0)
    noise = RandGaussianNoised(keys="image", std=profile.noise_std, prob=1.0)
    bias.set_random_state(seed=seed % 2**32)
    noise.set_random_state(seed=(seed + 1) % 2**32)
    image = noise(bias({"image": clean[None]}))["image"]
    image = np.asarray(image, dtype=np.float32)[0] * brain
    return normalise_intensity(image).astype(np.float16).astype(np.float32)


def _scan(
    warped: np.ndarray, anatomy: _Anatomy | None, profile: AgeProfile, person: _Person, years: float, scan_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels of a person ``years`` after the first time point."""
    probs = _probabilities(warped[:3])
    if anatomy is not None:
        thinning_rate, ventricle_rate = profile.atrophy_per_year_mm
        probs = _atrophy(
            probs,
            anatomy,
            ventricle_growth_mm=person.ventricle_mm + ventricle_rate * person.rate_scale * years,
            cortical_thinning_mm=person.thinning_mm + thinning_rate * person.rate_scale * years,
        )
    labels = probs.argmax(axis=0).astype(np.int64)
    clean = _intensity(probs, warped[3], person.means, profile.texture)
    return _acquire(clean, labels > 0, profile, scan_seed), labels


def _generate(name: str, seed: int, n_people: int, time_points: int) -> list[dict]:
    profile = PROFILES[name]
    domain_index = list(PROFILES).index(name)
    records = []
    for i in range(n_people):
        person = _draw_person(profile, _seed(seed, domain_index, i))
        warped = _warp(_template(), profile, person.seed)
        anatomy = _anatomy(_probabilities(warped[:3]), person.seed) if _has_atrophy(profile) else None
        for t in range(time_points):
            image, labels = _scan(
                warped, anatomy, profile, person, years=float(t), scan_seed=_seed(seed, domain_index, i, t)
            )
            longitudinal = time_points > 1
            records.append(
                {
                    "subject_id": f"{name}-s{i:02d}" + (f"-t{t}" if longitudinal else ""),
                    "image": image.astype(np.float16),
                    "label": labels.astype(np.uint8),
                    "age_months": profile.age_months + t * _MONTHS_PER_YEAR,
                    "series": f"{name}-s{i:02d}" if longitudinal else "",
                    "time_point": t if longitudinal else -1,
                }
            )
    return records


def _settings(name: str, seed: int, n_people: int, time_points: int) -> dict[str, str]:
    return {
        "generator": GENERATOR,
        "domain": name,
        "seed": str(seed),
        "people": str(n_people),
        "time_points": str(time_points),
        "grid": "x".join(map(str, GRID)),
    }


def _cache_path(cache_dir: Path, settings: dict[str, str]) -> Path:
    name = f"{settings['domain']}-seed{settings['seed']}-p{settings['people']}-t{settings['time_points']}.npz"
    return cache_dir / name


def _save(path: Path, settings: dict[str, str], records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"settings_{k}": np.array(v) for k, v in settings.items()}
    for field in ("subject_id", "age_months", "series", "time_point"):
        arrays[field] = np.array([r[field] for r in records])
    arrays["image"] = np.stack([r["image"] for r in records])
    arrays["label"] = np.stack([r["label"] for r in records])
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp.npz", delete=False) as handle:
        np.savez_compressed(handle, **arrays)
    os.chmod(handle.name, 0o644)  # a temporary file is private; the cache is not
    os.replace(handle.name, path)


def _load(path: Path, settings: dict[str, str]) -> list[dict] | None:
    """Cached records, or ``None`` when the file is missing, unreadable or made with other settings."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            if any(str(data[f"settings_{k}"]) != v for k, v in settings.items()):
                return None
            arrays = {k: data[k] for k in ("subject_id", "image", "label", "age_months", "series", "time_point")}
    except (OSError, KeyError, ValueError):
        return None
    return [
        {
            "subject_id": str(arrays["subject_id"][i]),
            "image": arrays["image"][i],
            "label": arrays["label"][i],
            "age_months": float(arrays["age_months"][i]),
            "series": str(arrays["series"][i]),
            "time_point": int(arrays["time_point"][i]),
        }
        for i in range(len(arrays["subject_id"]))
    ]


def _domain(name: str, records: list[dict], time_points: int) -> BrainDomain:
    profile = PROFILES[name]
    subjects = [
        Subject(
            subject_id=r["subject_id"],
            image=r["image"].astype(np.float32),
            label=r["label"].astype(np.int64),
            spacing=SPACING,
            domain=name,
            age_months=r["age_months"],
            series=r["series"] or None,
            time_point=r["time_point"] if r["time_point"] >= 0 else None,
            source="embedded",
        )
        for r in records
    ]
    n_people = len(records) // time_points
    longitudinal = f", {n_people} series x {time_points} time points 12 months apart" if time_points > 1 else ""
    age = (
        f"{profile.age_months:g} months"
        if profile.age_months < 36
        else f"{profile.age_months / _MONTHS_PER_YEAR:g} years"
    )
    description = (
        f"synthetic {profile.like}-like ({name}, {profile.role}): {age}, {profile.contrast}; "
        f"{len(subjects)} scans{longitudinal}; MNI152 2009 tissue maps (nilearn), elastic "
        f"deformation, bias field, noise"
    )
    return BrainDomain(name=name, subjects=subjects, source="embedded", description=description, role=profile.role)


def lifespan_domains(
    *,
    seed: int = 0,
    people: int | None = None,
    time_points: int = 3,
    domains: Sequence[str] | None = None,
    cache: bool = True,
    cache_dir: Path | str | None = None,
) -> dict[str, BrainDomain]:
    """The embedded synthetic lifespan domains (see the module docstring), by name.

    Args:
        seed: everything (deformations, contrast jitter, atrophy, bias, noise) follows from it.
        people: people per domain (default each profile's ``people``: 6, or 10 for the
            iSeg-2019-like domain as in the iSeg-2019 training set). A cross-sectional domain has
            one scan per person; the longitudinal ADNI-like ``elderly`` domain has one series of
            ``time_points`` scans, 12 months apart, per person.
        time_points: scans per series of the longitudinal domain (>= 2).
        domains: which of :data:`PROFILES` to return (default all, meta-train pool first).
        cache: read/write ``<cache_dir>/<domain>-seed<seed>-p<people>-t<time points>.npz``.
        cache_dir: default :func:`default_cache_dir`.
    """
    names = tuple(PROFILES) if domains is None else tuple(domains)
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        raise BrainDataError(f"unknown embedded domains {unknown}; expected some of {list(PROFILES)}")
    if (people is not None and people < 1) or time_points < 2:
        raise BrainDataError(
            f"expected people >= 1 and time_points >= 2 (a longitudinal series), got {people} and {time_points}"
        )
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    result = {}
    for name in names:
        profile = PROFILES[name]
        n_people = profile.people if people is None else people
        n_times = time_points if any(profile.atrophy_per_year_mm) else 1  # only ageing progresses along a series
        settings = _settings(name, seed, n_people, n_times)
        path = _cache_path(folder, settings)
        records = _load(path, settings) if cache else None
        if records is None:
            records = _generate(name, seed, n_people, n_times)
            if cache:
                _save(path, settings, records)
        result[name] = _domain(name, records, n_times)
    return result
