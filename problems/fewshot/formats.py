"""Few-shot data types and readers of the four benchmarks as distributed for learn2learn 0.1.5.

``root`` is the folder handed to learn2learn (``CIFARFS(root)``, ``FC100(root)``,
``MiniImagenet(root)``, ``TieredImagenet(root)``) holding the downloaded files unchanged:

* CIFAR-FS: ``cifarfs/cifar100/data/<class>/*.png`` with the split lists
  ``cifarfs/cifar100/splits/bertinetto/{train,val,test}.txt``, or the ImageFolder tree
  ``cifarfs/processed/{train,val,test}/<class>/*.png`` that learn2learn derives from them
  (preferred when all three split folders exist). 32x32 RGB.
* FC100: ``FC100_{train,val,test}.pickle``, Python-2 pickles of ``{'data': uint8 [N,32,32,3],
  'labels': global CIFAR-100 class ids}``.
* miniImageNet: ``mini-imagenet-cache-{train,validation,test}.pkl``, ``{'image_data': uint8
  [N,84,84,3], 'class_dict': {wnid: [indices]}}``.
* tieredImageNet: ``tiered-imagenet/{train,val,test}_images_png.pkl`` (a list of PNG-encoded
  84x84 images) and ``tiered-imagenet/{train,val,test}_labels.pkl`` (a dict; ``label_specific``
  holds the class of each image, ``label_specific_str`` its name when present).

The files may also sit one folder deeper (``root/<any>/...``, as after extracting an archive into
its own folder); nothing else is guessed. Pickles can run code when loaded: only read files
obtained from a source you trust. All images end up as uint8 ``[N, 3, H, W]`` tensors.
"""

from __future__ import annotations

import io
import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

__all__ = [
    "BENCHMARKS",
    "SPLITS",
    "Benchmark",
    "ClassSplit",
    "FewShotDataError",
    "FewShotDataset",
    "read_benchmark",
]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
_PROGRESS_MIN_IMAGES = 20_000  # decoding fewer images than this is quick enough to run silently


class FewShotDataError(ValueError):
    """Missing or malformed few-shot data, or a request the data cannot satisfy.

    The message names the file (or split), what was expected and what was found.
    """


@dataclass
class ClassSplit:
    """Images of one meta-split; its classes appear in no other split.

    images: uint8 ``[N, C, H, W]``; labels: int64 ``[N]`` in ``0..n_classes-1``;
    class_names: ``n_classes`` names, ``class_names[k]`` naming label ``k``;
    source: where the split came from (dataset, split and file), used in error messages.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or "split"
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise FewShotDataError(
                f"{where}: images must be a uint8 tensor [N, C, H, W]; "
                f"found {self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise FewShotDataError(
                f"{where}: labels must be int64 of shape [{self.images.shape[0]}]; "
                f"found {self.labels.dtype} of shape {tuple(self.labels.shape)}"
            )
        if len(set(self.class_names)) != self.n_classes:
            raise FewShotDataError(f"{where}: class names must be unique; found {self.class_names}")
        if self.labels.numel() and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < self.n_classes:
            raise FewShotDataError(
                f"{where}: labels must lie in 0..{self.n_classes - 1} (one per class name); "
                f"found {int(self.labels.min())}..{int(self.labels.max())}"
            )

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> torch.Tensor:
        """Number of images of each class, int64 ``[n_classes]``."""
        return torch.bincount(self.labels, minlength=self.n_classes)


@dataclass
class FewShotDataset:
    """A few-shot benchmark: three class-disjoint meta-splits of ``channels x image_size x image_size`` images."""

    name: str
    splits: dict[str, ClassSplit]
    image_size: int
    channels: int
    description: str
    synthetic: bool

    def __post_init__(self) -> None:
        if set(self.splits) != set(SPLITS):
            raise FewShotDataError(f"{self.name}: splits must be {SPLITS}; found {tuple(self.splits)}")
        expected = (self.channels, self.image_size, self.image_size)
        for split in self.splits.values():
            if tuple(split.images.shape[1:]) != expected:
                raise FewShotDataError(
                    f"{split.source}: images must be [N, {', '.join(map(str, expected))}]; "
                    f"found {list(split.images.shape)}"
                )
        for i, first in enumerate(SPLITS):
            for second in SPLITS[i + 1 :]:
                shared = sorted(set(self.splits[first].class_names) & set(self.splits[second].class_names))
                if shared:
                    raise FewShotDataError(
                        f"{self.name}: meta-splits must have disjoint classes, but {self.splits[first].source} "
                        f"and {self.splits[second].source} share {len(shared)} (e.g. {shared[:3]}); "
                        "the files mix splits or come from different releases"
                    )


class Benchmark(NamedTuple):
    """How one distributed benchmark is read: reader(base folder) -> splits."""

    title: str
    image_size: int
    marker: str  # path relative to root (or one folder deeper) that locates the base folder
    reader: Callable[[Path], dict[str, ClassSplit]]  # base folder -> splits
    hint: str  # where users get the files


# ----------------------------------------------------------------------------- helpers


def _describe(obj: Any) -> str:
    """Short description of a found value for error messages."""
    if isinstance(obj, np.ndarray):
        return f"ndarray dtype={obj.dtype} shape={list(obj.shape)}"
    if isinstance(obj, dict):
        return f"dict with keys {sorted(map(str, obj))}"
    if isinstance(obj, (list, tuple)):
        return f"{type(obj).__name__} of length {len(obj)}"
    return type(obj).__name__


def _exists(path: Path) -> bool:
    """Like ``path.exists()``, but an unreadable folder counts as not holding ``path``."""
    try:
        return path.exists()
    except OSError:
        return False


def _find_base(root: Path, name: str) -> Path:
    """The folder that holds the marker of benchmark ``name``: root itself, else its only sub-folder that does."""
    bench = BENCHMARKS[name]
    if not root.is_dir():
        raise FewShotDataError(f"{name}: data root {root} is not a folder. {bench.hint}")
    if (root / bench.marker).exists():
        return root
    found = sorted(p for p in root.iterdir() if _exists(p / bench.marker))
    if not found:
        raise FewShotDataError(
            f"{name}: {root / bench.marker} not found (also looked in {root}/*/{bench.marker}). {bench.hint}"
        )
    if len(found) > 1:
        raise FewShotDataError(
            f"{name}: found {bench.marker} in several folders ({', '.join(map(str, found))}); "
            "point the data root at the one to use"
        )
    return found[0]


def _require(path: Path, name: str) -> Path:
    """``path`` if it exists; else an error naming it and where benchmark ``name`` comes from."""
    if not path.exists():
        raise FewShotDataError(f"{name}: {path} not found. {BENCHMARKS[name].hint}")
    return path


def _unpickle(path: Path) -> Any:
    """Load a (possibly Python-2) pickle; latin1 keeps Python-2 byte strings and numpy buffers intact."""
    logger.info("reading %s", path)
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as exc:  # any failure means the file is not the expected pickle
        raise FewShotDataError(
            f"{path}: cannot be unpickled ({type(exc).__name__}: {exc}); "
            "the file is truncated or not the distributed pickle"
        ) from exc


def _expect_dict(obj: Any, keys: Sequence[str], path: Path) -> dict:
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        raise FewShotDataError(f"{path}: expected a dict with keys {list(keys)}; found {_describe(obj)}")
    return obj


def _expect_hwc_images(arr: Any, size: int, path: Path, key: str) -> np.ndarray:
    """Check that ``arr`` is a non-empty uint8 ``[N, size, size, 3]`` array."""
    if not (
        isinstance(arr, np.ndarray)
        and arr.dtype == np.uint8
        and arr.ndim == 4
        and arr.shape[0] > 0
        and arr.shape[1:] == (size, size, 3)
    ):
        raise FewShotDataError(
            f"{path}: '{key}' must be a uint8 ndarray of shape [N, {size}, {size}, 3] with N >= 1; "
            f"found {_describe(arr)}"
        )
    return arr


def _hwc_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> uint8 ``[N, 3, H, W]`` (contiguous)."""
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _expect_int_vector(obj: Any, length: int, path: Path, key: str) -> np.ndarray:
    if length == 0:
        raise FewShotDataError(f"{path}: holds no images")
    arr = np.asarray(obj)
    if arr.shape != (length,) or not np.issubdtype(arr.dtype, np.integer):
        raise FewShotDataError(f"{path}: '{key}' must hold {length} integers (one per image); found {_describe(arr)}")
    return arr.astype(np.int64)


def _split_from_ids(images: torch.Tensor, ids: np.ndarray, names: Callable[[int], str], source: str) -> ClassSplit:
    """Relabel arbitrary class ids to ``0..n-1`` (sorted by id); ``names(id)`` gives each class name."""
    unique, labels = np.unique(ids, return_inverse=True)
    return ClassSplit(images, torch.from_numpy(labels.astype(np.int64)), [names(int(u)) for u in unique], source)


def _decode_png(blob: Any, size: int, where: str) -> torch.Tensor:
    """One PNG (a path, bytes or a uint8 buffer) -> uint8 ``[3, size, size]``."""
    try:
        if isinstance(blob, Path):
            source = blob
        else:  # a Python-2 byte string unpickled with latin1 arrives as str: encode it back losslessly
            source = io.BytesIO(blob.encode("latin1") if isinstance(blob, str) else memoryview(blob).tobytes())
        with Image.open(source) as img:
            arr = np.array(img.convert("RGB"))
    except Exception as exc:  # PIL raises several types for undecodable data
        raise FewShotDataError(f"{where}: not a decodable image ({type(exc).__name__}: {exc})") from exc
    if arr.shape != (size, size, 3):
        raise FewShotDataError(f"{where}: expected a {size}x{size} image; found {arr.shape[1]}x{arr.shape[0]}")
    return torch.from_numpy(arr).permute(2, 0, 1)


def _decode_all(blobs: list, size: int, what: str, where: Callable[[int], str]) -> torch.Tensor:
    """Decode every PNG in ``blobs`` into uint8 ``[N, 3, size, size]``.

    Each entry of ``blobs`` is replaced by None once decoded, so encoded and decoded copies of a
    large set are not both held in full. Logs progress for large sets.
    """
    total = len(blobs)
    out = torch.empty((total, 3, size, size), dtype=torch.uint8)
    step = max(total // 10, 1) if total >= _PROGRESS_MIN_IMAGES else 0
    if step:
        logger.info("decoding %d %s images", total, what)
    for i in range(total):
        out[i] = _decode_png(blobs[i], size, where(i))
        blobs[i] = None
        if step and (i + 1) % step == 0:
            logger.info("decoded %d/%d %s images", i + 1, total, what)
    return out


# ----------------------------------------------------------------------------- CIFAR-FS


def _png_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")


def _read_class_folders(folders: list[Path], source: str) -> ClassSplit:
    """One split from class folders of 32x32 PNGs; class name = folder name."""
    files: list[Path] = []
    ids: list[int] = []
    for k, folder in enumerate(folders):
        pngs = _png_files(folder)
        if not pngs:
            raise FewShotDataError(f"{source}: class folder {folder} holds no .png images")
        files += pngs
        ids += [k] * len(pngs)
    images = _decode_all(files, 32, source, lambda i: str(files[i]))
    return ClassSplit(images, torch.tensor(ids, dtype=torch.int64), [f.name for f in folders], source)


def _read_split_list(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise FewShotDataError(f"{path}: expected one CIFAR-100 class name per line; the file is empty")
    return names


def _read_cifar_fs(base: Path) -> dict[str, ClassSplit]:
    processed = base / "cifarfs" / "processed"
    if all((processed / s).is_dir() for s in SPLITS):
        return {
            s: _read_class_folders(
                sorted(p for p in (processed / s).iterdir() if p.is_dir()), f"cifar-fs {s} ({processed / s})"
            )
            for s in SPLITS
        }
    raw = base / "cifarfs" / "cifar100"
    data = _require(raw / "data", "cifar-fs")
    splits = {}
    for s in SPLITS:
        split_file = _require(raw / "splits" / "bertinetto" / f"{s}.txt", "cifar-fs")
        folders = []
        for name in _read_split_list(split_file):
            if not (data / name).is_dir():
                raise FewShotDataError(
                    f"{split_file}: lists class '{name}' but {data / name} is not a folder. "
                    f"{BENCHMARKS['cifar-fs'].hint}"
                )
            folders.append(data / name)
        splits[s] = _read_class_folders(folders, f"cifar-fs {s} ({split_file})")
    return splits


# ----------------------------------------------------------------------------- FC100


def _read_fc100(base: Path) -> dict[str, ClassSplit]:
    splits = {}
    for s in SPLITS:
        path = _require(base / f"FC100_{s}.pickle", "fc100")
        obj = _expect_dict(_unpickle(path), ("data", "labels"), path)
        images = _hwc_to_tensor(_expect_hwc_images(obj["data"], 32, path, "data"))
        ids = _expect_int_vector(obj["labels"], images.shape[0], path, "labels")
        splits[s] = _split_from_ids(images, ids, str, f"fc100 {s} ({path})")
    return splits


# ----------------------------------------------------------------------------- miniImageNet


def _class_dict_ids(class_dict: Any, n_images: int, path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``{name: [indices]}`` -> (image indices, class id of each, class names sorted; id k = names[k])."""
    if not isinstance(class_dict, dict) or not class_dict:
        raise FewShotDataError(
            f"{path}: 'class_dict' must be a non-empty dict {{wnid: [image indices]}}; found {_describe(class_dict)}"
        )
    names = sorted(map(str, class_dict))
    by_name = {str(k): v for k, v in class_dict.items()}
    index_parts, id_parts = [], []
    for k, name in enumerate(names):
        idx = np.asarray(by_name[name])
        if (
            idx.ndim != 1
            or idx.size == 0
            or not np.issubdtype(idx.dtype, np.integer)
            or idx.min() < 0
            or idx.max() >= n_images
        ):
            raise FewShotDataError(
                f"{path}: class_dict['{name}'] must list image indices in 0..{n_images - 1}; found {_describe(idx)}"
            )
        index_parts.append(idx.astype(np.int64))
        id_parts.append(np.full(idx.size, k, dtype=np.int64))
    indices = np.concatenate(index_parts)
    if np.bincount(indices, minlength=n_images).max() > 1:
        raise FewShotDataError(f"{path}: class_dict lists some image index under more than one class")
    return indices, np.concatenate(id_parts), names


def _read_miniimagenet(base: Path) -> dict[str, ClassSplit]:
    splits = {}
    for s, file_split in zip(SPLITS, ("train", "validation", "test")):
        path = _require(base / f"mini-imagenet-cache-{file_split}.pkl", "miniimagenet")
        obj = _expect_dict(_unpickle(path), ("image_data", "class_dict"), path)
        data = _expect_hwc_images(obj["image_data"], 84, path, "image_data")
        indices, ids, names = _class_dict_ids(obj["class_dict"], data.shape[0], path)
        labels = np.full(data.shape[0], -1, dtype=np.int64)
        labels[indices] = ids
        if indices.size < data.shape[0]:  # images listed under no class are left out
            data, labels = data[labels >= 0], labels[labels >= 0]
        splits[s] = _split_from_ids(_hwc_to_tensor(data), labels, names.__getitem__, f"miniimagenet {s} ({path})")
    return splits


# ----------------------------------------------------------------------------- tieredImageNet


def _tiered_names(labels: dict, ids: np.ndarray, split: str, path: Path) -> Callable[[int], str]:
    """Class-name lookup: ``label_specific_str[id]`` when present, else ``'<split>-<id>'`` (unique per split)."""
    if "label_specific_str" not in labels:
        return lambda i: f"{split}-{i}"
    names = labels["label_specific_str"]
    if not isinstance(names, (list, tuple, np.ndarray)) or len(names) <= int(ids.max()) or int(ids.min()) < 0:
        raise FewShotDataError(
            f"{path}: 'label_specific_str' must name every class id 0..{int(ids.max())}; found {_describe(names)}"
        )
    return lambda i: str(names[i])


def _read_tieredimagenet(base: Path) -> dict[str, ClassSplit]:
    folder = base / "tiered-imagenet"
    splits = {}
    for s in SPLITS:
        label_path = _require(folder / f"{s}_labels.pkl", "tieredimagenet")
        image_path = _require(folder / f"{s}_images_png.pkl", "tieredimagenet")
        labels = _expect_dict(_unpickle(label_path), ("label_specific",), label_path)
        blobs = _unpickle(image_path)
        if not isinstance(blobs, (list, tuple, np.ndarray)) or (isinstance(blobs, np.ndarray) and blobs.ndim != 1):
            raise FewShotDataError(f"{image_path}: expected a list of PNG-encoded images; found {_describe(blobs)}")
        blobs = list(blobs) if not isinstance(blobs, list) else blobs
        ids = _expect_int_vector(labels["label_specific"], len(blobs), label_path, "label_specific")
        images = _decode_all(blobs, 84, f"tieredImageNet {s}", lambda i, path=image_path: f"{path} item {i}")
        del blobs
        splits[s] = _split_from_ids(
            images, ids, _tiered_names(labels, ids, s, label_path), f"tieredimagenet {s} ({image_path})"
        )
    return splits


# ----------------------------------------------------------------------------- registry

BENCHMARKS: dict[str, Benchmark] = {
    "cifar-fs": Benchmark(
        "CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 regrouped into 64/16/20 classes, 32x32 RGB",
        32,
        "cifarfs",
        _read_cifar_fs,
        "Get cifar100.zip from zenodo record 7978538 and extract it into ROOT/cifarfs/ "
        "(giving ROOT/cifarfs/cifar100/data and ROOT/cifarfs/cifar100/splits/bertinetto), or run "
        "learn2learn.vision.datasets.CIFARFS(root=ROOT, download=True) once.",
    ),
    "fc100": Benchmark(
        "FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass into 60/20/20 classes, 32x32 RGB",
        32,
        "FC100_train.pickle",
        _read_fc100,
        "Expected ROOT/FC100_{train,val,test}.pickle as downloaded by "
        "learn2learn.vision.datasets.FC100(root=ROOT, download=True).",
    ),
    "miniimagenet": Benchmark(
        "miniImageNet (Ravi & Larochelle split): 64/16/20 ImageNet classes, 84x84 RGB",
        84,
        "mini-imagenet-cache-train.pkl",
        _read_miniimagenet,
        "Expected ROOT/mini-imagenet-cache-{train,validation,test}.pkl as downloaded by "
        "learn2learn.vision.datasets.MiniImagenet(root=ROOT, mode=..., download=True).",
    ),
    "tieredimagenet": Benchmark(
        "tieredImageNet (Ren et al. 2018): 351/97/160 ImageNet classes, 84x84 RGB",
        84,
        "tiered-imagenet",
        _read_tieredimagenet,
        "Expected ROOT/tiered-imagenet/{train,val,test}_{images_png,labels}.pkl, i.e. tiered-imagenet.tar "
        "extracted into ROOT, as downloaded by learn2learn.vision.datasets.TieredImagenet(root=ROOT, download=True).",
    ),
}


def read_benchmark(name: str, root: Path) -> FewShotDataset:
    """Read benchmark ``name`` (a key of BENCHMARKS) from the distributed files under ``root``."""
    bench = BENCHMARKS[name]
    base = _find_base(root, name)
    splits = bench.reader(base)
    counts = "/".join(str(splits[s].n_classes) for s in SPLITS)
    return FewShotDataset(
        name=name,
        splits=splits,
        image_size=bench.image_size,
        channels=3,
        description=f"{bench.title}; read {counts} train/val/test classes from {base}.",
        synthetic=False,
    )
