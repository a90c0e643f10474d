"""2D binary segmentation datasets of the E2EAug paper, read from their official on-disk layouts.

Typical use::

    root, source = ensure_dataset("isic2018", data_root)      # real data, download, or embedded sample
    cases = find_cases("isic2018", root)
    splits = make_splits("isic2018", cases, train_size=40, seed=0)
    train = SegmentationDataset(splits.train, size=256, cache=True)

Modules: ``layouts`` (registry and one finder per official layout), ``io`` (reading and
validation), ``splits`` (Table 1 splits), ``samples`` (synthetic look-alikes in the official
layouts), ``download`` (checksummed download and the data-source decision), ``dataset`` (torch).
"""

from .dataset import SegmentationDataset
from .download import SOURCES, Archive, Source, download_dataset, ensure_dataset
from .io import read_case
from .layouts import DATASETS, Case, DatasetError, DatasetSpec, find_cases
from .samples import SAMPLE_CASES, SAMPLE_SPLITS, default_sample_root, is_synthetic_sample, write_sample
from .splits import TEST_SEED, Splits, make_splits, ood_test_cases

__all__ = [
    "DATASETS",
    "SAMPLE_CASES",
    "SAMPLE_SPLITS",
    "SOURCES",
    "TEST_SEED",
    "Archive",
    "Case",
    "DatasetError",
    "DatasetSpec",
    "SegmentationDataset",
    "Source",
    "Splits",
    "default_sample_root",
    "download_dataset",
    "ensure_dataset",
    "find_cases",
    "is_synthetic_sample",
    "make_splits",
    "ood_test_cases",
    "read_case",
    "write_sample",
]
