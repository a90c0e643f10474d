"""download_dataset against a real HTTP server on 127.0.0.1 serving a Kvasir-SEG-layout zip."""

from __future__ import annotations

import functools
import hashlib
import shutil
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from problems.segdata import (
    DATASETS,
    SOURCES,
    Archive,
    DatasetError,
    Source,
    download_dataset,
    find_cases,
    write_sample,
)
from problems.segdata.samples import MARKER

N_CASES = 4


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """Serve ``kvasir-seg.zip`` (official layout, no sample marker) and ``broken.zip``; yield (base URL, sha256)."""
    folder = tmp_path_factory.mktemp("served")
    sample = write_sample("kvasir", tmp_path_factory.mktemp("kvasir") / "src", n_cases=N_CASES, size=48)
    with zipfile.ZipFile(folder / "kvasir-seg.zip", "w") as archive:
        for path in sorted(sample.rglob("*")):
            if path.is_file() and path.name != MARKER:
                archive.write(path, path.relative_to(sample).as_posix())
    (folder / "broken.zip").write_bytes(b"this is not a zip archive")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield (
        f"http://127.0.0.1:{server.server_address[1]}",
        hashlib.sha256((folder / "kvasir-seg.zip").read_bytes()).hexdigest(),
    )
    server.shutdown()
    server.server_close()


def kvasir_source(url: str, sha256: str | None) -> dict[str, Source]:
    return {"kvasir": Source(archives=(Archive(url, "kvasir-seg.zip", sha256),))}


def test_download_verifies_extracts_and_reads(served, tmp_path):
    base, sha = served
    root = download_dataset(
        "kvasir", tmp_path / "data", sources=kvasir_source(f"{base}/kvasir-seg.zip", sha), progress=False
    )
    assert len(find_cases("kvasir", root)) == N_CASES
    assert (root / "kvasir-seg.zip").is_file() and not list(root.glob(".download-*"))
    offline = kvasir_source("http://127.0.0.1:9/unreachable", sha)
    assert download_dataset("kvasir", root, sources=offline, progress=False) == root  # layout present: no fetch
    shutil.rmtree(root / "Kvasir-SEG")
    assert download_dataset("kvasir", root, sources=offline, progress=False) == root  # verified zip re-extracted
    assert len(find_cases("kvasir", root)) == N_CASES


def test_checksum_mismatch_names_url_and_both_checksums_and_leaves_nothing(served, tmp_path):
    base, sha = served
    wrong = "0" * 64
    with pytest.raises(DatasetError) as err:
        download_dataset("kvasir", tmp_path, sources=kvasir_source(f"{base}/kvasir-seg.zip", wrong), progress=False)
    assert f"{base}/kvasir-seg.zip" in str(err.value) and wrong in str(err.value) and sha in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_unpublished_checksum_needs_explicit_consent(served, tmp_path, capsys):
    base, sha = served
    sources = kvasir_source(f"{base}/kvasir-seg.zip", None)
    with pytest.raises(DatasetError, match="allow_unverified") as err:
        download_dataset("kvasir", tmp_path, sources=sources, progress=False)
    assert sha in str(err.value) and sha in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    download_dataset("kvasir", tmp_path, sources=sources, expected_sha256={"kvasir-seg.zip": sha}, progress=False)
    download_dataset("kvasir", tmp_path / "b", sources=sources, allow_unverified=True, progress=False)
    assert len(find_cases("kvasir", tmp_path / "b")) == N_CASES


def test_http_error_and_bad_archive(served, tmp_path):
    base, _ = served
    with pytest.raises(DatasetError, match="could not download") as err:
        download_dataset("kvasir", tmp_path, sources=kvasir_source(f"{base}/missing.zip", "0" * 64), progress=False)
    assert f"{base}/missing.zip" in str(err.value) and list(tmp_path.iterdir()) == []
    with pytest.raises(DatasetError, match="not a valid zip"):
        download_dataset(
            "kvasir", tmp_path, sources=kvasir_source(f"{base}/broken.zip", None), allow_unverified=True, progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_registration_only_dataset_gives_instructions(tmp_path):
    with pytest.raises(DatasetError) as err:
        download_dataset("jsrt", tmp_path)
    assert SOURCES["jsrt"].instructions in str(err.value) and "db.jsrt.or.jp" in str(err.value)


def test_every_dataset_has_a_source():
    assert set(SOURCES) == set(DATASETS)
    for key, source in SOURCES.items():
        assert source.needs_registration != bool(source.archives), key
        assert (
            source.instructions
            if source.needs_registration
            else all(a.url.startswith("https://") for a in source.archives)
        )
    assert SOURCES["nlm_sz"].note and "Stirenko" in SOURCES["nlm_sz"].note
