"""Pix2Pix trained alone on the training pairs, before the end-to-end phase (§4.1).

Every generator of a comparison takes the same budget, ``pretrain_steps + steps`` updates (each
with one discriminator update): the searchable one (E2EAug and its frozen-architecture control,
one shared pre-training per (N, seed)) is pre-trained ``pretrain_steps`` here and trains the other
``steps`` jointly with the segmenter; vanilla Pix2Pix (GAN-Separate) trains all
``pretrain_steps + steps`` here and is then frozen. A pre-training is a one-level graph run by
:class:`engines.Runner` in its own folder; it resumes from its checkpoint and is done once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from engines import Graph, Runner
from engines.checkpoint import load_checkpoint, save_atomic

from .data import Data
from .methods import SEARCHABLE_GAN_METHODS, Execution, Settings, gan_level, new_pix2pix
from .pix2pix import GeneratorArchitecture

__all__ = ["PRETRAINED_FILE", "pretrain", "pretrain_generators"]

PRETRAINED_FILE = "pretrained.pt"
"""What a finished pre-training leaves in its folder: weights, both Adam states, the settings."""


def _made_with(settings: Settings, steps: int) -> dict[str, Any]:
    return {"updates": steps, **{f.name: repr(getattr(settings, f.name)) for f in fields(Settings)}}


def pretrain(
    searchable: bool, steps: int, settings: Settings, data: Data, seed: int, run_dir: Path, execution: Execution
) -> dict[str, Any]:
    """Train Pix2Pix for ``steps`` updates (A, for the searchable generator, stays at its
    initialisation); returns its weights and both Adam states. A finished pre-training in
    ``run_dir`` is read back; one made with other settings is a ValueError naming the file."""
    done = Path(run_dir) / PRETRAINED_FILE
    made_with = _made_with(settings, steps)
    if done.exists():
        state = load_checkpoint(done)
        if state.get("made_with") != made_with:
            raise ValueError(f"{done} was pre-trained with other settings; delete that folder or choose another --out")
        return state
    torch.manual_seed(seed)
    architecture = GeneratorArchitecture(settings.n_down) if searchable else None
    pix2pix = new_pix2pix(settings, data.channels, searchable=searchable)
    gan = gan_level(settings, pix2pix, architecture, data, seed, execution.workers)
    graph = Graph("pix2pix_pretraining" if searchable else "vanilla_pix2pix_training")
    graph.add(gan)
    Runner(
        graph,
        steps,
        out=run_dir,
        device=execution.device,
        seed=seed,
        precision=execution.precision,
        checkpoint_every=max(1, steps // 4),
        resume=(Path(run_dir) / "checkpoint_latest.pt").exists(),
        progress=execution.progress,
        config={"stage": "pix2pix pre-training", "searchable": searchable, "steps": steps},
    ).run()
    state = {
        "pix2pix": pix2pix.state_dict(),
        "architecture": architecture.state_dict() if architecture is not None else None,
        "optimizers": {
            "generator": gan.optimizer.state_dict(),
            "discriminator": gan.discriminator_optimizer.state_dict(),
        },
        "made_with": made_with,
    }
    save_atomic(_to_cpu(state), done)
    return load_checkpoint(done)


def pretrain_generators(
    methods: Iterable[str], settings: Settings, data: Data, n: int, seed: int, runs: Path, execution: Execution
) -> dict[str, dict[str, Any]]:
    """The pre-trained generators ``methods`` start from, for one (N, seed): ``"searchable"`` in
    ``runs/pix2pix__n<N>__seed<s>/``, ``"vanilla"`` in ``runs/pix2pix_vanilla__n<N>__seed<s>/``."""
    methods = set(methods)
    out = {}
    if methods & set(SEARCHABLE_GAN_METHODS):
        out["searchable"] = pretrain(
            True, settings.pretrain_steps, settings, data, seed, Path(runs) / f"pix2pix__n{n}__seed{seed}", execution
        )
    if "gan_separate" in methods:
        out["vanilla"] = pretrain(
            False,
            settings.pretrain_steps + settings.steps,
            settings,
            data,
            seed,
            Path(runs) / f"pix2pix_vanilla__n{n}__seed{seed}",
            execution,
        )
    return out


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
