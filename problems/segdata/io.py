"""Reading and validating one case: image as float32 ``[H, W, C]`` in [0, 1], mask as uint8 ``{0, 1}``.

Encodings handled (each checked, never guessed silently):

* 8-bit images (JPEG, PNG, BMP, GIF) are divided by 255; 16-bit PNGs by 4095 when every value
  fits in 12 bits (the NLM and JSRT scanners' range), else by 65535.
* JSRT ``.IMG``: headerless big-endian uint16, 12 bits used, square. The side is inferred from
  the file length (official files are 2048 x 2048 = 8 MiB; the embedded samples are smaller).
  The stored polarity is inverted (bone is dark), so the image is ``(4095 - v) / 4095``.
* Binary masks (ISIC, PH2, DermIS, SCR GIFs, NLM, Shenzhen, BUSI): values must lie in {0, 255}
  or in {0, 1}; 3-channel masks (some BUSI files) must have equal channels.
* Kvasir-SEG masks are JPEGs, so compression leaves intermediate values: grey >= 128 is foreground.
* FetReg labels are class indices 0..3 (background, vessel, tool, fetus); vessel (1) is foreground.
* All mask files of a case are OR-ed. Image and mask must have the same size, except for JSRT
  where the SCR masks are half the image size: the image is then averaged over 2 x 2 blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from .layouts import DATASETS, Case, DatasetError

__all__ = ["read_case"]

_JSRT_MAX = 4095
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as Pillow's "L" conversion


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image file, turning every decoder failure into a DatasetError."""
    if not path.is_file():
        raise DatasetError(f"file '{path}' does not exist")
    try:
        with Image.open(path) as img:
            img.load()
        return img
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DatasetError(f"cannot read '{path}': {err} (expected a readable {path.suffix} image file)") from err


def _read_jsrt_raw(path: Path) -> np.ndarray:
    """Read a JSRT ``.IMG`` file as float32 ``[S, S, 1]``, bright = dense (polarity restored)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read '{path}': {err}") from err
    side = int(np.sqrt(len(data) // 2))
    if len(data) == 0 or side * side * 2 != len(data):
        raise DatasetError(
            f"cannot read '{path}': {len(data)} bytes is not 2 * side^2 for a square headerless big-endian "
            "uint16 image (official JSRT files are 2048 x 2048 = 8388608 bytes)"
        )
    raw = np.frombuffer(data, dtype=">u2").reshape(side, side)
    if raw.max() > _JSRT_MAX:
        raise DatasetError(
            f"cannot read '{path}': values up to {int(raw.max())} exceed the 12-bit range 0..{_JSRT_MAX} "
            "of JSRT data (is it little-endian or not a JSRT .IMG file?)"
        )
    return ((_JSRT_MAX - raw.astype(np.float32)) / _JSRT_MAX)[..., None]


def _read_image(path: Path) -> np.ndarray:
    """Read an image file as float32 ``[H, W, C]`` in [0, 1], C = 1 (grey) or 3 (RGB) as stored."""
    if path.suffix.lower() == ".img":
        return _read_jsrt_raw(path)
    img = _open(path)
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        scale = _JSRT_MAX if arr.max() <= _JSRT_MAX else 65535
        return np.clip(arr / scale, 0.0, 1.0)[..., None]
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert ``[H, W, C]`` to ``channels`` (RGB -> grey by luminance, grey -> RGB by repetition)."""
    if image.shape[-1] == channels:
        return image
    if channels == 1:
        return (image @ _LUMA)[..., None].astype(np.float32)
    return np.repeat(image, 3, axis=-1)


def _grey_mask(path: Path) -> np.ndarray:
    """Mask file -> 2D integer array; palette/bilevel images via their grey levels, colour must be grey."""
    img = _open(path)
    if img.mode in ("1", "P"):
        img = img.convert("L")
    arr = np.asarray(img)
    if arr.ndim == 3:
        colour = arr[..., :3]
        if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
            raise DatasetError(f"mask '{path}' is a colour image; expected a grey or single-channel binary mask")
        arr = colour[..., 0]
    return arr


def _values(arr: np.ndarray) -> str:
    found = np.unique(arr)
    shown = ", ".join(str(int(v)) for v in found[:10])
    return "{" + shown + (", ..." if found.size > 10 else "") + "}"


def _binary_mask(path: Path) -> np.ndarray:
    """0/255 (or 0/1) mask -> {0, 1}; any other value is an error."""
    arr = _grey_mask(path)
    present = set(np.unique(arr).tolist())
    if not (present <= {0, 255} or present <= {0, 1}):
        raise DatasetError(
            f"mask '{path}' has values {_values(arr)}; expected {{0, 255}} (0 = background, "
            "255 = foreground) or {0, 1}"
        )
    return (arr > 0).astype(np.uint8)


def _jpeg_mask(path: Path) -> np.ndarray:
    """Kvasir-SEG JPEG mask -> {0, 1} by thresholding its grey level at 128 (undoes JPEG artefacts)."""
    img = _open(path).convert("L")
    return (np.asarray(img) >= 128).astype(np.uint8)


def _fetreg_label(path: Path) -> np.ndarray:
    """FetReg label PNG of class indices 0..3 -> vessel mask (class 1) in {0, 1}."""
    img = _open(path)
    if img.mode not in ("L", "P"):
        raise DatasetError(
            f"label '{path}' has mode {img.mode}; expected a single-channel PNG of class indices "
            "0..3 (0 background, 1 vessel, 2 tool, 3 fetus)"
        )
    arr = np.asarray(img)
    if not set(np.unique(arr).tolist()) <= {0, 1, 2, 3}:
        raise DatasetError(
            f"label '{path}' has values {_values(arr)}; expected class indices {{0, 1, 2, 3}} "
            "(0 background, 1 vessel, 2 tool, 3 fetus)"
        )
    return (arr == 1).astype(np.uint8)


_MASK_DECODERS: dict[str, Callable[[Path], np.ndarray]] = {"kvasir": _jpeg_mask, "fetreg": _fetreg_label}


def _read_mask(case: Case) -> np.ndarray:
    """OR of all mask files of ``case`` as uint8 ``[H, W]`` in {0, 1}; the files must agree in size."""
    decode = _MASK_DECODERS.get(case.dataset, _binary_mask)
    mask: np.ndarray | None = None
    for path in case.masks:
        part = decode(path)
        if mask is not None and part.shape != mask.shape:
            raise DatasetError(
                f"mask '{path}' is {part.shape[0]}x{part.shape[1]} but '{case.masks[0]}' is "
                f"{mask.shape[0]}x{mask.shape[1]}; expected all masks of case '{case.case_id}' to have one size"
            )
        mask = part if mask is None else np.maximum(mask, part)
    if mask is None:
        raise DatasetError(f"case '{case.case_id}' (image '{case.image}') lists no mask file")
    return mask


def _match_size(case: Case, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Check image/mask sizes agree; for JSRT, halve a 2x image by 2 x 2 block means (SCR masks)."""
    (h, w), (mh, mw) = image.shape[:2], mask.shape
    if (h, w) == (mh, mw):
        return image
    if case.dataset == "jsrt" and (h, w) == (2 * mh, 2 * mw):
        return image.reshape(mh, 2, mw, 2, image.shape[2]).mean(axis=(1, 3))
    expected = "the same size" + (" or exactly twice the mask size (SCR masks)" if case.dataset == "jsrt" else "")
    raise DatasetError(f"image '{case.image}' is {h}x{w} but mask '{case.masks[0]}' is {mh}x{mw}; expected {expected}")


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of float ``[H, W, C]`` to ``[size, size, C]``."""
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize((size, size), Image.Resampling.BILINEAR))
        for c in range(image.shape[2])
    ]
    return np.clip(np.stack(planes, axis=-1), 0.0, 1.0).astype(np.float32)


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


def read_case(case: Case, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a case as ``(image, mask)``.

    Args:
        case: from :func:`find_cases`.
        size: if given, resize both to ``size x size`` (image bilinear, mask nearest).

    Returns:
        image: float32 ``[H, W, C]`` in [0, 1] with ``C = DATASETS[case.dataset].channels``.
        mask: uint8 ``[H, W]`` with values {0, 1} (OR of the case's mask files).

    Raises:
        DatasetError: naming the file, for an unreadable file, image/mask size mismatch, or mask
            values outside the dataset's encoding.
    """
    if case.dataset not in DATASETS:
        raise DatasetError(f"case '{case.case_id}' names unknown dataset '{case.dataset}'")
    mask = _read_mask(case)
    image = _match_size(case, _read_image(case.image), mask)
    image = _to_channels(image, DATASETS[case.dataset].channels).astype(np.float32)
    if size is not None:
        image, mask = _resize_image(image, size), _resize_mask(mask, size)
    return image, mask
