"""Few-shot data: readers of the four distributed formats (on tiny look-alike files), the embedded
digits set, and the task sampler."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from problems.fewshot import (
    DATASET_NAMES,
    ClassSplit,
    EpisodeStream,
    FewShotDataError,
    load_fewshot,
    sample_episodes,
)
from problems.fewshot.digits import render_digits

N_CLASSES, PER_CLASS = 6, 12  # per split in every fixture
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- fixture writers
# Every image of global class g is filled with pixel value g, so tests can check that images
# stay attached to the right class.


def _class_images(global_id: int, size: int, n: int = PER_CLASS) -> np.ndarray:
    return np.full((n, size, size, 3), global_id, dtype=np.uint8)


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _global_ids(split: str) -> list[int]:
    return [10 * (SPLITS.index(split) + 1) + k for k in range(N_CLASSES)]


def _shuffled(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar_fs_raw(root: Path) -> None:
    base = root / "cifarfs" / "cifar100"
    for split in SPLITS:
        names = [f"class_{g}" for g in _global_ids(split)]
        for g, name in zip(_global_ids(split), names):
            folder = base / "data" / name
            folder.mkdir(parents=True)
            for i, img in enumerate(_class_images(g, 32)):
                Image.fromarray(img).save(folder / f"{i:04d}.png")
        (base / "splits" / "bertinetto").mkdir(parents=True, exist_ok=True)
        (base / "splits" / "bertinetto" / f"{split}.txt").write_text("\n".join(names) + "\n")


def write_cifar_fs_processed(root: Path) -> None:
    for split in SPLITS:
        for g in _global_ids(split):
            folder = root / "cifarfs" / "processed" / split / f"class_{g}"
            folder.mkdir(parents=True)
            for i, img in enumerate(_class_images(g, 32)):
                Image.fromarray(img).save(folder / f"{i}.png")


def _images_and_labels(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of all classes of ``split`` in shuffled order, with their global class ids."""
    ids = np.repeat(_global_ids(split), PER_CLASS)
    order = _shuffled(ids.size, SPLITS.index(split))
    return np.concatenate([_class_images(g, size) for g in _global_ids(split)])[order], ids[order]


def write_fc100(root: Path) -> None:
    for split in SPLITS:
        data, labels = _images_and_labels(split, 32)
        _dump(root / f"FC100_{split}.pickle", {"data": data, "labels": labels.tolist()})


def write_miniimagenet(root: Path) -> None:
    for split, file_split in zip(SPLITS, ("train", "validation", "test")):
        data, labels = _images_and_labels(split, 84)
        class_dict = {f"n{g:08d}": np.flatnonzero(labels == g).tolist() for g in _global_ids(split)}
        _dump(root / f"mini-imagenet-cache-{file_split}.pkl", {"image_data": data, "class_dict": class_dict})


def write_tieredimagenet(root: Path, with_names: bool = True) -> None:
    for split in SPLITS:
        data, labels = _images_and_labels(split, 84)
        # the original files hold uint8 numpy buffers; plain bytes are accepted too
        blobs = [
            np.frombuffer(_png_bytes(img), dtype=np.uint8) if i % 2 else _png_bytes(img) for i, img in enumerate(data)
        ]
        local = labels - labels.min()  # label_specific counts from 0 within each split
        label_dict = {"label_specific": local, "label_general": np.zeros_like(local)}
        if with_names:
            label_dict["label_specific_str"] = [f"n{g:08d}" for g in sorted(set(labels.tolist()))]
        _dump(root / "tiered-imagenet" / f"{split}_labels.pkl", label_dict)
        _dump(root / "tiered-imagenet" / f"{split}_images_png.pkl", blobs)


WRITERS = {
    "cifar-fs": write_cifar_fs_raw,
    "fc100": write_fc100,
    "miniimagenet": write_miniimagenet,
    "tieredimagenet": write_tieredimagenet,
}
SIZES = {"cifar-fs": 32, "fc100": 32, "miniimagenet": 84, "tieredimagenet": 84}


def _check_dataset(ds, name: str) -> None:
    assert ds.name == name and ds.synthetic is False
    assert ds.channels == 3 and ds.image_size == SIZES[name]
    assert tuple(ds.splits) == SPLITS
    all_names: list[str] = []
    for split, cs in ds.splits.items():
        assert cs.n_classes == N_CLASSES
        assert cs.images.dtype == torch.uint8
        assert cs.images.shape == (N_CLASSES * PER_CLASS, 3, SIZES[name], SIZES[name])
        assert cs.labels.dtype == torch.int64
        assert int(cs.labels.min()) == 0 and int(cs.labels.max()) == N_CLASSES - 1
        assert cs.class_counts().tolist() == [PER_CLASS] * N_CLASSES
        # every image of label k carries the pixel value of the global class it was written for
        pixel_of_label = {int(cs.images[cs.labels == k].unique().item()) for k in range(N_CLASSES)}
        assert pixel_of_label == set(_global_ids(split))
        all_names += cs.class_names
    assert len(set(all_names)) == 3 * N_CLASSES  # disjoint across splits


# ----------------------------------------------------------------------------- readers


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_reads_distributed_format(tmp_path: Path, name: str) -> None:
    WRITERS[name](tmp_path)
    _check_dataset(load_fewshot(name, tmp_path), name)


def test_dataset_names() -> None:
    assert DATASET_NAMES == ("cifar-fs", "fc100", "miniimagenet", "tieredimagenet", "digits")


def test_cifar_fs_processed_tree(tmp_path: Path) -> None:
    write_cifar_fs_processed(tmp_path)
    ds = load_fewshot("cifar-fs", tmp_path)
    _check_dataset(ds, "cifar-fs")
    assert ds.splits["val"].class_names == [f"class_{g}" for g in _global_ids("val")]


def test_fc100_class_names_are_global_ids(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    ds = load_fewshot("fc100", tmp_path)
    assert ds.splits["test"].class_names == [str(g) for g in _global_ids("test")]


def test_tiered_without_name_list(tmp_path: Path) -> None:
    write_tieredimagenet(tmp_path, with_names=False)
    ds = load_fewshot("tieredimagenet", tmp_path)
    assert ds.splits["val"].class_names[0] == "val-0"


def test_files_one_folder_deeper(tmp_path: Path) -> None:
    write_fc100(tmp_path / "FC100")
    _check_dataset(load_fewshot("fc100", tmp_path), "fc100")


def test_ambiguous_nested_copies_rejected(tmp_path: Path) -> None:
    write_fc100(tmp_path / "copy_a")
    write_fc100(tmp_path / "copy_b")
    with pytest.raises(FewShotDataError, match="several folders"):
        load_fewshot("fc100", tmp_path)
    write_fc100(tmp_path)  # a copy at the root itself is the one meant
    _check_dataset(load_fewshot("fc100", tmp_path), "fc100")


def _py2_pickle_of_byte_strings(blobs: list[bytes]) -> bytes:
    """A list of byte strings as Python 2 pickles it (BINSTRING opcodes, read back as latin1 str)."""
    items = b"".join(b"T" + len(b).to_bytes(4, "little") + b for b in blobs)
    return b"\x80\x02](" + items + b"e."


def test_tiered_python2_pickle(tmp_path: Path) -> None:
    write_tieredimagenet(tmp_path)
    for split in SPLITS:
        data, _ = _images_and_labels(split, 84)
        path = tmp_path / "tiered-imagenet" / f"{split}_images_png.pkl"
        path.write_bytes(_py2_pickle_of_byte_strings([_png_bytes(img) for img in data]))
    _check_dataset(load_fewshot("tieredimagenet", tmp_path), "tieredimagenet")


def test_digits_ignore_root_and_other_sets_need_one() -> None:
    with pytest.raises(FewShotDataError, match="pass the folder"):
        load_fewshot("fc100", None)
    with pytest.raises(FewShotDataError, match="unknown few-shot dataset 'omniglot'"):
        load_fewshot("omniglot", None)


# ----------------------------------------------------------------------------- bad input


def test_missing_root_file_names_expected_path(tmp_path: Path) -> None:
    with pytest.raises(FewShotDataError) as err:
        load_fewshot("miniimagenet", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "mini-imagenet-cache-train.pkl") in msg and "learn2learn" in msg


def test_missing_split_file_names_it(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    (tmp_path / "FC100_val.pickle").unlink()
    with pytest.raises(FewShotDataError, match=str(tmp_path / "FC100_val.pickle")):
        load_fewshot("fc100", tmp_path)


def test_missing_cifar_class_folder(tmp_path: Path) -> None:
    write_cifar_fs_raw(tmp_path)
    lst = tmp_path / "cifarfs" / "cifar100" / "splits" / "bertinetto" / "test.txt"
    lst.write_text(lst.read_text() + "no_such_class\n")
    with pytest.raises(FewShotDataError, match="lists class 'no_such_class'"):
        load_fewshot("cifar-fs", tmp_path)


def test_wrong_keys(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    data, labels = _images_and_labels("train", 32)
    _dump(tmp_path / "FC100_train.pickle", {"images": data, "labels": labels})
    with pytest.raises(FewShotDataError) as err:
        load_fewshot("fc100", tmp_path)
    msg = str(err.value)
    assert "FC100_train.pickle" in msg and "'data'" in msg and "'images'" in msg


@pytest.mark.parametrize("bad", ["float32", "grey", "size"])
def test_wrong_array_dtype_or_shape(tmp_path: Path, bad: str) -> None:
    write_miniimagenet(tmp_path)
    data, labels = _images_and_labels("val", 84)
    data = {"float32": data.astype(np.float32), "grey": data[..., 0], "size": data[:, :32, :32]}[bad]
    class_dict = {f"n{g:08d}": np.flatnonzero(labels == g).tolist() for g in _global_ids("val")}
    _dump(tmp_path / "mini-imagenet-cache-validation.pkl", {"image_data": data, "class_dict": class_dict})
    with pytest.raises(FewShotDataError) as err:
        load_fewshot("miniimagenet", tmp_path)
    msg = str(err.value)
    assert "mini-imagenet-cache-validation.pkl" in msg and "uint8" in msg and "[N, 84, 84, 3]" in msg
    assert str(list(data.shape)) in msg  # says what was found


def test_labels_length_mismatch(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    data, labels = _images_and_labels("test", 32)
    _dump(tmp_path / "FC100_test.pickle", {"data": data, "labels": labels[:-1].tolist()})
    with pytest.raises(FewShotDataError, match=f"'labels' must hold {len(labels)} integers"):
        load_fewshot("fc100", tmp_path)


def test_class_dict_index_out_of_range(tmp_path: Path) -> None:
    write_miniimagenet(tmp_path)
    data, _ = _images_and_labels("test", 84)
    _dump(tmp_path / "mini-imagenet-cache-test.pkl", {"image_data": data, "class_dict": {"n1": [0, 10_000]}})
    with pytest.raises(FewShotDataError, match=r"class_dict\['n1'\] must list image indices"):
        load_fewshot("miniimagenet", tmp_path)


def test_corrupt_pickle(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    path = tmp_path / "FC100_train.pickle"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(FewShotDataError, match="cannot be unpickled") as err:
        load_fewshot("fc100", tmp_path)
    assert str(path) in str(err.value)


def test_corrupt_png_in_tiered(tmp_path: Path) -> None:
    write_tieredimagenet(tmp_path)
    path = tmp_path / "tiered-imagenet" / "test_images_png.pkl"
    with path.open("rb") as f:
        blobs = pickle.load(f)
    blobs[3] = b"not a png"
    _dump(path, blobs)
    with pytest.raises(FewShotDataError, match=f"{path} item 3: not a decodable image"):
        load_fewshot("tieredimagenet", tmp_path)


def test_splits_sharing_classes_rejected(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    (tmp_path / "FC100_val.pickle").write_bytes((tmp_path / "FC100_train.pickle").read_bytes())
    with pytest.raises(FewShotDataError, match="disjoint classes"):
        load_fewshot("fc100", tmp_path)


def test_too_few_images_per_class(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    split = load_fewshot("fc100", tmp_path).splits["val"]
    with pytest.raises(FewShotDataError) as err:
        sample_episodes(split, n_way=5, k_shot=5, k_query=10, n_tasks=2, generator=torch.Generator())
    msg = str(err.value)
    assert "FC100_val.pickle" in msg and "k_shot + k_query = 15" in msg and f"({PER_CLASS})" in msg


def test_too_few_classes(tmp_path: Path) -> None:
    write_fc100(tmp_path)
    split = load_fewshot("fc100", tmp_path).splits["test"]
    with pytest.raises(FewShotDataError, match=f"has {N_CLASSES} classes, fewer than n_way=10"):
        sample_episodes(split, n_way=10, k_shot=1, k_query=1, n_tasks=1, generator=torch.Generator())


def test_bad_sampler_arguments() -> None:
    split = _indexed_split()
    with pytest.raises(FewShotDataError, match="k_shot must be a positive integer"):
        sample_episodes(split, n_way=2, k_shot=0, k_query=1, n_tasks=1, generator=torch.Generator())


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return load_fewshot("digits", None)


def test_digits_splits(digits) -> None:
    assert digits.synthetic is False and "stand-in" in digits.description
    assert digits.image_size == 32 and digits.channels == 3
    assert [digits.splits[s].n_classes for s in SPLITS] == [24, 8, 8]
    digit_sets = [{name.split("-")[0] for name in digits.splits[s].class_names} for s in SPLITS]
    assert digit_sets == [set("012689"), {"3", "5"}, {"4", "7"}]
    for cs in digits.splits.values():
        assert cs.images.dtype == torch.uint8 and tuple(cs.images.shape[1:]) == (3, 32, 32)
        assert int(cs.class_counts().min()) >= 20
        assert int(cs.images.max()) > 200  # scaled to 0..255


def test_digits_classes_are_rotations_of_the_digit(digits) -> None:
    """Offsets and clutter are spread evenly, so a class's mean image is the mean digit in its rotation."""
    cs = digits.splits["val"]

    def mean_image(name: str) -> torch.Tensor:
        return cs.images[cs.labels == cs.class_names.index(name), 0].double().mean(0)

    upright = mean_image("3-rot0")
    for degrees in (90, 180, 270):
        turned = torch.rot90(upright, degrees // 90, dims=(-2, -1))
        same = torch.corrcoef(torch.stack([turned.flatten(), mean_image(f"3-rot{degrees}").flatten()]))[0, 1]
        other = torch.corrcoef(torch.stack([turned.flatten(), mean_image("3-rot0").flatten()]))[0, 1]
        assert same > 0.9 and same > other + 0.1
    assert torch.equal(cs.images[:, 0], cs.images[:, 2])  # grey replicated to RGB


def test_digits_clutter_only_adds_strokes() -> None:
    """The distractors are drawn after the digit and combined by a maximum: removing them leaves the
    same digits, and they light pixels the digit alone does not."""
    torch.manual_seed(0)
    images, pool = torch.rand(16, 8, 8, dtype=torch.float64), torch.rand(5, 8, 8, dtype=torch.float64)
    alone = render_digits(images, pool, torch.Generator().manual_seed(3), clutter=0)
    cluttered = render_digits(images, pool, torch.Generator().manual_seed(3))
    assert alone.shape == cluttered.shape == (16, 3, 32, 32) and cluttered.dtype == torch.uint8
    assert torch.all(cluttered >= alone) and (cluttered > alone).any()


def test_digits_are_the_same_every_time(digits) -> None:
    again = load_fewshot("digits", None)
    assert all(torch.equal(digits.splits[s].images, again.splits[s].images) for s in SPLITS)


# ----------------------------------------------------------------------------- sampler


def _indexed_split(n_classes: int = 7, per_class: int = 23) -> ClassSplit:
    """A split whose image i stores i in its pixels ([N, 3, 2, 2]), with labels interleaved."""
    n = n_classes * per_class
    idx = torch.arange(n)
    images = torch.stack([idx % 256, idx // 256, torch.zeros_like(idx)], dim=1)[..., None, None].expand(-1, -1, 2, 2)
    return ClassSplit(images.to(torch.uint8).contiguous(), idx % n_classes, [f"c{k}" for k in range(n_classes)])


def _image_ids(x: torch.Tensor) -> torch.Tensor:
    """Recover the image index from ``_indexed_split`` pixels; ``x`` float ``[..., 3, 2, 2]`` in [0, 1]."""
    v = (x[..., 0, 0] * 255).round().long()
    return v[..., 0] + 256 * v[..., 1]


def _sample(split: ClassSplit, seed: int, **kw):
    args = {"n_way": 5, "k_shot": 3, "k_query": 4, "n_tasks": 6} | kw
    return sample_episodes(split, generator=torch.Generator().manual_seed(seed), **args)


def test_episode_shapes_and_labels() -> None:
    split = _indexed_split()
    ep = _sample(split, 0)
    assert ep.support_x.shape == (6, 15, 3, 2, 2) and ep.query_x.shape == (6, 20, 3, 2, 2)
    assert ep.support_x.dtype == torch.float32 and 0.0 <= float(ep.support_x.min()) <= float(ep.support_x.max()) <= 1.0
    assert ep.support_y.dtype == torch.int64 and ep.support_y.shape == (6, 15) and ep.query_y.shape == (6, 20)
    for t in range(6):
        assert torch.bincount(ep.support_y[t], minlength=5).tolist() == [3] * 5
        assert torch.bincount(ep.query_y[t], minlength=5).tolist() == [4] * 5


def test_episode_content_is_consistent() -> None:
    split = _indexed_split()
    ep = _sample(split, 1, n_tasks=20)
    s_ids, q_ids = _image_ids(ep.support_x), _image_ids(ep.query_x)
    class_orders = set()
    for t in range(20):
        ids = torch.cat([s_ids[t], q_ids[t]])
        assert ids.unique().numel() == ids.numel()  # no image reused within a task
        labels = torch.cat([ep.support_y[t], ep.query_y[t]])
        true_class = split.labels[ids]
        # each episode label maps to exactly one split class, and different labels to different classes
        mapping = {int(y): set(true_class[labels == y].tolist()) for y in range(5)}
        assert all(len(c) == 1 for c in mapping.values())
        order = tuple(next(iter(mapping[y])) for y in range(5))
        assert len(set(order)) == 5
        class_orders.add(order)
    assert len(class_orders) > 1  # classes and their relabelling vary across tasks


def test_same_seed_same_episodes() -> None:
    split = _indexed_split()
    a, b, c = _sample(split, 7), _sample(split, 7), _sample(split, 8)
    for field in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.support_x, c.support_x)


def test_generator_state_reproduces_stream() -> None:
    split = _indexed_split()
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    first = sample_episodes(split, n_way=4, k_shot=2, k_query=2, n_tasks=3, generator=g)
    g.set_state(state)
    again = sample_episodes(split, n_way=4, k_shot=2, k_query=2, n_tasks=3, generator=g)
    assert torch.equal(first.query_x, again.query_x) and torch.equal(first.support_x, again.support_x)


def test_episodes_to_device() -> None:
    ep = _sample(_indexed_split(), 0).to("cpu")
    assert ep.n_tasks == 6 and ep.query_y.device.type == "cpu"


def test_stream_resume_matches_uninterrupted(tmp_path: Path, digits) -> None:
    split = digits.splits["train"]
    config = {"n_way": 5, "k_shot": 2, "k_query": 3, "n_tasks": 4, "seed": 11}
    reference = EpisodeStream(split, **config)
    expected = [reference.next() for _ in range(5)][2:]

    interrupted = EpisodeStream(split, **config)
    next(interrupted), next(interrupted)
    torch.save(interrupted.state_dict(), tmp_path / "stream.pt")

    resumed = EpisodeStream(split, **config)
    resumed.load_state_dict(torch.load(tmp_path / "stream.pt", weights_only=True))
    assert resumed.batches_drawn == 2
    for want in expected:
        got = resumed.next()
        assert torch.equal(got.support_x, want.support_x) and torch.equal(got.query_y, want.query_y)
        assert torch.equal(got.query_x, want.query_x) and torch.equal(got.support_y, want.support_y)


def test_stream_rejects_other_configuration(digits) -> None:
    split = digits.splits["train"]
    state = EpisodeStream(split, 5, 1, 1, 2, seed=0).state_dict()
    with pytest.raises(FewShotDataError, match="saved with"):
        EpisodeStream(split, 5, 1, 2, 2, seed=0).load_state_dict(state)
