"""The shared k-space substrate of the MRI reconstruction recipes (metarecon, taskcorr).

Complex tensors throughout (native torch complex dtypes, spatial axes last); see
:mod:`problems.mri.operators` for the convention. Nothing here knows about levels or recipes.

* :mod:`~problems.mri.operators` — orthonormal centred FFT, single-/multi-coil forward models.
* :mod:`~problems.mri.masks` — radial, random Cartesian and Poisson-disc sampling masks (seeded, cached).
* :mod:`~problems.mri.data` — 2D slices from BraTS 2018, a NIfTI folder or the embedded MNI152 stand-in.
* :mod:`~problems.mri.metrics` — PSNR, SSIM and NMSE per slice, CSV and mean ± std summaries.
"""

from .data import (
    ADJACENT_BLOCKS,
    CONTRASTS,
    EMBEDDED_CONTRASTS,
    PAPER_COUNTS,
    SLABS_WITH_GAPS,
    SPLITS,
    EmbeddedLayout,
    MRIDataError,
    MRISlices,
    SliceSet,
    SliceSpec,
    SplitCounts,
    load_slices,
    read_volume,
    split_sizes,
)
from .masks import PATTERNS, RATIO_TOLERANCE, SamplingTask, achieved_ratio, mask_cache_dir, sampling_mask
from .metrics import (
    METRIC_NAMES,
    nmse,
    per_slice_rows,
    psnr,
    reconstruction_metrics,
    ssim,
    summarize_rows,
    write_per_slice_csv,
)
from .operators import CoilImages, MultiCoil, SingleCoil, fft2c, ifft2c, root_sum_of_squares, simulate_coil_maps

__all__ = [
    "ADJACENT_BLOCKS",
    "CONTRASTS",
    "EMBEDDED_CONTRASTS",
    "METRIC_NAMES",
    "PAPER_COUNTS",
    "PATTERNS",
    "RATIO_TOLERANCE",
    "SLABS_WITH_GAPS",
    "SPLITS",
    "CoilImages",
    "EmbeddedLayout",
    "MRIDataError",
    "MRISlices",
    "MultiCoil",
    "SamplingTask",
    "SingleCoil",
    "SliceSet",
    "SliceSpec",
    "SplitCounts",
    "achieved_ratio",
    "fft2c",
    "ifft2c",
    "load_slices",
    "mask_cache_dir",
    "nmse",
    "per_slice_rows",
    "psnr",
    "read_volume",
    "reconstruction_metrics",
    "root_sum_of_squares",
    "sampling_mask",
    "simulate_coil_maps",
    "split_sizes",
    "ssim",
    "summarize_rows",
    "write_per_slice_csv",
]
