"""The data of one E2EAug run: Table 1 splits of N labelled examples, at the run's image size.

A run trains on the labelled subset of one (N, seed) setting and is scored on the fixed test set of
its dataset and on every out-of-distribution test set that is available (PH2 and DermIS for ISIC,
NLM-MC and NLM-SZ for JSRT). The labelled subset depends on the seed only, so every method of a
seed trains on the same cases (a paired comparison). Without real data every set is an embedded
synthetic sample (problems/segdata/samples.py); :class:`SampleSizes` says how large those samples
are, so that a study can have enough test images for its intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..segdata import (
    DATASETS,
    SAMPLE_CASES,
    SAMPLE_SPLITS,
    SegmentationDataset,
    Splits,
    find_cases,
    make_splits,
    ood_test_cases,
)

__all__ = ["Data", "Roots", "SampleSizes", "comparison_sizes", "load_data", "size_ladder", "splits_for"]

Roots = dict[str, tuple[Path | None, str]]
"""Dataset key -> (folder, source): source ``real``, ``embedded-sample`` or ``missing`` (folder None)."""


@dataclass(frozen=True)
class SampleSizes:
    """Sizes of the embedded synthetic samples (None: the defaults of problems/segdata/samples.py).

    Attributes:
        cases: cases written for the in-distribution dataset (test set plus the pool N is drawn from).
        test: its test images (fixed selection, the same for every seed).
        ood_cases: cases written for each out-of-distribution dataset (all are test images).
    """

    cases: int | None = None
    test: int | None = None
    ood_cases: int | None = None

    def cases_of(self, key: str, in_distribution: bool) -> int:
        """The number of cases the sample of ``key`` has."""
        chosen = self.cases if in_distribution else self.ood_cases
        return SAMPLE_CASES[key] if chosen is None else chosen

    def test_of(self, key: str) -> int:
        """Test images of the in-distribution sample ``key``."""
        return SAMPLE_SPLITS[key]["test_size"] if self.test is None else self.test


@dataclass
class Data:
    """The splits of one (N, seed) setting, as datasets at the run's image size."""

    train: SegmentationDataset
    val: SegmentationDataset
    tests: dict[str, SegmentationDataset]  # test-set key -> dataset (in-distribution first)
    channels: int
    metric: str


def splits_for(key: str, roots: Roots, train_size: int, seed: int, sample: SampleSizes) -> Splits:
    """Table 1 splits of N = ``train_size`` labelled examples (80/20 train/validation) and the fixed
    test set (the sample's test size on an embedded sample, the paper's on real data)."""
    root, source = roots[key]
    test_size = sample.test_of(key) if source == "embedded-sample" else None
    return make_splits(key, find_cases(key, root), train_size, seed, test_size=test_size)


def load_data(key: str, roots: Roots, train_size: int, seed: int, size: int, sample: SampleSizes) -> Data:
    """The datasets of one (N, seed) setting; train and validation images are cached in memory."""
    splits = splits_for(key, roots, train_size, seed, sample)
    tests = {key: SegmentationDataset(splits.test, size)}
    for ood in DATASETS[key].ood_tests:
        ood_root, _ = roots[ood]
        if ood_root is not None:
            tests[ood] = SegmentationDataset(ood_test_cases(ood, find_cases(ood, ood_root)), size)
    return Data(
        SegmentationDataset(splits.train, size, cache=True),
        SegmentationDataset(splits.val, size, cache=True),
        tests,
        DATASETS[key].channels,
        DATASETS[key].metric,
    )


def comparison_sizes(key: str, source: str, *, every_size: bool) -> list[int]:
    """N of the main comparison: the first of Table 1 (all of them with ``every_size``), or the
    embedded sample's N."""
    if source == "embedded-sample":
        return list(SAMPLE_SPLITS[key]["train_sizes"][:1])
    sizes = list(DATASETS[key].train_sizes)
    return sizes if every_size else sizes[:1]


def size_ladder(key: str, source: str) -> list[int]:
    """N of the train-size study (Fig. 2): every N of Table 1; on the embedded sample, half, three
    quarters and all of the sample's N."""
    if source == "embedded-sample":
        n = SAMPLE_SPLITS[key]["train_sizes"][0]
        return sorted({n // 2, (3 * n) // 4, n})
    return list(DATASETS[key].train_sizes)
