"""Download of the openly downloadable datasets, with checksum verification.

:data:`SOURCES` lists, per dataset, either the official archive URL(s) with their published
SHA-256 and where they extract, or, for datasets behind a registration or licence form,
instructions saying what to download, from where, and where to put it under ``--data-root``.

Checksums come from torch-em's dataset modules (``torch_em/data/datasets/medical/{isic,kvasir,
montgomery}.py``, which verify the same URLs with SHA-256). Where no published checksum was found
(Shenzhen), ``sha256`` is None: the downloader then prints the SHA-256 it computed and stops,
unless the caller passes the expected value or explicitly accepts an unverified archive.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .layouts import DATASETS, DatasetError, find_cases
from .samples import default_sample_root, is_synthetic_sample, read_marker, sample_settings, write_sample

__all__ = ["SOURCES", "Archive", "Source", "download_dataset", "ensure_dataset"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One archive file: where to get it, what it is called, and its SHA-256 (None if unpublished)."""

    url: str
    filename: str
    sha256: str | None


@dataclass(frozen=True)
class Source:
    """How to obtain a dataset: ``archives`` to fetch and unzip into the data root, or, when
    ``needs_registration`` is True, human ``instructions``. ``note`` is shown when the archives
    alone do not complete the layout (e.g. masks distributed separately)."""

    archives: tuple[Archive, ...] = ()
    needs_registration: bool = False
    instructions: str = ""
    note: str = ""


_ISIC = "https://isic-challenge-data.s3.amazonaws.com/2018/"

SOURCES: dict[str, Source] = {
    "isic2018": Source(
        archives=(
            Archive(
                _ISIC + "ISIC2018_Task1-2_Training_Input.zip",
                "ISIC2018_Task1-2_Training_Input.zip",
                "80f98572347a2d7a376227fa9eb2e4f7459d317cb619865b8b9910c81446675f",
            ),
            Archive(
                _ISIC + "ISIC2018_Task1_Training_GroundTruth.zip",
                "ISIC2018_Task1_Training_GroundTruth.zip",
                "99f8b2bb3c4d6af483362010715f7e7d5d122d9f6c02cac0e0d15bef77c7604c",
            ),
        ),
    ),
    "nlm_mc": Source(
        archives=(
            Archive(
                "https://openi.nlm.nih.gov/imgs/collections/NLM-MontgomeryCXRSet.zip",
                "NLM-MontgomeryCXRSet.zip",
                "54601e952315d8f67383e9202a6e145997ade429f54f7e0af44b4e158714f424",
            ),
        ),
    ),
    "nlm_sz": Source(
        archives=(
            Archive("https://openi.nlm.nih.gov/imgs/collections/ChinaSet_AllFiles.zip", "ChinaSet_AllFiles.zip", None),
        ),
        note=(
            "The NLM Shenzhen archive holds the images only. The lung masks are a separate community set "
            "(Stirenko et al. 2018, Kaggle dataset 'yoctoman/shcxr-lung-mask', CC BY-NC-SA 4.0): download it "
            "by hand and extract it anywhere under the data root; its CHNCXR_####_x_mask.png files are found "
            "by name."
        ),
    ),
    "kvasir": Source(
        archives=(
            Archive(
                "https://datasets.simula.no/downloads/kvasir-seg.zip",
                "kvasir-seg.zip",
                "03b30e21d584e04facf49397a2576738fd626815771afbbf788f74a7153478f7",
            ),
        ),
    ),
    "ph2": Source(
        needs_registration=True,
        instructions=(
            "PH2 is distributed by the ADDI project (https://www.fc.up.pt/addi/ph2%20database.html) after "
            "accepting its terms. Download PH2Dataset.rar and unpack it (unrar, 7z or the 'rarfile' package) "
            "into --data-root, so that '<data-root>/PH2Dataset/PH2 Dataset images/IMD002/...' exists."
        ),
    ),
    "dermis": Source(
        needs_registration=True,
        instructions=(
            "DermIS lesion masks come from the University of Waterloo VIP lab 'Skin Cancer Detection' set "
            "(https://uwaterloo.ca/vision-image-processing-lab/research-demos/skin-cancer-detection), images "
            "from dermis.net, for research use. Download the archive and extract it into --data-root, so that "
            "'<data-root>/skin_data/melanoma/dermIS/<name>_orig.jpg' and '<name>_contour.png' exist."
        ),
    ),
    "jsrt": Source(
        needs_registration=True,
        instructions=(
            "JSRT requires registration at http://db.jsrt.or.jp/eng.php (free for research, no redistribution). "
            "Put its All247images/ folder (JPCLN001.IMG ... JPCNN093.IMG) into --data-root. The lung masks come "
            "from the SCR database (van Ginneken et al. 2006, https://www.isi.uu.nl/Research/Databases/SCR/): "
            "extract its masks archive anywhere under --data-root unchanged, so "
            "that folders named 'left lung' and 'right lung' hold JPCLN001.gif etc."
        ),
    ),
    "busi": Source(
        needs_registration=True,
        instructions=(
            "BUSI (Al-Dhabyani et al. 2020) is offered at https://scholar.cu.edu.eg/?q=afahmy/pages/dataset "
            "(its direct link https://scholar.cu.edu.eg/Dataset_BUSI.zip has served a TLS certificate that "
            "fails verification, so it is not fetched automatically). Download Dataset_BUSI.zip and extract "
            "it into --data-root, so that '<data-root>/Dataset_BUSI_with_GT/benign/benign (1).png' exists."
        ),
    ),
    "fetreg": Source(
        needs_registration=True,
        instructions=(
            "FetReg 2021 requires registration on Synapse (https://www.synapse.org/#!Synapse:syn25313156) "
            "and accepting the challenge data terms. Download the training set and extract it into "
            "--data-root, so that '<data-root>/FetReg2021_dataset/Train/Train_FetReg2021_Task1_Segmentation/"
            "Video001/images/' and '.../labels/' exist."
        ),
    ),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, folder: Path, progress: bool) -> tuple[Path, str]:
    """Stream ``url`` to a temporary file in ``folder``; return it and its SHA-256.

    The temporary file is removed if the transfer fails or is interrupted.
    """
    handle, name = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=".part")
    tmp = Path(name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=not progress) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"could not download {url}: {err}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest()


def _check_checksum(archive: Archive, path: Path, actual: str, expected: str | None, allow_unverified: bool) -> None:
    """Raise (after deleting ``path``) unless ``actual`` matches ``expected`` or unverified use is allowed."""
    if expected is not None and actual != expected.lower():
        path.unlink(missing_ok=True)
        raise DatasetError(
            f"checksum mismatch for {archive.url}: expected SHA-256 {expected}, got {actual}; "
            "the partial or altered file was deleted"
        )
    if expected is None:
        print(f"SHA-256 of {archive.url}: {actual} (no published checksum to compare with)")
        if not allow_unverified:
            path.unlink(missing_ok=True)
            raise DatasetError(
                f"{archive.url} has no published checksum; its SHA-256 is {actual}. Check it against a trusted "
                f"source and pass expected_sha256={{'{archive.filename}': '{actual}'}}, or accept an "
                "unverified archive with allow_unverified=True"
            )


def _extract(zip_path: Path, root: Path) -> None:
    """Extract a zip into ``root``, refusing members that would land outside it; a corrupt zip is deleted."""
    target = root.resolve()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.namelist():
                if not (target / member).resolve().is_relative_to(target):
                    raise DatasetError(f"refusing to extract '{member}' from '{zip_path}': it points outside '{root}'")
            archive.extractall(target)
    except zipfile.BadZipFile as err:
        zip_path.unlink(missing_ok=True)
        raise DatasetError(f"'{zip_path}' is not a valid zip archive (deleted): {err}") from err


def _has_layout(key: str, root: Path) -> bool:
    try:
        find_cases(key, root)
    except DatasetError:
        return False
    return True


def download_dataset(
    key: str,
    root: Path,
    *,
    sources: Mapping[str, Source] = SOURCES,
    allow_unverified: bool = False,
    expected_sha256: Mapping[str, str] | None = None,
    progress: bool = True,
) -> Path:
    """Download, verify and extract dataset ``key`` into ``root``; return ``root``.

    Each archive is streamed to a temporary file in ``root``, its SHA-256 checked against the
    published value (or ``expected_sha256[filename]``), then atomically renamed to its final name
    and extracted in place, which reproduces the official layout. Nothing is fetched if ``root``
    already holds the layout, and an archive already present with the right checksum is only
    extracted again. Finally the layout is read with :func:`find_cases`.

    Raises:
        DatasetError: registration-only dataset (with the instructions), download failure, checksum
            mismatch (names URL, expected and actual checksum; the file is deleted), missing checksum
            without ``allow_unverified``, or a layout that is still incomplete after extraction.
    """
    if key not in sources:
        raise DatasetError(f"no download source for dataset '{key}'; known: {sorted(sources)}")
    source = sources[key]
    if source.needs_registration or not source.archives:
        raise DatasetError(f"{key} cannot be downloaded automatically. {source.instructions}")
    root = Path(root)
    if _has_layout(key, root):
        return root
    root.mkdir(parents=True, exist_ok=True)
    expected_sha256 = expected_sha256 or {}
    for archive in source.archives:
        expected = archive.sha256 or expected_sha256.get(archive.filename)
        final = root / archive.filename
        if not (final.is_file() and expected is not None and _sha256(final) == expected.lower()):
            tmp, actual = _fetch(archive.url, root, progress)
            _check_checksum(archive, tmp, actual, expected, allow_unverified)
            os.replace(tmp, final)
        _extract(final, root)
    try:
        find_cases(key, root)
    except DatasetError as err:
        raise DatasetError(f"{source.note} {err}".strip() if source.note else str(err)) from err
    return root


def _sample_is_current(root: Path, key: str, settings: dict[str, str]) -> bool:
    """True if ``root`` is a readable sample written with exactly ``settings``."""
    marker = read_marker(root)
    return all(marker.get(k) == v for k, v in settings.items()) and _has_layout(key, root)


def _provide_sample(key: str, root: Path, seed: int, size: int, n_cases: int | None = None) -> Path:
    """Write the sample into a temporary sibling folder, then move it into place atomically."""
    settings = sample_settings(key, n_cases=n_cases, seed=seed, size=size)
    if _sample_is_current(root, key, settings):
        return root
    if root.exists() and any(root.iterdir()) and not is_synthetic_sample(root):
        raise DatasetError(f"'{root}' is not empty and is not a medmlo sample; refusing to overwrite it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{key}-"))
    write_sample(key, tmp, n_cases=n_cases, seed=seed, size=size)
    if root.exists():
        shutil.rmtree(root)
    try:
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _sample_is_current(root, key, settings):
            raise
    return root


def ensure_dataset(
    key: str,
    data_root: Path | None,
    *,
    download: bool = False,
    sample_root: Path | None = None,
    sample_seed: int = 0,
    sample_size: int = 128,
    sample_cases: int | None = None,
) -> tuple[Path, str]:
    """Decide where the data of ``key`` comes from; return ``(root, source)``.

    * ``data_root`` holds the official layout -> ``(data_root, "real")`` (or ``"embedded-sample"``
      if it carries a sample's marker file);
    * else, with ``download`` and an openly downloadable dataset -> download, verify and extract
      into ``data_root`` -> ``(data_root, "real")``;
    * else, if ``data_root`` was given -> DatasetError (never silently substitute other data);
    * else (no ``data_root``) -> the embedded synthetic sample under ``sample_root/key``
      (default :func:`default_sample_root`), written once and reused while its marker records
      the same seed, size, case count and generator version -> ``(path, "embedded-sample")``;
      ``sample_cases`` asks for more (or fewer) cases than :data:`SAMPLE_CASES` (e.g. a test set
      large enough for a study).
    """
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset '{key}'; expected one of {sorted(DATASETS)}")
    if data_root is None:
        if download:
            raise DatasetError(f"{key}: downloading needs a destination; pass data_root (--data-root)")
        root = Path(sample_root) if sample_root is not None else default_sample_root()
        return _provide_sample(key, root / key, sample_seed, sample_size, sample_cases), "embedded-sample"
    data_root = Path(data_root)
    try:
        find_cases(key, data_root)
    except DatasetError as err:
        if not download:
            raise DatasetError(
                f"--data-root '{data_root}' does not hold {DATASETS[key].title} in its official layout: {err} "
                "Pass download=True (--download) where the dataset is openly downloadable, or leave out "
                "--data-root to run on the embedded synthetic sample."
            ) from err
        return download_dataset(key, data_root), "real"
    return data_root, "embedded-sample" if is_synthetic_sample(data_root) else "real"
