"""Layout finders, case reading and splits, on synthetic samples written in each official layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from problems.segdata import (
    DATASETS,
    SAMPLE_CASES,
    SAMPLE_SPLITS,
    Case,
    DatasetError,
    find_cases,
    make_splits,
    ood_test_cases,
    read_case,
    write_sample,
)

KEYS = sorted(DATASETS)
TRAINABLE = [k for k in KEYS if DATASETS[k].train_sizes]
OOD_ONLY = [k for k in KEYS if not DATASETS[k].train_sizes]


@pytest.fixture(scope="module")
def sample_roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("segdata-samples")
    return {key: write_sample(key, base / key, size=64) for key in KEYS}


@pytest.fixture(scope="module")
def sample_cases(sample_roots) -> dict:
    return {key: find_cases(key, root) for key, root in sample_roots.items()}


def small_sample(key: str, tmp_path: Path, n: int = 3) -> tuple[Path, list]:
    root = write_sample(key, tmp_path / key, n_cases=n, size=64)
    return root, find_cases(key, root)


def test_registry_matches_table_1():
    sizes = {k: DATASETS[k].test_size for k in KEYS}
    assert sizes == {
        "isic2018": 594,
        "ph2": 200,
        "dermis": 98,
        "jsrt": 72,
        "nlm_mc": 138,
        "nlm_sz": 566,
        "busi": 230,
        "fetreg": 182,
        "kvasir": 200,
    }
    assert DATASETS["isic2018"].ood_tests == ("ph2", "dermis")
    assert DATASETS["jsrt"].ood_tests == ("nlm_mc", "nlm_sz")
    assert {k for k in KEYS if DATASETS[k].metric == "jaccard"} == {"isic2018", "ph2", "dermis"}


@pytest.mark.parametrize("key", KEYS)
def test_find_cases_reads_the_sample(key, sample_cases):
    cases = sample_cases[key]
    assert len(cases) == SAMPLE_CASES[key]
    assert [c.case_id for c in cases] == sorted(c.case_id for c in cases)
    assert all(c.dataset == key and c.image.is_file() and all(m.is_file() for m in c.masks) for c in cases)


@pytest.mark.parametrize("key", KEYS)
def test_read_case_contract(key, sample_cases):
    channels = DATASETS[key].channels
    fractions = []
    for case in sample_cases[key]:
        image, mask = read_case(case)
        assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == channels
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0.02
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert set(np.unique(mask)) <= {0, 1}
        if case.group != "normal":
            fractions.append(mask.mean())
    assert min(fractions) > 0.0 and max(fractions) < 0.9
    image, mask = read_case(sample_cases[key][0], size=40)
    assert image.shape == (40, 40, channels) and mask.shape == (40, 40)


@pytest.mark.parametrize("key", TRAINABLE)
def test_make_splits_sizes_disjoint_and_seeded(key, sample_cases):
    cases, sizes = sample_cases[key], SAMPLE_SPLITS[key]
    n, test_size = sizes["train_sizes"][0], sizes["test_size"]
    a = make_splits(key, cases, n, seed=0, test_size=test_size)
    ids = [{c.case_id for c in part} for part in (a.train, a.val, a.test)]
    assert [len(part) for part in (a.train, a.val, a.test)] == [round(0.8 * n), n - round(0.8 * n), test_size]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    again = make_splits(key, list(reversed(cases)), n, seed=0, test_size=test_size)
    assert again == a
    other = make_splits(key, cases, n, seed=1, test_size=test_size)
    assert other.test == a.test
    assert (other.train, other.val) != (a.train, a.val)


def test_fetreg_test_videos_are_not_in_train_or_val(sample_cases):
    splits = make_splits("fetreg", sample_cases["fetreg"], 20, seed=3, test_size=12)
    test_videos = {c.group for c in splits.test}
    assert test_videos and not test_videos & {c.group for c in splits.train + splits.val}


def listed_cases(key: str, n: int) -> list[Case]:
    return [Case(key, f"c{i:04d}", Path(f"{i}.png"), (Path(f"{i}_mask.png"),)) for i in range(n)]


@pytest.mark.parametrize(
    "key, total, n, expected",
    [
        ("jsrt", 247, 9, (7, 2, 72)),
        ("jsrt", 247, 175, (140, 35, 72)),
        ("isic2018", 2594, 40, (32, 8, 594)),
        ("isic2018", 2594, 200, (160, 40, 594)),
        ("kvasir", 1000, 600, (480, 120, 200)),
    ],
)
def test_paper_split_sizes(key, total, n, expected):
    splits = make_splits(key, listed_cases(key, total), n, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == expected


@pytest.mark.parametrize("key", OOD_ONLY)
def test_ood_test_cases(key, sample_cases):
    cases = sample_cases[key]
    assert ood_test_cases(key, cases) == cases
    picked = ood_test_cases(key, cases, test_size=5)
    assert len(picked) == 5 and picked == ood_test_cases(key, list(reversed(cases)), test_size=5)
    with pytest.raises(DatasetError, match="test-only"):
        make_splits(key, cases, 4, seed=0)


def test_multi_mask_cases_are_or_ed(sample_cases):
    case = next(c for c in sample_cases["busi"] if len(c.masks) > 1)
    _, mask = read_case(case)
    parts = [np.asarray(Image.open(p).convert("L")) > 0 for p in case.masks]
    assert np.array_equal(mask.astype(bool), np.logical_or.reduce(parts))
    assert all(part.any() for part in parts)


def test_jsrt_half_size_scr_masks_use_the_factor_two_rule(sample_cases):
    case = sample_cases["jsrt"][0]
    side = int(np.sqrt(case.image.stat().st_size // 2))
    assert Image.open(case.masks[0]).size == (side // 2, side // 2)
    image, mask = read_case(case)
    assert image.shape == (side // 2, side // 2, 1) and mask.shape == (side // 2, side // 2)
    assert image[mask == 1].mean() < image[mask == 0].mean()  # lungs are dark after polarity inversion


def test_shenzhen_images_without_community_mask_are_skipped(sample_roots, sample_cases):
    images = list((sample_roots["nlm_sz"] / "ChinaSet_AllFiles" / "CXR_png").glob("*.png"))
    assert len(images) > len(sample_cases["nlm_sz"])


# ----------------------------------------------------------------------------- bad input


def test_missing_folder_names_folder_and_archive(tmp_path):
    root, _ = small_sample("isic2018", tmp_path)
    shutil.rmtree(root / "ISIC2018_Task1_Training_GroundTruth")
    with pytest.raises(DatasetError) as err:
        find_cases("isic2018", root)
    assert str(root / "ISIC2018_Task1_Training_GroundTruth") in str(err.value)
    assert "ISIC2018_Task1_Training_GroundTruth.zip" in str(err.value)


def test_missing_shenzhen_masks_point_to_the_community_set(tmp_path):
    root, _ = small_sample("nlm_sz", tmp_path)
    shutil.rmtree(root / "mask")
    with pytest.raises(DatasetError, match="Stirenko"):
        find_cases("nlm_sz", root)


@pytest.mark.parametrize("key", ["isic2018", "ph2", "nlm_mc", "kvasir", "fetreg", "busi", "jsrt", "dermis"])
def test_image_without_mask_names_both(key, tmp_path):
    _, cases = small_sample(key, tmp_path)
    for mask in cases[0].masks:
        mask.unlink()
    with pytest.raises(DatasetError) as err:
        find_cases(key, tmp_path / key)
    assert str(cases[0].image) in str(err.value) and "no mask" in str(err.value)
    assert cases[0].masks[0].name in str(err.value).split("expected", 1)[1]


def test_no_cases_found(tmp_path):
    (tmp_path / "Kvasir-SEG" / "images").mkdir(parents=True)
    (tmp_path / "Kvasir-SEG" / "masks").mkdir()
    with pytest.raises(DatasetError, match="no cases found"):
        find_cases("kvasir", tmp_path)


def test_size_mismatch_names_both_files(tmp_path):
    _, cases = small_sample("isic2018", tmp_path)
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(cases[0].masks[0])
    with pytest.raises(DatasetError) as err:
        read_case(cases[0])
    text = str(err.value)
    assert str(cases[0].image) in text and str(cases[0].masks[0]) in text and "50x60" in text


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_unreadable_file_is_named(damage, tmp_path):
    _, cases = small_sample("kvasir", tmp_path)
    path = cases[1].image
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"not an image at all" * 10)
    with pytest.raises(DatasetError) as err:
        read_case(cases[1])
    assert str(path) in str(err.value)


def test_jsrt_file_of_wrong_length_or_byte_order(tmp_path):
    _, cases = small_sample("jsrt", tmp_path)
    path = cases[0].image
    raw = path.read_bytes()
    path.write_bytes(raw[:-2])
    with pytest.raises(DatasetError, match="2048 x 2048") as err:
        read_case(cases[0])
    assert str(path) in str(err.value)
    path.write_bytes(np.frombuffer(raw, ">u2").astype("<u2").tobytes())
    with pytest.raises(DatasetError, match="12-bit"):
        read_case(cases[0])


def test_mask_with_unexpected_values(tmp_path):
    _, cases = small_sample("isic2018", tmp_path)
    mask = np.asarray(Image.open(cases[0].masks[0])).copy()
    mask[:5, :5] = 7
    Image.fromarray(mask).save(cases[0].masks[0])
    with pytest.raises(DatasetError) as err:
        read_case(cases[0])
    text = str(err.value)
    assert str(cases[0].masks[0]) in text and "{0, 7, 255}" in text and "{0, 255}" in text


def test_fetreg_label_outside_class_range(tmp_path):
    _, cases = small_sample("fetreg", tmp_path)
    label = np.asarray(Image.open(cases[0].masks[0])).copy()
    label[0, 0] = 5
    Image.fromarray(label).save(cases[0].masks[0])
    with pytest.raises(DatasetError, match=r"\{0, 1, 2, 3\}") as err:
        read_case(cases[0])
    assert str(cases[0].masks[0]) in str(err.value)


def test_colour_mask_is_rejected(tmp_path):
    _, cases = small_sample("ph2", tmp_path)
    colour = np.zeros((64, 64, 3), np.uint8)
    colour[10:20, 10:20] = (255, 0, 0)
    Image.fromarray(colour).save(cases[0].masks[0])
    with pytest.raises(DatasetError, match="colour"):
        read_case(cases[0])


def test_pool_too_small_says_found_and_needed(sample_cases):
    cases = sample_cases["kvasir"]
    with pytest.raises(DatasetError) as err:
        make_splits("kvasir", cases, 30, seed=0, test_size=16)
    assert f"found {len(cases)} cases" in str(err.value) and "46" in str(err.value)
    with pytest.raises(DatasetError, match=f"found {len(cases)} cases, but the test set alone needs 200"):
        make_splits("kvasir", cases, 20, seed=0)


def test_unknown_dataset_and_foreign_cases(sample_cases):
    with pytest.raises(DatasetError, match="unknown dataset"):
        find_cases("isic2017", Path("."))
    with pytest.raises(DatasetError, match="only 'busi'"):
        make_splits("busi", sample_cases["busi"] + sample_cases["kvasir"][:1], 20, seed=0, test_size=12)


def test_sixteen_bit_png_and_grey_to_rgb_conversion(tmp_path):
    _, cases = small_sample("nlm_mc", tmp_path)
    grey = np.asarray(Image.open(cases[0].image), dtype=np.uint16) * 16  # 8-bit -> 12-bit range
    Image.fromarray(grey).save(cases[0].image)
    assert Image.open(cases[0].image).mode.startswith("I")
    image, _ = read_case(cases[0])
    assert image.dtype == np.float32 and abs(image.max() - grey.max() / 4095) < 1e-6
    _, skin = small_sample("isic2018", tmp_path)
    Image.open(skin[0].image).convert("L").save(skin[0].image)
    image, _ = read_case(skin[0])
    assert image.shape[2] == 3 and np.array_equal(image[..., 0], image[..., 2])
