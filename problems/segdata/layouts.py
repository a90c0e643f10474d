"""Dataset registry and one case finder per official on-disk layout.

Every finder reads the folder where the user extracted the official archive(s)
unchanged (``--data-root``) and returns :class:`Case` records sorted by
``case_id``. Nothing is renamed or converted on disk; the finders only pair
image files with their mask files, following each archive's naming scheme.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

__all__ = ["DATASETS", "Case", "DatasetError", "DatasetSpec", "find_cases"]


class DatasetError(ValueError):
    """Bad or missing input data; the message names the file or folder and what was expected."""


@dataclass(frozen=True)
class Case:
    """One image with its mask file(s).

    Attributes:
        dataset: registry key (see :data:`DATASETS`).
        case_id: stable identifier taken from the file names, e.g. ``"ISIC_0000000"``.
        image: the image file.
        masks: one or more mask files; they are OR-ed into one binary mask
            (BUSI multi-lesion masks, left + right lung files).
        group: what splits must keep together or may stratify by
            (FetReg: the video id; BUSI and DermIS: the diagnostic class).
    """

    dataset: str
    case_id: str
    image: Path
    masks: tuple[Path, ...]
    group: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset (Table 1 of the E2EAug paper for the sizes)."""

    key: str
    title: str
    channels: int
    metric: str
    test_size: int | None
    train_sizes: tuple[int, ...]
    ood_tests: tuple[str, ...]
    layout_hint: str


DATASETS: dict[str, DatasetSpec] = {
    spec.key: spec
    for spec in (
        DatasetSpec(
            key="isic2018",
            title="ISIC 2018 Task 1 (skin lesion segmentation)",
            channels=3,
            metric="jaccard",
            test_size=594,
            train_sizes=(40, 100, 200),
            ood_tests=("ph2", "dermis"),
            layout_hint=(
                "Extract ISIC2018_Task1-2_Training_Input.zip and ISIC2018_Task1_Training_GroundTruth.zip "
                "(isic-challenge-data.s3.amazonaws.com/2018/) into --data-root unchanged, so that it holds "
                "ISIC2018_Task1-2_Training_Input/ISIC_<7 digits>.jpg and "
                "ISIC2018_Task1_Training_GroundTruth/ISIC_<7 digits>_segmentation.png (0 = skin, 255 = lesion)."
            ),
        ),
        DatasetSpec(
            key="ph2",
            title="PH2 (dermoscopy, out-of-distribution test)",
            channels=3,
            metric="jaccard",
            test_size=200,
            train_sizes=(),
            ood_tests=(),
            layout_hint=(
                "Unpack PH2Dataset.rar (ADDI project, fc.up.pt/addi) into --data-root unchanged, so that it "
                "holds 'PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp' and "
                "'PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp' (note the spaces)."
            ),
        ),
        DatasetSpec(
            key="dermis",
            title="DermIS (clinical skin images, out-of-distribution test)",
            channels=3,
            metric="jaccard",
            test_size=98,
            train_sizes=(),
            ood_tests=(),
            layout_hint=(
                "Extract the University of Waterloo VIP-lab 'Skin Cancer Detection' archive into --data-root "
                "unchanged, so that it holds skin_data/<melanoma|notmelanoma>/dermIS/<name>_orig.jpg with the "
                "lesion mask <name>_contour.png beside it (only the dermIS folders are read)."
            ),
        ),
        DatasetSpec(
            key="jsrt",
            title="JSRT chest X-rays with SCR lung masks",
            channels=1,
            metric="dice",
            test_size=72,
            train_sizes=(9, 35, 175),
            ood_tests=("nlm_mc", "nlm_sz"),
            layout_hint=(
                "Put the JSRT folder All247images/ (JPCLN001.IMG ... JPCNN093.IMG, headerless big-endian "
                "uint16, from db.jsrt.or.jp after registration) and the SCR database masks archive "
                "(van Ginneken 2006), extracted unchanged, into --data-root; the SCR GIFs are found by "
                "name in its '.../masks/left lung/' and '.../masks/right lung/' folders (any fold)."
            ),
        ),
        DatasetSpec(
            key="nlm_mc",
            title="NLM Montgomery County chest X-rays (out-of-distribution test)",
            channels=1,
            metric="dice",
            test_size=138,
            train_sizes=(),
            ood_tests=(),
            layout_hint=(
                "Extract NLM-MontgomeryCXRSet.zip (NLM, Tuberculosis-Chest-X-ray-Datasets) into --data-root "
                "unchanged, so that it holds MontgomerySet/CXR_png/MCUCXR_####_x.png and the lung masks "
                "MontgomerySet/ManualMask/leftMask/ and .../rightMask/ with the same file names."
            ),
        ),
        DatasetSpec(
            key="nlm_sz",
            title="NLM Shenzhen chest X-rays (out-of-distribution test)",
            channels=1,
            metric="dice",
            test_size=566,
            train_sizes=(),
            ood_tests=(),
            layout_hint=(
                "Extract ChinaSet_AllFiles.zip (NLM) into --data-root unchanged, so that it holds "
                "ChinaSet_AllFiles/CXR_png/CHNCXR_####_x.png. NLM ships no lung masks: also extract the "
                "community mask set of Stirenko et al. 2018 (Kaggle 'shcxr-lung-mask') anywhere under "
                "--data-root; its CHNCXR_####_x_mask.png files are found by name. Only images with a "
                "mask (566 of 662) are cases."
            ),
        ),
        DatasetSpec(
            key="busi",
            title="BUSI breast ultrasound",
            channels=1,
            metric="dice",
            test_size=230,
            train_sizes=(100,),
            ood_tests=(),
            layout_hint=(
                "Extract Dataset_BUSI.zip (Al-Dhabyani et al. 2020) into --data-root unchanged, so that it "
                "holds Dataset_BUSI_with_GT/<benign|malignant|normal>/'<class> (N).png' with its mask "
                "'<class> (N)_mask.png' (and '_mask_1.png', '_mask_2.png' for extra lesions)."
            ),
        ),
        DatasetSpec(
            key="fetreg",
            title="FetReg 2021 placental vessels (fetoscopy)",
            channels=3,
            metric="dice",
            test_size=182,
            train_sizes=(100,),
            ood_tests=(),
            layout_hint=(
                "Extract the FetReg 2021 training archive (Synapse syn25313156, after registration) into "
                "--data-root unchanged, so that it holds FetReg2021_dataset/Train/"
                "Train_FetReg2021_Task1_Segmentation/VideoNNN/images/VideoNNN_frameNNNNN.png and the label "
                "PNG of the same name in VideoNNN/labels/ (0 background, 1 vessel, 2 tool, 3 fetus)."
            ),
        ),
        DatasetSpec(
            key="kvasir",
            title="Kvasir-SEG polyps (endoscopy)",
            channels=3,
            metric="dice",
            test_size=200,
            train_sizes=(600,),
            ood_tests=(),
            layout_hint=(
                "Extract kvasir-seg.zip (datasets.simula.no/downloads/kvasir-seg.zip) into --data-root "
                "unchanged, so that it holds Kvasir-SEG/images/<id>.jpg and Kvasir-SEG/masks/<id>.jpg "
                "(JPEG masks, thresholded at 128)."
            ),
        ),
    )
}


def _spec(key: str) -> DatasetSpec:
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset '{key}'; expected one of {sorted(DATASETS)}")
    return DATASETS[key]


def _require_dir(path: Path, key: str, archive: str) -> Path:
    """Return ``path`` if it is a folder, else raise naming the folder, its archive and the layout."""
    if not path.is_dir():
        raise DatasetError(
            f"{key}: expected folder '{path}' (from {archive}) was not found. {DATASETS[key].layout_hint}"
        )
    return path


def _files(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    """Regular, non-hidden files of ``folder`` with one of ``suffixes`` (case-insensitive), sorted."""
    wanted = {s.lower() for s in suffixes}
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in wanted
    )


def _missing_mask(key: str, image: Path, expected: Path | str) -> DatasetError:
    return DatasetError(f"{key}: image '{image}' has no mask: expected '{expected}'")


def _find_isic2018(root: Path) -> list[Case]:
    images = _require_dir(root / "ISIC2018_Task1-2_Training_Input", "isic2018", "ISIC2018_Task1-2_Training_Input.zip")
    masks = _require_dir(
        root / "ISIC2018_Task1_Training_GroundTruth", "isic2018", "ISIC2018_Task1_Training_GroundTruth.zip"
    )
    cases = []
    for image in _files(images, {".jpg"}):
        mask = masks / f"{image.stem}_segmentation.png"
        if not mask.is_file():
            raise _missing_mask("isic2018", image, mask)
        cases.append(Case("isic2018", image.stem, image, (mask,)))
    return cases


def _find_ph2(root: Path) -> list[Case]:
    base = _require_dir(root / "PH2Dataset" / "PH2 Dataset images", "ph2", "PH2Dataset.rar")
    cases = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("IMD")):
        name = folder.name
        image = folder / f"{name}_Dermoscopic_Image" / f"{name}.bmp"
        mask = folder / f"{name}_lesion" / f"{name}_lesion.bmp"
        if not image.is_file():
            raise DatasetError(f"ph2: case folder '{folder}' has no image: expected '{image}'")
        if not mask.is_file():
            raise _missing_mask("ph2", image, mask)
        cases.append(Case("ph2", name, image, (mask,)))
    return cases


def _find_dermis(root: Path) -> list[Case]:
    base = _require_dir(root / "skin_data", "dermis", "the Waterloo 'Skin Cancer Detection' archive")
    cases = []
    for group_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for folder in sorted(p for p in group_dir.iterdir() if p.is_dir() and p.name.lower() == "dermis"):
            for image in _files(folder, {".jpg"}):
                if not image.stem.endswith("_orig"):
                    continue
                name = image.stem[: -len("_orig")]
                mask = folder / f"{name}_contour.png"
                if not mask.is_file():
                    raise _missing_mask("dermis", image, mask)
                cases.append(Case("dermis", f"{group_dir.name}_{name}", image, (mask,), group=group_dir.name))
    return cases


def _index_by_stem(files: Iterable[Path]) -> dict[str, Path]:
    """Map file stem -> path; the first path in sorted order wins for duplicated stems."""
    index: dict[str, Path] = {}
    for path in sorted(files):
        index.setdefault(path.stem, path)
    return index


def _scr_masks(root: Path, structure: str) -> dict[str, Path]:
    """SCR GIF masks of one structure ('left lung' / 'right lung') anywhere under ``root``, by stem."""
    folders = [p for p in root.rglob(structure) if p.is_dir()]
    return _index_by_stem(g for folder in folders for g in _files(folder, {".gif"}))


def _find_jsrt(root: Path) -> list[Case]:
    images = _require_dir(root / "All247images", "jsrt", "the JSRT database (db.jsrt.or.jp)")
    left, right = _scr_masks(root, "left lung"), _scr_masks(root, "right lung")
    if not left or not right:
        raise DatasetError(
            f"jsrt: no SCR lung masks under '{root}': expected GIF files in folders named 'left lung' and "
            f"'right lung' (from the SCR database masks archive). {DATASETS['jsrt'].layout_hint}"
        )
    cases = []
    for image in _files(images, {".img"}):
        for side, index in (("left lung", left), ("right lung", right)):
            if image.stem not in index:
                raise _missing_mask("jsrt", image, f".../masks/{side}/{image.stem}.gif")
        cases.append(Case("jsrt", image.stem, image, (left[image.stem], right[image.stem])))
    return cases


def _find_nlm_mc(root: Path) -> list[Case]:
    base = root / "MontgomerySet"
    images = _require_dir(base / "CXR_png", "nlm_mc", "NLM-MontgomeryCXRSet.zip")
    left = _require_dir(base / "ManualMask" / "leftMask", "nlm_mc", "NLM-MontgomeryCXRSet.zip")
    right = _require_dir(base / "ManualMask" / "rightMask", "nlm_mc", "NLM-MontgomeryCXRSet.zip")
    cases = []
    for image in _files(images, {".png"}):
        masks = (left / image.name, right / image.name)
        for mask in masks:
            if not mask.is_file():
                raise _missing_mask("nlm_mc", image, mask)
        cases.append(Case("nlm_mc", image.stem, image, masks))
    return cases


def _find_nlm_sz(root: Path) -> list[Case]:
    images = _require_dir(root / "ChinaSet_AllFiles" / "CXR_png", "nlm_sz", "ChinaSet_AllFiles.zip")
    masks = {
        stem[: -len("_mask")]: path
        for stem, path in _index_by_stem(p for p in root.rglob("CHNCXR_*_mask.png") if p.is_file()).items()
    }
    if not masks:
        raise DatasetError(
            f"nlm_sz: no Shenzhen lung masks (CHNCXR_####_x_mask.png) anywhere under '{root}'. NLM ships "
            "none; they come from the community set of Stirenko et al. 2018 (Kaggle 'shcxr-lung-mask'). "
            f"{DATASETS['nlm_sz'].layout_hint}"
        )
    return [
        Case("nlm_sz", image.stem, image, (masks[image.stem],))
        for image in _files(images, {".png"})
        if image.stem in masks
    ]


def _find_busi(root: Path) -> list[Case]:
    base = _require_dir(root / "Dataset_BUSI_with_GT", "busi", "Dataset_BUSI.zip")
    cases = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        files = _files(folder, {".png"})
        for image in (p for p in files if "_mask" not in p.stem):
            masks = tuple(
                p for p in files if p.stem == f"{image.stem}_mask" or p.stem.startswith(f"{image.stem}_mask_")
            )
            if not masks:
                raise _missing_mask("busi", image, folder / f"{image.stem}_mask.png")
            cases.append(Case("busi", image.stem, image, masks, group=folder.name))
    return cases


def _find_fetreg(root: Path) -> list[Case]:
    base = _require_dir(
        root / "FetReg2021_dataset" / "Train" / "Train_FetReg2021_Task1_Segmentation",
        "fetreg",
        "the FetReg 2021 training archive",
    )
    cases = []
    for video in sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("Video")):
        images = _require_dir(video / "images", "fetreg", "the FetReg 2021 training archive")
        labels = _require_dir(video / "labels", "fetreg", "the FetReg 2021 training archive")
        for image in _files(images, {".png"}):
            label = labels / image.name
            if not label.is_file():
                raise _missing_mask("fetreg", image, label)
            cases.append(Case("fetreg", image.stem, image, (label,), group=video.name))
    return cases


def _find_kvasir(root: Path) -> list[Case]:
    base = root / "Kvasir-SEG"
    images = _require_dir(base / "images", "kvasir", "kvasir-seg.zip")
    masks = _require_dir(base / "masks", "kvasir", "kvasir-seg.zip")
    cases = []
    for image in _files(images, {".jpg"}):
        mask = masks / image.name
        if not mask.is_file():
            raise _missing_mask("kvasir", image, mask)
        cases.append(Case("kvasir", image.stem, image, (mask,)))
    return cases


_FINDERS: dict[str, Callable[[Path], list[Case]]] = {
    "isic2018": _find_isic2018,
    "ph2": _find_ph2,
    "dermis": _find_dermis,
    "jsrt": _find_jsrt,
    "nlm_mc": _find_nlm_mc,
    "nlm_sz": _find_nlm_sz,
    "busi": _find_busi,
    "fetreg": _find_fetreg,
    "kvasir": _find_kvasir,
}


def find_cases(key: str, root: Path) -> list[Case]:
    """List the cases of dataset ``key`` in its official layout under ``root``, sorted by ``case_id``.

    Args:
        key: a :data:`DATASETS` key.
        root: the folder holding the official archive(s) extracted unchanged.

    Raises:
        DatasetError: a required folder is missing (names it, its archive and the layout), an image
            has no mask (names both), two cases share an id, or no case is found.
    """
    spec = _spec(key)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{key}: data root '{root}' is not a folder. {spec.layout_hint}")
    cases = sorted(_FINDERS[key](root), key=lambda c: c.case_id)
    if not cases:
        raise DatasetError(f"{key}: no cases found under '{root}'. {spec.layout_hint}")
    for previous, case in pairwise(cases):
        if previous.case_id == case.case_id:
            raise DatasetError(f"{key}: case id '{case.case_id}' occurs twice: '{previous.image}' and '{case.image}'")
    return cases
