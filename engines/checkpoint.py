"""Atomic checkpoints and random-number-generator state that loads with ``weights_only=True``.

A checkpoint is written to a temporary file in the target folder, flushed to disk (fsync) and
renamed over the old one, and the folder is fsynced after the rename, so a crash never leaves a
truncated ``checkpoint_latest.pt``. With ``keep_previous`` the file it replaces is first kept as
``<name>`` with ``_latest`` replaced by ``_previous`` — by a hard link (a copy where the file system
has none) renamed into place, so ``checkpoint_latest.pt`` exists at every instant of the rotation: a
kill at any point leaves it holding either the old or the new checkpoint, complete. A file damaged
later (a full disk, a copy gone wrong) still has a good predecessor. Loading a damaged file raises
:class:`engines.CheckpointError` naming it. RNG states are stored as tensors and plain Python
objects (``torch.load`` defaults to ``weights_only=True``, which refuses NumPy arrays).
"""

from __future__ import annotations

import os
import pickle
import random
import secrets
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

__all__ = ["load_checkpoint", "previous_path", "remove_stale_temporaries", "rng_state", "save_atomic", "set_rng_state"]


def previous_path(path: str | Path) -> Path:
    """``checkpoint_latest.pt`` -> ``checkpoint_previous.pt`` (the good checkpoint kept before it)."""
    path = Path(path)
    return path.with_name(
        path.name.replace("_latest", "_previous") if "_latest" in path.name else f"{path.stem}_previous{path.suffix}"
    )


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files an interrupted :func:`save_atomic` left in ``folder``."""
    stale = sorted(Path(folder).glob(".*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def save_atomic(obj: Any, path: str | Path, *, keep_previous: bool = False) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the folder.

    With ``keep_previous`` the current ``path`` is first kept as :func:`previous_path` without ever
    being absent: it is hard-linked (copied where the file system has no hard links) to a temporary
    name that is then renamed over the previous one. A crash at any instant therefore leaves ``path``
    holding the old or the new checkpoint, complete, plus at most temporaries that
    :func:`remove_stale_temporaries` deletes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.is_file():
            _keep_as_previous(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _keep_as_previous(path: Path) -> None:
    """Make :func:`previous_path` a second name of ``path``'s current file, leaving ``path`` in place."""
    previous = previous_path(path)
    link = path.with_name(f".{previous.name}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(path, link)
        except OSError:  # no hard links here (some network or FUSE file systems): a fsynced copy
            shutil.copyfile(path, link)
            with open(link, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(link, previous)
    except BaseException:
        link.unlink(missing_ok=True)
        raise


def _fsync_folder(folder: Path) -> None:
    """Persist the folder's entries (the renames) where the platform can open a folder (not Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the renames are then as durable as they allow
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` (safe ``weights_only`` unpickling).

    Raises FileNotFoundError if it does not exist and :class:`engines.CheckpointError` (naming the
    file and the reason) if it is empty, truncated or corrupted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "the file is empty (0 bytes)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError) as err:
        reason = str(err).splitlines()[0] if str(err) else "unreadable"
        raise CheckpointError(path, f"{type(err).__name__}: {reason}") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"it holds a {type(state).__name__}, not a checkpoint dict")
    return state


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors / plain objects."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
