"""Small multi-coil groups from the embedded MNI152 slices (16x16), the networks and settings of the
task-correlation tests (and of benchmarks/taskcorr_hypergradient.py)."""

import torch

from problems.mri import SliceSpec, load_slices, sampling_mask, simulate_coil_maps
from problems.taskcorr import ReconGroup, TaskCorrSettings, noise_group, simulate_group, taskcorr_graph
from problems.taskcorr.optimal_control import ControlNetConfig

SIZE = 16


def load_mni(size: int = SIZE) -> dict:
    spec = SliceSpec(crop=(180, 180), size=(size, size))
    return {c: load_slices(None, contrast=c, spec=spec) for c in ("t1", "t2")}


def make_group(
    slices,
    contrast: str,
    split: str,
    pattern: str,
    ratio: float,
    coils: int,
    n: int = 8,
    offset: int = 0,
    every: int = 1,
) -> ReconGroup:
    """A group of slices ``offset, offset + every, ...`` (``n`` of them) in torch's default dtype
    (float64 while goldens are built), at the slices' size."""
    dtype = torch.get_default_dtype()
    images = slices[contrast].splits[split].images[offset : offset + every * n : every].to(dtype)
    shape = tuple(images.shape[-2:])
    mask = sampling_mask(pattern, ratio, shape, cache=False).to(dtype)
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    maps = simulate_coil_maps(shape, coils, dtype=complex_dtype)
    return simulate_group(f"{contrast} {pattern} {ratio:.0%} ({split})", images, mask, maps)


def pure_noise_group(like: ReconGroup, seed: int = 0) -> ReconGroup:
    """A group of pure noise shaped like ``like`` (problems.taskcorr.noise_group)."""
    return noise_group("pure noise", like, seed=seed)


def config(coils: int = 2, phases: int = 2, width: int = 4, features: int = 3) -> ControlNetConfig:
    return ControlNetConfig(coils=coils, phases=phases, width=width, features=features, kernel=3)


def groups(slices, coils: int = 2):
    """Training T1 radial 30 %, T1 Cartesian 25 %, T2 radial 30 % (8 slices each); validation T1 and T2
    radial 25 % (4 slices each)."""
    train = [
        make_group(slices, "t1", "train", "radial", 0.3, coils),
        make_group(slices, "t1", "train", "cartesian", 0.25, coils),
        make_group(slices, "t2", "train", "radial", 0.3, coils),
    ]
    val = [
        make_group(slices, "t1", "val", "radial", 0.25, coils, n=4),
        make_group(slices, "t2", "val", "radial", 0.25, coils, n=4),
    ]
    return train, val


def settings(**changes) -> TaskCorrSettings:
    """k = 2 θ-steps per W-step, Adam 1e-2 on θ and 0.1 on W, 2 samples per group."""
    base = {"inner_steps": 2, "theta_lr": 1e-2, "correlation_lr": 0.1, "train_batch": 2, "val_batch": 2}
    return TaskCorrSettings(**{**base, **changes})


def builder(train, val, network: ControlNetConfig, inner_steps: int = 2):
    """``build(method, options) -> Graph``: the bilevel graph with W's hypergradient by ``method``."""

    def build(method, options):
        return taskcorr_graph(network, train, val, settings(inner_steps=inner_steps, hypergrad=method, options=options))

    return build
