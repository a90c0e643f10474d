"""The experiment's tasks: what each group B_i / V_j holds, and assembling every group from the slices.

A task is a contrast sampled by a pattern at a ratio (``t1:radial:0.2``). The contrast ``noise`` is a
group of pure noise (:func:`~problems.taskcorr.groups.noise_group`): a training group that teaches
nothing, which a task-weighting method should learn to down-weight. Training groups use the
``train`` split of their contrast, validation groups the ``val`` split; the test groups are the
validation tasks on the ``test`` split (held-out slices).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ..mri import SPLITS, MRIDataError, MRISlices, SamplingTask, SliceSpec, load_slices, simulate_coil_maps
from .groups import ReconGroup, noise_group, simulate_group

__all__ = ["NOISE", "ReconTask", "TaskData", "load_task_data", "parse_tasks", "task_groups"]

NOISE = "noise"
"""The contrast name of a pure-noise task."""


@dataclass(frozen=True)
class ReconTask:
    """What a group holds: slices of one ``contrast`` sampled by one ``sampling`` task (e.g. T1, radial 20 %)."""

    contrast: str
    sampling: SamplingTask

    @property
    def key(self) -> str:
        return f"{self.contrast}-{self.sampling.key}"

    @property
    def label(self) -> str:
        return f"{self.contrast.upper()} {self.sampling.label}"

    @property
    def is_noise(self) -> bool:
        return self.contrast == NOISE

    @classmethod
    def parse(cls, text: str) -> ReconTask:
        """``"t1:radial:0.2"`` or ``"t1:radial:20%"`` (contrast, then a :class:`SamplingTask`) -> a task."""
        contrast, sep, rest = text.partition(":")
        if not sep or not contrast.strip():
            raise ValueError(f"task {text!r} must read contrast:pattern:ratio, e.g. t1:radial:0.2")
        return cls(contrast.strip().lower(), SamplingTask.parse(rest))


def parse_tasks(texts: Sequence[str], what: str) -> list[ReconTask]:
    """Tasks from their texts; ``ValueError`` naming ``what`` (e.g. ``--train-tasks``) for a malformed or
    repeated one."""
    try:
        tasks = [ReconTask.parse(t) for t in texts]
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None
    if len({t.key for t in tasks}) != len(tasks):
        raise ValueError(f"{what} names a task twice: {list(texts)}")
    return tasks


def task_groups(
    tasks: Sequence[ReconTask],
    slices: Mapping[str, MRISlices],
    split: str,
    coil_maps: Tensor,
    *,
    limit: int | None = None,
    mask_seed: int = 0,
) -> list[ReconGroup]:
    """One group per task: the ``split`` slices of the task's contrast (at most ``limit``, evenly
    spaced), multi-coil data simulated with ``coil_maps`` ``[C, H, W]`` and the task's mask. A noise
    task gets as many samples as the first loaded contrast has in ``split``."""
    groups = []
    for task in tasks:
        contrast = next(iter(slices)) if task.is_noise else task.contrast
        if contrast not in slices:
            raise ValueError(
                f"task {task.label}: no slices of contrast '{task.contrast}' were loaded (loaded: {sorted(slices)})"
            )
        images = slices[contrast].splits[split].subset(limit).images
        mask = task.sampling.mask(tuple(images.shape[-2:]), seed=mask_seed)
        group = simulate_group(f"{task.label} ({split})", images, mask, coil_maps)
        if task.is_noise:
            group = noise_group(group.name, group, seed=SPLITS.index(split))
        groups.append(group)
    return groups


@dataclass
class TaskData:
    """Every group of the experiment: training B_i, validation V_j, test (the V_j tasks, test slices)."""

    train_tasks: list[ReconTask]
    val_tasks: list[ReconTask]
    slices: dict[str, MRISlices]
    train: list[ReconGroup]
    val: list[ReconGroup]
    test: list[ReconGroup]
    source: str
    stand_in: bool
    description: str

    def images(self, task: ReconTask, split: str, limit: int | None = None) -> Tensor:
        """The single-channel ``split`` slices of ``task``'s contrast (at most ``limit``, evenly spaced)."""
        return self.slices[task.contrast].splits[split].subset(limit).images


def load_task_data(
    train_tasks: Sequence[ReconTask],
    val_tasks: Sequence[ReconTask],
    root: Path | None,
    *,
    spec: SliceSpec,
    coils: int,
    limits: Mapping[str, int | None],
    seed: int = 0,
) -> TaskData:
    """Load the slices of every contrast the tasks name (``root``: BraTS 2018 or a NIfTI folder; None: the
    embedded MNI152 stand-in), simulate ``coils`` coil maps and build the groups (``limits``: at most
    that many slices per group and split, evenly spaced; None for all). ``seed`` fixes the case
    permutation of real data and the coil maps."""
    if any(t.is_noise for t in val_tasks):
        raise MRIDataError("a validation task cannot be pure noise; name noise tasks in the training tasks only")
    contrasts = sorted({t.contrast for t in [*train_tasks, *val_tasks] if not t.is_noise})
    slices = {c: load_slices(root, contrast=c, spec=spec, seed=seed) for c in contrasts}
    if any(s.source == "nifti" for s in slices.values()) and len(contrasts) > 1:
        raise MRIDataError(
            f"{root} is a plain folder of NIfTI volumes (one contrast), but the tasks name the "
            f"contrasts {contrasts}; name one contrast in --train-tasks and --val-tasks "
            "(e.g. nifti:radial:0.2)"
        )
    found = next(iter(slices.values()))
    maps = simulate_coil_maps(found.shape, coils, seed=seed)
    return TaskData(
        list(train_tasks),
        list(val_tasks),
        slices,
        train=task_groups(train_tasks, slices, "train", maps, limit=limits.get("train")),
        val=task_groups(val_tasks, slices, "val", maps, limit=limits.get("val")),
        test=task_groups(val_tasks, slices, "test", maps, limit=limits.get("test")),
        source="mni152" if found.source == "embedded" else found.source,
        stand_in=any(s.stand_in for s in slices.values()),
        description=" ".join(dict.fromkeys(s.description for s in slices.values()))
        + f" Multi-coil k-space simulated with {coils} smooth coil maps (x_c = S_c x, Σ|S_c|² = 1).",
    )
