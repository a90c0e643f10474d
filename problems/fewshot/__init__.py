"""Few-shot classification data: the four benchmarks in their distributed formats, an embedded
offline stand-in (handwritten digits), and a seeded, resumable N-way K-shot task sampler."""

from __future__ import annotations

from pathlib import Path

from .digits import load_digits_fewshot
from .episodes import Episodes, EpisodeStream, sample_episodes
from .formats import BENCHMARKS, ClassSplit, FewShotDataError, FewShotDataset, read_benchmark

__all__ = [
    "DATASET_NAMES",
    "ClassSplit",
    "EpisodeStream",
    "Episodes",
    "FewShotDataError",
    "FewShotDataset",
    "load_fewshot",
    "sample_episodes",
]

DATASET_NAMES: tuple[str, ...] = (*BENCHMARKS, "digits")


def load_fewshot(name: str, root: Path | str | None = None) -> FewShotDataset:
    """Load few-shot dataset ``name`` (one of DATASET_NAMES).

    "digits" is embedded and ignores ``root``; the others read the files distributed for
    learn2learn under ``root`` (see :mod:`problems.fewshot.formats`). Raises FewShotDataError for
    an unknown name, a missing root, or missing or malformed files.
    """
    if name not in DATASET_NAMES:
        raise FewShotDataError(f"unknown few-shot dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if name == "digits":
        return load_digits_fewshot()
    if root is None:
        raise FewShotDataError(
            f"{name} is read from its distributed files: pass the folder holding them as root. {BENCHMARKS[name].hint}"
        )
    return read_benchmark(name, Path(root))
