"""Brain-tissue segmentation data and metrics for the DuMeta++ recipe (CSF / GM / WM across ages).

Typical use::

    domains = load_domains(data_root)                  # real folders under data_root, else embedded
    pool = [domains[n] for n in domains if domains[n].role == "meta-train"]
    target = domains["infant6m"]                       # an unseen meta-test domain
    split = few_shot_split(target, shots=1, seed=0)    # support / val / test, series kept together
    images, labels = axial_slices(split.support[0], size=64)          # 2D presets: [N, 64, 64]
    small = resample_subject(split.test[0], (64, 64, 64))              # 3D small preset: 64^3
    rows = score_subjects({s.subject_id: prediction(s) for s in split.test}, split.test)
    rows += longitudinal_rows(predictions, split.test)                 # STCS / ASPC per series
    table = summarise_rows(rows)                                        # metric -> tissue -> mean, std, n

Modules:

* ``subjects`` -- :class:`Subject`, :class:`BrainDomain`, the label convention (0 bg, 1 CSF,
  2 GM, 3 WM) and the intensity normalisation.
* ``layouts`` -- real on-disk layouts read with nibabel: a folder per domain in the nnU-Net raw
  layout (configurable label map, optional ``subjects.csv`` with age / series / time point) and
  the iSeg-2019 training layout (Analyze ``.hdr/.img``, labels 10/150/250).
* ``lifespan`` -- the embedded default: synthetic lifespan domains built from the real MNI152
  2009 T1 template and GM/WM probability maps inside the nilearn wheel (seeded, cached on disk).
* ``views`` -- what the networks eat: resampled volumes, axial slices, random patches.
* ``splits`` -- meta-train train/val split and one-/few-shot meta-test splits.
* ``metrics`` -- Dice and ASSD per tissue (MONAI, with voxel spacing), longitudinal STCS and ASPC.
"""

from .layouts import (
    LABEL_MAPS,
    PAPER_META_TEST,
    PAPER_META_TRAIN,
    load_domain_folder,
    load_domains,
    load_iseg2019,
    resolve_label_map,
)
from .lifespan import META_TEST, META_TRAIN, PROFILES, AgeProfile, default_cache_dir, lifespan_domains
from .metrics import (
    aspc,
    assd_per_tissue,
    dice_per_tissue,
    longitudinal_rows,
    score_subjects,
    stcs,
    summarise_rows,
)
from .splits import FewShotSplit, few_shot_split, train_val_split
from .subjects import NUM_CLASSES, ROLES, TISSUES, BrainDataError, BrainDomain, Subject, normalise_intensity
from .views import axial_slices, random_patches, resample_subject

__all__ = [
    "LABEL_MAPS",
    "META_TEST",
    "META_TRAIN",
    "NUM_CLASSES",
    "PAPER_META_TEST",
    "PAPER_META_TRAIN",
    "PROFILES",
    "ROLES",
    "TISSUES",
    "AgeProfile",
    "BrainDataError",
    "BrainDomain",
    "FewShotSplit",
    "Subject",
    "aspc",
    "assd_per_tissue",
    "axial_slices",
    "default_cache_dir",
    "dice_per_tissue",
    "few_shot_split",
    "lifespan_domains",
    "load_domain_folder",
    "load_domains",
    "load_iseg2019",
    "longitudinal_rows",
    "normalise_intensity",
    "random_patches",
    "resample_subject",
    "resolve_label_map",
    "score_subjects",
    "stcs",
    "summarise_rows",
    "train_val_split",
]
